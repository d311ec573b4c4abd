//! The cluster CA's certificate crypto, as Consul's built-in provider does
//! it: an ECDSA P-256 root per trust domain, leaf certificates for public
//! keys the agents send (their private keys never leave them), and a
//! cross-signed certificate so that leaves of a new root still chain to the
//! old one while a rotation spreads.
//!
//! Pure: no I/O and no clock reads. Every time is an argument (a
//! [`SystemTime`], floored to whole seconds, as certificates hold them), so
//! the simulator can skew it. Key generation and ECDSA signatures draw from
//! ring's randomness, which the simulator makes deterministic.
//!
//! Certificates are PEM strings; times in the replicated records are unix
//! seconds.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

use super::SpiffeId;

/// How far back a certificate's `not_before` is set from the time it is
/// made, so that hosts whose clocks lag a little already accept it.
pub const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(60);

/// Consul renews a leaf no earlier than this fraction of its lifetime...
pub const RENEW_MIN_FRACTION: f64 = 0.6;
/// ...and no later than this one.
pub const RENEW_MAX_FRACTION: f64 = 0.9;

/// Longest common name X.509 allows (RFC 5280 `ub-common-name`); longer
/// service names are cut, as Consul cuts them. The URI SAN keeps the whole
/// name and is what identifies the service.
const MAX_COMMON_NAME: usize = 64;

/// A PEM private key. It travels in the Raft log and snapshots so that every
/// server can sign, but it never prints: `Debug` and `Display` show
/// `SecretPem(<redacted>)`. API responses must not serialize it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps a PEM private key.
    pub fn new(pem: String) -> SecretPem {
        SecretPem(pem)
    }

    /// The PEM text, for the code that signs with it (and nothing else).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

impl fmt::Display for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// A root CA as the replicated state stores it (Consul's `CARoot`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRoot {
    /// Colon-separated lowercase hex of the SHA-1 of the certificate's DER,
    /// as Consul writes root ids (`"ab:cd:…"`).
    pub id: String,
    /// A human name, e.g. "Consul CA Primary Cert".
    pub name: String,
    /// The root certificate's serial number.
    pub serial_number: u64,
    /// Colon hex of the certificate's subject key identifier: the first 20
    /// bytes of the SHA-256 of its SubjectPublicKeyInfo DER (RFC 7093
    /// method 1). Leaves carry it as their authority key identifier.
    pub signing_key_id: String,
    /// Start of validity, unix seconds.
    pub not_before: u64,
    /// End of validity, unix seconds. No leaf outlives it.
    pub not_after: u64,
    /// The self-signed root certificate, PEM.
    pub root_cert_pem: String,
    /// Further certificates to send with leaves of this root, PEM: during a
    /// rotation, this root's key cross-signed by the previous root
    /// ([`cross_sign`]).
    pub intermediate_certs: Vec<String>,
    /// The root's PKCS#8 private key.
    pub signing_key: SecretPem,
    /// `<cluster-id>.consul`: the trust domain whose identities it signs.
    pub trust_domain: String,
}

/// A fresh leaf key pair, made where it is used (the agent); only
/// `public_key_der` is sent to the servers to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafKey {
    /// The PKCS#8 private key.
    pub key: SecretPem,
    /// The public key as SubjectPublicKeyInfo DER, what [`sign_leaf`] takes.
    pub public_key_der: Vec<u8>,
}

/// A leaf certificate the CA issued (Consul's `IssuedCert`, without the
/// private key, which only the agent has).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedLeaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number.
    pub serial_number: u64,
    /// Start of validity, unix seconds.
    pub valid_after: u64,
    /// End of validity, unix seconds.
    pub valid_before: u64,
    /// [`CaRoot::id`] of the root that signed it.
    pub root_id: String,
    /// The service name.
    pub service: String,
    /// The SPIFFE ID in its URI SAN.
    pub spiffe_id: String,
}

/// What [`cert_info`] reads out of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity, unix seconds (0 for times before 1970).
    pub not_before: u64,
    /// End of validity, unix seconds (0 for times before 1970).
    pub not_after: u64,
    /// Every URI SAN, in certificate order.
    pub uri_sans: Vec<String>,
    /// The serial number, or `None` when it does not fit in 64 bits (as in
    /// a cross-signed certificate, see [`cross_sign`], or a foreign one).
    pub serial_number: Option<u64>,
    /// Whether the basic constraints say it is a CA.
    pub is_ca: bool,
    /// Colon hex of the subject key identifier, if it has one.
    pub subject_key_id: Option<String>,
}

impl CertInfo {
    /// Whether `now` (floored to seconds) is inside the validity window,
    /// both ends included as RFC 5280 says.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs(),
            Err(_) => return false,
        };
        self.not_before <= now && now <= self.not_after
    }
}

/// Why a CA operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// The public key to sign is not an ECDSA P-256 SubjectPublicKeyInfo.
    /// It came from the requester: refuse the request.
    #[error("the public key is not an ECDSA P-256 SubjectPublicKeyInfo ({reason}); send the DER of a P-256 key, as generate_leaf_key makes")]
    BadPublicKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The text is not PEM or holds no certificate.
    #[error("malformed PEM ({reason}); expected one or more CERTIFICATE blocks")]
    MalformedPem {
        /// What is wrong with it.
        reason: String,
    },
    /// A PEM block did not hold a well-formed X.509 certificate.
    #[error("malformed certificate ({reason})")]
    MalformedCertificate {
        /// What the parser said.
        reason: String,
    },
    /// The root's stored private key does not load as a P-256 key: the
    /// stored root is damaged; rotate to a new one.
    #[error("the CA root's signing key does not load ({reason}); the stored root is damaged, rotate the CA")]
    BadSigningKey {
        /// What the loader said.
        reason: String,
    },
    /// The root has expired (or expires before the leaf would start):
    /// rotate the CA before signing more leaves.
    #[error("the CA root is not valid after {not_after} (unix s), before the leaf would start at {leaf_start}; rotate the CA")]
    RootExpired {
        /// The root's `not_after`, unix seconds.
        not_after: u64,
        /// When the leaf would have started, unix seconds.
        leaf_start: u64,
    },
    /// A time is before 1970 or beyond what a certificate can hold (year
    /// 9999): the caller's clock or TTL is wrong.
    #[error("time {0:?} cannot go in a certificate; check the clock and the TTL")]
    TimeOutOfRange(String),
    /// Key generation failed (no randomness?).
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    /// rcgen refused to build or sign the certificate, e.g. a name with
    /// characters a certificate cannot hold.
    #[error("signing the certificate failed: {0}")]
    Signing(String),
    /// A name asked for in a certificate is not one it may hold (a node
    /// name with characters outside letters, digits, `-`, `_` and `.`, or
    /// a DNS SAN that is not a DNS name). It came from the requester.
    #[error("{0}")]
    BadName(String),
}

pub(crate) fn signing(e: rcgen::Error) -> CaError {
    CaError::Signing(e.to_string())
}

/// Generates a self-signed ECDSA P-256 root for `trust_domain`, valid from
/// one minute before `now` (clock skew) until `now + ttl`.
///
/// Its subject is `CN=pri-<first 8 hex digits of the key id>.ca.consul`; it
/// carries the URI SAN `spiffe://<trust_domain>`, as Consul's root does.
pub fn generate_root(
    trust_domain: &str,
    serial: u64,
    now: SystemTime,
    ttl: Duration,
) -> Result<CaRoot, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
    root_for_key(key, trust_domain, serial, now, ttl)
}

/// As [`generate_root`], for a P-256 private key the operator supplied
/// (Consul's `Config.PrivateKey` in `/v1/connect/ca/configuration`).
pub fn root_with_key(
    key_pem: &str,
    trust_domain: &str,
    serial: u64,
    now: SystemTime,
    ttl: Duration,
) -> Result<CaRoot, CaError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadSigningKey {
        reason: format!("PrivateKey is not a PEM private key: {e}"),
    })?;
    if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
        return Err(CaError::BadSigningKey {
            reason: "PrivateKey must be an ECDSA P-256 key (PrivateKeyType ec, PrivateKeyBits 256)"
                .into(),
        });
    }
    root_for_key(key, trust_domain, serial, now, ttl)
}

fn root_for_key(
    key: KeyPair,
    trust_domain: &str,
    serial: u64,
    now: SystemTime,
    ttl: Duration,
) -> Result<CaRoot, CaError> {
    let now = unix_secs(now)?;
    let not_before = now.saturating_sub(CLOCK_SKEW_MARGIN.as_secs());
    let not_after = now.saturating_add(ttl.as_secs());
    // The certificate's subject key id: rcgen's default key id method is
    // RFC 7093 method 1 (truncated SHA-256 of the SubjectPublicKeyInfo).
    // The tests check the two agree.
    let key_id = CertificateParams::default().key_identifier(&key);
    let short_id: String = key_id.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let params = root_params(
        &format!("pri-{short_id}.ca.consul"),
        trust_domain,
        Some(serial),
        not_before,
        not_after,
    )?;
    let cert = params.self_signed(&key).map_err(signing)?;
    Ok(CaRoot {
        id: colon_hex(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der()).as_ref(),
        ),
        name: "Consul CA Primary Cert".to_owned(),
        serial_number: serial,
        signing_key_id: colon_hex(&key_id),
        not_before,
        not_after,
        root_cert_pem: cert.pem(),
        intermediate_certs: Vec::new(),
        signing_key: SecretPem(key.serialize_pem()),
        trust_domain: trust_domain.to_owned(),
    })
}

/// The parameters of a root certificate: [`generate_root`] uses them, and
/// [`cross_sign`] rebuilds them so both certificates say the same thing.
fn root_params(
    common_name: &str,
    trust_domain: &str,
    serial: Option<u64>,
    not_before: u64,
    not_after: u64,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(signing)?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // None: rcgen's default, see cross_sign.
    params.serial_number = serial.map(Into::into);
    params.not_before = asn1_time(not_before)?;
    params.not_after = asn1_time(not_after)?;
    Ok(params)
}

/// Generates a P-256 key pair for a leaf.
pub fn generate_leaf_key() -> Result<LeafKey, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
    Ok(LeafKey {
        key: SecretPem(key.serialize_pem()),
        public_key_der: key.subject_public_key_info(),
    })
}

/// Signs a leaf certificate for `service`'s public key (SubjectPublicKeyInfo
/// DER, from the network: anything that is not a valid P-256 point is a
/// [`CaError::BadPublicKey`]).
///
/// The leaf is not a CA; its only SAN is the URI `service.to_string()`; its
/// subject is `CN=<service name>`; key usages digital signature and key
/// agreement, extended key usages server and client auth; authority key id
/// = [`CaRoot::signing_key_id`]. It is valid from one minute before `now`
/// until `now + ttl`, but never after the root's `not_after`.
pub fn sign_leaf(
    root: &CaRoot,
    service: &SpiffeId,
    public_key_der: &[u8],
    serial: u64,
    now: SystemTime,
    ttl: Duration,
) -> Result<IssuedLeaf, CaError> {
    let spiffe_id = service.to_string();
    let leaf = Leaf {
        common_name: &service.service,
        uri: &spiffe_id,
        dns_names: &[],
        ip_addresses: &[],
    };
    sign_end_entity(root, &leaf, public_key_der, serial, now, ttl)
}

/// The SPIFFE ID of a client agent's certificate, as Consul writes it:
/// `spiffe://<trust-domain>/agent/client/dc/<datacenter>/id/<node>`.
pub fn agent_spiffe_id(trust_domain: &str, datacenter: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/agent/client/dc/{datacenter}/id/{node}")
}

/// Signs a client agent's RPC certificate (Consul's `auto_encrypt`) for
/// `node` over its public key: like [`sign_leaf`], with the URI SAN
/// [`agent_spiffe_id`], `CN=<node>`, and the DNS names `localhost` and
/// `dns_sans` and the IP addresses 127.0.0.1 and `ip_sans` as further SANs
/// (Consul's defaults). [`IssuedLeaf::service`] holds the node name.
///
/// The caller vets `dns_sans` (a name the servers' certificates carry must
/// never be signed here): this function signs what it is given.
#[allow(clippy::too_many_arguments)]
pub fn sign_agent_leaf(
    root: &CaRoot,
    datacenter: &str,
    node: &str,
    dns_sans: &[String],
    ip_sans: &[std::net::IpAddr],
    public_key_der: &[u8],
    serial: u64,
    now: SystemTime,
    ttl: Duration,
) -> Result<IssuedLeaf, CaError> {
    let plain_name = |name: &str| {
        !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    for (what, name) in [("node name", node), ("datacenter", datacenter)] {
        if !plain_name(name) {
            return Err(CaError::BadName(format!(
                "{name:?} is not a {what} (letters, digits, '-', '_' and '.', at most 128)"
            )));
        }
    }
    if dns_sans.len() > MAX_AGENT_SANS || ip_sans.len() > MAX_AGENT_SANS {
        return Err(CaError::BadName(format!(
            "at most {MAX_AGENT_SANS} dns_san and {MAX_AGENT_SANS} ip_san entries"
        )));
    }
    // No wildcards: a wildcard can cover a name only servers may carry.
    if let Some(bad) = dns_sans
        .iter()
        .find(|n| n.starts_with("*.") || !is_dns_name(n))
    {
        return Err(CaError::BadName(format!(
            "dns_san {bad:?} is not a DNS name (wildcards are refused)"
        )));
    }
    let spiffe_id = agent_spiffe_id(&root.trust_domain, datacenter, node);
    let mut dns_names = vec!["localhost".to_string()];
    dns_names.extend(dns_sans.iter().cloned());
    let mut ip_addresses = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    ip_addresses.extend(ip_sans);
    let leaf = Leaf {
        common_name: node,
        uri: &spiffe_id,
        dns_names: &dns_names,
        ip_addresses: &ip_addresses,
    };
    sign_end_entity(root, &leaf, public_key_der, serial, now, ttl)
}

/// Whether `name` is a DNS name: dot-separated labels of letters, digits
/// and inner hyphens (a leading `*.` wildcard allowed), at most 253 bytes.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The most extra DNS names, and the most extra IP addresses, an agent
/// certificate carries: a request is input from the network.
pub const MAX_AGENT_SANS: usize = 32;

/// What an end-entity certificate names.
struct Leaf<'a> {
    common_name: &'a str,
    uri: &'a str,
    dns_names: &'a [String],
    ip_addresses: &'a [std::net::IpAddr],
}

/// Signs `leaf` over `public_key_der` with `root` (see [`sign_leaf`] for
/// the profile); [`IssuedLeaf::service`] is its common name.
fn sign_end_entity(
    root: &CaRoot,
    leaf: &Leaf<'_>,
    public_key_der: &[u8],
    serial: u64,
    now: SystemTime,
    ttl: Duration,
) -> Result<IssuedLeaf, CaError> {
    let public_key = p256_public_key(public_key_der)?;
    let now = unix_secs(now)?;
    let valid_after = now.saturating_sub(CLOCK_SKEW_MARGIN.as_secs());
    let valid_before = now.saturating_add(ttl.as_secs()).min(root.not_after);
    if valid_before <= valid_after {
        return Err(CaError::RootExpired {
            not_after: root.not_after,
            leaf_start: valid_after,
        });
    }
    let issuer = root_issuer(root)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let common_name: String = leaf.common_name.chars().take(MAX_COMMON_NAME).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let mut sans = vec![SanType::URI(leaf.uri.try_into().map_err(signing)?)];
    for name in leaf.dns_names {
        sans.push(SanType::DnsName(name.as_str().try_into().map_err(signing)?));
    }
    sans.extend(leaf.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial.into());
    params.not_before = asn1_time(valid_after)?;
    params.not_after = asn1_time(valid_before)?;
    let cert = params.signed_by(&public_key, &issuer).map_err(signing)?;
    Ok(IssuedLeaf {
        cert_pem: cert.pem(),
        serial_number: serial,
        valid_after,
        valid_before,
        root_id: root.id.clone(),
        service: leaf.common_name.to_string(),
        spiffe_id: leaf.uri.to_string(),
    })
}

/// A certificate for `new_root`'s key and subject signed by `old_root`'s
/// key, for `new_root.intermediate_certs` during a rotation: leaves of the
/// new root then chain to the old root too, so sidecars that trust only
/// the old root still accept them.
///
/// It says what the new root says (subject, SPIFFE URI SAN, CA, key usages,
/// subject key id), with the old root as issuer and authority key id. It is
/// valid from one minute before `now` until the earlier of the two roots'
/// `not_after`. Its serial number is rcgen's default, the first 20 bytes of
/// the SHA-256 of the new public key (so it cannot be mistaken for one the
/// old root gave a leaf, and [`CertInfo::serial_number`] is `None`). Only
/// the old root's private key is used.
pub fn cross_sign(
    old_root: &CaRoot,
    new_root: &CaRoot,
    now: SystemTime,
) -> Result<String, CaError> {
    let new_der = first_cert_der(&new_root.root_cert_pem)?;
    let new_cert = parse_der(&new_der)?;
    let common_name = new_cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| CaError::MalformedCertificate {
            reason: "the new root has no UTF-8 common name".to_owned(),
        })?;
    let new_key = SubjectPublicKeyInfo::from_der(new_cert.public_key().raw).map_err(|e| {
        CaError::MalformedCertificate {
            reason: format!("the new root's public key: {e}"),
        }
    })?;

    let now = unix_secs(now)?;
    let not_before = now.saturating_sub(CLOCK_SKEW_MARGIN.as_secs());
    let not_after = old_root.not_after.min(new_root.not_after);
    if not_after <= not_before {
        return Err(CaError::RootExpired {
            not_after,
            leaf_start: not_before,
        });
    }
    let mut params = root_params(
        common_name,
        &new_root.trust_domain,
        None,
        not_before,
        not_after,
    )?;
    params.use_authority_key_identifier_extension = true;
    if let Some(ski) = subject_key_id(&new_cert) {
        params.key_identifier_method = KeyIdMethod::PreSpecified(ski.to_vec());
    }
    let issuer = root_issuer(old_root)?;
    let cert = params.signed_by(&new_key, &issuer).map_err(signing)?;
    Ok(cert.pem())
}

/// Reads validity, URI SANs, serial, CA flag and subject key id from the
/// first certificate in `pem`.
pub fn cert_info(pem: &str) -> Result<CertInfo, CaError> {
    info_of(&parse_der(&first_cert_der(pem)?)?)
}

/// Whether the first certificate in `leaf_pem` is valid at `now` (only the
/// time: chains and signatures are the TLS verifier's job).
pub fn leaf_is_valid_at(leaf_pem: &str, now: SystemTime) -> Result<bool, CaError> {
    Ok(cert_info(leaf_pem)?.valid_at(now))
}

/// The DER of every CERTIFICATE block in `pem`, in order (other blocks are
/// skipped). No certificate at all is an error.
pub fn pem_to_der(pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut ders = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CaError::MalformedPem {
            reason: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            ders.push(block.contents);
        }
    }
    if ders.is_empty() {
        return Err(CaError::MalformedPem {
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(ders)
}

/// When an agent should renew a leaf valid from `valid_after` to
/// `valid_before` (unix seconds): between 60% and 90% of its lifetime, as
/// Consul does, at `60% + 30% × jitter_fraction`. The caller draws the
/// jitter in `[0, 1)` from its seeded RNG; values outside are clamped (NaN
/// counts as 0).
pub fn renew_at(valid_after: u64, valid_before: u64, jitter_fraction: f64) -> u64 {
    let jitter = if jitter_fraction.is_nan() {
        0.0
    } else {
        jitter_fraction.clamp(0.0, 1.0)
    };
    let lifetime = valid_before.saturating_sub(valid_after);
    let fraction = RENEW_MIN_FRACTION + (RENEW_MAX_FRACTION - RENEW_MIN_FRACTION) * jitter;
    // f64 → u64 saturates; the product is at most 0.9 × lifetime.
    let offset = (lifetime as f64 * fraction) as u64;
    valid_after.saturating_add(offset.min(lifetime))
}

/// The issuer for leaves and cross-signatures of `root`: its subject and
/// subject key id from the certificate, its private key from the record.
fn root_issuer(root: &CaRoot) -> Result<Issuer<'static, KeyPair>, CaError> {
    let key = KeyPair::from_pem_and_sign_algo(root.signing_key.expose(), &PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::BadSigningKey {
        reason: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&root.root_cert_pem, key).map_err(|e| CaError::MalformedCertificate {
        reason: format!("the CA root certificate: {e}"),
    })
}

/// Parses a P-256 SubjectPublicKeyInfo and checks that its point is on the
/// curve (ring validates the peer key of an ECDH agreement; the ephemeral
/// key it makes for that is thrown away).
fn p256_public_key(der: &[u8]) -> Result<SubjectPublicKeyInfo, CaError> {
    let bad = |reason: String| CaError::BadPublicKey { reason };
    let spki = SubjectPublicKeyInfo::from_der(der).map_err(|e| bad(e.to_string()))?;
    if spki.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(bad(format!("algorithm {:?}", spki.algorithm())));
    }
    let rng = ring::rand::SystemRandom::new();
    let ephemeral =
        ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
            .map_err(|_| CaError::KeyGeneration("no randomness for the key check".to_owned()))?;
    let peer =
        ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, spki.der_bytes());
    ring::agreement::agree_ephemeral(ephemeral, &peer, |_| ())
        .map_err(|_| bad("not an uncompressed point on the P-256 curve".to_owned()))?;
    Ok(spki)
}

fn first_cert_der(pem: &str) -> Result<Vec<u8>, CaError> {
    // pem_to_der never returns an empty list.
    Ok(pem_to_der(pem)?.swap_remove(0))
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::MalformedCertificate {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CaError::MalformedCertificate {
            reason: format!("{} bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

fn info_of(cert: &X509Certificate<'_>) -> Result<CertInfo, CaError> {
    let malformed = |e: x509_parser::error::X509Error| CaError::MalformedCertificate {
        reason: e.to_string(),
    };
    let uri_sans = match cert.subject_alternative_name().map_err(malformed)? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let subject_key_id = subject_key_id(cert).map(colon_hex);
    let serial = cert.raw_serial();
    let significant = &serial[serial.iter().take_while(|b| **b == 0).count()..];
    let serial_number = (significant.len() <= 8).then(|| {
        significant
            .iter()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b))
    });
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok(CertInfo {
        not_before: secs(cert.validity().not_before.timestamp()),
        not_after: secs(cert.validity().not_after.timestamp()),
        uri_sans,
        serial_number,
        is_ca: cert.is_ca(),
        subject_key_id,
    })
}

fn subject_key_id<'a>(cert: &X509Certificate<'a>) -> Option<&'a [u8]> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(kid) => Some(kid.0),
            _ => None,
        })
}

pub(crate) fn unix_secs(t: SystemTime) -> Result<u64, CaError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| CaError::TimeOutOfRange(format!("{t:?}")))
}

pub(crate) fn asn1_time(secs: u64) -> Result<time::OffsetDateTime, CaError> {
    let out_of_range = || CaError::TimeOutOfRange(format!("{secs} s after 1970"));
    let t =
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).map_err(|_| out_of_range())?)
            .map_err(|_| out_of_range())?;
    // GeneralizedTime has four year digits.
    if t.year() > 9999 {
        return Err(out_of_range());
    }
    Ok(t)
}

/// `ab:cd:…`, lowercase, as Consul writes ids and key ids.
fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
    const DAY: Duration = Duration::from_secs(86_400);
    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn parsed(pem: &str) -> Vec<u8> {
        first_cert_der(pem).unwrap()
    }

    fn fcs() -> SpiffeId {
        SpiffeId::service(TD, "dc1", "fcs")
    }

    #[test]
    fn root_is_a_ca_for_the_trust_domain_with_the_asked_window() {
        let root = generate_root(TD, 7, at(T0), 10 * DAY).unwrap();
        let info = cert_info(&root.root_cert_pem).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.uri_sans, vec![format!("spiffe://{TD}")]);
        assert_eq!(info.not_before, T0 - 60);
        assert_eq!(info.not_after, T0 + 10 * 86_400);
        assert_eq!(
            (root.not_before, root.not_after),
            (info.not_before, info.not_after)
        );
        assert_eq!(info.serial_number, Some(7));
        assert_eq!(
            info.subject_key_id.as_deref(),
            Some(root.signing_key_id.as_str())
        );
        assert_eq!(root.signing_key_id.len(), 20 * 3 - 1);
        assert_eq!(root.id.len(), 20 * 3 - 1, "SHA-1, colon hex: {}", root.id);
        assert!(root
            .id
            .chars()
            .all(|c| c == ':' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(root.signing_key.expose().contains("PRIVATE KEY"));

        let der = parsed(&root.root_cert_pem);
        let cert = parse_der(&der).unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert!(cn.starts_with("pri-") && cn.ends_with(".ca.consul"), "{cn}");
        cert.verify_signature(None).expect("self-signed");
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    }

    /// An auto_encrypt certificate: the agent's SPIFFE ID, `CN=<node>`,
    /// localhost and 127.0.0.1 plus what was asked, signed by the root.
    #[test]
    fn an_agent_leaf_names_the_node_and_its_addresses() {
        let root = generate_root(TD, 1, at(T0), 10 * DAY).unwrap();
        let key = generate_leaf_key().unwrap();
        let leaf = sign_agent_leaf(
            &root,
            "dc1",
            "fcs00",
            &["fcs00.example".into()],
            &["10.0.0.13".parse().unwrap()],
            &key.public_key_der,
            9,
            at(T0),
            3 * DAY,
        )
        .unwrap();
        let id = format!("spiffe://{TD}/agent/client/dc/dc1/id/fcs00");
        assert_eq!(
            (leaf.spiffe_id.as_str(), leaf.service.as_str()),
            (id.as_str(), "fcs00")
        );
        let der = parsed(&leaf.cert_pem);
        let cert = parse_der(&der).unwrap();
        let root_der = parsed(&root.root_cert_pem);
        cert.verify_signature(Some(parse_der(&root_der).unwrap().public_key()))
            .expect("signed by the root");
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "fcs00");
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("uri:{u}"),
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                format!("uri:{id}"),
                "dns:localhost".into(),
                "dns:fcs00.example".into(),
                "ip:[127, 0, 0, 1]".into(),
                "ip:[10, 0, 0, 13]".into(),
            ]
        );
        let refused = |datacenter: &str, node: &str, dns: &[String]| {
            sign_agent_leaf(
                &root,
                datacenter,
                node,
                dns,
                &[],
                &key.public_key_der,
                1,
                at(T0),
                DAY,
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let name = |n: &str| vec![n.to_string()];
        assert!(refused("dc1", "n", &name("not a name!")).contains("is not a DNS name"));
        assert!(refused("dc1", "n", &name("-a.b")).contains("is not a DNS name"));
        assert!(refused("dc1", "n", &name("*.dc1.consul")).contains("wildcards are refused"));
        assert!(refused("dc1", "a/../b", &[]).contains("is not a node name"));
        assert!(refused("dc1", "", &[]).contains("is not a node name"));
        assert!(refused("dc1/../x", "n", &[]).contains("is not a datacenter"));
        let many: Vec<String> = (0..=MAX_AGENT_SANS)
            .map(|i| format!("h{i}.example"))
            .collect();
        assert!(refused("dc1", "n", &many).contains("at most 32"));
    }

    #[test]
    fn a_leaf_verifies_under_the_root_and_names_only_the_service() {
        let root = generate_root(TD, 1, at(T0), 10 * DAY).unwrap();
        let key = generate_leaf_key().unwrap();
        let leaf = sign_leaf(&root, &fcs(), &key.public_key_der, 42, at(T0 + 5), 3 * DAY).unwrap();
        assert_eq!(leaf.spiffe_id, fcs().to_string());
        assert_eq!(leaf.service, "fcs");
        assert_eq!(leaf.root_id, root.id);
        assert_eq!(
            (leaf.valid_after, leaf.valid_before),
            (T0 + 5 - 60, T0 + 5 + 3 * 86_400)
        );

        let root_der = parsed(&root.root_cert_pem);
        let root_cert = parse_der(&root_der).unwrap();
        let leaf_der = parsed(&leaf.cert_pem);
        let cert = parse_der(&leaf_der).unwrap();
        cert.verify_signature(Some(root_cert.public_key()))
            .expect("signed by the root");
        assert_eq!(cert.issuer().as_raw(), root_cert.subject().as_raw());
        assert_eq!(cert.public_key().raw, &key.public_key_der[..]);
        let aki = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
                _ => None,
            })
            .unwrap();
        assert_eq!(colon_hex(aki.0), root.signing_key_id);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let info = cert_info(&leaf.cert_pem).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.uri_sans, vec![fcs().to_string()]);
        assert_eq!(info.serial_number, Some(42));
        assert_eq!(
            (info.not_before, info.not_after),
            (leaf.valid_after, leaf.valid_before)
        );
        assert!(info.valid_at(at(T0)));
        assert!(!leaf_is_valid_at(&leaf.cert_pem, at(T0 - 61)).unwrap());
        assert!(leaf_is_valid_at(&leaf.cert_pem, at(leaf.valid_before)).unwrap());
        assert!(!leaf_is_valid_at(&leaf.cert_pem, at(leaf.valid_before + 1)).unwrap());
    }

    #[test]
    fn a_leaf_never_outlives_its_root_and_an_expired_root_signs_nothing() {
        let root = generate_root(TD, 1, at(T0), DAY).unwrap();
        let key = generate_leaf_key().unwrap();
        let leaf = sign_leaf(
            &root,
            &fcs(),
            &key.public_key_der,
            2,
            at(T0 + 3600),
            3 * DAY,
        )
        .unwrap();
        assert_eq!(leaf.valid_before, root.not_after);
        assert_eq!(cert_info(&leaf.cert_pem).unwrap().not_after, root.not_after);

        let err = sign_leaf(
            &root,
            &fcs(),
            &key.public_key_der,
            3,
            at(root.not_after + 60),
            DAY,
        );
        assert!(matches!(err, Err(CaError::RootExpired { .. })), "{err:?}");
    }

    #[test]
    fn garbage_truncated_or_off_curve_public_keys_are_errors() {
        let root = generate_root(TD, 1, at(T0), DAY).unwrap();
        let good = generate_leaf_key().unwrap().public_key_der;
        let mut off_curve = good.clone();
        let last = off_curve.len() - 1;
        off_curve[last] ^= 1;
        let mut inputs = vec![Vec::new(), b"not a key".to_vec(), off_curve, good.clone()];
        inputs[3].push(0); // trailing byte
        for n in 0..good.len() {
            inputs.push(good[..n].to_vec());
        }
        for bad in inputs {
            let err = sign_leaf(&root, &fcs(), &bad, 9, at(T0), DAY).unwrap_err();
            assert!(
                matches!(err, CaError::BadPublicKey { .. }),
                "{err:?} for {bad:02x?}"
            );
        }
        // An Ed25519 key parses but is not what the mesh signs.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = sign_leaf(&root, &fcs(), &ed.subject_public_key_info(), 9, at(T0), DAY);
        assert!(matches!(err, Err(CaError::BadPublicKey { .. })), "{err:?}");
    }

    #[test]
    fn malformed_pem_and_a_damaged_root_key_are_errors() {
        assert!(matches!(cert_info(""), Err(CaError::MalformedPem { .. })));
        assert!(matches!(
            cert_info("hello"),
            Err(CaError::MalformedPem { .. })
        ));
        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            cert_info(junk),
            Err(CaError::MalformedCertificate { .. })
        ));

        let mut root = generate_root(TD, 1, at(T0), DAY).unwrap();
        let key = generate_leaf_key().unwrap();
        root.signing_key =
            SecretPem::new("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n".into());
        let err = sign_leaf(&root, &fcs(), &key.public_key_der, 2, at(T0), DAY);
        assert!(matches!(err, Err(CaError::BadSigningKey { .. })), "{err:?}");
    }

    #[test]
    fn pem_to_der_returns_every_certificate_block() {
        let a = generate_root(TD, 1, at(T0), DAY).unwrap();
        let b = generate_root(TD, 2, at(T0), DAY).unwrap();
        let bundle = format!(
            "{}{}{}",
            a.root_cert_pem,
            a.signing_key.expose(),
            b.root_cert_pem
        );
        let ders = pem_to_der(&bundle).unwrap();
        assert_eq!(
            ders,
            vec![parsed(&a.root_cert_pem), parsed(&b.root_cert_pem)]
        );
    }

    #[test]
    fn keys_never_print() {
        let root = generate_root(TD, 1, at(T0), DAY).unwrap();
        let key = generate_leaf_key().unwrap();
        for text in [
            format!("{root:?}"),
            format!("{root:#?}"),
            format!("{key:?}"),
            format!("{}", key.key),
        ] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(text.contains("SecretPem(<redacted>)"), "{text}");
        }
        // Serde carries the key as the bare string (the Raft log needs it).
        let json = serde_json::to_value(&root).unwrap();
        assert_eq!(json["signing_key"], root.signing_key.expose());
        assert_eq!(serde_json::from_value::<CaRoot>(json).unwrap(), root);
    }

    #[test]
    fn cross_signed_cert_is_the_new_root_signed_by_the_old() {
        let old = generate_root(TD, 1, at(T0), 10 * DAY).unwrap();
        let new = generate_root(TD, 2, at(T0 + DAY.as_secs()), 20 * DAY).unwrap();
        let now = T0 + DAY.as_secs() + 10;
        let cross_pem = cross_sign(&old, &new, at(now)).unwrap();

        let (old_der, new_der, cross_der) = (
            parsed(&old.root_cert_pem),
            parsed(&new.root_cert_pem),
            parsed(&cross_pem),
        );
        let (old_cert, new_cert, cross) = (
            parse_der(&old_der).unwrap(),
            parse_der(&new_der).unwrap(),
            parse_der(&cross_der).unwrap(),
        );
        assert_eq!(cross.subject().as_raw(), new_cert.subject().as_raw());
        assert_eq!(cross.public_key().raw, new_cert.public_key().raw);
        assert_eq!(cross.issuer().as_raw(), old_cert.subject().as_raw());
        cross
            .verify_signature(Some(old_cert.public_key()))
            .expect("signed by the old root");
        assert!(cross.verify_signature(Some(new_cert.public_key())).is_err());

        let info = cert_info(&cross_pem).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.uri_sans, vec![format!("spiffe://{TD}")]);
        assert_eq!(
            info.subject_key_id.as_deref(),
            Some(new.signing_key_id.as_str())
        );
        assert_eq!((info.not_before, info.not_after), (now - 60, old.not_after));

        // A leaf of the new root verifies under the cross-signed cert's key,
        // which chains to the old root.
        let key = generate_leaf_key().unwrap();
        let leaf = sign_leaf(&new, &fcs(), &key.public_key_der, 5, at(now), DAY).unwrap();
        let leaf_der = parsed(&leaf.cert_pem);
        let leaf_cert = parse_der(&leaf_der).unwrap();
        leaf_cert
            .verify_signature(Some(cross.public_key()))
            .unwrap();
        assert_eq!(leaf_cert.issuer().as_raw(), cross.subject().as_raw());
    }

    #[test]
    fn renewal_falls_between_60_and_90_percent_of_the_lifetime() {
        let (after, before) = (T0, T0 + 72 * 3600);
        let lifetime = before - after;
        for jitter in [0.0, 0.5, 0.999] {
            let at = renew_at(after, before, jitter);
            assert!(at >= after + lifetime * 6 / 10, "{jitter}: {at}");
            assert!(at <= after + lifetime * 9 / 10, "{jitter}: {at}");
        }
        assert_eq!(renew_at(after, before, 0.0), after + lifetime * 6 / 10);
        assert_eq!(
            renew_at(after, before, f64::NAN),
            renew_at(after, before, 0.0)
        );
        assert_eq!(renew_at(after, before, 7.0), after + lifetime * 9 / 10);
        assert_eq!(
            renew_at(before, after, 0.5),
            before,
            "an empty lifetime renews at once"
        );
    }

    #[test]
    fn times_a_certificate_cannot_hold_are_errors() {
        let err = generate_root(TD, 1, UNIX_EPOCH - Duration::from_secs(1), DAY);
        assert!(matches!(err, Err(CaError::TimeOutOfRange(_))), "{err:?}");
        let err = generate_root(TD, 1, at(T0), Duration::from_secs(u64::MAX));
        assert!(matches!(err, Err(CaError::TimeOutOfRange(_))), "{err:?}");
    }
}
