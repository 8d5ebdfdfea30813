//! The third stage of the write path: checkpoints. The checkpoint file
//! records the journal position up to which every record is in fsynced
//! segment files; recovery replays the journal from there (see
//! `recovery.rs`), and journal files before it are deleted or recycled.

use super::writer::{read_failure, record_failure, Failure};
use super::JournalStats;
use crate::error::StoreError;
use crate::fault::{self, FileOp};
use crate::journal;
use crate::journal_spares::JournalSpares;
use crate::segment;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Name of the checkpoint file in the storage directory.
pub(super) const CHECKPOINT_FILE: &str = "checkpoint";

/// Contents of the checkpoint file: the journal position it covers, and
/// the durable end of every segment whose metadata does not record one.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    pub(super) journal_sequence: u64,
    pub(super) position: u64,
    /// `[segment id, end offset, size in bytes]` of each segment not
    /// sealed with its end in its metadata: its log file was fsynced up to
    /// there by this checkpoint or an earlier one (so recovery never ends
    /// it lower). Absent in checkpoints of older versions.
    #[serde(default)]
    pub(super) ends: Vec<SegmentEnd>,
}

/// `(segment id, end offset, size in bytes)`, encoded as a JSON array.
pub(super) type SegmentEnd = (u64, u64, u64);

/// A checkpoint handed from the applier to the checkpointer thread: the
/// segment files that were dirty when the applier reached the journal
/// position, to be fsynced before that position is recorded.
pub(super) struct CheckpointJob {
    pub(super) files: Vec<(u64, Arc<File>)>,
    /// The ends to record once `files` are fsynced (see
    /// [`Checkpoint::ends`]).
    pub(super) ends: Vec<SegmentEnd>,
    pub(super) journal_sequence: u64,
    pub(super) journal_position: u64,
    pub(super) done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The third stage: fsyncs segment files, records checkpoints and deletes
/// old journal files, on its own thread so that the seconds an fsync of
/// many megabytes can take never hold up acknowledgements.
pub(super) struct CheckpointWriter {
    pub(super) directory: PathBuf,
    pub(super) journal_dir: PathBuf,
    pub(super) segments_dir: PathBuf,
    pub(super) stats: Arc<JournalStats>,
    pub(super) failure: Failure,
    /// Set while a periodic checkpoint is queued or running; the next
    /// periodic one is skipped rather than queued behind it.
    pub(super) busy: Arc<AtomicBool>,
    /// Takes obsolete journal files for reuse instead of deleting them.
    pub(super) spares: JournalSpares,
    /// The contents last written to the checkpoint file by this writer:
    /// an identical checkpoint is not written again.
    pub(super) last_written: std::sync::Mutex<Option<Vec<u8>>>,
}

impl CheckpointWriter {
    pub(super) fn run(self, jobs: std::sync::mpsc::Receiver<CheckpointJob>) {
        while let Ok(job) = jobs.recv() {
            let periodic = job.done.is_none();
            let position = (job.journal_sequence, job.journal_position);
            let outcome = self.finish(job.files, job.ends, position);
            if let Err(error) = &outcome {
                tracing::warn!(%error, "checkpoint failed; the next one retries");
            }
            if let Some(done) = job.done {
                let _ = done.send(outcome);
            }
            if periodic {
                self.busy.store(false, Ordering::Release);
            }
        }
    }

    /// fsyncs `files` and the segments directory, records the journal
    /// position they cover, deletes older journal files.
    ///
    /// A failed fsync sets the failure latch: the kernel may have dropped
    /// the dirty pages it could not write, so a later fsync succeeding
    /// proves nothing, and only a recovery (which replays the journal from
    /// the last recorded checkpoint) may go on. Any other failure (the
    /// checkpoint file, removing journal files) only skips this
    /// checkpoint: the journal still holds everything after the last one.
    pub(super) fn finish(
        &self,
        files: Vec<(u64, Arc<File>)>,
        ends: Vec<SegmentEnd>,
        (journal_sequence, journal_position): (u64, u64),
    ) -> Result<(), StoreError> {
        if let Err(error) = sync_segment_files(&self.segments_dir, files) {
            // Whatever the error (even one that reads like a file limit),
            // these files are no longer marked dirty: only a recovery may
            // cover them now.
            record_failure(&self.failure, format!("checkpoint: {error}"));
            return Err(error);
        }
        if let Err(error) = sync_segments_directory(&self.segments_dir) {
            // Out of file handles to open the directory: nothing failed to
            // reach the disk, so skip without latching.
            if !matches!(error, StoreError::FileLimit { .. }) {
                record_failure(&self.failure, format!("checkpoint: {error}"));
            }
            return Err(error);
        }
        // A failure since this job was taken (an earlier job's fsync) may
        // have lost data this checkpoint would cover.
        if let Some(reason) = read_failure(&self.failure) {
            return Err(StoreError::WritesSuspended(reason));
        }
        let checkpoint = Checkpoint {
            journal_sequence,
            position: journal_position,
            ends,
        };
        self.write_checkpoint(&checkpoint)?;
        // The writer may have rolled on to newer files meanwhile; only
        // files before the recorded one are covered.
        for sequence in journal::list_journal_files(&self.journal_dir)? {
            if sequence < journal_sequence {
                let path = journal::journal_file_path(&self.journal_dir, sequence);
                if self.spares.offer(&path, sequence) {
                    continue;
                }
                std::fs::remove_file(&path)
                    .map_err(|error| StoreError::io(format!("remove {}", path.display()), error))?;
            }
        }
        segment::sync_directory(&self.journal_dir)?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the checkpoint file durably, unless this writer last wrote
    /// the same contents.
    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(checkpoint)
            .map_err(|error| StoreError::io("encode checkpoint", std::io::Error::other(error)))?;
        let mut last = self
            .last_written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.as_deref() == Some(encoded.as_slice()) {
            return Ok(());
        }
        fault::check(&self.directory.join(CHECKPOINT_FILE), FileOp::Write)
            .map_err(|error| StoreError::io("write the checkpoint file", error))?;
        *last = None;
        segment::write_file_durably(&self.directory.join(CHECKPOINT_FILE), &encoded)?;
        *last = Some(encoded);
        Ok(())
    }
}

/// fsyncs the segment files a checkpoint covers.
fn sync_segment_files(segments_dir: &Path, files: Vec<(u64, Arc<File>)>) -> Result<(), StoreError> {
    for (segment_id, file) in files {
        fault::check(&segment::log_path(segments_dir, segment_id), FileOp::Sync)
            .and_then(|()| file.sync_data())
            .map_err(|error| StoreError::io(format!("fsync segment {segment_id}"), error))?;
    }
    Ok(())
}

/// fsyncs the segments directory (new and renamed segment files).
fn sync_segments_directory(segments_dir: &Path) -> Result<(), StoreError> {
    fault::check(segments_dir, FileOp::Sync)
        .map_err(|error| StoreError::io("fsync the segments directory", error))?;
    segment::sync_directory(segments_dir)
}

#[cfg(test)]
mod tests {
    use super::Checkpoint;
    use crate::journal;
    use crate::storage::tests::{make_batch, new_segment, options, storage_with_segment_one};
    use crate::storage::{Storage, StorageOptions, JOURNAL_DIR};

    #[test]
    fn a_checkpoint_of_an_older_version_without_ends_still_loads() {
        let old: Checkpoint =
            serde_json::from_slice(br#"{"journal_sequence":3,"position":4096}"#).expect("old");
        assert_eq!((old.journal_sequence, old.position), (3, 4096));
        assert!(old.ends.is_empty());
        let new = Checkpoint {
            ends: vec![(1, u64::MAX, 0), (2, 0, u64::MAX)],
            ..old
        };
        let encoded = serde_json::to_vec(&new).expect("encode");
        let decoded: Checkpoint = serde_json::from_slice(&encoded).expect("decode");
        assert_eq!(decoded.ends, new.ends);
    }

    #[tokio::test]
    async fn an_unchanged_checkpoint_is_not_written_again() {
        use std::os::unix::fs::MetadataExt;
        let (directory, storage) = storage_with_segment_one(options()).await;
        storage
            .append(1, 5, make_batch(0, 1, 1))
            .await
            .expect("append");
        let path = directory.path().join(super::CHECKPOINT_FILE);
        storage.checkpoint().await.expect("checkpoint");
        let written = std::fs::metadata(&path).expect("stat").ino();
        storage.checkpoint().await.expect("checkpoint");
        assert_eq!(std::fs::metadata(&path).expect("stat").ino(), written);
        storage
            .append(1, 5, make_batch(1, 1, 1))
            .await
            .expect("append");
        storage.checkpoint().await.expect("checkpoint");
        let contents: Checkpoint =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("checkpoint");
        assert_eq!(contents.ends, vec![(1, 2, contents.ends[0].2)]);
    }

    #[tokio::test]
    async fn checkpoint_deletes_old_journal_files_and_data_survives() {
        let directory = tempfile::tempdir().expect("temp dir");
        let small_journal = StorageOptions {
            journal_file_max_bytes: 512,
            ..options()
        };
        {
            let (storage, _) =
                Storage::open(directory.path(), small_journal.clone()).expect("open");
            storage
                .create_segment(new_segment(1, 0))
                .await
                .expect("create");
            for offset in 0..40 {
                storage
                    .append(1, 5, make_batch(offset, 1, 1))
                    .await
                    .expect("append");
            }
            let before =
                journal::list_journal_files(&directory.path().join(JOURNAL_DIR)).expect("list");
            assert!(before.len() > 2, "journal rolled: {before:?}");
            storage.checkpoint().await.expect("checkpoint");
            let after =
                journal::list_journal_files(&directory.path().join(JOURNAL_DIR)).expect("list");
            assert_eq!(after.len(), 1, "older journal files deleted: {after:?}");
        }
        let (storage, report) = Storage::open(directory.path(), small_journal).expect("reopen");
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(storage.segment_status(1).expect("status").end_offset, 40);
        assert!(!storage.read(1, 0, 0, 0).expect("read").batches.is_empty());
    }
}
