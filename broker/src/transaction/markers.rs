//! Delivering a decided transaction's markers (ADR 0016 §2.3): the
//! participants not yet acknowledged, grouped by their owner (from the
//! nameserver's routes), are sent as `WriteTxnMarkers` (at most
//! [`MAX_MARKERS_PER_REQUEST`] per request; this broker's own partitions
//! through the same `txn_markers` path without a network hop), retried
//! with a doubling backoff while this broker still coordinates the id and
//! the decision still waits. `UNKNOWN_TOPIC`/`UNKNOWN_PARTITION` count as
//! done (the partition is gone). Once every participant acknowledged, the
//! coordinator records Complete.
//!
//! [`pending_by_owner`] is the pure part: which participants go where.

use super::state::{Event, Participant, TxnMeta};
use crate::error::BrokerError;
use crate::txn_markers::MAX_MARKERS_PER_REQUEST;
use crate::Shared;
use futures::future::BoxFuture;
use sluice_proto::names::TransactionalId;
use sluice_proto::v1::{
    TopicPartitions, TopicRoute, TransactionParticipant, WriteTxnMarkersRequest,
};
use sluice_proto::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// First retry backoff, in ms; doubles up to [`MAX_BACKOFF_MS`].
pub const RETRY_BACKOFF_MS: u64 = 50;
/// Longest retry backoff, in ms.
pub const MAX_BACKOFF_MS: u64 = 1_000;
/// Timeout of one `WriteTxnMarkers` call to another broker, in ms.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Where the pending participants go: owner address (empty: this broker's
/// node id matched) → participants; plus those whose topic or partition no
/// longer exists (done) and those with no live owner now (retry).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routing {
    pub by_owner: BTreeMap<String, Vec<Participant>>,
    pub gone: Vec<Participant>,
    pub ownerless: Vec<Participant>,
}

/// Groups `pending` by the owner `routes` name; `local_id` is this broker.
pub fn pending_by_owner(
    pending: &BTreeSet<Participant>,
    routes: &[TopicRoute],
    local_id: &str,
) -> Routing {
    let mut routing = Routing::default();
    for participant in pending {
        let Some(route) = routes.iter().find(|route| route.topic == participant.topic) else {
            routing.ownerless.push(participant.clone());
            continue;
        };
        if route.error == ErrorCode::UnknownTopic as i32 {
            routing.gone.push(participant.clone());
            continue;
        }
        match route
            .partitions
            .iter()
            .find(|partition| partition.partition == participant.partition)
        {
            None if route.error == ErrorCode::None as i32 => routing.gone.push(participant.clone()),
            None => routing.ownerless.push(participant.clone()),
            Some(owner) if owner.broker_address.is_empty() => {
                routing.ownerless.push(participant.clone())
            }
            Some(owner) => {
                let address = if owner.broker_id == local_id {
                    String::new()
                } else {
                    owner.broker_address.clone()
                };
                routing
                    .by_owner
                    .entry(address)
                    .or_default()
                    .push(participant.clone());
            }
        }
    }
    routing
}

/// The requests carrying `participants`' markers, at most
/// [`MAX_MARKERS_PER_REQUEST`] partitions each.
pub fn requests(
    id: &TransactionalId,
    meta: &TxnMeta,
    participants: &[Participant],
) -> Vec<WriteTxnMarkersRequest> {
    participants
        .chunks(MAX_MARKERS_PER_REQUEST)
        .map(|chunk| {
            let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            let mut subscriptions = Vec::new();
            for participant in chunk {
                if !participant.subscription.is_empty() {
                    subscriptions.push(TransactionParticipant {
                        topic: participant.topic.clone(),
                        partition: participant.partition,
                        subscription: participant.subscription.clone(),
                    });
                    continue;
                }
                by_topic
                    .entry(&participant.topic)
                    .or_default()
                    .push(participant.partition);
            }
            WriteTxnMarkersRequest {
                transactional_id: id.to_string(),
                producer_id: meta.txn_producer_id(),
                txn_epoch: i32::from(meta.txn_epoch),
                commit: matches!(meta.state, super::state::TxnState::Prepare { commit: true }),
                coordinator_epoch: 0,
                participants: by_topic
                    .into_iter()
                    .map(|(topic, partitions)| TopicPartitions {
                        topic: topic.to_string(),
                        partitions,
                    })
                    .collect(),
                subscriptions,
            }
        })
        .collect()
}

/// Sends one request to its owner; returns the participants acknowledged.
async fn send(
    shared: &Arc<Shared>,
    address: &str,
    request: WriteTxnMarkersRequest,
) -> Result<Vec<Participant>, BrokerError> {
    let response = if address.is_empty() {
        crate::txn_markers::write(shared, request).await?
    } else {
        let mut client = shared.clients.broker(address)?;
        client
            .write_txn_markers(crate::clients::request(
                request,
                Duration::from_millis(REQUEST_TIMEOUT_MS),
            ))
            .await
            .map_err(|status| BrokerError::remote("WriteTxnMarkers", &status))?
            .into_inner()
    };
    Ok(response
        .results
        .into_iter()
        .filter(|result| {
            [
                ErrorCode::None as i32,
                ErrorCode::UnknownTopic as i32,
                ErrorCode::UnknownPartition as i32,
            ]
            .contains(&result.error)
        })
        .map(|result| Participant {
            topic: result.topic,
            partition: result.partition,
            subscription: result.subscription,
        })
        .collect())
}

/// Delivers the markers of `meta` (a Prepare state of `id`) until every
/// participant acknowledged, then records Complete; gives up when this
/// broker no longer coordinates the id (the next coordinator re-sends).
///
/// Boxed: it runs the coordinator's events, whose plans spawn it.
pub fn deliver(shared: Arc<Shared>, id: TransactionalId, meta: TxnMeta) -> BoxFuture<'static, ()> {
    Box::pin(deliver_until_complete(shared, id, meta))
}

async fn deliver_until_complete(shared: Arc<Shared>, id: TransactionalId, meta: TxnMeta) {
    let mut pending = meta.participants.clone();
    let mut backoff_ms = RETRY_BACKOFF_MS;
    let local_id = shared.config.cluster.node_id.clone();
    while shared
        .transactions
        .awaits_markers(id.as_str(), meta.txn_epoch)
    {
        if pending.is_empty() {
            let principal = sluice_service::anonymous();
            let event = Event::MarkersWritten {
                txn_epoch: meta.txn_epoch,
            };
            match shared
                .transactions
                .handle(&shared, &id, event, &principal)
                .await
            {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(transactional_id = %id, %error, "could not record a completed transaction; retrying")
                }
            }
        } else {
            let topics: Vec<String> = pending
                .iter()
                .map(|participant| participant.topic.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            match shared.routes(&topics).await {
                Ok(routes) => {
                    let routing = pending_by_owner(&pending, &routes, &local_id);
                    for participant in &routing.gone {
                        pending.remove(participant);
                    }
                    for (address, participants) in routing.by_owner {
                        for request in requests(&id, &meta, &participants) {
                            match send(&shared, &address, request).await {
                                Ok(done) => done.iter().for_each(|done| {
                                    pending.remove(done);
                                }),
                                Err(error) => {
                                    tracing::debug!(transactional_id = %id, %error, "markers not delivered yet")
                                }
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(transactional_id = %id, %error, "no routes for markers yet")
                }
            }
            if pending.is_empty() {
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(MAX_BACKOFF_MS);
    }
}

#[cfg(test)]
mod tests;
