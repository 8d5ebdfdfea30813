//! The files behind the nameserver's TLS and authentication to etcd
//! (`[metadata] tls_ca_file`, `tls_cert_file`, `tls_key_file`,
//! `password_file`), read and checked before the etcd client is built.
//!
//! Rules:
//! - Each file is read at most its bound (`metadata_security::MAX_*`); a
//!   larger one is refused, not truncated.
//! - A problem names the key, the file and what is wrong: unreadable, no
//!   PEM certificate, a certificate that does not parse, no private key, a
//!   key that is not the certificate's. tonic would otherwise skip a CA it
//!   cannot parse and fail later with an anonymous handshake error.
//! - The password is the file's first line, without its line ending; an
//!   empty one is refused. It is never logged (`Debug` leaves it out).

use crate::metadata_security::{MAX_PASSWORD_FILE_BYTES, MAX_PEM_FILE_BYTES};
use etcd_client::{Certificate, Identity, TlsOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the nameserver's etcd credentials are (the `[metadata]` keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// How often the TLS files are looked at for changes, in milliseconds.
    pub tls_reload_check_interval_ms: u64,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl EtcdSecurity {
    /// The TLS files, looked at for changes.
    pub fn tls_files(&self) -> Vec<PathBuf> {
        [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub fn is_tls(&self) -> bool {
        self.tls_ca_file.is_some()
    }
}

/// etcd's user and password, read once.
#[derive(Clone)]
pub struct UserPassword {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for UserPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("UserPassword")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The TLS files as they are now, for the etcd client and for a
/// diagnosis (`etcd_diagnosis.rs`).
pub struct LoadedTls {
    pub options: TlsOptions,
    /// The same CA and client certificate as a rustls configuration.
    pub rustls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LoadedTls").finish_non_exhaustive()
    }
}

/// The TLS files as they are now (`None` without `tls_ca_file`).
pub fn load_tls(security: &EtcdSecurity) -> Result<Option<LoadedTls>, String> {
    let Some(ca_file) = &security.tls_ca_file else {
        return Ok(None);
    };
    let ca = read_bounded(ca_file, MAX_PEM_FILE_BYTES, "tls_ca_file")?;
    let roots = roots(ca_file, &ca)?;
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(&ca));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("[metadata] tls_*: {error}"))?
        .with_root_certificates(roots);
    let mut rustls = match (&security.tls_cert_file, &security.tls_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let cert = read_bounded(cert_file, MAX_PEM_FILE_BYTES, "tls_cert_file")?;
            let key = read_bounded(key_file, MAX_PEM_FILE_BYTES, "tls_key_file")?;
            let (chain, private_key) = identity(cert_file, &cert, key_file, &key)?;
            options = options.identity(Identity::from_pem(cert, key));
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|error| {
                    format!("[metadata] tls_cert_file {}: {error}", cert_file.display())
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    rustls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(LoadedTls {
        options,
        rustls: Arc::new(rustls),
    }))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // The provider of every Sluice TLS connection.
    sluice_service::tls_crypto_provider()
}

/// The user and the password of `password_file` (`None` without `user`).
pub fn load_user(security: &EtcdSecurity) -> Result<Option<UserPassword>, String> {
    let (Some(user), Some(password_file)) = (&security.user, &security.password_file) else {
        return Ok(None);
    };
    let bytes = read_bounded(password_file, MAX_PASSWORD_FILE_BYTES, "password_file")?;
    let password = password_of(&bytes).map_err(|problem| {
        format!(
            "[metadata] password_file {}: {problem}",
            password_file.display()
        )
    })?;
    Ok(Some(UserPassword {
        user: user.clone(),
        password,
    }))
}

/// The first line of a password file, without its line ending.
fn password_of(bytes: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the password is not UTF-8")?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err("the first line (the password) is empty");
    }
    Ok(line.to_string())
}

fn read_bounded(path: &Path, max_bytes: u64, key: &str) -> Result<Vec<u8>, String> {
    let unreadable = |error: std::io::Error| {
        format!(
            "[metadata] {key} {}: cannot read it: {error}",
            path.display()
        )
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "[metadata] {key} {}: larger than {max_bytes} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

fn certificates(
    path: &Path,
    pem: &[u8],
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("[metadata] {key} {}: bad PEM: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "[metadata] {key} {}: holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certificates)
}

fn roots(path: &Path, pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(path, pem, "tls_ca_file")? {
        roots.add(certificate).map_err(|error| {
            format!(
                "[metadata] tls_ca_file {}: not a usable CA certificate: {error}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

fn identity(
    cert_file: &Path,
    cert: &[u8],
    key_file: &Path,
    key: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = certificates(cert_file, cert, "tls_cert_file")?;
    let private_key = PrivateKeyDer::from_pem_slice(key).map_err(|error| {
        format!(
            "[metadata] tls_key_file {}: no PEM private key: {error}",
            key_file.display()
        )
    })?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), private_key.clone_key(), &provider())
        .map(|_| (chain, private_key))
        .map_err(|error| {
            format!(
                "[metadata] tls_cert_file {} and tls_key_file {} are not a certificate and its \
                 key: {error}",
                cert_file.display(),
                key_file.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    struct Files {
        _directory: tempfile::TempDir,
        security: EtcdSecurity,
    }

    fn pair() -> (String, String) {
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let key = KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("certificate");
        (certificate.pem(), key.serialize_pem())
    }

    fn files() -> Files {
        let directory = tempfile::tempdir().expect("temp dir");
        let (cert, key) = pair();
        let path = |name: &str| directory.path().join(name);
        std::fs::write(path("ca.pem"), &cert).expect("write");
        std::fs::write(path("node.pem"), &cert).expect("write");
        std::fs::write(path("node.key"), &key).expect("write");
        std::fs::write(path("password"), "s3cret\n").expect("write");
        let security = EtcdSecurity {
            tls_ca_file: Some(path("ca.pem")),
            tls_cert_file: Some(path("node.pem")),
            tls_key_file: Some(path("node.key")),
            tls_reload_check_interval_ms: 1_000,
            user: Some("sluice".into()),
            password_file: Some(path("password")),
        };
        Files {
            _directory: directory,
            security,
        }
    }

    fn error_of(security: &EtcdSecurity) -> String {
        load_tls(security).expect_err("refused")
    }

    #[test]
    fn good_files_load() {
        let files = files();
        assert!(load_tls(&files.security).expect("loads").is_some());
        let user = load_user(&files.security).expect("loads").expect("a user");
        assert_eq!(
            (user.user.as_str(), user.password.as_str()),
            ("sluice", "s3cret")
        );
        assert!(!format!("{user:?}").contains("s3cret"));
        assert!(load_tls(&EtcdSecurity::default()).expect("none").is_none());
        assert!(load_user(&EtcdSecurity::default()).expect("none").is_none());
    }

    #[test]
    fn every_bad_file_is_named_with_its_problem() {
        let files = files();
        let security = &files.security;
        let ca = security.tls_ca_file.clone().expect("set");
        let key = security.tls_key_file.clone().expect("set");

        std::fs::write(&ca, "not pem").expect("write");
        let error = error_of(security);
        assert!(
            error.contains("tls_ca_file") && error.contains("no PEM certificate"),
            "{error}"
        );

        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let error = error_of(security);
        assert!(
            error.contains("ca.pem") && error.contains("not a usable CA"),
            "{error}"
        );

        std::fs::remove_file(&ca).expect("remove");
        let error = error_of(security);
        assert!(
            error.contains("ca.pem") && error.contains("cannot read"),
            "{error}"
        );

        std::fs::write(&ca, pair().0).expect("write");
        std::fs::write(&key, pair().1).expect("write");
        let error = error_of(security);
        assert!(
            error.contains("node.key") && error.contains("not a certificate and its key"),
            "{error}"
        );

        std::fs::write(&key, "garbage").expect("write");
        let error = error_of(security);
        assert!(
            error.contains("node.key") && error.contains("no PEM private key"),
            "{error}"
        );

        std::fs::write(&ca, vec![b'a'; MAX_PEM_FILE_BYTES as usize + 1]).expect("write");
        let error = error_of(security);
        assert!(error.contains("larger than"), "{error}");
    }

    #[test]
    fn password_files() {
        assert_eq!(password_of(b"pw\r\nignored\n"), Ok("pw".to_string()));
        assert_eq!(password_of(b"pw"), Ok("pw".to_string()));
        assert!(password_of(b"").is_err());
        assert!(password_of(b"\nsecond").is_err());
        assert!(password_of(&[0xff, 0xfe]).is_err());
        let files = files();
        let password_file = files.security.password_file.clone().expect("set");
        std::fs::write(
            &password_file,
            vec![b'p'; MAX_PASSWORD_FILE_BYTES as usize + 1],
        )
        .expect("write");
        let error = load_user(&files.security).expect_err("too large");
        assert!(
            error.contains("password_file") && error.contains("larger than"),
            "{error}"
        );
    }
}
