//! The certificate a service presents when it connects to other services
//! (mutual TLS), loaded again when its files change: a rotated certificate
//! is used by every TLS handshake after the change, on channels opened
//! before it too (they keep their connections; a reconnection presents the
//! new certificate), without a restart.
//!
//! Rules:
//! - The certificate and key files are looked at during a handshake, at
//!   most every `[tls] reload_check_interval_ms` (`watched_files.rs`).
//! - Changed files that do not load (half-written, a key that does not
//!   match its certificate) keep the certificate in use, with a warning
//!   naming the reason; they are tried again at the next look.
//! - At start the files must load: a node does not run without its
//!   identity.

use crate::tls::{read_certificates, read_private_key, TlsError};
use crate::watched_files::WatchedFiles;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::SignatureScheme;

pub struct ReloadingClientCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

struct State {
    key: Arc<CertifiedKey>,
    files: WatchedFiles,
}

impl std::fmt::Debug for ReloadingClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ReloadingClientCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl ReloadingClientCert {
    /// Loads the files; an error names the file and what is wrong.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        interval: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let files = WatchedFiles::new(
            vec![cert_file.to_path_buf(), key_file.to_path_buf()],
            interval,
        );
        let key = certified_key(cert_file, key_file, &provider)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            state: Mutex::new(State { key, files }),
        })
    }

    /// The certificate and key for a handshake starting now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stamps) = state.files.changed(Instant::now()) {
            match certified_key(&self.cert_file, &self.key_file, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert_file = %self.cert_file.display(), "tls: client certificate files changed; new connections to other services present them");
                    state.key = key;
                    state.files.accept(stamps);
                }
                Err(error) => {
                    tracing::warn!(%error, "tls: changed client certificate files do not load; still presenting the previous certificate");
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certificates(cert_file, "PEM certificate")?;
    let key = read_private_key(key_file)?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|error| {
            TlsError::Config(format!(
                "{} and {} do not make a usable certificate and key: {error}",
                cert_file.display(),
                key_file.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn write_pair(directory: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("certificate");
        let (cert_file, key_file) = (directory.join("c.pem"), directory.join("c.key"));
        replace(&cert_file, &certificate.pem());
        replace(&key_file, &key.serialize_pem());
        (cert_file, key_file)
    }

    fn replace(path: &Path, contents: &str) {
        let temporary = path.with_extension("new");
        std::fs::write(&temporary, contents).expect("write");
        std::fs::rename(&temporary, path).expect("rename");
    }

    fn presented(resolver: &ReloadingClientCert) -> String {
        let key = resolver.current();
        crate::principal_of(Some(&key.cert)).as_str().to_string()
    }

    #[test]
    fn rotated_files_are_presented_after_the_interval_and_garbage_is_not() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (cert_file, key_file) = write_pair(directory.path(), "broker-1");
        let interval = Duration::from_millis(100);
        let resolver = ReloadingClientCert::load(
            &cert_file,
            &key_file,
            interval,
            crate::crypto_provider::provider(),
        )
        .expect("loads");
        assert_eq!(presented(&resolver), "User:broker-1");

        write_pair(directory.path(), "broker-1-rotated");
        std::thread::sleep(interval + Duration::from_millis(20));
        assert_eq!(presented(&resolver), "User:broker-1-rotated");

        // A key that is not the certificate's (rotation caught half-way)
        // keeps the certificate in use.
        let other = tempfile::tempdir().expect("temp dir");
        let (_, other_key) = write_pair(other.path(), "someone-else");
        std::fs::copy(&other_key, &key_file).expect("copy");
        std::thread::sleep(interval + Duration::from_millis(20));
        assert_eq!(presented(&resolver), "User:broker-1-rotated");
        replace(&cert_file, "not a certificate");
        std::thread::sleep(interval + Duration::from_millis(20));
        assert_eq!(presented(&resolver), "User:broker-1-rotated");
    }

    #[test]
    fn files_that_do_not_load_at_start_are_named() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (cert_file, _) = write_pair(directory.path(), "broker-1");
        let missing = directory.path().join("absent.key");
        let error = ReloadingClientCert::load(
            &cert_file,
            &missing,
            Duration::from_millis(100),
            crate::crypto_provider::provider(),
        )
        .expect_err("no key");
        assert!(error.to_string().contains("absent.key"), "{error}");
    }
}
