//! TLS on the RPC port (8300), configured as Consul's `tls.defaults` and
//! `tls.internal_rpc` blocks configure it, with certificates from the
//! operator's CA (`mesh tls ca create`, `mesh tls cert create`).
//!
//! - `verify_outgoing`: this agent dials servers over TLS and verifies
//!   their chain against `ca_file`; it presents its own certificate when it
//!   has one.
//! - `verify_server_hostname`: the server's certificate must also name
//!   `server.<datacenter>.<domain>`, so a client agent's certificate cannot
//!   pass for a server. A server with this set also answers server-only
//!   requests (Raft, join, discovery, PreVote, hand-off) only for peers
//!   whose certificate names a server (the fix for Consul's CVE-2021-37219):
//!   a client certificate cannot be used to join as a server or to inject
//!   Raft messages.
//! - `verify_incoming`: a server refuses plaintext connections and TLS
//!   peers without a certificate `ca_file` verifies. Without it a server
//!   that has a certificate accepts both: the first byte tells a TLS
//!   ClientHello (0x16) from a frame, whose 4-byte length prefix starts
//!   with 0 (frames are far below 2^24 bytes), so a cluster can move to TLS
//!   one agent at a time.
//!
//! Certificate validity is judged on [`crate::clock::wall_now`], so the
//! simulator's clock faults reach it. TLS 1.3 only, ring only.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_core::connect::SecretPem;
use mesh_core::wire::Request;
use rustls::client::verify_server_name;
use rustls::pki_types::ServerName;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::clock;
use crate::mutants::{self, Mutant};
use crate::rpc::RpcRequest;
use crate::swap::Swap;
use crate::tls::{pem_chain_and_key, pem_roots, provider, HostClock, ServerChainVerifier};

/// How long a TLS handshake on the RPC port may take, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The agent's RPC TLS settings and the PEM material its files held.
#[derive(Clone)]
pub struct RpcTlsConfig {
    /// The operator CA (`ca_file`).
    pub ca_pem: Option<String>,
    /// This agent's certificate chain (`cert_file`).
    pub cert_pem: Option<String>,
    /// Its private key (`key_file`).
    pub key_pem: Option<SecretPem>,
    /// `verify_incoming`.
    pub verify_incoming: bool,
    /// `verify_outgoing`.
    pub verify_outgoing: bool,
    /// `verify_server_hostname`.
    pub verify_server_hostname: bool,
    /// `server.<datacenter>.<domain>`.
    pub server_name: String,
    /// This agent's part in `auto_encrypt`.
    pub auto_encrypt: AutoEncrypt,
}

/// This agent's part in Consul's `auto_encrypt`: client agents get their
/// RPC certificates from the servers, signed by the Connect CA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoEncrypt {
    /// Neither.
    #[default]
    Off,
    /// A server with `auto_encrypt.allow_tls`: it signs agent
    /// certificates, takes a TLS peer without a certificate for that one
    /// request, and trusts the Connect CA's roots for client certificates
    /// (never for a server's).
    SignsCertificates,
    /// A client agent with `auto_encrypt.tls`: it verifies the servers
    /// with `ca_file` and presents the certificate they sign it
    /// ([`RpcTls::use_identity`]) once it has one.
    GetsCertificate,
}

impl fmt::Debug for RpcTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcTlsConfig")
            .field("has_ca", &self.ca_pem.is_some())
            .field("has_cert", &self.cert_pem.is_some())
            .field("key", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("verify_incoming", &self.verify_incoming)
            .field("verify_outgoing", &self.verify_outgoing)
            .field("verify_server_hostname", &self.verify_server_hostname)
            .field("server_name", &self.server_name)
            .field("auto_encrypt", &self.auto_encrypt)
            .finish()
    }
}

/// Who is at the other end of an RPC connection, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// Plaintext, or TLS without a client certificate.
    Anonymous,
    /// A certificate a trusted CA signed that is not a server's.
    Agent,
    /// A certificate from the operator CA naming
    /// `server.<datacenter>.<domain>`.
    Server,
}

/// Ready-to-use TLS for the RPC port, built from [`RpcTlsConfig`] at start
/// and again by each `mesh reload`, and from the certificates and roots
/// `auto_encrypt` brings while the agent runs.
pub struct RpcTls {
    /// Replaced as a whole: each new connection reads it once,
    /// established ones keep what they were opened with.
    current: Swap<Settings>,
    /// What `current` was built from.
    inputs: std::sync::Mutex<Inputs>,
}

/// Everything RPC TLS is built from: the files, and what `auto_encrypt`
/// added since.
#[derive(Clone)]
struct Inputs {
    config: RpcTlsConfig,
    /// The Connect CA's roots (PEM), trusted for client certificates on a
    /// server with [`AutoEncrypt::SignsCertificates`].
    connect_roots: Vec<String>,
    /// The certificate chain and key the servers signed for this client
    /// agent ([`AutoEncrypt::GetsCertificate`]).
    identity: Option<(String, SecretPem)>,
}

/// One consistent set of RPC TLS settings.
struct Settings {
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
    verify_incoming: bool,
    /// Server-only requests need a [`PeerRole::Server`] peer.
    guard_server_requests: bool,
    /// A [`PeerRole::Server`] certificate must name the servers
    /// (`verify_server_hostname`); without, any certificate the operator
    /// CA signed is one.
    server_must_be_named: bool,
    /// A TLS peer without a certificate may only ask for one
    /// (`SignAgentCert`).
    anonymous_may_only_sign: bool,
    /// Confirms a certificate naming a server against the operator CA
    /// alone: the Connect CA signs agents, never servers.
    server_roots: Option<Arc<dyn ClientCertVerifier>>,
    server_name: ServerName<'static>,
    signs_agent_certificates: bool,
}

impl fmt::Debug for RpcTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.current.get();
        f.debug_struct("RpcTls")
            .field("serves_tls", &s.acceptor.is_some())
            .field("dials_tls", &s.connector.is_some())
            .field("verify_incoming", &s.verify_incoming)
            .field("guard_server_requests", &s.guard_server_requests)
            .field("server_name", &s.server_name)
            .finish()
    }
}

impl Inputs {
    /// Builds the rustls configurations; refuses inconsistent settings
    /// with the reason (as Consul refuses them at startup).
    fn build(&self) -> Result<Settings, String> {
        let config = &self.config;
        let provider = provider();
        let gets_certificate = config.auto_encrypt == AutoEncrypt::GetsCertificate;
        let signs = config.auto_encrypt == AutoEncrypt::SignsCertificates;
        let verify_outgoing =
            config.verify_outgoing || config.verify_server_hostname || gets_certificate;
        let operator_roots = match &config.ca_pem {
            None if gets_certificate => {
                return Err(
                    "auto_encrypt.tls is set but no ca_file is given to verify the \
                            servers it asks for a certificate"
                        .into(),
                )
            }
            None if config.verify_incoming => {
                return Err("verify_incoming is set but no ca_file is given".into())
            }
            None if verify_outgoing => {
                return Err("verify_outgoing is set but no ca_file is given".into())
            }
            None => None,
            Some(pem) => Some(pem_roots("ca_file", pem)?),
        };
        let identity = match (&config.cert_pem, &config.key_pem) {
            (Some(cert), Some(key)) => Some(pem_chain_and_key(cert, key.expose())?),
            (None, None) => match &self.identity {
                Some((cert, key)) => Some(pem_chain_and_key(cert, key.expose())?),
                None => None,
            },
            (Some(_), None) => return Err("cert_file is set but key_file is not".into()),
            (None, Some(_)) => return Err("key_file is set but cert_file is not".into()),
        };
        let server_name = ServerName::try_from(config.server_name.clone()).map_err(|_| {
            format!(
                "{:?} is not a DNS name (check datacenter and domain)",
                config.server_name
            )
        })?;
        if signs && identity.is_none() {
            return Err(
                "auto_encrypt.allow_tls is set but no cert_file and key_file are given \
                        (the server presents its own certificate to the agents it signs for)"
                    .into(),
            );
        }
        // Client certificates: the operator CA's, and on a server that
        // signs agent certificates the Connect CA's roots too.
        let client_roots = match &operator_roots {
            Some(_) if signs && !self.connect_roots.is_empty() => {
                let mut pems = config.ca_pem.clone().unwrap_or_default();
                for root in &self.connect_roots {
                    pems.push('\n');
                    pems.push_str(root);
                }
                Some(pem_roots("ca_file and the Connect CA roots", &pems)?)
            }
            roots => roots.clone(),
        };
        let server_roots = match &operator_roots {
            Some(roots) => Some(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| format!("ca_file: {e}"))?,
            ),
            None => None,
        };

        let acceptor = match (&identity, &client_roots) {
            // A client agent waiting for its certificate accepts no RPC.
            (None, _) if config.verify_incoming && !gets_certificate => {
                return Err("verify_incoming is set but no cert_file and key_file are given".into())
            }
            (None, _) => None,
            (Some((chain, key)), roots) => {
                let builder = rustls::ServerConfig::builder_with_details(
                    provider.clone(),
                    Arc::new(HostClock),
                )
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?;
                let builder = match roots {
                    None => builder.with_no_client_auth(),
                    Some(roots) => {
                        let verifier = WebPkiClientVerifier::builder_with_provider(
                            roots.clone(),
                            provider.clone(),
                        );
                        // A server that signs agent certificates lets a
                        // peer without one through the handshake: its only
                        // request can be to get one (`refusal`).
                        let verifier = if config.verify_incoming && !signs {
                            verifier.build()
                        } else {
                            verifier.allow_unauthenticated().build()
                        }
                        .map_err(|e| format!("ca_file: {e}"))?;
                        builder.with_client_cert_verifier(verifier)
                    }
                };
                let server = builder
                    .with_single_cert(chain.clone(), key.clone_key())
                    .map_err(|e| format!("cert_file and key_file: {e}"))?;
                Some(TlsAcceptor::from(Arc::new(server)))
            }
        };

        let connector = match (&operator_roots, verify_outgoing) {
            (Some(roots), true) => {
                let check_name = config.verify_server_hostname;
                let verifier = Arc::new(ServerChainVerifier {
                    roots: roots.clone(),
                    provider: provider.clone(),
                    // With verify_server_hostname the server must be
                    // server.<dc>.<domain>; without, any certificate the
                    // CA signed will do.
                    check: Box::new(move |_, cert, server_name| {
                        if check_name {
                            verify_server_name(cert, server_name)?;
                        }
                        Ok(())
                    }),
                });
                let builder = rustls::ClientConfig::builder_with_details(
                    provider.clone(),
                    Arc::new(HostClock),
                )
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
                let client = match &identity {
                    Some((chain, key)) => builder
                        .with_client_auth_cert(chain.clone(), key.clone_key())
                        .map_err(|e| format!("cert_file and key_file: {e}"))?,
                    None => builder.with_no_client_auth(),
                };
                Some(TlsConnector::from(Arc::new(client)))
            }
            _ => None,
        };
        Ok(Settings {
            acceptor,
            connector,
            verify_incoming: config.verify_incoming,
            // A server that signs agent certificates guards server-only
            // requests even without verify_server_hostname: anyone who
            // reaches the port can get an agent certificate.
            guard_server_requests: config.verify_incoming
                && (config.verify_server_hostname || signs),
            server_must_be_named: config.verify_server_hostname,
            anonymous_may_only_sign: config.verify_incoming && signs,
            server_roots,
            server_name,
            signs_agent_certificates: signs,
        })
    }
}

impl RpcTls {
    /// Builds the rustls configurations; refuses inconsistent settings
    /// with the reason (as Consul refuses them at startup).
    pub fn new(config: &RpcTlsConfig) -> Result<RpcTls, String> {
        let inputs = Inputs {
            config: config.clone(),
            connect_roots: Vec::new(),
            identity: None,
        };
        let settings = inputs.build()?;
        Ok(RpcTls {
            current: Swap::new(Arc::new(settings)),
            inputs: std::sync::Mutex::new(inputs),
        })
    }

    /// Rebuilds the settings from the inputs `change` makes; on an error
    /// the current settings stay.
    fn rebuild(&self, change: impl FnOnce(&mut Inputs)) -> Result<(), String> {
        let mut inputs = self.inputs.lock().expect("rpc tls inputs poisoned");
        let mut next = inputs.clone();
        change(&mut next);
        let settings = next.build()?;
        *inputs = next;
        self.current.set(Arc::new(settings));
        Ok(())
    }

    /// Takes `other`'s files (certificates, CA, verification) for every
    /// connection opened from now on: `mesh reload` builds `other` from
    /// the files as at start, so a bad file never replaces good settings.
    /// What `auto_encrypt` brought (a signed certificate, the Connect
    /// roots) is kept.
    pub fn adopt(&self, other: &RpcTls) {
        let config = other
            .inputs
            .lock()
            .expect("rpc tls inputs poisoned")
            .config
            .clone();
        if let Err(e) = self.rebuild(|inputs| inputs.config = config) {
            tracing::warn!(error = %e, "reloaded RPC TLS files do not combine with the auto_encrypt certificate or roots; using the files alone");
            // The files alone from now on, in the inputs too: a later
            // certificate or roots must not bring back the old files.
            let files_alone = other
                .inputs
                .lock()
                .expect("rpc tls inputs poisoned")
                .clone();
            *self.inputs.lock().expect("rpc tls inputs poisoned") = files_alone;
            self.current.set(other.current.get());
        }
    }

    /// Trusts the Connect CA's `roots` (PEM) for client certificates from
    /// now on, beside `ca_file` (a server with
    /// [`AutoEncrypt::SignsCertificates`]; others ignore them).
    pub fn trust_connect_roots(&self, roots: Vec<String>) -> Result<(), String> {
        self.rebuild(|inputs| inputs.connect_roots = roots)
    }

    /// Presents `chain` (PEM, leaf first) and `key` on every connection
    /// opened from now on: the certificate the servers signed for this
    /// client agent.
    pub fn use_identity(&self, chain: String, key: SecretPem) -> Result<(), String> {
        self.rebuild(|inputs| inputs.identity = Some((chain, key)))
    }

    /// The same settings without the certificate `auto_encrypt` brought:
    /// what a client agent asks for a new one with, so an expired one
    /// (a long outage, a clock fault) never stands in the way.
    pub fn without_identity(&self) -> Result<RpcTls, String> {
        let inputs = Inputs {
            identity: None,
            ..self.inputs.lock().expect("rpc tls inputs poisoned").clone()
        };
        let settings = inputs.build()?;
        Ok(RpcTls {
            current: Swap::new(Arc::new(settings)),
            inputs: std::sync::Mutex::new(inputs),
        })
    }

    /// Whether this agent signs `auto_encrypt` certificates.
    pub fn signs_agent_certificates(&self) -> bool {
        self.current.get().signs_agent_certificates
    }

    /// `server.<datacenter>.<domain>`: the name only servers' certificates
    /// carry.
    pub fn server_name(&self) -> String {
        server_name_str(&self.current.get().server_name)
    }

    /// Whether outgoing RPC connections use TLS.
    pub fn dials_tls(&self) -> bool {
        self.current.get().connector.is_some()
    }

    /// Wraps a fresh outgoing connection: a TLS handshake within
    /// [`HANDSHAKE_TIMEOUT`] when `verify_outgoing` is set.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<RpcStream> {
        let tcp = Sniffed::new(tcp, None);
        let settings = self.current.get();
        let Some(connector) = &settings.connector else {
            return Ok(RpcStream::Plain(tcp));
        };
        let tls = clock::timeout(
            HANDSHAKE_TIMEOUT,
            connector.connect(settings.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(RpcStream::Tls(Box::new(tokio_rustls::TlsStream::Client(
            tls,
        ))))
    }

    /// Takes an incoming connection: plaintext or TLS by its first byte,
    /// refusing what the settings refuse. The peer's role comes from its
    /// certificate. `Ok(None)`: the peer closed before sending anything.
    pub async fn accept(&self, mut tcp: TcpStream) -> io::Result<Option<(RpcStream, PeerRole)>> {
        // A caller writes its request (or ClientHello) as soon as it has
        // connected, so a connection that says nothing is not a caller:
        // it is dropped instead of holding a task forever.
        let mut first = [0u8; 1];
        let read = clock::timeout(HANDSHAKE_TIMEOUT, tcp.read(&mut first))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request and no TLS handshake within the handshake timeout",
                )
            })??;
        if read == 0 {
            return Ok(None);
        }
        let stream = Sniffed::new(tcp, Some(first[0]));
        let is_tls = first[0] == TLS_HANDSHAKE_BYTE;
        // Read after the first byte: a reload while the peer was silent
        // applies to it.
        let settings = self.current.get();
        let acceptor = match (&settings.acceptor, is_tls) {
            (_, false)
                if settings.verify_incoming && !mutants::enabled(Mutant::RpcPlaintextAccepted) =>
            {
                return Err(refused(
                    "plaintext RPC refused: verify_incoming requires TLS with a client certificate",
                ))
            }
            (_, false) => return Ok(Some((RpcStream::Plain(stream), PeerRole::Anonymous))),
            (None, true) => {
                return Err(refused(
                    "TLS RPC refused: this agent has no cert_file and key_file",
                ))
            }
            (Some(acceptor), true) => acceptor,
        };
        let tls = clock::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let role = match tls.get_ref().1.peer_certificates() {
            Some([leaf, intermediates @ ..]) => {
                let names_server = ParsedCertificate::try_from(leaf)
                    .is_ok_and(|cert| verify_server_name(&cert, &settings.server_name).is_ok());
                // Only the operator CA makes servers: a certificate the
                // Connect CA signed (an agent's) never counts as one,
                // whatever names it carries.
                let from_operator = settings.server_roots.as_ref().is_some_and(|v| {
                    v.verify_client_cert(leaf, intermediates, HostClock::now())
                        .is_ok()
                });
                if from_operator && (names_server || !settings.server_must_be_named) {
                    PeerRole::Server
                } else {
                    PeerRole::Agent
                }
            }
            _ => PeerRole::Anonymous,
        };
        Ok(Some((
            RpcStream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))),
            role,
        )))
    }

    /// Why `req` from a peer of `role` is refused, if it is: with
    /// `verify_incoming` and `verify_server_hostname`, only servers may
    /// send what only servers send.
    pub fn refusal(&self, req: &RpcRequest, role: PeerRole) -> Option<String> {
        let settings = self.current.get();
        let guarded = settings.guard_server_requests
            && !mutants::enabled(Mutant::RpcServerRequestsFromAgents);
        if guarded && is_server_only(req) && role != PeerRole::Server {
            return Some(format!(
                "this request is for servers only and the peer's certificate does not name {}",
                server_name_str(&settings.server_name)
            ));
        }
        let asks_for_certificate = matches!(req, Request::SignAgentCert { .. });
        let enforced = !mutants::enabled(Mutant::RpcPlaintextAccepted);
        (enforced
            && settings.anonymous_may_only_sign
            && role == PeerRole::Anonymous
            && !asks_for_certificate)
            .then(|| {
                "verify_incoming requires a client certificate; a peer without one may only \
                 ask for one (auto_encrypt)"
                    .to_string()
            })
    }
}

fn server_name_str(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        other => format!("{other:?}"),
    }
}

/// Requests only another server sends: letting anyone else send them would
/// let it join the Raft group or speak for a member of it.
fn is_server_only(req: &RpcRequest) -> bool {
    matches!(
        req,
        Request::Raft(_)
            | Request::Hello(_)
            | Request::Join(_)
            | Request::PreVote { .. }
            | Request::TimeoutNow { .. }
    )
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

/// A TCP stream whose first byte may already have been read (to tell TLS
/// from plaintext) and is given back first.
pub struct Sniffed {
    first: Option<u8>,
    inner: TcpStream,
}

impl Sniffed {
    fn new(inner: TcpStream, first: Option<u8>) -> Sniffed {
        Sniffed { first, inner }
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() > 0 {
            if let Some(b) = this.first.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One RPC connection, plaintext or TLS.
pub enum RpcStream {
    /// Plain TCP.
    Plain(Sniffed),
    /// TLS over TCP (either side).
    Tls(Box<tokio_rustls::TlsStream<Sniffed>>),
}

impl RpcStream {
    /// A plaintext stream over a fresh connection.
    pub fn plain(tcp: TcpStream) -> RpcStream {
        RpcStream::Plain(Sniffed::new(tcp, None))
    }
}

impl AsyncRead for RpcStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RpcStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_flush(cx),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
