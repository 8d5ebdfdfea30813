//! The subscription's settings and cursor: loaded (or created) when a
//! dispatcher starts, fetched from and committed to the coordinator of the
//! subscription's cursor group.

use super::{cursor_group, start, AckedRanges, CursorSnapshot};
use crate::clients::{nameserver_call, request};
use crate::error::BrokerError;
use crate::partition::{Partition, Phase};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use bytes::Bytes;
use sluice_proto::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, FindCoordinatorRequest, GetSubscriptionRequest,
    PartitionOffset, Subscription, TopicPartitions,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The subscription's settings and its cursor, loading or creating it.
pub(super) async fn load(
    shared: &Arc<Shared>,
    key: &PartitionKey,
    name: &str,
    partition: &Partition,
) -> Result<(Subscription, String, CursorSnapshot), BrokerError> {
    let subscription = nameserver_call!(
        &shared.clients,
        get_subscription,
        GetSubscriptionRequest {
            topic: key.topic.clone(),
            name: name.to_string(),
        }
    )?;
    let group = cursor_group(name)?;
    // Wait until the partition knows its bounds (takeover finished).
    let mut status = partition.subscribe();
    loop {
        let current = status.borrow_and_update().clone();
        if current.phase == Phase::Stopped {
            return Err(BrokerError::NotOwner {
                topic: key.topic.clone(),
                partition: key.partition,
            });
        }
        if current.loaded {
            break;
        }
        if status.changed().await.is_err() {
            return Err(BrokerError::NotOwner {
                topic: key.topic.clone(),
                partition: key.partition,
            });
        }
    }
    let stored = fetch_cursor(shared, &group, key).await?;
    let restored = stored.and_then(|bytes| match CursorSnapshot::decode(&bytes) {
        Ok(snapshot) if snapshot.subscription_created_at_ms == subscription.created_at_ms => {
            Some(snapshot)
        }
        Ok(_) => None, // An earlier subscription of the same name.
        Err(error) => {
            tracing::error!(partition = %key, subscription = name, %error, "stored cursor is corrupt; starting from the initial position");
            None
        }
    });
    let snapshot = match restored {
        Some(snapshot) => snapshot,
        None => {
            let status = partition.status();
            let start = start::initial_offset(
                &subscription,
                key.partition,
                status.log_start_offset,
                status.high_watermark,
            );
            let snapshot = CursorSnapshot {
                epoch: partition.epoch,
                subscription_created_at_ms: subscription.created_at_ms,
                acked: AckedRanges::new(start),
                delivery_counts: BTreeMap::new(),
                parked_keys: Default::default(),
                pending: Vec::new(),
            };
            // Pinned before anyone consumes, so a subscription created
            // before `start_offsets` existed keeps its "latest" after a
            // failover.
            commit_cursor(shared, &group, key, &snapshot).await?;
            snapshot
        }
    };
    Ok((subscription, group, snapshot))
}

async fn coordinator_client(
    shared: &Shared,
    group: &str,
) -> Result<sluice_proto::v1::broker_client::BrokerClient<tonic::transport::Channel>, BrokerError> {
    let coordinator = nameserver_call!(
        &shared.clients,
        find_coordinator,
        FindCoordinatorRequest {
            group: group.to_string(),
            ..Default::default()
        }
    )?;
    if coordinator.broker_address.is_empty() {
        return Err(BrokerError::Unavailable(format!(
            "no coordinator for {group:?} right now"
        )));
    }
    shared.clients.broker(&coordinator.broker_address)
}

pub(crate) async fn fetch_cursor(
    shared: &Shared,
    group: &str,
    key: &PartitionKey,
) -> Result<Option<Bytes>, BrokerError> {
    let mut client = coordinator_client(shared, group).await?;
    let response = client
        .fetch_offsets(request(
            FetchOffsetsRequest {
                group: group.to_string(),
                partitions: vec![TopicPartitions {
                    topic: key.topic.clone(),
                    partitions: vec![key.partition],
                }],
                require_stable: false,
            },
            shared.clients.nameserver_timeout,
        ))
        .await
        .map_err(|status| BrokerError::remote("coordinator fetch_offsets", &status))?
        .into_inner();
    Ok(response
        .offsets
        .into_iter()
        .find(|offset| offset.topic == key.topic && offset.partition == key.partition)
        .map(|offset| offset.cursor)
        .filter(|cursor| !cursor.is_empty()))
}

pub(crate) async fn commit_cursor(
    shared: &Shared,
    group: &str,
    key: &PartitionKey,
    snapshot: &CursorSnapshot,
) -> Result<(), BrokerError> {
    commit_encoded_cursor(
        shared,
        group,
        key,
        snapshot.acked.mark_delete(),
        Bytes::from(snapshot.encode()),
    )
    .await
}

pub(super) async fn commit_encoded_cursor(
    shared: &Shared,
    group: &str,
    key: &PartitionKey,
    mark_delete: u64,
    cursor: Bytes,
) -> Result<(), BrokerError> {
    let mut client = coordinator_client(shared, group).await?;
    let response = client
        .commit_offsets(request(
            CommitOffsetsRequest {
                group: group.to_string(),
                member_id: String::new(),
                member_epoch: -1,
                offsets: vec![PartitionOffset {
                    topic: key.topic.clone(),
                    partition: key.partition,
                    offset: mark_delete,
                    metadata: String::new(),
                    error: 0,
                    cursor,
                }],
                transaction: None,
            },
            shared.clients.nameserver_timeout,
        ))
        .await
        .map_err(|status| BrokerError::remote("coordinator commit_offsets", &status))?
        .into_inner();
    match response.offsets.first().map(|offset| offset.error()) {
        Some(ErrorCode::None) => Ok(()),
        Some(code) => Err(BrokerError::Remote {
            context: "coordinator commit_offsets".into(),
            error: SluiceError::new(code, "cursor commit refused"),
        }),
        None => Err(BrokerError::Internal(
            "coordinator answered a commit without offsets".into(),
        )),
    }
}
