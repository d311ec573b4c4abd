//! Election safety: at most one leader can be elected in a given term
//! (Raft paper, §5.2 and Figure 3). Leaders are known by their Raft node
//! id, whoever reports them (a sample of who leads, or a committed vote
//! one server saved), and named in a violation by the server's name.

use std::collections::BTreeMap;

/// Leaders seen per term.
#[derive(Default, Debug)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, u64>,
}

impl ElectionSafety {
    /// Records that Raft node `leader` led `term`; `name` names a node in
    /// the report.
    pub fn observe(
        &mut self,
        term: u64,
        leader: u64,
        name: impl Fn(u64) -> String,
    ) -> Result<(), String> {
        match self.leaders.get(&term) {
            Some(&other) if other != leader => Err(format!(
                "election safety violated: {} and {} both led term {term}",
                name(other),
                name(leader)
            )),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, leader);
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
        let name = |id: u64| format!("n{id}");
        let mut c = ElectionSafety::default();
        c.observe(1, 7, name).unwrap();
        c.observe(1, 7, name).unwrap();
        c.observe(2, 8, name).unwrap();
        assert_eq!(
            c.observe(2, 7, name),
            Err("election safety violated: n8 and n7 both led term 2".to_string())
        );
        assert_eq!(c.terms_with_leader(), 2);
    }
}
