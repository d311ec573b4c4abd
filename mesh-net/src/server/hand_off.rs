//! Leaving: leadership hand-off (SIGTERM, `mesh leave`) and leaving the
//! Raft configuration.

use mesh_core::election::{hand_off_target, Input};

use super::*;

impl Server {
    // ---- leaving ---------------------------------------------------------

    /// Hands leadership to the most up-to-date follower (if this server
    /// leads), waiting up to `wait` for another server to take over.
    /// Returns whether leadership moved.
    pub async fn hand_off_leadership(&self, wait: Duration) -> bool {
        if self.metrics().state != ServerState::Leader {
            return true;
        }
        // Raft thesis §3.10: the leader stops taking writes while it hands
        // off, or the target can never catch up with its log and loses the
        // election it was asked to win.
        self.handing_off.store(true, Ordering::SeqCst);
        self.election_input(Input::HandingOff(true));
        let handed_off = self.transfer_leadership(wait).await;
        if !handed_off {
            warn!("leadership hand-off did not complete in time");
            self.handing_off.store(false, Ordering::SeqCst);
            self.election_input(Input::HandingOff(false));
        }
        handed_off
    }

    pub(super) async fn transfer_leadership(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let m = self.metrics();
        let Some(replication) = m.replication.clone() else {
            return false;
        };
        let voters: Vec<u64> = m.membership_config.voter_ids().collect();
        let matched: Vec<(u64, Option<u64>)> = replication
            .iter()
            .map(|(id, l)| (*id, l.map(|l| l.index)))
            .collect();
        let Some(target) = hand_off_target(self.node_id, &voters, &matched) else {
            return false;
        };
        let Some(node) = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == target)
            .map(|(_, n)| n.clone())
        else {
            return false;
        };
        // This server is going away: it must not win the election back
        // (`may_campaign` is false while handing off, and openraft's own
        // timer is off).
        info!(to = %node, "handing off leadership");
        // The target's first election can fail (a follower still inside its
        // leader lease refuses to vote); ask again until it wins.
        let round = Duration::from_millis(self.config.timing.election_timeout_max_ms * 2);
        let mut metrics = self.raft.metrics();
        while Instant::now() < deadline {
            // Let the target catch up to our last entry first: writes
            // accepted just before the hand-off began may still be on their
            // way into our own log (swarm/failover seed 73: the target
            // campaigned one entry short, lost, and nobody led for 3 s).
            // Stop waiting if we no longer lead: then only the election
            // that deposed us matters.
            let caught_up = Self::wait_metrics(&mut metrics, deadline, |m| {
                if m.state != ServerState::Leader {
                    return Some(false);
                }
                if mutants::enabled(Mutant::HandoffWithoutCatchup) {
                    return Some(true);
                }
                let ours = m
                    .last_log_index
                    .max(self.log.last_log_id().map(|l| l.index));
                let theirs = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .map(|l| l.index);
                (theirs >= ours).then_some(true)
            })
            .await;
            if caught_up == Some(true) {
                if crate::buggify::fires("leader_hand_off") {
                    warn!("buggify: hand-off request dropped");
                } else if let Err(e) = self
                    .rpc
                    .call(
                        &node.rpc_addr,
                        &Request::TimeoutNow { to: target },
                        Duration::from_secs(1),
                    )
                    .await
                {
                    warn!(error = %e, "hand-off request failed");
                }
            }
            let round_end = (Instant::now() + round).min(deadline);
            let me = self.node_id;
            let new_leader = Self::wait_metrics(&mut metrics, round_end, |m| {
                m.current_leader.filter(|l| *l != me)
            })
            .await;
            if let Some(l) = new_leader {
                info!(new_leader = l, "leadership handed off");
                return true;
            }
        }
        false
    }

    /// Waits (on openraft's metrics channel) until `pred` gives an answer,
    /// or `until`.
    async fn wait_metrics<T>(
        metrics: &mut tokio::sync::watch::Receiver<RaftMetrics<u64, ServerNode>>,
        until: Instant,
        mut pred: impl FnMut(&RaftMetrics<u64, ServerNode>) -> Option<T>,
    ) -> Option<T> {
        loop {
            if let Some(answer) = pred(&metrics.borrow_and_update()) {
                return Some(answer);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match clock::timeout(left, metrics.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or Raft shut down.
                _ => return None,
            }
        }
    }

    /// `mesh leave`: hand off leadership, leave the Raft configuration,
    /// stop.
    pub async fn leave(&self) -> Result<(), RpcError> {
        self.hand_off_leadership(Duration::from_secs(3)).await;
        let result = self.remove_peer(self.node_id).await;
        if let Err(e) = &result {
            warn!(error = %e, "could not leave the Raft configuration");
        }
        self.shutdown().await;
        result
    }
}
