//! Node liveness, decided by the leader: which agents' hosts are gone.
//!
//! Every agent (servers included) sends the leader a heartbeat every
//! [`HEARTBEAT_INTERVAL_MS`]. The leader's [`Liveness`] turns a node's
//! `serfHealth` check critical once it has heard nothing from it for
//! [`LivenessTiming::failure_after_ms`], and passing again at its first
//! heartbeat after that. Its decisions are outputs ([`Output::SetHealth`])
//! that the server commits to the catalog through Raft; a decision whose
//! write failed is taken again ([`Liveness::write_failed`]).
//!
//! # Why not SWIM gossip
//!
//! Consul runs memberlist (SWIM with Lifeguard) between all agents. Here
//! every agent already holds an RPC path to the leader, and the leader is
//! the only one who writes the verdict to the catalog, so it decides from
//! what it hears directly: one timer per node, no extra port, no probe
//! fan-out, and a detection bound that is simply the failure timeout plus
//! one Raft commit. What it gives up: an agent cut off from the leader but
//! not from its peers is declared failed (SWIM would keep it alive through
//! indirect probes). For a mesh whose catalog is served by the leader, an
//! agent that cannot reach the leader cannot sync its services either, so
//! "critical" is the honest answer.
//!
//! # Leader changes
//!
//! A new leader knows nothing of the old one's timers: it gives every node
//! in the catalog a full timeout from the moment it took over (as Consul's
//! new leader restarts session TTLs), so no node is declared failed because
//! leadership moved. A node already critical stays critical until it
//! heartbeats.
//!
//! Time is passed in (ms on the leader's monotonic clock); nothing here
//! reads a clock.

use std::collections::{BTreeMap, VecDeque};

use crate::state::catalog::CheckStatus;

/// How often agents send heartbeats.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;

/// The failure timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessTiming {
    /// Silence after which a node is failed. Five heartbeat intervals: with
    /// 10 % of heartbeats lost independently, a live node is declared
    /// failed with probability 10⁻⁵ per window.
    pub failure_after_ms: u64,
}

impl Default for LivenessTiming {
    fn default() -> Self {
        LivenessTiming {
            failure_after_ms: 5 * HEARTBEAT_INTERVAL_MS,
        }
    }
}

/// A decision for the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Set the node's `serfHealth` check.
    SetHealth {
        /// The node.
        node: String,
        /// Passing (alive) or critical (failed).
        status: CheckStatus,
        /// The check's output, for operators.
        output: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Tracked {
    /// When the node is failed unless it heartbeats first.
    deadline_ms: u64,
    /// The status the catalog has (or is being written).
    status: Option<CheckStatus>,
}

/// The leader's view of which nodes are alive. Created when a server
/// becomes leader, dropped when it stops leading.
#[derive(Clone, Debug)]
pub struct Liveness {
    timing: LivenessTiming,
    nodes: BTreeMap<String, Tracked>,
    outputs: VecDeque<Output>,
}

impl Liveness {
    /// Took over leadership at `now_ms`: every node of the catalog (name
    /// and its current `serfHealth` status, if it has one) gets a full
    /// timeout.
    pub fn new(
        timing: LivenessTiming,
        now_ms: u64,
        catalog: impl IntoIterator<Item = (String, Option<CheckStatus>)>,
    ) -> Self {
        let nodes = catalog
            .into_iter()
            .map(|(node, status)| {
                let t = Tracked {
                    deadline_ms: now_ms + timing.failure_after_ms,
                    status,
                };
                (node, t)
            })
            .collect();
        Liveness {
            timing,
            nodes,
            outputs: VecDeque::new(),
        }
    }

    /// A heartbeat from `node` arrived. A node the catalog does not have
    /// yet is tracked from now on (its agent registers it soon); a node
    /// not known passing becomes passing.
    pub fn heartbeat(&mut self, now_ms: u64, node: &str, in_catalog: bool) {
        let deadline_ms = now_ms + self.timing.failure_after_ms;
        let t = self.nodes.entry(node.to_string()).or_insert(Tracked {
            deadline_ms,
            status: None,
        });
        t.deadline_ms = deadline_ms;
        if in_catalog && t.status != Some(CheckStatus::Passing) {
            t.status = Some(CheckStatus::Passing);
            self.outputs.push_back(Output::SetHealth {
                node: node.to_string(),
                status: CheckStatus::Passing,
                output: "Agent alive and reachable".into(),
            });
        }
    }

    /// A node left the catalog: stop tracking it.
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// The write of a decision about `node` failed: take it again at the
    /// next heartbeat or timeout.
    pub fn write_failed(&mut self, node: &str) {
        if let Some(t) = self.nodes.get_mut(node) {
            t.status = None;
        }
    }

    /// Declares failed every node whose deadline passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        for (node, t) in &mut self.nodes {
            if now_ms >= t.deadline_ms && t.status != Some(CheckStatus::Critical) {
                t.status = Some(CheckStatus::Critical);
                self.outputs.push_back(Output::SetHealth {
                    node: node.clone(),
                    status: CheckStatus::Critical,
                    output: format!(
                        "Agent not live or unreachable: no heartbeat for {} ms",
                        self.timing.failure_after_ms
                    ),
                });
            }
        }
    }

    /// The next decision, if any. Drain after every call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest deadline of a node not yet declared failed.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|t| t.status != Some(CheckStatus::Critical))
            .map(|t| t.deadline_ms)
            .min()
    }

    /// Whether `node` is tracked and not declared failed.
    pub fn is_alive(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|t| t.status != Some(CheckStatus::Critical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> LivenessTiming {
        LivenessTiming {
            failure_after_ms: 100,
        }
    }

    fn drain(l: &mut Liveness) -> Vec<Output> {
        std::iter::from_fn(|| l.poll_output()).collect()
    }

    fn set(node: &str, status: CheckStatus) -> (String, CheckStatus) {
        (node.to_string(), status)
    }

    fn statuses(outs: Vec<Output>) -> Vec<(String, CheckStatus)> {
        outs.into_iter()
            .map(|Output::SetHealth { node, status, .. }| (node, status))
            .collect()
    }

    #[test]
    fn a_new_leader_gives_every_node_a_full_timeout() {
        let mut l = Liveness::new(
            timing(),
            1_000,
            [
                ("a".to_string(), Some(CheckStatus::Passing)),
                ("b".to_string(), None),
            ],
        );
        assert_eq!(l.poll_timeout(), Some(1_100));
        l.handle_timeout(1_099);
        assert!(drain(&mut l).is_empty());
        l.heartbeat(1_050, "a", true);
        assert!(drain(&mut l).is_empty(), "a is already passing");
        l.handle_timeout(1_100);
        assert_eq!(statuses(drain(&mut l)), [set("b", CheckStatus::Critical)]);
        assert_eq!(l.poll_timeout(), Some(1_150), "only a is still timed");
        l.handle_timeout(1_100);
        assert!(drain(&mut l).is_empty(), "decided once");
    }

    #[test]
    fn a_failed_node_returns_at_its_first_heartbeat() {
        let mut l = Liveness::new(
            timing(),
            0,
            [("a".to_string(), Some(CheckStatus::Critical))],
        );
        assert_eq!(l.poll_timeout(), None, "already failed");
        l.heartbeat(10, "a", true);
        assert_eq!(statuses(drain(&mut l)), [set("a", CheckStatus::Passing)]);
        assert!(l.is_alive("a"));
        l.handle_timeout(110);
        assert_eq!(statuses(drain(&mut l)), [set("a", CheckStatus::Critical)]);
        assert!(!l.is_alive("a"));
    }

    #[test]
    fn a_node_not_in_the_catalog_is_timed_but_not_written() {
        let mut l = Liveness::new(timing(), 0, []);
        l.heartbeat(5, "new", false);
        assert!(drain(&mut l).is_empty(), "no catalog row to set yet");
        l.heartbeat(6, "new", true);
        assert_eq!(statuses(drain(&mut l)), [set("new", CheckStatus::Passing)]);
        l.forget("new");
        l.handle_timeout(1_000);
        assert!(drain(&mut l).is_empty());
    }

    #[test]
    fn a_failed_write_is_decided_again() {
        let mut l = Liveness::new(timing(), 0, [("a".to_string(), None)]);
        l.handle_timeout(100);
        assert_eq!(drain(&mut l).len(), 1);
        l.write_failed("a");
        l.handle_timeout(101);
        assert_eq!(statuses(drain(&mut l)), [set("a", CheckStatus::Critical)]);
    }
}
