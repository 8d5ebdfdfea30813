//! The EVICT backlog policy (ADR 0012): a subscription at its quota has
//! its cursor moved past its oldest messages until every quota at its
//! limit is back at its keep line, through the running dispatcher or, with
//! none, by rewriting the committed cursor.

use super::*;

/// EVICT: moves the subscription's cursor past its oldest messages until
/// every quota at its limit is back at its keep line.
pub(super) async fn evict(
    shared: &Shared,
    partition: &Partition,
    state: &PartitionState,
    subscription: &Subscription,
    measurement: &Measurement,
    quota: &Quota,
) -> Result<(), BrokerError> {
    let high_watermark = measurement.high_watermark;
    let mut target = measurement.mark_delete;
    if quota.messages > 0 && measurement.backlog_messages >= quota.messages {
        target = target.max(high_watermark.saturating_sub(quota.keep_line(quota.messages)));
    }
    if quota.bytes > 0 && measurement.backlog_bytes >= quota.bytes {
        let per_message =
            measurement.backlog_bytes as f64 / measurement.backlog_messages.max(1) as f64;
        let keep = (quota.keep_line(quota.bytes) as f64 / per_message.max(1.0)).floor() as u64;
        target = target.max(high_watermark.saturating_sub(keep));
    }
    if quota.age_ms > 0 && measurement.oldest_age_ms >= quota.age_ms {
        let cutoff = sluice_proto::now_unix_ms()
            .saturating_sub(i64::try_from(quota.keep_line(quota.age_ms)).unwrap_or(i64::MAX));
        let first_young = partition
            .offset_for_timestamp(&partition.status(), cutoff)
            .await?;
        target = target.max(first_young);
    }
    let target = target.min(high_watermark);
    if target <= measurement.mark_delete {
        return Ok(());
    }
    let evicted = match shared
        .subscriptions
        .evict_before(&partition.key, &subscription.name, target)
        .await
    {
        Some(evicted) => evicted,
        None => evict_committed(shared, partition, subscription, target).await?,
    };
    tracing::info!(partition = %partition.key, subscription = %subscription.name, evicted, up_to = target, "backlog quota: evicted the oldest unacknowledged messages");
    if let Some(entry) = state.lock().get_mut(&subscription.name) {
        entry.evicted = entry.evicted.saturating_add(evicted);
        entry.latest.evicted = entry.evicted;
    }
    Ok(())
}

/// EVICT without a running dispatcher: rewrites the committed cursor.
/// (A dispatcher starting meanwhile may commit its older cursor over it;
/// the next check then evicts again.)
pub(crate) async fn evict_committed(
    shared: &Shared,
    partition: &Partition,
    subscription: &Subscription,
    target: u64,
) -> Result<u64, BrokerError> {
    let status = partition.status();
    let mut snapshot = match committed_cursor(shared, partition, subscription).await? {
        Some(snapshot) => snapshot,
        None => CursorSnapshot {
            epoch: partition.epoch,
            subscription_created_at_ms: subscription.created_at_ms,
            acked: AckedRanges::new(status.log_start_offset),
            delivery_counts: BTreeMap::new(),
            parked_keys: Default::default(),
            pending: Vec::new(),
        },
    };
    if snapshot.epoch > partition.epoch {
        return Err(BrokerError::NotOwner {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        });
    }
    let before = backlog_of_cursor(&snapshot.acked, status.high_watermark);
    snapshot.epoch = partition.epoch;
    let mark = snapshot.acked.mark_delete();
    snapshot.acked.insert_range(mark, target);
    snapshot.drop_pending_acknowledged();
    snapshot.delivery_counts = snapshot.delivery_counts.split_off(&target);
    let after = backlog_of_cursor(&snapshot.acked, status.high_watermark);
    let group = subscription::cursor_group(&subscription.name)?;
    subscription::commit_cursor(shared, &group, &partition.key, &snapshot).await?;
    Ok(before.saturating_sub(after))
}
