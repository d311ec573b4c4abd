//! The outbound side: a local plaintext listener per upstream service,
//! mTLS out to one of its instances.
//!
//! Each local connection starts at a different instance of the current
//! list (a per-listener counter, so the spread is deterministic) and walks
//! the list once on dial or handshake failure, within the dial budget.
//! When no instance answers in time the local connection is closed: the
//! app sees a clean EOF and can retry. An app retrying in a loop would
//! log a line per attempt, so failure lines are limited per kind by a
//! [`LogGate`] (the metrics count every one).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::{CurrentConfig, Limits, Metrics, TlsMaterial};
use crate::clock::{self, Instant};
use crate::log_limit::LogGate;
use crate::mutants::{self, Mutant};
use crate::tls;

/// What every connection of one upstream listener shares.
struct Upstream {
    destination: String,
    limits: Limits,
    metrics: Arc<Metrics>,
    failure_log: LogGate<Failure>,
}

/// The kinds of failure line an upstream listener logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    NoTlsMaterial,
    Handshake,
    NoInstance,
}

/// Accepts the local app's connections on `listener` and carries each
/// over mTLS to an instance of `destination` from `instances`, until the
/// task is dropped. At most `limits.max_connections` at once.
pub async fn serve_upstream(
    listener: TcpListener,
    tls: watch::Receiver<Option<Arc<TlsMaterial>>>,
    destination: String,
    instances: watch::Receiver<Vec<SocketAddr>>,
    limits: Limits,
    metrics: Arc<Metrics>,
) {
    assert!(
        limits.max_connections > 0,
        "a listener that may hold no connection"
    );
    assert!(limits.buffer_bytes > 0, "a pipe needs a buffer");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let service = destination.clone();
    let mut configs = CurrentConfig::new(move |m: &TlsMaterial| {
        tls::client_config(&m.identity, &m.bundle, &service)
    });
    let shared = Arc::new(Upstream {
        destination,
        limits,
        metrics,
        failure_log: LogGate::new(),
    });
    let mut opened: usize = 0;
    let connections = crate::owned_tasks::Connections::new();
    loop {
        let (permit, local, app) = super::accept_slot(&listener, &slots, "upstream").await;
        let config = configs.get(&tls);
        let targets = instances.borrow().clone();
        let first = opened;
        opened = opened.wrapping_add(1);
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ = local.set_nodelay(true);
            let Some(config) = config else {
                shared.metrics.outbound_failed();
                if let Some(held_back) = shared.failure_log.admit(Failure::NoTlsMaterial) {
                    info!(%app, destination = %shared.destination, held_back, "sidecar upstream refused: no TLS material yet");
                }
                return;
            };
            if mutants::enabled(Mutant::UpstreamPlaintext) {
                return plaintext_upstream(local, app, &targets, first, &shared).await;
            }
            let Some((remote, instance)) = dial(&shared, config, &targets, first).await else {
                return;
            };
            shared.metrics.outbound_opened();
            super::carry(
                local,
                remote,
                &shared.limits,
                &shared.metrics,
                "upstream",
                &app,
                &instance,
            )
            .await;
        });
    }
}

/// Tries the instances from index `first` on, once round, until one
/// completes a handshake or the dial budget is spent.
async fn dial(
    shared: &Upstream,
    config: Arc<rustls::ClientConfig>,
    targets: &[SocketAddr],
    first: usize,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    let limits = &shared.limits;
    let deadline = Instant::now() + limits.dial_budget;
    let connector = TlsConnector::from(config);
    let mut last_error = String::from("no instances");
    for i in 0..targets.len() {
        let instance = targets[(first.wrapping_add(i)) % targets.len()];
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last_error = format!("dial budget of {:?} spent", limits.dial_budget);
            break;
        }
        let tcp = match clock::timeout(left.min(limits.dial_timeout), TcpStream::connect(instance))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                last_error = format!("{instance}: {e}");
                debug!(destination = %shared.destination, %instance, error = %e, "upstream dial failed; trying the next instance");
                continue;
            }
            Err(elapsed) => {
                last_error = format!("{instance}: connect: {elapsed}");
                debug!(destination = %shared.destination, %instance, "upstream dial timed out; trying the next instance");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let left = deadline.saturating_duration_since(Instant::now());
        let handshake = connector.connect(tls::server_name(&shared.destination), tcp);
        match clock::timeout(left.min(limits.handshake_timeout), handshake).await {
            Ok(Ok(stream)) => return Some((stream, instance)),
            Ok(Err(e)) => {
                // A server that is not the destination, or an expired
                // chain: another instance may still be right.
                last_error = format!("{instance}: {e}");
                if let Some(held_back) = shared.failure_log.admit(Failure::Handshake) {
                    warn!(destination = %shared.destination, %instance, error = %e, held_back, "upstream TLS handshake failed; trying the next instance");
                }
            }
            Err(elapsed) => {
                last_error = format!("{instance}: TLS handshake: {elapsed}");
                debug!(destination = %shared.destination, %instance, "upstream TLS handshake timed out; trying the next instance");
            }
        }
    }
    shared.metrics.outbound_failed();
    if let Some(held_back) = shared.failure_log.admit(Failure::NoInstance) {
        warn!(
            destination = %shared.destination,
            instances = targets.len(),
            last_error = %last_error,
            held_back,
            "sidecar upstream: no instance reachable; closing the local connection"
        );
    }
    None
}

/// [`Mutant::UpstreamPlaintext`]: the app's bytes to the first instance
/// over plain TCP.
async fn plaintext_upstream(
    local: TcpStream,
    app: SocketAddr,
    targets: &[SocketAddr],
    first: usize,
    shared: &Upstream,
) {
    let Some(&instance) = targets.get(first % targets.len().max(1)) else {
        return;
    };
    if let Ok(remote) = TcpStream::connect(instance).await {
        super::carry(
            local,
            remote,
            &shared.limits,
            &shared.metrics,
            "upstream",
            &app,
            &instance,
        )
        .await;
    }
}
