//! Process-level test of the store's budget of open segment files: a
//! store started with a low `RLIMIT_NOFILE` (soft and hard, so raising
//! the soft limit cannot escape it) serves more single-partition topics
//! (each with an open segment file) than its file limit, produces to and
//! reads back from all of them, and reports the budget and its use in the
//! cluster status.

use bytes::Bytes;
use sluice_client::{Admin, Consumer, ConsumerConfig, Record, StartOffset};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::collections::HashMap;
use std::time::Duration;

/// The store's limit of open files: without the budget, one file per
/// segment exhausts it.
const FILE_LIMIT: u64 = 128;
/// Topics (one partition, so one open segment each) beyond the limit.
const TOPICS: u64 = FILE_LIMIT + 32;
const RECORDS_PER_TOPIC: u64 = 3;

fn topic(index: u64) -> String {
    format!("fd-{index:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_serves_more_topics_than_its_file_limit() {
    let cluster = Cluster::start(ClusterSpec {
        store_file_limit: Some(FILE_LIMIT),
        ..ClusterSpec::default()
    })
    .await;
    for index in 0..TOPICS {
        cluster.create_topic(&topic(index), 1).await;
    }
    let mut records = Vec::new();
    for round in 0..RECORDS_PER_TOPIC {
        for index in 0..TOPICS {
            let value = index * RECORDS_PER_TOPIC + round;
            records.push(Record::new(topic(index), Bytes::from(value.to_string())));
        }
    }
    let acknowledged = cluster.produce_acknowledged(records).await;
    assert_eq!(acknowledged.len() as u64, TOPICS * RECORDS_PER_TOPIC);

    let read = read_all(&cluster).await;
    for index in 0..TOPICS {
        let values = read.get(&topic(index)).cloned().unwrap_or_default();
        let expected: Vec<u64> = (0..RECORDS_PER_TOPIC)
            .map(|round| index * RECORDS_PER_TOPIC + round)
            .collect();
        assert_eq!(values, expected, "topic {}", topic(index));
    }

    let status = cluster.status().await;
    let load = status.stores[0].load.clone().expect("store load");
    assert!(load.healthy, "{load:?}");
    assert_eq!(load.max_open_segment_files, FILE_LIMIT / 2, "{load:?}");
    assert!(
        load.open_segment_files <= FILE_LIMIT,
        "open segment files within the limit: {load:?}"
    );
}

/// Every topic's values in offset order, read until nothing more arrives.
async fn read_all(cluster: &Cluster) -> HashMap<String, Vec<u64>> {
    let assignment = (0..TOPICS)
        .map(|index| (topic(index), 0, StartOffset::Earliest))
        .collect();
    let mut reader = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            ..ConsumerConfig::default()
        },
        assignment,
    )
    .await
    .expect("reader");
    let mut read: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut total = 0;
    while total < TOPICS * RECORDS_PER_TOPIC {
        let Some(record) = reader
            .recv_timeout(Duration::from_secs(10))
            .await
            .expect("read")
        else {
            break;
        };
        let value: u64 = std::str::from_utf8(record.value.as_deref().expect("value"))
            .expect("utf8")
            .parse()
            .expect("number");
        read.entry(record.topic.to_string())
            .or_default()
            .push((record.offset, value));
        total += 1;
    }
    read.into_iter()
        .map(|(topic, mut values)| {
            values.sort_unstable();
            (topic, values.into_iter().map(|(_, value)| value).collect())
        })
        .collect()
}

/// Idle connections use up the store's file limit (the finding: 1,100 idle
/// connections made a checkpoint fail with "too many open files" and the
/// store refused writes until restarted). While they are open the store
/// may refuse what needs a new file, with a clear error; once they close,
/// everything works again without a restart, and what was acknowledged
/// before is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_out_of_file_handles_recovers_by_itself_when_connections_close() {
    let mut cluster = Cluster::start(ClusterSpec {
        store_file_limit: Some(FILE_LIMIT),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic("before", 1).await;
    let before: Vec<Record> = (0..50u64)
        .map(|value| Record::new("before", Bytes::from(value.to_string())))
        .collect();
    cluster.produce_acknowledged(before).await;

    let address = cluster.stores[0]
        .url()
        .trim_start_matches("http://")
        .to_string();
    let mut idle = Vec::new();
    for _ in 0..FILE_LIMIT * 2 {
        match tokio::net::TcpStream::connect(&address).await {
            Ok(stream) => idle.push(stream),
            Err(_) => break,
        }
    }
    // Let the store accept what it can and run into its limit: several
    // checkpoints (every 200 ms) and a new topic needing new files.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    admin
        .create_topic(
            "during",
            sluice_proto::v1::TopicConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .await
        .expect("the nameserver creates the topic");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster.stores[0].is_running(),
        "the store died at its file limit"
    );
    drop(idle);

    sluice_tests::cluster::wait_until_writable(cluster.client_config(), "during").await;
    let after: Vec<Record> = ["before", "during"]
        .iter()
        .flat_map(|topic| {
            (50..60u64).map(move |value| Record::new(*topic, Bytes::from(value.to_string())))
        })
        .collect();
    cluster.produce_acknowledged(after).await;
    let status = admin.cluster_status().await.expect("cluster status");
    let load = status.stores[0].load.clone().expect("store load");
    assert!(load.healthy, "healthy again without a restart: {load:?}");
    assert!(cluster.stores[0].is_running());
}
