//! Log Matching (Raft paper, §5.3 and Figure 3): "if two logs contain an
//! entry with the same index and term, then the logs are identical in all
//! entries up through the given index".
//!
//! Observable only on what servers still hold (compaction drops log
//! prefixes), so it is checked two ways: across servers at one moment, over
//! the overlap of their logs; and across time, since an (index, term) pair
//! names one entry forever (a leader creates at most one entry per index in
//! its term, and entries never change position, §5.3). Entries are compared
//! by a fingerprint of their stored encoding.

use std::collections::BTreeMap;

/// One log entry as observed: `(index, term, fingerprint)`.
pub type EntryId = (u64, u64, u64);

/// Entry fingerprints seen so far, by (index, term).
#[derive(Default, Debug)]
pub struct LogMatching {
    seen: BTreeMap<(u64, u64), (u64, String)>,
}

impl LogMatching {
    /// Checks the logs of several servers observed at the same moment; each
    /// log is `(server, entries in index order)`.
    pub fn observe(&mut self, logs: &[(&str, Vec<EntryId>)]) -> Result<(), String> {
        for (server, log) in logs {
            check_contiguous(server, log)?;
            for &(index, term, fp) in log {
                match self.seen.get(&(index, term)) {
                    Some((known, other)) if *known != fp => {
                        return Err(format!(
                            "log matching violated: entry {index} of term {term} is {fp:#x} on {server} but was {known:#x} on {other}"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.seen.insert((index, term), (fp, server.to_string()));
                    }
                }
            }
        }
        for (k, (a_name, a)) in logs.iter().enumerate() {
            for (b_name, b) in &logs[k + 1..] {
                check_pair(a_name, a, b_name, b)?;
            }
        }
        Ok(())
    }

    /// Distinct (index, term) entries observed.
    pub fn entries_seen(&self) -> usize {
        self.seen.len()
    }
}

fn check_contiguous(server: &str, log: &[EntryId]) -> Result<(), String> {
    for pair in log.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(format!(
                "{server}'s raft log jumps from index {} to {}",
                pair[0].0, pair[1].0
            ));
        }
    }
    Ok(())
}

/// Within the overlap of two contiguous logs, find the highest index where
/// the terms agree; every entry up to it must be identical.
fn check_pair(a_name: &str, a: &[EntryId], b_name: &str, b: &[EntryId]) -> Result<(), String> {
    let (Some(a0), Some(b0)) = (a.first(), b.first()) else {
        return Ok(());
    };
    let lo = a0.0.max(b0.0);
    let hi = a[a.len() - 1].0.min(b[b.len() - 1].0);
    if lo > hi {
        return Ok(());
    }
    let at = |log: &[EntryId], first: u64, index: u64| log[(index - first) as usize];
    let Some(agreed) = (lo..=hi)
        .rev()
        .find(|&i| at(a, a0.0, i).1 == at(b, b0.0, i).1)
    else {
        return Ok(());
    };
    for i in lo..=agreed {
        let (x, y) = (at(a, a0.0, i), at(b, b0.0, i));
        if x != y {
            return Err(format!(
                "log matching violated: {a_name} and {b_name} agree on entry {agreed} (term {}) but differ at {i}: {x:?} vs {y:?}",
                at(a, a0.0, agreed).1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_logs_and_divergent_uncommitted_tails_pass() {
        let mut c = LogMatching::default();
        // b holds a stale uncommitted entry from term 1 at index 3, which a
        // later leader overwrites: allowed, the terms differ.
        let a = vec![(1, 1, 10), (2, 1, 20), (3, 2, 31)];
        let b = vec![(2, 1, 20), (3, 1, 30)];
        c.observe(&[("a", a), ("b", b)]).unwrap();
    }

    #[test]
    fn same_index_and_term_with_different_content_is_caught() {
        let mut c = LogMatching::default();
        let a = vec![(1, 1, 10), (2, 1, 20)];
        let b = vec![(1, 1, 10), (2, 1, 99)];
        assert!(c.observe(&[("a", a), ("b", b)]).is_err());
    }

    #[test]
    fn agreement_at_an_index_requires_an_identical_prefix() {
        let mut c = LogMatching::default();
        // Same entry at index 3, but different terms at index 2.
        let a = vec![(1, 1, 10), (2, 1, 20), (3, 3, 30)];
        let b = vec![(1, 1, 10), (2, 2, 21), (3, 3, 30)];
        let err = c.observe(&[("a", a), ("b", b)]).unwrap_err();
        assert!(err.contains("differ at 2"), "{err}");
    }

    #[test]
    fn an_entry_may_not_change_over_time() {
        let mut c = LogMatching::default();
        c.observe(&[("a", vec![(5, 2, 50)])]).unwrap();
        assert!(c.observe(&[("b", vec![(5, 2, 51)])]).is_err());
        // After compaction only the later part is visible: still fine.
        c.observe(&[("a", vec![(6, 2, 60)])]).unwrap();
    }

    #[test]
    fn a_gap_in_a_log_is_reported() {
        let mut c = LogMatching::default();
        assert!(c.observe(&[("a", vec![(1, 1, 1), (3, 1, 3)])]).is_err());
    }
}
