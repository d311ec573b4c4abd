//! The sidecar proxy's data plane: Connect's mutual TLS between services.
//!
//! A request from fcc to fcs travels
//!
//! ```text
//! fcc ─plain─> 127.0.0.1:<upstream port>   outbound::serve_upstream (fcc00)
//!             ─mTLS─> fcs00:9191            inbound::serve (fcs00)
//!                     intention fcc → fcs?
//!             ─plain─> 127.0.0.1:8181       fcs
//! ```
//!
//! The outbound side picks an fcs instance, presents fcc's leaf and
//! accepts only a server whose certificate says it is fcs. The inbound side
//! accepts any leaf of the cluster's CA, learns the peer's service from
//! its SPIFFE ID, and lets the connection reach the app only if the
//! [`Authorizer`] (the intentions) allows it, before a single byte is
//! forwarded.
//!
//! This module knows nothing of where certificates, roots, intentions and
//! instances come from: the control plane feeds them in through watch
//! channels and the authorizer. A new [`TlsMaterial`] (renewed leaf,
//! rotated roots) applies to connections opened after it; established
//! connections keep the session they were opened with.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::connect::spiffe::SpiffeId;
use tokio::sync::watch;
use tracing::warn;

use crate::tls::{Identity, TlsError, TrustBundle};

pub mod control;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod pipe;

pub use metrics::{Metrics, MetricsSnapshot, Refusal};

/// Current TLS material; replaced when the leaf is renewed or the roots
/// rotate.
#[derive(Debug)]
pub struct TlsMaterial {
    /// This service's leaf and key.
    pub identity: Identity,
    /// The CA roots peers must chain to.
    pub bundle: TrustBundle,
}

/// Decides whether `source` may open a connection to this service
/// (intentions, from a local cache). `Err(reason)` refuses it.
pub type Authorizer = Arc<dyn Fn(&SpiffeId) -> Result<(), String> + Send + Sync>;

/// The bounds a sidecar works within.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// The copy buffer of each direction of each connection.
    pub buffer_bytes: usize,
    /// The longest one TCP connect may take.
    pub dial_timeout: Duration,
    /// The outbound side's total time to find a working instance.
    pub dial_budget: Duration,
    /// Connections handled at once per listener; more wait in the
    /// listener's backlog.
    pub max_connections: usize,
    /// Inbound connections from one address that may be in their TLS
    /// handshake at once; more are closed at once.
    pub max_handshakes_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            // Long enough for pooled keep-alive connections between apps,
            // short enough that half-dead peers do not pile up.
            idle_timeout: Duration::from_secs(600),
            buffer_bytes: 64 * 1024,
            dial_timeout: Duration::from_secs(2),
            dial_budget: Duration::from_secs(5),
            max_connections: 1024,
            max_handshakes_per_peer: 64,
        }
    }
}

/// Builds a rustls config from TLS material.
type BuildConfig<C> = Box<dyn Fn(&TlsMaterial) -> Result<Arc<C>, TlsError> + Send>;

/// The rustls config built from the current [`TlsMaterial`], rebuilt only
/// when the watch holds a different material than last time.
struct CurrentConfig<C> {
    built_from: Option<Arc<TlsMaterial>>,
    config: Option<Arc<C>>,
    build: BuildConfig<C>,
}

impl<C> CurrentConfig<C> {
    fn new(build: impl Fn(&TlsMaterial) -> Result<Arc<C>, TlsError> + Send + 'static) -> Self {
        CurrentConfig {
            built_from: None,
            config: None,
            build: Box::new(build),
        }
    }

    /// The config for the material in `tls` now; `None` if there is none
    /// yet or it is unusable (logged once per material).
    fn get(&mut self, tls: &watch::Receiver<Option<Arc<TlsMaterial>>>) -> Option<Arc<C>> {
        let current = tls.borrow().clone();
        let same = match (&current, &self.built_from) {
            (Some(now), Some(then)) => Arc::ptr_eq(now, then),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.config = current.as_deref().and_then(|material| {
                (self.build)(material)
                    .inspect_err(|e| {
                        warn!(
                            identity = %material.identity.spiffe,
                            error = %e,
                            "sidecar TLS material unusable; refusing connections until it is replaced"
                        )
                    })
                    .ok()
            });
            self.built_from = current;
        }
        self.config.clone()
    }
}

#[cfg(test)]
mod tests;

/// Carries an accepted connection: pipes `downstream` (the side that
/// connected) to `upstream`, counting it active while it lasts, and logs
/// how it ended.
async fn carry<D, U>(
    downstream: D,
    upstream: U,
    limits: &Limits,
    metrics: &Metrics,
    what: &str,
    from: &(dyn std::fmt::Display + Sync),
    to: &(dyn std::fmt::Display + Sync),
) where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    let _active = metrics.active();
    let stats = pipe::pipe(
        downstream,
        upstream,
        limits.buffer_bytes,
        limits.idle_timeout,
        metrics,
    )
    .await;
    match stats.end {
        pipe::PipeEnd::Failed(e) => {
            tracing::debug!(%from, %to, error = %e, "sidecar {what} connection failed")
        }
        end => {
            tracing::debug!(%from, %to, ?end, stats.bytes_in, stats.bytes_out, "sidecar {what} connection closed")
        }
    }
}

/// Waits for a free connection slot, then for a connection on `listener`.
/// An accept error (out of file descriptors) is logged and retried after a
/// pause, never spun on.
async fn accept_slot(
    listener: &tokio::net::TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    what: &str,
) -> (
    tokio::sync::OwnedSemaphorePermit,
    tokio::net::TcpStream,
    std::net::SocketAddr,
) {
    let permit = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (permit, stream, peer),
            Err(e) => {
                warn!(error = %e, "sidecar {what} accept failed");
                crate::clock::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
