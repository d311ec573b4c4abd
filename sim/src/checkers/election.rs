//! Election safety: at most one leader can be elected in a given term
//! (Raft paper, §5.2 and Figure 3).

use std::collections::BTreeMap;

/// Leaders seen per term.
#[derive(Default, Debug)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, String>,
}

impl ElectionSafety {
    /// Records that `server` claimed leadership in `term`.
    pub fn observe(&mut self, term: u64, server: &str) -> Result<(), String> {
        match self.leaders.get(&term) {
            Some(other) if other != server => Err(format!(
                "election safety violated: {other} and {server} both led term {term}"
            )),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, server.to_string());
                Ok(())
            }
        }
    }

    /// Number of terms with an observed leader.
    pub fn terms_with_leader(&self) -> usize {
        self.leaders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut c = ElectionSafety::default();
        c.observe(1, "a").unwrap();
        c.observe(1, "a").unwrap();
        c.observe(2, "b").unwrap();
        assert!(c.observe(2, "a").is_err());
    }
}
