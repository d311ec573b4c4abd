//! Sub-seeds. Each component of a run (the swarm's fault profile, its
//! fault schedule, every workload client) draws from a generator of its
//! own, derived from the run's seed and the component's name. What one
//! component draws then does not depend on how much another drew: a
//! client's sequence of operations stays the same when a fault is removed
//! from the schedule, which keeps `sim minimize`'s shrunken runs close to
//! the original. Message timing still comes from madsim's one generator.

use mesh_core::hash::Fnv1a64;

/// The generator of `component` number `index` in this run.
#[cfg(madsim)]
pub fn rng(component: &str, index: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(derive(
        madsim::runtime::Handle::current().seed(),
        component,
        index,
    ))
}

/// The sub-seed of `component` number `index` under run seed `seed`.
pub fn derive(seed: u64, component: &str, index: u64) -> u64 {
    let mut h = Fnv1a64::new();
    h.u64(seed);
    h.len_prefixed(component.as_bytes());
    h.u64(index);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_seeds_differ_by_seed_component_and_index() {
        let base = derive(7, "client", 0);
        assert_eq!(base, derive(7, "client", 0));
        assert_ne!(base, derive(8, "client", 0));
        assert_ne!(base, derive(7, "client", 1));
        assert_ne!(base, derive(7, "schedule", 0));
    }
}
