//! rustls configurations for Connect's mutual TLS between sidecars.
//!
//! Both ends present a leaf certificate from the cluster's CA whose URI SAN
//! is the service's SPIFFE ID, and both verify the other's chain against
//! the CA roots of the current [`TrustBundle`]. The stock rustls verifiers
//! check DNS names and read the system clock, neither of which fits:
//!
//! - the name that matters is the SPIFFE URI SAN: the client requires the
//!   server to be the service it dialled ([`SpiffeId::is_service`]), the
//!   server requires any service of its own trust domain and leaves the
//!   "may it talk to me" question to the intentions;
//! - expiry is judged by [`clock::wall_now`], the host's own wall clock,
//!   which the simulator skews per host, so an expired or not-yet-valid
//!   leaf is refused exactly when a real host with that clock would.
//!
//! TLS 1.3 only, ring only (see `shared/DESIGN.md`: aws-lc-rs randomness is
//! not deterministic in the simulator).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::connect::spiffe::{SpiffeId, SpiffeIdError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::time_provider::TimeProvider;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::clock;
use crate::mutants::{self, Mutant};

/// Why TLS material is unusable or a peer is not who it must be.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM block could not be read; the material from the agent is corrupt.
    #[error("cannot read the {what} PEM: {source}")]
    Pem {
        /// Which input ("certificate chain", "private key", "CA root").
        what: &'static str,
        /// The decoder's complaint.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate chain PEM holds no certificate.
    #[error("the certificate chain PEM holds no certificate")]
    NoCertificate,
    /// No CA root to verify peers against: every peer would be refused.
    #[error("the trust bundle holds no CA root")]
    NoRoots,
    /// A certificate is not valid X.509 DER.
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// The peer's leaf is outside its validity window on this host's
    /// clock (a resumed session carries the leaf it was opened with).
    #[error(
        "the peer's certificate is not valid at this host's time {now} (valid {not_before} to \
         {not_after}, unix seconds; if the peer's clock is right, check this host's)"
    )]
    Expired {
        /// This host's time the chain was checked at.
        now: i64,
        /// Start of validity.
        not_before: i64,
        /// End of validity.
        not_after: i64,
    },
    /// The end-entity certificate carries no SPIFFE URI SAN.
    #[error("peer certificate has no SPIFFE URI SAN")]
    NoSpiffe,
    /// The end-entity certificate carries more than one SPIFFE URI SAN:
    /// which identity it speaks for is ambiguous.
    #[error("peer certificate has {0} SPIFFE URI SANs; exactly one is allowed")]
    ManySpiffe(usize),
    /// The SPIFFE URI SAN is not a service identity.
    #[error("peer certificate's SPIFFE URI SAN is unusable: {0}")]
    BadSpiffe(#[from] SpiffeIdError),
    /// The peer belongs to another trust domain (another cluster's CA).
    #[error("peer is {id}, outside trust domain {expected}")]
    WrongTrustDomain {
        /// The peer's identity.
        id: SpiffeId,
        /// Our trust domain.
        expected: String,
    },
    /// The server is not the service the client meant to reach.
    #[error("server is {id}, expected service {expected} in trust domain {trust_domain}")]
    WrongService {
        /// The server's identity.
        id: SpiffeId,
        /// The service the client dialled.
        expected: String,
        /// Our trust domain.
        trust_domain: String,
    },
    /// rustls refused the configuration (e.g. the key does not fit the
    /// certificate, or a root is malformed).
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier cannot be built from the roots.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// This host's certificate, key and the identity the certificate names.
pub struct Identity {
    /// Leaf first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The SPIFFE ID in the leaf's URI SAN.
    pub spiffe: SpiffeId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe", &self.spiffe)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            spiffe: self.spiffe.clone(),
        }
    }
}

impl Identity {
    /// Reads a leaf (plus intermediates) and its key as the agent hands
    /// them out (`CertPEM`, `PrivateKeyPEM`); the identity is the leaf's
    /// SPIFFE URI SAN.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "certificate chain",
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::Pem {
                what: "private key",
                source,
            })?;
        let spiffe = peer_spiffe(&chain)?;
        Ok(Identity { chain, key, spiffe })
    }
}

/// The CA roots peers are verified against, and the trust domain they
/// belong to.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    /// Every active root (more than one while the CA rotates).
    pub roots: Vec<CertificateDer<'static>>,
    /// `<cluster-id>.consul`.
    pub trust_domain: String,
}

impl TrustBundle {
    /// Reads the roots (each PEM may hold several certificates).
    pub fn from_pems(pems: &[String], trust_domain: &str) -> Result<TrustBundle, TlsError> {
        let mut roots = Vec::new();
        for pem in pems {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.push(cert.map_err(|source| TlsError::Pem {
                    what: "CA root",
                    source,
                })?);
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        Ok(TrustBundle {
            roots,
            trust_domain: trust_domain.to_owned(),
        })
    }

    fn root_store(&self) -> Result<Arc<RootCertStore>, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone())?;
        }
        Ok(Arc::new(store))
    }
}

/// The end-entity certificate's one service SPIFFE ID (its URI SAN).
pub fn peer_spiffe(certs: &[CertificateDer]) -> Result<SpiffeId, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .filter(|uri| {
            uri.get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoSpiffe),
        [uri] => Ok(uri.parse()?),
        many => Err(TlsError::ManySpiffe(many.len())),
    }
}

/// The server side of a sidecar's inbound listener: TLS 1.3, a client
/// certificate required, chained to `bundle` and naming a service of its
/// trust domain. Which services may connect is the intentions' business,
/// decided after the handshake.
pub fn server_config(
    identity: &Identity,
    bundle: &TrustBundle,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let webpki =
        WebPkiClientVerifier::builder_with_provider(bundle.root_store()?, provider.clone())
            .build()?;
    let verifier = Arc::new(SpiffeClientVerifier {
        inner: webpki,
        trust_domain: bundle.trust_domain.clone(),
    });
    // The default session cache stays on: resumption skips the signature
    // work for a sidecar that reconnects often, and the resumed session
    // keeps the client chain that was verified for it.
    let config = rustls::ServerConfig::builder_with_details(provider, Arc::new(HostClock))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(config))
}

/// The client side of an upstream: presents `identity`, and accepts only a
/// server chained to `bundle` whose SPIFFE ID is `expected_service` in the
/// bundle's trust domain. The DNS name given to rustls on connect is not
/// checked (use [`server_name`]).
pub fn client_config(
    identity: &Identity,
    bundle: &TrustBundle,
    expected_service: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ServerChainVerifier {
        roots: bundle.root_store()?,
        provider: provider.clone(),
        check: spiffe_check(bundle.trust_domain.clone(), expected_service.to_owned()),
    });
    let config = rustls::ClientConfig::builder_with_details(provider, Arc::new(HostClock))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(config))
}

/// The name to hand rustls when connecting to `service`: a fixed name under
/// `.invalid` (RFC 6761), never resolved and never checked, since the
/// SPIFFE ID is what identifies the server. It still goes out as SNI.
pub fn server_name(service: &str) -> ServerName<'static> {
    ServerName::try_from(format!("{service}.mesh.invalid"))
        .unwrap_or_else(|_| ServerName::try_from("service.mesh.invalid").expect("a valid DNS name"))
}

/// The CA certificates in `pem` as a root store; `what` names the input
/// in errors (`ca_file`, ...).
pub(crate) fn pem_roots(what: &str, pem: &str) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("{what}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{what}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{what} holds no certificate"));
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its private key from PEM (`cert_file`, `key_file`).
pub(crate) fn pem_chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file: {e}"))?;
    if chain.is_empty() {
        return Err("cert_file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("key_file: cannot read the private key PEM: {e}"))?;
    Ok((chain, key))
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls' own notion of now (session ticket ages) follows the host clock.
#[derive(Debug)]
pub(crate) struct HostClock;

impl HostClock {
    /// The host's wall clock as rustls takes it.
    pub(crate) fn now() -> UnixTime {
        unix_time(clock::wall_now())
    }
}

impl TimeProvider for HostClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(unix_time(clock::wall_now()))
    }
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    )
}

/// Checks that the peer's leaf (`certs[0]`) is valid now on this host's
/// clock. A resumed TLS 1.3 session skips the certificate verifier and
/// hands back the leaf the session was opened with, so the inbound side
/// checks it again after every handshake: a leaf that expired since (a
/// decommissioned host) cannot keep a session alive by resuming it.
pub fn check_peer_validity(certs: &[CertificateDer]) -> Result<(), TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let now = verification_time(leaf).as_secs() as i64;
    let (not_before, not_after) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    if now < not_before || now > not_after {
        return Err(TlsError::Expired {
            now,
            not_before,
            not_after,
        });
    }
    Ok(())
}

/// The time a peer chain is checked at: this host's wall clock, whatever
/// rustls passed in.
pub(crate) fn verification_time(end_entity: &CertificateDer<'_>) -> UnixTime {
    if mutants::enabled(Mutant::AcceptExpiredLeaf) {
        // The bug: a time the leaf is always valid at, so expiry is ignored.
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) {
            let not_before = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
            return UnixTime::since_unix_epoch(Duration::from_secs(not_before + 1));
        }
    }
    unix_time(clock::wall_now())
}

fn peer_refused(err: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerRefused(
        err,
    )))))
}

/// Our reason inside a rustls error. rustls shows the `Debug` form of an
/// `OtherError`, so `Debug` here is the readable message: handshake errors
/// in the logs then say "server is spiffe://…/svc/fcc, expected service
/// fcs …" rather than a struct dump.
struct PeerRefused(TlsError);

impl fmt::Debug for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for PeerRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Server side: webpki's chain checks at the host's time, then the SPIFFE
/// trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, verification_time(end_entity))?;
        let id = peer_spiffe(std::slice::from_ref(end_entity)).map_err(peer_refused)?;
        if !id.trust_domain.eq_ignore_ascii_case(&self.trust_domain) {
            return Err(peer_refused(TlsError::WrongTrustDomain {
                id,
                expected: self.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a [`ServerChainVerifier`] requires of a server's end-entity
/// certificate once its chain is good: a SPIFFE ID (sidecars), a DNS name
/// (the RPC port), ...
pub(crate) type IdentityCheck = Box<
    dyn Fn(
            &CertificateDer<'_>,
            &ParsedCertificate<'_>,
            &ServerName<'_>,
        ) -> Result<(), rustls::Error>
        + Send
        + Sync,
>;

/// Client side: the server's chain to `roots` at the host's time, then
/// `check` on who it is.
pub(crate) struct ServerChainVerifier {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) check: IdentityCheck,
}

impl fmt::Debug for ServerChainVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerChainVerifier")
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            verification_time(end_entity),
            self.provider.signature_verification_algorithms.all,
        )?;
        (self.check)(end_entity, &cert, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sidecars: the server must be `expected_service` of `trust_domain`.
fn spiffe_check(trust_domain: String, expected_service: String) -> IdentityCheck {
    Box::new(move |end_entity, _, _| {
        let id = peer_spiffe(std::slice::from_ref(end_entity)).map_err(peer_refused)?;
        if !mutants::enabled(Mutant::SkipSpiffeCheck)
            && !id.is_service(&trust_domain, &expected_service)
        {
            return Err(peer_refused(TlsError::WrongService {
                id,
                expected: expected_service.clone(),
                trust_domain: trust_domain.clone(),
            }));
        }
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod test_ca;
#[cfg(test)]
mod tests;
