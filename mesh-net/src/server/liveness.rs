//! Node liveness on the leader: heartbeats in, `serfHealth` verdicts out
//! through Raft. The decisions are `mesh_core::liveness`'s; this file only
//! feeds it heartbeats, catalog changes and time, and commits its outputs.

use mesh_core::liveness::{Liveness, LivenessTiming, Output};
use mesh_core::state::catalog::{CatalogCommand, CheckStatus, SERF_HEALTH_CHECK};

use crate::routing::Idempotence;

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

    fn ms_since_start(&self) -> u64 {
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

    /// Runs for the server's lifetime: while this server leads, keeps a
    /// [`Liveness`] and commits its verdicts.
    pub(super) async fn liveness_driver(
        self: Arc<Self>,
        mut heartbeats: tokio::sync::mpsc::Receiver<String>,
    ) {
        let mut views = self.leader_view.subscribe();
        loop {
            // Wait to lead; heartbeats meanwhile are stale.
            while !self.is_leader() {
                while heartbeats.try_recv().is_ok() {}
                let _ = clock::timeout(Duration::from_millis(100), views.changed()).await;
            }
            let mut live = Liveness::new(
                LivenessTiming::default(),
                self.ms_since_start(),
                self.catalog_liveness(),
            );
            let mut catalog = self.view.clone();
            let mut known: BTreeSet<String> = self
                .catalog_liveness()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            while self.is_leader() {
                let now = self.ms_since_start();
                if !crate::mutants::enabled(crate::mutants::Mutant::LivenessNeverFails) {
                    live.handle_timeout(now);
                }
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
                    if let Err(e) = self.write(cmd.into()).await {
                        warn!(%node, error = %e, "could not record node liveness; will retry");
                        live.write_failed(&node);
                    }
                }
                let sleep_ms = live
                    .poll_timeout()
                    .map_or(1_000, |t| t.saturating_sub(now).clamp(1, 1_000));
                tokio::select! {
                    biased;
                    hb = heartbeats.recv() => {
                        let Some(node) = hb else { return };
                        let in_catalog = self.view.read(|sm| sm.catalog().node(&node).is_some());
                        live.heartbeat(self.ms_since_start(), &node, in_catalog);
                    }
                    _ = catalog.changed() => {
                        let now_nodes: BTreeSet<String> =
                            self.catalog_liveness().into_iter().map(|(n, _)| n).collect();
                        let now = self.ms_since_start();
                        for n in now_nodes.difference(&known) {
                            live.node_registered(now, n);
                        }
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
}
