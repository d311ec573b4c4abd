//! Seeded scenarios. Each is a story in phases: a safety phase with
//! faults, then a liveness phase with faults healed that must converge
//! within a bound. The seed decides start order, delays, latency, which
//! fault strikes and when.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::Rng;
use madsim::time::{sleep, Instant};
use tracing::info;

use crate::checkers::definite_failures::{self, Seen};
use crate::checkers::work_done::{self, WorkDone};
use crate::checkers::write_gap::{self, LeaderFault};
use crate::checkers::{acked_writes, linearizable};
use crate::cluster::{Formation, SimCluster};
use crate::observers::Observers;
use crate::workload::{self, ClientOptions, History, SharedHistory};

/// Bound on electing a leader once a fault is healed or a leader died.
pub const ELECTION_BOUND: Duration = Duration::from_secs(5);
/// A killed leader's successor is elected within this: the survivors see
/// its port refuse connections and skip the PreVote lease (400-600 ms),
/// waiting only for the voters' vote lease (151 ms after the last
/// heartbeat) and their turn (`mesh_core::election`, "A leader that is
/// provably gone").
pub const KILLED_LEADER_BOUND: Duration = Duration::from_millis(350);
/// Bound on every server converging once faults are healed.
pub const CONVERGE_BOUND: Duration = Duration::from_secs(20);

/// What a passing run measured.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Acknowledged writes.
    pub acked: usize,
    /// Writes not acknowledged (failed or unknown outcome).
    pub unacked: u64,
    /// Successful operations by kind (what `checkers::work_done` judges).
    pub work: WorkDone,
    /// Writes the clients saw fail definitely (none of them may take effect).
    pub definite_failures: usize,
    /// Digest of the workload's history (same seed, same digest).
    pub history_digest: u64,
    /// Milliseconds from a leader's death or isolation to a new agreed leader.
    pub failover_ms: Vec<u64>,
    /// Terms in which a leader was observed.
    pub terms: usize,
    /// Fault pairs injected (swarm).
    pub faults: usize,
    /// Restarts that refused corrupt storage (then wiped and rejoined).
    pub refused_corrupt: usize,
    /// Simulated ms from healing every fault to a converged cluster.
    pub converge_ms: u64,
    /// Register operations checked for linearizability.
    pub register_ops: usize,
    /// Register keys whose linearizability search ran out of budget (no
    /// verdict).
    pub linearizability_unknown: usize,
    /// Distinct (index, term) log entries the log-matching checker saw.
    pub log_entries: usize,
    /// Torn log tails that recovery cut off after crashes in this run.
    pub torn_tails: u64,
    /// connect: simulated ms from fcs00's clock jump to its renewed leaf.
    pub leaf_renewal_ms: u64,
    /// Simulated ms from agents' registrations to every server's catalog.
    pub agent_sync_ms: Vec<u64>,
    /// Simulated ms from a check's status change to the leader's catalog.
    pub check_ms: Vec<u64>,
    /// Simulated ms from cutting an agent off to its node's critical status.
    pub detect_ms: Vec<u64>,
    /// Simulated ms from healing a cut-off agent to the catalog showing a
    /// check change it made while cut off (anti-entropy after a heal).
    pub heal_sync_ms: Vec<u64>,
    /// Simulated ms from the leader's catalog changing to fcs00's DNS
    /// answering accordingly.
    pub dns_ms: Vec<u64>,
    /// Live nodes declared critical (agent_liveness).
    pub false_verdicts: u64,
    /// Catalog reads answered to the X-Consul-Index watch.
    pub catalog_reads: u64,
    /// Registrations and deregistrations acknowledged by agents.
    pub registrations: u64,
    /// Simulated ms from the Connect registrations to fcc's first answers
    /// through both sidecars.
    pub connect_first_ms: u64,
    /// Longest pause in fcc's answers while the leader was replaced (ms).
    pub connect_failover_gap_ms: u64,
    /// Simulated ms from an intention change to its effect.
    pub intention_ms: Vec<u64>,
    /// Simulated ms from fcs00 booting again to fcc's answers.
    pub connect_restart_ms: u64,
    /// Longest pause in fcc's answers while fcs00's agent alone restarted
    /// (ms).
    pub connect_agent_restart_gap_ms: u64,
    /// Simulated ms from fcs00's clock set right (after 80 h ahead, every
    /// leaf expired to it) to fcc's answers.
    pub connect_skew_recovery_ms: u64,
    /// Requests answered through the sidecars.
    pub connect_answers: u64,
    /// Simulated ms from a root rotation to both agents serving leaves of
    /// the new root.
    pub rotation_ms: u64,
    /// Simulated ms from cutting a node off to its health-checked sessions
    /// being invalidated.
    pub session_invalidate_ms: Vec<u64>,
    /// Lock holds judged by the lock-safety checker.
    pub lock_holds: u64,
    /// Holds that ended because the lock was lost.
    pub lost_holds: u64,
    /// Transaction reads judged by the atomicity checker.
    pub txn_reads: u64,
}

/// One scenario run: the cluster, its observers and the workload's history.
pub(crate) struct Run {
    pub(crate) cluster: SimCluster,
    pub(crate) observers: Observers,
    pub(crate) history: SharedHistory,
    pub(crate) stop: Arc<AtomicBool>,
    /// Workload clients still running.
    pub(crate) active_clients: Arc<std::sync::atomic::AtomicUsize>,
    /// How workload clients behave.
    pub(crate) client_options: ClientOptions,
    /// Servers the workload clients skip (see `workload::Avoid`).
    pub(crate) avoid: workload::Avoid,
    pub(crate) report: Report,
}

pub(crate) fn rand_ms(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(lo..=hi))
}

impl Run {
    pub(crate) fn new(formations: Vec<Formation>, snapshot_threshold: u64) -> Self {
        Self {
            cluster: SimCluster::new(formations, snapshot_threshold),
            observers: Observers::default(),
            history: Arc::new(Mutex::new(History::default())),
            stop: Arc::new(AtomicBool::new(false)),
            active_clients: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            client_options: ClientOptions::default(),
            avoid: Default::default(),
            report: Report::default(),
        }
    }

    /// The common start: three servers with `-bootstrap-expect=3`, started
    /// in seed order, an agreed leader (returned) and three voters.
    pub(crate) async fn three_servers(snapshot_threshold: u64) -> Result<(Self, usize), String> {
        let mut run = Self::new(vec![Formation::Expect(3); 3], snapshot_threshold);
        run.start_all_shuffled(500).await?;
        let leader = run.leader_among(&[0, 1, 2], ELECTION_BOUND).await?;
        run.wait_voters(3, Duration::from_secs(5)).await?;
        Ok((run, leader))
    }

    /// Crashes the leader of consul00-02 and waits for the others to
    /// agree on a new one (recording the failover time); the old leader.
    pub(crate) async fn kill_leader(&mut self) -> Result<usize, String> {
        let all = [0, 1, 2];
        let leader = self.leader_among(&all, ELECTION_BOUND).await?;
        self.cluster.crash(leader, 0);
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
        let t = Instant::now();
        self.leader_among(&others, ELECTION_BOUND).await?;
        self.report.failover_ms.push(t.elapsed().as_millis() as u64);
        Ok(leader)
    }

    /// The common end: stop the workload, then the liveness phase.
    pub(crate) async fn finish(self) -> Result<Report, String> {
        self.finish_with(|_| Box::pin(async { Ok(()) })).await
    }

    /// [`Run::finish`], then `check` on the converged cluster.
    pub(crate) async fn finish_with<F>(mut self, check: F) -> Result<Report, String>
    where
        F: for<'a> FnOnce(
            &'a mut Run,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), String>> + 'a>,
        >,
    {
        self.stop_workload().await?;
        self.converge().await?;
        check(&mut self).await?;
        Ok(self.report)
    }

    /// Lets simulated time pass, sampling the checkers every 5 ms.
    pub(crate) async fn settle(&mut self, d: Duration) -> Result<(), String> {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.observers.sample(&self.cluster)?;
            sleep(Duration::from_millis(5)).await;
        }
        self.observers.sample(&self.cluster)
    }

    /// Waits for a leader agreed by the running servers in `among`.
    pub(crate) async fn leader_among(
        &mut self,
        among: &[usize],
        bound: Duration,
    ) -> Result<usize, String> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            self.observers.sample(&self.cluster)?;
            if let Some(l) = self.agreed(among) {
                return Ok(l);
            }
            sleep(Duration::from_millis(5)).await;
        }
        Err(format!("no leader agreed by {among:?} within {bound:?}"))
    }

    pub(crate) fn agreed(&self, among: &[usize]) -> Option<usize> {
        let mut leader = None;
        for &i in among {
            let l = self.cluster.server(i)?.leader()?;
            let idx = self.cluster.servers.iter().position(|s| s.name == l.name)?;
            if leader.is_some_and(|x| x != idx) {
                return None;
            }
            leader = Some(idx);
        }
        let l = leader?;
        (among.contains(&l) && self.cluster.server(l)?.is_leader()).then_some(l)
    }

    /// Starts `clients` KV clients with the run's client options.
    pub(crate) fn start_workload(&self, clients: usize) {
        let options = self.client_options;
        self.stop.store(false, Ordering::SeqCst);
        let servers: Vec<String> = (0..self.cluster.servers.len())
            .map(|i| self.cluster.http_addr(i))
            .collect();
        for id in 0..clients {
            let (servers, history, stop, avoid) = (
                servers.clone(),
                self.history.clone(),
                self.stop.clone(),
                self.avoid.clone(),
            );
            let active = self.active_clients.clone();
            active.fetch_add(1, Ordering::SeqCst);
            self.cluster.client.spawn(async move {
                workload::run_client(id, servers, history, stop, options, avoid).await;
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    pub(crate) async fn stop_workload(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        // Clients finish their current pass: at most three requests in a
        // row (write, `cas=0` check, read back), each bounded by the client
        // timeout.
        let bound = self.client_options.request_timeout * 3 + Duration::from_secs(1);
        let deadline = Instant::now() + bound;
        while self.active_clients.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return Err(format!("workload clients did not stop within {bound:?}"));
            }
            self.settle(Duration::from_millis(10)).await?;
        }
        Ok(())
    }

    /// Liveness phase: every server runs and is healed; one leader, every
    /// server converges to the same state, every acknowledged write is there.
    pub(crate) async fn converge(&mut self) -> Result<(), String> {
        info!("phase: liveness (faults healed)");
        let healed_at = Instant::now();
        let all: Vec<usize> = (0..self.cluster.servers.len()).collect();
        let leader = self.leader_among(&all, ELECTION_BOUND * 2).await?;
        // A write through the leader commits everything before it.
        let leader_server = self.cluster.server(leader).ok_or("leader vanished")?;
        leader_server
            .write(mesh_core::state::Command::Kv(
                mesh_core::state::KvCommand::Set {
                    key: "liveness/marker".into(),
                    value: b"1".to_vec(),
                    flags: 0,
                },
            ))
            .await
            .map_err(|e| format!("liveness write failed: {e}"))?;
        let deadline = Instant::now() + CONVERGE_BOUND;
        loop {
            self.observers.sample(&self.cluster)?;
            let states = self.digests(&all);
            let target = leader_server.view().digest();
            if states.len() == all.len() && states.iter().all(|s| *s == target) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("servers did not converge within {CONVERGE_BOUND:?}: (applied, digest) = {states:?}"));
            }
            sleep(Duration::from_millis(10)).await;
        }
        self.report.converge_ms = healed_at.elapsed().as_millis() as u64;
        self.observers.compare_logs(&self.cluster)?;
        self.report.log_entries = self.observers.log_matching.entries_seen();
        let history = self.history.lock().expect("history");
        if let Some(v) = history.violations.first() {
            return Err(v.clone());
        }
        // Definite failures first: a violation of theirs would otherwise
        // surface as a puzzling linearizability failure, since a definitely
        // failed update is left out of that history.
        let finals: Vec<(String, mesh_core::state::StateMachine)> = all
            .iter()
            .map(|&i| {
                let s = self.cluster.server(i).ok_or("server vanished")?;
                Ok((
                    self.cluster.servers[i].name.clone(),
                    s.view().read(|sm| sm.clone()),
                ))
            })
            .collect::<Result<_, String>>()?;
        let reads = history
            .reads_seen
            .iter()
            .map(|(c, k, v)| (k.as_str(), v.as_slice(), Seen::Read { client: *c }));
        let register_reads = history.registers.iter().flat_map(|(k, ops)| {
            ops.iter().filter_map(move |op| match &op.kind {
                linearizable::OpKind::Read(Some(v)) => {
                    Some((k.as_str(), v.as_bytes(), Seen::Read { client: op.client }))
                }
                _ => None,
            })
        });
        let states = finals.iter().flat_map(|(name, sm)| {
            sm.kv().iter().map(move |e| {
                (
                    e.key.as_str(),
                    e.value.as_slice(),
                    Seen::FinalState {
                        server: name.as_str(),
                    },
                )
            })
        });
        definite_failures::check(
            &history.definite_failures,
            reads.chain(register_reads).chain(states),
        )?;
        let checked = linearizable::check(&history.registers)
            .map_err(|why| format!("not linearizable: {why}"))?;
        self.report.register_ops = checked.ops;
        self.report.linearizability_unknown = checked.unknown_keys.len();
        for (name, sm) in &finals {
            acked_writes::check(name, sm, &history.acked)?;
        }
        self.report.acked = history.acked.len();
        self.report.unacked = history.unacked;
        self.report.work = history.work;
        self.report.definite_failures = history.definite_failures.len();
        self.report.history_digest = history.digest();
        self.report.terms = self.observers.election.terms_with_leader();
        // Every run elects a leader, which saves its committed vote: none
        // seen means election safety was only sampled.
        if self.observers.committed_votes == 0 {
            return Err("the vote log saw no committed vote (is VoteLog registered?)".into());
        }
        Ok(())
    }

    /// `(applied index, state digest)` of each running server in `among`.
    pub(crate) fn digests(&self, among: &[usize]) -> Vec<(u64, u64)> {
        among
            .iter()
            .filter_map(|i| self.cluster.server(*i).map(|s| s.view().digest()))
            .collect()
    }

    pub(crate) fn voters_everywhere(&self, n: usize) -> Result<(), String> {
        for i in self.cluster.running() {
            let s = self.cluster.server(i).ok_or("not started")?;
            let voters = s.metrics().membership_config.voter_ids().count();
            if voters != n {
                return Err(format!(
                    "{} has {voters} voters, want {n}",
                    self.cluster.servers[i].name
                ));
            }
        }
        Ok(())
    }

    pub(crate) async fn wait_voters(&mut self, n: usize, bound: Duration) -> Result<(), String> {
        let deadline = Instant::now() + bound;
        loop {
            self.observers.sample(&self.cluster)?;
            match self.voters_everywhere(n) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Starts all servers in a seed-chosen order with seed-chosen delays.
    pub(crate) async fn start_all_shuffled(&mut self, max_delay_ms: u64) -> Result<(), String> {
        let mut order: Vec<usize> = (0..self.cluster.servers.len()).collect();
        for i in (1..order.len()).rev() {
            let j = madsim::rand::thread_rng().gen_range(0..=i);
            order.swap(i, j);
        }
        for i in order {
            self.cluster.start(i);
            self.settle(rand_ms(0, max_delay_ms)).await?;
        }
        Ok(())
    }
}

/// Manual bootstrap: consul00 with `-bootstrap`, then consul01 and consul02 join it.
async fn manual_bootstrap() -> Result<Report, String> {
    let mut run = Run::new(
        vec![
            Formation::Bootstrap,
            Formation::Join(vec![0]),
            Formation::Join(vec![0]),
        ],
        200,
    );
    info!("phase: bootstrap consul00");
    run.cluster.start(0);
    run.leader_among(&[0], ELECTION_BOUND).await?;
    info!("phase: consul01 and consul02 join");
    run.settle(rand_ms(0, 2000)).await?;
    run.cluster.start(1);
    run.settle(rand_ms(0, 2000)).await?;
    run.cluster.start(2);
    run.wait_voters(3, Duration::from_secs(20)).await?;
    info!("phase: writes");
    run.start_workload(2);
    run.settle(Duration::from_secs(3)).await?;
    run.finish().await
}

/// All three with `-bootstrap-expect=3`, started in seed-chosen order.
async fn bootstrap_expect() -> Result<Report, String> {
    let mut run = Run::new(vec![Formation::Expect(3); 3], 200);
    info!("phase: start servers in seed order");
    run.start_all_shuffled(1500).await?;
    let all = [0, 1, 2];
    let t = Instant::now();
    run.leader_among(&all, ELECTION_BOUND).await?;
    info!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        "leader elected"
    );
    run.wait_voters(3, Duration::from_secs(5)).await?;
    info!("phase: writes");
    run.start_workload(2);
    run.settle(Duration::from_secs(2)).await?;
    run.finish().await
}

/// Group commit under load: twelve clients with no pause between requests
/// keep more writes in flight than the leader proposes at once, so it
/// batches them (several clients' writes, CAS among them, in one entry),
/// and their reads share leadership rounds;
/// then the leader is killed with batches in flight, and every checker
/// judges the history: each writer must get its own write's answer, a
/// batch that may have committed is "unknown" for each of its writes, and
/// none is lost.
async fn group_commit() -> Result<Report, String> {
    let (mut run, _) = Run::three_servers(256).await?;
    run.client_options.pause = Duration::from_millis(1);
    run.client_options.request_timeout = Duration::from_secs(3);
    info!("phase: twelve eager clients");
    run.start_workload(12);
    run.settle(rand_ms(800, 1500)).await?;
    info!("phase: the leader dies with batches in flight");
    let old = run.kill_leader().await?;
    run.settle(rand_ms(800, 1500)).await?;
    run.cluster.start(old);
    run.settle(Duration::from_secs(1)).await?;
    let batches = mesh_net::server::write_batch::batches_proposed();
    if batches == 0 {
        return Err("no entry held more than one write: group commit went untested".into());
    }
    info!(batches, "batched entries proposed");
    // Concurrent reads share leadership rounds (`read_rounds`): some
    // round must have confirmed more than one read.
    let (rounds, reads) = mesh_net::server::read_rounds::rounds_and_reads();
    if reads <= rounds {
        return Err(format!(
            "{reads} reads confirmed in {rounds} leadership rounds: no round was shared"
        ));
    }
    info!(rounds, reads, "leadership rounds shared by reads");
    run.finish().await
}

/// Leader failover under a KV workload: the leader is killed, isolated,
/// paused or stopped gracefully,
/// a new one takes over, writes continue, the old leader comes back and
/// catches up.
async fn failover() -> Result<Report, String> {
    // A low snapshot threshold so the returning server may need a snapshot.
    let (mut run, leader) = Run::three_servers(64).await?;
    // A client whose request was in flight to the faulted leader gives up
    // after 3 s (seed 76: all three were, and no write could be judged).
    // Longer than the write-gap bound, so a live server that holds a
    // request too long is seen answering late, not hidden by the timeout.
    run.client_options.request_timeout = Duration::from_secs(3);
    info!("phase: workload");
    run.start_workload(3);
    // Long enough that every client deals its deck of register operations
    // at least once before the fault (0.5 s left some seeds, e.g. 97, with
    // no successful delete at all, and the work minimums failed).
    run.settle(rand_ms(1500, 3000)).await?;
    // The fault: 0 = kill, 1 = isolate, 2 = graceful stop (SIGTERM:
    // hand-off), 3 = pause (a long stall: open connections go silent).
    let fault = madsim::rand::thread_rng().gen_range(0..4);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let t = Instant::now();
    // Clients skip the faulted server (a load balancer's health check),
    // so the write gap measures the cluster, not a client stuck on it.
    run.avoid.lock().expect("avoid lock").insert(leader);
    let fault_at = LeaderFault {
        at_ns: workload::now_ns(),
        server: leader,
    };
    match fault {
        0 => {
            info!(leader, "phase: kill the leader");
            let torn = madsim::rand::thread_rng().gen_range(0..64);
            run.cluster.crash(leader, torn);
        }
        1 => {
            info!(leader, "phase: isolate the leader");
            run.cluster.isolate(leader);
        }
        3 => {
            info!(leader, "phase: pause the leader");
            run.cluster.pause(leader);
        }
        _ => {
            // SIGTERM, as `systemctl stop` sends it: the agent's own signal
            // handling (the entry point `mesh agent` runs) hands off
            // leadership and stops.
            info!(leader, "phase: SIGTERM the leader (hand-off, then stop)");
            let old_id = run
                .cluster
                .server(leader)
                .ok_or("leader not running")?
                .node_id();
            run.cluster.terminate(leader);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !run.cluster.agent_stopped(leader) {
                if Instant::now() >= deadline {
                    return Err("SIGTERM: the leader's agent did not stop within 5 s".into());
                }
                run.settle(Duration::from_millis(10)).await?;
            }
            let handed_off = (0..3)
                .filter(|i| *i != leader)
                .filter_map(|i| run.cluster.server(i))
                .any(|s| s.leader().is_some_and(|l| l.node_id != old_id));
            if !handed_off {
                return Err("SIGTERM: the leader stopped without handing off leadership".into());
            }
            run.cluster.crash(leader, 0);
        }
    }
    run.leader_among(&others, ELECTION_BOUND).await?;
    let failover = t.elapsed();
    run.report.failover_ms.push(failover.as_millis() as u64);
    info!(
        failover_ms = failover.as_millis() as u64,
        "phase: new leader; writes continue"
    );
    if fault == 0 && failover > KILLED_LEADER_BOUND {
        return Err(format!(
            "a killed leader was replaced after {failover:?}, over {KILLED_LEADER_BOUND:?}: \
             the survivors waited out the lease"
        ));
    }
    run.settle(rand_ms(1000, 3000)).await?;
    info!("phase: old leader returns");
    match fault {
        1 => run.cluster.heal(leader),
        3 => run.cluster.resume(leader),
        _ => run.cluster.start(leader),
    }
    run.avoid.lock().expect("avoid lock").clear();
    run.settle(Duration::from_secs(1)).await?;
    let history = run.history.clone();
    let report = run.finish().await?;
    let attempts = history.lock().expect("history").write_attempts.clone();
    let gaps = write_gap::check(&[fault_at], &attempts, WRITE_GAP_BOUND.as_nanos() as u64)?;
    for g in gaps {
        info!(
            resume_ms = g.resume_ns / 1_000_000,
            longest_answer_ms = g.longest_answer_ns / 1_000_000,
            "write gap after the leader fault"
        );
    }
    Ok(report)
}

/// Writes resume within this long after a leader fault, and no live server
/// takes longer to answer (`checkers::write_gap`): an election (p99 about
/// 1 s in `failover`) plus a round trip, with room for the slowest draws.
const WRITE_GAP_BOUND: Duration = Duration::from_millis(2000);

/// Full-cluster restart: all three lose power (unsynced bytes lost, torn
/// tails) and come back; every acknowledged write survives.
async fn full_restart() -> Result<Report, String> {
    let (mut run, _) = Run::three_servers(100).await?;
    info!("phase: workload");
    run.start_workload(3);
    run.settle(rand_ms(1000, 3000)).await?;
    info!("phase: power loss on every server");
    for i in 0..3 {
        let torn = madsim::rand::thread_rng().gen_range(0..64);
        run.cluster.crash(i, torn);
    }
    run.settle(rand_ms(0, 1000)).await?;
    info!("phase: restart all");
    for i in 0..3 {
        run.cluster.start(i);
        run.settle(rand_ms(0, 300)).await?;
    }
    let t = Instant::now();
    run.leader_among(&[0, 1, 2], ELECTION_BOUND * 2).await?;
    run.report.failover_ms.push(t.elapsed().as_millis() as u64);
    run.settle(Duration::from_secs(1)).await?;
    run.finish().await
}

/// Graceful leave and rejoin under a KV workload: a seed-chosen server
/// (the leader or a follower) runs `mesh leave` (hand-off, removal from the
/// peer set, stop), the remaining two keep serving, then the server starts
/// again from its data dir and `-retry-join` brings it back as a voter.
async fn leave_rejoin() -> Result<Report, String> {
    let (mut run, leader) = Run::three_servers(200).await?;
    run.start_workload(2);
    // Long enough for every kind of register operation to succeed before
    // the leave (0.3 s left seed 38 without a register write).
    run.settle(rand_ms(1500, 3000)).await?;
    let leaver = if madsim::rand::thread_rng().gen_bool(0.5) {
        leader
    } else {
        (leader + 1) % 3
    };
    info!(
        leaver,
        is_leader = leaver == leader,
        "phase: graceful leave"
    );
    let server = run.cluster.server(leaver).ok_or("leaver not running")?;
    let node = run.cluster.servers[leaver].node.as_ref().ok_or("no node")?;
    node.spawn(async move { server.leave().await })
        .await
        .map_err(|e| format!("leave task failed: {e}"))?
        .map_err(|e| format!("leave failed: {e}"))?;
    run.cluster.crash(leaver, 0);
    let rest: Vec<usize> = (0..3).filter(|i| *i != leaver).collect();
    run.leader_among(&rest, ELECTION_BOUND).await?;
    run.wait_voters(2, Duration::from_secs(5)).await?;
    run.settle(rand_ms(500, 1500)).await?;
    info!("phase: rejoin");
    run.cluster.start(leaver);
    run.wait_voters(3, Duration::from_secs(20)).await?;
    run.settle(Duration::from_secs(1)).await?;
    run.finish().await
}

/// Scale: five servers under a write-heavy workload of many keys with
/// 16 KiB values, snapshots and log compaction every 64 entries, while
/// servers crash (with torn tails) or get cut off; then everything heals
/// and the cluster must converge. Reports the convergence time.
async fn scale() -> Result<Report, String> {
    let mut run = Run::new(vec![Formation::Expect(5); 5], 64);
    run.start_all_shuffled(500).await?;
    let all: Vec<usize> = (0..5).collect();
    run.leader_among(&all, ELECTION_BOUND).await?;
    run.wait_voters(5, Duration::from_secs(10)).await?;
    info!("phase: write-heavy workload under faults");
    run.client_options.value_bytes = 16 * 1024;
    run.start_workload(8);
    for _ in 0..4 {
        run.settle(rand_ms(300, 1500)).await?;
        let target = madsim::rand::thread_rng().gen_range(0..5);
        let crash = madsim::rand::thread_rng().gen_bool(0.5);
        if crash {
            let torn = madsim::rand::thread_rng().gen_range(0..4096);
            run.cluster.crash(target, torn);
        } else {
            run.cluster.isolate(target);
        }
        run.settle(rand_ms(500, 3000)).await?;
        if crash {
            run.cluster.start(target);
        } else {
            run.cluster.heal(target);
        }
    }
    follower_misses_compacted_log(&mut run, &all).await?;
    info!("phase: healed; measuring convergence");
    let healed = Instant::now();
    run.stop.store(true, Ordering::SeqCst);
    loop {
        run.observers.sample(&run.cluster)?;
        let digests = run.digests(&all);
        let same = digests.len() == all.len() && digests.windows(2).all(|w| w[0] == w[1]);
        if same && run.agreed(&all).is_some() {
            break;
        }
        if healed.elapsed() > CONVERGE_BOUND {
            return Err(format!(
                "scale: no convergence within {CONVERGE_BOUND:?} of healing: {digests:?}"
            ));
        }
        sleep(Duration::from_millis(10)).await;
    }
    let converge_ms = healed.elapsed().as_millis() as u64;
    info!(converge_ms, "converged");
    run.stop_workload().await?;
    run.converge().await?;
    run.report.converge_ms = converge_ms;
    Ok(run.report)
}

/// Makes a snapshot install happen in every run, not by luck of the seed:
/// a follower stops while the write workload runs until the leader has
/// compacted its log past everything the follower holds, then restarts, so
/// the only way for it to catch up is the leader's snapshot (and the
/// convergence check that follows compares its state with the others').
async fn follower_misses_compacted_log(run: &mut Run, all: &[usize]) -> Result<(), String> {
    info!("phase: a follower misses a compacted stretch of the log");
    let leader = run.leader_among(all, ELECTION_BOUND).await?;
    let followers: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let f = followers[madsim::rand::thread_rng().gen_range(0..followers.len())];
    let held = run
        .cluster
        .server(f)
        .and_then(|s| s.metrics().last_log_index)
        .unwrap_or(0);
    run.cluster.crash(f, 0);
    let up: Vec<usize> = all.iter().copied().filter(|i| *i != f).collect();
    let t = Instant::now();
    let bound = Duration::from_secs(20);
    loop {
        run.settle(Duration::from_millis(100)).await?;
        let leader = run.leader_among(&up, ELECTION_BOUND).await?;
        let purged = run
            .cluster
            .server(leader)
            .and_then(|s| s.metrics().purged.map(|l| l.index));
        if purged.is_some_and(|p| p > held) {
            info!(
                held,
                ?purged,
                "the leader compacted past the stopped follower"
            );
            break;
        }
        if t.elapsed() > bound {
            return Err(format!(
                "the leader never compacted its log past index {held} within {bound:?}: \
                 the snapshot install this phase exists for could not happen"
            ));
        }
    }
    run.cluster.start(f);
    Ok(())
}

/// Clock faults, each held for a few seconds under the KV workload, with
/// the wall clock also stepped by up to an hour:
/// 1. the leader's clock crawls (5-10% of true speed): its heartbeat timer
///    fires ten times too late, and it would keep a time-based read lease
///    ten times too long. It is then cut off; the others elect a new
///    leader, and any read the old one answers from its own state is stale
///    (the `lease_read` planted bug is caught here, and only with drift);
/// 2. a follower's clock races (1.5-3x): it times out early and campaigns.
///
/// In each phase the cluster must keep committing writes, and every
/// checker (stale reads, linearizability, election and log safety) runs
/// throughout.
async fn clock_drift() -> Result<Report, String> {
    let (mut run, _) = Run::three_servers(64).await?;
    let all = [0, 1, 2];
    // Clients that give up after a second, as a load balancer would, so a
    // write stuck on the cut-off leader does not stop its client reading.
    run.client_options.request_timeout = Duration::from_secs(1);
    run.start_workload(4);
    run.settle(rand_ms(500, 1500)).await?;
    for phase in ["the leader's clock crawls", "a follower's clock races"] {
        let leader = run.leader_among(&all, ELECTION_BOUND).await?;
        let (target, rate, skew) = {
            let mut rng = madsim::rand::thread_rng();
            let skew = rng.gen_range(-3_600_000..=3_600_000);
            if phase.starts_with("the leader") {
                (leader, rng.gen_range(50_000..=100_000), skew)
            } else {
                let follower = (leader + rng.gen_range(1..3)) % 3;
                (follower, rng.gen_range(1_500_000..=10_000_000), skew)
            }
        };
        info!(
            server = target,
            rate_ppm = rate,
            skew_ms = skew,
            "phase: {phase}"
        );
        run.cluster.set_clock(target, rate, skew);
        let acked_before = run.history.lock().expect("history").acked.len();
        if target == leader {
            // Cut the slow leader off from its peers (not from clients)
            // while it may still think it leads: the others elect a new
            // leader and take writes, and any read it still answers from
            // its own state would be stale.
            run.settle(rand_ms(200, 1000)).await?;
            info!(
                server = target,
                "cutting the slow leader off from its peers"
            );
            run.cluster.cut_from_peers(target);
            let others: Vec<usize> = all.iter().copied().filter(|i| *i != target).collect();
            let t = Instant::now();
            run.leader_among(&others, ELECTION_BOUND).await?;
            run.report.failover_ms.push(t.elapsed().as_millis() as u64);
            run.settle(rand_ms(1000, 2000)).await?;
            run.cluster.reconnect_to_peers(target);
        }
        run.settle(rand_ms(2000, 4000)).await?;
        let acked = run.history.lock().expect("history").acked.len() - acked_before;
        if acked == 0 {
            return Err(format!(
                "no write committed while {phase} (consul{target:02} at {rate} ppm)"
            ));
        }
        info!(acked, "clock restored");
        run.cluster.set_clock(target, 1_000_000, 0);
    }
    run.settle(Duration::from_secs(1)).await?;
    run.finish().await
}

/// Slow and silent HTTP clients cannot hold the API hostage. Against a
/// random server, the client host opens connections that send half a
/// request head, that go idle after one request, and that send half a
/// body. While they hang, the workload must still get answers; within the
/// read timeouts (plus a margin), the server must close the first two and
/// answer the third with 408.
async fn slow_clients() -> Result<Report, String> {
    use mesh_net::http::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let (mut run, _) = Run::three_servers(200).await?;
    let target = madsim::rand::thread_rng().gen_range(0..3);
    let addr = run.cluster.http_addr(target);
    info!(server = target, "phase: slow clients connect");
    let key = "slow/body";
    let openings: [(&str, String); 3] = [
        (
            "half a head",
            "GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n".into(),
        ),
        (
            "idle keep-alive",
            "GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        ),
        (
            "half a body",
            format!(
                "PUT /v1/kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
            ),
        ),
    ];
    let bound = HEADER_READ_TIMEOUT.max(BODY_READ_TIMEOUT) + Duration::from_secs(5);
    let mut watchers = Vec::new();
    for (what, opening) in openings {
        let addr = addr.clone();
        watchers.push(run.cluster.client.spawn(async move {
            let mut stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("{what}: connect: {e}"))?;
            stream
                .write_all(opening.as_bytes())
                .await
                .map_err(|e| format!("{what}: write: {e}"))?;
            stream
                .flush()
                .await
                .map_err(|e| format!("{what}: flush: {e}"))?;
            // Read until the server closes the connection, keeping what it
            // said; give up after the bound.
            let mut said = Vec::new();
            let mut buf = [0u8; 1024];
            let closed = madsim::time::timeout(bound, async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => said.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await
            .is_ok();
            if !closed {
                return Err(format!("{what}: connection still open after {bound:?}"));
            }
            Ok((what, String::from_utf8_lossy(&said).into_owned()))
        }));
    }
    // The API keeps answering while they hang.
    run.start_workload(2);
    run.settle(Duration::from_secs(3)).await?;
    let acked = run.history.lock().expect("history").acked.len();
    if acked == 0 {
        return Err("no write was acknowledged while slow clients held connections".into());
    }
    let mut replies = Vec::new();
    for w in watchers {
        let (what, said) = w.await.map_err(|e| format!("watcher task: {e}"))??;
        info!(what, reply = %said.lines().next().unwrap_or(""), bytes = said.len(), "server closed the slow connection");
        replies.push((what, said));
    }
    for (what, said) in replies {
        let first_line = said.lines().next().unwrap_or("");
        let expected = match what {
            "half a head" => "",
            "idle keep-alive" => "HTTP/1.1 200 OK",
            _ => "HTTP/1.1 408 Request Timeout",
        };
        if first_line != expected {
            return Err(format!(
                "{what}: server answered {first_line:?}, expected {expected:?}"
            ));
        }
    }
    // The half-sent value must not have been written.
    let server = run.cluster.server(target).ok_or("target server vanished")?;
    if server.view().read(|sm| sm.kv().get(key).is_some()) {
        return Err(format!("the half-sent body of {key} was stored"));
    }
    run.finish().await
}

/// A follower cut off from everyone for a few seconds, then healed, must
/// not disturb the leader: with PreVote it never raises its term while it
/// cannot win, so on its return the same leader keeps the same term (without
/// PreVote it would come back with a higher term and force an election).
async fn isolated_follower() -> Result<Report, String> {
    let (mut run, leader) = Run::three_servers(200).await?;
    let all = [0, 1, 2];
    // Clients that give up after a second, as a load balancer would: with
    // the default 10 s, a client whose request went to the cut-off
    // follower sat out most of the run (`checkers::work_done`: seed 298
    // had no successful register write).
    run.client_options.request_timeout = Duration::from_secs(1);
    run.start_workload(2);
    run.settle(rand_ms(500, 1500)).await?;
    let term = |run: &Run, i: usize| run.cluster.server(i).map(|s| s.metrics().current_term);
    let before = term(&run, leader).ok_or("leader vanished")?;
    let follower = (leader + madsim::rand::thread_rng().gen_range(1..3)) % 3;
    info!(follower, "phase: isolate a follower");
    run.cluster.isolate(follower);
    run.settle(rand_ms(2000, 5000)).await?;
    info!(follower, "phase: heal it");
    run.cluster.heal(follower);
    run.settle(Duration::from_secs(2)).await?;
    let now_leader = run.agreed(&all);
    let after = term(&run, leader).ok_or("leader vanished")?;
    if now_leader != Some(leader) || after != before {
        return Err(format!(
            "a returning follower disturbed the leader: leader {leader} term {before} before, leader {now_leader:?} term {after} after"
        ));
    }
    run.finish().await
}

/// The least successful work of each kind a passing run of each scenario
/// must show (`checkers::work_done`): a quarter of the smallest count
/// measured over seeds 0..300 (scale and slow_clients: 0..40), rounded
/// down, and at least 1. Measured minimums, in the same order:
/// manual_bootstrap 17 17 8 2 2 2, bootstrap_expect 12 12 5 1 1 1,
/// failover 10 9 5 1 1 1, full_restart 28 28 11 4 3 4, leave_rejoin
/// 14 15 7 2 2 1, clock_drift 81 79 41 14 14 10, slow_clients
/// 78 78 38 12 12 13, isolated_follower 23 23 13 3 3 3, swarm 8 7 4 1 2 1,
/// scale 87 88 60 22 21 16.
const MINIMUMS: &[(&str, WorkDone)] = &[
    // (writes, reads, register reads, writes, deletes, swapped CASes)
    ("manual_bootstrap", min(4, 4, 2, 1, 1, 1)),
    ("bootstrap_expect", min(3, 3, 1, 1, 1, 1)),
    ("failover", min(2, 2, 1, 1, 1, 1)),
    ("full_restart", min(7, 7, 2, 1, 1, 1)),
    ("leave_rejoin", min(3, 3, 1, 1, 1, 1)),
    ("clock_drift", min(20, 19, 10, 3, 3, 2)),
    ("slow_clients", min(19, 19, 9, 3, 3, 3)),
    ("isolated_follower", min(5, 5, 3, 1, 1, 1)),
    ("swarm", min(2, 1, 1, 1, 1, 1)),
    ("scale", min(21, 22, 15, 5, 5, 4)),
    // Two (one) KV clients beside the agents; measured later.
    ("agents", min(1, 1, 1, 1, 1, 1)),
    ("agent_liveness", min(1, 1, 1, 1, 1, 1)),
    ("connect", min(1, 1, 1, 1, 1, 1)),
    ("locks", min(1, 1, 1, 1, 1, 1)),
    ("group_commit", min(100, 100, 20, 5, 5, 3)),
];

const fn min(
    writes: u64,
    reads: u64,
    register_reads: u64,
    register_writes: u64,
    register_deletes: u64,
    register_cas: u64,
) -> WorkDone {
    WorkDone {
        writes,
        reads,
        register_reads,
        register_writes,
        register_deletes,
        register_cas,
    }
}

/// Runs scenario `name` in the current simulation.
pub async fn run(name: &str) -> Result<Report, String> {
    let mut report = run_scenario(name).await?;
    // One run per process, so the process-wide count is this run's.
    report.torn_tails = mesh_net::log_store::torn_tails_recovered();
    let minimum = MINIMUMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| *m)
        .ok_or_else(|| format!("no work minimums for scenario {name:?}"))?;
    work_done::check(&report.work, &minimum)?;
    Ok(report)
}

async fn run_scenario(name: &str) -> Result<Report, String> {
    // The seed also draws the network: per-packet latency up to 1-10 ms.
    let max_latency = rand_ms(1, 10);
    madsim::net::NetSim::current()
        .update_config(|c| c.send_latency = Duration::from_micros(100)..max_latency);
    match name {
        "manual_bootstrap" => manual_bootstrap().await,
        "bootstrap_expect" => bootstrap_expect().await,
        "failover" => failover().await,
        "full_restart" => full_restart().await,
        "leave_rejoin" => leave_rejoin().await,
        "swarm" => crate::swarm::run().await,
        "scale" => scale().await,
        "clock_drift" => clock_drift().await,
        "slow_clients" => slow_clients().await,
        "isolated_follower" => isolated_follower().await,
        "agents" => crate::agents::agents().await,
        "agent_liveness" => crate::agents::agent_liveness().await,
        "connect" => crate::connect::connect().await,
        "locks" => crate::locks::locks().await,
        "group_commit" => group_commit().await,
        other => Err(format!(
            "unknown scenario {other:?}; known: {:?}",
            crate::SCENARIOS
        )),
    }
}
