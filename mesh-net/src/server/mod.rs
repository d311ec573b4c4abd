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

mod ca;
mod dispatch;
mod election;
mod formation;
mod hand_off;
mod leader;
mod leader_gone;
mod liveness;
pub mod read_rounds;
mod requests;
mod sessions;
mod status;
pub mod write_batch;

use crate::clock::{self, Instant};
use mesh_core::formation::{BootstrapMode, Decision, Formation, ServerInfo};
use mesh_core::snapshot_transfer::{Progress, Reassembly, Step, TransferId};
use mesh_core::state::{Command, CommandResult, Table};
use mesh_core::wire::{
    changed_since, evaluate, ClusterStatus, Consistency, PeerStatus, Query, ReadRequest,
    ReadResponse, Request, Response, RpcError,
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
use crate::snapshot_file::SnapshotFile;
use crate::state_store::{StateStore, StateView};

/// Raft timing. Shorter than Consul's defaults (1 s heartbeat timeout):
/// a leader that is paused or cut off is replaced after
/// `election_timeout_max_ms` (the PreVote lease) and a draw; one whose
/// process died, sooner (see `leader_gone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout; also the lease
    /// during which followers refuse PreVotes for another candidate.
    pub election_timeout_max_ms: u64,
}

impl RaftTiming {
    /// The same numbers for the election machine.
    pub(crate) fn election_timing(self) -> mesh_core::election::ElectionTiming {
        mesh_core::election::ElectionTiming {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
        }
    }
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
pub(crate) const LEADER_WAIT: Duration = Duration::from_secs(7);
/// RPC deadline for forwarded requests (writes include replication).
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a membership change (removing a server) may take at the
/// leader: as long as a join is given (`formation`'s join RPC).
pub(crate) const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a quorum check for a consistent read.
const LINEARIZE_TIMEOUT: Duration = Duration::from_secs(3);
/// Consul's maximum blocking-query wait.
pub const MAX_WAIT_MS: u64 = 600_000;

/// A running server.
pub struct Server {
    node_id: u64,
    info: ServerInfo,
    /// TLS on the RPC port, if configured (`auto_encrypt` reads and
    /// extends it).
    rpc_tls: Option<Arc<crate::rpc_tls::RpcTls>>,
    raft: Raft,
    view: StateView,
    /// A reader of the log openraft owns; clones share state.
    log: LogStore,
    rpc: RpcClient,
    formation: Mutex<Formation>,
    formation_error: Mutex<Option<String>>,
    config: ServerConfig,
    last_leader_contact: Mutex<Option<Instant>>,
    /// When this server campaigns (sans-IO; driven by `election_driver`).
    elections: Mutex<mesh_core::election::Elections>,
    /// Wakes the election driver after an input from another task.
    election_wake: tokio::sync::Notify,
    /// When this server started: the origin of the election machine's time.
    started: Instant,
    /// Who leads, for routing (see `publish_leader_view`).
    leader_view: tokio::sync::watch::Sender<crate::routing::LeaderView>,
    /// Leadership is being handed off: new writes are refused (not run).
    handing_off: AtomicBool,
    /// A dial to the leader's RPC port is under way (see `leader_gone`).
    probing_leader: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The snapshot being received from the leader, chunk by chunk.
    snapshot_in: Mutex<Reassembly>,
    /// Where received chunks are stored (the state store's snapshot file).
    snapshot_file: Arc<SnapshotFile>,
    /// Held from a transfer's last chunk until its install ends: a second
    /// transfer that completes meanwhile waits instead of moving its file
    /// over the one being restored.
    snapshot_install: tokio::sync::Mutex<()>,
    /// Agents' heartbeats, for the liveness driver while this server leads.
    heartbeats: tokio::sync::mpsc::Sender<String>,
    /// Session TTL timers, while this server leads (see `session_driver`).
    session_timers: Mutex<Option<mesh_core::session_ttl::SessionTimers>>,
    /// KV writes waiting to be proposed in a batch (see `write_batch`).
    write_queue: tokio::sync::mpsc::Sender<write_batch::QueuedWrite>,
    /// Entries proposed through the batcher's slots and not yet answered.
    write_slots: Arc<tokio::sync::Semaphore>,
    /// Callers waiting for the next leadership round (see `read_rounds`).
    read_queue: tokio::sync::mpsc::Sender<read_rounds::WaitingRead>,
    /// The agent's metrics.
    telemetry: crate::telemetry::Telemetry,
}

pub(crate) fn load_or_create_node_id(disk: &dyn Disk) -> Result<u64, StartError> {
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
    pub async fn start(
        config: ServerConfig,
        disk: Arc<dyn Disk>,
        telemetry: crate::telemetry::Telemetry,
        rpc_tls: Option<Arc<crate::rpc_tls::RpcTls>>,
    ) -> Result<Arc<Self>, StartError> {
        if let BootstrapMode::Expect(0) = config.bootstrap {
            return Err(StartError::Config(
                "-bootstrap-expect must be at least 1".into(),
            ));
        }
        let node_id = load_or_create_node_id(disk.as_ref())?;
        let log_store = LogStore::open(disk.clone())?;
        let log = log_store.clone();
        let has_state = log_store.has_state();
        let (state_store, view) = StateStore::open(disk.clone(), telemetry.clone())?;
        let snapshot_file = state_store.snapshot_file();
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
        let (openraft_min_ms, openraft_max_ms) =
            config.timing.election_timing().openraft_timeouts();
        let raft_config = openraft::Config {
            cluster_name: "mesh".into(),
            heartbeat_interval: config.timing.heartbeat_ms,
            // Elections start from `election_driver`, after a PreVote;
            // openraft only uses these as its vote lease and a vote
            // request's timeout (see `ElectionTiming::openraft_timeouts`).
            enable_elect: false,
            election_timeout_min: openraft_min_ms,
            election_timeout_max: openraft_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
            max_in_snapshot_log_to_keep: config.snapshot_threshold.min(1000),
            max_payload_entries: 256,
            install_snapshot_timeout: 5_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let rpc = RpcClient::with_source_ip(config.rpc_bind.ip(), rpc_tls.clone());
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
            NetworkFactory::new(rpc.clone(), log.clone()),
            log_store,
            state_store,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        info!(node = %config.node_name, node_id, rpc = %config.rpc_bind, has_state, "server started");
        let elections = Self::new_elections(node_id, config.timing);
        let (heartbeats, heartbeats_rx) = tokio::sync::mpsc::channel(liveness::HEARTBEAT_QUEUE);
        let (write_queue, write_queue_rx) = tokio::sync::mpsc::channel(write_batch::WRITE_QUEUE);
        let (read_queue, read_queue_rx) = tokio::sync::mpsc::channel(read_rounds::READ_QUEUE);
        let server = Arc::new(Self {
            node_id,
            info,
            rpc_tls: rpc_tls.clone(),
            raft,
            view,
            log,
            rpc,
            formation: Mutex::new(formation),
            formation_error: Mutex::new(None),
            config,
            last_leader_contact: Mutex::new(None),
            elections: Mutex::new(elections),
            election_wake: tokio::sync::Notify::new(),
            started: Instant::now(),
            leader_view: tokio::sync::watch::Sender::new(Default::default()),
            handing_off: AtomicBool::new(false),
            probing_leader: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            snapshot_in: Mutex::new(Reassembly::new()),
            snapshot_file,
            snapshot_install: tokio::sync::Mutex::new(()),
            heartbeats,
            session_timers: Mutex::new(None),
            write_queue,
            write_slots: Arc::new(tokio::sync::Semaphore::new(write_batch::MAX_IN_FLIGHT)),
            read_queue,
            telemetry,
        });
        let handler_server = server.clone();
        let closed_server = Arc::downgrade(&server);
        let serve = tokio::spawn(rpc::serve(
            listener,
            rpc_tls,
            move |req| {
                let s = handler_server.clone();
                async move { s.handle_rpc(req).await }
            },
            move |peer| {
                if let Some(s) = closed_server.upgrade() {
                    s.peer_connection_closed(peer);
                }
            },
        ));
        let formation = tokio::spawn(server.clone().formation_loop());
        let watchdog = tokio::spawn(server.clone().election_driver());
        let leader_view = tokio::spawn(server.clone().publish_leader_view());
        let liveness = tokio::spawn(server.clone().liveness_driver(heartbeats_rx));
        let ca = tokio::spawn(server.clone().ca_driver());
        let connect_roots = tokio::spawn(server.clone().connect_roots_driver());
        let sessions = tokio::spawn(server.clone().session_driver());
        let batcher = tokio::spawn(server.clone().write_batcher(write_queue_rx));
        let read_rounds = tokio::spawn(server.clone().read_round_driver(read_queue_rx));
        server.tasks.lock().expect("tasks lock").extend([
            serve,
            formation,
            watchdog,
            leader_view,
            liveness,
            ca,
            connect_roots,
            sessions,
            batcher,
            read_rounds,
        ]);
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
}
