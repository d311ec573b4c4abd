//! The criterion settings every benchmark file uses: short warm-up and
//! measurement and the minimum sample count, so `cargo bench -p
//! mesh-benches` stays within a couple of minutes on a 2-core machine. The
//! numbers are for spotting regressions and reading ratios within one run,
//! not for publishing; raise `--measurement-time` on the command line for
//! steadier figures.

use std::time::Duration;

use criterion::Criterion;

/// Criterion configured for quick runs (overridable from the command line,
/// e.g. `cargo bench -p mesh-benches -- --measurement-time 5`).
pub fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args()
}
