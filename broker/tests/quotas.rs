//! Per-principal quotas at the broker (issue 13), through the SDK as an
//! application would use it. Without TLS every client is
//! `User:ANONYMOUS`, so these set `[quotas.default]`:
//!
//! - produce bytes/s: 5 MiB at 1 MiB/s takes at least 3 s (a throttle that
//!   does nothing fails), every record is acknowledged once, in order, and
//!   the log holds exactly them;
//! - fetch bytes/s: a consumer reads 5 MiB at 1 MiB/s no faster, every
//!   record once and in order;
//! - requests/s: list-offsets calls beyond the rate are answered THROTTLED
//!   with a wait, and the SDK's calls succeed after waiting.
//!
//! Only lower bounds on time are asserted, never an upper bound on speed.

#[allow(dead_code)] // the kit serves every scenario file; this one uses part of it
mod common;

use common::*;
use sluice_broker::BrokerConfig;
use sluice_client::{ConsumerConfig, Producer, ProducerConfig, Record, StartOffset};
use sluice_proto::v1::{ListOffsetsRequest, OffsetSpec};
use sluice_proto::{ErrorCode, SluiceError};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Records of about 1 KiB: 5120 of them are 5 MiB.
const RECORDS: usize = 5 * 1024;
const RECORD_BYTES: usize = 1024;

fn value(index: usize) -> String {
    let mut value = format!("record-{index:06}-");
    value.extend(std::iter::repeat_n('x', RECORD_BYTES - value.len()));
    value
}

/// A one-partition cluster and a broker configured by `configure`, serving
/// the partition (one record "a" at offset 0).
async fn cluster_with(
    directory: &std::path::Path,
    configure: impl FnOnce(&mut BrokerConfig),
) -> (Cluster, RunningBroker) {
    let cluster = Cluster::start(directory).await;
    cluster.create_one_partition_topic().await;
    let broker = start_broker_configured(&cluster.nameserver_url, configure).await;
    let client = broker_client(&broker.address).await;
    produce_until_accepted(&client, 1, "a", "the broker to accept produce").await;
    (cluster, broker)
}

/// Sends every record with the SDK, pipelined; their offsets in send order.
async fn produce_all(nameserver_url: &str) -> Vec<u64> {
    let producer = Producer::new(ProducerConfig {
        client: client_config(nameserver_url),
        batch_max_bytes: 32 * 1024,
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    let mut deliveries = Vec::with_capacity(RECORDS);
    for index in 0..RECORDS {
        let record = Record::new(TOPIC, value(index)).with_partition(0);
        deliveries.push(producer.enqueue(record).await.expect("enqueue"));
    }
    let mut offsets = Vec::with_capacity(RECORDS);
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let sent = delivery
            .await
            .unwrap_or_else(|error| panic!("record {index}: {error}"));
        offsets.push(sent.offset);
    }
    producer.close().await.expect("close");
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_quota_slows_the_producer_and_keeps_every_record_once_in_order() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (cluster, broker) = cluster_with(directory.path(), |config| {
        config.quotas.default.produce_bytes_per_second = Some(MIB);
    })
    .await;
    let started = Instant::now();
    let offsets = produce_all(&cluster.nameserver_url).await;
    let elapsed = started.elapsed();
    let expected: Vec<u64> = (1..=RECORDS as u64).collect();
    assert_eq!(offsets, expected, "each record once, in order, after \"a\"");
    // 5 MiB at 1 MiB/s with a 1 MiB burst: about 4 s.
    assert!(
        elapsed >= Duration::from_secs(3),
        "5 MiB at 1 MiB/s took only {elapsed:?}: the quota did not throttle"
    );
    let mut client = broker_client(&broker.address).await;
    let (read, stopped) = read_from(&mut client, 1, RECORDS as u64 + 1).await;
    assert_eq!(stopped, None);
    let wanted: Vec<String> = (0..RECORDS).map(value).collect();
    assert!(
        read == wanted,
        "the log holds exactly the records, in order"
    );
    broker.stop_cleanly().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_quota_slows_the_consumer_without_losing_or_repeating_records() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (cluster, broker) = cluster_with(directory.path(), |config| {
        config.quotas.default.fetch_bytes_per_second = Some(MIB);
    })
    .await;
    assert_eq!(produce_all(&cluster.nameserver_url).await.len(), RECORDS);
    let started = Instant::now();
    let mut consumer = sluice_client::Consumer::assign(
        ConsumerConfig {
            client: client_config(&cluster.nameserver_url),
            ..ConsumerConfig::default()
        },
        vec![(TOPIC.to_string(), 0, StartOffset::Offset(1))],
    )
    .await
    .expect("consumer");
    for index in 0..RECORDS {
        let record = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("record {index} not received in time"))
            .expect("receive");
        assert_eq!(
            record.offset,
            index as u64 + 1,
            "in order, none skipped or repeated"
        );
        assert_eq!(record.value.as_deref(), Some(value(index).as_bytes()));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3),
        "5 MiB at 1 MiB/s read in only {elapsed:?}: the quota did not throttle"
    );
    consumer.close().await.expect("close");
    broker.stop_cleanly().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_rate_are_told_to_wait_and_the_sdk_succeeds_after_waiting() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    cluster.create_one_partition_topic().await;
    let broker = start_broker_configured(&cluster.nameserver_url, |config| {
        config.quotas.default.requests_per_second = Some(2);
    })
    .await;
    let admin = sluice_client::Admin::connect(client_config(&cluster.nameserver_url))
        .await
        .expect("admin");
    eventually("the broker to serve the partition", || async {
        admin
            .list_offsets(TOPIC, 0, OffsetSpec::Latest, 0)
            .await
            .ok()
    })
    .await;
    // Raw calls: one beyond a burst of two per second (and the one that
    // goes into debt) is refused at once with the wait.
    let mut client = broker_client(&broker.address).await;
    let request = ListOffsetsRequest {
        topic: TOPIC.into(),
        partition: 0,
        spec: OffsetSpec::Latest as i32,
        timestamp_ms: 0,
        ..Default::default()
    };
    let mut refusal = None;
    for _ in 0..5 {
        if let Err(status) = client.list_offsets(request.clone()).await {
            refusal = Some(SluiceError::from_status(&status));
            break;
        }
    }
    let refusal = refusal.expect("a call beyond 2 per second is throttled");
    assert_eq!(refusal.code, ErrorCode::Throttled, "{refusal}");
    let wait = refusal
        .retry_after_ms
        .expect("the refusal says how long to wait");
    assert!((1..=1000).contains(&wait), "{wait} ms");
    // The SDK waits as told and succeeds: 8 calls at 2/s take about 4 s.
    let started = Instant::now();
    for call in 0..8 {
        admin
            .list_offsets(TOPIC, 0, OffsetSpec::Latest, 0)
            .await
            .unwrap_or_else(|error| panic!("call {call}: {error}"));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "8 calls at 2 per second took only {:?}",
        started.elapsed()
    );
    broker.stop_cleanly().await;
    cluster.stop().await;
}
