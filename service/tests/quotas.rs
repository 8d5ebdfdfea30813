//! Per-principal quotas and connections per address on a real server with
//! real clients (issue 13). Principals come from client certificates
//! (mutual TLS), so two clients are two principals:
//!
//! - a principal over its requests per second is answered THROTTLED with a
//!   wait at once, and served again after that wait; another principal is
//!   not slowed;
//! - a principal's connection beyond its `connections` quota has its
//!   requests answered THROTTLED saying why, while its other connections
//!   and other principals keep working;
//! - a client address's connection beyond `max_connections_per_ip` is
//!   closed at accept, and the address's other connections keep working.
//!
//! The test server has only the health service: a call of any other
//! method that passes the quota layer is answered UNIMPLEMENTED.

mod tls_kit;

use sluice_proto::{ErrorCode, SluiceError};
use sluice_service::quota::PrincipalQuota;
use sluice_service::{ConnectionsConfig, Quotas, QuotasConfig, ServerLimits, ServerTls, TlsConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tls_kit::{ca, leaf, serve_health, Ca, Server};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn tls_config(directory: &Path, ca: &Ca) -> TlsConfig {
    let (certificate, key) = leaf(ca, "localhost");
    std::fs::write(directory.join("server.pem"), certificate).expect("write");
    std::fs::write(directory.join("server.key"), key).expect("write");
    std::fs::write(directory.join("ca.pem"), &ca.pem).expect("write");
    TlsConfig {
        enabled: true,
        cert_file: directory.join("server.pem"),
        key_file: directory.join("server.key"),
        client_ca_file: Some(directory.join("ca.pem")),
        ..TlsConfig::default()
    }
}

async fn serve(connections: ConnectionsConfig, quotas: Quotas, tls: Option<&TlsConfig>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let limits = ServerLimits::new(&connections).with_quotas(quotas);
    let mut incoming = limits.incoming(listener);
    if let Some(tls) = tls {
        incoming = incoming.with_tls(Arc::new(ServerTls::load(tls).expect("tls files load")));
    }
    serve_health(limits, incoming, address)
}

/// A new connection as `name` (a certificate for it from `ca`).
async fn connect_as(server: &Server, ca: &Ca, name: &str) -> Channel {
    let (certificate, key) = leaf(ca, name);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(certificate, key));
    Endpoint::from_shared(format!("https://{}", server.address))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connects")
}

/// A call past the connection's checks: `Ok` (UNIMPLEMENTED: served) or
/// the Sluice error it was refused with.
async fn call(channel: Channel) -> Result<(), SluiceError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| SluiceError::new(ErrorCode::Unavailable, error.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/sluice.v1.Broker/ListOffsets");
    let codec = tonic_prost::ProstCodec::<
        sluice_proto::v1::ListOffsetsRequest,
        sluice_proto::v1::ListOffsetsResponse,
    >::default();
    let request = tonic::Request::new(sluice_proto::v1::ListOffsetsRequest::default());
    match grpc.unary(request, path, codec).await {
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
        Err(status) => Err(SluiceError::from_status(&status)),
        Ok(_) => panic!("the test server has no ListOffsets"),
    }
}

fn alice_limited(alice: PrincipalQuota) -> Quotas {
    let config = QuotasConfig {
        principal: vec![PrincipalQuota {
            name: "User:alice".into(),
            ..alice
        }],
        ..QuotasConfig::default()
    };
    Quotas::new(&config, [])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_request_rate_waits_as_told_and_others_are_not_slowed() {
    let directory = tempfile::tempdir().expect("temp dir");
    let ca = ca("test CA");
    let tls = tls_config(directory.path(), &ca);
    let quotas = alice_limited(PrincipalQuota {
        requests_per_second: Some(2),
        ..PrincipalQuota::default()
    });
    let server = serve(ConnectionsConfig::default(), quotas, Some(&tls)).await;
    let alice = connect_as(&server, &ca, "alice").await;
    let bob = connect_as(&server, &ca, "bob").await;
    // A burst of two, and the one that goes into debt (Kafka's model).
    for index in 0..3 {
        call(alice.clone())
            .await
            .unwrap_or_else(|error| panic!("alice's call {index}: {error}"));
    }
    let refused = call(alice.clone())
        .await
        .expect_err("a fourth within a second");
    assert_eq!(refused.code, ErrorCode::Throttled, "{refused}");
    assert!(refused.message.contains("User:alice"), "{refused}");
    let wait = refused.retry_after_ms.expect("told how long to wait");
    assert!((1..=500).contains(&wait), "{wait} ms");
    for index in 0..50 {
        call(bob.clone())
            .await
            .unwrap_or_else(|error| panic!("bob's call {index}: {error}"));
    }
    tokio::time::sleep(Duration::from_millis(wait)).await;
    call(alice).await.expect("served after waiting as told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_a_principals_quota_is_told_and_the_others_keep_working() {
    let directory = tempfile::tempdir().expect("temp dir");
    let ca = ca("test CA");
    let tls = tls_config(directory.path(), &ca);
    let quotas = alice_limited(PrincipalQuota {
        connections: Some(2),
        ..PrincipalQuota::default()
    });
    let server = serve(ConnectionsConfig::default(), quotas, Some(&tls)).await;
    let first = connect_as(&server, &ca, "alice").await;
    let second = connect_as(&server, &ca, "alice").await;
    call(first.clone()).await.expect("first connection");
    call(second.clone()).await.expect("second connection");
    let third = connect_as(&server, &ca, "alice").await;
    let refused = call(third)
        .await
        .expect_err("a third connection is over the quota");
    assert_eq!(refused.code, ErrorCode::Throttled, "{refused}");
    assert!(
        refused.message.contains("2 connections") && refused.message.contains("User:alice"),
        "{refused}"
    );
    let bob = connect_as(&server, &ca, "bob").await;
    for channel in [first, second, bob] {
        call(channel)
            .await
            .expect("the other connections are served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_max_connections_per_ip_is_closed_at_accept() {
    let connections = ConnectionsConfig {
        max_connections_per_ip: 2,
        ..ConnectionsConfig::default()
    };
    let server = serve(connections, Quotas::unlimited(), None).await;
    let plain = || async {
        Endpoint::from_shared(format!("http://{}", server.address))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    };
    let first = plain().await.expect("first");
    let second = plain().await.expect("second");
    call(first.clone()).await.expect("first connection");
    call(second.clone()).await.expect("second connection");
    let third = match plain().await {
        Err(_) => None,
        Ok(channel) => Some(call(channel).await),
    };
    if let Some(outcome) = third {
        outcome.expect_err("a third connection from 127.0.0.1 is closed, not served");
    }
    call(first.clone()).await.expect("the first still works");
    call(second).await.expect("the second still works");
    // A place is given back when a connection ends.
    drop(first);
    for attempt in 0.. {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let served = match plain().await {
            Ok(channel) => call(channel).await.is_ok(),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(
            attempt < 50,
            "no place was given back 5 s after a connection ended"
        );
    }
}
