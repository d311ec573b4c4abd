//! The run did the work the other checkers judge: a minimum number of
//! successful operations of every kind the workload issues.
//!
//! Every other checker passes vacuously on an empty history: an HTTP bug
//! that made every GET fail would leave linearizability, stale reads and
//! monotonic indexes nothing to judge. TigerBeetle's VOPR and our own
//! style guide ("a checker that passes when nothing happened" is one to
//! grow out of) ask each run to prove it did real work. Thresholds are per
//! scenario, set to about a quarter of the smallest count measured over a
//! few hundred seeds (`sim/src/scenarios.rs`, `MINIMUMS`), so a healthy run
//! never trips them and a run where one kind of operation stopped working
//! always does.

/// Successful operations, by kind, counted from the workload's history.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkDone {
    /// Unique-key writes acknowledged (`true`).
    pub writes: u64,
    /// Default-mode reads of an acknowledged key that returned its data.
    pub reads: u64,
    /// Register reads answered (a value or 404).
    pub register_reads: u64,
    /// Register writes acknowledged. Its minimum is met by any register
    /// mutation (write, delete or swapped CAS): each feeds the
    /// linearizability checker alike, and the plain write path has its own
    /// minimum in `writes`. Under the heaviest swarm schedules a run can
    /// have no plain register write yet CAS and delete writes (seed 105:
    /// two crashes and four splits in 4.5 s).
    pub register_writes: u64,
    /// Register deletes acknowledged.
    pub register_deletes: u64,
    /// Register check-and-sets that swapped.
    pub register_cas: u64,
}

impl WorkDone {
    fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("writes", self.writes),
            ("reads", self.reads),
            ("register_reads", self.register_reads),
            ("register_writes", self.register_writes),
            ("register_deletes", self.register_deletes),
            ("register_cas", self.register_cas),
        ]
    }
}

impl std::fmt::Display for WorkDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .fields()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

/// Checks `done` against `min`, naming every kind that fell short.
pub fn check(done: &WorkDone, min: &WorkDone) -> Result<(), String> {
    assert!(
        min.fields().iter().all(|(_, v)| *v > 0),
        "every minimum must be above 0, or it checks nothing: {min}"
    );
    let pooled = WorkDone {
        register_writes: done.register_writes + done.register_deletes + done.register_cas,
        ..*done
    };
    let short: Vec<String> = pooled
        .fields()
        .iter()
        .zip(min.fields())
        .filter(|((_, got), (_, want))| got < want)
        .map(|((name, got), (_, want))| format!("{name} {got} < {want}"))
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "too little work succeeded: {} (counted: {done})",
            short.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: WorkDone = WorkDone {
        writes: 5,
        reads: 5,
        register_reads: 3,
        register_writes: 2,
        register_deletes: 1,
        register_cas: 1,
    };

    #[test]
    fn enough_of_everything_passes() {
        let done = WorkDone {
            writes: 40,
            reads: 38,
            register_reads: 20,
            register_writes: 9,
            register_deletes: 4,
            register_cas: 6,
        };
        assert_eq!(check(&done, &MIN), Ok(()));
    }

    #[test]
    fn every_get_failing_is_caught() {
        // What a broken GET leaves behind: writes succeed, nothing is read,
        // and CAS (which reads first) never runs.
        let done = WorkDone {
            writes: 40,
            register_writes: 9,
            register_deletes: 4,
            ..WorkDone::default()
        };
        let err = check(&done, &MIN).unwrap_err();
        assert!(err.contains("reads 0 < 5"), "{err}");
        assert!(err.contains("register_reads 0 < 3"), "{err}");
        assert!(err.contains("register_cas 0 < 1"), "{err}");
        assert!(!err.contains("writes 40"), "{err}");
    }

    #[test]
    fn register_mutations_of_any_kind_meet_the_register_write_minimum() {
        let done = WorkDone {
            writes: 40,
            reads: 38,
            register_reads: 20,
            register_writes: 0,
            register_deletes: 1,
            register_cas: 1,
        };
        assert_eq!(check(&done, &MIN), Ok(()));
        let none = WorkDone {
            register_deletes: 0,
            register_cas: 0,
            ..done
        };
        assert!(check(&none, &MIN)
            .unwrap_err()
            .contains("register_writes 0 < 2"));
    }

    #[test]
    fn an_empty_run_is_caught() {
        assert!(check(&WorkDone::default(), &MIN).is_err());
    }

    #[test]
    #[should_panic(expected = "above 0")]
    fn a_zero_minimum_is_a_bug() {
        let _ = check(&MIN, &WorkDone::default());
    }
}
