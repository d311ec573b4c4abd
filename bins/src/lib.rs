//! Library half of the `mesh` binary: flag parsing, the agent endpoint and
//! logging, the sidecar command (shared with the small `mesh-sidecar`
//! binary), and the process-cluster harness shared by `mesh demo` and the
//! real-network integration tests.
#![warn(missing_docs)]

/// Consul-style flags (shared with the agent entry point in mesh-net).
pub use mesh_net::flags;
pub mod endpoint;
pub mod logging;
pub mod process_cluster;
pub mod sidecar_cmd;
