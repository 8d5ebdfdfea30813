//! The index of one segment: its batches with their offset and timestamp
//! ranges, and key and tag terms to the batches holding them, built by
//! reading the segment's CRC-checked batches, within the caps of
//! [`MessageIndexLimits`]; and the candidate batches of a query.

use super::{key_term, tag_term, MessageIndexLimits, Query};
use crate::error::StoreError;
use crate::storage::Storage;
use sluice_proto::batch::{self, BatchIter};
use sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;
use std::collections::HashMap;

/// One indexed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchEntry {
    pub(super) base_offset: u64,
    pub(super) end_offset: u64,
    /// Smallest and largest record timestamp (from decoding; the header
    /// only knows the first and the largest).
    pub(super) min_timestamp_ms: i64,
    pub(super) max_timestamp_ms: i64,
}

/// The index of one segment.
#[derive(Debug)]
pub(super) struct SegmentIndex {
    pub(super) base_offset: u64,
    /// Ascending by offset.
    pub(super) batches: Vec<BatchEntry>,
    /// Term → positions in `batches`, ascending.
    pub(super) terms: HashMap<u64, Vec<u32>>,
    pub(super) postings: usize,
    /// Everything below is indexed.
    pub(super) indexed_end: u64,
    /// Why indexing stopped at `indexed_end` for good (a cap, damage).
    pub(super) stopped: Option<String>,
    /// Stopped at damage: never persisted (a repair may fix the segment).
    pub(super) damaged: bool,
    /// Written to (or read from) its file as it is now.
    pub(super) persisted: bool,
    /// Whether its file was looked for (once per index).
    pub(super) file_checked: bool,
    pub(super) last_used: u64,
}
impl SegmentIndex {
    pub(super) fn new(base_offset: u64) -> Self {
        Self {
            base_offset,
            batches: Vec::new(),
            terms: HashMap::new(),
            postings: 0,
            indexed_end: base_offset,
            stopped: None,
            damaged: false,
            persisted: false,
            file_checked: false,
            last_used: 0,
        }
    }

    /// Adds one decoded batch unless a cap forbids it (then indexing stops
    /// before it, with the reason).
    pub(super) fn add(
        &mut self,
        entry: BatchEntry,
        mut batch_terms: Vec<u64>,
        limits: &MessageIndexLimits,
    ) -> bool {
        batch_terms.sort_unstable();
        batch_terms.dedup();
        let new_terms = batch_terms
            .iter()
            .filter(|term| !self.terms.contains_key(term))
            .count();
        let refusal = if self.batches.len() >= limits.max_batches_per_segment
            || u32::try_from(self.batches.len()).is_err()
        {
            Some(format!(
                "the segment has more than {} batches",
                limits.max_batches_per_segment
            ))
        } else if self.terms.len() + new_terms > limits.max_terms_per_segment {
            Some(format!(
                "the segment has more than {} distinct keys and tags",
                limits.max_terms_per_segment
            ))
        } else if self.postings + batch_terms.len() > limits.max_postings_per_segment {
            Some(format!(
                "the segment has more than {} (key or tag, batch) pairs",
                limits.max_postings_per_segment
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.stopped = Some(format!(
                "{reason}; not indexed from offset {}",
                entry.base_offset
            ));
            return false;
        }
        let position = self.batches.len() as u32;
        for term in &batch_terms {
            self.terms.entry(*term).or_default().push(position);
        }
        self.postings += batch_terms.len();
        self.batches.push(entry);
        self.indexed_end = entry.end_offset;
        true
    }

    /// Indexes what the segment holds beyond `indexed_end`.
    pub(super) fn catch_up(
        &mut self,
        storage: &Storage,
        segment_id: u64,
        segment_end: u64,
        limits: &MessageIndexLimits,
    ) -> Result<(), StoreError> {
        while self.stopped.is_none() && self.indexed_end < segment_end {
            let outcome = match storage.read(segment_id, self.indexed_end, 0, 0) {
                Ok(outcome) => outcome,
                Err(StoreError::StorageCorrupt { offset, detail, .. }) => {
                    self.damaged = true;
                    self.stopped = Some(format!(
                        "the segment is damaged at offset {offset} ({detail}); not indexed from offset {}",
                        self.indexed_end
                    ));
                    return Ok(());
                }
                Err(error) => return Err(error),
            };
            if outcome.batches.is_empty() {
                return Ok(());
            }
            for item in BatchIter::new(&outcome.batches) {
                let (start, header, bytes) = match item {
                    Ok(item) => item,
                    Err(error) => {
                        // The store checked every batch it returned.
                        self.stopped = Some(format!(
                            "unreadable batch at offset {}: {error}",
                            self.indexed_end
                        ));
                        return Ok(());
                    }
                };
                if header.end_offset() <= self.indexed_end {
                    continue;
                }
                let slice = outcome.batches.slice(start..start + bytes.len());
                let mut entry = BatchEntry {
                    base_offset: header.base_offset,
                    end_offset: header.end_offset(),
                    min_timestamp_ms: header.first_timestamp_ms.min(header.max_timestamp_ms),
                    max_timestamp_ms: header.max_timestamp_ms,
                };
                let mut batch_terms = Vec::new();
                match batch::decode(&slice, MAX_UNCOMPRESSED_RECORDS_BYTES) {
                    Ok((_, records)) => {
                        for record in &records {
                            entry.min_timestamp_ms =
                                entry.min_timestamp_ms.min(record.timestamp_ms);
                            entry.max_timestamp_ms =
                                entry.max_timestamp_ms.max(record.timestamp_ms);
                            if let Some(key) = &record.key {
                                batch_terms.push(key_term(key));
                            }
                            batch_terms.extend(record.tags.iter().map(|tag| tag_term(tag)));
                        }
                    }
                    Err(error) => {
                        // A producer's malformed compressed batch: nobody
                        // can read its records, so it has no terms; time
                        // lookups still see it by its header.
                        tracing::warn!(segment_id, offset = header.base_offset, %error,
                            "cannot decode a batch for the message index");
                    }
                }
                if !self.add(entry, batch_terms, limits) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Candidate batch positions for a query, ascending by offset.
    pub(super) fn candidates(&self, query: &Query) -> Vec<usize> {
        let wanted = |entry: &BatchEntry| {
            entry.end_offset > query.from_offset
                && entry.base_offset < query.end_offset
                && entry.max_timestamp_ms >= query.from_time_ms
                && entry.min_timestamp_ms <= query.to_time_ms
        };
        match query.term {
            Some(term) => self
                .terms
                .get(&term)
                .map(|positions| {
                    positions
                        .iter()
                        .map(|position| *position as usize)
                        .filter(|position| wanted(&self.batches[*position]))
                        .collect()
                })
                .unwrap_or_default(),
            None => {
                let first = self
                    .batches
                    .partition_point(|entry| entry.end_offset <= query.from_offset);
                (first..self.batches.len())
                    .take_while(|position| self.batches[*position].base_offset < query.end_offset)
                    .filter(|position| wanted(&self.batches[*position]))
                    .collect()
            }
        }
    }
}
