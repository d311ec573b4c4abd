//! The agent's HTTP API: Consul's paths, parameters, JSON shapes, headers
//! and status codes.
//!
//! Served with hyper's connection API over our own accept loop, with a
//! hyper timer built on [`crate::clock`] (hyper-util's would call real
//! tokio), so the same code runs on tokio and in madsim.
//!
//! Slow or silent clients cannot hold a connection forever: a request head
//! (and the next one on an idle keep-alive connection) must arrive within
//! [`HEADER_READ_TIMEOUT`], a body within [`routes::BODY_READ_TIMEOUT`].

mod agent_api;
mod catalog;
mod config_entries;
mod connect_ca;
pub mod https;
mod intentions;
mod kv;
mod operator;
mod params;
pub mod reply;
mod routes;
mod sessions;
mod txn;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::clock;
use crate::owned_tasks::{Connections, DrainToken, Stopping};
use crate::swap::Swap;
use tracing::{debug, warn};

pub use params::{parse_duration_ms, percent_decode, Query};
pub use reply::BODY_READ_TIMEOUT;
pub use routes::HttpApi;

/// How long a client may take to send a request head, and how long an idle
/// keep-alive connection stays open waiting for the next one (Go's
/// `http.Server` calls these `ReadHeaderTimeout` and `IdleTimeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// hyper's timer on this host's clock.
#[derive(Clone, Copy, Debug)]
struct ClockTimer;

/// A hyper sleep on this host's clock.
struct ClockSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for ClockSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for ClockSleep {}

impl hyper::rt::Timer for ClockTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ClockSleep(Box::pin(clock::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// Serves the API on `listener` (over TLS when `tls` is given: the HTTPS
/// port) until the task is dropped; its connections hold `drain`'s token
/// until they end.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Swap<rustls::ServerConfig>>,
    api: Arc<HttpApi>,
    drain: DrainToken,
) {
    serve_with(
        listener,
        tls,
        move |req| {
            let api = api.clone();
            async move { api.handle(req).await }
        },
        Some(drain),
    )
    .await
}

/// How long an HTTPS client may take to finish its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(ClockTimer)
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// How long a connection may go on finishing the request it was answering
/// once its server stopped (`PUT /v1/agent/leave`'s own answer, a blocking
/// query cut short).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// Serves one connection until it ends, or until `stopping`: then the
/// request in flight is finished (within [`SHUTDOWN_GRACE`]) and no other
/// is read.
async fn serve_connection<I, S>(io: I, svc: S, stopping: &mut Stopping) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1_builder().serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        served = conn.as_mut() => served,
        () = stopping.wait() => {
            conn.as_mut().graceful_shutdown();
            clock::timeout(SHUTDOWN_GRACE, conn).await.unwrap_or(Ok(()))
        }
    }
}

/// Serves HTTP/1.1 on `listener` (over TLS when `tls` is given: each
/// connection takes the settings current when it arrives, so `mesh reload`
/// reaches new connections) with `handle` answering every request, under
/// the same head-read timeout as the API (the sidecar's metrics endpoint
/// uses it too). Connections end with the loop: an agent stopped in
/// process (`Agent::stop`) leaves no connection answering behind it.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    tls: Option<Swap<rustls::ServerConfig>>,
    handle: H,
    drain: Option<DrainToken>,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = reply::Reply> + Send + 'static,
{
    let connections = match drain {
        Some(token) => Connections::tracked(token),
        None => Connections::new(),
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "http accept failed");
                clock::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let tls = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.get()));
        connections.spawn_graceful(|mut stopping| async move {
            let _ = stream.set_nodelay(true);
            let svc = service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let served = match tls {
                None => serve_connection(TokioIo::new(stream), svc, &mut stopping).await,
                Some(acceptor) => {
                    let accepted = tokio::select! {
                        biased;
                        () = stopping.wait() => return,
                        a = clock::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => a,
                    };
                    match accepted {
                        Ok(Ok(tls)) => {
                            serve_connection(TokioIo::new(tls), svc, &mut stopping).await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "https handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "https handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                // Malformed requests end here (hyper answers 400 and
                // closes), and so do heads that arrive too slowly.
                debug!(%peer, error = %e, "http connection ended");
            }
        });
    }
}
