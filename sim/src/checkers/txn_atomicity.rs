//! Transaction atomicity: no client sees half of a transaction.
//!
//! A writer sets two keys to the same fresh value in one `PUT /v1/txn`; a
//! reader reads both in one transaction. Every read must see equal
//! values (both absent only before the first write). Consul applies a
//! transaction in one Raft entry; so do we, and a half-applied one shows
//! as two different values.

/// The fewest reads that saw a written value, for a verdict.
pub const MIN_READS: usize = 10;

/// What the reader saw.
#[derive(Clone, Debug, Default)]
pub struct TxnReads {
    /// `(first, second)` of every successful read.
    pub reads: Vec<(Option<String>, Option<String>)>,
    /// Transactions the writer committed.
    pub commits: u64,
}

/// Judges the reads.
pub fn check(r: &TxnReads) -> Result<(), String> {
    for (i, (a, b)) in r.reads.iter().enumerate() {
        if a != b {
            return Err(format!(
                "read #{i} saw half a transaction: the pair was {a:?} and {b:?}"
            ));
        }
    }
    let seen = r.reads.iter().filter(|(a, _)| a.is_some()).count();
    if seen < MIN_READS || r.commits == 0 {
        return Err(format!(
            "{seen} reads saw a written pair and {} transactions committed (at least \
             {MIN_READS} reads and one commit needed for a verdict)",
            r.commits
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(pairs: &[(Option<&str>, Option<&str>)]) -> TxnReads {
        TxnReads {
            reads: pairs
                .iter()
                .map(|(a, b)| (a.map(String::from), b.map(String::from)))
                .collect(),
            commits: 5,
        }
    }

    #[test]
    fn equal_pairs_pass_and_a_half_is_caught() {
        let mut pairs = vec![(None, None)];
        pairs.extend((0..MIN_READS).map(|_| (Some("1"), Some("1"))));
        assert_eq!(check(&reads(&pairs)), Ok(()));
        pairs.push((Some("2"), Some("1")));
        assert!(check(&reads(&pairs))
            .unwrap_err()
            .contains("half a transaction"));
    }

    #[test]
    fn no_reads_is_no_verdict() {
        assert!(check(&reads(&[(None, None)])).is_err());
    }
}
