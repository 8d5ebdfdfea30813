//! What a producer's batch must satisfy before a broker appends it, beyond
//! [`super::validate`]: timestamps in range and consistent, and records
//! whose offset deltas are 0, 1, 2, ... — one walk over the records,
//! shared with compressed batches (after decompression,
//! `validate_compressed`).

use super::{
    validate_frame, walk_records, BatchError, BatchHeader, Compression, HEADER_BYTES,
    MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS,
};

/// [`validate`] plus what a producer's batch must also satisfy before a
/// broker appends it: header timestamps within
/// [`MIN_TIMESTAMP_MS`]..=[`MAX_TIMESTAMP_MS`], and for uncompressed
/// batches record offset deltas exactly 0..record_count in order, every
/// record timestamp in that range and `max_timestamp` equal to the largest.
/// A control batch (ADR 0016 §3.1) is refused: only brokers write them.
/// Not applied to data read back from stores, which was accepted under
/// earlier rules and must stay readable.
pub fn validate_produced(bytes: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    validate_produced_keyed(bytes, max_batch_bytes, false)
}

/// [`validate_produced`]; with `keys_required` (a compacted topic, ADR
/// 0016 §8) an uncompressed record without a key is also
/// [`BatchError::KeylessRecord`]. Compressed records are checked by
/// [`super::validate_compressed_keyed`] in the same walk that checks their
/// sequence.
pub fn validate_produced_keyed(
    bytes: &[u8],
    max_batch_bytes: usize,
    keys_required: bool,
) -> Result<BatchHeader, BatchError> {
    let header = validate_frame(bytes, max_batch_bytes)?;
    if header.control {
        return Err(BatchError::ControlFromProducer);
    }
    check_header_timestamps(&header)?;
    if header.compression == Compression::None {
        // One walk checks the framing and the sequence together (the hot
        // path of every produce).
        check_record_sequence(&bytes[HEADER_BYTES..], &header, keys_required)?;
    }
    Ok(header)
}

/// `timestamp_ms` if it lies in the accepted range.
fn accepted_timestamp(what: &'static str, timestamp_ms: i64) -> Result<i64, BatchError> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&timestamp_ms) {
        Ok(timestamp_ms)
    } else {
        Err(BatchError::BadTimestamp { what, timestamp_ms })
    }
}

/// The header's timestamps are in range and first <= max.
fn check_header_timestamps(header: &BatchHeader) -> Result<(), BatchError> {
    let first = accepted_timestamp("first_timestamp", header.first_timestamp_ms)?;
    let max = accepted_timestamp("max_timestamp", header.max_timestamp_ms)?;
    if first > max {
        return Err(BatchError::MaxTimestampMismatch {
            declared: max,
            actual: first,
        });
    }
    Ok(())
}

/// Walks a records section (uncompressed, or decompressed) checking its
/// framing and the sequence together: exactly `record_count` well-framed
/// records, offset deltas 0, 1, 2, ..., timestamps in range, their largest
/// equal to the header's `max_timestamp`, nothing after the last; with
/// `keys_required`, every record keyed.
pub(crate) fn check_record_sequence(
    records: &[u8],
    header: &BatchHeader,
    keys_required: bool,
) -> Result<(), BatchError> {
    let mut largest = MIN_TIMESTAMP_MS;
    walk_records(records, header.record_count, |index, record| {
        if record.offset_delta != u64::from(index) {
            return Err(BatchError::BadOffsetDelta {
                index,
                delta: record.offset_delta,
            });
        }
        if keys_required && !record.has_key {
            return Err(BatchError::KeylessRecord { index });
        }
        let timestamp_ms = header
            .first_timestamp_ms
            .checked_add(record.timestamp_delta)
            .unwrap_or(i64::MAX);
        largest = largest.max(accepted_timestamp("record timestamp", timestamp_ms)?);
        Ok(())
    })?;
    if largest != header.max_timestamp_ms {
        return Err(BatchError::MaxTimestampMismatch {
            declared: header.max_timestamp_ms,
            actual: largest,
        });
    }
    Ok(())
}
