//! `DescribeSubscription`: a subscription on the partitions served here,
//! from the monitor's measurements (measured now when it has none yet).

use super::*;

/// `DescribeSubscription`: the subscription on the partitions served here
/// (measured now when the monitor has not yet).
pub async fn describe(
    shared: &Shared,
    request: DescribeSubscriptionRequest,
) -> Result<DescribeSubscriptionResponse, BrokerError> {
    sluice_proto::names::TopicName::any(&request.topic)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    if request.partitions.len() > MAX_DESCRIBE_PARTITIONS {
        return Err(BrokerError::InvalidArgument(format!(
            "at most {MAX_DESCRIBE_PARTITIONS} partitions per request"
        )));
    }
    let subscriptions = shared
        .backlog
        .subscriptions_of(shared, &request.topic, true)
        .await?;
    if !subscriptions
        .iter()
        .any(|subscription| subscription.name == request.name)
    {
        return Err(BrokerError::Relayed(sluice_proto::SluiceError::new(
            ErrorCode::UnknownSubscription,
            format!(
                "no subscription {:?} on topic {:?}",
                request.name, request.topic
            ),
        )));
    }
    let mut partitions: Vec<Arc<Partition>> = shared
        .partitions()
        .into_iter()
        .filter(|partition| partition.key.topic == request.topic)
        .filter(|partition| {
            request.partitions.is_empty() || request.partitions.contains(&partition.key.partition)
        })
        .collect();
    partitions.sort_by_key(|partition| partition.key.partition);
    let mut answered = Vec::new();
    for wanted in &request.partitions {
        if !partitions
            .iter()
            .any(|partition| partition.key.partition == *wanted)
        {
            let error = shared.not_served_error(&request.topic, *wanted).await;
            answered.push(SubscriptionPartitionLag {
                partition: *wanted,
                error: error.code() as i32,
                error_message: error.to_string(),
                ..Default::default()
            });
        }
    }
    for partition in partitions {
        answered.push(describe_partition(shared, &partition, &request.name).await);
    }
    answered.sort_by_key(|lag| lag.partition);
    Ok(DescribeSubscriptionResponse {
        topic: request.topic,
        name: request.name,
        partitions: answered,
    })
}

async fn describe_partition(
    shared: &Shared,
    partition: &Arc<Partition>,
    name: &str,
) -> SubscriptionPartitionLag {
    let index = partition.key.partition;
    if !is_monitored(partition) {
        return SubscriptionPartitionLag {
            partition: index,
            error: ErrorCode::Unavailable as i32,
            error_message: format!("{} is not serving yet", partition.key),
            ..Default::default()
        };
    }
    let state = shared.backlog.state_of(partition);
    let known = state.lock().contains_key(name);
    if !known {
        if let Err(error) = check(shared, partition, true).await {
            return SubscriptionPartitionLag {
                partition: index,
                error: error.code() as i32,
                error_message: error.to_string(),
                ..Default::default()
            };
        }
    }
    let Some(measurement) = state.lock().get(name).map(|entry| entry.latest.clone()) else {
        return SubscriptionPartitionLag {
            partition: index,
            error: ErrorCode::Unavailable as i32,
            error_message: format!(
                "the backlog of {name:?} on {} is not measured yet",
                partition.key
            ),
            ..Default::default()
        };
    };
    // The dispatcher's live numbers are fresher than the last check's.
    let stats = shared
        .subscriptions
        .stats(&partition.key)
        .await
        .into_iter()
        .find(|stats| stats.subscription == name)
        .or(measurement.stats.clone());
    let consumers = stats.as_ref().map_or(0, |stats| stats.consumers);
    let (level, reason) = measurement.level.unwrap_or((PressureLevel::Ok, None));
    SubscriptionPartitionLag {
        partition: index,
        error: ErrorCode::None as i32,
        error_message: String::new(),
        mark_delete: measurement.mark_delete,
        high_watermark: measurement.high_watermark,
        backlog_messages: measurement.backlog_messages,
        backlog_bytes: measurement.backlog_bytes,
        oldest_unacknowledged_age_ms: measurement.oldest_age_ms,
        drain_rate_milli_per_sec: milli(measurement.drain_per_sec),
        incoming_rate_milli_per_sec: milli(measurement.incoming_per_sec),
        estimated_drain_ms: signed_drain_ms(measurement.estimated_drain_ms),
        consumers,
        in_flight: stats.as_ref().map_or(0, |stats| stats.in_flight),
        redelivered: stats.as_ref().map_or(0, |stats| stats.counters.redelivered),
        dead_lettered: stats
            .as_ref()
            .map_or(0, |stats| stats.counters.dead_lettered),
        evicted: measurement.evicted,
        pressure: level as i32,
        pressure_reason: reason.unwrap_or_default().to_string(),
        per_consumer_rate_milli_per_sec: if consumers > 0 {
            milli(measurement.drain_per_sec / f64::from(consumers))
        } else {
            0
        },
        measured_at_ms: measurement.measured_at_ms,
        lost_offsets: stats
            .as_ref()
            .map_or(0, |stats| stats.counters.lost_offsets),
    }
}

/// A rate per second in thousandths (the wire form), 0 when unknown.
fn milli(rate_per_sec: f64) -> u64 {
    if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
        (rate_per_sec * 1000.0).round() as u64
    } else {
        0
    }
}
