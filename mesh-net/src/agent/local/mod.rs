//! The agent's local state: the services and checks registered with this
//! agent (by config files or `/v1/agent/...`), the tasks that run the
//! checks, anti-entropy towards the catalog, and the liveness heartbeat.
//!
//! The decisions (when to sync, what to send) are
//! `mesh_core::anti_entropy`'s; this file feeds it changes, check results
//! and time, carries its outputs to the cluster, and persists the local
//! registrations in the data dir so a restarted agent re-syncs them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mesh_core::anti_entropy::{AntiEntropy, Output, SyncTiming};
use mesh_core::liveness::HEARTBEAT_INTERVAL_MS;
use mesh_core::state::catalog::{
    CatalogCommand, CatalogQuery, CheckStatus, HealthCheck, Node, NodeService,
};
use mesh_core::state::CommandResult;
use mesh_core::wire::{Consistency, QueryResult, ReadRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::checks::{self, CheckSpec, Probe};
use crate::backend::Cluster;
use crate::clock::{self, Instant};
use crate::disk::Disk;
use crate::log_store::{decode_record, json_record, read_records, FileKind, OpenError};
use config::{ConfigItem, ConfigKey, ItemKind};

mod config;
pub use config::ConfigChanges;

const LOCAL_FILE: &str = "agent-local";
const KIND_AGENT_LOCAL: u8 = 8;
/// Check id of node maintenance mode (Consul's).
pub const NODE_MAINTENANCE_CHECK: &str = "_node_maintenance";
/// Prefix of service maintenance check ids (Consul's).
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// A check with how it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCheck {
    /// The check as the catalog shows it.
    pub check: HealthCheck,
    /// How the agent runs it.
    pub spec: CheckSpec,
}

/// What the data dir keeps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    services: Vec<NodeService>,
    checks: Vec<LocalCheck>,
}

/// Why a local registration was refused: the caller's mistake (HTTP 400)
/// or an unknown id (HTTP 404).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// Bad request.
    #[error("{0}")]
    Invalid(String),
    /// No such service or check.
    #[error("{0}")]
    NotFound(String),
}

struct Inner {
    ae: AntiEntropy,
    specs: BTreeMap<String, CheckSpec>,
    /// Bumped when a check is (re)registered, so a replaced check's old
    /// runner stops.
    generations: BTreeMap<String, u64>,
    next_generation: u64,
    /// TTL checks: when each turns critical without an update.
    ttl_deadlines: BTreeMap<String, u64>,
    /// Checks critical since, for `deregister_critical_service_after`.
    critical_since: BTreeMap<String, u64>,
    runners: BTreeMap<String, JoinHandle<()>>,
    /// Ids of services and checks that came from config files: the files
    /// are their source of truth, so they are not persisted (a service
    /// deleted from the files must not come back from the data dir).
    /// Each entry keeps what the files said, so a reload touches only
    /// what changed.
    from_config: BTreeMap<ConfigKey, ConfigItem>,
}

/// The local state of one agent.
pub struct LocalAgent {
    cluster: Arc<dyn Cluster>,
    telemetry: crate::telemetry::Telemetry,
    disk: Arc<dyn Disk>,
    started: Instant,
    enable_script_checks: bool,
    inner: Mutex<Inner>,
    wake: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held across each API operation (its changes and their persisting),
    /// and by the sync driver while it takes anti-entropy's next output:
    /// a sync never carries half a registration, and persisted states are
    /// written in the order they were made.
    batch: Mutex<()>,
    /// This agent, for the tasks it starts (they hold it weakly and end
    /// with it).
    me: Weak<LocalAgent>,
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LocalAgent {
    /// Loads what the data dir kept and runs its checks; syncing `node`
    /// and its registrations to `cluster`, and heartbeats, start with
    /// [`LocalAgent::start_syncing`].
    pub fn start(
        node: Node,
        cluster: Arc<dyn Cluster>,
        disk: Arc<dyn Disk>,
        seed: u64,
        enable_script_checks: bool,
        telemetry: crate::telemetry::Telemetry,
    ) -> Result<Arc<Self>, OpenError> {
        let persisted: Persisted = match read_records(
            disk.as_ref(),
            LOCAL_FILE,
            FileKind::Atomic,
            &[KIND_AGENT_LOCAL],
        )?
        .pop()
        {
            Some(rec) => decode_record(disk.as_ref(), LOCAL_FILE, &rec)?,
            None => Persisted::default(),
        };
        let ae = AntiEntropy::new(SyncTiming::default(), node.clone(), seed, 0);
        let agent = Arc::new_cyclic(|me| LocalAgent {
            cluster,
            telemetry,
            disk,
            started: Instant::now(),
            enable_script_checks,
            inner: Mutex::new(Inner {
                ae,
                specs: BTreeMap::new(),
                generations: BTreeMap::new(),
                next_generation: 1,
                ttl_deadlines: BTreeMap::new(),
                critical_since: BTreeMap::new(),
                runners: BTreeMap::new(),
                from_config: BTreeMap::new(),
            }),
            wake: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            batch: Mutex::new(()),
            me: me.clone(),
        });
        if !persisted.services.is_empty() || !persisted.checks.is_empty() {
            info!(
                services = persisted.services.len(),
                checks = persisted.checks.len(),
                "restored local registrations from the data dir"
            );
        }
        for s in persisted.services {
            agent.add_service_inner(s);
        }
        for c in persisted.checks {
            // Checks were valid when stored; a service removed meanwhile
            // would have taken its checks with it.
            let _ = agent.add_check_inner(c.check, c.spec);
        }
        Ok(agent)
    }

    /// Whether loaded checks still wait for the catalog's statuses.
    fn awaiting_catalog(&self) -> bool {
        !self
            .inner
            .lock()
            .expect("agent lock")
            .ae
            .awaiting_catalog()
            .is_empty()
    }

    /// Starts syncing with the catalog and heartbeating, once everything
    /// loaded at start (the data dir, the configuration) is in: anti-entropy
    /// treats checks added before its first step as loaded ones.
    pub fn start_syncing(self: &Arc<Self>) {
        self.inner.lock().expect("agent lock").ae.loaded();
        let sync = tokio::spawn(Self::sync_driver(Arc::downgrade(self)));
        let heartbeat = tokio::spawn(Self::heartbeat_loop(Arc::downgrade(self), self.node_name()));
        self.tasks
            .lock()
            .expect("tasks lock")
            .extend([sync, heartbeat]);
    }

    /// Stops syncing, heartbeats and checks.
    pub fn stop(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        for (_, t) in std::mem::take(&mut self.inner.lock().expect("agent lock").runners) {
            t.abort();
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// This node's name.
    pub fn node_name(&self) -> String {
        self.inner
            .lock()
            .expect("agent lock")
            .ae
            .node()
            .node
            .clone()
    }

    /// This node's row.
    pub fn node(&self) -> Node {
        self.inner.lock().expect("agent lock").ae.node().clone()
    }

    /// The local services.
    pub fn services(&self) -> Vec<NodeService> {
        let inner = self.inner.lock().expect("agent lock");
        inner.ae.services().values().cloned().collect()
    }

    /// The local checks.
    pub fn checks(&self) -> Vec<HealthCheck> {
        let inner = self.inner.lock().expect("agent lock");
        inner.ae.checks().values().cloned().collect()
    }

    /// Registers (or replaces) a service with its checks. With
    /// `replace_existing_checks`, the service's checks not in `checks` are
    /// removed (Consul's `?replace-existing-checks`).
    pub fn register_service(
        &self,
        service: NodeService,
        checks: Vec<(HealthCheck, CheckSpec)>,
        replace_existing_checks: bool,
    ) -> Result<(), LocalError> {
        // Everything is checked before anything changes.
        if service.service.is_empty() {
            return Err(LocalError::Invalid("Missing service name".into()));
        }
        for (check, spec) in &checks {
            self.validate_spec(spec)?;
            if check.check_id.is_empty() && check.name.is_empty() {
                return Err(LocalError::Invalid("Missing check name".into()));
            }
        }
        let _batch = self.batch.lock().expect("batch lock");
        let id = service.id.clone();
        self.add_service_inner(service);
        if replace_existing_checks {
            let keep: Vec<&str> = checks.iter().map(|(c, _)| c.check_id.as_str()).collect();
            let stale: Vec<String> = self
                .checks()
                .into_iter()
                .filter(|c| c.service_id == id && !keep.contains(&c.check_id.as_str()))
                .map(|c| c.check_id)
                .collect();
            for c in stale {
                self.remove_check_inner(&c);
            }
        }
        for (mut check, spec) in checks {
            check.service_id = id.clone();
            self.add_check_inner(check, spec)?;
        }
        self.persist();
        Ok(())
    }

    /// Removes a service and its checks.
    pub fn deregister_service(&self, id: &str) -> Result<(), LocalError> {
        let _batch = self.batch.lock().expect("batch lock");
        let now = self.now_ms();
        let removed_checks: Vec<String> = self
            .checks()
            .into_iter()
            .filter(|c| c.service_id == id)
            .map(|c| c.check_id)
            .collect();
        let existed = self
            .inner
            .lock()
            .expect("agent lock")
            .ae
            .remove_service(now, id);
        if !existed {
            return Err(LocalError::NotFound(format!(
                "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
            )));
        }
        for c in removed_checks {
            self.forget_check_runtime(&c);
        }
        self.persist();
        self.wake.notify_one();
        Ok(())
    }

    /// Registers (or replaces) a check.
    pub fn register_check(&self, check: HealthCheck, spec: CheckSpec) -> Result<(), LocalError> {
        self.validate_spec(&spec)?;
        let _batch = self.batch.lock().expect("batch lock");
        self.add_check_inner(check, spec)?;
        self.persist();
        Ok(())
    }

    /// Removes a check.
    pub fn deregister_check(&self, id: &str) -> Result<(), LocalError> {
        let _batch = self.batch.lock().expect("batch lock");
        if !self.remove_check_inner(id) {
            return Err(LocalError::NotFound(format!("Unknown check ID {id:?}")));
        }
        self.persist();
        Ok(())
    }

    /// `/v1/agent/check/pass|warn|fail|update/:id`: sets a TTL check and
    /// restarts its TTL.
    pub fn update_ttl(
        &self,
        id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), LocalError> {
        // The note comes from the client: cut it on a character boundary.
        let mut output = output.to_string();
        checks::truncate(&mut output);
        let now = self.now_ms();
        {
            let mut inner = self.inner.lock().expect("agent lock");
            let ttl_ms = match inner.specs.get(id).map(|s| &s.probe) {
                Some(Probe::Ttl { ttl_ms }) => *ttl_ms,
                Some(_) => {
                    return Err(LocalError::Invalid(format!(
                        "CheckID {id:?} does not have associated TTL"
                    )))
                }
                None => return Err(LocalError::NotFound(format!("Unknown check ID {id:?}"))),
            };
            inner.ttl_deadlines.insert(id.to_string(), now + ttl_ms);
            inner.ae.update_check(now, id, status, &output);
            Self::track_critical(&mut inner, id, status, now);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Maintenance mode for a service (`enable`) or its end.
    pub fn service_maintenance(
        &self,
        id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), LocalError> {
        if !self.services().iter().any(|s| s.id == id) {
            return Err(LocalError::NotFound(format!(
                "No service registered with ID {id:?}"
            )));
        }
        let check_id = format!("{SERVICE_MAINTENANCE_PREFIX}{id}");
        self.maintenance(check_id, id, enable, reason, "Service Maintenance Mode")
    }

    /// Maintenance mode for the whole node.
    pub fn node_maintenance(&self, enable: bool, reason: &str) -> Result<(), LocalError> {
        self.maintenance(
            NODE_MAINTENANCE_CHECK.into(),
            "",
            enable,
            reason,
            "Node Maintenance Mode",
        )
    }

    fn maintenance(
        &self,
        check_id: String,
        service_id: &str,
        enable: bool,
        reason: &str,
        name: &str,
    ) -> Result<(), LocalError> {
        let _batch = self.batch.lock().expect("batch lock");
        if !enable {
            self.remove_check_inner(&check_id);
            self.persist();
            return Ok(());
        }
        let notes = if reason.is_empty() {
            "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.".to_string()
        } else {
            reason.to_string()
        };
        let check = HealthCheck {
            check_id,
            name: name.into(),
            status: CheckStatus::Critical,
            notes,
            service_id: service_id.into(),
            r#type: "maintenance".into(),
            ..HealthCheck::default()
        };
        let spec = CheckSpec {
            probe: Probe::Manual,
            interval_ms: 0,
            timeout_ms: 0,
            deregister_critical_after_ms: None,
        };
        self.add_check_inner(check, spec)?;
        self.persist();
        Ok(())
    }

    /// A periodic check's result. Returns false when the runner must stop
    /// (its check was removed or replaced).
    pub(super) fn check_result(
        &self,
        id: &str,
        generation: u64,
        status: CheckStatus,
        output: &str,
    ) -> bool {
        let now = self.now_ms();
        {
            let mut inner = self.inner.lock().expect("agent lock");
            if inner.generations.get(id) != Some(&generation) {
                return false;
            }
            if crate::mutants::enabled(crate::mutants::Mutant::DropCriticalStatus)
                && status == CheckStatus::Critical
            {
                return true;
            }
            if inner
                .ae
                .checks()
                .get(id)
                .is_some_and(|c| c.status != status)
            {
                self.telemetry.check_transition.inc(&[status.as_str()]);
            }
            inner.ae.update_check(now, id, status, output);
            Self::track_critical(&mut inner, id, status, now);
        }
        self.wake.notify_one();
        true
    }

    fn track_critical(inner: &mut Inner, id: &str, status: CheckStatus, now: u64) {
        if status == CheckStatus::Critical {
            inner.critical_since.entry(id.to_string()).or_insert(now);
        } else {
            inner.critical_since.remove(id);
        }
    }

    fn validate_spec(&self, spec: &CheckSpec) -> Result<(), LocalError> {
        if matches!(spec.probe, Probe::Script { .. }) && !self.enable_script_checks {
            return Err(LocalError::Invalid(
                "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true".into(),
            ));
        }
        Ok(())
    }

    fn add_service_inner(&self, service: NodeService) {
        let now = self.now_ms();
        self.inner
            .lock()
            .expect("agent lock")
            .ae
            .add_service(now, service);
        self.wake.notify_one();
    }

    fn add_check_inner(&self, mut check: HealthCheck, spec: CheckSpec) -> Result<(), LocalError> {
        if check.check_id.is_empty() {
            check.check_id = check.name.clone();
        }
        if check.check_id.is_empty() {
            return Err(LocalError::Invalid("Missing check name".into()));
        }
        let now = self.now_ms();
        let id = check.check_id.clone();
        check.r#type = if check.r#type.is_empty() {
            spec.type_name().into()
        } else {
            check.r#type
        };
        let generation = {
            let mut inner = self.inner.lock().expect("agent lock");
            if !check.service_id.is_empty() && !inner.ae.services().contains_key(&check.service_id)
            {
                return Err(LocalError::NotFound(format!(
                    "ServiceID {:?} does not exist",
                    check.service_id
                )));
            }
            let generation = inner.next_generation;
            inner.next_generation += 1;
            inner.generations.insert(id.clone(), generation);
            if let Probe::Ttl { ttl_ms } = spec.probe {
                inner.ttl_deadlines.insert(id.clone(), now + ttl_ms);
            } else {
                inner.ttl_deadlines.remove(&id);
            }
            let status = check.status;
            inner.ae.add_check(now, check);
            Self::track_critical(&mut inner, &id, status, now);
            inner.specs.insert(id.clone(), spec.clone());
            if let Some(old) = inner.runners.remove(&id) {
                old.abort();
            }
            generation
        };
        if spec.is_periodic() {
            // A runner holds a weak reference only: it ends with the agent.
            let task = tokio::spawn(checks::run_periodic(
                self.me.clone(),
                id.clone(),
                generation,
                spec,
            ));
            self.inner
                .lock()
                .expect("agent lock")
                .runners
                .insert(id, task);
        }
        self.wake.notify_one();
        Ok(())
    }

    fn remove_check_inner(&self, id: &str) -> bool {
        let now = self.now_ms();
        let removed = self
            .inner
            .lock()
            .expect("agent lock")
            .ae
            .remove_check(now, id);
        self.forget_check_runtime(id);
        self.wake.notify_one();
        removed
    }

    fn forget_check_runtime(&self, id: &str) {
        let mut inner = self.inner.lock().expect("agent lock");
        inner.specs.remove(id);
        inner.generations.remove(id);
        inner.ttl_deadlines.remove(id);
        inner.critical_since.remove(id);
        if let Some(t) = inner.runners.remove(id) {
            t.abort();
        }
    }

    fn persist(&self) {
        let state = {
            let inner = self.inner.lock().expect("agent lock");
            let own =
                |kind: ItemKind, id: &str| inner.from_config.contains_key(&(kind, id.to_string()));
            Persisted {
                services: inner
                    .ae
                    .services()
                    .values()
                    .filter(|s| !own(ItemKind::Service, &s.id))
                    .cloned()
                    .collect(),
                checks: inner
                    .ae
                    .checks()
                    .values()
                    .filter(|c| {
                        !own(ItemKind::Check, &c.check_id) && !own(ItemKind::Service, &c.service_id)
                    })
                    .filter_map(|c| {
                        inner.specs.get(&c.check_id).map(|spec| LocalCheck {
                            check: c.clone(),
                            spec: spec.clone(),
                        })
                    })
                    .collect(),
            }
        };
        if let Err(e) = self
            .disk
            .write_atomic(LOCAL_FILE, &json_record(KIND_AGENT_LOCAL, &state))
        {
            // The registration holds in memory and reaches the catalog;
            // only a restart before the next successful write loses it.
            warn!(file = %self.disk.describe(LOCAL_FILE), error = %e, "could not persist local registrations");
        }
    }

    /// TTL checks past their deadline turn critical; services whose check
    /// has been critical for longer than its `deregister_critical_after`
    /// are removed. Returns the earliest future deadline.
    fn housekeeping(&self, now: u64) -> Option<u64> {
        let mut reap = Vec::new();
        let next = {
            let mut inner = self.inner.lock().expect("agent lock");
            let expired: Vec<String> = inner
                .ttl_deadlines
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                inner.ttl_deadlines.remove(&id);
                inner
                    .ae
                    .update_check(now, &id, CheckStatus::Critical, "TTL expired");
                Self::track_critical(&mut inner, &id, CheckStatus::Critical, now);
            }
            for (id, since) in &inner.critical_since {
                let limit = inner
                    .specs
                    .get(id)
                    .and_then(|s| s.deregister_critical_after_ms);
                if let (Some(limit), Some(check)) = (limit, inner.ae.checks().get(id)) {
                    if now >= since + limit && !check.service_id.is_empty() {
                        reap.push(check.service_id.clone());
                    }
                }
            }
            let reap_at = inner.critical_since.iter().filter_map(|(id, since)| {
                inner
                    .specs
                    .get(id)
                    .and_then(|s| s.deregister_critical_after_ms)
                    .map(|l| since + l)
            });
            inner
                .ttl_deadlines
                .values()
                .copied()
                .chain(reap_at)
                .filter(|t| *t > now)
                .min()
        };
        reap.dedup();
        for id in reap {
            info!(service = %id, "deregistering a service whose check stayed critical");
            let _ = self.deregister_service(&id);
        }
        next
    }

    /// Carries anti-entropy's outputs to the cluster, for the agent's
    /// lifetime.
    async fn sync_driver(me: Weak<LocalAgent>) {
        let mut leader_known = true;
        loop {
            let Some(agent) = me.upgrade() else { return };
            let now = agent.now_ms();
            let known = agent.cluster.known_leader();
            if known && !leader_known {
                agent.inner.lock().expect("agent lock").ae.reachable(now);
            }
            leader_known = known;
            let housekeeping_at = agent.housekeeping(now);
            let output = {
                let _batch = agent.batch.lock().expect("batch lock");
                let mut inner = agent.inner.lock().expect("agent lock");
                inner.ae.handle_timeout(now);
                inner.ae.poll_output()
            };
            match output {
                Some(Output::Fetch)
                    if crate::mutants::enabled(crate::mutants::Mutant::RestartOverwritesStatus)
                        && agent.awaiting_catalog() =>
                {
                    // The old way: write at once, as if the catalog held
                    // nothing for this node.
                    let now = agent.now_ms();
                    let mut inner = agent.inner.lock().expect("agent lock");
                    inner.ae.catalog_view(now, &Default::default());
                    continue;
                }
                Some(Output::Fetch) => {
                    let node = agent.node_name();
                    let read = ReadRequest {
                        query: CatalogQuery::Node { node }.into(),
                        consistency: Consistency::Default,
                        min_index: 0,
                        wait_ms: 0,
                    };
                    let result = agent.cluster.read(read).await;
                    let now = agent.now_ms();
                    let mut inner = agent.inner.lock().expect("agent lock");
                    match result {
                        Ok(r) => match r.result {
                            QueryResult::Catalog(slice) => {
                                let loaded: Vec<String> =
                                    inner.ae.awaiting_catalog().iter().cloned().collect();
                                inner.ae.catalog_view(now, &slice);
                                // Loaded checks may have taken the catalog's status.
                                for id in loaded {
                                    let status = inner.ae.checks().get(&id).map(|c| c.status);
                                    if let Some(status) = status {
                                        Self::track_critical(&mut inner, &id, status, now);
                                    }
                                }
                            }
                            _ => inner.ae.sync_failed(now),
                        },
                        Err(e) => {
                            debug!(error = %e, "anti-entropy could not read the catalog");
                            inner.ae.sync_failed(now);
                        }
                    }
                    continue;
                }
                Some(Output::Sync { generation, sync }) => {
                    if crate::mutants::enabled(crate::mutants::Mutant::SyncKeepsRemoved) {
                        for cmd in upsert_only(*sync) {
                            let _ = agent.cluster.write(cmd.into()).await;
                        }
                        let now = agent.now_ms();
                        agent
                            .inner
                            .lock()
                            .expect("agent lock")
                            .ae
                            .sync_done(now, generation);
                        continue;
                    }
                    let result = agent
                        .cluster
                        .write(CatalogCommand::SyncNode(sync).into())
                        .await;
                    let now = agent.now_ms();
                    let mut inner = agent.inner.lock().expect("agent lock");
                    match result {
                        Ok((_, CommandResult::Bool(true))) => {
                            agent.telemetry.anti_entropy_sync.inc(&[]);
                            inner.ae.sync_done(now, generation)
                        }
                        Ok((_, other)) => {
                            warn!(result = ?other, "the catalog refused this node's state");
                            agent.telemetry.anti_entropy_error.inc(&[]);
                            inner.ae.sync_failed(now);
                        }
                        Err(e) => {
                            debug!(error = %e, "anti-entropy sync failed; will retry");
                            agent.telemetry.anti_entropy_error.inc(&[]);
                            inner.ae.sync_failed(now);
                        }
                    }
                    continue;
                }
                None => {}
            }
            let due = {
                let inner = agent.inner.lock().expect("agent lock");
                inner.ae.poll_timeout()
            };
            let wake_at = [due, housekeeping_at].into_iter().flatten().min();
            let sleep_ms = wake_at.map_or(1_000, |t| t.saturating_sub(now).clamp(1, 1_000));
            // Holds the agent for at most a second; `stop` ends the task.
            let _ = clock::timeout(Duration::from_millis(sleep_ms), agent.wake.notified()).await;
        }
    }

    async fn heartbeat_loop(me: Weak<LocalAgent>, node: String) {
        loop {
            let Some(agent) = me.upgrade() else { return };
            let cluster = agent.cluster.clone();
            drop(agent);
            // Each heartbeat gets one interval: one stuck on a connection
            // that stopped answering must not hold back the next (the
            // leader declares a node failed after five silent intervals).
            let interval = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
            let started = Instant::now();
            match clock::timeout(interval, cluster.heartbeat(node.clone())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "heartbeat not delivered"),
                Err(_) => debug!("heartbeat timed out"),
            }
            clock::sleep(interval.saturating_sub(started.elapsed())).await;
        }
    }
}

/// [`crate::mutants::Mutant::SyncKeepsRemoved`]: the node's state as
/// registrations, which add and update but never remove.
fn upsert_only(sync: mesh_core::state::catalog::NodeSync) -> Vec<CatalogCommand> {
    use mesh_core::state::catalog::Registration;
    let register = |service, checks| {
        CatalogCommand::Register(Box::new(Registration {
            node: sync.node.clone(),
            skip_node_update: false,
            service,
            checks,
        }))
    };
    let mut out: Vec<CatalogCommand> = sync
        .services
        .iter()
        .map(|s| {
            let checks = sync
                .checks
                .iter()
                .filter(|c| c.service_id == s.id)
                .cloned()
                .collect();
            register(Some(s.clone()), checks)
        })
        .collect();
    let node_checks = sync
        .checks
        .iter()
        .filter(|c| c.service_id.is_empty())
        .cloned()
        .collect();
    out.push(register(None, node_checks));
    out
}
