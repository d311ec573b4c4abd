//! `/v1/catalog` and `/v1/health`: the catalog's nodes, services and
//! checks, with blocking queries, `?tag`, `?node-meta`, `?passing` and
//! `?filter`.

use std::collections::BTreeMap;

use hyper::Method;
use mesh_core::state::catalog::{
    CatalogCommand, CatalogQuery, CatalogSlice, CheckStatus, HealthCheck, Node, NodeService,
};
use mesh_core::wire::{QueryResult, ReadResponse};
use serde_json::{json, Value};

use super::params::Query;
use super::reply::{
    bad_request, json_reply, method_not_allowed, not_found, read_json, with_read_headers, Reply,
};
use super::routes::{segment, Call, HttpApi};

/// Consul's `/v1/catalog/service/:name` row: the node's fields and the
/// instance's, flattened.
pub fn catalog_service_row(node: &Node, s: &NodeService) -> Value {
    json!({
        "ID": node.id,
        "Node": node.node,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": node.tagged_addresses,
        "NodeMeta": node.meta,
        "ServiceKind": s.kind,
        "ServiceID": s.id,
        "ServiceName": s.service,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServiceWeights": s.weights,
        "ServiceMeta": s.meta,
        "ServicePort": s.port,
        "ServiceEnableTagOverride": s.enable_tag_override,
        "ServiceProxy": s.proxy.clone().unwrap_or_default(),
        "ServiceConnect": {},
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// Consul's `/v1/health/service/:name` row.
pub fn health_service_row(node: &Node, s: &NodeService, checks: Vec<&HealthCheck>) -> Value {
    json!({ "Node": node, "Service": s, "Checks": checks })
}

/// Whether every check passes (`?passing`).
fn all_passing<'a>(mut checks: impl Iterator<Item = &'a HealthCheck>) -> bool {
    checks.all(|c| c.status == CheckStatus::Passing)
}

/// `?tag=a&tag=b`: the instance carries every tag.
fn has_tags(s: &NodeService, query: &Query) -> bool {
    query.all("tag").iter().all(|t| s.tags.contains(t))
}

/// `?node-meta=key:value` (repeatable): the node carries every pair.
fn node_meta_matches(node: &Node, query: &Query) -> Result<bool, Reply> {
    for pair in query.all("node-meta") {
        let Some((k, v)) = pair.split_once(':') else {
            return Err(bad_request(format!(
                "Error parsing node-meta {pair:?}: expected key:value"
            )));
        };
        if node.meta.get(k).map(String::as_str) != Some(v) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies `?filter` to rows.
pub(super) fn filter_rows(query: &Query, rows: Vec<Value>) -> Result<Vec<Value>, Reply> {
    match query.get("filter").filter(|f| !f.trim().is_empty()) {
        None => Ok(rows),
        Some(expr) => {
            // The parse error already reads as Consul's ("Failed to create
            // boolean expression evaluator: ...").
            let filter =
                mesh_core::filter::Filter::parse(expr).map_err(|e| bad_request(e.to_string()))?;
            mesh_core::filter::apply(&filter, rows)
                .map_err(|e| bad_request(format!("Failed to apply filter: {e}")))
        }
    }
}

fn slice_of(resp: &ReadResponse) -> &CatalogSlice {
    static EMPTY: std::sync::OnceLock<CatalogSlice> = std::sync::OnceLock::new();
    match &resp.result {
        QueryResult::Catalog(slice) => slice,
        _ => EMPTY.get_or_init(CatalogSlice::default),
    }
}

impl HttpApi {
    pub(super) async fn catalog(&self, call: Call, rest: String) -> Reply {
        let (head, arg) = match rest.split_once('/') {
            Some((h, a)) => (h.to_string(), Some(a.to_string())),
            None => (rest.clone(), None),
        };
        let q = &call.query;
        match (call.method.clone(), head.as_str(), arg) {
            (Method::PUT, "register", None) => self.catalog_register(call).await,
            (Method::PUT, "deregister", None) => self.catalog_deregister(call).await,
            (Method::GET, "datacenters", None) => json_reply(&[&self.config.datacenter]),
            (Method::GET, "nodes", None) => {
                let resp = match self.read(q, CatalogQuery::Nodes).await {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let mut rows = Vec::new();
                for n in &slice_of(&resp).nodes {
                    match node_meta_matches(n, q) {
                        Ok(true) => rows.push(json!(n)),
                        Ok(false) => {}
                        Err(r) => return r,
                    }
                }
                self.rows(q, rows, &resp)
            }
            (Method::GET, "services", None) => {
                let resp = match self.read(q, CatalogQuery::Services).await {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let entries = &slice_of(&resp).services;
                let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
                let mut add = |name: &str, tags: &[String]| {
                    let seen = out.entry(name.to_string()).or_default();
                    for t in tags {
                        if !seen.contains(t) {
                            seen.push(t.clone());
                        }
                    }
                };
                if q.has("node-meta") || q.has("filter") {
                    // Both judge each instance with its node, as Consul's
                    // ServiceNode rows (Prometheus' consul_sd sends them):
                    // read the nodes too, only then.
                    let nodes = match self.read(&q.without_blocking(), CatalogQuery::Nodes).await {
                        Ok(r) => r,
                        Err(r) => return r,
                    };
                    let nodes: BTreeMap<&str, &Node> = slice_of(&nodes)
                        .nodes
                        .iter()
                        .map(|n| (n.node.as_str(), n))
                        .collect();
                    let mut rows = Vec::new();
                    for e in entries {
                        let Some(node) = nodes.get(e.node.as_str()) else {
                            continue;
                        };
                        match node_meta_matches(node, q) {
                            Ok(true) => rows.push(catalog_service_row(node, &e.service)),
                            Ok(false) => {}
                            Err(r) => return r,
                        }
                    }
                    let rows = match filter_rows(q, rows) {
                        Ok(rows) => rows,
                        Err(r) => return with_read_headers(r, &resp),
                    };
                    for row in &rows {
                        let tags: Vec<String> =
                            serde_json::from_value(row["ServiceTags"].clone()).unwrap_or_default();
                        add(row["ServiceName"].as_str().unwrap_or_default(), &tags);
                    }
                } else {
                    for e in entries {
                        add(&e.service.service, &e.service.tags);
                    }
                }
                with_read_headers(json_reply(&out), &resp)
            }
            (Method::GET, kind @ ("service" | "connect"), Some(name)) => {
                let name = match segment(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                // `connect/:name`: the Connect-capable instances of `name`,
                // which are the sidecar proxies fronting it.
                let read = if kind == "connect" {
                    self.sidecars_of(q, &name).await
                } else {
                    self.read(q, CatalogQuery::Service { name }).await
                };
                let resp = match read {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let slice = slice_of(&resp);
                let mut rows = Vec::new();
                for e in &slice.services {
                    let Some(node) = slice.node(&e.node) else {
                        continue;
                    };
                    match node_meta_matches(node, q) {
                        Ok(true) if has_tags(&e.service, q) => {
                            rows.push(catalog_service_row(node, &e.service))
                        }
                        Ok(_) => {}
                        Err(r) => return r,
                    }
                }
                self.rows(q, rows, &resp)
            }
            (Method::GET, which @ ("node" | "node-services"), Some(name)) => {
                let node = match segment(&name) {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let resp = match self.read(q, CatalogQuery::Node { node }).await {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let slice = slice_of(&resp);
                let instances = slice.services.iter().map(|e| &e.service);
                // `node/:node` keys the services by id; `node-services`
                // lists them. An unknown node is `null`, as in Consul.
                let body = match slice.nodes.first() {
                    None => Value::Null,
                    Some(n) if which == "node" => {
                        let services: BTreeMap<&str, &NodeService> =
                            instances.map(|s| (s.id.as_str(), s)).collect();
                        json!({ "Node": n, "Services": services })
                    }
                    Some(n) => json!({ "Node": n, "Services": instances.collect::<Vec<_>>() }),
                };
                with_read_headers(json_reply(&body), &resp)
            }
            (m, h, _)
                if matches!(
                    h,
                    "register" | "deregister" | "datacenters" | "nodes" | "services"
                ) && m != Method::GET
                    && m != Method::PUT =>
            {
                method_not_allowed()
            }
            _ => not_found(format!("unknown endpoint {}", call.path)),
        }
    }

    pub(super) async fn health(&self, call: Call, rest: String) -> Reply {
        if call.method != Method::GET {
            return method_not_allowed();
        }
        let Some((head, arg)) = rest.split_once('/') else {
            return not_found(format!("unknown endpoint {}", call.path));
        };
        let arg = match segment(arg) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let q = &call.query;
        match head {
            "node" => {
                let resp = match self.read(q, CatalogQuery::Node { node: arg }).await {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let rows = slice_of(&resp).checks.iter().map(|c| json!(c)).collect();
                self.rows(q, rows, &resp)
            }
            "checks" => {
                let resp = match self
                    .read(q, CatalogQuery::Service { name: arg.clone() })
                    .await
                {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let rows = slice_of(&resp)
                    .checks
                    .iter()
                    .filter(|c| c.service_name == arg)
                    .map(|c| json!(c))
                    .collect();
                self.rows(q, rows, &resp)
            }
            "state" => {
                let state = match arg.as_str() {
                    "any" => None,
                    s => match CheckStatus::parse(s) {
                        Some(s) => Some(s),
                        None => return bad_request("Invalid check state"),
                    },
                };
                let resp = match self.read(q, CatalogQuery::ChecksInState { state }).await {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let rows = slice_of(&resp).checks.iter().map(|c| json!(c)).collect();
                self.rows(q, rows, &resp)
            }
            "service" | "connect" => {
                let connect = head == "connect";
                let resp = match self.service_health(q, &arg, connect).await {
                    Ok(r) => r,
                    Err(r) => return r,
                };
                let (rows, resp) = resp;
                self.rows(q, rows, &resp)
            }
            _ => not_found(format!("unknown endpoint {}", call.path)),
        }
    }

    /// `/v1/health/service/:name` rows (or, for `connect`, the rows of the
    /// sidecars that front `name`).
    async fn service_health(
        &self,
        q: &Query,
        name: &str,
        connect: bool,
    ) -> Result<(Vec<Value>, ReadResponse), Reply> {
        let resp = if connect {
            self.sidecars_of(q, name).await?
        } else {
            let query = CatalogQuery::Service {
                name: name.to_string(),
            };
            self.read(q, query).await?
        };
        let passing = q.flag("passing");
        let slice = slice_of(&resp);
        let mut rows = Vec::new();
        for e in &slice.services {
            let Some(node) = slice.node(&e.node) else {
                continue;
            };
            if !has_tags(&e.service, q) || !node_meta_matches(node, q)? {
                continue;
            }
            let checks: Vec<&HealthCheck> = slice.checks_for(&e.node, &e.service.id).collect();
            if passing && !all_passing(checks.iter().copied()) {
                continue;
            }
            rows.push(health_service_row(node, &e.service, checks));
        }
        Ok((rows, resp))
    }

    /// The sidecar proxies fronting `name`, with their nodes and checks.
    async fn sidecars_of(&self, q: &Query, name: &str) -> Result<ReadResponse, Reply> {
        let query = CatalogQuery::Connect {
            name: name.to_string(),
        };
        self.read(q, query).await
    }

    /// Answers a list after `?filter`, with the read's headers.
    fn rows(&self, q: &Query, rows: Vec<Value>, resp: &ReadResponse) -> Reply {
        match filter_rows(q, rows) {
            Ok(rows) => with_read_headers(json_reply(&rows), resp),
            Err(r) => with_read_headers(r, resp),
        }
    }

    async fn catalog_register(&self, call: Call) -> Reply {
        let value = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        match mesh_core::definitions::decode_catalog_register(&value) {
            Ok(reg) => {
                self.write_bool(CatalogCommand::Register(Box::new(reg)).into())
                    .await
            }
            Err(e) => bad_request(e.to_string()),
        }
    }

    async fn catalog_deregister(&self, call: Call) -> Reply {
        let value = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        match mesh_core::definitions::decode_catalog_deregister(&value) {
            Ok((node, service_id, check_id)) => {
                self.write_bool(
                    CatalogCommand::Deregister {
                        node,
                        service_id,
                        check_id,
                    }
                    .into(),
                )
                .await
            }
            Err(e) => bad_request(e.to_string()),
        }
    }
}
