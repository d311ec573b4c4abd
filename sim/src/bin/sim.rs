//! `sim`: run, replay and sweep seeded simulations.
//!
//! ```text
//! sim run --scenario failover --seed 7 [--trace]
//! sim sweep --scenario failover --seeds 0..50 [--jobs 2]
//! ```
//!
//! `run` executes one seed in this process and prints its trace hash;
//! `sweep` runs each seed in a child process (one simulation per process
//! keeps replays exact) and prints a summary with a replay command for
//! every failure.

#[cfg(madsim)]
mod imp {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use sim::trace::{new_trace, TraceLayer};
    use tracing_subscriber::layer::SubscriberExt;

    fn replay_command(scenario: &str, seed: u64) -> String {
        format!("cargo sim run --scenario {scenario} --seed {seed} --trace")
    }

    fn arg(args: &[String], name: &str) -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    }

    fn run_one(scenario: &str, seed: u64, print_trace: bool) -> i32 {
        let trace = new_trace(print_trace);
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(TraceLayer::new(trace.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per process");
        let mut config = madsim::Config::default();
        config.net.send_latency = Duration::from_millis(1)..Duration::from_millis(5);
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(seed, config);
        rt.set_time_limit(Duration::from_secs(3600));
        let wall = Instant::now();
        let scenario_name = scenario.to_string();
        let (result, sim_elapsed) = rt.block_on(async move {
            let t = madsim::time::Instant::now();
            let r = sim::scenarios::run(&scenario_name).await;
            (r, t.elapsed())
        });
        let t = trace.lock().expect("trace");
        match result {
            Ok(report) => {
                println!(
                    "PASS scenario={scenario} seed={seed} trace_hash={:016x} trace_lines={} sim_ms={} wall_ms={} acked={} unacked={} reads={} terms={} failover_ms={:?}",
                    t.hash,
                    t.lines,
                    sim_elapsed.as_millis(),
                    wall.elapsed().as_millis(),
                    report.acked,
                    report.unacked,
                    report.reads_ok,
                    report.terms,
                    report.failover_ms
                );
                0
            }
            Err(e) => {
                println!(
                    "FAIL scenario={scenario} seed={seed} trace_hash={:016x}: {e}\n  replay: {}",
                    t.hash,
                    replay_command(scenario, seed)
                );
                1
            }
        }
    }

    fn parse_range(s: &str) -> Option<(u64, u64)> {
        let (a, b) = s.split_once("..")?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    fn sweep(scenario: &str, from: u64, to: u64, jobs: usize) -> i32 {
        let exe = std::env::current_exe().expect("own path");
        let wall = Instant::now();
        let mut pending: Vec<u64> = (from..to).rev().collect();
        let mut running: Vec<(u64, std::process::Child)> = Vec::new();
        let (mut passed, mut failed) = (0u64, Vec::new());
        let mut failover = Vec::new();
        while !pending.is_empty() || !running.is_empty() {
            while running.len() < jobs.max(1) {
                let Some(seed) = pending.pop() else { break };
                let child = Command::new(&exe)
                    .args(["run", "--scenario", scenario, "--seed", &seed.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn sim run");
                running.push((seed, child));
            }
            if let Some(pos) = running
                .iter_mut()
                .position(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
            {
                let (seed, child) = running.remove(pos);
                let out = child.wait_with_output().expect("child output");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() {
                    passed += 1;
                    if let Some(f) = text
                        .split("failover_ms=[")
                        .nth(1)
                        .and_then(|r| r.split(']').next())
                    {
                        failover.extend(f.split(',').filter_map(|x| x.trim().parse::<u64>().ok()));
                    }
                } else {
                    eprint!("{text}");
                    failed.push(seed);
                }
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        failover.sort_unstable();
        let pct = |p: f64| {
            failover
                .get(((failover.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "SWEEP scenario={scenario} seeds={}..{} passed={passed} failed={} wall_s={:.1} failover_ms(min/p50/p99/max)={}/{}/{}/{}",
            from,
            to,
            failed.len(),
            wall.elapsed().as_secs_f64(),
            failover.first().copied().unwrap_or(0),
            pct(0.5),
            pct(0.99),
            failover.last().copied().unwrap_or(0),
        );
        for seed in &failed {
            println!("  replay: {}", replay_command(scenario, *seed));
        }
        i32::from(!failed.is_empty())
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let usage = "usage: sim run --scenario NAME --seed N [--trace] | sim sweep --scenario NAME --seeds A..B [--jobs J]";
        let scenario = arg(&args, "--scenario").unwrap_or_else(|| {
            eprintln!("{usage}\nscenarios: {:?}", sim::SCENARIOS);
            std::process::exit(2)
        });
        let code = match args.first().map(String::as_str) {
            Some("run") => {
                let seed = arg(&args, "--seed")
                    .or_else(|| std::env::var("MADSIM_TEST_SEED").ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| {
                        eprintln!("{usage}");
                        std::process::exit(2)
                    });
                run_one(&scenario, seed, args.iter().any(|a| a == "--trace"))
            }
            Some("sweep") => {
                let Some((a, b)) = arg(&args, "--seeds").and_then(|s| parse_range(&s)) else {
                    eprintln!("{usage}");
                    std::process::exit(2)
                };
                let jobs = arg(&args, "--jobs")
                    .and_then(|j| j.parse().ok())
                    .unwrap_or(2);
                sweep(&scenario, a, b, jobs)
            }
            _ => {
                eprintln!("{usage}");
                2
            }
        };
        std::process::exit(code);
    }
}

fn main() {
    #[cfg(madsim)]
    imp::main();
    #[cfg(not(madsim))]
    {
        eprintln!("the simulator needs --cfg madsim: use `cargo sim run ...` (see README)");
        std::process::exit(2);
    }
}
