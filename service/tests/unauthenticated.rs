//! Peers that have not authenticated get a small, fixed budget (issue 13;
//! the lesson of Kafka CVE-2022-34917): TLS handshakes in progress are
//! capped by `[connections] max_tls_handshakes` (connections beyond it are
//! closed at once, and a real client is served again as soon as the
//! handshakes end), and a handshake claiming a huge length is refused
//! without the server waiting for, or holding, what it claims.

mod tls_kit;

use sluice_service::{ConnectionsConfig, ServerLimits, ServerTls, TlsConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls_kit::serve_health;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Longer than any wait below: a connection closed within it was closed
/// by a limit, not by the timeout.
const HANDSHAKE_TIMEOUT_MS: u64 = 60_000;
const MAX_TLS_HANDSHAKES: u32 = 4;

struct Server {
    address: SocketAddr,
    ca_pem: String,
    _directory: tempfile::TempDir,
    _served: tls_kit::Server,
}

async fn serve() -> Server {
    let directory = tempfile::tempdir().expect("temporary directory");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    let ca_pem = certified.cert.pem();
    std::fs::write(directory.path().join("server.pem"), &ca_pem).expect("write");
    std::fs::write(
        directory.path().join("server.key"),
        certified.signing_key.serialize_pem(),
    )
    .expect("write");
    let tls = TlsConfig {
        enabled: true,
        cert_file: directory.path().join("server.pem"),
        key_file: directory.path().join("server.key"),
        ..TlsConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let limits = ServerLimits::new(&ConnectionsConfig {
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        max_tls_handshakes: MAX_TLS_HANDSHAKES,
        ..ConnectionsConfig::default()
    });
    let incoming = limits
        .incoming(listener)
        .with_tls(Arc::new(ServerTls::load(&tls).expect("tls files load")));
    let served = serve_health(limits, incoming, address);
    Server {
        address,
        ca_pem,
        _directory: directory,
        _served: served,
    }
}

/// A peer that starts a TLS handshake (the record type byte) and stalls.
async fn stalled_handshake(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(&[0x16]).await.expect("write");
    stream
}

/// Whether the server closes `stream` within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An alert before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

async fn health_check(server: &Server) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server.ca_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", server.address))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| status.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_cap_are_closed_and_clients_are_served_once_they_end() {
    let server = serve().await;
    health_check(&server)
        .await
        .expect("served before the flood");
    let mut stalled = Vec::new();
    for _ in 0..MAX_TLS_HANDSHAKES {
        stalled.push(stalled_handshake(server.address).await);
    }
    // Let the server take them all into its handshakes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut beyond = stalled_handshake(server.address).await;
    assert!(
        closed_within(&mut beyond, Duration::from_secs(10)).await,
        "a connection beyond max_tls_handshakes was not closed"
    );
    for stream in stalled.iter_mut() {
        assert!(
            !closed_within(stream, Duration::from_millis(50)).await,
            "a handshake within the cap was closed"
        );
    }
    assert!(
        health_check(&server).await.is_err(),
        "a client was served although the handshakes were at their cap"
    );
    drop(stalled);
    let mut served = Err(String::new());
    for _ in 0..50 {
        served = health_check(&server).await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.expect("served once the stalled handshakes ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_claiming_a_huge_length_is_refused_at_once() {
    let server = serve().await;
    let mut liar = TcpStream::connect(server.address).await.expect("connect");
    // A handshake record claiming 64 KiB (more than TLS allows), holding a
    // ClientHello that claims 16 MiB.
    liar.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    assert!(
        closed_within(&mut liar, Duration::from_secs(10)).await,
        "the server waited for the claimed bytes"
    );
    let mut liar = TcpStream::connect(server.address).await.expect("connect");
    // A valid record length, holding a ClientHello that claims 16 MiB.
    liar.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    assert!(
        closed_within(&mut liar, Duration::from_secs(10)).await,
        "the server waited for a 16 MiB handshake message"
    );
    health_check(&server).await.expect("others are served");
}
