//! Entry points of the HTTP API: each routes its request to the leader
//! (locally if this server leads) through [`crate::routing`].

use super::*;

impl Server {
    // ---- entry points (route to the leader) ------------------------------

    /// Routes a leader-only request to the leader and returns its answer.
    pub(super) async fn on_leader(
        &self,
        req: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, RpcError> {
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
}
