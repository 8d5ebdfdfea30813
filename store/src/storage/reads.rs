//! Reads: whole, CRC-checked batches from the segment files, up to the
//! durable end, never serving a range recovery found corrupt; and the
//! lookup of an offset by timestamp.

use super::registry::SegmentHandle;
use super::Storage;
use crate::error::StoreError;
use crate::segment::{self, CorruptRegion};
use bytes::Bytes;
use sluice_proto::batch::{self, BatchHeader, BatchIter};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Whole, CRC-checked batches; the first contains the requested offset.
    pub batches: Bytes,
    pub segment_end_offset: u64,
    pub sealed: bool,
}

/// What a read needs of a segment's log, taken under its lock.
struct LogView {
    file: Arc<File>,
    size_bytes: u64,
    durable_end: u64,
    /// Where to start looking for the batch holding the offset read.
    start_position: u64,
    regions: Vec<CorruptRegion>,
}

impl LogView {
    /// The log of `segment` (its file: `file`) as it is now, for a read
    /// of `offset`.
    fn of(segment: &SegmentHandle, file: Arc<File>, offset: u64) -> LogView {
        let log = segment.lock_log();
        LogView {
            file,
            size_bytes: log.size_bytes,
            durable_end: log.end_offset,
            start_position: log.scan_start_for_offset(offset),
            regions: log.corrupt_regions.clone(),
        }
    }

    fn region_at(&self, position: u64) -> Option<&CorruptRegion> {
        self.regions.iter().find(|r| r.start_position == position)
    }

    /// Position and header of the batch containing `offset`.
    fn find_batch(&self, segment_id: u64, offset: u64) -> Result<(u64, BatchHeader), StoreError> {
        let mut position = self.start_position;
        loop {
            if position >= self.size_bytes {
                return Err(corrupt(
                    segment_id,
                    offset,
                    "offset not found in the segment file".into(),
                ));
            }
            if let Some(region) = self.region_at(position) {
                position = region.end_position;
                continue;
            }
            let header = segment::read_header_at(&self.file, position).map_err(|error| {
                corrupt(
                    segment_id,
                    offset,
                    format!("batch header at {position}: {error}"),
                )
            })?;
            if position + u64::from(header.batch_length) > self.size_bytes {
                return Err(corrupt(
                    segment_id,
                    offset,
                    format!("batch at {position} overruns the file"),
                ));
            }
            if header.end_offset() > offset {
                return Ok((position, header));
            }
            position += u64::from(header.batch_length);
        }
    }

    /// Bytes of the run of whole batches starting with `first` at
    /// `first_position`: below `limit_offset`, within `budget` (but at
    /// least `first`), stopping before damage.
    fn run_bytes(
        &self,
        first_position: u64,
        first: &BatchHeader,
        limit_offset: u64,
        budget: u64,
    ) -> u64 {
        let mut total = u64::from(first.batch_length);
        let mut next_position = first_position + total;
        while next_position < self.size_bytes && self.region_at(next_position).is_none() {
            let header = match segment::read_header_at(&self.file, next_position) {
                Ok(header) => header,
                // Served up to here; the next read reports the damage.
                Err(_) => break,
            };
            let length = u64::from(header.batch_length);
            if header.base_offset >= limit_offset
                || total + length > budget
                || next_position + length > self.size_bytes
            {
                break;
            }
            total += length;
            next_position += length;
        }
        total
    }
}

/// Logs and builds the error for corrupt data at `offset`.
fn corrupt(segment_id: u64, offset: u64, detail: String) -> StoreError {
    tracing::error!(segment_id, offset, %detail, "refusing to serve corrupt data");
    StoreError::StorageCorrupt {
        segment_id,
        offset,
        detail,
    }
}

/// Checks the batches read into `buffer` (framing, CRC, contiguous offsets
/// from `base_offset`): the bytes of the valid ones before any damage, and
/// the error for the damage, if any.
fn check_batches(segment_id: u64, buffer: &[u8], base_offset: u64) -> (usize, Option<StoreError>) {
    let mut expected_offset = base_offset;
    let mut valid_bytes = 0usize;
    for item in BatchIter::new(buffer) {
        let checked = item
            .map_err(|error| error.to_string())
            .and_then(|(_, header, bytes)| {
                if header.base_offset != expected_offset {
                    return Err(format!("found base offset {} on disk", header.base_offset));
                }
                batch::validate(bytes, segment::MAX_BATCH_BYTES_ON_DISK)
                    .map_err(|error| error.to_string())?;
                Ok((header, bytes.len()))
            });
        match checked {
            Ok((header, length)) => {
                valid_bytes += length;
                expected_offset = header.end_offset();
            }
            Err(detail) => {
                return (
                    valid_bytes,
                    Some(corrupt(segment_id, expected_offset, detail)),
                );
            }
        }
    }
    (valid_bytes, None)
}

impl Storage {
    /// Reads whole batches starting with the one containing `offset`, up to
    /// `max_bytes` (0: the configured cap; always at least one batch) and
    /// below `end_offset` (0: the durable end). Blocking file I/O.
    pub fn read(
        &self,
        segment_id: u64,
        offset: u64,
        max_bytes: u32,
        end_offset: u64,
    ) -> Result<ReadOutcome, StoreError> {
        let segment = self.segment(segment_id)?;
        let file = self.inner.files.get(segment_id)?;
        let sealed = segment.sealed.load(Ordering::SeqCst);
        let view = LogView::of(&segment, file, offset);
        let durable_end = view.durable_end;
        if offset < segment.base_offset || offset > durable_end {
            return Err(StoreError::OffsetOutOfRange {
                segment_id,
                offset,
                base_offset: segment.base_offset,
                end_offset: durable_end,
            });
        }
        let limit_offset = if end_offset == 0 {
            durable_end
        } else {
            end_offset.min(durable_end)
        };
        let empty = ReadOutcome {
            batches: Bytes::new(),
            segment_end_offset: durable_end,
            sealed,
        };
        if offset >= limit_offset {
            return Ok(empty);
        }
        if let Some(region) = view
            .regions
            .iter()
            .find(|region| offset >= region.start_offset && offset < region.end_offset)
        {
            return Err(corrupt(
                segment_id,
                offset,
                format!(
                    "offsets [{}, {}) are damaged: {}",
                    region.start_offset,
                    region.end_offset,
                    region.describe()
                ),
            ));
        }
        let (first_position, first) = view.find_batch(segment_id, offset)?;
        let budget = self.read_budget(max_bytes);
        let total = view.run_bytes(first_position, &first, limit_offset, budget);
        let mut buffer = vec![0u8; total as usize];
        view.file
            .read_exact_at(&mut buffer, first_position)
            .map_err(|error| StoreError::io(format!("read segment {segment_id}"), error))?;
        let (valid_bytes, damage) = check_batches(segment_id, &buffer, first.base_offset);
        if let Some(error) = damage {
            // Serve the good batches before the damage; the next read,
            // starting at the damaged batch, reports it.
            if valid_bytes == 0 {
                return Err(error);
            }
            buffer.truncate(valid_bytes);
        }
        Ok(ReadOutcome {
            batches: Bytes::from(buffer),
            ..empty
        })
    }

    /// Bytes a read asking for `max_bytes` (0: no limit of its own) may
    /// return, within the configured cap.
    fn read_budget(&self, max_bytes: u32) -> u64 {
        let cap = u64::from(self.inner.options.max_read_bytes.max(1));
        if max_bytes == 0 {
            cap
        } else {
            u64::from(max_bytes).min(cap)
        }
    }

    /// Base offset of the first batch whose max timestamp is >=
    /// `timestamp_ms` (that batch holds the first offset with such a
    /// timestamp); `None` if no batch qualifies. Blocking file I/O.
    pub fn find_offset(
        &self,
        segment_id: u64,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let segment = self.segment(segment_id)?;
        let file = self.inner.files.get(segment_id)?;
        let (size_bytes, start, max_timestamp_ms, regions) = {
            let log = segment.lock_log();
            (
                log.size_bytes,
                log.scan_start_for_timestamp(timestamp_ms),
                log.max_timestamp_ms,
                log.corrupt_regions.clone(),
            )
        };
        if size_bytes == 0 || max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let mut position = start;
        while position < size_bytes {
            if let Some(region) = regions.iter().find(|r| r.start_position == position) {
                position = region.end_position;
                continue;
            }
            let header = segment::read_header_at(&file, position).map_err(|error| {
                StoreError::StorageCorrupt {
                    segment_id,
                    offset: 0,
                    detail: format!("batch header at {position}: {error}"),
                }
            })?;
            if header.max_timestamp_ms >= timestamp_ms {
                return Ok(Some(header.base_offset));
            }
            position += u64::from(header.batch_length);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::{make_batch, new_segment, options, storage_with_segment_one};
    use sluice_proto::ErrorCode;

    #[tokio::test]
    async fn append_and_read_back_whole_batches() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (storage, report) = Storage::open(directory.path(), options()).expect("open");
        assert!(report.is_clean());
        storage
            .create_segment(new_segment(7, 100))
            .await
            .expect("create");
        let mut written = Vec::new();
        let mut offset = 100;
        for index in 0..30 {
            let batch = make_batch(offset, 3, 1000 + index * 10);
            offset = storage.append(7, 5, batch.clone()).await.expect("append");
            written.push(batch);
        }
        assert_eq!(offset, 190);
        // Everything from the start.
        let all = storage.read(7, 100, 0, 0).expect("read");
        let expected: Vec<u8> = written.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all.batches.to_vec(), expected);
        assert_eq!(all.segment_end_offset, 190);
        // From the middle of a batch: starts with the batch containing it.
        let middle = storage.read(7, 134, 0, 0).expect("read");
        assert!(middle.batches.starts_with(&written[11]));
        // max_bytes smaller than one batch still returns exactly one.
        let one = storage.read(7, 100, 1, 0).expect("read");
        assert_eq!(one.batches, written[0]);
        // end_offset bounds the answer.
        let bounded = storage.read(7, 100, 0, 106).expect("read");
        assert_eq!(bounded.batches.len(), written[0].len() + written[1].len());
        // At the end: empty; beyond or before: out of range.
        assert!(storage.read(7, 190, 0, 0).expect("read").batches.is_empty());
        for bad in [99, 191] {
            let error = storage.read(7, bad, 0, 0).expect_err("out of range");
            assert_eq!(error.code(), ErrorCode::OffsetOutOfRange);
        }
        assert_eq!(
            storage.read(8, 0, 0, 0).expect_err("unknown").code(),
            ErrorCode::UnknownSegment
        );
    }

    #[tokio::test]
    async fn find_offset_uses_batch_max_timestamps() {
        let (_directory, storage) = storage_with_segment_one(options()).await;
        for index in 0..50u64 {
            storage
                .append(1, 5, make_batch(index * 2, 2, 1000 + index as i64 * 100))
                .await
                .expect("append");
        }
        assert_eq!(storage.find_offset(1, 0).expect("find"), Some(0));
        assert_eq!(storage.find_offset(1, 1000).expect("find"), Some(0));
        assert_eq!(storage.find_offset(1, 1001).expect("find"), Some(2));
        assert_eq!(storage.find_offset(1, 3450).expect("find"), Some(50));
        assert_eq!(storage.find_offset(1, 5900).expect("find"), Some(98));
        assert_eq!(storage.find_offset(1, 5901).expect("find"), None);
    }
}
