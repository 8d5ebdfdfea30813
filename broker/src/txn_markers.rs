//! `WriteTxnMarkers` (ADR 0016 §3.4): a transaction coordinator (or an
//! operator ending a hanging transaction, §9) writes a transaction's
//! outcome into the participating partitions this broker owns. Each
//! marker goes through its partition's append pipeline, where the
//! partition's transaction rules admit, refuse or answer it as already
//! applied; the answer per partition comes once the marker is durable.
//! A subscription participant's marker (transactional acknowledgements,
//! ADR 0016 §6) goes to that subscription's dispatcher on the partition
//! (started without consumers if none runs), answered once the cursor
//! holding the resolution is durable.

use crate::error::BrokerError;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use futures::future::BoxFuture;
use sluice_proto::batch::control::Marker;
use sluice_proto::names::CONSUMER_OFFSETS_TOPIC;
use sluice_proto::v1::{TxnMarkerResult, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use sluice_proto::ErrorCode;
use std::sync::Arc;

/// Most partitions one request may name.
pub const MAX_MARKERS_PER_REQUEST: usize = 1_000;

/// Checks the request as a whole.
fn check(shared: &Shared, request: &WriteTxnMarkersRequest) -> Result<Marker, BrokerError> {
    if !shared.config.transactions.enabled {
        return Err(BrokerError::InvalidArgument(
            "transactions are not enabled on this broker ([transactions] enabled = false)".into(),
        ));
    }
    let count: usize = request
        .participants
        .iter()
        .map(|entry| entry.partitions.len())
        .sum::<usize>()
        + request.subscriptions.len();
    if count == 0 || count > MAX_MARKERS_PER_REQUEST {
        return Err(BrokerError::InvalidArgument(format!(
            "WriteTxnMarkers names {count} partitions; give 1..={MAX_MARKERS_PER_REQUEST}"
        )));
    }
    let txn_epoch = i16::try_from(request.txn_epoch)
        .ok()
        .filter(|epoch| (0..i16::MAX).contains(epoch))
        .ok_or_else(|| {
            BrokerError::InvalidArgument(format!(
                "txn_epoch {} is outside 0..{}",
                request.txn_epoch,
                i16::MAX
            ))
        })?;
    if request.producer_id < 0 {
        return Err(BrokerError::InvalidArgument(format!(
            "producer_id {} is negative",
            request.producer_id
        )));
    }
    Ok(Marker {
        producer_id: request.producer_id,
        txn_epoch,
        commit: request.commit,
        coordinator_epoch: request.coordinator_epoch,
        first_offset: None,
    })
}

/// Writes the markers; each partition's result says whether its marker is
/// durable (or was already), or why not.
pub async fn write(
    shared: &Arc<Shared>,
    request: WriteTxnMarkersRequest,
) -> Result<WriteTxnMarkersResponse, BrokerError> {
    let marker = check(shared, &request)?;
    let mut pending: Vec<BoxFuture<'_, TxnMarkerResult>> = Vec::new();
    for participant in &request.subscriptions {
        let key = PartitionKey::new(&participant.topic, participant.partition);
        let subscription = participant.subscription.clone();
        pending.push(Box::pin(async move {
            let outcome = shared
                .subscriptions
                .resolve_transaction(shared, &key, &subscription, marker)
                .await;
            result_of(key, subscription, outcome)
        }));
    }
    for entry in &request.participants {
        for &index in &entry.partitions {
            let key = PartitionKey::new(&entry.topic, index);
            // On a group's offsets partition the durable marker also
            // resolves the transaction's pending offsets (ADR 0016 §5).
            let on_durable = (entry.topic == CONSUMER_OFFSETS_TOPIC)
                .then(|| shared.coordinator.marker_hook(index, &marker));
            let submitted = match shared.partition(&key) {
                Some(partition) => partition.submit_marker_then(marker, on_durable),
                None => Err(shared.not_served_error(&entry.topic, index).await),
            };
            pending.push(Box::pin(async move {
                let outcome = match submitted {
                    Ok(receiver) => receiver.await.unwrap_or_else(|_| {
                        Err(BrokerError::Unavailable("append pipeline stopped".into()))
                    }),
                    Err(error) => Err(error),
                };
                result_of(key, String::new(), outcome.map(|_| ()))
            }));
        }
    }
    Ok(WriteTxnMarkersResponse {
        results: futures::future::join_all(pending).await,
    })
}

fn result_of(
    key: PartitionKey,
    subscription: String,
    outcome: Result<(), BrokerError>,
) -> TxnMarkerResult {
    let (error, error_message) = match outcome {
        Ok(()) => (ErrorCode::None, String::new()),
        // The subscription is gone: nothing is pending in it any more, as
        // a deleted topic's markers count as done.
        Err(error) if error.code() == ErrorCode::UnknownSubscription => {
            (ErrorCode::UnknownPartition, error.to_string())
        }
        Err(error) => (error.code(), error.to_string()),
    };
    TxnMarkerResult {
        topic: key.topic,
        partition: key.partition,
        error: error as i32,
        error_message,
        subscription,
    }
}
