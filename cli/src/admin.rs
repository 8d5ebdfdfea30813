//! `sluice topic`, `sluice group` and `sluice cluster`: administration
//! through the SDK's `Admin`, printed as aligned tables.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sluice_client::{Admin, ClientConfig};
use sluice_proto::v1::{BacklogPolicy, Durability, NodeInfo, NodeLoad, SegmentState, TopicConfig};

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
    /// Delete closed segments older than this many milliseconds (0: server default).
    #[arg(long, default_value_t = 0)]
    pub retention_ms: u64,
    /// Keep each partition below this many bytes by deleting its oldest segments (0: server default).
    #[arg(long, default_value_t = 0)]
    pub retention_bytes: u64,
    /// `fsync` (acknowledge after fsync, the default) or `periodic` (fsync on a timer; a power
    /// loss can lose recently acknowledged records).
    #[arg(long, default_value = "fsync")]
    pub durability: String,
    /// Roll segments at this size in bytes (0: server default).
    #[arg(long, default_value_t = 0)]
    pub segment_bytes: u64,
    /// Largest accepted batch in bytes (0: server default).
    #[arg(long, default_value_t = 0)]
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
    /// Backlog quota in (estimated) bytes (0: no quota).
    #[arg(long, default_value_t = 0)]
    pub backlog_quota_bytes: u64,
    /// Backlog quota on the age of the oldest unacknowledged message (0: no quota).
    #[arg(long, default_value_t = 0)]
    pub backlog_quota_age_ms: u64,
    /// Produce acknowledgements say WARN from this percentage of a quota (0: 80).
    #[arg(long, default_value_t = 0)]
    pub backlog_warn_percent: u32,
    /// At a backlog quota: `hold` producers (bounded by --backlog-hold-timeout-ms), `reject`
    /// their batches, or `evict` the oldest unacknowledged messages.
    #[arg(long, default_value = "hold")]
    pub backlog_policy: String,
    /// HOLD: longest a batch waits for the backlog to drop (0: 30000).
    #[arg(long, default_value_t = 0)]
    pub backlog_hold_timeout_ms: u64,
    /// Messages older than this are never delivered to subscriptions (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub message_ttl_ms: u64,
    /// Retention deletes by time and size alone, even what a subscription has not consumed.
    #[arg(long)]
    pub retention_ignores_subscriptions: bool,
}

/// Most partitions whose time lag `group describe` looks up.
const MAX_TIME_LAG_LOOKUPS: usize = 256;

/// Time lag per partition of a group: how old the first unconsumed record
/// is (its timestamp, read at the committed offset; "-" without lag or
/// when it cannot be read).
async fn oldest_unconsumed_ages(
    admin: &sluice_client::Admin,
    lags: &[sluice_proto::v1::PartitionLag],
) -> Vec<String> {
    let now_ms = sluice_proto::now_unix_ms();
    let lookups = lags.iter().enumerate().map(|(index, lag)| async move {
        if lag.lag == 0 || index >= MAX_TIME_LAG_LOOKUPS {
            return "-".to_string();
        }
        let offset = u64::try_from(lag.committed_offset).unwrap_or(0);
        match admin.get_message(&lag.topic, lag.partition, offset).await {
            Ok(record) => format!("{}ms", now_ms.saturating_sub(record.timestamp_ms).max(0)),
            Err(error) => {
                tracing::debug!(topic = %lag.topic, partition = lag.partition, %error, "no time lag");
                "-".to_string()
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
        limits.push(format!("{bytes} bytes"));
    }
    if age_ms > 0 {
        limits.push(format!("{age_ms} ms old"));
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
            format!("hold up to {} ms", config.backlog_hold_timeout_ms)
        }
    };
    format!(
        "{}; warn from {}%; at the limit: {policy}",
        limits.join(", "),
        config.backlog_warn_ratio_percent
    )
}

pub fn parse_backlog_policy(name: &str) -> Result<BacklogPolicy> {
    match name {
        "hold" => Ok(BacklogPolicy::Hold),
        "reject" => Ok(BacklogPolicy::Reject),
        "evict" => Ok(BacklogPolicy::Evict),
        other => bail!("unknown backlog policy {other:?}: use `hold`, `reject` or `evict`"),
    }
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

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Nameservers, brokers and stores with their leases and load.
    Status,
}

pub fn parse_durability(name: &str) -> Result<Durability> {
    match name {
        "fsync" => Ok(Durability::Fsync),
        "periodic" => Ok(Durability::Periodic),
        other => bail!("unknown durability {other:?}: use `fsync` or `periodic`"),
    }
}

/// Prints rows as columns padded to their widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(index, cell)| format!("{cell:<width$}", width = widths[index]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
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
                durability: parse_durability(&args.durability)? as i32,
                segment_bytes: args.segment_bytes,
                max_batch_bytes: args.max_batch_bytes,
                ensemble_size: args.ensemble_size,
                write_quorum: args.write_quorum,
                ack_quorum: args.ack_quorum,
                backlog_quota_messages: args.backlog_quota_messages,
                backlog_quota_bytes: args.backlog_quota_bytes,
                backlog_quota_age_ms: args.backlog_quota_age_ms,
                backlog_warn_ratio_percent: args.backlog_warn_percent,
                backlog_policy: parse_backlog_policy(&args.backlog_policy)? as i32,
                backlog_hold_timeout_ms: args.backlog_hold_timeout_ms,
                message_ttl_ms: args.message_ttl_ms,
                retention_ignores_subscriptions: args.retention_ignores_subscriptions,
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
            let topic = description.topic.unwrap_or_default();
            let config = topic.config.unwrap_or_default();
            println!("topic:        {}", topic.name);
            println!("partitions:   {}", config.partitions);
            println!("durability:   {}", durability_name(config.durability));
            println!(
                "retention:    {}",
                format_retention(config.retention_ms, config.retention_bytes)
            );
            println!("segment size: {} bytes", config.segment_bytes);
            println!(
                "replication:  ensemble {} / write {} / ack {}",
                config.ensemble_size, config.write_quorum, config.ack_quorum
            );
            println!("backlog quota: {}", format_backlog_quota(&config));
            println!();
            // The owners' reports of offline and damaged partitions; the
            // description is still shown when they cannot be read.
            let brokers = admin
                .cluster_status()
                .await
                .ok()
                .map(|status| status.brokers);
            let mut rows = Vec::new();
            let mut explanations = Vec::new();
            for partition in description.partitions {
                let health =
                    crate::partition_state::health(&topic.name, &partition, brokers.as_deref());
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
    match Durability::try_from(value) {
        Ok(Durability::Fsync) => "fsync",
        Ok(Durability::Periodic) => "periodic",
        _ => "default",
    }
}

fn format_retention(retention_ms: u64, retention_bytes: u64) -> String {
    let time = if retention_ms == 0 {
        "forever".to_string()
    } else {
        format!("{} h", retention_ms / 3_600_000)
    };
    if retention_bytes == 0 {
        time
    } else {
        format!("{time}, {} MiB/partition", retention_bytes / (1024 * 1024))
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
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|group| vec![group.group.clone()])
                .collect();
            print_table(&["GROUP"], &rows);
        }
        GroupCommand::Describe { group } => {
            let description = admin.describe_group(&group).await?;
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
            let total: u64 = description.lag.iter().map(|lag| lag.lag).sum();
            let ages = oldest_unconsumed_ages(&admin, &description.lag).await;
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
                        lag.high_watermark.to_string(),
                        lag.lag.to_string(),
                        age,
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
            println!("total lag: {total}");
        }
    }
    Ok(())
}

/// A store's open segment files against its budget, and opens the file
/// limit refused; empty for other nodes.
fn segment_files(load: &NodeLoad) -> String {
    if load.max_open_segment_files == 0 {
        return String::new();
    }
    let mut text = format!(
        "{}/{}",
        load.open_segment_files, load.max_open_segment_files
    );
    if load.refused_segment_file_opens > 0 {
        text.push_str(&format!(
            " ({} refused: file limit)",
            load.refused_segment_file_opens
        ));
    }
    text
}

fn node_rows(nodes: &[NodeInfo]) -> Vec<Vec<String>> {
    nodes
        .iter()
        .map(|node| {
            let load = node.load.clone().unwrap_or_default();
            let disk = if load.disk_total_bytes > 0 {
                format!(
                    "{:.1}/{:.1} GiB free",
                    load.disk_free_bytes as f64 / (1u64 << 30) as f64,
                    load.disk_total_bytes as f64 / (1u64 << 30) as f64
                )
            } else {
                String::new()
            };
            vec![
                node.node_id.clone(),
                node.address.clone(),
                format!("{} ms", node.lease_remaining_ms),
                if load.healthy {
                    "healthy".to_string()
                } else {
                    format!("unhealthy {}", load.detail)
                },
                load.partitions.to_string(),
                load.segments.to_string(),
                disk,
                segment_files(&load),
            ]
        })
        .collect()
}

pub async fn cluster(config: ClientConfig, command: ClusterCommand) -> Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        ClusterCommand::Status => {
            let status = admin.cluster_status().await?;
            println!("metadata backend: {}", status.metadata_backend);
            let assigner = if status.active_assigner.is_empty() {
                "none (election in progress)"
            } else {
                status.active_assigner.as_str()
            };
            println!("active nameserver (assigner): {assigner}");
            println!(
                "topics: {}  partitions: {}  offline partitions: {}  damaged partitions: {}",
                status.topics,
                status.partitions,
                status.offline_partitions,
                damaged_partition_count(&status.brokers)
            );
            let repairing: u32 = status
                .brokers
                .iter()
                .filter_map(|broker| broker.load.as_ref())
                .map(|load| load.repairs_in_progress)
                .sum();
            let repaired: u64 = status
                .brokers
                .iter()
                .filter_map(|broker| broker.load.as_ref())
                .map(|load| load.repaired_segments)
                .sum();
            let copied: u64 = status
                .brokers
                .iter()
                .filter_map(|broker| broker.load.as_ref())
                .map(|load| load.repair_bytes_copied)
                .sum();
            println!(
                "segments: {}  under-replicated: {}  repair: {repairing} running, \
                 {repaired} segments / {:.1} MiB repaired since the brokers started",
                status.segments,
                status.under_replicated_segments,
                copied as f64 / (1u64 << 20) as f64
            );
            let header = [
                "ID",
                "ADDRESS",
                "LEASE-LEFT",
                "HEALTH",
                "PARTITIONS",
                "SEGMENTS",
                "DISK",
                "SEGMENT-FILES",
            ];
            for (title, nodes) in [
                ("nameservers", &status.nameservers),
                ("brokers", &status.brokers),
                ("stores", &status.stores),
            ] {
                println!("\n{title} ({})", nodes.len());
                print_table(&header, &node_rows(nodes));
            }
            print_offline_partitions(&status.brokers);
            print_damaged_partitions(&status.brokers);
        }
    }
    Ok(())
}

/// Distinct partitions live brokers report with closed segments damaged
/// on every copy.
fn damaged_partition_count(brokers: &[NodeInfo]) -> usize {
    let partitions: std::collections::HashSet<(&str, u32)> = brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.damaged_partitions.iter())
        .map(|damaged| (damaged.topic.as_str(), damaged.partition))
        .collect();
    partitions.len()
}

/// The closed segments brokers report damaged on every copy (the
/// partitions stay online), each with the range and what to do.
fn print_damaged_partitions(brokers: &[NodeInfo]) {
    let damaged: Vec<_> = brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.damaged_partitions.iter())
        .collect();
    if damaged.is_empty() {
        return;
    }
    println!(
        "\ndamaged partitions ({}; online, a range unreadable)",
        damaged_partition_count(brokers)
    );
    for partition in damaged {
        println!(
            "  {}/{}: {}",
            partition.topic, partition.partition, partition.reason
        );
    }
}

/// The partitions brokers report offline, each with why and what to do.
fn print_offline_partitions(brokers: &[NodeInfo]) {
    let offline: Vec<_> = brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.offline_partitions.iter())
        .collect();
    if offline.is_empty() {
        return;
    }
    println!("\noffline partitions ({})", offline.len());
    for partition in offline {
        println!(
            "  {}/{}: {}",
            partition.topic, partition.partition, partition.reason
        );
    }
}
