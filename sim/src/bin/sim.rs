//! `sim`: run, replay, sweep and hunt seeded simulations.
//!
//! ```text
//! sim run --scenario failover --seed 7 [--trace] [--mutant NAME]
//! sim sweep --scenario failover --seeds 0..50 [--jobs 2] [--mutant NAME]
//! sim hunt --scenario full_restart --seeds 0..100 --mutant skip_fsync
//! ```
//!
//! `run` executes one seed in this process and prints its trace hash;
//! `sweep` runs each seed in a child process (one simulation per process
//! keeps replays exact) and prints a summary with a replay command for
//! every failure, and how many seeds ended with no linearizability verdict
//! (`lin_unknown`); `hunt` is a sweep that stops at the first seed that
//! fails with the planted bug and passes without it, and succeeds only if
//! there is one: it proves a planted bug gets caught.

#[cfg(madsim)]
mod imp {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{list_field, spread};
    use mesh_net::mutants::{self, Mutant};
    use sim::planted::{self, SimMutant};
    use sim::trace::{new_trace, TraceLayer};
    use tracing_subscriber::layer::SubscriberExt;

    const USAGE: &str = "usage: sim run --scenario NAME --seed N [--trace] [--mutant M] [--keep IDS|none]
       sim sweep --scenario NAME --seeds A..B [--jobs J] [--mutant M]
       sim soak --scenario NAME --seeds A..B [--jobs J] [--mutant M]   (sweep with a progress bar)
       sim hunt --scenario NAME --seeds A..B --mutant M [--jobs J]   (succeeds when a seed fails)
       sim minimize --scenario swarm --seed N [--mutant M]            (shrink a failing fault schedule)";

    /// Planted bugs by name: the server's (`mesh_net::mutants`), then the
    /// simulator's own (`sim::planted`).
    fn known_mutants() -> Vec<&'static str> {
        Mutant::ALL
            .iter()
            .map(|(n, _)| *n)
            .chain(SimMutant::ALL.iter().map(|(n, _)| *n))
            .collect()
    }

    fn replay_command(scenario: &str, seed: u64, mutant: Option<&str>) -> String {
        let mutant = mutant.map(|m| format!(" --mutant {m}")).unwrap_or_default();
        format!("cargo sim run --scenario {scenario} --seed {seed}{mutant} --trace")
    }

    fn arg(args: &[String], name: &str) -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    }

    fn parse_keep(raw: &str) -> Option<std::collections::BTreeSet<usize>> {
        if raw == "none" {
            return Some(Default::default());
        }
        raw.split(',').map(|x| x.trim().parse().ok()).collect()
    }

    fn keep_arg(keep: &std::collections::BTreeSet<usize>) -> String {
        if keep.is_empty() {
            return "none".into();
        }
        keep.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn run_one(
        scenario: &str,
        seed: u64,
        print_trace: bool,
        mutant: Option<&str>,
        keep: Option<&str>,
    ) -> i32 {
        if let Some(raw) = keep {
            let Some(set) = parse_keep(raw) else {
                eprintln!("--keep takes fault ids like 0,3,5 or none");
                return 2;
            };
            sim::swarm::set_keep(Some(set));
        }
        if let Some(name) = mutant {
            if let Some(m) = Mutant::by_name(name) {
                mutants::activate(m);
            } else if let Some(m) = SimMutant::by_name(name) {
                planted::activate(m);
            } else {
                eprintln!("unknown mutant {name:?}; known: {:?}", known_mutants());
                return 2;
            }
        }
        // A panic (a violated assertion in production code, say) must also
        // end with the seed and the command that replays it.
        let replay = format!(
            "{}{}",
            replay_command(scenario, seed, mutant),
            keep.map(|k| format!(" --keep {k}")).unwrap_or_default()
        );
        let (scenario_for_hook, replay_for_hook) = (scenario.to_string(), replay.clone());
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            println!("FAIL scenario={scenario_for_hook} seed={seed}: panicked: {info}\n  replay: {replay_for_hook}");
        }));
        let trace = new_trace(print_trace);
        // SIM_LOG (EnvFilter syntax, e.g. `info,mesh_net::sidecar=debug`)
        // widens what the trace shows, for debugging only: EnvFilter's
        // hash maps draw from the simulator's RNG, so with it set the same
        // seed does not replay exactly. The default (INFO) does.
        let sim_log = std::env::var("SIM_LOG").ok();
        let default_level = sim_log
            .is_none()
            .then_some(tracing_subscriber::filter::LevelFilter::INFO);
        let subscriber = tracing_subscriber::registry()
            .with(default_level)
            .with(sim_log.map(tracing_subscriber::EnvFilter::new))
            .with(TraceLayer::new(trace.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per process");
        let mut config = madsim::Config::default();
        config.net.send_latency = Duration::from_millis(1)..Duration::from_millis(5);
        let mut rt = madsim::runtime::Runtime::with_seed_and_config(seed, config);
        rt.set_time_limit(Duration::from_secs(3600));
        // Each host's own clock (drift and skew faults).
        rt.add_simulator::<mesh_net::clock::ClockSim>();
        // Every committed vote, for election safety between samples.
        rt.add_simulator::<mesh_net::vote_log::VoteLog>();
        let wall = Instant::now();
        let scenario_name = scenario.to_string();
        let (result, sim_elapsed) = rt.block_on(async move {
            let t = madsim::time::Instant::now();
            let r = sim::scenarios::run(&scenario_name).await;
            (r, t.elapsed())
        });
        let t = trace.lock().expect("trace");
        let drawn = sim::swarm::drawn();
        if !drawn.is_empty() {
            println!("SCHEDULE {}", keep_arg(&drawn.into_iter().collect()));
        }
        match result {
            Ok(report) => {
                println!(
                    "PASS scenario={scenario} seed={seed} trace_hash={:016x} history_hash={:016x} trace_lines={} sim_ms={} wall_ms={} acked={} unacked={} definite_failures={} {} register_ops={} lin_unknown={} log_entries={} torn_tails={} terms={} converge_ms={} failover_ms={:?} agent_sync_ms={:?} check_ms={:?} detect_ms={:?} heal_sync_ms={:?} dns_ms={:?} false_verdicts={} catalog_reads={} connect_first_ms={} connect_failover_gap_ms=[{}] intention_ms={:?} connect_restart_ms={} connect_agent_restart_gap_ms={} connect_skew_recovery_ms={} connect_answers={} rotation_ms=[{}] session_invalidate_ms={:?} lock_holds={} lost_holds={} txn_reads={} leaf_renewal_ms={}",
                    t.hash(),
                    report.history_digest,
                    t.lines,
                    sim_elapsed.as_millis(),
                    wall.elapsed().as_millis(),
                    report.acked,
                    report.unacked,
                    report.definite_failures,
                    report.work,
                    report.register_ops,
                    report.linearizability_unknown,
                    report.log_entries,
                    report.torn_tails,
                    report.terms,
                    report.converge_ms,
                    report.failover_ms,
                    report.agent_sync_ms,
                    report.check_ms,
                    report.detect_ms,
                    report.heal_sync_ms,
                    report.dns_ms,
                    report.false_verdicts,
                    report.catalog_reads,
                    report.connect_first_ms,
                    report.connect_failover_gap_ms,
                    report.intention_ms,
                    report.connect_restart_ms,
                    report.connect_agent_restart_gap_ms,
                    report.connect_skew_recovery_ms,
                    report.connect_answers,
                    report.rotation_ms,
                    report.session_invalidate_ms,
                    report.lock_holds,
                    report.lost_holds,
                    report.txn_reads,
                    report.leaf_renewal_ms,
                );
                0
            }
            Err(e) => {
                println!(
                    "FAIL scenario={scenario} seed={seed} trace_hash={:016x}: {e}\n  replay: {replay}",
                    t.hash()
                );
                1
            }
        }
    }

    fn parse_range(s: &str) -> Option<(u64, u64)> {
        let (a, b) = s.split_once("..")?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    fn spawn_run(scenario: &str, seed: u64, mutant: Option<&str>) -> Child {
        spawn_run_keep(scenario, seed, mutant, None)
    }

    fn spawn_run_keep(
        scenario: &str,
        seed: u64,
        mutant: Option<&str>,
        keep: Option<&str>,
    ) -> Child {
        let exe = std::env::current_exe().expect("own path");
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--scenario", scenario, "--seed", &seed.to_string()]);
        if let Some(m) = mutant {
            cmd.args(["--mutant", m]);
        }
        if let Some(k) = keep {
            cmd.args(["--keep", k]);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sim run")
    }

    /// Runs seeds `from..to`, `jobs` at a time. With `hunt`, stops at the
    /// first failure and succeeds only if there was one.
    fn sweep(
        scenario: &str,
        (from, to): (u64, u64),
        jobs: usize,
        mutant: Option<&str>,
        mode: Mode,
    ) -> i32 {
        if !sim::SCENARIOS.contains(&scenario)
            || mutant.is_some_and(|m| !known_mutants().contains(&m))
        {
            usage_exit();
        }
        let hunt = mode == Mode::Hunt;
        let wall = Instant::now();
        let mut sim_ms_total = 0u64;
        let total = to.saturating_sub(from);
        let mut pending: Vec<u64> = (from..to).rev().collect();
        let mut running: Vec<(u64, Child)> = Vec::new();
        let (mut passed, mut failed) = (0u64, Vec::new());
        // Passing seeds whose linearizability search ran out of budget on
        // some key: no verdict, which is not a pass.
        let mut unknown = Vec::new();
        let mut torn_seeds = 0u64;
        // Hunt: failing seeds that also fail without the planted bug.
        let mut unverified = Vec::new();
        let mut failover = Vec::new();
        let mut detect: Vec<u64> = Vec::new();
        let mut heal_sync: Vec<u64> = Vec::new();
        let mut connect_gap: Vec<u64> = Vec::new();
        let mut intention: Vec<u64> = Vec::new();
        let mut rotation: Vec<u64> = Vec::new();
        let mut invalidate: Vec<u64> = Vec::new();
        let mut lock_holds = 0u64;
        let mut false_verdicts = 0u64;
        while !pending.is_empty() || !running.is_empty() {
            while running.len() < jobs.max(1) {
                let Some(seed) = pending.pop() else { break };
                running.push((seed, spawn_run(scenario, seed, mutant)));
            }
            let Some(pos) = running
                .iter_mut()
                .position(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
            else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let (seed, child) = running.remove(pos);
            let out = child.wait_with_output().expect("child output");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(ms) = text
                .split("sim_ms=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                sim_ms_total += ms;
            }
            if mode == Mode::Soak {
                let done = passed + failed.len() as u64 + 1;
                let width = 30;
                let filled = (done * width / total.max(1)) as usize;
                eprint!(
                    "\r[{}{}] {done}/{total} seeds  {:.1} seeds/s  failures {}   ",
                    "=".repeat(filled),
                    " ".repeat(width as usize - filled),
                    done as f64 / wall.elapsed().as_secs_f64().max(1e-3),
                    failed.len() + usize::from(!out.status.success())
                );
            }
            if out.status.success() {
                passed += 1;
                if text
                    .split(" lin_unknown=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .is_some_and(|n| n != "0")
                {
                    unknown.push(seed);
                }
                if text
                    .split(" torn_tails=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .is_some_and(|n| n != "0")
                {
                    torn_seeds += 1;
                }
                failover.extend(list_field(&text, "failover_ms"));
                detect.extend(list_field(&text, "detect_ms"));
                heal_sync.extend(list_field(&text, "heal_sync_ms"));
                connect_gap.extend(list_field(&text, "connect_failover_gap_ms"));
                intention.extend(list_field(&text, "intention_ms"));
                rotation.extend(list_field(&text, "rotation_ms"));
                invalidate.extend(list_field(&text, "session_invalidate_ms"));
                lock_holds += text
                    .split(" lock_holds=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                false_verdicts += text
                    .split(" false_verdicts=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                continue;
            }
            failed.push(seed);
            if hunt {
                // Only a failure the run reported (a checker, a bound, a
                // panic) counts as caught, never a usage error.
                let Some(reason) = text
                    .lines()
                    .find(|l| l.starts_with("FAIL"))
                    .and_then(|l| l.split_once(": "))
                    .map(|(_, r)| r)
                else {
                    eprintln!("sim run for seed {seed} failed without reporting a FAIL line");
                    return 2;
                };
                // Caught only if the same seed passes without the planted
                // bug: otherwise the failure is the baseline's, not the
                // mutant's.
                let (baseline_failed, baseline) = fails_with(scenario, seed, None, None);
                if baseline_failed {
                    let first = baseline.lines().find(|l| l.starts_with("FAIL"));
                    println!(
                        "UNVERIFIED seed={seed}: fails without the mutant too ({}); not counted",
                        first.unwrap_or("no FAIL line")
                    );
                    unverified.push(seed);
                    continue;
                }
                println!(
                    "CAUGHT mutant={} scenario={scenario} seed={seed} seeds_run={} baseline=pass by: {reason}",
                    mutant.unwrap_or("none"),
                    passed + failed.len() as u64
                );
                println!("  replay: {}", replay_command(scenario, seed, mutant));
                for (_, mut c) in running.drain(..) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return 0;
            }
            eprint!("{text}");
        }
        if hunt {
            println!(
                "MISSED mutant={} scenario={scenario} seeds={from}..{to} unverified={unverified:?}",
                mutant.unwrap_or("none")
            );
            return 1;
        }
        failover.sort_unstable();
        let pct = |p: f64| {
            let i = ((failover.len() as f64 - 1.0) * p).round() as usize;
            failover.get(i).copied().unwrap_or(0)
        };
        if mode == Mode::Soak {
            eprintln!();
        }
        let wall_s = wall.elapsed().as_secs_f64().max(1e-3);
        println!(
            "SWEEP scenario={scenario} seeds={from}..{to} passed={passed} failed={} lin_unknown={} torn_tail_seeds={torn_seeds} wall_s={wall_s:.1} seeds_per_s={:.1} sim_s_per_wall_s={:.0} failover_ms(min/p50/p99/max)={}/{}/{}/{}",
            failed.len(),
            unknown.len(),
            total as f64 / wall_s,
            sim_ms_total as f64 / 1000.0 / wall_s,
            failover.first().copied().unwrap_or(0),
            pct(0.5),
            pct(0.99),
            failover.last().copied().unwrap_or(0),
        );
        if !detect.is_empty() {
            println!(
                "LIVENESS scenario={scenario} failures_detected={} detect_ms(min/p50/p99/max)={} false_verdicts={false_verdicts}",
                detect.len(),
                spread(&mut detect),
            );
        }
        if !heal_sync.is_empty() {
            println!(
                "ANTI_ENTROPY scenario={scenario} heals={} heal_sync_ms(min/p50/p99/max)={}",
                heal_sync.len(),
                spread(&mut heal_sync),
            );
        }
        if !connect_gap.is_empty() {
            println!(
                "CONNECT scenario={scenario} runs={} failover_gap_ms(min/p50/p99/max)={} intention_ms(min/p50/p99/max)={} rotation_ms(min/p50/p99/max)={}",
                connect_gap.len(),
                spread(&mut connect_gap),
                spread(&mut intention),
                spread(&mut rotation),
            );
        }
        if !invalidate.is_empty() {
            println!(
                "LOCKS scenario={scenario} holds_judged={lock_holds} session_invalidate_ms(min/p50/p99/max)={}",
                spread(&mut invalidate),
            );
        }
        for seed in &failed {
            println!("  replay: {}", replay_command(scenario, *seed, mutant));
        }
        for seed in &unknown {
            println!(
                "  linearizability unknown: {}",
                replay_command(scenario, *seed, mutant)
            );
        }
        i32::from(!failed.is_empty())
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Sweep,
        Soak,
        Hunt,
    }

    /// Runs one seed with only the fault pairs in `keep`; returns whether it
    /// failed, and its output.
    fn fails_with(
        scenario: &str,
        seed: u64,
        mutant: Option<&str>,
        keep: Option<&str>,
    ) -> (bool, String) {
        let out = spawn_run_keep(scenario, seed, mutant, keep)
            .wait_with_output()
            .expect("child output");
        (
            !out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Delta debugging (ddmin, complement removal) over the fault pairs of
    /// a failing swarm seed: the smallest schedule that still fails.
    fn minimize(scenario: &str, seed: u64, mutant: Option<&str>) -> i32 {
        let (failed, text) = fails_with(scenario, seed, mutant, None);
        if !failed {
            println!("seed {seed} passes; nothing to minimize");
            return 1;
        }
        let Some(all) = text
            .lines()
            .find_map(|l| l.strip_prefix("SCHEDULE "))
            .and_then(parse_keep)
        else {
            println!("scenario {scenario} has no fault schedule to minimize (use swarm)");
            return 1;
        };
        println!(
            "failing schedule: {} fault pairs ({})",
            all.len(),
            keep_arg(&all)
        );
        let mut current: Vec<usize> = all.into_iter().collect();
        let mut runs = 1;
        let mut chunks = 2usize;
        while !current.is_empty() {
            let size = current.len().div_ceil(chunks.min(current.len()));
            let mut reduced = false;
            for start in (0..current.len()).step_by(size.max(1)) {
                let candidate: Vec<usize> = current
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i < start || *i >= start + size)
                    .map(|(_, v)| *v)
                    .collect();
                let keep = keep_arg(&candidate.iter().copied().collect());
                runs += 1;
                if fails_with(scenario, seed, mutant, Some(&keep)).0 {
                    println!("  still fails with {} pairs: {keep}", candidate.len());
                    current = candidate;
                    chunks = chunks.saturating_sub(1).max(2);
                    reduced = true;
                    break;
                }
            }
            if !reduced {
                if chunks >= current.len() {
                    break;
                }
                chunks = (chunks * 2).min(current.len());
            }
        }
        let keep = keep_arg(&current.iter().copied().collect());
        println!(
            "MINIMAL seed={seed} pairs={} runs={runs} keep={keep}",
            current.len()
        );
        println!(
            "  replay: {} --keep {keep}",
            replay_command(scenario, seed, mutant)
        );
        0
    }

    fn usage_exit() -> ! {
        eprintln!("{USAGE}\nscenarios: {:?}", sim::SCENARIOS);
        std::process::exit(2)
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let scenario = arg(&args, "--scenario").unwrap_or_else(|| usage_exit());
        let mutant = arg(&args, "--mutant");
        let code = match args.first().map(String::as_str) {
            Some("run") => {
                let seed = arg(&args, "--seed")
                    .or_else(|| std::env::var("MADSIM_TEST_SEED").ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage_exit());
                let trace = args.iter().any(|a| a == "--trace");
                let keep = arg(&args, "--keep");
                run_one(&scenario, seed, trace, mutant.as_deref(), keep.as_deref())
            }
            Some(verb @ ("sweep" | "hunt" | "soak")) => {
                let range = arg(&args, "--seeds")
                    .and_then(|s| parse_range(&s))
                    .unwrap_or_else(|| usage_exit());
                let jobs = arg(&args, "--jobs")
                    .and_then(|j| j.parse().ok())
                    .unwrap_or(2);
                let mode = match verb {
                    "hunt" if mutant.is_none() => usage_exit(),
                    "hunt" => Mode::Hunt,
                    "soak" => Mode::Soak,
                    _ => Mode::Sweep,
                };
                sweep(&scenario, range, jobs, mutant.as_deref(), mode)
            }
            Some("minimize") => {
                let seed = arg(&args, "--seed")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage_exit());
                minimize(&scenario, seed, mutant.as_deref())
            }
            _ => usage_exit(),
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

/// The numbers of `name=[a, b, ...]` in a PASS line.
#[cfg(madsim)]
fn list_field(text: &str, name: &str) -> Vec<u64> {
    text.split(&format!(" {name}=["))
        .nth(1)
        .and_then(|r| r.split(']').next())
        .map(|f| {
            f.split(',')
                .filter_map(|x| x.trim().parse::<u64>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `min/p50/p99/max` of `v` (sorted in place); `-` when empty.
#[cfg(madsim)]
fn spread(v: &mut [u64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!("{}/{}/{}/{}", v[0], at(0.5), at(0.99), v[v.len() - 1])
}
