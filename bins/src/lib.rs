//! Library half of the `mesh` binary: flag parsing and the process-cluster
//! harness shared by `mesh demo` and the real-network integration tests.
#![warn(missing_docs)]

/// Consul-style flags (shared with the agent entry point in mesh-net).
pub use mesh_net::flags;
pub mod process_cluster;
