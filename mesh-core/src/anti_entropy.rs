//! Anti-entropy: keeping the catalog's rows for this node equal to what
//! the agent knows.
//!
//! The agent's local services and checks are authoritative (as in
//! Consul). [`AntiEntropy`] holds them and decides when to send the node's
//! whole state to the servers ([`Output::Sync`], applied as one
//! `CatalogSyncNode` command that also removes rows the agent does not
//! know):
//!
//! - after local changes (once the caller calls `handle_timeout`), at most
//!   one sync in flight and at least
//!   [`SyncTiming::min_gap_ms`] between two (a flapping check costs at most
//!   one write per gap, whatever its rate);
//! - a change of a check's output alone waits for the next periodic round
//!   (Consul's `check_update_interval`): outputs change on every run of an
//!   HTTP check, statuses rarely;
//! - periodically, every [`SyncTiming::interval_ms`] plus a seeded stagger
//!   so agents started together do not sync together: first it reads the
//!   catalog's view of the node ([`Output::Fetch`]) and writes only if it
//!   differs, so a quiet cluster costs reads, not Raft entries;
//! - after a failed sync, again after a backoff that doubles up to
//!   [`SyncTiming::max_backoff_ms`];
//! - at start, when the agent loaded checks (from its data dir or its
//!   configuration), it reads the catalog before it writes: a loaded check
//!   that has not run yet keeps the status the catalog holds for it,
//!   instead of overwriting it with the initial `critical`. A restarted
//!   agent thus never takes a healthy instance out of service for the
//!   time its checks need to run once (Consul's does: sidecars and DNS
//!   drop the instance until the check passes again). The check's first
//!   run then decides, as always.
//!
//! Time is passed in; randomness is a seeded generator; every collection is
//! ordered. Drain [`AntiEntropy::poll_output`] after each call and wake at
//! [`AntiEntropy::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::state::catalog::{
    CatalogSlice, CheckStatus, HealthCheck, Node, NodeService, NodeSync, SERF_HEALTH_CHECK,
};

/// Timing of anti-entropy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncTiming {
    /// Period of the full comparison with the catalog (Consul: 1 min for
    /// small clusters).
    pub interval_ms: u64,
    /// Least time between two syncs caused by local changes.
    pub min_gap_ms: u64,
    /// First retry delay after a failed sync.
    pub first_backoff_ms: u64,
    /// Longest retry delay.
    pub max_backoff_ms: u64,
}

impl Default for SyncTiming {
    fn default() -> Self {
        SyncTiming {
            interval_ms: 60_000,
            min_gap_ms: 100,
            first_backoff_ms: 250,
            max_backoff_ms: 5_000,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Read the catalog's rows for this node (a `CatalogQuery::Node`) and
    /// pass them to [`AntiEntropy::catalog_view`], or report
    /// [`AntiEntropy::sync_failed`].
    Fetch,
    /// Write this state (a `CatalogSyncNode`) and report the outcome with
    /// [`AntiEntropy::sync_done`] or [`AntiEntropy::sync_failed`], passing
    /// `generation` back.
    Sync {
        /// The local state's generation this sync carries.
        generation: u64,
        /// The node's complete state.
        sync: Box<NodeSync>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InFlight {
    Fetch,
    Sync(u64),
}

/// The agent's local state and its synchronization with the catalog.
#[derive(Clone, Debug)]
pub struct AntiEntropy {
    timing: SyncTiming,
    node: Node,
    services: BTreeMap<String, NodeService>,
    checks: BTreeMap<String, HealthCheck>,
    /// Bumped on every change that must reach the catalog soon.
    generation: u64,
    /// The generation the catalog is known to hold.
    synced: u64,
    /// Output changes are waiting for the periodic round.
    output_pending: bool,
    in_flight: Option<InFlight>,
    last_sync_ms: Option<u64>,
    next_round_ms: u64,
    retry_at_ms: Option<u64>,
    backoff_ms: u64,
    rng: u64,
    outputs: VecDeque<Output>,
    /// Successful writes, for tests and metrics.
    syncs: u64,
    /// Still loading (until [`AntiEntropy::loaded`] or the first step):
    /// checks added now were loaded at start.
    fresh: bool,
    /// Checks loaded at start that have not run since: they take the
    /// catalog's status when the first read arrives.
    unobserved: BTreeSet<String>,
}

impl AntiEntropy {
    /// An agent for `node` with no services yet, started at `now_ms`. The
    /// first round runs at once (a restarted agent re-syncs what it
    /// loaded); later rounds are staggered by `seed`.
    pub fn new(timing: SyncTiming, node: Node, seed: u64, now_ms: u64) -> Self {
        AntiEntropy {
            timing,
            node,
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            generation: 1,
            synced: 0,
            output_pending: false,
            in_flight: None,
            last_sync_ms: None,
            next_round_ms: now_ms,
            retry_at_ms: None,
            backoff_ms: timing.first_backoff_ms,
            rng: seed | 1,
            outputs: VecDeque::new(),
            syncs: 0,
            fresh: true,
            unobserved: BTreeSet::new(),
        }
    }

    /// The local services, by id.
    pub fn services(&self) -> &BTreeMap<String, NodeService> {
        &self.services
    }

    /// The local checks, by id.
    pub fn checks(&self) -> &BTreeMap<String, HealthCheck> {
        &self.checks
    }

    /// This node's row.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Whether the catalog holds every change so far (outputs aside).
    pub fn in_sync(&self) -> bool {
        self.synced == self.generation
    }

    /// Successful syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// Adds or replaces a service.
    pub fn add_service(&mut self, now_ms: u64, service: NodeService) {
        if self.services.get(&service.id) != Some(&service) {
            // Its checks carry its name and tags, as the catalog's do.
            for c in self
                .checks
                .values_mut()
                .filter(|c| c.service_id == service.id)
            {
                c.service_name = service.service.clone();
                c.service_tags = service.tags.clone();
            }
            self.services.insert(service.id.clone(), service);
            self.changed(now_ms);
        }
    }

    /// Removes a service and its checks; whether it existed.
    pub fn remove_service(&mut self, now_ms: u64, id: &str) -> bool {
        if self.services.remove(id).is_none() {
            return false;
        }
        self.checks.retain(|_, c| c.service_id != id);
        let checks = &self.checks;
        self.unobserved.retain(|c| checks.contains_key(c));
        self.changed(now_ms);
        true
    }

    /// Adds or replaces a check (its node is set to this node's).
    pub fn add_check(&mut self, now_ms: u64, mut check: HealthCheck) {
        check.node = self.node.node.clone();
        if let Some(s) = self.services.get(&check.service_id) {
            check.service_name = s.service.clone();
            check.service_tags = s.tags.clone();
        }
        if self.fresh {
            self.unobserved.insert(check.check_id.clone());
        } else {
            // Registered (again) since: its own status stands.
            self.unobserved.remove(&check.check_id);
        }
        if self.checks.get(&check.check_id) != Some(&check) {
            self.checks.insert(check.check_id.clone(), check);
            self.changed(now_ms);
        }
    }

    /// Removes a check; whether it existed.
    pub fn remove_check(&mut self, now_ms: u64, id: &str) -> bool {
        self.unobserved.remove(id);
        if self.checks.remove(id).is_none() {
            return false;
        }
        self.changed(now_ms);
        true
    }

    /// A check ran: a new status syncs soon, a new output alone waits for
    /// the periodic round. Returns false if there is no such check.
    pub fn update_check(
        &mut self,
        now_ms: u64,
        id: &str,
        status: CheckStatus,
        output: &str,
    ) -> bool {
        let Some(c) = self.checks.get_mut(id) else {
            return false;
        };
        self.unobserved.remove(id);
        if c.status != status {
            c.status = status;
            c.output = output.to_string();
            self.changed(now_ms);
        } else if c.output != output {
            c.output = output.to_string();
            self.output_pending = true;
        }
        true
    }

    /// The catalog's rows for this node arrived (answer to [`Output::Fetch`]).
    pub fn catalog_view(&mut self, now_ms: u64, view: &CatalogSlice) {
        if self.in_flight != Some(InFlight::Fetch) {
            return;
        }
        self.in_flight = None;
        self.retry_at_ms = None;
        self.backoff_ms = self.timing.first_backoff_ms;
        self.adopt_catalog_statuses(view);
        if self.differs(view) || self.output_pending {
            // Force a write even if no local change happened.
            self.generation += 1;
        } else {
            self.synced = self.generation;
        }
        self.step(now_ms);
    }

    /// Loaded checks that have not run yet take the status (and output)
    /// the catalog holds for them; checks the catalog does not know keep
    /// their initial status. Either way they are settled.
    fn adopt_catalog_statuses(&mut self, view: &CatalogSlice) {
        for id in std::mem::take(&mut self.unobserved) {
            let theirs = view
                .checks
                .iter()
                .find(|c| c.check_id == id && c.node == self.node.node);
            if let (Some(theirs), Some(ours)) = (theirs, self.checks.get_mut(&id)) {
                if theirs.service_id == ours.service_id {
                    ours.status = theirs.status;
                    ours.output = theirs.output.clone();
                }
            }
        }
    }

    /// Everything known at start (data dir, configuration) is in: checks
    /// added from now on are registrations, whose status stands.
    pub fn loaded(&mut self) {
        self.fresh = false;
    }

    /// Loaded checks still waiting for the catalog's statuses.
    pub fn awaiting_catalog(&self) -> &BTreeSet<String> {
        &self.unobserved
    }

    /// The sync carrying `generation` was committed.
    pub fn sync_done(&mut self, now_ms: u64, generation: u64) {
        if self.in_flight != Some(InFlight::Sync(generation)) {
            return;
        }
        self.in_flight = None;
        self.synced = self.synced.max(generation);
        self.retry_at_ms = None;
        self.backoff_ms = self.timing.first_backoff_ms;
        self.syncs += 1;
        self.step(now_ms);
    }

    /// The fetch or sync in flight failed (no leader, timeout, outcome
    /// unknown): try again after a backoff.
    pub fn sync_failed(&mut self, now_ms: u64) {
        if self.in_flight.is_none() {
            return;
        }
        let was_fetch = self.in_flight == Some(InFlight::Fetch);
        self.in_flight = None;
        let jitter = self.next_random() % (self.backoff_ms / 4 + 1);
        let retry_at = now_ms + self.backoff_ms + jitter;
        self.retry_at_ms = Some(retry_at);
        if was_fetch {
            // The round did not happen: retry it, not a minute later.
            self.next_round_ms = retry_at;
        }
        self.backoff_ms = (self.backoff_ms * 2).min(self.timing.max_backoff_ms);
    }

    /// The servers are reachable again (a leader became known after none
    /// was): a retry waiting out its backoff runs now, with the backoff
    /// reset. Without it, changes made while cut off reached the catalog
    /// up to a full backoff after the heal.
    pub fn reachable(&mut self, now_ms: u64) {
        if self.retry_at_ms.is_some_and(|t| t > now_ms) {
            self.retry_at_ms = Some(now_ms);
            self.backoff_ms = self.timing.first_backoff_ms;
            if self.in_sync() {
                self.next_round_ms = now_ms;
            }
        }
    }

    /// Runs what is due.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.step(now_ms);
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`AntiEntropy::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(at) = self.retry_at_ms {
            return Some(at);
        }
        if self.in_sync() {
            return Some(self.next_round_ms);
        }
        // Out of sync, the next write goes out when the gap is over.
        Some(self.last_sync_ms.map_or(0, |t| t + self.timing.min_gap_ms))
    }

    /// A local change: the catalog is behind. No output yet: a caller
    /// making several changes (a service and its checks, a restart's
    /// restore) makes them all, then calls [`AntiEntropy::handle_timeout`],
    /// so a sync never carries half of them.
    fn changed(&mut self, _now_ms: u64) {
        self.generation += 1;
    }

    /// Starts a sync or a fetch if one is due and none is in flight.
    fn step(&mut self, now_ms: u64) {
        if self.in_flight.is_some() || self.retry_at_ms.is_some_and(|t| now_ms < t) {
            return;
        }
        let retrying = self.retry_at_ms.take().is_some();
        self.fresh = false;
        if !self.unobserved.is_empty() {
            // Loaded checks: read the catalog's statuses before writing.
            self.schedule_round(now_ms);
            self.in_flight = Some(InFlight::Fetch);
            self.outputs.push_back(Output::Fetch);
        } else if !self.in_sync() {
            let gap_over = match self.last_sync_ms {
                None => true,
                Some(t) => now_ms >= t + self.timing.min_gap_ms,
            };
            if gap_over || retrying {
                self.send_sync(now_ms);
            }
        } else if now_ms >= self.next_round_ms {
            self.schedule_round(now_ms);
            self.in_flight = Some(InFlight::Fetch);
            self.outputs.push_back(Output::Fetch);
        }
    }

    /// A write or a fetch counts as the round: the next is a full
    /// interval (plus stagger) away.
    fn schedule_round(&mut self, now_ms: u64) {
        let stagger = self.next_random() % (self.timing.interval_ms / 8 + 1);
        self.next_round_ms = now_ms + self.timing.interval_ms + stagger;
    }

    fn send_sync(&mut self, now_ms: u64) {
        self.in_flight = Some(InFlight::Sync(self.generation));
        self.last_sync_ms = Some(now_ms);
        self.schedule_round(now_ms);
        self.output_pending = false;
        self.outputs.push_back(Output::Sync {
            generation: self.generation,
            sync: Box::new(NodeSync {
                node: self.node.clone(),
                services: self.services.values().cloned().collect(),
                checks: self.checks.values().cloned().collect(),
            }),
        });
    }

    /// Whether the catalog's rows for this node differ from the local
    /// state (indexes, and checks the servers own, aside).
    fn differs(&self, view: &CatalogSlice) -> bool {
        let strip_node = |n: &Node| Node {
            create_index: 0,
            modify_index: 0,
            ..n.clone()
        };
        match view.nodes.first() {
            Some(n) if strip_node(n) == strip_node(&self.node) => {}
            _ => return true,
        }
        let theirs: Vec<NodeService> = view
            .services
            .iter()
            .map(|e| NodeService {
                create_index: 0,
                modify_index: 0,
                ..e.service.clone()
            })
            .collect();
        let ours: Vec<NodeService> = self.services.values().cloned().collect();
        if theirs != ours {
            return true;
        }
        let theirs: Vec<HealthCheck> = view
            .checks
            .iter()
            .filter(|c| c.check_id != SERF_HEALTH_CHECK)
            .map(|c| HealthCheck {
                create_index: 0,
                modify_index: 0,
                ..c.clone()
            })
            .collect();
        let ours: Vec<HealthCheck> = self.checks.values().cloned().collect();
        theirs != ours
    }

    /// xorshift64*: deterministic for a seed.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests;
