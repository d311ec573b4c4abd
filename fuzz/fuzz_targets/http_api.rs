#![no_main]
//! See `mesh_fuzz::http_api` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mesh_fuzz::http_api(data));
