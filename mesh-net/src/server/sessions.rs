//! Sessions on the leader: TTL timers (renewals in, `SessionDestroy`
//! verdicts out through Raft) and the lock delay checked before a lock is
//! proposed. The decisions are `mesh_core::session_ttl`'s; this file feeds
//! it renewals, state changes and time, and commits its outputs.

use mesh_core::kv::txn::{TxnError, TxnOutcome};
use mesh_core::session_ttl::{Expire, SessionTimers};
use mesh_core::state::sessions::Session;
use mesh_core::state::{KvCommand, SessionCommand};

use crate::routing::Idempotence;

use super::*;

/// How long a failed destroy waits before it is decided again.
const DESTROY_RETRY: Duration = Duration::from_millis(1_000);

impl Server {
    /// Restarts the session's TTL if this server leads; the session as
    /// stored, or `None` if there is no such session (or it just expired).
    ///
    /// Leadership is confirmed with a quorum before the timer restarts, so
    /// a deposed leader that has not noticed yet cannot acknowledge a
    /// renewal the new leader never sees (Consul's leader answers from its
    /// own view): every acknowledged renewal was sent before the current
    /// leader's term began, or reached its timers.
    pub(super) async fn renew_here(&self, id: &str) -> Result<RpcResponse, RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.confirm_leadership().await?;
        let Some(session) = self.view.read(|sm| sm.sessions().get(id).cloned()) else {
            return Ok(Response::Renewed(None));
        };
        let now = self.session_clock_ms();
        let mut timers = self.session_timers.lock().expect("session timers lock");
        // Not leading long enough to have timers yet: the driver starts
        // every session with a full TTL when it takes over, which is what
        // a renewal gives.
        let renewed = match timers.as_mut() {
            Some(t) => t.renew(now, id, session.ttl_ms()),
            None => true,
        };
        Ok(Response::Renewed(renewed.then_some(session)))
    }

    /// Renews a session through the leader.
    pub async fn renew_session(&self, id: String) -> Result<Option<Session>, RpcError> {
        self.on_leader(
            Request::RenewSession { id },
            Idempotence::Idempotent,
            FORWARD_TIMEOUT,
        )
        .await?
        .into_renewed()
    }

    /// What the leader answers, without proposing, for a lock of a key
    /// still in its lock delay: `false` for `?acquire`, a failed `lock`
    /// verb for a transaction (Consul's `kvsPreApply` and `Txn.preCheck`).
    pub(super) fn refuse_delayed_lock(&self, cmd: &Command) -> Option<CommandResult> {
        if mutants::enabled(Mutant::LockDelayIgnored) {
            return None;
        }
        let delayed = |key: &str| self.view.lock_delayed_until(key).is_some();
        match cmd {
            Command::Kv(KvCommand::Lock { key, .. }) if delayed(key) => {
                info!(%key, "refusing a lock during the key's lock delay");
                Some(CommandResult::Bool(false))
            }
            Command::Kv(KvCommand::Txn { ops }) => {
                let errors: Vec<TxnError> = ops
                    .iter()
                    .enumerate()
                    .filter(|(_, op)| op.verb == "lock" && delayed(&op.key))
                    .map(|(op_index, op)| TxnError {
                        op_index,
                        what: format!("failed to lock key {:?} due to lock delay", op.key),
                    })
                    .collect();
                (!errors.is_empty()).then_some(CommandResult::Txn(TxnOutcome::RolledBack(errors)))
            }
            _ => None,
        }
    }

    /// The clock session TTLs are measured on: this host's monotonic
    /// clock (the planted bug measures them on its wall clock, which
    /// steps).
    fn session_clock_ms(&self) -> u64 {
        if mutants::enabled(Mutant::SessionTtlOnWallClock) {
            return clock::wall_now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        self.ms_since_start()
    }

    /// Every session with its TTL in ms.
    fn session_ttls(&self) -> Vec<(String, u64)> {
        self.view.read(|sm| {
            sm.sessions()
                .iter()
                .map(|s| (s.id.clone(), s.ttl_ms()))
                .collect()
        })
    }

    /// Runs for the server's lifetime: while this server leads with a
    /// quorum, keeps the session timers and commits their verdicts.
    pub(super) async fn session_driver(self: Arc<Self>) {
        let mut views = self.leader_view.subscribe();
        loop {
            *self.session_timers.lock().expect("session timers lock") = None;
            while !self.is_leader() || self.without_quorum() {
                let _ = clock::timeout(Duration::from_millis(100), views.changed()).await;
            }
            let term = self.metrics().current_term;
            let timers = SessionTimers::new(self.session_clock_ms(), self.session_ttls());
            *self.session_timers.lock().expect("session timers lock") = Some(timers);
            let mut state = self.view.clone();
            let mut seen = self.view.read(|sm| sm.table_index(Table::Sessions));
            while self.is_leader() && !self.without_quorum() && self.metrics().current_term == term
            {
                let now = self.session_clock_ms();
                let expired = self.with_timers(|t| {
                    t.handle_timeout(now);
                    std::iter::from_fn(|| t.poll_output()).collect::<Vec<Expire>>()
                });
                for Expire { id } in expired {
                    info!(session = %id, "session TTL expired: invalidating it");
                    self.telemetry.session_ttl_invalidate.inc(&[]);
                    let cmd = SessionCommand::Destroy { id: id.clone() };
                    if let Err(e) = self.write_here(cmd.into()).await {
                        warn!(session = %id, error = %e, "could not invalidate an expired session; will retry");
                        let retry = self.session_clock_ms() + DESTROY_RETRY.as_millis() as u64;
                        self.with_timers(|t| t.write_failed(&id, retry));
                    }
                }
                let now = self.session_clock_ms();
                let sleep_ms = self
                    .with_timers(|t| t.poll_timeout())
                    .map_or(1_000, |t| t.saturating_sub(now).clamp(1, 1_000));
                tokio::select! {
                    biased;
                    _ = state.changed() => {
                        let index = self.view.read(|sm| sm.table_index(Table::Sessions));
                        if index != seen {
                            seen = index;
                            let (now, ttls) = (self.session_clock_ms(), self.session_ttls());
                            self.with_timers(|t| t.sync(now, ttls));
                        }
                    }
                    () = clock::sleep(Duration::from_millis(sleep_ms)) => {}
                }
            }
        }
    }

    /// Runs `f` on the timers (present while the driver leads).
    fn with_timers<T: Default>(&self, f: impl FnOnce(&mut SessionTimers) -> T) -> T {
        let mut timers = self.session_timers.lock().expect("session timers lock");
        timers.as_mut().map(f).unwrap_or_default()
    }
}
