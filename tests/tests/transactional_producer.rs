//! ADR 0016 stage 3 at process level: the SDK's transactional producer
//! against real etcd, stores and brokers run with `[transactions] enabled
//! = true`.
//!
//! - Commit then abort across 2 topics × 2 partitions: a read-committed
//!   `Consumer` reads exactly the committed records, each partition in
//!   order; a read-uncommitted one reads both. Every end bumps the epoch.
//! - Zombie: a second producer with the same transactional id fences the
//!   first; the first's send to a new partition and its commit are refused
//!   PRODUCER_FENCED, it refuses every later call, and nothing it wrote
//!   becomes visible; the new instance commits.
//! - Bad input and misuse: an overlong id, a timeout above the brokers'
//!   maximum, commit without begin, a send outside a transaction, begin
//!   twice, two concurrent commits, transactions on a plain producer.
//! - A transaction open past `transaction_timeout_ms`: its commit is
//!   refused TRANSACTION_ABORTABLE, the abort succeeds (whether or not the
//!   coordinator expired it first), the next transaction commits.
//! - An abort drops records still lingering unsent: their futures fail
//!   `TransactionAborted` and none of them is ever read.

use sluice_client::{
    ClientError, Consumer, ConsumerConfig, Isolation, Producer, ProducerConfig, Record, StartOffset,
};
use sluice_tests::cluster::{wait_until_writable, Cluster, ClusterSpec};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TOPICS: [&str; 2] = ["tx-a", "tx-b"];
const PARTITIONS: u32 = 2;
const RECORDS_PER_PARTITION: usize = 5;
/// Bound on every wait for the cluster to converge (not a timing claim).
const EVENTUALLY: Duration = Duration::from_secs(40);

/// Values per (topic, partition), in offset order.
type Log = BTreeMap<(String, u32), Vec<String>>;

async fn start() -> Cluster {
    let cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        broker_config: "[transactions]\nenabled = true\nmax_timeout_ms = 60000\n".into(),
        ..ClusterSpec::default()
    })
    .await;
    for topic in TOPICS {
        cluster.create_topic(topic, PARTITIONS).await;
        wait_until_writable(cluster.client_config(), topic).await;
    }
    cluster
}

async fn producer(cluster: &Cluster, id: &str) -> Result<Producer, ClientError> {
    Producer::new(ProducerConfig {
        client: cluster.client_config(),
        transactional_id: Some(id.into()),
        transaction_timeout_ms: 30_000,
        delivery_timeout_ms: 20_000,
        ..ProducerConfig::default()
    })
    .await
}

/// Enqueues `prefix-topic-partition-i` to every partition of both topics
/// and returns what each partition should hold, in order.
async fn write_all(producer: &Producer, prefix: &str) -> Log {
    let mut expected = Log::new();
    let mut deliveries = Vec::new();
    for index in 0..RECORDS_PER_PARTITION {
        for topic in TOPICS {
            for partition in 0..PARTITIONS {
                let value = format!("{prefix}-{topic}-{partition}-{index}");
                let record = Record::new(topic, value.clone()).with_partition(partition);
                deliveries.push(producer.enqueue(record).await.expect("enqueued"));
                expected
                    .entry((topic.to_string(), partition))
                    .or_default()
                    .push(value);
            }
        }
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    expected
}

fn merge(logs: &[&Log]) -> Log {
    let mut merged = Log::new();
    for log in logs {
        for (partition, values) in *log {
            merged
                .entry(partition.clone())
                .or_default()
                .extend(values.iter().cloned());
        }
    }
    merged
}

fn count(log: &Log) -> usize {
    log.values().map(Vec::len).sum()
}

/// Everything `isolation` reads from the start of every partition, once
/// `at_least` records arrived and 2 s passed without more.
async fn read(cluster: &Cluster, isolation: Isolation, at_least: usize) -> Log {
    let assignment = TOPICS
        .iter()
        .flat_map(|topic| {
            (0..PARTITIONS).map(|partition| (topic.to_string(), partition, StartOffset::Earliest))
        })
        .collect();
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            isolation,
            ..ConsumerConfig::default()
        },
        assignment,
    )
    .await
    .expect("consumer");
    let deadline = Instant::now() + EVENTUALLY;
    let mut log = Log::new();
    loop {
        let complete = count(&log) >= at_least;
        let wait = if complete {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        match consumer.recv_timeout(wait).await.expect("read") {
            Some(record) => {
                let value =
                    String::from_utf8(record.value.expect("a value").to_vec()).expect("utf8");
                log.entry((record.topic, record.partition))
                    .or_default()
                    .push(value);
            }
            None if complete => break,
            None => assert!(
                Instant::now() < deadline,
                "{isolation:?}: only {} of {at_least} records arrived: {log:?}",
                count(&log)
            ),
        }
    }
    consumer.close().await.expect("close");
    log
}

fn is_fenced<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::ProducerFenced(_)))
}

fn is_invalid_state<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::InvalidTransactionState(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_abort_zombie_and_misuse() {
    let cluster = start().await;
    let committed = commit_then_abort(&cluster).await;
    let fenced_winner = zombie(&cluster).await;
    let misuse_committed = misuse(&cluster).await;
    let after_timeout = timed_out(&cluster).await;
    let after_drop = abort_drops_unsent(&cluster).await;
    let committed = merge(&[
        &committed,
        &fenced_winner,
        &misuse_committed,
        &after_timeout,
        &after_drop,
    ]);
    let seen = read(&cluster, Isolation::ReadCommitted, count(&committed)).await;
    assert_eq!(
        seen, committed,
        "read-committed sees exactly the committed records, in order"
    );
}

/// Commits one transaction and aborts the next; returns the committed
/// records. A read-uncommitted reader sees both.
async fn commit_then_abort(cluster: &Cluster) -> Log {
    let producer = producer(cluster, "writer-1").await.expect("producer");
    let (pid, epoch) = producer.transactional_identity().expect("transactional");
    producer.begin_transaction().expect("begin");
    let committed = write_all(&producer, "c").await;
    producer.commit_transaction().await.expect("commit");
    assert_eq!(
        producer.transactional_identity(),
        Some((pid, epoch + 1)),
        "a commit bumps the epoch"
    );
    producer.begin_transaction().expect("begin");
    let aborted = write_all(&producer, "a").await;
    producer.abort_transaction().await.expect("abort");
    assert_eq!(
        producer.transactional_identity(),
        Some((pid, epoch + 2)),
        "an abort bumps the epoch"
    );
    producer.begin_transaction().expect("begin after an abort");
    producer.abort_transaction().await.expect("an empty abort");
    producer.close().await.expect("close");
    let everything = merge(&[&committed, &aborted]);
    let uncommitted = read(cluster, Isolation::ReadUncommitted, count(&everything)).await;
    assert_eq!(uncommitted, everything, "read-uncommitted sees both");
    committed
}

/// Two zombies fenced by new instances; returns what the new ones commit.
async fn zombie(cluster: &Cluster) -> Log {
    // Fenced, then its send to a partition new to its transaction is refused.
    let old = producer(cluster, "zombie-1").await.expect("first instance");
    old.begin_transaction().expect("begin");
    old.send(Record::new(TOPICS[0], "z-old-1").with_partition(0))
        .await
        .expect("before the fence");
    let new = producer(cluster, "zombie-1")
        .await
        .expect("second instance");
    let late = old
        .send(Record::new(TOPICS[1], "z-old-2").with_partition(1))
        .await;
    assert!(is_fenced(late.clone()), "a fenced send: {late:?}");
    assert!(is_fenced(old.commit_transaction().await));
    assert!(is_fenced(old.begin_transaction()), "fenced for good");
    assert!(is_fenced(
        old.enqueue(Record::new(TOPICS[0], "z-old-3"))
            .await
            .map(|_| ())
    ));
    // Fenced, then its commit is refused by the coordinator.
    let old2 = producer(cluster, "zombie-2").await.expect("first instance");
    old2.begin_transaction().expect("begin");
    old2.send(Record::new(TOPICS[1], "y-old-1").with_partition(0))
        .await
        .expect("before the fence");
    let new2 = producer(cluster, "zombie-2")
        .await
        .expect("second instance");
    let refused = old2.commit_transaction().await;
    assert!(is_fenced(refused.clone()), "a fenced commit: {refused:?}");
    assert!(is_fenced(old2.abort_transaction().await));
    // The new instances work.
    let mut winners = Log::new();
    for (producer, value) in [(&new, "z-new-1"), (&new2, "y-new-1")] {
        producer.begin_transaction().expect("begin");
        producer
            .send(Record::new(TOPICS[0], value).with_partition(1))
            .await
            .expect("sent");
        producer.commit_transaction().await.expect("commit");
        winners
            .entry((TOPICS[0].to_string(), 1))
            .or_default()
            .push(value.to_string());
    }
    winners
}

/// Clear refusals that leave the producer and cluster usable; returns
/// what it commits at the end.
async fn misuse(cluster: &Cluster) -> Log {
    let overlong = producer(cluster, &"x".repeat(250)).await;
    assert!(
        matches!(&overlong, Err(ClientError::InvalidArgument(message)) if message.contains("transactional_id")),
        "{:?}",
        overlong.map(|_| ())
    );
    let too_long = Producer::new(ProducerConfig {
        client: cluster.client_config(),
        transactional_id: Some("bad-timeout".into()),
        transaction_timeout_ms: 60_001,
        ..ProducerConfig::default()
    })
    .await
    .map(|_| ())
    .expect_err("above the brokers' max_timeout_ms");
    assert_eq!(
        too_long.code(),
        Some(sluice_proto::ErrorCode::InvalidArgument)
    );
    assert!(
        too_long.to_string().contains("max_timeout_ms"),
        "{too_long}"
    );
    let plain = Producer::new(ProducerConfig {
        client: cluster.client_config(),
        ..ProducerConfig::default()
    })
    .await
    .expect("plain producer");
    assert!(is_invalid_state(plain.begin_transaction()));
    assert!(is_invalid_state(plain.commit_transaction().await));
    plain.close().await.expect("close");

    let producer = producer(cluster, "careless-1").await.expect("producer");
    assert!(is_invalid_state(producer.commit_transaction().await));
    assert!(is_invalid_state(producer.abort_transaction().await));
    assert!(is_invalid_state(
        producer
            .enqueue(Record::new(TOPICS[0], "outside"))
            .await
            .map(|_| ())
    ));
    producer.begin_transaction().expect("begin");
    assert!(
        is_invalid_state(producer.begin_transaction()),
        "begin twice"
    );
    producer
        .enqueue(Record::new(TOPICS[1], "m-1").with_partition(1))
        .await
        .expect("enqueued");
    let (first, second) =
        tokio::join!(producer.commit_transaction(), producer.commit_transaction());
    let outcomes = [first, second];
    assert_eq!(
        outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Err(ClientError::InvalidTransactionState(_))))
            .count(),
        1,
        "the concurrent commit is refused, not raced: {outcomes:?}"
    );
    assert!(
        is_invalid_state(producer.commit_transaction().await),
        "commit twice"
    );
    producer.close().await.expect("close");
    Log::from([((TOPICS[1].to_string(), 1), vec!["m-1".to_string()])])
}

/// A transaction past its timeout cannot commit; abort and redo works.
async fn timed_out(cluster: &Cluster) -> Log {
    let producer = Producer::new(ProducerConfig {
        client: cluster.client_config(),
        transactional_id: Some("slow-1".into()),
        // Short enough to pass in a test, long enough for a loaded machine
        // to send one record within it.
        transaction_timeout_ms: 3_000,
        delivery_timeout_ms: 3_000,
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    let began = Instant::now();
    producer.begin_transaction().expect("begin");
    // The first record may take longer than the timeout on a loaded
    // machine: then it is refused, which is as good for this test.
    let _ = producer
        .send(Record::new(TOPICS[1], "t-old").with_partition(0))
        .await;
    // The precondition (not an assertion): the timeout has passed.
    tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(began.elapsed())).await;
    let refused = producer.commit_transaction().await;
    assert!(
        matches!(refused, Err(ClientError::TransactionAbortable { .. })),
        "{refused:?}"
    );
    producer.abort_transaction().await.expect("abort");
    producer.begin_transaction().expect("begin again");
    producer
        .send(Record::new(TOPICS[1], "t-new").with_partition(0))
        .await
        .expect("sent");
    producer.commit_transaction().await.expect("commit");
    producer.close().await.expect("close");
    Log::from([((TOPICS[1].to_string(), 0), vec!["t-new".to_string()])])
}

/// Records lingering in open batches when the transaction aborts are
/// dropped, never written; the next transaction commits.
async fn abort_drops_unsent(cluster: &Cluster) -> Log {
    let producer = Producer::new(ProducerConfig {
        client: cluster.client_config(),
        transactional_id: Some("lingering-1".into()),
        linger_ms: 600_000,
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    producer.begin_transaction().expect("begin");
    let mut deliveries = Vec::new();
    for index in 0..3 {
        let record = Record::new(TOPICS[0], format!("l-old-{index}")).with_partition(0);
        deliveries.push(producer.enqueue(record).await.expect("enqueued"));
    }
    producer.abort_transaction().await.expect("abort");
    for delivery in deliveries {
        let outcome = delivery.await;
        assert!(
            matches!(outcome, Err(ClientError::TransactionAborted)),
            "{outcome:?}"
        );
    }
    producer.begin_transaction().expect("begin again");
    let delivery = producer
        .enqueue(Record::new(TOPICS[0], "l-new").with_partition(0))
        .await
        .expect("enqueued");
    producer
        .commit_transaction()
        .await
        .expect("commit sends lingering records");
    delivery.await.expect("acknowledged by the commit");
    producer.close().await.expect("close");
    Log::from([((TOPICS[0].to_string(), 0), vec!["l-new".to_string()])])
}
