//! Builds uncompressed batches in place: the header's room is reserved at
//! the front of one buffer sized from the previous batch, records are
//! encoded behind it, and the header and CRC are filled in at the end. The
//! shared `BatchBuilder` grows its record buffer by doubling and then
//! copies it behind a new header, which moved every produced byte about
//! twice more; compressed batches still go through it (compression copies
//! anyway).
//!
//! The layout is the batch format of `sluice_proto::batch` (see its
//! module docs); a test checks the output is byte-identical to
//! `BatchBuilder`'s.

use bytes::{BufMut, Bytes, BytesMut};
use sluice_proto::batch::{BatchBuilder, Compression, RecordData, HEADER_BYTES, MAGIC};

/// Where the CRC sits and where the bytes it covers start.
const CRC_AT: usize = 17;
const CRC_COVERS_FROM: usize = 21;

/// A batch being built, uncompressed in place or through `BatchBuilder`.
pub(crate) enum BatchWriter {
    Plain(PlainBatch),
    Compressed(BatchBuilder),
}

impl BatchWriter {
    /// `capacity_hint_bytes`: expected size of the whole batch.
    pub fn new(compression: Compression, capacity_hint_bytes: usize) -> Self {
        match compression {
            Compression::None => BatchWriter::Plain(PlainBatch::new(capacity_hint_bytes)),
            compression => BatchWriter::Compressed(BatchBuilder::new(compression)),
        }
    }

    /// Uncompressed size so far, header included.
    pub fn size_bytes(&self) -> usize {
        match self {
            BatchWriter::Plain(batch) => batch.buffer.len(),
            BatchWriter::Compressed(builder) => builder.size_bytes(),
        }
    }

    pub fn push(&mut self, record: &RecordData) {
        match self {
            BatchWriter::Plain(batch) => batch.push(record),
            BatchWriter::Compressed(builder) => builder.push(record),
        }
    }

    /// Finishes the batch. Panics if empty: an empty batch is a caller bug.
    pub fn build(self) -> Bytes {
        match self {
            BatchWriter::Plain(batch) => batch.build(),
            BatchWriter::Compressed(builder) => builder.build(),
        }
    }
}

pub(crate) struct PlainBatch {
    /// Header room (zeros until `build`) then the records.
    buffer: BytesMut,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

impl PlainBatch {
    fn new(capacity_hint_bytes: usize) -> Self {
        let mut buffer = BytesMut::with_capacity(capacity_hint_bytes.max(HEADER_BYTES));
        buffer.put_bytes(0, HEADER_BYTES);
        Self {
            buffer,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
        }
    }

    fn push(&mut self, record: &RecordData) {
        let timestamp_ms = record
            .timestamp_ms
            .unwrap_or_else(sluice_proto::now_unix_ms);
        if self.record_count == 0 {
            self.first_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let timestamp_delta = timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let offset_delta = self.record_count;
        let body = body_length(record, timestamp_delta, offset_delta);
        let buffer = &mut self.buffer;
        buffer.reserve(body + 10);
        put_varint(buffer, body as u64);
        put_varint(buffer, zig(timestamp_delta));
        put_varint(buffer, u64::from(offset_delta));
        for field in [&record.key, &record.value] {
            match field {
                Some(bytes) => {
                    put_varint(buffer, zig(bytes.len() as i64));
                    buffer.put_slice(bytes);
                }
                None => put_varint(buffer, zig(-1)),
            }
        }
        put_varint(buffer, record.headers.len() as u64);
        for (name, value) in &record.headers {
            put_varint(buffer, name.len() as u64);
            buffer.put_slice(name.as_bytes());
            put_varint(buffer, zig(value.len() as i64));
            buffer.put_slice(value);
        }
        put_varint(buffer, record.tags.len() as u64);
        for tag in &record.tags {
            put_varint(buffer, tag.len() as u64);
            buffer.put_slice(tag.as_bytes());
        }
        self.record_count += 1;
    }

    fn build(mut self) -> Bytes {
        assert!(self.record_count > 0, "a batch needs at least one record");
        let batch_length = self.buffer.len();
        let mut header = &mut self.buffer[..HEADER_BYTES];
        header.put_u64_le(0); // base offset: the broker assigns it
        header.put_u32_le(batch_length as u32);
        header.put_u32_le(0); // writer epoch: the broker assigns it
        header.put_u8(MAGIC);
        header.put_u32_le(0); // CRC, filled below
        header.put_u16_le(0); // attributes: no compression
        header.put_u32_le(self.record_count);
        header.put_i64_le(self.first_timestamp_ms);
        header.put_i64_le(self.max_timestamp_ms);
        header.put_i64_le(-1); // producer id: not idempotent
        header.put_i16_le(-1); // producer epoch
        header.put_i32_le(-1); // base sequence
        debug_assert!(header.is_empty(), "the header fills its room exactly");
        let crc = crc32c::crc32c(&self.buffer[CRC_COVERS_FROM..]);
        self.buffer[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        self.buffer.freeze()
    }
}

fn zig(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn put_varint(buffer: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buffer.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.put_u8(value as u8);
}

fn varint_length(value: u64) -> usize {
    // 7 bits per byte, at least one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn body_length(record: &RecordData, timestamp_delta: i64, offset_delta: u32) -> usize {
    let nullable = |field: &Option<bytes::Bytes>| match field {
        Some(bytes) => varint_length(zig(bytes.len() as i64)) + bytes.len(),
        None => 1,
    };
    let mut length = varint_length(zig(timestamp_delta))
        + varint_length(u64::from(offset_delta))
        + nullable(&record.key)
        + nullable(&record.value)
        + varint_length(record.headers.len() as u64)
        + varint_length(record.tags.len() as u64);
    for (name, value) in &record.headers {
        length += varint_length(name.len() as u64)
            + name.len()
            + varint_length(zig(value.len() as i64))
            + value.len();
    }
    for tag in &record.tags {
        length += varint_length(tag.len() as u64) + tag.len();
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::decode;

    fn records() -> Vec<RecordData> {
        let mut records = Vec::new();
        for index in 0..300usize {
            records.push(RecordData {
                key: (index % 3 != 0).then(|| Bytes::from(format!("key-{index}"))),
                value: (index % 7 != 0).then(|| Bytes::from(vec![index as u8; index * 5])),
                headers: (0..index % 3)
                    .map(|header| (format!("h{header}"), Bytes::from(vec![1u8; header * 70])))
                    .collect(),
                tags: (0..index % 2).map(|tag| format!("tag-{tag}")).collect(),
                // Deltas of both signs and of several varint lengths.
                timestamp_ms: Some(1_700_000_000_000 + (index as i64 * 997) % 50_000 - 20_000),
            });
        }
        records
    }

    #[test]
    fn plain_batches_equal_batch_builder_output() {
        for capacity_hint_bytes in [0, 100, 1 << 20] {
            let mut writer = BatchWriter::new(Compression::None, capacity_hint_bytes);
            let mut builder = BatchBuilder::new(Compression::None);
            for record in records() {
                writer.push(&record);
                builder.push(&record);
                assert_eq!(writer.size_bytes(), builder.size_bytes());
            }
            let written = writer.build();
            assert_eq!(written, builder.build(), "hint {capacity_hint_bytes}");
            let (header, decoded) = decode(&written, 1 << 24).expect("a valid batch");
            assert_eq!(header.record_count, 300);
            assert_eq!(decoded[5].value.as_deref(), Some(&[5u8; 25][..]));
        }
    }

    #[test]
    fn varint_lengths_match_encoding() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX >> 1, u64::MAX] {
            let mut buffer = BytesMut::new();
            put_varint(&mut buffer, value);
            assert_eq!(varint_length(value), buffer.len(), "{value}");
        }
    }

    #[test]
    fn compressed_batches_go_through_the_builder() {
        let mut writer = BatchWriter::new(Compression::Lz4, 0);
        for record in records().iter().take(10) {
            writer.push(record);
        }
        let (header, decoded) = decode(&writer.build(), 1 << 24).expect("a valid batch");
        assert_eq!(header.compression, Compression::Lz4);
        assert_eq!(decoded.len(), 10);
    }
}
