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

/// An error with a stable code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SluiceError {
    pub code: ErrorCode,
    pub message: String,
}

impl SluiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
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
        Self {
            code,
            message: status.message().to_string(),
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
            ErrorCode::NotAuthenticated => Code::Unauthenticated,
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
            ErrorCode::NotAuthenticated,
        ] {
            let status: tonic::Status = SluiceError::new(code, "why").into();
            let back = SluiceError::from_status(&status);
            assert_eq!(back.code, code);
            assert_eq!(back.message, "why");
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
