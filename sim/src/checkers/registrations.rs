//! No registration acknowledged to a user is lost, and no acknowledged
//! deregistration comes back: after the faults heal and anti-entropy ran,
//! every server's catalog holds exactly the instances the agents
//! acknowledged registering and did not later acknowledge removing
//! (Consul's anti-entropy contract: the agent's local state is
//! authoritative and the catalog converges to it).

use std::collections::BTreeSet;

/// What users were told, in order.
#[derive(Debug, Default, Clone)]
pub struct Acknowledged {
    events: Vec<(String, String, bool)>,
}

impl Acknowledged {
    /// An agent answered 200 to registering `service_id` on `node`.
    pub fn registered(&mut self, node: &str, service_id: &str) {
        self.events.push((node.into(), service_id.into(), true));
    }

    /// An agent answered 200 to removing `service_id` from `node`.
    pub fn deregistered(&mut self, node: &str, service_id: &str) {
        self.events.push((node.into(), service_id.into(), false));
    }

    /// Acknowledged operations so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The (node, instance) pairs that must be in the catalog.
    pub fn expected(&self) -> BTreeSet<(String, String)> {
        let mut live = BTreeSet::new();
        for (node, id, added) in &self.events {
            let key = (node.clone(), id.clone());
            if *added {
                live.insert(key);
            } else {
                live.remove(&key);
            }
        }
        live
    }

    /// Every (node, instance) ever acknowledged either way.
    fn touched(&self) -> BTreeSet<(String, String)> {
        self.events
            .iter()
            .map(|(n, i, _)| (n.clone(), i.clone()))
            .collect()
    }

    /// Checks one server's final catalog instances (of the nodes the
    /// acknowledgements are about).
    pub fn check(&self, server: &str, catalog: &BTreeSet<(String, String)>) -> Result<(), String> {
        let expected = self.expected();
        if let Some(missing) = expected.difference(catalog).next() {
            return Err(format!(
                "{server}: registration of {}/{} was acknowledged but is not in the catalog",
                missing.0, missing.1
            ));
        }
        for extra in catalog.difference(&expected) {
            if self.touched().contains(extra) {
                return Err(format!(
                    "{server}: {}/{} was acknowledged as deregistered but is still in the catalog",
                    extra.0, extra.1
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_lost_registration_and_a_returning_deregistration_are_caught() {
        let mut acks = Acknowledged::default();
        acks.registered("fcs00", "fcs");
        acks.registered("fcc00", "late");
        acks.deregistered("fcc00", "late");
        acks.check("s", &set(&[("fcs00", "fcs")])).unwrap();
        // Instances nobody acknowledged (a sidecar, another agent's) are not judged.
        acks.check("s", &set(&[("fcs00", "fcs"), ("x", "y")]))
            .unwrap();
        assert!(acks
            .check("s", &set(&[]))
            .unwrap_err()
            .contains("not in the catalog"));
        assert!(acks
            .check("s", &set(&[("fcs00", "fcs"), ("fcc00", "late")]))
            .unwrap_err()
            .contains("still in the catalog"));
    }
}
