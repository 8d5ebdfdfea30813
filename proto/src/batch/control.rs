//! Control records: transaction markers and compaction gaps (ADR 0016 §3.1).
//!
//! A control batch (attribute bit 4) is written by brokers only, is
//! uncompressed, never transactional, and holds exactly one record at
//! offset delta 0. Its `record_count` is the number of offsets it occupies,
//! so `end_offset = base + record_count` holds for it as for any batch.
//!
//! The record's key (4 bytes) is `version u16 LE` (= 1) then `type u16 LE`:
//! 0 ABORT, 1 COMMIT, 2 GAP.
//!
//! - **ABORT / COMMIT** (a *marker*, one offset): value of 19 bytes,
//!   `version u8` (= 1), `txn_epoch i16 LE`, `coordinator_epoch u64 LE`
//!   (ownership epoch of the deciding transaction-log partition;
//!   diagnostics), `first_offset u64 LE` (the transaction's first offset in
//!   this partition, `u64::MAX` if it wrote none there). Header:
//!   `producer_id` = the transaction's pid, `producer_epoch` =
//!   `txn_epoch + 1` (every decision bumps the epoch), `base_sequence` -1,
//!   `record_count` 1.
//! - **GAP** (compaction, stage 6): null value, pid and epoch -1,
//!   `record_count` = offsets covered (<= `MAX_RECORDS_PER_BATCH`),
//!   `max_timestamp` the largest removed record's.
//!
//! [`parse`] is strict: any other version, type, length or header value is
//! [`BatchError::BadControl`], so a flipped bit that keeps the CRC valid
//! (impossible by accident, possible by a buggy writer) never turns into a
//! marker with another meaning.

use super::{BatchBuilder, BatchError, BatchHeader, Compression, RecordData, HEADER_BYTES};
use crate::limits::MAX_RECORDS_PER_BATCH;
use bytes::Bytes;

/// Version of the control key and of the marker value.
pub const CONTROL_VERSION: u16 = 1;
const MARKER_VALUE_VERSION: u8 = 1;
/// Bytes of a control record's key.
pub const KEY_BYTES: usize = 4;
/// Bytes of a marker's value.
pub const MARKER_VALUE_BYTES: usize = 19;
/// `first_offset` of a marker whose transaction wrote nothing here.
pub const NO_FIRST_OFFSET: u64 = u64::MAX;

const TYPE_ABORT: u16 = 0;
const TYPE_COMMIT: u16 = 1;
const TYPE_GAP: u16 = 2;

/// A transaction's outcome at one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub producer_id: i64,
    /// The epoch of the transaction being ended; the batch header carries
    /// `txn_epoch + 1`.
    pub txn_epoch: i16,
    pub commit: bool,
    /// Ownership epoch of the deciding transaction-log partition.
    pub coordinator_epoch: u64,
    /// The transaction's first offset here; `None` if it wrote nothing.
    pub first_offset: Option<u64>,
}

/// What a control batch says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRecord {
    Marker(Marker),
    /// Offsets a compaction removed; `record_count` of the header.
    Gap {
        offsets: u32,
    },
}

/// Builds a marker's control batch (base offset and writer epoch 0: the
/// broker assigns both). `None` if the marker cannot be encoded: a
/// negative pid, or a `txn_epoch` outside `0..i16::MAX` (its successor
/// must fit the header).
pub fn build_marker(marker: &Marker, timestamp_ms: i64) -> Option<Bytes> {
    if marker.producer_id < 0 || marker.txn_epoch < 0 || marker.txn_epoch == i16::MAX {
        return None;
    }
    let kind = if marker.commit {
        TYPE_COMMIT
    } else {
        TYPE_ABORT
    };
    let mut value = Vec::with_capacity(MARKER_VALUE_BYTES);
    value.push(MARKER_VALUE_VERSION);
    value.extend_from_slice(&marker.txn_epoch.to_le_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_le_bytes());
    value.extend_from_slice(&marker.first_offset.unwrap_or(NO_FIRST_OFFSET).to_le_bytes());
    let builder = BatchBuilder::new(Compression::None).with_producer(
        marker.producer_id,
        marker.txn_epoch + 1,
        -1,
    );
    Some(build(
        builder,
        kind,
        Some(Bytes::from(value)),
        1,
        timestamp_ms,
    ))
}

/// Builds a GAP control batch covering `offsets` offsets (1..=
/// `MAX_RECORDS_PER_BATCH`), stamped `max_timestamp_ms`. `None` if
/// `offsets` is out of range.
pub fn build_gap(offsets: u32, max_timestamp_ms: i64) -> Option<Bytes> {
    if offsets == 0 || offsets > MAX_RECORDS_PER_BATCH {
        return None;
    }
    let builder = BatchBuilder::new(Compression::None);
    Some(build(builder, TYPE_GAP, None, offsets, max_timestamp_ms))
}

fn build(
    mut builder: BatchBuilder,
    kind: u16,
    value: Option<Bytes>,
    offsets: u32,
    timestamp_ms: i64,
) -> Bytes {
    let mut key = Vec::with_capacity(KEY_BYTES);
    key.extend_from_slice(&CONTROL_VERSION.to_le_bytes());
    key.extend_from_slice(&kind.to_le_bytes());
    builder.push(&RecordData {
        key: Some(Bytes::from(key)),
        value,
        timestamp_ms: Some(timestamp_ms),
        ..RecordData::default()
    });
    builder.control = true;
    builder.control_offsets = offsets;
    builder.build()
}

/// Reads what the control batch `batch` (whose parsed header is `header`)
/// says. A marker's `first_offset` is what its writer recorded; readers
/// that rebuild state from the log trust their own view of where the
/// transaction began and use it only for diagnostics. The caller has checked the frame and CRC (as [`super::validate`]
/// does before calling this).
pub fn parse(batch: &[u8], header: &BatchHeader) -> Result<ControlRecord, BatchError> {
    if !header.control {
        return Err(BatchError::BadControl("not a control batch"));
    }
    let records = batch
        .get(HEADER_BYTES..)
        .ok_or(BatchError::BadControl("truncated"))?;
    let (key, value) = single_record(records)?;
    let key = key.ok_or(BatchError::BadControl("control record without a key"))?;
    if key.len() != KEY_BYTES {
        return Err(BatchError::BadControl("control key is not 4 bytes"));
    }
    if u16::from_le_bytes([key[0], key[1]]) != CONTROL_VERSION {
        return Err(BatchError::BadControl("unknown control key version"));
    }
    match u16::from_le_bytes([key[2], key[3]]) {
        TYPE_ABORT => parse_marker(header, value, false),
        TYPE_COMMIT => parse_marker(header, value, true),
        TYPE_GAP => parse_gap(header, value),
        _ => Err(BatchError::BadControl("unknown control type")),
    }
}

/// A record's nullable key and value.
type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Key and value of the one record at offset delta 0 of `records`.
fn single_record(records: &[u8]) -> Result<KeyValue<'_>, BatchError> {
    let mut reader = super::Reader {
        bytes: records,
        index: 0,
    };
    let length = reader.varint()?;
    let length = usize::try_from(length).map_err(|_| reader.fail("huge length"))?;
    let body = reader.take(length)?;
    if !reader.bytes.is_empty() {
        return Err(BatchError::BadControl("a control batch holds one record"));
    }
    let mut body = super::Reader {
        bytes: body,
        index: 0,
    };
    let (offset_delta, key, value, headers, tags) =
        super::parse_record_body(&mut body, |_, delta, key, value, headers, tags| {
            (delta, key, value, headers.len(), tags.len())
        })?;
    if offset_delta != 0 || headers != 0 || tags != 0 {
        return Err(BatchError::BadControl(
            "a control record sits at delta 0 without headers or tags",
        ));
    }
    Ok((key, value))
}

fn parse_marker(
    header: &BatchHeader,
    value: Option<&[u8]>,
    commit: bool,
) -> Result<ControlRecord, BatchError> {
    let value = value.ok_or(BatchError::BadControl("marker without a value"))?;
    if value.len() != MARKER_VALUE_BYTES || value[0] != MARKER_VALUE_VERSION {
        return Err(BatchError::BadControl("marker value of another version"));
    }
    let txn_epoch = i16::from_le_bytes([value[1], value[2]]);
    let mut word = [0u8; 8];
    word.copy_from_slice(&value[3..11]);
    let coordinator_epoch = u64::from_le_bytes(word);
    word.copy_from_slice(&value[11..19]);
    let first_offset = u64::from_le_bytes(word);
    if header.record_count != 1
        || header.base_sequence != -1
        || header.producer_id < 0
        || txn_epoch < 0
        || i32::from(header.producer_epoch) != i32::from(txn_epoch) + 1
    {
        return Err(BatchError::BadControl(
            "marker header disagrees with its value",
        ));
    }
    Ok(ControlRecord::Marker(Marker {
        producer_id: header.producer_id,
        txn_epoch,
        commit,
        coordinator_epoch,
        first_offset: (first_offset != NO_FIRST_OFFSET).then_some(first_offset),
    }))
}

fn parse_gap(header: &BatchHeader, value: Option<&[u8]>) -> Result<ControlRecord, BatchError> {
    if value.is_some() || header.producer_id != -1 || header.producer_epoch != -1 {
        return Err(BatchError::BadControl(
            "a gap has a null value and no producer",
        ));
    }
    Ok(ControlRecord::Gap {
        offsets: header.record_count,
    })
}

#[cfg(test)]
mod tests;
