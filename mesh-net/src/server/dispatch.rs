//! The server's RPC port: every request that arrives is answered here,
//! Raft messages (with the addressee check and chunked snapshots) first,
//! then discovery, PreVote and hand-off, then leader-only requests.

use mesh_core::election::Input;

use super::*;

impl Server {
    // ---- RPC -------------------------------------------------------------

    /// Answers one request that arrived on the RPC port.
    pub async fn handle_rpc(self: Arc<Self>, req: RpcRequest) -> RpcResponse {
        let kind = rpc::request_kind(&req);
        self.telemetry.rpc_request.inc(&[kind]);
        let resp = self.clone().answer_rpc(req).await;
        if matches!(resp, Response::Error(_)) {
            self.telemetry.rpc_request_error.inc(&[kind]);
        }
        resp
    }

    async fn answer_rpc(self: Arc<Self>, req: RpcRequest) -> RpcResponse {
        match req {
            Request::Raft(RaftEnvelope { to, .. })
                if to != self.node_id && !mutants::enabled(Mutant::NoAddresseeCheck) => Response::Error(RpcError::Rejected(format!(
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
            Request::PreVote { to, last_log } => Response::PreVote {
                granted: (to == self.node_id || mutants::enabled(Mutant::NoAddresseeCheck))
                    && self.would_vote_for(last_log),
            },
            Request::TimeoutNow { to } if to != self.node_id => Response::Error(RpcError::Rejected(format!(
                "hand-off meant for node {to} reached node {} (the server at this address was replaced)",
                self.node_id
            ))),
            Request::TimeoutNow { .. } => {
                info!("leadership hand-off requested: starting an election");
                match self.raft.trigger().elect().await {
                    Ok(()) => Response::Done,
                    Err(e) => Response::Error(RpcError::Internal(e.to_string())),
                }
            }
            // From an agent that may not know the leader (it has no
            // certificate yet, so it follows no leader view): forwarded.
            req @ Request::SignAgentCert { .. } => self
                .on_leader(req, crate::routing::Idempotence::Idempotent, FORWARD_TIMEOUT)
                .await
                .unwrap_or_else(Response::Error),
            other => self.handle_as_leader(other).await,
        }
    }

    pub(super) async fn handle_raft(&self, req: RaftRequest) -> RaftReply {
        match req {
            RaftRequest::AppendEntries(r) => {
                let res = self.raft.append_entries(r).await;
                if res.as_ref().is_ok_and(|r| r.is_success()) {
                    *self.last_leader_contact.lock().expect("contact lock") = Some(Instant::now());
                    self.election_input(Input::LeaderContact);
                }
                RaftReply::AppendEntries(res)
            }
            RaftRequest::Vote(r) => {
                let res = self.raft.vote(r).await;
                if res.as_ref().is_ok_and(|resp| resp.vote_granted) {
                    // Raft §5.2: granting a vote restarts the election timer.
                    self.election_input(Input::VoteGranted);
                }
                RaftReply::Vote(res)
            }
            RaftRequest::SnapshotChunk(chunk) => {
                RaftReply::SnapshotChunk(self.receive_chunk(chunk).await)
            }
        }
    }

    /// Takes one snapshot chunk; installs the snapshot with the last one.
    pub(super) async fn receive_chunk(&self, chunk: SnapshotChunk) -> Result<ChunkAck, Fatal<u64>> {
        if chunk.vote.leader_id().term >= self.metrics().current_term {
            // Raft §5.2: a snapshot from the current leader is leader contact
            // like an AppendEntries. Without this a follower receiving a
            // large snapshot looked leaderless, granted PreVotes to anyone
            // whose log beat its stale one, and the elections that followed
            // restarted its transfer again and again (large_values test:
            // leaders changed every 4 s and the follower never caught up).
            *self.last_leader_contact.lock().expect("contact lock") = Some(Instant::now());
            self.election_input(Input::LeaderContact);
        }
        let id = TransferId {
            snapshot_id: chunk.meta.snapshot_id.clone(),
            term: chunk.vote.leader_id().term,
            total_len: chunk.total_len,
        };
        let last = chunk.offset.saturating_add(chunk.data.len() as u64) == chunk.total_len;
        // Taken before the chunk is stored: see `snapshot_install`.
        let _installing = if last {
            Some(self.snapshot_install.lock().await)
        } else {
            None
        };
        let received = {
            let mut transfer = self.snapshot_in.lock().expect("snapshot lock");
            match transfer.accept(id, chunk.offset, chunk.data.len() as u64) {
                Ok(Step::Answer { held }) => return Ok(ChunkAck::Held(held)),
                Ok(step) => {
                    let stored = self.store_chunk(step, &chunk.meta, &chunk.data);
                    let progress = stored.map(|()| transfer.stored(chunk.data.len() as u64));
                    match progress {
                        Ok(Progress::Partial { held }) => return Ok(ChunkAck::Held(held)),
                        Ok(Progress::Complete) => self.snapshot_file.received(),
                        Err(e) => Err(e),
                    }
                    .inspect_err(|_| transfer.abandon())
                }
                Err(e) => {
                    // A broken sender; keep nothing of this chunk and say so.
                    warn!(error = %e, "refused a snapshot chunk");
                    return Ok(ChunkAck::Held(0));
                }
            }
        };
        let data = received.map_err(|e| {
            error!(error = %e, "could not store a snapshot chunk from the leader");
            Fatal::StorageError(
                openraft::StorageIOError::write_snapshot(Some(chunk.meta.signature()), &e).into(),
            )
        })?;
        crate::disk::wait_durable(self.snapshot_file.disk()).await;
        let snapshot = Snapshot {
            meta: chunk.meta,
            snapshot: Box::new(data),
        };
        self.raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map(ChunkAck::Installed)
    }

    /// Stores a chunk [`Reassembly::accept`] let through.
    fn store_chunk(
        &self,
        step: Step,
        meta: &crate::raft_types::SnapshotMeta,
        data: &[u8],
    ) -> std::io::Result<()> {
        if step == Step::Begin {
            self.snapshot_file.begin_incoming(meta)?;
        }
        self.snapshot_file.append_incoming(data)
    }
}
