//! `X-Consul-Index` never goes backwards for one client's default-mode
//! reads. Consul's blocking-query docs only promise this "in general" and
//! tell clients to reset an index that goes backwards; here default reads
//! are linearizable (each is served by a leader that confirmed its
//! leadership with a quorum after the previous one returned), so the index
//! a later read reports can never be older than an earlier one's.
//!
//! What the index is depends on the read (`mesh_core::wire::query_index`):
//! a read of one existing key carries that key's `ModifyIndex`, a prefix
//! read the highest index under it, a catalog read the last write that
//! changed what it returns. The workload reads the key it last wrote, whose
//! index only grows from one read to the next, so there this checks the
//! per-key promise; a stale read there is caught as a missing key or by
//! linearizability. The per-service form is checked on the agents' watch
//! of fcs's health (`crate::agents`).

/// The last index one client saw.
#[derive(Default, Debug)]
pub struct MonotonicIndex {
    last: u64,
}

impl MonotonicIndex {
    /// Records the index of a read that started after the previous one
    /// returned.
    pub fn observe(&mut self, client: usize, index: u64) -> Result<(), String> {
        if index < self.last {
            return Err(format!(
                "client {client}: X-Consul-Index went back from {} to {index}",
                self.last
            ));
        }
        self.last = index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_going_back_is_caught() {
        let mut c = MonotonicIndex::default();
        c.observe(0, 5).unwrap();
        c.observe(0, 5).unwrap();
        c.observe(0, 9).unwrap();
        assert!(c.observe(0, 8).is_err());
    }
}
