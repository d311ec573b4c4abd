//! Counters of one sidecar, read as a [`MetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the inbound side closed a connection before it reached the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
