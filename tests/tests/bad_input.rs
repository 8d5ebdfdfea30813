//! Bad input against real processes: every case gets a clear error with a
//! stable code, and every server keeps serving afterwards.

use bytes::{Bytes, BytesMut};
use sluice_client::{Admin, ClientError, Consumer, ConsumerConfig, Record, StartOffset};
use sluice_proto::test_util::batch;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{FetchPartition, FetchRequest, ProduceRequest, ReadRequest, TopicConfig};
use sluice_proto::{ErrorCode, SluiceError};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::io::Write;
use std::time::{Duration, Instant};

const TOPIC: &str = "inputs";

async fn broker_for(admin: &Admin, topic: &str, partition: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(description) = admin.describe_topic(topic).await {
            if let Some(route) = description
                .partitions
                .get(partition as usize)
                .and_then(|p| p.route.clone())
            {
                if !route.broker_address.is_empty() {
                    let address = route.broker_address;
                    return if address.starts_with("http") {
                        address
                    } else {
                        format!("http://{address}")
                    };
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no owner for {topic}/{partition}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one produce request on a fresh stream and returns the answer's
/// error code.
async fn produce_raw(
    broker: &str,
    topic: &str,
    partition: u32,
    batch: Bytes,
) -> (ErrorCode, String) {
    let mut client = BrokerClient::connect(broker.to_string())
        .await
        .expect("connect broker")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let request = ProduceRequest {
        request_id: 1,
        topic: topic.to_string(),
        partition,
        batch,
        resume: false,
        ..Default::default()
    };
    match client.produce(tokio_stream::iter(vec![request])).await {
        Ok(response) => {
            let mut stream = response.into_inner();
            match stream.message().await {
                Ok(Some(answer)) => (
                    ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal),
                    answer.error_message,
                ),
                Ok(None) => (ErrorCode::Internal, "stream ended without an answer".into()),
                Err(status) => {
                    let error = SluiceError::from_status(&status);
                    (error.code, error.message)
                }
            }
        }
        Err(status) => {
            let error = SluiceError::from_status(&status);
            (error.code, error.message)
        }
    }
}

/// Writes junk to a gRPC port: random bytes, then an HTTP/2 preface
/// followed by garbage frames.
fn garbage_to(port: u16) {
    use rand::RngCore;
    let mut random = rand::rng();
    for round in 0..3 {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            if round == 1 {
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            }
            let mut junk = vec![0u8; 64 * 1024];
            random.fill_bytes(&mut junk);
            let _ = stream.write_all(&junk);
        }
    }
}

async fn assert_still_serves(cluster: &Cluster) {
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("nameserver still answers");
    let status = admin
        .cluster_status()
        .await
        .expect("cluster status after garbage");
    assert_eq!(status.brokers.len(), 1);
    assert_eq!(status.stores.len(), 1);
    let producer = cluster.producer().await;
    let metadata = producer
        .send(Record {
            topic: TOPIC.to_string(),
            partition: Some(0),
            key: None,
            value: Some(Bytes::from_static(b"still here")),
            headers: Vec::new(),
            tags: Vec::new(),
            timestamp_ms: None,
        })
        .await
        .expect("broker and store still accept produce");
    producer.close().await.expect("close");
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            ..ConsumerConfig::default()
        },
        vec![(TOPIC.to_string(), 0, StartOffset::Offset(metadata.offset))],
    )
    .await
    .expect("consumer");
    let record = consumer
        .recv_timeout(Duration::from_secs(20))
        .await
        .expect("recv")
        .expect("record arrives");
    assert_eq!(record.value.as_deref(), Some(&b"still here"[..]));
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_servers_keep_serving() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    admin
        .create_topic(
            TOPIC,
            TopicConfig {
                partitions: 2,
                max_batch_bytes: 1024 * 1024,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create topic");
    let broker = broker_for(&admin, TOPIC, 0).await;
    // The route is published before the broker finished taking the
    // partition over; wait until it accepts a valid batch.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, message) = produce_raw(&broker, TOPIC, 0, batch(&["warm-up"])).await;
        if code == ErrorCode::None {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partition never became writable: {code:?} {message}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Invalid topic names.
    let overlong = "t".repeat(300);
    for name in [
        "../x",
        "",
        overlong.as_str(),
        "a\0b",
        "a/b",
        "..",
        "with space",
    ] {
        match admin
            .create_topic(
                name,
                TopicConfig {
                    partitions: 1,
                    ..TopicConfig::default()
                },
            )
            .await
        {
            Err(ClientError::Server(error)) => {
                assert_eq!(
                    error.code,
                    ErrorCode::InvalidArgument,
                    "name {name:?}: {error}"
                );
                assert!(!error.message.is_empty());
            }
            Err(ClientError::InvalidArgument(_)) => {}
            other => panic!("topic name {name:?} was not refused: {other:?}"),
        }
    }
    // Impossible partition counts.
    for partitions in [0, 1_000_000] {
        let result = admin
            .create_topic(
                "fine-name",
                TopicConfig {
                    partitions,
                    ..TopicConfig::default()
                },
            )
            .await;
        assert!(result.is_err(), "{partitions} partitions accepted");
    }
    // Unknown topic.
    match admin.describe_topic("no-such-topic").await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::UnknownTopic),
        other => panic!("unknown topic gave {other:?}"),
    }

    // Oversized batch (topic limit 1 MiB).
    let big = "x".repeat(2 * 1024 * 1024);
    let (code, message) = produce_raw(&broker, TOPIC, 0, batch(&[big.as_str()])).await;
    assert_eq!(code, ErrorCode::TooLarge, "{message}");
    // Bad CRC: flip one bit in the records.
    let mut corrupt = BytesMut::from(&batch(&["hello", "world"])[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    let (code, message) = produce_raw(&broker, TOPIC, 0, corrupt.freeze()).await;
    assert_eq!(code, ErrorCode::CorruptBatch, "{message}");
    assert!(
        message.to_lowercase().contains("crc"),
        "message should name the CRC: {message}"
    );
    // Truncated batch and plain garbage.
    let truncated = batch(&["hello"]).slice(..20);
    let (code, _) = produce_raw(&broker, TOPIC, 0, truncated).await;
    assert_eq!(code, ErrorCode::CorruptBatch);
    // Unknown topic and partition on the data path.
    let (code, _) = produce_raw(&broker, "no-such-topic", 0, batch(&["x"])).await;
    assert!(
        matches!(code, ErrorCode::UnknownTopic | ErrorCode::NotOwner),
        "{code:?}"
    );
    let (code, _) = produce_raw(&broker, TOPIC, 99, batch(&["x"])).await;
    assert!(
        matches!(code, ErrorCode::UnknownPartition | ErrorCode::NotOwner),
        "{code:?}"
    );
    let (code, _) = produce_raw(&broker, "../etc", 0, batch(&["x"])).await;
    assert!(
        matches!(code, ErrorCode::InvalidArgument | ErrorCode::UnknownTopic),
        "{code:?}"
    );

    // Offsets beyond the end.
    let (code, _) = produce_raw(&broker, TOPIC, 0, batch(&["one", "two"])).await;
    assert_eq!(code, ErrorCode::None);
    let mut client = BrokerClient::connect(broker.clone())
        .await
        .expect("connect");
    for offset in [1_000_000, i64::MAX as u64, u64::MAX] {
        let response = client
            .fetch(FetchRequest {
                partitions: vec![FetchPartition {
                    topic: TOPIC.into(),
                    partition: 0,
                    offset,
                    max_bytes: 1 << 20,
                }],
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 1 << 20,
                ..Default::default()
            })
            .await;
        match response {
            Ok(response) => {
                let partition = &response.get_ref().partitions[0];
                assert_eq!(
                    partition.error,
                    ErrorCode::OffsetOutOfRange as i32,
                    "offset {offset}"
                );
                assert!(partition.batches.is_empty());
            }
            Err(status) => assert_eq!(
                SluiceError::from_status(&status).code,
                ErrorCode::OffsetOutOfRange
            ),
        }
    }
    // A store read of an unknown segment and an impossible offset.
    let store_url = cluster.stores[0].url();
    let mut store = StoreClient::connect(store_url)
        .await
        .expect("connect store");
    let status = store
        .read(ReadRequest {
            segment_id: u64::MAX,
            offset: 0,
            max_bytes: 1024,
            end_offset: 0,
        })
        .await
        .expect_err("unknown segment");
    assert_eq!(
        SluiceError::from_status(&status).code,
        ErrorCode::UnknownSegment
    );

    // Garbage on every port.
    for service in cluster
        .nameservers
        .iter()
        .chain(&cluster.brokers)
        .chain(&cluster.stores)
    {
        garbage_to(service.port);
    }
    assert_still_serves(&cluster).await;
}
