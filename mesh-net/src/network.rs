//! openraft's network over the mesh RPC client.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::snapshot_transfer::CHUNK_LEN;
use mesh_core::wire::Response;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::{AnyError, EntryPayload};
use tracing::{info, warn};

use crate::log_store::LogStore;
use crate::mutants::{self, Mutant};
use crate::raft_types::{
    ChunkAck, Entry, RaftEnvelope, RaftReply, RaftRequest, ServerNode, SnapshotChunk, TypeConfig,
    Vote,
};
use crate::rpc::{CallError, RpcClient, RpcRequest};
use crate::snapshot_file::SNAPSHOT_PART_LEN;

/// Creates a [`PeerNetwork`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    rpc: RpcClient,
    health: PeerHealth,
    log: LogStore,
}

impl NetworkFactory {
    /// A factory sharing `rpc`'s connection pool; `log` is this server's
    /// log store, whose vote says whether a message is still this
    /// server's to send (see [`PeerNetwork::append_entries`]).
    pub fn new(rpc: RpcClient, log: LogStore) -> Self {
        Self {
            rpc,
            health: PeerHealth::default(),
            log,
        }
    }
}

/// Whether each peer answers Raft messages, so that a peer going down is
/// logged once (and its return once), not on every failed heartbeat or
/// read confirmation.
#[derive(Clone, Default)]
pub struct PeerHealth {
    consecutive_failures: Arc<Mutex<BTreeMap<u64, u32>>>,
}

/// Failures in a row before a peer is reported down: one slow answer (a
/// large batch, a slow fsync) is not an outage.
const FAILURES_BEFORE_DOWN: u32 = 3;

impl PeerHealth {
    fn succeeded(&self, peer: u64, node: &ServerNode) {
        let before = self
            .consecutive_failures
            .lock()
            .expect("peer health lock")
            .remove(&peer)
            .unwrap_or(0);
        if before >= FAILURES_BEFORE_DOWN {
            info!(peer = %node, failures = before, "peer answers again");
        }
    }

    fn failed(&self, peer: u64, node: &ServerNode, error: &CallError) {
        let mut failures = self.consecutive_failures.lock().expect("peer health lock");
        let n = failures.entry(peer).or_insert(0);
        *n = n.saturating_add(1);
        if *n == FAILURES_BEFORE_DOWN {
            warn!(peer = %node, %error, "peer does not answer; logging again when it does");
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &ServerNode) -> PeerNetwork {
        PeerNetwork {
            target,
            node: node.clone(),
            rpc: self.rpc.clone(),
            health: self.health.clone(),
            log: self.log.clone(),
        }
    }
}

/// Raft messages to one peer.
pub struct PeerNetwork {
    target: u64,
    node: ServerNode,
    rpc: RpcClient,
    health: PeerHealth,
    log: LogStore,
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
        let result = self.call_once(req, timeout).await;
        match &result {
            Ok(_) => self.health.succeeded(self.target, &self.node),
            Err(e) => self.health.failed(self.target, &self.node, e),
        }
        result
    }

    async fn call_once(&self, req: RaftRequest, timeout: Duration) -> Result<RaftReply, CallError> {
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
        // openraft 0.9 stops a deposed leader's replication tasks
        // asynchronously, so one can still run after a newer leader's
        // entries overwrote this server's log, read those entries, and
        // send them under the old vote, with the old previous entry: a
        // follower that knows no newer term accepts them, and two logs
        // then agree on an entry but not on the one before it (the
        // simulator found this, swarm seed 105). The vote is stored before
        // any newer leader's entry is accepted, so a message whose vote is
        // no longer the stored one was built by a task that lost its term.
        let stale = self
            .log
            .vote()
            .is_some_and(|current| current.leader_id() != rpc.vote.leader_id());
        if stale && !mutants::enabled(Mutant::StaleVoteReplication) {
            let err = AnyError::error(format!(
                "not sent: this server's vote moved past {} (a deposed leader's replication)",
                rpc.vote
            ));
            return Err(RPCError::Network(NetworkError::new(&err)));
        }
        if let Some(fit) = entries_within_budget(&rpc.entries, APPEND_BUDGET_BYTES) {
            // openraft retries at once with at most `fit` entries (for its
            // next few batches), so one batch never outgrows a frame however
            // large the values are.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
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
        let data = *snapshot.snapshot;
        let total_len = data.len();
        let mut cancel = std::pin::pin!(cancel);
        let mut offset: u64 = 0;
        // Each chunk moves the transfer forward or tells where the follower
        // is; bound the exchanges anyway so a confused peer cannot keep the
        // replication task here forever. Chunks end at record boundaries
        // of the file, so there are at most two per record.
        let records = total_len / SNAPSHOT_PART_LEN as u64 + 2;
        let max_exchanges = 2 * (total_len / CHUNK_LEN as u64 + 2 * records);
        for _ in 0..max_exchanges {
            // A part of the stored file, read and checked a record at a
            // time: the transfer holds one record, not the snapshot.
            let bytes = if offset == total_len {
                Vec::new()
            } else {
                data.read(offset, CHUNK_LEN).map_err(|e| {
                    warn!(error = %e, "cannot read the snapshot being sent");
                    StreamingError::Network(NetworkError::new(&AnyError::error(e)))
                })?
            };
            let last = offset + bytes.len() as u64 == total_len;
            // The last chunk makes the follower install the snapshot, which
            // takes time in proportion to its size.
            let timeout = if last {
                option.hard_ttl() + Duration::from_millis(total_len / INSTALL_BYTES_PER_MS)
            } else {
                option.hard_ttl()
            };
            let req = RaftRequest::SnapshotChunk(SnapshotChunk {
                vote,
                meta: snapshot.meta.clone(),
                total_len,
                offset,
                data: bytes,
            });
            let reply = tokio::select! {
                biased;
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                reply = self.call(req, timeout) => reply,
            };
            match reply {
                Ok(RaftReply::SnapshotChunk(Ok(ChunkAck::Installed(r)))) => return Ok(r),
                Ok(RaftReply::SnapshotChunk(Ok(ChunkAck::Held(held)))) if held <= total_len => {
                    offset = held;
                }
                Ok(RaftReply::SnapshotChunk(Err(e))) => {
                    return Err(StreamingError::RemoteError(RemoteError::new_with_node(
                        self.target,
                        self.node.clone(),
                        e,
                    )))
                }
                Ok(other) => {
                    let err = AnyError::error(format!(
                        "unexpected answer to a snapshot chunk: {other:?}"
                    ));
                    return Err(StreamingError::Network(NetworkError::new(&err)));
                }
                Err(e) if e.not_delivered() => {
                    return Err(StreamingError::Unreachable(Unreachable::new(&e)))
                }
                Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
            }
        }
        let err = AnyError::error("snapshot transfer made no progress");
        Err(StreamingError::Network(NetworkError::new(&err)))
    }
}

/// Bytes of log entries per AppendEntries: large enough that small writes
/// batch freely (256 entries of a few KiB), small enough that a batch of
/// maximum-size values (512 KiB each) stays far below the frame limit.
pub const APPEND_BUDGET_BYTES: usize = 2 << 20;

/// Assumed install speed for the last chunk's deadline (20 MB/s: restoring
/// state is slower than copying it).
const INSTALL_BYTES_PER_MS: u64 = 20_000;

/// `None` if `entries` fit in `budget` bytes (by an upper bound of their
/// encoded size), else how many leading entries do (at least one: a single
/// entry is at most one maximum-size value, far below the frame limit).
fn entries_within_budget(entries: &[Entry], budget: usize) -> Option<u64> {
    let mut total = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        total += entry_len_bound(entry);
        if total > budget {
            return Some(i.max(1) as u64);
        }
    }
    None
}

fn entry_len_bound(entry: &Entry) -> usize {
    const ENTRY_OVERHEAD: usize = 256;
    ENTRY_OVERHEAD
        + match &entry.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(cmd) => cmd.encoded_len_bound(),
            // A few addresses per server.
            EntryPayload::Membership(m) => 1024 * (m.nodes().count() + 1),
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::state::{Command, KvCommand};
    use openraft::{CommittedLeaderId, LogId};

    fn entry(index: u64, value_len: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Kv(KvCommand::Set {
                key: format!("k{index}"),
                value: vec![7; value_len],
                flags: 0,
            })),
        }
    }

    /// A deposed leader's replication task (its vote is no longer the
    /// stored one) sends nothing: the guard swarm seed 105 once found
    /// missing, checked without a network. The simulator no longer reaches
    /// that race on a fixed seed (see `sim/tests/simulations.rs`).
    #[tokio::test]
    async fn a_deposed_leaders_entries_are_not_sent() {
        use openraft::storage::RaftLogStorage;
        let disk: Arc<dyn crate::disk::Disk> = Arc::new(crate::disk::MemDisk::new());
        let mut log = LogStore::open(disk).unwrap();
        let current = Vote::new_committed(3, 2);
        log.save_vote(&current).await.unwrap();
        let mut factory = NetworkFactory::new(RpcClient::new(), log);
        let node = ServerNode {
            name: "consul01".into(),
            rpc_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
        };
        let mut peer = factory.new_client(1, &node).await;
        let request = |vote| AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: vec![entry(1, 10)],
            leader_commit: None,
        };
        let option = || RPCOption::new(Duration::from_millis(200));
        let stale = peer
            .append_entries(request(Vote::new_committed(2, 0)), option())
            .await
            .unwrap_err()
            .to_string();
        assert!(stale.contains("a deposed leader's replication"), "{stale}");
        // Under the stored vote it goes out (and fails: nobody listens).
        let sent = peer
            .append_entries(request(current), option())
            .await
            .unwrap_err()
            .to_string();
        assert!(!sent.contains("deposed"), "{sent}");
    }

    #[test]
    fn small_batches_pass_whole() {
        let entries: Vec<Entry> = (1..=256).map(|i| entry(i, 1024)).collect();
        assert_eq!(entries_within_budget(&entries, APPEND_BUDGET_BYTES), None);
        assert_eq!(entries_within_budget(&[], APPEND_BUDGET_BYTES), None);
    }

    #[test]
    fn large_values_are_split_and_the_hint_fits_the_budget() {
        let entries: Vec<Entry> = (1..=256).map(|i| entry(i, 512 * 1024)).collect();
        let fit = entries_within_budget(&entries, APPEND_BUDGET_BYTES).expect("too large");
        assert_eq!(fit, 2);
        let encoded = serde_json::to_vec(&entries[..fit as usize]).unwrap().len();
        assert!(encoded <= APPEND_BUDGET_BYTES, "{encoded}");
        // The hint never drops to zero, even for one entry over the budget.
        assert_eq!(entries_within_budget(&entries[..2], 1000), Some(1));
    }
}
