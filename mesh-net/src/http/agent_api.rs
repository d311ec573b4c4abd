//! `/v1/agent`: this agent's own services and checks, its view of the
//! cluster's members, and joining and leaving.

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use mesh_core::api::agent::{
    AclResolverSettings, AgentSelf, DebugConfig, Member, SelfConfig, SelfStats,
};
use mesh_core::definitions::{decode_check, decode_service, CheckDefinition, ServiceDefinition};
use mesh_core::state::catalog::{
    CatalogCommand, CatalogQuery, CheckStatus, HealthCheck, NodeService, SERF_HEALTH_CHECK,
};
use mesh_core::wire::QueryResult;
use serde_json::{json, Value};

use super::catalog::filter_rows;
use super::params::Query;
use super::reply::{
    bad_request, json_reply, method_not_allowed, not_found, ok, read_json, reply, rpc_error, text,
    Reply,
};
use super::routes::{segment, Call, HttpApi};
use crate::agent::checks::CheckSpec;
use crate::agent::local::LocalError;
use crate::agent::node_uuid;

/// How long `PUT /v1/agent/reload` waits for the agent to apply the files
/// (reading them and building TLS takes milliseconds; a queue of reloads
/// takes longer).
const RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn local_error(e: LocalError) -> Reply {
    match e {
        LocalError::Invalid(m) => bad_request(m),
        LocalError::NotFound(m) => not_found(m),
    }
}

/// A local service as `/v1/agent/services` shows it.
fn agent_service(s: &NodeService, datacenter: &str) -> Value {
    let mut v = json!(s);
    if let Some(o) = v.as_object_mut() {
        o.insert("Datacenter".into(), json!(datacenter));
        o.remove("CreateIndex");
        o.remove("ModifyIndex");
    }
    v
}

/// The worst status among checks: Consul's aggregated status.
fn aggregate<'a>(checks: impl Iterator<Item = &'a HealthCheck>) -> CheckStatus {
    checks
        .map(|c| c.status)
        .max()
        .unwrap_or(CheckStatus::Passing)
}

/// Checks and their specs from a service definition (its `check` and
/// `checks`, ids defaulted as Consul does).
fn service_checks(
    def: &ServiceDefinition,
    node: &str,
) -> Result<Vec<(HealthCheck, CheckSpec)>, Reply> {
    def.checks().iter().map(|c| check_pair(c, node)).collect()
}

fn check_pair(def: &CheckDefinition, node: &str) -> Result<(HealthCheck, CheckSpec), Reply> {
    let spec = CheckSpec::from_definition(def).map_err(|e| bad_request(e.to_string()))?;
    Ok((def.to_health_check(node), spec))
}

impl HttpApi {
    pub(super) async fn agent(&self, call: Call, rest: String) -> Reply {
        let (head, arg) = match rest.split_once('/') {
            Some((h, a)) => (h.to_string(), Some(a.to_string())),
            None => (rest.clone(), None),
        };
        let m = call.method.clone();
        match (m, head.as_str(), arg.as_deref()) {
            (Method::GET, "self", None) => self.agent_self().await,
            (Method::GET, "metrics", None) => self.metrics(&call.query),
            (Method::GET, "members", None) => self.members().await,
            (Method::GET, "services", None) => {
                let dc = &self.config.datacenter;
                let rows: Vec<Value> = self
                    .local
                    .services()
                    .iter()
                    .map(|s| agent_service(s, dc))
                    .collect();
                match filter_rows(&call.query, rows) {
                    Ok(rows) => json_reply(&keyed(rows, "ID")),
                    Err(r) => r,
                }
            }
            (Method::GET, "checks", None) => {
                let rows: Vec<Value> = self.local.checks().iter().map(|c| json!(c)).collect();
                match filter_rows(&call.query, rows) {
                    Ok(rows) => json_reply(&keyed(rows, "CheckID")),
                    Err(r) => r,
                }
            }
            (Method::GET, "service", Some(id)) if !id.contains('/') => {
                let id = match segment(id) {
                    Ok(i) => i,
                    Err(r) => return r,
                };
                match self.local.services().iter().find(|s| s.id == id) {
                    Some(s) => {
                        let mut v = agent_service(s, &self.config.datacenter);
                        let hash = mesh_core::hash::fnv1a64(v.to_string().as_bytes());
                        v["ContentHash"] = json!(format!("{hash:016x}"));
                        json_reply(&v)
                    }
                    None => not_found(format!("unknown service ID: {id}")),
                }
            }
            (Method::PUT, "service", Some("register")) => self.register_service(call).await,
            (Method::PUT, "service", Some(rest)) if rest.starts_with("deregister/") => {
                match segment(&rest["deregister/".len()..]) {
                    Ok(id) => self
                        .local
                        .deregister_service(&id)
                        .map_or_else(local_error, |()| ok()),
                    Err(r) => r,
                }
            }
            (Method::PUT, "service", Some(rest)) if rest.starts_with("maintenance/") => {
                let id = match segment(&rest["maintenance/".len()..]) {
                    Ok(id) => id,
                    Err(r) => return r,
                };
                let Some(enable) = enable_flag(&call.query) else {
                    return bad_request("Missing value for enable");
                };
                let reason = call.query.get("reason").unwrap_or("");
                self.local
                    .service_maintenance(&id, enable, reason)
                    .map_or_else(local_error, |()| ok())
            }
            (Method::PUT, "maintenance", None) => {
                let Some(enable) = enable_flag(&call.query) else {
                    return bad_request("Missing value for enable");
                };
                let reason = call.query.get("reason").unwrap_or("");
                self.local
                    .node_maintenance(enable, reason)
                    .map_or_else(local_error, |()| ok())
            }
            (Method::PUT, "check", Some("register")) => self.register_check(call).await,
            (Method::PUT, "check", Some(rest)) => self.check_verb(call, rest.to_string()).await,
            (Method::GET, "health", Some(rest)) => self.local_health(&call.query, rest),
            (Method::PUT, "join", Some(addr)) => match segment(addr) {
                Ok(addr) => match self.cluster.server() {
                    Some(server) => server
                        .join_addr(&addr)
                        .await
                        .map_or_else(rpc_error, |()| ok()),
                    None => bad_request(
                        "a client agent finds the servers through -retry-join; join servers to each other",
                    ),
                },
                Err(r) => r,
            },
            (Method::PUT, "leave", None) => {
                let result = match self.cluster.server() {
                    Some(server) => server.leave().await,
                    None => {
                        // A client leaves by removing its node from the catalog.
                        let node = self.local.node_name();
                        self.local.stop();
                        self.cluster
                            .write(deregister_node(node))
                            .await
                            .map(|_| ())
                    }
                };
                self.left.notify_one();
                result.map_or_else(rpc_error, |()| ok())
            }
            (Method::PUT, "force-leave", Some(node)) => match segment(node) {
                Ok(node) => self.force_leave(node).await,
                Err(r) => r,
            },
            (Method::PUT, "reload", None) => self.reload().await,
            (_, "self" | "members" | "services" | "checks" | "metrics", None) => {
                method_not_allowed()
            }
            _ => not_found(format!("unknown endpoint {}", call.path)),
        }
    }

    /// `PUT /v1/agent/reload`: the agent's run loop reads the files again
    /// and applies them (see `crate::agent::reload`); 200 when it did,
    /// 500 with the reason when the files were refused.
    async fn reload(&self) -> Reply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let asked = crate::clock::timeout(RELOAD_TIMEOUT, async {
            self.reload.send(tx).await.ok()?;
            rx.await.ok()
        })
        .await;
        match asked {
            Ok(Some(Ok(()))) => ok(),
            Ok(Some(Err(why))) => text(StatusCode::INTERNAL_SERVER_ERROR, why),
            Ok(None) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent is stopping and does not reload",
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent did not finish the reload in time",
            ),
        }
    }

    async fn register_service(&self, call: Call) -> Reply {
        let replace = call.query.flag("replace-existing-checks");
        let value = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let def = match decode_service(&value) {
            Ok(d) => d,
            Err(e) => return bad_request(e.to_string()),
        };
        self.register_definition(&def, replace)
    }

    /// Registers a service definition, and its sidecar if it asks for one.
    pub(super) fn register_definition(&self, def: &ServiceDefinition, replace: bool) -> Reply {
        let node = self.local.node_name();
        let checks = match service_checks(def, &node) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Err(e) = self
            .local
            .register_service(def.to_node_service(), checks, replace)
        {
            return local_error(e);
        }
        if let Some(sidecar) = def.sidecar() {
            let sidecar = sidecar.with_default_sidecar_check(&self.local.node().address);
            let checks = match service_checks(&sidecar, &node) {
                Ok(c) => c,
                Err(r) => return r,
            };
            if let Err(e) = self
                .local
                .register_service(sidecar.to_node_service(), checks, replace)
            {
                return local_error(e);
            }
        }
        ok()
    }

    async fn register_check(&self, call: Call) -> Reply {
        let value = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let def = match decode_check(&value) {
            Ok(d) => d,
            Err(e) => return bad_request(e.to_string()),
        };
        let (check, spec) = match check_pair(&def, &self.local.node_name()) {
            Ok(p) => p,
            Err(r) => return r,
        };
        self.local
            .register_check(check, spec)
            .map_or_else(local_error, |()| ok())
    }

    /// `deregister/:id`, `pass|warn|fail/:id?note=`, `update/:id`.
    async fn check_verb(&self, call: Call, rest: String) -> Reply {
        let Some((verb, id)) = rest.split_once('/') else {
            return not_found(format!("unknown endpoint {}", call.path));
        };
        let id = match segment(id) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let note = call.query.get("note").unwrap_or("").to_string();
        let result = match verb {
            "deregister" => self.local.deregister_check(&id),
            "pass" => self.local.update_ttl(&id, CheckStatus::Passing, &note),
            "warn" => self.local.update_ttl(&id, CheckStatus::Warning, &note),
            "fail" => self.local.update_ttl(&id, CheckStatus::Critical, &note),
            "update" => {
                let value = match read_json(call.req).await {
                    Ok(v) => mesh_core::definitions::normalize_keys(&v),
                    Err(r) => return r,
                };
                let status = value.get("status").and_then(Value::as_str).unwrap_or("");
                let Some(status) = CheckStatus::parse(status) else {
                    return bad_request(format!(
                        "Invalid check status: {status:?}; use passing, warning or critical"
                    ));
                };
                let output = value.get("output").and_then(Value::as_str).unwrap_or("");
                self.local.update_ttl(&id, status, output)
            }
            _ => return not_found(format!("unknown endpoint {}", call.path)),
        };
        result.map_or_else(local_error, |()| ok())
    }

    /// `/v1/agent/health/service/name/:name` and `.../id/:id`: the local
    /// instances' aggregated status, as the status code too (200 passing,
    /// 429 warning, 503 critical, 404 unknown).
    fn local_health(&self, query: &Query, rest: &str) -> Reply {
        let (by_name, key) = if let Some(name) = rest.strip_prefix("service/name/") {
            (true, name)
        } else if let Some(id) = rest.strip_prefix("service/id/") {
            (false, id)
        } else {
            return not_found(format!("unknown endpoint /v1/agent/health/{rest}"));
        };
        let key = match segment(key) {
            Ok(k) => k,
            Err(r) => return r,
        };
        let checks = self.local.checks();
        let entry = |s: &NodeService| {
            let mine: Vec<&HealthCheck> = checks
                .iter()
                .filter(|c| c.service_id == s.id || c.service_id.is_empty())
                .collect();
            let status = aggregate(mine.iter().copied());
            (
                status,
                json!({
                    "AggregatedStatus": status.as_str(),
                    "Service": agent_service(s, &self.config.datacenter),
                    "Checks": mine,
                }),
            )
        };
        let services = self.local.services();
        let matching: Vec<&NodeService> = services
            .iter()
            .filter(|s| {
                if by_name {
                    s.service == key
                } else {
                    s.id == key
                }
            })
            .collect();
        if matching.is_empty() {
            let what = if by_name { "name" } else { "ID" };
            return text(
                StatusCode::NOT_FOUND,
                format!("ServiceName {what} {key:?} not found"),
            );
        }
        let entries: Vec<(CheckStatus, Value)> = matching.into_iter().map(entry).collect();
        let worst = entries
            .iter()
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(CheckStatus::Passing);
        let code = match worst {
            CheckStatus::Passing => StatusCode::OK,
            CheckStatus::Warning => StatusCode::TOO_MANY_REQUESTS,
            CheckStatus::Critical => StatusCode::SERVICE_UNAVAILABLE,
        };
        if query.get("format") == Some("text") {
            return text(code, worst.as_str());
        }
        let body = if by_name {
            json!(entries.into_iter().map(|(_, v)| v).collect::<Vec<_>>())
        } else {
            entries
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or_default()
        };
        let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
        reply(code, "application/json", bytes)
    }

    async fn force_leave(&self, node: String) -> Reply {
        // Consul moves a failed member to "left"; here a member is its
        // catalog node, so a forced leave removes it from the catalog.
        self.write_bool(deregister_node(node)).await
    }

    async fn agent_self(&self) -> Reply {
        let status = self.cluster.status().await.ok();
        let node = self.local.node();
        let leader_addr = status
            .as_ref()
            .and_then(|s| s.leader.as_ref())
            .map(|l| l.rpc_addr.clone())
            .unwrap_or_default();
        let raft = match (self.cluster.server(), &status) {
            (Some(server), Some(st)) => [
                ("term", st.term.to_string()),
                ("last_log_index", st.last_log_index.to_string()),
                ("applied_index", st.applied_index.to_string()),
                ("state", format!("{:?}", server.metrics().state)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            _ => BTreeMap::new(),
        };
        let server = self.cluster.server();
        let consul = [
            ("server", server.is_some().to_string()),
            ("leader", server.is_some_and(|s| s.is_leader()).to_string()),
            ("leader_addr", leader_addr),
            (
                "known_servers",
                status.as_ref().map_or(0, |s| s.peers.len()).to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let policy = if self.config.default_intention_allow {
            "allow"
        } else {
            "deny"
        };
        json_reply(&AgentSelf {
            config: SelfConfig {
                datacenter: self.config.datacenter.clone(),
                node_name: node.node.clone(),
                node_id: node.id.clone(),
                server: server.is_some(),
                version: env!("CARGO_PKG_VERSION").into(),
                revision: String::new(),
            },
            stats: SelfStats {
                consul,
                raft,
                formation_error: server.and_then(|s| s.formation_error()),
            },
            // Where Consul 1.10+ reports the default policy; sidecars read
            // it to decide connections no intention matches.
            debug_config: DebugConfig {
                acl_resolver_settings: AclResolverSettings {
                    acl_default_policy: policy.into(),
                },
            },
            member: self.member(
                &node.node,
                &node.address,
                server.is_some(),
                Member::ALIVE,
                &node.id,
            ),
            meta: node.meta.clone(),
        })
    }

    fn member(&self, name: &str, addr: &str, server: bool, status: u8, id: &str) -> Member {
        Member::new(name, addr, server, status, &self.config.datacenter, id)
    }

    /// Servers (from the Raft configuration) and every node of the catalog,
    /// with their liveness (`serfHealth`).
    async fn members(&self) -> Reply {
        let status = match self.cluster.status().await {
            Ok(s) => s,
            Err(e) => return rpc_error(e),
        };
        let mut rows: BTreeMap<String, Member> = BTreeMap::new();
        // Catalog nodes with their liveness; a stale read is enough for a
        // membership listing and keeps it available without a leader.
        let q = Query::parse(Some("stale")).expect("static query");
        let nodes = self.read(&q, CatalogQuery::Nodes).await;
        let checks = self
            .read(&q, CatalogQuery::ChecksInState { state: None })
            .await;
        let servers: Vec<String> = status.peers.iter().map(|p| p.info.name.clone()).collect();
        if let (Ok(nodes), Ok(checks)) = (nodes, checks) {
            if let (QueryResult::Catalog(nodes), QueryResult::Catalog(checks)) =
                (&nodes.result, &checks.result)
            {
                for n in &nodes.nodes {
                    let serf = checks
                        .checks
                        .iter()
                        .find(|c| c.node == n.node && c.check_id == SERF_HEALTH_CHECK);
                    let status = match serf.map(|c| c.status) {
                        Some(CheckStatus::Critical) => Member::FAILED,
                        _ => Member::ALIVE,
                    };
                    let server = servers.contains(&n.node);
                    rows.insert(
                        n.node.clone(),
                        self.member(&n.node, &n.address, server, status, &n.id),
                    );
                }
            }
        }
        for p in &status.peers {
            if !rows.contains_key(&p.info.name) {
                let addr = p
                    .info
                    .rpc_addr
                    .rsplit_once(':')
                    .map_or(p.info.rpc_addr.as_str(), |(a, _)| a);
                rows.insert(
                    p.info.name.clone(),
                    self.member(
                        &p.info.name,
                        addr,
                        true,
                        Member::ALIVE,
                        &node_uuid(p.info.node_id),
                    ),
                );
            }
        }
        let me = self.local.node();
        rows.entry(me.node.clone()).or_insert_with(|| {
            self.member(
                &me.node,
                &me.address,
                self.cluster.server().is_some(),
                Member::ALIVE,
                &me.id,
            )
        });
        json_reply(&rows.into_values().collect::<Vec<_>>())
    }
}

/// Removes `node` and everything on it from the catalog.
fn deregister_node(node: String) -> mesh_core::state::Command {
    CatalogCommand::Deregister {
        node,
        service_id: None,
        check_id: None,
    }
    .into()
}

/// `?enable=true|false`, required.
fn enable_flag(q: &Query) -> Option<bool> {
    match q.get("enable") {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

/// Rows keyed by one of their fields (`/v1/agent/services` is a map).
fn keyed(rows: Vec<Value>, key: &str) -> BTreeMap<String, Value> {
    rows.into_iter()
        .map(|r| {
            let k = r.get(key).and_then(Value::as_str).unwrap_or("").to_string();
            (k, r)
        })
        .collect()
}

impl HttpApi {
    /// `GET /v1/agent/metrics` (Consul's JSON) and `?format=prometheus`
    /// (the text exposition format). Gauges of the state (catalog, KV,
    /// sessions, Raft) are read now, from this server's state; a client
    /// agent reports its own counters only.
    fn metrics(&self, query: &super::params::Query) -> Reply {
        let t = &self.telemetry;
        if let Some(server) = self.cluster.server() {
            let (nodes, services, kv, sessions, ttl_sessions, applied) = server.view().read(|sm| {
                let c = sm.catalog();
                let services = c
                    .select(&mesh_core::state::catalog::CatalogQuery::Services)
                    .services
                    .len();
                let s = sm.sessions();
                (
                    c.nodes().count(),
                    services,
                    sm.kv().len(),
                    s.len(),
                    s.iter().filter(|x| x.ttl_ms() > 0).count(),
                    sm.last_applied(),
                )
            });
            let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            t.set_gauge(
                "consul.catalog.nodes",
                "Nodes in the catalog.",
                as_i64(nodes),
            );
            t.set_gauge(
                "consul.catalog.services",
                "Service instances in the catalog.",
                as_i64(services),
            );
            t.set_gauge("consul.kv.entries", "Keys in the KV store.", as_i64(kv));
            t.set_gauge("consul.session.count", "Sessions.", as_i64(sessions));
            t.set_gauge(
                "consul.session_ttl.active",
                "Sessions with a TTL.",
                as_i64(ttl_sessions),
            );
            t.set_gauge(
                "consul.raft.applied_index",
                "Last Raft index applied here.",
                i64::try_from(applied).unwrap_or(i64::MAX),
            );
            t.set_gauge(
                "consul.server.isLeader",
                "1 if this server leads.",
                i64::from(server.is_leader()),
            );
        }
        match query.get("format") {
            Some("prometheus") => super::reply::reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                t.prometheus(),
            ),
            None | Some("") | Some("json") => json_reply(&t.json()),
            Some(other) => bad_request(format!(
                "unknown metrics format {other:?}: use format=prometheus, or no format for JSON"
            )),
        }
    }
}
