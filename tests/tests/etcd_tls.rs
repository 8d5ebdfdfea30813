//! The nameserver's hop to etcd over mutual TLS (issue 13): etcd serves
//! `https://` only with the node certificate of `sluice certs create` and
//! requires client certificates of its CA (`--client-cert-auth`).
//!
//! - With the right `[metadata] tls_*` a cluster serves: a topic is
//!   created, written and read back, and goes on doing so after the
//!   nameserver's etcd client certificate files are replaced — first by a
//!   certificate of another CA (etcd refuses it: the previous one stays in
//!   use, with a warning naming why), then by a new one of the right CA
//!   (used from then on).
//! - A nameserver trusting another CA, presenting no client certificate,
//!   or one of another CA, exits at start with the cause in its log; one
//!   given an `http://` endpoint to the TLS etcd never registers and logs
//!   that etcd serves TLS there; TLS files with an `http://` endpoint are
//!   refused when the config loads. None falls back to plaintext.

use sluice_client::Record;
use sluice_tests::cluster::{
    binary, create_certificates, Cluster, ClusterSpec, ETCD_CLIENT_CERT, ETCD_CLIENT_KEY,
};
use sluice_tests::etcd::free_port;
use sluice_tests::read_back::read_back;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a refused nameserver gets to exit, or a plaintext one to log
/// its refusal.
const VERDICT_TIMEOUT_MS: u64 = 30_000;

fn tls_cluster_spec() -> ClusterSpec {
    ClusterSpec {
        tls: true,
        ..ClusterSpec::default()
    }
}

/// Writes `records` numbered from `first` to `topic` and checks each was
/// acknowledged.
async fn write(cluster: &Cluster, topic: &str, first: u64, count: u64) {
    let records = (first..first + count)
        .map(|value| Record::new(topic, value.to_string()).with_partition(0))
        .collect();
    let acknowledged = cluster.produce_acknowledged(records).await;
    assert_eq!(acknowledged.len() as u64, count);
}

/// Replaces `name` in `dir` with `from` in one step (a rename), as a
/// certificate rotation does.
fn replace(from: &Path, dir: &Path, name: &str) {
    let staged = dir.join(format!("{name}.new"));
    std::fs::copy(from, &staged).expect("stage the new file");
    std::fs::rename(&staged, dir.join(name)).expect("rename the new file in place");
}

/// Waits until the log at `path` has a line with every one of `words`.
fn wait_for_log(path: &Path, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_millis(VERDICT_TIMEOUT_MS);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|line| words.iter().all(|word| line.contains(word)))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {words:?} in {} within {VERDICT_TIMEOUT_MS} ms:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nameserver_serves_over_mutual_tls_and_follows_a_rotated_certificate() {
    let cluster = Cluster::start(tls_cluster_spec()).await;
    let endpoints = cluster.etcd.client_urls();
    assert!(
        endpoints.iter().all(|url| url.starts_with("https://")),
        "{endpoints:?}"
    );
    let log = cluster.nameservers[0].log_path().to_path_buf();
    wait_for_log(&log, &["connected to etcd", "client_certificate"]);
    cluster.create_topic("over-tls", 1).await;
    write(&cluster, "over-tls", 0, 50).await;

    // A certificate of another CA: etcd refuses it, the previous one stays.
    let tls_dir = cluster.tls_dir();
    let other_ca = cluster.directory().join("other-ca");
    create_certificates(&other_ca);
    replace(&other_ca.join("node.key"), &tls_dir, ETCD_CLIENT_KEY);
    replace(&other_ca.join("node.pem"), &tls_dir, ETCD_CLIENT_CERT);
    let refused = wait_for_log(
        &log,
        &["cannot be used yet", "refused the client certificate"],
    );
    eprintln!("rotation to another CA's certificate: {refused}");
    write(&cluster, "over-tls", 50, 50).await;

    // A new certificate of the cluster's CA: used from then on.
    let rotated = issue(&tls_dir, "nameserver-etcd-rotated");
    replace(&rotated.1, &tls_dir, ETCD_CLIENT_KEY);
    replace(&rotated.0, &tls_dir, ETCD_CLIENT_CERT);
    wait_for_log(
        &log,
        &["etcd TLS files changed; new etcd requests use them"],
    );
    cluster.create_topic("after-rotation", 1).await;
    write(&cluster, "over-tls", 100, 50).await;
    write(&cluster, "after-rotation", 0, 10).await;
    let status = cluster.status().await;
    assert_eq!(status.metadata_backend, "etcd");
    assert_eq!(status.nameservers.len(), 1, "{status:?}");

    let read = read_back(cluster.client_config(), "over-tls", 1).await;
    assert_eq!(read.at.len(), 150, "every acknowledged record reads back");
    for offset in 0..150u64 {
        assert_eq!(read.at.get(&(0, offset)), Some(&offset), "offset {offset}");
    }
}

/// `sluice certs issue` into `dir`: (certificate, key).
fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let output = Command::new(binary("sluice"))
        .args(["certs", "issue", "--name", name, "--ca-dir"])
        .arg(dir)
        .arg("--out-dir")
        .arg(dir)
        .output()
        .expect("run sluice certs issue");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// A nameserver process of its own against the cluster's etcd, with
/// `endpoints` and extra `[metadata]` keys.
struct LoneNameserver {
    child: Child,
    log: PathBuf,
}

impl LoneNameserver {
    fn start(cluster: &Cluster, name: &str, endpoints: &[String], metadata: &str) -> Self {
        let endpoints = endpoints
            .iter()
            .map(|url| format!("\"{url}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "node_id = \"{name}\"\nlisten_address = \"127.0.0.1:{}\"\n\
             [metadata]\nendpoints = [{endpoints}]\nconnect_timeout_ms = 2000\n{metadata}",
            free_port()
        );
        let config_path = cluster.directory().join(format!("{name}.toml"));
        std::fs::write(&config_path, config).expect("write config");
        let log = cluster.directory().join(format!("{name}.log"));
        let child = Command::new(binary("sluice-nameserver"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn sluice-nameserver");
        Self { child, log }
    }

    /// Waits for the process to exit; it must fail. Its log.
    fn refused(mut self) -> String {
        let deadline = Instant::now() + Duration::from_millis(VERDICT_TIMEOUT_MS);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(
                    !status.success(),
                    "a refused nameserver exits non-zero:\n{log}"
                );
                assert!(!log.contains("nameserver registered itself"), "{log}");
                return log;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "still running after {VERDICT_TIMEOUT_MS} ms:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LoneNameserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_settings_stop_the_nameserver_and_name_the_cause() {
    let cluster = Cluster::start(ClusterSpec {
        brokers: 0,
        stores: 0,
        ..tls_cluster_spec()
    })
    .await;
    let tls = cluster.tls_dir();
    let other = cluster.directory().join("other-ca");
    create_certificates(&other);
    let https = cluster.etcd.client_urls();
    let keys = |ca: &Path, identity: Option<&Path>| {
        let mut keys = format!("tls_ca_file = \"{}\"\n", ca.join("ca.pem").display());
        if let Some(dir) = identity {
            keys.push_str(&format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                dir.join("node.pem").display(),
                dir.join("node.key").display()
            ));
        }
        keys
    };
    let cases: [(&str, String, &str); 3] = [
        (
            "wrong-ca",
            keys(&other, Some(&tls)),
            "etcd's certificate is not signed by a CA of [metadata] tls_ca_file",
        ),
        (
            "no-client-certificate",
            keys(&tls, None),
            "etcd requires a client certificate (--client-cert-auth)",
        ),
        (
            "other-ca-client-certificate",
            keys(&tls, Some(&other)),
            "etcd refused the client certificate of [metadata] tls_cert_file",
        ),
    ];
    for (name, metadata, cause) in cases {
        let log = LoneNameserver::start(&cluster, name, &https, &metadata).refused();
        assert!(log.contains(cause), "{name}: {cause:?} not in\n{log}");
        eprintln!("{name}: {}", log.lines().last().unwrap_or_default());
    }

    // TLS files with a plaintext endpoint: refused as the config loads.
    let http: Vec<String> = https
        .iter()
        .map(|url| url.replacen("https://", "http://", 1))
        .collect();
    let log =
        LoneNameserver::start(&cluster, "tls-over-http", &http, &keys(&tls, Some(&tls))).refused();
    assert!(
        log.contains("invalid configuration") && log.contains("endpoints are plaintext"),
        "{log}"
    );

    // A plaintext nameserver at the TLS etcd: told why, and never serving.
    let plaintext = LoneNameserver::start(&cluster, "plaintext", &http, "");
    let line = wait_for_log(
        &plaintext.log,
        &["etcd serves TLS at this plaintext endpoint"],
    );
    assert!(line.contains("ERROR"), "{line}");
    let status = cluster.status().await;
    let names: Vec<&str> = status
        .nameservers
        .iter()
        .map(|node| node.node_id.as_str())
        .collect();
    assert_eq!(names, ["nameserver-1"], "the plaintext one never registers");
    let log = std::fs::read_to_string(&plaintext.log).unwrap_or_default();
    assert!(!log.contains("nameserver registered itself"), "{log}");
}
