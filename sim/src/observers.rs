//! Feeds the checkers from periodic samples of the live servers, and
//! election safety also from every committed vote any server saved since
//! the last sample (`mesh_net::vote_log`), so a leader too short-lived for
//! any sample is still seen.

use std::collections::BTreeMap;

use crate::checkers::{election, log_matching, state_machine};
use crate::cluster::SimCluster;

/// Every checker fed by periodic sampling of the live servers.
#[derive(Default)]
pub struct Observers {
    /// Election safety.
    pub election: election::ElectionSafety,
    /// State-machine safety.
    pub state_machine: state_machine::StateMachineSafety,
    /// Log matching.
    pub log_matching: log_matching::LogMatching,
    samples: u64,
    /// Names of the servers seen running, by Raft node id.
    names: BTreeMap<u64, String>,
    /// Committed votes seen (how much the vote log gave).
    pub committed_votes: u64,
}

/// Logs are compared on every this many samples: copying every log is the
/// costliest observation, and divergence persists until repaired.
const LOG_SAMPLE_EVERY: u64 = 10;

/// A server's name by its Raft node id, once seen running.
fn name(names: &BTreeMap<u64, String>, id: u64) -> String {
    match names.get(&id) {
        Some(n) => format!("{n} (raft node {id})"),
        None => format!("raft node {id}"),
    }
}

impl Observers {
    /// Samples every live server once.
    pub fn sample(&mut self, cluster: &SimCluster) -> Result<(), String> {
        self.samples += 1;
        for i in cluster.running() {
            let Some(server) = cluster.server(i) else {
                continue;
            };
            self.names
                .entry(server.node_id())
                .or_insert_with(|| cluster.servers[i].name.clone());
            let m = server.metrics();
            if server.is_leader() {
                let names = &self.names;
                self.election
                    .observe(m.current_term, server.node_id(), |id| name(names, id))?;
            }
            let (applied, digest) = server.view().digest();
            self.state_machine
                .observe(&cluster.servers[i].name, applied, digest)?;
        }
        for vote in mesh_net::vote_log::VoteLog::drain() {
            self.committed_votes += 1;
            let names = &self.names;
            self.election
                .observe(vote.term, vote.leader, |id| name(names, id))?;
        }
        if self.samples % LOG_SAMPLE_EVERY == 1 {
            self.compare_logs(cluster)?;
        }
        Ok(())
    }

    /// Compares the Raft logs of every live server now.
    pub fn compare_logs(&mut self, cluster: &SimCluster) -> Result<(), String> {
        let logs: Vec<(&str, Vec<_>)> = cluster
            .running()
            .into_iter()
            .filter_map(|i| {
                let server = cluster.server(i)?;
                Some((cluster.servers[i].name.as_str(), server.log_fingerprints()))
            })
            .collect();
        self.log_matching.observe(&logs)
    }
}
