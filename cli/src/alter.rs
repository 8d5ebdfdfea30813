//! `sluice topic alter`, `sluice topic add-partitions` and `sluice topic
//! delete` (issue 15): changing or deleting a topic through the SDK's
//! `Admin`.

use crate::admin::{parse_cleanup_policy, BacklogPolicyArg, DurabilityArg};
use crate::units::{parse_bytes, parse_bytes_u32, parse_duration_ms};
use anyhow::{bail, Context, Result};
use clap::Args;
use sluice_client::{Admin, KEY_ORDER_NOTICE};
use sluice_proto::v1::{
    BacklogPolicy, CleanupPolicy, Durability, Topic, TopicConfig, TopicConfigChanges,
};

/// The settings `topic alter` changes; each flag left out keeps the
/// topic's value. The flags mirror `topic create`, but 0 is refused where
/// `create` reads it as "the server default".
#[derive(Args, Debug, Default)]
pub struct AlterTopicArgs {
    pub name: String,
    /// Delete closed segments older than this (`7d`, or milliseconds; 18446744073709551615: never).
    #[arg(long, visible_alias = "retention", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub retention_ms: Option<u64>,
    /// Keep each partition below this size (`10GiB`, or bytes; 18446744073709551615: no limit).
    #[arg(long, visible_alias = "retention-size", value_name = "SIZE", value_parser = parse_bytes)]
    pub retention_bytes: Option<u64>,
    /// When a produce is acknowledged.
    #[arg(long, value_enum)]
    pub durability: Option<DurabilityArg>,
    /// Roll segments at this size (`64MiB`, or bytes); applies to the open segment at once.
    #[arg(long, visible_alias = "segment-size", value_name = "SIZE", value_parser = parse_bytes)]
    pub segment_bytes: Option<u64>,
    /// Roll segments this old (`1h`, or milliseconds); applies to the open segment at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub segment_ms: Option<u64>,
    /// Largest accepted batch (`1MiB`, or bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes_u32)]
    pub max_batch_bytes: Option<u32>,
    /// Stores holding each new segment (the write quorum follows unless given).
    #[arg(long)]
    pub ensemble_size: Option<u32>,
    /// Stores each record is written to; must equal the ensemble size.
    #[arg(long)]
    pub write_quorum: Option<u32>,
    /// Stores that must have a record on disk before it is acknowledged.
    #[arg(long)]
    pub ack_quorum: Option<u32>,
    /// Backlog quota in messages (0: no quota).
    #[arg(long)]
    pub backlog_quota_messages: Option<u64>,
    /// Backlog quota in (estimated) bytes (`1GiB`, or bytes; 0: no quota).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub backlog_quota_bytes: Option<u64>,
    /// Backlog quota on the oldest unacknowledged message's age (`1h`, or milliseconds; 0: no quota).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub backlog_quota_age_ms: Option<u64>,
    /// Produce acknowledgements say WARN from this percentage of a quota (1..=100).
    #[arg(long)]
    pub backlog_warn_percent: Option<u32>,
    /// At a backlog quota.
    #[arg(long, value_enum)]
    pub backlog_policy: Option<BacklogPolicyArg>,
    /// HOLD: longest a batch waits for the backlog to drop (`30s`, or 1..=600000 milliseconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub backlog_hold_timeout_ms: Option<u64>,
    /// Messages older than this are never delivered to subscriptions (`1d`, or milliseconds; 0: no limit).
    #[arg(long, visible_alias = "ttl", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub message_ttl_ms: Option<u64>,
    /// `true`: retention deletes by time and size alone, even what a subscription has not consumed.
    #[arg(long)]
    pub retention_ignores_subscriptions: Option<bool>,
    /// `delete`, `compact` or `compact,delete` (produce checks keys at once; retention and
    /// compaction follow from their next round; records already written without a key stay).
    #[arg(long, value_name = "POLICY", value_parser = parse_cleanup_policy)]
    pub cleanup_policy: Option<CleanupPolicy>,
    /// How long a tombstone stays readable once compaction reached it (`1d`, or milliseconds; 1 ..).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub delete_retention_ms: Option<u64>,
    /// Records younger than this are never compacted (`1h`, or milliseconds; 0: no lag).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub min_compaction_lag_ms: Option<u64>,
    /// Compact once this percentage of the log is not yet compacted (1..=100).
    #[arg(long)]
    pub min_cleanable_dirty_ratio_percent: Option<u32>,
}

/// `topic add-partitions NAME --count N`.
#[derive(Args, Debug)]
pub struct AddPartitionsArgs {
    pub name: String,
    /// The new total number of partitions (more than now, at most 4096).
    #[arg(long)]
    pub count: u32,
}

/// The request's changes from the flags; at least one must be given.
fn changes_of(args: &AlterTopicArgs) -> Result<TopicConfigChanges> {
    let changes = TopicConfigChanges {
        retention_ms: args.retention_ms,
        retention_bytes: args.retention_bytes,
        durability: args
            .durability
            .map(|durability| Durability::from(durability) as i32),
        segment_bytes: args.segment_bytes,
        segment_ms: args.segment_ms,
        ensemble_size: args.ensemble_size,
        write_quorum: args.write_quorum,
        ack_quorum: args.ack_quorum,
        max_batch_bytes: args.max_batch_bytes,
        message_ttl_ms: args.message_ttl_ms,
        retention_ignores_subscriptions: args.retention_ignores_subscriptions,
        backlog_quota_bytes: args.backlog_quota_bytes,
        backlog_quota_messages: args.backlog_quota_messages,
        backlog_quota_age_ms: args.backlog_quota_age_ms,
        backlog_warn_ratio_percent: args.backlog_warn_percent,
        backlog_policy: args
            .backlog_policy
            .map(|policy| BacklogPolicy::from(policy) as i32),
        backlog_hold_timeout_ms: args.backlog_hold_timeout_ms,
        cleanup_policy: args.cleanup_policy.map(|policy| policy as i32),
        delete_retention_ms: args.delete_retention_ms,
        min_compaction_lag_ms: args.min_compaction_lag_ms,
        min_cleanable_dirty_ratio_percent: args.min_cleanable_dirty_ratio_percent,
    };
    if changes == TopicConfigChanges::default() {
        bail!("nothing to change: give at least one setting (see `sluice topic alter --help`)");
    }
    Ok(changes)
}

/// Every alterable setting of `config`, one `name: value` line each, in
/// the units of the flags.
fn settings_lines(config: &TopicConfig) -> Vec<String> {
    let durability = match config.durability() {
        Durability::Periodic => "periodic",
        _ => "fsync",
    };
    let policy = match config.backlog_policy() {
        BacklogPolicy::Reject => "reject",
        BacklogPolicy::Evict => "evict",
        BacklogPolicy::Hold | BacklogPolicy::Unspecified => "hold",
    };
    vec![
        format!("partitions:                      {}", config.partitions),
        format!("retention_ms:                    {}", config.retention_ms),
        format!(
            "retention_bytes:                 {}",
            config.retention_bytes
        ),
        format!("durability:                      {durability}"),
        format!("segment_bytes:                   {}", config.segment_bytes),
        format!("segment_ms:                      {}", config.segment_ms),
        format!(
            "max_batch_bytes:                 {}",
            config.max_batch_bytes
        ),
        format!(
            "replication (ensemble/write/ack): {}/{}/{}",
            config.ensemble_size, config.write_quorum, config.ack_quorum
        ),
        format!("message_ttl_ms:                  {}", config.message_ttl_ms),
        format!(
            "retention_ignores_subscriptions: {}",
            config.retention_ignores_subscriptions
        ),
        format!(
            "backlog quota:                   {} messages, {} bytes, {} ms (0 = none)",
            config.backlog_quota_messages, config.backlog_quota_bytes, config.backlog_quota_age_ms
        ),
        format!(
            "backlog:                         warn from {}%, policy {policy}, hold up to {} ms",
            config.backlog_warn_ratio_percent, config.backlog_hold_timeout_ms
        ),
        format!(
            "cleanup:                         {}, tombstones kept {} ms, lag {} ms, dirty ratio {}%",
            sluice_proto::cleanup::name(sluice_proto::cleanup::policy(config)),
            config.delete_retention_ms,
            config.min_compaction_lag_ms,
            config.min_cleanable_dirty_ratio_percent
        ),
    ]
}

fn print_topic(topic: &Topic) {
    for line in settings_lines(&topic.config.unwrap_or_default()) {
        println!("  {line}");
    }
}

/// `sluice topic alter`.
pub async fn alter_topic(admin: &Admin, args: AlterTopicArgs) -> Result<()> {
    let changes = changes_of(&args)?;
    let topic = admin
        .alter_topic(&args.name, changes)
        .await
        .with_context(|| format!("altering topic {:?}", args.name))?;
    println!("altered topic {}; its settings now:", topic.name);
    print_topic(&topic);
    Ok(())
}

/// `sluice topic add-partitions`.
pub async fn add_partitions(admin: &Admin, args: AddPartitionsArgs) -> Result<()> {
    let topic = admin
        .add_partitions(&args.name, args.count)
        .await
        .with_context(|| format!("adding partitions to topic {:?}", args.name))?;
    let partitions = topic.config.unwrap_or_default().partitions;
    println!("topic {} now has {partitions} partitions", topic.name);
    println!("note: {KEY_ORDER_NOTICE}");
    Ok(())
}

/// `sluice topic delete`: the topic and, unless kept, its dead-letter
/// topics; says which went and which stayed.
pub async fn delete_topic(admin: &Admin, name: &str, keep_dead_letters: bool) -> Result<()> {
    let answer = admin
        .delete_topic_with(name, keep_dead_letters)
        .await
        .with_context(|| format!("deleting topic {name:?}"))?;
    println!("deleted topic {name}");
    for dead_letters in &answer.deleted_dead_letter_topics {
        println!("deleted its dead-letter topic {dead_letters}");
    }
    for kept in &answer.kept_dead_letter_topics {
        println!("kept dead-letter topic {kept}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_flags_become_changes() {
        let args = AlterTopicArgs {
            name: "t".into(),
            retention_ms: Some(5),
            durability: Some(DurabilityArg::Periodic),
            backlog_policy: Some(BacklogPolicyArg::Evict),
            retention_ignores_subscriptions: Some(false),
            cleanup_policy: Some(CleanupPolicy::CompactDelete),
            min_compaction_lag_ms: Some(0),
            ..AlterTopicArgs::default()
        };
        let changes = changes_of(&args).expect("valid");
        assert_eq!(
            changes,
            TopicConfigChanges {
                retention_ms: Some(5),
                durability: Some(Durability::Periodic as i32),
                backlog_policy: Some(BacklogPolicy::Evict as i32),
                retention_ignores_subscriptions: Some(false),
                cleanup_policy: Some(CleanupPolicy::CompactDelete as i32),
                min_compaction_lag_ms: Some(0),
                ..TopicConfigChanges::default()
            }
        );
    }

    #[test]
    fn no_flag_is_refused() {
        let none = changes_of(&AlterTopicArgs::default()).unwrap_err();
        assert!(none.to_string().contains("nothing to change"), "{none}");
    }

    #[test]
    fn every_setting_is_shown() {
        let lines = settings_lines(&TopicConfig {
            retention_ms: 123_456,
            segment_ms: 777,
            message_ttl_ms: 4242,
            ..TopicConfig::default()
        })
        .join("\n");
        for shown in ["123456", "777", "4242", "retention_ignores_subscriptions"] {
            assert!(lines.contains(shown), "{shown} missing from\n{lines}");
        }
    }
}
