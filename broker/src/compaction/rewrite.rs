//! The record rules of a compaction pass (ADR 0016 §8, steps 2 and 3):
//! which records the key map learns, and which a rewrite keeps. Pure.
//!
//! A record of a data batch is *committed* unless its batch is
//! transactional and lies in an aborted range (passes run below the LSO,
//! so every transaction there is decided). Control batches (markers and
//! earlier GAPs) hold no records.
//!
//! The rewrite of one input segment keeps a record iff it is committed,
//! the key map has no later offset for its key, and it is not a tombstone
//! past its horizon. Consecutive kept records of one input batch form one
//! output batch at the same offsets (its compression, producer id and
//! epoch; transactional bit cleared, sequence -1); a batch kept whole and
//! not transactional goes out byte for byte. Every run of removed offsets
//! becomes GAP batches. Offsets and order never change, and the output
//! covers the input's `[base, end)` without a hole: to stores, recovery
//! and high-watermark arithmetic it is an ordinary contiguous segment.

use super::key_map::{KeyMap, MapFull};
use bytes::Bytes;
use sluice_proto::batch::{
    self, control, BatchBuilder, BatchHeader, BatchIter, Record, RecordData,
};
use sluice_proto::limits::MAX_RECORDS_PER_BATCH;

/// An aborted transaction's range at the partition: its batches of
/// `producer_id` from `first_offset` to its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedRange {
    pub producer_id: i64,
    pub first_offset: u64,
    pub marker_offset: u64,
}

/// The aborted ranges meeting the pass's range.
#[derive(Debug, Clone, Default)]
pub struct Aborted(pub Vec<AbortedRange>);

impl Aborted {
    /// Whether a transactional batch of `producer_id` at `offset` was
    /// aborted.
    pub fn contains(&self, producer_id: i64, offset: u64) -> bool {
        self.0.iter().any(|range| {
            range.producer_id == producer_id
                && (range.first_offset..=range.marker_offset).contains(&offset)
        })
    }
}

/// Why a pass cannot go on with these bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("corrupt batch at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("batch at {found} where offset {expected} was expected")]
    NotContiguous { expected: u64, found: u64 },
    #[error("the segment's batches end at {reached}, not at its end {end}")]
    Incomplete { reached: u64, end: u64 },
}

/// What one record is, for the rules.
struct Seen<'a> {
    offset: u64,
    key: Option<&'a [u8]>,
    tombstone: bool,
}

/// Whether tombstones of a segment first compacted at
/// `first_compacted_at_ms` (0: never) are past their horizon now.
/// `delete_retention_ms` 0 (a topic stored before the setting) reads as
/// the default, one day.
pub fn tombstones_expired(
    first_compacted_at_ms: u64,
    delete_retention_ms: u64,
    now_ms: i64,
) -> bool {
    if first_compacted_at_ms == 0 {
        return false;
    }
    let retention = match delete_retention_ms {
        0 => 86_400_000,
        retention => retention,
    };
    let horizon = u128::from(first_compacted_at_ms) + u128::from(retention);
    u128::try_from(now_ms).is_ok_and(|now| now >= horizon)
}

/// Feeds the committed records of `chunk` (whole batches) to `map`.
/// Stops at the first new key the map has no room for.
pub fn map_chunk(map: &mut KeyMap, chunk: &[u8], aborted: &Aborted) -> Result<(), MapError> {
    for item in BatchIter::new(chunk) {
        let (_, header, bytes) = item.map_err(|error| MapError::Corrupt(error.to_string()))?;
        if header.control
            || (header.transactional && aborted.contains(header.producer_id, header.base_offset))
        {
            continue;
        }
        let bytes = Bytes::copy_from_slice(bytes);
        let records = match batch::decode(&bytes, usize::MAX) {
            Ok((_, records)) => records,
            // Sound frame, records no reader can decode: kept as they
            // are by the rewrite, so not mapped.
            Err(error) if error.is_undecodable_records() => continue,
            Err(error) => return Err(MapError::Corrupt(error.to_string())),
        };
        for record in &records {
            if let Some(key) = &record.key {
                map.put(key, record.offset).map_err(MapError::Full)?;
            }
        }
    }
    Ok(())
}

/// Why mapping stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    Full(MapFull),
    Corrupt(String),
}

/// A run of removed offsets not yet written as GAP batches.
#[derive(Debug, Clone, Copy)]
struct Gap {
    start: u64,
    count: u64,
    max_timestamp_ms: i64,
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteStats {
    pub kept_records: u64,
    pub removed_offsets: u64,
    pub output_bytes: u64,
}

/// Rewrites one input segment `[base, end)`, fed in chunks of whole
/// batches in offset order.
pub struct Rewriter<'a> {
    map: &'a KeyMap,
    aborted: &'a Aborted,
    tombstones_expired: bool,
    /// Writer epoch stamped on GAP batches (the compacting owner's).
    writer_epoch: u32,
    next_offset: u64,
    end_offset: u64,
    gap: Option<Gap>,
    stats: RewriteStats,
}

impl<'a> Rewriter<'a> {
    pub fn new(
        map: &'a KeyMap,
        aborted: &'a Aborted,
        base_offset: u64,
        end_offset: u64,
        tombstones_expired: bool,
        writer_epoch: u32,
    ) -> Self {
        Self {
            map,
            aborted,
            tombstones_expired,
            writer_epoch,
            next_offset: base_offset,
            end_offset,
            gap: None,
            stats: RewriteStats::default(),
        }
    }

    /// Where the next input batch must start.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The output batches for `chunk` (whole batches continuing the
    /// input), offsets assigned; a trailing run of removed offsets waits
    /// for the next chunk or [`Rewriter::finish`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, RewriteError> {
        let mut output = Vec::new();
        for item in BatchIter::new(chunk) {
            let (_, header, bytes) = item.map_err(|error| RewriteError::Corrupt {
                offset: self.next_offset,
                reason: error.to_string(),
            })?;
            if header.base_offset != self.next_offset {
                return Err(RewriteError::NotContiguous {
                    expected: self.next_offset,
                    found: header.base_offset,
                });
            }
            if header.end_offset() > self.end_offset {
                return Err(RewriteError::Corrupt {
                    offset: header.base_offset,
                    reason: format!("batch ends past the segment's end {}", self.end_offset),
                });
            }
            self.rewrite_batch(&header, bytes, &mut output)?;
            self.next_offset = header.end_offset();
        }
        Ok(output)
    }

    /// The last GAP batches; the input must have reached the segment's end.
    pub fn finish(mut self) -> Result<(Vec<Bytes>, RewriteStats), RewriteError> {
        if self.next_offset != self.end_offset {
            return Err(RewriteError::Incomplete {
                reached: self.next_offset,
                end: self.end_offset,
            });
        }
        let mut output = Vec::new();
        self.flush_gap(&mut output);
        Ok((output, self.stats))
    }

    fn rewrite_batch(
        &mut self,
        header: &BatchHeader,
        bytes: &[u8],
        output: &mut Vec<Bytes>,
    ) -> Result<(), RewriteError> {
        let aborted = header.transactional
            && self
                .aborted
                .contains(header.producer_id, header.base_offset);
        if header.control || aborted {
            self.remove(
                header.base_offset,
                u64::from(header.record_count),
                header.max_timestamp_ms,
                output,
            );
            return Ok(());
        }
        let owned = Bytes::copy_from_slice(bytes);
        let records = match batch::decode(&owned, usize::MAX) {
            Ok((_, records)) => records,
            Err(error) if error.is_undecodable_records() => {
                // Sound frame, undecodable records: nobody can judge
                // them, so they stay as they are.
                self.keep_verbatim(header, owned, output);
                return Ok(());
            }
            Err(error) => {
                return Err(RewriteError::Corrupt {
                    offset: header.base_offset,
                    reason: error.to_string(),
                })
            }
        };
        let keep: Vec<bool> = records
            .iter()
            .map(|record| {
                self.keeps(&Seen {
                    offset: record.offset,
                    key: record.key.as_deref(),
                    tombstone: record.key.is_some() && record.value.is_none(),
                })
            })
            .collect();
        if keep.iter().all(|kept| *kept) && !header.transactional {
            self.keep_verbatim(header, owned, output);
            return Ok(());
        }
        self.write_runs(header, &records, &keep, output);
        Ok(())
    }

    /// Each run of consecutive kept records as one rebuilt batch at its
    /// offsets; each run of removed ones into the pending gap.
    fn write_runs(
        &mut self,
        header: &BatchHeader,
        records: &[Record],
        keep: &[bool],
        output: &mut Vec<Bytes>,
    ) {
        let mut index = 0;
        while index < records.len() {
            let run_end = keep[index..]
                .iter()
                .position(|kept| *kept != keep[index])
                .map_or(records.len(), |length| index + length);
            let run = &records[index..run_end];
            if keep[index] {
                self.flush_gap(output);
                let mut builder = BatchBuilder::new(header.compression).with_producer(
                    header.producer_id,
                    header.producer_epoch,
                    -1,
                );
                for record in run {
                    builder.push(&RecordData {
                        key: record.key.clone(),
                        value: record.value.clone(),
                        headers: record.headers.clone(),
                        tags: record.tags.clone(),
                        timestamp_ms: Some(record.timestamp_ms),
                    });
                }
                let mut rebuilt = builder.build().to_vec();
                batch::assign(&mut rebuilt, run[0].offset, header.writer_epoch);
                self.stats.kept_records += run.len() as u64;
                self.stats.output_bytes += rebuilt.len() as u64;
                output.push(Bytes::from(rebuilt));
            } else {
                let largest = run
                    .iter()
                    .map(|record| record.timestamp_ms)
                    .max()
                    .unwrap_or(header.max_timestamp_ms);
                self.remove(run[0].offset, run.len() as u64, largest, output);
            }
            index = run_end;
        }
    }

    /// The rule for one committed record.
    fn keeps(&self, record: &Seen<'_>) -> bool {
        let Some(key) = record.key else {
            // Keyless (written before the topic was compacted): no later
            // record can supersede it.
            return true;
        };
        let superseded = self
            .map
            .latest(key)
            .is_some_and(|latest| latest > record.offset);
        let expired_tombstone = record.tombstone && self.tombstones_expired;
        !(superseded || expired_tombstone)
    }

    fn keep_verbatim(&mut self, header: &BatchHeader, bytes: Bytes, output: &mut Vec<Bytes>) {
        self.flush_gap(output);
        self.stats.kept_records += u64::from(header.records_held());
        self.stats.output_bytes += bytes.len() as u64;
        output.push(bytes);
    }

    /// Adds `count` removed offsets from `start` to the pending gap,
    /// writing full GAP batches as they fill.
    fn remove(&mut self, start: u64, count: u64, max_timestamp_ms: i64, output: &mut Vec<Bytes>) {
        self.stats.removed_offsets += count;
        let gap = self.gap.get_or_insert(Gap {
            start,
            count: 0,
            max_timestamp_ms,
        });
        gap.count += count;
        gap.max_timestamp_ms = gap.max_timestamp_ms.max(max_timestamp_ms);
        while self
            .gap
            .is_some_and(|gap| gap.count >= u64::from(MAX_RECORDS_PER_BATCH))
        {
            self.emit_gap_part(u64::from(MAX_RECORDS_PER_BATCH), output);
        }
    }

    fn flush_gap(&mut self, output: &mut Vec<Bytes>) {
        while let Some(gap) = self.gap {
            self.emit_gap_part(gap.count, output);
        }
    }

    /// Writes the first `count` (1 ..= MAX_RECORDS_PER_BATCH) offsets of
    /// the pending gap as one GAP batch.
    fn emit_gap_part(&mut self, count: u64, output: &mut Vec<Bytes>) {
        let Some(mut gap) = self.gap.take() else {
            return;
        };
        let offsets = u32::try_from(count.min(u64::from(MAX_RECORDS_PER_BATCH)))
            .unwrap_or(MAX_RECORDS_PER_BATCH);
        if offsets == 0 {
            return;
        }
        // In range by construction (1 ..= MAX_RECORDS_PER_BATCH).
        if let Some(built) = control::build_gap(offsets, gap.max_timestamp_ms) {
            let mut built = built.to_vec();
            batch::assign(&mut built, gap.start, self.writer_epoch);
            self.stats.output_bytes += built.len() as u64;
            output.push(Bytes::from(built));
        }
        gap.start += u64::from(offsets);
        gap.count -= u64::from(offsets);
        if gap.count > 0 {
            self.gap = Some(gap);
        }
    }
}

#[cfg(test)]
mod tests;
