//! A store on a real, small file system that fills up while a producer
//! writes (issue 11: a full disk latched the store until a restart).
//!
//! The store must refuse writes with a clear error while the disk is full,
//! keep running, report itself unhealthy, and accept writes again by
//! itself once space is freed, without a restart; afterwards every
//! acknowledged record is readable at the offset it was acknowledged with
//! and no value is stored twice (the producer is idempotent, so batches
//! whose outcome the full disk left unknown are deduplicated on retry).

use sluice_client::{Admin, Producer, ProducerConfig, Record};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::read_back::read_back;
use sluice_tests::small_fs::SmallFilesystem;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "fills-the-disk";
const FILESYSTEM_BYTES: u64 = 48 * 1024 * 1024;
/// Room left after the filler: a few MiB of records fill it.
const LEFT_BYTES: u64 = 6 * 1024 * 1024;
const RECORD_BYTES: usize = 1024;
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Outcomes {
    /// value -> offset of every acknowledged record.
    acknowledged: Mutex<HashMap<u64, u64>>,
    failed: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_disk_fills_resumes_by_itself_once_space_is_freed() {
    let filesystem = SmallFilesystem::mount(FILESYSTEM_BYTES);
    let mut cluster = Cluster::start(ClusterSpec {
        store_config: format!(
            "data_dir = \"{}\"\njournal_file_max_bytes = 2097152\nsegment_preallocate_bytes = 262144\n",
            filesystem.path().join("data").display()
        ),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, 1).await;
    let filler = filesystem.fill_leaving(LEFT_BYTES);

    let producer = Arc::new(
        Producer::new(ProducerConfig {
            client: cluster.client_config(),
            linger_ms: 2,
            delivery_timeout_ms: 3_000,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer"),
    );
    let outcomes = Arc::new(Outcomes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until_stopped(
        producer.clone(),
        outcomes.clone(),
        stop.clone(),
    ));

    // The disk fills: writes fail, the store keeps running and says why.
    wait_for("a write to fail on the full disk", || {
        outcomes.failed.load(Ordering::SeqCst) > 0
    })
    .await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let mut unhealthy = false;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while !unhealthy && Instant::now() < deadline {
        if let Ok(status) = admin.cluster_status().await {
            unhealthy = status
                .stores
                .iter()
                .any(|store| store.load.as_ref().is_some_and(|load| !load.healthy));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unhealthy, "the store never reported itself unhealthy");
    assert!(
        cluster.stores[0].is_running(),
        "the store died of a full disk"
    );

    // Space comes back: writes resume without a restart.
    std::fs::remove_file(&filler).expect("free the space");
    let acknowledged_when_freed = outcomes.acknowledged.lock().expect("lock").len();
    wait_for(
        "writes to be acknowledged again after freeing space",
        || outcomes.acknowledged.lock().expect("lock").len() > acknowledged_when_freed + 1_000,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    assert!(
        cluster.stores[0].is_running(),
        "the store was not restarted"
    );

    let acknowledged = outcomes.acknowledged.lock().expect("lock").clone();
    let read = read_back(cluster.client_config(), TOPIC, 1).await;
    for (value, offset) in &acknowledged {
        assert_eq!(
            read.at.get(&(0, *offset)),
            Some(value),
            "acknowledged value {value} is not at its offset {offset}"
        );
    }
    let duplicated: Vec<_> = read.occurrences.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "values stored twice: {duplicated:?}");
    println!(
        "{} acknowledged, {} failed while the disk was full",
        acknowledged.len(),
        outcomes.failed.load(Ordering::SeqCst)
    );
}

async fn write_until_stopped(
    producer: Arc<Producer>,
    outcomes: Arc<Outcomes>,
    stop: Arc<AtomicBool>,
) {
    let mut value = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut waiting = Vec::new();
        for _ in 0..200 {
            // Zero-padded to the record size; still a decimal number.
            let record = Record::new(TOPIC, format!("{value:0>RECORD_BYTES$}"));
            let delivery = producer.enqueue(record).await.expect("enqueue");
            waiting.push((value, delivery));
            value += 1;
        }
        for (sent, delivery) in waiting {
            match delivery.await {
                Ok(metadata) => {
                    outcomes
                        .acknowledged
                        .lock()
                        .expect("lock")
                        .insert(sent, metadata.offset);
                }
                Err(_) => {
                    outcomes.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
