//! Services and checks that come from config files: registered at start,
//! and brought in line with the files again by `mesh reload`. The files
//! are their source of truth: they are not persisted in the data dir, a
//! reload removes what the files no longer name, and leaves alone (check
//! runners, TTL deadlines, statuses) what they still name unchanged. A
//! check whose definition changed keeps its last status and output, as
//! Consul's reload restores check state.

use std::collections::BTreeMap;
use std::fmt;

use mesh_core::state::catalog::HealthCheck;

use super::{LocalAgent, LocalError};
use crate::agent::checks::CheckSpec;
use crate::agent::ServiceWithChecks;

/// What the files said about one id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ConfigItem {
    /// A service with its checks (and, for a sidecar, the proxy's).
    Service(ServiceWithChecks),
    /// A node check, or a check of a service registered otherwise.
    Check(HealthCheck, CheckSpec),
    /// Registered by the agent itself (the `consul` service of a
    /// server): kept through reloads, never persisted.
    Builtin,
}

/// What applying the files changed, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigChanges {
    /// Ids new in the files.
    pub added: Vec<String>,
    /// Ids whose definition changed.
    pub updated: Vec<String>,
    /// Ids the files no longer name.
    pub removed: Vec<String>,
    /// Ids the files name as before.
    pub unchanged: usize,
    /// Definitions the agent refused, with the reason (as at start, the
    /// rest still applies).
    pub refused: Vec<String>,
}

impl fmt::Display for ConfigChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "added {:?}, updated {:?}, removed {:?}, {} unchanged",
            self.added, self.updated, self.removed, self.unchanged
        )?;
        if !self.refused.is_empty() {
            write!(f, ", refused {:?}", self.refused)?;
        }
        Ok(())
    }
}

/// The id a check definition registers under (its name when it has no id,
/// as the agent registers it).
fn check_id(check: &HealthCheck) -> String {
    if check.check_id.is_empty() {
        check.name.clone()
    } else {
        check.check_id.clone()
    }
}

impl LocalAgent {
    /// Marks `id` as the agent's own registration (kept by reloads).
    pub fn mark_builtin(&self, id: &str) {
        let _batch = self.batch.lock().expect("batch lock");
        self.inner
            .lock()
            .expect("agent lock")
            .from_config
            .insert(id.to_string(), ConfigItem::Builtin);
        self.persist();
    }

    /// Brings the services and checks from config files in line with
    /// `services` and `checks` (what the files say now).
    pub fn apply_config(
        &self,
        services: &[ServiceWithChecks],
        checks: &[(HealthCheck, CheckSpec)],
    ) -> ConfigChanges {
        let mut wanted: BTreeMap<String, ConfigItem> = BTreeMap::new();
        for s in services {
            wanted.insert(s.0.id.clone(), ConfigItem::Service(s.clone()));
        }
        for (c, spec) in checks {
            wanted.insert(check_id(c), ConfigItem::Check(c.clone(), spec.clone()));
        }
        let before = self.inner.lock().expect("agent lock").from_config.clone();
        let mut changes = ConfigChanges::default();
        let mut now_from_config: BTreeMap<String, ConfigItem> = before
            .iter()
            .filter(|(_, item)| **item == ConfigItem::Builtin)
            .map(|(id, item)| (id.clone(), item.clone()))
            .collect();

        for (id, item) in &before {
            let removed = match item {
                ConfigItem::Builtin => continue,
                _ if wanted.contains_key(id) => continue,
                ConfigItem::Service(_) => self.deregister_service(id),
                ConfigItem::Check(..) => self.deregister_check(id),
            };
            // Already gone (deregistered through the API): nothing to do.
            if removed.is_ok() {
                changes.removed.push(id.clone());
            }
        }

        let present = |id: &str| {
            let inner = self.inner.lock().expect("agent lock");
            inner.ae.services().contains_key(id) || inner.ae.checks().contains_key(id)
        };
        // Services first: a check in the files may name one of them.
        let ordered = wanted
            .iter()
            .filter(|(_, i)| matches!(i, ConfigItem::Service(_)))
            .chain(
                wanted
                    .iter()
                    .filter(|(_, i)| matches!(i, ConfigItem::Check(..))),
            );
        for (id, item) in ordered {
            let old = before.get(id);
            if old == Some(item) && present(id) {
                changes.unchanged += 1;
                now_from_config.insert(id.clone(), item.clone());
                continue;
            }
            let result = match item {
                ConfigItem::Service((service, checks)) => {
                    let checks = checks
                        .iter()
                        .map(|(c, spec)| (self.with_current_state(c.clone()), spec.clone()))
                        .collect();
                    self.register_service(service.clone(), checks, true)
                }
                ConfigItem::Check(c, spec) => {
                    self.register_check(self.with_current_state(c.clone()), spec.clone())
                }
                ConfigItem::Builtin => Ok(()),
            };
            match result {
                Ok(()) => {
                    let list = if old.is_some() {
                        &mut changes.updated
                    } else {
                        &mut changes.added
                    };
                    list.push(id.clone());
                    now_from_config.insert(id.clone(), item.clone());
                }
                Err(LocalError::Invalid(why) | LocalError::NotFound(why)) => {
                    changes.refused.push(format!("{id}: {why}"));
                }
            }
        }
        let _batch = self.batch.lock().expect("batch lock");
        self.inner.lock().expect("agent lock").from_config = now_from_config;
        self.persist();
        changes
    }

    /// `check` with the status and output its id has now, if it exists: a
    /// reload changes a check's definition, not what it last found.
    fn with_current_state(&self, mut check: HealthCheck) -> HealthCheck {
        let inner = self.inner.lock().expect("agent lock");
        if let Some(now) = inner.ae.checks().get(&check_id(&check)) {
            check.status = now.status;
            check.output = now.output.clone();
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::BoxFuture;
    use mesh_core::connect::ca::{IssuedLeaf, SecretPem};
    use mesh_core::state::ca::CaConfig;
    use mesh_core::state::catalog::{CheckStatus, Node, NodeService};
    use mesh_core::state::sessions::Session;
    use mesh_core::state::{Command, CommandResult};
    use mesh_core::wire::{ClusterStatus, ReadRequest, ReadResponse, RpcError};

    use super::*;
    use crate::agent::checks::Probe;
    use crate::backend::{Cluster, LeafRequest};
    use crate::disk::MemDisk;
    use crate::server::Server;

    /// No server answers: the local state works alone (anti-entropy
    /// retries in the background), which is all these tests look at.
    struct Offline;

    fn no_leader<T: Send + 'static>() -> BoxFuture<'static, Result<T, RpcError>> {
        Box::pin(async { Err(RpcError::NoLeader) })
    }

    impl Cluster for Offline {
        fn read(&self, _: ReadRequest) -> BoxFuture<'_, Result<ReadResponse, RpcError>> {
            no_leader()
        }
        fn write(&self, _: Command) -> BoxFuture<'_, Result<(u64, CommandResult), RpcError>> {
            no_leader()
        }
        fn status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>> {
            no_leader()
        }
        fn leader_status(&self) -> BoxFuture<'_, Result<ClusterStatus, RpcError>> {
            no_leader()
        }
        fn heartbeat(&self, _: String) -> BoxFuture<'_, Result<(), RpcError>> {
            no_leader()
        }
        fn sign_leaf(&self, _: LeafRequest) -> BoxFuture<'_, Result<IssuedLeaf, RpcError>> {
            no_leader()
        }
        fn rotate_root(
            &self,
            _: SecretPem,
            _: Option<CaConfig>,
        ) -> BoxFuture<'_, Result<(), RpcError>> {
            no_leader()
        }
        fn renew_session(&self, _: String) -> BoxFuture<'_, Result<Option<Session>, RpcError>> {
            no_leader()
        }
        fn known_leader(&self) -> bool {
            false
        }
        fn last_contact_ms(&self) -> u64 {
            0
        }
        fn server(&self) -> Option<&Arc<Server>> {
            None
        }
    }

    fn agent() -> Arc<LocalAgent> {
        let node = Node {
            node: "n1".into(),
            ..Node::default()
        };
        LocalAgent::start(
            node,
            Arc::new(Offline),
            Arc::new(MemDisk::new()),
            1,
            false,
            crate::telemetry::Telemetry::new(),
        )
        .expect("an empty disk")
    }

    fn ttl_check(id: &str) -> (HealthCheck, CheckSpec) {
        let check = HealthCheck {
            check_id: id.into(),
            name: id.into(),
            status: CheckStatus::Critical,
            ..HealthCheck::default()
        };
        let spec = CheckSpec {
            probe: Probe::Ttl { ttl_ms: 60_000 },
            interval_ms: 0,
            timeout_ms: 0,
            deregister_critical_after_ms: None,
        };
        (check, spec)
    }

    fn web(tags: &[&str]) -> ServiceWithChecks {
        let service = NodeService {
            id: "web".into(),
            service: "web".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..NodeService::default()
        };
        (service, vec![ttl_check("web-ttl")])
    }

    fn ids(agent: &LocalAgent) -> (Vec<String>, Vec<String>) {
        let services = agent.services().into_iter().map(|s| s.id).collect();
        let checks = agent.checks().into_iter().map(|c| c.check_id).collect();
        (services, checks)
    }

    fn status(agent: &LocalAgent, id: &str) -> Option<CheckStatus> {
        agent
            .checks()
            .into_iter()
            .find(|c| c.check_id == id)
            .map(|c| c.status)
    }

    fn changes(
        added: &[&str],
        updated: &[&str],
        removed: &[&str],
        unchanged: usize,
    ) -> ConfigChanges {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        ConfigChanges {
            added: own(added),
            updated: own(updated),
            removed: own(removed),
            unchanged,
            refused: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_reload_adds_changes_and_removes_only_what_the_files_changed() {
        let a = agent();
        a.register_service(
            NodeService {
                id: "consul".into(),
                service: "consul".into(),
                ..NodeService::default()
            },
            Vec::new(),
            true,
        )
        .unwrap();
        a.mark_builtin("consul");
        let node_check = ttl_check("disk");

        let first = a.apply_config(&[web(&["v1"])], std::slice::from_ref(&node_check));
        assert_eq!(first, changes(&["web", "disk"], &[], &[], 0));
        // The API registers one of its own; the files know nothing of it.
        a.register_service(
            NodeService {
                id: "manual".into(),
                service: "manual".into(),
                ..NodeService::default()
            },
            vec![ttl_check("manual-ttl")],
            true,
        )
        .unwrap();
        a.update_ttl("web-ttl", CheckStatus::Passing, "ok").unwrap();

        let same = a.apply_config(&[web(&["v1"])], std::slice::from_ref(&node_check));
        assert_eq!(same, changes(&[], &[], &[], 2));
        assert_eq!(status(&a, "web-ttl"), Some(CheckStatus::Passing));

        let retagged = a.apply_config(&[web(&["v2"])], &[]);
        assert_eq!(retagged, changes(&[], &["web"], &["disk"], 0));
        let web_now = a.services().into_iter().find(|s| s.id == "web").unwrap();
        assert_eq!(web_now.tags, ["v2"]);
        assert_eq!(
            status(&a, "web-ttl"),
            Some(CheckStatus::Passing),
            "a changed definition keeps the check's last status"
        );

        let emptied = a.apply_config(&[], &[]);
        assert_eq!(emptied, changes(&[], &[], &["web"], 0));
        assert_eq!(
            ids(&a),
            (
                vec!["consul".to_string(), "manual".into()],
                vec!["manual-ttl".to_string()]
            ),
            "the builtin and the API's registrations stay"
        );
    }

    #[tokio::test]
    async fn a_refused_definition_is_reported_and_the_rest_applies() {
        let a = agent();
        let (check, _) = ttl_check("script");
        let script = CheckSpec {
            probe: Probe::Script {
                args: vec!["/bin/true".into()],
            },
            interval_ms: 10_000,
            timeout_ms: 1_000,
            deregister_critical_after_ms: None,
        };
        let got = a.apply_config(&[web(&[])], &[(check, script)]);
        assert_eq!(got.added, ["web"]);
        assert_eq!(got.refused.len(), 1, "{got}");
        assert!(
            got.refused[0].starts_with("script: Scripts are disabled"),
            "{got}"
        );
        // Refused, so not remembered: the next reload tries it again.
        let again = a.apply_config(&[web(&[])], &[]);
        assert_eq!(again, changes(&[], &[], &[], 1));
    }
}
