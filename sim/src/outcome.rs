//! What a client may conclude from the answer to an update (`PUT`,
//! `DELETE`): it took effect, it definitely did not, or nobody knows.
//!
//! The distinction follows where the request stopped, as the server's code
//! states it (`mesh-net/src/http/routes.rs`, `rpc_error`, and
//! `mesh_core::wire::RpcError`):
//! - no TCP connection (`HttpClientError::Unreachable`): the request was
//!   never sent;
//! - a 4xx answer: `RpcError::Rejected` ("do not retry") or a malformed
//!   request, refused before anything was proposed;
//! - `500 No cluster leader`: `RpcError::NoLeader`/`NotLeader`, which the
//!   server returns when it did not run the write (no leader found within
//!   `LEADER_WAIT`, a leader handing off, an RPC it could not deliver);
//!
//! are definite failures: the write must never take effect. Everything
//! else, a timeout, a connection that broke midway, or any other 500
//! (`RpcError::Internal`, "the outcome is unknown"), may or may not have
//! taken effect, now or later.
//!
//! One caveat, in the server rather than here: openraft answers
//! `ForwardToLeader` (mapped to `NotLeader`) also for an entry it had
//! already appended when a new leader truncates it, and such an entry can
//! still be committed by a later leader that holds it (Raft paper §5.4.2,
//! Figure 8). If that ever happens, `checkers::definite_failures` says so.

use mesh_net::http_client::{HttpClientError, HttpResponse};

/// The body the server sends with `RpcError::NoLeader`/`NotLeader`.
pub const NO_LEADER_BODY: &str = "No cluster leader";

/// What an update's answer tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200 `true`: it took effect.
    Applied,
    /// Answered 200 `false`: it ran and changed nothing (a failed CAS).
    Refused,
    /// It did not run and never will.
    DefiniteFailure,
    /// It may take effect at any time, or never.
    Unknown,
}

/// Classifies the answer to one update.
pub fn classify(r: &Result<HttpResponse, HttpClientError>) -> Outcome {
    match r {
        Ok(r) => classify_status(r.status, &r.body),
        Err(HttpClientError::Unreachable { .. }) => Outcome::DefiniteFailure,
        Err(HttpClientError::Failed { .. } | HttpClientError::Timeout { .. }) => Outcome::Unknown,
    }
}

/// Classifies an HTTP answer by status and body.
pub fn classify_status(status: u16, body: &[u8]) -> Outcome {
    match status {
        200 if body.starts_with(b"true") => Outcome::Applied,
        200 if body.starts_with(b"false") => Outcome::Refused,
        400..=499 => Outcome::DefiniteFailure,
        500 if body.trim_ascii() == NO_LEADER_BODY.as_bytes() => Outcome::DefiniteFailure,
        _ => Outcome::Unknown,
    }
}

/// What a default-mode read of one key (`GET /v1/kv/<key>`) saw:
/// `Some(None)` if the key is absent, `Some(Some((value, ModifyIndex)))`
/// if present, `None` if the read failed (it then had no effect and
/// proves nothing).
pub fn register_read(r: &HttpResponse) -> Option<Option<(String, u64)>> {
    match r.status {
        404 => Some(None),
        200 => {
            let pairs: Vec<mesh_core::api::KvPair> = serde_json::from_slice(&r.body).ok()?;
            let pair = pairs.first()?;
            let value = String::from_utf8(pair.decoded_value().ok()?).ok()?;
            Some(Some((value, pair.modify_index)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify_status(200, b"true"), Outcome::Applied);
        assert_eq!(classify_status(200, b"false"), Outcome::Refused);
        assert_eq!(
            classify_status(400, b"key too long\n"),
            Outcome::DefiniteFailure
        );
        assert_eq!(
            classify_status(500, b"No cluster leader\n"),
            Outcome::DefiniteFailure
        );
        assert_eq!(
            classify_status(500, b"connection reset; the outcome is unknown\n"),
            Outcome::Unknown
        );
        assert_eq!(classify_status(200, b"garbage"), Outcome::Unknown);
    }

    #[test]
    fn client_errors_map_to_outcomes() {
        let unreachable = Err(HttpClientError::Unreachable {
            addr: "a".into(),
            reason: "refused".into(),
        });
        assert_eq!(classify(&unreachable), Outcome::DefiniteFailure);
        let timeout = Err(HttpClientError::Timeout {
            addr: "a".into(),
            timeout: std::time::Duration::from_secs(1),
        });
        assert_eq!(classify(&timeout), Outcome::Unknown);
    }
}
