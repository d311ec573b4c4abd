//! Session TTLs, decided by the leader: which sessions went unrenewed for
//! too long.
//!
//! A session with a TTL is invalidated [`TTL_MULTIPLIER`] TTLs after its
//! last renewal, as in Consul (`session_ttl.go`): the client promises a
//! renewal every TTL, and the second TTL is grace for delays and for
//! clocks that run at different rates. The decision is an output
//! ([`Expire`]) that the server commits as a `SessionDestroy` through Raft;
//! a destroy whose write failed is retried ([`SessionTimers::write_failed`]).
//!
//! # Leader changes
//!
//! Renewals reach only the leader, so a new leader does not know when
//! each session was last renewed: it gives every session a full
//! `TTL × multiplier` from the moment it took over (as Consul's
//! `initializeSessionTimers`). A failover therefore extends sessions and
//! never shortens one, which is the direction lock safety needs.
//!
//! # What we promise lock holders
//!
//! A client that stops using a lock once one TTL has passed since it sent
//! its last successful renewal, by its own clock, never overlaps with the
//! next holder, provided its clock and the leader's do not differ in rate
//! by a factor of two or more: the leader measures two TTLs from a moment
//! after the renewal was sent. The lock delay adds to that margin when a
//! session is invalidated by a failed node instead.
//!
//! Time is passed in (ms on the leader's monotonic clock); nothing here
//! reads a clock.

use std::collections::{BTreeMap, VecDeque};

use crate::state::sessions::TTL_MULTIPLIER;

/// A decision for the state: destroy this session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expire {
    /// The session.
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Timer {
    ttl_ms: u64,
    deadline_ms: u64,
    /// The destroy was decided and is being written: no renewal counts
    /// any more, even if the write fails (it may still commit).
    expired: bool,
    /// When to decide the destroy again after a failed write.
    retry_at_ms: Option<u64>,
}

/// The leader's session timers. Created when a server becomes leader,
/// dropped when it stops leading.
#[derive(Clone, Debug, Default)]
pub struct SessionTimers {
    timers: BTreeMap<String, Timer>,
    outputs: VecDeque<Expire>,
}

impl SessionTimers {
    /// Took over leadership at `now_ms` with these sessions (ID and TTL in
    /// ms; 0 for none): each TTL session gets a full `TTL × multiplier`.
    pub fn new(now_ms: u64, sessions: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut t = SessionTimers::default();
        t.sync(now_ms, sessions);
        t
    }

    /// The state's sessions now: new ones are timed from `now_ms`, ones
    /// that are gone are forgotten, the others keep their deadlines.
    pub fn sync(&mut self, now_ms: u64, sessions: impl IntoIterator<Item = (String, u64)>) {
        let current: BTreeMap<String, u64> = sessions
            .into_iter()
            .filter(|(_, ttl_ms)| *ttl_ms > 0)
            .collect();
        self.timers.retain(|id, _| current.contains_key(id));
        for (id, ttl_ms) in current {
            self.timers.entry(id).or_insert(Timer {
                ttl_ms,
                deadline_ms: deadline(now_ms, ttl_ms),
                expired: false,
                retry_at_ms: None,
            });
        }
    }

    /// The session (which the state has, with this TTL) was renewed at
    /// `now_ms`: a full `TTL × multiplier` from now, timed from now on if
    /// [`SessionTimers::sync`] has not seen it yet. False if it already
    /// expired: the renewal comes too late and the destroy stands.
    pub fn renew(&mut self, now_ms: u64, id: &str, ttl_ms: u64) -> bool {
        if ttl_ms == 0 {
            return true;
        }
        let t = self.timers.entry(id.to_string()).or_insert(Timer {
            ttl_ms,
            deadline_ms: 0,
            expired: false,
            retry_at_ms: None,
        });
        if t.expired {
            return false;
        }
        t.deadline_ms = deadline(now_ms, t.ttl_ms);
        true
    }

    /// Whether the session is timed and not expired.
    pub fn is_live(&self, id: &str) -> bool {
        self.timers.get(id).is_some_and(|t| !t.expired)
    }

    /// Expires every session whose deadline passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        for (id, t) in &mut self.timers {
            let due = if t.expired {
                t.retry_at_ms.is_some_and(|r| now_ms >= r)
            } else {
                now_ms >= t.deadline_ms
            };
            if due {
                t.expired = true;
                t.retry_at_ms = None;
                self.outputs.push_back(Expire { id: id.clone() });
            }
        }
    }

    /// The destroy of `id` could not be written: decide it again at
    /// `retry_at_ms`. The session stays expired (renewals are refused):
    /// a write that failed may still commit.
    pub fn write_failed(&mut self, id: &str, retry_at_ms: u64) {
        if let Some(t) = self.timers.get_mut(id) {
            t.retry_at_ms = Some(retry_at_ms);
        }
    }

    /// The next decision, if any. Drain after every call.
    pub fn poll_output(&mut self) -> Option<Expire> {
        self.outputs.pop_front()
    }

    /// The earliest deadline of a session not yet expired, or retry.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers
            .values()
            .filter_map(|t| {
                if t.expired {
                    t.retry_at_ms
                } else {
                    Some(t.deadline_ms)
                }
            })
            .min()
    }
}

fn deadline(now_ms: u64, ttl_ms: u64) -> u64 {
    now_ms.saturating_add(ttl_ms.saturating_mul(TTL_MULTIPLIER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(t: &mut SessionTimers) -> Vec<String> {
        std::iter::from_fn(|| t.poll_output())
            .map(|e| e.id)
            .collect()
    }

    fn s(id: &str, ttl_ms: u64) -> (String, u64) {
        (id.to_string(), ttl_ms)
    }

    #[test]
    fn a_new_leader_gives_every_session_two_full_ttls() {
        let mut t = SessionTimers::new(1_000, [s("a", 10_000), s("b", 20_000), s("none", 0)]);
        assert_eq!(t.poll_timeout(), Some(21_000));
        t.handle_timeout(20_999);
        assert!(drain(&mut t).is_empty());
        t.handle_timeout(21_000);
        assert_eq!(drain(&mut t), ["a"]);
        assert_eq!(t.poll_timeout(), Some(41_000));
        assert!(
            !t.renew(21_001, "a", 10_000),
            "a renewal after expiry is too late"
        );
        assert!(t.renew(21_001, "none", 0), "no TTL, nothing to time");
        assert_eq!(t.poll_timeout(), Some(41_000));
        t.handle_timeout(41_000);
        assert_eq!(drain(&mut t), ["b"]);
        t.handle_timeout(90_000);
        assert!(drain(&mut t).is_empty(), "decided once");
    }

    #[test]
    fn renewals_restart_the_full_grace() {
        let mut t = SessionTimers::new(0, [s("a", 10_000)]);
        assert!(t.renew(15_000, "a", 10_000));
        // A session renewed before `sync` saw it is timed from the renewal.
        assert!(t.renew(16_000, "new", 10_000));
        assert_eq!(t.poll_timeout(), Some(35_000));
        t.sync(16_500, [s("a", 10_000)]);
        t.handle_timeout(34_999);
        assert!(drain(&mut t).is_empty());
        t.handle_timeout(35_000);
        assert_eq!(drain(&mut t), ["a"]);
    }

    #[test]
    fn sync_times_new_sessions_and_forgets_gone_ones() {
        let mut t = SessionTimers::new(0, [s("a", 10_000)]);
        t.sync(5_000, [s("a", 10_000), s("b", 10_000)]);
        assert_eq!(t.poll_timeout(), Some(20_000), "a keeps its deadline");
        t.sync(6_000, [s("b", 10_000)]);
        t.handle_timeout(24_999);
        assert!(drain(&mut t).is_empty(), "a was destroyed, b runs to 25 s");
        t.handle_timeout(25_000);
        assert_eq!(drain(&mut t), ["b"]);
    }

    #[test]
    fn a_failed_destroy_is_decided_again() {
        let mut t = SessionTimers::new(0, [s("a", 10_000)]);
        t.handle_timeout(20_000);
        assert_eq!(drain(&mut t), ["a"]);
        assert!(!t.is_live("a"));
        t.write_failed("a", 20_500);
        assert!(
            !t.renew(20_100, "a", 10_000),
            "no renewal once expiry was decided"
        );
        assert_eq!(t.poll_timeout(), Some(20_500));
        t.handle_timeout(20_500);
        assert_eq!(drain(&mut t), ["a"]);
    }
}
