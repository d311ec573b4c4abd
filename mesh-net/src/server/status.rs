//! What a server knows about the cluster: the leader, the peers and their
//! progress, as `/v1/status/*` and `/v1/operator/raft/configuration` show it.

use crate::routing::{LeaderSource, LeaderView};

use super::*;

impl Server {
    /// The leader this server knows of.
    pub fn leader(&self) -> Option<ServerInfo> {
        let m = self.metrics();
        let id = m.current_leader?;
        let leader = m
            .membership_config
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(nid, n)| to_info(*nid, n));
        leader
    }

    /// Whether this server is the leader right now (by its own view).
    pub fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    /// Status as this server sees it.
    pub fn status(&self) -> ClusterStatus {
        let m = self.metrics();
        let voters: BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let peers = m
            .membership_config
            .nodes()
            .map(|(id, n)| PeerStatus {
                info: to_info(*id, n),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
                last_index: if *id == self.node_id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map_or(0, |l| l.index)
                },
            })
            .collect::<Vec<_>>();
        ClusterStatus {
            me: self.info.clone(),
            initialized: !peers.is_empty(),
            leader: self.leader(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            peers,
            known_servers: self
                .formation
                .lock()
                .expect("formation lock")
                .known_servers(),
            config_index: m.membership_config.log_id().map_or(0, |l| l.index),
        }
    }

    /// Status as the leader sees it (it knows every peer's log index).
    pub async fn leader_status(&self) -> Result<ClusterStatus, RpcError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.leader() {
                Some(l) if l.node_id == self.node_id => return Ok(self.status()),
                Some(l) => match self
                    .rpc
                    .call(&l.rpc_addr, &Request::Status, FORWARD_TIMEOUT)
                    .await
                {
                    Ok(reply) => return reply.into_status(),
                    Err(e) if !e.not_delivered() => return Err(RpcError::Internal(e.to_string())),
                    Err(_) => {}
                },
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(RpcError::NoLeader);
            }
            clock::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Milliseconds since the leader was last heard from (0 on the leader).
    pub fn last_contact_ms(&self) -> u64 {
        if self.is_leader() {
            return 0;
        }
        match *self.last_leader_contact.lock().expect("contact lock") {
            Some(t) => t.elapsed().as_millis() as u64,
            None => 0,
        }
    }

    pub(super) fn is_voter(&self) -> bool {
        self.metrics()
            .membership_config
            .voter_ids()
            .any(|id| id == self.node_id)
    }
}

impl LeaderSource for Server {
    fn leader_view(&self) -> tokio::sync::watch::Receiver<LeaderView> {
        self.leader_view.subscribe()
    }

    fn leaderless_ms(&self) -> u64 {
        let m = self.metrics();
        if m.state == ServerState::Leader {
            // A leader without a quorum's acknowledgement is no leader.
            return m.millis_since_quorum_ack.unwrap_or(0);
        }
        match *self.last_leader_contact.lock().expect("contact lock") {
            Some(t) => t.elapsed().as_millis() as u64,
            None => self.started.elapsed().as_millis() as u64,
        }
    }
}

impl Server {
    /// Publishes every change of leader or term to [`LeaderSource`]
    /// subscribers (routing), until Raft shuts down.
    pub(super) async fn publish_leader_view(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut leading_term = None;
        loop {
            let (state, term) = {
                let m = metrics.borrow_and_update();
                (m.state, m.current_term)
            };
            if state == ServerState::Leader && leading_term != Some(term) {
                leading_term = Some(term);
                self.telemetry.raft_became_leader.inc(&[]);
            }
            if state == ServerState::Leader {
                // Leading counts as having a leader: a leader that steps
                // down (a hand-off) is not leaderless since it started.
                *self.last_leader_contact.lock().expect("contact lock") = Some(Instant::now());
            }
            let view = LeaderView {
                leader: self.leader(),
                term: metrics.borrow().current_term,
            };
            self.leader_view.send_if_modified(|v| {
                let changed = *v != view;
                *v = view;
                changed
            });
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves when this server stops leading, or has not heard from a
    /// quorum within the election bound (so a write in flight here may
    /// never commit: the others may have elected a new leader).
    pub(super) async fn leadership_lost(&self) {
        let lease_ms = self.election_bound_ms();
        let mut metrics = self.raft.metrics();
        let term = metrics.borrow().current_term;
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader
                    || m.current_term != term
                    || m.millis_since_quorum_ack.is_some_and(|ms| ms > lease_ms)
                {
                    return;
                }
            }
            // Metrics are reported on every tick of openraft's loop; the
            // timeout only bounds the wait if they stop.
            let _ = clock::timeout(Duration::from_millis(25), metrics.changed()).await;
        }
    }
}
