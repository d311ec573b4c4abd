//! A health check's new status reaches the catalog within a bound: the
//! check's interval, anti-entropy's gap between syncs, and a Raft commit,
//! with room for an election. A status change the agent saw but the
//! catalog never shows (a lost update) fails here instead of passing as
//! "eventually".

use std::time::Duration;

/// Longest time from the change at the checked service to the catalog.
pub const BOUND: Duration = Duration::from_secs(5);

/// Judges one observed propagation time (`None`: never seen within the
/// scenario's wait, which is longer than the bound).
pub fn check(what: &str, took: Option<Duration>) -> Result<Duration, String> {
    match took {
        Some(t) if t <= BOUND => Ok(t),
        Some(t) => Err(format!(
            "{what} reached the catalog after {t:?}, over the {BOUND:?} bound"
        )),
        None => Err(format!("{what} never reached the catalog")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_and_missing_updates_fail() {
        assert!(check("x", Some(Duration::from_secs(1))).is_ok());
        assert!(check("x", Some(Duration::from_secs(6))).is_err());
        assert!(check("x", None).unwrap_err().contains("never"));
    }
}
