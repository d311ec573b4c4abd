//! Routing a request to the leader, following leader changes.
//!
//! One piece for every caller that needs the leader: a server's HTTP entry
//! points, its join requests, and (next) client agents. The caller says
//! who it believes leads ([`LeaderSource`]) and how to run the request
//! when that is itself; [`Router::forward`] does the rest:
//!
//! - no leader known, a "not the leader" answer, or a refused connection:
//!   the request provably did not run; try again (at the hinted leader, or
//!   when the view changes) until a leader answers or the wait runs out;
//! - the leader changes, or falls silent for an election's length, while the request is
//!   in flight: an idempotent request is sent again to the new leader; a
//!   request that must run at most once (a write, a CAS) is answered
//!   "outcome unknown" at once, because the old leader may still have
//!   committed it. Before, such a request waited out a fixed 5 s forward
//!   timeout while a new leader was already taking writes;
//! - this node has been without a working leader for longer than an
//!   election takes ([`RouteLimits::leaderless_give_up_ms`]): "no leader" at
//!   once instead of waiting out the whole wait, so a client of a cut-off
//!   server learns it within the election bound;
//! - this node leads and runs the request itself: the same `timeout` as a
//!   forwarded request, then "outcome unknown" for a request that must run
//!   at most once (an idempotent one is tried again until the wait runs
//!   out, then "no leader"). A leader that keeps its quorum's
//!   acknowledgements but whose entries never commit (seen with a planted
//!   vote-forgetting bug: the write hung for good) must still answer.

use std::future::Future;
use std::time::Duration;

use mesh_core::formation::ServerInfo;
use mesh_core::wire::{Response, RpcError};
use tokio::sync::watch;

use crate::clock::{self, Instant};
use crate::mutants::{self, Mutant};
use crate::rpc::{CallError, RpcClient, RpcRequest, RpcResponse};

/// Who leads, as one node believes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderView {
    /// The leader, if known.
    pub leader: Option<ServerInfo>,
    /// The term the belief is from.
    pub term: u64,
}

/// Where a node's belief about the leader comes from.
pub trait LeaderSource: Send + Sync {
    /// The current view; changes are announced on the channel.
    fn leader_view(&self) -> watch::Receiver<LeaderView>;
    /// How long this node has been without a working leader, in ms: 0 while
    /// it hears from one (or, leading, from a quorum).
    fn leaderless_ms(&self) -> u64;
}

/// Whether a request may be carried out twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotence {
    /// Reads, status: sending it again is harmless.
    Idempotent,
    /// Writes, CAS, membership changes: never sent again once it may have run.
    AtMostOnce,
}

/// How long routing keeps trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteLimits {
    /// Longest wait for a leader (Consul's `rpc_hold_timeout`, 7 s).
    pub leader_wait: Duration,
    /// A leader not heard from for this long is presumed gone.
    pub leader_silent_ms: u64,
    /// Without a working leader for this long, answer "no leader" at once.
    pub leaderless_give_up_ms: u64,
}

/// Routes requests to the leader.
pub struct Router<'a> {
    /// Who leads.
    pub source: &'a dyn LeaderSource,
    /// The RPC client.
    pub rpc: &'a RpcClient,
    /// This node's Raft id, if it is a server (requests for itself run locally).
    pub me: Option<u64>,
    /// Bounds.
    pub limits: RouteLimits,
}

/// How often an in-flight request checks whether its leader fell silent.
const SILENCE_CHECK: Duration = Duration::from_millis(25);
/// Pause between attempts when nothing announced a new leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Waits until a new leader is announced, or a pause has passed.
async fn continue_after_pause(views: &mut watch::Receiver<LeaderView>) {
    let _ = clock::timeout(RETRY_PAUSE, views.changed()).await;
}

impl Router<'_> {
    /// Sends `req` to the leader (running it with `local` when that is this
    /// node) and returns its answer; see the module docs for the rules.
    pub async fn forward<L, F>(
        &self,
        req: RpcRequest,
        idempotence: Idempotence,
        timeout: Duration,
        local: L,
    ) -> Result<RpcResponse, RpcError>
    where
        L: Fn(RpcRequest) -> F,
        F: Future<Output = RpcResponse>,
    {
        // Whether an attempt that may have run can be sent again.
        let resend_ok =
            idempotence == Idempotence::Idempotent || mutants::enabled(Mutant::RetryMaybeRan);
        let deadline = Instant::now() + self.limits.leader_wait;
        let mut views = self.source.leader_view();
        let mut hint: Option<ServerInfo> = None;
        loop {
            let view = views.borrow_and_update().clone();
            let target = hint.take().or(view.leader.clone());
            let resp = match target {
                Some(l) if Some(l.node_id) == self.me => {
                    match clock::timeout(timeout, local(req.clone())).await {
                        Ok(resp) => resp,
                        Err(_) => {
                            tracing::warn!(
                                ?timeout,
                                "a request to this server, the leader, was not carried out in time"
                            );
                            if resend_ok {
                                // A read or a renewal: try again (here or at
                                // a new leader) until the wait runs out.
                                continue_after_pause(&mut views).await;
                                if Instant::now() >= deadline {
                                    return Err(RpcError::NoLeader);
                                }
                                continue;
                            }
                            return Err(RpcError::OutcomeUnknown(format!(
                                "not carried out within {timeout:?} by this server, the \
                                 leader; it may or may not have been"
                            )));
                        }
                    }
                }
                Some(l) => match self.send(&l, &view, &req, idempotence, timeout).await {
                    Sent::Answer(resp) => *resp,
                    Sent::NotRun => Response::Error(RpcError::NoLeader),
                    // Sent again once a new leader is announced (below).
                    Sent::LeaderMoved if resend_ok => Response::Error(RpcError::NoLeader),
                    Sent::LeaderMoved => {
                        return Err(RpcError::OutcomeUnknown(format!(
                            "the leader {} changed or fell silent while the request was in \
                             flight; it may or may not have been carried out",
                            l.rpc_addr
                        )))
                    }
                    Sent::Failed(e) if resend_ok => {
                        tracing::debug!(error = %e, "idempotent request failed; retrying");
                        Response::Error(RpcError::NoLeader)
                    }
                    Sent::Failed(e) => {
                        return Err(RpcError::OutcomeUnknown(format!(
                            "{e}; it may or may not have been carried out"
                        )))
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
            let leaderless = self.source.leaderless_ms() > self.limits.leaderless_give_up_ms;
            if Instant::now() >= deadline || (hint.is_none() && leaderless) {
                return Err(RpcError::NoLeader);
            }
            if hint.is_none() {
                continue_after_pause(&mut views).await;
            }
        }
    }

    /// One attempt at the leader `l`, abandoned when the view moves past
    /// it or it falls silent.
    async fn send(
        &self,
        l: &ServerInfo,
        view: &LeaderView,
        req: &RpcRequest,
        idempotence: Idempotence,
        timeout: Duration,
    ) -> Sent {
        let call = self.rpc.call(&l.rpc_addr, req, timeout);
        let moved = self.leader_moved(l.node_id, view.term);
        tokio::select! {
            biased;
            result = call => match result {
                Ok(resp) => Sent::Answer(Box::new(resp)),
                Err(e) if e.not_delivered() => match e {
                    CallError::TooLarge { source, .. } => {
                        Sent::Answer(Box::new(Response::Error(RpcError::Rejected(
                            source.to_string(),
                        ))))
                    }
                    _ => Sent::NotRun,
                },
                Err(e) => Sent::Failed(e),
            },
            () = moved => {
                if idempotence == Idempotence::AtMostOnce {
                    tracing::info!(leader = %l.rpc_addr, "leader changed with a write in flight: outcome unknown");
                }
                Sent::LeaderMoved
            }
        }
    }

    /// Resolves when the view names another leader or a later term, or the
    /// leader has been silent for `leader_silent_ms`.
    async fn leader_moved(&self, leader: u64, term: u64) {
        if crate::mutants::enabled(crate::mutants::Mutant::IgnoreLeaderChange) {
            return std::future::pending().await;
        }
        let mut views = self.source.leader_view();
        loop {
            {
                let v = views.borrow_and_update();
                let other_leader = v.leader.as_ref().is_some_and(|l| l.node_id != leader);
                if v.term > term || other_leader {
                    return;
                }
            }
            if self.source.leaderless_ms() > self.limits.leader_silent_ms {
                return;
            }
            let _ = clock::timeout(SILENCE_CHECK, views.changed()).await;
        }
    }
}

/// The result of one attempt.
enum Sent {
    /// The leader (or who it thinks it is) answered.
    Answer(Box<RpcResponse>),
    /// The request provably did not reach anyone.
    NotRun,
    /// The leader changed or fell silent meanwhile.
    LeaderMoved,
    /// Sent, then the connection failed or timed out: outcome unknown.
    Failed(CallError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_millis(200);
    const LEADER_WAIT: Duration = Duration::from_millis(700);

    struct Leading(watch::Sender<LeaderView>);

    impl LeaderSource for Leading {
        fn leader_view(&self) -> watch::Receiver<LeaderView> {
            self.0.subscribe()
        }
        fn leaderless_ms(&self) -> u64 {
            0
        }
    }

    fn me() -> ServerInfo {
        ServerInfo {
            node_id: 7,
            name: "consul00".into(),
            rpc_addr: "127.0.0.1:8300".into(),
            http_addr: "127.0.0.1:8500".into(),
            bootstrap_expect: None,
        }
    }

    #[tokio::test]
    async fn a_request_this_leader_never_answers_is_outcome_unknown_after_the_timeout() {
        let source = Leading(watch::Sender::new(LeaderView {
            leader: Some(me()),
            term: 3,
        }));
        let rpc = RpcClient::new();
        let router = Router {
            source: &source,
            rpc: &rpc,
            me: Some(7),
            limits: RouteLimits {
                leader_wait: LEADER_WAIT,
                leader_silent_ms: 1_200,
                leaderless_give_up_ms: 1_200,
            },
        };
        let req = mesh_core::wire::Request::Heartbeat {
            node: "fcs00".into(),
        };
        let started = Instant::now();
        let never = router.forward(req.clone(), Idempotence::AtMostOnce, BOUND, |_| {
            std::future::pending::<RpcResponse>()
        });
        let answer = tokio::time::timeout(Duration::from_secs(10), never)
            .await
            .expect("answered, not hung");
        assert!(
            matches!(&answer, Err(RpcError::OutcomeUnknown(m)) if m.contains("200ms")),
            "{answer:?}"
        );
        assert!(started.elapsed() >= BOUND);
        // An idempotent request is tried again until the wait runs out.
        let started = Instant::now();
        let never = router.forward(req.clone(), Idempotence::Idempotent, BOUND, |_| {
            std::future::pending::<RpcResponse>()
        });
        let answer = tokio::time::timeout(Duration::from_secs(10), never)
            .await
            .expect("answered, not hung");
        assert!(matches!(answer, Err(RpcError::NoLeader)), "{answer:?}");
        assert!(started.elapsed() >= LEADER_WAIT);
        let answer = router
            .forward(req, Idempotence::AtMostOnce, BOUND, |_| async {
                Response::Done
            })
            .await;
        assert!(matches!(answer, Ok(Response::Done)), "{answer:?}");
    }
}
