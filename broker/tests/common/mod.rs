//! The in-process cluster the broker's tests run against: a real
//! nameserver (embedded metadata) and a real store on loopback ports, the
//! broker started and stopped in this process, and the produce, fetch and
//! group requests the tests send over gRPC.

use bytes::Bytes;
use sluice_broker::config::{ClusterConfig, ReplicationConfig, RetentionConfig, ServerConfig};
use sluice_broker::BrokerConfig;
use sluice_nameserver::config::{MetadataBackend, MetadataConfig, TopicDefaults};
use sluice_nameserver::NameServerConfig;
use sluice_proto::batch::{self, BatchIter};
use sluice_proto::test_util::{self, BatchSpec};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    CreateTopicRequest, FetchOffsetsRequest, FetchPartition, FetchRequest, FetchResponse,
    GroupHeartbeatRequest, GroupHeartbeatResponse, ListOffsetsRequest, OffsetSpec, ProduceRequest,
    ProduceResponse, TopicConfig,
};
use sluice_proto::ErrorCode;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub const DEADLINE_MS: u64 = 60_000;
pub const TOPIC: &str = "orders";
pub const TOPIC_MAX_BATCH_BYTES: u32 = 64 * 1024;

pub async fn signal(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral loopback port")
}

pub struct RunningBroker {
    pub address: String,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<Result<(), sluice_broker::BrokerError>>,
}

impl RunningBroker {
    /// Shuts the broker down gracefully and checks that it stopped cleanly.
    pub async fn stop_cleanly(self) {
        self.stop.send_replace(true);
        self.task
            .await
            .expect("broker task")
            .expect("broker stops cleanly");
    }
}

pub async fn start_broker(nameserver_url: &str) -> RunningBroker {
    start_broker_with(nameserver_url, RetentionConfig::default().check_interval_ms).await
}

pub async fn start_broker_with(
    nameserver_url: &str,
    retention_check_interval_ms: u64,
) -> RunningBroker {
    start_broker_configured(nameserver_url, |config| {
        config.retention.check_interval_ms = retention_check_interval_ms;
    })
    .await
}

/// A broker with the kit's test settings, then `configure`'s changes.
pub async fn start_broker_configured(
    nameserver_url: &str,
    configure: impl FnOnce(&mut BrokerConfig),
) -> RunningBroker {
    let listener = listener().await;
    let address = listener.local_addr().expect("listener address").to_string();
    let mut config = BrokerConfig {
        server: ServerConfig {
            listen_address: address.clone(),
            ..ServerConfig::default()
        },
        cluster: ClusterConfig {
            node_id: "test-broker".into(),
            nameservers: vec![nameserver_url.to_string()],
            register_backoff_max_ms: 200,
            route_refresh_interval_ms: 100,
            ..ClusterConfig::default()
        },
        replication: ReplicationConfig {
            takeover_backoff_max_ms: 200,
            ..ReplicationConfig::default()
        },
        ..BrokerConfig::default()
    };
    configure(&mut config);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(sluice_broker::run(config, listener, signal(stopped)));
    RunningBroker {
        address,
        stop,
        task,
    }
}

pub async fn broker_client(address: &str) -> BrokerClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("valid broker address")
        .connect_lazy();
    BrokerClient::new(channel)
}

/// Retries `attempt` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    test_util::eventually(what, Duration::from_millis(DEADLINE_MS), attempt).await
}

pub fn batch_at(values: &[&str], timestamp_ms: i64) -> Bytes {
    BatchSpec {
        values,
        timestamp_ms: Some(timestamp_ms),
        ..BatchSpec::default()
    }
    .build()
}

/// Sends `requests` on one produce stream and collects one answer each.
pub async fn produce(
    client: &mut BrokerClient<Channel>,
    requests: Vec<ProduceRequest>,
) -> Vec<ProduceResponse> {
    let count = requests.len();
    let (sender, receiver) = mpsc::channel(count.max(1));
    for request in requests {
        sender.send(request).await.expect("queue produce request");
    }
    let mut stream = client
        .produce(ReceiverStream::new(receiver))
        .await
        .expect("open produce stream")
        .into_inner();
    let mut responses = Vec::new();
    while responses.len() < count {
        match stream.message().await.expect("produce stream healthy") {
            Some(response) => responses.push(response),
            None => panic!("produce stream ended after {} responses", responses.len()),
        }
    }
    drop(sender);
    responses
}

/// Produces `value` on fresh streams until the broker accepts it.
pub async fn produce_until_accepted(
    client: &BrokerClient<Channel>,
    request_id: u64,
    value: &'static str,
    what: &str,
) -> ProduceResponse {
    eventually(what, || {
        let mut client = client.clone();
        async move {
            let answer = produce(
                &mut client,
                vec![produce_request(
                    request_id,
                    TOPIC,
                    test_util::batch(&[value]),
                )],
            )
            .await;
            (answer[0].error == ErrorCode::None as i32).then(|| answer[0].clone())
        }
    })
    .await
}

/// A cluster with a one-partition `TOPIC`, its broker, a client, and the
/// record "a" at offset 0.
pub async fn one_partition_holding_a(
    directory: &std::path::Path,
) -> (Cluster, RunningBroker, BrokerClient<Channel>) {
    let cluster = Cluster::start(directory).await;
    cluster.create_one_partition_topic().await;
    let broker = start_broker(&cluster.nameserver_url).await;
    let client = broker_client(&broker.address).await;
    produce_until_accepted(&client, 1, "a", "the broker to accept produce").await;
    (cluster, broker, client)
}

pub fn produce_request(request_id: u64, topic: &str, batch: Bytes) -> ProduceRequest {
    ProduceRequest {
        request_id,
        topic: topic.into(),
        partition: 0,
        batch,
        resume: false,
        ..Default::default()
    }
}

pub async fn fetch(
    client: &mut BrokerClient<Channel>,
    offset: u64,
    max_wait_ms: u32,
) -> FetchResponse {
    fetch_topic(client, TOPIC, offset, max_wait_ms).await
}

pub async fn fetch_topic(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    offset: u64,
    max_wait_ms: u32,
) -> FetchResponse {
    client
        .fetch(FetchRequest {
            partitions: vec![FetchPartition {
                topic: topic.into(),
                partition: 0,
                offset,
                max_bytes: 1024 * 1024,
            }],
            max_wait_ms,
            min_bytes: 1,
            max_bytes: 4 * 1024 * 1024,
            ..Default::default()
        })
        .await
        .expect("fetch answers")
        .into_inner()
}

/// Fetches from `offset` until the first error or the end, returning the
/// values read and the error (code, message) that stopped it.
pub async fn read_from(
    client: &mut BrokerClient<Channel>,
    mut offset: u64,
    end: u64,
) -> (Vec<String>, Option<(i32, String)>) {
    let mut read = Vec::new();
    while offset < end {
        let fetched = fetch(client, offset, 0).await;
        let partition = &fetched.partitions[0];
        if partition.error != ErrorCode::None as i32 {
            return (
                read,
                Some((partition.error, partition.error_message.clone())),
            );
        }
        let batch_values = values(&partition.batches);
        if batch_values.is_empty() {
            return (read, Some((0, "no data".into())));
        }
        offset += batch_values.len() as u64;
        read.extend(batch_values);
    }
    (read, None)
}

/// The value of numbered record `index` in the damage scenarios.
pub fn numbered_value(index: usize) -> String {
    format!("record-{index:05}")
}

/// Produces `records` numbered records (`numbered_value`) in batches of
/// `per_batch`, checking each batch is acknowledged where the log was
/// expected to be: record `i` at `first_offset + i`.
pub async fn produce_numbered(
    client: &mut BrokerClient<Channel>,
    records: usize,
    per_batch: usize,
    first_offset: u64,
) {
    let mut requests = Vec::new();
    for (batch_index, start) in (0..records).step_by(per_batch).enumerate() {
        let values: Vec<String> = (start..start + per_batch).map(numbered_value).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        requests.push(produce_request(
            batch_index as u64 + 100,
            TOPIC,
            batch_at(&values, 1_000),
        ));
    }
    for (index, answer) in produce(client, requests).await.iter().enumerate() {
        assert_eq!(
            answer.error,
            ErrorCode::None as i32,
            "{}",
            answer.error_message
        );
        assert_eq!(
            answer.base_offset,
            (index * per_batch) as u64 + first_offset
        );
    }
}

pub fn values(batches: &Bytes) -> Vec<String> {
    let mut output = Vec::new();
    for item in BatchIter::new(batches) {
        let (position, _, slice) = item.expect("well-formed batches");
        let batch = batches.slice(position..position + slice.len());
        let (_, records) = batch::decode(&batch, usize::MAX).expect("decodable batch");
        for record in records {
            let value = record.value.expect("records carry values");
            output.push(String::from_utf8(value.to_vec()).expect("UTF-8 values"));
        }
    }
    output
}

pub async fn heartbeat(
    client: &mut BrokerClient<Channel>,
    member_id: &str,
    member_epoch: i64,
    owned: Vec<sluice_proto::v1::TopicPartitions>,
) -> Result<GroupHeartbeatResponse, tonic::Status> {
    client
        .group_heartbeat(GroupHeartbeatRequest {
            group: "billing".into(),
            member_id: member_id.into(),
            member_epoch,
            topics: vec![TOPIC.into()],
            owned,
            session_timeout_ms: 30_000,
            client_id: "test".into(),
        })
        .await
        .map(|response| response.into_inner())
}

pub async fn committed_offset(client: &mut BrokerClient<Channel>) -> Option<u64> {
    let answer = client
        .fetch_offsets(FetchOffsetsRequest {
            group: "billing".into(),
            partitions: vec![],
            require_stable: false,
        })
        .await
        .ok()?
        .into_inner();
    answer
        .offsets
        .iter()
        .find(|offset| offset.topic == TOPIC && offset.partition == 0)
        .map(|offset| offset.offset)
}

/// A nameserver (embedded metadata) and a store running in this process.
pub struct Cluster {
    pub nameserver_url: String,
    pub stop: watch::Sender<bool>,
    pub nameserver: JoinHandle<Result<(), sluice_nameserver::NameServerError>>,
    pub store: JoinHandle<Result<(), sluice_store::StoreError>>,
    pub store_stop: watch::Sender<bool>,
    pub store_address: String,
    pub store_directory: std::path::PathBuf,
    /// Stores beyond the first (`Cluster::start_replicated`).
    pub more_stores: Vec<StoreNode>,
}

/// A store of a replicated cluster beyond the first.
pub struct StoreNode {
    pub node_id: String,
    pub address: String,
    pub directory: std::path::PathBuf,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<Result<(), sluice_store::StoreError>>,
}

pub fn spawn_store(
    nameserver_url: &str,
    store_address: &str,
    store_directory: &std::path::Path,
    store_listener: TcpListener,
) -> (
    watch::Sender<bool>,
    JoinHandle<Result<(), sluice_store::StoreError>>,
) {
    spawn_store_as(
        "test-store",
        nameserver_url,
        store_address,
        store_directory,
        store_listener,
    )
}

pub fn spawn_store_as(
    node_id: &str,
    nameserver_url: &str,
    store_address: &str,
    store_directory: &std::path::Path,
    store_listener: TcpListener,
) -> (
    watch::Sender<bool>,
    JoinHandle<Result<(), sluice_store::StoreError>>,
) {
    let (stop, stopped) = watch::channel(false);
    let config = sluice_store::StoreConfig {
        node_id: node_id.into(),
        listen_address: store_address.to_string(),
        nameservers: vec![nameserver_url.to_string()],
        data_dir: store_directory.to_path_buf(),
        ..sluice_store::StoreConfig::default()
    };
    let task = tokio::spawn(sluice_store::run(config, store_listener, signal(stopped)));
    (stop, task)
}

impl Cluster {
    /// Creates [`TOPIC`] with one partition and the cluster's defaults.
    pub async fn create_one_partition_topic(&self) {
        self.create_topic(
            TOPIC,
            TopicConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .await;
    }

    pub async fn start(directory: &std::path::Path) -> Cluster {
        Self::start_with(directory, TopicDefaults::default()).await
    }

    pub async fn start_with(directory: &std::path::Path, topic_defaults: TopicDefaults) -> Cluster {
        // One store: one copy of each segment.
        let topic_defaults = TopicDefaults {
            ensemble_size: 1,
            write_quorum: 1,
            ack_quorum: 1,
            ..topic_defaults
        };
        Self::start_shaped(directory, topic_defaults).await
    }

    /// Three stores (`test-store`, `test-store-1`, `test-store-2`) and
    /// topics placed on all three, acknowledged by two (3/3/2).
    pub async fn start_replicated(directory: &std::path::Path) -> Cluster {
        let topic_defaults = TopicDefaults {
            ensemble_size: 3,
            write_quorum: 3,
            ack_quorum: 2,
            ..TopicDefaults::default()
        };
        let mut cluster = Self::start_shaped(directory, topic_defaults).await;
        for index in 1..3 {
            let listener = listener().await;
            let address = listener.local_addr().expect("store address").to_string();
            let node_id = format!("test-store-{index}");
            let store_directory = directory.join(&node_id);
            let (stop, task) = spawn_store_as(
                &node_id,
                &cluster.nameserver_url,
                &address,
                &store_directory,
                listener,
            );
            cluster.more_stores.push(StoreNode {
                node_id,
                address,
                directory: store_directory,
                stop,
                task,
            });
        }
        cluster
    }

    async fn start_shaped(directory: &std::path::Path, topic_defaults: TopicDefaults) -> Cluster {
        let (stop_cluster, cluster_stopped) = watch::channel(false);

        let nameserver_listener = listener().await;
        let nameserver_url = format!(
            "http://{}",
            nameserver_listener
                .local_addr()
                .expect("nameserver address")
        );
        let nameserver_config = NameServerConfig {
            node_id: "test-nameserver".into(),
            metadata: MetadataConfig {
                backend: MetadataBackend::Embedded,
                data_dir: Some(directory.join("metadata")),
                ..MetadataConfig::default()
            },
            lease_ttl_ms: 3_000,
            heartbeat_interval_ms: 300,
            reconcile_interval_ms: 200,
            offsets_partitions: 2,
            topic_defaults,
            ..NameServerConfig::default()
        };
        let nameserver = tokio::spawn(sluice_nameserver::run(
            nameserver_config,
            nameserver_listener,
            signal(cluster_stopped.clone()),
        ));

        let store_listener = listener().await;
        let store_address = store_listener
            .local_addr()
            .expect("store address")
            .to_string();
        let store_directory = directory.join("store");
        let (store_stop, store) = spawn_store(
            &nameserver_url,
            &store_address,
            &store_directory,
            store_listener,
        );

        Cluster {
            nameserver_url,
            stop: stop_cluster,
            nameserver,
            store,
            store_stop,
            store_address,
            store_directory,
            more_stores: Vec::new(),
        }
    }

    pub async fn create_topic(&self, name: &str, config: TopicConfig) {
        let channel = tonic::transport::Endpoint::from_shared(self.nameserver_url.clone())
            .expect("valid nameserver url")
            .connect_lazy();
        let admin = NameServerClient::new(channel);
        eventually("the topic to be created (store registered)", || {
            let mut admin = admin.clone();
            let request = CreateTopicRequest {
                name: name.into(),
                config: Some(config),
            };
            async move { admin.create_topic(request).await.ok() }
        })
        .await;
    }

    /// Stops the store and starts it again on the same address and data.
    pub async fn restart_store(&mut self, while_down: impl Future<Output = ()>) {
        self.store_stop.send_replace(true);
        let stopped = (&mut self.store).await;
        assert!(
            matches!(stopped, Ok(Ok(()))),
            "store stops cleanly: {stopped:?}"
        );
        while_down.await;
        let listener = TcpListener::bind(&self.store_address)
            .await
            .expect("rebind the store address");
        let (stop, task) = spawn_store(
            &self.nameserver_url,
            &self.store_address,
            &self.store_directory,
            listener,
        );
        self.store_stop = stop;
        self.store = task;
    }

    /// Stops store `index` of [`Cluster::more_stores`] and starts it again
    /// on the same address and data.
    pub async fn restart_more_store(&mut self, index: usize, while_down: impl Future<Output = ()>) {
        let nameserver_url = self.nameserver_url.clone();
        let node = &mut self.more_stores[index];
        node.stop.send_replace(true);
        let stopped = (&mut node.task).await;
        assert!(
            matches!(stopped, Ok(Ok(()))),
            "store stops cleanly: {stopped:?}"
        );
        while_down.await;
        let listener = TcpListener::bind(&node.address)
            .await
            .expect("rebind the store address");
        let (stop, task) = spawn_store_as(
            &node.node_id,
            &nameserver_url,
            &node.address,
            &node.directory,
            listener,
        );
        node.stop = stop;
        node.task = task;
    }

    pub async fn stop(self) {
        self.stop.send_replace(true);
        self.store_stop.send_replace(true);
        for node in self.more_stores {
            node.stop.send_replace(true);
            let _ = node.task.await;
        }
        let _ = self.store.await;
        let _ = self.nameserver.await;
    }
}

pub async fn list_offsets(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    spec: OffsetSpec,
    timestamp_ms: i64,
) -> sluice_proto::v1::ListOffsetsResponse {
    client
        .list_offsets(ListOffsetsRequest {
            topic: topic.into(),
            partition: 0,
            spec: spec as i32,
            timestamp_ms,
            ..Default::default()
        })
        .await
        .expect("list offsets")
        .into_inner()
}

pub struct OpenStream {
    pub sender: mpsc::Sender<ProduceRequest>,
    pub answers: tonic::Streaming<ProduceResponse>,
}

impl OpenStream {
    pub async fn open(client: &mut BrokerClient<Channel>) -> Self {
        let (sender, receiver) = mpsc::channel(16);
        let answers = client
            .produce(ReceiverStream::new(receiver))
            .await
            .expect("open produce stream")
            .into_inner();
        Self { sender, answers }
    }

    pub async fn send(&mut self, request: ProduceRequest) -> ProduceResponse {
        self.sender
            .send(request)
            .await
            .expect("queue produce request");
        self.answers
            .message()
            .await
            .expect("produce stream healthy")
            .expect("an answer")
    }
}

pub fn idempotent_batch(values: &[&str], producer_id: i64, base_sequence: i32) -> Bytes {
    BatchSpec {
        values,
        producer: Some((producer_id, 0, base_sequence)),
        ..BatchSpec::default()
    }
    .build()
}

/// SDK settings for this cluster (owners move fast in these tests, so
/// requests time out sooner than the SDK's default).
pub fn client_config(nameserver_url: &str) -> sluice_client::ClientConfig {
    sluice_client::ClientConfig {
        bootstrap: vec![nameserver_url.to_string()],
        request_timeout_ms: 10_000,
        ..sluice_client::ClientConfig::default()
    }
}

/// Sends `values` (each to `partition`) with the SDK's producer, waiting
/// for each acknowledgement; their offsets.
pub async fn send_all(
    producer: &sluice_client::Producer,
    partition: u32,
    values: &[&str],
) -> Vec<u64> {
    let mut offsets = Vec::new();
    for value in values {
        let record = sluice_client::Record::new(TOPIC, value.to_string()).with_partition(partition);
        let sent = producer
            .send(record)
            .await
            .unwrap_or_else(|error| panic!("send {value}: {error}"));
        offsets.push(sent.offset);
    }
    offsets
}

/// Receives and acknowledges messages until every one of `expected`
/// arrived (failing after [`DEADLINE_MS`]), failing at once on any other.
/// Each partition delivers in offset order, so a message below the
/// expected ones of its partition would come before them: when every
/// partition has an expected message, no wait beyond them is needed to
/// know nothing else was delivered.
pub async fn receive_exactly(subscriber: &sluice_client::Subscriber, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DEADLINE_MS);
    let mut missing: Vec<&str> = expected.to_vec();
    while !missing.is_empty() {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = subscriber.recv_timeout(wait).await.expect("receive");
        let Some(message) = message else {
            panic!("still waiting for {missing:?} after {DEADLINE_MS} ms");
        };
        subscriber.ack(&message).await.expect("ack");
        let bytes = message.value.as_deref().unwrap_or_default();
        let value = String::from_utf8_lossy(bytes).into_owned();
        let Some(index) = missing.iter().position(|wanted| *wanted == value) else {
            panic!(
                "received {value:?} (partition {}, offset {}); expected only {expected:?}",
                message.partition, message.offset
            );
        };
        missing.remove(index);
    }
}
