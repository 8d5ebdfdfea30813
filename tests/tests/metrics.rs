//! The Prometheus endpoints against real processes (etcd, nameserver,
//! broker, store, and `sluice dev`): every service answers `GET /metrics`
//! with its key series, and they move with traffic — bytes and records
//! in per topic, the produce latency and journal fsync histograms, records
//! out, consumer-group lag and a subscription's backlog.

use bytes::Bytes;
use sluice_client::{Consumer, ConsumerConfig, Record, StartOffset, Subscriber, SubscriberConfig};
use sluice_proto::test_util::eventually;
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::dev::{data_dir, DevProcess};
use sluice_tests::metrics::{deploy_files, referenced_series, scrape, value};
use std::process::Stdio;
use std::time::Duration;

const TOPIC: &str = "metered";
const MESSAGES: u64 = 200;
const CONSUMED: u64 = 50;
const GROUP: &str = "metered-readers";

const BROKER_SERIES: &[&str] = &[
    "sluice_broker_produce_latency_seconds_count",
    "sluice_broker_fetch_latency_seconds_count",
    "sluice_broker_partitions_owned",
    "sluice_broker_offline_partitions",
    "sluice_broker_connections_open",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
];
const STORE_SERIES: &[&str] = &[
    "sluice_store_journal_fsync_latency_seconds_count",
    "sluice_store_group_commit_appends_count",
    "sluice_store_disk_free_bytes",
    "sluice_store_open_segment_files",
    "sluice_store_max_open_segment_files",
    "sluice_store_connections_open",
    "process_resident_memory_bytes",
];
const NAMESERVER_SERIES: &[&str] = &[
    "sluice_nameserver_assigner_active",
    "sluice_nameserver_cluster_offline_partitions",
    "sluice_nameserver_cluster_under_replicated_segments",
    "sluice_nameserver_connections_open",
    "process_resident_memory_bytes",
];

fn assert_has(exposition: &str, names: &[&str], what: &str) {
    for name in names {
        assert!(
            value(exposition, name, "").is_some(),
            "{what} lacks {name}:\n{exposition}"
        );
    }
}

fn record(value: u64) -> Record {
    Record {
        topic: TOPIC.to_string(),
        partition: None,
        key: Some(Bytes::from(format!("key-{}", value % 10))),
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
        tags: Vec::new(),
        timestamp_ms: None,
    }
}

async fn produce(cluster: &Cluster, count: u64) {
    let producer = cluster.producer().await;
    let mut deliveries = Vec::new();
    for value in 0..count {
        deliveries.push(producer.enqueue(record(value)).await.expect("enqueue"));
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    producer.close().await.expect("close");
}

/// Reads `count` records in `GROUP` and commits them.
async fn consume_and_commit(cluster: &Cluster, count: u64) {
    let config = ConsumerConfig {
        client: cluster.client_config(),
        group: Some(GROUP.to_string()),
        auto_commit: false,
        reset: StartOffset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::subscribe(config, &[TOPIC])
        .await
        .expect("subscribe");
    let mut read = 0;
    while read < count {
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within 30 s")
            .expect("recv");
        assert_eq!(record.topic, TOPIC);
        read += 1;
    }
    consumer.commit().await.expect("commit");
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_exports_its_series_and_they_move_with_traffic() {
    let cluster = Cluster::start(ClusterSpec {
        metrics: true,
        ..ClusterSpec::default()
    })
    .await;
    let broker = cluster.brokers[0].metrics_address();
    let store = cluster.stores[0].metrics_address();
    let nameserver = cluster.nameservers[0].metrics_address();
    assert_has(&scrape(&broker).await, BROKER_SERIES, "broker");
    assert_has(&scrape(&nameserver).await, NAMESERVER_SERIES, "nameserver");
    let before = scrape(&store).await;
    assert_has(&before, STORE_SERIES, "store");
    let fsyncs_before = value(
        &before,
        "sluice_store_journal_fsync_latency_seconds_count",
        "",
    )
    .expect("fsync count");

    // One partition: lag counts only partitions the group committed.
    cluster.create_topic(TOPIC, 1).await;
    let topic = format!("topic=\"{TOPIC}\"");
    // A subscription created before the messages: all of them are its backlog.
    let subscriber = Subscriber::connect(SubscriberConfig {
        client: cluster.client_config(),
        ..SubscriberConfig::new(TOPIC, "audit")
    })
    .await
    .expect("subscribe");
    produce(&cluster, MESSAGES).await;

    let after = scrape(&broker).await;
    assert_eq!(
        value(&after, "sluice_broker_records_in_total", &topic),
        Some(MESSAGES as f64),
        "{after}"
    );
    let bytes_in = value(&after, "sluice_broker_bytes_in_total", &topic).expect("bytes in");
    assert!(bytes_in >= (MESSAGES * 2) as f64, "{bytes_in}");
    let produced = value(&after, "sluice_broker_produce_latency_seconds_count", "")
        .expect("produce latency count");
    assert!(produced >= 1.0, "{after}");
    let stored = scrape(&store).await;
    let fsyncs = value(
        &stored,
        "sluice_store_journal_fsync_latency_seconds_count",
        "",
    )
    .expect("fsync count");
    assert!(fsyncs > fsyncs_before, "fsyncs {fsyncs_before} -> {fsyncs}");
    assert!(
        value(&stored, "sluice_store_disk_free_bytes", "").expect("disk free") > 0.0,
        "{stored}"
    );

    consume_and_commit(&cluster, CONSUMED).await;
    let read = scrape(&broker).await;
    let records_out = value(&read, "sluice_broker_records_out_total", &topic).expect("records out");
    assert!(records_out >= CONSUMED as f64, "{read}");
    // Lag is refreshed every 10 s: MESSAGES - CONSUMED once it has been.
    let group = format!("group=\"{GROUP}\"");
    eventually("group lag is exported", Duration::from_secs(40), || async {
        let text = scrape(&broker).await;
        let lag = value(&text, "sluice_broker_group_lag_records", &group);
        (lag == Some((MESSAGES - CONSUMED) as f64)).then_some(())
    })
    .await;
    // And in time: the first uncommitted record was produced moments ago.
    let text = scrape(&broker).await;
    let age = value(&text, "sluice_broker_group_lag_seconds", &group).expect("lag in seconds");
    assert!((0.0..600.0).contains(&age), "{age}");
    // The backlog monitor measures every second; nothing was acknowledged.
    eventually(
        "subscription backlog is exported",
        Duration::from_secs(20),
        || async {
            let text = scrape(&broker).await;
            let backlog = value(
                &text,
                "sluice_broker_subscription_backlog_messages",
                "subscription=\"audit\"",
            );
            (backlog == Some(MESSAGES as f64)).then_some(())
        },
    )
    .await;
    drop(subscriber);
    let status = scrape(&nameserver).await;
    assert_eq!(
        value(&status, "sluice_nameserver_assigner_active", ""),
        Some(1.0),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_dev_serves_every_service_series_on_one_endpoint() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut dev = DevProcess::spawn(
        &data_dir(root.path()),
        DevProcess::free_ports(),
        "warn",
        Stdio::null(),
        Stdio::null(),
    );
    dev.wait_ready();
    // A family without a sample is not exposed (prometheus-client skips
    // empty families): the per-topic series appear once the broker serves
    // a partition of a topic, so the test makes one before looking for
    // every series the dashboard and the alert rules use.
    dev.ok(&["topic", "create", TOPIC, "--partitions", "1"]);
    dev.ok(&["produce", TOPIC, "one record"]);
    let address = dev.metrics_address();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape(&address).await;
        let missing = unexported_deploy_series(&text);
        if missing.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deploy files use series no service exports: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_has(&text, BROKER_SERIES, "sluice dev");
    assert_has(&text, STORE_SERIES, "sluice dev");
    assert_has(&text, NAMESERVER_SERIES, "sluice dev");
    // One process: its process series appear once.
    let resident = text
        .lines()
        .filter(|line| line.starts_with("process_resident_memory_bytes "))
        .count();
    assert_eq!(resident, 1, "{text}");
    assert!(dev.terminate().success());
}

/// The series each deploy file (Grafana dashboard, alert rules) uses that
/// the exposition lacks (its names, with their type's suffixes), by file.
fn unexported_deploy_series(exposition: &str) -> Vec<(std::path::PathBuf, Vec<String>)> {
    let exported = sluice_telemetry::metrics::exposed_sample_names(exposition);
    deploy_files()
        .into_iter()
        .filter_map(|(path, file)| {
            let missing: Vec<String> = referenced_series(&file)
                .into_iter()
                .filter(|name| !exported.contains(name))
                .collect();
            (!missing.is_empty()).then_some((path, missing))
        })
        .collect()
}
