//! TLS settings of the SDK (issue 13): the CA the client trusts and, for
//! mutual TLS, its own certificate. With them every connection (to
//! nameservers and brokers) is TLS, whatever scheme an address is written
//! with; without them every connection is plaintext.
//!
//! Settings made from files ([`ClientTls::from_files`]) remember the
//! paths ([`ClientTls::files`]): the SDK looks at them again (size and
//! modification time, at most every [`TLS_FILES_CHECK_INTERVAL_MS`]) when
//! it opens a channel, and files that changed and load are used for the
//! channels opened from then on, so a rotated client certificate is
//! presented without a restart (`tls_reload.rs`). Connections and streams
//! already open keep the certificate they were opened with. Changed files
//! that do not load (half-written, a key that is not the certificate's, no
//! PEM certificate) keep the previous ones, with a WARN, and are tried
//! again at the next look: the server's rules (`sluice-service` `tls.rs`).

use crate::error::ClientError;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// PEM contents, so a config can be built without files.
///
/// ```no_run
/// # fn main() -> Result<(), sluice_client::ClientError> {
/// let tls = sluice_client::ClientTls::from_files("ca.pem", Some(("client.pem", "client.key")))?;
/// let config = sluice_client::ClientConfig {
///     bootstrap: vec!["broker-1:7400".into()],
///     tls: Some(tls),
///     ..Default::default()
/// };
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates trusted to sign the servers' certificates.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and private key presented to servers that
    /// require client certificates.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The files these settings were read from (set by
    /// [`ClientTls::from_files`]): looked at again for rotated
    /// certificates. `None`: the PEM contents above are used as they are.
    pub files: Option<ClientTlsFiles>,
}

/// Least time between two looks at the TLS files of
/// [`ClientTls::files`], in milliseconds: a rotated certificate is
/// presented by channels opened this long after the files changed, at
/// most.
pub const TLS_FILES_CHECK_INTERVAL_MS: u64 = 1000;

/// The files a [`ClientTls`] was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificates.
    pub ca_file: PathBuf,
    /// PEM certificate chain and private key files, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a private key.
        f.debug_struct("ClientTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .field("files", &self.files)
            .finish()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|error| {
        ClientError::InvalidArgument(format!(
            "cannot read the {what} {}: {error}",
            path.display()
        ))
    })
}

impl ClientTls {
    /// PEM contents, not from files (nothing is looked at again).
    pub fn new(ca_pem: Vec<u8>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Self {
        Self {
            ca_pem,
            identity,
            files: None,
        }
    }

    /// Reads the CA file and, for mutual TLS, the certificate and key
    /// files, and remembers their paths: the SDK reads them again when
    /// they change (see the module documentation).
    pub fn from_files(
        ca_file: impl AsRef<Path>,
        identity: Option<(impl AsRef<Path>, impl AsRef<Path>)>,
    ) -> Result<Self, ClientError> {
        let files = ClientTlsFiles {
            ca_file: ca_file.as_ref().to_path_buf(),
            identity: identity
                .map(|(cert, key)| (cert.as_ref().to_path_buf(), key.as_ref().to_path_buf())),
        };
        let ca_pem = read(&files.ca_file, "TLS CA file")?;
        let identity = match &files.identity {
            None => None,
            Some((cert, key)) => Some((
                read(cert, "TLS certificate file")?,
                read(key, "TLS key file")?,
            )),
        };
        Ok(Self {
            ca_pem,
            identity,
            files: Some(files),
        })
    }

    /// The settings as tonic takes them (for a channel of your own).
    pub fn tonic_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            None => config,
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        }
    }
}

/// `address` (with or without a scheme) with the scheme the settings call
/// for.
pub fn with_scheme(address: &str, tls: bool) -> String {
    let host_and_port = address.split_once("://").map_or(address, |(_, rest)| rest);
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host_and_port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_follows_the_settings() {
        assert_eq!(with_scheme("a:1", false), "http://a:1");
        assert_eq!(with_scheme("http://a:1", true), "https://a:1");
        assert_eq!(with_scheme("https://a:1", false), "http://a:1");
    }

    #[test]
    fn unreadable_files_are_named_and_keys_never_printed() {
        let error = ClientTls::from_files("/nonexistent/ca.pem", None::<(&str, &str)>)
            .expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        let tls = ClientTls::new(
            b"ca".to_vec(),
            Some((b"cert".to_vec(), b"SECRET KEY".to_vec())),
        );
        assert!(!format!("{tls:?}").contains("SECRET"));
    }
}
