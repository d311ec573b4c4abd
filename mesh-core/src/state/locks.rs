//! What sessions do across tables: a session is created only for a node
//! and checks the catalog has (none critical), and invalidating one
//! releases or deletes the KV keys it locked.
//!
//! Consul invalidates a session in the same state-store transaction as the
//! catalog write that caused it (`deleteSessionTxn` from `ensureCheckTxn`,
//! `deleteNodeTxn`, `deleteCheckTxn`); here the state machine does it right
//! after applying a catalog command, at the same Raft index, so every
//! replica invalidates the same sessions at the same point of the log.
//!
//! The lock delay is not replicated state (Consul keeps it in each
//! server's memory too): invalidations leave [`LockDelay`]s that the
//! server applying the entry drains ([`super::StateMachine::take_lock_delays`])
//! and enforces on its own clock when it leads.

use super::catalog::{CatalogTable, CheckStatus};
use super::sessions::{Behavior, Session, SessionCommand, MAX_LOCK_DELAY_NS};
use super::{CommandResult, StateMachine};

/// Keys just released by an invalidated session: nobody may lock them for
/// `delay_ms` from the moment the entry is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockDelay {
    /// The key.
    pub key: String,
    /// How long it stays unlockable.
    pub delay_ms: u64,
}

/// Applies a session command at `index`.
pub(super) fn apply(sm: &mut StateMachine, index: u64, cmd: &SessionCommand) -> CommandResult {
    match cmd {
        SessionCommand::Create(session) => {
            if let Err(e) = check_create(&sm.catalog, session) {
                sm.sessions.touch(index);
                return CommandResult::Failed(e);
            }
            match sm.sessions.insert(index, session) {
                Ok(()) => CommandResult::Bool(true),
                Err(e) => CommandResult::Failed(e),
            }
        }
        SessionCommand::Destroy { id } => {
            invalidate(sm, index, id);
            CommandResult::Bool(true)
        }
    }
}

/// After the catalog command at `index`: invalidates every session whose
/// node left the catalog or one of whose checks is gone or critical.
pub(super) fn after_catalog_change(sm: &mut StateMachine, index: u64) {
    let doomed: Vec<String> = sm
        .sessions
        .iter()
        .filter(|s| check_health(&sm.catalog, s).is_err())
        .map(|s| s.id.clone())
        .collect();
    for id in doomed {
        invalidate(sm, index, &id);
    }
}

/// Removes the session and releases or deletes its keys.
fn invalidate(sm: &mut StateMachine, index: u64, id: &str) {
    let Some(session) = sm.sessions.remove(index, id) else {
        return;
    };
    let keys = sm
        .kv
        .drop_session(index, id, session.behavior == Behavior::Delete);
    for key in &keys {
        sm.sessions.record_release(index, key);
    }
    sm.sessions.forget_old_releases(index);
    // Whole milliseconds, rounded up: a delay is never shortened.
    let delay_ms = session
        .lock_delay_ns
        .min(MAX_LOCK_DELAY_NS)
        .div_ceil(1_000_000);
    if delay_ms > 0 {
        sm.effects
            .lock_delays
            .extend(keys.into_iter().map(|key| LockDelay { key, delay_ms }));
    }
}

/// Whether `session` may be created: its limits, its node, its checks.
/// Messages are Consul's where it has them.
fn check_create(catalog: &CatalogTable, session: &Session) -> Result<(), String> {
    if session.id.is_empty() {
        return Err("Session ID is required".into());
    }
    super::sessions::ttl_ms(&session.ttl)?;
    check_health(catalog, session)
}

/// Why `session` cannot live: its node is gone, or a check is missing or
/// critical.
fn check_health(catalog: &CatalogTable, session: &Session) -> Result<(), String> {
    if catalog.node(&session.node).is_none() {
        return Err("Missing node registration".into());
    }
    for check in session.checks() {
        match catalog
            .node_checks(&session.node)
            .find(|c| c.check_id == check)
        {
            None => return Err(format!("Missing check '{check}' registration")),
            Some(c) if c.status == CheckStatus::Critical => {
                return Err(format!("Check '{check}' is in critical state"))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Cross-table invariants: every locked key's session exists.
pub(super) fn validate(sm: &StateMachine) -> Result<(), String> {
    for e in sm.kv.iter() {
        if let Some(s) = &e.session {
            if sm.sessions.get(s).is_none() {
                return Err(format!(
                    "KV key {:?} is locked by session {s:?}, which does not exist",
                    e.key
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
