//! `sluice subscription skip`, `clear` and `reset` (issue 15): move a
//! subscription's cursor on every partition; `update`: change its
//! delivery settings and backlog quotas.

use crate::admin::BacklogPolicyArg;
use crate::units::{parse_bytes, parse_duration_ms};
use anyhow::{bail, Context, Result};
use clap::Args;
use sluice_client::{Admin, SubscriptionReset, SubscriptionSkip};
use sluice_proto::v1::{BacklogPolicy, SubscriptionChanges};

/// `subscription update TOPIC NAME`: each flag left out keeps its value.
#[derive(Args, Debug, Default)]
pub struct UpdateSubscriptionArgs {
    pub topic: String,
    pub name: String,
    /// Redeliver a message not acknowledged within this long (`30s`, or 1000..=86400000 ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub ack_timeout_ms: Option<u64>,
    /// First redelivery delay after a negative acknowledgement (`1s`, or milliseconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub redelivery_backoff_initial_ms: Option<u64>,
    /// Longest redelivery delay (`1m`, or milliseconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub redelivery_backoff_max_ms: Option<u64>,
    /// Dead-letter after this many deliveries (0: never; above 0 needs a dead-letter topic).
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    /// This subscription's backlog quota in messages (0: the topic's).
    #[arg(long)]
    pub backlog_quota_messages: Option<u64>,
    /// This subscription's backlog quota in bytes (`1GiB`, or bytes; 0: the topic's).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub backlog_quota_bytes: Option<u64>,
    /// This subscription's backlog quota on the oldest message's age (`1h`, or milliseconds;
    /// 0: the topic's).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub backlog_quota_age_ms: Option<u64>,
    /// At the backlog quota.
    #[arg(long, value_enum)]
    pub backlog_policy: Option<BacklogPolicyArg>,
}

/// The request's changes from the flags; at least one must be given.
fn changes_of(args: &UpdateSubscriptionArgs) -> Result<SubscriptionChanges> {
    let changes = SubscriptionChanges {
        ack_timeout_ms: args.ack_timeout_ms,
        redelivery_backoff_initial_ms: args.redelivery_backoff_initial_ms,
        redelivery_backoff_max_ms: args.redelivery_backoff_max_ms,
        max_deliveries: args.max_deliveries,
        backlog_quota_bytes: args.backlog_quota_bytes,
        backlog_quota_messages: args.backlog_quota_messages,
        backlog_quota_age_ms: args.backlog_quota_age_ms,
        backlog_policy: args
            .backlog_policy
            .map(|policy| BacklogPolicy::from(policy) as i32),
    };
    if changes == SubscriptionChanges::default() {
        bail!("nothing to change: give at least one setting (see `sluice subscription update --help`)");
    }
    Ok(changes)
}

/// `sluice subscription update`.
pub async fn update(admin: &Admin, args: UpdateSubscriptionArgs) -> Result<()> {
    let changes = changes_of(&args)?;
    let updated = admin
        .update_subscription(&args.topic, &args.name, changes)
        .await
        .with_context(|| format!("updating subscription {:?} of {:?}", args.name, args.topic))?;
    println!(
        "updated subscription {}/{}: ack timeout {} ms, redelivery backoff {}..{} ms, max \
         deliveries {}, backlog quota {} messages / {} bytes / {} ms",
        updated.topic,
        updated.name,
        updated.ack_timeout_ms,
        updated.redelivery_backoff_initial_ms,
        updated.redelivery_backoff_max_ms,
        updated.max_deliveries,
        updated.backlog_quota_messages,
        updated.backlog_quota_bytes,
        updated.backlog_quota_age_ms
    );
    println!(
        "delivery settings apply when its dispatchers next start (consumers gone for idle_stop_ms)"
    );
    Ok(())
}

/// Skips `count` messages (or with `None` the whole backlog) of
/// subscription `name` of `topic`, and prints each partition's result.
pub async fn skip(admin: &Admin, topic: &str, name: &str, count: Option<u64>) -> Result<()> {
    let skip = match count {
        Some(0) => bail!("--count 0 skips nothing; give at least 1"),
        Some(count) => SubscriptionSkip::Messages(count),
        None => SubscriptionSkip::All,
    };
    let answers = admin
        .skip_subscription(topic, name, skip)
        .await
        .with_context(|| format!("skipping messages of subscription {name:?} of {topic:?}"))?;
    println!("PARTITION  SKIPPED  ACKNOWLEDGED-BELOW  END");
    let mut total = 0u64;
    for (partition, answer) in answers {
        total = total.saturating_add(answer.skipped);
        println!(
            "{partition}  {}  {}  {}",
            answer.skipped, answer.mark_delete, answer.high_watermark
        );
    }
    println!("skipped {total} unacknowledged message(s) of {topic}/{name}");
    Ok(())
}

/// `sluice subscription reset`: the cursor to `offset` or to the first
/// record at or after `time` (RFC 3339) on every partition.
pub async fn reset(
    admin: &Admin,
    topic: &str,
    name: &str,
    offset: Option<u64>,
    time: Option<&str>,
) -> Result<()> {
    let reset = match (offset, time) {
        (Some(offset), None) => SubscriptionReset::Offset(offset),
        (None, Some(time)) => {
            SubscriptionReset::Time(crate::group_offsets::parse_rfc3339_ms(time)?)
        }
        _ => bail!("give one of --to-offset and --to-time"),
    };
    let answers = admin
        .reset_subscription_cursor(topic, name, reset)
        .await
        .with_context(|| format!("resetting subscription {name:?} of {topic:?}"))?;
    println!("PARTITION  ACKNOWLEDGED-BELOW  END");
    for (partition, answer) in answers {
        println!(
            "{partition}  {}  {}",
            answer.mark_delete, answer.high_watermark
        );
    }
    println!("reset the cursor of {topic}/{name}; delivery goes on from there");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_flags_become_changes_and_none_is_refused() {
        let args = UpdateSubscriptionArgs {
            ack_timeout_ms: Some(5_000),
            backlog_policy: Some(BacklogPolicyArg::Evict),
            ..UpdateSubscriptionArgs::default()
        };
        let changes = changes_of(&args).expect("valid");
        assert_eq!(changes.ack_timeout_ms, Some(5_000));
        assert_eq!(changes.backlog_policy, Some(BacklogPolicy::Evict as i32));
        assert_eq!(changes.max_deliveries, None);
        assert!(changes_of(&UpdateSubscriptionArgs::default()).is_err());
    }
}
