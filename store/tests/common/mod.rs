//! Helpers shared by the store's integration tests: batch construction and
//! reading a whole segment back.

#![allow(dead_code)]

use bytes::Bytes;
use sluice_proto::batch::{self, BatchBuilder, BatchIter, Compression, RecordData};
use sluice_store::storage::Storage;
use std::collections::BTreeMap;

/// A valid batch of `records` records at `base_offset`.
pub fn make_batch(base_offset: u64, records: u32, tag: u64) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for index in 0..records {
        builder.push(&RecordData {
            key: Some(Bytes::from(format!("key-{tag}-{index}"))),
            value: Some(Bytes::from(format!(
                "value-{tag}-{base_offset}-{index}-{}",
                "x".repeat((tag % 97) as usize)
            ))),
            headers: Vec::new(),
            tags: Vec::new(),
            timestamp_ms: Some(1_000_000 + base_offset as i64),
        });
    }
    let mut bytes = builder.build().to_vec();
    batch::assign(&mut bytes, base_offset, 1);
    Bytes::from(bytes)
}

/// Splits concatenated batches into `base offset -> bytes`, asserting
/// contiguous offsets from `expected_start`.
pub fn split_batches(bytes: &[u8], expected_start: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut batches = BTreeMap::new();
    let mut expected = expected_start;
    for item in BatchIter::new(bytes) {
        let (_, header, batch_bytes) = item.expect("served bytes are whole batches");
        assert_eq!(
            header.base_offset, expected,
            "served offsets are contiguous"
        );
        batch::validate(batch_bytes, usize::MAX).expect("served batches pass their CRC");
        batches.insert(header.base_offset, batch_bytes.to_vec());
        expected = header.end_offset();
    }
    batches
}

/// Outcome of reading a segment from its base: the batches served and the
/// error that stopped the reading, if any.
pub struct SegmentContents {
    pub batches: BTreeMap<u64, Vec<u8>>,
    pub end_offset: u64,
    pub stopped_by: Option<sluice_store::StoreError>,
}

/// Reads `segment_id` from `from` to its end with small reads.
pub fn read_all(storage: &Storage, segment_id: u64, from: u64) -> SegmentContents {
    let status = storage.segment_status(segment_id).expect("segment exists");
    let mut offset = from;
    let mut batches = BTreeMap::new();
    while offset < status.end_offset {
        match storage.read(segment_id, offset, 700, 0) {
            Ok(outcome) => {
                assert!(
                    !outcome.batches.is_empty(),
                    "a read below the end returns data"
                );
                let part = split_batches(&outcome.batches, offset_start(&outcome.batches));
                let first = *part.keys().next().expect("nonempty");
                assert!(first <= offset, "first batch contains the requested offset");
                for (base, bytes) in part {
                    let header = batch::BatchHeader::parse(&bytes).expect("header");
                    offset = header.end_offset();
                    batches.insert(base, bytes);
                }
            }
            Err(error) => {
                return SegmentContents {
                    batches,
                    end_offset: status.end_offset,
                    stopped_by: Some(error),
                }
            }
        }
    }
    SegmentContents {
        batches,
        end_offset: status.end_offset,
        stopped_by: None,
    }
}

fn offset_start(bytes: &[u8]) -> u64 {
    batch::BatchHeader::parse(bytes)
        .expect("served bytes start with a batch header")
        .base_offset
}

// Not every test binary that includes this module picks ports.
#[allow(unused_imports)]
pub use sluice_proto::test_util::free_port;

/// Connects a `Store` client to `address`, retrying while the server
/// starts (up to about 20 s).
pub async fn connect_store(
    address: &str,
) -> sluice_proto::v1::store_client::StoreClient<tonic::transport::Channel> {
    let mut last_error = String::new();
    for _ in 0..400 {
        match sluice_proto::v1::store_client::StoreClient::connect(format!("http://{address}"))
            .await
        {
            Ok(client) => {
                return client
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(64 * 1024 * 1024)
            }
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("store at {address} never accepted a connection: {last_error}");
}
