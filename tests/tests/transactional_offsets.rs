//! ADR 0016 stage 4 at process level: transactional offset commits
//! (KIP-447) against real etcd, stores and brokers run with
//! `[transactions] enabled = true`.
//!
//! - A consumer's positions committed in a producer's transaction: while
//!   the transaction is open FetchOffsets with `require_stable` answers
//!   UNSTABLE_OFFSET_COMMIT and a plain commit of the partition is refused
//!   CONCURRENT_TRANSACTIONS; after the commit the offsets are committed
//!   (FetchOffsets, and a new consumer of the group starts there); a later
//!   transaction's offsets are dropped by its abort, and
//!   `rewind_to_committed` re-reads from the committed offsets.
//! - A member that lost a partition in a rebalance cannot commit it in a
//!   transaction (the transaction becomes abortable); its own partition it
//!   can.
//! - `kill -9` of the broker owning the group's offsets partition while
//!   the offsets are pending and the markers are held back (the broker is
//!   paused): the new owner replays them as pending, and once the re-sent
//!   markers land a committed transaction's offsets are committed and an
//!   aborted one's dropped.

use sluice_client::{
    ClientError, Consumer, ConsumerConfig, ErrorCode, GroupMetadata, Producer, ProducerConfig,
    Record, TopicPartitionOffset,
};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, FindCoordinatorRequest, PartitionOffset,
    TopicPartitions, TransactionContext,
};
use sluice_proto::SluiceError;
use sluice_tests::cluster::{wait_until_writable, Cluster, ClusterSpec};
use sluice_tests::transactions::coordinator;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const INPUT: &str = "in";
const OUTPUT: &str = "out";
const PARTITIONS: u32 = 2;
const RECORDS_PER_PARTITION: usize = 20;
/// Bound on every wait for the cluster to converge (not a timing claim).
const EVENTUALLY: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(100);

/// What FetchOffsets answered per input partition: the offset, or the
/// partition's error code.
type Answer = BTreeMap<u32, Result<u64, ErrorCode>>;

async fn start(brokers: usize) -> Cluster {
    let cluster = Cluster::start(ClusterSpec {
        brokers,
        broker_config: "[transactions]\nenabled = true\nmax_timeout_ms = 60000\n".into(),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(INPUT, PARTITIONS).await;
    cluster.create_topic(OUTPUT, 1).await;
    wait_until_writable(cluster.client_config(), INPUT).await;
    wait_until_writable(cluster.client_config(), OUTPUT).await;
    let records = (0..RECORDS_PER_PARTITION)
        .flat_map(|index| {
            (0..PARTITIONS).map(move |partition| {
                Record::new(INPUT, format!("{partition}-{index}")).with_partition(partition)
            })
        })
        .collect();
    cluster.produce_acknowledged(records).await;
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

async fn consumer(cluster: &Cluster, group: &str) -> Consumer {
    Consumer::subscribe(
        ConsumerConfig {
            client: cluster.client_config(),
            group: Some(group.into()),
            auto_commit: false,
            ..ConsumerConfig::default()
        },
        &[INPUT],
    )
    .await
    .expect("consumer")
}

/// Receives `count` records; the first offset seen per partition.
async fn receive(consumer: &mut Consumer, count: usize) -> BTreeMap<u32, u64> {
    let deadline = Instant::now() + EVENTUALLY;
    let mut first = BTreeMap::new();
    let mut received = 0;
    while received < count {
        assert!(
            Instant::now() < deadline,
            "only {received} of {count} records arrived"
        );
        if let Some(record) = consumer.recv_timeout(POLL).await.expect("recv") {
            first.entry(record.partition).or_insert(record.offset);
            received += 1;
        }
    }
    first
}

/// Drives `consumer` (applying assignments) until `ready` holds for it.
async fn drive_until(consumers: &mut [&mut Consumer], ready: impl Fn(&[&mut Consumer]) -> bool) {
    let deadline = Instant::now() + EVENTUALLY;
    while !ready(consumers) {
        assert!(Instant::now() < deadline, "the group never settled");
        for consumer in consumers.iter_mut() {
            // Records are not consumed here: none were produced after the
            // positions that matter, or they are re-read later.
            let _ = consumer.recv_timeout(Duration::from_millis(50)).await;
        }
    }
}

/// The group's coordinator: (broker id, address), waiting while none
/// serves.
async fn group_coordinator(cluster: &Cluster, group: &str) -> (String, String) {
    let mut nameserver = NameServerClient::new(cluster.channel(&cluster.nameservers[0].url()));
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Ok(found) = nameserver
            .find_coordinator(FindCoordinatorRequest {
                group: group.into(),
                ..Default::default()
            })
            .await
        {
            let found = found.into_inner();
            if !found.broker_address.is_empty() {
                return (found.broker_id, found.broker_address);
            }
        }
        assert!(Instant::now() < deadline, "no coordinator for {group}");
        tokio::time::sleep(POLL).await;
    }
}

/// FetchOffsets of every input partition at the group's coordinator,
/// retried while it moves.
async fn fetch_offsets(cluster: &Cluster, group: &str, require_stable: bool) -> Answer {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (_, address) = group_coordinator(cluster, group).await;
        let answer = BrokerClient::new(cluster.channel(&address))
            .fetch_offsets(FetchOffsetsRequest {
                group: group.into(),
                partitions: vec![TopicPartitions {
                    topic: INPUT.into(),
                    partitions: (0..PARTITIONS).collect(),
                }],
                require_stable,
            })
            .await;
        match answer {
            Ok(answer) => {
                return answer
                    .into_inner()
                    .offsets
                    .into_iter()
                    .map(|offset| {
                        let code = ErrorCode::try_from(offset.error).unwrap_or(ErrorCode::Internal);
                        let value = match code {
                            ErrorCode::None => Ok(offset.offset),
                            code => Err(code),
                        };
                        (offset.partition, value)
                    })
                    .collect();
            }
            Err(status) => {
                let error = SluiceError::from_status(&status);
                assert!(
                    error.is_retriable() && Instant::now() < deadline,
                    "FetchOffsets: {error}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Polls stable offsets until they equal `expected`.
async fn wait_for_stable(cluster: &Cluster, group: &str, expected: &Answer) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let answer = fetch_offsets(cluster, group, true).await;
        if &answer == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stable offsets of {group} are {answer:?}, expected {expected:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn committed(offsets: &[TopicPartitionOffset]) -> Answer {
    offsets
        .iter()
        .map(|offset| (offset.partition, Ok(offset.offset)))
        .collect()
}

fn unstable(offsets: &[TopicPartitionOffset]) -> Answer {
    offsets
        .iter()
        .map(|offset| (offset.partition, Err(ErrorCode::UnstableOffsetCommit)))
        .collect()
}

/// A plain CommitOffsets of `offset` as the member: its error code.
async fn plain_commit(
    cluster: &Cluster,
    member: &GroupMetadata,
    offset: &TopicPartitionOffset,
) -> ErrorCode {
    let (_, address) = group_coordinator(cluster, &member.group).await;
    let answer = BrokerClient::new(cluster.channel(&address))
        .commit_offsets(CommitOffsetsRequest {
            group: member.group.clone(),
            member_id: member.member_id.clone(),
            member_epoch: member.member_epoch,
            offsets: vec![PartitionOffset {
                topic: offset.topic.clone(),
                partition: offset.partition,
                offset: offset.offset,
                ..Default::default()
            }],
            transaction: None,
        })
        .await;
    match answer {
        Ok(_) => ErrorCode::None,
        Err(status) => SluiceError::from_status(&status).code,
    }
}

async fn metadata(consumer: &mut Consumer) -> GroupMetadata {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        if let Some(metadata) = consumer.group_metadata() {
            return metadata;
        }
        assert!(Instant::now() < deadline, "the consumer never joined");
        let _ = consumer.recv_timeout(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_commit_with_their_transaction_and_an_abort_drops_them() {
    let cluster = start(2).await;
    let group = "copy";
    let mut input = consumer(&cluster, group).await;
    let producer = producer(&cluster, "copy-1").await;

    // Outside a transaction, offsets are refused and nothing is sent.
    let member = metadata(&mut input).await;
    let outside = producer
        .send_offsets_to_transaction(
            &[TopicPartitionOffset {
                topic: INPUT.into(),
                partition: 0,
                offset: 1,
            }],
            &member,
        )
        .await;
    assert!(
        matches!(outside, Err(ClientError::InvalidTransactionState(_))),
        "{outside:?}"
    );

    receive(&mut input, 16).await;
    let first = input.uncommitted_offsets();
    assert!(!first.is_empty());
    let member = metadata(&mut input).await;
    producer.begin_transaction().expect("begin");
    producer
        .enqueue(Record::new(OUTPUT, "first"))
        .await
        .expect("enqueue");
    producer
        .send_offsets_to_transaction(&first, &member)
        .await
        .expect("offsets join the transaction");
    // Pending: not stable, and a plain commit may not race the marker.
    assert_eq!(fetch_offsets(&cluster, group, true).await, unstable(&first));
    assert_eq!(fetch_offsets(&cluster, group, false).await, Answer::new());
    assert_eq!(
        plain_commit(&cluster, &member, &first[0]).await,
        ErrorCode::ConcurrentTransactions
    );
    producer.commit_transaction().await.expect("commit");
    input.mark_committed(&first);
    assert!(input.uncommitted_offsets().is_empty());
    wait_for_stable(&cluster, group, &committed(&first)).await;

    // An aborted transaction's offsets are dropped; rewinding re-reads.
    receive(&mut input, 8).await;
    let second = input.uncommitted_offsets();
    assert!(!second.is_empty());
    producer.begin_transaction().expect("begin");
    producer
        .send_offsets_to_transaction(&second, &metadata(&mut input).await)
        .await
        .expect("offsets join the transaction");
    producer.abort_transaction().await.expect("abort");
    wait_for_stable(&cluster, group, &committed(&first)).await;
    input.rewind_to_committed().await.expect("rewind");
    assert!(input.uncommitted_offsets().is_empty());
    let again = receive(&mut input, 2 * RECORDS_PER_PARTITION - 16).await;
    for offset in &first {
        assert_eq!(
            again.get(&offset.partition),
            Some(&offset.offset),
            "after the rewind partition {} restarts at its committed offset",
            offset.partition
        );
    }
    input.close().await.expect("close");

    // The next owner of the partitions starts where the commit left them.
    let mut next = consumer(&cluster, group).await;
    let starts = receive(&mut next, 2 * RECORDS_PER_PARTITION - 16).await;
    let expected: BTreeMap<u32, u64> = (0..PARTITIONS)
        .map(|partition| {
            let offset = first.iter().find(|offset| offset.partition == partition);
            (partition, offset.map_or(0, |offset| offset.offset))
        })
        .collect();
    assert_eq!(starts, expected);
    next.close().await.expect("close");
    producer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_lost_a_partition_cannot_commit_it_in_a_transaction() {
    let cluster = start(2).await;
    let group = "rebalanced";
    let mut first = consumer(&cluster, group).await;
    drive_until(&mut [&mut first], |c| {
        c[0].assignment().len() == PARTITIONS as usize
    })
    .await;
    let mut second = consumer(&cluster, group).await;
    drive_until(&mut [&mut first, &mut second], |c| {
        c[0].assignment().len() == 1 && c[1].assignment().len() == 1
    })
    .await;
    let member = metadata(&mut first).await;
    let (_, kept) = first.assignment()[0].clone();
    let (_, lost) = second.assignment()[0].clone();
    let offset = |partition: u32| TopicPartitionOffset {
        topic: INPUT.into(),
        partition,
        offset: 1,
    };

    let producer = producer(&cluster, "rebalanced-1").await;
    producer.begin_transaction().expect("begin");
    let refused = producer
        .send_offsets_to_transaction(&[offset(kept), offset(lost)], &member)
        .await
        .expect_err("the lost partition is refused");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::StaleMemberEpoch),
        "{refused}"
    );
    assert!(refused.to_string().contains("not assigned"), "{refused}");
    match producer.commit_transaction().await {
        Err(ClientError::TransactionAbortable { reason }) => {
            assert!(reason.contains("offset commit"), "{reason}")
        }
        other => panic!("the commit must be refused, got {other:?}"),
    }
    producer.abort_transaction().await.expect("abort");
    assert_eq!(fetch_offsets(&cluster, group, true).await, Answer::new());

    // Its own partition it commits.
    producer.begin_transaction().expect("begin");
    producer
        .send_offsets_to_transaction(&[offset(kept)], &metadata(&mut first).await)
        .await
        .expect("its own partition");
    producer.commit_transaction().await.expect("commit");
    wait_for_stable(&cluster, group, &[(kept, Ok(1))].into_iter().collect()).await;
    producer.close().await.expect("close");
}

/// The first name `prefix-i` for which `pick` holds.
async fn name_where<F, Fut>(prefix: &str, pick: F) -> String
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for index in 0..200 {
        let name = format!("{prefix}-{index}");
        if pick(name.clone()).await {
            return name;
        }
    }
    panic!("no {prefix}-i fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_offsets_survive_the_kill_of_their_partition_owner() {
    let mut cluster = start(3).await;
    // The groups live on one broker (paused, then killed); the
    // transactions are coordinated elsewhere.
    let (victim, _) = group_coordinator(&cluster, "kept-0").await;
    let cluster_ref = &cluster;
    let victim_ref = &victim;
    let kept_group = name_where("kept", |group| async move {
        group_coordinator(cluster_ref, &group).await.0 == *victim_ref
    })
    .await;
    let dropped_group = name_where("dropped", |group| async move {
        group_coordinator(cluster_ref, &group).await.0 == *victim_ref
    })
    .await;
    let elsewhere = |id: String| async move {
        coordinator(cluster_ref, &id)
            .await
            .expect("a coordinator")
            .0
            != *victim_ref
    };
    let commit_id = name_where("committer", elsewhere).await;
    let abort_id = name_where("aborter", elsewhere).await;

    let mut kept_input = consumer(&cluster, &kept_group).await;
    let mut dropped_input = consumer(&cluster, &dropped_group).await;
    receive(&mut kept_input, 10).await;
    receive(&mut dropped_input, 10).await;
    let kept_offsets = kept_input.uncommitted_offsets();
    let dropped_offsets = dropped_input.uncommitted_offsets();
    let committer = producer(&cluster, &commit_id).await;
    let aborter = producer(&cluster, &abort_id).await;
    for (producer, offsets, input) in [
        (&committer, &kept_offsets, &mut kept_input),
        (&aborter, &dropped_offsets, &mut dropped_input),
    ] {
        producer.begin_transaction().expect("begin");
        producer
            .send_offsets_to_transaction(offsets, &metadata(input).await)
            .await
            .expect("offsets join the transaction");
    }
    drop(kept_input);
    drop(dropped_input);

    // The owner of the offsets partitions stops: the decisions are made,
    // their markers cannot land; then it dies.
    let victim_index = cluster
        .brokers
        .iter()
        .position(|broker| broker.node_id == victim)
        .expect("the victim");
    cluster.brokers[victim_index].pause();
    committer
        .commit_transaction()
        .await
        .expect("commit decided");
    aborter.abort_transaction().await.expect("abort decided");
    cluster.brokers[victim_index].kill();

    let deadline = Instant::now() + EVENTUALLY;
    while group_coordinator(&cluster, &kept_group).await.0 == victim {
        assert!(
            Instant::now() < deadline,
            "the offsets partition never moved"
        );
        tokio::time::sleep(POLL).await;
    }
    wait_for_stable(&cluster, &kept_group, &committed(&kept_offsets)).await;
    wait_for_stable(&cluster, &dropped_group, &Answer::new()).await;
    // A fresh consumer of the committed group starts at the offsets.
    let mut next = consumer(&cluster, &kept_group).await;
    let starts = receive(&mut next, 2 * RECORDS_PER_PARTITION - 10).await;
    for offset in &kept_offsets {
        assert_eq!(starts.get(&offset.partition), Some(&offset.offset));
    }
    next.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_owner_waits_for_the_pending_offsets_of_its_partition() {
    let cluster = start(2).await;
    let group = "handover";
    let mut first = consumer(&cluster, group).await;
    // Positions on every partition.
    let deadline = Instant::now() + EVENTUALLY;
    while first.uncommitted_offsets().len() < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "records of every partition");
        let _ = first.recv_timeout(POLL).await.expect("recv");
    }
    let offsets = first.uncommitted_offsets();
    let producer = producer(&cluster, "handover-1").await;
    producer.begin_transaction().expect("begin");
    producer
        .send_offsets_to_transaction(&offsets, &metadata(&mut first).await)
        .await
        .expect("offsets join the transaction");

    // A second member takes a partition while its offsets are pending: it
    // may not start it before the transaction ends.
    let mut second = consumer(&cluster, group).await;
    drive_until(&mut [&mut first, &mut second], |c| {
        c[0].assignment().len() == 1
    })
    .await;
    // Its target arrives within a few heartbeats; for these it keeps
    // asking for stable offsets without starting the partition.
    let hold = Instant::now() + Duration::from_secs(3);
    while Instant::now() < hold {
        let _ = second.recv_timeout(POLL).await;
        assert!(
            second.assignment().is_empty(),
            "the new owner started a partition whose offsets are pending"
        );
    }
    producer.commit_transaction().await.expect("commit");
    // A record past the committed offsets on every partition.
    let more = (0..PARTITIONS)
        .map(|partition| Record::new(INPUT, "more").with_partition(partition))
        .collect();
    cluster.produce_acknowledged(more).await;
    // The first record the new owner receives is at the committed offset
    // of its partition.
    let deadline = Instant::now() + EVENTUALLY;
    let record = loop {
        assert!(Instant::now() < deadline, "the new owner never read");
        if let Some(record) = second.recv_timeout(POLL).await.expect("recv") {
            break record;
        }
    };
    let expected = offsets
        .iter()
        .find(|offset| offset.partition == record.partition)
        .expect("offsets of every partition")
        .offset;
    assert!(expected > 0);
    assert_eq!(record.offset, expected, "partition {}", record.partition);
    producer.close().await.expect("close");
}

/// A raw transactional CommitOffsets of `INPUT`/0 at offset 1: its code.
async fn raw_transactional_commit(
    cluster: &Cluster,
    member: &GroupMetadata,
    context: TransactionContext,
    cursor: &'static [u8],
) -> ErrorCode {
    let (_, address) = group_coordinator(cluster, &member.group).await;
    let answer = BrokerClient::new(cluster.channel(&address))
        .commit_offsets(CommitOffsetsRequest {
            group: member.group.clone(),
            member_id: member.member_id.clone(),
            member_epoch: member.member_epoch,
            offsets: vec![PartitionOffset {
                topic: INPUT.into(),
                partition: 0,
                offset: 1,
                cursor: bytes::Bytes::from_static(cursor),
                ..Default::default()
            }],
            transaction: Some(context),
        })
        .await;
    match answer {
        Ok(_) => ErrorCode::None,
        Err(status) => SluiceError::from_status(&status).code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_or_malformed_transactional_commits_are_refused_and_leave_nothing() {
    let cluster = start(2).await;
    let group = "forged";
    let mut input = consumer(&cluster, group).await;
    drive_until(&mut [&mut input], |c| {
        c[0].assignment().len() == PARTITIONS as usize
    })
    .await;
    let member = metadata(&mut input).await;
    let other = producer(&cluster, "forged-2").await;
    let producer = producer(&cluster, "forged-1").await;
    let (producer_id, epoch) = producer.transactional_identity().expect("transactional");
    let (other_id, _) = other.transactional_identity().expect("transactional");
    let context = |id: &str, producer_id: i64, epoch: i32| TransactionContext {
        transactional_id: id.into(),
        producer_id,
        producer_epoch: epoch,
    };
    let epoch = i32::from(epoch);
    let cases = [
        (
            "no id",
            context("", producer_id, epoch),
            ErrorCode::InvalidArgument,
        ),
        (
            "bad id",
            context("a b", producer_id, epoch),
            ErrorCode::InvalidArgument,
        ),
        (
            "epoch too large",
            context("forged-1", producer_id, 40_000),
            ErrorCode::InvalidArgument,
        ),
        (
            "negative epoch",
            context("forged-1", producer_id, -1),
            ErrorCode::InvalidArgument,
        ),
        // Another id's producer id, and an epoch the coordinator never
        // handed out: the offsets partition's verification refuses them.
        (
            "another id's producer",
            context("forged-1", other_id, epoch),
            ErrorCode::ProducerFenced,
        ),
        (
            "a future epoch",
            context("forged-1", producer_id, epoch + 5),
            ErrorCode::InvalidTransactionState,
        ),
    ];
    for (name, context, expected) in cases {
        assert_eq!(
            raw_transactional_commit(&cluster, &member, context, b"").await,
            expected,
            "{name}"
        );
    }
    assert_eq!(
        raw_transactional_commit(
            &cluster,
            &member,
            context("forged-1", producer_id, epoch),
            b"\x01"
        )
        .await,
        ErrorCode::InvalidArgument,
        "a subscription cursor"
    );
    let outsider = GroupMetadata {
        member_id: String::new(),
        member_epoch: -1,
        ..member.clone()
    };
    assert_ne!(
        raw_transactional_commit(
            &cluster,
            &outsider,
            context("forged-1", producer_id, epoch),
            b""
        )
        .await,
        ErrorCode::None,
        "a commit from outside the group"
    );
    let stale = GroupMetadata {
        member_epoch: member.member_epoch + 7,
        ..member.clone()
    };
    assert_eq!(
        raw_transactional_commit(
            &cluster,
            &stale,
            context("forged-1", producer_id, epoch),
            b""
        )
        .await,
        ErrorCode::StaleMemberEpoch,
        "an epoch the member never had"
    );
    // Nothing of it is pending or committed.
    assert_eq!(fetch_offsets(&cluster, group, true).await, Answer::new());
    // The real producer's commit goes through.
    producer.begin_transaction().expect("begin");
    let offset = TopicPartitionOffset {
        topic: INPUT.into(),
        partition: 0,
        offset: 3,
    };
    producer
        .send_offsets_to_transaction(std::slice::from_ref(&offset), &member)
        .await
        .expect("offsets");
    producer.commit_transaction().await.expect("commit");
    wait_for_stable(&cluster, group, &committed(&[offset])).await;
}
