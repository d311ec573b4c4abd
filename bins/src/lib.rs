//! Library half of the `mesh` binary: flag parsing and the process-cluster
//! harness shared by `mesh demo` and the real-network integration tests.
#![warn(missing_docs)]

pub mod flags;
pub mod process_cluster;
