//! Requests at and beyond the broker's limits get a clear error, never a
//! silent acceptance or a silently closed stream (issue 11, item 7):
//! produce requests over the gRPC message limit, batches whose offset
//! deltas go backwards or whose timestamps are extreme, `ListOffsets` with
//! an unknown spec, and `CommitOffsets` beyond the log, beyond the offset
//! range or for an unknown topic or partition.

#[allow(dead_code)] // the kit serves every scenario file; this one uses part of it
mod common;

use bytes::Bytes;
use common::*;
use sluice_proto::limits::{DEFAULT_MAX_GRPC_MESSAGE_BYTES, MAX_OFFSET};
use sluice_proto::test_util::{self, BatchSpec};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::{CommitOffsetsRequest, ListOffsetsRequest, OffsetSpec, PartitionOffset};
use sluice_proto::{ErrorCode, SluiceError};
use tonic::transport::Channel;

/// A one-partition cluster, `check` run against its broker, then stopped.
async fn with_broker<F, Fut>(check: F)
where
    F: FnOnce(BrokerClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let directory = tempfile::tempdir().expect("temp dir");
    let (cluster, broker, client) = one_partition_holding_a(directory.path()).await;
    check(client).await;
    broker.stop.send_replace(true);
    let _ = broker.task.await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_request_over_the_message_limit_gets_too_large() {
    with_broker(|mut client| async move {
        a_produce_request_over_the_message_limit_ends_its_stream_with_too_large(&mut client).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backward_offsets_and_extreme_timestamps_are_corrupt() {
    with_broker(|mut client| async move {
        batches_with_backward_offsets_or_extreme_timestamps_are_corrupt(&mut client).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_with_an_unknown_spec_is_refused() {
    with_broker(
        |mut client| async move { list_offsets_refuses_an_unknown_spec(&mut client).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_beyond_the_log_are_refused() {
    with_broker(|mut client| async move {
        commits_beyond_the_log_or_of_unknown_partitions_are_refused(&mut client).await
    })
    .await;
}

fn code_of(status: &tonic::Status) -> ErrorCode {
    SluiceError::from_status(status).code
}

async fn a_produce_request_over_the_message_limit_ends_its_stream_with_too_large(
    client: &mut BrokerClient<Channel>,
) {
    let mut stream = OpenStream::open(client).await;
    let answer = stream
        .send(produce_request(1, TOPIC, test_util::batch(&["before"])))
        .await;
    assert_eq!(
        answer.error,
        ErrorCode::None as i32,
        "{}",
        answer.error_message
    );
    let oversized = Bytes::from(vec![0u8; DEFAULT_MAX_GRPC_MESSAGE_BYTES + 1]);
    stream
        .sender
        .send(produce_request(2, TOPIC, oversized))
        .await
        .expect("queue the oversized request");
    let status = match stream.answers.message().await {
        Err(status) => status,
        Ok(other) => {
            panic!("an oversized request must end the stream with an error, got {other:?}")
        }
    };
    assert_eq!(code_of(&status), ErrorCode::TooLarge, "{status:?}");
    assert!(
        status
            .message()
            .contains(&DEFAULT_MAX_GRPC_MESSAGE_BYTES.to_string()),
        "the error names the limit: {status:?}"
    );
    // Other streams keep working.
    let answers = produce(
        client,
        vec![produce_request(3, TOPIC, test_util::batch(&["after"]))],
    )
    .await;
    assert_eq!(
        answers[0].error,
        ErrorCode::None as i32,
        "{}",
        answers[0].error_message
    );
}

/// Two records whose offset deltas are 0, 0 (the second goes backwards
/// from where it must be), CRC recomputed so only the deltas are wrong.
fn batch_with_repeated_offset_delta() -> Bytes {
    let mut bytes = BatchSpec {
        values: &["a", "b"],
        timestamp_ms: Some(1_000),
        ..BatchSpec::default()
    }
    .build()
    .to_vec();
    let header = sluice_proto::batch::HEADER_BYTES;
    // Each small record: length (1 byte), timestamp delta (1), offset delta.
    let first_length = usize::from(bytes[header]);
    let second_offset_delta = header + 1 + first_length + 2;
    assert_eq!(bytes[second_offset_delta], 1, "the fixture's layout");
    bytes[second_offset_delta] = 0;
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_le_bytes());
    Bytes::from(bytes)
}

async fn batches_with_backward_offsets_or_extreme_timestamps_are_corrupt(
    client: &mut BrokerClient<Channel>,
) {
    let mut requests = vec![produce_request(
        10,
        TOPIC,
        batch_with_repeated_offset_delta(),
    )];
    for (index, timestamp_ms) in [i64::MIN, -1, i64::MAX].into_iter().enumerate() {
        let batch = batch_at(&["x"], timestamp_ms);
        requests.push(produce_request(11 + index as u64, TOPIC, batch));
    }
    requests.push(produce_request(20, TOPIC, batch_at(&["fine"], 0)));
    let answers = produce(client, requests).await;
    for answer in &answers[..answers.len() - 1] {
        assert_eq!(
            answer.error,
            ErrorCode::CorruptBatch as i32,
            "request {}: {}",
            answer.request_id,
            answer.error_message
        );
    }
    let last = answers.last().expect("answers");
    assert_eq!(last.error, ErrorCode::None as i32, "{}", last.error_message);
}

async fn list_offsets_refuses_an_unknown_spec(client: &mut BrokerClient<Channel>) {
    for spec in [OffsetSpec::Unspecified as i32, 4, 99, -1, i32::MAX] {
        let result = client
            .list_offsets(ListOffsetsRequest {
                topic: TOPIC.into(),
                partition: 0,
                spec,
                timestamp_ms: 0,
                ..Default::default()
            })
            .await;
        match result {
            Err(status) => {
                assert_eq!(code_of(&status), ErrorCode::InvalidArgument, "{status:?}");
                assert!(status.message().contains("spec"), "{status:?}");
            }
            Ok(answer) => panic!("spec {spec} was answered: {answer:?}"),
        }
    }
    let latest = list_offsets(client, TOPIC, OffsetSpec::Latest, 0).await;
    assert!(latest.offset > 0);
}

fn commit(topic: &str, partition: u32, offset: u64) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group: "limits-group".into(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: vec![PartitionOffset {
            topic: topic.into(),
            partition,
            offset,
            ..Default::default()
        }],
        transaction: None,
    }
}

async fn commits_beyond_the_log_or_of_unknown_partitions_are_refused(
    client: &mut BrokerClient<Channel>,
) {
    let end = list_offsets(client, TOPIC, OffsetSpec::Latest, 0)
        .await
        .offset;
    // At the end of the log: fine (the next offset to consume).
    eventually("the coordinator to take a commit", || {
        let mut client = client.clone();
        async move { client.commit_offsets(commit(TOPIC, 0, end)).await.ok() }
    })
    .await;
    for (topic, partition, offset, expected) in [
        (TOPIC, 0, end + 1, ErrorCode::OffsetOutOfRange),
        (TOPIC, 0, MAX_OFFSET, ErrorCode::OffsetOutOfRange),
        (TOPIC, 0, MAX_OFFSET + 1, ErrorCode::OffsetOutOfRange),
        (TOPIC, 0, u64::MAX, ErrorCode::OffsetOutOfRange),
        ("no-such-topic", 0, 0, ErrorCode::UnknownTopic),
        (TOPIC, 1, 0, ErrorCode::UnknownPartition),
        (TOPIC, u32::MAX, 0, ErrorCode::UnknownPartition),
    ] {
        match client
            .commit_offsets(commit(topic, partition, offset))
            .await
        {
            Err(status) => assert_eq!(
                code_of(&status),
                expected,
                "{topic}/{partition} at {offset}: {status:?}"
            ),
            Ok(answer) => panic!("{topic}/{partition} at {offset} was accepted: {answer:?}"),
        }
    }
    let committed = client
        .fetch_offsets(sluice_proto::v1::FetchOffsetsRequest {
            group: "limits-group".into(),
            partitions: Vec::new(),
            require_stable: false,
        })
        .await
        .expect("fetch offsets")
        .into_inner();
    assert_eq!(committed.offsets.len(), 1, "{committed:?}");
    assert_eq!(committed.offsets[0].offset, end);
}

/// `[replication] max_concurrent_takeovers` at its least (1 turn; 0 is
/// refused by the config check and means 1 in `TakeoverTurns`): a broker
/// handed twelve partitions at once takes them over one at a time and
/// still serves every one of them (no takeover waits on another's turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_takeover_at_a_time_still_serves_every_partition() {
    const PARTITIONS: u32 = 12;
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    let broker = start_broker_configured(&cluster.nameserver_url, |config| {
        config.replication.max_concurrent_takeovers = 1;
    })
    .await;
    let wide = sluice_proto::v1::TopicConfig {
        partitions: PARTITIONS,
        ..Default::default()
    };
    cluster.create_topic(TOPIC, wide).await;
    let producer = sluice_client::Producer::new(sluice_client::ProducerConfig {
        client: client_config(&cluster.nameserver_url),
        ..Default::default()
    })
    .await
    .expect("producer");
    let mut acknowledgements = Vec::new();
    for partition in 0..PARTITIONS {
        let record =
            sluice_client::Record::new(TOPIC, format!("p{partition}")).with_partition(partition);
        acknowledgements.push(producer.enqueue(record).await.expect("enqueue"));
    }
    for (partition, acknowledgement) in acknowledgements.into_iter().enumerate() {
        let written = acknowledgement.await.expect("acknowledged");
        assert_eq!(
            (written.partition, written.offset),
            (partition as u32, 0),
            "partition {partition}"
        );
    }
    producer.close().await.expect("close producer");
    broker.stop_cleanly().await;
    cluster.stop().await;
}
