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
//! rebuilt.
//!
//! Once a *sealed* segment is fully indexed (or up to a cap) the index is
//! written to `{segment_id:020}.index` in the index directory (temp file and
//! rename; no fsync: it is a cache), so the first lookup after a restart
//! need not read the segment again. A file is only used when its CRC is
//! right, it names the segment, the segment is still sealed with the same
//! base, end and size, and its contents are within the current caps and
//! consistent; otherwise it is deleted and the index rebuilt from the
//! segment. Files of segments the store no longer holds are removed at
//! start ([`MessageIndexes::remove_orphans`]) and when looked up.
//! Layout (little-endian): `SLIX`, version u8 (1), segment id, base offset,
//! end offset, size bytes, indexed end (u64 each), stop reason (u32 length,
//! UTF-8), batch count u32 then per batch base, end (u64), min and max
//! timestamp (i64), term count u32 then per term hash u64, count u32,
//! positions u32..., and a CRC-32C of everything before it.
//!
//! Bounds: at most `max_indexed_segments` segments are indexed at once (the
//! least recently used is dropped), and per segment at most
//! `max_batches_per_segment` batches, `max_terms_per_segment` distinct
//! hashes and `max_postings_per_segment` (hash, batch) pairs. When a cap is
//! reached the index stops there and says so; the caller scans the rest.

use crate::error::StoreError;
use crate::storage::Storage;
use sluice_proto::batch::{self, BatchIter};
use sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;
use sluice_proto::v1::SegmentStatus;
use sluice_proto::v1::{FindInSegmentRequest, FindInSegmentResponse};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const FILE_MAGIC: &[u8; 4] = b"SLIX";
const FILE_VERSION: u8 = 1;
const FILE_EXTENSION: &str = "index";

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

/// One indexed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchEntry {
    base_offset: u64,
    end_offset: u64,
    /// Smallest and largest record timestamp (from decoding; the header
    /// only knows the first and the largest).
    min_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

/// The index of one segment.
#[derive(Debug)]
struct SegmentIndex {
    base_offset: u64,
    /// Ascending by offset.
    batches: Vec<BatchEntry>,
    /// Term → positions in `batches`, ascending.
    terms: HashMap<u64, Vec<u32>>,
    postings: usize,
    /// Everything below is indexed.
    indexed_end: u64,
    /// Why indexing stopped at `indexed_end` for good (a cap, damage).
    stopped: Option<String>,
    /// Stopped at damage: never persisted (a repair may fix the segment).
    damaged: bool,
    /// Written to (or read from) its file as it is now.
    persisted: bool,
    /// Whether its file was looked for (once per index).
    file_checked: bool,
    last_used: u64,
}

impl SegmentIndex {
    fn new(base_offset: u64) -> Self {
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

    /// The file form (see the module documentation).
    fn encode(&self, segment_id: u64, status: &SegmentStatus) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.batches.len() * 32 + self.postings * 4);
        out.extend_from_slice(FILE_MAGIC);
        out.push(FILE_VERSION);
        for value in [
            segment_id,
            status.base_offset,
            status.end_offset,
            status.size_bytes,
            self.indexed_end,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        let reason = self.stopped.as_deref().unwrap_or("").as_bytes();
        out.extend_from_slice(&(reason.len() as u32).to_le_bytes());
        out.extend_from_slice(reason);
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        for entry in &self.batches {
            out.extend_from_slice(&entry.base_offset.to_le_bytes());
            out.extend_from_slice(&entry.end_offset.to_le_bytes());
            out.extend_from_slice(&entry.min_timestamp_ms.to_le_bytes());
            out.extend_from_slice(&entry.max_timestamp_ms.to_le_bytes());
        }
        out.extend_from_slice(&(self.terms.len() as u32).to_le_bytes());
        // Sorted, so one index always has the same file.
        let mut terms: Vec<(&u64, &Vec<u32>)> = self.terms.iter().collect();
        terms.sort_unstable_by_key(|(term, _)| **term);
        for (term, positions) in terms {
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
            for position in positions {
                out.extend_from_slice(&position.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a file form back, checking everything it claims against the
    /// segment's current status and the caps.
    fn decode(
        bytes: &[u8],
        segment_id: u64,
        status: &SegmentStatus,
        limits: &MessageIndexLimits,
    ) -> Result<SegmentIndex, String> {
        if bytes.len() < FILE_MAGIC.len() + 1 + 4 {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored_crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored_crc {
            return Err("checksum mismatch".to_string());
        }
        let mut reader = FileReader { bytes: body };
        if reader.take(4)? != FILE_MAGIC || reader.take(1)? != [FILE_VERSION] {
            return Err("not a version 1 message index".to_string());
        }
        let header = [reader.u64()?, reader.u64()?, reader.u64()?, reader.u64()?];
        let expected = [
            segment_id,
            status.base_offset,
            status.end_offset,
            status.size_bytes,
        ];
        if header != expected || !status.sealed {
            return Err(format!(
                "it describes segment/base/end/size {header:?}, the segment is {expected:?} (sealed: {})",
                status.sealed
            ));
        }
        let indexed_end = reader.u64()?;
        let reason_length = reader.u32()? as usize;
        let reason = std::str::from_utf8(reader.take(reason_length)?)
            .map_err(|_| "stop reason is not UTF-8".to_string())?
            .to_string();
        let batch_count = reader.u32()? as usize;
        if batch_count > limits.max_batches_per_segment {
            return Err(format!("{batch_count} batches exceed the cap"));
        }
        let mut index = SegmentIndex::new(status.base_offset);
        let mut previous_end = status.base_offset;
        for _ in 0..batch_count {
            let entry = BatchEntry {
                base_offset: reader.u64()?,
                end_offset: reader.u64()?,
                min_timestamp_ms: reader.i64()?,
                max_timestamp_ms: reader.i64()?,
            };
            if entry.base_offset < previous_end || entry.end_offset <= entry.base_offset {
                return Err("batches are not in offset order".to_string());
            }
            previous_end = entry.end_offset;
            index.batches.push(entry);
        }
        let term_count = reader.u32()? as usize;
        if term_count > limits.max_terms_per_segment {
            return Err(format!("{term_count} keys and tags exceed the cap"));
        }
        for _ in 0..term_count {
            let term = reader.u64()?;
            let count = reader.u32()? as usize;
            if index.postings + count > limits.max_postings_per_segment {
                return Err("pairs exceed the cap".to_string());
            }
            let mut positions = Vec::with_capacity(count);
            for _ in 0..count {
                let position = reader.u32()?;
                if position as usize >= batch_count
                    || positions.last().is_some_and(|last| *last >= position)
                {
                    return Err("a position is out of order or range".to_string());
                }
                positions.push(position);
            }
            index.postings += count;
            if index.terms.insert(term, positions).is_some() {
                return Err("a key or tag is listed twice".to_string());
            }
        }
        if !reader.bytes.is_empty() {
            return Err("trailing bytes".to_string());
        }
        if indexed_end != previous_end || indexed_end > status.end_offset {
            return Err("its end does not match its batches".to_string());
        }
        if reason.is_empty() != (indexed_end == status.end_offset) {
            return Err("it stops early without a reason".to_string());
        }
        index.indexed_end = indexed_end;
        index.stopped = (!reason.is_empty()).then_some(reason);
        index.persisted = true;
        index.file_checked = true;
        Ok(index)
    }

    /// Adds one decoded batch unless a cap forbids it (then indexing stops
    /// before it, with the reason).
    fn add(
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
    fn catch_up(
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
    fn candidates(&self, query: &Query) -> Vec<usize> {
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

/// A validated lookup.
#[derive(Debug, Clone, Copy)]
struct Query {
    term: Option<u64>,
    from_time_ms: i64,
    to_time_ms: i64,
    from_offset: u64,
    end_offset: u64,
}

/// Bounds-checked reads of an index file.
struct FileReader<'a> {
    bytes: &'a [u8],
}

impl<'a> FileReader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        if length > self.bytes.len() {
            return Err("truncated".to_string());
        }
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buffer))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewSegment, StorageOptions};
    use bytes::Bytes;
    use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
    use sluice_proto::v1::Durability;

    /// One batch of `(key, tag, timestamp)` records at `base_offset`.
    fn batch_of(
        base_offset: u64,
        records: &[(&str, &str, i64)],
        compression: Compression,
    ) -> Bytes {
        let mut builder = BatchBuilder::new(compression);
        for (key, tag, timestamp_ms) in records {
            builder.push(&RecordData {
                key: Some(Bytes::from(key.to_string())),
                value: Some(Bytes::from(vec![b'v'; 64])),
                headers: Vec::new(),
                tags: vec![tag.to_string()],
                timestamp_ms: Some(*timestamp_ms),
            });
        }
        let mut bytes = builder.build().to_vec();
        batch::assign(&mut bytes, base_offset, 1);
        Bytes::from(bytes)
    }

    async fn storage_with_segment(directory: &std::path::Path) -> Storage {
        let (storage, _) = Storage::open(directory, StorageOptions::default()).expect("open");
        storage
            .create_segment(NewSegment {
                segment_id: 7,
                topic: "orders".to_string(),
                partition: 0,
                base_offset: 100,
                writer_epoch: 1,
                durability: Durability::Fsync,
            })
            .await
            .expect("create");
        storage
    }

    /// Appends 20 batches of 3 records: keys `k{batch % 5}`, tag `even` or
    /// `odd` by batch, timestamps 1000 + 10 * batch (+ record), every fifth
    /// batch lz4-compressed. Returns the segment end.
    async fn fill(storage: &Storage) -> u64 {
        let mut offset = 100;
        for index in 0..20u64 {
            let key = format!("k{}", index % 5);
            let tag = if index % 2 == 0 { "even" } else { "odd" };
            let time = 1000 + 10 * index as i64;
            let compression = if index % 5 == 4 {
                Compression::Lz4
            } else {
                Compression::None
            };
            let records = [
                (key.as_str(), tag, time),
                (key.as_str(), tag, time + 1),
                ("shared", tag, time + 2),
            ];
            storage
                .append(7, 1, batch_of(offset, &records, compression))
                .await
                .expect("append");
            offset += 3;
        }
        offset
    }

    fn by_key(key: &str) -> FindInSegmentRequest {
        FindInSegmentRequest {
            segment_id: 7,
            key: Some(Bytes::from(key.to_string())),
            ..FindInSegmentRequest::default()
        }
    }

    /// Batch base offsets whose batch index `i` satisfies `keep`.
    fn expected(keep: impl Fn(u64) -> bool) -> Vec<u64> {
        (0..20u64)
            .filter(|index| keep(*index))
            .map(|index| 100 + 3 * index)
            .collect()
    }

    #[tokio::test]
    async fn index_finds_batches_by_key_tag_and_time_including_compressed_ones() {
        let directory = tempfile::tempdir().expect("temp dir");
        let storage = storage_with_segment(directory.path()).await;
        let end = fill(&storage).await;
        let indexes = MessageIndexes::new(MessageIndexLimits::default());
        let found = indexes.find(&storage, &by_key("k4")).expect("find");
        assert_eq!(found.batch_offsets, expected(|index| index % 5 == 4));
        assert_eq!(found.indexed_end_offset, end);
        assert_eq!(found.segment_end_offset, end);
        assert!(found.unindexed_reason.is_empty());
        assert!(found.next_offset.is_none());
        let odd = indexes
            .find(
                &storage,
                &FindInSegmentRequest {
                    segment_id: 7,
                    tag: Some("odd".to_string()),
                    ..FindInSegmentRequest::default()
                },
            )
            .expect("find");
        assert_eq!(odd.batch_offsets, expected(|index| index % 2 == 1));
        // Time only: batches 3..=5 hold timestamps 1030..=1052.
        let timed = indexes
            .find(
                &storage,
                &FindInSegmentRequest {
                    segment_id: 7,
                    from_time_ms: Some(1032),
                    to_time_ms: Some(1050),
                    ..FindInSegmentRequest::default()
                },
            )
            .expect("find");
        assert_eq!(
            timed.batch_offsets,
            expected(|index| (3..=5).contains(&index))
        );
        // Key and time together, and a key nobody has.
        let both = indexes
            .find(
                &storage,
                &FindInSegmentRequest {
                    from_time_ms: Some(1100),
                    ..by_key("k0")
                },
            )
            .expect("find");
        assert_eq!(
            both.batch_offsets,
            expected(|index| index % 5 == 0 && index >= 10)
        );
        assert!(indexes
            .find(&storage, &by_key("nobody"))
            .expect("find")
            .batch_offsets
            .is_empty());
        // A key never matches a tag of the same text.
        assert!(indexes
            .find(&storage, &by_key("odd"))
            .expect("find")
            .batch_offsets
            .is_empty());
    }

    #[tokio::test]
    async fn answers_are_paged_and_later_appends_are_indexed_on_the_next_lookup() {
        let directory = tempfile::tempdir().expect("temp dir");
        let storage = storage_with_segment(directory.path()).await;
        let end = fill(&storage).await;
        let indexes = MessageIndexes::new(MessageIndexLimits::default());
        let first = indexes
            .find(
                &storage,
                &FindInSegmentRequest {
                    max_batches: 3,
                    ..by_key("shared")
                },
            )
            .expect("find");
        assert_eq!(first.batch_offsets, vec![100, 103, 106]);
        assert_eq!(first.next_offset, Some(109));
        let rest = indexes
            .find(
                &storage,
                &FindInSegmentRequest {
                    from_offset: 109,
                    end_offset: 115,
                    ..by_key("shared")
                },
            )
            .expect("find");
        assert_eq!(rest.batch_offsets, vec![109, 112]);
        storage
            .append(
                7,
                1,
                batch_of(end, &[("late", "new", 5000)], Compression::Zstd),
            )
            .await
            .expect("append");
        let late = indexes.find(&storage, &by_key("late")).expect("find");
        assert_eq!(late.batch_offsets, vec![end]);
        assert_eq!(late.indexed_end_offset, end + 1);
    }

    #[tokio::test]
    async fn index_is_rebuilt_after_a_restart_and_after_its_segment_changed() {
        let directory = tempfile::tempdir().expect("temp dir");
        let storage = storage_with_segment(directory.path()).await;
        let end = fill(&storage).await;
        let indexes = MessageIndexes::new(MessageIndexLimits::default());
        let before = indexes.find(&storage, &by_key("k2")).expect("find");
        storage.close().await.expect("close");
        drop(storage);
        // A restart: recovery rescans the segment, the index is rebuilt on
        // the next lookup and agrees.
        let (reopened, report) =
            Storage::open(directory.path(), StorageOptions::default()).expect("reopen");
        assert!(report.is_clean(), "{report:?}");
        let rebuilt = MessageIndexes::new(MessageIndexLimits::default());
        assert_eq!(
            rebuilt.find(&reopened, &by_key("k2")).expect("find"),
            before
        );
        // The segment is deleted and created again shorter under the same
        // id (a repair's recopy): the old index does not fit and is not
        // trusted.
        reopened.delete_segment(7).await.expect("delete");
        assert!(indexes.find(&reopened, &by_key("k2")).is_err());
        reopened
            .create_segment(NewSegment {
                segment_id: 7,
                topic: "orders".to_string(),
                partition: 0,
                base_offset: 100,
                writer_epoch: 1,
                durability: Durability::Fsync,
            })
            .await
            .expect("create again");
        reopened
            .append(7, 1, batch_of(100, &[("k2", "x", 1)], Compression::None))
            .await
            .expect("append");
        let stale = MessageIndexes::new(MessageIndexLimits::default());
        assert_eq!(
            stale
                .find(&reopened, &by_key("k2"))
                .expect("find")
                .batch_offsets,
            vec![100]
        );
        // Now an index of the long segment meets the short one.
        let long_index = MessageIndexes::new(MessageIndexLimits::default());
        {
            let index = long_index.index_of(7, 100);
            let mut guard = index.lock().expect("lock");
            guard.indexed_end = end;
        }
        let found = long_index.find(&reopened, &by_key("k2")).expect("find");
        assert_eq!(found.batch_offsets, vec![100]);
        assert_eq!(found.indexed_end_offset, 101);
    }

    #[tokio::test]
    async fn caps_stop_the_index_and_say_where() {
        let directory = tempfile::tempdir().expect("temp dir");
        let storage = storage_with_segment(directory.path()).await;
        let end = fill(&storage).await;
        for (limits, reason) in [
            (
                MessageIndexLimits {
                    max_batches_per_segment: 4,
                    ..MessageIndexLimits::default()
                },
                "batches",
            ),
            (
                MessageIndexLimits {
                    // "shared", "even", "odd", k0..k2 fit; k3 does not.
                    max_terms_per_segment: 6,
                    ..MessageIndexLimits::default()
                },
                "distinct keys and tags",
            ),
            (
                MessageIndexLimits {
                    max_postings_per_segment: 10,
                    ..MessageIndexLimits::default()
                },
                "pairs",
            ),
        ] {
            let indexes = MessageIndexes::new(limits);
            let found = indexes.find(&storage, &by_key("shared")).expect("find");
            assert!(found.indexed_end_offset < end, "{reason}");
            assert!(
                found.unindexed_reason.contains(reason),
                "{}",
                found.unindexed_reason
            );
            assert!(
                found
                    .unindexed_reason
                    .contains(&format!("from offset {}", found.indexed_end_offset)),
                "{}",
                found.unindexed_reason
            );
            // What is indexed is answered; nothing beyond the index end.
            assert!(!found.batch_offsets.is_empty());
            assert!(found
                .batch_offsets
                .iter()
                .all(|offset| *offset < found.indexed_end_offset));
        }
        // Candidates per answer are capped whatever the request asks.
        let capped = MessageIndexes::new(MessageIndexLimits {
            max_candidate_batches: 2,
            ..MessageIndexLimits::default()
        });
        let found = capped
            .find(
                &storage,
                &FindInSegmentRequest {
                    max_batches: 1000,
                    ..by_key("shared")
                },
            )
            .expect("find");
        assert_eq!(found.batch_offsets, vec![100, 103]);
        assert_eq!(found.next_offset, Some(106));
    }

    #[tokio::test]
    async fn least_recently_used_segments_are_dropped_beyond_the_cap() {
        let directory = tempfile::tempdir().expect("temp dir");
        let storage = storage_with_segment(directory.path()).await;
        fill(&storage).await;
        for segment_id in [8, 9] {
            storage
                .create_segment(NewSegment {
                    segment_id,
                    topic: "orders".to_string(),
                    partition: 1,
                    base_offset: 0,
                    writer_epoch: 1,
                    durability: Durability::Fsync,
                })
                .await
                .expect("create");
        }
        let indexes = MessageIndexes::new(MessageIndexLimits {
            max_indexed_segments: 2,
            ..MessageIndexLimits::default()
        });
        for segment_id in [7, 8, 9, 7] {
            indexes
                .find(
                    &storage,
                    &FindInSegmentRequest {
                        segment_id,
                        ..by_key("k1")
                    },
                )
                .expect("find");
            assert!(indexes.indexed_segments() <= 2);
        }
        assert_eq!(
            indexes
                .find(&storage, &by_key("k1"))
                .expect("find")
                .batch_offsets,
            expected(|index| index % 5 == 1)
        );
    }

    #[tokio::test]
    async fn damaged_segments_are_indexed_up_to_the_damage_and_bad_requests_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        let storage = storage_with_segment(directory.path()).await;
        let end = fill(&storage).await;
        storage.close().await.expect("close");
        drop(storage);
        // Flip a byte inside the 6th batch of the segment file (the journal
        // was checkpointed away, so recovery cannot repair it).
        let log = directory
            .path()
            .join("segments")
            .join(format!("{:020}.log", 7));
        let mut bytes = std::fs::read(&log).expect("read log");
        let mut position = 0usize;
        for _ in 0..5 {
            let header = batch::BatchHeader::parse(&bytes[position..]).expect("header");
            position += header.batch_length as usize;
        }
        bytes[position + 70] ^= 0xff;
        std::fs::write(&log, &bytes).expect("write log");
        let (storage, report) =
            Storage::open(directory.path(), StorageOptions::default()).expect("reopen");
        assert_eq!(report.corrupt_segments, vec![(7, 115)]);
        let indexes = MessageIndexes::new(MessageIndexLimits::default());
        let found = indexes.find(&storage, &by_key("k0")).expect("find");
        assert_eq!(found.batch_offsets, vec![100]);
        assert_eq!(found.indexed_end_offset, 115);
        assert_eq!(found.segment_end_offset, end);
        assert!(
            found.unindexed_reason.contains("damaged"),
            "{}",
            found.unindexed_reason
        );
        for bad in [
            FindInSegmentRequest {
                tag: Some("odd".to_string()),
                ..by_key("k0")
            },
            FindInSegmentRequest {
                from_time_ms: Some(10),
                to_time_ms: Some(5),
                ..by_key("k0")
            },
        ] {
            assert!(matches!(
                indexes.find(&storage, &bad),
                Err(StoreError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            indexes.find(
                &storage,
                &FindInSegmentRequest {
                    segment_id: 12345,
                    ..by_key("k0")
                }
            ),
            Err(StoreError::UnknownSegment { .. })
        ));
    }

    fn index_file(directory: &std::path::Path, segment_id: u64) -> std::path::PathBuf {
        directory.join(format!("{segment_id:020}.index"))
    }

    #[tokio::test]
    async fn sealed_segment_indexes_are_written_and_used_after_a_restart() {
        let directory = tempfile::tempdir().expect("temp dir");
        let index_directory = directory.path().join("message-index");
        let storage = storage_with_segment(directory.path()).await;
        fill(&storage).await;
        let indexes =
            MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone());
        // Open segments are not written: they still grow.
        let open = indexes.find(&storage, &by_key("k2")).expect("find");
        assert!(!index_file(&index_directory, 7).exists());
        storage.seal_segment(7, 1).await.expect("seal");
        assert_eq!(indexes.find(&storage, &by_key("k2")).expect("find"), open);
        assert!(index_file(&index_directory, 7).exists());
        assert_eq!(indexes.stats().files_written.load(Ordering::Relaxed), 1);
        assert_eq!(indexes.stats().batches_indexed.load(Ordering::Relaxed), 20);
        storage.close().await.expect("close");
        drop(storage);
        let (storage, _) =
            Storage::open(directory.path(), StorageOptions::default()).expect("reopen");
        let restarted =
            MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone());
        assert_eq!(restarted.remove_orphans(&storage), 0);
        for (key, request) in [("k2", by_key("k2")), ("shared", by_key("shared"))] {
            let fresh = MessageIndexes::new(MessageIndexLimits::default());
            assert_eq!(
                restarted.find(&storage, &request).expect("find"),
                fresh.find(&storage, &request).expect("find"),
                "{key}"
            );
        }
        assert_eq!(
            restarted.stats().loaded_from_files.load(Ordering::Relaxed),
            1
        );
        assert_eq!(restarted.stats().batches_indexed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn damaged_stale_and_orphaned_index_files_are_never_trusted() {
        let directory = tempfile::tempdir().expect("temp dir");
        let index_directory = directory.path().join("message-index");
        let storage = storage_with_segment(directory.path()).await;
        fill(&storage).await;
        storage.seal_segment(7, 1).await.expect("seal");
        let expected = MessageIndexes::new(MessageIndexLimits::default())
            .find(&storage, &by_key("k3"))
            .expect("find");
        MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone())
            .find(&storage, &by_key("k3"))
            .expect("write the file");
        let path = index_file(&index_directory, 7);
        let good = std::fs::read(&path).expect("read index file");
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        // A file of another segment under this one's name: its CRC is
        // right, what it describes is not.
        let mut other = SegmentIndex::new(100);
        other.indexed_end = 100;
        let mut status = storage.segment_status(7).expect("status");
        status.end_offset = 100;
        let stale = other.encode(7, &status);
        for (what, contents) in [
            ("flipped byte", flipped),
            ("truncated", good[..good.len() - 9].to_vec()),
            ("describes another state of the segment", stale),
            ("empty", Vec::new()),
        ] {
            std::fs::write(&path, &contents).expect("write index file");
            let indexes = MessageIndexes::with_directory(
                MessageIndexLimits::default(),
                index_directory.clone(),
            );
            assert_eq!(
                indexes.find(&storage, &by_key("k3")).expect("find"),
                expected,
                "{what}"
            );
            assert_eq!(
                indexes.stats().files_refused.load(Ordering::Relaxed),
                1,
                "{what}"
            );
            assert_eq!(
                indexes.stats().batches_indexed.load(Ordering::Relaxed),
                20,
                "{what}: rebuilt from the segment"
            );
            assert_eq!(
                std::fs::read(&path).expect("rewritten"),
                good,
                "{what}: rewritten"
            );
        }
        // Caps lower than what a file holds: rebuilt within the new caps.
        let capped = MessageIndexes::with_directory(
            MessageIndexLimits {
                max_batches_per_segment: 2,
                ..MessageIndexLimits::default()
            },
            index_directory.clone(),
        );
        let found = capped.find(&storage, &by_key("k3")).expect("find");
        assert_eq!(found.indexed_end_offset, 106);
        assert_eq!(capped.stats().files_refused.load(Ordering::Relaxed), 1);
        // Files of segments the store does not hold, and anything else in
        // the directory, are removed.
        std::fs::write(index_file(&index_directory, 999), b"old").expect("write orphan");
        std::fs::write(index_directory.join("notes.txt"), b"x").expect("write junk");
        let indexes =
            MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone());
        assert_eq!(indexes.remove_orphans(&storage), 2);
        assert!(path.exists());
        assert!(!index_file(&index_directory, 999).exists());
        // A deleted segment's file goes with its first lookup.
        storage.delete_segment(7).await.expect("delete");
        assert!(indexes.find(&storage, &by_key("k3")).is_err());
        assert!(!path.exists());
    }
}
