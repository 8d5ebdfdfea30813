//! Why a connection to etcd fails when the etcd client cannot say: in TLS
//! 1.3 a server refuses a client certificate (none, or another CA's) after
//! the client's handshake has ended, and tonic then reports a bare
//! "connection closed"; a TLS etcd reached at an `http://` endpoint reads
//! as a broken pipe. Called only after a probe failed (`etcd_connect.rs`).
//!
//! Rules:
//! - `https://` endpoints: TCP, the TLS handshake with the nameserver's own
//!   CA and client certificate, then the HTTP/2 preface; the server's
//!   answer (its settings, or an alert such as `CertificateRequired`)
//!   tells whether it accepted the connection.
//! - `http://` endpoints: a TLS handshake trusting nothing; a server that
//!   answers it with a certificate speaks TLS.
//! - An endpoint that cannot be reached says nothing; each endpoint is
//!   given at most the connect timeout.

use super::etcd_refusal::chain;
use crate::metadata_security::{scheme, Scheme};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// What an HTTP/2 client sends first: the preface and empty settings.
const HTTP2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// Said when a TLS handshake to a plaintext endpoint got a certificate
/// (`etcd_refusal::verdict` reads it).
pub const SPEAKS_TLS: &str = "the server answered a TLS handshake";
/// Added when a refused connection presented no client certificate.
pub const NO_CLIENT_CERTIFICATE: &str = " (no client certificate presented)";
/// Said when the server closed the connection after the handshake without
/// an alert.
pub const CLOSED_AFTER_HANDSHAKE: &str = "connection closed right after the TLS handshake";

/// The first endpoint's problem found, as an error description.
pub async fn diagnose(
    endpoints: &[String],
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Option<String> {
    for endpoint in endpoints {
        let Some((host, port)) = host_and_port(endpoint) else {
            continue;
        };
        let attempt = match (scheme(endpoint), &tls) {
            (Scheme::Https, Some(tls)) => handshake(tls.clone(), &host, port, true),
            (Scheme::Https, None) => continue,
            (Scheme::Plaintext, _) => match trusting_nothing() {
                Some(config) => handshake(config, &host, port, false),
                None => continue,
            },
        };
        if let Ok(Some(problem)) = tokio::time::timeout(timeout, attempt).await {
            return Some(format!("{endpoint}: {problem}"));
        }
    }
    None
}

fn host_and_port(endpoint: &str) -> Option<(String, u16)> {
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let uri: http::Uri = with_scheme.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), uri.port_u16()?))
}

/// `Some(problem)` when the server refused; `None` when it accepted or
/// could not be reached.
async fn handshake(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    expect_tls: bool,
) -> Option<String> {
    let server_name = ServerName::try_from(host.to_string()).ok()?;
    let tcp = TcpStream::connect((host, port)).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = match connector.connect(server_name, tcp).await {
        Ok(tls) => tls,
        Err(error) if !expect_tls => {
            let description = chain(&error);
            return description
                .contains("invalid peer certificate")
                .then(|| SPEAKS_TLS.to_string());
        }
        Err(error) => return Some(chain(&error)),
    };
    if !expect_tls {
        return Some(SPEAKS_TLS.to_string());
    }
    if let Err(error) = tls.write_all(HTTP2_PREFACE_AND_SETTINGS).await {
        return Some(chain(&error));
    }
    let mut first = [0u8; 9];
    match tls.read(&mut first).await {
        Ok(0) => Some(CLOSED_AFTER_HANDSHAKE.to_string()),
        Ok(_) => None,
        Err(error) => Some(chain(&error)),
    }
}

/// A client that trusts no certificate: its handshake only shows whether
/// the server speaks TLS.
fn trusting_nothing() -> Option<Arc<rustls::ClientConfig>> {
    let provider = sluice_service::tls_crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Some(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_into_host_and_port() {
        assert_eq!(
            host_and_port("https://127.0.0.1:2379"),
            Some(("127.0.0.1".to_string(), 2379))
        );
        assert_eq!(
            host_and_port("etcd-1:2379"),
            Some(("etcd-1".to_string(), 2379))
        );
        assert_eq!(
            host_and_port("https://[::1]:2379"),
            Some(("::1".to_string(), 2379))
        );
        assert_eq!(host_and_port("https://etcd-1"), None);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_says_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let found = diagnose(
            &[format!("http://127.0.0.1:{port}")],
            None,
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(found, None);
    }
}
