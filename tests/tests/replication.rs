//! Replicated segments (ensemble 3, write quorum 3, ack quorum 2) under
//! store and broker failures, against real processes and a real etcd.
//!
//! Four stores. A producer writes without pause while, one after another: a
//! store is killed with `kill -9` (writes must go on without it, on a new
//! ensemble), restarted, another store is frozen with SIGSTOP (a hung
//! store: dropped after the replica acknowledgement timeout), thawed, the
//! broker that owns partition 0 is killed (its partitions are fenced and
//! recovered by the other broker) and restarted, and a store holding
//! partition 0's open segment is killed for good. Repair must then bring every closed segment back to 3
//! complete copies on live stores (copies that missed writes while their
//! store was down are filled; the dead store's copies are replaced), which
//! the test checks by asking each store for its copy. Then every partition
//! is read back from offset 0:
//! every acknowledged write must be at the partition and offset it was
//! acknowledged with, each key's values in send order, and no value twice
//! (the producer is idempotent). Reading from the start also goes through
//! copies that missed writes while their store was down, which a reader
//! must skip rather than stop at. Finally a stopped store gets a byte of a
//! segment file flipped; after its restart the damaged copy must be found
//! and repaired, and the log must read back unchanged.

use sluice_client::{Admin, Producer, ProducerConfig, Record};
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{SegmentState, SegmentStatusRequest};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::read_back::{read_back, ReadBack};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "ledger";
const PARTITIONS: u32 = 4;
const KEYS: u64 = 64;
/// Acknowledgements awaited between two faults.
const STEP: usize = 3_000;

type Acknowledged = Arc<Mutex<HashMap<u64, (u32, u64)>>>;

/// Waits until `target` writes were acknowledged; returns how long it took.
async fn wait_for_acks(acknowledged: &Acknowledged, target: usize, what: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    while acknowledged.lock().expect("lock").len() < target {
        assert!(
            Instant::now() < deadline,
            "acknowledgements stalled below {target} {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// A store holding partition 0's open segment, once there is one.
async fn open_segment_replica_of_partition_0(admin: &Admin) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = admin.describe_topic(TOPIC).await.expect("describe");
        let replica = described
            .partitions
            .iter()
            .flat_map(|partition| partition.segments.iter())
            .filter(|segment| segment.partition == 0 && segment.state() == SegmentState::Open)
            .flat_map(|segment| segment.replicas.iter())
            .map(|replica| replica.store_id.clone())
            .next();
        if let Some(store) = replica {
            return store;
        }
        assert!(
            Instant::now() < deadline,
            "partition 0 has no open segment with replicas"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn acknowledged_count(acknowledged: &Acknowledged) -> usize {
    acknowledged.lock().expect("lock").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_writes_survive_store_and_broker_failures() {
    let mut cluster = Cluster::start(ClusterSpec {
        stores: 4,
        brokers: 2,
        broker_config:
            "[replication]\nrepair_interval_ms = 1000\nrepair_dead_store_grace_ms = 3000\n\
                        degraded_ensemble_check_interval_ms = 2000\n"
                .to_string(),
        ..ClusterSpec::default()
    })
    .await;
    assert_eq!(cluster.spec.ensemble_size(), 3);
    cluster.create_topic(TOPIC, PARTITIONS).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let topic = admin.describe_topic(TOPIC).await.expect("describe");
    let config = topic.topic.and_then(|topic| topic.config).expect("config");
    assert_eq!(
        (config.ensemble_size, config.write_quorum, config.ack_quorum),
        (3, 3, 2)
    );

    let producer = Arc::new(
        Producer::new(ProducerConfig {
            client: cluster.client_config(),
            linger_ms: 2,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer"),
    );
    let acknowledged: Acknowledged = Arc::default();
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
                for _ in 0..100 {
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
                            Err(error) => {
                                eprintln!("write {sent} failed: {error}");
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

    let mut report = Vec::new();
    wait_for_acks(&acknowledged, STEP, "at start").await;

    cluster.stores[0].kill();
    let target = acknowledged_count(&acknowledged) + STEP;
    let took = wait_for_acks(&acknowledged, target, "with store-1 killed").await;
    report.push(format!(
        "{STEP} acks after kill -9 of store-1 took {took:?}"
    ));

    cluster.stores[0].start();
    let target = acknowledged_count(&acknowledged) + STEP;
    wait_for_acks(&acknowledged, target, "after store-1 restarted").await;

    cluster.stores[1].pause();
    let target = acknowledged_count(&acknowledged) + STEP;
    let took = wait_for_acks(&acknowledged, target, "with store-2 frozen").await;
    report.push(format!(
        "{STEP} acks with store-2 frozen (SIGSTOP) took {took:?}"
    ));
    cluster.stores[1].resume();
    let target = acknowledged_count(&acknowledged) + STEP;
    wait_for_acks(&acknowledged, target, "after store-2 thawed").await;

    let routes = admin.describe_topic(TOPIC).await.expect("describe");
    let owner = routes
        .partitions
        .iter()
        .find_map(|partition| {
            partition
                .route
                .as_ref()
                .filter(|route| route.partition == 0)
                .map(|route| route.broker_id.clone())
        })
        .expect("partition 0 has an owner");
    let owner_index = cluster
        .brokers
        .iter()
        .position(|broker| broker.node_id == owner)
        .expect("owner is one of ours");
    cluster.brokers[owner_index].kill();
    let target = acknowledged_count(&acknowledged) + STEP;
    let took = wait_for_acks(
        &acknowledged,
        target,
        "with the owner of partition 0 killed",
    )
    .await;
    report.push(format!(
        "{STEP} acks after kill -9 of {owner} took {took:?}"
    ));
    cluster.brokers[owner_index].start();
    let target = acknowledged_count(&acknowledged) + STEP;
    wait_for_acks(&acknowledged, target, "after the broker restarted").await;

    // Kill for good a store that holds the open segment of partition 0, so
    // repair has copies to replace. The restarted broker takes partitions
    // back one at a time, seconds apart (the nameserver's
    // balance_interval_ms); while partition 0 changes hands it has no open
    // segment for a moment, so look again until it has one.
    let victim = open_segment_replica_of_partition_0(&admin).await;
    let victim_index = cluster
        .stores
        .iter()
        .position(|store| store.node_id == victim)
        .expect("the victim is one of our stores");
    cluster.stores[victim_index].kill();
    let target = acknowledged_count(&acknowledged) + STEP;
    wait_for_acks(&acknowledged, target, "with a store killed for good").await;

    stop.store(true, Ordering::SeqCst);
    let sent = writer.await.expect("writer");
    producer.flush().await.expect("flush");
    let acknowledged = acknowledged.lock().expect("lock").clone();
    eprintln!(
        "sent {sent}, acknowledged {}, failed {}; {}",
        acknowledged.len(),
        failed.load(Ordering::SeqCst),
        report.join("; ")
    );

    // Read every partition back from the start.
    let ReadBack { at, occurrences } = read_back(cluster.client_config(), TOPIC, PARTITIONS).await;

    let mut lost = Vec::new();
    for (value, (partition, offset)) in &acknowledged {
        match at.get(&(*partition, *offset)) {
            Some(found) if found == value => {}
            Some(found) => {
                panic!("acknowledged value {value} at {partition}@{offset} but {found} is there")
            }
            None => lost.push((*value, *partition, *offset)),
        }
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let duplicated: Vec<u64> = occurrences
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(value, _)| *value)
        .collect();
    assert!(
        duplicated.is_empty(),
        "{} values stored more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)]
    );
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

    // Repair: every segment ends up with 3 complete copies on live stores
    // (the dead store no longer listed), as each store itself reports,
    // and the cluster status shows nothing under-replicated.
    let dead = victim.clone();
    wait_until_repaired(&cluster, &admin, &dead).await;
    // Brokers report repair counts with their load, which the nameserver
    // records at most every `load_update_interval_ms`.
    let deadline = Instant::now() + Duration::from_secs(30);
    while wait_until_repaired(&cluster, &admin, &dead).await == 0 {
        assert!(
            Instant::now() < deadline,
            "no broker reported a repair, but the failures above needed some"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A store that comes back with a damaged copy is not trusted: the
    // damage is found and the copy repaired from a good one, and reads
    // still return exactly what was acknowledged.
    let damaged_index = (victim_index + 1) % cluster.stores.len();
    cluster.stores[damaged_index].stop(Duration::from_secs(10));
    let data_dir = cluster
        .directory()
        .join(&cluster.stores[damaged_index].node_id)
        .join("data");
    let corrupted = corrupt_largest_segment(&data_dir);
    eprintln!("flipped a byte in {}", corrupted.display());
    cluster.stores[damaged_index].start();
    wait_until_repaired(&cluster, &admin, &dead).await;
    let again = read_back(cluster.client_config(), TOPIC, PARTITIONS)
        .await
        .at;
    assert_eq!(
        again, at,
        "the log reads back the same after the damaged copy was repaired"
    );
}

/// Waits until every segment has 3 complete, undamaged copies on live
/// stores and the nameserver counts none under-replicated; returns the
/// segments repaired by the brokers since they started.
async fn wait_until_repaired(cluster: &Cluster, admin: &Admin, dead_store: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let problems = replication_problems(cluster, admin, dead_store).await;
        if !problems.is_empty() {
            eprintln!("waiting for repair: {problems:?}");
        }
        let status = admin.cluster_status().await.expect("cluster status");
        if problems.is_empty() && status.under_replicated_segments == 0 {
            let repaired: u64 = status
                .brokers
                .iter()
                .filter_map(|broker| broker.load.as_ref())
                .map(|load| load.repaired_segments)
                .sum();
            eprintln!(
                "repair done: {} segments, {repaired} repaired by the brokers",
                status.segments
            );
            return repaired;
        }
        assert!(
            Instant::now() < deadline,
            "not repaired in time ({} under-replicated per the nameserver): {problems:?}",
            status.under_replicated_segments
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Flips one byte in the middle of the largest segment file of a stopped
/// store: a bad CRC its recovery finds and reports.
fn corrupt_largest_segment(data_dir: &std::path::Path) -> std::path::PathBuf {
    let segments = data_dir.join("segments");
    let largest = std::fs::read_dir(&segments)
        .expect("segments directory")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .max_by_key(|path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0))
        .expect("a segment file");
    let mut bytes = std::fs::read(&largest).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&largest, bytes).expect("write segment");
    largest
}

/// Every way the topic's segments fall short of 3 complete copies on live
/// stores, as the stores report them.
async fn replication_problems(cluster: &Cluster, admin: &Admin, dead_store: &str) -> Vec<String> {
    let described = admin.describe_topic(TOPIC).await.expect("describe");
    let mut problems = Vec::new();
    for partition in &described.partitions {
        for segment in &partition.segments {
            if segment.replicas.len() < 3 {
                problems.push(format!(
                    "segment {} of partition {} has {} replicas",
                    segment.segment_id,
                    segment.partition,
                    segment.replicas.len()
                ));
            }
            for replica in &segment.replicas {
                if replica.store_id == dead_store {
                    problems.push(format!(
                        "segment {} still lists the dead {dead_store}",
                        segment.segment_id
                    ));
                    continue;
                }
                if segment.state() != SegmentState::Closed {
                    continue;
                }
                let answer = StoreClient::new(cluster.channel(&replica.address))
                    .get_segment_status(SegmentStatusRequest {
                        segment_id: segment.segment_id,
                    })
                    .await
                    .map(|response| response.into_inner());
                match answer {
                    Ok(status)
                        if status.end_offset >= segment.end_offset
                            && status.corrupt_from_offset.is_none() => {}
                    Ok(status) => problems.push(format!(
                        "{}'s copy of segment {} ends at {} of {}{}",
                        replica.store_id,
                        segment.segment_id,
                        status.end_offset,
                        segment.end_offset,
                        status
                            .corrupt_from_offset
                            .map(|offset| format!(", damaged from {offset}"))
                            .unwrap_or_default()
                    )),
                    Err(status) => problems.push(format!(
                        "{} has no copy of segment {}: {}",
                        replica.store_id,
                        segment.segment_id,
                        status.message()
                    )),
                }
            }
        }
    }
    problems
}
