//! Linearizability of KV registers (Herlihy & Wing 1990), checked with the
//! Wing–Gong search and Lowe's memoization (as in Porcupine), one key at a
//! time (P-compositionality: a history is linearizable iff each key's
//! sub-history is).
//!
//! The model is a register that is either absent or holds a value, with the
//! four operations Consul's KV API offers on one key: read, write, delete
//! and check-and-set (`PUT ?cas=<ModifyIndex>`; `cas=0` means "only if
//! absent", per Consul's KV API docs). The workload writes a value at most
//! once, so a ModifyIndex names exactly one value: a CAS against the index
//! a client read is a CAS against the value it read.
//!
//! Each operation has an invocation and a response time. An update whose
//! outcome is unknown (timeout, "outcome unknown" error) may have taken
//! effect at any point after its invocation, or never: it gets an infinite
//! response time and may be left out; an unknown CAS, if it took effect,
//! did whatever the register's state at that point dictates. Reads that
//! failed had no effect and are not recorded. The search has a state
//! budget; past it the answer is "unknown", never a loop.

use std::collections::{BTreeMap, HashSet};

/// One operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Which client (for messages).
    pub client: usize,
    /// Invocation time (ns of simulated time).
    pub call: u64,
    /// Response time; `u64::MAX` when the outcome is unknown.
    pub ret: u64,
    /// What it did and saw.
    pub kind: OpKind,
}

/// A register operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// A write of this value (acknowledged, or unknown if `ret == u64::MAX`).
    Write(String),
    /// A read that returned this value (`None`: key absent).
    Read(Option<String>),
    /// A delete (acknowledged, or unknown if `ret == u64::MAX`).
    Delete,
    /// Check-and-set: write `new` only if the register holds `expected`
    /// (`None`: only if absent).
    Cas {
        /// The value the client read, whose ModifyIndex it sent.
        expected: Option<String>,
        /// The value to write.
        new: String,
        /// What the server answered; `None` when the outcome is unknown.
        swapped: Option<bool>,
    },
}

/// A register's state: absent, or a value.
type State = Option<String>;

impl OpKind {
    /// The state after this operation runs on `state`, or `None` if its
    /// recorded result is impossible from `state`.
    fn step(&self, state: &State) -> Option<State> {
        match self {
            OpKind::Write(v) => Some(Some(v.clone())),
            OpKind::Read(seen) => (seen == state).then(|| state.clone()),
            OpKind::Delete => Some(None),
            OpKind::Cas {
                expected,
                new,
                swapped,
            } => {
                let matches = expected == state;
                match swapped {
                    Some(reported) if *reported != matches => None,
                    _ if matches => Some(Some(new.clone())),
                    _ => Some(state.clone()),
                }
            }
        }
    }

    /// The value this operation may have stored.
    fn stores(&self) -> Option<&str> {
        match self {
            OpKind::Write(v) => Some(v),
            OpKind::Cas { new, .. } => Some(new),
            OpKind::Read(_) | OpKind::Delete => None,
        }
    }
}

/// The verdict for one history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    Violation(String),
    /// The search budget ran out.
    Unknown,
}

/// Search states explored per key before giving up.
pub const STATE_BUDGET: usize = 200_000;

/// What checking every key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Operations checked.
    pub ops: usize,
    /// Keys whose search ran out of budget (no verdict).
    pub unknown_keys: Vec<String>,
}

/// Checks every key's history: the first violation wins; keys whose search
/// ran out of budget are listed. An empty history is an error: it would
/// pass without judging anything.
pub fn check(histories: &BTreeMap<String, Vec<Op>>) -> Result<Checked, String> {
    let ops: usize = histories.values().map(Vec::len).sum();
    if ops == 0 {
        return Err("linearizability: no register operation was recorded".into());
    }
    let mut unknown_keys = Vec::new();
    for (key, ops) in histories {
        match check_key(ops, STATE_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::Unknown => unknown_keys.push(key.clone()),
            Verdict::Violation(why) => return Err(format!("key {key}: {why}")),
        }
    }
    Ok(Checked { ops, unknown_keys })
}

/// Checks one register's history.
pub fn check_key(ops: &[Op], budget: usize) -> Verdict {
    let n = ops.len();
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let required: usize = ops.iter().filter(|o| o.ret != u64::MAX).count();
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut explored = 0usize;
    // Explicit DFS stack: (chosen op, state before it).
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut linearized_required = 0usize;
    let mut next_start = 0usize;
    loop {
        if linearized_required == required {
            return Verdict::Linearizable;
        }
        // The earliest response among pending ops bounds what may go next.
        let min_ret = (0..n)
            .filter(|i| done[i / 64] & (1 << (i % 64)) == 0)
            .map(|i| ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        let mut chosen = None;
        for i in next_start..n {
            if done[i / 64] & (1 << (i % 64)) != 0 || ops[i].call > min_ret {
                continue;
            }
            let Some(next_state) = ops[i].kind.step(&state) else {
                continue;
            };
            done[i / 64] |= 1 << (i % 64);
            let fresh = seen.insert((done.clone(), next_state.clone()));
            done[i / 64] &= !(1 << (i % 64));
            if fresh {
                chosen = Some((i, next_state));
                break;
            }
        }
        if let Some((i, next_state)) = chosen {
            explored += 1;
            if explored > budget {
                return Verdict::Unknown;
            }
            done[i / 64] |= 1 << (i % 64);
            stack.push((i, state.clone()));
            if ops[i].ret != u64::MAX {
                linearized_required += 1;
            }
            state = next_state;
            next_start = 0;
            continue;
        }
        // Dead end: undo the last choice and try the next candidate.
        let Some((i, prev)) = stack.pop() else {
            return Verdict::Violation(explain(ops));
        };
        done[i / 64] &= !(1 << (i % 64));
        if ops[i].ret != u64::MAX {
            linearized_required -= 1;
        }
        state = prev;
        next_start = i + 1;
    }
}

fn explain(ops: &[Op]) -> String {
    // Point at a read that returned a value no write could have produced
    // at that moment, if there is an obvious one.
    for r in ops {
        if let OpKind::Read(Some(v)) = &r.kind {
            let written = ops
                .iter()
                .any(|w| w.kind.stores() == Some(v.as_str()) && w.call <= r.ret);
            if !written {
                return format!(
                    "client {} read {v:?}, which no write had produced",
                    r.client
                );
            }
        }
    }
    format!("no linearization of {} operations exists", ops.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, call: u64, ret: u64, v: &str) -> Op {
        Op {
            client,
            call,
            ret,
            kind: OpKind::Write(v.into()),
        }
    }

    fn r(client: usize, call: u64, ret: u64, v: Option<&str>) -> Op {
        Op {
            client,
            call,
            ret,
            kind: OpKind::Read(v.map(str::to_string)),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            r(0, 0, 1, None),
            w(0, 2, 3, "a"),
            r(1, 4, 5, Some("a")),
            w(1, 6, 7, "b"),
            r(0, 8, 9, Some("b")),
        ];
        assert_eq!(check_key(&h, 1000), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_ops_may_order_either_way() {
        // The write overlaps both reads: old-then-new is fine.
        let h = vec![w(0, 0, 10, "a"), r(1, 1, 2, None), r(2, 3, 4, Some("a"))];
        assert_eq!(check_key(&h, 1000), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let h = vec![w(0, 0, 1, "a"), w(0, 2, 3, "b"), r(1, 4, 5, Some("a"))];
        assert!(matches!(check_key(&h, 1000), Verdict::Violation(_)));
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        // New value seen, then the old one again, with no write in between.
        let h = vec![
            w(0, 0, 1, "a"),
            w(0, 2, 20, "b"),
            r(1, 3, 4, Some("b")),
            r(2, 5, 6, Some("a")),
        ];
        assert!(matches!(check_key(&h, 1000), Verdict::Violation(_)));
    }

    #[test]
    fn unknown_writes_may_or_may_not_apply() {
        let took = vec![w(0, 0, u64::MAX, "a"), r(1, 5, 6, Some("a"))];
        assert_eq!(check_key(&took, 1000), Verdict::Linearizable);
        let lost = vec![w(0, 0, u64::MAX, "a"), r(1, 5, 6, None)];
        assert_eq!(check_key(&lost, 1000), Verdict::Linearizable);
        let phantom = vec![r(1, 0, 1, Some("zzz"))];
        assert!(matches!(check_key(&phantom, 1000), Verdict::Violation(_)));
    }

    fn d(client: usize, call: u64, ret: u64) -> Op {
        Op {
            client,
            call,
            ret,
            kind: OpKind::Delete,
        }
    }

    fn cas(call: u64, ret: u64, expected: Option<&str>, new: &str, swapped: Option<bool>) -> Op {
        Op {
            client: 3,
            call,
            ret,
            kind: OpKind::Cas {
                expected: expected.map(str::to_string),
                new: new.into(),
                swapped,
            },
        }
    }

    #[test]
    fn delete_empties_the_register() {
        let ok = vec![w(0, 0, 1, "a"), d(0, 2, 3), r(1, 4, 5, None)];
        assert_eq!(check_key(&ok, 1000), Verdict::Linearizable);
        let resurrected = vec![w(0, 0, 1, "a"), d(0, 2, 3), r(1, 4, 5, Some("a"))];
        assert!(matches!(
            check_key(&resurrected, 1000),
            Verdict::Violation(_)
        ));
        let maybe = vec![w(0, 0, 1, "a"), d(0, 2, u64::MAX), r(1, 4, 5, Some("a"))];
        assert_eq!(check_key(&maybe, 1000), Verdict::Linearizable);
    }

    #[test]
    fn cas_must_compare() {
        // The register holds "b" when the CAS expecting "a" runs: it must fail.
        let ok = vec![
            w(0, 0, 1, "a"),
            w(0, 2, 3, "b"),
            cas(4, 5, Some("a"), "c", Some(false)),
            r(1, 6, 7, Some("b")),
        ];
        assert_eq!(check_key(&ok, 1000), Verdict::Linearizable);
        let swapped_anyway = vec![
            w(0, 0, 1, "a"),
            w(0, 2, 3, "b"),
            cas(4, 5, Some("a"), "c", Some(true)),
        ];
        assert!(matches!(
            check_key(&swapped_anyway, 1000),
            Verdict::Violation(_)
        ));
        let wrongly_refused = vec![w(0, 0, 1, "a"), cas(2, 3, Some("a"), "c", Some(false))];
        assert!(matches!(
            check_key(&wrongly_refused, 1000),
            Verdict::Violation(_)
        ));
    }

    #[test]
    fn cas_zero_only_creates() {
        let created = vec![cas(0, 1, None, "a", Some(true)), r(1, 2, 3, Some("a"))];
        assert_eq!(check_key(&created, 1000), Verdict::Linearizable);
        let clobbered = vec![w(0, 0, 1, "a"), cas(2, 3, None, "b", Some(true))];
        assert!(matches!(check_key(&clobbered, 1000), Verdict::Violation(_)));
    }

    #[test]
    fn unknown_cas_does_what_the_state_dictates() {
        // Took effect: the read may see its value.
        let took = vec![
            w(0, 0, 1, "a"),
            cas(2, u64::MAX, Some("a"), "c", None),
            r(1, 4, 5, Some("c")),
        ];
        assert_eq!(check_key(&took, 1000), Verdict::Linearizable);
        // It could only have swapped while "a" was there; "b" replaced "a"
        // before the CAS was sent, so "c" can never appear.
        let impossible = vec![
            w(0, 0, 1, "a"),
            w(0, 2, 3, "b"),
            cas(4, u64::MAX, Some("a"), "c", None),
            r(1, 6, 7, Some("c")),
        ];
        assert!(matches!(
            check_key(&impossible, 1000),
            Verdict::Violation(_)
        ));
    }

    #[test]
    fn every_key_is_checked_and_unknown_keys_are_named() {
        let mut h = BTreeMap::new();
        h.insert(
            "a".to_string(),
            vec![w(0, 0, 1, "x"), r(1, 2, 3, Some("x"))],
        );
        assert_eq!(
            check(&h),
            Ok(Checked {
                ops: 2,
                unknown_keys: vec![]
            })
        );
        h.insert("b".to_string(), vec![r(1, 2, 3, Some("never written"))]);
        assert!(check(&h).unwrap_err().starts_with("key b:"));
        assert!(check(&BTreeMap::new()).is_err());
    }

    #[test]
    fn budget_exhaustion_says_unknown() {
        // Many fully concurrent writes and a read that matches none.
        let mut h: Vec<Op> = (0..40).map(|i| w(i, 0, 100, &format!("v{i}"))).collect();
        h.push(r(99, 200, 201, Some("nope")));
        assert_eq!(check_key(&h, 500), Verdict::Unknown);
    }
}
