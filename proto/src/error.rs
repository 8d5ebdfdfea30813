//! Stable error codes and the single mapping between them and
//! `tonic::Status`.
//!
//! A service converts its own error enum into a [`SluiceError`]; this module
//! turns that into a `Status` with the matching gRPC code and the stable
//! Sluice code in the `sluice-error-code` metadata entry. Clients read it
//! back with [`SluiceError::from_status`] and decide whether to refresh
//! routes, back off, or give up.

pub use crate::v1::ErrorCode;
use std::fmt;
use tonic::metadata::MetadataValue;

/// Metadata key carrying the stable error code name.
pub const ERROR_CODE_METADATA_KEY: &str = "sluice-error-code";

/// Metadata key carrying how long a throttled client must wait before
/// retrying, in milliseconds (decimal).
pub const RETRY_AFTER_METADATA_KEY: &str = "sluice-retry-after-ms";

/// Longest wait a client honours from [`RETRY_AFTER_METADATA_KEY`], in
/// milliseconds: a larger value (a broken or hostile server) is cut to it.
pub const MAX_RETRY_AFTER_MS: u64 = 300_000;

/// An error with a stable code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SluiceError {
    pub code: ErrorCode,
    pub message: String,
    /// THROTTLED by a quota: wait this long, in milliseconds, then retry
    /// (at most [`MAX_RETRY_AFTER_MS`]).
    pub retry_after_ms: Option<u64>,
}

impl SluiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The same error telling the client to wait `wait_ms` before retrying.
    pub fn with_retry_after_ms(mut self, wait_ms: u64) -> Self {
        self.retry_after_ms = Some(wait_ms.min(MAX_RETRY_AFTER_MS));
        self
    }

    /// Reads the Sluice code from a status; statuses that do not carry one
    /// (transport failures, other servers) are classified by gRPC code.
    pub fn from_status(status: &tonic::Status) -> Self {
        let code = status
            .metadata()
            .get(ERROR_CODE_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(ErrorCode::from_str_name)
            .unwrap_or_else(|| match status.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled => ErrorCode::Unavailable,
                tonic::Code::DeadlineExceeded => ErrorCode::Timeout,
                tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
                tonic::Code::NotFound => ErrorCode::UnknownTopic,
                tonic::Code::ResourceExhausted => ErrorCode::TooLarge,
                _ => ErrorCode::Internal,
            });
        let retry_after_ms = status
            .metadata()
            .get(RETRY_AFTER_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .map(|wait_ms| wait_ms.min(MAX_RETRY_AFTER_MS));
        Self {
            code,
            message: status.message().to_string(),
            retry_after_ms,
        }
    }

    /// True for errors that a retry (possibly after a route refresh) can
    /// cure.
    pub fn is_retriable(&self) -> bool {
        self.code.is_retriable()
    }
}

impl ErrorCode {
    /// The gRPC status code this Sluice code travels under.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorCode::None => Code::Ok,
            ErrorCode::Internal => Code::Internal,
            ErrorCode::NotOwner | ErrorCode::NotCoordinator | ErrorCode::OutOfOrderSequence => {
                Code::FailedPrecondition
            }
            ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::UnknownMember
            | ErrorCode::UnknownSegment
            | ErrorCode::UnknownGroup
            | ErrorCode::UnknownSubscription
            | ErrorCode::UnknownMessage => Code::NotFound,
            ErrorCode::TooLarge => Code::ResourceExhausted,
            ErrorCode::CorruptBatch | ErrorCode::InvalidArgument | ErrorCode::InvalidSelector => {
                Code::InvalidArgument
            }
            ErrorCode::SubscriptionConflict => Code::AlreadyExists,
            ErrorCode::ConsumerBusy => Code::ResourceExhausted,
            ErrorCode::DeliveryExpired => Code::Aborted,
            ErrorCode::Throttled | ErrorCode::BacklogQuotaExceeded => Code::ResourceExhausted,
            ErrorCode::OffsetOutOfRange => Code::OutOfRange,
            ErrorCode::TopicAlreadyExists => Code::AlreadyExists,
            ErrorCode::StaleMemberEpoch
            | ErrorCode::Fenced
            | ErrorCode::SegmentSealed
            | ErrorCode::SessionExpired
            | ErrorCode::Conflict
            | ErrorCode::DuplicateInFlight => Code::Aborted,
            ErrorCode::Unavailable
            | ErrorCode::NotEnoughStores
            | ErrorCode::ShuttingDown
            | ErrorCode::OutcomeUnknown => Code::Unavailable,
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::StorageCorrupt | ErrorCode::DataLost => Code::DataLoss,
            ErrorCode::NotAuthorized => Code::PermissionDenied,
            ErrorCode::NotAuthenticated | ErrorCode::CredentialsExpired => Code::Unauthenticated,
            ErrorCode::TransactionAbortable => Code::Aborted,
            ErrorCode::InvalidTransactionState | ErrorCode::GroupNotEmpty => {
                Code::FailedPrecondition
            }
            ErrorCode::ConcurrentTransactions | ErrorCode::UnstableOffsetCommit => {
                Code::Unavailable
            }
            ErrorCode::ProducerFenced => Code::FailedPrecondition,
        }
    }

    /// True when retrying (after refreshing routes or backing off) can
    /// succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotOwner
                | ErrorCode::NotCoordinator
                | ErrorCode::Throttled
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::Fenced
                | ErrorCode::SegmentSealed
                | ErrorCode::NotEnoughStores
                | ErrorCode::ShuttingDown
                | ErrorCode::Conflict
                | ErrorCode::UnknownPartition
                | ErrorCode::DuplicateInFlight
                | ErrorCode::OutcomeUnknown
                | ErrorCode::CredentialsExpired
                | ErrorCode::ConcurrentTransactions
                | ErrorCode::UnstableOffsetCommit
        )
    }
}

impl From<SluiceError> for tonic::Status {
    fn from(error: SluiceError) -> Self {
        let mut status = tonic::Status::new(error.code.grpc_code(), error.message);
        status.metadata_mut().insert(
            ERROR_CODE_METADATA_KEY,
            MetadataValue::from_static(error.code.as_str_name()),
        );
        if let Some(wait_ms) = error.retry_after_ms {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_METADATA_KEY, MetadataValue::from(wait_ms));
        }
        status
    }
}

impl fmt::Display for SluiceError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.message, self.code.as_str_name())
    }
}

impl std::error::Error for SluiceError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_survives_a_round_trip_through_status() {
        for code in [
            ErrorCode::NotOwner,
            ErrorCode::UnknownTopic,
            ErrorCode::TooLarge,
            ErrorCode::CorruptBatch,
            ErrorCode::Throttled,
            ErrorCode::StorageCorrupt,
            ErrorCode::OutOfOrderSequence,
            ErrorCode::DuplicateInFlight,
            ErrorCode::UnknownSubscription,
            ErrorCode::SubscriptionConflict,
            ErrorCode::ConsumerBusy,
            ErrorCode::InvalidSelector,
            ErrorCode::UnknownMessage,
            ErrorCode::DeliveryExpired,
            ErrorCode::BacklogQuotaExceeded,
            ErrorCode::DataLost,
            ErrorCode::NotAuthorized,
            ErrorCode::TransactionAbortable,
            ErrorCode::InvalidTransactionState,
            ErrorCode::ConcurrentTransactions,
            ErrorCode::ProducerFenced,
            ErrorCode::UnstableOffsetCommit,
            ErrorCode::NotAuthenticated,
            ErrorCode::CredentialsExpired,
            ErrorCode::GroupNotEmpty,
        ] {
            let status: tonic::Status = SluiceError::new(code, "why").into();
            let back = SluiceError::from_status(&status);
            assert_eq!(back.code, code);
            assert_eq!(back.message, "why");
        }
    }

    #[test]
    fn the_wait_of_a_throttled_request_survives_a_round_trip_and_is_bounded() {
        let status: tonic::Status = SluiceError::new(ErrorCode::Throttled, "slow down")
            .with_retry_after_ms(1234)
            .into();
        let back = SluiceError::from_status(&status);
        assert_eq!(back.code, ErrorCode::Throttled);
        assert_eq!(back.retry_after_ms, Some(1234));
        let plain: tonic::Status = SluiceError::new(ErrorCode::Throttled, "x").into();
        assert_eq!(SluiceError::from_status(&plain).retry_after_ms, None);
        for (written, read) in [
            ("99999999999999999999", None),
            ("-5", None),
            ("soon", None),
            ("400000", Some(MAX_RETRY_AFTER_MS)),
        ] {
            let mut status = tonic::Status::resource_exhausted("x");
            status.metadata_mut().insert(
                RETRY_AFTER_METADATA_KEY,
                MetadataValue::try_from(written).expect("ascii"),
            );
            assert_eq!(
                SluiceError::from_status(&status).retry_after_ms,
                read,
                "{written}"
            );
        }
    }

    #[test]
    fn backlog_quota_exceeded_is_not_retried_by_clients() {
        // The application decides what to do with a rejected batch; an
        // automatic retry would turn REJECT into an unbounded HOLD.
        assert!(!ErrorCode::BacklogQuotaExceeded.is_retriable());
    }

    #[test]
    fn data_lost_travels_as_data_loss_and_is_not_retried() {
        // Retrying a read of an accepted loss gives the same answer
        // forever: the reader must move on to `lost_end_offset`.
        assert!(!ErrorCode::DataLost.is_retriable());
        assert_eq!(ErrorCode::DataLost.grpc_code(), tonic::Code::DataLoss);
        let status: tonic::Status = SluiceError::new(ErrorCode::DataLost, "lost").into();
        let back = SluiceError::from_status(&status);
        assert_eq!(back.code, ErrorCode::DataLost);
        assert!(!back.is_retriable());
    }

    #[test]
    fn foreign_status_is_classified_by_grpc_code() {
        let back = SluiceError::from_status(&tonic::Status::unavailable("down"));
        assert_eq!(back.code, ErrorCode::Unavailable);
        assert!(back.is_retriable());
    }
}
