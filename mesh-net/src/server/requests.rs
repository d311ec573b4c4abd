//! Entry points of the HTTP API: each routes its request to the leader
//! (locally if this server leads) through [`crate::routing`].

use crate::routing::{Idempotence, RouteLimits, Router};

use super::*;

impl Server {
    /// Routes a leader-only request to the leader and returns its answer.
    pub(super) async fn on_leader(
        &self,
        req: RpcRequest,
        idempotence: Idempotence,
        timeout: Duration,
    ) -> Result<RpcResponse, RpcError> {
        self.router()
            .forward(req, idempotence, timeout, |req| self.handle_as_leader(req))
            .await
    }

    fn router(&self) -> Router<'_> {
        let bound_ms = self.election_bound_ms();
        Router {
            source: self,
            rpc: &self.rpc,
            me: Some(self.node_id),
            limits: RouteLimits {
                leader_wait: LEADER_WAIT,
                // A new leader is announced long before this; silence only
                // decides when none is (this server is cut off too).
                leader_silent_ms: bound_ms,
                leaderless_give_up_ms: bound_ms,
            },
        }
    }

    /// How long an election may take: a lease, a drawn wait of up to
    /// another, and the PreVote and vote rounds. A leader not heard from
    /// (or, leading, a quorum not heard from) for longer is gone. Shorter
    /// bounds (one lease) answered healthy writes "outcome unknown" on a
    /// loaded 2-core machine, where a quorum's acknowledgement of 512 KiB
    /// batches can lag past 400 ms.
    pub(super) fn election_bound_ms(&self) -> u64 {
        3 * self.config.timing.election_timeout_max_ms
    }

    /// Commits a write through the leader.
    pub async fn write(&self, cmd: Command) -> Result<(u64, CommandResult), RpcError> {
        self.on_leader(
            Request::Write(cmd),
            Idempotence::AtMostOnce,
            FORWARD_TIMEOUT,
        )
        .await?
        .into_written()
    }

    /// Reads in the requested consistency mode.
    pub async fn read(&self, r: ReadRequest) -> Result<ReadResponse, RpcError> {
        let local = r.consistency == Consistency::Stale
            || (mutants::enabled(Mutant::StaleFollowerRead)
                && r.consistency == Consistency::Default);
        if local {
            self.wait_for_index(&r.query, r.min_index, r.wait_ms).await;
            return Ok(self.read_local(&r));
        }
        let timeout = FORWARD_TIMEOUT + Duration::from_millis(r.wait_ms.min(MAX_WAIT_MS));
        self.on_leader(Request::Read(r), Idempotence::Idempotent, timeout)
            .await?
            .into_read()
    }

    /// Removes a server from the Raft configuration (through the leader).
    /// Two membership changes commit one after the other (joint, then
    /// final), so it gets the membership bound, not a write's.
    pub async fn remove_peer(&self, node_id: u64) -> Result<(), RpcError> {
        self.on_leader(
            Request::RemovePeer { node_id },
            Idempotence::AtMostOnce,
            MEMBERSHIP_TIMEOUT,
        )
        .await
        .map(|_| ())
    }
}
