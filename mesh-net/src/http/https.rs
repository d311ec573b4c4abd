//! The HTTPS API (`ports.https`, with `tls.https` over `tls.defaults`), as
//! Consul serves it: the same API as port 8500 behind TLS 1.2 or 1.3 with
//! the agent's certificate, and with `verify_incoming` a client
//! certificate the CA signed is required. Consul's clients reach it with
//! `CONSUL_HTTP_ADDR=https://...` and `CONSUL_CACERT`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::connect::SecretPem;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::tls::{provider, HostClock};

/// Where the HTTPS API listens and with what.
#[derive(Clone)]
pub struct HttpsListener {
    /// `-client` address and `ports.https`.
    pub bind: SocketAddr,
    /// The server configuration (certificate, key, client verification).
    pub tls: Arc<rustls::ServerConfig>,
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
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file: {e}"))?;
    if chain.is_empty() {
        return Err("cert_file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes())
        .map_err(|e| format!("key_file: cannot read the private key PEM: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_details(provider.clone(), Arc::new(HostClock))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (ca_pem, verify_incoming) {
        (None, true) => {
            return Err("tls.https verify_incoming is set but no ca_file is given".into())
        }
        (_, false) => builder.with_no_client_auth(),
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let cert = cert.map_err(|e| format!("ca_file: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file: not a usable CA certificate: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
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
