//! Raw calls to transaction coordinators (ADR 0016 §2) for process tests:
//! the SDK's transactional producer is stage 3.

use crate::cluster::Cluster;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    CoordinatorKind, FindCoordinatorRequest, InitProducerIdRequest, InitProducerIdResponse,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::future::Future;
use std::time::{Duration, Instant};

/// Bound on waiting for a coordinator to serve (not a timing claim).
pub const COORDINATOR_WAIT: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(100);

/// `(broker id, address)` of the coordinator of transactional id `id`,
/// waiting while none serves; the nameserver's refusal otherwise.
pub async fn coordinator(cluster: &Cluster, id: &str) -> Result<(String, String), SluiceError> {
    let mut nameserver = NameServerClient::new(cluster.channel(&cluster.nameservers[0].url()));
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let found = nameserver
            .find_coordinator(FindCoordinatorRequest {
                kind: CoordinatorKind::Transaction as i32,
                key: id.to_string(),
                ..Default::default()
            })
            .await;
        let error = match found {
            Ok(found) => {
                let found = found.into_inner();
                if !found.broker_address.is_empty() {
                    return Ok((found.broker_id, found.broker_address));
                }
                SluiceError::new(
                    ErrorCode::Unavailable,
                    format!("no live coordinator of {id}"),
                )
            }
            Err(status) => SluiceError::from_status(&status),
        };
        if !error.is_retriable() || Instant::now() >= deadline {
            return Err(error);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Calls the coordinator of `id` until it answers something other than
/// "not here yet" (NOT_COORDINATOR, UNAVAILABLE, CONCURRENT_TRANSACTIONS).
pub async fn at_coordinator<T, F, Fut>(
    cluster: &Cluster,
    id: &str,
    call: F,
) -> Result<T, SluiceError>
where
    F: Fn(BrokerClient<tonic::transport::Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + COORDINATOR_WAIT;
    loop {
        let (_, address) = coordinator(cluster, id).await?;
        let error = match call(BrokerClient::new(cluster.channel(&address))).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status) => SluiceError::from_status(&status),
        };
        let moving = matches!(
            error.code,
            ErrorCode::NotCoordinator | ErrorCode::Unavailable | ErrorCode::ConcurrentTransactions
        );
        if !moving || Instant::now() >= deadline {
            return Err(error);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `InitProducerId(id)`: the producer id and epoch.
pub async fn init(cluster: &Cluster, id: &str, timeout_ms: u64) -> Result<(i64, i16), SluiceError> {
    let request = InitProducerIdRequest {
        transactional_id: id.to_string(),
        transaction_timeout_ms: timeout_ms,
    };
    let answer: InitProducerIdResponse = at_coordinator(cluster, id, |mut client| {
        let request = request.clone();
        async move { client.init_producer_id(request).await }
    })
    .await?;
    let epoch = i16::try_from(answer.producer_epoch).map_err(|_| {
        SluiceError::new(
            ErrorCode::Internal,
            format!("epoch {}", answer.producer_epoch),
        )
    })?;
    Ok((answer.producer_id, epoch))
}
