//! TLS on a real server and real clients (issue 13): clients that trust
//! the server's CA are served; plaintext clients, clients trusting another
//! CA and (with mutual TLS) clients without a certificate are refused while
//! the server goes on serving; certificates rotate without a restart and
//! without dropping an open connection; bad files are refused by name.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sluice_service::{ConnectionInfo, ConnectionsConfig, ServerLimits, ServerTls, TlsConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("self-signed").pem();
    Ca { params, key, pem }
}

/// A certificate for `name` signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, name: &str) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let certificate = params.signed_by(&key, &issuer).expect("signed");
    (certificate.pem(), key.serialize_pem())
}

/// Writes `contents` to `path` as a replacement would: whole, by rename.
fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

struct Server {
    address: SocketAddr,
    /// Per request served: the length of the client's certificate chain.
    seen: Arc<Mutex<Vec<Option<usize>>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn tls_files(directory: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TlsConfig {
    let (certificate, key) = leaf(ca, "localhost");
    replace(&directory.join("server.pem"), &certificate);
    replace(&directory.join("server.key"), &key);
    let client_ca_file = client_ca.map(|client_ca| {
        let path = directory.join("clients-ca.pem");
        replace(&path, &client_ca.pem);
        path
    });
    TlsConfig {
        enabled: true,
        cert_file: directory.join("server.pem"),
        key_file: directory.join("server.key"),
        client_ca_file,
        reload_check_interval_ms: 100,
        ..TlsConfig::default()
    }
}

async fn serve(config: &TlsConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let limits = ServerLimits::new(&ConnectionsConfig {
        handshake_timeout_ms: 500,
        ..ConnectionsConfig::default()
    });
    let tls = Arc::new(ServerTls::load(config).expect("tls files load"));
    let incoming = limits.incoming(listener).with_tls(tls);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |request: tonic::Request<()>| {
            let chain = request
                .extensions()
                .get::<ConnectionInfo>()
                .and_then(|info| info.peer_certificates.as_ref().map(|chain| chain.len()));
            recorded.lock().expect("lock").push(chain);
            Ok(request)
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = limits.grpc_server().add_service(health);
    tokio::spawn(async move {
        let _ = server
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Server {
        address,
        seen,
        _stop: stop,
    }
}

async fn channel(
    server: &Server,
    trusted: &Ca,
    identity: Option<(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&trusted.pem))
        .domain_name("localhost");
    if let Some((certificate, key)) = identity {
        tls = tls.identity(Identity::from_pem(certificate, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", server.address))
        .expect("endpoint")
        .tls_config(tls)
        .map_err(|error| error.to_string())?
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

async fn check(channel: Channel) -> Result<(), String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
        .map_err(|status| format!("{status:?}"))
}

/// A call of a method this test server does not have (a store RPC): past
/// the connection's checks it is answered UNIMPLEMENTED.
async fn store_call(channel: Channel) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/sluice.v1.Store/GetSegmentStatus");
    let codec = tonic_prost::ProstCodec::<
        sluice_proto::v1::SegmentStatusRequest,
        sluice_proto::v1::SegmentStatus,
    >::default();
    grpc.unary(
        tonic::Request::new(sluice_proto::v1::SegmentStatusRequest::default()),
        path,
        codec,
    )
    .await
    .expect_err("no such method on this server")
}

async fn served(
    server: &Server,
    trusted: &Ca,
    identity: Option<(String, String)>,
) -> Result<(), String> {
    check(channel(server, trusted, identity).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_that_trust_the_server_are_served() {
    let directory = tempfile::tempdir().expect("temp dir");
    let authority = ca("sluice test CA");
    let server = serve(&tls_files(directory.path(), &authority, None)).await;
    served(&server, &authority, None)
        .await
        .expect("a client trusting the CA is served");

    let plaintext = Endpoint::from_shared(format!("http://{}", server.address))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5));
    let answer = match plaintext.connect().await {
        Ok(channel) => check(channel).await,
        Err(error) => Err(format!("{error:?}")),
    };
    let refused = answer.expect_err("a plaintext client is not served");
    assert!(
        refused.contains("Unavailable") && refused.contains("accepts TLS only"),
        "a plaintext client is told to use TLS: {refused}"
    );

    let stranger = ca("another CA");
    let refused = served(&server, &stranger, None).await;
    assert!(
        refused.is_err(),
        "a client trusting another CA does not connect"
    );

    // A client that never starts its TLS handshake is closed after the
    // handshake timeout (500 ms here).
    let mut silent = tokio::net::TcpStream::connect(server.address)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    served(&server, &authority, None)
        .await
        .expect("and others are still served");
    assert!(server
        .seen
        .lock()
        .expect("lock")
        .iter()
        .all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let directory = tempfile::tempdir().expect("temp dir");
    let authority = ca("server CA");
    let clients = ca("clients CA");
    let server = serve(&tls_files(directory.path(), &authority, Some(&clients))).await;

    // Without a certificate: the handshake completes, health checks (open
    // to container probes) are answered, every other request is refused
    // saying why.
    let anonymous = channel(&server, &authority, None)
        .await
        .expect("TLS without a certificate");
    check(anonymous.clone())
        .await
        .expect("health checks are open");
    let refused = store_call(anonymous).await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("requires a client certificate"),
        "{refused:?}"
    );
    let forged = leaf(&ca("someone else's CA"), "broker-1");
    assert!(
        served(&server, &authority, Some(forged)).await.is_err(),
        "a certificate from another CA"
    );
    let with_certificate = channel(&server, &authority, Some(leaf(&clients, "broker-1")))
        .await
        .expect("a certificate from the client CA");
    check(with_certificate.clone()).await.expect("served");
    let passed = store_call(with_certificate).await;
    assert_eq!(
        passed.code(),
        tonic::Code::Unimplemented,
        "past the check: {passed:?}"
    );
    assert_eq!(
        server.seen.lock().expect("lock").as_slice(),
        [None, Some(1)],
        "the server sees the client's chain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart_or_a_dropped_connection() {
    let directory = tempfile::tempdir().expect("temp dir");
    let old = ca("old CA");
    let config = tls_files(directory.path(), &old, None);
    let server = serve(&config).await;
    let open = channel(&server, &old, None).await.expect("connect");
    check(open.clone()).await.expect("served");

    let new = ca("new CA");
    let (certificate, key) = leaf(&new, "localhost");
    replace(&config.key_file, &key);
    replace(&config.cert_file, &certificate);
    tokio::time::sleep(Duration::from_millis(300)).await;
    served(&server, &new, None)
        .await
        .expect("new connections get the new certificate");
    assert!(
        served(&server, &old, None).await.is_err(),
        "and no longer the old one"
    );
    check(open.clone())
        .await
        .expect("the open connection keeps going");

    // Files that do not load keep the certificate in use.
    replace(&config.cert_file, "not a certificate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    served(&server, &new, None)
        .await
        .expect("garbage keeps the previous certificate");
    check(open).await.expect("still served");
}

#[test]
fn bad_files_are_refused_naming_them() {
    let directory = tempfile::tempdir().expect("temp dir");
    let authority = ca("CA");
    let config = tls_files(directory.path(), &authority, None);
    let missing = TlsConfig {
        cert_file: directory.path().join("absent.pem"),
        ..config.clone()
    };
    let error = ServerTls::load(&missing)
        .expect_err("missing file")
        .to_string();
    assert!(error.contains("absent.pem"), "{error}");

    let (_, other_key) = leaf(&authority, "localhost");
    replace(&directory.path().join("other.key"), &other_key);
    let mismatched = TlsConfig {
        key_file: directory.path().join("other.key"),
        ..config.clone()
    };
    let error = ServerTls::load(&mismatched)
        .expect_err("key of another certificate")
        .to_string();
    assert!(error.contains("other.key"), "{error}");

    replace(&directory.path().join("empty.pem"), "");
    let empty = TlsConfig {
        cert_file: directory.path().join("empty.pem"),
        ..config.clone()
    };
    let error = ServerTls::load(&empty)
        .expect_err("no certificate")
        .to_string();
    assert!(error.contains("empty.pem"), "{error}");

    for interval in [0, 99, 3_600_001, u64::MAX] {
        let out_of_range = TlsConfig {
            reload_check_interval_ms: interval,
            ..config.clone()
        };
        assert!(ServerTls::load(&out_of_range).is_err(), "{interval}");
    }
    for interval in [100, 3_600_000] {
        let in_range = TlsConfig {
            reload_check_interval_ms: interval,
            ..config.clone()
        };
        assert!(ServerTls::load(&in_range).is_ok(), "{interval}");
    }
}
