//! The nameserver's error type and its single mapping to [`SluiceError`]
//! (and so to `tonic::Status`).

use crate::metadata::MetadataError;
use sluice_proto::{ErrorCode, SluiceError};

#[derive(Debug, thiserror::Error)]
pub enum NameServerError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("unknown segment {segment_id} in {topic}/{partition}")]
    UnknownSegment {
        topic: String,
        partition: u32,
        segment_id: u64,
    },
    #[error("topic {topic:?} has no subscription {name:?}")]
    UnknownSubscription { topic: String, name: String },
    /// The subscription exists with other settings; `differences` names
    /// each differing field with the stored and the requested value.
    #[error("subscription {name:?} of topic {topic:?} already exists with other settings: {differences}")]
    SubscriptionConflict {
        topic: String,
        name: String,
        differences: String,
    },
    /// The selector does not parse; the message carries the column.
    /// `expression` is already quoted (and cut when long).
    #[error("invalid selector {expression}: {reason}")]
    InvalidSelector { expression: String, reason: String },
    #[error("topic {topic:?} already has {limit} subscriptions, the limit (max_subscriptions_per_topic)")]
    TooManySubscriptions { topic: String, limit: u32 },
    #[error("topic {0:?} already exists")]
    TopicAlreadyExists(String),
    #[error("{needed} stores needed but {live} live")]
    NotEnoughStores { needed: u32, live: u32 },
    #[error("epoch {given} of {topic}/{partition} is not current (current {current})")]
    Fenced {
        topic: String,
        partition: u32,
        given: u64,
        current: u64,
    },
    #[error("session {0} expired or unknown: register again")]
    SessionExpired(u64),
    #[error("metadata changed concurrently: {0}")]
    Conflict(String),
    #[error("too many {what} (limit {limit})")]
    Throttled { what: &'static str, limit: u32 },
    #[error("corrupt metadata at {key:?}: {reason}")]
    CorruptValue { key: String, reason: String },
    #[error("refused: {0}")]
    Refused(String),
    /// The principal may not do this (audit-logged where raised).
    #[error("{0}")]
    NotAuthorized(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<NameServerError> for SluiceError {
    fn from(error: NameServerError) -> Self {
        let code = match &error {
            NameServerError::Metadata(MetadataError::Unavailable(_)) => ErrorCode::Unavailable,
            NameServerError::Metadata(MetadataError::Conflict(_)) => ErrorCode::Conflict,
            NameServerError::Metadata(MetadataError::Corrupt(_)) => ErrorCode::Internal,
            NameServerError::Metadata(MetadataError::LeaseExpired(_)) => ErrorCode::SessionExpired,
            NameServerError::InvalidArgument(_) | NameServerError::Refused(_) => {
                ErrorCode::InvalidArgument
            }
            NameServerError::NotAuthorized(_) => ErrorCode::NotAuthorized,
            NameServerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            NameServerError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            NameServerError::UnknownSegment { .. } => ErrorCode::UnknownSegment,
            NameServerError::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            NameServerError::UnknownSubscription { .. } => ErrorCode::UnknownSubscription,
            NameServerError::SubscriptionConflict { .. } => ErrorCode::SubscriptionConflict,
            NameServerError::InvalidSelector { .. } => ErrorCode::InvalidSelector,
            NameServerError::TooManySubscriptions { .. } => ErrorCode::InvalidArgument,
            NameServerError::NotEnoughStores { .. } => ErrorCode::NotEnoughStores,
            NameServerError::Fenced { .. } => ErrorCode::Fenced,
            NameServerError::SessionExpired(_) => ErrorCode::SessionExpired,
            NameServerError::Conflict(_) => ErrorCode::Conflict,
            NameServerError::Throttled { .. } => ErrorCode::Throttled,
            NameServerError::CorruptValue { .. }
            | NameServerError::Config(_)
            | NameServerError::Transport(_)
            | NameServerError::Io(_) => ErrorCode::Internal,
        };
        SluiceError::new(code, error.to_string())
    }
}

impl From<NameServerError> for tonic::Status {
    fn from(error: NameServerError) -> Self {
        tonic::Status::from(SluiceError::from(error))
    }
}
