//! The `Store` gRPC service with bad input: every refusal carries the right
//! error code and the server keeps serving, including after random bytes
//! on its TCP port.

mod common;

use common::{connect_store, make_batch};
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{
    AppendRequest, AppendResponse, Durability, FindOffsetRequest, ReadRequest, SealSegmentRequest,
    SegmentStatusRequest, StoreCreateSegmentRequest, StoreDeleteSegmentRequest,
    StoreListSegmentsRequest,
};
use sluice_proto::{ErrorCode, SluiceError};
use sluice_store::StoreConfig;
use std::io::Write;
use tonic::transport::Channel;

struct Server {
    address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sluice_store::StoreError>>,
    _directory: tempfile::TempDir,
}

async fn start_server() -> Server {
    start_server_in(tempfile::tempdir().expect("temp dir")).await
}

async fn start_server_in(directory: tempfile::TempDir) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let config = StoreConfig {
        data_dir: directory.path().to_path_buf(),
        // Nothing listens there: the store must serve anyway.
        nameservers: vec![format!("http://127.0.0.1:{}", common::free_port())],
        max_batch_bytes: 4096,
        register_retry_max_backoff_ms: 300,
        ..StoreConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice_store::run(config, listener, async move {
        let _ = stopped.await;
    }));
    Server {
        address,
        stop: Some(stop),
        task,
        _directory: directory,
    }
}

async fn append_one(
    client: &mut StoreClient<Channel>,
    segment_id: u64,
    batch: bytes::Bytes,
) -> AppendResponse {
    let request = AppendRequest {
        segment_id,
        writer_epoch: 1,
        batch,
        sequence: 77,
    };
    let mut responses = client
        .append(tokio_stream::iter(vec![request]))
        .await
        .expect("append stream opens")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("append answer")
        .expect("one answer");
    assert_eq!(response.sequence, 77);
    response
}

fn code_of(status: &tonic::Status) -> ErrorCode {
    SluiceError::from_status(status).code
}

async fn assert_still_serving(client: &mut StoreClient<Channel>) {
    client
        .list_segments(StoreListSegmentsRequest {})
        .await
        .expect("server still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_codes_and_the_server_keeps_serving() {
    let mut server = start_server().await;
    let mut client = connect_store(&server.address).await;
    client
        .create_segment(StoreCreateSegmentRequest {
            segment_id: 5,
            topic: "t".to_string(),
            partition: 0,
            base_offset: 0,
            writer_epoch: 1,
            durability: Durability::Fsync as i32,
        })
        .await
        .expect("create");
    let good = make_batch(0, 2, 1);
    let response = append_one(&mut client, 5, good.clone()).await;
    assert_eq!(response.error, ErrorCode::None as i32, "{response:?}");
    assert_eq!(response.end_offset, 2);

    // Oversized batch.
    let mut builder = sluice_proto::batch::BatchBuilder::new(Default::default());
    builder.push(&sluice_proto::batch::RecordData {
        key: None,
        value: Some(bytes::Bytes::from(vec![1u8; 10_000])),
        headers: Vec::new(),
        tags: Vec::new(),
        timestamp_ms: Some(1),
    });
    let mut large = builder.build().to_vec();
    sluice_proto::batch::assign(&mut large, 2, 1);
    let response = append_one(&mut client, 5, large.into()).await;
    assert_eq!(response.error, ErrorCode::TooLarge as i32, "{response:?}");

    // Bad CRC.
    let mut damaged = make_batch(2, 1, 1).to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let response = append_one(&mut client, 5, damaged.into()).await;
    assert_eq!(
        response.error,
        ErrorCode::CorruptBatch as i32,
        "{response:?}"
    );

    // Not a batch at all.
    let response = append_one(&mut client, 5, bytes::Bytes::from_static(b"hello")).await;
    assert_eq!(
        response.error,
        ErrorCode::CorruptBatch as i32,
        "{response:?}"
    );

    // Wrong base offset.
    let response = append_one(&mut client, 5, make_batch(9, 1, 1)).await;
    assert_eq!(
        response.error,
        ErrorCode::InvalidArgument as i32,
        "{response:?}"
    );
    assert!(response.error_message.contains("end 2"), "{response:?}");

    // Unknown segment.
    let response = append_one(&mut client, 999, make_batch(0, 1, 1)).await;
    assert_eq!(response.error, ErrorCode::UnknownSegment as i32);
    let status = client
        .read(ReadRequest {
            segment_id: 999,
            offset: 0,
            max_bytes: 0,
            end_offset: 0,
        })
        .await
        .expect_err("unknown segment");
    assert_eq!(code_of(&status), ErrorCode::UnknownSegment);

    // Offset out of range.
    let status = client
        .read(ReadRequest {
            segment_id: 5,
            offset: 50,
            max_bytes: 0,
            end_offset: 0,
        })
        .await
        .expect_err("out of range");
    assert_eq!(code_of(&status), ErrorCode::OffsetOutOfRange);

    // Conflicting create.
    let status = client
        .create_segment(StoreCreateSegmentRequest {
            segment_id: 5,
            topic: "other".to_string(),
            partition: 0,
            base_offset: 0,
            writer_epoch: 1,
            durability: 0,
        })
        .await
        .expect_err("conflict");
    assert_eq!(code_of(&status), ErrorCode::Conflict);

    // Still serving: the good batch reads back identically, appends work.
    let response = append_one(&mut client, 5, make_batch(2, 1, 3)).await;
    assert_eq!(response.error, ErrorCode::None as i32, "{response:?}");
    let read = client
        .read(ReadRequest {
            segment_id: 5,
            offset: 0,
            max_bytes: 1,
            end_offset: 0,
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(read.batches, good);
    assert_eq!(read.segment_end_offset, 3);
    let found = client
        .find_offset(FindOffsetRequest {
            segment_id: 5,
            timestamp_ms: 0,
        })
        .await
        .expect("find")
        .into_inner();
    assert_eq!(found.offset, Some(0));

    // Seal fences later appends; status agrees.
    let sealed = client
        .seal_segment(SealSegmentRequest {
            segment_id: 5,
            writer_epoch: 2,
            ..SealSegmentRequest::default()
        })
        .await
        .expect("seal")
        .into_inner();
    assert!(sealed.sealed);
    assert_eq!(sealed.end_offset, 3);
    let response = append_one(&mut client, 5, make_batch(3, 1, 1)).await;
    assert_eq!(response.error, ErrorCode::SegmentSealed as i32);
    let status = client
        .get_segment_status(SegmentStatusRequest { segment_id: 5 })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status, sealed);
    client
        .delete_segment(StoreDeleteSegmentRequest { segment_id: 5 })
        .await
        .expect("delete");
    let listed = client
        .list_segments(StoreListSegmentsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(listed.segments.is_empty());

    // A fence that reaches a store before the old owner's create leaves the
    // segment there empty and sealed: the delayed create then finds it (same
    // identity), and the old owner's appends are refused.
    let placeholder = client
        .seal_segment(SealSegmentRequest {
            segment_id: 6,
            writer_epoch: 4,
            topic: "orders".to_string(),
            partition: 0,
            base_offset: 10,
            durability: 0,
        })
        .await
        .expect("seal of an unknown segment")
        .into_inner();
    assert!(placeholder.sealed);
    assert_eq!(placeholder.end_offset, 10);
    client
        .create_segment(StoreCreateSegmentRequest {
            segment_id: 6,
            topic: "orders".to_string(),
            partition: 0,
            base_offset: 10,
            writer_epoch: 3,
            durability: 0,
        })
        .await
        .expect("the delayed create succeeds without reopening it");
    let response = append_one(&mut client, 6, make_batch(10, 1, 1)).await;
    assert_eq!(
        response.error,
        ErrorCode::SegmentSealed as i32,
        "the fenced writer's append is refused"
    );
    // Without an identity, an unknown segment stays unknown.
    let unknown = client
        .seal_segment(SealSegmentRequest {
            segment_id: 7,
            writer_epoch: 4,
            ..SealSegmentRequest::default()
        })
        .await
        .expect_err("unknown segment");
    assert_eq!(
        sluice_proto::SluiceError::from_status(&unknown).code,
        ErrorCode::UnknownSegment
    );

    if let Some(stop) = server.stop.take() {
        let _ = stop.send(());
    }
    server
        .task
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_port_do_not_stop_the_server() {
    let mut server = start_server().await;
    let mut client = connect_store(&server.address).await;
    let address = server.address.clone();
    tokio::task::spawn_blocking(move || {
        use rand::{Rng, SeedableRng};
        let mut random = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..20 {
            let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
                panic!("cannot connect to {address}");
            };
            let mut garbage = vec![0u8; random.random_range(1..70_000)];
            random.fill(garbage.as_mut_slice());
            if attempt % 2 == 0 {
                // A valid HTTP/2 preface followed by junk frames.
                let mut prefixed = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                prefixed.extend_from_slice(&garbage);
                garbage = prefixed;
            }
            // The server may close the connection mid-write.
            let _ = stream.write_all(&garbage);
        }
    })
    .await
    .expect("garbage writer");
    assert_still_serving(&mut client).await;
    let mut fresh = connect_store(&server.address).await;
    assert_still_serving(&mut fresh).await;
    if let Some(stop) = server.stop.take() {
        let _ = stop.send(());
    }
    server
        .task
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}

/// Writes segments 1 and 2 (20 batches each, 2 sealed) with the engine,
/// then makes both metadata copies of 1 garbage and truncates 2's log.
async fn damaged_directory() -> tempfile::TempDir {
    use sluice_store::{NewSegment, Storage, StorageOptions};
    let directory = tempfile::tempdir().expect("temp dir");
    {
        let (storage, _) =
            Storage::open(directory.path(), StorageOptions::default()).expect("open");
        for segment_id in [1, 2] {
            storage
                .create_segment(NewSegment {
                    segment_id,
                    topic: "t".to_string(),
                    partition: 0,
                    base_offset: 0,
                    writer_epoch: 1,
                    durability: Durability::Fsync,
                })
                .await
                .expect("create");
            for index in 0..20 {
                storage
                    .append(segment_id, 1, make_batch(index * 2, 2, 1))
                    .await
                    .expect("append");
            }
        }
        storage.seal_segment(2, 1).await.expect("seal");
        storage.close().await.expect("close");
    }
    let segments = directory.path().join("segments");
    for name in [
        "00000000000000000001.meta",
        "00000000000000000001.meta.copy",
    ] {
        std::fs::write(segments.join(name), b"garbage").expect("write");
    }
    let log = std::fs::OpenOptions::new()
        .write(true)
        .open(segments.join("00000000000000000002.log"))
        .expect("open log");
    let length = log.metadata().expect("stat").len();
    log.set_len(length / 2).expect("truncate");
    directory
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_segments_are_listed_and_refused_with_storage_corrupt() {
    let server = start_server_in(damaged_directory().await).await;
    let mut client = connect_store(&server.address).await;
    let listed = client
        .list_segments(StoreListSegmentsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.damaged_segments.len(), 1, "{listed:?}");
    assert_eq!(listed.damaged_segments[0].segment_id, 1);
    assert!(
        listed.damaged_segments[0]
            .detail
            .contains("metadata unusable"),
        "{listed:?}"
    );
    assert_eq!(listed.segments.len(), 1, "{listed:?}");
    let truncated = &listed.segments[0];
    assert_eq!((truncated.segment_id, truncated.end_offset), (2, 40));
    assert_eq!(truncated.damaged_ranges.len(), 1, "{truncated:?}");
    let range = &truncated.damaged_ranges[0];
    assert_eq!(range.end_offset, 40);
    assert_eq!(truncated.corrupt_from_offset, Some(range.start_offset));
    let error = client
        .get_segment_status(SegmentStatusRequest { segment_id: 1 })
        .await
        .expect_err("damaged");
    assert_eq!(code_of(&error), ErrorCode::StorageCorrupt, "{error:?}");
    assert!(error.message().contains("segment 1"), "{error:?}");
    let error = client
        .create_segment(StoreCreateSegmentRequest {
            segment_id: 1,
            topic: "t".to_string(),
            partition: 0,
            base_offset: 0,
            writer_epoch: 1,
            durability: Durability::Fsync as i32,
        })
        .await
        .expect_err("never recreated empty");
    assert_eq!(code_of(&error), ErrorCode::StorageCorrupt, "{error:?}");
    let error = client
        .read(ReadRequest {
            segment_id: 2,
            offset: range.start_offset,
            ..ReadRequest::default()
        })
        .await
        .expect_err("damaged range");
    assert_eq!(code_of(&error), ErrorCode::StorageCorrupt, "{error:?}");
    let range_text = format!("[{}, 40)", range.start_offset);
    assert!(error.message().contains(&range_text), "{error:?}");
    assert_still_serving(&mut client).await;
}
