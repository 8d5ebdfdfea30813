//! The SDK's TLS settings kept current (issue 13): settings read from
//! files ([`ClientTls::files`]) are looked at again when a channel is
//! opened, so a client certificate rotated on disk is presented by the
//! channels opened after it, without a restart.
//!
//! Rules (the server's, `sluice-service` `tls.rs`):
//! - A look reads each file's size and modification time, at most every
//!   [`TLS_FILES_CHECK_INTERVAL_MS`], whatever the rate of callers.
//! - Changed files are read and checked (PEM certificates in the CA and
//!   certificate files, a PEM private key that is the certificate's, each
//!   file at most [`MAX_TLS_FILE_BYTES`]); files that pass replace the
//!   settings in use and bump the generation (the cluster then opens new
//!   channels); files that do not keep the settings in use, with a WARN
//!   naming why, and are tried again at the next look.
//! - Settings without files never change.

use crate::tls::{ClientTls, ClientTlsFiles, TLS_FILES_CHECK_INTERVAL_MS};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest TLS file read again, in bytes.
pub const MAX_TLS_FILE_BYTES: u64 = 1024 * 1024;

type Stamps = Vec<Option<(u64, SystemTime)>>;

struct State {
    tls: ClientTls,
    /// Grows by one each time changed files were loaded.
    generation: u64,
    stamps: Stamps,
    looked_at: Instant,
}

/// The TLS settings to open channels with, kept current.
pub(crate) struct TlsSource {
    files: Option<ClientTlsFiles>,
    interval: Duration,
    state: Mutex<State>,
}

impl TlsSource {
    pub fn new(tls: &ClientTls) -> Self {
        Self::with_interval(tls, Duration::from_millis(TLS_FILES_CHECK_INTERVAL_MS))
    }

    pub fn with_interval(tls: &ClientTls, interval: Duration) -> Self {
        let stamps = tls.files.as_ref().map(stamps_of).unwrap_or_default();
        Self {
            files: tls.files.clone(),
            interval,
            state: Mutex::new(State {
                tls: tls.clone(),
                generation: 0,
                stamps,
                looked_at: Instant::now(),
            }),
        }
    }

    /// The settings to open a channel with now, and their generation;
    /// looks at the files first if a look is due.
    pub fn current(&self) -> (ClientTls, u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(files) = &self.files {
            if state.looked_at.elapsed() >= self.interval {
                state.looked_at = Instant::now();
                reload_if_changed(files, &mut state);
            }
        }
        (state.tls.clone(), state.generation)
    }
}

fn reload_if_changed(files: &ClientTlsFiles, state: &mut State) {
    let now = stamps_of(files);
    if now == state.stamps {
        return;
    }
    match load(files) {
        Ok(tls) => {
            state.tls = tls;
            state.stamps = now;
            state.generation += 1;
            tracing::info!(ca_file = %files.ca_file.display(), generation = state.generation, "TLS files changed; new channels use them (open connections keep theirs)");
        }
        Err(error) => {
            tracing::warn!(%error, "the changed TLS files cannot be used; still using the previous ones");
        }
    }
}

fn paths(files: &ClientTlsFiles) -> Vec<&PathBuf> {
    let mut paths = vec![&files.ca_file];
    if let Some((cert, key)) = &files.identity {
        paths.push(cert);
        paths.push(key);
    }
    paths
}

fn stamps_of(files: &ClientTlsFiles) -> Stamps {
    paths(files)
        .into_iter()
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.len(), metadata.modified().ok()?))
        })
        .collect()
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TLS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if bytes.len() as u64 > MAX_TLS_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_TLS_FILE_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

/// Reads and checks `files` (see the module documentation).
pub(crate) fn load(files: &ClientTlsFiles) -> Result<ClientTls, String> {
    let ca_pem = read_bounded(&files.ca_file)?;
    certificates(&ca_pem, &files.ca_file)?;
    let identity = match &files.identity {
        None => None,
        Some((cert_file, key_file)) => {
            let cert_pem = read_bounded(cert_file)?;
            let key_pem = read_bounded(key_file)?;
            check_identity(&cert_pem, cert_file, &key_pem, key_file)?;
            Some((cert_pem, key_pem))
        }
    };
    Ok(ClientTls {
        ca_pem,
        identity,
        files: Some(files.clone()),
    })
}

/// Whether the certificate chain and key make a usable client identity
/// (the key is the first certificate's).
fn check_identity(
    cert_pem: &[u8],
    cert_file: &Path,
    key_pem: &[u8],
    key_file: &Path,
) -> Result<(), String> {
    let chain = certificates(cert_pem, cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| format!("{}: {error}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
        .map(|_| ())
        .map_err(|error| {
            format!(
                "{} and {} do not make a usable certificate and key: {error}",
                cert_file.display(),
                key_file.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    pub(crate) struct Ca {
        params: CertificateParams,
        key: KeyPair,
        pub pem: String,
    }

    pub(crate) fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("signed").pem();
        Ca { params, key, pem }
    }

    /// (certificate PEM, key PEM) for `name`, signed by `ca`.
    pub(crate) fn leaf(ca: &Ca, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let pem = params.signed_by(&key, &issuer).expect("signed").pem();
        (pem, key.serialize_pem())
    }

    /// Writes `contents` whole, by rename, as a rotation would.
    pub(crate) fn replace(path: &Path, contents: &[u8]) {
        let temporary = path.with_extension("new");
        std::fs::write(&temporary, contents).expect("write");
        std::fs::rename(&temporary, path).expect("rename");
    }

    /// Makes the next look due and looks.
    fn look(source: &TlsSource) -> (ClientTls, u64) {
        std::thread::sleep(Duration::from_millis(20));
        source.current()
    }

    #[test]
    fn rotated_files_are_used_and_bad_ones_keep_the_previous() {
        let dir = tempfile::tempdir().expect("dir");
        let (ca_file, cert_file, key_file) = (
            dir.path().join("ca.pem"),
            dir.path().join("client.pem"),
            dir.path().join("client.key"),
        );
        let authority = ca("CA");
        let (first_cert, first_key) = leaf(&authority, "first");
        replace(&ca_file, authority.pem.as_bytes());
        replace(&cert_file, first_cert.as_bytes());
        replace(&key_file, first_key.as_bytes());
        let tls = ClientTls::from_files(&ca_file, Some((&cert_file, &key_file))).expect("reads");
        let source = TlsSource::with_interval(&tls, Duration::from_millis(10));
        assert_eq!(look(&source), (tls.clone(), 0), "unchanged");

        let (second_cert, second_key) = leaf(&authority, "second");
        // Half-way through a rotation: the new certificate, the old key.
        replace(&cert_file, second_cert.as_bytes());
        assert_eq!(
            look(&source),
            (tls.clone(), 0),
            "a key of another certificate"
        );
        replace(&key_file, second_key.as_bytes());
        let (rotated, generation) = look(&source);
        assert_eq!(generation, 1);
        assert_eq!(
            rotated.identity,
            Some((
                second_cert.clone().into_bytes(),
                second_key.clone().into_bytes()
            ))
        );
        assert_eq!(rotated.files, tls.files, "the paths are kept");

        for garbage in [
            &b""[..],
            b"not a certificate",
            b"-----BEGIN CERTIFICATE-----\nAAA",
        ] {
            replace(&cert_file, garbage);
            assert_eq!(look(&source), (rotated.clone(), 1), "{garbage:?}");
        }
        replace(&cert_file, second_cert.as_bytes());
        replace(&ca_file, b"no CA here");
        assert_eq!(
            look(&source),
            (rotated.clone(), 1),
            "a CA file without a certificate"
        );
        std::fs::remove_file(&ca_file).expect("remove");
        assert_eq!(look(&source), (rotated.clone(), 1), "a missing CA file");
        replace(&ca_file, &vec![b'A'; MAX_TLS_FILE_BYTES as usize + 1]);
        assert_eq!(look(&source), (rotated.clone(), 1), "an oversized CA file");
        let other = ca("other CA");
        replace(&ca_file, other.pem.as_bytes());
        let (changed, generation) = look(&source);
        assert_eq!((changed.ca_pem, generation), (other.pem.into_bytes(), 2));
    }

    #[test]
    fn looks_are_rate_limited_and_settings_without_files_never_change() {
        let dir = tempfile::tempdir().expect("dir");
        let ca_file = dir.path().join("ca.pem");
        replace(&ca_file, ca("CA").pem.as_bytes());
        let tls = ClientTls::from_files(&ca_file, None::<(&str, &str)>).expect("reads");
        let source = TlsSource::with_interval(&tls, Duration::from_secs(3600));
        replace(&ca_file, ca("new CA").pem.as_bytes());
        assert_eq!(source.current().1, 0, "not looked at before the interval");

        let fixed = ClientTls::new(b"pem".to_vec(), None);
        let source = TlsSource::with_interval(&fixed, Duration::ZERO);
        assert_eq!(source.current(), (fixed, 0));
    }

    /// A TLS server trusting the client CAs `trusted` that records the
    /// certificate each client presents.
    async fn recording_server(
        server_ca: &Ca,
        trusted: &[&Ca],
    ) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
        let (cert, key) = leaf(server_ca, "localhost");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in trusted {
            let der = CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("pem");
            roots.add(der).expect("root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certificates(cert.as_bytes(), Path::new("cert")).expect("cert"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("config");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!(
            "localhost:{}",
            listener.local_addr().expect("address").port()
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let leaf = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first().cloned());
                        if let Some(leaf) = leaf {
                            recorded.lock().expect("lock").push(leaf.to_vec());
                        }
                        // Closed at once: the client's request fails
                        // fast, the handshake being all this test needs.
                        drop(stream);
                    }
                });
            }
        });
        (address, seen)
    }

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    /// A client whose certificate files were replaced with a certificate
    /// of a newly trusted CA connects with the new identity on a channel
    /// opened after the next look (the one it had keeps the old).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_channels_present_the_rotated_certificate() {
        let dir = tempfile::tempdir().expect("dir");
        let (server_ca, old_ca, new_ca) =
            (ca("server CA"), ca("old clients CA"), ca("new clients CA"));
        let (address, seen) = recording_server(&server_ca, &[&old_ca, &new_ca]).await;
        let (ca_file, cert_file, key_file) = (
            dir.path().join("ca.pem"),
            dir.path().join("client.pem"),
            dir.path().join("client.key"),
        );
        let (old_cert, old_key) = leaf(&old_ca, "client-old");
        replace(&ca_file, server_ca.pem.as_bytes());
        replace(&cert_file, old_cert.as_bytes());
        replace(&key_file, old_key.as_bytes());
        let tls = ClientTls::from_files(&ca_file, Some((&cert_file, &key_file))).expect("reads");
        let cluster = crate::cluster::Cluster::unconnected(crate::ClientConfig {
            tls: Some(tls),
            connect_timeout_ms: 2_000,
            ..crate::ClientConfig::default()
        });
        let connect = |channel: tonic::transport::Channel| async move {
            // A request makes the lazy channel connect; this server does
            // not answer it, and need not.
            let mut client = sluice_proto::v1::broker_client::BrokerClient::new(channel);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                client.produce(tokio_stream::empty()),
            )
            .await;
        };
        let wait_for = |count: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..400 {
                    if seen.lock().expect("lock").len() >= count {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                panic!("{count} handshakes not seen");
            }
        };
        let first = cluster.channel(&address).expect("channel");
        connect(first.clone()).await;
        wait_for(1).await;
        assert_eq!(seen.lock().expect("lock")[0], der_of(&old_cert));

        let (new_cert, new_key) = leaf(&new_ca, "client-new");
        replace(&key_file, new_key.as_bytes());
        replace(&cert_file, new_cert.as_bytes());
        tokio::time::sleep(Duration::from_millis(TLS_FILES_CHECK_INTERVAL_MS + 100)).await;
        let second = cluster.channel(&address).expect("channel");
        connect(second).await;
        wait_for(2).await;
        assert_eq!(
            seen.lock().expect("lock")[1],
            der_of(&new_cert),
            "the new channel presents the new certificate"
        );
    }
}
