//! Process-level end-to-end test: real etcd, real nameserver, broker and
//! store binaries.
//!
//! 100,000 keyed messages into 8 partitions; a group of 3 consumers (one
//! leaves midway) reads half; `kill -9` of store and broker; after restart
//! every acknowledged message is still there at the offset it was
//! acknowledged with, and the group resumes from its committed offsets so
//! that across both phases every message is delivered exactly once, in
//! order within its partition, and same-key messages share a partition.

use bytes::Bytes;
use sluice_client::{Consumer, ConsumerConfig, Record, StartOffset};
use sluice_proto::partitioning::partition_for_key;
use sluice_tests::cluster::{wait_until_writable, Cluster, ClusterSpec};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 8;
const MESSAGES: u64 = 100_000;
const KEYS: u64 = 1_000;
const GROUP: &str = "billing";

/// (partition, offset, value) as a consumer saw it.
type Seen = Vec<(u32, u64, u64)>;

/// Runs `members` group consumers until `target` records were consumed in
/// total; the member with index `leaver` (if any) leaves after
/// `leave_after` records in total.
async fn consume_in_group(
    cluster: &Cluster,
    members: usize,
    target: u64,
    leaver: Option<(usize, u64)>,
) -> Seen {
    let total = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Seen::new()));
    let mut tasks = Vec::new();
    for index in 0..members {
        let config = ConsumerConfig {
            client: cluster.client_config(),
            group: Some(GROUP.to_string()),
            auto_commit: true,
            reset: StartOffset::Earliest,
            session_timeout_ms: 10_000,
            ..ConsumerConfig::default()
        };
        let total = total.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::subscribe(config, &[TOPIC])
                .await
                .expect("subscribe");
            let deadline = Instant::now() + Duration::from_secs(240);
            loop {
                let done = total.load(Ordering::SeqCst) >= target;
                let leaving = leaver.is_some_and(|(who, after)| {
                    who == index && total.load(Ordering::SeqCst) >= after
                });
                if done || leaving {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "consumer {index} did not finish in time"
                );
                match consumer
                    .recv_timeout(Duration::from_millis(200))
                    .await
                    .expect("recv")
                {
                    Some(record) => {
                        let value: u64 =
                            std::str::from_utf8(record.value.as_deref().expect("value"))
                                .expect("utf8")
                                .parse()
                                .expect("number");
                        seen.lock()
                            .expect("lock")
                            .push((record.partition, record.offset, value));
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                    None => continue,
                }
            }
            consumer.close().await.expect("close commits and leaves");
        }));
    }
    for task in tasks {
        task.await.expect("consumer task");
    }
    let seen = seen.lock().expect("lock").clone();
    seen
}

/// Per partition: the offsets seen, sorted, must have no duplicate.
fn by_partition(seen: &Seen) -> BTreeMap<u32, Vec<(u64, u64)>> {
    let mut map: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for &(partition, offset, value) in seen {
        map.entry(partition).or_default().push((offset, value));
    }
    for entries in map.values_mut() {
        entries.sort();
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_messages_survive_kill_and_group_resumes_exactly_once() {
    let mut cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic(TOPIC, PARTITIONS).await;

    // Produce 100,000 keyed messages; remember where each was acknowledged.
    let producer = cluster.producer().await;
    let mut deliveries = Vec::with_capacity(MESSAGES as usize);
    for value in 0..MESSAGES {
        let key = format!("key-{}", value % KEYS);
        let record = Record {
            topic: TOPIC.to_string(),
            partition: None,
            key: Some(Bytes::from(key)),
            value: Some(Bytes::from(value.to_string())),
            headers: Vec::new(),
            tags: Vec::new(),
            timestamp_ms: None,
        };
        deliveries.push((value, producer.enqueue(record).await.expect("enqueue")));
    }
    // value -> (partition, offset)
    let mut acknowledged: HashMap<u64, (u32, u64)> = HashMap::with_capacity(MESSAGES as usize);
    for (value, delivery) in deliveries {
        let metadata = delivery.await.expect("every send is acknowledged");
        let key = format!("key-{}", value % KEYS);
        assert_eq!(
            metadata.partition,
            partition_for_key(key.as_bytes(), PARTITIONS),
            "key {key} went to the wrong partition"
        );
        assert!(acknowledged
            .insert(value, (metadata.partition, metadata.offset))
            .is_none());
    }
    producer.close().await.expect("producer close");
    eprintln!("produced and acknowledged {} messages", acknowledged.len());
    // Offsets are dense and unique per partition.
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &(partition, offset) in acknowledged.values() {
        per_partition.entry(partition).or_default().push(offset);
    }
    for (partition, offsets) in &mut per_partition {
        offsets.sort_unstable();
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            offsets, &expected,
            "partition {partition} offsets are not 0..n"
        );
    }

    // Phase 1: three consumers, one leaves midway, until half is consumed.
    let half = MESSAGES / 2;
    let phase_one = consume_in_group(&cluster, 3, half, Some((2, half / 3))).await;
    assert!(phase_one.len() as u64 >= half);
    eprintln!("phase one: the group consumed {} messages", phase_one.len());

    // kill -9 the store and the broker, then restart them.
    cluster.stores[0].kill();
    cluster.brokers[0].kill();
    cluster.stores[0].start();
    cluster.brokers[0].start();
    cluster.wait_ready().await;
    wait_until_writable(cluster.client_config(), TOPIC).await;
    eprintln!("killed and restarted store and broker");

    // Every acknowledged message is still there, at its offset.
    let assignment = (0..PARTITIONS)
        .map(|partition| (TOPIC.to_string(), partition, StartOffset::Earliest))
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
    .expect("assign");
    let mut found: HashMap<u64, (u32, u64)> = HashMap::with_capacity(MESSAGES as usize);
    let deadline = Instant::now() + Duration::from_secs(180);
    while (found.len() as u64) < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "only {} of {MESSAGES} messages readable after restart",
            found.len()
        );
        if let Some(record) = reader
            .recv_timeout(Duration::from_secs(1))
            .await
            .expect("read back")
        {
            let value: u64 = std::str::from_utf8(record.value.as_deref().expect("value"))
                .expect("utf8")
                .parse()
                .expect("number");
            assert!(
                found
                    .insert(value, (record.partition, record.offset))
                    .is_none(),
                "value {value} read twice"
            );
        }
    }
    reader.close().await.expect("close reader");
    assert_eq!(
        found, acknowledged,
        "messages moved or vanished across kill -9"
    );
    eprintln!(
        "all {} acknowledged messages read back at their offsets",
        found.len()
    );

    // Phase 2: the group resumes from its commits and reads the rest.
    let remaining = MESSAGES - phase_one.len() as u64;
    let phase_two = consume_in_group(&cluster, 3, remaining, None).await;

    let mut all = phase_one.clone();
    all.extend(phase_two.iter().copied());
    let grouped = by_partition(&all);
    let mut total = 0;
    for (partition, entries) in &grouped {
        let offsets: Vec<u64> = entries.iter().map(|(offset, _)| *offset).collect();
        let expected: Vec<u64> = (0..per_partition[partition].len() as u64).collect();
        assert_eq!(
            offsets, expected,
            "partition {partition}: duplicates or gaps across the group's two phases"
        );
        for (offset, value) in entries {
            assert_eq!(
                acknowledged[value],
                (*partition, *offset),
                "value {value} at the wrong place"
            );
        }
        total += entries.len();
    }
    assert_eq!(total as u64, MESSAGES);
    eprintln!(
        "phase two: the group consumed the remaining {}; every message exactly once",
        phase_two.len()
    );
    // In order within each partition, per consumer session: phase records
    // of one partition were appended in increasing offset order.
    for phase in [&phase_one, &phase_two] {
        let mut last: HashMap<u32, u64> = HashMap::new();
        for &(partition, offset, _) in phase.iter() {
            if let Some(previous) = last.insert(partition, offset) {
                assert!(
                    offset > previous,
                    "partition {partition} went back from {previous} to {offset}"
                );
            }
        }
    }
}
