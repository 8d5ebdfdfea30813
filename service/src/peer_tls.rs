//! How a service connects to other services: plaintext, or (with `[tls]`
//! enabled) TLS only, trusting `ca_file` and presenting its own certificate
//! for mutual TLS — the current one: rotated certificate files are
//! presented from the next handshake on (`client_cert.rs`), by channels
//! opened before the rotation too. The scheme follows the setting,
//! whatever an address says, so turning TLS on does not mean editing every
//! peer address.
//!
//! A channel is made with [`PeerTls::endpoint`], tuned with
//! [`PeerEndpoint::configure`] and opened with [`PeerEndpoint::connect`] or
//! [`PeerEndpoint::connect_lazy`]: the TLS lives in the connector
//! (`peer_connector.rs`), so the tonic `Endpoint` inside is never connected
//! on its own.

use crate::client_cert::ReloadingClientCert;
use crate::peer_connector::PeerConnector;
use crate::tls::{read_certificates, TlsConfig, TlsError};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    tls: Option<PeerConnector>,
}

/// A peer's endpoint: tonic's settings and, with TLS, the connector.
#[derive(Debug, Clone)]
pub struct PeerEndpoint {
    endpoint: Endpoint,
    tls: Option<PeerConnector>,
}

impl PeerTls {
    /// Plaintext, as without `[tls]`.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// From a `[tls]` section: plaintext unless `enabled`; with it,
    /// `ca_file` is required and the node's certificate and key are read
    /// (and read again when they change).
    pub fn from_config(config: &TlsConfig) -> Result<Self, TlsError> {
        if !config.enabled {
            return Ok(Self::plaintext());
        }
        let ca_file = config.ca_file.as_ref().ok_or_else(|| {
            TlsError::Config(
                "[tls] ca_file is required with enabled = true: the CA this node trusts when it connects to other services".into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in read_certificates(ca_file, "PEM CA certificate")? {
            roots
                .add(certificate)
                .map_err(|error| TlsError::Config(format!("{}: {error}", ca_file.display())))?;
        }
        let provider = crate::crypto_provider::provider();
        let certificate = ReloadingClientCert::load(
            &config.cert_file,
            &config.key_file,
            Duration::from_millis(config.reload_check_interval_ms),
            provider.clone(),
        )?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(certificate));
        client.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed session would present the certificate of the session
        // it resumes, not a rotated one (`peer_connector.rs`).
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            tls: Some(PeerConnector::new(Arc::new(client))),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An endpoint for `address` (`host:port`, with or without a scheme):
    /// TLS when enabled (the certificate must name the host), plaintext
    /// otherwise.
    pub fn endpoint(&self, address: &str) -> Result<PeerEndpoint, String> {
        let host_and_port = address
            .strip_prefix("http://")
            .or_else(|| address.strip_prefix("https://"))
            .unwrap_or(address);
        // `http` in both cases: with TLS the connector encrypts, and tonic
        // refuses an `https` address it is not doing TLS for itself.
        let endpoint = Endpoint::from_shared(format!("http://{host_and_port}"))
            .map_err(|error| format!("bad peer address {address:?}: {error}"))?;
        Ok(PeerEndpoint {
            endpoint,
            tls: self.tls.clone(),
        })
    }
}

impl PeerEndpoint {
    /// Tonic's settings (timeouts, windows, frame size); not TLS.
    pub fn configure(self, settings: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        Self {
            endpoint: settings(self.endpoint),
            tls: self.tls,
        }
    }

    pub fn uri(&self) -> &http::Uri {
        self.endpoint.uri()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A channel that connects when first used, and again after its
    /// connection fails.
    pub fn connect_lazy(&self) -> Channel {
        match &self.tls {
            None => self.endpoint.connect_lazy(),
            Some(connector) => self.endpoint.connect_with_connector_lazy(connector.clone()),
        }
    }

    /// A channel connected now.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            None => self.endpoint.connect().await,
            Some(connector) => {
                self.endpoint
                    .connect_with_connector(connector.clone())
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_follows_the_setting() {
        let plain = PeerTls::plaintext();
        for address in [
            "127.0.0.1:7400",
            "http://127.0.0.1:7400",
            "https://127.0.0.1:7400",
        ] {
            let endpoint = plain.endpoint(address).expect("valid");
            assert_eq!(endpoint.uri().scheme_str(), Some("http"), "{address}");
            assert!(!endpoint.is_tls());
        }
        assert!(plain.endpoint("not an address").is_err());
    }

    #[test]
    fn tls_needs_a_ca_file_and_readable_files() {
        let enabled = TlsConfig {
            enabled: true,
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
            ..TlsConfig::default()
        };
        let error = PeerTls::from_config(&enabled).expect_err("no ca_file");
        assert!(error.to_string().contains("ca_file"), "{error}");
        let with_ca = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..enabled
        };
        let error = PeerTls::from_config(&with_ca).expect_err("unreadable");
        assert!(error.to_string().contains("/nonexistent/"), "{error}");
        assert!(!PeerTls::from_config(&TlsConfig::default())
            .expect("plaintext")
            .is_tls());
    }
}
