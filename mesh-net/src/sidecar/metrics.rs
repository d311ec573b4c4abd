//! Counters of one sidecar, read as a [`MetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the inbound side closed a connection before it reached the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No TLS material yet, or the TLS handshake failed or timed out
    /// (wrong CA, expired leaf, no client certificate, not TLS at all).
    Handshake,
    /// The verified peer certificate names no usable service identity.
    Identity,
    /// The intentions deny the source service.
    Intention,
    /// The local app could not be reached.
    AppDial,
}

/// Live counters, shared by a sidecar's tasks. "In" is the direction from
/// the side that opened the connection toward the service (requests), "out"
/// the way back (responses), on both the inbound and the outbound side.
#[derive(Debug, Default)]
pub struct Metrics {
    inbound_accepted: AtomicU64,
    refused_handshake: AtomicU64,
    refused_identity: AtomicU64,
    refused_intention: AtomicU64,
    refused_app_dial: AtomicU64,
    outbound_opened: AtomicU64,
    outbound_failed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    active: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Inbound connections that passed every check and reached the app.
    pub inbound_accepted: u64,
    /// Inbound refusals: no TLS material, or the handshake failed.
    pub inbound_refused_handshake: u64,
    /// Inbound refusals: no usable SPIFFE ID in the peer certificate.
    pub inbound_refused_identity: u64,
    /// Inbound refusals: denied by the intentions.
    pub inbound_refused_intention: u64,
    /// Inbound refusals: the local app did not answer.
    pub inbound_refused_app_dial: u64,
    /// Outbound connections established to an upstream instance.
    pub outbound_opened: u64,
    /// Local connections closed because no upstream instance was reachable
    /// within the dial budget (or no TLS material yet).
    pub outbound_failed: u64,
    /// Bytes carried toward the service.
    pub bytes_in: u64,
    /// Bytes carried back from the service.
    pub bytes_out: u64,
    /// Connections being piped now.
    pub active: u64,
}

impl MetricsSnapshot {
    /// The Prometheus text exposition format, every series labelled with
    /// the service the sidecar fronts (`mesh connect proxy -metrics-addr`
    /// serves it at `/metrics`).
    pub fn prometheus(&self, service: &str) -> String {
        let service = service.replace('\\', "\\\\").replace('"', "\\\"");
        let series: [(&str, &str, &str, String, u64); 10] = [
            (
                "mesh_sidecar_inbound_accepted_total",
                "counter",
                "Inbound connections that reached the app.",
                String::new(),
                self.inbound_accepted,
            ),
            (
                "mesh_sidecar_inbound_refused_total",
                "counter",
                "Inbound connections refused, by reason.",
                "reason=\"handshake\",".into(),
                self.inbound_refused_handshake,
            ),
            (
                "mesh_sidecar_inbound_refused_total",
                "",
                "",
                "reason=\"identity\",".into(),
                self.inbound_refused_identity,
            ),
            (
                "mesh_sidecar_inbound_refused_total",
                "",
                "",
                "reason=\"intention\",".into(),
                self.inbound_refused_intention,
            ),
            (
                "mesh_sidecar_inbound_refused_total",
                "",
                "",
                "reason=\"app_dial\",".into(),
                self.inbound_refused_app_dial,
            ),
            (
                "mesh_sidecar_outbound_opened_total",
                "counter",
                "Outbound connections established to an upstream.",
                String::new(),
                self.outbound_opened,
            ),
            (
                "mesh_sidecar_outbound_failed_total",
                "counter",
                "Local connections closed: no upstream reachable.",
                String::new(),
                self.outbound_failed,
            ),
            (
                "mesh_sidecar_bytes_total",
                "counter",
                "Bytes carried, by direction.",
                "direction=\"in\",".into(),
                self.bytes_in,
            ),
            (
                "mesh_sidecar_bytes_total",
                "",
                "",
                "direction=\"out\",".into(),
                self.bytes_out,
            ),
            (
                "mesh_sidecar_active_connections",
                "gauge",
                "Connections being piped now.",
                String::new(),
                self.active,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, labels, value) in series {
            if !kind.is_empty() {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
            out.push_str(&format!(
                "{name}{{{labels}service=\"{service}\"}} {value}\n"
            ));
        }
        out
    }

    /// All inbound refusals, whatever the reason.
    pub fn inbound_refused(&self) -> u64 {
        self.inbound_refused_handshake
            + self.inbound_refused_identity
            + self.inbound_refused_intention
            + self.inbound_refused_app_dial
    }
}

impl Metrics {
    /// The counters now (each read on its own; not one atomic cut).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            inbound_accepted: get(&self.inbound_accepted),
            inbound_refused_handshake: get(&self.refused_handshake),
            inbound_refused_identity: get(&self.refused_identity),
            inbound_refused_intention: get(&self.refused_intention),
            inbound_refused_app_dial: get(&self.refused_app_dial),
            outbound_opened: get(&self.outbound_opened),
            outbound_failed: get(&self.outbound_failed),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            active: get(&self.active),
        }
    }

    pub(crate) fn refused(&self, why: Refusal) {
        let counter = match why {
            Refusal::Handshake => &self.refused_handshake,
            Refusal::Identity => &self.refused_identity,
            Refusal::Intention => &self.refused_intention,
            Refusal::AppDial => &self.refused_app_dial,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inbound_accepted(&self) {
        self.inbound_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn outbound_opened(&self) {
        self.outbound_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn outbound_failed(&self) {
        self.outbound_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one connection as active until the guard is dropped.
    pub(crate) fn active(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }
}

/// Holds one count in [`MetricsSnapshot::active`].
pub(crate) struct ActiveGuard<'a>(&'a Metrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `GET /metrics` (the Prometheus text format) for one sidecar's
/// counters on `listener`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    service: String,
) {
    crate::http::serve_with(
        listener,
        None,
        move |req| {
            let (metrics, service) = (metrics.clone(), service.clone());
            async move {
                use crate::http::reply::{method_not_allowed, not_found, reply};
                match (req.method(), req.uri().path()) {
                    (&hyper::Method::GET, "/metrics") => reply(
                        hyper::StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.snapshot().prometheus(&service),
                    ),
                    (_, "/metrics") => method_not_allowed(),
                    (_, path) => not_found(format!("unknown path {path}: metrics are at /metrics")),
                }
            }
        },
        None,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_counter_once_typed() {
        let m = Metrics::default();
        m.inbound_accepted();
        m.refused(Refusal::Intention);
        m.add_bytes_in(10);
        let text = m.snapshot().prometheus("fcs");
        assert!(
            text.contains("mesh_sidecar_inbound_accepted_total{service=\"fcs\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "mesh_sidecar_inbound_refused_total{reason=\"intention\",service=\"fcs\"} 1\n"
        ));
        assert!(text.contains("mesh_sidecar_bytes_total{direction=\"in\",service=\"fcs\"} 10\n"));
        assert_eq!(
            text.matches("# TYPE mesh_sidecar_inbound_refused_total counter")
                .count(),
            1
        );
        assert!(m
            .snapshot()
            .prometheus("a\"b")
            .contains("service=\"a\\\"b\""));
    }
}
