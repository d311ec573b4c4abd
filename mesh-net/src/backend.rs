//! What an agent's HTTP API and local state need from the cluster, behind
//! one interface: [`Cluster`]. A server agent answers from its own Raft
//! server ([`Server`]); a client agent over RPC ([`crate::client::RemoteServers`]).
//! The HTTP layer does not know which it has.

use std::sync::Arc;

use futures::future::BoxFuture;
use mesh_core::connect::ca::{IssuedLeaf, SecretPem};
use mesh_core::state::ca::CaConfig;
use mesh_core::state::sessions::Session;
use mesh_core::state::{Command, CommandResult};
use mesh_core::wire::{ClusterStatus, ReadRequest, ReadResponse, RpcError};

use crate::server::Server;

/// What an agent asks the leader to sign.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The service the leaf identifies.
    pub service: String,
    /// The agent's datacenter.
    pub datacenter: String,
    /// The agent's public key, SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

/// The cluster as one agent reaches it.
pub trait Cluster: Send + Sync {
    /// A read in the request's consistency mode.
    fn read(&self, r: ReadRequest) -> BoxFuture<'_, Result<ReadResponse, RpcError>>;
    /// A write committed through the leader.
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<(u64, CommandResult), RpcError>>;
    /// Raft status as a server sees it (this one, or one a client reached).
    fn status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>>;
    /// Raft status as the leader sees it (every peer's log index).
    fn leader_status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>>;
    /// This agent's liveness heartbeat, to the leader.
    fn heartbeat(&self, node: String) -> BoxFuture<'_, Result<(), RpcError>>;
    /// A Connect leaf for `service` over the agent's public key, signed
    /// by the leader.
    fn sign_leaf(&self, request: LeafRequest) -> BoxFuture<'_, Result<IssuedLeaf, RpcError>>;
    /// Rotates the Connect CA to a root made from `private_key` (through
    /// the leader).
    /// `config`, when given, changes the CA settings in the same write.
    fn rotate_root(
        &self,
        private_key: SecretPem,
        config: Option<CaConfig>,
    ) -> BoxFuture<'_, Result<(), RpcError>>;
    /// Restarts a session's TTL on the leader; the session, or `None` if
    /// it does not exist.
    fn renew_session(&self, id: String) -> BoxFuture<'_, Result<Option<Session>, RpcError>>;
    /// Whether a leader is known (`X-Consul-KnownLeader`).
    fn known_leader(&self) -> bool;
    /// Milliseconds since the leader was heard from (`X-Consul-LastContact`).
    fn last_contact_ms(&self) -> u64;
    /// The Raft server, on a server agent.
    fn server(&self) -> Option<&Arc<Server>>;
}

/// A server agent's cluster is its own server.
pub struct LocalServer(pub Arc<Server>);

impl Cluster for LocalServer {
    fn read(&self, r: ReadRequest) -> BoxFuture<'_, Result<ReadResponse, RpcError>> {
        Box::pin(self.0.read(r))
    }

    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<(u64, CommandResult), RpcError>> {
        Box::pin(self.0.write(cmd))
    }

    fn status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>> {
        Box::pin(async { Ok(self.0.status()) })
    }

    fn leader_status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>> {
        Box::pin(self.0.leader_status())
    }

    fn heartbeat(&self, node: String) -> BoxFuture<'_, Result<(), RpcError>> {
        Box::pin(self.0.heartbeat(node))
    }

    fn sign_leaf(&self, r: LeafRequest) -> BoxFuture<'_, Result<IssuedLeaf, RpcError>> {
        Box::pin(self.0.sign_leaf(r.service, r.datacenter, r.public_key_der))
    }

    fn rotate_root(
        &self,
        private_key: SecretPem,
        config: Option<CaConfig>,
    ) -> BoxFuture<'_, Result<(), RpcError>> {
        Box::pin(self.0.rotate_root(private_key, config))
    }

    fn renew_session(&self, id: String) -> BoxFuture<'_, Result<Option<Session>, RpcError>> {
        Box::pin(self.0.renew_session(id))
    }

    fn known_leader(&self) -> bool {
        self.0.leader().is_some()
    }

    fn last_contact_ms(&self) -> u64 {
        self.0.last_contact_ms()
    }

    fn server(&self) -> Option<&Arc<Server>> {
        Some(&self.0)
    }
}
