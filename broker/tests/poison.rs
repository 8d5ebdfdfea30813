//! Poison compressed batches (issue 11, item 4): a compressed batch whose
//! header and CRC are sound but whose records are not (a record count far
//! beyond what it holds, garbage, a decompression bomb, bad framing) is
//! refused with CORRUPT_BATCH before it takes any offset, and the same and
//! other producers keep going.

#[allow(dead_code)] // the kit serves every scenario file; this one uses part of it
mod common;

use bytes::Bytes;
use common::*;
use sluice_client::{ClientError, Consumer, ConsumerConfig, CorruptBatchPolicy, StartOffset};
use sluice_proto::batch::{assign, BatchIter, Compression};
use sluice_proto::test_util::poison::{compress, forged_batch, poison_batches, records_section};
use sluice_proto::test_util::BatchSpec;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{
    subscribe_request, subscribe_response, AppendRequest, CreateSubscriptionRequest,
    InitialPosition, ListSegmentsRequest, SubscribeOpen, SubscribeRequest, Subscription,
    SubscriptionType,
};
use sluice_proto::ErrorCode;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_compressed_batches_are_refused_without_taking_offsets() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    cluster.create_one_partition_topic().await;
    // A bomb beyond the configured limit (kept small: debug builds
    // compress slowly) but within the batch size.
    let broker = start_broker_configured(&cluster.nameserver_url, |config| {
        config.produce.max_decompressed_batch_bytes = MIB as u64;
    })
    .await;
    let mut producer = broker_client(&broker.address).await;
    let mut other = broker_client(&broker.address).await;
    produce_until_accepted(&producer, 1, "a", "the broker to accept produce").await;
    let mut end = 1;
    let mut request_id = 10;
    for compression in [Compression::Lz4, Compression::Zstd] {
        for (kind, poison) in poison_batches(compression, 2 * MIB) {
            let good = BatchSpec {
                values: &["after"],
                compression,
                ..BatchSpec::default()
            }
            .build();
            let answers = produce(
                &mut producer,
                vec![
                    produce_request(request_id, TOPIC, poison),
                    produce_request(request_id + 1, TOPIC, good),
                ],
            )
            .await;
            assert_eq!(
                answers[0].error,
                ErrorCode::CorruptBatch as i32,
                "{compression:?}, {kind}: {}",
                answers[0].error_message
            );
            assert_eq!(
                (answers[1].error, answers[1].base_offset),
                (ErrorCode::None as i32, end),
                "{compression:?}, {kind}: the same stream goes on where the log ended: {}",
                answers[1].error_message
            );
            let answer = produce(
                &mut other,
                vec![produce_request(
                    request_id + 2,
                    TOPIC,
                    sluice_proto::test_util::batch(&["other"]),
                )],
            )
            .await;
            assert_eq!(
                (answer[0].error, answer[0].base_offset),
                (ErrorCode::None as i32, end + 1),
                "{compression:?}, {kind}: another producer goes on: {}",
                answer[0].error_message
            );
            end += 2;
            request_id += 3;
        }
    }
    // The log holds exactly what was acknowledged, and all of it decodes.
    let fetched = fetch(&mut producer, 0, 0).await;
    assert_eq!(fetched.partitions[0].high_watermark, end);
    let values = values(&fetched.partitions[0].batches);
    assert_eq!(values.len() as u64, end);
    assert_eq!(values[0], "a");
    assert!(values[1..]
        .chunks(2)
        .all(|pair| pair == ["after".to_string(), "other".to_string()]));

    broker.stop_cleanly().await;
    cluster.stop().await;
}

/// What a poison batch that bypassed the produce path (an older broker, a
/// direct write to a store) does: the broker serves it as it is (fetch
/// does not decode), and a subscription's dispatcher, which does decode,
/// steps over it and delivers what follows instead of wedging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_written_straight_to_the_store_does_not_wedge_a_subscription() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (cluster, broker, poison_end, resumed) = partition_with_poison(directory.path()).await;
    let mut client = broker_client(&broker.address).await;
    // Fetch serves it as stored: consumers meet it (the SDK's policy).
    let fetched = fetch(&mut client, 1, 0).await;
    let first = BatchIter::new(&fetched.partitions[0].batches)
        .next()
        .expect("a batch")
        .expect("sound header");
    assert_eq!((first.1.base_offset, first.1.end_offset()), (1, poison_end));

    create_subscription(&cluster).await;
    let delivered = subscribe_until(&client, resumed.base_offset).await;
    assert_eq!(delivered, vec![0, poison_end, poison_end + 1]);

    broker.stop_cleanly().await;
    cluster.stop().await;
}

/// The SDK consumer against a real broker serving a poison batch: with
/// `on_corrupt_batch = Fail` it reports the batch's offsets once, the other
/// records stay readable and a seek past the batch goes on; with `Skip` it
/// reads every record around the batch, in order, and counts the skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_consumer_reports_or_skips_a_poison_batch_and_reads_on() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (cluster, broker, poison_end, resumed) = partition_with_poison(directory.path()).await;
    let after = [poison_end, resumed.base_offset];

    let mut failing = sdk_consumer(&cluster, CorruptBatchPolicy::Fail).await;
    assert_eq!(next_offset(&mut failing).await, Ok(0));
    assert_eq!(
        next_offset(&mut failing).await,
        Err((1, poison_end)),
        "Fail reports the poison batch's offsets"
    );
    failing
        .seek(TOPIC, 0, StartOffset::Offset(poison_end))
        .await
        .expect("seek past the poison batch");
    for offset in after {
        assert_eq!(next_offset(&mut failing).await, Ok(offset));
    }
    assert_eq!(failing.skipped_corrupt_batches(), 0);
    failing.close().await.expect("close");

    let mut skipping = sdk_consumer(&cluster, CorruptBatchPolicy::Skip).await;
    for offset in [0, after[0], after[1]] {
        assert_eq!(next_offset(&mut skipping).await, Ok(offset));
    }
    assert_eq!(skipping.skipped_corrupt_batches(), 1);
    skipping.close().await.expect("close");

    broker.stop_cleanly().await;
    cluster.stop().await;
}

/// A one-partition topic holding "a" at 0, a poison batch at 1..1001
/// written straight to the store while no broker ran, "c" at 1001, and "d"
/// produced through the broker that then took the partition over; returns
/// that broker, the poison batch's end and the answer to "d".
async fn partition_with_poison(
    directory: &std::path::Path,
) -> (
    Cluster,
    RunningBroker,
    u64,
    sluice_proto::v1::ProduceResponse,
) {
    let (cluster, broker, _client) = one_partition_holding_a(directory).await;
    broker.stop_cleanly().await;
    let poison_end = append_past_the_broker(&cluster).await;
    let broker = start_broker(&cluster.nameserver_url).await;
    let client = broker_client(&broker.address).await;
    let resumed = produce_until_accepted(&client, 2, "d", "the new owner to serve").await;
    assert_eq!(
        resumed.base_offset,
        poison_end + 1,
        "the log kept the poison batch"
    );
    (cluster, broker, poison_end, resumed)
}

async fn sdk_consumer(cluster: &Cluster, policy: CorruptBatchPolicy) -> Consumer {
    let config = ConsumerConfig {
        client: client_config(&cluster.nameserver_url),
        on_corrupt_batch: policy,
        ..ConsumerConfig::default()
    };
    Consumer::assign(config, vec![(TOPIC.into(), 0, StartOffset::Earliest)])
        .await
        .expect("assign the partition")
}

/// The next record's offset, or a corrupt batch's offsets.
async fn next_offset(consumer: &mut Consumer) -> Result<u64, (u64, u64)> {
    let next = tokio::time::timeout(
        std::time::Duration::from_millis(DEADLINE_MS),
        consumer.recv(),
    )
    .await
    .expect("the consumer answers within the deadline");
    match next {
        Ok(record) => Ok(record.offset),
        Err(ClientError::CorruptBatch {
            base_offset,
            end_offset,
            ..
        }) => Err((base_offset, end_offset)),
        Err(other) => panic!("unexpected consumer error: {other}"),
    }
}

/// Appends a poison batch (a block of three records claiming 1000) at
/// offset 1 and "c" after it to the partition's open segment, straight on
/// the store; returns the poison batch's end offset.
async fn append_past_the_broker(cluster: &Cluster) -> u64 {
    let mut nameserver = NameServerClient::new(
        tonic::transport::Endpoint::from_shared(cluster.nameserver_url.clone())
            .expect("valid nameserver url")
            .connect_lazy(),
    );
    let segments = nameserver
        .list_segments(ListSegmentsRequest {
            topic: TOPIC.into(),
            partition: 0,
        })
        .await
        .expect("list segments")
        .into_inner()
        .segments;
    let open = segments
        .iter()
        .max_by_key(|segment| segment.base_offset)
        .expect("the partition has a segment");
    let block = compress(Compression::Zstd, &records_section(&["x", "y", "z"]));
    let mut poison = forged_batch(Compression::Zstd, 1000, &block).to_vec();
    assign(&mut poison, 1, open.writer_epoch as u32);
    let mut after = sluice_proto::test_util::batch(&["c"]).to_vec();
    assign(&mut after, 1001, open.writer_epoch as u32);
    let mut store = StoreClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.store_address))
            .expect("valid store address")
            .connect_lazy(),
    );
    let requests: Vec<AppendRequest> = [poison, after]
        .into_iter()
        .enumerate()
        .map(|(sequence, batch)| AppendRequest {
            segment_id: open.segment_id,
            writer_epoch: open.writer_epoch,
            batch: Bytes::from(batch),
            sequence: sequence as u64,
        })
        .collect();
    let mut answers = store
        .append(tokio_stream::iter(requests))
        .await
        .expect("append stream")
        .into_inner();
    for _ in 0..2 {
        let answer = answers
            .message()
            .await
            .expect("append answered")
            .expect("an answer per append");
        assert_eq!(
            answer.error,
            ErrorCode::None as i32,
            "{}",
            answer.error_message
        );
    }
    1001
}

async fn create_subscription(cluster: &Cluster) {
    let mut nameserver = NameServerClient::new(
        tonic::transport::Endpoint::from_shared(cluster.nameserver_url.clone())
            .expect("valid nameserver url")
            .connect_lazy(),
    );
    nameserver
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                topic: TOPIC.into(),
                name: "audit".into(),
                r#type: SubscriptionType::Shared as i32,
                initial_position: InitialPosition::Earliest as i32,
                ..Subscription::default()
            }),
        })
        .await
        .expect("create subscription");
}

/// Opens a consumer on the subscription and collects delivered offsets
/// until `last` arrives.
async fn subscribe_until(client: &BrokerClient<Channel>, last: u64) -> Vec<u64> {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(SubscribeRequest {
            request: Some(subscribe_request::Request::Open(SubscribeOpen {
                topic: TOPIC.into(),
                partition: 0,
                subscription: "audit".into(),
                consumer_name: "reader".into(),
                priority: 0,
                permits: 100,
            })),
        })
        .await
        .expect("queue open");
    let mut responses = client
        .clone()
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("subscribe stream")
        .into_inner();
    let mut delivered = Vec::new();
    while delivered.last() != Some(&last) {
        let response = tokio::time::timeout(
            std::time::Duration::from_millis(DEADLINE_MS),
            responses.message(),
        )
        .await
        .unwrap_or_else(|_| panic!("nothing delivered after {delivered:?}"))
        .expect("subscribe stream healthy")
        .expect("stream open");
        if let Some(subscribe_response::Response::Delivery(delivery)) = response.response {
            delivered.extend(delivery.offsets);
        }
    }
    drop(sender);
    delivered
}
