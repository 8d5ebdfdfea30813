//! The transactional producer's calls to its transaction coordinator
//! (ADR 0016 §2): `InitProducerId` and `EndTransaction`, found through
//! `FindCoordinator` (kind TRANSACTION) and retried while the coordinator
//! moves or the id's previous transaction completes.

use crate::cluster::{backoff, Cluster};
use crate::ClientError;
use sluice_proto::v1::{EndTransactionRequest, InitProducerIdRequest};
use sluice_proto::{ErrorCode, SluiceError};
use std::future::Future;
use std::time::{Duration, Instant};

/// Whether a coordinator call is worth repeating (after finding the
/// coordinator again): it moved, is starting, or the id's previous
/// transaction is still completing.
fn moving(error: &ClientError) -> bool {
    match error {
        ClientError::Server(error) => {
            error.is_retriable()
                || matches!(
                    error.code,
                    ErrorCode::NotCoordinator | ErrorCode::ConcurrentTransactions
                )
        }
        ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
        _ => false,
    }
}

/// Calls the coordinator of `id` until it answers something final or
/// `bound` passes (then the last error, a retriable one).
pub(crate) async fn at_coordinator<T, F, Fut>(
    cluster: &Cluster,
    id: &str,
    what: &str,
    bound: Duration,
    call: F,
) -> Result<T, ClientError>
where
    F: Fn(crate::cluster::BrokerGrpc) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + bound;
    let mut attempt = 0;
    loop {
        let result = match cluster.find_transaction_coordinator(id).await {
            Ok(address) => match cluster.broker(&address) {
                Ok(client) => cluster.unary(what, &address, call(client)).await,
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match result {
            Err(error) if moving(&error) && Instant::now() < deadline => {
                tracing::debug!(%error, attempt, what, "transaction coordinator call failed; retrying");
                tokio::time::sleep(backoff(attempt, 50, 1_000)).await;
                attempt += 1;
            }
            Err(error) if moving(&error) => {
                return Err(ClientError::Timeout {
                    what: format!(
                        "{what} for transactional id '{id}' (last error: {error}); call it again"
                    ),
                    timeout_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
                })
            }
            result => return result,
        }
    }
}

fn epoch(what: &str, producer_id: i64, epoch: i32) -> Result<(i64, i16), ClientError> {
    let epoch = i16::try_from(epoch).map_err(|_| {
        ClientError::Server(SluiceError::new(
            ErrorCode::Internal,
            format!("{what} answered epoch {epoch}, beyond the batch format's range"),
        ))
    })?;
    Ok((producer_id, epoch))
}

/// `InitProducerId(id)`: this instance's `(producer_id, epoch)`; fences
/// every older instance of `id`.
pub(super) async fn init(
    cluster: &Cluster,
    id: &str,
    timeout_ms: u64,
    bound: Duration,
) -> Result<(i64, i16), ClientError> {
    let request = InitProducerIdRequest {
        transactional_id: id.to_string(),
        transaction_timeout_ms: timeout_ms,
    };
    let answer = at_coordinator(cluster, id, "InitProducerId", bound, |mut client| {
        let request = request.clone();
        async move { client.init_producer_id(request).await }
    })
    .await?;
    epoch("InitProducerId", answer.producer_id, answer.producer_epoch)
}

/// `EndTransaction` of `(producer_id, epoch)`: the next `(producer_id,
/// epoch)` (every end bumps the epoch; a retried end gets the same answer).
pub(super) async fn end(
    cluster: &Cluster,
    id: &str,
    (producer_id, producer_epoch): (i64, i16),
    commit: bool,
    bound: Duration,
) -> Result<(i64, i16), ClientError> {
    let request = EndTransactionRequest {
        transactional_id: id.to_string(),
        producer_id,
        producer_epoch: i32::from(producer_epoch),
        commit,
    };
    let answer = at_coordinator(cluster, id, "EndTransaction", bound, |mut client| {
        let request = request.clone();
        async move { client.end_transaction(request).await }
    })
    .await?;
    epoch("EndTransaction", answer.producer_id, answer.producer_epoch)
}
