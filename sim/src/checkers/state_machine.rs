//! State-machine safety: servers that applied the same log prefix hold the
//! same state (Raft paper, §5.4.3, "State Machine Safety"). Checked as
//! equal digests at equal applied index.

use std::collections::BTreeMap;

/// Digest seen per applied index.
#[derive(Default, Debug)]
pub struct StateMachineSafety {
    digests: BTreeMap<u64, (u64, String)>,
}

impl StateMachineSafety {
    /// Records `server`'s state digest at `applied` index.
    pub fn observe(&mut self, server: &str, applied: u64, digest: u64) -> Result<(), String> {
        match self.digests.get(&applied) {
            Some((d, other)) if *d != digest => Err(format!(
                "state machine safety violated: at applied index {applied} {other} has digest {d:#x} but {server} has {digest:#x}"
            )),
            Some(_) => Ok(()),
            None => {
                self.digests.insert(applied, (digest, server.to_string()));
                Ok(())
            }
        }
    }

    /// Number of distinct applied indexes observed.
    pub fn indexes_seen(&self) -> usize {
        self.digests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverging_states_are_caught() {
        let mut c = StateMachineSafety::default();
        c.observe("a", 5, 1).unwrap();
        c.observe("b", 5, 1).unwrap();
        assert!(c.observe("c", 5, 2).is_err());
    }
}
