//! `SkipSubscription` (issue 15): an operator moves a subscription's
//! cursor forward on a partition this broker owns: skip the next N
//! offsets, or clear the backlog up to the high watermark. It is the
//! backlog monitor's EVICT (ADR 0012) on request: the running dispatcher
//! skips the range and commits its cursor, or without one the committed
//! cursor is rewritten. The cursor only moves forward, so no acknowledged
//! message is delivered again and no offset is reused.

use crate::backlog::{committed_cursor, evict_committed};
use crate::error::BrokerError;
use crate::partition::Phase;
use crate::subscription::start::initial_offset;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use sluice_proto::v1::{SkipSubscriptionRequest, SkipSubscriptionResponse};
use sluice_proto::ErrorCode;

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
    sluice_proto::names::TopicName::any(&request.topic)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    let key = PartitionKey::new(&request.topic, request.partition);
    let Some(partition) = shared.partition(&key) else {
        return Err(shared
            .not_served_error(&request.topic, request.partition)
            .await);
    };
    let status = partition.status();
    if status.phase != Phase::Serving {
        return Err(BrokerError::NotOwner {
            topic: key.topic.clone(),
            partition: key.partition,
        });
    }
    let subscription = shared
        .backlog
        .subscriptions_of(shared, &request.topic, true)
        .await?
        .into_iter()
        .find(|subscription| subscription.name == request.name)
        .ok_or_else(|| {
            BrokerError::Relayed(sluice_proto::SluiceError::new(
                ErrorCode::UnknownSubscription,
                format!(
                    "topic {:?} has no subscription {:?}",
                    request.topic, request.name
                ),
            ))
        })?;
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
