//! The storage engine: segments, the shared journal with group commit,
//! checkpoints and crash recovery. Usable without gRPC.
//!
//! Write path: an append is validated and ordered under its segment's
//! lock, then queued (bounded in bytes and entries) to the single journal
//! writer thread. The writer takes everything queued, writes it to the
//! journal with vectored writes straight from the appenders' buffers
//! (journal files are preallocated), fsyncs once if any entry needs it,
//! and passes the committed group (bounded queue, journal order) to the
//! applier thread, then goes on with the next group. The applier writes
//! each batch to its segment file (no fsync; segment files grow in
//! preallocated chunks) and only then completes the appends, so the next
//! group's journal write and fsync overlap this group's segment writes. A
//! segment file never holds data the journal does not, and everything in a
//! segment file up to its recorded size is acknowledged or journaled.
//!
//! Checkpoints fsync dirty segment files, durably record the journal
//! position they cover and each unsealed segment's durable end, and delete
//! older journal files. Recovery scans the segment files (reporting
//! damaged middles, and data missing below the durable end recorded at
//! seal or checkpoint as damaged ranges, never a shorter end; cutting torn
//! tails beyond it) and replays the journal from the checkpoint. A
//! segment's metadata is written twice with a checksum; a bad copy is
//! restored from the other, and with both unusable the segment is held as
//! damaged (every request for it answers STORAGE_CORRUPT).
//!
//! One file per stage:
//! - `mod.rs`: the [`Storage`] API (open, append, status, checkpoint,
//!   close) and [`StorageOptions`] with its defaults;
//! - `registry.rs`: the segment registry, one `SegmentHandle` per segment
//!   (ordering state, seal and fence, the segment file), and creating and
//!   removing a segment's files;
//! - `recovery.rs`: crash recovery at open (segment scan, checkpoint,
//!   journal replay and repair) and the [`RecoveryReport`];
//! - `writer.rs`: the journal writer thread (group commit), its timer,
//!   the commands it takes and the failure latch;
//! - `healer.rs`: after a write-path failure, replacing the write path
//!   over a fresh recovery once the cause is gone (when to try);
//! - `applier.rs`: the applier thread writing committed groups to the
//!   segment files and completing them;
//! - `checkpoint.rs`: the checkpoint thread and the checkpoint file
//!   (journal position and durable segment ends);
//! - `reads.rs`: reads and the timestamp lookup ([`ReadOutcome`]);
//! - `file_budget.rs`: the budget of open segment files (pure LRU);
//! - `segment_files.rs`: segment files opened on demand within it;
//! - `segment_admin.rs`: creating, sealing and deleting a segment.

mod applier;
#[cfg(test)]
mod budget_tests;
mod checkpoint;
#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod fault_tests;
mod file_budget;
mod healer;
mod reads;
mod recovery;
mod registry;
mod segment_admin;
mod segment_files;
#[cfg(test)]
mod tests;
mod writer;

pub use reads::ReadOutcome;
pub use recovery::RecoveryReport;
pub use segment_files::FileBudgetStatus;

use crate::error::StoreError;

use crate::journal_spares::JournalSpares;
use crate::segment;
use applier::SegmentApplier;
use bytes::Bytes;
use registry::{DamagedRegistry, Registry, SegmentHandle};
use segment_files::SegmentFiles;
use sluice_proto::batch::{self, BatchIter};
use sluice_proto::v1::{DamagedSegment, Durability, SegmentStatus};
use sluice_telemetry::metrics::{AtomicHistogram, COUNT_BUCKETS};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, RwLockReadGuard, Semaphore};
use writer::{read_failure, Command, Failure, JournalWriter, WriterThread};

const SEGMENTS_DIR: &str = "segments";
/// Stripes of the per-segment-id create/delete lock: up to this many
/// segments are created (their files written and synced, their journal
/// records group-committed) at once.
const ADMIN_LOCK_STRIPES: usize = 64;
const JOURNAL_DIR: &str = "journal";

/// Default [`StorageOptions::journal_file_max_bytes`]: 64 MiB.
pub const DEFAULT_JOURNAL_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default [`StorageOptions::journal_direct_io`].
pub const DEFAULT_JOURNAL_DIRECT_IO: bool = true;
/// Default [`StorageOptions::segment_preallocate_bytes`]: 16 MiB.
pub const DEFAULT_SEGMENT_PREALLOCATE_BYTES: u64 = 16 * 1024 * 1024;
/// Default [`StorageOptions::journal_queue_max_bytes`]: 64 MiB.
pub const DEFAULT_JOURNAL_QUEUE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default [`StorageOptions::journal_queue_max_entries`].
pub const DEFAULT_JOURNAL_QUEUE_MAX_ENTRIES: usize = 4096;
/// Default [`StorageOptions::apply_queue_max_groups`].
pub const DEFAULT_APPLY_QUEUE_MAX_GROUPS: usize = 4;
/// Default [`StorageOptions::checkpoint_interval_ms`]: frequent small
/// segment fsyncs keep the disk queue short, so journal fsyncs (and so
/// acknowledgements) are not stuck behind a burst of seconds' worth of
/// segment data (p99 at 50k msg/s: ~15 ms at 200 ms, ~45-80 ms at 10 s).
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 200;
/// Default [`StorageOptions::index_interval_bytes`].
pub const DEFAULT_INDEX_INTERVAL_BYTES: u64 = 4096;
/// Default [`StorageOptions::periodic_flush_interval_ms`].
pub const DEFAULT_PERIODIC_FLUSH_INTERVAL_MS: u64 = 1000;
/// Default [`StorageOptions::max_batch_bytes`]: 8 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: u32 = sluice_proto::limits::DEFAULT_MAX_BATCH_BYTES;
/// Default [`StorageOptions::max_read_bytes`]: 8 MiB.
pub const DEFAULT_MAX_READ_BYTES: u32 = 8 * 1024 * 1024;
/// Default [`StorageOptions::max_open_segment_files`]: 0, half the
/// process's soft limit of open files at open (16 at least, 2^20 at most).
pub const DEFAULT_MAX_OPEN_SEGMENT_FILES: u64 = 0;

/// Engine settings. The service configuration (`StoreConfig`, whose
/// documentation explains each in full) takes its defaults from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageOptions {
    /// A journal file is rolled once it reaches this size.
    pub journal_file_max_bytes: u64,
    /// Write the journal with direct I/O where the file system allows it.
    pub journal_direct_io: bool,
    /// Segment files grow in preallocated chunks of this size (0: off).
    pub segment_preallocate_bytes: u64,
    /// Bytes of appends waiting for the journal writer before appenders
    /// wait.
    pub journal_queue_max_bytes: u64,
    /// Entries waiting for the journal writer before appenders wait.
    pub journal_queue_max_entries: usize,
    /// Committed groups waiting for the applier before the writer waits.
    pub apply_queue_max_groups: usize,
    /// Interval between periodic checkpoints.
    pub checkpoint_interval_ms: u64,
    /// An offset/time index entry every this many bytes of segment data.
    pub index_interval_bytes: u64,
    /// The journal is fsynced at least this often (for
    /// `DURABILITY_PERIODIC` segments).
    pub periodic_flush_interval_ms: u64,
    /// Largest record batch accepted by an append.
    pub max_batch_bytes: u32,
    /// Largest read answer (a single larger batch is still returned whole).
    pub max_read_bytes: u32,
    /// Segment files kept open at most (0: half the soft limit of open
    /// files); files in use at once can exceed it for as long as they are.
    pub max_open_segment_files: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            journal_file_max_bytes: DEFAULT_JOURNAL_FILE_MAX_BYTES,
            journal_direct_io: DEFAULT_JOURNAL_DIRECT_IO,
            segment_preallocate_bytes: DEFAULT_SEGMENT_PREALLOCATE_BYTES,
            journal_queue_max_bytes: DEFAULT_JOURNAL_QUEUE_MAX_BYTES,
            journal_queue_max_entries: DEFAULT_JOURNAL_QUEUE_MAX_ENTRIES,
            apply_queue_max_groups: DEFAULT_APPLY_QUEUE_MAX_GROUPS,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            periodic_flush_interval_ms: DEFAULT_PERIODIC_FLUSH_INTERVAL_MS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_read_bytes: DEFAULT_MAX_READ_BYTES,
            max_open_segment_files: DEFAULT_MAX_OPEN_SEGMENT_FILES,
        }
    }
}

/// Counters for observing the journal, e.g. how well group commit works.
#[derive(Debug)]
pub struct JournalStats {
    pub fsyncs: AtomicU64,
    pub appends: AtomicU64,
    pub groups: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Write paths replaced after a failure (see `healer.rs`).
    pub write_path_recoveries: AtomicU64,
    /// Seconds each successful journal fsync took.
    pub fsync_latency: AtomicHistogram,
    /// Appends per group commit (groups with at least one).
    pub group_commit_appends: AtomicHistogram,
}

impl Default for JournalStats {
    fn default() -> Self {
        Self {
            fsyncs: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            write_path_recoveries: AtomicU64::new(0),
            fsync_latency: AtomicHistogram::latency_seconds(),
            group_commit_appends: AtomicHistogram::new(COUNT_BUCKETS),
        }
    }
}

/// Arguments of [`Storage::create_segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSegment {
    pub segment_id: u64,
    pub topic: String,
    pub partition: u32,
    pub base_offset: u64,
    pub writer_epoch: u64,
    pub durability: Durability,
}

/// Where the engine keeps its files.
struct Layout {
    directory: PathBuf,
    segments_dir: PathBuf,
    journal_dir: PathBuf,
}

struct Inner {
    layout: Layout,
    options: StorageOptions,
    registry: Arc<Registry>,
    /// Segments whose metadata is unusable, by id, with the reason: every
    /// request for them answers STORAGE_CORRUPT (`SegmentDamaged`), and
    /// their id is never created anew (only a delete removes them).
    damaged: Arc<DamagedRegistry>,
    /// The write path in use; `None` while the healer replaces it. Every
    /// write holds it shared while it uses it (until its command is
    /// queued, or for metadata until it completes); the healer takes it
    /// exclusively, and writes never wait for that (`try_read`).
    write_path: tokio::sync::RwLock<Option<WritePath>>,
    /// The segment files open now, within the budget.
    files: Arc<SegmentFiles>,
    queue_bytes: Arc<Semaphore>,
    closing: AtomicBool,
    stats: Arc<JournalStats>,
    /// Serializes creates and deletes of one segment id (striped by id,
    /// [`ADMIN_LOCK_STRIPES`]) so two creates of one id agree; creates of
    /// different segments run side by side and share journal syncs.
    admin_locks: Vec<tokio::sync::Mutex<()>>,
    /// Held (flock) for the storage's life: one storage per directory.
    /// Declared after `write_path`, so it is released only once the write
    /// path's threads were joined and no longer touch the directory.
    _directory_lock: File,
}

/// One write path: the journal writer's queue, its failure latch and its
/// thread (which owns the applier and checkpoint threads). Dropping it
/// closes the queue, then waits for the threads: the writer refuses what
/// is still queued (failed) or writes it, and the applier finishes the
/// groups it was given.
struct WritePath {
    commands: mpsc::Sender<Command>,
    failure: Failure,
    _thread: WriterThread,
}

/// A handle to the storage engine; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

/// An append that was accepted and queued; await [`PendingAppend::wait`]
/// for durability.
pub struct PendingAppend {
    done: oneshot::Receiver<Result<u64, StoreError>>,
}

impl PendingAppend {
    /// Waits until the append is durable; returns the segment end after it.
    pub async fn wait(self) -> Result<u64, StoreError> {
        match self.done.await {
            Ok(result) => result,
            Err(_) => Err(StoreError::ShuttingDown),
        }
    }
}

/// Who appends: the segment's writer over its append stream, or an owner
/// copying batches into it during recovery or repair (allowed on a sealed
/// segment, see [`Storage::recovery_append`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendMode {
    Writer,
    Recovery,
}

impl Storage {
    /// Opens (creating if needed) the storage in `directory`, recovering
    /// from whatever a crash left behind, and starts the journal writer.
    pub fn open(
        directory: &Path,
        options: StorageOptions,
    ) -> Result<(Storage, RecoveryReport), StoreError> {
        if options.max_batch_bytes as usize > segment::MAX_BATCH_BYTES_ON_DISK {
            return Err(StoreError::InvalidArgument(format!(
                "max_batch_bytes {} exceeds the largest batch recovery accepts ({})",
                options.max_batch_bytes,
                segment::MAX_BATCH_BYTES_ON_DISK
            )));
        }
        let layout = Layout {
            directory: directory.to_path_buf(),
            segments_dir: directory.join(SEGMENTS_DIR),
            journal_dir: directory.join(JOURNAL_DIR),
        };
        for path in [directory, &layout.segments_dir, &layout.journal_dir] {
            std::fs::create_dir_all(path).map_err(|error| StoreError::DataDirectory {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })?;
        }
        let directory_lock = lock_directory(directory)?;
        let files = Arc::new(open_file_budget(&layout.segments_dir, &options));
        let mut report = RecoveryReport::default();
        let recovered = recovery::recover(
            directory,
            &layout.segments_dir,
            &layout.journal_dir,
            &options,
            &files,
            &mut report,
        )?;
        let registry: Arc<Registry> = Arc::new(RwLock::new(recovered.segments));
        let damaged: Arc<DamagedRegistry> = Arc::new(RwLock::new(recovered.damaged));
        let stats = Arc::new(JournalStats::default());
        let write_path = start_write_path(
            &layout,
            recovered.next_sequence,
            &options,
            (&registry, &damaged),
            &stats,
            &files,
        )?;
        let queue_permits = options.journal_queue_max_bytes.clamp(
            u64::from(options.max_batch_bytes),
            Semaphore::MAX_PERMITS as u64,
        ) as usize;
        let inner = Arc::new(Inner {
            layout,
            options,
            registry,
            damaged,
            write_path: tokio::sync::RwLock::new(Some(write_path)),
            files,
            queue_bytes: Arc::new(Semaphore::new(queue_permits)),
            closing: AtomicBool::new(false),
            stats,
            admin_locks: (0..ADMIN_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            _directory_lock: directory_lock,
        });
        healer::start(Arc::downgrade(&inner))?;
        tracing::info!(?report, directory = %directory.display(), "storage opened");
        Ok((Storage { inner }, report))
    }

    /// Journal counters (fsyncs, appends, groups, checkpoints).
    pub fn journal_stats(&self) -> &JournalStats {
        &self.inner.stats
    }

    /// The budget of open segment files and its use.
    pub fn file_budget(&self) -> FileBudgetStatus {
        self.inner.files.status()
    }

    /// The engine settings.
    pub fn options(&self) -> &StorageOptions {
        &self.inner.options
    }

    /// The write path, for a write: refused at once while closing, while
    /// the path is failed, or while the healer replaces it.
    fn writable(&self) -> Result<RwLockReadGuard<'_, WritePath>, StoreError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(StoreError::ShuttingDown);
        }
        self.current_write_path()
    }

    fn current_write_path(&self) -> Result<RwLockReadGuard<'_, WritePath>, StoreError> {
        let recovering =
            || StoreError::WritesSuspended("the write path is being recovered".to_string());
        let slot = self.inner.write_path.try_read().map_err(|_| recovering())?;
        let path = RwLockReadGuard::try_map(slot, Option::as_ref).map_err(|_| recovering())?;
        match read_failure(&path.failure) {
            Some(reason) => Err(StoreError::WritesSuspended(reason)),
            None => Ok(path),
        }
    }

    /// Why writes are refused now, if they are: the write path failed (and
    /// is recovering by itself) or is being replaced.
    pub fn write_fault(&self) -> Option<String> {
        self.current_write_path()
            .err()
            .map(|error| error.to_string())
    }

    fn segment(&self, segment_id: u64) -> Result<Arc<SegmentHandle>, StoreError> {
        if let Some(handle) = registry::lookup(&self.inner.registry, segment_id) {
            return Ok(handle);
        }
        Err(self
            .damaged_error(segment_id)
            .unwrap_or(StoreError::UnknownSegment { segment_id }))
    }

    /// The error for a segment whose metadata is unusable, if it is one.
    fn damaged_error(&self, segment_id: u64) -> Option<StoreError> {
        let damaged = self
            .inner
            .damaged
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        damaged
            .get(&segment_id)
            .map(|damaged| StoreError::SegmentDamaged {
                segment_id,
                detail: format!(
                    "{}; its files are kept for inspection: repair the metadata and restart the store, or delete the segment",
                    damaged.reason
                ),
            })
    }

    /// Segments held whose metadata is unusable (not in
    /// [`Storage::list_segments`]), by id.
    pub fn damaged_segments(&self) -> Vec<DamagedSegment> {
        self.inner
            .damaged
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(segment_id, damaged)| DamagedSegment {
                segment_id: *segment_id,
                detail: damaged.reason.clone(),
            })
            .collect()
    }

    /// Validates and queues an append; the returned [`PendingAppend`]
    /// completes once it is durable. Appends to one segment are ordered by
    /// the order in which this function is called (and awaited).
    pub async fn submit_append(
        &self,
        segment_id: u64,
        writer_epoch: u64,
        batch: Bytes,
    ) -> Result<PendingAppend, StoreError> {
        self.submit_append_as(AppendMode::Writer, segment_id, writer_epoch, batch)
            .await
    }

    async fn submit_append_as(
        &self,
        mode: AppendMode,
        segment_id: u64,
        writer_epoch: u64,
        batch: Bytes,
    ) -> Result<PendingAppend, StoreError> {
        let path = self.writable()?;
        let header = batch::validate(&batch, self.inner.options.max_batch_bytes as usize)
            .map_err(StoreError::InvalidBatch)?;
        let segment = self.segment(segment_id)?;
        // Opened (if it is not open) before anything is journaled: a file
        // limit fails this request alone, never a journaled append.
        let file = self.inner.files.get(segment_id)?;
        let permit = self
            .inner
            .queue_bytes
            .clone()
            .acquire_many_owned(batch.len().max(1) as u32)
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        let mut control = segment.control.lock().await;
        if control.deleted {
            return Err(StoreError::UnknownSegment { segment_id });
        }
        if mode == AppendMode::Writer && segment.sealed.load(Ordering::SeqCst) {
            return Err(StoreError::SegmentSealed { segment_id });
        }
        if mode == AppendMode::Writer {
            if let Some(detail) = segment.damage() {
                return Err(StoreError::SegmentDamaged { segment_id, detail });
            }
        }
        let fence_epoch = segment.fence_epoch.load(Ordering::SeqCst);
        if writer_epoch < fence_epoch {
            return Err(StoreError::Fenced {
                segment_id,
                given: writer_epoch,
                fence_epoch,
            });
        }
        if header.base_offset != control.accepted_end {
            return Err(StoreError::WrongBaseOffset {
                segment_id,
                expected: control.accepted_end,
                given: header.base_offset,
            });
        }
        let (done, completion) = oneshot::channel();
        // A recovery copy stands in for a copy that was acknowledged
        // durable, so it is fsynced whatever the topic's durability.
        let fsync = mode == AppendMode::Recovery || segment.durability != Durability::Periodic;
        path.commands
            .send(Command::Append {
                segment: segment.clone(),
                file,
                header,
                batch,
                fsync,
                done,
                _permit: permit,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        control.accepted_end = header.end_offset();
        Ok(PendingAppend { done: completion })
    }

    /// Appends one batch and waits until it is durable; returns the segment
    /// end after it.
    pub async fn append(
        &self,
        segment_id: u64,
        writer_epoch: u64,
        batch: Bytes,
    ) -> Result<u64, StoreError> {
        self.submit_append(segment_id, writer_epoch, batch)
            .await?
            .wait()
            .await
    }

    /// Copies concatenated whole batches into a segment, sealed or not, for
    /// the owner that fenced it (`fence_epoch` at least the segment's
    /// fence): batches the segment already holds are skipped, so copying
    /// the same range twice is harmless; the others must continue at its
    /// end. Returns the status once every copied batch is durable.
    pub async fn recovery_append(
        &self,
        segment_id: u64,
        fence_epoch: u64,
        batches: Bytes,
    ) -> Result<SegmentStatus, StoreError> {
        let segment = self.segment(segment_id)?;
        let mut pending = Vec::new();
        for item in BatchIter::new(&batches) {
            let (position, header, bytes) = item.map_err(StoreError::InvalidBatch)?;
            let accepted_end = segment.control.lock().await.accepted_end;
            if header.end_offset() <= accepted_end {
                continue;
            }
            let batch = batches.slice(position..position + bytes.len());
            pending.push(
                self.submit_append_as(AppendMode::Recovery, segment_id, fence_epoch, batch)
                    .await?,
            );
        }
        for append in pending {
            append.wait().await?;
        }
        self.segment_status(segment_id)
    }

    /// Status of one segment.
    pub fn segment_status(&self, segment_id: u64) -> Result<SegmentStatus, StoreError> {
        Ok(self.segment(segment_id)?.status())
    }

    /// Status of every segment, by id.
    pub fn list_segments(&self) -> Vec<SegmentStatus> {
        let handles = registry::all_handles(&self.inner.registry);
        let mut statuses: Vec<SegmentStatus> =
            handles.iter().map(|handle| handle.status()).collect();
        statuses.sort_by_key(|status| status.segment_id);
        statuses
    }

    /// False while writes are refused after a write-path failure (until
    /// the healer has recovered the write path).
    pub fn is_healthy(&self) -> bool {
        self.write_fault().is_none()
    }

    /// Number of segments held.
    pub fn segment_count(&self) -> usize {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Forces a checkpoint now (fsync segment files, record the journal
    /// position, delete older journal files).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (done, completion) = oneshot::channel();
        let path = self.current_write_path()?;
        path.commands
            .send(Command::Checkpoint { done: Some(done) })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        drop(path);
        completion.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Refuses new writes, then checkpoints everything already accepted.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.checkpoint().await
    }
}

impl Inner {
    /// Replaces a failed write path, as a restart would: drops it (its
    /// threads answer what they hold and stop), recovers the directory
    /// afresh (segment scan, journal replay from the last checkpoint) and
    /// starts a new write path over the recovered segments. Writes are
    /// refused meanwhile; reads go on over the segments as they were. On
    /// failure no write path is left and the healer tries again.
    fn recover_write_path(&self) -> Result<RecoveryReport, StoreError> {
        let mut slot = self.write_path.blocking_write();
        if let Some(path) = slot.as_ref() {
            if read_failure(&path.failure).is_none() {
                return Ok(RecoveryReport::default());
            }
        }
        drop(slot.take());
        let layout = &self.layout;
        let mut report = RecoveryReport::default();
        let recovered = recovery::recover(
            &layout.directory,
            &layout.segments_dir,
            &layout.journal_dir,
            &self.options,
            &self.files,
            &mut report,
        )?;
        *self
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = recovered.segments;
        *self
            .damaged
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = recovered.damaged;
        *slot = Some(start_write_path(
            layout,
            recovered.next_sequence,
            &self.options,
            (&self.registry, &self.damaged),
            &self.stats,
            &self.files,
        )?);
        self.stats
            .write_path_recoveries
            .fetch_add(1, Ordering::Relaxed);
        Ok(report)
    }
}

/// Starts a write path over the recovered segments: opens the journal
/// file `next_sequence`, checkpoints what replay wrote, then starts the
/// applier, the journal writer and its timer.
fn start_write_path(
    layout: &Layout,
    next_sequence: u64,
    options: &StorageOptions,
    (registry, damaged): (&Arc<Registry>, &Arc<DamagedRegistry>),
    stats: &Arc<JournalStats>,
    files: &Arc<SegmentFiles>,
) -> Result<WritePath, StoreError> {
    let failure: Failure = Arc::new(Mutex::new(None));
    let journal_file = writer::open_new_journal_file(
        &layout.journal_dir,
        next_sequence,
        options.journal_file_max_bytes,
        options.journal_direct_io,
    )?;
    let spares = JournalSpares::start(&layout.journal_dir)
        .map_err(|error| StoreError::io("start recycling journal files", error))?;
    let applier = SegmentApplier {
        directory: layout.directory.clone(),
        journal_dir: layout.journal_dir.clone(),
        segments_dir: layout.segments_dir.clone(),
        registry: registry.clone(),
        damaged: damaged.clone(),
        stats: stats.clone(),
        failure: failure.clone(),
        spares: spares.clone(),
        files: files.clone(),
    };
    // Replayed data is made durable and the old journal dropped before
    // anything new is accepted.
    applier.checkpoint(next_sequence, 0)?;
    let (committed_sender, committed_receiver) =
        std::sync::mpsc::sync_channel(options.apply_queue_max_groups.max(1));
    let applier_thread = std::thread::Builder::new()
        .name("sluice-apply".to_string())
        .spawn(move || applier.run(committed_receiver))
        .map_err(|error| StoreError::io("start the segment applier thread", error))?;
    let writer = JournalWriter {
        journal_dir: layout.journal_dir.clone(),
        file: journal_file,
        sequence: next_sequence,
        stamp: crate::journal::FileStamp::new_use(next_sequence),
        journal_unsynced: false,
        file_max_bytes: options.journal_file_max_bytes.max(1),
        direct_io: options.journal_direct_io,
        spares,
        stats: stats.clone(),
        failure: failure.clone(),
        committed: Some(committed_sender),
        applier_thread: Some(applier_thread),
    };
    let (sender, receiver) = mpsc::channel(options.journal_queue_max_entries.max(1));
    let weak_sender = sender.downgrade();
    let writer_thread = std::thread::Builder::new()
        .name("sluice-journal".to_string())
        .spawn(move || writer.run(receiver))
        .map_err(|error| StoreError::io("start the journal writer thread", error))?;
    let flush_interval = Duration::from_millis(options.periodic_flush_interval_ms.max(1));
    let checkpoint_interval = Duration::from_millis(options.checkpoint_interval_ms.max(1));
    std::thread::Builder::new()
        .name("sluice-journal-timer".to_string())
        .spawn(move || writer::run_timer(weak_sender, flush_interval, checkpoint_interval))
        .map_err(|error| StoreError::io("start the journal timer thread", error))?;
    Ok(WritePath {
        commands: sender,
        failure,
        _thread: WriterThread(Some(writer_thread)),
    })
}

/// The budget of open segment files for `options` (derived from the soft
/// limit of open files if not configured), logged.
fn open_file_budget(segments_dir: &Path, options: &StorageOptions) -> SegmentFiles {
    let soft_limit = segment_files::soft_file_limit();
    let budget = file_budget::resolve_budget(options.max_open_segment_files, soft_limit);
    let configured = options.max_open_segment_files;
    tracing::info!(
        max_open_segment_files = budget,
        configured,
        soft_file_limit = ?soft_limit,
        "segment file budget"
    );
    if soft_limit.is_some_and(|limit| budget as u64 >= limit) {
        tracing::warn!(
            max_open_segment_files = budget,
            soft_file_limit = ?soft_limit,
            "the segment file budget is not below the limit of open files: opens may fail with EMFILE (retriable) before the budget closes files"
        );
    }
    SegmentFiles::new(segments_dir, budget)
}

/// Takes an exclusive `flock` on `{directory}/LOCK` so that two stores
/// never share a directory.
fn lock_directory(directory: &Path) -> Result<File, StoreError> {
    use std::os::unix::io::AsRawFd;
    let path = directory.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| StoreError::io(format!("open {}", path.display()), error))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        return Err(StoreError::DataDirectory {
            path: directory.to_path_buf(),
            reason: format!(
                "locked by another store process: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(file)
}
