//! `X-Consul-Index` never goes backwards for one client's default-mode
//! reads. Consul's blocking-query docs only promise this "in general" and
//! tell clients to reset an index that goes backwards; here default reads
//! are linearizable (each is served by a leader that confirmed its
//! leadership with a quorum after the previous one returned), so the index
//! a later read reports can never be older than an earlier one's.

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
