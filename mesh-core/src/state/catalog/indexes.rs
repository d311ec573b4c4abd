//! The indexes catalog reads answer with (`X-Consul-Index`), as Consul's:
//! a blocking read wakes when what *it* returns may have changed, not on
//! every catalog write.
//!
//! * `/v1/catalog/nodes`: the last write that changed a node row.
//! * `/v1/catalog/services`: the last write that changed an instance or a
//!   node row (node rows too, because `?node-meta` and `?filter` judge
//!   instances by their node).
//! * `/v1/health/state/:state`: the last write that changed a check.
//! * `/v1/health/service/:name`, `/v1/catalog/service/:name`: the last write
//!   that changed what that read returns: an instance of `name`, the node it
//!   runs on, or a check on that node that applies to the instance (the
//!   node's own checks apply to every instance on it). A name with no
//!   instances answers with the last write that removed the last instance
//!   of some name (Consul's `service_last_extinction`), so a read that saw
//!   a service vanish wakes when it comes back, and the map holds only names
//!   that exist.
//! * `/v1/health/connect/:name`: the highest index of the proxies fronting
//!   `name`, and at least the services index (a proxy that stopped fronting
//!   `name` changed an instance row).
//! * `/v1/catalog/node/:node`: the table index.
//!
//! How the per-name indexes stay exact without bookkeeping on every write
//! path: every catalog command touches one node, so [`ReadIndexes::note`]
//! compares what each read sees of that node before and after the command.
//! A read's answer can only change where the rows of that node did.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{CatalogQuery, CatalogTable, HealthCheck, Node, NodeService};

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadIndexes {
    /// Last write that changed a node row.
    pub(super) nodes: u64,
    /// Last write that changed an instance or a node row.
    pub(super) services: u64,
    /// Last write that changed a check.
    pub(super) checks: u64,
    /// Each service name that has instances: the last write that changed
    /// what a read of that name returns.
    pub(super) per_service: BTreeMap<String, u64>,
    /// Last write that removed the last instance of some name.
    pub(super) last_extinction: u64,
}

/// One node's rows, as they were before a command and after it, keyed by
/// id.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct NodeRows {
    node: Option<Node>,
    services: BTreeMap<String, NodeService>,
    checks: BTreeMap<String, HealthCheck>,
}

impl NodeRows {
    pub(super) fn of(table: &CatalogTable, node: &str) -> NodeRows {
        NodeRows {
            node: table.node(node).cloned(),
            services: table
                .node_services(node)
                .map(|s| (s.id.clone(), s.clone()))
                .collect(),
            checks: table
                .node_checks(node)
                .map(|c| (c.check_id.clone(), c.clone()))
                .collect(),
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.services.values().map(|s| s.service.as_str())
    }

    /// The service name of the instance a check is about; `None` for a
    /// node check (it applies to every name here).
    fn name_of(&self, check: &HealthCheck) -> Option<&str> {
        if check.service_id.is_empty() {
            return None;
        }
        self.services
            .get(&check.service_id)
            .map(|s| s.service.as_str())
    }

    fn node_checks(&self) -> impl Iterator<Item = &HealthCheck> {
        self.checks.values().filter(|c| c.service_id.is_empty())
    }

    /// The names whose read sees something else here in `after` than in
    /// `before`. A read of a name sees here the node row, the name's
    /// instances, the node's own checks and the checks of those
    /// instances; so a change to the node row or a node check reaches
    /// every name on the node, and any other change only the names of the
    /// instances it touched. Linear in the node's rows (a node may carry
    /// thousands of services).
    fn changed_names<'a>(before: &'a NodeRows, after: &'a NodeRows) -> BTreeSet<&'a str> {
        if before.node != after.node || !before.node_checks().eq(after.node_checks()) {
            return before.names().chain(after.names()).collect();
        }
        let mut out = BTreeSet::new();
        let ids: BTreeSet<&String> = before
            .services
            .keys()
            .chain(after.services.keys())
            .collect();
        for id in ids {
            let (was, now) = (before.services.get(id), after.services.get(id));
            if was != now {
                out.extend(was.map(|s| s.service.as_str()));
                out.extend(now.map(|s| s.service.as_str()));
            }
        }
        let ids: BTreeSet<&String> = before.checks.keys().chain(after.checks.keys()).collect();
        for id in ids {
            let (was, now) = (before.checks.get(id), after.checks.get(id));
            if was != now {
                out.extend(was.and_then(|c| before.name_of(c)));
                out.extend(now.and_then(|c| after.name_of(c)));
            }
        }
        out
    }

    /// For each name here, the highest modify index its read sees here.
    fn newest_by_name(&self) -> BTreeMap<&str, u64> {
        let node = self.node.as_ref().map_or(0, |n| n.modify_index);
        let shared = self
            .node_checks()
            .map(|c| c.modify_index)
            .fold(node, u64::max);
        let mut out: BTreeMap<&str, u64> = BTreeMap::new();
        for s in self.services.values() {
            let at = out.entry(s.service.as_str()).or_insert(shared);
            *at = (*at).max(s.modify_index);
        }
        for c in self.checks.values() {
            if let Some(at) = self.name_of(c).and_then(|n| out.get_mut(n)) {
                *at = (*at).max(c.modify_index);
            }
        }
        out
    }
}

impl ReadIndexes {
    /// Records the command at `index`, which changed the rows of one node
    /// from `before` to `after`; `exists` says whether a name still has
    /// instances anywhere in the table.
    pub(super) fn note(
        &mut self,
        index: u64,
        before: &NodeRows,
        after: &NodeRows,
        exists: impl Fn(&str) -> bool,
    ) {
        if before.node != after.node {
            self.nodes = index;
            self.services = index;
        }
        if before.services != after.services {
            self.services = index;
        }
        if before.checks != after.checks {
            self.checks = index;
        }
        let remaining: BTreeSet<&str> = after.names().collect();
        for name in NodeRows::changed_names(before, after) {
            if remaining.contains(name) || exists(name) {
                self.per_service.insert(name.to_string(), index);
            } else {
                self.per_service.remove(name);
                self.last_extinction = index;
            }
        }
    }

    /// The index a read of `query` answers with (0 if nothing it could
    /// return was ever written).
    pub(super) fn of_query(&self, table: &CatalogTable, query: &CatalogQuery) -> u64 {
        match query {
            CatalogQuery::Nodes => self.nodes,
            CatalogQuery::Services => self.services,
            CatalogQuery::ChecksInState { .. } => self.checks,
            CatalogQuery::Service { name } => self.of_service(name),
            CatalogQuery::Connect { name } => table
                .proxy_names(name)
                .iter()
                .map(|p| self.of_service(p))
                .fold(self.services, u64::max),
            CatalogQuery::Node { .. } => table.table_index(),
        }
    }

    fn of_service(&self, name: &str) -> u64 {
        self.per_service
            .get(name)
            .copied()
            .unwrap_or(self.last_extinction)
    }

    /// The indexes of a table restored from a snapshot that did not carry
    /// them: every read answers with the table index, which is at or above
    /// every index it answered with before.
    pub(super) fn conservative(table: &CatalogTable) -> ReadIndexes {
        let t = table.table_index();
        ReadIndexes {
            nodes: t,
            services: t,
            checks: t,
            per_service: table.service_names().into_iter().map(|n| (n, t)).collect(),
            last_extinction: t,
        }
    }

    /// Each index is at or below the table index, exactly the names with
    /// instances have one, and each is at or above every row its read
    /// returns (a write that changed a row and not its read's index would
    /// leave a blocking read asleep).
    pub(super) fn validate(&self, table: &CatalogTable) -> Result<(), String> {
        let t = table.table_index();
        for (what, i) in [
            ("nodes", self.nodes),
            ("services", self.services),
            ("checks", self.checks),
            ("last extinction", self.last_extinction),
        ] {
            if i > t {
                return Err(format!("{what} index {i} is above the table index {t}"));
            }
        }
        let names = table.service_names();
        let indexed: BTreeSet<&String> = self.per_service.keys().collect();
        if names.iter().collect::<BTreeSet<_>>() != indexed {
            return Err(format!(
                "service indexes name {indexed:?}, the instances {names:?}"
            ));
        }
        let highest = |rows: &mut dyn Iterator<Item = u64>| rows.max().unwrap_or(0);
        for (what, newest, index) in [
            (
                "node",
                highest(&mut table.nodes().map(|n| n.modify_index)),
                self.nodes,
            ),
            (
                "check",
                highest(&mut table.checks().map(|c| c.modify_index)),
                self.checks,
            ),
            (
                "instance",
                highest(&mut table.services.values().map(|s| s.modify_index)),
                self.services,
            ),
        ] {
            if newest > index {
                return Err(format!(
                    "a {what} row modified at {newest} is newer than its index {index}"
                ));
            }
        }
        let mut newest: BTreeMap<String, u64> = BTreeMap::new();
        for node in table.nodes() {
            let rows = NodeRows::of(table, &node.node);
            for (name, i) in rows.newest_by_name() {
                let at = newest.entry(name.to_string()).or_default();
                *at = (*at).max(i);
            }
        }
        for (name, &i) in &self.per_service {
            let rows = newest.get(name).copied().unwrap_or(0);
            if i == 0 || i > t || rows > i {
                return Err(format!(
                    "service {name:?} has index {i}, its rows were modified up to {rows} (table index {t})"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
