//! A Consul server: one Raft voter with its storage, RPC endpoint, cluster
//! formation (bootstrap, bootstrap-expect, join) and the leader-side
//! handling of writes, consistent reads and membership changes.
//!
//! Entry points used by the HTTP API (`write`, `read`, `join_cluster`, ...)
//! route a request to the leader: locally if this server leads, else over
//! RPC, retrying only while the request provably was not carried out
//! (no leader known, a "not the leader" answer, a refused connection).
//! Requests that arrive over RPC are answered by the leader only, so a
//! request is forwarded at most once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{self, Instant};
use futures::StreamExt;
use mesh_core::formation::{BootstrapMode, Decision, Formation, ServerInfo};
use mesh_core::snapshot_transfer::{Progress, Reassembly, TransferId};
use mesh_core::state::{Command, CommandResult};
use mesh_core::wire::{
    evaluate, ClusterStatus, Consistency, PeerStatus, ReadRequest, ReadResponse, Request, Response,
    RpcError,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError};
use openraft::storage::Snapshot;
use openraft::{RaftMetrics, ServerState};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::disk::Disk;
use crate::log_store::{decode_record, json_record, read_records, FileKind, LogStore, OpenError};
use crate::mutants::{self, Mutant};
use crate::network::NetworkFactory;
use crate::raft_types::{
    ChunkAck, Raft, RaftEnvelope, RaftReply, RaftRequest, ServerNode, SnapshotChunk,
};
use crate::rpc::{self, RpcClient, RpcRequest, RpcResponse};
use crate::state_store::{StateStore, StateView};

/// Raft timing. Shorter than Consul's defaults (1 s heartbeat timeout):
/// failover is bounded by `election_timeout_max_ms` (the leader lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout; also the leader lease
    /// during which followers refuse to vote for another candidate.
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
        }
    }
}

/// How a server is configured (the server half of `mesh agent -server`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Node name (`-node`).
    pub node_name: String,
    /// Address the RPC listener binds (`-bind` + `-server-port`).
    pub rpc_bind: SocketAddr,
    /// Address other servers reach this one at (`-advertise`, default `-bind`).
    pub rpc_advertise: String,
    /// HTTP address other tools should use for this node.
    pub http_addr: String,
    /// `-bootstrap`, `-bootstrap-expect=N`, or neither.
    pub bootstrap: BootstrapMode,
    /// `-join` / `-retry-join` addresses (RPC addresses of other servers).
    pub join: Vec<String>,
    /// Keep trying to join forever (`-retry-join`) instead of giving up.
    pub retry_join: bool,
    /// Raft timing.
    pub timing: RaftTiming,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_threshold: u64,
}

/// Why a server could not start. Each variant says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Stored state could not be read; the data dir needs attention.
    #[error("cannot open stored state: {0}")]
    Storage(#[from] OpenError),
    /// The disk failed while writing the node id.
    #[error("cannot write node id to {file}: {source}")]
    NodeId {
        /// File.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The RPC address could not be bound.
    #[error("cannot bind server RPC address {addr}: {source} (is another agent running, or is -bind wrong?)")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// openraft refused to start.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

const NODE_ID_FILE: &str = "node-id";
const KIND_NODE_ID: u8 = 5;
/// How long entry points keep looking for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(7);
/// RPC deadline for forwarded requests (writes include replication).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a quorum check for a consistent read.
const LINEARIZE_TIMEOUT: Duration = Duration::from_secs(3);
/// Consul's maximum blocking-query wait.
pub const MAX_WAIT_MS: u64 = 600_000;

/// A running server.
pub struct Server {
    node_id: u64,
    info: ServerInfo,
    raft: Raft,
    view: StateView,
    /// A reader of the log openraft owns; clones share state.
    log: LogStore,
    rpc: RpcClient,
    formation: Mutex<Formation>,
    formation_error: Mutex<Option<String>>,
    config: ServerConfig,
    last_leader_contact: Mutex<Option<Instant>>,
    /// When this server last granted a vote (restarts its election timer).
    last_vote_granted: Mutex<Option<Instant>>,
    /// Leadership is being handed off: new writes are refused (not run).
    handing_off: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The snapshot being received from the leader, chunk by chunk.
    snapshot_in: Mutex<Reassembly>,
}

fn load_or_create_node_id(disk: &dyn Disk) -> Result<u64, StartError> {
    if let Some(rec) = read_records(disk, NODE_ID_FILE, FileKind::Atomic, &[KIND_NODE_ID])?.pop() {
        return Ok(decode_record(disk, NODE_ID_FILE, &rec)?);
    }
    // Seeded in the simulator (see the getrandom patch); never 0.
    let id = rand::random::<u64>() >> 1 | 1;
    disk.write_atomic(NODE_ID_FILE, &json_record(KIND_NODE_ID, &id))
        .map_err(|source| StartError::NodeId {
            file: disk.describe(NODE_ID_FILE),
            source,
        })?;
    Ok(id)
}

fn to_info(id: u64, node: &ServerNode) -> ServerInfo {
    ServerInfo {
        node_id: id,
        name: node.name.clone(),
        rpc_addr: node.rpc_addr.clone(),
        http_addr: node.http_addr.clone(),
        bootstrap_expect: None,
    }
}

fn to_node(info: &ServerInfo) -> ServerNode {
    ServerNode {
        name: info.name.clone(),
        rpc_addr: info.rpc_addr.clone(),
        http_addr: info.http_addr.clone(),
    }
}

/// Normalizes a join address: a missing port means Consul's 8300.
pub fn rpc_target(addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_ok()
        || addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:8300")
    }
}

impl Server {
    /// Opens storage on `disk`, starts Raft and the RPC listener, and begins
    /// cluster formation in the background.
    pub async fn start(config: ServerConfig, disk: Arc<dyn Disk>) -> Result<Arc<Self>, StartError> {
        if let BootstrapMode::Expect(0) = config.bootstrap {
            return Err(StartError::Config(
                "-bootstrap-expect must be at least 1".into(),
            ));
        }
        let node_id = load_or_create_node_id(disk.as_ref())?;
        let log_store = LogStore::open(disk.clone())?;
        let log = log_store.clone();
        let has_state = log_store.has_state();
        let (state_store, view) = StateStore::open(disk.clone())?;
        let info = ServerInfo {
            node_id,
            name: config.node_name.clone(),
            rpc_addr: config.rpc_advertise.clone(),
            http_addr: config.http_addr.clone(),
            bootstrap_expect: match config.bootstrap {
                BootstrapMode::Expect(n) => Some(n),
                _ => None,
            },
        };
        let formation = Formation::new(info.clone(), config.bootstrap, has_state)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let raft_config = openraft::Config {
            cluster_name: "mesh".into(),
            heartbeat_interval: config.timing.heartbeat_ms,
            election_timeout_min: config.timing.election_timeout_min_ms,
            // Elections start from `election_watchdog`, after a PreVote.
            enable_elect: false,
            election_timeout_max: config.timing.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
            max_in_snapshot_log_to_keep: config.snapshot_threshold.min(1000),
            max_payload_entries: 256,
            install_snapshot_timeout: 5_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let rpc = RpcClient::new();
        let listener =
            TcpListener::bind(config.rpc_bind)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.rpc_bind,
                    source,
                })?;
        let raft = Raft::new(
            node_id,
            Arc::new(raft_config),
            NetworkFactory::new(rpc.clone()),
            log_store,
            state_store,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        info!(node = %config.node_name, node_id, rpc = %config.rpc_bind, has_state, "server started");
        let server = Arc::new(Self {
            node_id,
            info,
            raft,
            view,
            log,
            rpc,
            formation: Mutex::new(formation),
            formation_error: Mutex::new(None),
            config,
            last_leader_contact: Mutex::new(None),
            last_vote_granted: Mutex::new(None),
            handing_off: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            snapshot_in: Mutex::new(Reassembly::new()),
        });
        let handler_server = server.clone();
        let serve = tokio::spawn(rpc::serve(listener, move |req| {
            let s = handler_server.clone();
            async move { s.handle_rpc(req).await }
        }));
        let formation = tokio::spawn(server.clone().formation_loop());
        let watchdog = tokio::spawn(server.clone().election_watchdog());
        server
            .tasks
            .lock()
            .expect("tasks lock")
            .extend([serve, formation, watchdog]);
        Ok(server)
    }

    /// This server's Raft id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// This server's identity.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The applied state (for stale reads and checkers).
    pub fn view(&self) -> &StateView {
        &self.view
    }

    /// `(index, term, fingerprint)` of every Raft log entry this server
    /// holds (for the log-matching checker).
    pub fn log_fingerprints(&self) -> Vec<(u64, u64, u64)> {
        self.log.fingerprints()
    }

    /// The latest Raft metrics.
    pub fn metrics(&self) -> RaftMetrics<u64, ServerNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The last formation problem (e.g. a bootstrap-expect mismatch), if any.
    pub fn formation_error(&self) -> Option<String> {
        self.formation_error.lock().expect("formation lock").clone()
    }

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
                    Ok(Response::Status(st)) => return Ok(st),
                    Ok(other) => {
                        return Err(RpcError::Internal(format!("unexpected answer {other:?}")))
                    }
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

    /// Stops Raft and every task of this server.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            t.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
    }

    // ---- RPC -------------------------------------------------------------

    /// Answers one request that arrived on the RPC port.
    pub async fn handle_rpc(self: Arc<Self>, req: RpcRequest) -> RpcResponse {
        match req {
            Request::Raft(RaftEnvelope { to, .. }) if to != self.node_id => Response::Error(RpcError::Rejected(format!(
                "raft message for node {to} reached node {} (the server at this address was replaced)",
                self.node_id
            ))),
            Request::Raft(RaftEnvelope {
                msg: RaftRequest::SnapshotChunk(_),
                ..
            }) if crate::buggify::fires("snapshot_install") =>
            {
                // The transfer breaks mid-way; the leader resumes it.
                Response::Error(RpcError::Internal(
                    "buggify: snapshot transfer interrupted".into(),
                ))
            }
            Request::Raft(env) => Response::Raft(self.handle_raft(env.msg).await),
            Request::Hello(peer) => {
                self.observe_server(peer);
                Response::Status(self.status())
            }
            Request::Status => Response::Status(self.status()),
            Request::PreVote { last_log } => Response::PreVote {
                granted: self.would_vote_for(last_log),
            },
            Request::TimeoutNow => {
                info!("leadership hand-off requested: starting an election");
                match self.raft.trigger().elect().await {
                    Ok(()) => Response::Done,
                    Err(e) => Response::Error(RpcError::Internal(e.to_string())),
                }
            }
            other => self.handle_as_leader(other).await,
        }
    }

    async fn handle_raft(&self, req: RaftRequest) -> RaftReply {
        match req {
            RaftRequest::AppendEntries(r) => {
                let res = self.raft.append_entries(r).await;
                if res.as_ref().is_ok_and(|r| r.is_success()) {
                    *self.last_leader_contact.lock().expect("contact lock") = Some(Instant::now());
                }
                RaftReply::AppendEntries(res)
            }
            RaftRequest::Vote(r) => {
                let res = self.raft.vote(r).await;
                if res.as_ref().is_ok_and(|resp| resp.vote_granted) {
                    // Raft §5.2: granting a vote restarts the election timer.
                    *self.last_vote_granted.lock().expect("vote lock") = Some(Instant::now());
                }
                RaftReply::Vote(res)
            }
            RaftRequest::SnapshotChunk(chunk) => {
                RaftReply::SnapshotChunk(self.receive_chunk(chunk).await)
            }
        }
    }

    /// Takes one snapshot chunk; installs the snapshot with the last one.
    async fn receive_chunk(&self, chunk: SnapshotChunk) -> Result<ChunkAck, Fatal<u64>> {
        let id = TransferId {
            snapshot_id: chunk.meta.snapshot_id.clone(),
            term: chunk.vote.leader_id().term,
            total_len: chunk.total_len,
        };
        let progress =
            self.snapshot_in
                .lock()
                .expect("snapshot lock")
                .accept(id, chunk.offset, &chunk.data);
        match progress {
            Ok(Progress::Partial { held }) => Ok(ChunkAck::Held(held)),
            Ok(Progress::Complete(data)) => {
                let snapshot = Snapshot {
                    meta: chunk.meta,
                    snapshot: Box::new(data),
                };
                self.raft
                    .install_full_snapshot(chunk.vote, snapshot)
                    .await
                    .map(ChunkAck::Installed)
            }
            Err(e) => {
                // A broken sender; keep nothing of this chunk and say so.
                warn!(error = %e, "refused a snapshot chunk");
                Ok(ChunkAck::Held(0))
            }
        }
    }

    fn not_leader(&self) -> RpcError {
        match self.leader() {
            Some(l) if l.node_id != self.node_id => RpcError::NotLeader { leader: Some(l) },
            _ => RpcError::NoLeader,
        }
    }

    /// Carries out a leader-only request here, or says who leads.
    async fn handle_as_leader(&self, req: RpcRequest) -> RpcResponse {
        let result = match req {
            Request::Write(cmd) => self.write_here(cmd).await,
            Request::Read(r) => self.read_here(r).await.map(Response::Read),
            Request::Join(info) => self.add_server_here(info).await.map(|()| Response::Done),
            Request::RemovePeer { node_id } => self
                .remove_server_here(node_id)
                .await
                .map(|()| Response::Done),
            other => Err(RpcError::Rejected(format!("unexpected request {other:?}"))),
        };
        result.unwrap_or_else(Response::Error)
    }

    async fn write_here(&self, cmd: Command) -> Result<RpcResponse, RpcError> {
        if self.handing_off.load(Ordering::SeqCst) {
            // Not run: the caller retries and finds the new leader.
            return Err(RpcError::NoLeader);
        }
        if mutants::enabled(Mutant::AckBeforeCommit) && self.is_leader() {
            let index = self.metrics().last_log_index.unwrap_or(0) + 1;
            return match self.raft.client_write_ff(cmd).await {
                Ok(_) => Ok(Response::Written {
                    index,
                    result: CommandResult::Bool(true),
                }),
                Err(e) => Err(RpcError::Internal(e.to_string())),
            };
        }
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(Response::Written {
                index: resp.log_id.index,
                result: resp.data,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(self.not_leader())
            }
            Err(e) => Err(RpcError::Internal(e.to_string())),
        }
    }

    async fn wait_for_index(&self, min_index: u64, wait_ms: u64) {
        if min_index == 0 {
            return;
        }
        let mut view = self.view.clone();
        let current = || self.view.read(|sm| sm.kv().table_index());
        let wait = Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        let _ = clock::timeout(wait, async {
            while current() <= min_index {
                view.changed().await;
            }
        })
        .await;
    }

    fn read_local(&self, r: &ReadRequest) -> ReadResponse {
        let (index, entries, keys) = self.view.read(|sm| evaluate(sm.kv(), &r.query));
        ReadResponse {
            index,
            entries,
            keys,
            known_leader: self.leader().is_some(),
            last_contact_ms: self.last_contact_ms(),
        }
    }

    async fn read_here(&self, r: ReadRequest) -> Result<ReadResponse, RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.wait_for_index(r.min_index, r.wait_ms).await;
        // Confirm leadership with a quorum *after* waiting, right before
        // reading: a leader deposed meanwhile must not answer.
        if mutants::enabled(Mutant::SkipReadQuorum)
            || (mutants::enabled(Mutant::LeaseRead) && mutants::lease_valid(self.node_id))
        {
            return Ok(self.read_local(&r));
        }
        let round_start = Instant::now();
        match clock::timeout(LINEARIZE_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {
                if mutants::enabled(Mutant::LeaseRead) {
                    let lease = Duration::from_millis(self.config.timing.election_timeout_min_ms);
                    mutants::extend_lease(self.node_id, round_start + lease);
                }
                Ok(self.read_local(&r))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(self.not_leader())
            }
            Ok(Err(e)) => Err(RpcError::Internal(format!(
                "cannot confirm leadership: {e}"
            ))),
            Err(_) => Err(RpcError::NoLeader),
        }
    }

    async fn add_server_here(&self, info: ServerInfo) -> Result<(), RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let m = self.metrics();
        let voters: BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let node = to_node(&info);
        let known = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == info.node_id)
            .map(|(_, n)| n.clone());
        if voters.contains(&info.node_id) && known.as_ref() == Some(&node) {
            return Ok(());
        }
        // A server that lost its data comes back with a new id under the
        // same name: replace the stale entry (Consul does the same by address).
        let stale: BTreeSet<u64> = m
            .membership_config
            .nodes()
            .filter(|(id, n)| {
                **id != info.node_id && (n.name == info.name || n.rpc_addr == info.rpc_addr)
            })
            .map(|(id, _)| *id)
            .collect();
        if crate::buggify::fires("membership_change") {
            return Err(RpcError::Internal(
                "buggify: membership change aborted".into(),
            ));
        }
        info!(joining = %node, ?stale, "adding server to the cluster");
        self.raft
            .add_learner(info.node_id, node, true)
            .await
            .map_err(|e| RpcError::Internal(format!("adding learner: {e}")))?;
        let mut new_voters: BTreeSet<u64> = voters.difference(&stale).copied().collect();
        new_voters.insert(info.node_id);
        self.raft
            .change_membership(new_voters, false)
            .await
            .map_err(|e| RpcError::Internal(format!("changing membership: {e}")))?;
        Ok(())
    }

    async fn remove_server_here(&self, node_id: u64) -> Result<(), RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let m = self.metrics();
        let voters: BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let in_config = m.membership_config.nodes().any(|(id, _)| *id == node_id);
        if !in_config {
            return Err(RpcError::Rejected(format!(
                "no server with id {node_id} in the Raft configuration"
            )));
        }
        let remaining: BTreeSet<u64> = voters.iter().copied().filter(|id| *id != node_id).collect();
        if remaining.is_empty() {
            return Err(RpcError::Rejected("cannot remove the last voter".into()));
        }
        info!(node_id, "removing server from the cluster");
        self.raft
            .change_membership(remaining, false)
            .await
            .map_err(|e| RpcError::Internal(format!("changing membership: {e}")))?;
        Ok(())
    }

    // ---- entry points (route to the leader) ------------------------------

    /// Routes a leader-only request to the leader and returns its answer.
    async fn on_leader(&self, req: RpcRequest, timeout: Duration) -> Result<RpcResponse, RpcError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut hint: Option<ServerInfo> = None;
        loop {
            let leader = hint.take().or_else(|| self.leader());
            let resp = match leader {
                Some(l) if l.node_id == self.node_id => self.handle_as_leader(req.clone()).await,
                Some(l) => match self.rpc.call(&l.rpc_addr, &req, timeout).await {
                    Ok(resp) => resp,
                    Err(e) if e.not_delivered() => Response::Error(RpcError::NoLeader),
                    Err(e) => {
                        return Err(RpcError::Internal(format!("{e}; the outcome is unknown")))
                    }
                },
                None => Response::Error(RpcError::NoLeader),
            };
            match resp {
                Response::Error(RpcError::NotLeader { leader }) => hint = leader,
                Response::Error(RpcError::NoLeader) => {}
                Response::Error(e) => return Err(e),
                ok => return Ok(ok),
            }
            if Instant::now() >= deadline {
                return Err(RpcError::NoLeader);
            }
            clock::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Commits a write through the leader.
    pub async fn write(&self, cmd: Command) -> Result<(u64, CommandResult), RpcError> {
        match self.on_leader(Request::Write(cmd), FORWARD_TIMEOUT).await? {
            Response::Written { index, result } => Ok((index, result)),
            other => Err(RpcError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Reads in the requested consistency mode.
    pub async fn read(&self, r: ReadRequest) -> Result<ReadResponse, RpcError> {
        if r.consistency == Consistency::Stale {
            self.wait_for_index(r.min_index, r.wait_ms).await;
            return Ok(self.read_local(&r));
        }
        let timeout = FORWARD_TIMEOUT + Duration::from_millis(r.wait_ms.min(MAX_WAIT_MS));
        match self.on_leader(Request::Read(r), timeout).await? {
            Response::Read(resp) => Ok(resp),
            other => Err(RpcError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Removes a server from the Raft configuration (through the leader).
    pub async fn remove_peer(&self, node_id: u64) -> Result<(), RpcError> {
        self.on_leader(Request::RemovePeer { node_id }, FORWARD_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// `mesh join ADDR`: asks the server at `addr` about its cluster and
    /// joins it (or, before formation, just learns about it).
    pub async fn join_addr(&self, addr: &str) -> Result<(), RpcError> {
        let target = rpc_target(addr);
        let status = self.hello(&target).await?;
        if status.initialized && !self.is_voter() {
            self.send_join(&target).await?;
        }
        Ok(())
    }

    /// Waits until this server is a voter of a formed cluster.
    pub async fn wait_joined(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_voter() {
                return true;
            }
            clock::sleep(Duration::from_millis(50)).await;
        }
        self.is_voter()
    }

    fn is_voter(&self) -> bool {
        self.metrics()
            .membership_config
            .voter_ids()
            .any(|id| id == self.node_id)
    }

    async fn hello(&self, addr: &str) -> Result<ClusterStatus, RpcError> {
        let resp = self
            .rpc
            .call(addr, &Request::Hello(self.info.clone()), FORWARD_TIMEOUT)
            .await
            .map_err(|e| RpcError::Internal(e.to_string()))?;
        let Response::Status(st) = resp else {
            return Err(RpcError::Internal(format!(
                "unexpected answer to hello from {addr}"
            )));
        };
        self.observe_server(st.me.clone());
        for s in &st.known_servers {
            if s.node_id != self.node_id {
                self.observe_server(s.clone());
            }
        }
        if st.initialized {
            self.formation
                .lock()
                .expect("formation lock")
                .observe_formed_cluster();
        }
        Ok(st)
    }

    /// Asks the cluster reachable at `addr` to add this server as a voter.
    async fn send_join(&self, addr: &str) -> Result<(), RpcError> {
        let mut target = addr.to_string();
        for _ in 0..5 {
            let resp = self
                .rpc
                .call(
                    &target,
                    &Request::Join(self.info.clone()),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|e| RpcError::Internal(e.to_string()))?;
            match resp {
                Response::Done => {
                    info!(via = %target, "joined the cluster");
                    return Ok(());
                }
                Response::Error(RpcError::NotLeader { leader: Some(l) }) => target = l.rpc_addr,
                Response::Error(e) => return Err(e),
                other => {
                    return Err(RpcError::Internal(format!(
                        "unexpected answer to join: {other:?}"
                    )))
                }
            }
        }
        Err(RpcError::NoLeader)
    }

    fn observe_server(&self, peer: ServerInfo) {
        if peer.node_id == self.node_id {
            return;
        }
        let res = self
            .formation
            .lock()
            .expect("formation lock")
            .observe_server(peer);
        if let Err(e) = res {
            let msg = e.to_string();
            let mut last = self.formation_error.lock().expect("formation lock");
            if last.as_deref() != Some(msg.as_str()) {
                error!(error = %msg, "cluster formation problem; refusing to bootstrap");
                *last = Some(msg);
            }
        }
    }

    // ---- formation -------------------------------------------------------

    async fn formation_loop(self: Arc<Self>) {
        let targets: Vec<String> = self.config.join.iter().map(|a| rpc_target(a)).collect();
        let mut attempts: u32 = 0;
        loop {
            let initialized = self.raft.is_initialized().await.unwrap_or(false);
            if initialized && targets.is_empty() {
                debug!("formation done: initialized, nothing to join");
                return;
            }
            // Discovery: learn who else is out there and whether a cluster
            // exists. Membership is confirmed by the cluster, not by our own
            // log: a server that left may still find itself in a stale
            // configuration it stored before it was removed.
            let mut known: Vec<String> = targets.clone();
            for s in self
                .formation
                .lock()
                .expect("formation lock")
                .known_servers()
            {
                if s.node_id != self.node_id && !known.contains(&s.rpc_addr) {
                    known.push(s.rpc_addr);
                }
            }
            let mut formed_at = None;
            let mut confirmed = false;
            for addr in &known {
                match self.hello(addr).await {
                    Ok(st) if st.initialized => {
                        confirmed |= st
                            .peers
                            .iter()
                            .any(|p| p.voter && p.info.node_id == self.node_id);
                        formed_at = Some(addr.clone());
                    }
                    Ok(_) => {}
                    Err(e) => debug!(%addr, error = %e, "discovery: peer not reachable yet"),
                }
            }
            if confirmed && self.is_voter() {
                debug!("formation done: the cluster lists this server as a voter");
                return;
            }
            let decision = self.formation.lock().expect("formation lock").decide();
            match decision {
                Decision::Bootstrap(servers) if !initialized => {
                    let members: BTreeMap<u64, ServerNode> =
                        servers.iter().map(|s| (s.node_id, to_node(s))).collect();
                    info!(servers = ?members.values().map(|n| n.name.as_str()).collect::<Vec<_>>(), "bootstrapping the cluster");
                    if let Err(e) = self.raft.initialize(members).await {
                        // Another server's configuration reached us first.
                        info!(error = %e, "bootstrap not needed");
                    }
                    self.formation
                        .lock()
                        .expect("formation lock")
                        .observe_formed_cluster();
                }
                Decision::AlreadyFormed | Decision::Bootstrap(_) | Decision::Wait => {
                    if let Some(addr) = formed_at {
                        if !confirmed {
                            if let Err(e) = self.send_join(&addr).await {
                                warn!(via = %addr, error = %e, "join failed; will retry");
                            }
                        }
                    }
                }
            }
            attempts = attempts.saturating_add(1);
            if !self.config.retry_join && !targets.is_empty() && attempts == 30 && !self.is_voter()
            {
                error!(join = ?targets, "could not join any of the -join addresses; keep trying with -retry-join");
            }
            let pause = if attempts < 50 { 200 } else { 1000 };
            clock::sleep(Duration::from_millis(pause)).await;
        }
    }

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
    async fn election_watchdog(self: Arc<Self>) {
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
    fn last_election_signal(&self) -> Option<Instant> {
        let contact = *self.last_leader_contact.lock().expect("contact lock");
        let vote = *self.last_vote_granted.lock().expect("vote lock");
        contact.max(vote)
    }

    /// A voter that is not leading and not leaving.
    fn may_campaign(&self) -> bool {
        let m = self.metrics();
        m.state != ServerState::Leader
            && m.membership_config.voter_ids().any(|id| id == self.node_id)
            && !self.handing_off.load(Ordering::SeqCst)
    }

    /// The PreVote round: whether a majority of voters (this one included)
    /// would vote for this server in the next term.
    async fn pre_vote(&self) -> bool {
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
    fn would_vote_for(&self, their_last: Option<(u64, u64)>) -> bool {
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
        let handed_off = self.transfer_leadership(wait).await;
        if !handed_off {
            warn!("leadership hand-off did not complete in time");
            self.handing_off.store(false, Ordering::SeqCst);
        }
        handed_off
    }

    async fn transfer_leadership(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let m = self.metrics();
        let Some(replication) = m.replication.clone() else {
            return false;
        };
        // Pick the follower with the longest matched log; ties by id.
        let mut best: Option<(Option<u64>, u64)> = None;
        for (id, matched) in replication.iter() {
            if *id == self.node_id || !m.membership_config.voter_ids().any(|v| v == *id) {
                continue;
            }
            let idx = matched.map(|l| l.index);
            if best
                .is_none_or(|(b, bid)| (idx, std::cmp::Reverse(*id)) > (b, std::cmp::Reverse(bid)))
            {
                best = Some((idx, *id));
            }
        }
        let Some((_, target)) = best else {
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
        while Instant::now() < deadline {
            // Let the target catch up to our last entry first (writes
            // accepted before the hand-off began may still be appending).
            while Instant::now() < deadline {
                let m = self.metrics();
                let matched = m
                    .replication
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .map(|l| l.index);
                if matched >= m.last_log_index {
                    break;
                }
                clock::sleep(Duration::from_millis(10)).await;
            }
            if crate::buggify::fires("leader_hand_off") {
                warn!("buggify: hand-off request dropped");
            } else if let Err(e) = self
                .rpc
                .call(&node.rpc_addr, &Request::TimeoutNow, Duration::from_secs(1))
                .await
            {
                warn!(error = %e, "hand-off request failed");
            }
            let round_end = (Instant::now() + round).min(deadline);
            while Instant::now() < round_end {
                let m = self.metrics();
                if m.current_leader.is_some_and(|l| l != self.node_id) {
                    info!(new_leader = ?m.current_leader, "leadership handed off");
                    return true;
                }
                clock::sleep(Duration::from_millis(10)).await;
            }
        }
        false
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
