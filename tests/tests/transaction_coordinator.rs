//! ADR 0016 stage 2 at process level: the transaction coordinator driven
//! by raw gRPC calls (the SDK's transactional producer is stage 3), with
//! `[transactions] enabled = true`, real etcd, stores and brokers.
//!
//! - InitProducerId → Produce with the transactional id (each partition
//!   verifies with the coordinator) → EndTransaction commit / abort: a
//!   read-committed `Consumer` sees the committed records and never the
//!   aborted ones.
//! - A second InitProducerId fences the first instance: its produce to a
//!   new partition and its EndTransaction are refused PRODUCER_FENCED, its
//!   open transaction is aborted.
//! - A write of epoch e after epoch e+1 began is refused.
//! - An open transaction past its timeout is aborted by the coordinator.
//! - Bad input: EndTransaction without InitProducerId, an overlong id, a
//!   timeout above the maximum, too many participants.
//! - `kill -9` of the coordinating broker while a commit is prepared (its
//!   markers held back by a paused participant owner): the new coordinator
//!   finishes it and the records become visible.

use futures::StreamExt;
use sluice_client::{Admin, Consumer, ConsumerConfig, Isolation, StartOffset};
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::{
    DescribeTransactionRequest, EndTransactionRequest, EndTransactionResponse, ProduceRequest,
    TransactionDescription, TransactionEndReason, TransactionState,
};
use sluice_proto::{ErrorCode, SluiceError};
use sluice_tests::cluster::{wait_until_writable, Cluster, ClusterSpec};
use sluice_tests::transactions::{at_coordinator, coordinator, init};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const TOPIC: &str = "out";
const PARTITIONS: u32 = 6;
/// Bound on every wait for the cluster to converge (not a timing claim).
const EVENTUALLY: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(100);

fn broker_config(extra: &str) -> String {
    format!(
        "[transactions]\nenabled = true\nmax_timeout_ms = 60000\n\
         max_participants_per_transaction = 3\n{extra}"
    )
}

/// The partitions' owners: (broker id, address) per partition.
async fn owners(cluster: &Cluster) -> Vec<(String, String)> {
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Ok(description) = admin.describe_topic(TOPIC).await {
            let routes: Vec<_> = description
                .partitions
                .iter()
                .filter_map(|partition| partition.route.clone())
                .filter(|route| !route.broker_address.is_empty())
                .map(|route| (route.broker_id, route.broker_address))
                .collect();
            if routes.len() == PARTITIONS as usize {
                return routes;
            }
        }
        assert!(Instant::now() < deadline, "{TOPIC} has no owner everywhere");
        tokio::time::sleep(POLL).await;
    }
}

async fn end(
    cluster: &Cluster,
    id: &str,
    (producer_id, epoch): (i64, i16),
    commit: bool,
) -> Result<(i64, i16), SluiceError> {
    let request = EndTransactionRequest {
        transactional_id: id.to_string(),
        producer_id,
        producer_epoch: i32::from(epoch),
        commit,
    };
    let answer: EndTransactionResponse = at_coordinator(cluster, id, |mut client| {
        let request = request.clone();
        async move { client.end_transaction(request).await }
    })
    .await?;
    Ok((answer.producer_id, answer.producer_epoch as i16))
}

async fn describe(cluster: &Cluster, id: &str) -> TransactionDescription {
    let request = DescribeTransactionRequest {
        transactional_id: id.to_string(),
    };
    at_coordinator(cluster, id, |mut client| {
        let request = request.clone();
        async move { client.describe_transaction(request).await }
    })
    .await
    .expect("described")
    .transaction
    .expect("a description")
}

/// Polls `id`'s description until `state`.
async fn wait_for_state(
    cluster: &Cluster,
    id: &str,
    state: TransactionState,
) -> TransactionDescription {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let description = describe(cluster, id).await;
        if description.state == state as i32 {
            return description;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {state:?}: {description:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Produces one transactional record `value` as `(pid, epoch, sequence)`
/// to `partition`; the partition's answer (retrying while it moves).
async fn produce(
    cluster: &Cluster,
    id: &str,
    partition: u32,
    (producer_id, epoch): (i64, i16),
    sequence: i32,
    value: &str,
) -> ErrorCode {
    let mut builder = BatchBuilder::new(Compression::None)
        .with_producer(producer_id, epoch, sequence)
        .transactional();
    builder.push(&RecordData {
        value: Some(value.to_string().into()),
        ..RecordData::default()
    });
    let batch = builder.build();
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (_, address) = owners(cluster).await[partition as usize].clone();
        let request = ProduceRequest {
            request_id: 1,
            topic: TOPIC.into(),
            partition,
            batch: batch.clone(),
            resume: false,
            transactional_id: id.into(),
        };
        let mut client = BrokerClient::new(cluster.channel(&address));
        let answer = match client.produce(futures::stream::iter([request])).await {
            Ok(answers) => match answers.into_inner().next().await {
                Some(Ok(answer)) => {
                    ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal)
                }
                _ => ErrorCode::Unavailable,
            },
            Err(_) => ErrorCode::Unavailable,
        };
        let moving = matches!(
            answer,
            ErrorCode::NotOwner | ErrorCode::Unavailable | ErrorCode::ConcurrentTransactions
        );
        if !moving || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every value a read-committed consumer reads from the start of every
/// partition, once `expected` ones arrived and 2 s passed without more.
async fn read_committed(cluster: &Cluster, expected: &BTreeSet<String>) -> BTreeSet<String> {
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            isolation: Isolation::ReadCommitted,
            ..ConsumerConfig::default()
        },
        (0..PARTITIONS)
            .map(|partition| (TOPIC.to_string(), partition, StartOffset::Earliest))
            .collect(),
    )
    .await
    .expect("consumer");
    let deadline = Instant::now() + EVENTUALLY;
    let mut values = BTreeSet::new();
    loop {
        let complete = expected.is_subset(&values);
        let wait = if complete {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        match consumer.recv_timeout(wait).await.expect("read") {
            Some(record) => {
                let value = record.value.expect("a value");
                let value = String::from_utf8(value.to_vec()).expect("utf8");
                assert!(values.insert(value.clone()), "{value} read twice");
            }
            None if complete => break,
            None => assert!(
                Instant::now() < deadline,
                "only {values:?} of {expected:?} arrived"
            ),
        }
    }
    consumer.close().await.expect("close");
    values
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|value| value.to_string()).collect()
}

fn code(result: Result<(i64, i16), SluiceError>) -> ErrorCode {
    result.err().map_or(ErrorCode::None, |error| error.code)
}

async fn start(brokers: usize) -> Cluster {
    let cluster = Cluster::start(ClusterSpec {
        brokers,
        broker_config: broker_config(""),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, PARTITIONS).await;
    wait_until_writable(cluster.client_config(), TOPIC).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_abort_fencing_expiry_and_bad_input() {
    let cluster = start(2).await;
    let id = "copier-1";

    // An open transaction that nobody ends: its coordinator aborts it.
    let expiring = "expiring-1";
    let stale_producer = init(&cluster, expiring, 2_000).await.expect("init");
    assert_eq!(
        produce(&cluster, expiring, 5, stale_producer, 0, "x1").await,
        ErrorCode::None
    );

    let ended = commit_then_abort(&cluster, id).await;
    fencing(&cluster, id, ended).await;
    bad_input(&cluster).await;

    // The expired transaction was aborted by its coordinator.
    let expired = wait_for_state(&cluster, expiring, TransactionState::CompleteAbort).await;
    assert_eq!(expired.reason, TransactionEndReason::Timeout as i32);
    assert_eq!(
        code(end(&cluster, expiring, stale_producer, true).await),
        ErrorCode::TransactionAbortable
    );

    assert_eq!(
        read_committed(&cluster, &set(&["c1", "c2", "n1"])).await,
        set(&["c1", "c2", "n1"]),
        "only committed transactions are read"
    );
    // The server still serves after all of that.
    assert_eq!(
        describe(&cluster, id).await.state,
        TransactionState::CompleteCommit as i32
    );
}

/// Commits c1, c2 at epoch 0 and aborts a1 at epoch 1, with delayed writes
/// of epoch 0 refused; the producer after both ends.
async fn commit_then_abort(cluster: &Cluster, id: &str) -> (i64, i16) {
    let first = init(cluster, id, 30_000).await.expect("init");
    assert_eq!(first.1, 0);
    assert_eq!(
        produce(cluster, id, 0, first, 0, "c1").await,
        ErrorCode::None
    );
    assert_eq!(
        produce(cluster, id, 1, first, 0, "c2").await,
        ErrorCode::None
    );
    let second = end(cluster, id, first, true).await.expect("commit");
    assert_eq!(second, (first.0, 1), "every end bumps the epoch");
    // A retried commit is answered from the record; the other decision is refused.
    assert_eq!(end(cluster, id, first, true).await.expect("retry"), second);
    assert_eq!(
        code(end(cluster, id, first, false).await),
        ErrorCode::InvalidTransactionState
    );
    assert_eq!(
        produce(cluster, id, 0, second, 0, "a1").await,
        ErrorCode::None
    );
    // Delayed writes of epoch 0 after epoch 1 began: refused at a partition
    // of the open transaction and at one that asks the coordinator.
    assert_eq!(
        produce(cluster, id, 0, first, 1, "late-0").await,
        ErrorCode::TransactionAbortable
    );
    assert_ne!(
        produce(cluster, id, 2, first, 0, "late-2").await,
        ErrorCode::None
    );
    let third = end(cluster, id, second, false).await.expect("abort");
    assert_eq!(third, (first.0, 2));
    third
}

/// An open transaction at `third`'s epoch, then a second instance: the
/// first is fenced; the second commits n1.
async fn fencing(cluster: &Cluster, id: &str, third: (i64, i16)) {
    assert_eq!(
        produce(cluster, id, 2, third, 0, "z1").await,
        ErrorCode::None
    );
    let fourth = init(cluster, id, 30_000).await.expect("second instance");
    assert_eq!(fourth.0, third.0);
    assert!(fourth.1 > third.1, "{fourth:?} after {third:?}");
    assert_eq!(
        produce(cluster, id, 3, third, 0, "z2").await,
        ErrorCode::ProducerFenced
    );
    assert_eq!(
        produce(cluster, id, 2, third, 1, "z3").await,
        ErrorCode::TransactionAbortable
    );
    assert_eq!(
        code(end(cluster, id, third, true).await),
        ErrorCode::ProducerFenced
    );
    assert_eq!(
        produce(cluster, id, 3, fourth, 0, "n1").await,
        ErrorCode::None
    );
    let fifth = end(cluster, id, fourth, true).await.expect("commit");
    assert_eq!(fifth, (third.0, fourth.1 + 1));
}

/// Clear refusals that leave nothing behind.
async fn bad_input(cluster: &Cluster) {
    assert_eq!(
        code(end(cluster, "never-initialised", (1, 0), true).await),
        ErrorCode::InvalidTransactionState
    );
    let unknown = DescribeTransactionRequest {
        transactional_id: "never-initialised".into(),
    };
    let described = at_coordinator(cluster, "never-initialised", |mut client| {
        let request = unknown.clone();
        async move { client.describe_transaction(request).await }
    })
    .await;
    assert_eq!(
        described.map(|_| ()).map_err(|error| error.code),
        Err(ErrorCode::InvalidTransactionState)
    );
    let overlong = "x".repeat(250);
    assert_eq!(
        code(init(cluster, &overlong, 1_000).await),
        ErrorCode::InvalidArgument
    );
    let too_long = init(cluster, "bad-timeout", 60_001)
        .await
        .expect_err("above the maximum");
    assert_eq!(too_long.code, ErrorCode::InvalidArgument);
    assert!(too_long.message.contains("max_timeout_ms"), "{too_long:?}");
    assert_eq!(
        code(init(cluster, "bad-timeout", 0).await),
        ErrorCode::InvalidArgument
    );
    let wide = "wide-1";
    let producer = init(cluster, wide, 30_000).await.expect("init");
    for partition in 0..3 {
        let value = format!("w{partition}");
        assert_eq!(
            produce(cluster, wide, partition, producer, 0, &value).await,
            ErrorCode::None
        );
    }
    assert_eq!(
        produce(cluster, wide, 3, producer, 0, "w3").await,
        ErrorCode::TransactionAbortable,
        "a fourth participant (max_participants_per_transaction = 3)"
    );
    end(cluster, wide, producer, false).await.expect("abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_coordinator_finishes_a_prepared_commit_after_kill_9() {
    let mut cluster = start(3).await;
    let id = "prepared-1";
    let (coordinator_id, _) = coordinator(&cluster, id).await.expect("a coordinator");
    // A participant owned by another broker, whose pause holds the markers.
    let routes = owners(&cluster).await;
    let (partition, (participant_owner, _)) = routes
        .iter()
        .enumerate()
        .find(|(_, (owner, _))| *owner != coordinator_id)
        .map(|(index, route)| (index as u32, route.clone()))
        .expect("a partition not owned by the coordinator");
    let index_of = |node: &str| {
        cluster
            .brokers
            .iter()
            .position(|broker| broker.node_id == node)
            .expect("a broker")
    };
    let (coordinator_index, owner_index) =
        (index_of(&coordinator_id), index_of(&participant_owner));

    let producer = init(&cluster, id, 30_000).await.expect("init");
    assert_eq!(
        produce(&cluster, id, partition, producer, 0, "p1").await,
        ErrorCode::None
    );
    cluster.brokers[owner_index].pause();
    let next = end(&cluster, id, producer, true).await;
    let prepared = describe(&cluster, id).await;
    cluster.brokers[coordinator_index].kill();
    cluster.brokers[owner_index].resume();
    assert_eq!(
        next.expect("commit answered once prepared"),
        (producer.0, 1)
    );
    assert_eq!(
        prepared.state,
        TransactionState::PrepareCommit as i32,
        "the markers were held back"
    );

    // The nameserver moves the log partition once the session lapses.
    let deadline = Instant::now() + EVENTUALLY;
    while coordinator(&cluster, id).await.expect("a coordinator").0 == coordinator_id {
        assert!(Instant::now() < deadline, "the coordinator never moved");
        tokio::time::sleep(POLL).await;
    }
    wait_for_state(&cluster, id, TransactionState::CompleteCommit).await;
    assert_eq!(read_committed(&cluster, &set(&["p1"])).await, set(&["p1"]));
    // The next transaction goes on at the epoch the commit returned.
    assert_eq!(
        produce(&cluster, id, partition, (producer.0, 1), 0, "p2").await,
        ErrorCode::None
    );
    end(&cluster, id, (producer.0, 1), true)
        .await
        .expect("commit");
    assert_eq!(
        read_committed(&cluster, &set(&["p1", "p2"])).await,
        set(&["p1", "p2"])
    );
}
