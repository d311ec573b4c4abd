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
