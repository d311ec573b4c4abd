//! `PUT /v1/txn`: Consul's transaction endpoint, KV operations only.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use mesh_core::api::KvPair;
use mesh_core::definitions::normalize_keys;
use mesh_core::kv::txn::{TxnOp, TxnOutcome, MAX_TXN_OPS};
use mesh_core::state::{CommandResult, KvCommand};
use serde_json::{json, Value};

use super::reply::{bad_request, method_not_allowed, read_json, reply, rpc_error, text, Reply};
use super::routes::{Call, HttpApi};

/// Reads one `{"KV": {...}}` operation (keys in any casing Consul accepts).
fn decode_op(i: usize, v: &Value) -> Result<TxnOp, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("operation {i}: expected an object like {{\"KV\": {{...}}}}"))?;
    let Some(kv) = obj.get("kv") else {
        let kinds: Vec<&String> = obj.keys().collect();
        return Err(format!(
            "operation {i}: only KV operations are supported, not {kinds:?}"
        ));
    };
    let field = |name: &str| kv.get(name);
    let string = |name: &str| -> Result<String, String> {
        match field(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "operation {i}: {name}: expected a string, got {other}"
            )),
        }
    };
    let number = |name: &str| -> Result<u64, String> {
        match field(name) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| {
                format!("operation {i}: {name}: expected an unsigned number, got {v}")
            }),
        }
    };
    let verb = string("verb")?;
    if verb.is_empty() {
        return Err(format!("operation {i}: missing Verb"));
    }
    let value = match string("value")? {
        v if v.is_empty() => Vec::new(),
        v => STANDARD
            .decode(v)
            .map_err(|e| format!("operation {i}: Value is not valid base64: {e}"))?,
    };
    let session = string("session")?;
    if session.len() > mesh_core::session_api::MAX_SESSION_ID_LEN {
        return Err(format!(
            "operation {i}: a session ID is at most {} bytes",
            mesh_core::session_api::MAX_SESSION_ID_LEN
        ));
    }
    Ok(TxnOp {
        verb,
        key: string("key")?,
        value,
        flags: number("flags")?,
        index: number("index")?,
        session,
        checked_at: 0,
    })
}

impl HttpApi {
    pub(super) async fn txn(&self, call: Call) -> Reply {
        if call.method != Method::PUT {
            return method_not_allowed();
        }
        let value = match read_json(call.req).await {
            Ok(v) => normalize_keys(&v),
            Err(r) => return r,
        };
        let Some(list) = value.as_array() else {
            return bad_request("Failed to parse body: expected a list of operations");
        };
        if list.len() > MAX_TXN_OPS {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                    list.len()
                ),
            );
        }
        let ops = match list
            .iter()
            .enumerate()
            .map(|(i, v)| decode_op(i, v))
            .collect()
        {
            Ok(ops) => ops,
            Err(e) => return bad_request(format!("Failed to parse body: {e}")),
        };
        match self.cluster.write(KvCommand::Txn { ops }.into()).await {
            Ok((index, CommandResult::Txn(outcome))) => {
                let (status, body) = match outcome {
                    TxnOutcome::Committed(results) => {
                        let results: Vec<Value> = results
                            .iter()
                            .map(|r| {
                                let mut pair = KvPair::from(&r.entry);
                                if !r.with_value {
                                    pair.value = None;
                                }
                                json!({ "KV": pair })
                            })
                            .collect();
                        (
                            StatusCode::OK,
                            json!({ "Results": results, "Errors": null }),
                        )
                    }
                    TxnOutcome::RolledBack(errors) => {
                        let errors: Vec<Value> = errors
                            .iter()
                            .map(|e| json!({ "OpIndex": e.op_index, "What": e.what }))
                            .collect();
                        (
                            StatusCode::CONFLICT,
                            json!({ "Results": null, "Errors": errors }),
                        )
                    }
                };
                let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
                let mut resp = reply(status, "application/json", bytes);
                resp.headers_mut()
                    .insert("X-Consul-Index", HeaderValue::from(index));
                resp
            }
            Ok((_, other)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("a transaction was answered with {other:?}"),
            ),
            Err(e) => rpc_error(e),
        }
    }
}
