//! Shared helpers for the nameserver's integration tests.
//!
//! The etcd harness is the workspace's own (`tests/src/etcd.rs`), included
//! by path rather than through the `sluice-tests` crate so these tests do
//! not depend on the client SDK that crate also pulls in.

#![allow(dead_code)]

// Not ours to format: rustfmt would otherwise rewrite the shared file.
#[rustfmt::skip]
#[path = "../../../tests/src/etcd.rs"]
pub mod etcd;
pub mod fixture;
pub mod requests;

// Each test binary uses a different part.
#[allow(unused_imports)]
pub use fixture::{etcd_store, topic_request, Cluster, Fixture};

use sluice_nameserver::metadata::MetadataStore;
use sluice_nameserver::NameServerConfig;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{HeartbeatRequest, NodeKind, PartitionAssignment, RegisterNodeRequest};
use sluice_proto::{ErrorCode, SluiceError};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

/// Upper bound on any "eventually" condition in these tests.
pub const EVENTUALLY_TIMEOUT_MS: u64 = 30_000;

pub type Client = NameServerClient<Channel>;

/// Short timings so lease expiry and reconciling happen quickly in tests.
pub fn test_config(etcd_url: &str, node_id: &str) -> NameServerConfig {
    let mut config = NameServerConfig {
        node_id: node_id.to_string(),
        listen_address: "127.0.0.1:0".to_string(),
        lease_ttl_ms: 4_000,
        heartbeat_interval_ms: 300,
        reconcile_interval_ms: 200,
        offsets_partitions: 2,
        transaction_log_partitions: 1,
        watch_routes_interval_ms: 100,
        ..NameServerConfig::default()
    };
    // These tests register a single store.
    config.topic_defaults.ensemble_size = 1;
    config.topic_defaults.write_quorum = 1;
    config.topic_defaults.ack_quorum = 1;
    config.metadata.endpoints = vec![etcd_url.to_string()];
    config.metadata.request_timeout_ms = 3_000;
    config
}

/// A nameserver running in-process; shut down on drop.
pub struct RunningNameServer {
    pub address: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningNameServer {
    pub async fn start(config: NameServerConfig) -> Self {
        Self::spawn(config, None).await
    }

    pub async fn start_with_store(config: NameServerConfig, store: Arc<dyn MetadataStore>) -> Self {
        Self::spawn(config, Some(store)).await
    }

    async fn spawn(config: NameServerConfig, store: Option<Arc<dyn MetadataStore>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = format!(
            "http://{}",
            listener.local_addr().expect("listener has an address")
        );
        let (sender, receiver) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = receiver.await;
        };
        let task = tokio::spawn(async move {
            let result = match store {
                Some(store) => {
                    sluice_nameserver::run_with_store(config, store, listener, shutdown).await
                }
                None => sluice_nameserver::run(config, listener, shutdown).await,
            };
            if let Err(error) = result {
                panic!("nameserver failed: {error}");
            }
        });
        Self {
            address,
            shutdown: Some(sender),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_millis(EVENTUALLY_TIMEOUT_MS);
        loop {
            match NameServerClient::connect(self.address.clone()).await {
                Ok(client) => {
                    return client
                        .max_decoding_message_size(
                            sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES,
                        )
                        .max_encoding_message_size(
                            sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES,
                        )
                }
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot connect to {}: {error}",
                        self.address
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("nameserver task ends cleanly");
        }
    }
}

impl Drop for RunningNameServer {
    fn drop(&mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
    }
}

pub fn code(status: &tonic::Status) -> ErrorCode {
    SluiceError::from_status(status).code
}

/// Polls `check` until it returns `Some`, failing after
/// [`EVENTUALLY_TIMEOUT_MS`] with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    sluice_proto::test_util::eventually(what, Duration::from_millis(EVENTUALLY_TIMEOUT_MS), check)
        .await
}

pub async fn register(client: &mut Client, kind: NodeKind, node_id: &str, address: &str) -> u64 {
    client
        .register_node(RegisterNodeRequest {
            kind: kind as i32,
            node_id: node_id.to_string(),
            address: address.to_string(),
            load: None,
            rack: String::new(),
        })
        .await
        .expect("register node")
        .into_inner()
        .session_id
}

/// A node heartbeating in the background; the latest assignments are
/// published on `assignments`. Stops heartbeating when dropped.
pub struct Heartbeater {
    pub session_id: u64,
    pub assignments: watch::Receiver<Vec<PartitionAssignment>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeater {
    pub fn start(mut client: Client, kind: NodeKind, node_id: &str, session_id: u64) -> Self {
        let (sender, assignments) = watch::channel(Vec::new());
        let node_id = node_id.to_string();
        let task = tokio::spawn(async move {
            loop {
                let request = HeartbeatRequest {
                    kind: kind as i32,
                    node_id: node_id.clone(),
                    session_id,
                    load: None,
                };
                match client.heartbeat(request).await {
                    Ok(response) => {
                        let _ = sender.send(response.into_inner().assignments);
                    }
                    Err(status) => eprintln!("heartbeat of {node_id} failed: {status}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            session_id,
            assignments,
            task,
        }
    }

    pub fn assignments_of(&self, topic: &str) -> Vec<PartitionAssignment> {
        self.assignments
            .borrow()
            .iter()
            .filter(|assignment| assignment.topic == topic)
            .cloned()
            .collect()
    }
}

impl Drop for Heartbeater {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An etcd that can be stopped and started again on the same ports and
/// data, to test reconnecting after an etcd restart.
pub struct RestartableEtcd {
    child: Option<std::process::Child>,
    client_port: u16,
    peer_port: u16,
    directory: tempfile::TempDir,
}

impl RestartableEtcd {
    pub fn start() -> Self {
        let mut etcd = Self {
            child: None,
            client_port: etcd::free_port(),
            peer_port: etcd::free_port(),
            directory: tempfile::tempdir().expect("temp dir for etcd"),
        };
        etcd.resume();
        etcd
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL, like a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory.
    pub fn resume(&mut self) {
        let client_url = self.client_url();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.directory.path().join("etcd.log"))
            .expect("open etcd log");
        let child = std::process::Command::new(etcd::etcd_binary())
            .args(["--name", "test", "--data-dir"])
            .arg(self.directory.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(EVENTUALLY_TIMEOUT_MS);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not listen on {client_url}: {}",
                std::fs::read_to_string(self.directory.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RestartableEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
