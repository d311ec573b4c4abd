//! Leader-side operations: writes, consistent reads, and membership
//! changes, carried out only by the leader (anyone else says who leads).

use super::*;

impl Server {
    pub(super) fn not_leader(&self) -> RpcError {
        match self.leader() {
            Some(l) if l.node_id != self.node_id => RpcError::NotLeader { leader: Some(l) },
            _ => RpcError::NoLeader,
        }
    }

    /// Carries out a leader-only request here, or says who leads.
    pub(super) async fn handle_as_leader(&self, req: RpcRequest) -> RpcResponse {
        let result = match req {
            Request::Write(cmd) => self.write_here(cmd).await,
            // Stale reads are served by any server, from its own state
            // (client agents send them to whichever server they reach).
            Request::Read(r) if r.consistency == Consistency::Stale => {
                self.wait_for_index(&r.query, r.min_index, r.wait_ms).await;
                Ok(Response::Read(self.read_local(&r)))
            }
            Request::Read(r) => self.read_here(r).await.map(Response::Read),
            Request::Heartbeat { node } => self.heartbeat_here(node),
            Request::SignLeaf {
                service,
                datacenter,
                public_key_der,
            } => self.sign_leaf_here(&service, &datacenter, &public_key_der),
            Request::SignAgentCert {
                node,
                datacenter,
                dns_san,
                ip_san,
                public_key_der,
            } => self.sign_agent_cert_here(&node, &datacenter, &dns_san, &ip_san, &public_key_der),
            Request::RotateRoot {
                private_key,
                config,
            } => self.rotate_root_here(&private_key, config).await,
            Request::RenewSession { id } => self.renew_here(&id).await,
            Request::Join(info) => self.add_server_here(info).await.map(|()| Response::Done),
            Request::RemovePeer { node_id } => self
                .remove_server_here(node_id)
                .await
                .map(|()| Response::Done),
            other => Err(RpcError::Rejected(format!("unexpected request {other:?}"))),
        };
        result.unwrap_or_else(Response::Error)
    }

    pub(super) async fn write_here(&self, mut cmd: Command) -> Result<RpcResponse, RpcError> {
        if self.handing_off.load(Ordering::SeqCst) {
            // Not run: the caller retries and finds the new leader.
            return Err(RpcError::NoLeader);
        }
        if takes_a_lock(&cmd) {
            // Never proposed unchecked: a server that does not know it
            // leads (it may be winning an election right now) sends the
            // caller to the leader instead.
            if !self.is_leader() {
                return Err(self.not_leader());
            }
            // The lock delays come from applying entries: a new leader
            // (or one whose invalidating entry is committed but not yet
            // applied) must catch up before it can judge them. A quorum
            // round returns once everything committed is applied.
            self.confirm_leadership().await?;
            // Read before the delays: an entry applied in between makes the
            // stamp older, which only refuses more.
            let checked_at = self.view.applied_index();
            if let Some(result) = self.refuse_delayed_lock(&cmd) {
                return Ok(Response::Written {
                    index: checked_at,
                    result,
                });
            }
            if !mutants::enabled(Mutant::LockDelayIgnored) {
                stamp_lock_check(&mut cmd, checked_at);
            }
        }
        if mesh_core::state::Batch::may_hold(&cmd) && !mutants::enabled(Mutant::AckBeforeCommit) {
            return self.write_batched(cmd).await;
        }
        self.propose(cmd).await
    }

    /// Proposes `cmd` as one Raft entry and waits for it to be applied.
    pub(super) async fn propose(&self, cmd: Command) -> Result<RpcResponse, RpcError> {
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
        // A leader cut off from its quorum never learns that it lost (no
        // higher term reaches it); without this the client would wait out
        // its own timeout. Consul's leader steps down after a lease without
        // a quorum; we answer within the election bound.
        let proposed = Instant::now();
        let written = tokio::select! {
            biased;
            written = self.raft.client_write(cmd) => written,
            () = self.leadership_lost() => {
                return Err(RpcError::OutcomeUnknown(
                    "this server lost its leadership (or its quorum) with the write in flight; \
                     it may or may not commit"
                        .into(),
                ))
            }
        };
        match written {
            Ok(resp) => {
                self.telemetry.raft_apply.inc(&[]);
                self.telemetry
                    .raft_commit_time
                    .observe(&[], proposed.elapsed());
                Ok(Response::Written {
                    index: resp.log_id.index,
                    result: resp.data,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(self.not_leader())
            }
            Err(e) => Err(RpcError::Internal(e.to_string())),
        }
    }

    /// Waits, up to `wait_ms`, until `query`'s answer carries an index
    /// past `min_index` (a blocking query), or at once without one.
    pub(super) async fn wait_for_index(&self, query: &Query, min_index: u64, wait_ms: u64) {
        if min_index == 0 {
            return;
        }
        let mut view = self.view.clone();
        let changed = || self.view.read(|sm| changed_since(sm, query, min_index));
        let wait = Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        let _ = clock::timeout(wait, async {
            while !changed() {
                view.changed().await;
            }
        })
        .await;
    }

    pub(super) fn read_local(&self, r: &ReadRequest) -> ReadResponse {
        let (index, result) = self.view.read(|sm| evaluate(sm, &r.query));
        ReadResponse {
            index,
            result,
            known_leader: self.leader().is_some(),
            last_contact_ms: self.last_contact_ms(),
        }
    }

    pub(super) async fn read_here(&self, r: ReadRequest) -> Result<ReadResponse, RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.wait_for_index(&r.query, r.min_index, r.wait_ms).await;
        // Confirm leadership with a quorum *after* waiting, right before
        // reading: a leader deposed meanwhile must not answer.
        if mutants::enabled(Mutant::SkipReadQuorum)
            || (mutants::enabled(Mutant::LeaseRead) && mutants::lease_valid(self.node_id))
        {
            return Ok(self.read_local(&r));
        }
        let round_start = Instant::now();
        self.confirm_leadership().await?;
        if mutants::enabled(Mutant::LeaseRead) {
            let lease = Duration::from_millis(self.config.timing.election_timeout_min_ms);
            mutants::extend_lease(self.node_id, round_start + lease);
        }
        Ok(self.read_local(&r))
    }

    /// One quorum round: a quorum still follows this leader now (Raft
    /// thesis §6.4, ReadIndex). A leader deposed meanwhile learns it here.
    /// Callers go through [`Server::confirm_leadership`], which shares
    /// rounds between concurrent callers (see `read_rounds`).
    pub(super) async fn leadership_round(&self) -> Result<(), RpcError> {
        let confirmed = tokio::select! {
            biased;
            confirmed = clock::timeout(LINEARIZE_TIMEOUT, self.raft.ensure_linearizable()) => confirmed,
            // Not run: the caller retries at whoever leads next.
            () = self.leadership_lost() => return Err(RpcError::NoLeader),
        };
        match confirmed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(self.not_leader())
            }
            Ok(Err(e)) => Err(RpcError::Internal(format!(
                "cannot confirm leadership: {e}"
            ))),
            Err(_) => Err(RpcError::NoLeader),
        }
    }

    pub(super) async fn add_server_here(&self, info: ServerInfo) -> Result<(), RpcError> {
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

    pub(super) async fn remove_server_here(&self, node_id: u64) -> Result<(), RpcError> {
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
}

/// Whether `cmd` may take a KV lock (`?acquire`, or a transaction with a
/// `lock` operation): the writes a lock delay can refuse.
fn takes_a_lock(cmd: &Command) -> bool {
    use mesh_core::state::KvCommand;
    match cmd {
        Command::Kv(KvCommand::Lock { .. }) => true,
        Command::Kv(KvCommand::Txn { ops }) => ops.iter().any(|op| op.verb == "lock"),
        _ => false,
    }
}

/// Records in a lock command the applied index at which the leader found
/// its keys outside any lock delay; applying refuses the lock if an
/// invalidation released a key after that (it raced the check).
fn stamp_lock_check(cmd: &mut Command, checked_at: u64) {
    use mesh_core::state::KvCommand;
    match cmd {
        Command::Kv(KvCommand::Lock { checked_at: at, .. }) => *at = checked_at,
        Command::Kv(KvCommand::Txn { ops }) => {
            for op in ops.iter_mut().filter(|op| op.verb == "lock") {
                op.checked_at = checked_at;
            }
        }
        _ => {}
    }
}
