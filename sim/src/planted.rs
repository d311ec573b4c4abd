//! Planted bugs on the simulator's side of the HTTP API, for checkers that
//! judge what clients see rather than what servers store.
//!
//! They belong in `mesh_net::mutants` (a bug in the server's HTTP layer),
//! but that crate is being restructured elsewhere; until they move, they
//! live here and break the workload's HTTP client instead, which is what a
//! client of a broken server would see. `sim run --mutant NAME` looks names
//! up here after `mesh_net::mutants`. One simulation runs per process, so a
//! process-wide switch is enough.

use std::sync::Mutex;

/// A planted bug in what the workload's HTTP client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimMutant {
    /// Every GET answer, whatever the server said, arrives as a 500: a
    /// broken read path. Writes still work, so only a checker that demands
    /// successful reads can notice.
    GetFails,
    /// Every PUT answer arrives as a 500 "outcome unknown": a broken write
    /// path whose writes may or may not have happened.
    PutFails,
    /// Every PUT that took effect is answered `500 No cluster leader`, the
    /// answer for a write no leader ran: a server that reports definite
    /// failures for writes it applied (`checkers::definite_failures`).
    AppliedPutSaysNoLeader,
}

impl SimMutant {
    /// Every sim-side mutant, with its command-line name.
    pub const ALL: &'static [(&'static str, SimMutant)] = &[
        ("get_fails", SimMutant::GetFails),
        ("put_fails", SimMutant::PutFails),
        (
            "applied_put_says_no_leader",
            SimMutant::AppliedPutSaysNoLeader,
        ),
    ];

    /// The mutant called `name`.
    pub fn by_name(name: &str) -> Option<SimMutant> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }
}

static ACTIVE: Mutex<Option<SimMutant>> = Mutex::new(None);

/// Switches `mutant` on for this process.
pub fn activate(mutant: SimMutant) {
    *ACTIVE.lock().expect("planted lock") = Some(mutant);
}

/// Whether `mutant` is switched on.
pub fn enabled(mutant: SimMutant) -> bool {
    *ACTIVE.lock().expect("planted lock") == Some(mutant)
}
