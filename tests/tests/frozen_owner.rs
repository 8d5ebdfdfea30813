//! SIGSTOP of a partition's owner beyond its lease (issue 12, finding 1):
//! once another broker owns the partition, the producer must resend what
//! was in flight to the frozen owner and be acknowledged again, without
//! waiting for the frozen broker's answers (`request_timeout_ms`, 30 s by
//! default) or for it to resume. After SIGCONT every acknowledged record
//! must be readable once, where it was acknowledged, in send order per
//! partition (the idempotent producer's resends are deduplicated by the
//! new owner, which rebuilt the producer state from the log on takeover).
//!
//! The cluster uses the production session settings (heartbeat 250 ms,
//! session timeout 1500 ms, ADR 0014); the producer uses the SDK's
//! defaults but for `linger_ms`.

use sluice_client::{Admin, Producer, ProducerConfig, Record};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::read_back::read_back;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "frozen-owner";
const PARTITIONS: u32 = 2;
/// Upper bound on the wait from the route change to every record enqueued
/// before it being acknowledged: shows the producer does not wait for the
/// frozen owner (which never answers while frozen); not a performance
/// figure (see BENCHMARKS.md for those).
const RESUME_BOUND: Duration = Duration::from_secs(5);
/// Upper bound on the wait for another broker to own the partition.
const TAKEOVER_BOUND: Duration = Duration::from_secs(30);

/// Per value: when it was enqueued, and its outcome once known.
#[derive(Default)]
struct Outcomes {
    enqueued: HashMap<u64, Instant>,
    /// value -> (partition, offset) of acknowledged ones.
    acknowledged: HashMap<u64, (u32, u64)>,
    failed: HashMap<u64, String>,
    /// When each acknowledgement arrived.
    acknowledged_at: HashMap<u64, Instant>,
}

impl Outcomes {
    /// The first acknowledgement on `partition` after `since`.
    fn first_ack_after(&self, partition: u32, since: Instant) -> Option<Instant> {
        self.acknowledged_at
            .iter()
            .filter(|(value, at)| {
                **at > since
                    && self
                        .acknowledged
                        .get(value)
                        .is_some_and(|(acked, _)| *acked == partition)
            })
            .map(|(_, at)| *at)
            .min()
    }
}

/// The broker owning `partition` of the test topic, if any.
async fn owner_of(admin: &Admin, partition: u32) -> Option<String> {
    let described = admin.describe_topic(TOPIC).await.ok()?;
    described
        .partitions
        .iter()
        .filter_map(|described| described.route.as_ref())
        .find(|route| route.partition == partition)
        .map(|route| route.broker_id.clone())
        .filter(|owner| !owner.is_empty())
}

/// Writes increasing values round-robin over the partitions until `stop`.
fn start_writer(
    producer: Arc<Producer>,
    outcomes: Arc<Mutex<Outcomes>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>> {
    tokio::spawn(async move {
        let mut value = 0u64;
        let mut waiting = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let partition = (value % u64::from(PARTITIONS)) as u32;
            let record = Record::new(TOPIC, value.to_string()).with_partition(partition);
            outcomes
                .lock()
                .expect("lock")
                .enqueued
                .insert(value, Instant::now());
            let delivery = producer.enqueue(record).await.expect("enqueue");
            let outcomes = outcomes.clone();
            let sent = value;
            waiting.push(tokio::spawn(async move {
                let result = delivery.await;
                let mut outcomes = outcomes.lock().expect("lock");
                match result {
                    Ok(metadata) => {
                        outcomes
                            .acknowledged
                            .insert(sent, (metadata.partition, metadata.offset));
                        outcomes.acknowledged_at.insert(sent, Instant::now());
                    }
                    Err(error) => {
                        outcomes.failed.insert(sent, error.to_string());
                    }
                }
            }));
            value += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        waiting
    })
}

/// Waits until every value enqueued before `before` has an outcome, up to
/// `deadline`; false if some is still waiting then.
async fn all_settled(outcomes: &Mutex<Outcomes>, before: Instant, deadline: Instant) -> bool {
    loop {
        let pending = {
            let outcomes = outcomes.lock().expect("lock");
            outcomes
                .enqueued
                .iter()
                .filter(|(_, at)| **at < before)
                .filter(|(value, _)| {
                    !outcomes.acknowledged.contains_key(value)
                        && !outcomes.failed.contains_key(value)
                })
                .count()
        };
        if pending == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            eprintln!("{pending} record(s) enqueued before the route change still unacknowledged");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_follows_the_new_owner_while_the_old_one_is_frozen() {
    // The producer's "partition moved" lines (with --no-capture) date its
    // part of the wait.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sluice_client::producer=info")
        .with_test_writer()
        .try_init();
    let mut cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        stores: 1,
        // The harness's session settings: the production ones (ADR 0014).
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, PARTITIONS).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let producer = Arc::new(
        Producer::new(ProducerConfig {
            client: cluster.client_config(),
            linger_ms: 1,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer"),
    );
    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(producer.clone(), outcomes.clone(), stop.clone());

    // Acknowledgements flow before the freeze.
    let warm = Instant::now() + Duration::from_secs(30);
    while outcomes.lock().expect("lock").acknowledged.len() < 200 {
        assert!(
            Instant::now() < warm,
            "no acknowledgements before the freeze"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frozen_id = owner_of(&admin, 0).await.expect("partition 0 has an owner");
    let frozen = cluster
        .brokers
        .iter()
        .position(|broker| broker.node_id == frozen_id)
        .expect("the owner is one of the cluster's brokers");
    cluster.brokers[frozen].pause();
    let frozen_at = Instant::now();

    // Another broker takes partition 0 over (routes show it).
    let new_owner = loop {
        if let Some(owner) = owner_of(&admin, 0)
            .await
            .filter(|owner| *owner != frozen_id)
        {
            break owner;
        }
        assert!(
            frozen_at.elapsed() < TAKEOVER_BOUND,
            "no other broker took partition 0 over within {TAKEOVER_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let moved_at = Instant::now();
    eprintln!(
        "{frozen_id} frozen; {new_owner} owns partition 0 after {} ms",
        moved_at.duration_since(frozen_at).as_millis()
    );
    // Everything enqueued before the route change, in flight to the frozen
    // owner included, is acknowledged while it stays frozen.
    let settled = all_settled(&outcomes, moved_at, moved_at + RESUME_BOUND).await;
    let resumed_after = moved_at.elapsed();
    assert!(
        cluster.brokers[frozen].is_running(),
        "the frozen broker is still there (stopped, not dead)"
    );
    if !settled {
        cluster.brokers[frozen].resume();
        panic!(
            "the producer stayed stalled: records enqueued before the route change were not acknowledged within {RESUME_BOUND:?} of it"
        );
    }
    let first_ack = outcomes
        .lock()
        .expect("lock")
        .first_ack_after(0, moved_at)
        .map(|at| at.duration_since(moved_at).as_millis());
    eprintln!(
        "partition 0 acknowledged again {first_ack:?} ms after the route change; every record enqueued before it (the backlog of the freeze) settled {} ms after it (route change seen at {:?}, unix)",
        resumed_after.as_millis(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(resumed_after)
    );
    // When the new owner started serving, to tell its takeover from the
    // producer's share of the wait.
    let new_index = cluster
        .brokers
        .iter()
        .position(|broker| broker.node_id == new_owner)
        .expect("the new owner is one of the cluster's brokers");
    let log = std::fs::read_to_string(cluster.brokers[new_index].log_path()).unwrap_or_default();
    for line in log
        .lines()
        .filter(|line| line.contains("serving") && line.contains(TOPIC))
    {
        eprintln!("{new_owner}: {line}");
    }

    cluster.brokers[frozen].resume();
    // Write on for a while with the old owner back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for task in writer.await.expect("writer") {
        task.await.expect("delivery task");
    }
    producer.flush().await.expect("flush");

    let outcomes = std::mem::take(&mut *outcomes.lock().expect("lock"));
    assert!(
        outcomes.failed.is_empty(),
        "{} record(s) failed, e.g. {:?}",
        outcomes.failed.len(),
        outcomes.failed.iter().next()
    );
    let written = read_back(cluster.client_config(), TOPIC, PARTITIONS).await;
    let duplicates: Vec<u64> = written
        .occurrences
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(value, _)| *value)
        .collect();
    assert!(
        duplicates.is_empty(),
        "written more than once: {duplicates:?}"
    );
    for (value, (partition, offset)) in &outcomes.acknowledged {
        assert_eq!(
            written.at.get(&(*partition, *offset)),
            Some(value),
            "value {value} acknowledged at {partition}@{offset}"
        );
    }
    // Per partition, values were enqueued in increasing order: offsets
    // must keep that order.
    let mut by_partition: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    for ((partition, offset), value) in &written.at {
        by_partition
            .entry(*partition)
            .or_default()
            .push((*offset, *value));
    }
    for (partition, mut entries) in by_partition {
        entries.sort();
        for pair in entries.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "partition {partition} reordered: value {} at offset {} before value {} at offset {}",
                pair[0].1,
                pair[0].0,
                pair[1].1,
                pair[1].0
            );
        }
    }
}
