//! Request routing: which handler answers which path. The handlers live
//! by endpoint family: [`super::kv`], [`super::catalog`] (catalog and
//! health), [`super::agent_api`] (the local agent) and [`super::operator`]
//! (status, Raft, members).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use mesh_core::wire::{Consistency, Query as ReadQuery, ReadRequest, ReadResponse};
use tokio::sync::Notify;

use super::params::{parse_duration_ms, percent_decode, Query};
use super::reply::{bad_request, not_found, rpc_error, text, Reply};
use crate::agent::local::LocalAgent;
use crate::agent::AgentConfig;
use crate::backend::Cluster;
use crate::server::MAX_WAIT_MS;

/// Consul's default blocking-query wait.
const DEFAULT_WAIT_MS: u64 = 300_000;

/// The HTTP API of one agent.
pub struct HttpApi {
    pub(super) cluster: Arc<dyn Cluster>,
    pub(super) local: Arc<LocalAgent>,
    /// Notified when `PUT /v1/agent/leave` completed: the agent must exit.
    pub(super) left: Arc<Notify>,
    pub(super) config: AgentConfig,
    /// The last intentions read, for `authorize` during an outage.
    pub(super) intention_cache: super::intentions::IntentionCache,
    /// CA roots and leaves for this host's sidecars.
    pub(super) connect: Arc<crate::agent::connect::ConnectCache>,
    /// The agent's metrics.
    pub(super) telemetry: crate::telemetry::Telemetry,
    /// Where `PUT /v1/agent/reload` asks the agent's run loop to reload.
    pub(super) reload: tokio::sync::mpsc::Sender<crate::agent::reload::ReloadRequest>,
}

/// One request, taken apart.
pub(super) struct Call {
    pub method: Method,
    pub path: String,
    pub query: Query,
    pub req: Request<Incoming>,
}

impl HttpApi {
    /// An API over `cluster` and the agent's `local` state; `left` is
    /// notified after a successful leave.
    pub fn new(
        cluster: Arc<dyn Cluster>,
        local: Arc<LocalAgent>,
        left: Arc<Notify>,
        config: AgentConfig,
        connect: Arc<crate::agent::connect::ConnectCache>,
        telemetry: crate::telemetry::Telemetry,
        reload: tokio::sync::mpsc::Sender<crate::agent::reload::ReloadRequest>,
    ) -> Self {
        Self {
            cluster,
            local,
            left,
            config,
            connect,
            telemetry,
            reload,
            intention_cache: Default::default(),
        }
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Reply {
        let started = crate::clock::Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut resp = match Query::parse(req.uri().query()) {
            Ok(query) => {
                let call = Call {
                    method: req.method().clone(),
                    path: path.clone(),
                    query,
                    req,
                };
                self.route(call).await
            }
            Err(e) => bad_request(e),
        };
        if path.starts_with("/v1/") {
            // Client libraries read these on every answer, errors included.
            let h = resp.headers_mut();
            if !h.contains_key("X-Consul-KnownLeader") {
                let known = self.cluster.known_leader();
                h.insert(
                    "X-Consul-KnownLeader",
                    HeaderValue::from_static(if known { "true" } else { "false" }),
                );
                h.insert(
                    "X-Consul-LastContact",
                    HeaderValue::from(self.cluster.last_contact_ms()),
                );
            }
            if !h.contains_key("X-Consul-Index") {
                h.insert("X-Consul-Index", HeaderValue::from(1u64));
            }
        }
        let family = path_family(&path);
        let method = method_label(&method);
        self.telemetry
            .http
            .observe(&[method, family], started.elapsed());
        if resp.status().as_u16() >= 400 {
            self.telemetry
                .http_errors
                .inc(&[method, family, resp.status().as_str()]);
        }
        resp
    }

    async fn route(&self, call: Call) -> Reply {
        let path = call.path.clone();
        if path == "/v1/kv" || path.starts_with("/v1/kv/") {
            return self.kv(call).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/catalog/") {
            return self.catalog(call, rest.to_string()).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/health/") {
            return self.health(call, rest.to_string()).await;
        }
        if path == "/v1/agent/connect/authorize" {
            return match call.method {
                Method::POST | Method::PUT => self.agent_authorize(call).await,
                _ => super::reply::method_not_allowed(),
            };
        }
        if let Some(rest) = path.strip_prefix("/v1/agent/connect/ca/") {
            return self.agent_connect_ca(call, rest).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/connect/ca/") {
            return self.connect_ca(call, rest).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/agent/") {
            return self.agent(call, rest.to_string()).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/connect/intentions") {
            return self.intentions(call, rest).await;
        }
        if path == "/v1/config" || path.starts_with("/v1/config/") {
            let rest = path["/v1/config".len()..].to_string();
            return self.config_entries(call, &rest).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/session/") {
            return self.sessions(call, rest).await;
        }
        if path.starts_with("/v1/event/") {
            return super::reply::text(
                StatusCode::NOT_IMPLEMENTED,
                "user events are not supported: Consul sends them over Serf gossip, which this \
                 mesh does not run. Use a KV key with blocking queries (or `mesh watch`) instead",
            );
        }
        if let Some(rest) = path.strip_prefix("/v1/coordinate/") {
            return self.coordinates(call, rest);
        }
        if path == "/v1/txn" {
            return self.txn(call).await;
        }
        if path.starts_with("/v1/status/") || path.starts_with("/v1/operator/") {
            return self.operator(call).await;
        }
        if path.starts_with("/v1/") {
            return not_found(format!("unknown endpoint {path}"));
        }
        text(StatusCode::NOT_FOUND, "not found")
    }

    /// A read with the request's consistency mode and blocking parameters
    /// (`?stale`, `?consistent`, `?index`, `?wait`).
    pub(super) async fn read(
        &self,
        query: &Query,
        what: impl Into<ReadQuery>,
    ) -> Result<ReadResponse, Reply> {
        let consistency = match (query.has("stale"), query.has("consistent")) {
            (true, true) => {
                return Err(bad_request(
                    "cannot specify ?stale with ?consistent, conflicting semantics",
                ))
            }
            (true, false) => Consistency::Stale,
            (false, true) => Consistency::Consistent,
            (false, false) => Consistency::Default,
        };
        let min_index = query.u64("index").map_err(bad_request)?.unwrap_or(0);
        let wait_ms = match query.get("wait") {
            Some(w) => parse_duration_ms(w).map_err(bad_request)?.min(MAX_WAIT_MS),
            None => DEFAULT_WAIT_MS,
        };
        let request = ReadRequest {
            query: what.into(),
            consistency,
            min_index,
            wait_ms,
        };
        self.cluster.read(request).await.map_err(rpc_error)
    }
}

/// Decodes one path segment (`/v1/agent/service/deregister/<id>`).
pub(super) fn segment(raw: &str) -> Result<String, Reply> {
    percent_decode(raw, false).map_err(bad_request)
}

/// The endpoint family of a path (`/v1/kv/a/b` → `/v1/kv`), so metric
/// labels stay few whatever the keys and IDs.
fn path_family(path: &str) -> &'static str {
    const FAMILIES: &[&str] = &[
        "/v1/kv",
        "/v1/txn",
        "/v1/session",
        "/v1/catalog",
        "/v1/health",
        "/v1/agent/connect",
        "/v1/agent/metrics",
        "/v1/agent",
        "/v1/connect/ca",
        "/v1/connect/intentions",
        "/v1/status",
        "/v1/operator",
        "/v1/event",
        "/v1/coordinate",
        "/v1/config",
    ];
    FAMILIES
        .iter()
        .find(|f| {
            path.strip_prefix(**f)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .copied()
        .unwrap_or("other")
}

/// The method as a metric label: the standard ones by name, anything a
/// client invents as `OTHER`, so labels stay few.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}
