//! Feeds the checkers from periodic samples of the live servers.

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
}

/// Logs are compared on every this many samples: copying every log is the
/// costliest observation, and divergence persists until repaired.
const LOG_SAMPLE_EVERY: u64 = 10;

impl Observers {
    /// Samples every live server once.
    pub fn sample(&mut self, cluster: &SimCluster) -> Result<(), String> {
        self.samples += 1;
        for i in cluster.running() {
            let Some(server) = cluster.server(i) else {
                continue;
            };
            let m = server.metrics();
            if server.is_leader() {
                self.election
                    .observe(m.current_term, &cluster.servers[i].name)?;
            }
            let (applied, digest) = server.view().digest();
            self.state_machine
                .observe(&cluster.servers[i].name, applied, digest)?;
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
