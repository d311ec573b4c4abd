#![no_main]
//! See `mesh_fuzz::record_recovery` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mesh_fuzz::record_recovery(data));
