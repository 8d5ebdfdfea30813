//! How a service connects to other services: plaintext, or (with `[tls]`
//! enabled) TLS only, trusting `ca_file` and presenting its own certificate
//! for mutual TLS. The scheme follows the setting, whatever an address
//! says, so turning TLS on does not mean editing every peer address.

use crate::tls::{TlsConfig, TlsError};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    tls: Option<ClientTlsConfig>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error: error.to_string(),
    })
}

impl PeerTls {
    /// Plaintext, as without `[tls]`.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// From a `[tls]` section: plaintext unless `enabled`; with it,
    /// `ca_file` is required and the node's certificate and key are read.
    pub fn from_config(config: &TlsConfig) -> Result<Self, TlsError> {
        if !config.enabled {
            return Ok(Self::plaintext());
        }
        let ca_file = config.ca_file.as_ref().ok_or_else(|| {
            TlsError::Config(
                "[tls] ca_file is required with enabled = true: the CA this node trusts when it connects to other services".into(),
            )
        })?;
        let identity = Identity::from_pem(read(&config.cert_file)?, read(&config.key_file)?);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca_file)?))
            .identity(identity);
        Ok(Self { tls: Some(tls) })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An endpoint for `address` (`host:port`, with or without a scheme):
    /// `https://` and TLS when enabled (the certificate must name the
    /// host), `http://` otherwise.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, String> {
        let host_and_port = address
            .strip_prefix("http://")
            .or_else(|| address.strip_prefix("https://"))
            .unwrap_or(address);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{host_and_port}"))
            .map_err(|error| format!("bad peer address {address:?}: {error}"))?;
        match &self.tls {
            None => Ok(endpoint),
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|error| format!("tls for {address:?}: {error}")),
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
