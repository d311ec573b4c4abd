//! Swarm testing: the seed first draws a fault profile (cluster size,
//! which fault kinds are on, how many faults, the workload), then a fault
//! schedule from it; the run has a safety phase with the faults and a
//! liveness phase with everything healed.
//!
//! Faults come in pairs (inject, heal), numbered in drawing order. A run can
//! keep only some pairs (`--keep 0,3`), which is what `sim minimize` uses
//! to shrink a failing schedule by delta debugging: the schedule is drawn
//! in full first and masked afterwards, so the kept faults stay the same.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use madsim::time::{sleep, Instant};
use rand::Rng;
use tracing::info;

use crate::cluster::Formation;
use crate::scenarios::{Report, Run, ELECTION_BOUND};

/// How long the workload keeps running once every fault is healed.
const HEALED_WORK: Duration = Duration::from_secs(3);

static KEEP: Mutex<Option<BTreeSet<usize>>> = Mutex::new(None);
static DRAWN: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The ids of every fault pair the last run drew (before masking), for
/// `sim minimize`.
pub fn drawn() -> Vec<usize> {
    DRAWN.lock().expect("drawn lock").clone()
}

/// Restricts the next swarm run to the fault pairs in `keep` (all if `None`).
pub fn set_keep(keep: Option<BTreeSet<usize>>) {
    *KEEP.lock().expect("keep lock") = keep;
}

/// What the seed chose for this run.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Servers in the cluster (3 or 5).
    pub servers: usize,
    /// Fault kinds switched on.
    pub kinds: Vec<Kind>,
    /// Fault pairs to draw.
    pub faults: usize,
    /// Concurrent KV clients.
    pub clients: usize,
    /// Length of the safety phase.
    pub safety: Duration,
    /// Fault points inside production code (`mesh_net::buggify`) are on.
    pub buggify: bool,
}

/// A fault kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Power loss (unsynced bytes lost, maybe a torn tail), later restart.
    Crash,
    /// Cut a server off in both directions, later heal.
    Isolate,
    /// Freeze a server (GC-like stall), later resume.
    Pause,
    /// Drop one direction of one link, later restore.
    OneWay,
    /// Raise network latency for everyone, later restore.
    Latency,
    /// Power loss plus a flipped bit in a stored record; on restart the
    /// server must refuse its corrupt data (the operator then wipes it and
    /// it rejoins) or recover from a clean torn tail.
    Corrupt,
    /// The disk fills up: writes fail; later space returns and the server
    /// is restarted.
    DiskFull,
    /// Every fsync on one server takes `amount` ms longer.
    SlowFsync,
    /// Split the servers into a minority (`target` and the servers below it
    /// in a seed-chosen rotation) and a majority, both directions.
    Split,
    /// Two halves that cannot see each other, plus `target` as a bridge
    /// that sees both.
    Bridge,
    /// Drop `amount` percent of packets everywhere; madsim's TCP retransmits
    /// them with exponential backoff (up to 10 s), like real TCP.
    Loss,
    /// One server's clock runs at `amount` ppm of true time (its timers
    /// fire early or late) and its wall clock is stepped by `skew_ms`;
    /// healing restores the true rate and steps the wall clock back, as NTP
    /// would.
    Clock,
}

const ALL_KINDS: [Kind; 12] = [
    Kind::Crash,
    Kind::Isolate,
    Kind::Pause,
    Kind::OneWay,
    Kind::Latency,
    Kind::Corrupt,
    Kind::DiskFull,
    Kind::SlowFsync,
    Kind::Split,
    Kind::Bridge,
    Kind::Loss,
    Kind::Clock,
];

/// One scheduled fault and its healing.
#[derive(Debug, Clone)]
pub struct FaultPair {
    /// Pair number (stable for a seed).
    pub id: usize,
    /// What.
    pub kind: Kind,
    /// Target server (the link's source for `OneWay`).
    pub target: usize,
    /// The link's destination for `OneWay`.
    pub peer: usize,
    /// Torn bytes for `Crash`, max latency in ms for `Latency`, clock rate
    /// in ppm for `Clock`, ...
    pub amount: u64,
    /// Wall-clock step in ms for `Clock`.
    pub skew_ms: i64,
    /// When it strikes, from the start of the safety phase.
    pub at: Duration,
    /// How long until it heals.
    pub lasts: Duration,
}

fn draw_profile() -> Profile {
    let mut rng = crate::seeds::rng("swarm-profile", 0);
    let servers = if rng.gen_bool(0.3) { 5 } else { 3 };
    let mut kinds: Vec<Kind> = ALL_KINDS
        .iter()
        .copied()
        .filter(|_| rng.gen_bool(0.5))
        .collect();
    if kinds.is_empty() {
        kinds.push(ALL_KINDS[rng.gen_range(0..ALL_KINDS.len())]);
    }
    Profile {
        servers,
        kinds,
        faults: rng.gen_range(1..=8),
        clients: rng.gen_range(1..=4),
        safety: Duration::from_millis(rng.gen_range(4_000..=10_000)),
        buggify: rng.gen_bool(0.5),
    }
}

/// Draws the schedule. A server hosts one node-level fault (crash,
/// isolate, pause, ...) and one clock fault at a time, so every pair can be
/// undone on its own.
fn draw_schedule(p: &Profile) -> Vec<FaultPair> {
    let mut rng = crate::seeds::rng("swarm-schedule", 0);
    let mut busy: Vec<Vec<(u8, Duration, Duration)>> = vec![Vec::new(); p.servers];
    let mut out = Vec::new();
    for id in 0..p.faults {
        let kind = p.kinds[rng.gen_range(0..p.kinds.len())];
        let target = rng.gen_range(0..p.servers);
        let peer = (target + rng.gen_range(1..p.servers)) % p.servers;
        let at = Duration::from_millis(rng.gen_range(0..p.safety.as_millis() as u64));
        let lasts = Duration::from_millis(rng.gen_range(200..=3_000));
        let amount = match kind {
            Kind::Crash => rng.gen_range(0..64),
            Kind::Latency => rng.gen_range(20..=300),
            Kind::SlowFsync => rng.gen_range(5..=200),
            Kind::Loss => rng.gen_range(1..=20),
            // Mostly a realistic bad oscillator (±5%), sometimes a host
            // whose timers run 5x slow to 10x fast (a VM starved of CPU, a
            // broken TSC).
            Kind::Clock if rng.gen_bool(0.7) => rng.gen_range(950_000..=1_050_000),
            Kind::Clock => rng.gen_range(200_000..=10_000_000),
            _ => 0,
        };
        let skew_ms = match kind {
            Kind::Clock => rng.gen_range(-3_600_000..=3_600_000),
            _ => 0,
        };
        // Wiping more than one server's data could destroy a majority's
        // copy of acknowledged writes, which no Raft cluster survives.
        if kind == Kind::Corrupt && out.iter().any(|f: &FaultPair| f.kind == Kind::Corrupt) {
            continue;
        }
        // Faults of one class on one server must not overlap, or one's
        // healing would undo the other early.
        let class = match kind {
            Kind::Crash | Kind::Isolate | Kind::Pause | Kind::Corrupt | Kind::DiskFull => Some(0),
            Kind::Clock => Some(1),
            _ => None,
        };
        if let Some(class) = class {
            let overlaps = busy[target].iter().any(|(c, s, e)| {
                *c == class && at < *e + Duration::from_millis(50) && *s < at + lasts
            });
            if overlaps {
                continue;
            }
            busy[target].push((class, at, at + lasts));
        }
        out.push(FaultPair {
            id,
            kind,
            target,
            peer,
            amount,
            skew_ms,
            at,
            lasts,
        });
    }
    out
}

enum Step {
    Inject,
    Heal,
}

fn apply(run: &mut Run, f: &FaultPair, step: Step) {
    let c = &mut run.cluster;
    match (f.kind, step) {
        (Kind::Crash, Step::Inject) => c.crash(f.target, f.amount as usize),
        (Kind::Crash, Step::Heal) => c.start(f.target),
        (Kind::Isolate, Step::Inject) => c.isolate(f.target),
        (Kind::Isolate, Step::Heal) => c.heal(f.target),
        (Kind::Pause, Step::Inject) => c.pause(f.target),
        (Kind::Pause, Step::Heal) => c.resume(f.target),
        (Kind::OneWay, Step::Inject) => c.clog_link(f.target, f.peer),
        (Kind::OneWay, Step::Heal) => c.unclog_link(f.target, f.peer),
        (Kind::Latency, Step::Inject) => set_latency(f.amount),
        (Kind::Latency, Step::Heal) => set_latency(10),
        (Kind::Corrupt, Step::Inject) => {
            c.crash(f.target, 0);
            let flipped = c.flip_bit(f.target);
            info!(server = f.target, ?flipped, "flipped a stored bit");
        }
        (Kind::Corrupt, Step::Heal) => c.start(f.target),
        (Kind::Loss, Step::Inject) => set_loss(f.amount as f64 / 100.0),
        (Kind::Loss, Step::Heal) => set_loss(0.0),
        (Kind::SlowFsync, Step::Inject) => {
            c.set_sync_latency(f.target, Duration::from_millis(f.amount))
        }
        (Kind::SlowFsync, Step::Heal) => c.set_sync_latency(f.target, Duration::ZERO),
        (Kind::Split | Kind::Bridge, step) => {
            let inject = matches!(step, Step::Inject);
            for (a, b) in cut_links(f, c.servers.len()) {
                if inject {
                    c.clog_link(a, b);
                    c.clog_link(b, a);
                } else {
                    c.unclog_link(a, b);
                    c.unclog_link(b, a);
                }
            }
        }
        (Kind::Clock, Step::Inject) => c.set_clock(f.target, f.amount, f.skew_ms),
        (Kind::Clock, Step::Heal) => c.set_clock(f.target, 1_000_000, 0),
        (Kind::DiskFull, Step::Inject) => c.set_disk_full(f.target, true),
        (Kind::DiskFull, Step::Heal) => {
            c.set_disk_full(f.target, false);
            c.crash(f.target, 0);
            c.start(f.target);
        }
    }
}

/// The links a `Split` or `Bridge` cuts. Servers are rotated so `target`
/// comes first; a split puts the first `n/2` (a minority) on one side; a
/// bridge puts `target` on both sides and splits the rest in two.
fn cut_links(f: &FaultPair, n: usize) -> Vec<(usize, usize)> {
    let order: Vec<usize> = (0..n).map(|k| (f.target + k) % n).collect();
    let (left, right): (Vec<usize>, Vec<usize>) = match f.kind {
        Kind::Bridge => {
            let rest = &order[1..];
            let half = rest.len() / 2;
            (rest[..half].to_vec(), rest[half..].to_vec())
        }
        _ => (order[..n / 2].to_vec(), order[n / 2..].to_vec()),
    };
    left.iter()
        .flat_map(|a| right.iter().map(move |b| (*a, *b)))
        .collect()
}

fn set_loss(rate: f64) {
    madsim::net::NetSim::current().update_config(|c| c.packet_loss_rate = rate);
}

fn set_latency(max_ms: u64) {
    madsim::net::NetSim::current().update_config(|c| {
        c.send_latency = Duration::from_micros(100)..Duration::from_millis(max_ms.max(1))
    });
}

/// The swarm scenario.
pub async fn run() -> Result<Report, String> {
    let profile = draw_profile();
    let schedule = draw_schedule(&profile);
    *DRAWN.lock().expect("drawn lock") = schedule.iter().map(|f| f.id).collect();
    let keep = KEEP.lock().expect("keep lock").clone();
    let schedule: Vec<FaultPair> = schedule
        .into_iter()
        .filter(|f| keep.as_ref().is_none_or(|k| k.contains(&f.id)))
        .collect();
    info!(servers = profile.servers, kinds = ?profile.kinds, clients = profile.clients, buggify = profile.buggify, safety_ms = profile.safety.as_millis() as u64, "swarm profile");
    for f in &schedule {
        info!(id = f.id, kind = ?f.kind, target = f.target, peer = f.peer, amount = f.amount, skew_ms = f.skew_ms, at_ms = f.at.as_millis() as u64, lasts_ms = f.lasts.as_millis() as u64, "fault");
    }
    if profile.buggify {
        mesh_net::buggify::enable(true);
    }
    let n = profile.servers;
    let mut run = Run::new(vec![Formation::Expect(n as u32); n], 100);
    run.start_all_shuffled(500).await?;
    let all: Vec<usize> = (0..n).collect();
    run.leader_among(&all, ELECTION_BOUND).await?;
    run.wait_voters(n, Duration::from_secs(10)).await?;

    info!("phase: safety (faults on)");
    run.start_workload(profile.clients);
    let mut events: Vec<(Duration, usize, bool)> = Vec::new();
    for (i, f) in schedule.iter().enumerate() {
        events.push((f.at, i, true));
        events.push((f.at + f.lasts, i, false));
    }
    events.sort_by_key(|(t, i, inject)| (*t, !*inject, *i));
    let start = Instant::now();
    for (t, i, inject) in events {
        let due = start + t;
        while Instant::now() < due {
            run.observers.sample(&run.cluster)?;
            sleep(Duration::from_millis(5).min(due - Instant::now())).await;
        }
        let f = schedule[i].clone();
        if f.kind == Kind::Crash && inject && !f.id.is_multiple_of(4) {
            // Real power cuts land while the disk is busy: most crashes
            // wait (up to 300 ms) for a write in flight on the target, so
            // they lose or tear it and recovery has work to do.
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until
                && run.cluster.server(f.target).is_some()
                && !run.cluster.write_in_flight(f.target)
            {
                sleep(Duration::from_micros(100)).await;
            }
            info!(
                target = f.target,
                in_flight = run.cluster.write_in_flight(f.target),
                "crash lands"
            );
        }
        info!(id = f.id, kind = ?f.kind, inject, "fault step");
        apply(&mut run, &f, if inject { Step::Inject } else { Step::Heal });
        if f.kind == Kind::Corrupt && !inject {
            run.settle(Duration::from_millis(200)).await?;
            if let Some(e) = run.cluster.start_error(f.target) {
                info!(server = f.target, error = %e, "server refused corrupt storage");
                run.report.refused_corrupt += 1;
                run.cluster.wipe_and_restart(f.target);
            }
        }
    }
    let rest = profile.safety.saturating_sub(start.elapsed());
    run.settle(rest).await?;
    set_latency(10);
    set_loss(0.0);
    mesh_net::buggify::enable(false);
    // The healed cluster must serve the workload again, and every run gets
    // a fault-free stretch of work: a profile whose faults black out its
    // only client would otherwise judge (nearly) nothing
    // (`checkers::work_done`; seed 105 once had no successful register
    // update at all).
    info!("phase: the healed cluster serves");
    run.settle(HEALED_WORK).await?;
    run.stop_workload().await?;
    run.converge().await?;
    run.report.faults = schedule.len();
    Ok(run.report)
}
