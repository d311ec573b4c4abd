//! The openraft type configuration of the mesh and the Raft RPC payloads.

use std::fmt;

use mesh_core::state::{Command, CommandResult};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::runtime::MeshRuntime;

/// A Raft node's identity as the mesh stores it in the Raft configuration:
/// enough to reach it for RPC and to show it to operators.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNode {
    /// The node name, e.g. `consul00`.
    pub name: String,
    /// Server RPC address (`-bind` and `-server-port`), e.g. `127.0.0.10:8300`.
    pub rpc_addr: String,
    /// HTTP API address, e.g. `127.0.0.10:8500`.
    pub http_addr: String,
}

impl fmt::Display for ServerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.rpc_addr)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of the mesh's servers.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = ServerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = MeshRuntime,
);

pub use crate::snapshot_file::SnapshotData;

/// The Raft instance of a server.
pub type Raft = openraft::Raft<TypeConfig>;
/// One Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, ServerNode>;
/// The membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<u64, ServerNode>;
/// Storage errors, as openraft wants them.
pub type StorageError = openraft::StorageError<u64>;

/// A Raft message from one server to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// A candidate asks for a vote.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot for a lagging or new follower (see
    /// `mesh_core::snapshot_transfer`).
    SnapshotChunk(SnapshotChunk),
}

/// A piece of a snapshot. Chunks keep every frame small however large the
/// state grows, and make a transfer resumable after a dropped connection.
#[derive(Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Total snapshot length in bytes.
    pub total_len: u64,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// The bytes (base64 in JSON).
    #[serde(with = "mesh_core::kv::base64_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for SnapshotChunk {
    // The bytes would flood any log line that shows a request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotChunk")
            .field("vote", &self.vote)
            .field("snapshot_id", &self.meta.snapshot_id)
            .field("total_len", &self.total_len)
            .field("offset", &self.offset)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// The follower's answer to a [`SnapshotChunk`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ChunkAck {
    /// The follower holds the first `held` bytes: continue from there.
    Held(u64),
    /// The last chunk arrived and the snapshot was installed.
    Installed(SnapshotResponse<u64>),
}

/// A Raft message with the Raft id it is meant for. A server only answers
/// messages addressed to its own id: after a data dir is wiped, the server
/// at an address is a different member, and letting it answer (say, grant
/// a vote) in its predecessor's name breaks Raft's quorums. The simulator
/// found exactly that (swarm seed 125: a leader elected without the latest
/// committed entries).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftEnvelope {
    /// The addressee's Raft id.
    pub to: u64,
    /// The message.
    pub msg: RaftRequest,
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    /// Answer to [`RaftRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Answer to [`RaftRequest::Vote`].
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Answer to [`RaftRequest::SnapshotChunk`].
    SnapshotChunk(Result<ChunkAck, Fatal<u64>>),
}
