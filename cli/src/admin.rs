//! `sluice topic`, `sluice group` and `sluice cluster`: administration
//! through the SDK's `Admin`, printed as aligned tables.

use crate::output::{json, print_json, print_table};
use crate::units::{
    format_bytes, format_duration_ms, parse_bytes, parse_bytes_u32, parse_duration_ms,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sluice_client::{Admin, ClientConfig};
use sluice_proto::v1::{
    BacklogPolicy, CleanupPolicy, Durability, PartitionLag, SegmentState, TopicConfig,
};

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateTopicArgs),
    /// List topics.
    List {
        /// Also show internal topics such as __consumer_offsets.
        #[arg(long)]
        internal: bool,
    },
    /// Show a topic's configuration, partitions, owners and segments.
    Describe { name: String },
    /// Delete a topic and its data, and its subscriptions' dead-letter topics.
    Delete {
        name: String,
        /// Keep the dead-letter topics of the topic's subscriptions.
        #[arg(long)]
        keep_dead_letters: bool,
    },
    /// Change settings of a topic (only the flags given; applied to running partitions).
    Alter(crate::alter::AlterTopicArgs),
    /// Grow a topic to more partitions (keys hash to different partitions from then on).
    AddPartitions(crate::alter::AddPartitionsArgs),
}

#[derive(Args)]
pub struct CreateTopicArgs {
    pub name: String,
    /// Number of partitions.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Delete closed segments older than this (`7d`, `12h`, or milliseconds; 0: server default).
    #[arg(long, visible_alias = "retention", value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    pub retention_ms: u64,
    /// Keep each partition below this size by deleting its oldest segments (`10GiB`, or bytes;
    /// 0: server default).
    #[arg(long, visible_alias = "retention-size", value_name = "SIZE", default_value = "0", value_parser = parse_bytes)]
    pub retention_bytes: u64,
    /// When a produce is acknowledged.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Roll segments at this size (`64MiB`, or bytes; 0: server default).
    #[arg(long, visible_alias = "segment-size", value_name = "SIZE", default_value = "0", value_parser = parse_bytes)]
    pub segment_bytes: u64,
    /// Largest accepted batch (`1MiB`, or bytes; 0: server default).
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_bytes_u32)]
    pub max_batch_bytes: u32,
    /// Stores holding each segment (0: server default, 3).
    #[arg(long, default_value_t = 0)]
    pub ensemble_size: u32,
    /// Stores each record is written to; must equal the ensemble size (0: server default, 3).
    #[arg(long, default_value_t = 0)]
    pub write_quorum: u32,
    /// Stores that must have a record on disk before it is acknowledged (0: server default, 2).
    #[arg(long, default_value_t = 0)]
    pub ack_quorum: u32,
    /// Backlog quota (ADR 0012): most messages a partition's slowest subscription may leave
    /// unacknowledged (0: no quota).
    #[arg(long, default_value_t = 0)]
    pub backlog_quota_messages: u64,
    /// Backlog quota in (estimated) bytes (`1GiB`, or bytes; 0: no quota).
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_bytes)]
    pub backlog_quota_bytes: u64,
    /// Backlog quota on the age of the oldest unacknowledged message (`1h`, or milliseconds;
    /// 0: no quota).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    pub backlog_quota_age_ms: u64,
    /// Produce acknowledgements say WARN from this percentage of a quota (0: 80).
    #[arg(long, default_value_t = 0)]
    pub backlog_warn_percent: u32,
    /// At a backlog quota (hold is bounded by --backlog-hold-timeout-ms).
    #[arg(long, value_enum, default_value_t = BacklogPolicyArg::Hold)]
    pub backlog_policy: BacklogPolicyArg,
    /// HOLD: longest a batch waits for the backlog to drop (`30s`, or milliseconds; 0: 30000).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    pub backlog_hold_timeout_ms: u64,
    /// Messages older than this are never delivered to subscriptions (`1d`, or milliseconds;
    /// 0: no limit).
    #[arg(long, visible_alias = "ttl", value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    pub message_ttl_ms: u64,
    /// Retention deletes by time and size alone, even what a subscription has not consumed.
    #[arg(long)]
    pub retention_ignores_subscriptions: bool,
    /// `delete` (retention by time and size), `compact` (keep each key's latest record; records
    /// need keys) or `compact,delete` (both).
    #[arg(long, value_name = "POLICY", default_value = "delete", value_parser = parse_cleanup_policy)]
    pub cleanup_policy: CleanupPolicy,
    /// Compacted topics: how long a tombstone stays readable once compaction reached it (`1d`,
    /// or milliseconds; 0: one day).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    pub delete_retention_ms: u64,
    /// Compacted topics: records younger than this are never compacted (`1h`, or
    /// milliseconds; 0: no lag).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    pub min_compaction_lag_ms: u64,
    /// Compacted topics: compact once this percentage of the log is not yet compacted
    /// (1..=100; 0: 50).
    #[arg(long, default_value_t = 0)]
    pub min_cleanable_dirty_ratio_percent: u32,
}

/// `--cleanup-policy`: `delete`, `compact` or `compact,delete`.
pub(crate) fn parse_cleanup_policy(name: &str) -> Result<CleanupPolicy, String> {
    sluice_proto::cleanup::parse(name).ok_or_else(|| {
        format!("unknown cleanup policy {name:?}: use `delete`, `compact` or `compact,delete`")
    })
}

/// `--durability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledge after fsync.
    Fsync,
    /// Fsync on a timer; a power loss can lose recently acknowledged records.
    Periodic,
}

impl From<DurabilityArg> for Durability {
    fn from(value: DurabilityArg) -> Self {
        match value {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Periodic => Durability::Periodic,
        }
    }
}

/// `--backlog-policy` of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BacklogPolicyArg {
    /// Producers wait for the backlog to drop.
    Hold,
    /// Producers' batches are refused.
    Reject,
    /// The oldest unacknowledged messages are skipped.
    Evict,
}

impl From<BacklogPolicyArg> for BacklogPolicy {
    fn from(value: BacklogPolicyArg) -> Self {
        match value {
            BacklogPolicyArg::Hold => BacklogPolicy::Hold,
            BacklogPolicyArg::Reject => BacklogPolicy::Reject,
            BacklogPolicyArg::Evict => BacklogPolicy::Evict,
        }
    }
}

/// Most partitions whose time lag `group describe` looks up.
const MAX_TIME_LAG_LOOKUPS: usize = 256;

/// Time lag per partition of a group in milliseconds: how old the first
/// unconsumed record is (its timestamp, read at the committed offset;
/// None without lag, with unknown lag, or when it cannot be read).
async fn oldest_unconsumed_ages(
    admin: &sluice_client::Admin,
    lags: &[PartitionLag],
) -> Vec<Option<u64>> {
    let now_ms = sluice_proto::now_unix_ms();
    let lookups = lags.iter().enumerate().map(|(index, lag)| async move {
        if lag.lag == 0 || lag.lag_unknown || index >= MAX_TIME_LAG_LOOKUPS {
            return None;
        }
        let offset = u64::try_from(lag.committed_offset).unwrap_or(0);
        match admin.get_message(&lag.topic, lag.partition, offset).await {
            Ok(record) => u64::try_from(now_ms.saturating_sub(record.timestamp_ms)).ok(),
            Err(error) => {
                tracing::debug!(topic = %lag.topic, partition = lag.partition, %error, "no time lag");
                None
            }
        }
    });
    futures::future::join_all(lookups).await
}

/// The set limits of a backlog quota (ADR 0012; 0 is unset), as text.
pub(crate) fn backlog_quota_limits(messages: u64, bytes: u64, age_ms: u64) -> Vec<String> {
    let mut limits = Vec::new();
    if messages > 0 {
        limits.push(format!("{messages} messages"));
    }
    if bytes > 0 {
        limits.push(format_bytes(bytes));
    }
    if age_ms > 0 {
        limits.push(format!("{} old", format_duration_ms(age_ms)));
    }
    limits
}

/// The topic's backlog quotas (ADR 0012) in one line.
fn format_backlog_quota(config: &TopicConfig) -> String {
    let limits = backlog_quota_limits(
        config.backlog_quota_messages,
        config.backlog_quota_bytes,
        config.backlog_quota_age_ms,
    );
    if limits.is_empty() {
        return "none".to_string();
    }
    let policy = match config.backlog_policy() {
        BacklogPolicy::Reject => "reject".to_string(),
        BacklogPolicy::Evict => "evict".to_string(),
        BacklogPolicy::Hold | BacklogPolicy::Unspecified => {
            format!(
                "hold up to {}",
                format_duration_ms(config.backlog_hold_timeout_ms)
            )
        }
    };
    format!(
        "{}; warn from {}%; at the limit: {policy}",
        limits.join(", "),
        config.backlog_warn_ratio_percent
    )
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Members, assignment, committed offsets and lag of a group.
    Describe { group: String },
    /// Move an inactive group's committed offsets on a topic (--dry-run shows the plan).
    ResetOffsets(crate::group_offsets::ResetOffsetsArgs),
    /// Delete an inactive group's committed offsets and listing.
    Delete { group: String },
}

pub use crate::cluster_status::{run as cluster, ClusterCommand};

pub fn parse_durability(name: &str) -> Result<Durability> {
    match name {
        "fsync" => Ok(Durability::Fsync),
        "periodic" => Ok(Durability::Periodic),
        other => bail!("unknown durability {other:?}: use `fsync` or `periodic`"),
    }
}

pub async fn topic(config: ClientConfig, command: TopicCommand) -> Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        TopicCommand::Create(args) => {
            let topic_config = TopicConfig {
                partitions: args.partitions,
                retention_ms: args.retention_ms,
                retention_bytes: args.retention_bytes,
                durability: Durability::from(args.durability) as i32,
                segment_bytes: args.segment_bytes,
                max_batch_bytes: args.max_batch_bytes,
                ensemble_size: args.ensemble_size,
                write_quorum: args.write_quorum,
                ack_quorum: args.ack_quorum,
                backlog_quota_messages: args.backlog_quota_messages,
                backlog_quota_bytes: args.backlog_quota_bytes,
                backlog_quota_age_ms: args.backlog_quota_age_ms,
                backlog_warn_ratio_percent: args.backlog_warn_percent,
                backlog_policy: BacklogPolicy::from(args.backlog_policy) as i32,
                backlog_hold_timeout_ms: args.backlog_hold_timeout_ms,
                message_ttl_ms: args.message_ttl_ms,
                retention_ignores_subscriptions: args.retention_ignores_subscriptions,
                cleanup_policy: args.cleanup_policy as i32,
                delete_retention_ms: args.delete_retention_ms,
                min_compaction_lag_ms: args.min_compaction_lag_ms,
                min_cleanable_dirty_ratio_percent: args.min_cleanable_dirty_ratio_percent,
                ..TopicConfig::default()
            };
            let topic = admin
                .create_topic(&args.name, topic_config)
                .await
                .with_context(|| format!("creating topic {:?}", args.name))?;
            println!(
                "created topic {} with {} partition(s)",
                topic.name,
                topic
                    .config
                    .map(|config| config.partitions)
                    .unwrap_or_default()
            );
        }
        TopicCommand::Alter(args) => crate::alter::alter_topic(&admin, args).await?,
        TopicCommand::AddPartitions(args) => crate::alter::add_partitions(&admin, args).await?,
        TopicCommand::List { internal } => {
            let topics = admin.list_topics(internal).await?;
            if json() {
                let topics: Vec<serde_json::Value> =
                    topics.iter().map(crate::views::topic).collect();
                return print_json(&json!({ "topics": topics }));
            }
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|topic| {
                    let config = topic.config.unwrap_or_default();
                    vec![
                        topic.name.clone(),
                        config.partitions.to_string(),
                        durability_name(config.durability).to_string(),
                        format_retention(config.retention_ms, config.retention_bytes),
                    ]
                })
                .collect();
            print_table(&["TOPIC", "PARTITIONS", "DURABILITY", "RETENTION"], &rows);
        }
        TopicCommand::Describe { name } => {
            let description = admin.describe_topic(&name).await?;
            if json() {
                return print_json(&topic_description_json(&admin, description).await);
            }
            let topic = description.topic.unwrap_or_default();
            let config = topic.config.unwrap_or_default();
            print_topic_settings(&topic.name, &config);
            println!();
            // The owners' reports of offline and damaged partitions; the
            // description is still shown when they cannot be read.
            let brokers = admin
                .cluster_status()
                .await
                .ok()
                .map(|status| status.brokers);
            let lso_lags = lso_lags(&admin, &topic.name).await;
            let mut rows = Vec::new();
            let mut explanations = Vec::new();
            for partition in description.partitions {
                let health =
                    crate::partition_state::health(&topic.name, &partition, brokers.as_deref());
                let lso = partition
                    .route
                    .as_ref()
                    .and_then(|route| lso_lags.get(route.partition as usize));
                let route = partition.route.unwrap_or_default();
                if let Some(explanation) = health.explanation {
                    explanations.push(format!("  {}: {explanation}", route.partition));
                }
                let open = partition
                    .segments
                    .iter()
                    .filter(|segment| segment.state == SegmentState::Open as i32)
                    .count();
                let start = partition
                    .segments
                    .first()
                    .map(|segment| segment.base_offset)
                    .unwrap_or(0);
                let stores: Vec<String> = partition
                    .segments
                    .last()
                    .map(|segment| {
                        segment
                            .replicas
                            .iter()
                            .map(|replica| replica.store_id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                rows.push(vec![
                    route.partition.to_string(),
                    if route.broker_id.is_empty() {
                        "(none)".to_string()
                    } else {
                        route.broker_id
                    },
                    route.epoch.to_string(),
                    partition.segments.len().to_string(),
                    open.to_string(),
                    start.to_string(),
                    stores.join(","),
                    health.state,
                    health.lost,
                    lso.and_then(|lag| lag.lag_records)
                        .map_or("-".into(), |records| records.to_string()),
                    lso.and_then(|lag| lag.oldest_open_transaction_ms)
                        .map_or("-".into(), format_duration_ms),
                ]);
            }
            print_table(
                &[
                    "PARTITION",
                    "OWNER",
                    "EPOCH",
                    "SEGMENTS",
                    "OPEN",
                    "LOG-START",
                    "STORES",
                    "STATE",
                    "LOST",
                    "LSO-LAG",
                    "OPEN-TXN",
                ],
                &rows,
            );
            if !explanations.is_empty() {
                println!("\nwhy (and what to do):");
                for explanation in explanations {
                    println!("{explanation}");
                }
            }
        }
        TopicCommand::Delete {
            name,
            keep_dead_letters,
        } => crate::alter::delete_topic(&admin, &name, keep_dead_letters).await?,
    }
    Ok(())
}

fn durability_name(value: i32) -> &'static str {
    crate::views::durability(value)
}

/// `topic describe --output json`: the topic, its config and each
/// partition with its health (from the cluster status, when readable).
async fn topic_description_json(
    admin: &Admin,
    description: sluice_proto::v1::DescribeTopicResponse,
) -> serde_json::Value {
    let topic = description.topic.unwrap_or_default();
    let brokers = admin
        .cluster_status()
        .await
        .ok()
        .map(|status| status.brokers);
    let lso_lags = lso_lags(admin, &topic.name).await;
    let partitions: Vec<serde_json::Value> = description
        .partitions
        .iter()
        .map(|partition| {
            let health = crate::partition_state::health(&topic.name, partition, brokers.as_deref());
            let mut view = crate::views::partition(partition, &health);
            let lso = partition
                .route
                .as_ref()
                .and_then(|route| lso_lags.get(route.partition as usize));
            view["high_watermark"] = json!(lso
                .filter(|lag| lag.error.is_none())
                .map(|lag| lag.high_watermark));
            view["last_stable_offset"] = json!(lso.and_then(|lag| lag.last_stable_offset));
            view["lso_lag"] = json!(lso.and_then(|lag| lag.lag_records));
            view["oldest_open_transaction_ms"] =
                json!(lso.and_then(|lag| lag.oldest_open_transaction_ms));
            view
        })
        .collect();
    let mut document = crate::views::topic(&topic);
    document["partitions"] = serde_json::Value::Array(partitions);
    document
}

/// Each partition's LSO lag from its owner (ADR 0016 §9), indexed by
/// partition; empty when the owners cannot be asked (the description is
/// still shown, with unknown lags).
async fn lso_lags(admin: &Admin, topic: &str) -> Vec<sluice_client::LsoLag> {
    match admin.lso_lag(topic).await {
        Ok(lags) => lags,
        Err(error) => {
            tracing::debug!(topic, %error, "no LSO lag");
            Vec::new()
        }
    }
}

/// The settings block of `topic describe`.
fn print_topic_settings(name: &str, config: &sluice_proto::v1::TopicConfig) {
    println!("topic:        {name}");
    println!("partitions:   {}", config.partitions);
    println!("durability:   {}", durability_name(config.durability));
    println!(
        "retention:    {}",
        format_retention(config.retention_ms, config.retention_bytes)
    );
    println!(
        "segment size: {}",
        or_default(config.segment_bytes, |bytes| or_never(bytes, format_bytes))
    );
    println!(
        "segment age:  {}",
        or_default(config.segment_ms, |ms| or_never(ms, format_duration_ms))
    );
    println!(
        "max batch:    {}",
        or_default(u64::from(config.max_batch_bytes), format_bytes)
    );
    println!(
        "message ttl:  {}",
        or_none(config.message_ttl_ms, format_duration_ms)
    );
    println!(
        "replication:  ensemble {} / write {} / ack {}",
        config.ensemble_size, config.write_quorum, config.ack_quorum
    );
    println!("backlog quota: {}", format_backlog_quota(config));
    println!(
        "cleanup:      {}",
        sluice_proto::cleanup::name(sluice_proto::cleanup::policy(config))
    );
}

fn or_default(value: u64, show: impl Fn(u64) -> String) -> String {
    if value == 0 {
        "server default".into()
    } else {
        show(value)
    }
}

/// `u64::MAX` means "never" for the roll settings.
fn or_never(value: u64, show: impl Fn(u64) -> String) -> String {
    if value == u64::MAX {
        "never".into()
    } else {
        show(value)
    }
}

fn or_none(value: u64, show: impl Fn(u64) -> String) -> String {
    if value == 0 {
        "none".into()
    } else {
        show(value)
    }
}

/// Retention for people: `7d, 10 GiB/partition`, `forever`.
fn format_retention(retention_ms: u64, retention_bytes: u64) -> String {
    let time = if retention_ms == 0 {
        "forever".to_string()
    } else {
        format_duration_ms(retention_ms)
    };
    if retention_bytes == 0 {
        time
    } else {
        format!("{time}, {}/partition", format_bytes(retention_bytes))
    }
}

/// A group's total lag over the partitions whose owners answered, and how
/// many did not (their lag is unknown, not 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagTotal {
    pub known: u64,
    pub unknown: usize,
}

impl LagTotal {
    pub fn of(lags: &[PartitionLag]) -> Self {
        Self {
            known: lags
                .iter()
                .filter(|lag| !lag.lag_unknown)
                .map(|lag| lag.lag)
                .fold(0, u64::saturating_add),
            unknown: lags.iter().filter(|lag| lag.lag_unknown).count(),
        }
    }

    /// `1200`, or `at least 1200 (2 partitions unknown: ...)`.
    pub fn text(&self) -> String {
        if self.unknown == 0 {
            self.known.to_string()
        } else {
            format!(
                "at least {} ({} partition(s) unknown: their owners could not be asked)",
                self.known, self.unknown
            )
        }
    }
}

/// `group describe` as tables; `ages` (time lag, ms) parallel to the lag.
fn print_group(description: &sluice_proto::v1::DescribeGroupResponse, ages: &[Option<u64>]) {
    println!("group:      {}", description.group);
    println!("state:      {}", description.state);
    println!("generation: {}", description.generation);
    println!("topics:     {}", description.topics.join(", "));
    println!("members:    {}", description.members.len());
    for member in &description.members {
        let owned: Vec<String> = member
            .assignment
            .iter()
            .map(|topic| format!("{}{:?}", topic.topic, topic.partitions))
            .collect();
        println!(
            "  {} ({}) epoch {} last heartbeat {} ms ago: {}",
            member.member_id,
            member.client_id,
            member.member_epoch,
            member.last_heartbeat_ms_ago,
            owned.join(" ")
        );
    }
    println!();
    let total = LagTotal::of(&description.lag);
    let rows: Vec<Vec<String>> = description
        .lag
        .iter()
        .zip(ages)
        .map(|(lag, age)| {
            vec![
                lag.topic.clone(),
                lag.partition.to_string(),
                if lag.committed_offset < 0 {
                    "-".to_string()
                } else {
                    lag.committed_offset.to_string()
                },
                if lag.lag_unknown {
                    "unknown".to_string()
                } else {
                    lag.high_watermark.to_string()
                },
                if lag.lag_unknown {
                    "unknown".to_string()
                } else {
                    lag.lag.to_string()
                },
                age.map_or_else(|| "-".to_string(), format_duration_ms),
                lag.member_id.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "END",
            "LAG",
            "LAG_TIME",
            "MEMBER",
        ],
        &rows,
    );
    println!("total lag: {}", total.text());
    for lag in description.lag.iter().filter(|lag| lag.lag_unknown) {
        println!(
            "  {}/{}: lag unknown: {}",
            lag.topic, lag.partition, lag.lag_unknown_reason
        );
    }
}

pub async fn group(config: ClientConfig, command: GroupCommand) -> Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        GroupCommand::ResetOffsets(args) => {
            crate::group_offsets::reset_offsets(&admin, args).await?
        }
        GroupCommand::Delete { group } => crate::group_offsets::delete(&admin, &group).await?,
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            if json() {
                let names: Vec<serde_json::Value> = groups
                    .iter()
                    .map(|group| json!({ "group": group.group }))
                    .collect();
                return print_json(&json!({ "groups": names }));
            }
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|group| vec![group.group.clone()])
                .collect();
            print_table(&["GROUP"], &rows);
        }
        GroupCommand::Describe { group } => {
            let description = admin.describe_group(&group).await?;
            let ages = oldest_unconsumed_ages(&admin, &description.lag).await;
            if json() {
                return print_json(&crate::views::group(&description, &ages));
            }
            print_group(&description, &ages);
        }
    }
    Ok(())
}
