//! ADR 0016 stage 5 at process level: transactional acknowledgements on a
//! shared subscription (Pulsar's pending acks), against real etcd, stores
//! and brokers run with `[transactions] enabled = true`.
//!
//! - A worker acknowledges inputs and writes outputs in transactions:
//!   after a commit the inputs are acknowledged (never delivered again)
//!   and the outputs visible to read-committed readers; after an abort the
//!   inputs come again (delivery count 2) and the outputs never show. While
//!   pending, the message's plain ack is refused DELIVERY_EXPIRED.
//! - A worker process `kill -9`ed mid-transaction: its pending inputs are
//!   not delivered to the replacement consumer until the replacement's
//!   producer (same transactional id) fences the dead one, which aborts its
//!   transaction; then they are, and the dead worker's outputs never show
//!   to read-committed readers (they are in the log: read-uncommitted sees
//!   them).
//! - An ack in a transaction by a consumer that does not hold the message
//!   is refused DELIVERY_EXPIRED; a forged producer id, a transaction with
//!   a cumulative offset, and an ack outside a transaction are refused.

use futures::StreamExt;
use sluice_client::{
    ClientError, Consumer, ConsumerConfig, Isolation, Message, Producer, ProducerConfig, Record,
    StartOffset, Subscriber,
};
use sluice_proto::v1::subscribe_request::Request as ConsumerRequest;
use sluice_proto::v1::subscribe_response::Response as ToConsumer;
use sluice_proto::v1::{
    AckReceipt, SubscribeAck, SubscribeRequest, SubscriptionType, TransactionContext,
};
use sluice_proto::ErrorCode;
use sluice_tests::cluster::{binary, wait_until_writable, Cluster, ClusterSpec};
use sluice_tests::subscription_kit::{
    open_request, produce, raw_stream, stream_error, subscriber_config, value_of,
};
use sluice_tests::transactions::coordinator;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INPUTS: &str = "ack-inputs";
const OUTPUTS: &str = "ack-outputs";
const SUBSCRIPTION: &str = "workers";
/// Bound on every wait for the cluster to converge (not a timing claim).
const EVENTUALLY: Duration = Duration::from_secs(40);

async fn start() -> Cluster {
    let cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        broker_config: "[transactions]\nenabled = true\nmax_timeout_ms = 60000\n".into(),
        ..ClusterSpec::default()
    })
    .await;
    for topic in [INPUTS, OUTPUTS] {
        cluster.create_topic(topic, 1).await;
        wait_until_writable(cluster.client_config(), topic).await;
    }
    cluster
}

async fn producer(cluster: &Cluster, id: &str) -> Producer {
    Producer::new(ProducerConfig {
        client: cluster.client_config(),
        transactional_id: Some(id.into()),
        transaction_timeout_ms: 30_000,
        delivery_timeout_ms: 20_000,
        ..ProducerConfig::default()
    })
    .await
    .expect("transactional producer")
}

async fn subscriber(cluster: &Cluster) -> Subscriber {
    Subscriber::connect(subscriber_config(
        cluster,
        INPUTS,
        SUBSCRIPTION,
        SubscriptionType::Shared,
    ))
    .await
    .expect("subscriber")
}

/// The next `count` messages (within the convergence bound).
async fn take(subscriber: &Subscriber, count: usize) -> Vec<Message> {
    let deadline = Instant::now() + EVENTUALLY;
    let mut messages = Vec::new();
    while messages.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} messages came",
            messages.len()
        );
        if let Some(message) = subscriber
            .recv_timeout(Duration::from_millis(500))
            .await
            .expect("recv")
        {
            messages.push(message);
        }
    }
    messages
}

/// Writes `prefix-<value>` for each message and acknowledges it, in one
/// transaction; commits or aborts it.
async fn process(
    subscriber: &Subscriber,
    producer: &Producer,
    messages: &[Message],
    prefix: &str,
    commit: bool,
) {
    producer.begin_transaction().expect("begin");
    for message in messages {
        let output = format!("{prefix}-{}", value_of(message));
        producer
            .enqueue(Record::new(OUTPUTS, output))
            .await
            .expect("enqueue");
        subscriber
            .ack_in_transaction(message, producer)
            .await
            .expect("ack in the transaction");
    }
    if commit {
        producer.commit_transaction().await.expect("commit");
    } else {
        producer.abort_transaction().await.expect("abort");
    }
}

/// Every value of the output topic read with `isolation`, once `at_least`
/// arrived and 2 s passed without more.
async fn outputs(cluster: &Cluster, isolation: Isolation, at_least: usize) -> Vec<String> {
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            isolation,
            ..ConsumerConfig::default()
        },
        vec![(OUTPUTS.to_string(), 0, StartOffset::Earliest)],
    )
    .await
    .expect("consumer");
    let deadline = Instant::now() + EVENTUALLY;
    let mut values = Vec::new();
    loop {
        let complete = values.len() >= at_least;
        let wait = Duration::from_millis(if complete { 2_000 } else { 500 });
        match consumer.recv_timeout(wait).await.expect("read") {
            Some(record) => values
                .push(String::from_utf8(record.value.expect("a value").to_vec()).expect("utf-8")),
            None if complete => return values,
            None => assert!(
                Instant::now() < deadline,
                "only {} outputs arrived",
                values.len()
            ),
        }
    }
}

/// Nothing arrives at `subscriber` for `quiet`.
#[track_caller]
fn nothing_comes(
    subscriber: &Subscriber,
    quiet: Duration,
) -> impl std::future::Future<Output = ()> + '_ {
    let caller = std::panic::Location::caller();
    async move {
        if let Some(message) = subscriber.recv_timeout(quiet).await.expect("recv") {
            panic!(
                "offset {} (value {}, delivery {}) was delivered again (checked at {caller})",
                message.offset,
                value_of(&message),
                message.delivery_count
            );
        }
    }
}

fn expected(prefix: &str, values: impl IntoIterator<Item = u64>) -> BTreeSet<String> {
    values
        .into_iter()
        .map(|value| format!("{prefix}-{value}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_acknowledges_the_inputs_and_abort_delivers_them_again() {
    const MESSAGES: u64 = 30;
    let cluster = start().await;
    produce(&cluster, INPUTS, MESSAGES, |_| None, |_, record| record).await;
    let subscriber = subscriber(&cluster).await;
    let producer = producer(&cluster, "worker-a").await;

    let committed = take(&subscriber, 5).await;
    process(&subscriber, &producer, &committed, "out", true).await;

    let aborted = take(&subscriber, 5).await;
    producer.begin_transaction().expect("begin");
    for message in &aborted {
        producer
            .enqueue(Record::new(
                OUTPUTS,
                format!("aborted-{}", value_of(message)),
            ))
            .await
            .expect("enqueue");
        subscriber
            .ack_in_transaction(message, &producer)
            .await
            .expect("ack in the transaction");
    }
    match subscriber.ack(&aborted[0]).await {
        Err(ClientError::Server(error)) if error.code == ErrorCode::DeliveryExpired => {}
        other => panic!("a plain ack of a pending message must be refused, got {other:?}"),
    }
    producer.abort_transaction().await.expect("abort");

    // Everything else, committed five at a time; the aborted inputs come
    // again among them, the committed ones never.
    let committed_values: BTreeSet<u64> = committed.iter().map(value_of).collect();
    let aborted_values: BTreeSet<u64> = aborted.iter().map(value_of).collect();
    let mut done: BTreeSet<u64> = committed_values.clone();
    let mut redeliveries = BTreeMap::new();
    while (done.len() as u64) < MESSAGES {
        let remaining = (MESSAGES as usize - done.len()).min(5);
        let batch = take(&subscriber, remaining).await;
        for message in &batch {
            let value = value_of(message);
            assert!(
                !committed_values.contains(&value),
                "input {value} was acknowledged in a committed transaction and came again"
            );
            assert!(done.insert(value), "input {value} came after its commit");
            if aborted_values.contains(&value) {
                redeliveries.insert(value, message.delivery_count);
            }
        }
        process(&subscriber, &producer, &batch, "out", true).await;
    }
    assert_eq!(
        redeliveries.keys().copied().collect::<BTreeSet<_>>(),
        aborted_values,
        "every aborted input is delivered again"
    );
    assert!(
        redeliveries.values().all(|count| *count >= 2),
        "the aborted deliveries count: {redeliveries:?}"
    );
    nothing_comes(&subscriber, Duration::from_secs(3)).await;

    let read_committed = outputs(&cluster, Isolation::ReadCommitted, MESSAGES as usize).await;
    assert_eq!(read_committed.len() as u64, MESSAGES, "{read_committed:?}");
    assert_eq!(
        read_committed.into_iter().collect::<BTreeSet<_>>(),
        expected("out", 0..MESSAGES)
    );
    let everything = outputs(&cluster, Isolation::ReadUncommitted, MESSAGES as usize + 5).await;
    assert_eq!(
        everything
            .iter()
            .filter(|value| value.starts_with("aborted-"))
            .count(),
        5,
        "the aborted outputs were written (and never read committed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_pending_inputs_go_to_its_replacement_and_its_outputs_never_show() {
    const MESSAGES: u64 = 20;
    const TAKEN: usize = 5;
    let cluster = start().await;
    produce(&cluster, INPUTS, MESSAGES, |_| None, |_, record| record).await;
    let mut command = Command::new(binary("sluice-txn-ack-worker"));
    for bootstrap in cluster.bootstrap() {
        command.arg("--bootstrap").arg(bootstrap);
    }
    if cluster.spec.tls {
        command.arg("--tls-dir").arg(cluster.tls_dir());
    }
    let mut worker = command
        .args(["--topic", INPUTS, "--subscription", SUBSCRIPTION])
        .args(["--output-topic", OUTPUTS, "--transactional-id", "worker-k"])
        .args(["--take", &TAKEN.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the worker");
    let stdout = worker.stdout.take().expect("worker stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(EVENTUALLY, line)
        .await
        .expect("the worker acknowledged in time")
        .expect("reader")
        .expect("a line");
    let pending: BTreeSet<u64> = line
        .trim()
        .strip_prefix("PENDING ")
        .unwrap_or_else(|| panic!("unexpected worker output {line:?}"))
        .split(',')
        .map(|value| value.parse().expect("a number"))
        .collect();
    assert_eq!(pending.len(), TAKEN);
    worker.kill().expect("kill -9 the worker");
    worker.wait().expect("reap the worker");

    // The replacement's consumer gets everything but the pending inputs:
    // the dead worker's transaction is still open (timeout 60 s).
    let subscriber = subscriber(&cluster).await;
    let others = take(&subscriber, MESSAGES as usize - TAKEN).await;
    let other_values: BTreeSet<u64> = others.iter().map(value_of).collect();
    assert!(
        other_values.is_disjoint(&pending),
        "a pending input was delivered while its transaction was open"
    );
    nothing_comes(&subscriber, Duration::from_secs(2)).await;

    // Its producer takes the transactional id: the dead worker is fenced,
    // its transaction aborted, its inputs delivered again.
    let producer = producer(&cluster, "worker-k").await;
    let again = take(&subscriber, TAKEN).await;
    assert_eq!(again.iter().map(value_of).collect::<BTreeSet<_>>(), pending);
    assert!(again.iter().all(|message| message.delivery_count >= 2));
    let all: Vec<Message> = others.into_iter().chain(again).collect();
    process(&subscriber, &producer, &all, "replacement", true).await;
    nothing_comes(&subscriber, Duration::from_secs(3)).await;

    let read_committed = outputs(&cluster, Isolation::ReadCommitted, MESSAGES as usize).await;
    assert_eq!(read_committed.len() as u64, MESSAGES, "{read_committed:?}");
    assert_eq!(
        read_committed.into_iter().collect::<BTreeSet<_>>(),
        expected("replacement", 0..MESSAGES)
    );
    let everything = outputs(
        &cluster,
        Isolation::ReadUncommitted,
        MESSAGES as usize + TAKEN,
    )
    .await;
    let zombies: BTreeSet<String> = everything
        .into_iter()
        .filter(|value| value.starts_with("zombie-"))
        .collect();
    assert_eq!(zombies, expected("zombie", pending.iter().copied()));
}

/// The next receipt on a raw stream.
async fn receipt(
    responses: &mut tonic::Streaming<sluice_proto::v1::SubscribeResponse>,
) -> AckReceipt {
    loop {
        let response = tokio::time::timeout(EVENTUALLY, responses.next())
            .await
            .expect("an answer in time")
            .expect("the stream goes on")
            .expect("no stream error");
        if let Some(ToConsumer::AckReceipt(receipt)) = response.response {
            return receipt;
        }
    }
}

fn transactional_ack(offset: u64, context: &TransactionContext) -> SubscribeRequest {
    SubscribeRequest {
        request: Some(ConsumerRequest::Ack(SubscribeAck {
            request_id: offset + 100,
            offsets: vec![offset],
            cumulative_offset: None,
            transaction: Some(context.clone()),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_holder_acknowledges_in_a_transaction_and_bad_input_is_refused() {
    let cluster = start().await;
    produce(&cluster, INPUTS, 3, |_| None, |_, record| record).await;
    let holder = subscriber(&cluster).await;
    let held = take(&holder, 3).await;
    let producer = producer(&cluster, "worker-h").await;
    match holder.ack_in_transaction(&held[0], &producer).await {
        Err(ClientError::InvalidTransactionState(_)) => {}
        other => panic!("an ack outside a transaction must be refused, got {other:?}"),
    }
    producer.begin_transaction().expect("begin");
    let (producer_id, epoch) = producer.transactional_identity().expect("identity");
    let context = TransactionContext {
        transactional_id: "worker-h".into(),
        producer_id,
        producer_epoch: i32::from(epoch),
    };

    // Another consumer (no credit: it holds nothing) acks the holder's
    // message inside the same, valid transaction.
    let (requests, mut responses) =
        raw_stream(&cluster, open_request(INPUTS, SUBSCRIPTION, 0)).await;
    requests
        .send(transactional_ack(held[0].offset, &context))
        .await
        .expect("send");
    let refused = receipt(&mut responses).await;
    assert!(refused.acknowledged.is_empty());
    assert_eq!(refused.rejected.len(), 1);
    assert_eq!(refused.rejected[0].error, ErrorCode::DeliveryExpired as i32);

    // The holder can, and the message is then pending: the holder's plain
    // ack and the other consumer's transactional ack are refused.
    holder
        .ack_in_transaction(&held[0], &producer)
        .await
        .expect("the holder acks in the transaction");
    match holder.ack(&held[0]).await {
        Err(ClientError::Server(error)) if error.code == ErrorCode::DeliveryExpired => {}
        other => panic!("a pending message's plain ack must be refused, got {other:?}"),
    }
    requests
        .send(transactional_ack(held[1].offset, &context))
        .await
        .expect("send");
    let refused = receipt(&mut responses).await;
    assert_eq!(refused.rejected[0].error, ErrorCode::DeliveryExpired as i32);
    producer.commit_transaction().await.expect("commit");

    // A transaction with a cumulative offset ends the stream.
    let (requests, mut responses) =
        raw_stream(&cluster, open_request(INPUTS, SUBSCRIPTION, 0)).await;
    let mut cumulative = transactional_ack(held[1].offset, &context);
    if let Some(ConsumerRequest::Ack(ack)) = &mut cumulative.request {
        ack.cumulative_offset = Some(held[1].offset);
    }
    requests.send(cumulative).await.expect("send");
    assert_eq!(
        stream_error(&mut responses).await.code,
        ErrorCode::InvalidArgument
    );

    // A forged producer id (not issued to this principal) ends the stream.
    let (requests, mut responses) =
        raw_stream(&cluster, open_request(INPUTS, SUBSCRIPTION, 0)).await;
    let forged = TransactionContext {
        producer_id: producer_id ^ 0x5a5a,
        ..context.clone()
    };
    requests
        .send(transactional_ack(held[1].offset, &forged))
        .await
        .expect("send");
    assert_eq!(
        stream_error(&mut responses).await.code,
        ErrorCode::NotAuthorized
    );

    // The committed ack holds: held[0] is never delivered again, the
    // others are once the holder leaves.
    drop(holder);
    let next = subscriber(&cluster).await;
    let rest = take(&next, 2).await;
    assert_eq!(
        rest.iter().map(value_of).collect::<BTreeSet<_>>(),
        held[1..].iter().map(value_of).collect::<BTreeSet<_>>()
    );
    nothing_comes(&next, Duration::from_secs(3)).await;
}

/// The broker owning the input partition.
async fn input_owner(cluster: &Cluster) -> String {
    cluster
        .admin()
        .await
        .describe_topic(INPUTS)
        .await
        .expect("describe")
        .partitions
        .first()
        .and_then(|partition| partition.route.as_ref())
        .map(|route| route.broker_id.clone())
        .expect("an owner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_owner_keeps_acks_pending_until_the_marker() {
    const MESSAGES: u64 = 20;
    const TAKEN: usize = 5;
    let mut cluster = start().await;
    produce(&cluster, INPUTS, MESSAGES, |_| None, |_, record| record).await;
    // A transactional id coordinated by the broker that survives, so the
    // transaction stays open across the kill (a killed coordinator's
    // successor aborts open transactions at once).
    let victim = input_owner(&cluster).await;
    let mut transactional_id = None;
    for attempt in 0..64 {
        let id = format!("worker-o-{attempt}");
        let (coordinator, _) = coordinator(&cluster, &id).await.expect("coordinator");
        if coordinator != victim {
            transactional_id = Some(id);
            break;
        }
    }
    let transactional_id = transactional_id.expect("an id coordinated elsewhere");
    let worker = subscriber(&cluster).await;
    let producer = producer(&cluster, &transactional_id).await;
    let taken = take(&worker, TAKEN).await;
    producer.begin_transaction().expect("begin");
    for message in &taken {
        producer
            .enqueue(Record::new(OUTPUTS, format!("owner-{}", value_of(message))))
            .await
            .expect("enqueue");
        worker
            .ack_in_transaction(message, &producer)
            .await
            .expect("ack in the transaction");
    }
    drop(worker);
    let pending: BTreeSet<u64> = taken.iter().map(value_of).collect();

    // Kill -9 the owner of the input partition; the other broker takes it
    // over, loads the cursor with its pending section and waits for the
    // marker: the pending inputs are not delivered, the others are.
    cluster
        .brokers
        .iter_mut()
        .find(|broker| broker.node_id == victim)
        .expect("the owner is one of ours")
        .kill();
    let replacement = subscriber(&cluster).await;
    let others = take(&replacement, MESSAGES as usize - TAKEN).await;
    assert!(
        others
            .iter()
            .all(|message| !pending.contains(&value_of(message))),
        "a pending input was delivered by the new owner before its marker"
    );
    nothing_comes(&replacement, Duration::from_secs(2)).await;

    // The commit's marker reaches the new owner: the inputs are
    // acknowledged for good and the outputs visible.
    let mut committed = producer.commit_transaction().await;
    for _attempt in 0..5 {
        match &committed {
            Err(error) if error.is_retriable() => {
                committed = producer.commit_transaction().await;
            }
            _ => break,
        }
    }
    committed.expect("commit");
    nothing_comes(&replacement, Duration::from_secs(3)).await;
    let visible = outputs(&cluster, Isolation::ReadCommitted, TAKEN).await;
    assert_eq!(
        visible.into_iter().collect::<BTreeSet<_>>(),
        expected("owner", pending.iter().copied())
    );
}
