//! Feeds the checkers from periodic samples of the live servers.

use crate::checkers::{election, state_machine};
use crate::cluster::SimCluster;

/// Every checker fed by periodic sampling of the live servers.
#[derive(Default)]
pub struct Observers {
    /// Election safety.
    pub election: election::ElectionSafety,
    /// State-machine safety.
    pub state_machine: state_machine::StateMachineSafety,
}

impl Observers {
    /// Samples every live server once.
    pub fn sample(&mut self, cluster: &SimCluster) -> Result<(), String> {
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
        Ok(())
    }
}
