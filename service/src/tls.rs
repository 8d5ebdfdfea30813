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
//! - The files are looked at (size and modification time) at most every
//!   `reload_check_interval_ms`, on an accept. Changed files that do not
//!   load (half-written, a key that does not match) keep the configuration
//!   in use, with a warning naming the reason; they are tried again at the
//!   next look.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// Size and modification time of each file, to notice changes.
type Stamps = Vec<Option<(u64, SystemTime)>>;

struct Loaded {
    server_config: Arc<rustls::ServerConfig>,
    stamps: Stamps,
    looked_at: Instant,
}

/// The server configuration of a `[tls]` section, loaded again when its
/// files change.
pub struct ServerTls {
    config: TlsConfig,
    loaded: Mutex<Loaded>,
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
        let stamps = stamps(config);
        let server_config = build_server_config(config)?;
        Ok(Self {
            config: config.clone(),
            loaded: Mutex::new(Loaded {
                server_config,
                stamps,
                looked_at: Instant::now(),
            }),
        })
    }

    /// Whether clients must present a certificate (`client_ca_file`).
    pub fn requires_client_certificate(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let interval = Duration::from_millis(self.config.reload_check_interval_ms);
        if loaded.looked_at.elapsed() >= interval {
            loaded.looked_at = Instant::now();
            let now = stamps(&self.config);
            if now != loaded.stamps {
                match build_server_config(&self.config) {
                    Ok(server_config) => {
                        tracing::info!(cert_file = %self.config.cert_file.display(), "tls: certificate files changed; new connections use them");
                        loaded.server_config = server_config;
                        loaded.stamps = now;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "tls: changed certificate files do not load; still using the previous ones");
                    }
                }
            }
        }
        loaded.server_config.clone()
    }
}

fn stamps(config: &TlsConfig) -> Stamps {
    let files = [
        Some(&config.cert_file),
        Some(&config.key_file),
        config.client_ca_file.as_ref(),
    ];
    files
        .into_iter()
        .flatten()
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.len(), metadata.modified().ok()?))
        })
        .collect()
}

fn read_certificates(
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

fn build_server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates(&config.cert_file, "PEM certificate")?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|error| TlsError::Read {
        path: config.key_file.clone(),
        error: error.to_string(),
    })?;
    // ring, as tonic's `tls-ring` clients use. rustls 0.23.48 deprecates it
    // for lacking post-quantum key exchange; moving every hop to aws-lc-rs
    // is to be measured with the TLS benchmarks (issue 13).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if config.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(path, "PEM CA certificate")? {
                roots
                    .add(certificate)
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
    Ok(Arc::new(server_config))
}
