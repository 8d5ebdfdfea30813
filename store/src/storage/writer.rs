//! The first stage of the write path: the journal writer thread with group
//! commit, the timer that asks it for periodic flushes and checkpoints, and
//! the failure latch every stage sets and checks. Once a journal write,
//! journal fsync, segment write or segment fsync failed, this write path
//! refuses everything; the healer (`healer.rs`) then replaces it with a
//! new one over a fresh recovery, as a restart would, once the cause is
//! gone.
//!
//! A command that fails answers one of two ways, and the difference is the
//! contract with the writer: [`StoreError::WritesSuspended`] when nothing
//! of it reached the journal (it never becomes visible), and
//! [`StoreError::OutcomeUnknown`] when its journal record was written, or
//! may have been (it becomes visible after the recovery if it reached the
//! disk, at the offsets it was accepted at, never at others).

use super::applier::CommittedGroup;
use super::registry::SegmentHandle;
use super::JournalStats;
use crate::error::StoreError;
use crate::fault::{self, FileOp};
use crate::journal::{self, RecordKind};
use crate::journal_file::JournalFile;
use crate::journal_spares::JournalSpares;
use crate::segment;
use bytes::Bytes;
use sluice_proto::batch::BatchHeader;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// Bytes of journal records encoded (CRC) and then written per vectored
/// write: small enough that the payloads are still in the CPU cache when
/// the kernel copies them.
const JOURNAL_WRITE_CHUNK_BYTES: usize = 512 * 1024;

/// What the engine asks of the write path, in the order it was asked.
pub(super) enum Command {
    Append {
        segment: Arc<SegmentHandle>,
        /// The segment's file, open from before the append was journaled
        /// until it is applied (and then kept by the log until fsynced).
        file: Arc<File>,
        header: BatchHeader,
        batch: Bytes,
        fsync: bool,
        done: oneshot::Sender<Result<u64, StoreError>>,
        _permit: OwnedSemaphorePermit,
    },
    Metadata {
        kind: RecordKind,
        segment_id: u64,
        payload: Vec<u8>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Flush,
    Checkpoint {
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
}

/// The failure latch: the first write-path failure, shared by every stage.
pub(super) type Failure = Arc<Mutex<Option<String>>>;

pub(super) fn read_failure(failure: &Mutex<Option<String>>) -> Option<String> {
    failure
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

pub(super) fn record_failure(failure: &Mutex<Option<String>>, reason: String) {
    tracing::error!(%reason, "storage write path failed; writes are suspended until it recovers");
    let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
    if failure.is_none() {
        *failure = Some(reason);
    }
}

/// Answers commands none of which reached the journal: they never become
/// visible.
pub(super) fn refuse_all(group: Vec<Command>, reason: &str) {
    complete_all(group, || StoreError::WritesSuspended(reason.to_string()));
}

/// Answers commands whose journal records were (or may have been)
/// written: recovery makes them visible if they reached the disk.
pub(super) fn complete_all_unknown(group: Vec<Command>, reason: &str) {
    complete_all(group, || StoreError::OutcomeUnknown(reason.to_string()));
}

fn complete_all(group: Vec<Command>, error: impl Fn() -> StoreError) {
    for command in group {
        match command {
            Command::Append { done, .. } => {
                let _ = done.send(Err(error()));
            }
            Command::Metadata { done, .. } => {
                let _ = done.send(Err(error()));
            }
            Command::Checkpoint { done: Some(done) } => {
                let _ = done.send(Err(error()));
            }
            Command::Checkpoint { done: None } | Command::Flush => {}
        }
    }
}

/// Joins the journal writer thread when dropped.
pub(super) struct WriterThread(pub(super) Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                tracing::error!("journal writer thread panicked");
            }
        }
    }
}

/// Creates journal file `sequence`, preallocated to the journal file size
/// so that journal writes land in allocated blocks (much faster than
/// allocating on every write), with direct I/O if configured (see
/// `journal_file.rs`). The file length is then the preallocated size, not
/// the data length: recovery treats the zeros after the last record as the
/// end.
pub(super) fn open_new_journal_file(
    journal_dir: &Path,
    sequence: u64,
    preallocate_bytes: u64,
    direct_io: bool,
) -> Result<JournalFile, StoreError> {
    let path = journal::journal_file_path(journal_dir, sequence);
    fault::check(&path, FileOp::Open)
        .map_err(|error| StoreError::io(format!("create {}", path.display()), error))?;
    let file = JournalFile::create(&path, direct_io)
        .map_err(|error| StoreError::io(format!("create {}", path.display()), error))?;
    // A journal file gets its whole space before it is used: a disk too
    // full for one refuses here (the healer retries) rather than failing
    // the writes in it one by one.
    if let Err(error) = segment::try_preallocate(file.file(), 0, preallocate_bytes, false) {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(StoreError::io(
            format!("preallocate {} ({preallocate_bytes} bytes)", path.display()),
            error,
        ));
    }
    segment::sync_directory(journal_dir)?;
    Ok(file)
}

pub(super) fn run_timer(
    commands: mpsc::WeakSender<Command>,
    flush_interval: Duration,
    checkpoint_interval: Duration,
) {
    let mut next_flush = Instant::now() + flush_interval;
    let mut next_checkpoint = Instant::now() + checkpoint_interval;
    loop {
        let now = Instant::now();
        let wake = next_flush.min(next_checkpoint);
        if wake > now {
            // Short naps so the thread notices a dropped storage soon.
            std::thread::sleep((wake - now).min(Duration::from_millis(200)));
            if commands.upgrade().is_none() {
                return;
            }
            continue;
        }
        let Some(sender) = commands.upgrade() else {
            return;
        };
        // A full queue means the writer is busy; the tick is retried later.
        if now >= next_flush {
            let _ = sender.try_send(Command::Flush);
            next_flush = now + flush_interval;
        }
        if now >= next_checkpoint {
            let _ = sender.try_send(Command::Checkpoint { done: None });
            next_checkpoint = now + checkpoint_interval;
        }
    }
}

/// The first stage of the write path: takes everything queued, writes it
/// to the journal (vectored, no copy) and fsyncs once if any entry needs
/// it, then hands the committed group to the [`SegmentApplier`](super::applier::SegmentApplier) and goes
/// on with the next group while the applier writes this one to the
/// segment files. Nothing is acknowledged here.
pub(super) struct JournalWriter {
    pub(super) journal_dir: PathBuf,
    /// The journal file being written; its logical end is where the next
    /// record goes (the file itself is preallocated past it).
    pub(super) file: JournalFile,
    pub(super) sequence: u64,
    /// The stamp of this use of the file, in every record written to it
    /// (ADR 0017): drawn again whenever a file is started.
    pub(super) stamp: journal::FileStamp,
    pub(super) journal_unsynced: bool,
    pub(super) file_max_bytes: u64,
    /// Whether new journal files are opened with direct I/O.
    pub(super) direct_io: bool,
    /// Obsolete journal files, reused instead of new ones.
    pub(super) spares: JournalSpares,
    pub(super) stats: Arc<JournalStats>,
    pub(super) failure: Failure,
    /// Committed groups, in journal order, to the applier; bounded
    /// (`apply_queue_max_groups`), so a slow applier slows the writer.
    pub(super) committed: Option<std::sync::mpsc::SyncSender<CommittedGroup>>,
    pub(super) applier_thread: Option<std::thread::JoinHandle<()>>,
}

/// What writing a group's records to the journal found it needs.
struct GroupWritten {
    /// An entry (or a flush) asks for the journal to be fsynced.
    needs_fsync: bool,
    appends: u64,
}

impl JournalWriter {
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut group = Vec::new();
        while let Some(first) = commands.blocking_recv() {
            group.push(first);
            while let Ok(next) = commands.try_recv() {
                group.push(next);
            }
            self.process(std::mem::take(&mut group));
        }
        // No checkpoint here: a storage dropped without `close` behaves like
        // a crash (the journal holds everything), which tests rely on. The
        // applier finishes the groups it was given, then stops.
        drop(self.committed.take());
        if let Some(applier) = self.applier_thread.take() {
            if applier.join().is_err() {
                tracing::error!("segment applier thread panicked");
            }
        }
    }

    fn fail(&self, reason: String) {
        record_failure(&self.failure, reason);
    }

    fn process(&mut self, group: Vec<Command>) {
        if let Some(reason) = read_failure(&self.failure) {
            refuse_all(group, &reason);
            return;
        }
        let written = match self.write_group(&group) {
            Ok(written) => written,
            Err(error) => {
                // Part of the group may be in the journal: recovery decides.
                let reason = format!("journal write failed: {error}");
                self.fail(reason.clone());
                complete_all_unknown(group, &reason);
                return;
            }
        };
        if written.needs_fsync && self.journal_unsynced {
            if let Err(error) = self.sync_journal() {
                // After a failed fsync the page cache state is unknown:
                // never retry on this write path; recovery decides.
                let reason = format!("journal fsync failed: {error}");
                self.fail(reason.clone());
                complete_all_unknown(group, &reason);
                return;
            }
            self.journal_unsynced = false;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .appends
            .fetch_add(written.appends, Ordering::Relaxed);
        if written.appends > 0 {
            self.stats
                .group_commit_appends
                .observe(written.appends as f64);
        }
        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        let committed = CommittedGroup {
            commands: group,
            journal_sequence: self.sequence,
            journal_position: self.file.position(),
        };
        let sent = match &self.committed {
            Some(sender) => sender.send(committed).map_err(|error| error.0),
            None => Err(committed),
        };
        if let Err(unsent) = sent {
            self.fail("the segment applier stopped".to_string());
            complete_all_unknown(unsent.commands, "the segment applier stopped");
            return;
        }
        if self.file.position() >= self.file_max_bytes {
            if let Err(error) = self.roll() {
                self.fail(format!("journal roll failed: {error}"));
            }
        }
    }

    /// Writes the journal records of `group` (nothing for flushes and
    /// checkpoints) at the journal's end, stopping at the first failure.
    fn write_group(&mut self, group: &[Command]) -> std::io::Result<GroupWritten> {
        // Records are written with vectored writes straight from the
        // appenders' buffers (no copy into a staging buffer), a chunk at a
        // time: the CRC pass over a chunk leaves its payloads in the CPU
        // cache for the kernel's copy into the page cache right after.
        let mut written = GroupWritten {
            needs_fsync: false,
            appends: 0,
        };
        let mut chunk: Vec<([u8; journal::RECORD_HEADER_BYTES], &[u8])> = Vec::new();
        let mut chunk_bytes = 0usize;
        for command in group {
            let (kind, segment_id, payload): (RecordKind, u64, &[u8]) = match command {
                Command::Append {
                    segment,
                    batch,
                    fsync,
                    ..
                } => {
                    written.needs_fsync |= *fsync;
                    written.appends += 1;
                    (RecordKind::Append, segment.id, batch)
                }
                Command::Metadata {
                    kind,
                    segment_id,
                    payload,
                    ..
                } => {
                    written.needs_fsync = true;
                    (*kind, *segment_id, payload)
                }
                Command::Flush => {
                    written.needs_fsync = true;
                    continue;
                }
                Command::Checkpoint { .. } => continue,
            };
            chunk.push((
                journal::encode_record_header(kind, segment_id, self.stamp, payload),
                payload,
            ));
            chunk_bytes += journal::RECORD_HEADER_BYTES + payload.len();
            if chunk_bytes >= JOURNAL_WRITE_CHUNK_BYTES {
                self.write_records(&chunk)?;
                chunk.clear();
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.write_records(&chunk)?;
        }
        Ok(written)
    }

    /// Writes encoded records (header, payload) at the journal's end.
    fn write_records(
        &mut self,
        records: &[([u8; journal::RECORD_HEADER_BYTES], &[u8])],
    ) -> std::io::Result<()> {
        let mut slices: Vec<&[u8]> = Vec::with_capacity(records.len() * 2);
        for (header, payload) in records {
            slices.push(header);
            slices.push(payload);
        }
        // Set before the write: a failed write may have written part.
        self.journal_unsynced = true;
        fault::check(&self.journal_dir, FileOp::Write)?;
        self.file.append(&slices)
    }

    fn sync_journal(&self) -> std::io::Result<()> {
        fault::check(&self.journal_dir, FileOp::Sync)?;
        let started = std::time::Instant::now();
        self.file.sync_data()?;
        self.stats.fsync_latency.observe_duration(started.elapsed());
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        if self.journal_unsynced {
            self.sync_journal()
                .map_err(|error| StoreError::io("fsync journal before roll", error))?;
            self.journal_unsynced = false;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.sequence += 1;
        self.stamp = journal::FileStamp::new_use(self.sequence);
        if let Some(spare) = self.spares.take() {
            match self.reuse_spare(&spare) {
                Ok(file) => {
                    self.file = file;
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, spare = %spare.display(), "cannot reuse a spare journal file; creating a new one");
                    let _ = std::fs::remove_file(&spare);
                }
            }
        }
        self.file = open_new_journal_file(
            &self.journal_dir,
            self.sequence,
            self.file_max_bytes,
            self.direct_io,
        )?;
        Ok(())
    }

    /// Makes the spare at `spare` the journal file for the current
    /// sequence (durably renamed before anything is written to it). It is
    /// written over from its start; what its earlier use left after the
    /// new records is told apart by their stamp (`journal_use.rs`). A
    /// spare shorter than the journal file size (cut at a torn tail once)
    /// gets the rest of its space first.
    fn reuse_spare(&self, spare: &Path) -> Result<JournalFile, StoreError> {
        let path = journal::journal_file_path(&self.journal_dir, self.sequence);
        fault::check(&path, FileOp::Rename)
            .map_err(|error| StoreError::io(format!("rename {}", spare.display()), error))?;
        std::fs::rename(spare, &path)
            .map_err(|error| StoreError::io(format!("rename {}", spare.display()), error))?;
        segment::sync_directory(&self.journal_dir)?;
        let file = JournalFile::open_reused(&path, self.direct_io)
            .map_err(|error| StoreError::io(format!("open {}", path.display()), error))?;
        let length = file
            .file()
            .metadata()
            .map_err(|error| StoreError::io(format!("stat {}", path.display()), error))?
            .len();
        if length < self.file_max_bytes {
            segment::try_preallocate(file.file(), 0, self.file_max_bytes, false).map_err(
                |error| StoreError::io(format!("preallocate {}", path.display()), error),
            )?;
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::tests::{make_batch, new_segment, options, storage_with_segment_one};
    use crate::storage::{NewSegment, Storage};
    use sluice_proto::v1::Durability;
    use std::sync::atomic::Ordering;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_uses_far_fewer_fsyncs_than_appends() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        let segments = 16u64;
        let appends_per_segment = 40u64;
        for segment_id in 0..segments {
            storage
                .create_segment(new_segment(segment_id, 0))
                .await
                .expect("create");
        }
        let fsyncs_before = storage.journal_stats().fsyncs.load(Ordering::SeqCst);
        let timed_before = storage.journal_stats().fsync_latency.count();
        let grouped_before = storage.journal_stats().group_commit_appends.sum();
        let mut tasks = Vec::new();
        for segment_id in 0..segments {
            let storage = storage.clone();
            tasks.push(tokio::spawn(async move {
                let mut pending = Vec::new();
                for offset in 0..appends_per_segment {
                    pending.push(
                        storage
                            .submit_append(segment_id, 5, make_batch(offset, 1, 1000))
                            .await
                            .expect("submit"),
                    );
                }
                for (index, append) in pending.into_iter().enumerate() {
                    assert_eq!(append.wait().await.expect("durable"), index as u64 + 1);
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let appends = segments * appends_per_segment;
        let fsyncs = storage.journal_stats().fsyncs.load(Ordering::SeqCst) - fsyncs_before;
        println!("group commit: {appends} appends, {fsyncs} fsyncs");
        assert!(fsyncs >= 1);
        assert!(
            fsyncs * 4 <= appends,
            "{fsyncs} fsyncs for {appends} appends: group commit is not grouping"
        );
        // The metrics saw the same: every fsync timed, every append in a
        // group commit's size.
        let stats = storage.journal_stats();
        assert_eq!(stats.fsync_latency.count() - timed_before, fsyncs);
        let grouped = stats.group_commit_appends.sum() - grouped_before;
        assert!(
            (grouped - appends as f64).abs() < 1e-6,
            "{grouped} of {appends}"
        );
        for segment_id in 0..segments {
            let status = storage.segment_status(segment_id).expect("status");
            assert_eq!(status.end_offset, appends_per_segment);
        }
    }

    #[tokio::test]
    async fn sequential_fsync_appends_each_wait_for_an_fsync() {
        let (_directory, storage) = storage_with_segment_one(options()).await;
        let fsyncs_before = storage.journal_stats().fsyncs.load(Ordering::SeqCst);
        for offset in 0..10 {
            storage
                .append(1, 5, make_batch(offset, 1, 1))
                .await
                .expect("append");
        }
        let fsyncs = storage.journal_stats().fsyncs.load(Ordering::SeqCst) - fsyncs_before;
        assert!(
            fsyncs >= 10,
            "only {fsyncs} fsyncs for 10 acknowledged appends"
        );
    }

    #[tokio::test]
    async fn periodic_durability_acknowledges_and_survives_reopen() {
        let directory = tempfile::tempdir().expect("temp dir");
        {
            let (storage, _) = Storage::open(directory.path(), options()).expect("open");
            storage
                .create_segment(NewSegment {
                    durability: Durability::Periodic,
                    ..new_segment(1, 0)
                })
                .await
                .expect("create");
            let fsyncs_before = storage.journal_stats().fsyncs.load(Ordering::SeqCst);
            // One at a time: with fsync durability each would need its own
            // fsync; periodic ones are acknowledged once written.
            for offset in 0..60 {
                storage
                    .append(1, 5, make_batch(offset, 1, 1))
                    .await
                    .expect("append");
            }
            let fsyncs = storage.journal_stats().fsyncs.load(Ordering::SeqCst) - fsyncs_before;
            assert!(fsyncs < 30, "{fsyncs} fsyncs for 60 periodic appends");
        }
        let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
        assert_eq!(storage.segment_status(1).expect("status").end_offset, 60);
    }
}
