//! A client agent's way to the cluster: RPC to the servers, following the
//! leader.
//!
//! [`RemoteServers`] keeps a view of who leads, refreshed by asking the
//! servers for their status (every [`STEADY_POLL`] while the leader answers
//! for itself, every [`SEARCH_POLL`] while it does not), and routes writes
//! and reads to the leader through [`crate::routing`], so a client agent
//! follows leader changes, re-routes requests that provably did not run,
//! and answers "outcome unknown" for a write caught in a leader change, by
//! the same rules as a server. Stale reads go to any server that answers.
//!
//! Nothing here blocks the HTTP API for long on a dead server: a connect
//! fails within the RPC client's connect timeout, a leader that stops
//! answering is abandoned once another server names a new one, and a
//! request without a leader gives up after [`LIMITS`]' `leader_wait`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use mesh_core::formation::ServerInfo;
use mesh_core::state::{Command, CommandResult};
use mesh_core::wire::{
    ClusterStatus, Consistency, ReadRequest, ReadResponse, Request, Response, RpcError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backend::Cluster;
use crate::clock::{self, Instant};
use crate::log_limit::Repeats;
use crate::routing::{Idempotence, LeaderSource, LeaderView, RouteLimits, Router};
use crate::rpc::{RpcClient, RpcRequest, RpcResponse};
use crate::server::{rpc_target, Server, FORWARD_TIMEOUT, LEADER_WAIT, MAX_WAIT_MS};

/// Status poll period while the leader confirms itself.
pub const STEADY_POLL: Duration = Duration::from_millis(500);
/// Status poll period while no leader is confirmed.
pub const SEARCH_POLL: Duration = Duration::from_millis(100);
/// How long one status question may take.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Routing bounds of a client agent: Consul's `rpc_hold_timeout` for a
/// leader to appear; a leader unconfirmed for 2 s is presumed gone.
pub const LIMITS: RouteLimits = RouteLimits {
    leader_wait: LEADER_WAIT,
    leader_silent_ms: 2_000,
    leaderless_give_up_ms: 3_000,
};

struct Shared {
    /// Server RPC addresses: the configured ones, then every server the
    /// cluster's status names.
    servers: Mutex<Vec<String>>,
    view: watch::Sender<LeaderView>,
    /// When a leader last confirmed itself.
    confirmed: Mutex<Option<Instant>>,
    started: Instant,
}

/// The servers, as a client agent reaches them.
pub struct RemoteServers {
    shared: Arc<Shared>,
    rpc: RpcClient,
    tracker: JoinHandle<()>,
}

impl Drop for RemoteServers {
    fn drop(&mut self) {
        self.tracker.abort();
    }
}

impl RemoteServers {
    /// Starts following the cluster whose servers include `servers`
    /// (`-retry-join` addresses; a missing port means 8300). Connections
    /// come from `source_ip` (the agent's `-bind`).
    pub fn start(
        servers: &[String],
        source_ip: std::net::IpAddr,
        tls: Option<Arc<crate::rpc_tls::RpcTls>>,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared {
            servers: Mutex::new(servers.iter().map(|s| rpc_target(s)).collect()),
            view: watch::Sender::new(LeaderView::default()),
            confirmed: Mutex::new(None),
            started: Instant::now(),
        });
        let rpc = RpcClient::with_source_ip(source_ip, tls);
        let tracker = tokio::spawn(track(shared.clone(), rpc.clone()));
        Arc::new(RemoteServers {
            shared,
            rpc,
            tracker,
        })
    }

    fn router(&self) -> Router<'_> {
        Router {
            source: self,
            rpc: &self.rpc,
            me: None,
            limits: LIMITS,
        }
    }

    async fn to_leader(
        &self,
        req: RpcRequest,
        idempotence: Idempotence,
        timeout: Duration,
    ) -> Result<RpcResponse, RpcError> {
        self.router()
            .forward(req, idempotence, timeout, |_| async {
                Response::Error(RpcError::NoLeader)
            })
            .await
    }

    /// Sends `req` to the first server that answers, leader first.
    async fn to_any(&self, req: RpcRequest, timeout: Duration) -> Result<RpcResponse, RpcError> {
        let mut last = RpcError::NoLeader;
        for addr in candidates(&self.shared) {
            match self.rpc.call(&addr, &req, timeout).await {
                Ok(Response::Error(e)) => return Err(e),
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    debug!(server = %addr, error = %e, "server did not answer");
                    last = RpcError::Internal(format!("no server answered: {e}"));
                }
            }
        }
        Err(last)
    }

    async fn read_impl(&self, r: ReadRequest) -> Result<ReadResponse, RpcError> {
        let timeout = FORWARD_TIMEOUT + Duration::from_millis(r.wait_ms.min(MAX_WAIT_MS));
        let stale = r.consistency == Consistency::Stale;
        let resp = if stale {
            self.to_any(Request::Read(r), timeout).await?
        } else {
            self.to_leader(Request::Read(r), Idempotence::Idempotent, timeout)
                .await?
        };
        resp.into_read()
    }

    async fn write_impl(&self, cmd: Command) -> Result<(u64, CommandResult), RpcError> {
        self.to_leader(
            Request::Write(cmd),
            Idempotence::AtMostOnce,
            FORWARD_TIMEOUT,
        )
        .await?
        .into_written()
    }

    async fn status_impl(&self) -> Result<ClusterStatus, RpcError> {
        self.to_any(Request::Status, STATUS_TIMEOUT)
            .await?
            .into_status()
    }

    async fn leader_status_impl(&self) -> Result<ClusterStatus, RpcError> {
        let leader = self.shared.view.borrow().leader.clone();
        let Some(leader) = leader else {
            return Err(RpcError::NoLeader);
        };
        self.rpc
            .call(&leader.rpc_addr, &Request::Status, FORWARD_TIMEOUT)
            .await
            .map_err(|e| RpcError::Internal(e.to_string()))?
            .into_status()
    }

    async fn heartbeat_impl(&self, node: String) -> Result<(), RpcError> {
        self.to_leader(
            Request::Heartbeat { node },
            Idempotence::Idempotent,
            FORWARD_TIMEOUT,
        )
        .await
        .map(|_| ())
    }
}

/// Server addresses to try, the believed leader first.
fn candidates(shared: &Shared) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(l) = &shared.view.borrow().leader {
        out.push(l.rpc_addr.clone());
    }
    for s in shared.servers.lock().expect("servers lock").iter() {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// Keeps the leader view fresh for the agent's lifetime.
async fn track(shared: Arc<Shared>, rpc: RpcClient) {
    // The last refusal logged: a server that refuses this agent (its TLS
    // settings do not admit it) is said once, not at every poll.
    let mut refused = Repeats::default();
    loop {
        let mut confirmed = false;
        for addr in candidates(&shared) {
            let st = match rpc.call(&addr, &Request::Status, STATUS_TIMEOUT).await {
                Ok(Response::Status(st)) => st,
                Ok(Response::Error(RpcError::Rejected(why))) => {
                    if refused.changed(&why) {
                        warn!(server = %addr, reason = %why, "a server refuses this agent; it finds no leader until its settings admit it");
                    }
                    continue;
                }
                _ => continue,
            };
            learn_servers(&shared, &st);
            let term = st.term;
            let leader = st.leader.clone();
            match leader {
                // The leader speaking for itself.
                Some(l) if l.node_id == st.me.node_id => {
                    publish(&shared, Some(l), term);
                    *shared.confirmed.lock().expect("confirmed lock") = Some(Instant::now());
                    confirmed = true;
                    break;
                }
                // A follower naming a leader in a newer term than ours:
                // ask that leader next.
                Some(l) if term > shared.view.borrow().term => publish(&shared, Some(l), term),
                _ => {}
            }
        }
        clock::sleep(if confirmed { STEADY_POLL } else { SEARCH_POLL }).await;
    }
}

fn publish(shared: &Shared, leader: Option<ServerInfo>, term: u64) {
    shared.view.send_if_modified(|v| {
        let changed = v.leader != leader || v.term != term;
        if changed && v.leader.as_ref().map(|l| l.node_id) != leader.as_ref().map(|l| l.node_id) {
            info!(leader = ?leader.as_ref().map(|l| &l.name), term, "client agent follows a new leader");
        }
        v.leader = leader.clone();
        v.term = v.term.max(term);
        changed
    });
}

fn learn_servers(shared: &Shared, st: &ClusterStatus) {
    let mut servers = shared.servers.lock().expect("servers lock");
    for p in &st.peers {
        if !servers.contains(&p.info.rpc_addr) {
            servers.push(p.info.rpc_addr.clone());
        }
    }
}

impl LeaderSource for RemoteServers {
    fn leader_view(&self) -> watch::Receiver<LeaderView> {
        self.shared.view.subscribe()
    }

    fn leaderless_ms(&self) -> u64 {
        let since = match *self.shared.confirmed.lock().expect("confirmed lock") {
            Some(t) => t.elapsed(),
            None => self.shared.started.elapsed(),
        };
        // Confirmations come every STEADY_POLL: silence shorter than three
        // polls is not leaderlessness.
        let ms = since.as_millis() as u64;
        if ms < 3 * STEADY_POLL.as_millis() as u64 {
            0
        } else {
            ms
        }
    }
}

impl Cluster for RemoteServers {
    fn read(&self, r: ReadRequest) -> BoxFuture<'_, Result<ReadResponse, RpcError>> {
        Box::pin(self.read_impl(r))
    }

    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<(u64, CommandResult), RpcError>> {
        Box::pin(self.write_impl(cmd))
    }

    fn status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>> {
        Box::pin(self.status_impl())
    }

    fn leader_status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>> {
        Box::pin(self.leader_status_impl())
    }

    fn heartbeat(&self, node: String) -> BoxFuture<'_, Result<(), RpcError>> {
        Box::pin(self.heartbeat_impl(node))
    }

    fn sign_leaf(
        &self,
        r: crate::backend::LeafRequest,
    ) -> BoxFuture<'_, Result<mesh_core::connect::ca::IssuedLeaf, RpcError>> {
        Box::pin(async move {
            let req = Request::SignLeaf {
                service: r.service,
                datacenter: r.datacenter,
                public_key_der: r.public_key_der,
            };
            self.to_leader(req, Idempotence::Idempotent, FORWARD_TIMEOUT)
                .await?
                .into_leaf()
        })
    }

    fn rotate_root(
        &self,
        private_key: mesh_core::connect::ca::SecretPem,
        config: Option<mesh_core::state::ca::CaConfig>,
    ) -> BoxFuture<'_, Result<(), RpcError>> {
        Box::pin(async move {
            self.to_leader(
                Request::RotateRoot {
                    private_key,
                    config,
                },
                Idempotence::AtMostOnce,
                FORWARD_TIMEOUT,
            )
            .await
            .map(|_| ())
        })
    }

    fn renew_session(
        &self,
        id: String,
    ) -> BoxFuture<'_, Result<Option<mesh_core::state::sessions::Session>, RpcError>> {
        Box::pin(async move {
            self.to_leader(
                Request::RenewSession { id },
                Idempotence::Idempotent,
                FORWARD_TIMEOUT,
            )
            .await?
            .into_renewed()
        })
    }

    fn known_leader(&self) -> bool {
        // A leader not confirmed for the silence bound is not known.
        self.shared.view.borrow().leader.is_some()
            && self
                .shared
                .confirmed
                .lock()
                .expect("confirmed lock")
                .is_some_and(|t| (t.elapsed().as_millis() as u64) < LIMITS.leader_silent_ms)
    }

    fn last_contact_ms(&self) -> u64 {
        match *self.shared.confirmed.lock().expect("confirmed lock") {
            Some(t) => t.elapsed().as_millis() as u64,
            None => 0,
        }
    }

    fn server(&self) -> Option<&Arc<Server>> {
        None
    }
}
