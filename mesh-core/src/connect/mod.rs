//! Connect, the service mesh's security model, as pure logic: who a
//! workload is ([`spiffe`]), what the cluster's CA signs ([`ca`]), and who
//! may talk to whom ([`intention`]).
//!
//! Nothing here does I/O or reads a clock: certificates are built and
//! checked for a time the caller passes in (the host's wall clock in
//! mesh-net, a skewed one in the simulator).

pub mod ca;
pub mod intention;
pub mod spiffe;

pub use ca::{CaError, CaRoot, CertInfo, IssuedLeaf, LeafKey, SecretPem};
pub use spiffe::SpiffeId;
