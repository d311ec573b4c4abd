//! The Connect CA over HTTP: `/v1/connect/ca/roots`,
//! `/v1/connect/ca/configuration`, and the agent's cached
//! `/v1/agent/connect/ca/roots` and `/v1/agent/connect/ca/leaf/:service`
//! (blocking: they wake on renewal and rotation).
//!
//! The leaf endpoint is the one place a private key is served: it is how
//! a sidecar on this host gets the key the agent generated for it, as
//! Consul's is. Keys are never logged and never leave the host otherwise.

use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use mesh_core::state::ca::{CaConfig, CaView};
use mesh_core::state::intentions::rfc3339;
use mesh_core::state::CaCommand;
use mesh_core::wire::{Query as ReadQuery, QueryResult};
use serde_json::{json, Value};

use super::params::parse_duration_ms;
use super::reply::{
    bad_request, json_reply, method_not_allowed, not_found, read_json, rpc_error, text,
    with_read_headers, Reply,
};
use super::routes::{segment, Call, HttpApi};
use crate::server::MAX_WAIT_MS;

/// Consul's roots answer.
fn roots_json(view: &CaView) -> Value {
    json!({
        "ActiveRootID": view.active_root_id,
        "TrustDomain": view.trust_domain,
        "Roots": view.roots,
    })
}

/// Consul's duration spelling for whole seconds (`72h0m0s`).
fn go_duration(secs: u64) -> String {
    format!("{}h{}m{}s", secs / 3600, secs / 60 % 60, secs % 60)
}

fn config_json(config: &CaConfig, index: u64) -> Value {
    json!({
        "Provider": "consul",
        "Config": {
            "LeafCertTTL": go_duration(config.leaf_cert_ttl_secs),
            "RootCertTTL": go_duration(config.root_cert_ttl_secs),
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
        },
        "State": null,
        "ForceWithoutCrossSigning": false,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

fn with_index(mut resp: Reply, index: u64) -> Reply {
    resp.headers_mut()
        .insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    resp
}

impl HttpApi {
    /// `/v1/connect/ca/...`; `rest` follows `/v1/connect/ca/`.
    pub(super) async fn connect_ca(&self, call: Call, rest: &str) -> Reply {
        match (call.method.clone(), rest) {
            (Method::GET, "roots") => match self.read(&call.query, ReadQuery::CaRoots).await {
                Ok(resp) => match &resp.result {
                    QueryResult::Ca(view) => {
                        with_read_headers(json_reply(&roots_json(view)), &resp)
                    }
                    _ => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "a roots read answered another table",
                    ),
                },
                Err(r) => r,
            },
            (Method::GET, "configuration") => {
                match self.read(&call.query, ReadQuery::CaRoots).await {
                    Ok(resp) => match &resp.result {
                        QueryResult::Ca(view) => with_read_headers(
                            json_reply(&config_json(&view.config, resp.index)),
                            &resp,
                        ),
                        _ => text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "a CA read answered another table",
                        ),
                    },
                    Err(r) => r,
                }
            }
            (Method::PUT, "configuration") => self.ca_set_config(call).await,
            (_, "roots" | "configuration") => method_not_allowed(),
            _ => not_found(format!("unknown endpoint {}", call.path)),
        }
    }

    async fn ca_set_config(&self, call: Call) -> Reply {
        let body = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let provider = body
            .get("Provider")
            .and_then(Value::as_str)
            .unwrap_or("consul");
        if provider != "consul" {
            return bad_request(format!(
                "Provider {provider:?} is not supported: only the built-in \"consul\" CA is"
            ));
        }
        let current = match self
            .read(&super::params::Query::default(), ReadQuery::CaRoots)
            .await
        {
            Ok(resp) => match resp.result {
                QueryResult::Ca(view) => view.config,
                _ => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "a CA read answered another table",
                    )
                }
            },
            Err(r) => return r,
        };
        let cfg = body.get("Config").cloned().unwrap_or(Value::Null);
        let ttl = |key: &str, default: u64| -> Result<u64, Reply> {
            match cfg.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::String(s)) => parse_duration_ms(s)
                    .map(|ms| ms / 1000)
                    .map_err(|e| bad_request(format!("Config.{key}: {e}"))),
                Some(other) => Err(bad_request(format!(
                    "Config.{key}: expected a duration string like \"72h\", got {other}"
                ))),
            }
        };
        let config = match (
            ttl("LeafCertTTL", current.leaf_cert_ttl_secs),
            ttl("RootCertTTL", current.root_cert_ttl_secs),
        ) {
            (Ok(leaf), Ok(root)) => CaConfig {
                leaf_cert_ttl_secs: leaf,
                root_cert_ttl_secs: root,
            },
            (Err(r), _) | (_, Err(r)) => return r,
        };
        if let Err(e) = config.validate() {
            return bad_request(e);
        }
        // Consul rotates the root when the configuration brings a new
        // private key (`consul connect ca set-config`); new settings come
        // in the same write as the new root.
        match cfg.get("PrivateKey") {
            None | Some(Value::Null) => {}
            Some(Value::String(k)) if k.is_empty() => {}
            Some(Value::String(k)) => {
                let key = mesh_core::connect::ca::SecretPem::new(k.clone());
                let changed = (config != current).then(|| config.clone());
                return match self.cluster.rotate_root(key, changed).await {
                    Ok(()) => json_reply(&Value::Null),
                    Err(e) => rpc_error(e),
                };
            }
            Some(_) => return bad_request("Config.PrivateKey: expected a PEM string"),
        }
        if config == current {
            return json_reply(&Value::Null);
        }
        match self
            .cluster
            .write(CaCommand::SetConfig { config }.into())
            .await
        {
            Ok((index, mesh_core::state::CommandResult::Bool(true))) => {
                with_index(json_reply(&Value::Null), index)
            }
            Ok((_, mesh_core::state::CommandResult::Failed(m))) => bad_request(m),
            Ok((_, other)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("a CA write was answered with {other:?}"),
            ),
            Err(e) => rpc_error(e),
        }
    }

    /// `/v1/agent/connect/ca/...`; `rest` follows it.
    pub(super) async fn agent_connect_ca(&self, call: Call, rest: &str) -> Reply {
        if call.method != Method::GET {
            return method_not_allowed();
        }
        let min_index = match call.query.u64("index") {
            Ok(i) => i.unwrap_or(0),
            Err(e) => return bad_request(e),
        };
        let wait = match call.query.get("wait") {
            Some(w) => match parse_duration_ms(w) {
                Ok(ms) => Duration::from_millis(ms.min(MAX_WAIT_MS)),
                Err(e) => return bad_request(e),
            },
            None => Duration::from_secs(300),
        };
        if rest == "roots" {
            return match self.connect.roots(min_index, wait).await {
                Some((index, view)) => with_index(json_reply(&roots_json(&view)), index),
                None => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the Connect CA roots are not known yet: no server answered, or the \
                     leader has not created the CA",
                ),
            };
        }
        let Some(service) = rest.strip_prefix("leaf/") else {
            return not_found(format!("unknown endpoint {}", call.path));
        };
        let service = match segment(service) {
            Ok(s) => s,
            Err(r) => return r,
        };
        match self.connect.leaf(&service, min_index, wait).await {
            Ok(cached) => {
                let l = &cached.leaf;
                // As Consul's: the leaf, then its root's intermediates (the
                // cross-signed certificate after a rotation), so a peer
                // still trusting only the old root can build the chain.
                let mut chain = l.cert_pem.clone();
                if let Some((_, view)) = self.connect.roots(0, Duration::ZERO).await {
                    for root in view.roots.iter().filter(|r| r.id == l.root_id) {
                        for pem in &root.intermediate_certs {
                            if !chain.ends_with('\n') {
                                chain.push('\n');
                            }
                            chain.push_str(pem);
                        }
                    }
                }
                let body = json!({
                    "SerialNumber": colon_hex(l.serial_number),
                    "CertPEM": chain,
                    "PrivateKeyPEM": cached.key.key.expose(),
                    "Service": l.service,
                    "ServiceURI": l.spiffe_id,
                    "ValidAfter": rfc3339(l.valid_after),
                    "ValidBefore": rfc3339(l.valid_before),
                    "CreateIndex": cached.index,
                    "ModifyIndex": cached.index,
                });
                with_index(json_reply(&body), cached.index)
            }
            Err(e) => rpc_error(e),
        }
    }
}

/// A serial number as Consul prints it: colon-separated hex bytes.
fn colon_hex(n: u64) -> String {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    bytes[first..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
