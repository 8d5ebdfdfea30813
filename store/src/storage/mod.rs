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
//! position they cover and delete older journal files. Recovery scans the
//! segment files (truncating torn tails, reporting damaged middles) and
//! replays the journal from the checkpoint.

use crate::error::StoreError;
use crate::journal::{self, RecordKind};
use crate::journal_file::JournalFile;
use crate::journal_spares::JournalSpares;
use crate::segment::{self, SegmentLog, SegmentMeta};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_proto::batch::{self, BatchHeader, BatchIter};
use sluice_proto::v1::{Durability, SegmentStatus};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

const CHECKPOINT_FILE: &str = "checkpoint";
const SEGMENTS_DIR: &str = "segments";
const JOURNAL_DIR: &str = "journal";
/// Bytes of journal records encoded (CRC) and then written per vectored
/// write: small enough that the payloads are still in the CPU cache when
/// the kernel copies them.
const JOURNAL_WRITE_CHUNK_BYTES: usize = 512 * 1024;

/// Engine settings (see `StoreConfig` for meanings and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageOptions {
    pub journal_file_max_bytes: u64,
    pub journal_direct_io: bool,
    pub segment_preallocate_bytes: u64,
    pub journal_queue_max_bytes: u64,
    pub journal_queue_max_entries: usize,
    pub apply_queue_max_groups: usize,
    pub checkpoint_interval_ms: u64,
    pub index_interval_bytes: u64,
    pub periodic_flush_interval_ms: u64,
    pub max_batch_bytes: u32,
    pub max_read_bytes: u32,
}

impl Default for StorageOptions {
    fn default() -> Self {
        crate::config::StoreConfig::default().storage_options()
    }
}

/// What opening the storage found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments_loaded: usize,
    /// Metadata files that could not be used, with the reason; their
    /// segments are not served (unless the journal recreated them).
    pub skipped_segments: Vec<(PathBuf, String)>,
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
        self.skipped_segments.is_empty()
            && self.truncated_segment_tails.is_empty()
            && self.corrupt_segments.is_empty()
            && self.journal_corruptions.is_empty()
            && self.checkpoint_problem.is_none()
    }
}

/// Counters for observing the journal, e.g. how well group commit works.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub fsyncs: AtomicU64,
    pub appends: AtomicU64,
    pub groups: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// Result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Whole, CRC-checked batches; the first contains the requested offset.
    pub batches: Bytes,
    pub segment_end_offset: u64,
    pub sealed: bool,
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

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    journal_sequence: u64,
    position: u64,
}

/// Ordering state of a segment, changed only under its lock.
#[derive(Debug)]
struct Control {
    /// One past the last offset accepted (queued or durable).
    accepted_end: u64,
    deleted: bool,
}

#[derive(Debug)]
struct SegmentHandle {
    id: u64,
    topic: String,
    partition: u32,
    base_offset: u64,
    durability: Durability,
    /// Held while an append is ordered and queued, and across a seal, so
    /// that appends reach the journal in arrival order and a seal sees
    /// every append accepted before it.
    control: tokio::sync::Mutex<Control>,
    sealed: AtomicBool,
    fence_epoch: AtomicU64,
    log: Mutex<SegmentLog>,
}

impl SegmentHandle {
    fn meta(&self) -> SegmentMeta {
        SegmentMeta {
            segment_id: self.id,
            topic: self.topic.clone(),
            partition: self.partition,
            base_offset: self.base_offset,
            writer_epoch: self.fence_epoch.load(Ordering::SeqCst),
            sealed: self.sealed.load(Ordering::SeqCst),
            durability: self.durability as i32,
        }
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        // A panic while holding this lock cannot leave the log half
        // updated in a way later readers trip over: sizes are updated after
        // the write succeeds.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn status(&self) -> SegmentStatus {
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
        }
    }
}

type Registry = RwLock<HashMap<u64, Arc<SegmentHandle>>>;

enum Command {
    Append {
        segment: Arc<SegmentHandle>,
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

struct Inner {
    segments_dir: PathBuf,
    options: StorageOptions,
    registry: Arc<Registry>,
    commands: mpsc::Sender<Command>,
    queue_bytes: Arc<Semaphore>,
    failure: Arc<Mutex<Option<String>>>,
    closing: AtomicBool,
    stats: Arc<JournalStats>,
    /// Serializes create and delete so two creates of one id agree.
    admin_lock: tokio::sync::Mutex<()>,
    /// Declared after `commands`: dropping it (after the sender closed the
    /// queue) waits for the writer, which waits for the applier, so a
    /// dropped storage no longer touches its directory.
    _writer_thread: WriterThread,
}

struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                tracing::error!("journal writer thread panicked");
            }
        }
    }
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

fn read_failure(failure: &Mutex<Option<String>>) -> Option<String> {
    failure
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
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
        let segments_dir = directory.join(SEGMENTS_DIR);
        let journal_dir = directory.join(JOURNAL_DIR);
        for path in [directory, &segments_dir, &journal_dir] {
            std::fs::create_dir_all(path).map_err(|error| StoreError::DataDirectory {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })?;
        }
        let directory_lock = lock_directory(directory)?;
        let mut report = RecoveryReport::default();
        let mut segments = load_segments(&segments_dir, &options, &mut report)?;
        let checkpoint = read_checkpoint(directory, &mut report);
        let next_sequence = replay_journal(
            &journal_dir,
            &segments_dir,
            checkpoint,
            &options,
            &mut segments,
            &mut report,
        )?;
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
        let registry: Arc<Registry> = Arc::new(RwLock::new(segments));
        let journal_file = open_new_journal_file(
            &journal_dir,
            next_sequence,
            options.journal_file_max_bytes,
            options.journal_direct_io,
        )?;
        let stats = Arc::new(JournalStats::default());
        let failure = Arc::new(Mutex::new(None));
        let spares = JournalSpares::start(&journal_dir, options.journal_direct_io)
            .map_err(|error| StoreError::io("start recycling journal files", error))?;
        let applier = SegmentApplier {
            directory: directory.to_path_buf(),
            journal_dir: journal_dir.clone(),
            segments_dir: segments_dir.clone(),
            registry: registry.clone(),
            stats: stats.clone(),
            failure: failure.clone(),
            spares: spares.clone(),
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
            journal_dir,
            file: journal_file,
            sequence: next_sequence,
            journal_unsynced: false,
            file_max_bytes: options.journal_file_max_bytes.max(1),
            direct_io: options.journal_direct_io,
            spares,
            stats: stats.clone(),
            failure: failure.clone(),
            committed: Some(committed_sender),
            applier_thread: Some(applier_thread),
            _directory_lock: directory_lock,
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
            .spawn(move || run_timer(weak_sender, flush_interval, checkpoint_interval))
            .map_err(|error| StoreError::io("start the journal timer thread", error))?;
        let queue_permits = options.journal_queue_max_bytes.clamp(
            u64::from(options.max_batch_bytes),
            Semaphore::MAX_PERMITS as u64,
        ) as usize;
        let storage = Storage {
            inner: Arc::new(Inner {
                segments_dir,
                options,
                registry,
                commands: sender,
                queue_bytes: Arc::new(Semaphore::new(queue_permits)),
                failure,
                closing: AtomicBool::new(false),
                stats,
                admin_lock: tokio::sync::Mutex::new(()),
                _writer_thread: WriterThread(Some(writer_thread)),
            }),
        };
        tracing::info!(?report, directory = %directory.display(), "storage opened");
        Ok((storage, report))
    }

    /// Journal counters (fsyncs, appends, groups, checkpoints).
    pub fn journal_stats(&self) -> &JournalStats {
        &self.inner.stats
    }

    /// The engine settings.
    pub fn options(&self) -> &StorageOptions {
        &self.inner.options
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(StoreError::ShuttingDown);
        }
        if let Some(reason) = read_failure(&self.inner.failure) {
            return Err(StoreError::Failed(reason));
        }
        Ok(())
    }

    fn segment(&self, segment_id: u64) -> Result<Arc<SegmentHandle>, StoreError> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&segment_id)
            .cloned()
            .ok_or(StoreError::UnknownSegment { segment_id })
    }

    async fn journal_metadata(
        &self,
        kind: RecordKind,
        segment_id: u64,
        payload: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (done, completion) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Metadata {
                kind,
                segment_id,
                payload,
                done,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        completion.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Creates a segment; succeeds without change if it exists with the
    /// same topic, partition and base offset.
    pub async fn create_segment(&self, new: NewSegment) -> Result<(), StoreError> {
        self.check_writable()?;
        if new.topic.is_empty() {
            return Err(StoreError::InvalidArgument(
                "segment topic must not be empty".to_string(),
            ));
        }
        let _admin = self.inner.admin_lock.lock().await;
        if let Ok(existing) = self.segment(new.segment_id) {
            if existing.topic == new.topic
                && existing.partition == new.partition
                && existing.base_offset == new.base_offset
            {
                return Ok(());
            }
            return Err(StoreError::SegmentConflict {
                segment_id: new.segment_id,
                detail: format!(
                    "exists as {}/{} at base offset {}, asked for {}/{} at {}",
                    existing.topic,
                    existing.partition,
                    existing.base_offset,
                    new.topic,
                    new.partition,
                    new.base_offset
                ),
            });
        }
        let durability = match new.durability {
            Durability::Periodic => Durability::Periodic,
            Durability::Fsync | Durability::Unspecified => Durability::Fsync,
        };
        let meta = SegmentMeta {
            segment_id: new.segment_id,
            topic: new.topic,
            partition: new.partition,
            base_offset: new.base_offset,
            writer_epoch: new.writer_epoch,
            sealed: false,
            durability: durability as i32,
        };
        let segments_dir = self.inner.segments_dir.clone();
        let index_interval_bytes = self.inner.options.index_interval_bytes;
        let meta_for_disk = meta.clone();
        let log = tokio::task::spawn_blocking(move || {
            create_segment_files(&segments_dir, &meta_for_disk, index_interval_bytes)
        })
        .await
        .map_err(|error| StoreError::Failed(format!("segment creation task failed: {error}")))??;
        let payload = serde_json::to_vec(&meta).map_err(|error| {
            StoreError::io("encode segment metadata", std::io::Error::other(error))
        })?;
        self.journal_metadata(RecordKind::CreateSegment, meta.segment_id, payload)
            .await?;
        let handle = Arc::new(handle_from(meta, log, &self.inner.options));
        self.inner
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(handle.id, handle);
        Ok(())
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
        self.check_writable()?;
        let header = batch::validate(&batch, self.inner.options.max_batch_bytes as usize)
            .map_err(StoreError::InvalidBatch)?;
        let segment = self.segment(segment_id)?;
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
        self.inner
            .commands
            .send(Command::Append {
                segment: segment.clone(),
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

    /// Seals a segment (idempotent), raising its fence epoch to at least
    /// `writer_epoch`; durable before it returns.
    pub async fn seal_segment(
        &self,
        segment_id: u64,
        writer_epoch: u64,
    ) -> Result<SegmentStatus, StoreError> {
        let segment = self.segment(segment_id)?;
        let control = segment.control.lock().await;
        if control.deleted {
            return Err(StoreError::UnknownSegment { segment_id });
        }
        let old_fence = segment.fence_epoch.load(Ordering::SeqCst);
        let new_fence = old_fence.max(writer_epoch);
        if segment.sealed.load(Ordering::SeqCst) && new_fence == old_fence {
            return Ok(segment.status());
        }
        self.check_writable()?;
        segment.sealed.store(true, Ordering::SeqCst);
        segment.fence_epoch.store(new_fence, Ordering::SeqCst);
        // Queued behind every append accepted before it, so once it is
        // durable the segment end is final.
        self.journal_metadata(
            RecordKind::Seal,
            segment_id,
            new_fence.to_le_bytes().to_vec(),
        )
        .await?;
        let segments_dir = self.inner.segments_dir.clone();
        let meta = segment.meta();
        let sealed_segment = segment.clone();
        tokio::task::spawn_blocking(move || {
            segment::write_meta(&segments_dir, &meta)?;
            // Every append accepted before the seal is applied by now (the
            // seal record completed after them), so the file is final.
            if let Err(error) = sealed_segment.lock_log().release_preallocation() {
                tracing::warn!(segment_id, %error, "cannot release preallocated space of a sealed segment");
            }
            Ok::<(), StoreError>(())
        })
        .await
        .map_err(|error| StoreError::Failed(format!("seal task failed: {error}")))??;
        drop(control);
        Ok(segment.status())
    }

    /// Deletes a segment and its files, durably.
    pub async fn delete_segment(&self, segment_id: u64) -> Result<(), StoreError> {
        self.check_writable()?;
        let _admin = self.inner.admin_lock.lock().await;
        let segment = self.segment(segment_id)?;
        let mut control = segment.control.lock().await;
        if control.deleted {
            return Err(StoreError::UnknownSegment { segment_id });
        }
        self.journal_metadata(RecordKind::Delete, segment_id, Vec::new())
            .await?;
        control.deleted = true;
        segment.sealed.store(true, Ordering::SeqCst);
        self.inner
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&segment_id);
        let segments_dir = self.inner.segments_dir.clone();
        tokio::task::spawn_blocking(move || remove_segment_files(&segments_dir, segment_id))
            .await
            .map_err(|error| StoreError::Failed(format!("delete task failed: {error}")))?
    }

    /// Status of one segment.
    pub fn segment_status(&self, segment_id: u64) -> Result<SegmentStatus, StoreError> {
        Ok(self.segment(segment_id)?.status())
    }

    /// Status of every segment, by id.
    pub fn list_segments(&self) -> Vec<SegmentStatus> {
        let handles: Vec<Arc<SegmentHandle>> = self
            .inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        let mut statuses: Vec<SegmentStatus> =
            handles.iter().map(|handle| handle.status()).collect();
        statuses.sort_by_key(|status| status.segment_id);
        statuses
    }

    /// False once a journal or segment write failed (writes are refused).
    pub fn is_healthy(&self) -> bool {
        read_failure(&self.inner.failure).is_none()
    }

    /// Number of segments held.
    pub fn segment_count(&self) -> usize {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Reads whole batches starting with the one containing `offset`, up to
    /// `max_bytes` (0: the configured cap; always at least one batch) and
    /// below `end_offset` (0: the durable end). Blocking file I/O.
    pub fn read(
        &self,
        segment_id: u64,
        offset: u64,
        max_bytes: u32,
        end_offset: u64,
    ) -> Result<ReadOutcome, StoreError> {
        let segment = self.segment(segment_id)?;
        let sealed = segment.sealed.load(Ordering::SeqCst);
        let (file, size_bytes, durable_end, start_position, regions) = {
            let log = segment.lock_log();
            (
                log.file.clone(),
                log.size_bytes,
                log.end_offset,
                log.scan_start_for_offset(offset),
                log.corrupt_regions.clone(),
            )
        };
        if offset < segment.base_offset || offset > durable_end {
            return Err(StoreError::OffsetOutOfRange {
                segment_id,
                offset,
                base_offset: segment.base_offset,
                end_offset: durable_end,
            });
        }
        let limit_offset = if end_offset == 0 {
            durable_end
        } else {
            end_offset.min(durable_end)
        };
        let empty = ReadOutcome {
            batches: Bytes::new(),
            segment_end_offset: durable_end,
            sealed,
        };
        if offset >= limit_offset {
            return Ok(empty);
        }
        let corrupt = |at_offset: u64, detail: String| {
            tracing::error!(segment_id, offset = at_offset, %detail, "refusing to serve corrupt data");
            StoreError::StorageCorrupt {
                segment_id,
                offset: at_offset,
                detail,
            }
        };
        if let Some(region) = regions
            .iter()
            .find(|region| offset >= region.start_offset && offset < region.end_offset)
        {
            return Err(corrupt(
                region.start_offset,
                "the range failed its checksum during recovery".to_string(),
            ));
        }
        let region_at = |position: u64| regions.iter().find(|r| r.start_position == position);
        // Find the batch containing `offset`.
        let mut position = start_position;
        let first = loop {
            if position >= size_bytes {
                return Err(corrupt(
                    offset,
                    "offset not found in the segment file".into(),
                ));
            }
            if let Some(region) = region_at(position) {
                position = region.end_position;
                continue;
            }
            let header = segment::read_header_at(&file, position)
                .map_err(|error| corrupt(offset, format!("batch header at {position}: {error}")))?;
            if position + u64::from(header.batch_length) > size_bytes {
                return Err(corrupt(
                    offset,
                    format!("batch at {position} overruns the file"),
                ));
            }
            if header.end_offset() > offset {
                break header;
            }
            position += u64::from(header.batch_length);
        };
        let cap = u64::from(self.inner.options.max_read_bytes.max(1));
        let budget = if max_bytes == 0 {
            cap
        } else {
            u64::from(max_bytes).min(cap)
        };
        let first_position = position;
        let mut total = u64::from(first.batch_length);
        let mut next_position = first_position + total;
        while next_position < size_bytes && region_at(next_position).is_none() {
            let header = match segment::read_header_at(&file, next_position) {
                Ok(header) => header,
                // Served up to here; the next read reports the damage.
                Err(_) => break,
            };
            let length = u64::from(header.batch_length);
            if header.base_offset >= limit_offset
                || total + length > budget
                || next_position + length > size_bytes
            {
                break;
            }
            total += length;
            next_position += length;
        }
        let mut buffer = vec![0u8; total as usize];
        file.read_exact_at(&mut buffer, first_position)
            .map_err(|error| StoreError::io(format!("read segment {segment_id}"), error))?;
        let mut expected_offset = first.base_offset;
        let mut valid_bytes = 0usize;
        let mut damage = None;
        for item in BatchIter::new(&buffer) {
            let checked = item
                .map_err(|error| error.to_string())
                .and_then(|(_, header, bytes)| {
                    if header.base_offset != expected_offset {
                        return Err(format!("found base offset {} on disk", header.base_offset));
                    }
                    batch::validate(bytes, segment::MAX_BATCH_BYTES_ON_DISK)
                        .map_err(|error| error.to_string())?;
                    Ok((header, bytes.len()))
                });
            match checked {
                Ok((header, length)) => {
                    valid_bytes += length;
                    expected_offset = header.end_offset();
                }
                Err(detail) => {
                    damage = Some(corrupt(expected_offset, detail));
                    break;
                }
            }
        }
        if let Some(error) = damage {
            // Serve the good batches before the damage; the next read,
            // starting at the damaged batch, reports it.
            if valid_bytes == 0 {
                return Err(error);
            }
            buffer.truncate(valid_bytes);
        }
        Ok(ReadOutcome {
            batches: Bytes::from(buffer),
            ..empty
        })
    }

    /// Base offset of the first batch whose max timestamp is >=
    /// `timestamp_ms` (that batch holds the first offset with such a
    /// timestamp); `None` if no batch qualifies. Blocking file I/O.
    pub fn find_offset(
        &self,
        segment_id: u64,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let segment = self.segment(segment_id)?;
        let (file, size_bytes, start, max_timestamp_ms, regions) = {
            let log = segment.lock_log();
            (
                log.file.clone(),
                log.size_bytes,
                log.scan_start_for_timestamp(timestamp_ms),
                log.max_timestamp_ms,
                log.corrupt_regions.clone(),
            )
        };
        if size_bytes == 0 || max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let mut position = start;
        while position < size_bytes {
            if let Some(region) = regions.iter().find(|r| r.start_position == position) {
                position = region.end_position;
                continue;
            }
            let header = segment::read_header_at(&file, position).map_err(|error| {
                StoreError::StorageCorrupt {
                    segment_id,
                    offset: 0,
                    detail: format!("batch header at {position}: {error}"),
                }
            })?;
            if header.max_timestamp_ms >= timestamp_ms {
                return Ok(Some(header.base_offset));
            }
            position += u64::from(header.batch_length);
        }
        Ok(None)
    }

    /// Forces a checkpoint now (fsync segment files, record the journal
    /// position, delete older journal files).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (done, completion) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Checkpoint { done: Some(done) })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        completion.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Refuses new writes, then checkpoints everything already accepted.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.checkpoint().await
    }
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

fn handle_from(meta: SegmentMeta, mut log: SegmentLog, options: &StorageOptions) -> SegmentHandle {
    log.preallocate_chunk_bytes = options.segment_preallocate_bytes;
    let durability = Durability::try_from(meta.durability).unwrap_or(Durability::Fsync);
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
        log: Mutex::new(log),
    }
}

fn create_segment_files(
    segments_dir: &Path,
    meta: &SegmentMeta,
    index_interval_bytes: u64,
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
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|error| StoreError::io(format!("create {}", path.display()), error))?;
    segment::write_meta(segments_dir, meta)?;
    Ok(SegmentLog::new(
        file,
        meta.base_offset,
        index_interval_bytes,
    ))
}

fn remove_segment_files(segments_dir: &Path, segment_id: u64) -> Result<(), StoreError> {
    for path in [
        segment::meta_path(segments_dir, segment_id),
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

fn load_segments(
    segments_dir: &Path,
    options: &StorageOptions,
    report: &mut RecoveryReport,
) -> Result<HashMap<u64, Arc<SegmentHandle>>, StoreError> {
    let mut segments = HashMap::new();
    let entries = std::fs::read_dir(segments_dir)
        .map_err(|error| StoreError::io(format!("list {}", segments_dir.display()), error))?;
    let mut meta_paths = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|error| StoreError::io(format!("list {}", segments_dir.display()), error))?;
        let path = entry.path();
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("meta") => meta_paths.push(path),
            Some("tmp") => {
                // An interrupted metadata write; the previous file is intact.
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot remove temp file");
                }
            }
            _ => {}
        }
    }
    meta_paths.sort();
    for path in meta_paths {
        let skip = |report: &mut RecoveryReport, reason: String| {
            tracing::error!(path = %path.display(), %reason, "skipping segment with unusable metadata");
            report.skipped_segments.push((path.clone(), reason));
        };
        let contents = match std::fs::read(&path) {
            Ok(contents) => contents,
            Err(error) => {
                skip(report, format!("unreadable: {error}"));
                continue;
            }
        };
        let meta: SegmentMeta = match serde_json::from_slice(&contents) {
            Ok(meta) => meta,
            Err(error) => {
                skip(report, format!("not valid metadata: {error}"));
                continue;
            }
        };
        let expected_name = segment::meta_path(segments_dir, meta.segment_id);
        if expected_name != path {
            skip(
                report,
                format!("names segment {} but file name differs", meta.segment_id),
            );
            continue;
        }
        let outcome = match segment::scan_log(
            &segment::log_path(segments_dir, meta.segment_id),
            meta.segment_id,
            meta.base_offset,
            options.index_interval_bytes,
        ) {
            Ok(outcome) => outcome,
            Err(error) => {
                skip(report, format!("log unusable: {error}"));
                continue;
            }
        };
        if outcome.truncated_bytes > 0 && !outcome.zero_tail {
            report
                .truncated_segment_tails
                .push((meta.segment_id, outcome.truncated_bytes));
        }
        let handle = handle_from(meta, outcome.log, options);
        segments.insert(handle.id, Arc::new(handle));
    }
    Ok(segments)
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

/// Replays journal files from the checkpoint; returns the sequence number
/// for the next journal file.
fn replay_journal(
    journal_dir: &Path,
    segments_dir: &Path,
    checkpoint: Option<Checkpoint>,
    options: &StorageOptions,
    segments: &mut HashMap<u64, Arc<SegmentHandle>>,
    report: &mut RecoveryReport,
) -> Result<u64, StoreError> {
    let sequences = journal::list_journal_files(journal_dir)?;
    let (start_sequence, start_position) = checkpoint
        .as_ref()
        .map(|checkpoint| (checkpoint.journal_sequence, checkpoint.position))
        .unwrap_or((0, 0));
    let mut touched: HashMap<u64, ()> = HashMap::new();
    for &sequence in sequences
        .iter()
        .filter(|&&sequence| sequence >= start_sequence)
    {
        let path = journal::journal_file_path(journal_dir, sequence);
        let bytes = std::fs::read(&path)
            .map_err(|error| StoreError::io(format!("read {}", path.display()), error))?;
        let mut position = if sequence == start_sequence {
            (start_position as usize).min(bytes.len())
        } else {
            0
        };
        while position < bytes.len() {
            let record = match journal::decode_record(&bytes[position..]) {
                Ok(record) => record,
                // The preallocated, never written rest of the file: the
                // end of the journal, not a torn record.
                Err(_) if journal::is_zero_fill(&bytes[position..]) => break,
                Err(reason) => match journal::find_next_valid_record(&bytes, position + 1) {
                    Some(next) => {
                        let message = format!(
                            "{}: {reason} at {position}; skipped {} bytes",
                            path.display(),
                            next - position
                        );
                        tracing::error!(%message, "damaged journal record");
                        report.journal_corruptions.push(message);
                        position = next;
                        continue;
                    }
                    None => {
                        // Zeros after the torn record are preallocated
                        // space, not part of what was torn.
                        let data_end = journal::end_of_nonzero_data(&bytes);
                        let torn = data_end.saturating_sub(position) as u64;
                        tracing::warn!(path = %path.display(), torn, "truncating torn journal tail");
                        report.journal_torn_tail_bytes += torn;
                        let file = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|error| {
                                StoreError::io(format!("open {}", path.display()), error)
                            })?;
                        file.set_len(position as u64)
                            .and_then(|()| file.sync_all())
                            .map_err(|error| {
                                StoreError::io(format!("truncate {}", path.display()), error)
                            })?;
                        break;
                    }
                },
            };
            position += record.encoded_bytes;
            report.journal_records_replayed += 1;
            apply_record(
                &record,
                segments_dir,
                options,
                segments,
                report,
                &mut touched,
            )?;
        }
    }
    for segment_id in touched.keys() {
        if let Some(handle) = segments.get(segment_id) {
            let log = handle.lock_log();
            log.file
                .sync_all()
                .map_err(|error| StoreError::io(format!("fsync segment {segment_id}"), error))?;
        }
    }
    let last = sequences.last().copied().unwrap_or(0).max(start_sequence);
    Ok(last + 1)
}

fn apply_record(
    record: &journal::DecodedRecord<'_>,
    segments_dir: &Path,
    options: &StorageOptions,
    segments: &mut HashMap<u64, Arc<SegmentHandle>>,
    report: &mut RecoveryReport,
    touched: &mut HashMap<u64, ()>,
) -> Result<(), StoreError> {
    let segment_id = record.segment_id;
    match record.kind {
        RecordKind::Append => {
            let Some(handle) = segments.get(&segment_id) else {
                return Ok(());
            };
            let header = match batch::validate(record.payload, segment::MAX_BATCH_BYTES_ON_DISK) {
                Ok(header) => header,
                Err(error) => {
                    report.journal_corruptions.push(format!(
                        "segment {segment_id}: journal batch invalid: {error}"
                    ));
                    return Ok(());
                }
            };
            let mut log = handle.lock_log();
            if header.base_offset == log.end_offset {
                log.append(&header, record.payload).map_err(|error| {
                    StoreError::io(format!("replay into segment {segment_id}"), error)
                })?;
                report.journal_batches_reappended += 1;
                touched.insert(segment_id, ());
            } else if header.base_offset < log.end_offset {
                repair_from_journal(&mut log, &header, record.payload, segment_id, report)?;
                touched.insert(segment_id, ());
            } else {
                report.journal_corruptions.push(format!(
                    "segment {segment_id}: journal batch at {} is beyond the segment end {}",
                    header.base_offset, log.end_offset
                ));
            }
            drop(log);
            let end = handle.lock_log().end_offset;
            if let Ok(mut control) = handle.control.try_lock() {
                control.accepted_end = end;
            }
        }
        RecordKind::CreateSegment => {
            if segments.contains_key(&segment_id) {
                return Ok(());
            }
            let meta = match serde_json::from_slice::<SegmentMeta>(record.payload) {
                Ok(meta) if meta.segment_id == segment_id => meta,
                _ => {
                    report
                        .journal_corruptions
                        .push(format!("segment {segment_id}: create record unreadable"));
                    return Ok(());
                }
            };
            // The metadata file is missing or was unusable: rebuild it
            // from the journal and keep whatever log data is valid.
            segment::write_meta(segments_dir, &meta)?;
            let outcome = segment::scan_log(
                &segment::log_path(segments_dir, segment_id),
                segment_id,
                meta.base_offset,
                options.index_interval_bytes,
            )?;
            if outcome.truncated_bytes > 0 && !outcome.zero_tail {
                report
                    .truncated_segment_tails
                    .push((segment_id, outcome.truncated_bytes));
            }
            tracing::warn!(segment_id, "segment metadata restored from the journal");
            segments.insert(
                segment_id,
                Arc::new(handle_from(meta, outcome.log, options)),
            );
        }
        RecordKind::Seal => {
            let Some(handle) = segments.get(&segment_id) else {
                return Ok(());
            };
            let mut epoch = [0u8; 8];
            if record.payload.len() == 8 {
                epoch.copy_from_slice(record.payload);
            }
            let epoch = u64::from_le_bytes(epoch);
            let old_fence = handle.fence_epoch.load(Ordering::SeqCst);
            if !handle.sealed.load(Ordering::SeqCst) || epoch > old_fence {
                handle.sealed.store(true, Ordering::SeqCst);
                handle
                    .fence_epoch
                    .store(old_fence.max(epoch), Ordering::SeqCst);
                segment::write_meta(segments_dir, &handle.meta())?;
            }
        }
        RecordKind::Delete => {
            segments.remove(&segment_id);
            touched.remove(&segment_id);
            remove_segment_files(segments_dir, segment_id)?;
        }
    }
    Ok(())
}

/// Who appends: the segment's writer over its append stream, or an owner
/// copying batches into it during recovery or repair (allowed on a sealed
/// segment, see [`Storage::recovery_append`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendMode {
    Writer,
    Recovery,
}

/// Rewrites a damaged middle range of a log from a journal batch when the
/// batch is the next one missing in that range.
fn repair_from_journal(
    log: &mut SegmentLog,
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
    let region = &mut log.corrupt_regions[index];
    log.file
        .write_all_at(bytes, region.repaired_position)
        .map_err(|error| StoreError::io(format!("repair segment {segment_id}"), error))?;
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
    log.dirty = true;
    Ok(())
}

/// Creates journal file `sequence`, preallocated to the journal file size
/// so that journal writes land in allocated blocks (much faster than
/// allocating on every write), with direct I/O if configured (see
/// `journal_file.rs`). The file length is then the preallocated size, not
/// the data length: recovery treats the zeros after the last record as the
/// end.
fn open_new_journal_file(
    journal_dir: &Path,
    sequence: u64,
    preallocate_bytes: u64,
    direct_io: bool,
) -> Result<JournalFile, StoreError> {
    let path = journal::journal_file_path(journal_dir, sequence);
    let file = JournalFile::create(&path, direct_io)
        .map_err(|error| StoreError::io(format!("create {}", path.display()), error))?;
    segment::preallocate(file.file(), 0, preallocate_bytes, false);
    segment::sync_directory(journal_dir)?;
    Ok(file)
}

fn run_timer(
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
/// it, then hands the committed group to the [`SegmentApplier`] and goes
/// on with the next group while the applier writes this one to the
/// segment files. Nothing is acknowledged here.
struct JournalWriter {
    journal_dir: PathBuf,
    /// The journal file being written; its logical end is where the next
    /// record goes (the file itself is preallocated past it).
    file: JournalFile,
    sequence: u64,
    journal_unsynced: bool,
    file_max_bytes: u64,
    /// Whether new journal files are opened with direct I/O.
    direct_io: bool,
    /// Zeroed obsolete journal files, reused instead of new ones.
    spares: JournalSpares,
    stats: Arc<JournalStats>,
    failure: Arc<Mutex<Option<String>>>,
    /// Committed groups, in journal order, to the applier; bounded
    /// (`apply_queue_max_groups`), so a slow applier slows the writer.
    committed: Option<std::sync::mpsc::SyncSender<CommittedGroup>>,
    applier_thread: Option<std::thread::JoinHandle<()>>,
    /// Held (flock) while the writer lives, which is longer than the
    /// applier (joined before): one storage per directory.
    _directory_lock: File,
}

/// Commands whose journal records are written (and fsynced if any of them
/// needs it), in journal order, with where they end in the journal.
struct CommittedGroup {
    commands: Vec<Command>,
    /// Journal file and position just after the group's records: a
    /// checkpoint in this group covers the journal up to here, since the
    /// applier has applied everything before it when it checkpoints.
    journal_sequence: u64,
    journal_position: u64,
}

fn record_failure(failure: &Mutex<Option<String>>, reason: String) {
    tracing::error!(%reason, "storage write path failed; refusing further writes");
    let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
    if failure.is_none() {
        *failure = Some(reason);
    }
}

impl JournalWriter {
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
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
            complete_all_with_error(group, &reason);
            return;
        }
        // Records are written with vectored writes straight from the
        // appenders' buffers (no copy into a staging buffer), a chunk at a
        // time: the CRC pass over a chunk leaves its payloads in the CPU
        // cache for the kernel's copy into the page cache right after.
        let mut needs_fsync = false;
        let mut flush_requested = false;
        let mut appends = 0u64;
        let mut chunk: Vec<([u8; journal::RECORD_HEADER_BYTES], &[u8])> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut write_result = Ok(());
        for command in &group {
            let (kind, segment_id, payload): (RecordKind, u64, &[u8]) = match command {
                Command::Append {
                    segment,
                    batch,
                    fsync,
                    ..
                } => {
                    needs_fsync |= *fsync;
                    appends += 1;
                    (RecordKind::Append, segment.id, batch)
                }
                Command::Metadata {
                    kind,
                    segment_id,
                    payload,
                    ..
                } => {
                    needs_fsync = true;
                    (*kind, *segment_id, payload)
                }
                Command::Flush => {
                    flush_requested = true;
                    continue;
                }
                Command::Checkpoint { .. } => continue,
            };
            chunk.push((
                journal::encode_record_header(kind, segment_id, payload),
                payload,
            ));
            chunk_bytes += journal::RECORD_HEADER_BYTES + payload.len();
            if chunk_bytes >= JOURNAL_WRITE_CHUNK_BYTES {
                write_result = self.write_records(&chunk);
                chunk.clear();
                chunk_bytes = 0;
                if write_result.is_err() {
                    break;
                }
            }
        }
        if write_result.is_ok() && !chunk.is_empty() {
            write_result = self.write_records(&chunk);
        }
        drop(chunk);
        if let Err(error) = write_result {
            self.fail(format!("journal write failed: {error}"));
            complete_all_with_error(group, "journal write failed");
            return;
        }
        needs_fsync |= flush_requested;
        if needs_fsync && self.journal_unsynced {
            if let Err(error) = self.file.sync_data() {
                // After a failed fsync the page cache state is unknown:
                // never retry, stop accepting writes.
                self.fail(format!("journal fsync failed: {error}"));
                complete_all_with_error(group, "journal fsync failed");
                return;
            }
            self.journal_unsynced = false;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.appends.fetch_add(appends, Ordering::Relaxed);
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
            complete_all_with_error(unsent.commands, "the segment applier stopped");
            return;
        }
        if self.file.position() >= self.file_max_bytes {
            if let Err(error) = self.roll() {
                self.fail(format!("journal roll failed: {error}"));
            }
        }
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
        self.file.append(&slices)?;
        self.journal_unsynced = true;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        if self.journal_unsynced {
            self.file
                .sync_data()
                .map_err(|error| StoreError::io("fsync journal before roll", error))?;
            self.journal_unsynced = false;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.sequence += 1;
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

    /// Makes the zeroed spare at `spare` the journal file for the current
    /// sequence (durably renamed before anything is written to it).
    fn reuse_spare(&self, spare: &Path) -> Result<JournalFile, StoreError> {
        let path = journal::journal_file_path(&self.journal_dir, self.sequence);
        std::fs::rename(spare, &path)
            .map_err(|error| StoreError::io(format!("rename {}", spare.display()), error))?;
        segment::sync_directory(&self.journal_dir)?;
        JournalFile::open_zeroed(&path, self.direct_io)
            .map_err(|error| StoreError::io(format!("open {}", path.display()), error))
    }
}

/// The second stage of the write path: applies committed groups, in
/// journal order, to the segment files (no fsync), then completes their
/// commands, and runs checkpoints. Completing only after applying means a
/// reader or a seal that follows an acknowledgement sees the data, and a
/// metadata command completes after every append journaled before it.
struct SegmentApplier {
    directory: PathBuf,
    journal_dir: PathBuf,
    segments_dir: PathBuf,
    registry: Arc<Registry>,
    stats: Arc<JournalStats>,
    failure: Arc<Mutex<Option<String>>>,
    spares: JournalSpares,
}

/// A checkpoint handed from the applier to the checkpointer thread: the
/// segment files that were dirty when the applier reached the journal
/// position, to be fsynced before that position is recorded.
struct CheckpointJob {
    files: Vec<(u64, File)>,
    journal_sequence: u64,
    journal_position: u64,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The third stage: fsyncs segment files, records checkpoints and deletes
/// old journal files, on its own thread so that the seconds an fsync of
/// many megabytes can take never hold up acknowledgements.
struct CheckpointWriter {
    directory: PathBuf,
    journal_dir: PathBuf,
    segments_dir: PathBuf,
    stats: Arc<JournalStats>,
    failure: Arc<Mutex<Option<String>>>,
    /// Set while a periodic checkpoint is queued or running; the next
    /// periodic one is skipped rather than queued behind it.
    busy: Arc<AtomicBool>,
    /// Takes obsolete journal files for reuse instead of deleting them.
    spares: JournalSpares,
}

impl CheckpointWriter {
    fn run(self, jobs: std::sync::mpsc::Receiver<CheckpointJob>) {
        while let Ok(job) = jobs.recv() {
            let periodic = job.done.is_none();
            let outcome = self.finish(job.files, job.journal_sequence, job.journal_position);
            if let Err(error) = &outcome {
                tracing::error!(%error, "checkpoint failed");
                record_failure(&self.failure, format!("checkpoint failed: {error}"));
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
    fn finish(
        &self,
        files: Vec<(u64, File)>,
        journal_sequence: u64,
        journal_position: u64,
    ) -> Result<(), StoreError> {
        for (segment_id, file) in files {
            file.sync_data()
                .map_err(|error| StoreError::io(format!("fsync segment {segment_id}"), error))?;
        }
        segment::sync_directory(&self.segments_dir)?;
        let checkpoint = Checkpoint {
            journal_sequence,
            position: journal_position,
        };
        let encoded = serde_json::to_vec(&checkpoint)
            .map_err(|error| StoreError::io("encode checkpoint", std::io::Error::other(error)))?;
        segment::write_file_durably(&self.directory.join(CHECKPOINT_FILE), &encoded)?;
        // The writer may have rolled on to newer files meanwhile; only
        // files before the recorded one are covered.
        for sequence in journal::list_journal_files(&self.journal_dir)? {
            if sequence < journal_sequence {
                let path = journal::journal_file_path(&self.journal_dir, sequence);
                if self.spares.offer(&path) {
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
}

impl SegmentApplier {
    fn run(self, groups: std::sync::mpsc::Receiver<CommittedGroup>) {
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
        }
    }

    /// Takes every dirty segment file (a duplicate handle) and marks it
    /// clean: whatever is written after this is dirty again and belongs to
    /// a later checkpoint.
    fn take_dirty_files(&self) -> Result<Vec<(u64, File)>, StoreError> {
        let handles: Vec<Arc<SegmentHandle>> = self
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        let mut files = Vec::new();
        for handle in handles {
            let mut log = handle.lock_log();
            if log.dirty {
                let file = log.file.try_clone().map_err(|error| {
                    StoreError::io(format!("duplicate segment {} handle", handle.id), error)
                })?;
                log.dirty = false;
                files.push((handle.id, file));
            }
        }
        Ok(files)
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
            complete_all_with_error(commands, &reason);
            return;
        }
        // Every append of the group is applied before anything completes
        // or a checkpoint runs: a checkpoint records the position after the
        // whole group.
        let mut results: Vec<Result<u64, String>> = Vec::with_capacity(commands.len());
        for command in &commands {
            let result = match command {
                Command::Append {
                    segment,
                    header,
                    batch,
                    ..
                } => {
                    let mut log = segment.lock_log();
                    match log.append(header, batch) {
                        Ok(()) => Ok(log.end_offset),
                        Err(error) => Err(format!("segment {} write failed: {error}", segment.id)),
                    }
                }
                _ => Ok(0),
            };
            if let Err(reason) = &result {
                record_failure(&self.failure, reason.clone());
            }
            results.push(result);
        }
        for (command, result) in commands.into_iter().zip(results) {
            match command {
                Command::Append { done, .. } => {
                    let _ = done.send(result.map_err(StoreError::Failed));
                }
                Command::Metadata { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                Command::Flush => {}
                Command::Checkpoint { done } => {
                    let periodic = done.is_none();
                    if periodic && busy.swap(true, Ordering::AcqRel) {
                        // The previous one is still fsyncing; the next
                        // tick covers this one's data too.
                        continue;
                    }
                    let files = match self.take_dirty_files() {
                        Ok(files) => files,
                        Err(error) => {
                            tracing::error!(%error, "checkpoint failed");
                            record_failure(&self.failure, format!("checkpoint failed: {error}"));
                            if let Some(done) = done {
                                let _ = done.send(Err(error));
                            }
                            if periodic {
                                busy.store(false, Ordering::Release);
                            }
                            continue;
                        }
                    };
                    let job = CheckpointJob {
                        files,
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
            }
        }
    }

    /// fsync dirty segment files and the segments directory, record the
    /// journal position they cover, delete older journal files, all on the
    /// calling thread (used at open). Everything journaled before
    /// `journal_sequence`/`journal_position` must already be applied to the
    /// segment files.
    fn checkpoint(&self, journal_sequence: u64, journal_position: u64) -> Result<(), StoreError> {
        let files = self.take_dirty_files()?;
        self.checkpoint_writer(Arc::new(AtomicBool::new(false)))
            .finish(files, journal_sequence, journal_position)
    }
}

fn complete_all_with_error(group: Vec<Command>, reason: &str) {
    for command in group {
        match command {
            Command::Append { done, .. } => {
                let _ = done.send(Err(StoreError::Failed(reason.to_string())));
            }
            Command::Metadata { done, .. } => {
                let _ = done.send(Err(StoreError::Failed(reason.to_string())));
            }
            Command::Checkpoint { done: Some(done) } => {
                let _ = done.send(Err(StoreError::Failed(reason.to_string())));
            }
            Command::Checkpoint { done: None } | Command::Flush => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
    use sluice_proto::ErrorCode;

    fn make_batch(base_offset: u64, records: u32, timestamp_ms: i64) -> Bytes {
        let mut builder = BatchBuilder::new(Compression::None);
        for index in 0..records {
            builder.push(&RecordData {
                key: None,
                value: Some(Bytes::from(format!("value-{base_offset}-{index}"))),
                headers: Vec::new(),
                tags: Vec::new(),
                timestamp_ms: Some(timestamp_ms),
            });
        }
        let mut bytes = builder.build().to_vec();
        batch::assign(&mut bytes, base_offset, 1);
        Bytes::from(bytes)
    }

    fn new_segment(segment_id: u64, base_offset: u64) -> NewSegment {
        NewSegment {
            segment_id,
            topic: "orders".to_string(),
            partition: 3,
            base_offset,
            writer_epoch: 5,
            durability: Durability::Fsync,
        }
    }

    fn options() -> StorageOptions {
        StorageOptions {
            index_interval_bytes: 512,
            checkpoint_interval_ms: 3_600_000,
            ..StorageOptions::default()
        }
    }

    #[tokio::test]
    async fn segment_files_grow_in_preallocated_chunks_released_at_seal() {
        use std::os::unix::fs::MetadataExt;
        let directory = tempfile::tempdir().expect("temp dir");
        let chunk_bytes = 4 * 1024 * 1024;
        let (storage, _) = Storage::open(
            directory.path(),
            StorageOptions {
                segment_preallocate_bytes: chunk_bytes,
                ..options()
            },
        )
        .expect("open");
        storage
            .create_segment(new_segment(1, 0))
            .await
            .expect("create");
        let mut data_bytes = 0u64;
        for offset in 0..10 {
            let batch = make_batch(offset, 1, 1000);
            data_bytes += batch.len() as u64;
            storage.append(1, 5, batch).await.expect("append");
        }
        let path = segment::log_path(&directory.path().join(SEGMENTS_DIR), 1);
        let stat = std::fs::metadata(&path).expect("stat");
        assert_eq!(stat.len(), data_bytes, "the file length is the data length");
        assert!(
            stat.blocks() * 512 >= chunk_bytes,
            "segment blocks must be preallocated with fallocate: {} bytes allocated; does the temp dir's file system support fallocate?",
            stat.blocks() * 512
        );
        // Reserved blocks outlive the process; the next one releases them
        // at the seal although it reserved nothing itself.
        drop(storage);
        let (storage, report) = Storage::open(
            directory.path(),
            StorageOptions {
                segment_preallocate_bytes: chunk_bytes,
                ..options()
            },
        )
        .expect("reopen");
        assert!(report.is_clean(), "{report:?}");
        storage.seal_segment(1, 5).await.expect("seal");
        let stat = std::fs::metadata(&path).expect("stat");
        assert_eq!(stat.len(), data_bytes);
        assert!(
            stat.blocks() * 512 < chunk_bytes,
            "sealing releases the unused preallocation: {} bytes allocated",
            stat.blocks() * 512
        );
        let read = storage.read(1, 0, 0, 0).expect("read");
        assert_eq!(read.segment_end_offset, 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_appends_are_readable_when_acknowledged_and_survive_checkpoints_and_a_crash()
    {
        let directory = tempfile::tempdir().expect("temp dir");
        // Small journal files: many rolls and checkpoints while groups are
        // between the writer and the applier.
        let busy = StorageOptions {
            journal_file_max_bytes: 16 * 1024,
            apply_queue_max_groups: 2,
            ..options()
        };
        let segments = 4u64;
        let appends_per_segment = 150u64;
        {
            let (storage, _) = Storage::open(directory.path(), busy.clone()).expect("open");
            for segment_id in 0..segments {
                storage
                    .create_segment(new_segment(segment_id, 0))
                    .await
                    .expect("create");
            }
            let checkpointer = {
                let storage = storage.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        storage.checkpoint().await.expect("checkpoint");
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            };
            let mut tasks = Vec::new();
            for segment_id in 0..segments {
                let storage = storage.clone();
                tasks.push(tokio::spawn(async move {
                    let (sender, mut receiver) = mpsc::channel(32);
                    let reader_storage = storage.clone();
                    let waiter = tokio::spawn(async move {
                        while let Some((offset, batch, pending)) = receiver.recv().await {
                            let pending: PendingAppend = pending;
                            let batch: Bytes = batch;
                            assert_eq!(pending.wait().await.expect("durable"), offset + 1);
                            // Acknowledged means applied: a read sees it.
                            let read = reader_storage
                                .read(segment_id, offset, 0, offset + 1)
                                .expect("read after acknowledgement");
                            assert_eq!(read.batches, batch);
                        }
                    });
                    for offset in 0..appends_per_segment {
                        let batch = make_batch(offset, 1, 1000);
                        let pending = storage
                            .submit_append(segment_id, 5, batch.clone())
                            .await
                            .expect("submit");
                        sender
                            .send((offset, batch, pending))
                            .await
                            .expect("waiter alive");
                    }
                    drop(sender);
                    waiter.await.expect("waiter");
                }));
            }
            for task in tasks {
                task.await.expect("task");
            }
            checkpointer.await.expect("checkpointer");
            let stats = storage.journal_stats();
            assert!(stats.checkpoints.load(Ordering::SeqCst) >= 20);
            // Dropped without close: a crash.
        }
        let (storage, report) = Storage::open(directory.path(), busy).expect("reopen");
        assert!(report.is_clean(), "{report:?}");
        for segment_id in 0..segments {
            assert_eq!(
                storage
                    .segment_status(segment_id)
                    .expect("status")
                    .end_offset,
                appends_per_segment
            );
            for offset in 0..appends_per_segment {
                let read = storage
                    .read(segment_id, offset, 0, offset + 1)
                    .expect("read");
                assert_eq!(read.batches, make_batch(offset, 1, 1000));
            }
        }
    }

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
        for segment_id in 0..segments {
            let status = storage.segment_status(segment_id).expect("status");
            assert_eq!(status.end_offset, appends_per_segment);
        }
    }

    #[test]
    fn a_directory_is_used_by_one_storage_at_a_time() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        let Err(error) = Storage::open(directory.path(), options()) else {
            panic!("a second storage opened the same directory");
        };
        assert!(error.to_string().contains("locked"), "{error}");
        drop(storage);
        Storage::open(directory.path(), options()).expect("open after the first closed");
    }

    #[tokio::test]
    async fn sequential_fsync_appends_each_wait_for_an_fsync() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        storage
            .create_segment(new_segment(1, 0))
            .await
            .expect("create");
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
    async fn append_and_read_back_whole_batches() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (storage, report) = Storage::open(directory.path(), options()).expect("open");
        assert!(report.is_clean());
        storage
            .create_segment(new_segment(7, 100))
            .await
            .expect("create");
        let mut written = Vec::new();
        let mut offset = 100;
        for index in 0..30 {
            let batch = make_batch(offset, 3, 1000 + index * 10);
            offset = storage.append(7, 5, batch.clone()).await.expect("append");
            written.push(batch);
        }
        assert_eq!(offset, 190);
        // Everything from the start.
        let all = storage.read(7, 100, 0, 0).expect("read");
        let expected: Vec<u8> = written.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all.batches.to_vec(), expected);
        assert_eq!(all.segment_end_offset, 190);
        // From the middle of a batch: starts with the batch containing it.
        let middle = storage.read(7, 134, 0, 0).expect("read");
        assert!(middle.batches.starts_with(&written[11]));
        // max_bytes smaller than one batch still returns exactly one.
        let one = storage.read(7, 100, 1, 0).expect("read");
        assert_eq!(one.batches, written[0]);
        // end_offset bounds the answer.
        let bounded = storage.read(7, 100, 0, 106).expect("read");
        assert_eq!(bounded.batches.len(), written[0].len() + written[1].len());
        // At the end: empty; beyond or before: out of range.
        assert!(storage.read(7, 190, 0, 0).expect("read").batches.is_empty());
        for bad in [99, 191] {
            let error = storage.read(7, bad, 0, 0).expect_err("out of range");
            assert_eq!(error.code(), ErrorCode::OffsetOutOfRange);
        }
        assert_eq!(
            storage.read(8, 0, 0, 0).expect_err("unknown").code(),
            ErrorCode::UnknownSegment
        );
    }

    #[tokio::test]
    async fn append_validation_errors() {
        let directory = tempfile::tempdir().expect("temp dir");
        let options = StorageOptions {
            max_batch_bytes: 4096,
            ..options()
        };
        let (storage, _) = Storage::open(directory.path(), options).expect("open");
        storage
            .create_segment(new_segment(1, 0))
            .await
            .expect("create");
        storage
            .append(1, 5, make_batch(0, 2, 1))
            .await
            .expect("append");

        let wrong_offset = storage
            .append(1, 5, make_batch(5, 1, 1))
            .await
            .expect_err("gap");
        assert_eq!(wrong_offset.code(), ErrorCode::InvalidArgument);
        assert!(wrong_offset.to_string().contains("end 2"), "{wrong_offset}");

        let mut corrupt = make_batch(2, 1, 1).to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x55;
        let bad_crc = storage
            .append(1, 5, Bytes::from(corrupt))
            .await
            .expect_err("crc");
        assert_eq!(bad_crc.code(), ErrorCode::CorruptBatch);

        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&RecordData {
            key: None,
            value: Some(Bytes::from(vec![0u8; 8192])),
            headers: Vec::new(),
            tags: Vec::new(),
            timestamp_ms: Some(1),
        });
        let mut large = builder.build().to_vec();
        batch::assign(&mut large, 2, 1);
        let too_large = storage
            .append(1, 5, Bytes::from(large))
            .await
            .expect_err("size");
        assert_eq!(too_large.code(), ErrorCode::TooLarge);

        let unknown = storage
            .append(9, 5, make_batch(0, 1, 1))
            .await
            .expect_err("unknown");
        assert_eq!(unknown.code(), ErrorCode::UnknownSegment);

        let fenced = storage
            .append(1, 4, make_batch(2, 1, 1))
            .await
            .expect_err("fenced");
        assert_eq!(fenced.code(), ErrorCode::Fenced);
        // None of the refusals moved the end.
        assert_eq!(
            storage
                .append(1, 5, make_batch(2, 1, 1))
                .await
                .expect("append"),
            3
        );
    }

    #[tokio::test]
    async fn seal_fences_and_is_idempotent_and_durable() {
        let directory = tempfile::tempdir().expect("temp dir");
        {
            let (storage, _) = Storage::open(directory.path(), options()).expect("open");
            storage
                .create_segment(new_segment(1, 0))
                .await
                .expect("create");
            // Creating again with the same identity is fine; otherwise not.
            storage
                .create_segment(new_segment(1, 0))
                .await
                .expect("idempotent");
            let conflict = storage
                .create_segment(new_segment(1, 10))
                .await
                .expect_err("conflict");
            assert_eq!(conflict.code(), ErrorCode::Conflict);
            storage
                .append(1, 5, make_batch(0, 4, 50))
                .await
                .expect("append");
            let status = storage.seal_segment(1, 9).await.expect("seal");
            assert!(status.sealed);
            assert_eq!(status.end_offset, 4);
            assert_eq!(status.writer_epoch, 9);
            assert_eq!(status.max_timestamp_ms, 50);
            let again = storage.seal_segment(1, 3).await.expect("seal again");
            assert_eq!(again, status);
            let sealed = storage
                .append(1, 9, make_batch(4, 1, 1))
                .await
                .expect_err("sealed");
            assert_eq!(sealed.code(), ErrorCode::SegmentSealed);
            // Dropped without close: the seal must already be durable.
        }
        let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
        let status = storage.segment_status(1).expect("status");
        assert!(status.sealed);
        assert_eq!(status.writer_epoch, 9);
        assert_eq!(status.end_offset, 4);
    }

    #[tokio::test]
    async fn recovery_append_fills_a_sealed_copy_for_the_fencing_owner_only() {
        let directory = tempfile::tempdir().expect("temp dir");
        let tail = [make_batch(2, 2, 20), make_batch(4, 3, 30)].concat();
        {
            let (storage, _) = Storage::open(directory.path(), options()).expect("open");
            storage
                .create_segment(new_segment(1, 0))
                .await
                .expect("create");
            storage
                .append(1, 5, make_batch(0, 2, 10))
                .await
                .expect("append");
            storage.seal_segment(1, 7).await.expect("seal");
            // The previous owner's epoch is below the fence: refused.
            let stale = storage
                .recovery_append(1, 6, Bytes::from(tail.clone()))
                .await
                .expect_err("stale owner");
            assert_eq!(stale.code(), ErrorCode::Fenced);
            // The fencing owner copies the batches the copy lacks, starting
            // with one it already holds (skipped).
            let batches = [make_batch(0, 2, 10).to_vec(), tail.clone()].concat();
            let status = storage
                .recovery_append(1, 7, Bytes::from(batches.clone()))
                .await
                .expect("copy");
            assert_eq!(status.end_offset, 7);
            assert!(status.sealed, "still sealed: the writer stays fenced");
            // Copying again changes nothing.
            let again = storage
                .recovery_append(1, 7, Bytes::from(batches))
                .await
                .expect("copy again");
            assert_eq!(again.end_offset, 7);
            // A gap is refused.
            let gap = storage
                .recovery_append(1, 7, make_batch(9, 1, 1))
                .await
                .expect_err("gap");
            assert_eq!(gap.code(), ErrorCode::InvalidArgument);
            // The writer is still refused.
            let writer = storage
                .append(1, 5, make_batch(7, 1, 1))
                .await
                .expect_err("sealed");
            assert_eq!(writer.code(), ErrorCode::SegmentSealed);
        }
        // Copies are durable and replay after a restart.
        let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
        let status = storage.segment_status(1).expect("status");
        assert_eq!(status.end_offset, 7);
        assert!(status.sealed);
        let read = storage.read(1, 4, 0, 0).expect("read");
        assert_eq!(read.batches.len(), make_batch(4, 3, 30).len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_racing_seal_is_either_included_or_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        storage
            .create_segment(new_segment(1, 0))
            .await
            .expect("create");
        let appender = {
            let storage = storage.clone();
            tokio::spawn(async move {
                let mut acknowledged_end = 0;
                for offset in 0..200 {
                    match storage.append(1, 5, make_batch(offset, 1, 1)).await {
                        Ok(end) => acknowledged_end = end,
                        Err(error) => {
                            assert_eq!(error.code(), ErrorCode::SegmentSealed);
                            break;
                        }
                    }
                }
                acknowledged_end
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let status = storage.seal_segment(1, 6).await.expect("seal");
        let acknowledged_end = appender.await.expect("task");
        assert_eq!(status.end_offset, acknowledged_end);
    }

    #[tokio::test]
    async fn find_offset_uses_batch_max_timestamps() {
        let directory = tempfile::tempdir().expect("temp dir");
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        storage
            .create_segment(new_segment(1, 0))
            .await
            .expect("create");
        for index in 0..50u64 {
            storage
                .append(1, 5, make_batch(index * 2, 2, 1000 + index as i64 * 100))
                .await
                .expect("append");
        }
        assert_eq!(storage.find_offset(1, 0).expect("find"), Some(0));
        assert_eq!(storage.find_offset(1, 1000).expect("find"), Some(0));
        assert_eq!(storage.find_offset(1, 1001).expect("find"), Some(2));
        assert_eq!(storage.find_offset(1, 3450).expect("find"), Some(50));
        assert_eq!(storage.find_offset(1, 5900).expect("find"), Some(98));
        assert_eq!(storage.find_offset(1, 5901).expect("find"), None);
    }

    #[tokio::test]
    async fn delete_removes_durably() {
        let directory = tempfile::tempdir().expect("temp dir");
        {
            let (storage, _) = Storage::open(directory.path(), options()).expect("open");
            storage
                .create_segment(new_segment(1, 0))
                .await
                .expect("create");
            storage
                .create_segment(new_segment(2, 0))
                .await
                .expect("create");
            storage
                .append(1, 5, make_batch(0, 1, 1))
                .await
                .expect("append");
            storage.delete_segment(1).await.expect("delete");
            assert_eq!(storage.list_segments().len(), 1);
        }
        let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
        let listed: Vec<u64> = storage
            .list_segments()
            .iter()
            .map(|s| s.segment_id)
            .collect();
        assert_eq!(listed, vec![2]);
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

    /// Obsolete journal files come back as the next ones (zeroed first);
    /// after a crash, recovery finds exactly the records written since,
    /// never the stale ones they held before (here: records of a segment
    /// that was deleted, behind the few new records of a reused file).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recycled_journal_files_replay_only_their_new_records_after_a_crash() {
        let directory = tempfile::tempdir().expect("temp dir");
        let journal_dir = directory.path().join(JOURNAL_DIR);
        let small_journal = StorageOptions {
            journal_file_max_bytes: 32 * 1024,
            ..options()
        };
        let count_ready_spares = || {
            std::fs::read_dir(&journal_dir)
                .expect("list")
                .filter(|entry| {
                    let name = entry.as_ref().expect("entry").file_name();
                    let name = name.to_str().expect("utf-8").to_string();
                    name.starts_with("spare-") && name.ends_with(".ready")
                })
                .count()
        };
        let mut end_offset = 0u64;
        {
            let (storage, _) =
                Storage::open(directory.path(), small_journal.clone()).expect("open");
            storage
                .create_segment(new_segment(1, 0))
                .await
                .expect("create");
            for index in 0..30 {
                storage
                    .append(1, 5, make_batch(index * 200, 200, 1))
                    .await
                    .expect("append");
            }
            storage.delete_segment(1).await.expect("delete");
            storage.checkpoint().await.expect("checkpoint");
            let deadline = Instant::now() + Duration::from_secs(10);
            while count_ready_spares() < crate::journal_spares::MAX_SPARES {
                assert!(Instant::now() < deadline, "spares were not zeroed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            storage
                .create_segment(new_segment(2, 0))
                .await
                .expect("create");
            // Until a roll took a spare, then two small records at the
            // start of that reused file, before the crash.
            while count_ready_spares() == crate::journal_spares::MAX_SPARES {
                assert!(end_offset < 200 * 100, "no roll reused a spare");
                storage
                    .append(2, 5, make_batch(end_offset, 200, 3))
                    .await
                    .expect("append");
                end_offset += 200;
            }
            for _ in 0..2 {
                storage
                    .append(2, 5, make_batch(end_offset, 1, 3))
                    .await
                    .expect("append");
                end_offset += 1;
            }
            // Dropped without close: like a crash, the journal holds it all.
        }
        let (storage, report) = Storage::open(directory.path(), small_journal).expect("reopen");
        assert!(report.is_clean(), "{report:?}");
        assert!(
            storage.segment_status(1).is_err(),
            "the deleted segment stays deleted"
        );
        assert_eq!(
            storage.segment_status(2).expect("status").end_offset,
            end_offset
        );
        let last = storage
            .read(2, end_offset - 1, 0, end_offset)
            .expect("read");
        assert_eq!(last.batches, make_batch(end_offset - 1, 1, 3));
    }
}
