//! One segment on disk: its metadata file, its log file of concatenated
//! record batches, the sparse offset and time indexes kept in memory, and
//! the recovery scan that rebuilds them.

use crate::error::StoreError;
pub use crate::segment_meta::{meta_copy_path, meta_path, write_meta, SegmentMeta};
use sluice_proto::batch::{self, BatchHeader, HEADER_BYTES};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest batch the recovery scan accepts from disk; anything declaring
/// more is corruption.
pub const MAX_BATCH_BYTES_ON_DISK: usize = sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;

/// Path of the log file of `segment_id`.
pub fn log_path(segments_dir: &Path, segment_id: u64) -> PathBuf {
    segments_dir.join(format!("{segment_id:020}.log"))
}

/// fsyncs a directory so that created, renamed and removed entries are
/// durable.
pub fn sync_directory(directory: &Path) -> Result<(), StoreError> {
    crate::fault::check(directory, crate::fault::FileOp::Open)
        .and_then(|()| File::open(directory))
        .and_then(|handle| handle.sync_all())
        .map_err(|error| StoreError::io(format!("fsync directory {}", directory.display()), error))
}

/// Writes `contents` to `path` atomically and durably: temp file, fsync,
/// rename, fsync of the directory.
pub fn write_file_durably(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let directory = path.parent().unwrap_or(Path::new("."));
    let temporary = path.with_extension("tmp");
    let result = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|error| StoreError::io(format!("write {}", path.display()), error))?;
    sync_directory(directory)
}

/// Whether `fallocate` was refused as unsupported once already (logged
/// once per process, then preallocation is skipped silently).
static PREALLOCATE_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Allocates `length_bytes` of disk blocks at `offset` of `file` so later
/// writes there do not allocate. With `keep_size` the file length stays
/// as it is (blocks past the end are reserved, not visible). Best effort:
/// a file system without `fallocate` or a failure (e.g. out of space,
/// which the write itself will then report) only costs speed, so it is
/// logged and ignored. Returns whether the blocks were allocated.
pub fn preallocate(file: &File, offset: u64, length_bytes: u64, keep_size: bool) -> bool {
    try_preallocate(file, offset, length_bytes, keep_size).unwrap_or_else(|error| {
        tracing::warn!(%error, offset, length_bytes, "fallocate failed; writing without preallocation");
        false
    })
}

/// [`preallocate`], but a full disk (`ENOSPC`) is an error rather than a
/// warning: for files that must have their space before they are used.
pub fn try_preallocate(
    file: &File,
    offset: u64,
    length_bytes: u64,
    keep_size: bool,
) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    use std::sync::atomic::Ordering;
    if length_bytes == 0 || PREALLOCATE_UNSUPPORTED.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let (Ok(offset), Ok(length)) = (
        libc::off_t::try_from(offset),
        libc::off_t::try_from(length_bytes),
    ) else {
        return Ok(false);
    };
    let mode = if keep_size {
        libc::FALLOC_FL_KEEP_SIZE
    } else {
        0
    };
    // SAFETY: fallocate on a file descriptor we own; no memory is involved.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) };
    if result == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENOSPC) => return Err(error),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            if !PREALLOCATE_UNSUPPORTED.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "the file system does not support fallocate; writing without preallocation");
            }
        }
        _ => {
            tracing::warn!(%error, offset, length_bytes, "fallocate failed; writing without preallocation")
        }
    }
    Ok(false)
}

/// True when the bytes of `file` in `[from, to)` are all zero: blocks that
/// were allocated (or whose size reached the disk) but whose data never
/// did, i.e. the end of the data rather than damage.
fn is_zero_range(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut buffer = vec![0u8; RESYNC_WINDOW_BYTES];
    let mut position = from;
    while position < to {
        let length = ((to - position) as usize).min(buffer.len());
        file.read_exact_at(&mut buffer[..length], position)?;
        if !crate::journal::is_zero_fill(&buffer[..length]) {
            return Ok(false);
        }
        position += length as u64;
    }
    Ok(true)
}

/// Entry of the sparse offset index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetIndexEntry {
    pub base_offset: u64,
    pub position: u64,
}

/// Entry of the sparse time index: the largest timestamp of every batch up
/// to and including the batch at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub max_timestamp_ms: i64,
    pub base_offset: u64,
    pub position: u64,
}

/// What is wrong with a [`CorruptRegion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Bytes that fail their checksum or framing, with valid batches
    /// after them.
    Checksum,
    /// The end of the file's valid data lies below the durable end the
    /// store recorded (seal metadata or checkpoint): a truncated file, or
    /// a damaged tail.
    BelowDurableEnd {
        /// The file's length when recovery scanned it.
        file_length: u64,
    },
}

/// A byte range of the log file that is damaged (see [`DamageKind`]):
/// never served, and no writer appends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptRegion {
    pub start_offset: u64,
    pub end_offset: u64,
    pub start_position: u64,
    pub end_position: u64,
    /// How far journal replay has rewritten the region (offset, position).
    pub repaired_offset: u64,
    pub repaired_position: u64,
    pub kind: DamageKind,
}

impl CorruptRegion {
    /// What is wrong, and where in the file, for operators.
    pub fn describe(&self) -> String {
        let (start, end) = (self.start_position, self.end_position);
        match self.kind {
            DamageKind::Checksum => format!(
                "bytes [{start}, {end}) of the segment file fail their checksum"
            ),
            DamageKind::BelowDurableEnd { file_length } if file_length < end => format!(
                "the segment file is truncated: {file_length} bytes, below its recorded durable end (offset {}, byte {end}); its valid data ends at byte {start}",
                self.end_offset
            ),
            DamageKind::BelowDurableEnd { .. } => format!(
                "no valid batch from byte {start} up to the recorded durable end (offset {}, byte {end}): damaged tail",
                self.end_offset
            ),
        }
    }
}

/// The end a segment was made durable up to, recorded apart from its log
/// file (seal metadata or checkpoint): recovery never ends the segment
/// below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableEnd {
    pub end_offset: u64,
    pub size_bytes: u64,
}

/// Where the scan of a log file leaves the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanTail {
    pub end_offset: u64,
    pub size_bytes: u64,
    /// Cut the file to this length (bytes past the end that are torn,
    /// damaged or never acknowledged).
    pub cut_to: Option<u64>,
    /// The offsets missing below the recorded durable end.
    pub missing: Option<CorruptRegion>,
}

/// Decides the end of a segment whose scan found valid data up to byte
/// `position` / offset `scanned_end` in a file of `file_length` bytes,
/// given the durable end recorded for it, if any. Below the recorded end,
/// the rest is a damaged range up to it (the bytes kept for inspection),
/// never a shorter end; beyond it (or without one), a torn tail is cut.
pub fn decide_tail(
    position: u64,
    scanned_end: u64,
    file_length: u64,
    recorded: Option<DurableEnd>,
) -> ScanTail {
    match recorded {
        Some(recorded) if recorded.end_offset > scanned_end => {
            let end_position = recorded.size_bytes.max(position);
            ScanTail {
                end_offset: recorded.end_offset,
                size_bytes: end_position,
                cut_to: (file_length > end_position).then_some(end_position),
                missing: Some(CorruptRegion {
                    start_offset: scanned_end,
                    end_offset: recorded.end_offset,
                    start_position: position,
                    end_position,
                    repaired_offset: scanned_end,
                    repaired_position: position,
                    kind: DamageKind::BelowDurableEnd { file_length },
                }),
            }
        }
        _ => ScanTail {
            end_offset: scanned_end,
            size_bytes: position,
            cut_to: (file_length > position).then_some(position),
            missing: None,
        },
    }
}

/// What is known about the contents of a segment's log file. Everything
/// up to `size_bytes` / `end_offset` is acknowledged data. The file itself
/// is opened on demand within the store's budget of open files
/// (`storage/segment_files.rs`); the log only keeps it while it has
/// writes not yet fsynced.
#[derive(Debug)]
pub struct SegmentLog {
    /// The file, kept from the first write after an fsync until the
    /// checkpoint takes it to fsync it ([`SegmentLog::take_dirty_file`]):
    /// `Some` whenever `dirty`, so a file with unsynced writes is never
    /// closed (a write-back error could then go unreported).
    pub file: Option<Arc<File>>,
    pub base_offset: u64,
    pub end_offset: u64,
    pub size_bytes: u64,
    pub max_timestamp_ms: i64,
    pub offset_index: Vec<OffsetIndexEntry>,
    pub time_index: Vec<TimeIndexEntry>,
    pub corrupt_regions: Vec<CorruptRegion>,
    /// Written since the last fsync of the file.
    pub dirty: bool,
    /// Grow the file's allocation by at least this much at a time (0: no
    /// preallocation).
    pub preallocate_chunk_bytes: u64,
    /// The file has blocks allocated up to here (as far as this process
    /// knows; 0 after opening).
    allocated_bytes: u64,
    index_interval_bytes: u64,
    last_offset_index_position: Option<u64>,
    last_time_index_position: Option<u64>,
    /// Writeback of the file's pages has been started up to here (see
    /// [`WRITEBACK_CHUNK_BYTES`]).
    writeback_started_bytes: u64,
}

/// Once this many bytes were written to a segment file since its writeback
/// was last started, the kernel is asked to start writing them out
/// (`sync_file_range`, asynchronous, no wait): the checkpoint's fsync then
/// finds little left to write, instead of a burst of everything written
/// since the last one, which queued in front of the journal's fsyncs and
/// made the acknowledgement tail (BENCHMARKS.md, session 4).
pub const WRITEBACK_CHUNK_BYTES: u64 = 1024 * 1024;

impl SegmentLog {
    /// An empty log (of an empty file).
    pub fn new(base_offset: u64, index_interval_bytes: u64) -> Self {
        Self {
            file: None,
            base_offset,
            end_offset: base_offset,
            size_bytes: 0,
            max_timestamp_ms: -1,
            offset_index: Vec::new(),
            time_index: Vec::new(),
            corrupt_regions: Vec::new(),
            dirty: false,
            preallocate_chunk_bytes: 0,
            allocated_bytes: 0,
            index_interval_bytes: index_interval_bytes.max(1),
            last_offset_index_position: None,
            last_time_index_position: None,
            writeback_started_bytes: 0,
        }
    }

    /// Records a batch now present at `position` in the indexes.
    pub fn index_batch(&mut self, header: &BatchHeader, position: u64) {
        let due = |last: Option<u64>, interval: u64| match last {
            None => true,
            Some(last) => position >= last + interval,
        };
        if due(self.last_offset_index_position, self.index_interval_bytes) {
            self.offset_index.push(OffsetIndexEntry {
                base_offset: header.base_offset,
                position,
            });
            self.last_offset_index_position = Some(position);
        }
        let new_maximum = header.max_timestamp_ms > self.max_timestamp_ms;
        if new_maximum {
            self.max_timestamp_ms = header.max_timestamp_ms;
        }
        // A time entry is only useful where the running maximum grew.
        if new_maximum && due(self.last_time_index_position, self.index_interval_bytes) {
            self.time_index.push(TimeIndexEntry {
                max_timestamp_ms: self.max_timestamp_ms,
                base_offset: header.base_offset,
                position,
            });
            self.last_time_index_position = Some(position);
        }
    }

    /// Writes a batch at the end of the log's `file` and indexes it, and
    /// keeps the file until it is fsynced. No fsync.
    pub fn append(
        &mut self,
        file: &Arc<File>,
        header: &BatchHeader,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let file = self.keep_file(file);
        let position = self.size_bytes;
        let end = position + bytes.len() as u64;
        if self.preallocate_chunk_bytes > 0 && end > self.allocated_bytes {
            // Writing into allocated blocks is much cheaper than allocating
            // on every write; the file length stays the data length, so
            // recovery never sees the reserved space.
            let length = (end - position).max(self.preallocate_chunk_bytes);
            self.allocated_bytes = if preallocate(&file, position, length, true) {
                position + length
            } else {
                // Unsupported or failed: do not retry on every append.
                end + self.preallocate_chunk_bytes
            };
        }
        file.write_all_at(bytes, position)?;
        self.size_bytes += bytes.len() as u64;
        self.end_offset = header.end_offset();
        self.dirty = true;
        self.index_batch(header, position);
        self.start_writeback(&file);
        Ok(())
    }

    /// Writes `bytes` at `position` inside the data (a repair of a damaged
    /// range), keeping the file until it is fsynced. No fsync.
    pub fn rewrite_at(
        &mut self,
        file: &Arc<File>,
        bytes: &[u8],
        position: u64,
    ) -> std::io::Result<()> {
        let file = self.keep_file(file);
        file.write_all_at(bytes, position)?;
        self.dirty = true;
        Ok(())
    }

    /// The file kept for unsynced writes: the one kept already (the same
    /// open file as `file`, which the budget never closes while kept), or
    /// `file`, now kept.
    fn keep_file(&mut self, file: &Arc<File>) -> Arc<File> {
        self.file.get_or_insert_with(|| file.clone()).clone()
    }

    /// The file with writes not yet fsynced, if any, for the checkpoint
    /// to fsync; the log is clean from here on (later writes keep a file
    /// again).
    pub fn take_dirty_file(&mut self) -> Option<Arc<File>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.file.take()
    }

    /// Starts writeback of what was written since the last start, once
    /// that is at least [`WRITEBACK_CHUNK_BYTES`]. Only a hint: a failure
    /// is left to the checkpoint's fsync to find and report.
    fn start_writeback(&mut self, file: &File) {
        let start = self.writeback_started_bytes;
        if self.size_bytes < start + WRITEBACK_CHUNK_BYTES {
            return;
        }
        let (Ok(offset), Ok(length)) = (
            libc::off64_t::try_from(start),
            libc::off64_t::try_from(self.size_bytes - start),
        ) else {
            return;
        };
        // SAFETY: sync_file_range on a file descriptor we own; no memory
        // is passed.
        let result = unsafe {
            libc::sync_file_range(
                std::os::unix::io::AsRawFd::as_raw_fd(file),
                offset,
                length,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range failed; the checkpoint will write the pages");
        }
        self.writeback_started_bytes = self.size_bytes;
    }

    /// Gives back blocks reserved past the data (a sealed segment grows no
    /// more). Truncating to the current length frees them. Done even when
    /// this process reserved nothing: an earlier one may have, before a
    /// restart.
    pub fn release_preallocation(&mut self, file: &File) -> std::io::Result<()> {
        // A file shorter than the log (a damaged tail) is not extended;
        // truncating to the same length frees blocks reserved past it.
        if file.metadata()?.len() >= self.size_bytes {
            file.set_len(self.size_bytes)?;
        }
        self.allocated_bytes = self.size_bytes;
        Ok(())
    }

    /// Index position to start scanning from for `offset`.
    pub fn scan_start_for_offset(&self, offset: u64) -> u64 {
        let index = self
            .offset_index
            .partition_point(|entry| entry.base_offset <= offset);
        if index == 0 {
            0
        } else {
            self.offset_index[index - 1].position
        }
    }

    /// Position to start scanning from when looking for the first batch
    /// whose max timestamp is >= `timestamp_ms`.
    pub fn scan_start_for_timestamp(&self, timestamp_ms: i64) -> u64 {
        let index = self
            .time_index
            .partition_point(|entry| entry.max_timestamp_ms < timestamp_ms);
        if index == 0 {
            0
        } else {
            self.time_index[index - 1].position
        }
    }

    /// The corrupt region containing `offset`, if any.
    pub fn corrupt_region_at(&self, offset: u64) -> Option<&CorruptRegion> {
        self.corrupt_regions
            .iter()
            .find(|region| offset >= region.start_offset && offset < region.end_offset)
    }

    /// The damaged offset ranges, by start offset, for the status.
    pub fn damaged_ranges(&self) -> Vec<sluice_proto::v1::DamagedRange> {
        let mut regions = self.corrupt_regions.clone();
        regions.sort_by_key(|region| region.start_offset);
        regions
            .iter()
            .map(|region| sluice_proto::v1::DamagedRange {
                start_offset: region.start_offset,
                end_offset: region.end_offset,
                detail: region.describe(),
            })
            .collect()
    }

    /// First corrupt offset, if any region is not repaired.
    pub fn corrupt_from_offset(&self) -> Option<u64> {
        self.corrupt_regions
            .iter()
            .map(|region| region.start_offset)
            .min()
    }
}

/// Reads and parses the batch header at `position`.
pub fn read_header_at(file: &File, position: u64) -> std::io::Result<BatchHeader> {
    let mut buffer = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut buffer, position)?;
    BatchHeader::parse(&buffer)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()))
}

/// What the recovery scan of one log file found.
#[derive(Debug)]
pub struct ScanOutcome {
    pub log: SegmentLog,
    /// Bytes cut off the end (a torn or damaged tail with nothing valid
    /// after it).
    pub truncated_bytes: u64,
    /// The cut-off tail was all zeros: space whose data never reached the
    /// disk before a crash (unacknowledged, or still in the journal), not
    /// damage.
    pub zero_tail: bool,
}

/// Bytes examined per read while looking for valid data after damage.
const RESYNC_WINDOW_BYTES: usize = 1024 * 1024;

fn io_error(path: &Path, what: &str, error: std::io::Error) -> StoreError {
    StoreError::io(format!("{what} {}", path.display()), error)
}

/// Reads and fully validates the batch at `position` (header, length, CRC,
/// framing) into `buffer`; `None` if there is no valid batch there.
fn valid_batch_at(
    file: &File,
    position: u64,
    file_length: u64,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<BatchHeader>> {
    if position + HEADER_BYTES as u64 > file_length {
        return Ok(None);
    }
    let mut header_bytes = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header_bytes, position)?;
    let Ok(header) = BatchHeader::parse(&header_bytes) else {
        return Ok(None);
    };
    let length = header.batch_length as usize;
    if length > MAX_BATCH_BYTES_ON_DISK || position + length as u64 > file_length {
        return Ok(None);
    }
    buffer.resize(length, 0);
    file.read_exact_at(buffer, position)?;
    Ok(batch::validate(buffer, MAX_BATCH_BYTES_ON_DISK).ok())
}

/// First position after damage at `damaged_position` holding a valid batch
/// that plausibly continues the log, reading a window at a time.
fn find_resume(
    file: &File,
    damaged_position: u64,
    file_length: u64,
    expected_offset: u64,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<(u64, BatchHeader)>> {
    let mut window = vec![0u8; RESYNC_WINDOW_BYTES + HEADER_BYTES];
    let mut window_start = damaged_position + 1;
    while window_start < file_length {
        let available = ((file_length - window_start) as usize).min(window.len());
        file.read_exact_at(&mut window[..available], window_start)?;
        let candidates = available.min(RESYNC_WINDOW_BYTES);
        for index in 0..candidates {
            let candidate = window_start + index as u64;
            let Ok(header) = BatchHeader::parse(&window[index..available]) else {
                continue;
            };
            // The base offset lies outside the batch CRC, so a candidate is
            // only believed if it skips no more offsets than bytes (a
            // record takes more than one byte).
            let plausible = header.base_offset > expected_offset
                && header.base_offset - expected_offset <= candidate - damaged_position;
            if plausible && valid_batch_at(file, candidate, file_length, buffer)?.is_some() {
                return Ok(Some((candidate, header)));
            }
        }
        window_start += candidates as u64;
    }
    Ok(None)
}

/// Reads a log file batch by batch (memory: one batch plus a resync
/// window), validates every batch and rebuilds the indexes. Damage followed
/// by valid batches becomes a [`CorruptRegion`]; where the valid data ends
/// is settled by [`decide_tail`] against the `recorded` durable end.
pub fn scan_log(
    path: &Path,
    segment_id: u64,
    base_offset: u64,
    index_interval_bytes: u64,
    recorded: Option<DurableEnd>,
) -> Result<ScanOutcome, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| io_error(path, "open", error))?;
    let file_length = file
        .metadata()
        .map_err(|error| io_error(path, "stat", error))?
        .len();
    let mut log = SegmentLog::new(base_offset, index_interval_bytes);
    let (position, scanned_end) = scan_batches(&file, path, segment_id, file_length, &mut log)?;
    let tail = decide_tail(position, scanned_end, file_length, recorded);
    let truncated_bytes = tail.cut_to.map_or(0, |cut| file_length - cut);
    let zero_tail = truncated_bytes > 0
        && is_zero_range(&file, file_length - truncated_bytes, file_length)
            .map_err(|error| io_error(path, "read", error))?;
    log_tail(segment_id, &tail, truncated_bytes, zero_tail);
    // A previous process may have written this file without fsync (its
    // journal covered it): fsynced here, before anything deletes that
    // journal, and then closed, so that loading many segments holds no
    // files open.
    let synced = match tail.cut_to {
        Some(cut) => file.set_len(cut).and_then(|()| file.sync_all()),
        None => file.sync_data(),
    };
    synced.map_err(|error| io_error(path, "truncate or fsync", error))?;
    log.corrupt_regions.extend(tail.missing);
    log.size_bytes = tail.size_bytes;
    log.end_offset = tail.end_offset;
    Ok(ScanOutcome {
        log,
        truncated_bytes,
        zero_tail,
    })
}

/// Scans the valid batches of `file` into `log` (indexes, damaged middles);
/// the position and offset where the valid data ends.
fn scan_batches(
    file: &File,
    path: &Path,
    segment_id: u64,
    file_length: u64,
    log: &mut SegmentLog,
) -> Result<(u64, u64), StoreError> {
    let mut buffer = Vec::new();
    let mut position = 0u64;
    let mut expected_offset = log.base_offset;
    while position < file_length {
        let found = valid_batch_at(file, position, file_length, &mut buffer)
            .map_err(|error| io_error(path, "read", error))?;
        if let Some(header) = found {
            if header.base_offset == expected_offset {
                log.index_batch(&header, position);
                position += u64::from(header.batch_length);
                expected_offset = header.end_offset();
                continue;
            }
        }
        // Damage at `position`: is there a valid continuation after it?
        let resume = find_resume(file, position, file_length, expected_offset, &mut buffer)
            .map_err(|error| io_error(path, "read", error))?;
        let Some((resume_position, header)) = resume else {
            break;
        };
        tracing::error!(
            segment_id,
            offset = expected_offset,
            position,
            "segment file has a corrupt entry in the middle; it will not be served"
        );
        log.corrupt_regions.push(CorruptRegion {
            start_offset: expected_offset,
            end_offset: header.base_offset,
            start_position: position,
            end_position: resume_position,
            repaired_offset: expected_offset,
            repaired_position: position,
            kind: DamageKind::Checksum,
        });
        position = resume_position;
        expected_offset = header.base_offset;
    }
    Ok((position, expected_offset))
}

fn log_tail(segment_id: u64, tail: &ScanTail, truncated_bytes: u64, zero_tail: bool) {
    if let Some(missing) = &tail.missing {
        tracing::error!(
            segment_id,
            start_offset = missing.start_offset,
            end_offset = missing.end_offset,
            detail = %missing.describe(),
            "segment file lacks data below its recorded durable end; the range is damaged and not served"
        );
    }
    if zero_tail {
        tracing::info!(
            segment_id,
            truncated_bytes,
            end_offset = tail.end_offset,
            "cutting an unwritten (all zero) tail off a segment file"
        );
    } else if truncated_bytes > 0 {
        tracing::warn!(
            segment_id,
            truncated_bytes,
            end_offset = tail.end_offset,
            "truncating a torn or damaged tail of a segment file"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::{BatchBuilder, Compression, RecordData};

    pub(crate) fn make_batch(base_offset: u64, records: u32, timestamp_ms: i64) -> Vec<u8> {
        let mut builder = BatchBuilder::new(Compression::None);
        for index in 0..records {
            builder.push(&RecordData {
                key: None,
                value: Some(bytes::Bytes::from(vec![b'v'; 100 + index as usize])),
                headers: Vec::new(),
                tags: Vec::new(),
                timestamp_ms: Some(timestamp_ms + i64::from(index)),
            });
        }
        let mut bytes = builder.build().to_vec();
        batch::assign(&mut bytes, base_offset, 1);
        bytes
    }

    #[test]
    fn offset_index_is_sparse_and_points_at_or_before_the_batch() {
        let directory = tempfile::tempdir().expect("temp dir");
        let file = Arc::new(File::create(directory.path().join("x.log")).expect("create"));
        let mut log = SegmentLog::new(100, 1024);
        let mut offset = 100;
        let mut positions = Vec::new();
        for index in 0..50 {
            let bytes = make_batch(offset, 2, 1000 + index * 10);
            let header = BatchHeader::parse(&bytes).expect("header");
            positions.push((offset, log.size_bytes));
            log.append(&file, &header, &bytes).expect("append");
            offset = header.end_offset();
        }
        assert!(log.offset_index.len() > 1, "index has entries");
        assert!(
            log.offset_index.len() < 50,
            "index is sparse: {} entries for 50 batches",
            log.offset_index.len()
        );
        for (batch_offset, position) in positions {
            for probe in [batch_offset, batch_offset + 1] {
                let start = log.scan_start_for_offset(probe);
                assert!(start <= position, "scan start after the batch");
                assert!(position - start < 1024 + 400, "scan start too far back");
            }
        }
        assert_eq!(log.end_offset, 200);
    }

    #[test]
    fn time_index_start_is_before_the_first_matching_batch() {
        let directory = tempfile::tempdir().expect("temp dir");
        let file = Arc::new(File::create(directory.path().join("x.log")).expect("create"));
        let mut log = SegmentLog::new(0, 512);
        let mut offset = 0;
        let mut batches = Vec::new();
        for index in 0..40i64 {
            let bytes = make_batch(offset, 1, 1000 + index * 100);
            let header = BatchHeader::parse(&bytes).expect("header");
            batches.push((log.size_bytes, header));
            log.append(&file, &header, &bytes).expect("append");
            offset = header.end_offset();
        }
        assert!(log.time_index.len() < 40 && !log.time_index.is_empty());
        for target in [0i64, 1000, 1050, 2500, 4900] {
            let first = batches
                .iter()
                .find(|(_, header)| header.max_timestamp_ms >= target)
                .expect("a batch matches");
            assert!(log.scan_start_for_timestamp(target) <= first.0);
        }
    }

    fn recorded(end_offset: u64, size_bytes: u64) -> Option<DurableEnd> {
        Some(DurableEnd {
            end_offset,
            size_bytes,
        })
    }

    #[test]
    fn without_a_recorded_end_a_torn_tail_is_cut() {
        let tail = decide_tail(100, 50, 130, None);
        assert_eq!((tail.end_offset, tail.size_bytes), (50, 100));
        assert_eq!((tail.cut_to, tail.missing), (Some(100), None));
        let whole = decide_tail(100, 50, 100, None);
        assert_eq!((whole.cut_to, whole.missing), (None, None));
        let empty = decide_tail(0, 0, 0, None);
        assert_eq!((empty.end_offset, empty.cut_to), (0, None));
    }

    #[test]
    fn a_tail_beyond_the_recorded_end_is_cut() {
        for end in [recorded(50, 100), recorded(40, 80), recorded(0, 0)] {
            let tail = decide_tail(100, 50, 130, end);
            assert_eq!((tail.end_offset, tail.size_bytes), (50, 100));
            assert_eq!((tail.cut_to, tail.missing), (Some(100), None));
        }
    }

    #[test]
    fn data_missing_below_the_recorded_end_is_a_damaged_range_never_a_shorter_end() {
        // Truncated mid-batch: the file ends inside the recorded size.
        let tail = decide_tail(100, 50, 120, recorded(80, 160));
        assert_eq!(
            (tail.end_offset, tail.size_bytes, tail.cut_to),
            (80, 160, None)
        );
        let missing = tail.missing.expect("a damaged range");
        assert_eq!(
            (missing.start_offset, missing.end_offset),
            (50, 80),
            "[scan end, recorded end)"
        );
        assert_eq!((missing.start_position, missing.end_position), (100, 160));
        assert!(
            missing.describe().contains("truncated"),
            "{}",
            missing.describe()
        );
        // Garbage up to the recorded size and more beyond it: the bytes up
        // to the recorded size are kept, the rest cut.
        let tail = decide_tail(100, 50, 200, recorded(80, 160));
        assert_eq!((tail.end_offset, tail.cut_to), (80, Some(160)));
        let missing = tail.missing.expect("a damaged range");
        assert!(
            missing.describe().contains("damaged tail"),
            "{}",
            missing.describe()
        );
        // The log file is gone.
        let tail = decide_tail(0, 7, 0, recorded(u64::MAX, u64::MAX));
        assert_eq!((tail.end_offset, tail.size_bytes), (u64::MAX, u64::MAX));
        assert_eq!(tail.missing.map(|m| m.start_offset), Some(7));
    }

    #[test]
    fn a_recorded_size_below_the_scanned_position_never_shrinks_the_log() {
        // Inconsistent records (offsets beyond, size behind): the data
        // scanned is kept and the range starts where it ends.
        let tail = decide_tail(100, 50, 100, recorded(80, 10));
        assert_eq!((tail.size_bytes, tail.cut_to), (100, None));
        let missing = tail.missing.expect("a damaged range");
        assert_eq!((missing.start_position, missing.end_position), (100, 100));
    }

    #[test]
    fn scan_keeps_a_truncated_file_at_its_recorded_end() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("s.log");
        let mut contents = Vec::new();
        for index in 0..4 {
            contents.extend_from_slice(&make_batch(index * 3, 3, 10));
        }
        let full = contents.len() as u64;
        contents.truncate(contents.len() - 20);
        std::fs::write(&path, &contents).expect("write");
        let outcome = scan_log(&path, 9, 0, 4096, recorded(12, full)).expect("scan");
        assert_eq!((outcome.log.end_offset, outcome.log.size_bytes), (12, full));
        assert_eq!(outcome.log.corrupt_from_offset(), Some(9));
        assert_eq!(outcome.truncated_bytes, 0);
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            contents.len() as u64,
            "the damaged bytes are kept for inspection"
        );
    }

    #[test]
    fn scan_truncates_torn_tail_and_reports_middle_damage() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("s.log");
        let mut contents = Vec::new();
        let mut offset = 0;
        let mut starts = Vec::new();
        for _ in 0..5 {
            let bytes = make_batch(offset, 3, 10);
            starts.push(contents.len());
            contents.extend_from_slice(&bytes);
            offset += 3;
        }
        let full = contents.len();
        // Damage batch 2 (offsets 6..9) and tear the tail.
        contents[starts[2] + 70] ^= 0xff;
        contents.extend_from_slice(&make_batch(15, 3, 10)[..30]);
        std::fs::write(&path, &contents).expect("write");
        let outcome = scan_log(&path, 9, 0, 4096, None).expect("scan");
        assert_eq!(outcome.truncated_bytes, 30);
        assert_eq!(outcome.log.end_offset, 15);
        assert_eq!(outcome.log.size_bytes, full as u64);
        assert_eq!(outcome.log.corrupt_from_offset(), Some(6));
        assert!(outcome.log.corrupt_region_at(7).is_some());
        assert!(outcome.log.corrupt_region_at(9).is_none());
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            full as u64,
            "torn tail was cut off"
        );
    }
}
