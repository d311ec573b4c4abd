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

/// Whether a config id names a service or a check: the two have separate
/// id spaces (a service `web` and a check `web` may both exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ItemKind {
    /// A service (with the checks nested in its definition).
    Service,
    /// A check defined on its own.
    Check,
}

/// What the files registered, by kind and id.
pub(super) type ConfigKey = (ItemKind, String);

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
    /// Definitions the agent refused, with the reason. As at start, the
    /// rest still applies; what a refused definition would have replaced
    /// stays as it was.
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
    /// Marks service `id` as the agent's own registration (kept by
    /// reloads).
    pub fn mark_builtin(&self, id: &str) {
        let _batch = self.batch.lock().expect("batch lock");
        self.inner
            .lock()
            .expect("agent lock")
            .from_config
            .insert((ItemKind::Service, id.to_string()), ConfigItem::Builtin);
        self.persist();
    }

    /// Brings the services and checks from config files in line with
    /// `services` and `checks` (what the files say now).
    pub fn apply_config(
        &self,
        services: &[ServiceWithChecks],
        checks: &[(HealthCheck, CheckSpec)],
    ) -> ConfigChanges {
        let mut wanted: BTreeMap<ConfigKey, ConfigItem> = BTreeMap::new();
        for s in services {
            wanted.insert(
                (ItemKind::Service, s.0.id.clone()),
                ConfigItem::Service(s.clone()),
            );
        }
        for (c, spec) in checks {
            wanted.insert(
                (ItemKind::Check, check_id(c)),
                ConfigItem::Check(c.clone(), spec.clone()),
            );
        }
        let before = self.inner.lock().expect("agent lock").from_config.clone();
        let mut changes = ConfigChanges::default();
        let mut now_from_config: BTreeMap<ConfigKey, ConfigItem> = before
            .iter()
            .filter(|(_, item)| **item == ConfigItem::Builtin)
            .map(|(key, item)| (key.clone(), item.clone()))
            .collect();

        for (key, item) in &before {
            let removed = match (key.0, item) {
                (_, ConfigItem::Builtin) => continue,
                _ if wanted.contains_key(key) => continue,
                (ItemKind::Service, _) => self.deregister_service(&key.1),
                (ItemKind::Check, _) => self.deregister_check(&key.1),
            };
            // Already gone (deregistered through the API): nothing to do.
            if removed.is_ok() {
                changes.removed.push(key.1.clone());
            }
        }

        // Keys order services before checks: a check in the files may
        // name one of the services.
        for (key, item) in &wanted {
            let old = before.get(key);
            if old == Some(item) && self.present(key) {
                changes.unchanged += 1;
                now_from_config.insert(key.clone(), item.clone());
                continue;
            }
            let result = match item {
                ConfigItem::Service(new) => self.replace_config_service(old, new),
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
                    list.push(key.1.clone());
                    now_from_config.insert(key.clone(), item.clone());
                }
                Err(LocalError::Invalid(why) | LocalError::NotFound(why)) => {
                    changes.refused.push(format!("{}: {why}", key.1));
                    // What it would have replaced is still registered and
                    // still the files': a later reload must be able to
                    // remove it, and it must not be persisted as the API's.
                    if let Some(old) = old {
                        now_from_config.insert(key.clone(), old.clone());
                    }
                }
            }
        }
        let _batch = self.batch.lock().expect("batch lock");
        self.inner.lock().expect("agent lock").from_config = now_from_config;
        self.persist();
        changes
    }

    /// Registers a service from the files in place of `old` (what the
    /// files said before, if anything): its nested checks that did not
    /// change keep running untouched, changed ones keep their last status,
    /// ones the new definition drops are removed, and checks attached to
    /// it from elsewhere (the API, a check file) stay.
    fn replace_config_service(
        &self,
        old: Option<&ConfigItem>,
        (service, checks): &ServiceWithChecks,
    ) -> Result<(), LocalError> {
        let old_checks: &[(HealthCheck, CheckSpec)] = match old {
            Some(ConfigItem::Service((_, checks))) => checks,
            _ => &[],
        };
        let changed: Vec<(HealthCheck, CheckSpec)> = checks
            .iter()
            .filter(|c| !(old_checks.contains(c) && self.has_check(&check_id(&c.0))))
            .map(|(c, spec)| (self.with_current_state(c.clone()), spec.clone()))
            .collect();
        self.register_service(service.clone(), changed, false)?;
        let keep: Vec<String> = checks.iter().map(|(c, _)| check_id(c)).collect();
        for (c, _) in old_checks {
            let id = check_id(c);
            if !keep.contains(&id) {
                // Already gone through the API: nothing to do.
                let _ = self.deregister_check(&id);
            }
        }
        Ok(())
    }

    fn has_check(&self, id: &str) -> bool {
        self.inner
            .lock()
            .expect("agent lock")
            .ae
            .checks()
            .contains_key(id)
    }

    fn present(&self, (kind, id): &ConfigKey) -> bool {
        let inner = self.inner.lock().expect("agent lock");
        match kind {
            ItemKind::Service => inner.ae.services().contains_key(id),
            ItemKind::Check => inner.ae.checks().contains_key(id),
        }
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

    fn script_check(id: &str) -> (HealthCheck, CheckSpec) {
        let (check, _) = ttl_check(id);
        let spec = CheckSpec {
            probe: Probe::Script {
                args: vec!["/bin/true".into()],
            },
            interval_ms: 10_000,
            timeout_ms: 1_000,
            deregister_critical_after_ms: None,
        };
        (check, spec)
    }

    #[tokio::test]
    async fn a_refused_definition_is_reported_and_the_rest_applies() {
        let a = agent();
        let got = a.apply_config(&[web(&[])], &[script_check("script")]);
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

    #[tokio::test]
    async fn a_refused_change_keeps_the_old_definition_and_a_later_reload_can_remove_it() {
        let a = agent();
        a.apply_config(&[web(&["v1"])], &[]);
        let (mut service, mut checks) = web(&["v2"]);
        checks.push(script_check("web-script"));
        service.tags = vec!["v2".into()];
        let refused = a.apply_config(&[(service, checks)], &[]);
        assert_eq!(refused.refused.len(), 1, "{refused}");
        let web_now = a.services().into_iter().find(|s| s.id == "web").unwrap();
        assert_eq!(web_now.tags, ["v1"], "the refused change did not apply");
        let emptied = a.apply_config(&[], &[]);
        assert_eq!(emptied, changes(&[], &[], &["web"], 0));
        assert_eq!(ids(&a), (vec![], vec![]));
    }

    #[tokio::test]
    async fn a_service_and_a_check_may_share_an_id() {
        let a = agent();
        let got = a.apply_config(&[web(&[])], &[ttl_check("web")]);
        assert_eq!(got, changes(&["web", "web"], &[], &[], 0));
        assert_eq!(
            ids(&a),
            (
                vec!["web".to_string()],
                vec!["web".to_string(), "web-ttl".into()]
            )
        );
        let again = a.apply_config(&[web(&[])], &[ttl_check("web")]);
        assert_eq!(again, changes(&[], &[], &[], 2));
    }

    #[tokio::test]
    async fn changing_a_service_keeps_checks_attached_from_elsewhere_and_drops_its_removed_ones() {
        let a = agent();
        let (service, mut nested) = web(&["v1"]);
        nested.push(ttl_check("web-extra"));
        a.apply_config(&[(service.clone(), nested)], &[]);
        // Attached by the API, and by a check file.
        let (mut api_check, spec) = ttl_check("web-api");
        api_check.service_id = "web".into();
        a.register_check(api_check, spec).unwrap();
        let (mut file_check, file_spec) = ttl_check("web-file");
        file_check.service_id = "web".into();
        a.update_ttl("web-ttl", CheckStatus::Passing, "ok").unwrap();
        let first = a.apply_config(
            &[(
                service.clone(),
                vec![ttl_check("web-ttl"), ttl_check("web-extra")],
            )],
            &[(file_check.clone(), file_spec.clone())],
        );
        assert_eq!(first, changes(&["web-file"], &[], &[], 1));
        a.update_ttl("web-file", CheckStatus::Passing, "ok")
            .unwrap();

        let retagged = NodeService {
            tags: vec!["v2".into()],
            ..service
        };
        let second = a.apply_config(
            &[(retagged, vec![ttl_check("web-ttl")])],
            &[(file_check, file_spec)],
        );
        assert_eq!(second, changes(&[], &["web"], &[], 1));
        assert_eq!(
            ids(&a).1,
            ["web-api", "web-file", "web-ttl"],
            "web-extra left the definition; the API's and the file's checks stay"
        );
        assert_eq!(status(&a, "web-ttl"), Some(CheckStatus::Passing));
        assert_eq!(status(&a, "web-file"), Some(CheckStatus::Passing));
    }
}
