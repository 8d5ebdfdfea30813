//! The TLS connector of channels to other services (`peer_tls.rs`): TCP,
//! then a rustls handshake with this node's client configuration, whose
//! client certificate is loaded again when its files change
//! (`client_cert.rs`). tonic's own TLS takes a fixed certificate, so a
//! rotated one would reach a peer only after a restart; this connector
//! runs under tonic's channel (`Endpoint::connect_with_connector`), which
//! reconnects through it.
//!
//! Rules:
//! - The server must be named by its certificate (the address's host) and
//!   signed by `[tls] ca_file`; HTTP/2 must be agreed by ALPN.
//! - Nagle is off, as on tonic's own connections.
//! - The endpoint's `connect_timeout` bounds TCP and TLS handshake
//!   together (tonic wraps the connector in it).
//! - A connection is handed over once the server has said something (its
//!   HTTP/2 settings) or refused this node's certificate, which is then the
//!   connection's error, named (see [`first_words`]).
//! - No session resumption: a resumed TLS 1.3 session carries the client
//!   certificate of the session it resumes, so a rotated certificate would
//!   not be presented (`peer_tls.rs` turns it off). Connections between
//!   services are long-lived; a full handshake each time costs little.

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most time the connector waits for a server's first bytes after the TLS
/// handshake, in milliseconds (see [`first_words`]); a Sluice server sends
/// its HTTP/2 settings at once, so this is reached only with servers that
/// wait for the client.
pub const VERDICT_WAIT_MS: u64 = 1_000;

/// A TLS connection to another service, as hyper reads and writes it.
pub type PeerIo = TokioIo<TlsStream<TcpStream>>;

#[derive(Clone)]
pub struct PeerConnector {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnector").finish_non_exhaustive()
    }
}

impl PeerConnector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }

    async fn connect(
        config: Arc<rustls::ClientConfig>,
        uri: http::Uri,
    ) -> Result<PeerIo, BoxError> {
        let host = uri
            .host()
            .ok_or_else(|| format!("no host in peer address {uri}"))?;
        // An IPv6 literal is written in brackets in a URI.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .ok_or_else(|| format!("no port in peer address {uri}"))?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|error| format!("peer host {host:?} is not a TLS server name: {error}"))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!("{host}:{port} did not agree to HTTP/2 (ALPN h2) over TLS").into());
        }
        first_words(&mut tls, &host, port).await?;
        Ok(TokioIo::new(tls))
    }
}

/// Waits for the server's first bytes after the handshake, at most
/// [`VERDICT_WAIT_MS`]. In TLS 1.3 the client's handshake ends before the
/// server has checked the client's certificate; a server that refuses it
/// (another CA, a revoked one after a rotation) sends an alert, which would
/// otherwise reach hyper as a bare "connection closed". The bytes stay in
/// the session for hyper to read.
async fn first_words(
    tls: &mut TlsStream<TcpStream>,
    host: &str,
    port: u16,
) -> Result<(), BoxError> {
    let wait = std::time::Duration::from_millis(VERDICT_WAIT_MS);
    match tokio::time::timeout(wait, tls.fill_buf()).await {
        // A server that waits for the client to speak first.
        Err(_) => Ok(()),
        Ok(Ok([])) => Err(format!(
            "{host}:{port} closed the connection right after the TLS handshake (does it accept this node's certificate?)"
        )
        .into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!(
            "{host}:{port} refused this node's TLS connection: {error} (is this node's certificate signed by a CA the server trusts?)"
        )
        .into()),
    }
}

impl tower_service::Service<http::Uri> for PeerConnector {
    type Response = PeerIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<PeerIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(Self::connect(self.config.clone(), uri))
    }
}
