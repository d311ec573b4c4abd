//! `auto_encrypt` on a client agent: it asks the servers for its RPC
//! certificate instead of being given one, as Consul's does.
//!
//! At start the agent makes a P-256 key, dials a server over TLS (verifying
//! it against `ca_file`, presenting no certificate) and sends
//! `SignAgentCert`, the one request a server with
//! `auto_encrypt.allow_tls` takes from a peer without a certificate. The
//! leader signs the public key with the Connect CA
//! (`spiffe://<trust-domain>/agent/client/dc/<dc>/id/<node>`, plus
//! `localhost`, 127.0.0.1 and `dns_san`/`ip_san`). The agent presents that
//! certificate on every RPC connection from then on, and asks for a new one
//! at 60-90 % of its life (with jitter, so agents do not all ask at once).
//! The key never leaves the agent.
//!
//! The agent does not start until it has a certificate: with
//! `verify_incoming`, the servers would refuse everything else it sends.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::connect::ca::{generate_leaf_key, renew_at, IssuedLeaf};
use mesh_core::wire::{Request as Rpc, Response, RpcError};
use openraft::AsyncRuntime;
use rand::Rng;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock;
use crate::log_limit::Repeats;
use crate::rpc::RpcClient;
use crate::rpc_tls::RpcTls;
use crate::runtime::MeshRuntime;
use crate::server::rpc_target;

/// How long one server may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits between rounds over the servers while none signs: doubling from
/// the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a client agent asks the servers to put in its certificate
/// (`auto_encrypt.dns_san`, `auto_encrypt.ip_san`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Extra DNS names.
    pub dns_san: Vec<String>,
    /// Extra IP addresses.
    pub ip_san: Vec<IpAddr>,
}

/// Who asks, and where.
#[derive(Clone)]
pub(crate) struct Asker {
    pub(crate) request: Request,
    pub(crate) node: String,
    pub(crate) datacenter: String,
    /// `-retry-join` addresses.
    pub(crate) servers: Vec<String>,
    /// The agent's `-bind`, the source of its connections.
    pub(crate) source_ip: IpAddr,
    pub(crate) tls: Arc<RpcTls>,
}

impl Asker {
    /// Asks until a server signs, then presents the certificate on every
    /// RPC connection opened from now on.
    pub(crate) async fn provision(&self) -> IssuedLeaf {
        let mut wait = RETRY_FIRST;
        let mut failures = Repeats::default();
        loop {
            match self.ask_once().await {
                Ok(leaf) => {
                    info!(
                        spiffe_id = %leaf.spiffe_id,
                        valid_before = leaf.valid_before,
                        "auto_encrypt: the servers signed this agent's RPC certificate"
                    );
                    return leaf;
                }
                Err(e) => {
                    // Once per distinct failure: a long outage is one line.
                    if failures.changed(&e) {
                        warn!(error = %e, "auto_encrypt: no server signed a certificate yet; retrying");
                    }
                    clock::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Renews the certificate at 60-90 % of its life, for as long as the
    /// agent runs.
    pub(crate) fn spawn_renewal(self, first: IssuedLeaf) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut leaf = first;
            loop {
                let jitter = MeshRuntime::thread_rng().gen::<f64>();
                let at = renew_at(leaf.valid_after, leaf.valid_before, jitter);
                let now = clock::wall_now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                clock::sleep(Duration::from_secs(at.saturating_sub(now))).await;
                leaf = self.provision().await;
            }
        })
    }

    /// One round over the servers (following a named leader): a new key,
    /// signed and in use, or every server's answer.
    async fn ask_once(&self) -> Result<IssuedLeaf, String> {
        let key = generate_leaf_key().map_err(|e| e.to_string())?;
        let request = Rpc::SignAgentCert {
            node: self.node.clone(),
            datacenter: self.datacenter.clone(),
            dns_san: self.request.dns_san.clone(),
            ip_san: self.request.ip_san.clone(),
            public_key_der: key.public_key_der.clone(),
        };
        // A client of its own, presenting no certificate: an expired one
        // would fail the handshake, and its connections close with it, so
        // none made without a certificate is reused by the agent.
        let asking = self.tls.without_identity()?;
        let rpc = RpcClient::with_source_ip(self.source_ip, Some(Arc::new(asking)));
        let mut targets: Vec<String> = self.servers.iter().rev().map(|s| rpc_target(s)).collect();
        let mut answers = Vec::new();
        // Each server once, and a few leaders they name.
        for _ in 0..self.servers.len() + 3 {
            let Some(addr) = targets.pop() else { break };
            match rpc.call(&addr, &request, CALL_TIMEOUT).await {
                Ok(Response::Leaf(leaf)) => {
                    self.tls
                        .use_identity(leaf.cert_pem.clone(), key.key)
                        .map_err(|e| format!("the certificate {addr} signed does not load: {e}"))?;
                    return Ok(leaf);
                }
                Ok(Response::Error(RpcError::NotLeader {
                    leader: Some(leader),
                })) => targets.push(leader.rpc_addr),
                Ok(Response::Error(e)) => answers.push(format!("{addr}: {e}")),
                Ok(other) => answers.push(format!("{addr}: unexpected answer {other:?}")),
                Err(e) => answers.push(format!("{addr}: {e}")),
            }
        }
        Err(answers.join("; "))
    }
}
