//! Node liveness on the leader: heartbeats in, `serfHealth` verdicts out
//! through Raft. The decisions are `mesh_core::liveness`'s; this file only
//! feeds it heartbeats, catalog changes and time, and commits its outputs.

use mesh_core::liveness::{Liveness, LivenessTiming, Output};
use mesh_core::state::catalog::{CatalogCommand, CheckStatus, SERF_HEALTH_CHECK};

use crate::routing::{Idempotence, LeaderSource};

use super::*;

/// Heartbeats waiting for the liveness driver. A full queue drops
/// heartbeats (the next one comes within a second); it never blocks RPC.
pub(super) const HEARTBEAT_QUEUE: usize = 1024;

impl Server {
    /// Records a heartbeat if this server leads.
    pub(super) fn heartbeat_here(&self, node: String) -> Result<RpcResponse, RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let _ = self.heartbeats.try_send(node);
        Ok(Response::Done)
    }

    /// Sends this agent's heartbeat to the leader (locally if it leads).
    pub async fn heartbeat(&self, node: String) -> Result<(), RpcError> {
        self.on_leader(
            Request::Heartbeat { node },
            Idempotence::Idempotent,
            FORWARD_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    pub(super) fn ms_since_start(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The catalog's nodes with their `serfHealth` status.
    fn catalog_liveness(&self) -> Vec<(String, Option<CheckStatus>)> {
        self.view.read(|sm| {
            let c = sm.catalog();
            c.nodes()
                .map(|n| {
                    let status = c
                        .node_checks(&n.node)
                        .find(|ch| ch.check_id == SERF_HEALTH_CHECK)
                        .map(|ch| ch.status);
                    (n.node.clone(), status)
                })
                .collect()
        })
    }

    /// Whether this server, leading, has not heard from a quorum for an
    /// election timeout: it hears nothing and could commit no verdict.
    pub(super) fn without_quorum(&self) -> bool {
        self.is_leader() && self.leaderless_ms() > self.config.timing.election_timeout_max_ms
    }

    /// Runs for the server's lifetime: while this server leads with a
    /// quorum, keeps a [`Liveness`] and commits its verdicts.
    pub(super) async fn liveness_driver(
        self: Arc<Self>,
        mut heartbeats: tokio::sync::mpsc::Receiver<String>,
    ) {
        let mut views = self.leader_view.subscribe();
        loop {
            // Wait to lead with a quorum; heartbeats meanwhile are stale.
            // A new term's leader (or this one, once its quorum answers
            // again) starts with full timeouts.
            while !self.is_leader() || self.without_quorum() {
                while heartbeats.try_recv().is_ok() {}
                let _ = clock::timeout(Duration::from_millis(100), views.changed()).await;
            }
            let term = self.metrics().current_term;
            // Nodes with an agent are those with a serfHealth check; nodes
            // registered by hand through /v1/catalog/register have none and
            // are never judged (as in Consul).
            let agents: Vec<(String, Option<CheckStatus>)> = self
                .catalog_liveness()
                .into_iter()
                .filter(|(_, status)| status.is_some())
                .collect();
            let mut known: BTreeSet<String> = agents.iter().map(|(n, _)| n.clone()).collect();
            let mut live = Liveness::new(LivenessTiming::default(), self.ms_since_start(), agents);
            let mut catalog = self.view.clone();
            while self.is_leader() && !self.without_quorum() && self.metrics().current_term == term
            {
                // Heartbeats already queued count before any verdict: after
                // a slow write, nodes that did report in are not failed.
                while let Ok(node) = heartbeats.try_recv() {
                    self.take_heartbeat(&mut live, &node);
                }
                let now = self.ms_since_start();
                if !crate::mutants::enabled(crate::mutants::Mutant::LivenessNeverFails) {
                    live.handle_timeout(now);
                }
                if !self.commit_verdicts(&mut live).await {
                    // Retried at the next timeout, not at once: a write
                    // that fails fast must not spin.
                    clock::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let now = self.ms_since_start();
                let sleep_ms = live
                    .poll_timeout()
                    .map_or(1_000, |t| t.saturating_sub(now).clamp(1, 1_000));
                tokio::select! {
                    biased;
                    hb = heartbeats.recv() => {
                        let Some(node) = hb else { return };
                        self.take_heartbeat(&mut live, &node);
                    }
                    _ = catalog.changed() => {
                        // Nodes that left the catalog are no longer judged.
                        let now_nodes: BTreeSet<String> =
                            self.catalog_liveness().into_iter().map(|(n, _)| n).collect();
                        for n in known.difference(&now_nodes) {
                            live.forget(n);
                        }
                        known = now_nodes;
                    }
                    () = clock::sleep(Duration::from_millis(sleep_ms)) => {}
                }
            }
        }
    }

    /// A heartbeat from `node`: judged only if the node is in the catalog
    /// (its agent registers it within a sync).
    fn take_heartbeat(&self, live: &mut Liveness, node: &str) {
        let in_catalog = self.view.read(|sm| sm.catalog().node(node).is_some());
        if in_catalog {
            live.heartbeat(self.ms_since_start(), node, true);
        }
    }

    /// Commits `live`'s verdicts; false if a write failed (the verdict is
    /// taken again later).
    async fn commit_verdicts(&self, live: &mut Liveness) -> bool {
        while let Some(Output::SetHealth {
            node,
            status,
            output,
        }) = live.poll_output()
        {
            let cmd = CatalogCommand::NodeHealth {
                node: node.clone(),
                status,
                output,
            };
            info!(%node, status = status.as_str(), "node liveness changed");
            if let Err(e) = self.write_here(cmd.into()).await {
                warn!(%node, error = %e, "could not record node liveness; will retry");
                live.write_failed(&node);
                return false;
            }
        }
        true
    }
}
