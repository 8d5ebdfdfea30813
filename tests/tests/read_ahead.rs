//! The broker's fetch read-ahead against real processes: readers draining
//! a partition from the stores (the tail cache is a few KiB, segments
//! 64 KiB, so ranges cross many segment rolls) while the producer is still
//! writing, two readers with different fetch sizes interleaving on the
//! same partition (each drops the other's read-ahead), and a reader after
//! one store of three is killed. Every reader must see every acknowledged
//! record once, in offset order, with the value written at that offset.

use sluice_client::{ClientConfig, Consumer, ConsumerConfig, Record, StartOffset};
use sluice_proto::v1::TopicConfig;
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::time::Duration;

const TOPIC: &str = "read-ahead";
const MESSAGES: u64 = 6000;

/// Value of the record written at `offset`: the offset, zero-padded to
/// 100 bytes so the log spans many segments.
fn value_for(offset: u64) -> String {
    format!("{offset:0100}")
}

/// Reads offsets `0..MESSAGES` with fetches of at most
/// `fetch_partition_max_bytes` and checks each record's offset and value.
async fn read_all(client: ClientConfig, fetch_partition_max_bytes: u32) {
    let mut reader = Consumer::assign(
        ConsumerConfig {
            client,
            group: None,
            fetch_partition_max_bytes,
            ..ConsumerConfig::default()
        },
        vec![(TOPIC.to_string(), 0, StartOffset::Earliest)],
    )
    .await
    .expect("reader");
    let mut expected = 0u64;
    while expected < MESSAGES {
        let record = reader
            .recv_timeout(Duration::from_secs(20))
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("nothing for 20 s after offset {expected}"));
        assert_eq!(
            record.offset, expected,
            "fetches of {fetch_partition_max_bytes} bytes: offset skipped, repeated or reordered"
        );
        let value = std::str::from_utf8(record.value.as_deref().expect("a value")).expect("utf-8");
        assert_eq!(
            value,
            value_for(expected),
            "wrong value at offset {expected}"
        );
        expected += 1;
    }
    reader.close().await.expect("close reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_and_interleaved_readers_see_every_record_once_in_order() {
    let mut cluster = Cluster::start(ClusterSpec {
        stores: 3,
        broker_config: "[fetch]\ntail_cache_bytes = 4096\nread_ahead_bytes = 1048576\n".to_string(),
        ..ClusterSpec::default()
    })
    .await;
    cluster
        .create_topic_with(
            TOPIC,
            TopicConfig {
                partitions: 1,
                segment_bytes: 64 * 1024,
                ..TopicConfig::default()
            },
        )
        .await;
    // Writes in rounds of 200 (each acknowledged before the next), so the
    // readers below chase a high watermark that keeps moving.
    let writer = {
        let cluster = &cluster;
        async move {
            for round in 0..MESSAGES / 200 {
                let records = (round * 200..(round + 1) * 200)
                    .map(|offset| Record::new(TOPIC, value_for(offset)).with_partition(0))
                    .collect();
                let acknowledged = cluster.produce_acknowledged(records).await;
                for (index, delivered) in acknowledged.iter().enumerate() {
                    assert_eq!(
                        delivered.offset,
                        round * 200 + index as u64,
                        "offset assigned"
                    );
                }
            }
        }
    };
    // Two readers at once, on different fetch sizes: they interleave on
    // the one partition, so read-aheads are started, taken and dropped.
    let small = tokio::spawn(read_all(cluster.client_config(), 2 * 1024));
    let large = tokio::spawn(read_all(cluster.client_config(), 7 * 1024));
    writer.await;
    small.await.expect("reader with 2 KiB fetches");
    large.await.expect("reader with 7 KiB fetches");
    // Alone (every read sequential, read-ahead always on), from the
    // stores, with one of the three killed.
    read_all(cluster.client_config(), 3 * 1024).await;
    cluster.stores[0].kill();
    read_all(cluster.client_config(), 5 * 1024).await;
}
