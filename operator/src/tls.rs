//! The operator's own TLS: a private CA, the serving certificate the API
//! server (admission) and sidecars (config stream) verify, and a rustls
//! certificate resolver that takes a renewed certificate without a restart.
//! Pure apart from the clock passed in.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The CA lives ten years; serving certificates 90 days, renewed with 30 left.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
const CA_NAME: &str = "sluice-operator-ca";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A CA's certificate and key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A serving certificate and its key, PEM, with when it stops being valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

fn offset(at: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(at)
}

/// The CA's parameters; rebuilt identically to sign with a stored CA key
/// (the subject and key identifier are what a leaf's issuer must match).
fn ca_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now - Duration::from_secs(3600));
    params.not_after = offset(now + CA_VALIDITY);
    params
}

/// A new private CA (ECDSA P-256).
pub fn new_authority(now: SystemTime) -> Result<Authority, TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now).self_signed(&key)?;
    Ok(Authority {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by `ca`.
pub fn issue(ca: &Authority, names: &[String], now: SystemTime) -> Result<Serving, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(now), ca_key);
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = subject;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = now + SERVING_VALIDITY;
    params.not_before = offset(now - Duration::from_secs(3600));
    params.not_after = offset(not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Serving {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// Whether a serving certificate should be replaced now.
pub fn needs_renewal(not_after: SystemTime, now: SystemTime) -> bool {
    not_after <= now + RENEW_BEFORE
}

/// A rustls key from PEM.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "tls.crt",
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "tls.crt",
            message: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "tls.key",
        message: e.to_string(),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Serves whichever certificate was set last: renewals apply to the next
/// handshake, connections open keep theirs.
#[derive(Debug, Default)]
pub struct ReloadingCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ReloadingCert {
    pub fn set(&self, key: CertifiedKey) {
        *self.0.write().expect("cert lock") = Some(Arc::new(key));
    }
    pub fn is_set(&self) -> bool {
        self.0.read().expect("cert lock").is_some()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().expect("cert lock").clone()
    }
}

/// TLS 1.2/1.3 server config over `cert`, HTTP/1.1.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_served_certificate_verifies_against_the_ca_for_its_names() {
        let now = SystemTime::now();
        let ca = new_authority(now).unwrap();
        let names = vec![
            "sluice-operator.sluice-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let serving = issue(&ca, &names, now).unwrap();
        let key = certified_key(&serving.cert_pem, &serving.key_pem).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let at = rustls_pki_types::UnixTime::now();
        for name in ["sluice-operator.sluice-system.svc", "127.0.0.1"] {
            let server_name = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&key.cert[0], &[], &server_name, &[], at)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&key.cert[0], &[], &other, &[], at)
                .is_err()
        );

        // Another CA's certificate is refused.
        let stranger = new_authority(now).unwrap();
        let forged = issue(&stranger, &names, now).unwrap();
        let forged = certified_key(&forged.cert_pem, &forged.key_pem).unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        assert!(
            verifier
                .verify_server_cert(&forged.cert[0], &[], &name, &[], at)
                .is_err()
        );
    }

    #[test]
    fn renewal_starts_thirty_days_before_expiry() {
        let now = SystemTime::now();
        assert!(!needs_renewal(now + SERVING_VALIDITY, now));
        assert!(needs_renewal(
            now + Duration::from_secs(29 * 24 * 3600),
            now
        ));
    }
}
