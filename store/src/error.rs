//! The store's error enum and its one conversion to [`SluiceError`] (and so
//! to `tonic::Status`).

use sluice_proto::batch::BatchError;
use sluice_proto::{ErrorCode, SluiceError};
use std::path::PathBuf;

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("segment {segment_id} is unknown")]
    UnknownSegment { segment_id: u64 },
    #[error("segment {segment_id} already exists with different identity: {detail}")]
    SegmentConflict { segment_id: u64, detail: String },
    #[error("segment {segment_id} is sealed")]
    SegmentSealed { segment_id: u64 },
    #[error("segment {segment_id}: writer epoch {given} is fenced by epoch {fence_epoch}")]
    Fenced {
        segment_id: u64,
        given: u64,
        fence_epoch: u64,
    },
    #[error(
        "segment {segment_id}: batch base offset {given} does not match the segment end {expected}"
    )]
    WrongBaseOffset {
        segment_id: u64,
        expected: u64,
        given: u64,
    },
    #[error("segment {segment_id}: offset {offset} is outside [{base_offset}, {end_offset})")]
    OffsetOutOfRange {
        segment_id: u64,
        offset: u64,
        base_offset: u64,
        end_offset: u64,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(BatchError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("segment {segment_id}: data at offset {offset} is damaged: {detail}")]
    StorageCorrupt {
        segment_id: u64,
        offset: u64,
        detail: String,
    },
    /// The segment as a whole cannot take the request: its metadata is
    /// unusable, or (for writer appends) it has damaged ranges.
    #[error("segment {segment_id} is damaged: {detail}")]
    SegmentDamaged { segment_id: u64, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The process's (or the system's) limit of open files refused an
    /// open this request needed; retriable once files are closed.
    #[error("{context}: the limit of open files is reached ({source}); retry later, or raise the limit (RLIMIT_NOFILE) or lower max_open_segment_files")]
    FileLimit {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage failed: {0}")]
    Failed(String),
    /// The write path failed and is recovering by itself (see
    /// `storage/healer.rs`); nothing of this request was written.
    #[error("writes are suspended while the store recovers from an I/O failure ({0}); retry")]
    WritesSuspended(String),
    /// An I/O failure hit this write after its journal record was written:
    /// it may be stored, and is visible after the store recovered if so.
    #[error("outcome unknown: {0}; the write is visible after the store recovers if it reached the disk")]
    OutcomeUnknown(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("too much work in flight: {0}")]
    Throttled(String),
    #[error("cannot bind or serve on {address}: {reason}")]
    Serve { address: String, reason: String },
    #[error("data directory {path} is unusable: {reason}")]
    DataDirectory { path: PathBuf, reason: String },
}

impl StoreError {
    /// Wraps an I/O error with what was being done; the limit of open
    /// files becomes [`StoreError::FileLimit`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if matches!(
            source.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE)
        ) {
            return StoreError::FileLimit {
                context: context.into(),
                source,
            };
        }
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// The stable code this error travels under.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::UnknownSegment { .. } => ErrorCode::UnknownSegment,
            StoreError::SegmentConflict { .. } => ErrorCode::Conflict,
            StoreError::SegmentSealed { .. } => ErrorCode::SegmentSealed,
            StoreError::Fenced { .. } => ErrorCode::Fenced,
            StoreError::WrongBaseOffset { .. } | StoreError::InvalidArgument(_) => {
                ErrorCode::InvalidArgument
            }
            StoreError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            StoreError::InvalidBatch(BatchError::TooLarge { .. }) => ErrorCode::TooLarge,
            StoreError::InvalidBatch(_) => ErrorCode::CorruptBatch,
            StoreError::StorageCorrupt { .. } | StoreError::SegmentDamaged { .. } => {
                ErrorCode::StorageCorrupt
            }
            StoreError::Io { .. }
            | StoreError::Failed(_)
            | StoreError::Serve { .. }
            | StoreError::DataDirectory { .. } => ErrorCode::Internal,
            StoreError::ShuttingDown => ErrorCode::ShuttingDown,
            StoreError::WritesSuspended(_) | StoreError::FileLimit { .. } => ErrorCode::Unavailable,
            StoreError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            StoreError::Throttled(_) => ErrorCode::Throttled,
        }
    }
}

impl From<StoreError> for SluiceError {
    fn from(error: StoreError) -> Self {
        SluiceError::new(error.code(), error.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(error: StoreError) -> Self {
        SluiceError::from(error).into()
    }
}
