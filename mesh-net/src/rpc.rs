//! Framed request/response RPC over TCP.
//!
//! One request at a time per connection: the client writes a frame, the
//! server answers with one frame. Idle client connections are pooled per
//! address. A peer that sends a bad frame or an undecodable message gets its
//! connection closed and nothing else happens: the server keeps serving
//! every other connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::codec::{self, FrameError, LEN_PREFIX};
use mesh_core::wire::{self, Request, Response, RpcError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::clock;
use crate::log_limit::LogGate;
use crate::raft_types::{RaftEnvelope, RaftReply};
use crate::rpc_tls::{PeerRole, RpcStream, RpcTls};

/// A request on the mesh's RPC port.
pub type RpcRequest = Request<RaftEnvelope>;
/// A response on the mesh's RPC port.
pub type RpcResponse = Response<RaftReply>;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Why an RPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request is larger than one frame; it was not sent.
    #[error("request to {addr} not sent: {source}")]
    TooLarge {
        /// Target.
        addr: String,
        /// Sizes.
        source: wire::TooLarge,
    },
    /// The request was never delivered (connect failed): safe to retry.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Target.
        addr: String,
        /// Cause.
        source: io::Error,
    },
    /// The request may or may not have been carried out.
    #[error("rpc to {addr} failed: {reason}")]
    Failed {
        /// Target.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// No answer within the deadline; the outcome is unknown.
    #[error("rpc to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Target.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
}

impl CallError {
    /// Whether the request certainly did not reach the server.
    pub fn not_delivered(&self) -> bool {
        matches!(self, CallError::Connect { .. } | CallError::TooLarge { .. })
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; LEN_PREFIX];
    match stream.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = codec::decode_len(prefix).map_err(frame_err)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    let payload = codec::decode_body(&body).map_err(frame_err)?;
    Ok(Some(payload.to_vec()))
}

fn frame_err(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Encodes one message as a frame, or says it exceeds the frame limit.
pub fn encode_message<T: Serialize>(msg: &T) -> Result<Vec<u8>, wire::TooLarge> {
    let mut out = Vec::new();
    wire::encode(msg, &mut out)?;
    Ok(out)
}

/// Writes encoded frames and flushes them (simulated TCP sends on flush).
pub async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> io::Result<()> {
    stream.write_all(frame).await?;
    stream.flush().await
}

/// Writes one message as a frame and flushes it. A message over the frame
/// limit is not sent and fails with `InvalidInput`.
pub async fn write_message<S: AsyncWrite + Unpin, T: Serialize>(
    stream: &mut S,
    msg: &T,
) -> io::Result<()> {
    let frame = encode_message(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    write_frame(stream, &frame).await
}

/// Reads one message; `Ok(None)` on a clean end of stream.
pub async fn read_message<S: AsyncRead + Unpin, T: DeserializeOwned>(
    stream: &mut S,
) -> io::Result<Option<T>> {
    match read_frame(stream).await? {
        None => Ok(None),
        Some(payload) => wire::decode(&payload)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// Serves RPC on `listener` until the task is dropped, calling `handler`
/// for each request. With `tls`, connections are taken as its settings say
/// (see [`crate::rpc_tls`]) and requests it refuses for the peer never
/// reach `handler`. `closed` hears the peer address of every served
/// connection that ended (a peer closing, resetting or misbehaving).
pub async fn serve<H, F, C>(listener: TcpListener, tls: Option<Arc<RpcTls>>, handler: H, closed: C)
where
    H: Fn(RpcRequest) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = RpcResponse> + Send + 'static,
    C: Fn(SocketAddr) + Clone + Send + Sync + 'static,
{
    // Anyone who can reach the port can cause refusals: their lines are
    // limited per kind, and each line says how many were held back.
    let refusal_log = Arc::new(LogGate::new());
    // Connections end with the loop, as a stopped process's would.
    let connections = crate::owned_tasks::Connections::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "rpc accept failed");
                clock::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let closed = closed.clone();
        let tls = tls.clone();
        let refusal_log = refusal_log.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let (stream, role) = match &tls {
                None => (RpcStream::plain(stream), PeerRole::Anonymous),
                Some(tls) => match tls.accept(stream).await {
                    Ok(Some(taken)) => taken,
                    Ok(None) => return,
                    Err(e) => {
                        // A peer without the right certificate, or plaintext
                        // where TLS is required: closed, and said once.
                        if let Some(held_back) = refusal_log.admit(RpcRefusal::Connection) {
                            warn!(%peer, error = %e, held_back, "rpc connection refused");
                        }
                        return;
                    }
                },
            };
            if let Err(e) =
                serve_connection(stream, tls.as_deref(), role, handler, &refusal_log).await
            {
                // Garbage, a bad frame or a reset: this connection ends, nothing else.
                debug!(%peer, error = %e, "rpc connection closed");
            }
            closed(peer);
        });
    }
}

/// The kinds of refusal line an RPC listener logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RpcRefusal {
    /// The TLS handshake or the first bytes failed.
    Connection,
    /// A request this peer's role may not make.
    Request,
}

async fn serve_connection<H, F>(
    mut stream: RpcStream,
    tls: Option<&RpcTls>,
    role: PeerRole,
    handler: H,
    refusal_log: &LogGate<RpcRefusal>,
) -> io::Result<()>
where
    H: Fn(RpcRequest) -> F,
    F: Future<Output = RpcResponse>,
{
    while let Some(req) = read_message::<_, RpcRequest>(&mut stream).await? {
        let refusal = tls.and_then(|tls| tls.refusal(&req, role));
        let resp = match refusal {
            Some(why) => {
                if let Some(held_back) = refusal_log.admit(RpcRefusal::Request) {
                    warn!(
                        ?role,
                        request = request_kind(&req),
                        held_back,
                        "rpc request refused: {why}"
                    );
                }
                Response::Error(RpcError::Rejected(why))
            }
            None => handler(req).await,
        };
        let frame = encode_message(&resp).unwrap_or_else(|too_large| {
            // An answer larger than a frame (a huge recursive read) is
            // refused as a whole; the caller learns why.
            let refusal: RpcResponse = Response::Error(RpcError::Rejected(format!(
                "the answer cannot be sent: {too_large}"
            )));
            encode_message(&refusal).expect("a refusal fits in a frame")
        });
        write_frame(&mut stream, &frame).await?;
    }
    Ok(())
}

/// The label of a request in `consul.rpc.request`.
pub fn request_kind(req: &RpcRequest) -> &'static str {
    match req {
        Request::Raft(_) => "Raft",
        Request::Hello(_) => "Hello",
        Request::Join(_) => "Join",
        Request::RemovePeer { .. } => "RemovePeer",
        Request::Write(_) => "Write",
        Request::Read(_) => "Read",
        Request::TimeoutNow { .. } => "TimeoutNow",
        Request::PreVote { .. } => "PreVote",
        Request::Status => "Status",
        Request::Heartbeat { .. } => "Heartbeat",
        Request::SignLeaf { .. } => "SignLeaf",
        Request::SignAgentCert { .. } => "SignAgentCert",
        Request::RotateRoot { .. } => "RotateRoot",
        Request::RenewSession { .. } => "RenewSession",
    }
}

/// Whether carrying out `req` twice has the same effect as once.
fn is_idempotent(req: &RpcRequest) -> bool {
    !matches!(req, Request::Write(_))
}

fn is_stale_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// An RPC client with a pool of idle connections per address.
#[derive(Clone, Default)]
pub struct RpcClient {
    idle: Arc<Mutex<BTreeMap<String, Vec<RpcStream>>>>,
    /// TLS for outgoing connections (`verify_outgoing`), if configured.
    tls: Option<Arc<RpcTls>>,
    /// The address outgoing connections come from (a server's `-bind`),
    /// so peers and firewalls see this server's own address, not whichever
    /// one the kernel picks (127.0.0.1 for every loopback address).
    #[cfg_attr(madsim, allow(dead_code))]
    source_ip: Option<std::net::IpAddr>,
}

/// Idle connections kept per address; more are closed after use.
const MAX_IDLE_PER_ADDR: usize = 16;

impl RpcClient {
    /// A client with an empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client whose connections come from `ip` (unless it is
    /// unspecified), over TLS when `tls` says to dial it.
    pub fn with_source_ip(ip: std::net::IpAddr, tls: Option<Arc<RpcTls>>) -> Self {
        Self {
            source_ip: (!ip.is_unspecified()).then_some(ip),
            tls,
            ..Self::default()
        }
    }

    #[cfg(not(madsim))]
    async fn open(&self, addr: &str) -> io::Result<TcpStream> {
        let Some(ip) = self.source_ip else {
            return TcpStream::connect(addr).await;
        };
        let target = match addr.parse::<std::net::SocketAddr>() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(addr)
                .await?
                .find(|a| a.is_ipv4() == ip.is_ipv4())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?,
        };
        let socket = if ip.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
        socket.connect(target).await
    }

    /// The simulator gives each host one address; its sockets need no bind.
    #[cfg(madsim)]
    async fn open(&self, addr: &str) -> io::Result<TcpStream> {
        TcpStream::connect(addr).await
    }

    /// A new connection, TLS-wrapped when configured. A failed handshake
    /// is a failed connect: nothing was sent.
    async fn connect(&self, addr: &str) -> Result<RpcStream, CallError> {
        let connect_err = |source| CallError::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = clock::timeout(CONNECT_TIMEOUT, self.open(addr))
            .await
            .map_err(|_| connect_err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => Ok(RpcStream::plain(stream)),
            Some(tls) => tls.connect(stream).await.map_err(connect_err),
        }
    }

    /// Sends `req` to `addr` and waits up to `timeout` for the answer.
    pub async fn call(
        &self,
        addr: &str,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, CallError> {
        let frame = encode_message(req).map_err(|source| CallError::TooLarge {
            addr: addr.to_string(),
            source,
        })?;
        let pooled = self
            .idle
            .lock()
            .expect("rpc pool poisoned")
            .get_mut(addr)
            .and_then(Vec::pop);
        let fresh = pooled.is_none();
        let mut stream = match pooled {
            Some(s) => s,
            None => self.connect(addr).await?,
        };
        let first = clock::timeout(timeout, Self::exchange(&mut stream, &frame)).await;
        let result = match first {
            Ok(Err(e)) if !fresh && is_idempotent(req) && is_stale_connection(&e) => {
                // Most likely a pooled connection the peer had already closed
                // (it restarted). The request may still have been processed,
                // so only idempotent requests are sent again.
                self.forget(addr);
                stream = self.connect(addr).await?;
                clock::timeout(timeout, Self::exchange(&mut stream, &frame)).await
            }
            other => other,
        };
        match result {
            Ok(Ok(resp)) => {
                let mut idle = self.idle.lock().expect("rpc pool poisoned");
                let conns = idle.entry(addr.to_string()).or_default();
                if conns.len() < MAX_IDLE_PER_ADDR {
                    conns.push(stream);
                }
                Ok(resp)
            }
            Ok(Err(e)) => Err(CallError::Failed {
                addr: addr.to_string(),
                reason: e.to_string(),
            }),
            Err(_) => Err(CallError::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        }
    }

    /// Drops every idle connection to `addr`.
    pub fn forget(&self, addr: &str) {
        self.idle.lock().expect("rpc pool poisoned").remove(addr);
    }

    async fn exchange(stream: &mut RpcStream, frame: &[u8]) -> io::Result<RpcResponse> {
        if crate::buggify::fires("rpc_send") {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "buggify: rpc send failed",
            ));
        }
        write_frame(stream, frame).await?;
        match read_message(stream).await? {
            Some(resp) => Ok(resp),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the answer",
            )),
        }
    }
}
