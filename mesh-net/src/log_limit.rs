//! Log lines that outsiders can cause, limited per kind on this host's
//! clock (the logic, and why, is `mesh_core::log_limit`). Metrics still
//! count every event; only the lines are held back.

use std::sync::Mutex;
use std::time::Duration;

use mesh_core::log_limit::{Admit, LogLimiter};

use crate::clock::Instant;

/// Lines of one kind let through per window before the rest are held back.
pub const BURST: u32 = 10;
/// The window: with `BURST`, at most one line a second per kind on average.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A [`LogLimiter`] shared by the tasks of one listener.
#[derive(Debug)]
pub struct LogGate<K> {
    origin: Instant,
    limiter: Mutex<LogLimiter<K>>,
}

impl<K: Ord> LogGate<K> {
    /// [`BURST`] lines per [`WINDOW`] for each kind.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            limiter: Mutex::new(LogLimiter::new(BURST, WINDOW.as_millis() as u64)),
        }
    }

    /// `Some(held_back)` when this line is to be logged, with the number of
    /// lines of its kind held back since the last one; `None` to hold it.
    pub fn admit(&self, kind: K) -> Option<u64> {
        let now_ms = Instant::now()
            .saturating_duration_since(self.origin)
            .as_millis() as u64;
        let admit = self
            .limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(kind, now_ms);
        match admit {
            Admit::Log { suppressed } => Some(suppressed),
            Admit::Suppress => None,
        }
    }
}

impl<K: Ord> Default for LogGate<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// A condition that repeats (a server that keeps refusing, an outage that
/// keeps failing reads), logged when it starts or changes and when it
/// ends, not at every repeat.
#[derive(Debug, Default)]
pub struct Repeats {
    last: Option<String>,
}

impl Repeats {
    /// Notes `what`; true when it differs from the last one noted (log it).
    pub fn changed(&mut self, what: &str) -> bool {
        if self.last.as_deref() == Some(what) {
            return false;
        }
        self.last = Some(what.to_owned());
        true
    }

    /// Forgets the condition; true when there was one (log its end).
    pub fn cleared(&mut self) -> bool {
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod repeats_tests {
    use super::Repeats;

    #[test]
    fn a_condition_is_logged_when_it_starts_changes_and_ends() {
        let mut r = Repeats::default();
        assert!(!r.cleared(), "nothing to end yet");
        assert!(r.changed("refused"));
        assert!(!r.changed("refused"));
        assert!(r.changed("timed out"));
        assert!(r.cleared());
        assert!(!r.cleared());
        assert!(r.changed("timed out"), "a return after an end is news");
    }
}
