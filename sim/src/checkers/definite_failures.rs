//! A write the client saw fail definitely never takes effect.
//!
//! Linearizability (Herlihy & Wing 1990) lets an operation with no response
//! take effect at any point after its call, or never; an operation that
//! responded with a failure is not "pending": its failure is its result,
//! and a failed write has no effect. Consul's API docs make the same
//! promise per status: a 4xx is a request the server refused, and
//! `No cluster leader` is a request no leader ran (see `crate::outcome` for
//! the mapping, and why timeouts and other 500s stay "unknown" instead).
//! Jepsen's checkers (Knossos, Elle) treat `:fail` the same way: it
//! "definitely did not happen".
//!
//! The workload writes each value at most once (unique-key writes carry a
//! key of their own, register writes and CAS a value of their own), so a
//! definitely failed write is visible as its `(key, value)`: that pair must
//! never be read, and must not be in any server's final state.

/// One definitely failed write: `value` must never appear under `key`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailedWrite {
    /// The client that sent it.
    pub client: usize,
    /// The key it wrote.
    pub key: String,
    /// The value it wrote, unique among the workload's writes.
    pub value: Vec<u8>,
    /// Why the client knows it failed (status line or error).
    pub why: String,
}

/// Where a `(key, value)` was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A client read returned it.
    Read {
        /// Which client.
        client: usize,
    },
    /// A server's final state holds it.
    FinalState {
        /// Which server.
        server: &'a str,
    },
}

/// Checks every observation against the definitely failed writes.
/// `observed` yields every `(key, value)` any read returned and every entry
/// of every server's final state; it must not be empty (a run that observed
/// nothing proves nothing).
pub fn check<'a>(
    failed: &[FailedWrite],
    observed: impl IntoIterator<Item = (&'a str, &'a [u8], Seen<'a>)>,
) -> Result<usize, String> {
    let failed_by_pair: std::collections::BTreeMap<(&str, &[u8]), &FailedWrite> = failed
        .iter()
        .map(|f| ((f.key.as_str(), f.value.as_slice()), f))
        .collect();
    let mut count = 0usize;
    for (key, value, seen) in observed {
        count += 1;
        if let Some(f) = failed_by_pair.get(&(key, value)) {
            let r#where = match seen {
                Seen::Read { client } => format!("client {client} read it"),
                Seen::FinalState { server } => format!("{server}'s final state holds it"),
            };
            return Err(format!(
                "a definitely failed write took effect: client {} wrote {key}={:?} and was told {:?}, but {where}",
                f.client,
                String::from_utf8_lossy(value),
                f.why
            ));
        }
    }
    if count == 0 {
        return Err("definite-failure check observed nothing: no read and no final state".into());
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(key: &str, value: &str) -> FailedWrite {
        FailedWrite {
            client: 1,
            key: key.into(),
            value: value.as_bytes().to_vec(),
            why: "500 No cluster leader".into(),
        }
    }

    #[test]
    fn a_failed_write_that_nobody_sees_passes() {
        let f = [failed("reg/0", "c1-4")];
        let observed = [
            ("reg/0", b"c0-2".as_slice(), Seen::Read { client: 0 }),
            (
                "reg/0",
                b"c0-2".as_slice(),
                Seen::FinalState { server: "consul00" },
            ),
        ];
        assert_eq!(check(&f, observed), Ok(2));
    }

    #[test]
    fn a_read_of_a_failed_value_is_caught() {
        let f = [failed("reg/0", "c1-4")];
        let observed = [("reg/0", b"c1-4".as_slice(), Seen::Read { client: 2 })];
        let err = check(&f, observed).unwrap_err();
        assert!(err.contains("client 2 read it"), "{err}");
    }

    #[test]
    fn a_failed_write_in_the_final_state_is_caught() {
        let f = [failed("w/1/7", "v7")];
        let observed = [
            (
                "w/1/6",
                b"v6".as_slice(),
                Seen::FinalState { server: "consul01" },
            ),
            (
                "w/1/7",
                b"v7".as_slice(),
                Seen::FinalState { server: "consul01" },
            ),
        ];
        let err = check(&f, observed).unwrap_err();
        assert!(err.contains("consul01's final state"), "{err}");
    }

    #[test]
    fn the_same_value_under_another_key_is_not_the_failed_write() {
        let f = [failed("w/1/7", "v7")];
        let observed = [("w/2/7", b"v7".as_slice(), Seen::Read { client: 2 })];
        assert_eq!(check(&f, observed), Ok(1));
    }

    #[test]
    fn observing_nothing_fails() {
        assert!(check(&[failed("k", "v")], []).is_err());
    }
}
