//! Compacted topics (issue 14, ADR 0016 §8), with real binaries: many
//! updates over few keys, with tombstones, while the owner compacts and
//! one store is killed (`kill -9`) and restarted. A reader from offset 0
//! then sees exactly the latest value of every live key and nothing of a
//! deleted key once its tombstone's retention passed, at strictly
//! increasing offsets; a producer writing throughout never fails; a
//! keyless record is refused; retention (1 ms) deletes nothing of a
//! COMPACT-only topic.

use sluice_client::{
    ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, Record, StartOffset,
};
use sluice_proto::v1::{CleanupPolicy, TopicConfig};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

const TOPIC: &str = "compacted";
const KEYS: usize = 16;
const DELETED: [usize; 4] = [0, 1, 2, 3];
/// Tombstones stay readable this long after compaction first reached them.
const DELETE_RETENTION_MS: u64 = 2_000;

async fn producer(cluster: &Cluster) -> Producer {
    Producer::new(ProducerConfig {
        client: cluster.client_config(),
        ..ProducerConfig::default()
    })
    .await
    .expect("producer")
}

/// `rounds` updates of every key (value `key-round-padding`), the
/// deleted keys tombstoned once in round `tombstone_after` and never
/// written again;
/// waits for every acknowledgement; the highest offset.
async fn write_rounds(
    producer: &Producer,
    rounds: std::ops::Range<usize>,
    tombstone_after: Option<usize>,
    latest: &mut BTreeMap<String, Option<String>>,
) -> u64 {
    let padding = "x".repeat(200);
    let mut pending = Vec::new();
    for round in rounds {
        for key in 0..KEYS {
            let name = format!("key-{key:02}");
            let deleted = DELETED.contains(&key);
            let record = match tombstone_after {
                Some(after) if deleted && round == after => {
                    latest.insert(name.clone(), None);
                    Record::tombstone(TOPIC, name)
                }
                _ if deleted && latest.get(&name).is_some_and(Option::is_none) => continue,
                _ => {
                    let value = format!("{name}-{round}-{padding}");
                    latest.insert(name.clone(), Some(value.clone()));
                    Record::new(TOPIC, value).with_key(name)
                }
            };
            pending.push(
                producer
                    .enqueue(record.with_partition(0))
                    .await
                    .expect("enqueue"),
            );
        }
    }
    let mut highest = 0;
    for delivery in pending {
        highest = highest.max(delivery.await.expect("every update is acknowledged").offset);
    }
    highest
}

/// A record read: offset, key, value.
type Read = (u64, String, Option<String>);

/// Every record from offset 0 up to `end` (exclusive).
async fn read_all(cluster: &Cluster, end: u64) -> Vec<Read> {
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            ..ConsumerConfig::default()
        },
        vec![(TOPIC.to_string(), 0, StartOffset::Earliest)],
    )
    .await
    .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while consumer
        .position(TOPIC, 0)
        .is_none_or(|position| position < end)
    {
        assert!(
            Instant::now() < deadline,
            "the reader did not reach {end}: {:?}",
            consumer.position(TOPIC, 0)
        );
        if let Some(record) = consumer
            .recv_timeout(Duration::from_millis(500))
            .await
            .expect("read")
        {
            let key = String::from_utf8(record.key.expect("keyed").to_vec()).expect("utf8");
            let value = record
                .value
                .map(|value| String::from_utf8(value.to_vec()).expect("utf8"));
            records.push((record.offset, key, value));
        }
    }
    consumer.close().await.expect("close");
    records
}

/// The end of the compacted segments from the log start (those with
/// `first_compacted_at_ms` set), 0 if none.
async fn compacted_end(cluster: &Cluster) -> u64 {
    let described = cluster
        .admin()
        .await
        .describe_topic(TOPIC)
        .await
        .expect("describe");
    let mut segments: Vec<_> = described
        .partitions
        .iter()
        .flat_map(|partition| partition.segments.iter())
        .collect();
    segments.sort_by_key(|segment| segment.base_offset);
    segments
        .iter()
        .take_while(|segment| segment.first_compacted_at_ms > 0)
        .map(|segment| segment.end_offset)
        .last()
        .unwrap_or(0)
}

/// Compacted segments of the partition (`first_compacted_at_ms` set).
async fn compacted_segments(cluster: &Cluster) -> usize {
    let described = cluster
        .admin()
        .await
        .describe_topic(TOPIC)
        .await
        .expect("describe");
    described
        .partitions
        .iter()
        .flat_map(|partition| partition.segments.iter())
        .filter(|segment| segment.first_compacted_at_ms > 0)
        .count()
}

/// A cluster of 4 stores (a store may die while placements go on), short
/// intervals, and the compacted topic (3/3/2, 16 KiB segments).
async fn start() -> Cluster {
    let cluster = Cluster::start(ClusterSpec {
        stores: 4,
        broker_config: "[compaction]\ncheck_interval_ms = 300\ndelete_delay_ms = 1000\n\
                        [produce]\nproducer_state_rebuild_bytes = 1\n\
                        [retention]\ncheck_interval_ms = 300\n"
            .into(),
        ..ClusterSpec::default()
    })
    .await;
    cluster
        .create_topic_with(
            TOPIC,
            TopicConfig {
                partitions: 1,
                cleanup_policy: CleanupPolicy::Compact as i32,
                // Retention would delete every closed segment at once; a
                // COMPACT-only topic ignores it.
                retention_ms: 1,
                segment_bytes: 16 * 1024,
                delete_retention_ms: DELETE_RETENTION_MS,
                min_cleanable_dirty_ratio_percent: 10,
                ensemble_size: 3,
                write_quorum: 3,
                ack_quorum: 2,
                ..TopicConfig::default()
            },
        )
        .await;
    cluster
}

/// A keyless record is refused INVALID_ARGUMENT, saying why.
async fn keyless_is_refused(cluster: &Cluster) {
    let probe = producer(cluster).await;
    let keyless = probe
        .send(Record::new(TOPIC, "no key").with_partition(0))
        .await;
    let _ = probe.close().await;
    match keyless {
        Err(ClientError::Server(error)) => {
            assert_eq!(
                error.code,
                sluice_proto::ErrorCode::InvalidArgument,
                "{error}"
            );
            assert!(error.message.contains("has no key"), "{error}");
        }
        other => panic!("a keyless record on a compacted topic: {other:?}"),
    }
}

/// A writer of its own key, never deleted, sending one record at a time
/// throughout; its key's latest value.
async fn concurrent_writer(
    cluster: &Cluster,
) -> tokio::task::JoinHandle<BTreeMap<String, Option<String>>> {
    let writer = producer(cluster).await;
    tokio::spawn(async move {
        let mut latest = BTreeMap::new();
        for round in 0..40 {
            let record = Record::new(TOPIC, format!("other-{round}"))
                .with_key("other")
                .with_partition(0);
            latest.insert("other".to_string(), Some(format!("other-{round}")));
            writer
                .send(record)
                .await
                .expect("concurrent produce keeps working");
        }
        writer.close().await.expect("close");
        latest
    })
}

/// Panics, with the segments and the services' logs, if a key appears
/// twice below the compacted end.
async fn check_unique_below(cluster: &Cluster, records: &[Read], compacted_end: u64) {
    let mut seen = BTreeMap::new();
    let twice: Vec<(u64, u64, String)> = records
        .iter()
        .filter(|(offset, _, _)| *offset < compacted_end)
        .filter_map(|(offset, key, _)| {
            seen.insert(key.clone(), *offset)
                .map(|earlier| (earlier, *offset, key.clone()))
        })
        .collect();
    if twice.is_empty() {
        return;
    }
    let described = cluster
        .admin()
        .await
        .describe_topic(TOPIC)
        .await
        .expect("describe");
    let segments: Vec<_> = described.partitions[0]
        .segments
        .iter()
        .map(|segment| {
            (
                segment.segment_id,
                segment.base_offset,
                segment.end_offset,
                segment.first_compacted_at_ms,
            )
        })
        .collect();
    cluster.dump_logs();
    panic!("keys twice below the compacted end {compacted_end}: {twice:?}; segments {segments:?}");
}

/// Reads from 0 until the deleted keys are gone and a compacted range
/// exists (writing a round of the live keys between tries, so the
/// tombstones' segments are compacted again past their horizon); the
/// records and the end read to.
async fn read_once_compacted(
    cluster: &Cluster,
    writer: &Producer,
    mut end: u64,
    latest: &mut BTreeMap<String, Option<String>>,
) -> (Vec<Read>, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let compacted_end = compacted_end(cluster).await;
        let records = read_all(cluster, end).await;
        check_unique_below(cluster, &records, compacted_end).await;
        let deleted_seen = records.iter().any(|(_, key, _)| {
            DELETED
                .iter()
                .any(|deleted| *key == format!("key-{deleted:02}"))
        });
        if !deleted_seen && compacted_end > 0 {
            return (records, end);
        }
        assert!(
            Instant::now() < deadline,
            "the deleted keys never went: {} records, compacted up to {compacted_end}",
            records.len()
        );
        end = write_rounds(writer, 60..61, None, latest).await + 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_keeps_the_latest_value_of_every_live_key() {
    let mut cluster = start().await;
    keyless_is_refused(&cluster).await;
    let writer = producer(&cluster).await;
    let mut latest = BTreeMap::new();
    write_rounds(&writer, 0..20, Some(5), &mut latest).await;
    // A store dies (kill -9) while passes run and produce goes on.
    let victim = 1;
    cluster.stores[victim].kill();
    let background = concurrent_writer(&cluster).await;
    write_rounds(&writer, 20..40, Some(5), &mut latest).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while compacted_segments(&cluster).await == 0 {
        assert!(Instant::now() < deadline, "no pass compacted a segment");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.stores[victim].start();
    latest.extend(background.await.expect("concurrent writer"));
    // Past the tombstones' retention, more updates make the log dirty
    // again: the next pass drops the expired tombstones.
    tokio::time::sleep(Duration::from_millis(DELETE_RETENTION_MS + 500)).await;
    let end = write_rounds(&writer, 40..60, Some(5), &mut latest).await + 1;
    let (records, end) = read_once_compacted(&cluster, &writer, end, &mut latest).await;
    writer.close().await.expect("close");

    // Strictly increasing offsets; the latest value of every live key
    // is the last one read; no deleted key.
    assert!(
        records.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "offsets must increase"
    );
    let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (_, key, value) in &records {
        last.insert(key.clone(), value.clone());
    }
    let live: BTreeMap<String, Option<String>> = latest
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .collect();
    assert_eq!(last, live, "each live key's latest value, no deleted key");
    // Compaction removed most of the log (every offset below `end` was
    // a record; the uncompacted tail is about two segments).
    assert!(
        records.len() * 2 < usize::try_from(end).expect("small"),
        "{} of {end} records left",
        records.len()
    );
    let distinct: HashSet<&String> = records.iter().map(|(_, key, _)| key).collect();
    assert_eq!(distinct.len(), KEYS - DELETED.len() + 1);
}
