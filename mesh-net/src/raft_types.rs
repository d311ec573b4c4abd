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
        SnapshotData = Vec<u8>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = MeshRuntime,
);

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
    /// The leader sends a whole snapshot to a lagging follower.
    Snapshot {
        /// The leader's vote.
        vote: Vote,
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The state machine bytes (`mesh_core::state::StateMachine::snapshot`).
        data: Vec<u8>,
    },
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
    /// Answer to [`RaftRequest::Snapshot`].
    Snapshot(Result<SnapshotResponse<u64>, Fatal<u64>>),
}
