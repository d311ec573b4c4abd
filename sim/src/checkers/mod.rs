//! Cluster properties, one per file, each citing where it comes from.
//! They are pure (no simulator types) so their own unit tests run in a
//! plain `cargo test`.

pub mod acked_writes;
pub mod check_propagation;
pub mod definite_failures;
pub mod election;
pub mod linearizable;
pub mod lock_safety;
pub mod log_matching;
pub mod monotonic_index;
pub mod registrations;
pub mod sidecar_security;
pub mod state_machine;
pub mod txn_atomicity;
pub mod wire_plaintext;
pub mod work_done;
pub mod write_gap;
