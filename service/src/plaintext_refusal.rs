//! What a plaintext gRPC client gets from a TLS-only port: one HTTP/2
//! answer, `UNAVAILABLE` with a message that says to connect with TLS,
//! instead of a connection closed mid-handshake (which clients report as
//! an opaque protocol error). Bounded by the handshake deadline; at most
//! one request is answered, then the connection is closed.

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The `grpc-message` a plaintext client reads.
pub const TLS_REQUIRED_MESSAGE: &str = "this Sluice server accepts TLS only: connect with TLS \
     (SDK: ClientConfig.tls; CLI: --tls-ca, and --tls-cert/--tls-key where client certificates \
     are required)";

/// gRPC's status code UNAVAILABLE.
const GRPC_UNAVAILABLE: &str = "14";

pub async fn refuse(stream: TcpStream, deadline: Instant) {
    let _ = tokio::time::timeout_at(deadline, answer_once(stream)).await;
}

async fn answer_once(stream: TcpStream) -> Option<()> {
    let mut connection = h2::server::handshake(stream).await.ok()?;
    if let Some(Ok((_request, mut respond))) = connection.accept().await {
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", GRPC_UNAVAILABLE)
            .header("grpc-message", TLS_REQUIRED_MESSAGE)
            .body(())
            .ok()?;
        respond.send_response(response, true).ok()?;
    }
    connection.graceful_shutdown();
    // Drives the connection until the answer and the GOAWAY are sent.
    while let Some(Ok(_)) = connection.accept().await {}
    Some(())
}
