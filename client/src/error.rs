//! The one error type of the SDK, and the one place a `tonic::Status` is
//! turned into it.

use sluice_proto::{ErrorCode, SluiceError};

/// Everything that can go wrong in the SDK.
///
/// ```
/// use sluice_client::ClientError;
/// use sluice_client::{ErrorCode, SluiceError};
///
/// let error = ClientError::Server(SluiceError::new(ErrorCode::NotOwner, "moved"));
/// assert!(error.is_retriable());
/// assert_eq!(error.code(), Some(ErrorCode::NotOwner));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A server answered with a Sluice error code.
    #[error("server error: {0}")]
    Server(SluiceError),
    /// Could not talk to `address` at all.
    #[error("cannot reach {address}: {message} (is the server running and the address right?)")]
    Transport {
        /// The server's address as the client dialled it.
        address: String,
        /// What the transport said.
        message: String,
    },
    /// No bootstrap nameserver answered.
    #[error("no nameserver answered (tried {}): {last}; check `bootstrap` in the client config and that a nameserver is running", tried.join(", "))]
    NoNameserver {
        /// Every bootstrap address tried, in order.
        tried: Vec<String>,
        /// The last error seen.
        last: String,
    },
    /// The caller passed something impossible.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `what` did not finish within `timeout_ms`.
    #[error("{what} timed out after {timeout_ms} ms")]
    Timeout {
        /// The operation that timed out.
        what: String,
        /// The timeout that passed, in milliseconds.
        timeout_ms: u64,
    },
    /// The producer or consumer was closed.
    #[error("the client is closed")]
    Closed,
    /// Data from the server could not be decoded (corrupt batch).
    #[error("cannot decode data from the server: {0}")]
    Decode(String),
    /// A stored batch whose records cannot be decoded (a poison batch a
    /// producer wrote past an older broker, or straight to a store): it
    /// takes the offsets `base_offset..end_offset` of `topic`/`partition`
    /// and reading it again gives the same error. The consumer stops the
    /// partition at it (after every record before it), unless
    /// `ConsumerConfig::on_corrupt_batch` skips such batches; to go on,
    /// seek the partition to `end_offset`.
    #[error("{topic}/{partition}: the batch at offsets {base_offset}..{end_offset} cannot be decoded ({reason}); seek to {end_offset} to skip it")]
    CorruptBatch {
        /// The topic of the batch.
        topic: String,
        /// The partition of the batch.
        partition: u32,
        /// Offset of the batch's first record.
        base_offset: u64,
        /// One past the batch's last offset: where to seek to skip it.
        end_offset: u64,
        /// Why it cannot be decoded.
        reason: String,
    },
    /// Another instance of this transactional producer took its id (ADR
    /// 0016): fatal; stop and drop this producer, it refuses every call.
    #[error(
        "producer fenced: {0}; another instance took this transactional id: stop this producer"
    )]
    ProducerFenced(String),
    /// The open transaction cannot commit: call `abort_transaction`, then
    /// redo its work in a new transaction.
    #[error("the transaction cannot commit ({reason}): abort it and redo it")]
    TransactionAbortable {
        /// Why it cannot commit.
        reason: String,
    },
    /// The record's transaction was aborted before the record was sent:
    /// it was never written.
    #[error("the transaction was aborted before this record was sent; it was not written")]
    TransactionAborted,
    /// A transactional call out of order (commit without begin, a send
    /// outside a transaction, begin twice, concurrent begin/commit).
    #[error("invalid transaction state: {0}")]
    InvalidTransactionState(String),
    /// Offsets `start_offset..end_offset` of `topic`/`partition` lie in a
    /// range an operator accepted as lost (`sluice partition recover
    /// --accept-data-loss`): they will never be readable. Returned under
    /// `ConsumerConfig::on_data_loss = Fail` (the default skips them);
    /// `start_offset` is where this consumer was reading (the range's start
    /// when it read up to it). The partition stops; seek it to
    /// `end_offset` to go on.
    #[error("{topic}/{partition}: offsets {start_offset}..{end_offset} were accepted as lost and will never be readable; seek to {end_offset} to go on")]
    DataLost {
        /// The topic of the lost range.
        topic: String,
        /// The partition of the lost range.
        partition: u32,
        /// The first offset that could not be read.
        start_offset: u64,
        /// One past the lost range: where readable data resumes.
        end_offset: u64,
    },
}

impl ClientError {
    /// The Sluice error code, for server errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code),
            ClientError::DataLost { .. } => Some(ErrorCode::DataLost),
            ClientError::ProducerFenced(_) => Some(ErrorCode::ProducerFenced),
            ClientError::TransactionAbortable { .. } => Some(ErrorCode::TransactionAbortable),
            ClientError::InvalidTransactionState(_) => Some(ErrorCode::InvalidTransactionState),
            _ => None,
        }
    }

    /// A throttled request's wait before retrying, in milliseconds, as the
    /// server said (at most `sluice_proto::error::MAX_RETRY_AFTER_MS`).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ClientError::Server(error) if error.code == ErrorCode::Throttled => {
                error.retry_after_ms
            }
            _ => None,
        }
    }

    /// True when a retry (after refreshing routes or backing off) can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server(error) => error.is_retriable(),
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            ClientError::NoNameserver { .. }
            | ClientError::InvalidArgument(_)
            | ClientError::Closed
            | ClientError::Decode(_)
            | ClientError::CorruptBatch { .. }
            | ClientError::DataLost { .. }
            | ClientError::ProducerFenced(_)
            | ClientError::TransactionAbortable { .. }
            | ClientError::TransactionAborted
            | ClientError::InvalidTransactionState(_) => false,
        }
    }

    /// Worth an immediate retry of the same call: routes are stale, or a
    /// quota throttled it (and its wait was already waited out).
    pub(crate) fn retry_soon(&self) -> bool {
        self.needs_route_refresh() || self.retry_after_ms().is_some()
    }

    /// True when the error suggests cached routes are stale.
    pub(crate) fn needs_route_refresh(&self) -> bool {
        match self {
            ClientError::Server(error) => matches!(
                error.code,
                ErrorCode::NotOwner
                    | ErrorCode::Unavailable
                    | ErrorCode::UnknownPartition
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Fenced
                    | ErrorCode::SegmentSealed
                    | ErrorCode::OutcomeUnknown
            ),
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Converts the status of a call to `address`. Statuses without a Sluice
    /// code that look like connection failures become [`ClientError::Transport`].
    pub(crate) fn from_status(address: &str, status: &tonic::Status) -> Self {
        let has_sluice_code = status
            .metadata()
            .get(sluice_proto::error::ERROR_CODE_METADATA_KEY)
            .is_some();
        if !has_sluice_code
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            )
        {
            return ClientError::Transport {
                address: address.to_string(),
                message: status_text(status),
            };
        }
        Self::from_server(SluiceError::from_status(status))
    }

    /// A server's error, as the transaction variants for their codes.
    pub(crate) fn from_server(error: SluiceError) -> Self {
        match error.code {
            ErrorCode::ProducerFenced => ClientError::ProducerFenced(error.message),
            ErrorCode::TransactionAbortable => ClientError::TransactionAbortable {
                reason: error.message,
            },
            ErrorCode::InvalidTransactionState => {
                ClientError::InvalidTransactionState(error.message)
            }
            _ => ClientError::Server(error),
        }
    }

    /// [`ClientError::from_code`] with the wait a throttled item was told
    /// (0: none).
    pub(crate) fn from_code_with_wait(
        code: i32,
        message: impl Into<String>,
        retry_after_ms: u64,
    ) -> Option<Self> {
        match Self::from_code(code, message)? {
            ClientError::Server(error) if retry_after_ms > 0 => Some(ClientError::Server(
                error.with_retry_after_ms(retry_after_ms),
            )),
            other => Some(other),
        }
    }

    /// A per-item error code inside a response.
    pub(crate) fn from_code(code: i32, message: impl Into<String>) -> Option<Self> {
        let code = ErrorCode::try_from(code).unwrap_or(ErrorCode::Internal);
        if code == ErrorCode::None {
            None
        } else {
            Some(Self::from_server(SluiceError::new(code, message)))
        }
    }
}

/// A status's message and the causes under it (a transport failure's
/// message alone is "transport error").
fn status_text(status: &tonic::Status) -> String {
    let message = status.message().to_string();
    match std::error::Error::source(status).map(error_chain) {
        Some(chain) if !chain.is_empty() && !message.contains(&chain) => {
            format!("{message}: {chain}")
        }
        _ => message,
    }
}

/// `error` and each of its sources, as one line, repeats left out: a
/// transport error's own text is only "transport error"; its cause (a
/// refused certificate, a reset connection) is in the chain.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_without_code_is_transport() {
        let error = ClientError::from_status("http://b:1", &tonic::Status::unavailable("refused"));
        assert!(matches!(error, ClientError::Transport { .. }));
        assert!(error.is_retriable());
        assert!(error.to_string().contains("http://b:1"));
    }

    #[test]
    fn status_with_code_is_server() {
        let status: tonic::Status = SluiceError::new(ErrorCode::TooLarge, "big").into();
        let error = ClientError::from_status("a", &status);
        assert_eq!(error.code(), Some(ErrorCode::TooLarge));
        assert!(!error.is_retriable());
    }

    #[test]
    fn transaction_codes_become_their_variants() {
        let fenced =
            ClientError::from_code(ErrorCode::ProducerFenced as i32, "epoch 4").expect("an error");
        assert!(matches!(fenced, ClientError::ProducerFenced(_)));
        assert_eq!(fenced.code(), Some(ErrorCode::ProducerFenced));
        assert!(!fenced.is_retriable());
        let status: tonic::Status =
            SluiceError::new(ErrorCode::TransactionAbortable, "expired").into();
        let abortable = ClientError::from_status("a", &status);
        assert!(matches!(
            abortable,
            ClientError::TransactionAbortable { .. }
        ));
        assert!(abortable.to_string().contains("abort it"));
        let status: tonic::Status =
            SluiceError::new(ErrorCode::ConcurrentTransactions, "ending").into();
        assert!(ClientError::from_status("a", &status).is_retriable());
        let status: tonic::Status =
            SluiceError::new(ErrorCode::UnstableOffsetCommit, "pending").into();
        assert!(ClientError::from_status("a", &status).is_retriable());
    }

    #[test]
    fn item_codes() {
        assert!(ClientError::from_code(0, "").is_none());
        assert_eq!(
            ClientError::from_code(ErrorCode::NotOwner as i32, "x").and_then(|error| error.code()),
            Some(ErrorCode::NotOwner)
        );
    }
}
