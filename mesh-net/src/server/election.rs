//! The election driver: I/O for `mesh_core::election`.

use super::*;

impl Server {
    /// Starts elections: Raft §5.2 with PreVote (Raft thesis §9.6).
    /// openraft's own election timer is off (`enable_elect: false`): openraft
    /// 0.9 draws its timeout once per server, so two candidates could
    /// collide term after term (the simulator found such seeds), and it
    /// campaigns without asking first, so a server that cannot win (cut off,
    /// stale log, a racing clock) keeps raising its term and deposes a
    /// healthy leader when it reconnects. Here each round waits a freshly
    /// drawn timeout after the last sign of a leader, then asks every voter
    /// whether it would vote for this server ([`Server::would_vote_for`]);
    /// only with a majority does a real election start.
    pub(super) async fn election_watchdog(self: Arc<Self>) {
        use openraft::AsyncRuntime;
        use rand::Rng;
        let timing = self.config.timing;
        // Peers refuse votes for a lease of one maximum election timeout
        // after hearing from a leader; waiting less only wastes a round.
        let lease = timing.election_timeout_max_ms;
        let spread = timing.election_timeout_max_ms - timing.election_timeout_min_ms;
        // After a split vote the candidates have no leader lease to wait
        // out: retry after a plain election timeout.
        let draw = |candidate: bool| {
            let (lo, hi) = if candidate {
                (
                    timing.election_timeout_min_ms,
                    timing.election_timeout_max_ms,
                )
            } else {
                (lease, lease + spread)
            };
            Duration::from_millis(crate::runtime::MeshRuntime::thread_rng().gen_range(lo..=hi))
        };
        let mut timeout = draw(false);
        let mut round_start = Instant::now();
        loop {
            clock::sleep(Duration::from_millis(timing.heartbeat_ms / 2)).await;
            if !self.may_campaign() {
                round_start = Instant::now();
                continue;
            }
            let quiet_since = self
                .last_election_signal()
                .map_or(round_start, |t| t.max(round_start));
            if quiet_since.elapsed() < timeout {
                continue;
            }
            round_start = Instant::now();
            let candidate = self.metrics().state == ServerState::Candidate;
            timeout = draw(candidate);
            // The round takes up to an RPC timeout: if a leader appeared or
            // this server voted meanwhile, that answer is stale.
            let heard_meanwhile = || {
                self.last_election_signal()
                    .is_some_and(|t| t >= round_start)
            };
            if self.pre_vote().await && self.may_campaign() && !heard_meanwhile() {
                debug!(
                    term = self.metrics().current_term,
                    "a majority would vote for this server: starting an election"
                );
                let _ = self.raft.trigger().elect().await;
            }
        }
    }

    /// The last event that restarts the election timer: hearing from a
    /// leader, or granting a vote.
    pub(super) fn last_election_signal(&self) -> Option<Instant> {
        let contact = *self.last_leader_contact.lock().expect("contact lock");
        let vote = *self.last_vote_granted.lock().expect("vote lock");
        contact.max(vote)
    }

    /// A voter that is not leading and not leaving.
    pub(super) fn may_campaign(&self) -> bool {
        let m = self.metrics();
        m.state != ServerState::Leader
            && m.membership_config.voter_ids().any(|id| id == self.node_id)
            && !self.handing_off.load(Ordering::SeqCst)
    }

    /// The PreVote round: whether a majority of voters (this one included)
    /// would vote for this server in the next term.
    pub(super) async fn pre_vote(&self) -> bool {
        let m = self.metrics();
        let voters: Vec<(u64, ServerNode)> = m
            .membership_config
            .nodes()
            .filter(|(id, _)| m.membership_config.voter_ids().any(|v| v == **id))
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let needed = voters.len() / 2 + 1;
        let last_log = self.log.last_log_id().map(|l| (l.leader_id.term, l.index));
        let ask = Request::PreVote { last_log };
        let timeout = Duration::from_millis(self.config.timing.election_timeout_min_ms);
        let mut answers: futures::stream::FuturesUnordered<_> = voters
            .iter()
            .filter(|(id, _)| *id != self.node_id)
            .map(|(_, n)| self.rpc.call(&n.rpc_addr, &ask, timeout))
            .collect();
        // This server's own vote; stop as soon as a majority said yes,
        // without waiting out the timeout of a dead or cut-off peer.
        let mut granted = 1;
        while granted < needed {
            match answers.next().await {
                Some(Ok(Response::PreVote { granted: true })) => granted += 1,
                Some(_) => {}
                None => break,
            }
        }
        debug!(granted, needed, "pre-vote round");
        granted >= needed
    }

    /// PreVote's rule: grant if this server has not heard from a leader for
    /// a full lease (so a real vote would be granted too, and a healthy
    /// leader is never disturbed) and the asker's log is at least as up to
    /// date as this server's (§5.4.1).
    pub(super) fn would_vote_for(&self, their_last: Option<(u64, u64)>) -> bool {
        if self.is_leader() {
            return false;
        }
        let lease = Duration::from_millis(self.config.timing.election_timeout_max_ms);
        let heard = self
            .last_leader_contact
            .lock()
            .expect("contact lock")
            .is_some_and(|t| t.elapsed() < lease);
        let ours = self.log.last_log_id().map(|l| (l.leader_id.term, l.index));
        !heard && their_last >= ours
    }
}
