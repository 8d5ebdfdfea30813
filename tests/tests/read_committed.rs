//! ADR 0016 stage 1 at process level: transactional batches, markers
//! written by hand through `WriteTxnMarkers` (as a coordinator would), and
//! read-committed reads, across `kill -9` of the partition's owner. The
//! brokers run `[transactions] enabled = true`, so each producer takes its
//! id from `InitProducerId` and the partition verifies its first batch
//! with the coordinator (stage 2); the coordinators' own markers stay out
//! of the way (long timeouts, and the open transaction's coordinator is
//! not the broker killed).
//!
//! The log of one partition gets, interleaved, a plain record, a committed
//! transaction (A), an aborted one (B), an open one (C) and a plain record
//! after C's first batch. A read-committed consumer sees the plain record
//! and A's records only: never B's, nothing at or past C's first offset
//! (the last stable offset); a read-uncommitted one sees every record and
//! no marker. After the owner is killed, the new owner rebuilds the
//! transaction state from the log and answers the same; once C's COMMIT
//! marker is written there, C's record and the later plain record appear.

use futures::StreamExt;
use sluice_client::{Admin, Consumer, ConsumerConfig, Isolation, StartOffset};
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    AllocateProducerIdRequest, IsolationLevel, ListOffsetsRequest, OffsetSpec, ProduceRequest,
    TopicPartitions, WriteTxnMarkersRequest,
};
use sluice_proto::ErrorCode;
use sluice_tests::cluster::{wait_until_writable, Cluster, ClusterSpec};
use sluice_tests::transactions;
use std::time::{Duration, Instant};

const TOPIC: &str = "ledger";
const TRANSACTIONAL_ID: &str = "test-transactions";
/// Longer than the test: the coordinators never abort by timeout here.
const TRANSACTION_TIMEOUT_MS: u64 = 300_000;

/// `(broker id, address)` of the partition's serving owner, waiting for
/// one.
async fn owner(cluster: &Cluster) -> (String, String) {
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(description) = admin.describe_topic(TOPIC).await {
            let route = description
                .partitions
                .first()
                .and_then(|partition| partition.route.clone());
            if let Some(route) = route.filter(|route| !route.broker_address.is_empty()) {
                return (route.broker_id, route.broker_address);
            }
        }
        assert!(Instant::now() < deadline, "no owner of {TOPIC}/0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn broker(cluster: &Cluster) -> BrokerClient<tonic::transport::Channel> {
    let (_, address) = owner(cluster).await;
    BrokerClient::new(cluster.channel(&address))
}

async fn producer_id(cluster: &Cluster) -> i64 {
    let mut nameserver = NameServerClient::new(cluster.channel(&cluster.nameservers[0].url()));
    nameserver
        .allocate_producer_id(AllocateProducerIdRequest {})
        .await
        .expect("a producer id")
        .into_inner()
        .producer_id as i64
}

/// One record `value`; transactional for `Some((pid, epoch, sequence))`
/// with the flag, idempotent without it.
fn batch(value: &str, producer: Option<(i64, i16, i32)>, transactional: bool) -> bytes::Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    if let Some((producer_id, epoch, sequence)) = producer {
        builder = builder.with_producer(producer_id, epoch, sequence);
    }
    if transactional {
        builder = builder.transactional();
    }
    builder.push(&RecordData {
        value: Some(value.to_string().into()),
        ..RecordData::default()
    });
    builder.build()
}

/// Produces one batch at the owner; the answer's code, retrying while the
/// partition moves.
async fn produce(cluster: &Cluster, batch: bytes::Bytes, transactional_id: &str) -> ErrorCode {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = ProduceRequest {
            request_id: 1,
            topic: TOPIC.into(),
            partition: 0,
            batch: batch.clone(),
            resume: false,
            transactional_id: transactional_id.into(),
        };
        let answer = match broker(cluster)
            .await
            .produce(futures::stream::iter([request]))
            .await
        {
            Ok(answers) => match answers.into_inner().next().await {
                Some(Ok(answer)) => {
                    ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal)
                }
                _ => ErrorCode::Unavailable,
            },
            Err(_) => ErrorCode::Unavailable,
        };
        let moving = matches!(answer, ErrorCode::NotOwner | ErrorCode::Unavailable);
        if !moving || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes the marker of `(producer_id, 0)` at the owner, retrying while
/// the partition moves; the partition's code.
async fn marker(cluster: &Cluster, producer_id: i64, commit: bool) -> ErrorCode {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = WriteTxnMarkersRequest {
            transactional_id: TRANSACTIONAL_ID.into(),
            producer_id,
            txn_epoch: 0,
            commit,
            coordinator_epoch: 1,
            participants: vec![TopicPartitions {
                topic: TOPIC.into(),
                partitions: vec![0],
            }],
            subscriptions: Vec::new(),
        };
        let code = match broker(cluster).await.write_txn_markers(request).await {
            Ok(answer) => answer
                .into_inner()
                .results
                .first()
                .map_or(ErrorCode::Internal, |result| {
                    ErrorCode::try_from(result.error).unwrap_or(ErrorCode::Internal)
                }),
            Err(status) => sluice_proto::SluiceError::from_status(&status).code,
        };
        let moving = matches!(
            code,
            ErrorCode::NotOwner | ErrorCode::Unavailable | ErrorCode::UnknownPartition
        );
        if !moving || Instant::now() >= deadline {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every record value a consumer with `isolation` reads from offset 0,
/// waiting until `expected` many arrived, then 2 s more for any extra.
async fn read(cluster: &Cluster, isolation: Isolation, expected: usize) -> Vec<String> {
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            isolation,
            ..ConsumerConfig::default()
        },
        vec![(TOPIC.to_string(), 0, StartOffset::Earliest)],
    )
    .await
    .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut values = Vec::new();
    loop {
        let wait = if values.len() >= expected {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        match consumer.recv_timeout(wait).await.expect("read") {
            Some(record) => {
                let value = record.value.expect("a value");
                values.push(String::from_utf8(value.to_vec()).expect("utf8"));
            }
            None if values.len() >= expected => break,
            None => assert!(
                Instant::now() < deadline,
                "{isolation:?}: only {values:?} of {expected} records arrived"
            ),
        }
    }
    consumer.close().await.expect("close");
    values
}

/// The record values `sluice consume --isolation ISOLATION` prints from
/// offset 0 (it stops after 3 s without a record).
fn cli_consume(cluster: &Cluster, isolation: &str) -> Vec<String> {
    let output = cluster
        .cli()
        .args(["consume", TOPIC, "--partition", "0", "--offset", "0"])
        .args(["--isolation", isolation])
        .output()
        .expect("run sluice consume");
    assert!(
        output.status.success(),
        "sluice consume --isolation {isolation}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `consumer` resolved its start position (its first fetch
/// went out), polling briefly: nothing is readable yet.
async fn wait_for_start(consumer: &mut Consumer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.position(TOPIC, 0).is_none() {
        assert!(Instant::now() < deadline, "the start was never resolved");
        let nothing = consumer.recv_timeout(Duration::from_millis(200)).await;
        assert!(matches!(nothing, Ok(None)), "{nothing:?}");
    }
}

/// The next `count` record values `consumer` receives, within 60 s.
async fn receive(consumer: &mut Consumer, count: usize) -> Vec<String> {
    let mut values = Vec::new();
    while values.len() < count {
        let record = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("a record in time")
            .expect("read");
        let value = record.value.expect("a value");
        values.push(String::from_utf8(value.to_vec()).expect("utf8"));
    }
    values
}

async fn latest(cluster: &Cluster, isolation: IsolationLevel) -> (u64, Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = ListOffsetsRequest {
            topic: TOPIC.into(),
            partition: 0,
            spec: OffsetSpec::Latest as i32,
            timestamp_ms: 0,
            isolation: isolation as i32,
        };
        if let Ok(answer) = broker(cluster).await.list_offsets(request).await {
            let answer = answer.into_inner();
            return (answer.offset, answer.last_stable_offset);
        }
        assert!(Instant::now() < deadline, "ListOffsets never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A record to produce: value, (pid, epoch, sequence), transactional,
/// transactional id.
type Step<'a> = (&'a str, Option<(i64, i16, i32)>, bool, &'a str);

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_committed_never_sees_aborted_or_open_transactions_across_a_broker_kill() {
    let mut cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        broker_config: "[transactions]\nenabled = true\n".into(),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, 1).await;
    wait_until_writable(cluster.client_config(), TOPIC).await;
    // C stays open across the kill: its coordinator must survive it, or
    // the takeover would abort C (ADR 0016 §2.3).
    let (ledger_owner, _) = owner(&cluster).await;
    let mut c_id = None;
    for candidate in 0..64 {
        let name = format!("{TRANSACTIONAL_ID}-c{candidate}");
        let (coordinator, _) = transactions::coordinator(&cluster, &name)
            .await
            .expect("a coordinator");
        if coordinator != ledger_owner {
            c_id = Some(name);
            break;
        }
    }
    let c_id = c_id.expect("a transactional id coordinated away from the ledger's owner");
    let (a_id, b_id) = (
        format!("{TRANSACTIONAL_ID}-a"),
        format!("{TRANSACTIONAL_ID}-b"),
    );
    let init = |id: String| {
        let cluster = &cluster;
        async move {
            let (producer_id, epoch) = transactions::init(cluster, &id, TRANSACTION_TIMEOUT_MS)
                .await
                .expect("InitProducerId");
            assert_eq!(epoch, 0, "a new transactional id starts at epoch 0");
            producer_id
        }
    };
    let (a, b, c, plain) = (
        init(a_id.clone()).await,
        init(b_id.clone()).await,
        init(c_id.clone()).await,
        producer_id(&cluster).await,
    );
    let steps: [Step; 6] = [
        ("p0", Some((plain, 0, 0)), false, ""),
        ("a1", Some((a, 0, 0)), true, &a_id),
        ("b1", Some((b, 0, 0)), true, &b_id),
        ("a2", Some((a, 0, 1)), true, &a_id),
        ("c1", Some((c, 0, 0)), true, &c_id),
        ("p1", Some((plain, 0, 1)), false, ""),
    ];
    for (value, producer, transactional, id) in steps {
        let code = produce(&cluster, batch(value, producer, transactional), id).await;
        assert_eq!(code, ErrorCode::None, "producing {value}");
    }
    assert_eq!(marker(&cluster, a, true).await, ErrorCode::None);
    assert_eq!(marker(&cluster, b, false).await, ErrorCode::None);
    // A retried marker is answered as applied, appending nothing.
    assert_eq!(marker(&cluster, b, false).await, ErrorCode::None);

    // Bad input: a delayed batch of the aborted transaction, a plain
    // batch of a producer whose transaction is open, a transactional batch
    // without an id, a control batch from a client.
    let late = produce(&cluster, batch("b2", Some((b, 0, 1)), true), &b_id).await;
    assert_eq!(late, ErrorCode::TransactionAbortable);
    let plain_of_open = produce(&cluster, batch("c-plain", Some((c, 0, 1)), false), "").await;
    assert_eq!(plain_of_open, ErrorCode::InvalidTransactionState);
    let without_id = produce(&cluster, batch("x", Some((a, 1, 0)), true), "").await;
    assert_eq!(without_id, ErrorCode::InvalidArgument);
    let forged = sluice_proto::batch::control::build_marker(
        &sluice_proto::batch::control::Marker {
            producer_id: c,
            txn_epoch: 0,
            commit: false,
            coordinator_epoch: 9,
            first_offset: None,
        },
        1_700_000_000_000,
    )
    .expect("a marker");
    assert_eq!(produce(&cluster, forged, "").await, ErrorCode::CorruptBatch);

    let committed = strings(&["p0", "a1", "a2"]);
    let everything = strings(&["p0", "a1", "b1", "a2", "c1", "p1"]);
    assert_eq!(read(&cluster, Isolation::ReadCommitted, 3).await, committed);
    assert_eq!(
        read(&cluster, Isolation::ReadUncommitted, 6).await,
        everything
    );
    // The CLI's --isolation: the same two views.
    assert_eq!(cli_consume(&cluster, "read_committed"), committed);
    assert_eq!(cli_consume(&cluster, "read_uncommitted"), everything);
    // c1 is at offset 4: the last stable offset.
    assert_eq!(
        latest(&cluster, IsolationLevel::ReadCommitted).await,
        (4, Some(4))
    );
    let (high_watermark, _) = latest(&cluster, IsolationLevel::ReadUncommitted).await;
    assert_eq!(high_watermark, 8, "six records and two markers");

    let (victim, _) = owner(&cluster).await;
    let index = cluster
        .brokers
        .iter()
        .position(|service| service.node_id == victim)
        .expect("the owner is one of the brokers");
    cluster.brokers[index].kill();
    // The new owner rebuilt the state from the log: the same answers.
    assert_eq!(read(&cluster, Isolation::ReadCommitted, 3).await, committed);
    assert_eq!(
        latest(&cluster, IsolationLevel::ReadCommitted).await,
        (4, Some(4))
    );
    let (new_owner, _) = owner(&cluster).await;
    assert_ne!(new_owner, victim, "the partition moved");
    let late = produce(&cluster, batch("b2", Some((b, 0, 1)), true), &b_id).await;
    assert_eq!(late, ErrorCode::TransactionAbortable, "after the takeover");

    // A read-committed consumer starting at Latest while C is open starts
    // at the last stable offset (4), not the high watermark (8): once C
    // commits, it reads C's record and the plain one after it.
    let mut from_latest = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            isolation: Isolation::ReadCommitted,
            ..ConsumerConfig::default()
        },
        vec![(TOPIC.to_string(), 0, StartOffset::Latest)],
    )
    .await
    .expect("consumer from latest");
    wait_for_start(&mut from_latest).await;

    assert_eq!(marker(&cluster, c, true).await, ErrorCode::None);
    assert_eq!(
        receive(&mut from_latest, 2).await,
        strings(&["c1", "p1"]),
        "a read-committed consumer from Latest gets the transaction open when it started"
    );
    from_latest.close().await.expect("close");
    let all_but_aborted = strings(&["p0", "a1", "a2", "c1", "p1"]);
    assert_eq!(
        read(&cluster, Isolation::ReadCommitted, 5).await,
        all_but_aborted
    );
    assert_eq!(
        read(&cluster, Isolation::ReadUncommitted, 6).await,
        everything
    );
    assert_eq!(
        latest(&cluster, IsolationLevel::ReadCommitted).await,
        (9, Some(9))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_are_refused_while_disabled() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic(TOPIC, 1).await;
    wait_until_writable(cluster.client_config(), TOPIC).await;
    let pid = producer_id(&cluster).await;
    let code = produce(
        &cluster,
        batch("t", Some((pid, 0, 0)), true),
        TRANSACTIONAL_ID,
    )
    .await;
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert_eq!(
        marker(&cluster, pid, true).await,
        ErrorCode::InvalidArgument
    );
    // Read-committed reads work on a topic without transactions.
    let plain = produce(&cluster, batch("p", None, false), "").await;
    assert_eq!(plain, ErrorCode::None);
    assert_eq!(
        read(&cluster, Isolation::ReadCommitted, 1).await,
        strings(&["p"])
    );
}
