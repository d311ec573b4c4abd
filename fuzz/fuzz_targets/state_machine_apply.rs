#![no_main]
//! See `mesh_fuzz::state_machine_apply` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mesh_fuzz::state_machine_apply(data));
