//! The lab CA: one certificate authority, trusted inside the pod only, that signs the
//! certificates of every lab host so that `wget https://sourceforge.net/...` works as typed.
//!
//! The CA is persisted because the pod image (cached by recipe hash) carries it in its trust
//! store: a new CA on every run would make every cached image distrust the lab.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::ServicesError;

/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "lab-ca.key.pem";
/// File name of the CA certificate inside the CA directory (this is what the pod trusts).
pub const CA_CERT_FILE: &str = "lab-ca.cert.pem";

const CA_COMMON_NAME: &str = "guardlab lab CA";
const ORGANIZATION: &str = "guardlab";

/// The lab's certificate authority.
pub struct LabCa {
    key: KeyPair,
    /// The CA as rcgen needs it to sign leaves: subject and key identifier of the persisted cert.
    issuer: rcgen::Certificate,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for LabCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabCa")
            .field("subject", &CA_COMMON_NAME)
            .finish_non_exhaustive()
    }
}

impl LabCa {
    /// Loads the CA from `dir`, or creates it there (key file mode 0600) when `dir` holds none.
    /// Half a CA (key without certificate or the reverse) is an error: nothing is overwritten.
    pub fn load_or_create(dir: &Path) -> Result<LabCa, ServicesError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        match (key_path.exists(), cert_path.exists()) {
            (true, true) => Self::load(&key_path, &cert_path),
            (false, false) => Self::create(dir, &key_path, &cert_path),
            (key_present, _) => {
                let (present, missing) = if key_present {
                    (CA_KEY_FILE, CA_CERT_FILE)
                } else {
                    (CA_CERT_FILE, CA_KEY_FILE)
                };
                Err(ServicesError::IncompleteCa {
                    dir: dir.to_path_buf(),
                    present: present.to_string(),
                    missing: missing.to_string(),
                })
            }
        }
    }

    /// Where `load_or_create(dir)` keeps the CA certificate.
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join(CA_CERT_FILE)
    }

    /// The CA certificate in PEM, exactly as persisted: this goes into the pod's trust store.
    pub fn ca_cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate in DER (for a rustls `RootCertStore`).
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A rustls server configuration (ring provider, ALPN h2 and http/1.1) with a fresh leaf
    /// certificate, signed by this CA, whose subject alternative names are `names` (DNS names,
    /// or IP addresses when a name parses as one).
    pub fn server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>, ServicesError> {
        let (chain, key) = self.issue_leaf(names)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A leaf certificate chain and its key for `names`.
    pub fn issue_leaf(
        &self,
        names: &[&str],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ServicesError> {
        let what = format!("certificate for {}", names.join(", "));
        if names.is_empty() {
            return Err(ServicesError::Certificate {
                what,
                source: rcgen::Error::CouldNotParseCertificate,
            });
        }
        let certificate_error = |source| ServicesError::Certificate {
            what: what.clone(),
            source,
        };
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )
        .map_err(certificate_error)?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, names[0]);
        subject.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // OpenSSL's strict mode (Python 3.13's default for pip) wants the authority key id.
        params.use_authority_key_identifier_extension = true;
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2049, 12, 31);
        let key = KeyPair::generate().map_err(certificate_error)?;
        let leaf = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(certificate_error)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![leaf.der().clone()], key_der))
    }

    fn create(dir: &Path, key_path: &Path, cert_path: &Path) -> Result<LabCa, ServicesError> {
        fs::create_dir_all(dir).map_err(|e| ServicesError::file("create", dir, e))?;
        let certificate_error = |source| ServicesError::Certificate {
            what: "lab CA".to_string(),
            source,
        };
        let key = KeyPair::generate().map_err(certificate_error)?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, CA_COMMON_NAME);
        subject.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key).map_err(certificate_error)?;
        let cert_pem = cert.pem();
        // The key first: a crash between the two writes leaves "key without cert", which
        // load_or_create reports instead of silently replacing.
        write_atomically(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomically(cert_path, cert_pem.as_bytes(), 0o644)?;
        tracing::info!(dir = %dir.display(), "created a new lab CA");
        let cert_der = cert.der().clone();
        Ok(LabCa {
            key,
            issuer: cert,
            cert_pem,
            cert_der,
        })
    }

    fn load(key_path: &Path, cert_path: &Path) -> Result<LabCa, ServicesError> {
        let key_pem =
            fs::read_to_string(key_path).map_err(|e| ServicesError::file("read", key_path, e))?;
        let cert_pem =
            fs::read_to_string(cert_path).map_err(|e| ServicesError::file("read", cert_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| ServicesError::BadCaFile {
            path: key_path.to_path_buf(),
            what: "PEM private key",
            detail: e.to_string(),
        })?;
        let bad_cert = |detail: String| ServicesError::BadCaFile {
            path: cert_path.to_path_buf(),
            what: "PEM CA certificate",
            detail,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(e.to_string()))?;
        let params =
            CertificateParams::from_ca_cert_der(&cert_der).map_err(|e| bad_cert(e.to_string()))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(bad_cert("the certificate is not a CA".to_string()));
        }
        // Re-signing the parsed parameters with the key gives an issuer with the persisted
        // subject and key identifier; leaves signed by it verify against the persisted cert.
        let issuer = params
            .self_signed(&key)
            .map_err(|e| bad_cert(e.to_string()))?;
        if issuer
            .params()
            .distinguished_name
            .get(&DnType::CommonName)
            .is_none()
        {
            return Err(bad_cert("the certificate has no common name".to_string()));
        }
        // The certificate embeds its SubjectPublicKeyInfo verbatim in DER: if the key's SPKI
        // is not in there, cert and key are from different CAs.
        let key_spki = key.public_key_der();
        if !cert_der
            .windows(key_spki.len())
            .any(|window| window == key_spki.as_slice())
        {
            return Err(bad_cert(format!(
                "it does not belong to the key in {}",
                key_path.display()
            )));
        }
        Ok(LabCa {
            key,
            issuer,
            cert_pem,
            cert_der,
        })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a truncated CA file behind.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServicesError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".lab-ca-")
        .tempfile_in(dir)
        .map_err(|e| ServicesError::file("create a temporary file in", dir, e))?;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| ServicesError::file("set permissions on", temp.path(), e))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| ServicesError::file("write", temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| ServicesError::file("write", path, e.error))?;
    Ok(())
}
