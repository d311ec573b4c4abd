//! The election driver: the I/O around `mesh_core::election`, which decides
//! when this server asks for PreVotes and when it starts an election
//! (Raft §5.2 with PreVote, Raft thesis §9.6; see that module for why
//! openraft's own election timer is off).
//!
//! The driver feeds the machine openraft's role changes, leader contact and
//! granted votes (from the RPC handlers), and PreVote answers; it sends the
//! PreVote questions the machine asks for, calls openraft's `elect` when it
//! says so, and otherwise sleeps until the machine's next deadline.

use mesh_core::election::{Elections, Input, Output, Role};
use tokio::sync::mpsc;

use super::*;

/// What of openraft's metrics the election machine is told about.
type RoleReport = (Role, Vec<u64>, u64);

impl Server {
    /// The election machine of a server with this configuration.
    pub(super) fn new_elections(node_id: u64, timing: RaftTiming) -> Elections {
        use openraft::AsyncRuntime;
        use rand::Rng;
        let timing = timing.election_timing();
        // Seeded by the simulator (through the getrandom patch).
        let seed = crate::runtime::MeshRuntime::thread_rng().gen::<u64>();
        Elections::new(node_id, timing, seed, 0)
    }

    /// Milliseconds on this host's monotonic clock since the server started:
    /// the election machine's time.
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Feeds one input to the election machine and wakes the driver, which
    /// drains its outputs.
    pub(super) fn election_input(&self, input: Input) {
        let now = self.now_ms();
        self.elections
            .lock()
            .expect("elections lock")
            .handle(now, input);
        self.election_wake.notify_one();
    }

    /// This server's last log entry as `(term, index)`.
    pub(super) fn last_log(&self) -> Option<(u64, u64)> {
        self.log.last_log_id().map(|l| (l.leader_id.term, l.index))
    }

    /// PreVote's rule for a question from a peer (see
    /// `Elections::would_vote_for`): no leader heard for a lease, and the
    /// asker's log at least as up to date as ours (§5.4.1).
    pub(super) fn would_vote_for(&self, their_last: Option<(u64, u64)>) -> bool {
        if self.is_leader() {
            return false;
        }
        let now = self.now_ms();
        let mut elections = self.elections.lock().expect("elections lock");
        let mine = self.last_log();
        elections.handle(now, Input::LastLog(mine));
        // The planted bug treats every asker's log as up to date.
        let their_last = if mutants::enabled(Mutant::PrevoteIgnoresLog) {
            their_last.max(mine)
        } else {
            their_last
        };
        elections.would_vote_for(now, their_last)
    }

    fn role_report(m: &RaftMetrics<u64, ServerNode>) -> RoleReport {
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Follower => Role::Follower,
            ServerState::Learner | ServerState::Shutdown => Role::Learner,
        };
        (
            role,
            m.membership_config.voter_ids().collect(),
            m.current_term,
        )
    }

    /// Runs until Raft shuts down.
    pub(super) async fn election_driver(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<Input>();
        let mut reported: Option<RoleReport> = None;
        loop {
            let report = Self::role_report(&metrics.borrow());
            if reported.as_ref() != Some(&report) {
                let (role, voters, term) = report.clone();
                self.election_input(Input::Role { role, voters, term });
                reported = Some(report);
            }
            self.run_election_outputs(&answers_tx).await;
            let deadline_ms = self
                .elections
                .lock()
                .expect("elections lock")
                .poll_timeout();
            let due = async {
                match deadline_ms {
                    Some(at) => {
                        clock::sleep(Duration::from_millis(at.saturating_sub(self.now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return; // Raft shut down.
                    }
                }
                Some(answer) = answers_rx.recv() => self.election_input(answer),
                () = self.election_wake.notified() => {}
                () = due => {
                    let now = self.now_ms();
                    let mut elections = self.elections.lock().expect("elections lock");
                    elections.handle(now, Input::LastLog(self.last_log()));
                    elections.handle_timeout(now);
                }
            }
        }
    }

    /// Drains the machine's outputs: PreVote questions go out concurrently
    /// (answers come back through `answers`), an election starts at once.
    async fn run_election_outputs(&self, answers: &mpsc::UnboundedSender<Input>) {
        loop {
            let output = self.elections.lock().expect("elections lock").poll_output();
            match output {
                None => return,
                Some(Output::AskPreVote {
                    round,
                    to,
                    last_log,
                }) => {
                    let m = self.metrics();
                    let timeout = Duration::from_millis(self.config.timing.election_timeout_min_ms);
                    for peer in to {
                        let addr = m
                            .membership_config
                            .nodes()
                            .find(|(id, _)| **id == peer)
                            .map(|(_, n)| n.rpc_addr.clone());
                        let rpc = self.rpc.clone();
                        let answers = answers.clone();
                        tokio::spawn(async move {
                            let reply = match addr {
                                Some(addr) => rpc
                                    .call(&addr, &Request::PreVote { to: peer, last_log }, timeout)
                                    .await
                                    .ok(),
                                None => None,
                            };
                            let input = match reply {
                                Some(Response::PreVote { granted }) => Input::PreVoteReply {
                                    round,
                                    from: peer,
                                    granted,
                                },
                                _ => Input::PreVoteFailed { round, from: peer },
                            };
                            // The driver may have stopped; then nobody needs it.
                            let _ = answers.send(input);
                        });
                    }
                }
                Some(Output::StartElection { round }) => {
                    // openraft reports a vote it grants (in its metrics, and
                    // to the vote handler that feeds `VoteGranted`) only
                    // once the vote is on disk; the log store holds it from
                    // the moment it is cast. A stored vote for another
                    // server in a term newer than openraft has reported
                    // (a vote being written right now) means a candidate
                    // is winning that term: electing now would start the
                    // next term and split it (failover seed 110: the second
                    // survivor of a gone leader voted for the first, its
                    // PreVote round was granted while that vote was being
                    // written, and nobody led for 825 ms).
                    let known_term = self.metrics().current_term;
                    if let Some(vote) = self.log.vote() {
                        let id = vote.leader_id();
                        if id.term > known_term && id.voted_for() != Some(self.node_id) {
                            debug!(
                                round,
                                term = id.term,
                                known_term,
                                "voted for another server in a newer term: not starting an election"
                            );
                            self.election_input(Input::VoteGranted);
                            continue;
                        }
                    }
                    debug!(
                        round,
                        term = known_term,
                        "a majority would vote for this server: starting an election"
                    );
                    if let Err(e) = self.raft.trigger().elect().await {
                        warn!(error = %e, "could not start an election");
                    }
                }
            }
        }
    }
}
