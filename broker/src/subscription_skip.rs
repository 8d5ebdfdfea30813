//! `SkipSubscription` and `ResetSubscriptionCursor` (issue 15): an
//! operator moves a subscription's cursor. `SkipSubscription`
//! cursor forward on a partition this broker owns: skip the next N
//! offsets, or clear the backlog up to the high watermark. It is the
//! backlog monitor's EVICT (ADR 0012) on request: the running dispatcher
//! skips the range and commits its cursor, or without one the committed
//! cursor is rewritten; it only moves forward, so no acknowledged message
//! is delivered again. `ResetSubscriptionCursor` sets the cursor to an
//! offset or a time, back as well (the operator asked for the rewind),
//! only while no dispatcher of the subscription runs on the partition:
//! the registry holds off new ones until the cursor is committed.

use crate::backlog::{committed_cursor, evict_committed};
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::partition::Phase;
use crate::subscription::start::initial_offset;
use crate::subscription::{cursor_group, AckedRanges, CursorSnapshot};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use sluice_proto::v1::{
    ResetSubscriptionCursorRequest, SkipSubscriptionRequest, SkipSubscriptionResponse, Subscription,
};
use sluice_proto::ErrorCode;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the skip moves the cursor's mark-delete position from `mark`:
/// `count` offsets on, or with `clear` to the high watermark; never past
/// the high watermark, never back. Pure.
pub fn skip_target(mark: u64, high_watermark: u64, count: u64, clear: bool) -> u64 {
    let target = if clear {
        high_watermark
    } else {
        mark.saturating_add(count).min(high_watermark)
    };
    target.max(mark)
}

/// Skips on partition `request.partition` of `request.topic`.
pub async fn skip(
    shared: &Shared,
    request: SkipSubscriptionRequest,
) -> Result<SkipSubscriptionResponse, BrokerError> {
    let (partition, subscription) =
        served(shared, &request.topic, request.partition, &request.name).await?;
    let key = partition.key.clone();
    let status = partition.status();
    let running = shared
        .subscriptions
        .stats(&key)
        .await
        .into_iter()
        .find(|stats| stats.subscription == request.name)
        .map(|stats| stats.mark_delete);
    let mark = match running {
        Some(mark) => mark,
        None => match committed_cursor(shared, &partition, &subscription).await? {
            Some(snapshot) => snapshot.acked.mark_delete(),
            None => initial_offset(
                &subscription,
                key.partition,
                status.log_start_offset,
                status.high_watermark,
            ),
        },
    };
    let target = skip_target(mark, status.high_watermark, request.count, request.clear);
    let skipped = if target <= mark {
        0
    } else {
        match shared
            .subscriptions
            .evict_before(&key, &request.name, target)
            .await
        {
            Some(skipped) => skipped,
            None => evict_committed(shared, &partition, &subscription, target).await?,
        }
    };
    tracing::info!(partition = %key, subscription = %request.name, from = mark, to = target, skipped, "subscription skipped by an operator");
    Ok(SkipSubscriptionResponse {
        skipped,
        mark_delete: target,
        high_watermark: status.high_watermark,
    })
}

/// The serving partition and the subscription a request names.
async fn served(
    shared: &Shared,
    topic: &str,
    partition: u32,
    name: &str,
) -> Result<(Arc<Partition>, Subscription), BrokerError> {
    sluice_proto::names::TopicName::any(topic)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    let key = PartitionKey::new(topic, partition);
    let Some(served) = shared.partition(&key) else {
        return Err(shared.not_served_error(topic, partition).await);
    };
    if served.status().phase != Phase::Serving {
        return Err(BrokerError::NotOwner {
            topic: key.topic.clone(),
            partition,
        });
    }
    let subscription = shared
        .backlog
        .subscriptions_of(shared, topic, true)
        .await?
        .into_iter()
        .find(|subscription| subscription.name == name)
        .ok_or_else(|| {
            BrokerError::Relayed(sluice_proto::SluiceError::new(
                ErrorCode::UnknownSubscription,
                format!("topic {topic:?} has no subscription {name:?}"),
            ))
        })?;
    Ok((served, subscription))
}

/// Sets the cursor of `request.name` on the partition to an offset or a
/// time; refused while a dispatcher of it runs here.
pub async fn reset_cursor(
    shared: &Arc<Shared>,
    request: ResetSubscriptionCursorRequest,
) -> Result<SkipSubscriptionResponse, BrokerError> {
    let (partition, subscription) =
        served(shared, &request.topic, request.partition, &request.name).await?;
    let status = partition.status();
    let target = match request.timestamp_ms {
        Some(time_ms) => partition.offset_for_timestamp(&status, time_ms).await?,
        None => request.offset,
    };
    if !(status.log_start_offset..=status.high_watermark).contains(&target) {
        return Err(BrokerError::OffsetOutOfRange {
            offset: target,
            log_start_offset: status.log_start_offset,
            high_watermark: status.high_watermark,
        });
    }
    let snapshot = CursorSnapshot {
        epoch: partition.epoch,
        subscription_created_at_ms: subscription.created_at_ms,
        acked: AckedRanges::new(target),
        delivery_counts: BTreeMap::new(),
        parked_keys: Default::default(),
        pending: Vec::new(),
    };
    let group = cursor_group(&subscription.name)?;
    let key = partition.key.clone();
    let commit = crate::subscription::commit_cursor(shared, &group, &key, &snapshot);
    let committed = shared
        .subscriptions
        .without_dispatcher(shared, &key, &subscription.name, partition.clone(), commit)
        .await
        .ok_or_else(|| {
            BrokerError::InvalidArgument(format!(
                "subscription {:?} is being consumed on {key} (or was until moments ago); \
                 close its consumers and retry once its dispatcher stopped \
                 ([subscriptions] idle_stop_ms after the last consumer)",
                subscription.name
            ))
        })?;
    committed?;
    tracing::info!(partition = %key, subscription = %subscription.name, to = target, "subscription cursor reset by an operator");
    Ok(SkipSubscriptionResponse {
        skipped: 0,
        mark_delete: target,
        high_watermark: status.high_watermark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_move_forward_within_the_log() {
        assert_eq!(skip_target(10, 100, 5, false), 15);
        assert_eq!(skip_target(10, 100, 0, false), 10);
        assert_eq!(skip_target(10, 100, 90, false), 100);
        assert_eq!(skip_target(10, 100, u64::MAX, false), 100);
        assert_eq!(skip_target(10, 100, 0, true), 100);
        assert_eq!(skip_target(10, 100, 3, true), 100, "clear ignores count");
        // A mark at or past the high watermark (nothing to skip) stays.
        assert_eq!(skip_target(100, 100, 5, false), 100);
        assert_eq!(skip_target(120, 100, 5, true), 120);
    }
}
