//! The record-batch format.
//!
//! A batch is the unit producers send, brokers append, stores persist and
//! consumers fetch. Brokers and stores handle it as opaque bytes after
//! checking the header and the CRC; only clients decode records.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! offset size field
//!      0    8 base_offset      offset of the first record; set by the broker
//!      8    4 batch_length     total bytes of the batch, header included
//!     12    4 writer_epoch     ownership epoch of the appending broker; set by the broker
//!     16    1 magic            format version, currently 1
//!     17    4 crc              CRC-32C of bytes [21, batch_length)
//!     21    2 attributes       bits 0-2: compression (0 none, 1 lz4, 2 zstd); bit 3 transactional;
//!                              bit 4 control (brokers only); bits 5-15 reserved, must be 0
//!     23    4 record_count     >= 1; for a control batch the offsets it occupies
//!     27    8 first_timestamp  unix ms of the first record
//!     35    8 max_timestamp    largest record timestamp, unix ms
//!     43    8 producer_id      idempotent producer's id (ADR 0010); -1 when not idempotent
//!     51    2 producer_epoch   -1 when not idempotent
//!     53    4 base_sequence    sequence of the first record on the partition; -1 when not idempotent
//!     57      records          possibly compressed as one block
//! ```
//!
//! The fields the broker sets (base offset, writer epoch) sit before the CRC
//! so assigning offsets never recomputes it, and the CRC the producer
//! computed protects the records end to end.
//!
//! Each record: `length` (varint) then `timestamp_delta` (zigzag varint,
//! relative to first_timestamp), `offset_delta` (varint), key and value (each
//! a zigzag varint length, -1 for null, then bytes), header count (varint)
//! and headers (name length varint + UTF-8 name, value length zigzag varint +
//! bytes), tag count (varint) and tags (length varint + UTF-8).

use crate::limits::{
    MAX_OFFSET, MAX_RECORDS_PER_BATCH, MAX_TIMESTAMP_MS, MAX_UNCOMPRESSED_RECORDS_BYTES,
    MIN_TIMESTAMP_MS,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub mod control;
mod validate_compressed;
mod validate_produced;
pub use validate_compressed::{validate_compressed, validate_compressed_keyed};
pub(crate) use validate_produced::check_record_sequence;
pub use validate_produced::{validate_produced, validate_produced_keyed};

pub const MAGIC: u8 = 1;
/// Bytes of the fixed batch header.
pub const HEADER_BYTES: usize = 57;

const BASE_OFFSET_AT: usize = 0;
pub(crate) const BATCH_LENGTH_AT: usize = 8;
const WRITER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
pub(crate) const CRC_AT: usize = 17;
pub(crate) const CRC_COVERS_FROM: usize = 21;
pub(crate) const ATTRIBUTES_AT: usize = 21;
pub(crate) const RECORD_COUNT_AT: usize = 23;
const FIRST_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;

const COMPRESSION_MASK: u16 = 0b111;
/// Attribute bit 3: the batch holds a transaction's records (ADR 0016).
pub const TRANSACTIONAL_BIT: u16 = 1 << 3;
/// Attribute bit 4: a control batch (transaction marker or compaction gap),
/// written by brokers only.
pub const CONTROL_BIT: u16 = 1 << 4;
/// Every attribute bit this format version defines.
const KNOWN_ATTRIBUTES: u16 = COMPRESSION_MASK | TRANSACTIONAL_BIT | CONTROL_BIT;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported batch format version {0} (expected {MAGIC})")]
    BadMagic(u8),
    #[error("batch length field {declared} is invalid (have {available} bytes)")]
    BadLength { declared: u32, available: usize },
    #[error("batch CRC mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("batch is {length} bytes; the limit is {limit}")]
    TooLarge { length: usize, limit: usize },
    #[error("batch record count {0} is out of range (1..={MAX_RECORDS_PER_BATCH})")]
    BadRecordCount(u32),
    #[error("batch base offset {0} is beyond the largest offset {MAX_OFFSET}")]
    BadBaseOffset(u64),
    #[error("unknown batch attributes {0:#06x}")]
    BadAttributes(u16),
    #[error("malformed transactional or control batch: {0}")]
    BadControl(&'static str),
    #[error("control batches are written by brokers only; a producer may not send one")]
    ControlFromProducer,
    #[error(
        "record {index} has no key; a compacted topic keeps the latest record of each key, \
         so every record produced to it needs one (a tombstone is a key with a null value)"
    )]
    KeylessRecord { index: u32 },
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: u32, reason: &'static str },
    #[error(
        "records decompress to more than {limit_bytes} bytes, the limit (a decompression bomb?)"
    )]
    DecompressionBomb { limit_bytes: usize },
    #[error("records failed to decompress: {0}")]
    Decompression(String),
    #[error("batch holds {actual} records, header says {declared}")]
    RecordCountMismatch { declared: u32, actual: u32 },
    #[error(
        "record {index} has offset delta {delta}; the records of a batch must carry \
         offset deltas 0, 1, 2, ... in order"
    )]
    BadOffsetDelta { index: u32, delta: u64 },
    #[error(
        "{what} {timestamp_ms} is outside the accepted range \
         {MIN_TIMESTAMP_MS}..={MAX_TIMESTAMP_MS} (unix ms)"
    )]
    BadTimestamp {
        what: &'static str,
        timestamp_ms: i64,
    },
    #[error("batch max_timestamp {declared} differs from its largest record timestamp {actual}")]
    MaxTimestampMismatch { declared: i64, actual: i64 },
}

impl BatchError {
    /// True when the batch itself is sound (header and CRC check out, so
    /// its offsets are known and it is stored as its producer sent it) but
    /// its records cannot be decoded: bad framing, a block that does not
    /// decompress or decompresses past the limit, a record count that
    /// lies. Reading it again gives the same answer; a consumer can only
    /// stop at it or skip exactly its offsets.
    pub fn is_undecodable_records(&self) -> bool {
        matches!(
            self,
            BatchError::BadRecord { .. }
                | BatchError::BadOffsetDelta { .. }
                | BatchError::DecompressionBomb { .. }
                | BatchError::Decompression(_)
                | BatchError::RecordCountMismatch { .. }
        )
    }
}

/// Compression of a batch's records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_bits(bits: u16) -> Option<Self> {
        match bits & COMPRESSION_MASK {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }

    pub(crate) fn attributes(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    /// Parses `none`, `lz4` or `zstd`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Compression::None),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// The attribute bits of a batch header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes {
    pub compression: Compression,
    /// Bit 3: a transaction's records.
    pub transactional: bool,
    /// Bit 4: a control batch (brokers only).
    pub control: bool,
}

impl Attributes {
    /// Parses the attribute bits, refusing reserved bits, an unknown
    /// compression, a compressed control batch and a control batch that
    /// also claims to be transactional.
    pub fn parse(bits: u16) -> Result<Self, BatchError> {
        if bits & !KNOWN_ATTRIBUTES != 0 {
            return Err(BatchError::BadAttributes(bits));
        }
        let compression = Compression::from_bits(bits).ok_or(BatchError::BadAttributes(bits))?;
        let attributes = Self {
            compression,
            transactional: bits & TRANSACTIONAL_BIT != 0,
            control: bits & CONTROL_BIT != 0,
        };
        if attributes.control && (attributes.transactional || compression != Compression::None) {
            return Err(BatchError::BadAttributes(bits));
        }
        Ok(attributes)
    }

    /// The bits, as [`Attributes::parse`] reads them.
    pub fn bits(self) -> u16 {
        let mut bits = self.compression.attributes();
        if self.transactional {
            bits |= TRANSACTIONAL_BIT;
        }
        if self.control {
            bits |= CONTROL_BIT;
        }
        bits
    }
}

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_length: u32,
    pub writer_epoch: u32,
    pub crc: u32,
    pub compression: Compression,
    /// Attribute bit 3: a transaction's records (producer id and epoch set).
    pub transactional: bool,
    /// Attribute bit 4: a control batch; see [`control`].
    pub control: bool,
    /// Records in the batch, or for a control batch the offsets it occupies.
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buffer)
}

impl BatchHeader {
    /// Parses and sanity-checks the header at the start of `bytes`. Does not
    /// check the CRC; see [`validate`].
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        }
        let magic = bytes[MAGIC_AT];
        if magic != MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        let batch_length = read_u32(bytes, BATCH_LENGTH_AT);
        if (batch_length as usize) < HEADER_BYTES {
            return Err(BatchError::BadLength {
                declared: batch_length,
                available: bytes.len(),
            });
        }
        let attributes = u16::from_le_bytes([bytes[ATTRIBUTES_AT], bytes[ATTRIBUTES_AT + 1]]);
        let attributes = Attributes::parse(attributes)?;
        let record_count = read_u32(bytes, RECORD_COUNT_AT);
        if record_count == 0 || record_count > MAX_RECORDS_PER_BATCH {
            return Err(BatchError::BadRecordCount(record_count));
        }
        let base_offset = read_u64(bytes, BASE_OFFSET_AT);
        if base_offset > MAX_OFFSET {
            return Err(BatchError::BadBaseOffset(base_offset));
        }
        let producer_id = read_u64(bytes, PRODUCER_ID_AT) as i64;
        let producer_epoch =
            i16::from_le_bytes([bytes[PRODUCER_EPOCH_AT], bytes[PRODUCER_EPOCH_AT + 1]]);
        if attributes.transactional && (producer_id < 0 || producer_epoch < 0) {
            return Err(BatchError::BadControl(
                "a transactional batch needs a producer id and epoch",
            ));
        }
        Ok(Self {
            base_offset,
            batch_length,
            writer_epoch: read_u32(bytes, WRITER_EPOCH_AT),
            crc: read_u32(bytes, CRC_AT),
            compression: attributes.compression,
            transactional: attributes.transactional,
            control: attributes.control,
            record_count,
            first_timestamp_ms: read_u64(bytes, FIRST_TIMESTAMP_AT) as i64,
            max_timestamp_ms: read_u64(bytes, MAX_TIMESTAMP_AT) as i64,
            producer_id,
            producer_epoch,
            base_sequence: read_u32(bytes, BASE_SEQUENCE_AT) as i32,
        })
    }

    /// One past the offset of the last record.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.end_offset() - 1
    }

    /// The attribute bits, parsed.
    pub fn attributes(&self) -> Attributes {
        Attributes {
            compression: self.compression,
            transactional: self.transactional,
            control: self.control,
        }
    }

    /// Records the records section holds: `record_count`, except a control
    /// batch, which holds exactly one record however many offsets it
    /// occupies.
    pub fn records_held(&self) -> u32 {
        if self.control {
            1
        } else {
            self.record_count
        }
    }
}

/// Checks that `bytes` is exactly one well-formed batch of at most
/// `max_batch_bytes` whose CRC matches. This is what brokers and stores do
/// to every batch they receive or read back from disk.
pub fn validate(bytes: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    let header = validate_frame(bytes, max_batch_bytes)?;
    if header.compression == Compression::None {
        walk_records(&bytes[HEADER_BYTES..], header.records_held(), |_, _| Ok(()))?;
    }
    if header.control {
        control::parse(bytes, &header)?;
    }
    Ok(header)
}

/// The size, length and CRC checks of [`validate`], without walking the
/// records.
fn validate_frame(bytes: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    if bytes.len() > max_batch_bytes {
        return Err(BatchError::TooLarge {
            length: bytes.len(),
            limit: max_batch_bytes,
        });
    }
    let header = BatchHeader::parse(bytes)?;
    if header.batch_length as usize != bytes.len() {
        return Err(BatchError::BadLength {
            declared: header.batch_length,
            available: bytes.len(),
        });
    }
    let actual = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(header)
}

/// Overwrites the broker-assigned fields of a batch (outside the CRC).
pub fn assign(batch: &mut [u8], base_offset: u64, writer_epoch: u32) {
    assert!(batch.len() >= HEADER_BYTES, "assign on a validated batch");
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_le_bytes());
    batch[WRITER_EPOCH_AT..WRITER_EPOCH_AT + 4].copy_from_slice(&writer_epoch.to_le_bytes());
}

/// Splits concatenated batches, checking only that each header parses and
/// its length fits. Stops with an error at the first malformed one.
pub struct BatchIter<'a> {
    remaining: &'a [u8],
    position: usize,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            remaining: bytes,
            position: 0,
        }
    }

    /// Byte position of the next batch within the original slice.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for BatchIter<'a> {
    /// `(position, header, batch bytes)`.
    type Item = Result<(usize, BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining.is_empty() {
            return None;
        }
        let header = match BatchHeader::parse(self.remaining) {
            Ok(header) => header,
            Err(error) => {
                self.remaining = &[];
                return Some(Err(error));
            }
        };
        let length = header.batch_length as usize;
        if length > self.remaining.len() {
            let available = self.remaining.len();
            self.remaining = &[];
            return Some(Err(BatchError::Truncated {
                needed: length,
                available,
            }));
        }
        let (batch, rest) = self.remaining.split_at(length);
        let position = self.position;
        self.remaining = rest;
        self.position += length;
        Some(Ok((position, header, batch)))
    }
}

// ------------------------------------------------------------ varints

fn put_varint(buffer: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buffer.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.put_u8(value as u8);
}

fn put_zigzag(buffer: &mut BytesMut, value: i64) {
    put_varint(buffer, ((value << 1) ^ (value >> 63)) as u64);
}

fn varint_length(mut value: u64) -> usize {
    let mut length = 1;
    while value >= 0x80 {
        value >>= 7;
        length += 1;
    }
    length
}

struct Reader<'a> {
    bytes: &'a [u8],
    index: u32,
}

impl<'a> Reader<'a> {
    fn fail(&self, reason: &'static str) -> BatchError {
        BatchError::BadRecord {
            index: self.index,
            reason,
        }
    }

    fn varint(&mut self) -> Result<u64, BatchError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some((&byte, rest)) = self.bytes.split_first() else {
                return Err(self.fail("truncated varint"));
            };
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.fail("varint longer than 10 bytes"))
    }

    fn zigzag(&mut self) -> Result<i64, BatchError> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], BatchError> {
        if length > self.bytes.len() {
            return Err(self.fail("field longer than the record"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    /// A nullable field: zigzag length, -1 for null.
    fn nullable(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        let length = self.zigzag()?;
        match length {
            -1 => Ok(None),
            length if length < 0 => Err(self.fail("negative length")),
            length => self.take(length as usize).map(Some),
        }
    }

    fn string(&mut self) -> Result<&'a str, BatchError> {
        let length = self.varint()?;
        let bytes = self.take(usize::try_from(length).map_err(|_| self.fail("huge length"))?)?;
        std::str::from_utf8(bytes).map_err(|_| self.fail("name is not UTF-8"))
    }
}

// ------------------------------------------------------------ records

/// A record as a producer hands it to [`BatchBuilder::push`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordData {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub tags: Vec<String>,
    /// Unix ms; the builder stamps the current time when `None`.
    pub timestamp_ms: Option<i64>,
}

/// A decoded record with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub tags: Vec<String>,
}

/// Builds one batch from records.
///
/// Records are encoded straight behind room reserved for the header in one
/// buffer; an uncompressed batch is finished in place (header and CRC
/// filled in, no copy), a compressed one compresses the records section.
/// Size the buffer with [`BatchBuilder::with_capacity`] when the final size
/// is roughly known (a producer uses its previous batch's size).
pub struct BatchBuilder {
    compression: Compression,
    /// `HEADER_BYTES` of room (zero until `build`) then the records.
    buffer: BytesMut,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    /// Attribute bit 3 (ADR 0016).
    transactional: bool,
    /// Attribute bit 4; set only by [`control`]'s builders.
    control: bool,
    /// For a control batch, the offsets it occupies (its `record_count`).
    control_offsets: u32,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 0)
    }

    /// A builder whose buffer holds `capacity_hint_bytes` (the expected
    /// uncompressed batch size, header included) before it has to grow.
    pub fn with_capacity(compression: Compression, capacity_hint_bytes: usize) -> Self {
        let mut buffer = BytesMut::with_capacity(capacity_hint_bytes.max(HEADER_BYTES));
        buffer.put_bytes(0, HEADER_BYTES);
        Self {
            compression,
            buffer,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            control: false,
            control_offsets: 0,
        }
    }

    /// Stamps the batch as an idempotent producer's (ADR 0010): its id,
    /// epoch and the partition sequence of the first record.
    pub fn with_producer(
        mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as a transaction's records (attribute bit 3,
    /// ADR 0016); needs [`BatchBuilder::with_producer`] with an id and
    /// epoch, else brokers refuse it.
    pub fn transactional(mut self) -> Self {
        self.transactional = true;
        self
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Uncompressed size so far, header included.
    pub fn size_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Size a record adds to a batch, before compression.
    pub fn record_size(record: &RecordData) -> usize {
        let body = Self::body_length(record, 0, 0);
        varint_length(body as u64) + body
    }

    fn body_length(record: &RecordData, timestamp_delta: i64, offset_delta: u32) -> usize {
        let nullable = |field: &Option<Bytes>| match field {
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

    /// Appends a record.
    pub fn push(&mut self, record: &RecordData) {
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(crate::now_unix_ms);
        if self.record_count == 0 {
            self.first_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let timestamp_delta = timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let offset_delta = self.record_count;
        let body = Self::body_length(record, timestamp_delta, offset_delta);
        let buffer = &mut self.buffer;
        buffer.reserve(body + 10);
        put_varint(buffer, body as u64);
        put_zigzag(buffer, timestamp_delta);
        put_varint(buffer, u64::from(offset_delta));
        for field in [&record.key, &record.value] {
            match field {
                Some(bytes) => {
                    put_zigzag(buffer, bytes.len() as i64);
                    buffer.put_slice(bytes);
                }
                None => put_zigzag(buffer, -1),
            }
        }
        put_varint(buffer, record.headers.len() as u64);
        for (name, value) in &record.headers {
            put_varint(buffer, name.len() as u64);
            buffer.put_slice(name.as_bytes());
            put_zigzag(buffer, value.len() as i64);
            buffer.put_slice(value);
        }
        put_varint(buffer, record.tags.len() as u64);
        for tag in &record.tags {
            put_varint(buffer, tag.len() as u64);
            buffer.put_slice(tag.as_bytes());
        }
        self.record_count += 1;
    }

    /// Writes the header into `batch[..HEADER_BYTES]` and the CRC over the
    /// rest; `batch` is the whole batch.
    fn seal(&self, batch: &mut [u8], compression: Compression) {
        let attributes = Attributes {
            compression,
            transactional: self.transactional,
            control: self.control,
        }
        .bits();
        let record_count = if self.control {
            self.control_offsets
        } else {
            self.record_count
        };
        let batch_length = batch.len() as u32;
        let mut header = &mut batch[..HEADER_BYTES];
        header.put_u64_le(0); // base offset: the broker assigns it
        header.put_u32_le(batch_length);
        header.put_u32_le(0); // writer epoch: the broker assigns it
        header.put_u8(MAGIC);
        header.put_u32_le(0); // CRC, filled below
        header.put_u16_le(attributes);
        header.put_u32_le(record_count);
        header.put_i64_le(self.first_timestamp_ms);
        header.put_i64_le(self.max_timestamp_ms);
        header.put_i64_le(self.producer_id);
        header.put_i16_le(self.producer_epoch);
        header.put_i32_le(self.base_sequence);
        debug_assert!(header.is_empty(), "the header fills its room exactly");
        let crc = crc32c::crc32c(&batch[CRC_COVERS_FROM..]);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Finishes the batch (base offset 0, writer epoch 0: the broker sets
    /// both). Panics if empty: an empty batch is a caller bug.
    pub fn build(mut self) -> Bytes {
        assert!(self.record_count > 0, "a batch needs at least one record");
        let compressed = match self.compression {
            Compression::None => None,
            _ if self.control => None,
            Compression::Lz4 => Some(lz4_flex::block::compress_prepend_size(
                &self.buffer[HEADER_BYTES..],
            )),
            // zstd only fails on allocation problems; fall back to none
            // rather than lose the records.
            Compression::Zstd => zstd::bulk::compress(&self.buffer[HEADER_BYTES..], 1).ok(),
        };
        match compressed {
            None => {
                let mut buffer = std::mem::take(&mut self.buffer);
                self.seal(&mut buffer, Compression::None);
                buffer.freeze()
            }
            Some(records) => {
                let mut batch = BytesMut::with_capacity(HEADER_BYTES + records.len());
                batch.put_bytes(0, HEADER_BYTES);
                batch.put_slice(&records);
                self.seal(&mut batch, self.compression);
                batch.freeze()
            }
        }
    }
}

fn zig(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// What [`walk_records`] tells of each record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalkedRecord {
    pub timestamp_delta: i64,
    pub offset_delta: u64,
    pub has_key: bool,
}

/// Checks the framing of `record_count` records without allocating,
/// calling `each` with every record's index, timestamp delta, offset
/// delta and whether it has a key: the one walk over the records of a
/// produced batch, compressed (after decompression) or not.
fn walk_records(
    mut bytes: &[u8],
    record_count: u32,
    mut each: impl FnMut(u32, WalkedRecord) -> Result<(), BatchError>,
) -> Result<(), BatchError> {
    for index in 0..record_count {
        if bytes.is_empty() {
            return Err(BatchError::RecordCountMismatch {
                declared: record_count,
                actual: index,
            });
        }
        let mut reader = Reader { bytes, index };
        let length = reader.varint()?;
        let length = usize::try_from(length).map_err(|_| reader.fail("huge length"))?;
        let body = reader.take(length)?;
        bytes = reader.bytes;
        let mut record = Reader { bytes: body, index };
        let walked = parse_record_body(
            &mut record,
            |timestamp_delta, offset_delta, key, _, _, _| WalkedRecord {
                timestamp_delta,
                offset_delta,
                has_key: key.is_some(),
            },
        )?;
        each(index, walked)?;
    }
    if !bytes.is_empty() {
        return Err(BatchError::BadRecord {
            index: record_count,
            reason: "trailing bytes after the last record",
        });
    }
    Ok(())
}

type Headers<'a> = Vec<(&'a str, &'a [u8])>;

fn parse_record_body<'a, T>(
    reader: &mut Reader<'a>,
    mut make: impl FnMut(i64, u64, Option<&'a [u8]>, Option<&'a [u8]>, Headers<'a>, Vec<&'a str>) -> T,
) -> Result<T, BatchError> {
    let timestamp_delta = reader.zigzag()?;
    let offset_delta = reader.varint()?;
    let key = reader.nullable()?;
    let value = reader.nullable()?;
    let header_count = reader.varint()?;
    // Each header takes at least two bytes, which bounds the allocation.
    if header_count > reader.bytes.len() as u64 / 2 {
        return Err(reader.fail("header count exceeds the record"));
    }
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let name = reader.string()?;
        let value = reader.nullable()?.unwrap_or_default();
        headers.push((name, value));
    }
    let tag_count = reader.varint()?;
    if tag_count > reader.bytes.len() as u64 {
        return Err(reader.fail("tag count exceeds the record"));
    }
    let mut tags = Vec::with_capacity(tag_count as usize);
    for _ in 0..tag_count {
        tags.push(reader.string()?);
    }
    if !reader.bytes.is_empty() {
        return Err(reader.fail("trailing bytes in record"));
    }
    Ok(make(
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
        tags,
    ))
}

fn decompress(compression: Compression, compressed: &[u8]) -> Result<Vec<u8>, BatchError> {
    validate_compressed::decompress_bounded(compression, compressed, MAX_UNCOMPRESSED_RECORDS_BYTES)
}

/// Decodes every record of one batch, checking the CRC first. Keys and
/// values of uncompressed batches share `batch`'s memory.
pub fn decode(
    batch: &Bytes,
    max_batch_bytes: usize,
) -> Result<(BatchHeader, Vec<Record>), BatchError> {
    decode_selected(batch, max_batch_bytes, |_| true)
}

/// Like [`decode`], but builds only the records whose offset `wanted`
/// accepts; the others are stepped over (their framing is still walked
/// and the CRC covers them). A subscriber given a few records of a large
/// batch pays for those few.
pub fn decode_selected(
    batch: &Bytes,
    max_batch_bytes: usize,
    wanted: impl Fn(u64) -> bool,
) -> Result<(BatchHeader, Vec<Record>), BatchError> {
    let header = validate(batch, max_batch_bytes)?;
    if header.control {
        // A control batch holds no application records (ADR 0016 §3.1).
        return Ok((header, Vec::new()));
    }
    let records = match header.compression {
        Compression::None => batch.slice(HEADER_BYTES..),
        compression => Bytes::from(decompress(compression, &batch[HEADER_BYTES..])?),
    };
    let mut output = Vec::with_capacity(header.record_count as usize);
    let mut skipped = 0u32;
    let mut cursor = records.clone();
    for index in 0..header.record_count {
        let mut reader = Reader {
            bytes: &cursor,
            index,
        };
        let length = reader.varint()? as usize;
        let prefix = cursor.len() - reader.bytes.len();
        if length > reader.bytes.len() {
            return Err(reader.fail("record longer than the batch"));
        }
        let body = cursor.slice(prefix..prefix + length);
        cursor.advance(prefix + length);
        let mut body_reader = Reader {
            bytes: &body,
            index,
        };
        {
            let mut peek = Reader {
                bytes: &body,
                index,
            };
            let _timestamp_delta = peek.zigzag()?;
            let offset_delta = peek.varint()?;
            if offset_delta != u64::from(index) {
                // Any other delta would put the record outside the
                // offsets the batch takes, or two records at one offset.
                return Err(peek.fail("offset delta is not the record's index in the batch"));
            }
            if !wanted(header.base_offset.wrapping_add(offset_delta)) {
                skipped += 1;
                continue;
            }
        }
        let slice = |part: &[u8]| body.slice_ref(part);
        let record = parse_record_body(
            &mut body_reader,
            |timestamp_delta, offset_delta, key, value, headers, tags| Record {
                offset: header.base_offset.wrapping_add(offset_delta),
                timestamp_ms: header.first_timestamp_ms.wrapping_add(timestamp_delta),
                key: key.map(slice),
                value: value.map(slice),
                headers: headers
                    .into_iter()
                    .map(|(name, value)| {
                        (
                            name.to_string(),
                            if value.is_empty() {
                                Bytes::new()
                            } else {
                                slice(value)
                            },
                        )
                    })
                    .collect(),
                tags: tags.into_iter().map(str::to_string).collect(),
            },
        )?;
        output.push(record);
    }
    let walked = output.len() as u32 + skipped;
    if walked != header.record_count || !cursor.is_empty() {
        return Err(BatchError::RecordCountMismatch {
            declared: header.record_count,
            actual: walked,
        });
    }
    Ok((header, output))
}

#[cfg(test)]
mod tests;
