//! A throwaway Connect CA for tests: a root and leaves shaped like
//! Consul's (URI SAN `spiffe://<td>/ns/default/dc/dc1/svc/<name>`, both
//! serverAuth and clientAuth).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{Identity, TrustBundle};

/// The trust domain of [`TestCa::new`].
pub(crate) const TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";

/// A self-signed root that signs leaves.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub(crate) trust_domain: String,
}

impl TestCa {
    /// A root for [`TRUST_DOMAIN`].
    pub(crate) fn new(name: &str) -> TestCa {
        TestCa::with_trust_domain(name, TRUST_DOMAIN)
    }

    /// A root for `trust_domain`.
    pub(crate) fn with_trust_domain(name: &str, trust_domain: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(1999, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The bundle holding this CA's root.
    pub(crate) fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pems(&[self.issuer.pem()], &self.trust_domain).expect("root PEM")
    }

    /// The URI SAN of `service` under this CA.
    pub(crate) fn uri(&self, service: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            self.trust_domain
        )
    }

    /// A leaf for `service`, valid for centuries.
    pub(crate) fn leaf(&self, service: &str) -> Identity {
        self.leaf_with(&[self.uri(service)], (2000, 4000))
    }

    /// A leaf for `service` that expired in 2001.
    pub(crate) fn expired_leaf(&self, service: &str) -> Identity {
        self.leaf_with(&[self.uri(service)], (2000, 2001))
    }

    /// A leaf with exactly these URI SANs, valid from January 1st of the
    /// first year to that of the second.
    pub(crate) fn leaf_with(&self, uris: &[String], years: (i32, i32)) -> Identity {
        let (cert, key) = self.leaf_pems(uris, years);
        Identity::from_pem(&cert, &key).expect("a leaf with one SPIFFE URI")
    }

    /// PEMs of a leaf (certificate, key), not parsed.
    pub(crate) fn leaf_pems(&self, uris: &[String], years: (i32, i32)) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().expect("IA5 URI")))
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}
