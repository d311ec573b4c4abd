//! TLS on the simulated RPC port, set up as the bare-metal example sets it
//! up (`deploy/tls.json`): one operator CA, a server certificate naming
//! `server.dc1.consul` for each of consul00-02, a client certificate for
//! each client agent, and `verify_incoming`, `verify_outgoing` and
//! `verify_server_hostname` on. Every scenario runs with it, so Raft,
//! joins, forwarding and agent RPC cross the simulated network encrypted
//! and authenticated, through the production `mesh_net::rpc_tls` code.
//!
//! The certificates are made in memory at the start of a run (ring's
//! randomness is the seed's), valid from a week before the run's wall
//! clock for a year, so the clock faults the scenarios inject (seconds to
//! minutes of skew) never push a host outside their validity.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::agent_tls::{
    create_ca, create_cert, server_name, CaRequest, CertAndKey, CertKind, CertRequest,
    DEFAULT_DOMAIN,
};
use mesh_net::rpc_tls::{RpcTls, RpcTlsConfig};

const WEEK: Duration = Duration::from_secs(7 * 86_400);

/// The operator CA of one simulated cluster.
#[derive(Clone)]
pub struct SimRpcTls {
    ca: CertAndKey,
}

fn issued_at() -> SystemTime {
    mesh_net::clock::wall_now() - WEEK
}

impl SimRpcTls {
    /// A new CA (an operator's `mesh tls ca create`).
    pub fn new() -> SimRpcTls {
        SimRpcTls { ca: new_ca() }
    }

    /// The CA's certificate (`consul-agent-ca.pem`).
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// A certificate of `kind` for `node`, signed by this CA.
    pub fn cert(&self, kind: CertKind, node: &str) -> CertAndKey {
        sign(&self.ca, kind, node)
    }

    /// The RPC TLS of an agent holding `cert`, with every check on.
    pub fn agent(&self, cert: &CertAndKey) -> Arc<RpcTls> {
        agent_tls(&self.ca, cert)
    }
}

impl Default for SimRpcTls {
    fn default() -> Self {
        SimRpcTls::new()
    }
}

/// A CA of its own: what an attacker who never had the real one holds.
pub fn new_ca() -> CertAndKey {
    create_ca(
        &CaRequest {
            domain: DEFAULT_DOMAIN.into(),
            days: 365,
            common_name: None,
            name_constraint: false,
            additional_constraints: Vec::new(),
        },
        issued_at(),
    )
    .expect("the simulated operator CA")
}

/// A certificate `ca` signs for `node`.
pub fn sign(ca: &CertAndKey, kind: CertKind, node: &str) -> CertAndKey {
    let request = CertRequest {
        kind,
        datacenter: "dc1".into(),
        domain: DEFAULT_DOMAIN.into(),
        node: (kind == CertKind::Server).then(|| node.to_string()),
        additional_dns: Vec::new(),
        additional_ips: Vec::new(),
        days: 365,
    };
    create_cert(&ca.cert_pem, ca.key_pem.expose(), &request, issued_at())
        .expect("a simulated agent certificate")
}

/// An agent's RPC TLS trusting `ca` and presenting `cert`, every check on.
pub fn agent_tls(ca: &CertAndKey, cert: &CertAndKey) -> Arc<RpcTls> {
    let config = RpcTlsConfig {
        ca_pem: Some(ca.cert_pem.clone()),
        cert_pem: Some(cert.cert_pem.clone()),
        key_pem: Some(cert.key_pem.clone()),
        verify_incoming: true,
        verify_outgoing: true,
        verify_server_hostname: true,
        server_name: server_name("dc1", DEFAULT_DOMAIN),
        auto_encrypt: mesh_net::rpc_tls::AutoEncrypt::Off,
    };
    Arc::new(RpcTls::new(&config).expect("the simulated RPC TLS settings"))
}
