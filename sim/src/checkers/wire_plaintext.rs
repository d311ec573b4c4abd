//! No application byte crosses between hosts in plaintext (issue 10):
//! judged on what the simulated network itself carries, through madsim's
//! TCP tap (`vendor/madsim/MESH_PATCH.md`), not on what the sidecars say
//! they did.
//!
//! Every TCP flush between two different hosts is searched for a marker
//! that only the application's own plaintext contains (fcc's requests and
//! fcs's echoes of them). The last bytes of each stream are kept, so a
//! marker split across two flushes is still found. Loopback traffic (the
//! app to its own sidecar) is the one place plaintext belongs.
//!
//! The verdict also requires real work: sidecar-port traffic between the
//! two application hosts must have been seen (traffic to or from any other
//! host, an attacker's, does not count), or the tap proves nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// One plaintext sighting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    /// Who wrote the bytes.
    pub writer: SocketAddr,
    /// Who was to read them.
    pub reader: SocketAddr,
    /// The bytes around the marker, lossily decoded.
    pub excerpt: String,
}

/// What the tap saw, judged as it goes.
#[derive(Clone, Debug)]
pub struct Wire {
    marker: Vec<u8>,
    sidecar_port: u16,
    /// The two application hosts whose sidecar traffic counts as work.
    app_hosts: Option<(IpAddr, IpAddr)>,
    /// Per stream (writer, reader): its last `marker.len() - 1` bytes.
    tails: BTreeMap<(SocketAddr, SocketAddr), Vec<u8>>,
    /// Bytes between the application hosts to or from the sidecar port.
    sidecar_bytes: u64,
    /// Bytes between hosts on any port.
    inter_host_bytes: u64,
    leaks: Vec<Leak>,
    /// Every leak, kept or not.
    leak_count: u64,
}

/// Leaks kept in full; later ones are only counted.
const KEEP_LEAKS: usize = 8;

impl Wire {
    /// Looks for `marker` between hosts; counts traffic to `sidecar_port`.
    pub fn new(marker: &str, sidecar_port: u16) -> Self {
        assert!(!marker.is_empty(), "an empty marker matches everything");
        Wire {
            marker: marker.as_bytes().to_vec(),
            sidecar_port,
            app_hosts: None,
            tails: BTreeMap::new(),
            sidecar_bytes: 0,
            inter_host_bytes: 0,
            leaks: Vec::new(),
            leak_count: 0,
        }
    }

    /// Counts sidecar traffic between `a` and `b` (either way) as work.
    pub fn set_app_hosts(&mut self, a: IpAddr, b: IpAddr) {
        self.app_hosts = Some((a, b));
    }

    /// One flush of `bytes` from `writer` to `reader`.
    pub fn flushed(&mut self, writer: SocketAddr, reader: SocketAddr, bytes: &[u8]) {
        let local =
            writer.ip() == reader.ip() || writer.ip().is_loopback() || reader.ip().is_loopback();
        if local || bytes.is_empty() {
            return;
        }
        self.inter_host_bytes += bytes.len() as u64;
        let between_apps = self.app_hosts.is_some_and(|(a, b)| {
            (writer.ip(), reader.ip()) == (a, b) || (writer.ip(), reader.ip()) == (b, a)
        });
        if between_apps
            && (writer.port() == self.sidecar_port || reader.port() == self.sidecar_port)
        {
            self.sidecar_bytes += bytes.len() as u64;
        }
        let keep = self.marker.len() - 1;
        let tail = self.tails.entry((writer, reader)).or_default();
        let mut window = std::mem::take(tail);
        window.extend_from_slice(bytes);
        if let Some(at) = find(&window, &self.marker) {
            self.leak_count += 1;
            if self.leaks.len() < KEEP_LEAKS {
                let end = (at + self.marker.len() + 40).min(window.len());
                self.leaks.push(Leak {
                    writer,
                    reader,
                    excerpt: String::from_utf8_lossy(&window[at..end]).into_owned(),
                });
            }
        }
        let from = window.len().saturating_sub(keep);
        *self
            .tails
            .get_mut(&(writer, reader))
            .expect("inserted above") = window.split_off(from);
    }

    /// Bytes seen between the application hosts to or from the sidecar port.
    pub fn sidecar_bytes(&self) -> u64 {
        self.sidecar_bytes
    }

    /// The first leak, if any: a definite failure, whatever else happened.
    pub fn leak(&self) -> Result<(), String> {
        match self.leaks.first() {
            None => Ok(()),
            Some(l) => Err(format!(
                "wire_plaintext: application plaintext crossed between hosts {} times; first: {} -> {}: {:?}",
                self.leak_count,
                l.writer,
                l.reader,
                l.excerpt
            )),
        }
    }

    /// The verdict: no leak, and at least `min_sidecar_bytes` of sidecar
    /// traffic between hosts seen (else the tap proved nothing).
    pub fn check(&self, min_sidecar_bytes: u64) -> Result<(), String> {
        self.leak()?;
        if self.sidecar_bytes < min_sidecar_bytes {
            return Err(format!(
                "wire_plaintext: only {} bytes of sidecar traffic between the application hosts seen ({} between hosts in all), fewer than {min_sidecar_bytes}: no verdict",
                self.sidecar_bytes, self.inter_host_bytes
            ));
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const FCC: &str = "10.0.2.2:40000";
    const FCS_SIDECAR: &str = "10.0.2.1:9191";

    fn wire() -> Wire {
        let mut wire = Wire::new("REQ fcc-", 9191);
        wire.set_app_hosts(at(FCC).ip(), at(FCS_SIDECAR).ip());
        wire
    }

    #[test]
    fn tls_records_between_hosts_pass() {
        let mut wire = wire();
        wire.flushed(
            at(FCC),
            at(FCS_SIDECAR),
            &[0x17, 0x03, 0x03, 0x00, 0x20, 0x9a],
        );
        wire.flushed(
            at(FCS_SIDECAR),
            at(FCC),
            &[0x17, 0x03, 0x03, 0x00, 0x20, 0x11],
        );
        assert_eq!(wire.sidecar_bytes(), 12);
        assert_eq!(wire.check(12), Ok(()));
    }

    #[test]
    fn plaintext_between_hosts_is_a_leak() {
        let mut wire = wire();
        wire.flushed(at(FCC), at(FCS_SIDECAR), b"REQ fcc-7 xxxx\n");
        let err = wire.check(0).unwrap_err();
        assert!(err.contains("10.0.2.2:40000 -> 10.0.2.1:9191"), "{err}");
        assert!(err.contains("REQ fcc-7"), "{err}");
    }

    #[test]
    fn a_marker_split_across_flushes_is_found() {
        let mut wire = wire();
        wire.flushed(at(FCC), at(FCS_SIDECAR), b"\x17\x03REQ f");
        assert!(wire.leak().is_ok());
        wire.flushed(at(FCC), at(FCS_SIDECAR), b"cc-9 x\n");
        assert!(wire.leak().is_err());
    }

    #[test]
    fn halves_on_different_streams_are_not_joined() {
        let mut wire = wire();
        wire.flushed(at(FCC), at(FCS_SIDECAR), b"REQ f");
        wire.flushed(at("10.0.2.2:40001"), at(FCS_SIDECAR), b"cc-9 x\n");
        assert!(wire.leak().is_ok());
    }

    #[test]
    fn plaintext_on_loopback_or_within_a_host_is_allowed() {
        let mut wire = wire();
        wire.flushed(at("127.0.0.1:5000"), at("127.0.0.1:8181"), b"REQ fcc-1\n");
        wire.flushed(at("10.0.2.2:5000"), at("10.0.2.2:8500"), b"REQ fcc-1\n");
        assert!(wire.leak().is_ok());
        assert_eq!(wire.sidecar_bytes(), 0);
    }

    #[test]
    fn an_attackers_sidecar_traffic_is_not_work() {
        let mut wire = wire();
        wire.flushed(at("10.0.0.20:5000"), at(FCS_SIDECAR), &[0x16; 4096]);
        assert_eq!(wire.sidecar_bytes(), 0);
        assert!(wire.check(1).unwrap_err().contains("no verdict"));
    }

    #[test]
    fn seeing_no_sidecar_traffic_is_no_verdict() {
        let mut wire = wire();
        wire.flushed(at("10.0.2.2:5000"), at("10.0.1.1:8300"), b"\x16\x03\x01");
        let err = wire.check(1).unwrap_err();
        assert!(err.contains("no verdict"), "{err}");
    }
}
