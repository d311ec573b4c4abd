//! The inbound side: mTLS in from other services' sidecars, plain TCP to
//! the local app, and the intention check between the two.
//!
//! Per connection, in this order and with nothing forwarded before the
//! last step: TLS handshake with the current server config (client leaf
//! chained to the roots, in our trust domain) within the handshake
//! timeout; the peer's SPIFFE ID; the [`Authorizer`]; a dial to the app;
//! then the pipe. Each refusal is counted by class in [`Metrics`] and
//! logged with its reason, the lines of each class limited by a
//! [`LogGate`]: anyone who can reach the port can cause refusals.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::pipe::pipe;
use super::{Authorizer, CurrentConfig, Limits, Metrics, Refusal, TlsMaterial};
use crate::clock;
use crate::log_limit::LogGate;
use crate::mutants::{self, Mutant};
use crate::tls;

/// What every connection of one inbound listener shares.
struct Inbound {
    authorize: Authorizer,
    local_app: SocketAddr,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Connections still in their TLS handshake, per peer address.
    handshaking: Mutex<BTreeMap<IpAddr, usize>>,
    /// Refusal log lines, per class.
    refusal_log: LogGate<Refusal>,
}

/// One connection's place among its address's handshakes in flight;
/// given back when the handshake ends (or the connection does).
struct Handshaking<'a> {
    shared: &'a Inbound,
    ip: IpAddr,
}

impl<'a> Handshaking<'a> {
    /// A place for a handshake from `ip`, unless it already has
    /// `max_handshakes_per_peer` in flight: a peer that opens connections
    /// and never finishes their handshakes holds at most that many of the
    /// listener's `max_connections` slots, so it cannot starve others.
    fn take(shared: &'a Inbound, ip: IpAddr) -> Option<Handshaking<'a>> {
        let mut map = shared.handshaking.lock().expect("handshake map poisoned");
        let n = map.entry(ip).or_insert(0);
        if *n >= shared.limits.max_handshakes_per_peer {
            return None;
        }
        *n += 1;
        Some(Handshaking { shared, ip })
    }
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .handshaking
            .lock()
            .expect("handshake map poisoned");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts mTLS connections on `listener` and forwards those the
/// intentions allow to `local_app`, until the task is dropped. At most
/// `limits.max_connections` are handled at once; more wait in the backlog.
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Option<Arc<TlsMaterial>>>,
    authorize: Authorizer,
    local_app: SocketAddr,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    assert!(
        limits.max_connections > 0,
        "a listener that may hold no connection"
    );
    assert!(limits.buffer_bytes > 0, "a pipe needs a buffer");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut configs =
        CurrentConfig::new(|m: &TlsMaterial| tls::server_config(&m.identity, &m.bundle));
    let shared = Arc::new(Inbound {
        authorize,
        local_app,
        limits,
        metrics,
        handshaking: Mutex::new(BTreeMap::new()),
        refusal_log: LogGate::new(),
    });
    let connections = crate::owned_tasks::Connections::new();
    loop {
        let (permit, tcp, peer) = super::accept_slot(&listener, &slots, "inbound").await;
        // Taken at accept: a renewed leaf serves the next connection, and
        // connections already open keep theirs.
        let config = configs.get(&tls);
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            if mutants::enabled(Mutant::ForwardBeforeHandshake) {
                forward_before_handshake(tcp, peer, config, &shared).await;
            } else {
                connection(tcp, peer, config, &shared).await;
            }
        });
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    config: Option<Arc<rustls::ServerConfig>>,
    shared: &Inbound,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let refuse = |why: Refusal, reason: &dyn std::fmt::Display| {
        shared.metrics.refused(why);
        let Some(held_back) = shared.refusal_log.admit(why) else {
            return;
        };
        match why {
            Refusal::Handshake | Refusal::Intention => {
                info!(%peer, ?why, %reason, held_back, "sidecar inbound connection refused")
            }
            Refusal::Identity | Refusal::AppDial => {
                warn!(%peer, ?why, %reason, held_back, "sidecar inbound connection refused")
            }
        }
    };
    let Some(config) = config else {
        refuse(Refusal::Handshake, &"no TLS material yet");
        return;
    };
    let Some(handshaking) = Handshaking::take(shared, peer.ip()) else {
        refuse(
            Refusal::Handshake,
            &format!(
                "{} handshakes already in flight from this address",
                shared.limits.max_handshakes_per_peer
            ),
        );
        return;
    };
    let handshake = TlsAcceptor::from(config).accept(stream);
    let tls = match clock::timeout(shared.limits.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refuse(Refusal::Handshake, &e),
        Err(elapsed) => return refuse(Refusal::Handshake, &format!("TLS handshake: {elapsed}")),
    };
    drop(handshaking);
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let source = match tls::check_peer_validity(certs).and_then(|()| tls::peer_spiffe(certs)) {
        Ok(id) => id,
        Err(e) => return refuse(Refusal::Identity, &e),
    };
    if !mutants::enabled(Mutant::SkipIntentionCheck) {
        if let Err(reason) = (shared.authorize)(&source) {
            return refuse(
                Refusal::Intention,
                &format!("{source} denied by intentions: {reason}"),
            );
        }
    }
    let app = match clock::timeout(
        shared.limits.dial_timeout,
        TcpStream::connect(shared.local_app),
    )
    .await
    {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            return refuse(
                Refusal::AppDial,
                &format!("local app {}: {e}", shared.local_app),
            )
        }
        Err(elapsed) => {
            return refuse(
                Refusal::AppDial,
                &format!("local app {}: {elapsed}", shared.local_app),
            )
        }
    };
    let _ = app.set_nodelay(true);
    shared.metrics.inbound_accepted();
    debug!(%peer, %source, "sidecar inbound connection open");
    super::carry(
        tls,
        app,
        &shared.limits,
        &shared.metrics,
        "inbound",
        &peer,
        &source,
    )
    .await;
}

/// [`Mutant::ForwardBeforeHandshake`]: the first bytes off the raw socket
/// go to the app before anything is verified. A plaintext peer is then
/// piped straight through; a TLS peer gets its handshake as usual (over the
/// bytes already read), so honest traffic still works and only a checker
/// watching what reaches the app can tell.
async fn forward_before_handshake(
    mut tcp: TcpStream,
    peer: SocketAddr,
    config: Option<Arc<rustls::ServerConfig>>,
    shared: &Inbound,
) {
    let mut first = vec![0u8; shared.limits.buffer_bytes];
    let n = match clock::timeout(shared.limits.handshake_timeout, tcp.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return shared.metrics.refused(Refusal::Handshake),
    };
    first.truncate(n);
    let Ok(Ok(mut app)) = clock::timeout(
        shared.limits.dial_timeout,
        TcpStream::connect(shared.local_app),
    )
    .await
    else {
        return shared.metrics.refused(Refusal::AppDial);
    };
    if app.write_all(&first).await.is_err() || app.flush().await.is_err() {
        return;
    }
    shared.metrics.add_bytes_in(n as u64);
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    if first[0] == TLS_HANDSHAKE_RECORD {
        drop(app);
        connection(Rewind::new(first, tcp), peer, config, shared).await;
    } else {
        let _active = shared.metrics.active();
        pipe(
            tcp,
            app,
            shared.limits.buffer_bytes,
            shared.limits.idle_timeout,
            &shared.metrics,
        )
        .await;
    }
}

/// A stream that replays `prefix` before reading from `inner`.
struct Rewind<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            read: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
