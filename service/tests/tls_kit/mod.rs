//! Certificates, files and a TLS health server for the TLS tests.
#![allow(dead_code)] // each test binary uses a part of it

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sluice_service::{
    ConnectionInfo, ConnectionsConfig, Incoming, ServerLimits, ServerTls, TlsConfig,
};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
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
pub fn leaf(ca: &Ca, name: &str) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let certificate = params.signed_by(&key, &issuer).expect("signed");
    (certificate.pem(), key.serialize_pem())
}

/// A certificate for `name` signed by `ca` that expires `valid_s`
/// seconds from now: (certificate PEM, key PEM).
pub fn leaf_expiring(ca: &Ca, name: &str, valid_s: u64) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(now_s - 60);
    params.not_after = epoch + Duration::from_secs(now_s + valid_s);
    let key = KeyPair::generate().expect("key");
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let certificate = params.signed_by(&key, &issuer).expect("signed");
    (certificate.pem(), key.serialize_pem())
}

/// Writes `contents` to `path` as a replacement would: whole, by rename.
pub fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

pub struct Server {
    pub address: SocketAddr,
    /// Per request served: the length of the client's certificate chain.
    pub seen: Arc<Mutex<Vec<Option<usize>>>>,
    /// Per request served: the connection's principal.
    pub principals: Arc<Mutex<Vec<String>>>,
    /// The server's limits (its open connections).
    pub limits: ServerLimits,
    /// Sets the health status its `Watch` streams report.
    pub health: tonic_health::server::HealthReporter,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub fn tls_files(directory: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TlsConfig {
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

pub async fn serve(config: &TlsConfig) -> Server {
    serve_at("127.0.0.1:0".parse().expect("address"), config).await
}

/// A server on `address` (to restart one where its clients know it).
pub async fn serve_at(address: SocketAddr, config: &TlsConfig) -> Server {
    // A server just stopped there may hold the port while it closes.
    let listener = sluice_proto::test_util::eventually("bind", Duration::from_secs(10), || async {
        tokio::net::TcpListener::bind(address).await.ok()
    })
    .await;
    let address = listener.local_addr().expect("address");
    let limits = ServerLimits::new(&ConnectionsConfig {
        handshake_timeout_ms: 500,
        ..ConnectionsConfig::default()
    });
    let tls = Arc::new(ServerTls::load(config).expect("tls files load"));
    let incoming = limits.incoming(listener).with_tls(tls);
    serve_health(limits, incoming, address)
}

/// Serves the gRPC health service on `incoming` with `limits`, recording
/// every request's certificate chain length and principal, until the
/// returned server is dropped.
pub fn serve_health(limits: ServerLimits, incoming: Incoming, address: SocketAddr) -> Server {
    let (reporter, health) = tonic_health::server::health_reporter();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let principals = Arc::new(Mutex::new(Vec::new()));
    let principal_recorded = principals.clone();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |request: tonic::Request<()>| {
            let chain = request
                .extensions()
                .get::<ConnectionInfo>()
                .and_then(|info| info.peer_certificates.as_ref().map(|chain| chain.len()));
            recorded.lock().expect("lock").push(chain);
            if let Some(info) = request.extensions().get::<ConnectionInfo>() {
                let principal = info.principal.as_str().to_string();
                principal_recorded.lock().expect("lock").push(principal);
            }
            Ok(request)
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = limits.grpc_server().add_service(health);
    let served_limits = limits.clone();
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
        principals,
        limits: served_limits,
        health: reporter,
        _stop: stop,
    }
}

pub async fn channel(
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

pub async fn check(channel: Channel) -> Result<(), String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
        .map_err(|status| format!("{status:?}"))
}

pub async fn served(
    server: &Server,
    trusted: &Ca,
    identity: Option<(String, String)>,
) -> Result<(), String> {
    check(channel(server, trusted, identity).await?).await
}
