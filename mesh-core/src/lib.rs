//! Sans-IO protocol logic of the mesh: the replicated KV state machine,
//! cluster-formation and election decisions, wire messages and their frame
//! codec, and the storage record format with its crash recovery. No sockets,
//! clocks, threads or OS randomness: time and input come in as arguments.
#![warn(missing_docs)]

pub mod agent_tls;
pub mod anti_entropy;
pub mod api;
pub mod codec;
pub mod connect;
pub mod definitions;
pub mod dns;
pub mod election;
pub mod filter;
pub mod formation;
pub mod gossip_key;
pub mod hash;
pub mod liveness;
pub mod log_limit;
pub mod record;
pub mod session_api;
pub mod session_ttl;
pub mod snapshot_transfer;
pub mod state;
/// The KV table, at its historical path.
pub use state::kv;
pub mod wire;
