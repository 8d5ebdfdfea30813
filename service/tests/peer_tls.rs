//! A service's channels to other services with mutual TLS (issue 13), on a
//! real server: a node's rotated certificate files are presented from the
//! next connection on — by new channels and by a cached channel that
//! reconnects — without a restart, while open connections keep going; a
//! server whose client CA file was rotated to a new CA refuses a node still
//! presenting a certificate of the old one, saying why, and serves the
//! others.

mod tls_kit;

use sluice_proto::test_util::eventually;
use sluice_service::{PeerTls, TlsConfig};
use std::path::Path;
use std::time::Duration;
use tls_kit::{ca, check, leaf, replace, serve, serve_at, tls_files, Ca, Server};
use tonic::transport::Channel;

/// A node's `[tls]`: its certificate for `name` signed by `authority`,
/// trusting `server_ca` for the servers it connects to.
fn node_files(directory: &Path, server_ca: &Ca, authority: &Ca, name: &str) -> TlsConfig {
    std::fs::create_dir_all(directory).expect("node directory");
    let (certificate, key) = leaf(authority, name);
    replace(&directory.join("node.pem"), &certificate);
    replace(&directory.join("node.key"), &key);
    replace(&directory.join("ca.pem"), &server_ca.pem);
    TlsConfig {
        enabled: true,
        cert_file: directory.join("node.pem"),
        key_file: directory.join("node.key"),
        ca_file: Some(directory.join("ca.pem")),
        reload_check_interval_ms: 100,
        ..TlsConfig::default()
    }
}

fn rotate(node: &TlsConfig, authority: &Ca, name: &str) {
    let (certificate, key) = leaf(authority, name);
    replace(&node.key_file, &key);
    replace(&node.cert_file, &certificate);
}

/// Past the reload check interval (100 ms in these tests).
async fn after_the_reload_interval() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn endpoint(peer: &PeerTls, server: &Server) -> sluice_service::PeerEndpoint {
    // The server's certificate names `localhost`.
    peer.endpoint(&format!("localhost:{}", server.address.port()))
        .expect("endpoint")
        .configure(|endpoint| endpoint.connect_timeout(Duration::from_secs(5)))
}

async fn connect(peer: &PeerTls, server: &Server) -> Result<Channel, String> {
    endpoint(peer, server)
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

fn last_principal(server: &Server) -> Option<String> {
    server.principals.lock().expect("lock").last().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_presented_on_the_next_connection() {
    let directory = tempfile::tempdir().expect("temp dir");
    let authority = ca("cluster CA");
    let server_config = tls_files(directory.path(), &authority, Some(&authority));
    let server = serve(&server_config).await;
    let node = node_files(
        &directory.path().join("node"),
        &authority,
        &authority,
        "broker-1",
    );
    let peer = PeerTls::from_config(&node).expect("the node's files load");
    assert!(peer.is_tls());

    // A channel cached the way `broker/src/clients.rs` caches them.
    let cached = endpoint(&peer, &server).connect_lazy();
    check(cached.clone()).await.expect("served");
    assert_eq!(last_principal(&server).as_deref(), Some("User:broker-1"));

    rotate(&node, &authority, "broker-1-rotated");
    after_the_reload_interval().await;
    check(cached.clone())
        .await
        .expect("the open connection keeps going");
    assert_eq!(
        last_principal(&server).as_deref(),
        Some("User:broker-1"),
        "an open connection keeps the certificate it was opened with"
    );
    let fresh = connect(&peer, &server).await.expect("a new connection");
    check(fresh.clone()).await.expect("served");
    assert_eq!(
        last_principal(&server).as_deref(),
        Some("User:broker-1-rotated"),
        "a new connection presents the rotated certificate"
    );
    drop(fresh);

    // The server restarts where it was: the cached channel reconnects and
    // presents the rotated certificate too.
    let address = server.address;
    drop(server);
    let restarted = serve_at(address, &server_config).await;
    eventually(
        "the cached channel reconnects",
        Duration::from_secs(20),
        || {
            let cached = cached.clone();
            async move { check(cached).await.ok() }
        },
    )
    .await;
    let principals = restarted.principals.lock().expect("lock").clone();
    assert!(
        !principals.is_empty() && principals.iter().all(|p| p == "User:broker-1-rotated"),
        "{principals:?}"
    );

    // Garbage in the files keeps the certificate in use.
    replace(&node.cert_file, "not a certificate");
    after_the_reload_interval().await;
    let after_garbage = connect(&peer, &restarted).await.expect("connects");
    check(after_garbage).await.expect("served");
    assert_eq!(
        last_principal(&restarted).as_deref(),
        Some("User:broker-1-rotated")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_rotated_its_client_ca_refuses_the_old_ca_and_serves_others() {
    let directory = tempfile::tempdir().expect("temp dir");
    let server_ca = ca("server CA");
    let old_clients = ca("old clients CA");
    let new_clients = ca("new clients CA");
    let config = tls_files(directory.path(), &server_ca, Some(&old_clients));
    let server = serve(&config).await;
    let revoked_node = node_files(
        &directory.path().join("old"),
        &server_ca,
        &old_clients,
        "broker-old",
    );
    let revoked = PeerTls::from_config(&revoked_node).expect("loads");
    check(connect(&revoked, &server).await.expect("connects"))
        .await
        .expect("served before the rotation");

    let client_ca_file = config.client_ca_file.as_ref().expect("mutual TLS");
    replace(client_ca_file, &new_clients.pem);
    after_the_reload_interval().await;

    let refused = match connect(&revoked, &server).await {
        Ok(channel) => check(channel).await,
        Err(error) => Err(error),
    }
    .expect_err("a certificate of the old client CA is refused");
    assert!(
        refused.contains("UnknownCA") || refused.contains("unknown CA"),
        "the client is told its certificate's CA is not trusted: {refused}"
    );

    let current_node = node_files(
        &directory.path().join("new"),
        &server_ca,
        &new_clients,
        "broker-new",
    );
    let current = PeerTls::from_config(&current_node).expect("loads");
    check(connect(&current, &server).await.expect("connects"))
        .await
        .expect("a node with a certificate of the new CA is served");
    assert_eq!(last_principal(&server).as_deref(), Some("User:broker-new"));
}
