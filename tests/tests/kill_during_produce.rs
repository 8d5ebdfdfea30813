//! `kill -9` of the store, then of the broker, while a producer is writing.
//!
//! Every write the producer saw acknowledged must be readable afterwards at
//! exactly the partition and offset it was acknowledged with, each key's
//! acknowledged values must appear in send order, and no value may be
//! stored twice: the producer is idempotent (ADR 0010), so the retries of
//! batches whose outcome the kills left unknown are recognised by the
//! broker (the same one after the store restart, the new owner after the
//! broker restart, which rebuilds the producer state from the log).

use sluice_client::{Producer, ProducerConfig, Record};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::read_back::{read_back, ReadBack};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "payments";
const PARTITIONS: u32 = 4;
const KEYS: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_mid_stream() {
    let mut cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic(TOPIC, PARTITIONS).await;

    let producer = Arc::new(
        Producer::new(ProducerConfig {
            client: cluster.client_config(),
            linger_ms: 2,
            // Long enough to ride out a restart and a lease expiry.
            delivery_timeout_ms: 120_000,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer"),
    );
    // value -> (partition, offset) for every acknowledged write.
    let acknowledged: Arc<Mutex<HashMap<u64, (u32, u64)>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let producer = producer.clone();
        let acknowledged = acknowledged.clone();
        let failed = failed.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut value = 0u64;
            let mut waiting = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..200 {
                    let record = Record::new(TOPIC, value.to_string())
                        .with_key(format!("key-{}", value % KEYS));
                    let delivery = producer.enqueue(record).await.expect("enqueue");
                    let acknowledged = acknowledged.clone();
                    let failed = failed.clone();
                    let sent = value;
                    waiting.push(tokio::spawn(async move {
                        match delivery.await {
                            Ok(metadata) => {
                                acknowledged
                                    .lock()
                                    .expect("lock")
                                    .insert(sent, (metadata.partition, metadata.offset));
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }));
                    value += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for task in waiting {
                task.await.expect("delivery task");
            }
            value
        })
    };

    let wait_for_acks = |target: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while acknowledged.lock().expect("lock").len() < target {
                assert!(
                    Instant::now() < deadline,
                    "acknowledgements stalled below {target}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    wait_for_acks(5_000).await;
    cluster.stores[0].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.stores[0].start();
    let after_store = acknowledged.lock().expect("lock").len();
    wait_for_acks(after_store + 5_000).await;
    cluster.brokers[0].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.brokers[0].start();
    let after_broker = acknowledged.lock().expect("lock").len();
    wait_for_acks(after_broker + 5_000).await;
    stop.store(true, Ordering::SeqCst);
    let sent = writer.await.expect("writer");
    let acknowledged = acknowledged.lock().expect("lock").clone();
    eprintln!(
        "sent {sent}, acknowledged {}, failed {} across kill -9 of store and broker",
        acknowledged.len(),
        failed.load(Ordering::SeqCst)
    );

    // Read every partition back from the start.
    let ReadBack { at, occurrences } = read_back(cluster.client_config(), TOPIC, PARTITIONS).await;

    let mut lost = 0;
    for (value, (partition, offset)) in &acknowledged {
        match at.get(&(*partition, *offset)) {
            Some(found) if found == value => {}
            Some(found) => {
                panic!("acknowledged value {value} at {partition}@{offset} but {found} is there")
            }
            None => lost += 1,
        }
    }
    assert_eq!(lost, 0, "{lost} acknowledged writes lost");
    let duplicates: Vec<u64> = occurrences
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(value, _)| *value)
        .collect();
    eprintln!(
        "read back {} records; {} values written more than once",
        at.len(),
        duplicates.len()
    );
    assert!(
        duplicates.is_empty(),
        "{} values stored more than once despite idempotence, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    // Nothing but what was sent is there, and every acknowledged value is.
    assert!(occurrences.keys().all(|value| *value < sent));

    // Each key's acknowledged values appear in increasing order.
    let mut by_key: HashMap<u64, Vec<(u32, u64, u64)>> = HashMap::new();
    for (value, (partition, offset)) in &acknowledged {
        by_key
            .entry(value % KEYS)
            .or_default()
            .push((*partition, *offset, *value));
    }
    for (key, mut writes) in by_key {
        writes.sort();
        assert!(
            writes.windows(2).all(|pair| pair[0].0 == pair[1].0),
            "key {key} spans partitions"
        );
        assert!(
            writes.windows(2).all(|pair| pair[0].2 < pair[1].2),
            "key {key}: acknowledged values out of send order"
        );
    }
}
