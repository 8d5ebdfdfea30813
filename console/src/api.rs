//! The read-only JSON API the pages poll: `/api/cluster`, `/api/topics`,
//! `/api/topics/NAME`, `/api/consumers` (groups and subscriptions with
//! their lag). Each answer is bounded (see the limits below) and says
//! when it was cut.

use crate::rates::{drain_estimate_ms, Series};
use crate::shape::{self, client_error_response, json_response};
use crate::{Body, Console};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sluice_client::SubscriptionLag;
use sluice_proto::v1;

/// Partitions of one topic whose offsets `/api/topics/NAME` asks for.
pub const MAX_PARTITIONS_WITH_OFFSETS: usize = 64;
/// Groups `/api/consumers` describes (with lag); the rest are listed only.
pub const MAX_GROUPS_DESCRIBED: usize = 50;
/// Subscriptions `/api/consumers` describes (with lag).
pub const MAX_SUBSCRIPTIONS_DESCRIBED: usize = 50;
/// Topics `/api/consumers` asks for their subscriptions.
pub const MAX_TOPICS_SCANNED: usize = 500;
/// Partitions whose oldest unconsumed record `/api/consumers` reads, over
/// all groups, to show lag in time; the rest show no time.
pub const MAX_TIME_LAG_READS: usize = 32;

/// Answers a GET under `/api/`.
pub async fn handle(console: &Console, path: &str) -> Response<Body> {
    let result = match path {
        "/api/cluster" => cluster(console).await,
        "/api/topics" => topics(console).await,
        "/api/consumers" => consumers(console).await,
        _ => match path.strip_prefix("/api/topics/") {
            Some(name) if !name.is_empty() && !name.contains('/') => {
                topic(console, &crate::params::percent_decode(name)).await
            }
            _ => return shape::error_response(StatusCode::NOT_FOUND, "no such API"),
        },
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => client_error_response(&error),
    }
}

type Answer = Result<Value, sluice_client::ClientError>;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

async fn cluster(console: &Console) -> Answer {
    let status = console.admin.cluster_status().await?;
    let live = shape::live_nodes(&status);
    let down = match console.nodes.lock() {
        Ok(mut tracker) => tracker.observe(&live, now_ms()),
        Err(_) => Vec::new(),
    };
    Ok(shape::cluster_json(&status, &down))
}

async fn topics(console: &Console) -> Answer {
    let topics = console.admin.list_topics(false).await?;
    let topics: Vec<Value> = topics.iter().map(shape::topic_json).collect();
    Ok(json!({ "topics": topics }))
}

async fn topic(console: &Console, name: &str) -> Answer {
    let description = console.admin.describe_topic(name).await?;
    let mut shaped = shape::topic_description_json(&description);
    let partition_count = description.partitions.len();
    if let Some(partitions) = shaped["partitions"].as_array_mut() {
        for entry in partitions.iter_mut().take(MAX_PARTITIONS_WITH_OFFSETS) {
            let partition = entry["partition"].as_u64().unwrap_or(0) as u32;
            let offsets = console
                .admin
                .list_offsets(name, partition, v1::OffsetSpec::Latest, 0)
                .await;
            match offsets {
                Ok(offsets) => {
                    entry["log_start_offset"] = json!(offsets.log_start_offset);
                    entry["high_watermark"] = json!(offsets.high_watermark);
                }
                Err(error) => entry["offsets_error"] = json!(error.to_string()),
            }
        }
    }
    shaped["offsets_cut"] = json!(partition_count > MAX_PARTITIONS_WITH_OFFSETS);
    shaped["records_per_second"] = json!(topic_rate(console, name, &shaped));
    let subscriptions = match console.admin.list_subscriptions(name).await {
        Ok(list) => list.iter().map(|sub| json!(sub.name)).collect(),
        Err(error) => vec![json!({ "error": error.to_string() })],
    };
    shaped["subscriptions"] = json!(subscriptions);
    Ok(shaped)
}

/// Records written per second to `name`, from the sum of its partitions'
/// high watermarks; `None` while unknown (a partition's offsets missing or
/// cut, or the first sample).
fn topic_rate(console: &Console, name: &str, shaped: &Value) -> Option<f64> {
    if shaped["offsets_cut"].as_bool() != Some(false) {
        return None;
    }
    let mut written = 0u64;
    for partition in shaped["partitions"].as_array()? {
        written = written.saturating_add(partition["high_watermark"].as_u64()?);
    }
    let mut rates = console.rates.lock().ok()?;
    rates.observe(Series::TopicRecords(name.to_string()), written, now_ms())
}

/// Adds a group's consume rate, drain estimate and lag in time (the age of
/// the oldest unconsumed record over its partitions, read while `reads`
/// last).
async fn add_group_rates(
    console: &Console,
    description: &v1::DescribeGroupResponse,
    shaped: &mut Value,
    reads: &mut usize,
) {
    let consumed = description
        .lag
        .iter()
        .filter_map(|lag| u64::try_from(lag.committed_offset).ok())
        .fold(0u64, u64::saturating_add);
    let rate = console.rates.lock().ok().and_then(|mut rates| {
        let series = Series::GroupConsumed(description.group.clone());
        rates.observe(series, consumed, now_ms())
    });
    shaped["consume_rate"] = json!(rate);
    let lag = shaped["lag"].as_u64();
    shaped["estimated_drain_ms"] = json!(lag.and_then(|lag| drain_estimate_ms(lag, rate)));
    let mut oldest_ms: Option<i64> = None;
    let mut complete = true;
    for lag in description
        .lag
        .iter()
        .filter(|lag| lag.lag > 0 && !lag.lag_unknown)
    {
        let Ok(offset) = u64::try_from(lag.committed_offset) else {
            continue; // nothing committed: where it starts is its own reset policy
        };
        if *reads == 0 {
            complete = false;
            break;
        }
        *reads -= 1;
        match console
            .admin
            .get_message(&lag.topic, lag.partition, offset)
            .await
        {
            Ok(record) => {
                oldest_ms =
                    Some(oldest_ms.map_or(record.timestamp_ms, |t| t.min(record.timestamp_ms)))
            }
            Err(_) => complete = false,
        }
    }
    let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    shaped["time_lag_ms"] = json!(oldest_ms.map(|oldest| now.saturating_sub(oldest).max(0)));
    shaped["time_lag_complete"] = json!(complete);
}

async fn consumers(console: &Console) -> Answer {
    let groups = console.admin.list_groups().await?;
    let mut shaped_groups = Vec::new();
    let mut reads = MAX_TIME_LAG_READS;
    for (index, listing) in groups.iter().enumerate() {
        if index >= MAX_GROUPS_DESCRIBED {
            shaped_groups.push(json!({ "group": listing.group, "described": false }));
            continue;
        }
        shaped_groups.push(match console.admin.describe_group(&listing.group).await {
            Ok(description) => {
                let mut shaped = group_json(&description);
                add_group_rates(console, &description, &mut shaped, &mut reads).await;
                shaped
            }
            Err(error) => json!({ "group": listing.group, "error": error.to_string() }),
        });
    }
    let mut subscriptions = Vec::new();
    let mut cut = false;
    let topics = console.admin.list_topics(false).await?;
    if topics.len() > MAX_TOPICS_SCANNED {
        cut = true;
    }
    for topic in topics.into_iter().take(MAX_TOPICS_SCANNED) {
        if subscriptions.len() >= MAX_SUBSCRIPTIONS_DESCRIBED {
            cut = true;
            break;
        }
        let listed = match console.admin.list_subscriptions(&topic.name).await {
            Ok(listed) => listed,
            Err(error) => {
                subscriptions.push(json!({ "topic": topic.name, "error": error.to_string() }));
                continue;
            }
        };
        for subscription in listed {
            if subscriptions.len() >= MAX_SUBSCRIPTIONS_DESCRIBED {
                cut = true;
                break;
            }
            let lag = console
                .admin
                .describe_subscription(&topic.name, &subscription.name)
                .await;
            subscriptions.push(match lag {
                Ok(lag) => subscription_json(&lag),
                Err(error) => json!({
                    "topic": topic.name, "name": subscription.name, "error": error.to_string(),
                }),
            });
        }
    }
    Ok(json!({
        "groups": shaped_groups,
        "groups_cut": groups.len() > MAX_GROUPS_DESCRIBED,
        "subscriptions": subscriptions,
        "subscriptions_cut": cut,
    }))
}

/// A consumer group with its lag in records, per partition and in total.
/// A partition whose owner could not be asked has lag `null` (unknown, not
/// 0) with the reason; the total is then `null` too, and `lag_at_least`
/// sums the partitions that are known.
pub fn group_json(description: &v1::DescribeGroupResponse) -> Value {
    let partitions: Vec<Value> = description
        .lag
        .iter()
        .map(|lag| {
            json!({
                "topic": lag.topic, "partition": lag.partition,
                "committed_offset": lag.committed_offset,
                "high_watermark": lag.high_watermark,
                "lag": (!lag.lag_unknown).then_some(lag.lag),
                "lag_unknown_reason": lag.lag_unknown.then_some(&lag.lag_unknown_reason),
                "member_id": lag.member_id,
            })
        })
        .collect();
    let known = description
        .lag
        .iter()
        .filter(|lag| !lag.lag_unknown)
        .fold(0u64, |sum, lag| sum.saturating_add(lag.lag));
    let unknown = description.lag.iter().filter(|lag| lag.lag_unknown).count();
    json!({
        "group": description.group,
        "state": description.state,
        "generation": description.generation,
        "members": description.members.len(),
        "topics": description.topics,
        "lag": (unknown == 0).then_some(known),
        "lag_at_least": known,
        "lag_unknown_partitions": unknown,
        "partitions": partitions,
    })
}

/// A subscription's backlog in messages and in time (age of the oldest
/// unacknowledged message), rates, drain estimate and pressure.
pub fn subscription_json(lag: &SubscriptionLag) -> Value {
    let failed: Vec<Value> = lag
        .partitions
        .iter()
        .filter(|partition| partition.error != sluice_proto::ErrorCode::None as i32)
        .map(|partition| json!({ "partition": partition.partition, "error": partition.error_message }))
        .collect();
    json!({
        "topic": lag.topic,
        "name": lag.name,
        "type": lag.subscription_type.as_str_name(),
        "backlog_messages": lag.backlog_messages,
        "backlog_bytes": lag.backlog_bytes,
        "oldest_unacknowledged_age_ms": lag.oldest_unacknowledged_age_ms,
        "drain_rate": lag.drain_rate,
        "incoming_rate": lag.incoming_rate,
        "estimated_drain_ms": lag.estimated_drain_ms,
        "consumers": lag.consumers,
        "pressure": lag.pressure.as_str_name(),
        "unanswered_partitions": failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lag_is_summed_without_overflow() {
        let lag = |partition, lag| v1::PartitionLag {
            topic: "t".into(),
            partition,
            committed_offset: -1,
            high_watermark: lag,
            lag,
            member_id: String::new(),
            ..Default::default()
        };
        let description = v1::DescribeGroupResponse {
            group: "g".into(),
            lag: vec![lag(0, 5), lag(1, u64::MAX)],
            ..Default::default()
        };
        let shaped = group_json(&description);
        assert_eq!(shaped["lag"], u64::MAX);
        assert_eq!(shaped["partitions"][0]["committed_offset"], -1);
        assert_eq!(shaped["partitions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn an_unknown_partition_lag_is_null_not_zero() {
        let known = v1::PartitionLag {
            topic: "t".into(),
            partition: 0,
            lag: 5,
            ..Default::default()
        };
        let unknown = v1::PartitionLag {
            topic: "t".into(),
            partition: 1,
            lag_unknown: true,
            lag_unknown_reason: "owner broker-2 did not answer".into(),
            ..Default::default()
        };
        let description = v1::DescribeGroupResponse {
            group: "g".into(),
            lag: vec![known, unknown],
            ..Default::default()
        };
        let shaped = group_json(&description);
        assert!(shaped["lag"].is_null(), "{shaped}");
        assert_eq!(shaped["lag_at_least"], 5);
        assert_eq!(shaped["lag_unknown_partitions"], 1);
        assert!(shaped["partitions"][1]["lag"].is_null());
        assert_eq!(
            shaped["partitions"][1]["lag_unknown_reason"],
            "owner broker-2 did not answer"
        );
    }

    #[test]
    fn subscription_lag_names_partitions_that_did_not_answer() {
        let answered = v1::SubscriptionPartitionLag {
            partition: 0,
            backlog_messages: 7,
            oldest_unacknowledged_age_ms: 1_500,
            ..Default::default()
        };
        let failed = v1::SubscriptionPartitionLag {
            partition: 1,
            error: sluice_proto::ErrorCode::NotOwner as i32,
            error_message: "owner moved".into(),
            ..Default::default()
        };
        let lag = SubscriptionLag::merge(
            "t",
            "s",
            v1::SubscriptionType::Shared,
            vec![failed, answered],
            60_000,
        );
        let shaped = subscription_json(&lag);
        assert_eq!(shaped["backlog_messages"], 7);
        assert_eq!(shaped["oldest_unacknowledged_age_ms"], 1_500);
        assert_eq!(shaped["unanswered_partitions"][0]["partition"], 1);
        assert_eq!(shaped["unanswered_partitions"][0]["error"], "owner moved");
    }
}
