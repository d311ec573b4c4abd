//! openraft's network over the mesh RPC client.

use std::future::Future;
use std::time::Duration;

use mesh_core::wire::Response;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::AnyError;

use crate::raft_types::{RaftEnvelope, RaftReply, RaftRequest, ServerNode, TypeConfig, Vote};
use crate::rpc::{CallError, RpcClient, RpcRequest};

/// Creates a [`PeerNetwork`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    rpc: RpcClient,
}

impl NetworkFactory {
    /// A factory sharing `rpc`'s connection pool.
    pub fn new(rpc: RpcClient) -> Self {
        Self { rpc }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &ServerNode) -> PeerNetwork {
        PeerNetwork {
            target,
            node: node.clone(),
            rpc: self.rpc.clone(),
        }
    }
}

/// Raft messages to one peer.
pub struct PeerNetwork {
    target: u64,
    node: ServerNode,
    rpc: RpcClient,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, ServerNode, RaftError<u64, E>>;

fn transport_error<E: std::error::Error>(e: CallError) -> RPCError<u64, ServerNode, E> {
    if e.not_delivered() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<u64, ServerNode, E> {
    let err = AnyError::error(format!("unexpected answer to {what}"));
    RPCError::Network(NetworkError::new(&err))
}

impl PeerNetwork {
    async fn call(&self, req: RaftRequest, timeout: Duration) -> Result<RaftReply, CallError> {
        let resp = self
            .rpc
            .call(
                &self.node.rpc_addr,
                &RpcRequest::Raft(RaftEnvelope {
                    to: self.target,
                    msg: req,
                }),
                timeout,
            )
            .await?;
        match resp {
            Response::Raft(reply) => Ok(reply),
            other => Err(CallError::Failed {
                addr: self.node.rpc_addr.clone(),
                reason: format!("expected a raft reply, got {other:?}"),
            }),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        match self
            .call(RaftRequest::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(transport_error)?
        {
            RaftReply::AppendEntries(Ok(r)) => Ok(r),
            RaftReply::AppendEntries(Err(e)) => Err(RPCError::RemoteError(
                RemoteError::new_with_node(self.target, self.node.clone(), e),
            )),
            _ => Err(unexpected("append_entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        // Snapshots travel whole through `full_snapshot`; openraft only
        // calls this chunked variant when `full_snapshot` is not overridden.
        Err(unexpected(
            "install_snapshot (chunked snapshots are not used)",
        ))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        match self
            .call(RaftRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(transport_error)?
        {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))),
            _ => Err(unexpected("vote")),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let req = RaftRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        };
        let call = self.call(req, option.hard_ttl());
        let reply = tokio::select! {
            biased;
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = call => reply,
        };
        match reply {
            Ok(RaftReply::Snapshot(Ok(r))) => Ok(r),
            Ok(RaftReply::Snapshot(Err(e))) => Err(StreamingError::RemoteError(
                RemoteError::new_with_node(self.target, self.node.clone(), e),
            )),
            Ok(_) => {
                let err = AnyError::error("unexpected answer to full_snapshot");
                Err(StreamingError::Network(NetworkError::new(&err)))
            }
            Err(e) if e.not_delivered() => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}
