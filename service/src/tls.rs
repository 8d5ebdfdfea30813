//! TLS for a Sluice server (issue 13): the certificate, key and optional
//! client CA files, loaded into a rustls server configuration and loaded
//! again when they change, so certificates rotate without a restart and
//! without dropping a connection (a connection keeps the configuration it
//! was accepted with; new connections get the new one).
//!
//! Rules:
//! - TLS 1.3 only, unless `allow_tls12`. ALPN `h2` (gRPC).
//! - With `client_ca_file`, every client must present a certificate that
//!   CA signed (mTLS); the chain is in each request's
//!   [`crate::connection::ConnectionInfo`]. A certificate from another CA
//!   fails the handshake; a client with none is answered UNAUTHENTICATED
//!   on every request (a failed handshake reads as an opaque transport
//!   error in TLS 1.3 clients).
//! - The files are looked at (size and modification time) every
//!   `reload_check_interval_ms` by the accept loop (`server.rs`: a timer,
//!   so without new connections too) and on an accept at most that often.
//!   Changed files that do not load (half-written, a key that does not
//!   match) keep the configuration in use, with a warning naming the
//!   reason; they are tried again at the next look.
//! - When the trusted client CAs change, the new client-certificate
//!   verifier is published ([`ServerTls::client_trust`]): every open
//!   connection with a client certificate verifies its chain again, and
//!   one that no longer verifies is revoked and closed
//!   (`client_trust.rs`, `connection_trust.rs`). Connections whose chain
//!   still verifies are untouched.

use crate::client_trust::ClientTrust;
use crate::watched_files::WatchedFiles;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;

/// Least and most time between looks at the files, in milliseconds.
pub const RELOAD_CHECK_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// A server's `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve TLS only, and connect to other services with TLS only; no
    /// plaintext fallback. Default: false.
    pub enabled: bool,
    /// PEM certificate chain, this node's own certificate first: served to
    /// clients, and presented to other services it connects to.
    pub cert_file: PathBuf,
    /// PEM private key of the first certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates this node trusts when it connects to other
    /// services (required with `enabled` on a node that connects out).
    /// Default: none.
    pub ca_file: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate
    /// one of them signed (mutual TLS). Default: none.
    pub client_ca_file: Option<PathBuf>,
    /// Also accept TLS 1.2. Default: false (TLS 1.3 only).
    pub allow_tls12: bool,
    /// How often the files are looked at for changes, in milliseconds.
    /// Range: 100 ..= 3,600,000. Default: 1000.
    pub reload_check_interval_ms: u64,
}

impl TlsConfig {
    /// Every numeric key with its range (see [`crate::KeyRange`]).
    pub fn ranges(&self) -> Vec<crate::KeyRange> {
        vec![crate::KeyRange::new(
            "[tls] reload_check_interval_ms",
            self.reload_check_interval_ms,
            *RELOAD_CHECK_INTERVAL_RANGE_MS.start(),
            *RELOAD_CHECK_INTERVAL_RANGE_MS.end(),
        )]
    }

    /// Rules between keys.
    pub fn cross_checks(&self) -> Vec<String> {
        let mut broken = Vec::new();
        if self.enabled
            && (self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty())
        {
            broken.push("[tls] enabled = true needs cert_file and key_file".to_string());
        }
        broken
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ca_file: None,
            client_ca_file: None,
            allow_tls12: false,
            reload_check_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("tls: {path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("tls: {0}")]
    Config(String),
}

struct Loaded {
    server_config: Arc<rustls::ServerConfig>,
    files: WatchedFiles,
    /// The trusted client CAs the published verifier was built from.
    client_roots: Vec<CertificateDer<'static>>,
}

/// What one load of the files gives.
struct Built {
    server_config: Arc<rustls::ServerConfig>,
    client_roots: Vec<CertificateDer<'static>>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// The server configuration of a `[tls]` section, loaded again when its
/// files change.
pub struct ServerTls {
    config: TlsConfig,
    loaded: Mutex<Loaded>,
    /// The client-certificate verifier in force, for open connections.
    trust: tokio::sync::watch::Sender<Arc<ClientTrust>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("config", &self.config)
            .finish()
    }
}

impl ServerTls {
    /// Loads the files; an error names the file and what is wrong.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        if !RELOAD_CHECK_INTERVAL_RANGE_MS.contains(&config.reload_check_interval_ms) {
            return Err(TlsError::Config(format!(
                "reload_check_interval_ms = {} is outside 100 ..= 3600000",
                config.reload_check_interval_ms
            )));
        }
        let files = WatchedFiles::new(
            watched_paths(config),
            Duration::from_millis(config.reload_check_interval_ms),
        );
        let built = build_server_config(config)?;
        let trust = ClientTrust {
            generation: 0,
            verifier: built.verifier,
        };
        Ok(Self {
            config: config.clone(),
            loaded: Mutex::new(Loaded {
                server_config: built.server_config,
                files,
                client_roots: built.client_roots,
            }),
            trust: tokio::sync::watch::Sender::new(Arc::new(trust)),
        })
    }

    /// How often the accept loop looks at the files.
    pub fn reload_check_interval(&self) -> Duration {
        Duration::from_millis(self.config.reload_check_interval_ms)
    }

    /// The client-certificate verifier in force, and its changes.
    pub fn client_trust(&self) -> tokio::sync::watch::Receiver<Arc<ClientTrust>> {
        self.trust.subscribe()
    }

    /// Looks at the files now (the accept loop's timer) and loads them if
    /// they changed.
    pub fn reload_now(&self) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = loaded.files.look(Instant::now());
        self.load_changed(&mut loaded, stamps);
    }

    /// Whether clients must present a certificate (`client_ca_file`).
    pub fn requires_client_certificate(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current_with_generation().0
    }

    /// The configuration for a connection accepted now, and the
    /// generation of its client-certificate verifier.
    pub fn current_with_generation(&self) -> (Arc<rustls::ServerConfig>, u64) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = loaded.files.changed(Instant::now());
        self.load_changed(&mut loaded, stamps);
        (loaded.server_config.clone(), self.trust.borrow().generation)
    }

    /// Loads the files with `stamps` (when some changed), publishing the
    /// client-certificate verifier if the trusted CAs changed.
    fn load_changed(&self, loaded: &mut Loaded, stamps: Option<crate::watched_files::Stamps>) {
        let Some(stamps) = stamps else {
            return;
        };
        let built = match build_server_config(&self.config) {
            Ok(built) => built,
            Err(error) => {
                tracing::warn!(%error, "tls: changed certificate files do not load; still using the previous ones");
                return;
            }
        };
        tracing::info!(cert_file = %self.config.cert_file.display(), "tls: certificate files changed; new connections use them");
        loaded.server_config = built.server_config;
        loaded.files.accept(stamps);
        if built.client_roots == loaded.client_roots {
            return;
        }
        loaded.client_roots = built.client_roots;
        let generation = self.trust.borrow().generation.saturating_add(1);
        tracing::info!(generation, "tls: the trusted client CAs changed; open connections verify their client certificates again");
        self.trust.send_replace(Arc::new(ClientTrust {
            generation,
            verifier: built.verifier,
        }));
    }
}

fn watched_paths(config: &TlsConfig) -> Vec<PathBuf> {
    [
        Some(&config.cert_file),
        Some(&config.key_file),
        config.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

pub(crate) fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Read {
            path: path.to_path_buf(),
            error: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(certificates)
}

pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error: error.to_string(),
    })
}

fn build_server_config(config: &TlsConfig) -> Result<Built, TlsError> {
    let chain = read_certificates(&config.cert_file, "PEM certificate")?;
    let key = read_private_key(&config.key_file)?;
    let provider = crate::crypto_provider::provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if config.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut client_roots = Vec::new();
    let mut client_verifier = None;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            client_roots = read_certificates(path, "PEM CA certificate")?;
            for certificate in &client_roots {
                roots
                    .add(certificate.clone())
                    .map_err(|error| TlsError::Config(format!("{}: {error}", path.display())))?;
            }
            // A client without a certificate completes the handshake and
            // has every request answered UNAUTHENTICATED, saying why
            // (`authorization.rs`); a certificate from another CA still
            // fails the handshake.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|error| TlsError::Config(error.to_string()))?;
            client_verifier = Some(verifier.clone());
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server_config = builder.with_single_cert(chain, key).map_err(|error| {
        TlsError::Config(format!(
            "{} and {} do not make a usable certificate and key: {error}",
            config.cert_file.display(),
            config.key_file.display()
        ))
    })?;
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    // Our cipher suite order, not the client's (`crypto_provider.rs`).
    server_config.ignore_client_order = true;
    Ok(Built {
        server_config: Arc::new(server_config),
        client_roots,
        verifier: client_verifier,
    })
}
