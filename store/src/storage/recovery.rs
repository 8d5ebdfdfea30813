//! Crash recovery, run by [`Storage::open`](super::Storage::open) before
//! anything is accepted (and again in-process by the healer, so all of it
//! is idempotent): read the checkpoint, load each segment's metadata (the
//! good one of its two copies, rewriting the other; neither usable: the
//! segment is held as damaged), scan the segment files against their
//! recorded durable ends (see `segment::decide_tail`: damage below it is a
//! damaged range, a torn tail beyond it is cut), replay the journal
//! from the checkpoint (re-appending batches the segment files lack, rewriting damaged
//! ranges the journal still holds, redoing creates, seals and deletes) and
//! report what was found in a [`RecoveryReport`].

use super::checkpoint::{Checkpoint, CHECKPOINT_FILE};
use super::registry::{handle_from, remove_segment_files, DamagedMeta, SegmentHandle};
use super::segment_files::SegmentFiles;
use super::StorageOptions;
use crate::error::StoreError;
use crate::journal::{self, Accept, RecordKind};
use crate::journal_use::{self, FileUse};
use crate::segment::{self, DurableEnd, SegmentLog, SegmentMeta};
use crate::segment_meta::{self, choose_meta, meta_file_segment_id, ChosenMeta, MetaCopy};
use sluice_proto::batch::{self, BatchHeader};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What opening the storage found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments_loaded: usize,
    /// `(segment id, reason)`: segments with both metadata copies
    /// unusable, held as damaged (every request answers STORAGE_CORRUPT;
    /// files kept). Not listed when the journal recreated the metadata.
    pub damaged_segments: Vec<(u64, String)>,
    /// `(segment id, what was wrong)`: a metadata copy rewritten from the
    /// other.
    pub restored_metadata: Vec<(u64, String)>,
    /// `(segment id, bytes)` cut off damaged or torn segment tails.
    pub truncated_segment_tails: Vec<(u64, u64)>,
    /// `(segment id, first corrupt offset)` still corrupt after replay.
    pub corrupt_segments: Vec<(u64, u64)>,
    /// Segments whose damaged middle was rewritten from the journal.
    pub repaired_segments: Vec<u64>,
    pub journal_records_replayed: u64,
    pub journal_batches_reappended: u64,
    pub journal_torn_tail_bytes: u64,
    /// Damage found inside journal files (records after it were kept).
    pub journal_corruptions: Vec<String>,
    /// Set when the checkpoint file was unreadable (the whole journal was
    /// replayed instead).
    pub checkpoint_problem: Option<String>,
}

impl RecoveryReport {
    /// True when recovery found nothing wrong beyond a torn journal tail.
    pub fn is_clean(&self) -> bool {
        self.damaged_segments.is_empty()
            && self.restored_metadata.is_empty()
            && self.truncated_segment_tails.is_empty()
            && self.corrupt_segments.is_empty()
            && self.journal_corruptions.is_empty()
            && self.checkpoint_problem.is_none()
    }
}

/// What recovery hands to the engine: the segments, by id, and the
/// sequence number for the next journal file.
pub(super) struct Recovered {
    pub(super) segments: HashMap<u64, Arc<SegmentHandle>>,
    /// Segments whose metadata is unusable, by id, with the reason.
    pub(super) damaged: BTreeMap<u64, DamagedMeta>,
    pub(super) next_sequence: u64,
}

/// Recovers the segments in `segments_dir` and replays `journal_dir` from
/// the checkpoint in `directory`, filling `report`.
pub(super) fn recover(
    directory: &Path,
    segments_dir: &Path,
    journal_dir: &Path,
    options: &StorageOptions,
    files: &SegmentFiles,
    report: &mut RecoveryReport,
) -> Result<Recovered, StoreError> {
    let checkpoint = read_checkpoint(directory, report);
    let recorded_ends = checkpoint_ends(checkpoint.as_ref());
    let (mut segments, mut damaged) = load_segments(segments_dir, options, &recorded_ends, report)?;
    let ends_at_load = segment_ends(&segments);
    let mut replay = Replay {
        segments_dir,
        options,
        files,
        segments: &mut segments,
        damaged: &mut damaged,
        report,
        touched: HashMap::new(),
        deleted: HashSet::new(),
    };
    let next_sequence = replay.run(journal_dir, checkpoint)?;
    let deleted = std::mem::take(&mut replay.deleted);
    debug_assert_replay_kept_ends(&ends_at_load, &deleted, &segments);
    for (segment_id, handle) in &segments {
        if let Some(offset) = handle.lock_log().corrupt_from_offset() {
            tracing::error!(
                segment_id,
                offset,
                "segment keeps a corrupt range after recovery; it is not served"
            );
            report.corrupt_segments.push((*segment_id, offset));
        }
    }
    report.corrupt_segments.sort_unstable();
    report.segments_loaded = segments.len();
    report.damaged_segments = damaged
        .iter()
        .map(|(segment_id, damaged)| (*segment_id, damaged.reason.clone()))
        .collect();
    Ok(Recovered {
        segments,
        damaged,
        next_sequence,
    })
}

fn segment_ends(segments: &HashMap<u64, Arc<SegmentHandle>>) -> HashMap<u64, u64> {
    segments
        .iter()
        .map(|(segment_id, handle)| (*segment_id, handle.lock_log().end_offset))
        .collect()
}

/// Replay only appends to a segment (at its end) or rewrites damaged
/// ranges inside it, so it never leaves a segment shorter than the scan of
/// its file found, unless a delete record removed it (a create record may
/// then bring the id back with a new, shorter log). Shorter ends from the
/// scan itself are reported there (`truncated_segment_tails`), except an
/// all-zero tail, which is space whose data never reached the disk.
///
/// A debug assertion only: in release builds offsets near `u64::MAX` wrap
/// (`BatchHeader::end_offset`), which bad input can reach.
fn debug_assert_replay_kept_ends(
    ends_at_load: &HashMap<u64, u64>,
    deleted: &HashSet<u64>,
    segments: &HashMap<u64, Arc<SegmentHandle>>,
) {
    if !cfg!(debug_assertions) {
        return;
    }
    for (segment_id, end_at_load) in ends_at_load {
        if deleted.contains(segment_id) {
            continue;
        }
        if let Some(handle) = segments.get(segment_id) {
            let end = handle.lock_log().end_offset;
            debug_assert!(
                end >= *end_at_load,
                "segment {segment_id}: journal replay moved the end from {end_at_load} back to {end}"
            );
        }
    }
}

/// The durable ends the checkpoint recorded, by segment id.
fn checkpoint_ends(checkpoint: Option<&Checkpoint>) -> HashMap<u64, DurableEnd> {
    checkpoint
        .map(|checkpoint| {
            checkpoint
                .ends
                .iter()
                .map(|&(segment_id, end_offset, size_bytes)| {
                    (
                        segment_id,
                        DurableEnd {
                            end_offset,
                            size_bytes,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The higher of two recorded durable ends.
fn higher_end(first: Option<DurableEnd>, second: Option<DurableEnd>) -> Option<DurableEnd> {
    match (first, second) {
        (Some(first), Some(second)) => Some(if second.end_offset > first.end_offset {
            second
        } else {
            first
        }),
        (first, second) => first.or(second),
    }
}

/// The segments loaded from their files, by id, and the damaged ones.
type Loaded = (HashMap<u64, Arc<SegmentHandle>>, BTreeMap<u64, DamagedMeta>);

/// Loads every segment with a metadata file (either copy): the usable
/// ones, and the damaged ones (metadata unusable) by id with the reason.
fn load_segments(
    segments_dir: &Path,
    options: &StorageOptions,
    recorded_ends: &HashMap<u64, DurableEnd>,
    report: &mut RecoveryReport,
) -> Result<Loaded, StoreError> {
    let mut segments = HashMap::new();
    let mut damaged = BTreeMap::new();
    for segment_id in list_meta_files(segments_dir)? {
        let recorded = recorded_ends.get(&segment_id).copied();
        match load_segment(segment_id, segments_dir, options, recorded, report)? {
            Ok(handle) => {
                segments.insert(segment_id, Arc::new(handle));
            }
            Err(reason) => {
                tracing::error!(segment_id, %reason, "segment is damaged: its metadata is unusable; every request for it is refused and its files are kept");
                let recorded_end = recorded;
                damaged.insert(
                    segment_id,
                    DamagedMeta {
                        reason,
                        recorded_end,
                    },
                );
            }
        }
    }
    for (segment_id, recorded) in recorded_ends {
        if !segments.contains_key(segment_id) && !damaged.contains_key(segment_id) {
            damaged.insert(*segment_id, metadata_lost(*segment_id, *recorded));
        }
    }
    Ok((segments, damaged))
}

/// A segment the checkpoint recorded (so it existed and was not deleted
/// before it) whose metadata files are both gone: damaged, not unknown,
/// so that its id is never created anew empty.
fn metadata_lost(segment_id: u64, recorded: DurableEnd) -> DamagedMeta {
    let reason = format!(
        "metadata unusable: both metadata files are missing, but the checkpoint recorded the segment with durable end offset {} ({} bytes)",
        recorded.end_offset, recorded.size_bytes
    );
    tracing::error!(segment_id, %reason, "segment is damaged: its metadata is missing; every request for it is refused");
    DamagedMeta {
        reason,
        recorded_end: Some(recorded),
    }
}

/// The ids of the segments with a metadata file (either copy) in
/// `segments_dir`, sorted, after removing the temp files of interrupted
/// metadata writes.
fn list_meta_files(segments_dir: &Path) -> Result<BTreeSet<u64>, StoreError> {
    let entries = std::fs::read_dir(segments_dir)
        .map_err(|error| StoreError::io(format!("list {}", segments_dir.display()), error))?;
    let mut segment_ids = BTreeSet::new();
    for entry in entries {
        let entry = entry
            .map_err(|error| StoreError::io(format!("list {}", segments_dir.display()), error))?;
        let path = entry.path();
        if path.extension().and_then(|extension| extension.to_str()) == Some("tmp") {
            // An interrupted metadata write; the previous file is intact.
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove temp file");
            }
            continue;
        }
        if let Some(segment_id) = entry.file_name().to_str().and_then(meta_file_segment_id) {
            segment_ids.insert(segment_id);
        }
    }
    Ok(segment_ids)
}

/// The segment `segment_id` from its metadata (the good copy; a bad one
/// is rewritten) with its log scanned against the recorded durable end;
/// `Ok(Err(reason))` if the metadata or the log is unusable. Only running
/// out of file handles fails the recovery (it is retriable).
fn load_segment(
    segment_id: u64,
    segments_dir: &Path,
    options: &StorageOptions,
    recorded: Option<DurableEnd>,
    report: &mut RecoveryReport,
) -> Result<Result<SegmentHandle, String>, StoreError> {
    let primary = MetaCopy::read(segment_id, &segment::meta_path(segments_dir, segment_id));
    let copy = MetaCopy::read(
        segment_id,
        &segment::meta_copy_path(segments_dir, segment_id),
    );
    let problem = format!(
        "meta: {}; meta.copy: {}",
        primary.describe(),
        copy.describe()
    );
    // Only the copy missing: written by an older version (or a create
    // interrupted between the two writes), not damage.
    let damage = !(matches!(primary, MetaCopy::Good(_)) && copy == MetaCopy::Missing);
    let chosen = match choose_meta(primary, copy) {
        Ok(chosen) => chosen,
        Err(reason) => return Ok(Err(reason)),
    };
    if chosen.rewrite_primary || chosen.rewrite_copy {
        restore_meta_copies(segments_dir, &chosen, (problem, damage), report);
    }
    let meta = chosen.meta;
    let sealed_end = match (meta.end_offset, meta.size_bytes) {
        (Some(end_offset), Some(size_bytes)) => Some(DurableEnd {
            end_offset,
            size_bytes,
        }),
        _ => None,
    };
    let outcome = match segment::scan_log(
        &segment::log_path(segments_dir, segment_id),
        segment_id,
        meta.base_offset,
        options.index_interval_bytes,
        higher_end(sealed_end, recorded),
    ) {
        Ok(outcome) => outcome,
        Err(error @ StoreError::FileLimit { .. }) => return Err(error),
        Err(error) => return Ok(Err(format!("log unusable: {error}"))),
    };
    if outcome.truncated_bytes > 0 && !outcome.zero_tail {
        report
            .truncated_segment_tails
            .push((segment_id, outcome.truncated_bytes));
    }
    let meta = record_sealed_end(segments_dir, meta, &outcome.log);
    Ok(Ok(handle_from(meta, outcome.log, options)))
}

/// A sealed segment whose metadata records no end (written by an older
/// version) gets the end its scan found (fsynced by the scan) recorded
/// once, so that checkpoints need not carry it. A failure is logged and
/// leaves the metadata as it was (the checkpoint then carries the end).
fn record_sealed_end(segments_dir: &Path, meta: SegmentMeta, log: &SegmentLog) -> SegmentMeta {
    if !meta.sealed || meta.end_offset.is_some() {
        return meta;
    }
    let upgraded = SegmentMeta {
        end_offset: Some(log.end_offset),
        size_bytes: Some(log.size_bytes),
        ..meta.clone()
    };
    match segment::write_meta(segments_dir, &upgraded) {
        Ok(()) => upgraded,
        Err(error) => {
            tracing::warn!(segment_id = meta.segment_id, %error, "cannot record the end of a sealed segment in its metadata");
            meta
        }
    }
}

/// Rewrites the metadata copies `chosen` says are bad from the good one.
/// A failure leaves the segment usable (one good copy) and is logged; the
/// next recovery tries again.
fn restore_meta_copies(
    segments_dir: &Path,
    chosen: &ChosenMeta,
    (problem, damage): (String, bool),
    report: &mut RecoveryReport,
) {
    let segment_id = chosen.meta.segment_id;
    let written = segment_meta::encode_meta(&chosen.meta).and_then(|encoded| {
        let mut targets = Vec::new();
        if chosen.rewrite_primary {
            targets.push(segment::meta_path(segments_dir, segment_id));
        }
        if chosen.rewrite_copy {
            targets.push(segment::meta_copy_path(segments_dir, segment_id));
        }
        targets
            .iter()
            .try_for_each(|path| segment::write_file_durably(path, &encoded))
    });
    match written {
        Ok(()) if !damage => {
            tracing::info!(segment_id, "segment metadata copy written")
        }
        Ok(()) => {
            tracing::warn!(segment_id, %problem, "segment metadata copy restored from the other copy")
        }
        Err(error) => {
            tracing::error!(segment_id, %problem, %error, "cannot restore a segment metadata copy; the segment is served from the other")
        }
    }
    if damage {
        report.restored_metadata.push((segment_id, problem));
    }
}

fn read_checkpoint(directory: &Path, report: &mut RecoveryReport) -> Option<Checkpoint> {
    let path = directory.join(CHECKPOINT_FILE);
    let contents = match std::fs::read(&path) {
        Ok(contents) => contents,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            report.checkpoint_problem = Some(format!("unreadable: {error}"));
            return None;
        }
    };
    match serde_json::from_slice(&contents) {
        Ok(checkpoint) => Some(checkpoint),
        Err(error) => {
            tracing::error!(%error, "checkpoint file is garbage; replaying the whole journal");
            report.checkpoint_problem = Some(format!("not a checkpoint: {error}"));
            None
        }
    }
}

/// A journal replay in progress over the loaded segments.
struct Replay<'a> {
    segments_dir: &'a Path,
    options: &'a StorageOptions,
    files: &'a SegmentFiles,
    segments: &'a mut HashMap<u64, Arc<SegmentHandle>>,
    /// Segments whose metadata is unusable: a create record restores it.
    damaged: &'a mut BTreeMap<u64, DamagedMeta>,
    report: &'a mut RecoveryReport,
    /// Segments the replay wrote to, fsynced once it is done.
    touched: HashMap<u64, ()>,
    /// Segments a delete record removed.
    deleted: HashSet<u64>,
}

impl Replay<'_> {
    /// Replays journal files from the checkpoint; returns the sequence
    /// number for the next journal file.
    fn run(
        &mut self,
        journal_dir: &Path,
        checkpoint: Option<Checkpoint>,
    ) -> Result<u64, StoreError> {
        let sequences = journal::list_journal_files(journal_dir)?;
        let (start_sequence, start_position) = checkpoint
            .as_ref()
            .map(|checkpoint| (checkpoint.journal_sequence, checkpoint.position))
            .unwrap_or((0, 0));
        for &sequence in sequences
            .iter()
            .filter(|&&sequence| sequence >= start_sequence)
        {
            let path = journal::journal_file_path(journal_dir, sequence);
            let start = if sequence == start_sequence {
                start_position
            } else {
                0
            };
            self.replay_file(&path, sequence, start)?;
        }
        self.sync_touched()?;
        let last = sequences.last().copied().unwrap_or(0).max(start_sequence);
        Ok(last + 1)
    }

    /// fsyncs the segments replay wrote to, letting their files close.
    fn sync_touched(&mut self) -> Result<(), StoreError> {
        for (segment_id, ()) in self.touched.drain() {
            let Some(handle) = self.segments.get(&segment_id) else {
                continue;
            };
            let file = handle.lock_log().take_dirty_file();
            if let Some(file) = file {
                file.sync_all().map_err(|error| {
                    StoreError::io(format!("fsync segment {segment_id}"), error)
                })?;
            }
        }
        Ok(())
    }

    /// Replays the records of journal file `sequence` at `path` from
    /// `start_position`: those of its current use only (`journal_use.rs`),
    /// skipping damaged records and truncating a torn tail.
    fn replay_file(
        &mut self,
        path: &Path,
        sequence: u64,
        start_position: u64,
    ) -> Result<(), StoreError> {
        let bytes = std::fs::read(path)
            .map_err(|error| StoreError::io(format!("read {}", path.display()), error))?;
        let (accept, first) = match journal_use::classify(&bytes, sequence) {
            FileUse::Unwritten => return Ok(()),
            FileUse::Unreadable => {
                let message = format!(
                    "{}: no readable record of this file (its first record is damaged)",
                    path.display()
                );
                tracing::error!(%message, "damaged journal file");
                self.report.journal_corruptions.push(message);
                return Ok(());
            }
            FileUse::Records { accept, first } => (accept, first),
        };
        let mut position = (start_position as usize).min(bytes.len());
        if first > position {
            let message = format!(
                "{}: damaged first record; skipped {} bytes",
                path.display(),
                first - position
            );
            tracing::error!(%message, "damaged journal record");
            self.report.journal_corruptions.push(message);
            position = first;
        }
        while position < bytes.len() {
            let error = match journal::decode_record(&bytes[position..], accept) {
                Ok(record) => {
                    position += record.encoded_bytes;
                    self.report.journal_records_replayed += 1;
                    self.apply_record(&record)?;
                    continue;
                }
                Err(error) => error,
            };
            match journal::find_next_valid_record(&bytes, position + 1, accept) {
                // Damage in the middle: later records are still replayed.
                Some(next) if !journal::is_zero_fill(&bytes[position..]) => {
                    let message = format!(
                        "{}: {error} at {position}; skipped {} bytes",
                        path.display(),
                        next - position
                    );
                    tracing::error!(%message, "damaged journal record");
                    self.report.journal_corruptions.push(message);
                    position = next;
                }
                _ => {
                    if self.ends_torn(&bytes, position, accept, error) {
                        self.truncate_torn_tail(path, &bytes, position)?;
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether the failed record at `position`, with no record of the
    /// file's use after it, is a torn tail (cut) rather than the end.
    fn ends_torn(
        &self,
        bytes: &[u8],
        position: usize,
        accept: Accept,
        error: journal::DecodeError,
    ) -> bool {
        match accept {
            // The preallocated, never written rest of the file is the
            // end, not a torn record.
            Accept::Legacy => !journal::is_zero_fill(&bytes[position..]),
            Accept::Stamped(_) => {
                journal_use::tail_end(bytes, position, error) == journal_use::TailEnd::Torn
            }
        }
    }

    /// Cuts the journal file at `path` (contents `bytes`) at `position`,
    /// where a torn record with nothing valid after it starts.
    fn truncate_torn_tail(
        &mut self,
        path: &Path,
        bytes: &[u8],
        position: usize,
    ) -> Result<(), StoreError> {
        // Zeros after the torn record are preallocated
        // space, not part of what was torn.
        let data_end = journal::end_of_nonzero_data(bytes);
        let torn = data_end.saturating_sub(position) as u64;
        tracing::warn!(path = %path.display(), torn, "truncating torn journal tail");
        self.report.journal_torn_tail_bytes += torn;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|error| StoreError::io(format!("open {}", path.display()), error))?;
        file.set_len(position as u64)
            .and_then(|()| file.sync_all())
            .map_err(|error| StoreError::io(format!("truncate {}", path.display()), error))
    }

    fn apply_record(&mut self, record: &journal::DecodedRecord<'_>) -> Result<(), StoreError> {
        let segment_id = record.segment_id;
        match record.kind {
            RecordKind::Append => self.replay_append(segment_id, record.payload),
            RecordKind::CreateSegment => self.replay_create(segment_id, record.payload),
            RecordKind::Seal => self.replay_seal(segment_id, record.payload),
            RecordKind::Delete => {
                self.segments.remove(&segment_id);
                self.damaged.remove(&segment_id);
                self.touched.remove(&segment_id);
                self.deleted.insert(segment_id);
                self.files.forget(segment_id);
                remove_segment_files(self.segments_dir, segment_id)
            }
        }
    }

    /// Re-appends a journaled batch the segment lacks, or rewrites it into
    /// a damaged range; a batch beyond the segment end is reported.
    fn replay_append(&mut self, segment_id: u64, payload: &[u8]) -> Result<(), StoreError> {
        let Some(handle) = self.segments.get(&segment_id) else {
            return Ok(());
        };
        let header = match batch::validate(payload, segment::MAX_BATCH_BYTES_ON_DISK) {
            Ok(header) => header,
            Err(error) => {
                self.report.journal_corruptions.push(format!(
                    "segment {segment_id}: journal batch invalid: {error}"
                ));
                return Ok(());
            }
        };
        let file = self.files.get(segment_id)?;
        let mut log = handle.lock_log();
        if header.base_offset == log.end_offset {
            log.append(&file, &header, payload).map_err(|error| {
                StoreError::io(format!("replay into segment {segment_id}"), error)
            })?;
            self.report.journal_batches_reappended += 1;
            self.touched.insert(segment_id, ());
        } else if header.base_offset < log.end_offset {
            repair_from_journal(&mut log, &file, &header, payload, segment_id, self.report)?;
            self.touched.insert(segment_id, ());
        } else {
            self.report.journal_corruptions.push(format!(
                "segment {segment_id}: journal batch at {} is beyond the segment end {}",
                header.base_offset, log.end_offset
            ));
        }
        drop(log);
        let end = handle.lock_log().end_offset;
        if let Ok(mut control) = handle.control.try_lock() {
            control.accepted_end = end;
        }
        drop(file);
        // Files kept for unsynced writes are never closed: beyond the
        // budget, fsync them so that they can be.
        if self.files.open_count() > self.files.budget() {
            self.sync_touched()?;
        }
        Ok(())
    }

    /// Restores a segment whose metadata file is missing or was unusable.
    fn replay_create(&mut self, segment_id: u64, payload: &[u8]) -> Result<(), StoreError> {
        if self.segments.contains_key(&segment_id) {
            return Ok(());
        }
        let meta = match serde_json::from_slice::<SegmentMeta>(payload) {
            Ok(meta) if meta.segment_id == segment_id => meta,
            _ => {
                self.report
                    .journal_corruptions
                    .push(format!("segment {segment_id}: create record unreadable"));
                return Ok(());
            }
        };
        // The metadata file is missing or was unusable: rebuild it
        // from the journal and keep whatever log data is valid.
        segment::write_meta(self.segments_dir, &meta)?;
        // Created after the checkpoint: no durable end recorded for it.
        let outcome = segment::scan_log(
            &segment::log_path(self.segments_dir, segment_id),
            segment_id,
            meta.base_offset,
            self.options.index_interval_bytes,
            None,
        )?;
        self.damaged.remove(&segment_id);
        if outcome.truncated_bytes > 0 && !outcome.zero_tail {
            self.report
                .truncated_segment_tails
                .push((segment_id, outcome.truncated_bytes));
        }
        tracing::warn!(segment_id, "segment metadata restored from the journal");
        self.segments.insert(
            segment_id,
            Arc::new(handle_from(meta, outcome.log, self.options)),
        );
        Ok(())
    }

    fn replay_seal(&mut self, segment_id: u64, payload: &[u8]) -> Result<(), StoreError> {
        let Some(handle) = self.segments.get(&segment_id) else {
            return Ok(());
        };
        let mut epoch = [0u8; 8];
        if payload.len() == 8 {
            epoch.copy_from_slice(payload);
        }
        let epoch = u64::from_le_bytes(epoch);
        let old_fence = handle.fence_epoch.load(Ordering::SeqCst);
        if !handle.sealed.load(Ordering::SeqCst) || epoch > old_fence {
            handle.sealed.store(true, Ordering::SeqCst);
            handle
                .fence_epoch
                .store(old_fence.max(epoch), Ordering::SeqCst);
            let meta = handle.meta();
            segment::write_meta(self.segments_dir, &meta)?;
            handle.meta_written(&meta);
        }
        Ok(())
    }
}

/// Rewrites a damaged middle range of a log from a journal batch when the
/// batch is the next one missing in that range.
fn repair_from_journal(
    log: &mut SegmentLog,
    file: &Arc<std::fs::File>,
    header: &BatchHeader,
    bytes: &[u8],
    segment_id: u64,
    report: &mut RecoveryReport,
) -> Result<(), StoreError> {
    let length = bytes.len() as u64;
    let Some(index) = log.corrupt_regions.iter().position(|region| {
        region.repaired_offset == header.base_offset
            && region.repaired_position + length <= region.end_position
            && header.end_offset() <= region.end_offset
    }) else {
        return Ok(());
    };
    let position = log.corrupt_regions[index].repaired_position;
    log.rewrite_at(file, bytes, position)
        .map_err(|error| StoreError::io(format!("repair segment {segment_id}"), error))?;
    let region = &mut log.corrupt_regions[index];
    region.repaired_position += length;
    region.repaired_offset = header.end_offset();
    if region.repaired_position == region.end_position
        && region.repaired_offset == region.end_offset
    {
        tracing::warn!(
            segment_id,
            "damaged segment range rewritten from the journal"
        );
        log.corrupt_regions.remove(index);
        report.repaired_segments.push(segment_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::registry::{test_file, test_handle};
    use crate::storage::tests::make_batch;

    fn held(directory: &Path, segment_id: u64) -> (u64, Arc<SegmentHandle>) {
        (segment_id, Arc::new(test_handle(directory, segment_id, 0)))
    }

    #[test]
    fn replay_that_only_appends_keeps_every_end() {
        let directory = tempfile::tempdir().expect("temp dir");
        let segments = HashMap::from([held(directory.path(), 1), held(directory.path(), 2)]);
        let ends_at_load = segment_ends(&segments);
        let batch = make_batch(0, 3, 1);
        let header = batch::validate(&batch, 1 << 20).expect("valid");
        segments[&1]
            .lock_log()
            .append(&test_file(directory.path(), 1), &header, &batch)
            .expect("append");
        debug_assert_replay_kept_ends(&ends_at_load, &HashSet::new(), &segments);
    }

    #[test]
    fn a_deleted_and_recreated_segment_may_come_back_shorter() {
        let directory = tempfile::tempdir().expect("temp dir");
        let mut segments = HashMap::from([held(directory.path(), 1)]);
        let batch = make_batch(0, 3, 1);
        let header = batch::validate(&batch, 1 << 20).expect("valid");
        segments[&1]
            .lock_log()
            .append(&test_file(directory.path(), 1), &header, &batch)
            .expect("append");
        let ends_at_load = segment_ends(&segments);
        let other = tempfile::tempdir().expect("temp dir");
        segments.insert(1, held(other.path(), 1).1);
        debug_assert_replay_kept_ends(&ends_at_load, &HashSet::from([1]), &segments);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "journal replay moved the end")]
    fn a_replay_shortening_a_kept_segment_is_a_bug() {
        let directory = tempfile::tempdir().expect("temp dir");
        let mut segments = HashMap::from([held(directory.path(), 1)]);
        let ends_at_load = HashMap::from([(1, 5)]);
        segments.insert(1, held(directory.path(), 1).1);
        debug_assert_replay_kept_ends(&ends_at_load, &HashSet::new(), &segments);
    }
}
