//! The HTTPS API (`ports.https`, with `tls.https` over `tls.defaults`), as
//! Consul serves it: the same API as port 8500 behind TLS 1.2 or 1.3 with
//! the agent's certificate, and with `verify_incoming` a client
//! certificate the CA signed is required. Consul's clients reach it with
//! `CONSUL_HTTP_ADDR=https://...` and `CONSUL_CACERT`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::connect::SecretPem;
use rustls::server::WebPkiClientVerifier;

use crate::swap::Swap;
use crate::tls::{pem_chain_and_key, pem_roots, provider, HostClock};

/// Where the HTTPS API listens and with what.
#[derive(Clone)]
pub struct HttpsListener {
    /// `-client` address and `ports.https`.
    pub bind: SocketAddr,
    /// The server configuration (certificate, key, client verification);
    /// `mesh reload` replaces it.
    pub tls: Swap<rustls::ServerConfig>,
}

impl fmt::Debug for HttpsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsListener")
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

/// The HTTPS server configuration from the agent's PEM material; the
/// reason when it is unusable.
pub fn server_config(
    ca_pem: Option<&str>,
    cert_pem: &str,
    key_pem: &SecretPem,
    verify_incoming: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let (chain, key) = pem_chain_and_key(cert_pem, key_pem.expose())?;
    let builder = rustls::ServerConfig::builder_with_details(provider.clone(), Arc::new(HostClock))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (ca_pem, verify_incoming) {
        (None, true) => {
            return Err("tls.https verify_incoming is set but no ca_file is given".into())
        }
        (_, false) => builder.with_no_client_auth(),
        (Some(ca), true) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(pem_roots("ca_file", ca)?, provider)
                    .build()
                    .map_err(|e| format!("ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("cert_file and key_file: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
