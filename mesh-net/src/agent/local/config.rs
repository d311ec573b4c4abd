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
