//! No acknowledged write is lost: once a write was answered with success,
//! every later read of a healthy cluster sees it (Raft paper §5.4,
//! "Leader Completeness"; Consul's KV consistency guarantees).
//!
//! The workload writes every key once, so each acknowledged key must hold
//! exactly the acknowledged value on every server at the end.

use std::collections::BTreeMap;

use mesh_core::state::StateMachine;

/// Checks `state` (one server's applied state) against the acknowledged writes.
pub fn check(
    server: &str,
    state: &StateMachine,
    acked: &BTreeMap<String, Vec<u8>>,
) -> Result<(), String> {
    for (key, value) in acked {
        match state.kv().get(key) {
            Some(e) if e.value == *value => {}
            Some(e) => {
                return Err(format!(
                    "acknowledged write lost on {server}: {key} holds {:?}, acknowledged {:?}",
                    String::from_utf8_lossy(&e.value),
                    String::from_utf8_lossy(value)
                ))
            }
            None => {
                return Err(format!(
                    "acknowledged write lost on {server}: {key} is missing"
                ))
            }
        }
    }
    Ok(())
}
