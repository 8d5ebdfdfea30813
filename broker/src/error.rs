//! The broker's error type and its one mapping to `SluiceError` (and so to
//! `tonic::Status` and per-item `ErrorCode`s).

use sluice_proto::batch::BatchError;
use sluice_proto::{ErrorCode, SluiceError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("this broker does not serve {topic}/{partition}")]
    NotOwner { topic: String, partition: u32 },
    #[error("partition {topic}/{partition} is recovering; retry shortly")]
    Recovering { topic: String, partition: u32 },
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("invalid batch: {0}")]
    Batch(BatchError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("offset {offset} is outside [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        high_watermark: u64,
    },
    /// Names what it is not the coordinator of: `group "g"`, `transactional id "t"`.
    #[error("this broker is not the coordinator of {0}")]
    NotCoordinator(String),
    #[error("unknown member {member_id:?} of group {group:?}")]
    UnknownMember { group: String, member_id: String },
    #[error("group {group:?} has {members} member(s); stop its consumers (and wait for their sessions to end) first")]
    GroupNotEmpty { group: String, members: usize },
    #[error("group {0:?} has no committed offsets here (unknown group)")]
    UnknownGroup(String),
    #[error("member {member_id:?} has epoch {current}, request carried {requested}")]
    StaleMemberEpoch {
        member_id: String,
        current: i64,
        requested: i64,
    },
    /// A transactional commit names a partition the member is not granted
    /// now (ADR 0016 §5); answered as STALE_MEMBER_EPOCH.
    #[error("{0}")]
    NotGranted(String),
    #[error("{0}")]
    Throttled(String),
    #[error("earlier request for {topic}/{partition} on this stream failed; retry in order")]
    EarlierRequestFailed { topic: String, partition: u32 },
    #[error("{context}: {error}")]
    Remote { context: String, error: SluiceError },
    #[error("{0} timed out")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("cannot serve: {0}")]
    Transport(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// An idempotent producer resent a batch whose original is still being
    /// appended.
    #[error("{0}")]
    DuplicateInFlight(String),
    /// An idempotent producer's batch does not fit its sequence.
    #[error("out of order sequence: {0}")]
    OutOfOrderSequence(String),
    #[error("{0}")]
    ConsumerBusy(String),
    #[error("{0}")]
    InvalidSelector(String),
    /// A subscription cursor from an older ownership epoch.
    #[error("{0}")]
    CursorFenced(String),
    /// A range of the partition's log is damaged on every copy: it does
    /// not serve until an operator decides (`sluice partition recover`).
    /// The message names the segment, stores, range and command.
    #[error("{0}")]
    PartitionOffline(String),
    /// An append was sent to the stores but failed before an ack quorum
    /// made it durable (the pipeline failed or the partition stopped):
    /// recovery may or may not make it part of the log, at the offset it
    /// was given. Retriable; an idempotent producer's retry finds it.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The offset lies in `[start, end)` of the partition's log, which an
    /// operator accepted as lost: nothing is read from the stores, and a
    /// reader resumes at `end`.
    #[error("offsets {start}..{end} of {topic}/{partition} were accepted as lost (no copy held them intact; `sluice partition recover --accept-data-loss`); readable data resumes at offset {end}")]
    DataLost {
        topic: String,
        partition: u32,
        start: u64,
        end: u64,
    },
    /// An error decided elsewhere in this broker, passed on with its code.
    #[error("{}", .0.message)]
    Relayed(SluiceError),
    /// ADR 0016: the producer's transaction cannot go on here.
    #[error("transaction abortable: {0}")]
    TransactionAbortable(String),
    /// ADR 0016: out of order for the transaction's state.
    #[error("invalid transaction state: {0}")]
    InvalidTransactionState(String),
    /// ADR 0016: a previous transaction or a marker is still completing.
    #[error("{0}")]
    ConcurrentTransactions(String),
    /// ADR 0016: another instance took the transactional id.
    #[error("{0}")]
    ProducerFenced(String),
}

impl BrokerError {
    /// Wraps a status from a nameserver, store or broker we called.
    pub fn remote(context: impl Into<String>, status: &tonic::Status) -> Self {
        BrokerError::Remote {
            context: context.into(),
            error: SluiceError::from_status(status),
        }
    }

    /// The stable code this error travels under.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::NotOwner { .. } => ErrorCode::NotOwner,
            BrokerError::Recovering { .. } => ErrorCode::Unavailable,
            BrokerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            BrokerError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            BrokerError::Batch(BatchError::TooLarge { .. }) => ErrorCode::TooLarge,
            BrokerError::Batch(BatchError::KeylessRecord { .. }) => ErrorCode::InvalidArgument,
            BrokerError::Batch(_) => ErrorCode::CorruptBatch,
            BrokerError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            BrokerError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            BrokerError::NotCoordinator(_) => ErrorCode::NotCoordinator,
            BrokerError::UnknownMember { .. } => ErrorCode::UnknownMember,
            BrokerError::GroupNotEmpty { .. } => ErrorCode::GroupNotEmpty,
            BrokerError::UnknownGroup(_) => ErrorCode::UnknownGroup,
            BrokerError::StaleMemberEpoch { .. } | BrokerError::NotGranted(_) => {
                ErrorCode::StaleMemberEpoch
            }
            BrokerError::Throttled(_) => ErrorCode::Throttled,
            BrokerError::EarlierRequestFailed { .. } => ErrorCode::Unavailable,
            // Ownership errors from the nameserver or a fence from a store
            // mean someone else owns the partition now.
            BrokerError::Remote { error, .. } => match error.code {
                ErrorCode::Fenced | ErrorCode::Conflict | ErrorCode::SegmentSealed => {
                    ErrorCode::NotOwner
                }
                ErrorCode::None => ErrorCode::Internal,
                code if code.is_retriable() => code,
                // The nameserver's answers about subscriptions reach the
                // consumer as they are.
                code @ (ErrorCode::UnknownSubscription | ErrorCode::InvalidSelector) => code,
                ErrorCode::StorageCorrupt => ErrorCode::StorageCorrupt,
                _ => ErrorCode::Unavailable,
            },
            BrokerError::Timeout(_) => ErrorCode::Timeout,
            BrokerError::Unavailable(_) => ErrorCode::Unavailable,
            BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
            BrokerError::Transport(_) | BrokerError::Internal(_) => ErrorCode::Internal,
            BrokerError::DuplicateInFlight(_) => ErrorCode::DuplicateInFlight,
            BrokerError::OutOfOrderSequence(_) => ErrorCode::OutOfOrderSequence,
            BrokerError::ConsumerBusy(_) => ErrorCode::ConsumerBusy,
            BrokerError::InvalidSelector(_) => ErrorCode::InvalidSelector,
            BrokerError::CursorFenced(_) => ErrorCode::Fenced,
            BrokerError::PartitionOffline(_) => ErrorCode::StorageCorrupt,
            BrokerError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            BrokerError::DataLost { .. } => ErrorCode::DataLost,
            BrokerError::Relayed(error) => error.code,
            BrokerError::TransactionAbortable(_) => ErrorCode::TransactionAbortable,
            BrokerError::InvalidTransactionState(_) => ErrorCode::InvalidTransactionState,
            BrokerError::ConcurrentTransactions(_) => ErrorCode::ConcurrentTransactions,
            BrokerError::ProducerFenced(_) => ErrorCode::ProducerFenced,
        }
    }

    /// Where readable data resumes, for a read of an accepted loss.
    pub fn lost_end_offset(&self) -> Option<u64> {
        match self {
            BrokerError::DataLost { end, .. } => Some(*end),
            _ => None,
        }
    }

    /// How long a throttled client must wait, for a quota's refusal.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            BrokerError::Relayed(error) => error.retry_after_ms,
            _ => None,
        }
    }

    /// The code a remote peer answered with, if this came from one.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            BrokerError::Remote { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

impl From<BrokerError> for SluiceError {
    fn from(error: BrokerError) -> Self {
        let retry_after_ms = error.retry_after_ms();
        let mut converted = SluiceError::new(error.code(), error.to_string());
        converted.retry_after_ms = retry_after_ms;
        converted
    }
}

impl From<BrokerError> for tonic::Status {
    fn from(error: BrokerError) -> Self {
        SluiceError::from(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_errors_map_to_size_or_corruption() {
        let too_large = BrokerError::Batch(BatchError::TooLarge {
            length: 10,
            limit: 5,
        });
        assert_eq!(too_large.code(), ErrorCode::TooLarge);
        let bad_crc = BrokerError::Batch(BatchError::CrcMismatch {
            expected: 1,
            actual: 2,
        });
        assert_eq!(bad_crc.code(), ErrorCode::CorruptBatch);
    }

    #[test]
    fn a_read_of_an_accepted_loss_names_the_range_and_where_to_resume() {
        let error = BrokerError::DataLost {
            topic: "orders".into(),
            partition: 3,
            start: 40,
            end: 60,
        };
        assert_eq!(error.code(), ErrorCode::DataLost);
        assert_eq!(error.lost_end_offset(), Some(60));
        let message = error.to_string();
        assert!(message.contains("40..60"), "{message}");
        assert!(message.contains("orders/3"), "{message}");
        assert_eq!(BrokerError::ShuttingDown.lost_end_offset(), None);
    }

    #[test]
    fn store_fence_means_not_owner() {
        let status: tonic::Status = SluiceError::new(ErrorCode::Fenced, "newer epoch").into();
        assert_eq!(
            BrokerError::remote("append", &status).code(),
            ErrorCode::NotOwner
        );
    }
}
