#![no_main]
//! See `mesh_fuzz::spiffe_parse` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mesh_fuzz::spiffe_parse(data));
