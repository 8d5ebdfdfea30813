//! The second stage of the write path: the applier thread, which writes
//! committed groups to the segment files, completes their commands and
//! hands checkpoints to the checkpoint thread (`checkpoint.rs`).

use super::checkpoint::{CheckpointJob, CheckpointWriter, SegmentEnd};
use super::registry::{self, DamagedRegistry, Registry, SegmentHandle};
use super::segment_files::SegmentFiles;
use super::writer::{complete_all_unknown, read_failure, record_failure, Command, Failure};
use super::JournalStats;
use crate::error::StoreError;
use crate::fault::{self, FileOp};
use crate::journal_spares::JournalSpares;
use sluice_proto::batch::BatchHeader;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Commands whose journal records are written (and fsynced if any of them
/// needs it), in journal order, with where they end in the journal.
pub(super) struct CommittedGroup {
    pub(super) commands: Vec<Command>,
    /// Journal file and position just after the group's records: a
    /// checkpoint in this group covers the journal up to here, since the
    /// applier has applied everything before it when it checkpoints.
    pub(super) journal_sequence: u64,
    pub(super) journal_position: u64,
}

/// The second stage of the write path: applies committed groups, in
/// journal order, to the segment files (no fsync), then completes their
/// commands, and runs checkpoints. Completing only after applying means a
/// reader or a seal that follows an acknowledgement sees the data, and a
/// metadata command completes after every append journaled before it.
pub(super) struct SegmentApplier {
    pub(super) directory: PathBuf,
    pub(super) journal_dir: PathBuf,
    pub(super) segments_dir: PathBuf,
    pub(super) registry: Arc<Registry>,
    /// Segments whose metadata is unusable: their recorded ends are
    /// carried into every checkpoint.
    pub(super) damaged: Arc<DamagedRegistry>,
    pub(super) stats: Arc<JournalStats>,
    pub(super) failure: Failure,
    pub(super) spares: JournalSpares,
    /// The open segment files: beyond their budget, a checkpoint is
    /// started early, so files kept for unsynced writes can close.
    pub(super) files: Arc<SegmentFiles>,
}

impl SegmentApplier {
    pub(super) fn run(self, groups: std::sync::mpsc::Receiver<CommittedGroup>) {
        let busy = Arc::new(AtomicBool::new(false));
        let writer = self.checkpoint_writer(busy.clone());
        // Bounded: at most one periodic checkpoint plus explicit ones
        // (close, tests) wait here.
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<CheckpointJob>(4);
        let checkpointer = match std::thread::Builder::new()
            .name("sluice-checkpoint".to_string())
            .spawn(move || writer.run(receiver))
        {
            Ok(handle) => Some(handle),
            Err(error) => {
                record_failure(
                    &self.failure,
                    format!("cannot start the checkpoint thread: {error}"),
                );
                None
            }
        };
        while let Ok(group) = groups.recv() {
            self.apply(group, &jobs, &busy);
        }
        drop(jobs);
        if let Some(handle) = checkpointer {
            let _ = handle.join();
        }
    }

    fn checkpoint_writer(&self, busy: Arc<AtomicBool>) -> CheckpointWriter {
        CheckpointWriter {
            directory: self.directory.clone(),
            journal_dir: self.journal_dir.clone(),
            segments_dir: self.segments_dir.clone(),
            stats: self.stats.clone(),
            failure: self.failure.clone(),
            busy,
            spares: self.spares.clone(),
            last_written: std::sync::Mutex::new(None),
        }
    }

    /// Takes every dirty segment file (a duplicate handle) and marks it
    /// clean: whatever is written after this is dirty again and belongs to
    /// a later checkpoint. With them, the end of every segment whose
    /// metadata records none: once the files taken now are fsynced, each
    /// is durable up to there (what was written before was taken by an
    /// earlier checkpoint, which fsynced it or latched the failure).
    fn take_dirty_files(&self) -> (Vec<(u64, Arc<File>)>, Vec<SegmentEnd>) {
        let mut handles = registry::all_handles(&self.registry);
        handles.sort_by_key(|handle| handle.id);
        let mut files = Vec::new();
        let mut ends = Vec::new();
        for handle in handles {
            let mut log = handle.lock_log();
            if let Some(file) = log.take_dirty_file() {
                files.push((handle.id, file));
            }
            if !handle.end_recorded_in_meta(log.end_offset) {
                ends.push((handle.id, log.end_offset, log.size_bytes));
            }
        }
        let damaged = self
            .damaged
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (segment_id, damaged) in damaged.iter() {
            if let Some(end) = damaged.recorded_end {
                ends.push((*segment_id, end.end_offset, end.size_bytes));
            }
        }
        ends.sort_unstable();
        (files, ends)
    }

    fn apply(
        &self,
        group: CommittedGroup,
        jobs: &std::sync::mpsc::SyncSender<CheckpointJob>,
        busy: &AtomicBool,
    ) {
        let CommittedGroup {
            commands,
            journal_sequence,
            journal_position,
        } = group;
        if let Some(reason) = read_failure(&self.failure) {
            // Journaled, not applied: recovery applies them.
            complete_all_unknown(commands, &reason);
            return;
        }
        // Every append of the group is applied before anything completes
        // or a checkpoint runs: a checkpoint records the position after the
        // whole group.
        let results = self.apply_appends(&commands);
        for (command, result) in commands.into_iter().zip(results) {
            match command {
                Command::Append { done, .. } => {
                    let _ = done.send(result.map_err(StoreError::OutcomeUnknown));
                }
                Command::Metadata { done, .. } => {
                    let _ = done.send(result.map(|_| ()).map_err(StoreError::OutcomeUnknown));
                }
                Command::Flush => {}
                Command::Checkpoint { done } => {
                    // A group not wholly applied must never be covered.
                    if let Some(reason) = read_failure(&self.failure) {
                        if let Some(done) = done {
                            let _ = done.send(Err(StoreError::WritesSuspended(reason)));
                        }
                        continue;
                    }
                    let position = (journal_sequence, journal_position);
                    self.start_checkpoint(done, position, jobs, busy);
                }
            }
        }
        if self.files.over_budget() {
            let position = (journal_sequence, journal_position);
            self.start_checkpoint(None, position, jobs, busy);
        }
    }

    /// Writes the group's appends to their segment files, in order; the
    /// result of each command (the segment end after an append, 0 for
    /// other commands). A failed write sets the failure latch, and nothing
    /// after it in the group is applied: those commands are journaled, so
    /// their outcome is left to recovery, which replays them in order.
    fn apply_appends(&self, commands: &[Command]) -> Vec<Result<u64, String>> {
        let mut results: Vec<Result<u64, String>> = Vec::with_capacity(commands.len());
        let mut failed: Option<String> = None;
        for command in commands {
            if let Some(reason) = &failed {
                results.push(Err(format!(
                    "not applied after an earlier failure: {reason}"
                )));
                continue;
            }
            let result = match command {
                Command::Append {
                    segment,
                    file,
                    header,
                    batch,
                    ..
                } => fault::check(&self.segments_dir, FileOp::Write)
                    .map_err(|error| format!("segment {} write failed: {error}", segment.id))
                    .and_then(|()| append_to_segment(segment, file, header, batch)),
                _ => Ok(0),
            };
            if let Err(reason) = &result {
                record_failure(&self.failure, reason.clone());
                failed = Some(reason.clone());
            }
            results.push(result);
        }
        results
    }

    /// Hands a checkpoint covering the journal up to `position` (sequence,
    /// position) to the checkpoint thread, with the segment files dirty
    /// now. A periodic one (`done` is `None`) is skipped while the previous
    /// periodic one is still running.
    fn start_checkpoint(
        &self,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
        position: (u64, u64),
        jobs: &std::sync::mpsc::SyncSender<CheckpointJob>,
        busy: &AtomicBool,
    ) {
        let periodic = done.is_none();
        if periodic && busy.swap(true, Ordering::AcqRel) {
            // The previous one is still fsyncing; the next
            // tick covers this one's data too.
            return;
        }
        let (files, ends) = self.take_dirty_files();
        let (journal_sequence, journal_position) = position;
        let job = CheckpointJob {
            files,
            ends,
            journal_sequence,
            journal_position,
            done,
        };
        if let Err(std::sync::mpsc::SendError(job)) = jobs.send(job) {
            if let Some(done) = job.done {
                let _ = done.send(Err(StoreError::ShuttingDown));
            }
        }
    }

    /// fsync dirty segment files and the segments directory, record the
    /// journal position they cover, delete older journal files, all on the
    /// calling thread (used at open). Everything journaled before
    /// `journal_sequence`/`journal_position` must already be applied to the
    /// segment files.
    pub(super) fn checkpoint(
        &self,
        journal_sequence: u64,
        journal_position: u64,
    ) -> Result<(), StoreError> {
        let (files, ends) = self.take_dirty_files();
        self.checkpoint_writer(Arc::new(AtomicBool::new(false)))
            .finish(files, ends, (journal_sequence, journal_position))
    }
}

/// Writes one committed batch at the end of its segment file (no fsync);
/// the segment end after it, or why the write failed.
///
/// Appends reach the applier in the order they were accepted under the
/// segment's control lock, each at the accepted end then, so a batch
/// continues exactly where the segment ends: after a failed write nothing
/// more is applied on this write path (later commands of the group are
/// left to recovery, later groups refused by the failure latch).
///
/// These are invariants of the engine, not checks of input: appends were
/// validated and ordered before they were queued.
fn append_to_segment(
    segment: &SegmentHandle,
    file: &Arc<File>,
    header: &BatchHeader,
    batch: &[u8],
) -> Result<u64, String> {
    let mut log = segment.lock_log();
    // Ends cannot wrap: parsing and segment creation refuse base offsets
    // beyond `limits::MAX_OFFSET`.
    assert!(
        header.base_offset == log.end_offset,
        "segment {}: batch at {} does not continue the end {}",
        segment.id,
        header.base_offset,
        log.end_offset
    );
    match log.append(file, header, batch) {
        Ok(()) => Ok(log.end_offset),
        Err(error) => Err(format!("segment {} write failed: {error}", segment.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::registry::{test_file, test_handle};
    use crate::storage::tests::make_batch;
    use sluice_proto::batch;

    fn header(bytes: &[u8]) -> BatchHeader {
        batch::validate(bytes, 1 << 20).expect("valid batch")
    }

    #[test]
    fn appends_continue_the_segment_end() {
        let directory = tempfile::tempdir().expect("temp dir");
        let segment = test_handle(directory.path(), 1, 10);
        let first = make_batch(10, 3, 1);
        let second = make_batch(13, 2, 1);
        assert_eq!(
            append_to_segment(
                &segment,
                &test_file(directory.path(), 1),
                &header(&first),
                &first
            ),
            Ok(13)
        );
        assert_eq!(
            append_to_segment(
                &segment,
                &test_file(directory.path(), 1),
                &header(&second),
                &second
            ),
            Ok(15)
        );
        assert_eq!(segment.status().end_offset, 15);
    }

    #[test]
    #[should_panic(expected = "does not continue the end")]
    fn an_append_leaving_a_gap_is_a_bug() {
        let directory = tempfile::tempdir().expect("temp dir");
        let segment = test_handle(directory.path(), 1, 0);
        let batch = make_batch(5, 1, 1);
        let _ = append_to_segment(
            &segment,
            &test_file(directory.path(), 1),
            &header(&batch),
            &batch,
        );
    }

    #[test]
    #[should_panic(expected = "does not continue the end")]
    fn an_append_moving_the_end_backwards_is_a_bug() {
        let directory = tempfile::tempdir().expect("temp dir");
        let segment = test_handle(directory.path(), 1, 0);
        let first = make_batch(0, 4, 1);
        append_to_segment(
            &segment,
            &test_file(directory.path(), 1),
            &header(&first),
            &first,
        )
        .expect("append");
        let behind = make_batch(2, 1, 1);
        let _ = append_to_segment(
            &segment,
            &test_file(directory.path(), 1),
            &header(&behind),
            &behind,
        );
    }
}
