//! Batch decoding in the fetcher: corrupt batches (fail or skip), records
//! before the requested offset, gaps, corrupt data as an error, and the
//! generation bump of a new start.

use super::*;
use sluice_proto::batch::Compression;
use sluice_proto::test_util::BatchSpec;

fn decode_all(partition: &TopicPartition, bytes: Vec<u8>, offset: u64) -> DecodedRange {
    let decoded = decode_batches(
        partition,
        &Bytes::from(bytes),
        offset,
        1 << 20,
        CorruptBatchPolicy::Fail,
    )
    .expect("valid batches");
    assert!(decoded.stopped_at.is_none() && decoded.skipped.is_empty());
    decoded
}

/// "a" "b" at 0, a poison batch claiming 1000 records at 2, "c" at 1002.
fn with_poison(compression: Compression) -> Bytes {
    use sluice_proto::test_util::poison::{compress, forged_batch, records_section};
    // Three records in a block whose header claims 1000: spans 2..1002.
    let block = compress(compression, &records_section(&["x", "y", "z"]));
    let mut poison = forged_batch(compression, 1000, &block).to_vec();
    sluice_proto::batch::assign(&mut poison, 2, 1);
    let mut bytes = batch(0, &["a", "b"]);
    bytes.extend(poison);
    bytes.extend(batch(1002, &["c"]));
    Bytes::from(bytes)
}

fn corrupt_range(error: &ClientError) -> (u64, u64) {
    match error {
        ClientError::CorruptBatch {
            topic,
            partition,
            base_offset,
            end_offset,
            ..
        } => {
            assert_eq!((topic.as_str(), *partition), ("t", 0));
            (*base_offset, *end_offset)
        }
        other => panic!("not a corrupt batch: {other}"),
    }
}

#[test]
fn fail_stops_at_a_corrupt_batch_after_the_records_before_it() {
    let partition = TopicPartition::new("t", 0);
    for compression in [Compression::Lz4, Compression::Zstd] {
        let bytes = with_poison(compression);
        let decoded = decode_batches(&partition, &bytes, 0, 1 << 20, CorruptBatchPolicy::Fail)
            .expect("the batches are sound");
        let offsets: Vec<u64> = decoded.records.iter().map(|record| record.offset).collect();
        assert_eq!(offsets, vec![0, 1]);
        assert_eq!(
            decoded.next_offset, 2,
            "stopped where the corrupt batch starts"
        );
        let error = decoded.stopped_at.expect("stopped at the corrupt batch");
        assert_eq!(corrupt_range(&error), (2, 1002));
        assert!(error.to_string().contains("seek to 1002"), "{error}");
        // Fetched from inside it: nothing before it, stopped at once.
        let decoded = decode_batches(
            &partition,
            &bytes.slice(..),
            500,
            1 << 20,
            CorruptBatchPolicy::Fail,
        )
        .expect("sound");
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, 500);
        assert_eq!(
            corrupt_range(&decoded.stopped_at.expect("stopped")),
            (2, 1002)
        );
    }
}

#[test]
fn skip_goes_on_after_a_corrupt_batch_and_reports_its_offsets() {
    let partition = TopicPartition::new("t", 0);
    let decoded = decode_batches(
        &partition,
        &with_poison(Compression::Zstd),
        1,
        1 << 20,
        CorruptBatchPolicy::Skip,
    )
    .expect("the batches are sound");
    let offsets: Vec<u64> = decoded.records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, vec![1, 1002]);
    assert_eq!(decoded.next_offset, 1003);
    assert!(decoded.stopped_at.is_none());
    assert_eq!(decoded.skipped.len(), 1);
    assert_eq!(corrupt_range(&decoded.skipped[0]), (2, 1002));
}

fn batch(base_offset: u64, values: &[&str]) -> Vec<u8> {
    BatchSpec {
        values,
        compression: Compression::Lz4,
        timestamp_ms: Some(7),
        ..BatchSpec::default()
    }
    .stored_at(base_offset)
}

#[test]
fn skips_records_before_the_requested_offset() {
    let mut bytes = batch(10, &["a", "b", "c"]);
    bytes.extend(batch(13, &["d"]));
    let partition = TopicPartition::new("t", 0);
    let DecodedRange {
        records,
        next_offset: next,
        ..
    } = decode_all(&partition, bytes, 11);
    let offsets: Vec<u64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, vec![11, 12, 13]);
    assert_eq!(records[0].value.as_deref(), Some(&b"b"[..]));
    assert_eq!(next, 14);
}

#[test]
fn stops_at_a_gap_instead_of_skipping_offsets() {
    let mut bytes = batch(0, &["a", "b"]);
    bytes.extend(batch(5, &["f"]));
    let partition = TopicPartition::new("t", 0);
    let DecodedRange {
        records,
        next_offset: next,
        ..
    } = decode_all(&partition, bytes, 0);
    assert_eq!(records.len(), 2);
    assert_eq!(next, 2);
}

#[test]
fn header_scan_ends_where_decoding_does() {
    let partition = TopicPartition::new("t", 0);
    let mut contiguous = batch(10, &["a", "b", "c"]);
    contiguous.extend(batch(13, &["d"]));
    let mut with_gap = batch(0, &["a", "b"]);
    with_gap.extend(batch(5, &["f"]));
    for (bytes, offset, expected) in [(contiguous, 11, 14), (with_gap, 0, 2)] {
        let bytes = Bytes::from(bytes);
        let decoded_end = decode_all(&partition, bytes.to_vec(), offset).next_offset;
        let scanned_end = next_offset_after(&partition, &bytes, offset).expect("valid framing");
        assert_eq!(scanned_end, expected);
        assert_eq!(scanned_end, decoded_end);
    }
    // Framing errors are found by the scan; CRC errors by the decoder.
    assert!(matches!(
        next_offset_after(&partition, &Bytes::from_static(&[1, 2, 3]), 0),
        Err(ClientError::Decode(_))
    ));
}

#[test]
fn corrupt_data_is_an_error_not_a_panic() {
    let mut bytes = batch(0, &["a", "b"]);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let partition = TopicPartition::new("t", 0);
    for policy in [CorruptBatchPolicy::Fail, CorruptBatchPolicy::Skip] {
        // A CRC that fails may be damage in transit: never skipped.
        let result = decode_batches(&partition, &Bytes::from(bytes.clone()), 0, 1 << 20, policy);
        assert!(matches!(result, Err(ClientError::Decode(_))));
        let result = decode_batches(
            &partition,
            &Bytes::from_static(&[1, 2, 3]),
            0,
            1 << 20,
            policy,
        );
        assert!(matches!(result, Err(ClientError::Decode(_))));
    }
}

#[test]
fn set_start_bumps_the_generation() {
    let mut state = FetchState::default();
    let partition = TopicPartition::new("t", 0);
    state.set_start(partition.clone(), StartOffset::Offset(5));
    let first = state.partitions[&partition].generation;
    assert_eq!(state.partitions[&partition].offset, 5);
    state.set_start(partition.clone(), StartOffset::Latest);
    assert!(state.partitions[&partition].generation > first);
    assert_eq!(
        state.partitions[&partition].unresolved,
        Some(StartOffset::Latest)
    );
}
