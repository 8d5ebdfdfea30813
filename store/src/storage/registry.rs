//! The segment registry: every segment the engine holds, by id, as a
//! [`SegmentHandle`] (identity, ordering state, seal and fence, and the
//! segment file with its indexes), and the creation and removal of a
//! segment's files.

use super::segment_files::SegmentFiles;
use super::StorageOptions;
use crate::error::StoreError;
use crate::segment::{self, DurableEnd, SegmentLog, SegmentMeta};
use sluice_proto::v1::{Durability, SegmentStatus};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Ordering state of a segment, changed only under its lock.
#[derive(Debug)]
pub(super) struct Control {
    /// One past the last offset accepted (queued or durable).
    pub(super) accepted_end: u64,
    pub(super) deleted: bool,
}

#[derive(Debug)]
pub(super) struct SegmentHandle {
    pub(super) id: u64,
    pub(super) topic: String,
    pub(super) partition: u32,
    pub(super) base_offset: u64,
    pub(super) durability: Durability,
    /// Held while an append is ordered and queued, and across a seal, so
    /// that appends reach the journal in arrival order and a seal sees
    /// every append accepted before it.
    pub(super) control: tokio::sync::Mutex<Control>,
    pub(super) sealed: AtomicBool,
    pub(super) fence_epoch: AtomicU64,
    /// The end the metadata file records (written at seal), or
    /// [`NO_META_END`]: checkpoints record the segment's end while it is
    /// beyond this (unsealed, or copied into after the seal).
    meta_end: AtomicU64,
    log: Mutex<SegmentLog>,
}

/// [`SegmentHandle`]'s `meta_end` when the metadata records no end.
const NO_META_END: u64 = u64::MAX;

impl SegmentHandle {
    /// Whether the metadata file records `end_offset` (or more) as the
    /// segment's durable end.
    pub(super) fn end_recorded_in_meta(&self, end_offset: u64) -> bool {
        let recorded = self.meta_end.load(Ordering::SeqCst);
        recorded != NO_META_END && recorded >= end_offset
    }

    /// Notes that `meta` was written durably to the metadata file.
    pub(super) fn meta_written(&self, meta: &SegmentMeta) {
        self.meta_end
            .store(recorded_meta_end(meta), Ordering::SeqCst);
    }

    /// The metadata to write now; once sealed, with the log's final end.
    pub(super) fn meta(&self) -> SegmentMeta {
        let sealed = self.sealed.load(Ordering::SeqCst);
        let (end_offset, size_bytes) = if sealed {
            let log = self.lock_log();
            (Some(log.end_offset), Some(log.size_bytes))
        } else {
            (None, None)
        };
        SegmentMeta {
            segment_id: self.id,
            topic: self.topic.clone(),
            partition: self.partition,
            base_offset: self.base_offset,
            writer_epoch: self.fence_epoch.load(Ordering::SeqCst),
            sealed,
            durability: self.durability as i32,
            end_offset,
            size_bytes,
            checksum: None,
        }
    }

    /// Why a writer may not append: the segment has damaged ranges.
    pub(super) fn damage(&self) -> Option<String> {
        let log = self.lock_log();
        let first = log
            .corrupt_regions
            .iter()
            .min_by_key(|region| region.start_offset)?;
        Some(format!(
            "offsets [{}, {}) are damaged ({}){}; writes are refused until the copy is repaired or replaced",
            first.start_offset,
            first.end_offset,
            first.describe(),
            if log.corrupt_regions.len() > 1 {
                format!(" and {} more ranges", log.corrupt_regions.len() - 1)
            } else {
                String::new()
            }
        ))
    }

    pub(super) fn lock_log(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        // A panic while holding this lock cannot leave the log half
        // updated in a way later readers trip over: sizes are updated after
        // the write succeeds.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn status(&self) -> SegmentStatus {
        let log = self.lock_log();
        SegmentStatus {
            segment_id: self.id,
            topic: self.topic.clone(),
            partition: self.partition,
            base_offset: self.base_offset,
            end_offset: log.end_offset,
            size_bytes: log.size_bytes,
            sealed: self.sealed.load(Ordering::SeqCst),
            max_timestamp_ms: log.max_timestamp_ms,
            writer_epoch: self.fence_epoch.load(Ordering::SeqCst),
            corrupt_from_offset: log.corrupt_from_offset(),
            damaged_ranges: log.damaged_ranges(),
        }
    }
}

/// Every segment held, by id.
pub(super) type Registry = RwLock<HashMap<u64, Arc<SegmentHandle>>>;

/// A segment held whose metadata is unusable: only its id is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DamagedMeta {
    /// What is wrong with each metadata copy (or the log).
    pub(super) reason: String,
    /// The durable end the checkpoint recorded for it, carried into every
    /// later checkpoint so that it is not forgotten while the metadata is
    /// being repaired.
    pub(super) recorded_end: Option<DurableEnd>,
}

/// The segments held whose metadata is unusable, by id.
pub(super) type DamagedRegistry = RwLock<BTreeMap<u64, DamagedMeta>>;

/// The segment `segment_id`, if held.
pub(super) fn lookup(registry: &Registry, segment_id: u64) -> Option<Arc<SegmentHandle>> {
    registry
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&segment_id)
        .cloned()
}

/// Every segment held, in no particular order.
pub(super) fn all_handles(registry: &Registry) -> Vec<Arc<SegmentHandle>> {
    registry
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .values()
        .cloned()
        .collect()
}

/// The end `meta` records as durable, or [`NO_META_END`].
fn recorded_meta_end(meta: &SegmentMeta) -> u64 {
    match meta.end_offset {
        Some(end_offset) if meta.sealed => end_offset.min(NO_META_END - 1),
        _ => NO_META_END,
    }
}

pub(super) fn handle_from(
    meta: SegmentMeta,
    mut log: SegmentLog,
    options: &StorageOptions,
) -> SegmentHandle {
    log.preallocate_chunk_bytes = options.segment_preallocate_bytes;
    let durability = Durability::try_from(meta.durability).unwrap_or(Durability::Fsync);
    let meta_end = recorded_meta_end(&meta);
    SegmentHandle {
        id: meta.segment_id,
        topic: meta.topic,
        partition: meta.partition,
        base_offset: meta.base_offset,
        durability,
        control: tokio::sync::Mutex::new(Control {
            accepted_end: log.end_offset,
            deleted: false,
        }),
        sealed: AtomicBool::new(meta.sealed),
        fence_epoch: AtomicU64::new(meta.writer_epoch),
        meta_end: AtomicU64::new(meta_end),
        log: Mutex::new(log),
    }
}

/// Creates the files of a new segment: an empty log, opened within the
/// budget of `files`, and the metadata file.
pub(super) fn create_segment_files(
    segments_dir: &Path,
    meta: &SegmentMeta,
    index_interval_bytes: u64,
    files: &SegmentFiles,
) -> Result<SegmentLog, StoreError> {
    let path = segment::log_path(segments_dir, meta.segment_id);
    // A log without usable metadata is a leftover of an interrupted delete
    // or of a segment skipped at recovery: keep its bytes for inspection
    // rather than overwrite them.
    if std::fs::metadata(&path)
        .map(|stat| stat.len() > 0)
        .unwrap_or(false)
    {
        let kept = path.with_extension(format!("log.orphan-{}", sluice_proto::now_unix_ms()));
        tracing::warn!(from = %path.display(), to = %kept.display(), "keeping an orphaned segment log aside");
        std::fs::rename(&path, &kept)
            .map_err(|error| StoreError::io(format!("move {} aside", path.display()), error))?;
    }
    files.open_with(meta.segment_id, |path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    })?;
    segment::write_meta(segments_dir, meta)?;
    Ok(SegmentLog::new(meta.base_offset, index_interval_bytes))
}

pub(super) fn remove_segment_files(segments_dir: &Path, segment_id: u64) -> Result<(), StoreError> {
    for path in [
        segment::meta_path(segments_dir, segment_id),
        segment::meta_copy_path(segments_dir, segment_id),
        segment::log_path(segments_dir, segment_id),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(StoreError::io(format!("remove {}", path.display()), error));
            }
        }
    }
    segment::sync_directory(segments_dir)
}

/// A handle over a fresh, empty log in `directory`, for unit tests of the
/// stages that take handles; write to it through [`test_file`].
#[cfg(test)]
pub(super) fn test_handle(directory: &Path, segment_id: u64, base_offset: u64) -> SegmentHandle {
    let meta = SegmentMeta {
        segment_id,
        topic: "orders".to_string(),
        partition: 0,
        base_offset,
        writer_epoch: 1,
        sealed: false,
        durability: Durability::Fsync as i32,
        end_offset: None,
        size_bytes: None,
        checksum: None,
    };
    let files = SegmentFiles::new(directory, 4);
    let log = create_segment_files(directory, &meta, 4096, &files).expect("create segment files");
    handle_from(meta, log, &StorageOptions::default())
}

/// The log file of a [`test_handle`].
#[cfg(test)]
pub(super) fn test_file(directory: &Path, segment_id: u64) -> Arc<std::fs::File> {
    SegmentFiles::new(directory, 4)
        .get(segment_id)
        .expect("open the segment file")
}
