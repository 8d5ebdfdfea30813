//! Lag of a subscription (ADR 0012), merged from every partition owner's
//! `DescribeSubscription`, and the recommended consumer count for
//! autoscalers ([`recommended_consumers`]).

use crate::cluster::{normalize_address, Cluster};
use crate::ClientError;
use sluice_proto::v1::{self, PressureLevel, SubscriptionType};
use sluice_proto::ErrorCode;

/// What [`recommended_consumers`] aims for: the current backlog worked
/// off within this time on top of keeping up with arrivals.
pub const DEFAULT_TARGET_DRAIN_MS: u64 = 60_000;
/// Upper bound of a recommendation for shared and key-shared
/// subscriptions (exclusive and failover: the partition count).
pub const MAX_RECOMMENDED_CONSUMERS: u32 = 1000;
/// Attempts per partition when its owner moved.
const MAX_ATTEMPTS: u32 = 3;

/// A subscription's lag over all partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionLag {
    /// The subscription's topic.
    pub topic: String,
    /// The subscription's name.
    pub name: String,
    /// How it hands out messages.
    pub subscription_type: SubscriptionType,
    /// Per partition, ascending; a partition whose owner could not answer
    /// carries the error.
    pub partitions: Vec<v1::SubscriptionPartitionLag>,
    /// Messages not yet acknowledged, over the partitions that answered.
    pub backlog_messages: u64,
    /// Their estimated bytes.
    pub backlog_bytes: u64,
    /// The oldest unacknowledged message over all partitions.
    pub oldest_unacknowledged_age_ms: u64,
    /// Messages acknowledged per second.
    pub drain_rate: f64,
    /// Messages arriving per second.
    pub incoming_rate: f64,
    /// Time to work off the backlog at the current rate; None when nothing
    /// drains.
    pub estimated_drain_ms: Option<u64>,
    /// Consumers connected now (the most on any partition: a subscriber
    /// consumes every partition).
    pub consumers: u32,
    /// See [`recommended_consumers`].
    pub recommended_consumers: u32,
    /// The worst pressure level of any partition, and why.
    pub pressure: PressureLevel,
    /// Why the pressure is at that level (which quota, how close).
    pub pressure_reason: String,
    /// Messages dropped by the EVICT backlog policy, over the partitions.
    pub evicted: u64,
}

impl SubscriptionLag {
    /// Merges owners' answers.
    pub fn merge(
        topic: &str,
        name: &str,
        subscription_type: SubscriptionType,
        mut partitions: Vec<v1::SubscriptionPartitionLag>,
        target_drain_ms: u64,
    ) -> Self {
        partitions.sort_by_key(|lag| lag.partition);
        let answered: Vec<&v1::SubscriptionPartitionLag> = partitions
            .iter()
            .filter(|lag| lag.error == ErrorCode::None as i32)
            .collect();
        let backlog_messages = answered.iter().map(|lag| lag.backlog_messages).sum();
        let drain_rate = answered
            .iter()
            .map(|lag| lag.drain_rate_milli_per_sec as f64 / 1000.0)
            .sum::<f64>();
        let incoming_rate = answered
            .iter()
            .map(|lag| lag.incoming_rate_milli_per_sec as f64 / 1000.0)
            .sum::<f64>();
        let consumers = answered.iter().map(|lag| lag.consumers).max().unwrap_or(0);
        let worst = answered
            .iter()
            .max_by_key(|lag| (lag.pressure, lag.backlog_messages));
        let recommended = recommended_consumers(&Demand {
            subscription_type,
            partitions: u32::try_from(partitions.len()).unwrap_or(u32::MAX),
            consumers,
            backlog_messages,
            drain_rate,
            incoming_rate,
            target_drain_ms,
        });
        Self {
            topic: topic.to_string(),
            name: name.to_string(),
            subscription_type,
            backlog_bytes: answered.iter().map(|lag| lag.backlog_bytes).sum(),
            oldest_unacknowledged_age_ms: answered
                .iter()
                .map(|lag| lag.oldest_unacknowledged_age_ms)
                .max()
                .unwrap_or(0),
            estimated_drain_ms: drain_estimate(backlog_messages, drain_rate),
            drain_rate,
            incoming_rate,
            consumers,
            recommended_consumers: recommended,
            pressure: worst
                .and_then(|lag| PressureLevel::try_from(lag.pressure).ok())
                .unwrap_or(PressureLevel::Ok),
            pressure_reason: worst
                .map(|lag| lag.pressure_reason.clone())
                .unwrap_or_default(),
            evicted: answered.iter().map(|lag| lag.evicted).sum(),
            backlog_messages,
            partitions,
        }
    }
}

fn drain_estimate(backlog: u64, rate: f64) -> Option<u64> {
    if backlog == 0 {
        return Some(0);
    }
    (rate > 0.0 && rate.is_finite()).then(|| (backlog as f64 / rate * 1000.0).ceil() as u64)
}

/// What the recommendation is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// The subscription's type (exclusive and failover use one consumer
    /// per partition at most).
    pub subscription_type: SubscriptionType,
    /// The topic's partition count.
    pub partitions: u32,
    /// Connected now.
    pub consumers: u32,
    /// Messages not yet acknowledged, all partitions.
    pub backlog_messages: u64,
    /// Messages per second, all partitions.
    pub drain_rate: f64,
    /// Messages arriving per second, all partitions.
    pub incoming_rate: f64,
    /// The time to work the backlog off within, in milliseconds.
    pub target_drain_ms: u64,
}

/// Consumers needed to keep up with arrivals and work off the backlog
/// within `target_drain_ms`:
///
/// `ceil((incoming_rate + backlog / target_drain_s) / per_consumer_rate)`,
/// where `per_consumer_rate = drain_rate / active consumers` (exclusive and
/// failover: at most one active per partition). Bounded below by 1 when
/// there is anything to consume, above by the partition count (exclusive,
/// failover) or [`MAX_RECOMMENDED_CONSUMERS`]. Without a measured
/// per-consumer rate (no consumers, or none acknowledging yet) it
/// recommends what is connected, at least 1 when there is work.
pub fn recommended_consumers(demand: &Demand) -> u32 {
    let has_work = demand.backlog_messages > 0 || demand.incoming_rate > 0.0;
    let upper = match demand.subscription_type {
        SubscriptionType::Exclusive | SubscriptionType::Failover => demand.partitions.max(1),
        _ => MAX_RECOMMENDED_CONSUMERS,
    };
    let active = match demand.subscription_type {
        SubscriptionType::Exclusive | SubscriptionType::Failover => {
            demand.consumers.min(demand.partitions)
        }
        _ => demand.consumers,
    };
    if !has_work {
        return 0;
    }
    if active == 0 || demand.drain_rate <= 0.0 || !demand.drain_rate.is_finite() {
        return demand.consumers.clamp(1, upper);
    }
    let per_consumer = demand.drain_rate / f64::from(active);
    let target_seconds = (demand.target_drain_ms.max(1) as f64) / 1000.0;
    let needed = demand.incoming_rate + demand.backlog_messages as f64 / target_seconds;
    let count = (needed / per_consumer).ceil();
    if count >= f64::from(upper) {
        upper
    } else {
        (count as u32).clamp(1, upper)
    }
}

/// Asks every partition's owner and merges.
pub(crate) async fn describe_subscription(
    cluster: &Cluster,
    topic: &str,
    name: &str,
    subscription_type: SubscriptionType,
) -> Result<SubscriptionLag, ClientError> {
    let routes = cluster.topic_routes(topic).await?;
    let partitions = u32::try_from(routes.partitions.len()).unwrap_or(u32::MAX);
    let answers = futures::future::join_all(
        (0..partitions).map(|partition| describe_partition(cluster, topic, name, partition)),
    )
    .await;
    let mut lags = Vec::with_capacity(answers.len());
    for (partition, answer) in (0..partitions).zip(answers) {
        match answer {
            Ok(lag) => lags.push(lag),
            // The subscription itself is unknown: no point in a table.
            Err(error) if error.code() == Some(ErrorCode::UnknownSubscription) => {
                return Err(error)
            }
            Err(error) => lags.push(v1::SubscriptionPartitionLag {
                partition,
                error: error.code().unwrap_or(ErrorCode::Unavailable) as i32,
                error_message: error.to_string(),
                ..Default::default()
            }),
        }
    }
    Ok(SubscriptionLag::merge(
        topic,
        name,
        subscription_type,
        lags,
        DEFAULT_TARGET_DRAIN_MS,
    ))
}

async fn describe_partition(
    cluster: &Cluster,
    topic: &str,
    name: &str,
    partition: u32,
) -> Result<v1::SubscriptionPartitionLag, ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let routes = cluster.topic_routes(topic).await?;
        let address = routes
            .partitions
            .get(partition as usize)
            .map(|route| route.broker_address.clone())
            .unwrap_or_default();
        let result = if address.is_empty() {
            Err(ClientError::Server(sluice_proto::SluiceError::new(
                ErrorCode::Unavailable,
                format!("partition {topic}/{partition} has no live owner right now"),
            )))
        } else {
            let address = normalize_address(&address);
            let mut client = cluster.broker(&address)?;
            let request = v1::DescribeSubscriptionRequest {
                topic: topic.to_string(),
                name: name.to_string(),
                partitions: vec![partition],
            };
            cluster
                .unary(
                    "DescribeSubscription",
                    &address,
                    client.describe_subscription(request),
                )
                .await
                .and_then(|response| {
                    response
                        .partitions
                        .into_iter()
                        .find(|lag| lag.partition == partition)
                        .ok_or_else(|| {
                            ClientError::Server(sluice_proto::SluiceError::new(
                                ErrorCode::Internal,
                                format!("the owner of {topic}/{partition} did not describe it"),
                            ))
                        })
                })
        };
        let needs_refresh = match &result {
            Err(error) => error.needs_route_refresh(),
            Ok(lag) => lag.error == ErrorCode::NotOwner as i32,
        };
        if needs_refresh && attempt < MAX_ATTEMPTS {
            tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
            cluster.refresh_routes(&[topic.to_string()]).await?;
            continue;
        }
        return result;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(subscription_type: SubscriptionType) -> Demand {
        Demand {
            subscription_type,
            partitions: 4,
            consumers: 2,
            backlog_messages: 0,
            drain_rate: 100.0,
            incoming_rate: 100.0,
            target_drain_ms: 60_000,
        }
    }

    #[test]
    fn keeping_up_needs_what_is_there() {
        assert_eq!(recommended_consumers(&demand(SubscriptionType::Shared)), 2);
    }

    #[test]
    fn arrivals_beyond_the_drain_rate_ask_for_more() {
        let mut wanted = demand(SubscriptionType::Shared);
        wanted.incoming_rate = 250.0; // 50 per consumer now
        assert_eq!(recommended_consumers(&wanted), 5);
        // And a backlog adds its share: 6000 messages in 60 s = 100/s more.
        wanted.backlog_messages = 6000;
        assert_eq!(recommended_consumers(&wanted), 7);
    }

    #[test]
    fn bounds_depend_on_the_type() {
        let mut wanted = demand(SubscriptionType::Failover);
        wanted.incoming_rate = 10_000.0;
        assert_eq!(
            recommended_consumers(&wanted),
            4,
            "one active per partition"
        );
        wanted.subscription_type = SubscriptionType::Shared;
        assert_eq!(recommended_consumers(&wanted), 200);
        wanted.incoming_rate = 1e12;
        assert_eq!(recommended_consumers(&wanted), MAX_RECOMMENDED_CONSUMERS);
    }

    #[test]
    fn without_a_measured_rate_it_asks_for_at_least_one_when_there_is_work() {
        let mut idle = demand(SubscriptionType::Shared);
        idle.consumers = 0;
        idle.drain_rate = 0.0;
        idle.incoming_rate = 0.0;
        assert_eq!(recommended_consumers(&idle), 0);
        idle.backlog_messages = 10;
        assert_eq!(recommended_consumers(&idle), 1);
        idle.consumers = 3;
        assert_eq!(recommended_consumers(&idle), 3);
    }

    #[test]
    fn merge_sums_partitions_and_keeps_the_worst_pressure() {
        let lag =
            |partition, backlog, pressure: PressureLevel, consumers| v1::SubscriptionPartitionLag {
                partition,
                backlog_messages: backlog,
                backlog_bytes: backlog * 100,
                drain_rate_milli_per_sec: 10_000,
                incoming_rate_milli_per_sec: 5_000,
                consumers,
                pressure: pressure as i32,
                pressure_reason: if pressure == PressureLevel::Ok {
                    String::new()
                } else {
                    "messages".into()
                },
                oldest_unacknowledged_age_ms: backlog * 10,
                ..Default::default()
            };
        let merged = SubscriptionLag::merge(
            "orders",
            "billing",
            SubscriptionType::Shared,
            vec![
                lag(1, 90, PressureLevel::Warn, 2),
                lag(0, 10, PressureLevel::Ok, 2),
                v1::SubscriptionPartitionLag {
                    partition: 2,
                    error: ErrorCode::Unavailable as i32,
                    backlog_messages: 1_000_000,
                    ..Default::default()
                },
            ],
            60_000,
        );
        assert_eq!(
            merged.backlog_messages, 100,
            "failed partitions do not count"
        );
        assert_eq!(merged.backlog_bytes, 10_000);
        assert_eq!(merged.oldest_unacknowledged_age_ms, 900);
        assert_eq!(merged.drain_rate, 20.0);
        assert_eq!(merged.estimated_drain_ms, Some(5000));
        assert_eq!(merged.pressure, PressureLevel::Warn);
        assert_eq!(merged.pressure_reason, "messages");
        assert_eq!(merged.consumers, 2);
        assert_eq!(
            merged
                .partitions
                .iter()
                .map(|lag| lag.partition)
                .collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }
}
