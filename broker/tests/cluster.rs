//! In-process cluster test: a real nameserver (embedded metadata), a real
//! store and the broker on loopback ports, driven over gRPC. Covers produce
//! and fetch, error codes for bad requests, consumer-group heartbeat and
//! offsets, and offsets surviving a broker restart.

#[allow(dead_code)] // the kit serves every scenario file; this one uses part of it
mod common;

use bytes::Bytes;
use common::*;
use sluice_client::{Admin, Producer, ProducerConfig, Subscriber, SubscriberConfig};
use sluice_nameserver::config::TopicDefaults;
use sluice_proto::batch::BatchIter;
use sluice_proto::test_util;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    AllocateProducerIdRequest, CommitOffsetsRequest, CreateSegmentRequest, InitialPosition,
    ListOffsetsRequest, ListSegmentsRequest, MessageState, OffsetSpec, PartitionOffset,
    Subscription, SubscriptionType, TopicConfig,
};
use sluice_proto::ErrorCode;
use std::time::Duration;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_groups_and_restart() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    let nameserver_url = cluster.nameserver_url.clone();
    let mut broker = start_broker(&nameserver_url).await;
    cluster
        .create_topic(
            TOPIC,
            TopicConfig {
                partitions: 1,
                max_batch_bytes: TOPIC_MAX_BATCH_BYTES,
                ..Default::default()
            },
        )
        .await;
    let mut client = broker_client(&broker.address).await;
    first_produce_is_accepted_once_the_partition_is_taken_over(&client).await;
    pipelined_produce_gets_offsets_in_order(&mut client).await;
    fetch_reads_back_in_order_within_the_high_watermark(&mut client).await;
    a_long_poll_is_woken_by_a_produce(&mut client).await;
    bad_produce_requests_get_their_codes_and_the_stream_keeps_serving(&mut client).await;
    a_group_member_joins_commits_and_is_described(&mut client).await;

    broker.stop_cleanly().await;
    broker = start_broker(&nameserver_url).await;
    let mut client = broker_client(&broker.address).await;
    commits_and_data_come_back_from_the_log_after_a_restart(&mut client).await;

    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
}

async fn first_produce_is_accepted_once_the_partition_is_taken_over(
    client: &BrokerClient<Channel>,
) {
    let first = eventually("the broker to accept produce", || {
        let mut client = client.clone();
        async move {
            let answer = produce(
                &mut client,
                vec![produce_request(1, TOPIC, test_util::batch(&["a", "b"]))],
            )
            .await;
            (answer[0].error == ErrorCode::None as i32).then(|| answer[0].clone())
        }
    })
    .await;
    assert_eq!(first.base_offset, 0);
}

async fn pipelined_produce_gets_offsets_in_order(client: &mut BrokerClient<Channel>) {
    let answers = produce(
        client,
        vec![
            produce_request(2, TOPIC, test_util::batch(&["c"])),
            produce_request(3, TOPIC, test_util::batch(&["d", "e", "f"])),
        ],
    )
    .await;
    assert_eq!(answers[0].request_id, 2);
    assert_eq!(
        answers[0].error,
        ErrorCode::None as i32,
        "{}",
        answers[0].error_message
    );
    assert_eq!(answers[0].base_offset, 2);
    assert_eq!(answers[1].base_offset, 3);
}

/// Everything back in order; from the middle of a batch the batch holding
/// the offset; at the high watermark nothing; beyond it out of range.
async fn fetch_reads_back_in_order_within_the_high_watermark(client: &mut BrokerClient<Channel>) {
    let fetched = fetch(client, 0, 0).await;
    let partition = &fetched.partitions[0];
    assert_eq!(
        partition.error,
        ErrorCode::None as i32,
        "{}",
        partition.error_message
    );
    assert_eq!(partition.high_watermark, 6);
    assert_eq!(
        values(&partition.batches),
        vec!["a", "b", "c", "d", "e", "f"]
    );

    // From the middle of a batch: the batch holding the offset comes back.
    let fetched = fetch(client, 4, 0).await;
    assert_eq!(values(&fetched.partitions[0].batches), vec!["d", "e", "f"]);

    // At the high watermark: nothing, no error. Beyond it: out of range.
    let fetched = fetch(client, 6, 0).await;
    assert_eq!(fetched.partitions[0].error, ErrorCode::None as i32);
    assert!(fetched.partitions[0].batches.is_empty());
    let fetched = fetch(client, 100, 0).await;
    assert_eq!(
        fetched.partitions[0].error,
        ErrorCode::OffsetOutOfRange as i32
    );
    assert_eq!(fetched.partitions[0].high_watermark, 6);
}

async fn a_long_poll_is_woken_by_a_produce(client: &mut BrokerClient<Channel>) {
    let mut waiting_client = client.clone();
    let waiting = tokio::spawn(async move { fetch(&mut waiting_client, 6, 20_000).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answers = produce(
        client,
        vec![produce_request(4, TOPIC, test_util::batch(&["g"]))],
    )
    .await;
    assert_eq!(
        answers[0].error,
        ErrorCode::None as i32,
        "{}",
        answers[0].error_message
    );
    let woken = waiting.await.expect("long-poll task");
    assert_eq!(values(&woken.partitions[0].batches), vec!["g"]);
}

async fn bad_produce_requests_get_their_codes_and_the_stream_keeps_serving(
    client: &mut BrokerClient<Channel>,
) {
    let mut corrupt = test_util::batch(&["x"]).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let oversized_value = "z".repeat(TOPIC_MAX_BATCH_BYTES as usize + 1);
    let answers = produce(
        client,
        vec![
            produce_request(10, "no-such-topic", test_util::batch(&["x"])),
            produce_request(11, TOPIC, test_util::batch(&[oversized_value.as_str()])),
            produce_request(12, TOPIC, Bytes::from(corrupt)),
            produce_request(13, TOPIC, Bytes::from_static(b"short")),
            produce_request(14, "__consumer_offsets", test_util::batch(&["x"])),
            produce_request(15, TOPIC, test_util::batch(&["h"])),
        ],
    )
    .await;
    assert_eq!(
        answers[0].error,
        ErrorCode::UnknownTopic as i32,
        "{}",
        answers[0].error_message
    );
    assert_eq!(
        answers[1].error,
        ErrorCode::TooLarge as i32,
        "{}",
        answers[1].error_message
    );
    assert_eq!(
        answers[2].error,
        ErrorCode::CorruptBatch as i32,
        "{}",
        answers[2].error_message
    );
    assert_eq!(
        answers[3].error,
        ErrorCode::CorruptBatch as i32,
        "{}",
        answers[3].error_message
    );
    assert_eq!(
        answers[4].error,
        ErrorCode::InvalidArgument as i32,
        "{}",
        answers[4].error_message
    );
    assert_eq!(
        answers[5].error,
        ErrorCode::None as i32,
        "{}",
        answers[5].error_message
    );
    assert_eq!(answers[5].base_offset, 7);

    let latest = client
        .list_offsets(ListOffsetsRequest {
            topic: TOPIC.into(),
            partition: 0,
            spec: OffsetSpec::Latest as i32,
            timestamp_ms: 0,
            ..Default::default()
        })
        .await
        .expect("list offsets")
        .into_inner();
    assert_eq!(latest.offset, 8);
    assert_eq!(latest.log_start_offset, 0);
}

/// Join, get the partition, refuse a wrong epoch, commit, read the commit
/// and the lag back.
async fn a_group_member_joins_commits_and_is_described(client: &mut BrokerClient<Channel>) {
    let joined = eventually("the group coordinator to be ready", || {
        let mut client = client.clone();
        async move { heartbeat(&mut client, "", 0, vec![]).await.ok() }
    })
    .await;
    assert!(!joined.member_id.is_empty());
    assert_eq!(joined.member_epoch, 1);
    assert_eq!(joined.assignment.len(), 1);
    assert_eq!(joined.assignment[0].topic, TOPIC);
    assert_eq!(joined.assignment[0].partitions, vec![0]);
    let again = heartbeat(
        client,
        &joined.member_id,
        joined.member_epoch,
        joined.assignment.clone(),
    )
    .await
    .expect("heartbeat with owned partitions");
    assert_eq!(again.member_epoch, 1);
    let stale = heartbeat(client, &joined.member_id, 7, vec![]).await;
    let stale = stale.expect_err("a wrong epoch is refused");
    assert_eq!(
        sluice_proto::SluiceError::from_status(&stale).code,
        ErrorCode::StaleMemberEpoch
    );
    client
        .commit_offsets(CommitOffsetsRequest {
            group: "billing".into(),
            member_id: joined.member_id.clone(),
            member_epoch: joined.member_epoch,
            offsets: vec![PartitionOffset {
                topic: TOPIC.into(),
                partition: 0,
                offset: 5,
                metadata: "m".into(),
                error: 0,
                ..Default::default()
            }],
            transaction: None,
        })
        .await
        .expect("commit accepted");
    assert_eq!(committed_offset(client).await, Some(5));
    let described = client
        .describe_group(sluice_proto::v1::DescribeGroupRequest {
            group: "billing".into(),
        })
        .await
        .expect("describe group")
        .into_inner();
    assert_eq!(described.members.len(), 1);
    let lag = described
        .lag
        .iter()
        .find(|lag| lag.topic == TOPIC && lag.partition == 0)
        .expect("lag of the committed partition");
    assert_eq!(
        (lag.committed_offset, lag.high_watermark, lag.lag),
        (5, 8, 3)
    );
}

async fn commits_and_data_come_back_from_the_log_after_a_restart(
    client: &mut BrokerClient<Channel>,
) {
    let offset = eventually("committed offsets after restart", || {
        let mut client = client.clone();
        async move { committed_offset(&mut client).await }
    })
    .await;
    assert_eq!(offset, 5);
    let fetched = eventually("the topic served after restart", || {
        let mut client = client.clone();
        async move {
            let fetched = fetch(&mut client, 0, 0).await;
            (fetched.partitions[0].error == ErrorCode::None as i32).then_some(fetched)
        }
    })
    .await;
    assert_eq!(
        values(&fetched.partitions[0].batches),
        vec!["a", "b", "c", "d", "e", "f", "g", "h"]
    );
    let answers = produce(
        client,
        vec![produce_request(20, TOPIC, test_util::batch(&["i"]))],
    )
    .await;
    assert_eq!(
        answers[0].error,
        ErrorCode::None as i32,
        "{}",
        answers[0].error_message
    );
    assert_eq!(answers[0].base_offset, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_and_retention_deletes_them() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    // Every batch fills a segment, so each append is followed by a roll.
    let rolled = TopicConfig {
        partitions: 1,
        segment_bytes: 1,
        ..Default::default()
    };
    cluster.create_topic("rolled", rolled).await;
    cluster
        .create_topic(
            "retained",
            TopicConfig {
                retention_bytes: 1,
                ..rolled
            },
        )
        .await;
    let broker = start_broker_with(&cluster.nameserver_url, 100).await;
    // Recent timestamps, so age-based retention (7 days) keeps "rolled".
    let start_ms = sluice_proto::now_unix_ms() - 60_000;
    let mut client = broker_client(&broker.address).await;

    for topic in ["rolled", "retained"] {
        eventually("the broker to accept produce", || {
            let mut client = client.clone();
            async move {
                let answer = produce(
                    &mut client,
                    vec![produce_request(
                        1,
                        topic,
                        batch_at(&["a"], start_ms + 1_000),
                    )],
                )
                .await;
                (answer[0].error == ErrorCode::None as i32).then_some(())
            }
        })
        .await;
    }
    let answers = produce(
        &mut client,
        vec![
            produce_request(2, "rolled", batch_at(&["b", "c"], start_ms + 2_000)),
            produce_request(3, "rolled", batch_at(&["d"], start_ms + 3_000)),
            produce_request(4, "retained", batch_at(&["b"], start_ms + 2_000)),
        ],
    )
    .await;
    for answer in &answers {
        assert_eq!(
            answer.error,
            ErrorCode::None as i32,
            "{}",
            answer.error_message
        );
    }
    assert_eq!((answers[0].base_offset, answers[1].base_offset), (1, 3));

    // Offsets by timestamp come from the closed segments' time indexes.
    let by_time = list_offsets(
        &mut client,
        "rolled",
        OffsetSpec::Timestamp,
        start_ms + 1_500,
    )
    .await;
    assert_eq!(by_time.offset, 1);
    let by_time = list_offsets(
        &mut client,
        "rolled",
        OffsetSpec::Timestamp,
        start_ms + 3_000,
    )
    .await;
    assert_eq!(by_time.offset, 3);
    let by_time = list_offsets(
        &mut client,
        "rolled",
        OffsetSpec::Timestamp,
        start_ms + 9_000,
    )
    .await;
    assert_eq!(by_time.offset, 4);

    // Retention deletes the closed segments of "retained".
    let retained = eventually("retention to delete closed segments", || {
        let mut client = client.clone();
        async move {
            let answer = list_offsets(&mut client, "retained", OffsetSpec::Earliest, 0).await;
            (answer.log_start_offset == answer.high_watermark).then_some(answer)
        }
    })
    .await;
    assert_eq!(retained.high_watermark, 2);
    let fetched = fetch_topic(&mut client, "retained", 0, 0).await;
    assert_eq!(
        fetched.partitions[0].error,
        ErrorCode::OffsetOutOfRange as i32
    );
    assert_eq!(fetched.partitions[0].log_start_offset, 2);

    // A new broker (empty tail cache) reads every segment back from the store.
    broker.stop_cleanly().await;
    let broker = start_broker(&cluster.nameserver_url).await;
    let mut client = broker_client(&broker.address).await;
    let mut collected = Vec::new();
    let mut offset = 0;
    while offset < 4 {
        let fetched = eventually("the rolled topic served after restart", || {
            let mut client = client.clone();
            async move {
                let fetched = fetch_topic(&mut client, "rolled", offset, 0).await;
                let partition = fetched.partitions[0].clone();
                (partition.error == ErrorCode::None as i32 && !partition.batches.is_empty())
                    .then_some(partition)
            }
        })
        .await;
        let mut next = offset;
        for item in BatchIter::new(&fetched.batches) {
            let (_, header, _) = item.expect("well-formed batches");
            next = header.end_offset();
        }
        collected.extend(values(&fetched.batches));
        offset = next;
    }
    assert_eq!(collected, vec!["a", "b", "c", "d"]);

    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
    let _ = &mut client;
}

/// A roll creates the next segment while the last appends to the full one
/// drain (ADR 0006). If the owner stops before they drained, that segment
/// is empty and may start beyond where the full one is recovered to: the
/// next owner deletes it instead of leaving a hole in the offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_deletes_a_segment_created_ahead_of_a_roll_that_never_happened() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (cluster, broker, _client) = one_partition_holding_a(directory.path()).await;
    broker.stop_cleanly().await;

    // What the stopped owner would have left: a segment at offset 5 while
    // the log ends at 1 (appends to 1..5 never became durable).
    let channel = tonic::transport::Endpoint::from_shared(cluster.nameserver_url.clone())
        .expect("valid nameserver url")
        .connect_lazy();
    let mut nameserver = NameServerClient::new(channel);
    let list = ListSegmentsRequest {
        topic: TOPIC.into(),
        partition: 0,
    };
    let segments = nameserver
        .list_segments(list.clone())
        .await
        .expect("list segments")
        .into_inner()
        .segments;
    let epoch = segments
        .iter()
        .map(|segment| segment.writer_epoch)
        .max()
        .expect("the partition has a segment");
    let ahead = nameserver
        .create_segment(CreateSegmentRequest {
            topic: TOPIC.into(),
            partition: 0,
            epoch,
            base_offset: 5,
            exclude_store_ids: Vec::new(),
        })
        .await
        .expect("create a segment ahead")
        .into_inner();

    let broker = start_broker(&cluster.nameserver_url).await;
    let mut client = broker_client(&broker.address).await;
    let resumed = produce_until_accepted(&client, 2, "b", "the new owner to serve").await;
    assert_eq!(resumed.base_offset, 1, "the log continues without a hole");
    // One segment per fetch: "a" is in the recovered one, "b" in the new.
    let fetched = fetch(&mut client, 0, 0).await;
    assert_eq!(values(&fetched.partitions[0].batches), vec!["a"]);
    let fetched = fetch(&mut client, 1, 0).await;
    assert_eq!(values(&fetched.partitions[0].batches), vec!["b"]);
    assert_eq!(fetched.partitions[0].high_watermark, 2);
    let segments = nameserver
        .list_segments(list)
        .await
        .expect("list segments")
        .into_inner()
        .segments;
    assert!(
        segments
            .iter()
            .all(|segment| segment.segment_id != ahead.segment_id),
        "the unused segment is deleted: {segments:?}"
    );

    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_recovers_after_store_outage_without_reordering() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (mut cluster, broker, mut client) = one_partition_holding_a(directory.path()).await;

    let outage_client = client.clone();
    cluster
        .restart_store(async move {
            let mut client = outage_client;
            let answers = produce(
                &mut client,
                vec![
                    produce_request(2, TOPIC, test_util::batch(&["lost-1"])),
                    produce_request(3, TOPIC, test_util::batch(&["lost-2"])),
                ],
            )
            .await;
            for answer in &answers {
                let code = ErrorCode::try_from(answer.error).expect("a known code");
                assert_ne!(
                    code,
                    ErrorCode::None,
                    "append acknowledged with the store down"
                );
                assert!(code.is_retriable(), "{code:?}: {}", answer.error_message);
            }
        })
        .await;

    // After recovery (seal, close, new segment) the partition accepts again
    // and the log continues right after the last acknowledged record.
    let resumed = produce_until_accepted(&client, 4, "b", "the partition to recover").await;
    assert_eq!(resumed.base_offset, 1);
    let fetched = fetch(&mut client, 0, 0).await;
    assert_eq!(values(&fetched.partitions[0].batches), vec!["a", "b"]);

    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_survive_retention_of_the_offsets_topic() {
    let directory = tempfile::tempdir().expect("temp dir");
    // Every topic, `__consumer_offsets` included, rolls after each batch
    // and keeps no closed segment.
    let cluster = Cluster::start_with(
        directory.path(),
        TopicDefaults {
            segment_bytes: 1,
            retention_bytes: 1,
            ..TopicDefaults::default()
        },
    )
    .await;
    cluster.create_one_partition_topic().await;
    let broker = start_broker_with(&cluster.nameserver_url, 100).await;
    let mut client = broker_client(&broker.address).await;
    // A commit may not point beyond the log: give it a record to be past.
    produce_until_accepted(&client, 1, "a", "the broker to accept produce").await;
    eventually("the group coordinator to be ready", || {
        let mut client = client.clone();
        async move {
            client
                .commit_offsets(CommitOffsetsRequest {
                    group: "billing".into(),
                    member_id: String::new(),
                    member_epoch: -1,
                    offsets: vec![PartitionOffset {
                        topic: TOPIC.into(),
                        partition: 0,
                        offset: 1,
                        metadata: String::new(),
                        error: 0,
                        ..Default::default()
                    }],
                    transaction: None,
                })
                .await
                .ok()
        }
    })
    .await;
    let offsets_partition = sluice_proto::partitioning::offsets_partition_for_group("billing", 2);
    let offsets_topic = sluice_proto::names::CONSUMER_OFFSETS_TOPIC;
    // Wait until retention moved the log start past the commit record.
    eventually("retention of the offsets partition", || {
        let mut client = client.clone();
        async move {
            let answer = client
                .list_offsets(ListOffsetsRequest {
                    topic: offsets_topic.into(),
                    partition: offsets_partition,
                    spec: OffsetSpec::Earliest as i32,
                    timestamp_ms: 0,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (answer.log_start_offset >= 1).then_some(())
        }
    })
    .await;

    broker.stop_cleanly().await;
    let broker = start_broker_with(&cluster.nameserver_url, 100).await;
    client = broker_client(&broker.address).await;
    let offset = eventually("committed offsets after restart", || {
        let mut client = client.clone();
        async move { committed_offset(&mut client).await }
    })
    .await;
    assert_eq!(offset, 1);

    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
}

/// One produce stream kept open across steps, so later requests travel on
/// the same stream as an earlier failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_partition_stays_refused_on_its_stream_until_resume() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (mut cluster, broker, mut client) = one_partition_holding_a(directory.path()).await;

    // A request fails retriably on this stream while the store is down.
    let stream = std::sync::Arc::new(tokio::sync::Mutex::new(OpenStream::open(&mut client).await));
    let during_outage = stream.clone();
    cluster
        .restart_store(async move {
            let answer = during_outage
                .lock()
                .await
                .send(produce_request(2, TOPIC, test_util::batch(&["failed"])))
                .await;
            let code = ErrorCode::try_from(answer.error).expect("a known code");
            assert!(code != ErrorCode::None && code.is_retriable(), "{code:?}");
        })
        .await;
    // The partition recovers; other streams write again.
    produce_until_accepted(&client, 3, "b", "the partition to recover").await;

    let mut stream = stream.lock().await;
    // Sent after the failure without `resume`: it could overtake the
    // client's retry of the failed request, so it is refused.
    let refused = stream
        .send(produce_request(4, TOPIC, test_util::batch(&["overtaker"])))
        .await;
    let code = ErrorCode::try_from(refused.error).expect("a known code");
    assert!(
        code != ErrorCode::None && code.is_retriable(),
        "{code:?}: {}",
        refused.error_message
    );
    // The retry, marked `resume`, is accepted and lands next.
    let mut retry = produce_request(5, TOPIC, test_util::batch(&["failed"]));
    retry.resume = true;
    let accepted = stream.send(retry).await;
    assert_eq!(
        accepted.error,
        ErrorCode::None as i32,
        "{}",
        accepted.error_message
    );
    assert_eq!(accepted.base_offset, 2);
    let fetched = fetch(&mut client, 0, 0).await;
    assert_eq!(
        values(&fetched.partitions[0].batches),
        vec!["a", "b", "failed"]
    );
    drop(stream);

    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
}

/// A producer id issued to this test's principal (ADR 0015: brokers
/// refuse ids issued to another).
async fn allocate_producer_id(nameserver_url: &str) -> i64 {
    let channel = tonic::transport::Endpoint::from_shared(nameserver_url.to_string())
        .expect("valid nameserver url")
        .connect_lazy();
    let id = NameServerClient::new(channel)
        .allocate_producer_id(AllocateProducerIdRequest {})
        .await
        .expect("a producer id")
        .into_inner()
        .producer_id;
    i64::try_from(id).expect("producer ids fit a batch's signed field")
}

/// Idempotence (ADR 0010): a resent identical batch is answered with the
/// original's offset and stored once, on the same broker and after another
/// broker took the partition over (state rebuilt from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_gets_its_original_offset_and_is_stored_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (cluster, broker, mut client) = one_partition_holding_a(directory.path()).await;
    let producer_id = allocate_producer_id(&cluster.nameserver_url).await;
    let first = idempotent_batch(&["x", "y"], producer_id, 0);
    let second = idempotent_batch(&["z"], producer_id, 2);

    let answers = produce(&mut client, vec![produce_request(2, TOPIC, first.clone())]).await;
    assert_eq!(
        answers[0].error,
        ErrorCode::None as i32,
        "{}",
        answers[0].error_message
    );
    assert_eq!(answers[0].base_offset, 1);
    // The resend (a new stream, as after a broken connection).
    let answers = produce(
        &mut client,
        vec![
            produce_request(3, TOPIC, first.clone()),
            produce_request(4, TOPIC, second.clone()),
        ],
    )
    .await;
    assert_eq!(
        answers[0].error,
        ErrorCode::None as i32,
        "{}",
        answers[0].error_message
    );
    assert_eq!(answers[0].base_offset, 1, "the original offset");
    assert_eq!(
        answers[1].error,
        ErrorCode::None as i32,
        "{}",
        answers[1].error_message
    );
    assert_eq!(
        answers[1].base_offset, 3,
        "nothing was appended for the resend"
    );
    // A sequence older than any remembered batch that matches none of them
    // cannot be placed: refused, not appended.
    let overlapping = produce(
        &mut client,
        vec![produce_request(
            5,
            TOPIC,
            idempotent_batch(&["w"], producer_id, 1),
        )],
    )
    .await;
    assert_eq!(overlapping[0].error, ErrorCode::OutOfOrderSequence as i32);

    // Another broker takes over: it rebuilds the producer state from the log.
    broker.stop_cleanly().await;
    let broker = start_broker(&cluster.nameserver_url).await;
    let mut client = broker_client(&broker.address).await;
    let resent = eventually("the new owner answers the resend", || {
        let mut client = client.clone();
        let second = second.clone();
        async move {
            let answer = produce(&mut client, vec![produce_request(6, TOPIC, second)]).await;
            (answer[0].error == ErrorCode::None as i32).then(|| answer[0].clone())
        }
    })
    .await;
    assert_eq!(
        resent.base_offset, 3,
        "the original offset after the takeover"
    );
    let answers = produce(
        &mut client,
        vec![produce_request(
            7,
            TOPIC,
            idempotent_batch(&["after"], producer_id, 3),
        )],
    )
    .await;
    assert_eq!(
        answers[0].error,
        ErrorCode::None as i32,
        "{}",
        answers[0].error_message
    );
    assert_eq!(answers[0].base_offset, 4);

    // The takeover started a new segment: read on until the end.
    let mut stored = Vec::new();
    let mut offset = 0;
    while offset < 5 {
        let fetched = fetch(&mut client, offset, 0).await;
        let batches = &fetched.partitions[0].batches;
        assert!(!batches.is_empty(), "nothing at {offset} below the end 5");
        for item in BatchIter::new(batches) {
            let (_, header, _) = item.expect("well-formed batches");
            offset = header.end_offset();
        }
        stored.extend(values(batches));
    }
    assert_eq!(
        stored,
        vec!["a", "x", "y", "z", "after"],
        "each batch stored once"
    );
    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
}

/// A shared "latest" subscription of [`TOPIC`] named `name`, without
/// start offsets (the SDK reads them).
fn latest_subscription(name: &str) -> Subscription {
    Subscription {
        topic: TOPIC.to_string(),
        name: name.to_string(),
        r#type: SubscriptionType::Shared as i32,
        initial_position: InitialPosition::Latest as i32,
        ..Subscription::default()
    }
}

async fn connect_subscriber(nameserver_url: &str, name: &str) -> Subscriber {
    Subscriber::connect(SubscriberConfig {
        client: client_config(nameserver_url),
        ..SubscriberConfig::new(TOPIC, name)
    })
    .await
    .expect("subscriber connects")
}

async fn start_producer(nameserver_url: &str) -> Producer {
    Producer::new(ProducerConfig {
        client: client_config(nameserver_url),
        ..ProducerConfig::default()
    })
    .await
    .expect("producer")
}

/// Issue 11 item 5: "latest" is where each partition ended when the
/// subscription was created, not when its first consumer came. Created,
/// then a, b, c produced, then consumed: all three arrive, nothing older;
/// `message why` calls an older message BEFORE_START, not ACKNOWLEDGED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_subscription_gets_everything_produced_after_its_creation() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    let url = cluster.nameserver_url.clone();
    let broker = start_broker(&url).await;
    let partitions = TopicConfig {
        partitions: 2,
        ..Default::default()
    };
    cluster.create_topic(TOPIC, partitions).await;
    let producer = start_producer(&url).await;
    let old = send_all(&producer, 0, &["old-1", "old-2"]).await;
    send_all(&producer, 1, &["old-3"]).await;

    let admin = Admin::connect(client_config(&url)).await.expect("admin");
    let created = admin
        .create_subscription(latest_subscription("q"))
        .await
        .expect("create");
    assert_eq!(created.start_offsets, [2, 1]);
    // What is produced after the creation, before any consumer.
    let new = send_all(&producer, 0, &["a", "c"]).await;
    send_all(&producer, 1, &["b"]).await;

    let before = admin
        .explain_message(TOPIC, 0, old[1], "q")
        .await
        .expect("why old-2");
    assert_eq!(before.state(), MessageState::BeforeStart, "{before:?}");
    let pending = admin
        .explain_message(TOPIC, 0, new[0], "q")
        .await
        .expect("why a");
    assert_eq!(pending.state(), MessageState::Pending, "{pending:?}");

    let subscriber = connect_subscriber(&url, "q").await;
    receive_exactly(&subscriber, &["a", "b", "c"]).await;
    // With the dispatcher running, still not "acknowledged".
    let before = admin
        .explain_message(TOPIC, 0, old[0], "q")
        .await
        .expect("why old-1");
    assert_eq!(before.state(), MessageState::BeforeStart, "{before:?}");

    subscriber.close().await.expect("close");
    producer.close().await.expect("close producer");
    broker.stop_cleanly().await;
    cluster.stop().await;
}

/// A latest subscription created while its partition has no owner (the
/// broker replaced) waits for the next owner and records its end; one
/// that cannot get it within the client's request timeout is not created
/// (UNAVAILABLE, retriable). The recorded start survives a broker restart
/// before the first consumer comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_subscription_created_while_the_owner_moves_starts_at_its_creation() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    let url = cluster.nameserver_url.clone();
    let broker = start_broker(&url).await;
    cluster.create_one_partition_topic().await;
    let producer = start_producer(&url).await;
    send_all(&producer, 0, &["old-1", "old-2", "old-3"]).await;
    producer.close().await.expect("close producer");
    broker.stop_cleanly().await;

    // Nobody owns the partition: given up after the timeout, nothing made.
    let impatient = Admin::connect(sluice_client::ClientConfig {
        request_timeout_ms: 300,
        ..client_config(&url)
    })
    .await
    .expect("admin");
    let error = impatient
        .create_subscription(latest_subscription("impatient"))
        .await
        .expect_err("no owner to read the end from");
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    assert!(error.to_string().contains("was not created"), "{error}");
    let missing = impatient
        .get_subscription(TOPIC, "impatient")
        .await
        .expect_err("not created");
    assert_eq!(missing.code(), Some(ErrorCode::UnknownSubscription));

    // Started while nobody owns it, finished once the replacement took
    // over: the end of what the previous owner acknowledged.
    let admin = Admin::connect(client_config(&url)).await.expect("admin");
    let creating = tokio::spawn(async move {
        admin
            .create_subscription(latest_subscription("q"))
            .await
            .expect("created once the new owner serves")
    });
    let replacement = start_broker(&url).await;
    let created = creating.await.expect("creation task");
    assert_eq!(created.start_offsets, [3]);

    let producer = start_producer(&url).await;
    send_all(&producer, 0, &["a", "b", "c"]).await;
    producer.close().await.expect("close producer");
    // Restarted before any consumer came: the start is the recorded one,
    // not the end when the first consumer comes.
    replacement.stop_cleanly().await;
    let broker = start_broker(&url).await;
    let subscriber = connect_subscriber(&url, "q").await;
    receive_exactly(&subscriber, &["a", "b", "c"]).await;

    subscriber.close().await.expect("close");
    broker.stop_cleanly().await;
    cluster.stop().await;
}
