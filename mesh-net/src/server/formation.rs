//! Cluster formation: discovery (`Hello`), bootstrap or bootstrap-expect
//! (decided by `mesh_core::formation`), and joining a formed cluster.

use super::*;

impl Server {
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

    pub(super) async fn hello(&self, addr: &str) -> Result<ClusterStatus, RpcError> {
        let resp = self
            .rpc
            .call(addr, &Request::Hello(self.info.clone()), FORWARD_TIMEOUT)
            .await
            .map_err(|e| RpcError::Internal(e.to_string()))?;
        let st = resp.into_status()?;
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
    pub(super) async fn send_join(&self, addr: &str) -> Result<(), RpcError> {
        let mut target = addr.to_string();
        for _ in 0..5 {
            let resp = self
                .rpc
                .call(
                    &target,
                    &Request::Join(self.info.clone()),
                    MEMBERSHIP_TIMEOUT,
                )
                .await
                .map_err(|e| RpcError::Internal(e.to_string()))?;
            match resp {
                Response::Done => {
                    info!(via = %target, "joined the cluster");
                    return Ok(());
                }
                Response::Error(RpcError::NotLeader { leader: Some(l) }) => target = l.rpc_addr,
                other => return other.into_done(),
            }
        }
        Err(RpcError::NoLeader)
    }

    pub(super) fn observe_server(&self, peer: ServerInfo) {
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

    pub(super) async fn formation_loop(self: Arc<Self>) {
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
}
