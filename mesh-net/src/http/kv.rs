//! `/v1/kv`: Consul's key/value endpoints.

use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use mesh_core::api::{validate_key, KvPair};
use mesh_core::state::{Command, CommandResult, KvCommand};
use mesh_core::wire::{KvQuery, QueryResult};

use super::params::{percent_decode, Query};
use super::reply::{
    bad_request, json_reply, method_not_allowed, read_body, reply, rpc_error, text,
    with_read_headers, Reply,
};
use super::routes::{Call, HttpApi};

impl HttpApi {
    pub(super) async fn kv(&self, call: Call) -> Reply {
        let raw_key = call.path.strip_prefix("/v1/kv/").unwrap_or("");
        let key = match percent_decode(raw_key, false) {
            Ok(k) => k,
            Err(e) => return bad_request(e),
        };
        match call.method {
            Method::GET => self.kv_get(key, &call.query).await,
            Method::PUT => {
                let query = call.query;
                let body = match read_body(call.req).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                self.kv_put(key, &query, body.to_vec()).await
            }
            Method::DELETE => self.kv_delete(key, &call.query).await,
            _ => method_not_allowed(),
        }
    }

    async fn kv_get(&self, key: String, query: &Query) -> Reply {
        let kv_query = if query.has("keys") {
            KvQuery::Keys {
                prefix: key,
                separator: query
                    .get("separator")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            }
        } else if query.has("recurse") {
            KvQuery::List { prefix: key }
        } else {
            if let Err(e) = validate_key(&key) {
                return bad_request(e.to_string());
            }
            KvQuery::Get { key }
        };
        let keys_mode = matches!(kv_query, KvQuery::Keys { .. });
        let resp = match self.read(query, kv_query).await {
            Ok(r) => r,
            Err(r) => return r,
        };
        let QueryResult::Kv { entries, keys } = &resp.result else {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("a KV read was answered with {:?}", resp.result),
            );
        };
        let body = if keys_mode {
            if keys.is_empty() {
                text(StatusCode::NOT_FOUND, "")
            } else {
                json_reply(keys)
            }
        } else if entries.is_empty() {
            text(StatusCode::NOT_FOUND, "")
        } else if query.has("raw") {
            reply(
                StatusCode::OK,
                "application/octet-stream",
                entries[0].value.clone(),
            )
        } else {
            let pairs: Vec<KvPair> = entries.iter().map(KvPair::from).collect();
            json_reply(&pairs)
        };
        with_read_headers(body, &resp)
    }

    async fn kv_put(&self, key: String, query: &Query, value: Vec<u8>) -> Reply {
        if let Err(e) = validate_key(&key) {
            return bad_request(e.to_string());
        }
        let modes = ["cas", "acquire", "release"]
            .into_iter()
            .filter(|m| query.has(m))
            .count();
        if modes > 1 {
            return bad_request("Conflicting flags: use at most one of ?cas, ?acquire, ?release");
        }
        let (flags, cas) = match (query.u64("flags"), query.u64("cas")) {
            (Ok(f), Ok(c)) => (f.unwrap_or(0), c),
            (Err(e), _) | (_, Err(e)) => return bad_request(e),
        };
        let session = |mode: &str| query.get(mode).unwrap_or("").to_string();
        for mode in ["acquire", "release"] {
            if session(mode).len() > mesh_core::session_api::MAX_SESSION_ID_LEN {
                return bad_request(format!(
                    "?{mode}: a session ID is at most {} bytes",
                    mesh_core::session_api::MAX_SESSION_ID_LEN
                ));
            }
        }
        let cmd = if query.has("acquire") {
            KvCommand::Lock {
                key,
                value,
                flags,
                session: session("acquire"),
                checked_at: 0,
            }
        } else if query.has("release") {
            KvCommand::Unlock {
                key,
                value,
                flags,
                session: session("release"),
            }
        } else {
            match cas {
                Some(index) => KvCommand::Cas {
                    key,
                    value,
                    flags,
                    index,
                },
                None => KvCommand::Set { key, value, flags },
            }
        };
        // Consul answers a lock for a missing or invalid session with 500
        // and `invalid session "<id>"` (Patroni matches that text).
        let failed = if matches!(cmd, KvCommand::Lock { .. } | KvCommand::Unlock { .. }) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        self.write_bool_or(cmd.into(), failed).await
    }

    async fn kv_delete(&self, key: String, query: &Query) -> Reply {
        let cas = match query.u64("cas") {
            Ok(c) => c,
            Err(e) => return bad_request(e),
        };
        let cmd = if query.has("recurse") {
            if cas.is_some() {
                return bad_request("cannot combine ?recurse with ?cas");
            }
            KvCommand::DeleteTree { prefix: key }
        } else {
            if let Err(e) = validate_key(&key) {
                return bad_request(e.to_string());
            }
            match cas {
                Some(index) => KvCommand::DeleteCas { key, index },
                None => KvCommand::Delete { key },
            }
        };
        self.write_bool(cmd.into()).await
    }

    /// Commits `cmd` and answers Consul's `true`/`false` body with the
    /// write's index; a refusal is a 400.
    pub(super) async fn write_bool(&self, cmd: Command) -> Reply {
        self.write_bool_or(cmd, StatusCode::BAD_REQUEST).await
    }

    /// [`HttpApi::write_bool`], with a refusal answered `failed`.
    pub(super) async fn write_bool_or(&self, cmd: Command, failed: StatusCode) -> Reply {
        match self.cluster.write(cmd).await {
            Ok((index, CommandResult::Bool(ok))) => {
                let mut resp = json_reply(&ok);
                resp.headers_mut()
                    .insert("X-Consul-Index", HeaderValue::from(index));
                resp
            }
            Ok((_, CommandResult::Failed(m))) => text(failed, m),
            Ok((_, other)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("a write was answered with {other:?}"),
            ),
            Err(e) => rpc_error(e),
        }
    }
}
