//! Key and tag indexes of segments for message lookup (ADR 0013).
//!
//! Per segment, an in-memory map from the hash of a record key or tag to
//! the batches holding records with it (positions in a per-segment table of
//! batches with their offset and timestamp ranges), so a lookup reads only
//! candidate batches. Hashes collide: callers verify candidates by decoding
//! them.
//!
//! The index is built off the write path: on the first lookup of a segment
//! it is built by reading the segment's CRC-checked batches through
//! [`Storage::read`], and every later lookup first indexes what was
//! appended since. An index that no longer fits its segment (a different
//! base, or a segment now shorter than what was indexed) is dropped and
//! rebuilt. Indexes of sealed segments are kept in files
//! (`index_file.rs`).
//!
//! Bounds: at most `max_indexed_segments` segments are indexed at once (the
//! least recently used is dropped), and per segment at most
//! `max_batches_per_segment` batches, `max_terms_per_segment` distinct
//! hashes and `max_postings_per_segment` (hash, batch) pairs. When a cap is
//! reached the index stops there and says so; the caller scans the rest.
//!
//! One file per concern: `mod.rs` the [`MessageIndexes`] registry (LRU,
//! files, lookups); `segment_index.rs` one segment's index (building it
//! from the segment, caps, candidates); `index_file.rs` its file form.

use crate::error::StoreError;
use crate::storage::Storage;
use index_file::FILE_EXTENSION;
use segment_index::SegmentIndex;
use sluice_proto::v1::SegmentStatus;
use sluice_proto::v1::{FindInSegmentRequest, FindInSegmentResponse};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod index_file;
mod segment_index;
#[cfg(test)]
mod tests;

/// Default [`MessageIndexLimits::max_indexed_segments`].
pub const DEFAULT_MAX_INDEXED_SEGMENTS: usize = 32;
/// Default [`MessageIndexLimits::max_batches_per_segment`] (32 bytes each).
pub const DEFAULT_MAX_BATCHES_PER_SEGMENT: usize = 262_144;
/// Default [`MessageIndexLimits::max_terms_per_segment`].
pub const DEFAULT_MAX_TERMS_PER_SEGMENT: usize = 65_536;
/// Default [`MessageIndexLimits::max_postings_per_segment`] (4 bytes each).
pub const DEFAULT_MAX_POSTINGS_PER_SEGMENT: usize = 1_048_576;
/// Default [`MessageIndexLimits::max_candidate_batches`].
pub const DEFAULT_MAX_CANDIDATE_BATCHES: u32 = 1024;

/// Bounds of the message indexes. The service configuration
/// (`StoreConfig`, `message_index_*`) takes its defaults from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageIndexLimits {
    /// Most segments whose index is kept in memory (least recently looked
    /// up dropped beyond it).
    pub max_indexed_segments: usize,
    /// Most batches indexed per segment; lookups scan the rest.
    pub max_batches_per_segment: usize,
    /// Most distinct record keys and tags (hashes) indexed per segment.
    pub max_terms_per_segment: usize,
    /// Most (key or tag, batch) pairs indexed per segment.
    pub max_postings_per_segment: usize,
    /// Most candidate batches in one `FindInSegment` answer.
    pub max_candidate_batches: u32,
}

impl Default for MessageIndexLimits {
    fn default() -> Self {
        Self {
            max_indexed_segments: DEFAULT_MAX_INDEXED_SEGMENTS,
            max_batches_per_segment: DEFAULT_MAX_BATCHES_PER_SEGMENT,
            max_terms_per_segment: DEFAULT_MAX_TERMS_PER_SEGMENT,
            max_postings_per_segment: DEFAULT_MAX_POSTINGS_PER_SEGMENT,
            max_candidate_batches: DEFAULT_MAX_CANDIDATE_BATCHES,
        }
    }
}

/// A record key's index term: a 64-bit FNV-1a hash of a domain byte and the
/// key, so keys and tags never share terms.
pub fn key_term(key: &[u8]) -> u64 {
    term(b'k', key)
}

/// A tag's index term.
pub fn tag_term(tag: &str) -> u64 {
    term(b't', tag.as_bytes())
}

fn term(domain: u8, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in std::iter::once(&domain).chain(bytes) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
/// A validated lookup.
#[derive(Debug, Clone, Copy)]
struct Query {
    term: Option<u64>,
    from_time_ms: i64,
    to_time_ms: i64,
    from_offset: u64,
    end_offset: u64,
}

/// Counters of the indexes, for tests and status.
#[derive(Debug, Default)]
pub struct MessageIndexStats {
    /// Batches decoded to build indexes.
    pub batches_indexed: AtomicU64,
    /// Indexes read from their files.
    pub loaded_from_files: AtomicU64,
    /// Index files refused (damaged, stale) and deleted.
    pub files_refused: AtomicU64,
    pub files_written: AtomicU64,
}

/// The indexes of the segments looked up recently.
pub struct MessageIndexes {
    limits: MessageIndexLimits,
    segments: Mutex<Registry>,
    /// Where indexes of sealed segments are kept; `None`: memory only.
    directory: Option<PathBuf>,
    stats: MessageIndexStats,
}

#[derive(Default)]
struct Registry {
    indexes: HashMap<u64, Arc<Mutex<SegmentIndex>>>,
    clock: u64,
}

impl MessageIndexes {
    /// Indexes kept in memory only.
    pub fn new(limits: MessageIndexLimits) -> Self {
        Self {
            limits,
            segments: Mutex::new(Registry::default()),
            directory: None,
            stats: MessageIndexStats::default(),
        }
    }

    /// Indexes whose sealed segments' indexes are also kept as files in
    /// `directory` (created if needed; without it, memory only).
    pub fn with_directory(limits: MessageIndexLimits, directory: PathBuf) -> Self {
        let mut indexes = Self::new(limits);
        match std::fs::create_dir_all(&directory) {
            Ok(()) => indexes.directory = Some(directory),
            Err(error) => tracing::warn!(directory = %directory.display(), %error,
                "cannot create the message index directory; indexes are kept in memory only"),
        }
        indexes
    }

    pub fn stats(&self) -> &MessageIndexStats {
        &self.stats
    }

    fn file_path(&self, segment_id: u64) -> Option<PathBuf> {
        self.directory
            .as_ref()
            .map(|directory| directory.join(format!("{segment_id:020}.{FILE_EXTENSION}")))
    }

    fn remove_file(&self, segment_id: u64) {
        if let Some(path) = self.file_path(segment_id) {
            remove_quietly(&path);
        }
    }

    /// Deletes index files (and leftover temp files) of segments `storage`
    /// does not hold. Returns how many were deleted.
    pub fn remove_orphans(&self, storage: &Storage) -> usize {
        let Some(directory) = &self.directory else {
            return 0;
        };
        let held: std::collections::HashSet<u64> = storage
            .list_segments()
            .iter()
            .map(|status| status.segment_id)
            .collect();
        let Ok(entries) = std::fs::read_dir(directory) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let segment_id = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok());
            let is_index =
                path.extension().and_then(|extension| extension.to_str()) == Some(FILE_EXTENSION);
            if !is_index || segment_id.is_none_or(|id| !held.contains(&id)) {
                remove_quietly(&path);
                removed += 1;
            }
        }
        removed
    }

    /// Replaces a fresh index by its file's, if the file is usable; a file
    /// that is not is deleted.
    fn load(&self, index: &mut SegmentIndex, segment_id: u64, status: &SegmentStatus) {
        index.file_checked = true;
        let Some(path) = self.file_path(segment_id) else {
            return;
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read a message index file");
                return;
            }
        };
        if !status.sealed {
            // Sealed ones only are written; an open segment with a file
            // was reopened by recovery: the file is stale.
            remove_quietly(&path);
            self.stats.files_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match SegmentIndex::decode(&bytes, segment_id, status, &self.limits) {
            Ok(loaded) => {
                let last_used = index.last_used;
                *index = loaded;
                index.last_used = last_used;
                self.stats.loaded_from_files.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                tracing::warn!(segment_id, %reason, "ignoring a message index file; rebuilding the index");
                remove_quietly(&path);
                self.stats.files_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes the index of a sealed segment that is complete (or stopped
    /// at a cap) to its file, once.
    fn persist(&self, index: &mut SegmentIndex, segment_id: u64, status: &SegmentStatus) {
        let Some(path) = self.file_path(segment_id) else {
            return;
        };
        let complete = index.indexed_end == status.end_offset || index.stopped.is_some();
        if index.persisted || !status.sealed || index.damaged || !complete {
            return;
        }
        let temporary = path.with_extension("tmp");
        let written = std::fs::write(&temporary, index.encode(segment_id, status))
            .and_then(|()| std::fs::rename(&temporary, &path));
        match written {
            Ok(()) => {
                index.persisted = true;
                self.stats.files_written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                // Only the next restart's first lookup is slower.
                tracing::warn!(path = %path.display(), %error, "cannot write a message index file");
                remove_quietly(&temporary);
                index.persisted = true;
            }
        }
    }

    /// Segments indexed now (for tests and status).
    pub fn indexed_segments(&self) -> usize {
        self.lock().indexes.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.segments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The index of `segment_id`, created (and the least recently used one
    /// dropped beyond the cap) if needed.
    fn index_of(&self, segment_id: u64, base_offset: u64) -> Arc<Mutex<SegmentIndex>> {
        let mut registry = self.lock();
        registry.clock += 1;
        let now = registry.clock;
        if let Some(index) = registry.indexes.get(&segment_id).cloned() {
            if let Ok(mut guard) = index.try_lock() {
                guard.last_used = now;
            }
            return index;
        }
        while registry.indexes.len() >= self.limits.max_indexed_segments.max(1) {
            let oldest = registry
                .indexes
                .iter()
                .min_by_key(|(_, index)| {
                    index
                        .try_lock()
                        .map(|guard| guard.last_used)
                        .unwrap_or(u64::MAX)
                })
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    registry.indexes.remove(&id);
                }
                None => break,
            }
        }
        let mut fresh = SegmentIndex::new(base_offset);
        fresh.last_used = now;
        let index = Arc::new(Mutex::new(fresh));
        registry.indexes.insert(segment_id, index.clone());
        index
    }

    fn forget(&self, segment_id: u64) {
        self.lock().indexes.remove(&segment_id);
        self.remove_file(segment_id);
    }

    /// Answers a `FindInSegment` request. Blocking file I/O (indexing).
    pub fn find(
        &self,
        storage: &Storage,
        request: &FindInSegmentRequest,
    ) -> Result<FindInSegmentResponse, StoreError> {
        let term = match (&request.key, &request.tag) {
            (Some(_), Some(_)) => {
                return Err(StoreError::InvalidArgument(
                    "give a key or a tag, not both".to_string(),
                ))
            }
            (Some(key), None) => Some(key_term(key)),
            (None, Some(tag)) => Some(tag_term(tag)),
            (None, None) => None,
        };
        let from_time_ms = request.from_time_ms.unwrap_or(i64::MIN);
        let to_time_ms = request.to_time_ms.unwrap_or(i64::MAX);
        if from_time_ms > to_time_ms {
            return Err(StoreError::InvalidArgument(format!(
                "time range is empty: from {from_time_ms} is after to {to_time_ms}"
            )));
        }
        let status = match storage.segment_status(request.segment_id) {
            Ok(status) => status,
            Err(error) => {
                if matches!(error, StoreError::UnknownSegment { .. }) {
                    self.forget(request.segment_id);
                }
                return Err(error);
            }
        };
        let query = Query {
            term,
            from_time_ms,
            to_time_ms,
            from_offset: request.from_offset,
            end_offset: if request.end_offset == 0 {
                status.end_offset
            } else {
                request.end_offset.min(status.end_offset)
            },
        };
        let index = self.index_of(request.segment_id, status.base_offset);
        let mut index = index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if index.base_offset != status.base_offset || index.indexed_end > status.end_offset {
            tracing::warn!(
                segment_id = request.segment_id,
                "message index no longer fits its segment; rebuilding it"
            );
            *index = SegmentIndex::new(status.base_offset);
            index.file_checked = true;
            self.remove_file(request.segment_id);
        }
        if !index.file_checked {
            self.load(&mut index, request.segment_id, &status);
        }
        let batches_before = index.batches.len();
        let caught_up =
            index.catch_up(storage, request.segment_id, status.end_offset, &self.limits);
        let added = index.batches.len().saturating_sub(batches_before);
        if added > 0 {
            // A sealed segment still grows by recovery copies: its file
            // must be written again.
            index.persisted = false;
        }
        self.stats
            .batches_indexed
            .fetch_add(added as u64, Ordering::Relaxed);
        caught_up?;
        self.persist(&mut index, request.segment_id, &status);
        let cap = self.limits.max_candidate_batches.max(1);
        let max_batches = if request.max_batches == 0 {
            cap
        } else {
            request.max_batches.min(cap)
        } as usize;
        let candidates = index.candidates(&query);
        let next_offset = candidates
            .get(max_batches)
            .map(|position| index.batches[*position].base_offset);
        Ok(FindInSegmentResponse {
            batch_offsets: candidates
                .iter()
                .take(max_batches)
                .map(|position| index.batches[*position].base_offset)
                .collect(),
            next_offset,
            indexed_end_offset: index.indexed_end,
            segment_end_offset: status.end_offset,
            unindexed_reason: if index.indexed_end < status.end_offset {
                index
                    .stopped
                    .clone()
                    .unwrap_or_else(|| "appended while indexing".to_string())
            } else {
                String::new()
            },
        })
    }
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot remove a message index file")
        }
    }
}
