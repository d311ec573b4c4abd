//! A limit on log lines that someone outside can cause at will: a refused
//! connection, a rejected request. One line per event lets an attacker
//! (or a misconfigured client in a retry loop) fill the disk and bury
//! everything else. The limiter lets the first `burst` lines of each kind
//! through in every window, counts the rest, and tells the next line that
//! is let through how many were held back, so the log keeps the fact and
//! its size while the metrics keep the exact counts.
//!
//! Sans-IO: the caller passes `now_ms` (any monotonic clock) and logs or
//! not as told. Keys are the *kind* of event (a small enum), never a peer
//! address, so the map stays as small as the enum.

use std::collections::BTreeMap;

/// What to do with one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it, saying how many lines were held back before it.
    Log {
        /// Lines of this kind held back since the last one logged (0: none).
        suppressed: u64,
    },
    /// Do not log it; it is counted and reported with the next line let
    /// through.
    Suppress,
}

/// Per-kind windows of `burst` lines each.
#[derive(Debug, Clone)]
pub struct LogLimiter<K> {
    burst: u32,
    window_ms: u64,
    kinds: BTreeMap<K, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    logged: u32,
    suppressed: u64,
}

impl<K: Ord> LogLimiter<K> {
    /// At most `burst` lines of each kind per `window_ms` (a `burst` of 0
    /// is taken as 1: the first line of a kind is always logged).
    pub fn new(burst: u32, window_ms: u64) -> Self {
        Self {
            burst: burst.max(1),
            window_ms: window_ms.max(1),
            kinds: BTreeMap::new(),
        }
    }

    /// Decides one line of kind `kind` at `now_ms`. A `now_ms` earlier than
    /// the window's start (a caller's clock reading taken before another's)
    /// counts as inside the window.
    pub fn admit(&mut self, kind: K, now_ms: u64) -> Admit {
        let window = self.kinds.entry(kind).or_insert(Window {
            start_ms: now_ms,
            logged: 0,
            suppressed: 0,
        });
        if now_ms.saturating_sub(window.start_ms) >= self.window_ms {
            window.start_ms = now_ms;
            window.logged = 0;
        }
        if window.logged < self.burst {
            window.logged += 1;
            let suppressed = std::mem::take(&mut window.suppressed);
            Admit::Log { suppressed }
        } else {
            window.suppressed = window.suppressed.saturating_add(1);
            Admit::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: Admit = Admit::Log { suppressed: 0 };

    #[test]
    fn the_first_burst_of_a_window_is_logged_and_the_rest_held_back() {
        let mut limiter = LogLimiter::new(3, 1_000);
        let got: Vec<Admit> = (0..5).map(|i| limiter.admit("refused", i)).collect();
        assert_eq!(got, [LOG, LOG, LOG, Admit::Suppress, Admit::Suppress]);
    }

    #[test]
    fn the_next_window_reports_how_many_were_held_back() {
        let mut limiter = LogLimiter::new(1, 1_000);
        assert_eq!(limiter.admit("refused", 0), LOG);
        for t in 1..=4 {
            assert_eq!(limiter.admit("refused", t * 100), Admit::Suppress);
        }
        // Still inside the window.
        assert_eq!(limiter.admit("refused", 999), Admit::Suppress);
        assert_eq!(
            limiter.admit("refused", 1_000),
            Admit::Log { suppressed: 5 }
        );
        // The count was handed over once.
        assert_eq!(limiter.admit("refused", 2_000), LOG);
    }

    #[test]
    fn kinds_have_windows_of_their_own() {
        let mut limiter = LogLimiter::new(1, 1_000);
        assert_eq!(limiter.admit("handshake", 0), LOG);
        assert_eq!(limiter.admit("handshake", 1), Admit::Suppress);
        assert_eq!(limiter.admit("intention", 2), LOG);
        assert_eq!(limiter.admit("intention", 3), Admit::Suppress);
        assert_eq!(
            limiter.admit("handshake", 1_000),
            Admit::Log { suppressed: 1 }
        );
    }

    #[test]
    fn a_quiet_kind_logs_every_line() {
        let mut limiter = LogLimiter::new(2, 1_000);
        for t in 0..10 {
            assert_eq!(limiter.admit('k', t * 600), LOG);
        }
    }

    #[test]
    fn a_clock_reading_from_before_the_window_counts_as_inside_it() {
        let mut limiter = LogLimiter::new(1, 1_000);
        assert_eq!(limiter.admit('k', 5_000), LOG);
        assert_eq!(limiter.admit('k', 4_000), Admit::Suppress);
        assert_eq!(limiter.admit('k', 6_000), Admit::Log { suppressed: 1 });
    }

    #[test]
    fn a_zero_burst_still_logs_the_first_line() {
        let mut limiter = LogLimiter::new(0, 0);
        assert_eq!(limiter.admit('k', 0), LOG);
        assert_eq!(limiter.admit('k', 0), Admit::Suppress);
        assert_eq!(limiter.admit('k', 1), Admit::Log { suppressed: 1 });
    }
}
