//! Helpers for tests of a cluster with TLS and authorisation on
//! (`ClusterSpec::tls`): more principals with certificates from the
//! cluster's CA, ACLs added with the CLI, raw channels as one principal.

use crate::cluster::{binary, Cluster};
use sluice_client::{ClientConfig, ClientTls};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// `sluice acl <args>` as the cluster's super-user client; panics unless
/// it succeeds.
pub fn sluice_acl(cluster: &Cluster, args: &[&str]) {
    let output = cluster
        .cli()
        .arg("acl")
        .args(args)
        .output()
        .expect("run sluice acl");
    assert!(
        output.status.success(),
        "sluice acl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Allows `principal` (`User:<name>`) `operation` on the resource named by
/// `resource` (CLI flags such as `["--topic", "orders"]`).
pub fn allow(cluster: &Cluster, principal: &str, operation: &str, resource: &[&str]) {
    let args = [
        &["add", "--principal", principal, "--operation", operation][..],
        resource,
    ]
    .concat();
    sluice_acl(cluster, &args);
}

/// A certificate for `name` from the cluster's CA (`sluice certs issue`),
/// as SDK settings.
pub fn issue_client(cluster: &Cluster, name: &str) -> ClientConfig {
    let dir = cluster.tls_dir();
    let output = std::process::Command::new(binary("sluice"))
        .args(["certs", "issue", "--name", name, "--ca-dir"])
        .arg(&dir)
        .arg("--out-dir")
        .arg(&dir)
        .output()
        .expect("run sluice certs issue");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    client_of(cluster, name)
}

/// SDK settings with `name`'s certificate (issued by [`issue_client`]).
pub fn client_of(cluster: &Cluster, name: &str) -> ClientConfig {
    let dir = cluster.tls_dir();
    let tls = ClientTls::from_files(
        dir.join("ca.pem"),
        Some((
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        )),
    )
    .expect("client certificate");
    ClientConfig {
        tls: Some(tls),
        request_timeout_ms: 3_000,
        ..cluster.client_config()
    }
}

/// A raw gRPC channel to `address` with `config`'s TLS settings.
pub fn tls_channel(config: &ClientConfig, address: &str) -> Channel {
    let tls = config.tls.as_ref().expect("TLS settings");
    tonic::transport::Endpoint::from_shared(sluice_client::with_scheme(address, true))
        .expect("endpoint")
        .tls_config(tls.tonic_config())
        .expect("tls")
        .connect_lazy()
}

/// Waits until `check` holds (at most 10 s), returning how long it took.
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}
