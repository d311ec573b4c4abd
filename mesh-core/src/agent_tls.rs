//! The operator's CA for the control plane, as `consul tls ca create` and
//! `consul tls cert create` make it: a self-signed ECDSA P-256 CA, and
//! server, client and CLI certificates it signs with the names Consul's
//! agents check (`server.<dc>.<domain>` for a server).
//!
//! This CA is not the Connect CA ([`crate::connect::ca`]): it secures the
//! RPC port (8300) between servers and from agents to servers, and its key
//! stays with the operator, never in the cluster's state.
//!
//! Pure: no I/O and no clock reads; the time is an argument. The file names
//! the CLI writes are chosen here too ([`ca_file_names`], [`cert_file_prefix`]).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
    PKCS_ECDSA_P256_SHA256,
};

use crate::connect::ca::{asn1_time, signing, unix_secs, CLOCK_SKEW_MARGIN};
use crate::connect::{CaError, SecretPem};

/// Consul's default DNS domain, the last label of every agent certificate name.
pub const DEFAULT_DOMAIN: &str = "consul";
/// `consul tls ca create -days` default (about five years).
pub const DEFAULT_CA_DAYS: u32 = 1825;
/// `consul tls cert create -days` default.
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// The name a server's certificate must carry when agents verify server
/// hostnames (`tls.internal_rpc.verify_server_hostname`): `server.dc1.consul`.
pub fn server_name(datacenter: &str, domain: &str) -> String {
    format!("server.{datacenter}.{domain}")
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (redacted in `Debug`).
    pub key_pem: SecretPem,
}

/// What `mesh tls ca create` makes.
#[derive(Debug, Clone)]
pub struct CaRequest {
    /// `-domain` (used for the name constraint and the file names).
    pub domain: String,
    /// `-days`.
    pub days: u32,
    /// `-common-name`; Consul's default is `Consul Agent CA <serial>`.
    pub common_name: Option<String>,
    /// `-name-constraint`: the CA signs only for `localhost`, the domain
    /// and `additional_constraints`.
    pub name_constraint: bool,
    /// `-additional-name-constraint`.
    pub additional_constraints: Vec<String>,
}

/// Which certificate `mesh tls cert create` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// `-server`: `server.<dc>.<domain>`; it may act as a server and a client.
    Server,
    /// `-client`: `client.<dc>.<domain>`, for client agents.
    Client,
    /// `-cli`: `cli.<dc>.<domain>`, client authentication only.
    Cli,
}

impl CertKind {
    fn label(self) -> &'static str {
        match self {
            CertKind::Server => "server",
            CertKind::Client => "client",
            CertKind::Cli => "cli",
        }
    }
}

/// What `mesh tls cert create` makes.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Server, client or CLI.
    pub kind: CertKind,
    /// `-dc`.
    pub datacenter: String,
    /// `-domain`.
    pub domain: String,
    /// `-node` (servers only): adds `<node>.server.<dc>.<domain>`.
    pub node: Option<String>,
    /// `-additional-dnsname` (not for CLI certificates).
    pub additional_dns: Vec<String>,
    /// `-additional-ipaddress` (not for CLI certificates).
    pub additional_ips: Vec<IpAddr>,
    /// `-days`.
    pub days: u32,
}

impl CertRequest {
    /// The DNS names the certificate carries, the role name first (it is
    /// also the common name), as Consul orders them.
    pub fn dns_names(&self) -> Vec<String> {
        let role = format!("{}.{}.{}", self.kind.label(), self.datacenter, self.domain);
        let mut names = vec![role];
        if self.kind == CertKind::Cli {
            names.push("localhost".into());
            return names;
        }
        if let (CertKind::Server, Some(node)) = (self.kind, &self.node) {
            names.push(format!("{node}.server.{}.{}", self.datacenter, self.domain));
        }
        names.push("localhost".into());
        for extra in &self.additional_dns {
            if !names.contains(extra) {
                names.push(extra.clone());
            }
        }
        names
    }

    /// The IP addresses the certificate carries: 127.0.0.1 and the extra ones.
    pub fn ip_addresses(&self) -> Vec<IpAddr> {
        if self.kind == CertKind::Cli {
            return Vec::new();
        }
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        for ip in &self.additional_ips {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        ips
    }
}

/// The CA certificate and key file names for `domain`:
/// `consul-agent-ca.pem` and `consul-agent-ca-key.pem`.
pub fn ca_file_names(domain: &str) -> (String, String) {
    (
        format!("{domain}-agent-ca.pem"),
        format!("{domain}-agent-ca-key.pem"),
    )
}

/// The prefix of a certificate's file names (`dc1-server-consul`); the CLI
/// appends the first free `-<n>.pem` / `-<n>-key.pem`.
pub fn cert_file_prefix(kind: CertKind, datacenter: &str, domain: &str) -> String {
    format!("{datacenter}-{}-{domain}", kind.label())
}

fn validity(now: SystemTime, days: u32) -> Result<(u64, u64), CaError> {
    if days == 0 {
        return Err(CaError::TimeOutOfRange("-days must be at least 1".into()));
    }
    let now = unix_secs(now)?;
    let not_before = now.saturating_sub(CLOCK_SKEW_MARGIN.as_secs());
    let not_after = now.saturating_add(Duration::from_secs(u64::from(days) * 24 * 3600).as_secs());
    Ok((not_before, not_after))
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::KeyGeneration(e.to_string()))
}

/// A random positive serial number of 16 bytes (ring's randomness, which
/// the simulator makes deterministic).
fn random_serial() -> Result<Vec<u8>, CaError> {
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| CaError::KeyGeneration("no randomness for a serial number".into()))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    Ok(serial.to_vec())
}

/// Makes a self-signed CA valid from one minute before `now` for `days`.
pub fn create_ca(req: &CaRequest, now: SystemTime) -> Result<CertAndKey, CaError> {
    let (not_before, not_after) = validity(now, req.days)?;
    let key = new_key()?;
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    let common_name = match &req.common_name {
        Some(cn) => cn.clone(),
        None => {
            let short: String = serial.iter().take(4).map(|b| format!("{b:02}")).collect();
            format!("Consul Agent CA {short}")
        }
    };
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if req.name_constraint {
        let mut permitted = vec![req.domain.clone(), "localhost".to_string()];
        permitted.extend(req.additional_constraints.iter().cloned());
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted.into_iter().map(GeneralSubtree::DnsName).collect(),
            excluded_subtrees: Vec::new(),
        });
    }
    params.serial_number = Some(serial.into());
    params.not_before = asn1_time(not_before)?;
    params.not_after = asn1_time(not_after)?;
    let cert = params.self_signed(&key).map_err(signing)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: SecretPem::new(key.serialize_pem()),
    })
}

/// Makes a certificate for `req` signed by the CA (`ca_cert_pem`,
/// `ca_key_pem`), valid from one minute before `now` for `req.days`.
pub fn create_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    req: &CertRequest,
    now: SystemTime,
) -> Result<CertAndKey, CaError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| CaError::BadSigningKey {
        reason: format!("the CA key is not a PEM private key: {e}"),
    })?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| {
        CaError::MalformedCertificate {
            reason: format!("the CA certificate: {e}"),
        }
    })?;
    let (not_before, not_after) = validity(now, req.days)?;
    let key = new_key()?;
    let dns = req.dns_names();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, &dns[0]);
    let mut sans = Vec::new();
    for name in &dns {
        sans.push(SanType::DnsName(name.as_str().try_into().map_err(signing)?));
    }
    sans.extend(req.ip_addresses().into_iter().map(SanType::IpAddress));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = match req.kind {
        CertKind::Server | CertKind::Client => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        CertKind::Cli => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?.into());
    params.not_before = asn1_time(not_before)?;
    params.not_after = asn1_time(not_after)?;
    let cert = params.signed_by(&key, &issuer).map_err(signing)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: SecretPem::new(key.serialize_pem()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;
    use x509_parser::extensions::GeneralName;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn ca() -> CertAndKey {
        create_ca(
            &CaRequest {
                domain: DEFAULT_DOMAIN.into(),
                days: DEFAULT_CA_DAYS,
                common_name: None,
                name_constraint: false,
                additional_constraints: Vec::new(),
            },
            now(),
        )
        .unwrap()
    }

    fn request(kind: CertKind) -> CertRequest {
        CertRequest {
            kind,
            datacenter: "dc1".into(),
            domain: "consul".into(),
            node: Some("consul00".into()),
            additional_dns: vec!["consul00.example".into()],
            additional_ips: vec!["127.0.0.10".parse().unwrap()],
            days: DEFAULT_CERT_DAYS,
        }
    }

    fn sans(pem: &str) -> (Vec<String>, Vec<Vec<u8>>) {
        let der = crate::connect::ca::pem_to_der(pem).unwrap().swap_remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
        {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                _ => {}
            }
        }
        (dns, ips)
    }

    #[test]
    fn server_cert_carries_the_names_agents_verify() {
        let ca = ca();
        let cert = create_cert(
            &ca.cert_pem,
            ca.key_pem.expose(),
            &request(CertKind::Server),
            now(),
        )
        .unwrap();
        let (dns, ips) = sans(&cert.cert_pem);
        assert_eq!(
            dns,
            [
                "server.dc1.consul",
                "consul00.server.dc1.consul",
                "localhost",
                "consul00.example"
            ]
        );
        assert_eq!(ips, [vec![127, 0, 0, 1], vec![127, 0, 0, 10]]);
        let info = crate::connect::ca::cert_info(&cert.cert_pem).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.not_after, 1_800_000_000 + 365 * 24 * 3600);
        assert_eq!(info.not_before, 1_800_000_000 - 60);
    }

    #[test]
    fn client_and_cli_certs_have_their_role_names() {
        let ca = ca();
        let client = create_cert(
            &ca.cert_pem,
            ca.key_pem.expose(),
            &request(CertKind::Client),
            now(),
        )
        .unwrap();
        let (dns, _) = sans(&client.cert_pem);
        assert_eq!(dns, ["client.dc1.consul", "localhost", "consul00.example"]);
        let cli = create_cert(
            &ca.cert_pem,
            ca.key_pem.expose(),
            &request(CertKind::Cli),
            now(),
        )
        .unwrap();
        assert_eq!(
            sans(&cli.cert_pem),
            (vec!["cli.dc1.consul".into(), "localhost".into()], vec![])
        );
    }

    #[test]
    fn ca_is_a_ca_and_its_key_is_redacted() {
        let ca = ca();
        let info = crate::connect::ca::cert_info(&ca.cert_pem).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.not_after, 1_800_000_000 + 1825 * 24 * 3600);
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        assert!(ca.key_pem.expose().contains("PRIVATE KEY"));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ca = ca();
        let err = create_cert(&ca.cert_pem, "not a key", &request(CertKind::Server), now());
        assert!(matches!(err, Err(CaError::BadSigningKey { .. })), "{err:?}");
        let err = create_cert(
            "garbage",
            ca.key_pem.expose(),
            &request(CertKind::Server),
            now(),
        );
        assert!(
            matches!(err, Err(CaError::MalformedCertificate { .. })),
            "{err:?}"
        );
        let mut zero = request(CertKind::Client);
        zero.days = 0;
        assert!(create_cert(&ca.cert_pem, ca.key_pem.expose(), &zero, now()).is_err());
    }

    #[test]
    fn file_names_follow_consul() {
        assert_eq!(
            ca_file_names("consul"),
            (
                "consul-agent-ca.pem".into(),
                "consul-agent-ca-key.pem".into()
            )
        );
        assert_eq!(
            cert_file_prefix(CertKind::Server, "dc1", "consul"),
            "dc1-server-consul"
        );
        assert_eq!(server_name("dc1", "consul"), "server.dc1.consul");
    }
}
