//! Poison batches: what a buggy or hostile producer can send. Each has a
//! sound header and a CRC that matches, over records no consumer can
//! decode (issue 11, item 4).

use crate::batch::{
    Compression, ATTRIBUTES_AT, BATCH_LENGTH_AT, CRC_AT, CRC_COVERS_FROM, HEADER_BYTES,
    RECORD_COUNT_AT,
};
use crate::test_util::BatchSpec;
use bytes::Bytes;

/// The records section of an uncompressed batch of `values`.
pub fn records_section(values: &[&str]) -> Vec<u8> {
    BatchSpec {
        values,
        timestamp_ms: Some(1_700_000_000_000),
        ..BatchSpec::default()
    }
    .build()[HEADER_BYTES..]
        .to_vec()
}

/// `raw` compressed as the SDK compresses a records section.
pub fn compress(compression: Compression, raw: &[u8]) -> Vec<u8> {
    match compression {
        Compression::None => raw.to_vec(),
        Compression::Lz4 => lz4_flex::block::compress_prepend_size(raw),
        Compression::Zstd => zstd::bulk::compress(raw, 1).expect("zstd compresses"),
    }
}

/// A batch as a producer sends it (base offset 0) whose header claims
/// `record_count` records and `compression`, whose records section is
/// `section` as given, and whose CRC matches.
pub fn forged_batch(compression: Compression, record_count: u32, section: &[u8]) -> Bytes {
    let mut batch = BatchSpec {
        values: &["x"],
        timestamp_ms: Some(1_700_000_000_000),
        ..BatchSpec::default()
    }
    .build()[..HEADER_BYTES]
        .to_vec();
    batch.extend_from_slice(section);
    let length = u32::try_from(batch.len()).expect("a test batch is small");
    batch[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&length.to_le_bytes());
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2]
        .copy_from_slice(&compression.attributes().to_le_bytes());
    batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&record_count.to_le_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERS_FROM..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    Bytes::from(batch)
}

/// One record encoded by hand: `offset_delta` as given, value `value`.
pub fn record_with_offset_delta(offset_delta: u8, value: &[u8]) -> Vec<u8> {
    let value_length = u8::try_from(value.len() * 2).expect("a short value");
    let mut body = vec![0, offset_delta, 1, value_length];
    body.extend_from_slice(value);
    body.extend_from_slice(&[0, 0]);
    let mut record = vec![u8::try_from(body.len()).expect("a short record")];
    record.extend_from_slice(&body);
    record
}

/// Bytes that are not a compressed block of `compression`, though they
/// start like one (an lz4 size prefix of 100 bytes, zstd's frame magic).
pub fn garbage_block(compression: Compression) -> Vec<u8> {
    let mut block = match compression {
        Compression::Lz4 => 100u32.to_le_bytes().to_vec(),
        Compression::Zstd => 0xFD2F_B528u32.to_le_bytes().to_vec(),
        Compression::None => Vec::new(),
    };
    let mut state = 0x9E37_79B9u32;
    for _ in 0..60 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        block.push(state as u8);
    }
    block
}

/// Every kind of poison batch for `compression`, named: a record count
/// far beyond the records held, garbage for the compressed block, a bomb
/// decompressing to `bomb_bytes`, bad framing inside a valid block,
/// records at offsets outside the batch, and more records than claimed.
pub fn poison_batches(compression: Compression, bomb_bytes: usize) -> Vec<(&'static str, Bytes)> {
    let three = records_section(&["a", "b", "c"]);
    let mut bad_framing = three.clone();
    bad_framing[0] += 1; // the first record's length swallows a byte of the second
    let mut outside = record_with_offset_delta(0, b"a");
    outside.extend(record_with_offset_delta(7, b"b"));
    vec![
        (
            "a record count far beyond the records held",
            forged_batch(compression, 1_000_000, &compress(compression, &three)),
        ),
        (
            "garbage for a compressed block",
            forged_batch(compression, 3, &garbage_block(compression)),
        ),
        (
            "a decompression bomb",
            forged_batch(
                compression,
                1,
                &compress(compression, &vec![0u8; bomb_bytes]),
            ),
        ),
        (
            "bad record framing inside a valid block",
            forged_batch(compression, 3, &compress(compression, &bad_framing)),
        ),
        (
            "a record offset delta outside the batch",
            forged_batch(compression, 2, &compress(compression, &outside)),
        ),
        (
            "more records than the header claims",
            forged_batch(compression, 2, &compress(compression, &three)),
        ),
    ]
}
