//! Request routing and the handlers of each Consul endpoint.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use mesh_core::api::{validate_key, KvPair};
use mesh_core::state::{Command, CommandResult, KvCommand};
use mesh_core::wire::{
    ClusterStatus, Consistency, KvQuery, QueryResult, ReadRequest, ReadResponse, RpcError,
};
use serde_json::json;
use tokio::sync::Notify;

use super::params::{parse_duration_ms, percent_decode, Query};
use crate::clock;
use crate::server::{Server, MAX_WAIT_MS};

/// Consul's limit on a KV value.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// How long a client may take to send a request body once its head has
/// arrived (512 KiB at the limit is 17 KiB/s, far below any real link).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Consul's default blocking-query wait.
const DEFAULT_WAIT_MS: u64 = 300_000;

type Reply = Response<Full<Bytes>>;

/// The HTTP API of one agent.
pub struct HttpApi {
    server: Arc<Server>,
    /// Notified when `PUT /v1/agent/leave` completed: the agent must exit.
    left: Arc<Notify>,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("static content type"),
    );
    resp
}

fn json_reply(value: &impl serde::Serialize) -> Reply {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(value).expect("API values serialize"),
    )
}

fn text(status: StatusCode, msg: impl Into<String>) -> Reply {
    let mut msg = msg.into();
    msg.push('\n');
    reply(status, "text/plain; charset=utf-8", msg)
}

fn bad_request(msg: impl Into<String>) -> Reply {
    text(StatusCode::BAD_REQUEST, msg)
}

/// Maps an RPC failure to Consul's status codes.
fn rpc_error(e: RpcError) -> Reply {
    match e {
        RpcError::Rejected(m) => bad_request(m),
        RpcError::NoLeader | RpcError::NotLeader { .. } => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
        }
        RpcError::Internal(m) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
        e @ RpcError::OutcomeUnknown(_) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn with_read_headers(mut resp: Reply, r: &ReadResponse) -> Reply {
    let h = resp.headers_mut();
    h.insert("X-Consul-Index", HeaderValue::from(r.index));
    h.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if r.known_leader { "true" } else { "false" }),
    );
    h.insert("X-Consul-LastContact", HeaderValue::from(r.last_contact_ms));
    resp
}

impl HttpApi {
    /// An API over `server`; `left` is notified after a successful leave.
    pub fn new(server: Arc<Server>, left: Arc<Notify>) -> Self {
        Self { server, left }
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Reply {
        let query = match Query::parse(req.uri().query()) {
            Ok(q) => q,
            Err(e) => return bad_request(e),
        };
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if let Some(raw_key) =
            path.strip_prefix("/v1/kv/")
                .or(if path == "/v1/kv" { Some("") } else { None })
        {
            let key = match percent_decode(raw_key, false) {
                Ok(k) => k,
                Err(e) => return bad_request(e),
            };
            return match method {
                Method::GET => self.kv_get(key, &query).await,
                Method::PUT => {
                    let body = match read_body(req).await {
                        Ok(b) => b,
                        Err(r) => return r,
                    };
                    self.kv_put(key, &query, body).await
                }
                Method::DELETE => self.kv_delete(key, &query).await,
                _ => method_not_allowed(),
            };
        }
        if let Some(addr) = path.strip_prefix("/v1/agent/join/") {
            if method != Method::PUT {
                return method_not_allowed();
            }
            return match percent_decode(addr, false) {
                Ok(addr) => match self.server.join_addr(&addr).await {
                    Ok(()) => text(StatusCode::OK, ""),
                    Err(e) => rpc_error(e),
                },
                Err(e) => bad_request(e),
            };
        }
        match (method, path.as_str()) {
            (Method::GET, "/v1/status/leader") => {
                json_reply(&self.server.leader().map(|l| l.rpc_addr).unwrap_or_default())
            }
            (Method::GET, "/v1/status/peers") => {
                let st = self.server.status();
                let peers: Vec<String> = st
                    .peers
                    .iter()
                    .filter(|p| p.voter)
                    .map(|p| p.info.rpc_addr.clone())
                    .collect();
                json_reply(&peers)
            }
            (Method::GET, "/v1/operator/raft/configuration") => {
                // Served by the leader (it knows every peer's index) unless ?stale.
                let st = if query.has("stale") {
                    Ok(self.server.status())
                } else {
                    self.server.leader_status().await
                };
                match st {
                    Ok(st) => raft_configuration(&st),
                    Err(e) => rpc_error(e),
                }
            }
            (Method::DELETE, "/v1/operator/raft/peer") => self.remove_peer(&query).await,
            (Method::PUT, "/v1/agent/leave") => match self.server.leave().await {
                Ok(()) => {
                    self.left.notify_one();
                    text(StatusCode::OK, "")
                }
                Err(e) => {
                    self.left.notify_one();
                    rpc_error(e)
                }
            },
            (Method::GET, "/v1/agent/members") => self.members(),
            (Method::GET, "/v1/agent/self") => self.agent_self(),
            (_, p) if p.starts_with("/v1/") => {
                text(StatusCode::NOT_FOUND, format!("unknown endpoint {p}"))
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn consistency(query: &Query) -> Result<Consistency, Reply> {
        match (query.has("stale"), query.has("consistent")) {
            (true, true) => Err(bad_request(
                "cannot specify ?stale with ?consistent, conflicting semantics",
            )),
            (true, false) => Ok(Consistency::Stale),
            (false, true) => Ok(Consistency::Consistent),
            (false, false) => Ok(Consistency::Default),
        }
    }

    async fn kv_get(&self, key: String, query: &Query) -> Reply {
        let consistency = match Self::consistency(query) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let min_index = match query.u64("index") {
            Ok(i) => i.unwrap_or(0),
            Err(e) => return bad_request(e),
        };
        let wait_ms = match query.get("wait") {
            Some(w) => match parse_duration_ms(w) {
                Ok(ms) => ms.min(MAX_WAIT_MS),
                Err(e) => return bad_request(e),
            },
            None => DEFAULT_WAIT_MS,
        };
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
        let request = ReadRequest {
            query: kv_query.into(),
            consistency,
            min_index,
            wait_ms,
        };
        let resp = match self.server.read(request).await {
            Ok(r) => r,
            Err(e) => return rpc_error(e),
        };
        let (entries, keys) = match &resp.result {
            QueryResult::Kv { entries, keys } => (entries, keys),
            other => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("a KV read was answered with {other:?}"),
                )
            }
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

    async fn kv_put(&self, key: String, query: &Query, value: Bytes) -> Reply {
        if let Err(e) = validate_key(&key) {
            return bad_request(e.to_string());
        }
        for unsupported in ["acquire", "release"] {
            if query.has(unsupported) {
                return bad_request(format!(
                    "?{unsupported} needs sessions, which this server does not support yet"
                ));
            }
        }
        let (flags, cas) = match (query.u64("flags"), query.u64("cas")) {
            (Ok(f), Ok(c)) => (f.unwrap_or(0), c),
            (Err(e), _) | (_, Err(e)) => return bad_request(e),
        };
        let value = value.to_vec();
        let cmd = match cas {
            Some(index) => KvCommand::Cas {
                key,
                value,
                flags,
                index,
            },
            None => KvCommand::Set { key, value, flags },
        };
        self.write_bool(cmd.into()).await
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

    async fn write_bool(&self, cmd: Command) -> Reply {
        match self.server.write(cmd).await {
            Ok((index, CommandResult::Bool(ok))) => {
                let mut resp = json_reply(&ok);
                resp.headers_mut()
                    .insert("X-Consul-Index", HeaderValue::from(index));
                resp
            }
            Ok((_, CommandResult::Failed(m))) => bad_request(m),
            Err(e) => rpc_error(e),
        }
    }

    async fn remove_peer(&self, query: &Query) -> Reply {
        let st = self.server.status();
        let target = match (query.get("id"), query.get("address")) {
            (Some(id), _) => st.peers.iter().find(|p| p.info.node_id.to_string() == id || p.info.name == id),
            (None, Some(addr)) => st.peers.iter().find(|p| p.info.rpc_addr == addr),
            (None, None) => return bad_request("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove"),
        };
        let Some(target) = target else {
            return bad_request("no such server in the Raft configuration");
        };
        match self.server.remove_peer(target.info.node_id).await {
            Ok(()) => text(StatusCode::OK, ""),
            Err(e) => rpc_error(e),
        }
    }

    fn members(&self) -> Reply {
        let st = self.server.status();
        let mut members: Vec<_> = st.peers.iter().map(|p| p.info.clone()).collect();
        for s in &st.known_servers {
            if !members.iter().any(|m| m.node_id == s.node_id) {
                members.push(s.clone());
            }
        }
        if !members.iter().any(|m| m.node_id == st.me.node_id) {
            members.push(st.me.clone());
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let out: Vec<_> = members
            .iter()
            .map(|m| {
                let (addr, port) = m
                    .rpc_addr
                    .rsplit_once(':')
                    .unwrap_or((m.rpc_addr.as_str(), "8300"));
                let in_config = st.peers.iter().any(|p| p.info.node_id == m.node_id);
                json!({
                    "Name": m.name,
                    "Addr": addr,
                    "Port": port.parse::<u16>().unwrap_or(8300),
                    "Tags": { "role": "consul", "id": m.node_id.to_string(), "dc": "dc1" },
                    // Serf status: 1 alive, 3 left.
                    "Status": if in_config || !st.initialized { 1 } else { 3 },
                })
            })
            .collect();
        json_reply(&out)
    }

    fn agent_self(&self) -> Reply {
        let st = self.server.status();
        json_reply(&json!({
            "Config": {
                "Datacenter": "dc1",
                "NodeName": st.me.name,
                "NodeID": st.me.node_id.to_string(),
                "Server": true,
                "Version": env!("CARGO_PKG_VERSION"),
            },
            "Stats": {
                "raft": {
                    "term": st.term.to_string(),
                    "last_log_index": st.last_log_index.to_string(),
                    "applied_index": st.applied_index.to_string(),
                    "state": format!("{:?}", self.server.metrics().state),
                },
                "formation_error": self.server.formation_error(),
            },
        }))
    }
}

fn raft_configuration(st: &ClusterStatus) -> Reply {
    let servers: Vec<_> = st
        .peers
        .iter()
        .map(|p| {
            json!({
                "ID": p.info.node_id.to_string(),
                "Node": p.info.name,
                "Address": p.info.rpc_addr,
                "Leader": p.leader,
                "Voter": p.voter,
                "ProtocolVersion": "3",
                "LastIndex": p.last_index,
            })
        })
        .collect();
    json_reply(&json!({ "Servers": servers, "Index": st.config_index }))
}

fn method_not_allowed() -> Reply {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    let body = Limited::new(req.into_body(), MAX_VALUE_BYTES).collect();
    let Ok(body) = clock::timeout(BODY_READ_TIMEOUT, body).await else {
        return Err(text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    match body {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large, max size: {MAX_VALUE_BYTES} bytes"),
        )),
        Err(e) => Err(bad_request(format!("reading request body: {e}"))),
    }
}
