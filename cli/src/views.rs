//! The JSON documents of `--output json` (see `output.rs`): one function
//! per thing listed or described. Field names are snake_case and stable
//! (scripts depend on them: add fields, never rename); sizes are bytes,
//! durations milliseconds (`_ms`), times RFC 3339 strings (`_at`), enums
//! lower-case names, unknown values `null`.

use crate::units::format_unix_ms;
use serde_json::{json, Value};
use sluice_client::SubscriptionLag;
use sluice_proto::v1::{
    BacklogPolicy, DescribeGroupResponse, DownNode, Durability, NodeInfo, NodeKind, PartitionLag,
    PressureLevel, SegmentState, Subscription, SubscriptionType, Topic, TopicConfig,
};
use sluice_proto::ErrorCode;

pub fn durability(value: i32) -> &'static str {
    match Durability::try_from(value) {
        Ok(Durability::Fsync) => "fsync",
        Ok(Durability::Periodic) => "periodic",
        _ => "default",
    }
}

fn backlog_policy(value: i32) -> &'static str {
    match BacklogPolicy::try_from(value) {
        Ok(BacklogPolicy::Hold) => "hold",
        Ok(BacklogPolicy::Reject) => "reject",
        Ok(BacklogPolicy::Evict) => "evict",
        _ => "default",
    }
}

fn subscription_type(value: i32) -> &'static str {
    match SubscriptionType::try_from(value) {
        Ok(SubscriptionType::Exclusive) => "exclusive",
        Ok(SubscriptionType::Failover) => "failover",
        Ok(SubscriptionType::Shared) => "shared",
        Ok(SubscriptionType::KeyShared) => "key_shared",
        _ => "unknown",
    }
}

fn pressure(value: i32) -> &'static str {
    match PressureLevel::try_from(value) {
        Ok(PressureLevel::Ok) => "ok",
        Ok(PressureLevel::Warn) => "warn",
        Ok(PressureLevel::Limit) => "limit",
        Err(_) => "unknown",
    }
}

/// A Unix-ms time as RFC 3339, `null` when unset (0 or negative).
fn time_or_null(unix_ms: i64) -> Value {
    if unix_ms <= 0 {
        Value::Null
    } else {
        Value::String(format_unix_ms(unix_ms))
    }
}

pub fn topic_config(config: &TopicConfig) -> Value {
    json!({
        "partitions": config.partitions,
        "retention_ms": config.retention_ms,
        "retention_bytes": config.retention_bytes,
        "durability": durability(config.durability),
        "segment_bytes": config.segment_bytes,
        "segment_ms": config.segment_ms,
        "max_batch_bytes": config.max_batch_bytes,
        "ensemble_size": config.ensemble_size,
        "write_quorum": config.write_quorum,
        "ack_quorum": config.ack_quorum,
        "message_ttl_ms": config.message_ttl_ms,
        "retention_ignores_subscriptions": config.retention_ignores_subscriptions,
        "backlog_quota_messages": config.backlog_quota_messages,
        "backlog_quota_bytes": config.backlog_quota_bytes,
        "backlog_quota_age_ms": config.backlog_quota_age_ms,
        "backlog_warn_percent": config.backlog_warn_ratio_percent,
        "backlog_policy": backlog_policy(config.backlog_policy),
        "backlog_hold_timeout_ms": config.backlog_hold_timeout_ms,
        "cleanup_policy": sluice_proto::cleanup::name(sluice_proto::cleanup::policy(config)),
        "delete_retention_ms": config.delete_retention_ms,
        "min_compaction_lag_ms": config.min_compaction_lag_ms,
        "min_cleanable_dirty_ratio_percent": config.min_cleanable_dirty_ratio_percent,
    })
}

pub fn topic(topic: &Topic) -> Value {
    json!({
        "name": topic.name,
        "internal": topic.internal,
        "created_at": time_or_null(i64::try_from(topic.created_at_ms).unwrap_or(i64::MAX)),
        "config": topic_config(&topic.config.unwrap_or_default()),
    })
}

/// One partition of `topic describe`: route, health and segments.
pub fn partition(
    description: &sluice_proto::v1::PartitionDescription,
    health: &crate::partition_state::PartitionHealth,
) -> Value {
    let route = description.route.clone().unwrap_or_default();
    let segments: Vec<Value> = description
        .segments
        .iter()
        .map(|segment| {
            let state = match SegmentState::try_from(segment.state) {
                Ok(state) => state.as_str_name().trim_start_matches("SEGMENT_STATE_"),
                Err(_) => "UNKNOWN",
            };
            json!({
                "segment_id": segment.segment_id,
                "state": state.to_ascii_lowercase(),
                "base_offset": segment.base_offset,
                "end_offset": segment.end_offset,
                "size_bytes": segment.size_bytes,
                "max_timestamp": time_or_null(segment.max_timestamp_ms),
                "stores": segment.replicas.iter().map(|replica| replica.store_id.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "partition": route.partition,
        "owner": if route.broker_id.is_empty() { Value::Null } else { Value::String(route.broker_id) },
        "owner_address": route.broker_address,
        "epoch": route.epoch,
        "state": health.state,
        "lost": health.lost,
        "explanation": health.explanation,
        "segments": segments,
    })
}

pub fn partition_lag(lag: &PartitionLag, lag_time_ms: Option<u64>) -> Value {
    json!({
        "topic": lag.topic,
        "partition": lag.partition,
        "committed_offset": if lag.committed_offset < 0 { Value::Null } else { json!(lag.committed_offset) },
        "high_watermark": if lag.lag_unknown { Value::Null } else { json!(lag.high_watermark) },
        "lag": if lag.lag_unknown { Value::Null } else { json!(lag.lag) },
        "lag_unknown_reason": if lag.lag_unknown { json!(lag.lag_unknown_reason) } else { Value::Null },
        "lag_time_ms": lag_time_ms,
        "member_id": if lag.member_id.is_empty() { Value::Null } else { json!(lag.member_id) },
    })
}

/// `group describe`; `lag_times_ms` parallel to `description.lag`.
pub fn group(description: &DescribeGroupResponse, lag_times_ms: &[Option<u64>]) -> Value {
    let members: Vec<Value> = description
        .members
        .iter()
        .map(|member| {
            json!({
                "member_id": member.member_id,
                "client_id": member.client_id,
                "member_epoch": member.member_epoch,
                "last_heartbeat_ms_ago": member.last_heartbeat_ms_ago,
                "assignment": member.assignment.iter().map(|topic| json!({
                    "topic": topic.topic,
                    "partitions": topic.partitions,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let lag: Vec<Value> = description
        .lag
        .iter()
        .enumerate()
        .map(|(index, lag)| partition_lag(lag, lag_times_ms.get(index).copied().flatten()))
        .collect();
    let totals = crate::admin::LagTotal::of(&description.lag);
    json!({
        "group": description.group,
        "state": description.state,
        "generation": description.generation,
        "topics": description.topics,
        "members": members,
        "partitions": lag,
        "total_lag": totals.known,
        "partitions_with_unknown_lag": totals.unknown,
    })
}

fn node_kind(value: i32) -> &'static str {
    match NodeKind::try_from(value) {
        Ok(NodeKind::Nameserver) => "nameserver",
        Ok(NodeKind::Broker) => "broker",
        Ok(NodeKind::Store) => "store",
        _ => "unknown",
    }
}

pub fn node(node: &NodeInfo, condition: &crate::cluster_status::NodeCondition) -> Value {
    let load = node.load.clone().unwrap_or_default();
    json!({
        "node_id": node.node_id,
        "kind": node_kind(node.kind),
        "address": node.address,
        "rack": node.rack,
        "status": condition.status,
        "detail": condition.detail,
        "lease_remaining_ms": node.lease_remaining_ms,
        "last_heartbeat_ms_ago": if node.last_heartbeat_ms_ago < 0 { Value::Null } else { json!(node.last_heartbeat_ms_ago) },
        "healthy": load.healthy,
        "health_detail": load.detail,
        "partitions": load.partitions,
        "segments": load.segments,
        "disk_free_bytes": load.disk_free_bytes,
        "disk_total_bytes": load.disk_total_bytes,
        "open_segment_files": load.open_segment_files,
        "max_open_segment_files": load.max_open_segment_files,
    })
}

pub fn down_node(node: &DownNode, now_unix_ms: i64) -> Value {
    json!({
        "node_id": node.node_id,
        "kind": node_kind(node.kind),
        "address": node.address,
        "status": "down",
        "down_since": time_or_null(node.down_since_unix_ms),
        "down_for_ms": now_unix_ms.saturating_sub(node.down_since_unix_ms).max(0),
        "reason": node.reason,
    })
}

pub fn subscription(subscription: &Subscription) -> Value {
    json!({
        "topic": subscription.topic,
        "name": subscription.name,
        "type": subscription_type(subscription.r#type),
        "selector_kind": sluice_proto::v1::SelectorKind::try_from(subscription.selector_kind)
            .map(|kind| kind.as_str_name().trim_start_matches("SELECTOR_KIND_").to_ascii_lowercase())
            .unwrap_or_else(|_| "unknown".into()),
        "selector": subscription.selector,
        "initial_position": sluice_proto::v1::InitialPosition::try_from(subscription.initial_position)
            .map(|position| position.as_str_name().trim_start_matches("INITIAL_POSITION_").to_ascii_lowercase())
            .unwrap_or_else(|_| "unknown".into()),
        "start_offsets": subscription.start_offsets,
        "ack_timeout_ms": subscription.ack_timeout_ms,
        "redelivery_backoff_initial_ms": subscription.redelivery_backoff_initial_ms,
        "redelivery_backoff_max_ms": subscription.redelivery_backoff_max_ms,
        "max_deliveries": subscription.max_deliveries,
        "dead_letter_topic": subscription.dead_letter_topic,
        "backlog_quota_messages": subscription.backlog_quota_messages,
        "backlog_quota_bytes": subscription.backlog_quota_bytes,
        "backlog_quota_age_ms": subscription.backlog_quota_age_ms,
        "backlog_policy": backlog_policy(subscription.backlog_policy),
        "created_at": time_or_null(i64::try_from(subscription.created_at_ms).unwrap_or(i64::MAX)),
    })
}

pub fn subscription_lag(lag: &SubscriptionLag) -> Value {
    let partitions: Vec<Value> = lag
        .partitions
        .iter()
        .map(|partition| {
            if partition.error != ErrorCode::None as i32 {
                let code = ErrorCode::try_from(partition.error)
                    .map(|code| code.as_str_name().trim_start_matches("ERROR_CODE_"))
                    .unwrap_or("ERROR");
                return json!({
                    "partition": partition.partition,
                    "error": code,
                    "error_message": partition.error_message,
                });
            }
            json!({
                "partition": partition.partition,
                "mark_delete": partition.mark_delete,
                "high_watermark": partition.high_watermark,
                "backlog_messages": partition.backlog_messages,
                "backlog_bytes": partition.backlog_bytes,
                "oldest_unacknowledged_age_ms": partition.oldest_unacknowledged_age_ms,
                "drain_rate_per_sec": partition.drain_rate_milli_per_sec as f64 / 1000.0,
                "estimated_drain_ms": u64::try_from(partition.estimated_drain_ms).ok(),
                "consumers": partition.consumers,
                "in_flight": partition.in_flight,
                "redelivered": partition.redelivered,
                "dead_lettered": partition.dead_lettered,
                "evicted": partition.evicted,
                "pressure": pressure(partition.pressure),
                "error": Value::Null,
            })
        })
        .collect();
    json!({
        "backlog_messages": lag.backlog_messages,
        "partitions_unknown": lag.partitions.iter().filter(|partition| partition.error != ErrorCode::None as i32).count(),
        "backlog_bytes": lag.backlog_bytes,
        "oldest_unacknowledged_age_ms": lag.oldest_unacknowledged_age_ms,
        "drain_rate_per_sec": lag.drain_rate,
        "incoming_rate_per_sec": lag.incoming_rate,
        "estimated_drain_ms": lag.estimated_drain_ms,
        "consumers": lag.consumers,
        "recommended_consumers": lag.recommended_consumers,
        "pressure": pressure(lag.pressure as i32),
        "evicted": lag.evicted,
        "partitions": partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_lag_is_null_with_its_reason_never_zero() {
        let unknown = PartitionLag {
            topic: "t".into(),
            partition: 1,
            committed_offset: 5,
            lag_unknown: true,
            lag_unknown_reason: "owner http://b2: unavailable".into(),
            ..PartitionLag::default()
        };
        let value = partition_lag(&unknown, None);
        assert!(
            value["lag"].is_null() && value["high_watermark"].is_null(),
            "{value}"
        );
        assert_eq!(value["lag_unknown_reason"], "owner http://b2: unavailable");
        let known = PartitionLag {
            committed_offset: -1,
            high_watermark: 9,
            lag: 9,
            ..PartitionLag::default()
        };
        let value = partition_lag(&known, Some(1200));
        assert_eq!(
            (value["lag"].as_u64(), value["high_watermark"].as_u64()),
            (Some(9), Some(9))
        );
        assert!(value["committed_offset"].is_null() && value["lag_unknown_reason"].is_null());
        assert_eq!(value["lag_time_ms"], 1200);
        let group = group(
            &DescribeGroupResponse {
                lag: vec![unknown, known],
                ..DescribeGroupResponse::default()
            },
            &[],
        );
        assert_eq!(group["total_lag"], 9);
        assert_eq!(group["partitions_with_unknown_lag"], 1);
    }

    #[test]
    fn unset_times_are_null_and_set_ones_rfc3339() {
        assert!(time_or_null(0).is_null());
        assert!(time_or_null(-5).is_null());
        assert_eq!(time_or_null(1_000), "1970-01-01T00:00:01.000Z");
    }
}
