//! The service catalog: nodes, the services they run and the health checks
//! on both, as Consul's catalog holds them (`/v1/catalog`, `/v1/health`).
//!
//! Rows are keyed by node name, then by service or check id, in `BTreeMap`s,
//! so every read returns rows in one order on every server.
//!
//! Indexes follow Consul: each row carries `CreateIndex` (the write that
//! created it) and `ModifyIndex` (the last write that changed it), and the
//! table index ([`CatalogTable::table_index`]) moves only when some row
//! changed. A registration that repeats what is stored changes nothing:
//! anti-entropy re-sends a node's whole state periodically, and blocking
//! queries must not wake for it. Each read answers with its own index
//! ([`CatalogTable::query_index`], see `indexes`): a blocking read of one
//! service wakes when that service changes, as in Consul, not on every
//! catalog write.
//!
//! Snapshots carry the table as one JSON document (see `encode`): catalog
//! rows hold no bulk bytes, and JSON of `BTreeMap`s and structs is canonical,
//! so the same bytes, without the read indexes, also feed the digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::binary::{put_bytes32, Reader};
use super::{CommandResult, Table, TableState};
use crate::hash::Fnv1a64;
use indexes::{NodeRows, ReadIndexes};

mod indexes;

/// Check id of the node-liveness check the servers own (Consul's name).
pub const SERF_HEALTH_CHECK: &str = "serfHealth";

/// A health check's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded but serving: excluded by `?passing`, still in DNS.
    Warning,
    /// Failing: excluded from DNS and from `?passing`. A new check starts
    /// here (Consul's default) until its first run says otherwise.
    #[default]
    Critical,
}

impl CheckStatus {
    /// Consul's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    /// Parses Consul's lowercase name.
    pub fn parse(s: &str) -> Option<CheckStatus> {
        match s {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// A node: a host running an agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// The node's UUID (may be empty for nodes registered by hand).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The node's name, unique in the catalog.
    pub node: String,
    /// Its address.
    pub address: String,
    /// Its datacenter.
    #[serde(default)]
    pub datacenter: String,
    /// Other addresses (`lan`, `wan`, ...).
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Operator metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Index of the write that created the node.
    #[serde(default)]
    pub create_index: u64,
    /// Index of the last write that changed the node.
    #[serde(default)]
    pub modify_index: u64,
}

/// How instances are weighted in DNS answers (Consul's `Weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while every check passes.
    pub passing: u32,
    /// Weight while some check warns.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One upstream a sidecar proxy listens for locally.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Upstream {
    /// `service` (the only kind supported).
    #[serde(default)]
    pub destination_type: String,
    /// The service the upstream reaches.
    pub destination_name: String,
    /// Local address the proxy listens on (default 127.0.0.1).
    #[serde(default)]
    pub local_bind_address: String,
    /// Local port the proxy listens on.
    pub local_bind_port: u16,
}

/// A sidecar proxy's configuration (`Kind: connect-proxy` services).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyConfig {
    /// The service this proxy fronts.
    #[serde(default)]
    pub destination_service_name: String,
    /// The instance this proxy fronts.
    #[serde(rename = "DestinationServiceID", default)]
    pub destination_service_id: String,
    /// Where the fronted application listens (default 127.0.0.1).
    #[serde(default)]
    pub local_service_address: String,
    /// The fronted application's port.
    #[serde(default)]
    pub local_service_port: u16,
    /// Services the proxy reaches for the application.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
}

/// One instance of a service on a node (Consul's `NodeService`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeService {
    /// `""` for a typical service, `connect-proxy` for a sidecar.
    #[serde(default)]
    pub kind: String,
    /// Instance id, unique on its node.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Address, if not the node's.
    #[serde(default)]
    pub address: String,
    /// Operator metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Port.
    #[serde(default)]
    pub port: u16,
    /// DNS weights.
    #[serde(default)]
    pub weights: Weights,
    /// Whether the catalog's tags may be changed by others.
    #[serde(default)]
    pub enable_tag_override: bool,
    /// Sidecar configuration (`Kind: connect-proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Index of the write that created the instance.
    #[serde(default)]
    pub create_index: u64,
    /// Index of the last write that changed it.
    #[serde(default)]
    pub modify_index: u64,
}

impl NodeService {
    /// Whether this is a sidecar proxy fronting service `name`.
    pub fn fronts(&self, name: &str) -> bool {
        self.proxy
            .as_ref()
            .is_some_and(|p| p.destination_service_name == name)
    }
}

/// A health check on a node or on one of its service instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// The node the check belongs to.
    pub node: String,
    /// Check id, unique on its node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Human-readable name.
    pub name: String,
    /// Current state.
    pub status: CheckStatus,
    /// Operator notes.
    #[serde(default)]
    pub notes: String,
    /// Output of the last run.
    #[serde(default)]
    pub output: String,
    /// The instance the check is about; empty for a node check.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// That instance's service name (filled in from the instance).
    #[serde(default)]
    pub service_name: String,
    /// That instance's tags (filled in from the instance).
    #[serde(default)]
    pub service_tags: Vec<String>,
    /// `ttl`, `http`, `tcp`, `serf`, ... (informational).
    #[serde(default)]
    pub r#type: String,
    /// Index of the write that created the check.
    #[serde(default)]
    pub create_index: u64,
    /// Index of the last write that changed it.
    #[serde(default)]
    pub modify_index: u64,
}

/// An instance together with the node it runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// The node's name.
    pub node: String,
    /// The instance.
    pub service: NodeService,
}

/// Consul's `RegisterRequest`: a node, optionally one service instance and
/// checks, upserted together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The node (indexes ignored).
    pub node: Node,
    /// Leave the node row as it is if it exists (Consul's `SkipNodeUpdate`).
    pub skip_node_update: bool,
    /// An instance to upsert.
    pub service: Option<NodeService>,
    /// Checks to upsert. A check naming a `ServiceID` needs that instance
    /// (registered before or in this same request).
    pub checks: Vec<HealthCheck>,
}

/// A node's complete agent-owned state, as anti-entropy sends it: after
/// applying, the node's services are exactly `services` and its checks are
/// exactly `checks` plus the checks the servers own ([`SERF_HEALTH_CHECK`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSync {
    /// The node (indexes ignored).
    pub node: Node,
    /// Every instance the agent knows.
    pub services: Vec<NodeService>,
    /// Every check the agent knows.
    pub checks: Vec<HealthCheck>,
}

/// A command that changes the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// `PUT /v1/catalog/register`. Result: `Bool(true)`, or `Failed` naming
    /// what was wrong (a check for an unknown instance); a failed register
    /// changes nothing.
    #[serde(rename = "CatalogRegister")]
    Register(Box<Registration>),
    /// `PUT /v1/catalog/deregister`: one check, one instance (and its
    /// checks), or, with neither, the node and everything on it. Result:
    /// `Bool(true)` (removing something absent is not an error, as in Consul).
    #[serde(rename = "CatalogDeregister")]
    Deregister {
        /// The node.
        node: String,
        /// The instance to remove.
        service_id: Option<String>,
        /// The check to remove.
        check_id: Option<String>,
    },
    /// Anti-entropy: make the node's agent-owned rows equal to these.
    /// Result: `Bool(true)`.
    #[serde(rename = "CatalogSyncNode")]
    SyncNode(Box<NodeSync>),
    /// The leader's node-liveness verdict: set the node's
    /// [`SERF_HEALTH_CHECK`]. Ignored if the node is not in the catalog (it
    /// was deregistered meanwhile). Result: `Bool(true)`.
    #[serde(rename = "CatalogNodeHealth")]
    NodeHealth {
        /// The node.
        node: String,
        /// Its liveness.
        status: CheckStatus,
        /// Why.
        output: String,
    },
}

impl CatalogCommand {
    /// The one node the command changes rows of.
    pub fn node(&self) -> &str {
        match self {
            CatalogCommand::Register(r) => &r.node.node,
            CatalogCommand::Deregister { node, .. } | CatalogCommand::NodeHealth { node, .. } => {
                node
            }
            CatalogCommand::SyncNode(sync) => &sync.node.node,
        }
    }

    /// The JSON names of the variants, the keys `Command` dispatches on.
    pub const JSON_NAMES: &'static [&'static str] = &[
        "CatalogRegister",
        "CatalogDeregister",
        "CatalogSyncNode",
        "CatalogNodeHealth",
    ];

    /// An upper bound on this command's JSON size (see
    /// `Command::encoded_len_bound`): its JSON length, escaped strings
    /// included. Catalog commands are small, so encoding is cheap.
    pub fn encoded_len_bound(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |v| v.len())
    }
}

/// What a catalog read selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogQuery {
    /// Every node.
    Nodes,
    /// Every instance (no checks).
    Services,
    /// Instances named `name`, their nodes, and the checks on both.
    Service {
        /// The service name.
        name: String,
    },
    /// The sidecar proxies fronting service `name` (`/v1/health/connect`),
    /// their nodes, and the checks on both.
    Connect {
        /// The fronted service's name.
        name: String,
    },
    /// One node, its instances and its checks.
    Node {
        /// The node name.
        node: String,
    },
    /// Every check in a state (`None`: every check).
    ChecksInState {
        /// The state.
        state: Option<CheckStatus>,
    },
}

/// The rows a [`CatalogQuery`] selected, each list in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSlice {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Instances with their node names.
    pub services: Vec<ServiceEntry>,
    /// Checks.
    pub checks: Vec<HealthCheck>,
}

impl CatalogSlice {
    /// The node named `name`, if selected.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.node == name)
    }

    /// Checks on `node` that apply to the instance `service_id`: the node's
    /// own checks and the instance's.
    pub fn checks_for<'a>(
        &'a self,
        node: &'a str,
        service_id: &'a str,
    ) -> impl Iterator<Item = &'a HealthCheck> + 'a {
        self.checks.iter().filter(move |c| {
            c.node == node && (c.service_id.is_empty() || c.service_id == service_id)
        })
    }
}

/// The catalog table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogTable {
    nodes: BTreeMap<String, Node>,
    /// Keyed by (node, instance id).
    services: BTreeMap<(String, String), NodeService>,
    /// Keyed by (node, check id).
    checks: BTreeMap<(String, String), HealthCheck>,
    table_index: u64,
    last_index: u64,
    /// What each read answers with.
    indexes: ReadIndexes,
}

/// Whether two rows are equal apart from their indexes.
trait Row: Clone + PartialEq {
    fn indexes(&mut self) -> (&mut u64, &mut u64);
}

impl Row for Node {
    fn indexes(&mut self) -> (&mut u64, &mut u64) {
        (&mut self.create_index, &mut self.modify_index)
    }
}
impl Row for NodeService {
    fn indexes(&mut self) -> (&mut u64, &mut u64) {
        (&mut self.create_index, &mut self.modify_index)
    }
}
impl Row for HealthCheck {
    fn indexes(&mut self) -> (&mut u64, &mut u64) {
        (&mut self.create_index, &mut self.modify_index)
    }
}

/// Inserts or updates `row` under `key` at `index`, keeping the stored
/// create index; returns whether anything changed.
fn upsert<K: Ord, R: Row>(map: &mut BTreeMap<K, R>, key: K, mut row: R, index: u64) -> bool {
    match map.get_mut(&key) {
        Some(old) => {
            let (c, m) = old.indexes();
            let (create, modify) = (*c, *m);
            {
                let (rc, rm) = row.indexes();
                *rc = create;
                *rm = modify;
            }
            if *old == row {
                return false;
            }
            *row.indexes().1 = index;
            *old = row;
            true
        }
        None => {
            {
                let (rc, rm) = row.indexes();
                *rc = index;
                *rm = index;
            }
            map.insert(key, row);
            true
        }
    }
}

impl CatalogTable {
    /// Every node, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The instances on `node`, in id order.
    pub fn node_services<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a NodeService> {
        self.services
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, s)| s)
    }

    /// The checks on `node` (its own and its instances'), in id order.
    pub fn node_checks<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a HealthCheck> {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, c)| c)
    }

    /// Every check, in (node, id) order.
    pub fn checks(&self) -> impl Iterator<Item = &HealthCheck> {
        self.checks.values()
    }

    /// Index of the last write that changed the catalog.
    pub fn table_index(&self) -> u64 {
        self.table_index
    }

    /// The index a read of `query` answers with (`X-Consul-Index`): the
    /// last write that changed what it returns, or may have (0 if none).
    pub fn query_index(&self, query: &CatalogQuery) -> u64 {
        self.indexes.of_query(self, query)
    }

    /// Whether [`CatalogTable::query_index`] of `query` is above `since`:
    /// what a blocking read waits for, asked after every applied write.
    /// A connect read's index walks every instance to find the proxies; it
    /// can only have moved if the services or the checks index did (a
    /// proxy's own index moves with an instance, node or check change, and
    /// each of those moves one of them), so most writes are answered
    /// without the walk.
    pub fn changed_since(&self, query: &CatalogQuery, since: u64) -> bool {
        if matches!(query, CatalogQuery::Connect { .. })
            && self.indexes.services.max(self.indexes.checks) <= since
        {
            return false;
        }
        self.query_index(query) > since
    }

    /// The names that have instances, in order.
    fn service_names(&self) -> Vec<String> {
        let names: std::collections::BTreeSet<&str> =
            self.services.values().map(|s| s.service.as_str()).collect();
        names.into_iter().map(str::to_string).collect()
    }

    /// The names of the sidecar proxies fronting `name`, in order.
    fn proxy_names(&self, name: &str) -> Vec<String> {
        let names: std::collections::BTreeSet<&str> = self
            .services
            .values()
            .filter(|s| s.fronts(name))
            .map(|s| s.service.as_str())
            .collect();
        names.into_iter().map(str::to_string).collect()
    }

    /// The rows `query` selects.
    pub fn select(&self, query: &CatalogQuery) -> CatalogSlice {
        let mut out = CatalogSlice::default();
        match query {
            CatalogQuery::Nodes => out.nodes = self.nodes.values().cloned().collect(),
            CatalogQuery::Services => {
                out.services = self.entries(|_| true);
            }
            CatalogQuery::Service { name } => {
                out.services = self.entries(|s| s.service == *name);
                self.add_nodes_and_checks(&mut out);
            }
            CatalogQuery::Connect { name } => {
                out.services = self.entries(|s| s.fronts(name));
                self.add_nodes_and_checks(&mut out);
            }
            CatalogQuery::Node { node } => {
                if let Some(n) = self.nodes.get(node) {
                    out.nodes.push(n.clone());
                    out.services = self
                        .node_services(node)
                        .map(|s| ServiceEntry {
                            node: node.clone(),
                            service: s.clone(),
                        })
                        .collect();
                    out.checks = self.node_checks(node).cloned().collect();
                }
            }
            CatalogQuery::ChecksInState { state } => {
                out.checks = self
                    .checks
                    .values()
                    .filter(|c| !matches!(state, Some(s) if c.status != *s))
                    .cloned()
                    .collect();
            }
        }
        out
    }

    /// Adds the nodes of the selected instances and the checks that apply
    /// to them (their own and their nodes').
    fn add_nodes_and_checks(&self, out: &mut CatalogSlice) {
        let mut nodes: Vec<String> = out.services.iter().map(|e| e.node.clone()).collect();
        nodes.dedup();
        for node in nodes {
            if let Some(n) = self.nodes.get(&node) {
                out.nodes.push(n.clone());
            }
            let ids: Vec<&str> = out
                .services
                .iter()
                .filter(|e| e.node == node)
                .map(|e| e.service.id.as_str())
                .collect();
            out.checks.extend(
                self.node_checks(&node)
                    .filter(|c| c.service_id.is_empty() || ids.contains(&c.service_id.as_str()))
                    .cloned(),
            );
        }
    }

    fn entries(&self, keep: impl Fn(&NodeService) -> bool) -> Vec<ServiceEntry> {
        self.services
            .iter()
            .filter(|(_, s)| keep(s))
            .map(|((node, _), s)| ServiceEntry {
                node: node.clone(),
                service: s.clone(),
            })
            .collect()
    }

    /// Fills a check's service name and tags from its instance; errors if
    /// the instance does not exist.
    fn resolve_check(&self, mut check: HealthCheck) -> Result<HealthCheck, String> {
        if check.service_id.is_empty() {
            check.service_name.clear();
            check.service_tags.clear();
            return Ok(check);
        }
        let key = (check.node.clone(), check.service_id.clone());
        match self.services.get(&key) {
            Some(s) => {
                check.service_name = s.service.clone();
                check.service_tags = s.tags.clone();
                Ok(check)
            }
            None => Err(format!(
                "Unknown service ID {:?} for check ID {:?}",
                check.service_id, check.check_id
            )),
        }
    }

    fn register(&mut self, index: u64, r: &Registration) -> Result<bool, String> {
        let name = r.node.node.clone();
        if name.is_empty() {
            return Err("Must provide node".into());
        }
        // Validate everything before changing anything: a failed register
        // changes nothing.
        let mut scratch_services = Vec::new();
        if let Some(s) = &r.service {
            if s.service.is_empty() {
                return Err("Must provide service name".into());
            }
            scratch_services.push(s.id.clone());
        }
        for c in &r.checks {
            if c.check_id.is_empty() {
                return Err("Must provide check ID".into());
            }
            if !c.service_id.is_empty()
                && !scratch_services.contains(&c.service_id)
                && !self
                    .services
                    .contains_key(&(name.clone(), c.service_id.clone()))
            {
                return Err(format!(
                    "Unknown service ID {:?} for check ID {:?}",
                    c.service_id, c.check_id
                ));
            }
        }
        let mut changed = false;
        if !(r.skip_node_update && self.nodes.contains_key(&name)) {
            changed |= upsert(&mut self.nodes, name.clone(), r.node.clone(), index);
        }
        if let Some(s) = &r.service {
            changed |= self.upsert_service(index, &name, s.clone());
        }
        for c in &r.checks {
            let mut c = c.clone();
            c.node = name.clone();
            let c = self.resolve_check(c).expect("validated above");
            changed |= upsert(
                &mut self.checks,
                (name.clone(), c.check_id.clone()),
                c,
                index,
            );
        }
        Ok(changed)
    }

    /// Upserts an instance and refreshes the service name and tags its
    /// checks carry.
    fn upsert_service(&mut self, index: u64, node: &str, s: NodeService) -> bool {
        let id = s.id.clone();
        let mut changed = upsert(&mut self.services, (node.to_string(), id.clone()), s, index);
        let ids: Vec<(String, String)> = self
            .node_checks(node)
            .filter(|c| c.service_id == id)
            .map(|c| (c.node.clone(), c.check_id.clone()))
            .collect();
        for key in ids {
            let c = self.checks[&key].clone();
            let c = self.resolve_check(c).expect("the instance was just stored");
            changed |= upsert(&mut self.checks, key, c, index);
        }
        changed
    }

    fn deregister(&mut self, node: &str, service_id: Option<&str>, check_id: Option<&str>) -> bool {
        let mut changed = false;
        if let Some(check) = check_id {
            changed |= self
                .checks
                .remove(&(node.to_string(), check.to_string()))
                .is_some();
        }
        if let Some(id) = service_id {
            changed |= self.remove_service(node, id);
        }
        if service_id.is_none() && check_id.is_none() {
            changed |= self.nodes.remove(node).is_some();
            let ids: Vec<String> = self.node_services(node).map(|s| s.id.clone()).collect();
            for id in ids {
                changed |= self.remove_service(node, &id);
            }
            let checks: Vec<String> = self.node_checks(node).map(|c| c.check_id.clone()).collect();
            for id in checks {
                changed |= self.checks.remove(&(node.to_string(), id)).is_some();
            }
        }
        changed
    }

    /// Removes an instance and its checks.
    fn remove_service(&mut self, node: &str, id: &str) -> bool {
        let mut changed = self
            .services
            .remove(&(node.to_string(), id.to_string()))
            .is_some();
        let checks: Vec<String> = self
            .node_checks(node)
            .filter(|c| c.service_id == id)
            .map(|c| c.check_id.clone())
            .collect();
        for c in checks {
            changed |= self.checks.remove(&(node.to_string(), c)).is_some();
        }
        changed
    }

    fn sync_node(&mut self, index: u64, sync: &NodeSync) -> bool {
        let node = sync.node.node.clone();
        let mut changed = upsert(&mut self.nodes, node.clone(), sync.node.clone(), index);
        // Instances first, so checks can resolve them.
        let stale: Vec<String> = self
            .node_services(&node)
            .filter(|s| !sync.services.iter().any(|n| n.id == s.id))
            .map(|s| s.id.clone())
            .collect();
        for id in stale {
            changed |= self.remove_service(&node, &id);
        }
        for s in &sync.services {
            changed |= self.upsert_service(index, &node, s.clone());
        }
        let stale: Vec<String> = self
            .node_checks(&node)
            .filter(|c| {
                c.check_id != SERF_HEALTH_CHECK
                    && !sync.checks.iter().any(|n| n.check_id == c.check_id)
            })
            .map(|c| c.check_id.clone())
            .collect();
        for id in stale {
            changed |= self.checks.remove(&(node.clone(), id)).is_some();
        }
        for c in &sync.checks {
            if c.check_id == SERF_HEALTH_CHECK {
                continue;
            }
            let mut c = c.clone();
            c.node = node.clone();
            // A check whose instance is not in the sync is dropped: the
            // agent's own state never has one, so this is a damaged request.
            if let Ok(c) = self.resolve_check(c) {
                changed |= upsert(
                    &mut self.checks,
                    (node.clone(), c.check_id.clone()),
                    c,
                    index,
                );
            }
        }
        changed
    }

    fn node_health(&mut self, index: u64, node: &str, status: CheckStatus, output: &str) -> bool {
        if !self.nodes.contains_key(node) {
            return false;
        }
        let check = HealthCheck {
            node: node.to_string(),
            check_id: SERF_HEALTH_CHECK.into(),
            name: "Serf Health Status".into(),
            status,
            output: output.to_string(),
            r#type: "serf".into(),
            ..HealthCheck::default()
        };
        upsert(
            &mut self.checks,
            (node.to_string(), SERF_HEALTH_CHECK.into()),
            check,
            index,
        )
    }
}

/// The snapshot form of the table: rows as lists (JSON map keys must be
/// strings, and the services' keys are pairs).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    table_index: u64,
    last_index: u64,
    nodes: Vec<Node>,
    services: Vec<ServiceEntry>,
    checks: Vec<HealthCheck>,
    /// Absent in snapshots written before reads had their own indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_indexes: Option<ReadIndexes>,
}

/// `[JSON length u32][JSON of the Image]`.
fn put_image(t: &CatalogTable, read_indexes: Option<ReadIndexes>) -> Vec<u8> {
    let image = Image {
        table_index: t.table_index,
        last_index: t.last_index,
        nodes: t.nodes.values().cloned().collect(),
        services: t.entries(|_| true),
        checks: t.checks.values().cloned().collect(),
        read_indexes,
    };
    let json = serde_json::to_vec(&image).expect("catalog rows serialize");
    let mut out = Vec::with_capacity(json.len() + 4);
    put_bytes32(&mut out, &json);
    out
}

impl TableState for CatalogTable {
    const TABLE: Table = Table::Catalog;
    type Command = CatalogCommand;

    fn apply(&mut self, index: u64, cmd: &CatalogCommand) -> CommandResult {
        super::advance(Self::TABLE, &mut self.last_index, index);
        let node = cmd.node();
        let before = NodeRows::of(self, node);
        let result = match cmd {
            CatalogCommand::Register(r) => self.register(index, r),
            CatalogCommand::Deregister {
                node,
                service_id,
                check_id,
            } => Ok(self.deregister(node, service_id.as_deref(), check_id.as_deref())),
            CatalogCommand::SyncNode(sync) => Ok(self.sync_node(index, sync)),
            CatalogCommand::NodeHealth {
                node,
                status,
                output,
            } => Ok(self.node_health(index, node, *status, output)),
        };
        if let Ok(true) = result {
            let after = NodeRows::of(self, node);
            let mut indexes = std::mem::take(&mut self.indexes);
            // Asked for each name that left the node: one walk of the
            // catalog however many left (a node deregistered with all it
            // ran).
            let remaining = std::cell::OnceCell::new();
            indexes.note(index, &before, &after, |name| {
                remaining
                    .get_or_init(|| self.service_names())
                    .binary_search_by(|n: &String| n.as_str().cmp(name))
                    .is_ok()
            });
            self.indexes = indexes;
        }
        let result = result.map(|changed| (changed, CommandResult::Bool(true)));
        super::outcome(&mut self.table_index, index, result)
    }

    fn table_index(&self) -> u64 {
        self.table_index
    }

    fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The JSON image without the read indexes: they only shape the
    /// indexes reads answer with, and replicas of builds from before them
    /// must keep agreeing on the rows.
    fn digest(&self, h: &mut Fnv1a64) {
        h.len_prefixed(&put_image(self, None));
    }

    /// `[JSON length u32][JSON of an Image: the indexes and every row in
    /// key order]`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&put_image(self, Some(self.indexes.clone())));
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        let json = r.bytes32(&|| "catalog JSON".into())?;
        let image: Image =
            serde_json::from_slice(json).map_err(|e| format!("catalog JSON: {e}"))?;
        let mut t = CatalogTable {
            table_index: image.table_index,
            last_index: image.last_index,
            ..CatalogTable::default()
        };
        let read_indexes = image.read_indexes;
        for n in image.nodes {
            if t.nodes.insert(n.node.clone(), n).is_some() {
                return Err("a node appears twice".into());
            }
        }
        for e in image.services {
            if t.services
                .insert((e.node, e.service.id.clone()), e.service)
                .is_some()
            {
                return Err("an instance appears twice".into());
            }
        }
        for c in image.checks {
            if t.checks
                .insert((c.node.clone(), c.check_id.clone()), c)
                .is_some()
            {
                return Err("a check appears twice".into());
            }
        }
        t.indexes = read_indexes.unwrap_or_else(|| ReadIndexes::conservative(&t));
        Ok(t)
    }

    fn validate(&self) -> Result<(), String> {
        if self.table_index > self.last_index {
            return Err(format!(
                "table index {} is above the last applied index {}",
                self.table_index, self.last_index
            ));
        }
        let check_row = |what: String, create: u64, modify: u64| {
            if create == 0 || create > modify || modify > self.table_index {
                Err(format!(
                    "{what} has indexes create {create}, modify {modify} (table index {})",
                    self.table_index
                ))
            } else {
                Ok(())
            }
        };
        for (name, n) in &self.nodes {
            if *name != n.node {
                return Err(format!("node stored under {name:?} is named {:?}", n.node));
            }
            check_row(format!("node {name:?}"), n.create_index, n.modify_index)?;
        }
        for ((node, id), s) in &self.services {
            if !self.nodes.contains_key(node) {
                return Err(format!("instance {id:?} is on unknown node {node:?}"));
            }
            if *id != s.id {
                return Err(format!("instance stored under {id:?} has id {:?}", s.id));
            }
            check_row(
                format!("instance {node}/{id}"),
                s.create_index,
                s.modify_index,
            )?;
        }
        for ((node, id), c) in &self.checks {
            if !self.nodes.contains_key(node) || c.node != *node || c.check_id != *id {
                return Err(format!("check {node}/{id} does not match its key or node"));
            }
            if !c.service_id.is_empty()
                && !self
                    .services
                    .contains_key(&(node.clone(), c.service_id.clone()))
            {
                return Err(format!(
                    "check {node}/{id} is for unknown instance {:?}",
                    c.service_id
                ));
            }
            check_row(format!("check {node}/{id}"), c.create_index, c.modify_index)?;
        }
        self.indexes.validate(self)
    }
}

#[cfg(test)]
mod tests;
