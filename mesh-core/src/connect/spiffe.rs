//! SPIFFE identities of Connect services, as Consul writes them in a leaf
//! certificate's URI SAN:
//! `spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>`.
//!
//! A sidecar learns who its peer is only from this URI in a certificate the
//! cluster's CA signed, so parsing is strict: every segment present, in
//! order, non-empty, nothing after the service name.

use std::fmt;
use std::str::FromStr;

/// The namespace every service is in (this build has no namespaces, as
/// Consul's community edition).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The identity of a Connect service instance.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// `<cluster-id>.consul`: which CA's world the service belongs to.
    pub trust_domain: String,
    /// Always [`DEFAULT_NAMESPACE`] when built here; kept as read.
    pub namespace: String,
    /// The datacenter the service runs in.
    pub datacenter: String,
    /// The service name intentions are written against.
    pub service: String,
}

impl SpiffeId {
    /// The identity of `service` in `datacenter` under `trust_domain`, in
    /// the default namespace.
    pub fn service(trust_domain: &str, datacenter: &str, service: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            datacenter: datacenter.to_owned(),
            service: service.to_owned(),
        }
    }

    /// The trust domain of a cluster: `<cluster-id>.consul`, as Consul's
    /// built-in CA names it.
    pub fn trust_domain_of(cluster_id: &str) -> String {
        format!("{cluster_id}.consul")
    }

    /// Whether this identity is `service` in `trust_domain` (any
    /// datacenter: a service keeps its name across datacenters, as
    /// Consul's verifier does).
    pub fn is_service(&self, trust_domain: &str, service: &str) -> bool {
        self.trust_domain.eq_ignore_ascii_case(trust_domain) && self.service == service
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/dc/{}/svc/{}",
            self.trust_domain, self.namespace, self.datacenter, self.service
        )
    }
}

/// Why a URI is not a service's SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a Connect service SPIFFE ID ({reason}): {uri:?}")]
pub struct SpiffeIdError {
    /// The URI as given (cut to 200 characters).
    pub uri: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(uri: &str) -> Result<SpiffeId, SpiffeIdError> {
        let fail = |reason| SpiffeIdError {
            uri: uri.chars().take(200).collect(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("the scheme is not spiffe://"))?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next().unwrap_or_default();
        if trust_domain.is_empty() {
            return Err(fail("no trust domain"));
        }
        let mut segment = |label: &str, missing| match (parts.next(), parts.next()) {
            (Some(l), Some(value)) if l == label && !value.is_empty() => Ok(value.to_owned()),
            _ => Err(fail(missing)),
        };
        let namespace = segment("ns", "no /ns/<namespace>")?;
        let datacenter = segment("dc", "no /dc/<datacenter> after the namespace")?;
        let service = segment("svc", "no /svc/<service> after the datacenter")?;
        if parts.next().is_some() {
            return Err(fail("segments after the service name"));
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace,
            datacenter,
            service,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_consul_does_and_parses_back() {
        let id = SpiffeId::service("11111111-2222.consul", "dc1", "fcs");
        let uri = id.to_string();
        assert_eq!(
            uri,
            "spiffe://11111111-2222.consul/ns/default/dc/dc1/svc/fcs"
        );
        assert_eq!(uri.parse::<SpiffeId>(), Ok(id));
    }

    #[test]
    fn refuses_anything_but_a_whole_service_id() {
        for (uri, reason) in [
            (
                "https://td.consul/ns/default/dc/dc1/svc/fcs",
                "the scheme is not spiffe://",
            ),
            ("spiffe:///ns/default/dc/dc1/svc/fcs", "no trust domain"),
            ("spiffe://td.consul/dc/dc1/svc/fcs", "no /ns/<namespace>"),
            (
                "spiffe://td.consul/ns/default/svc/fcs",
                "no /dc/<datacenter> after the namespace",
            ),
            (
                "spiffe://td.consul/ns/default/dc/dc1/svc/",
                "no /svc/<service> after the datacenter",
            ),
            (
                "spiffe://td.consul/ns/default/dc/dc1/agent/client",
                "no /svc/<service> after the datacenter",
            ),
            (
                "spiffe://td.consul/ns/default/dc/dc1/svc/fcs/x",
                "segments after the service name",
            ),
        ] {
            let err = uri.parse::<SpiffeId>().unwrap_err();
            assert_eq!(err.reason, reason, "{uri}");
        }
    }

    #[test]
    fn is_service_ignores_the_datacenter_and_the_trust_domains_case() {
        let id: SpiffeId = "spiffe://TD.consul/ns/default/dc/dc2/svc/fcs"
            .parse()
            .unwrap();
        assert!(id.is_service("td.consul", "fcs"));
        assert!(!id.is_service("td.consul", "fcc"));
        assert!(!id.is_service("other.consul", "fcs"));
    }
}
