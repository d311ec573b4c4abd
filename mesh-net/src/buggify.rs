//! Fault points inside production code paths (FoundationDB's "buggify").
//!
//! In the simulator, when a run enables them, each point fires with a small
//! seeded probability and takes the path that real systems take when
//! things go wrong there: a lost RPC, a failed snapshot install, an
//! aborted hand-off or membership change. Outside the simulator every point
//! is a constant `false`.

// Our own switch rather than madsim's buggify, which also injects delays
// inside the simulator's runtime.
#[cfg(madsim)]
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the fault points on or off (simulation builds only).
#[cfg(madsim)]
pub fn enable(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the fault point `_point` fires now: 2% of the time when enabled,
/// drawn from the simulation's seeded RNG.
#[cfg(madsim)]
pub fn fires(_point: &str) -> bool {
    use rand::Rng;
    ENABLED.load(std::sync::atomic::Ordering::SeqCst)
        && tokio::madsim::rand::thread_rng().gen_bool(0.02)
}

/// Whether the fault point fires: never, outside the simulator.
#[cfg(not(madsim))]
#[inline(always)]
pub const fn fires(_point: &str) -> bool {
    false
}
