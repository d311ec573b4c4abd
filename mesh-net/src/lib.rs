//! The runtime shell of the mesh: tokio (or madsim) networking, openraft
//! wiring, durable storage and the HTTP API, around the sans-IO logic of
//! `mesh-core`.
//!
//! Everything here imports `tokio`, which the workspace maps to
//! `madsim-tokio`: real tokio in the `mesh` binary, the deterministic
//! simulator under `--cfg madsim`.
//!
//! Connect traffic between services goes through [`sidecar`] proxies over
//! the mutual TLS of [`tls`]: fcc → `127.0.0.1:<upstream port>` → fcc's
//! outbound sidecar → mTLS → fcs's inbound sidecar on :9191 → intention
//! check → `127.0.0.1:8181` → fcs.
#![warn(missing_docs)]
// openraft's error types (StorageError, RaftError) are large by design and
// appear in the trait signatures we implement; boxing them buys nothing.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod backend;
pub mod buggify;
pub mod client;
pub mod clock;
pub mod disk;
pub mod dns;
pub mod flags;
pub mod http;
pub mod http_client;
pub mod log_limit;
pub mod log_store;
pub mod mutants;
pub mod network;
pub mod owned_tasks;
pub mod raft_types;
pub mod routing;
pub mod rpc;
pub mod rpc_tls;
pub mod runtime;
pub mod server;
pub mod sidecar;
mod snapshot_file;
pub mod state_store;
pub mod swap;
pub mod telemetry;
pub mod tls;
#[cfg(madsim)]
pub mod vote_log;
