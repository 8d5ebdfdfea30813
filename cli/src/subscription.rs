//! `sluice subscription`: create, list, describe and delete durable
//! subscriptions (queue semantics: exclusive, failover, shared,
//! key-shared) through the SDK's `Admin`.

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sluice_client::{Admin, ClientConfig, ClientError, SubscriptionLag};
use sluice_proto::v1::{
    BacklogPolicy, InitialPosition, PressureLevel, SelectorKind, Subscription, SubscriptionType,
};
use sluice_proto::ErrorCode;

#[derive(Subcommand)]
pub enum SubscriptionCommand {
    /// Create a subscription of a topic (the same settings again are accepted).
    Create(CreateSubscriptionArgs),
    /// List a topic's subscriptions.
    List { topic: String },
    /// Show every setting of one subscription, then its backlog and lag per
    /// partition (with a warning when a backlog quota is crossed).
    Describe { topic: String, name: String },
    /// Delete a subscription; created again it starts afresh.
    Delete { topic: String, name: String },
    /// Skip the next messages on every partition (never delivered; the cursor only moves forward).
    Skip {
        topic: String,
        name: String,
        /// Offsets to skip past each partition's acknowledged position.
        #[arg(long)]
        count: u64,
    },
    /// Skip everything not yet acknowledged, up to each partition's end.
    Clear { topic: String, name: String },
    /// Change a subscription's delivery settings and backlog quotas (the flags given).
    Update(crate::subscription_skip::UpdateSubscriptionArgs),
    /// Set the cursor to an offset or a time on every partition (rewinds too); the
    /// subscription must have no consumers.
    Reset {
        topic: String,
        name: String,
        /// The offset to deliver from.
        #[arg(long, conflicts_with = "to_time")]
        to_offset: Option<u64>,
        /// Deliver from the first record at or after this RFC 3339 time.
        #[arg(long)]
        to_time: Option<String>,
    },
    /// Write the subscription's dead letters back to the topic they came
    /// from (each acknowledged in the dead-letter topic once written).
    ReplayDeadLetters {
        topic: String,
        name: String,
        /// Stop after this long without a letter, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        idle_timeout_ms: u64,
        /// Replay at most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// How the subscription's consumers share its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    /// One consumer per partition; others are refused.
    Exclusive,
    /// One active consumer per partition, the others on standby.
    Failover,
    /// Any number of consumers, each message to one of them.
    Shared,
    /// Like shared, but one consumer at a time per key, in order.
    KeyShared,
}

impl From<TypeArg> for SubscriptionType {
    fn from(value: TypeArg) -> Self {
        match value {
            TypeArg::Exclusive => SubscriptionType::Exclusive,
            TypeArg::Failover => SubscriptionType::Failover,
            TypeArg::Shared => SubscriptionType::Shared,
            TypeArg::KeyShared => SubscriptionType::KeyShared,
        }
    }
}

/// The language of `--selector`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SelectorKindArg {
    /// `tagA || tagB`: messages carrying any listed tag.
    Tag,
    /// An SQL-92 condition over headers, e.g. `region = 'eu' AND amount > 100`.
    Sql,
}

impl SelectorKindArg {
    fn proto(self) -> SelectorKind {
        match self {
            SelectorKindArg::Tag => SelectorKind::Tag,
            SelectorKindArg::Sql => SelectorKind::Sql,
        }
    }

    fn parser(self) -> sluice_selector::SelectorKind {
        match self {
            SelectorKindArg::Tag => sluice_selector::SelectorKind::Tag,
            SelectorKindArg::Sql => sluice_selector::SelectorKind::Sql,
        }
    }
}

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitialPositionArg {
    /// The first retained message.
    Earliest,
    /// Messages produced after the subscription is created (it records
    /// each partition's end at creation).
    Latest,
}

/// What happens when a subscription reaches its backlog quota (ADR 0012).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BacklogPolicyArg {
    /// Producers wait (bounded by the topic's hold timeout).
    Hold,
    /// Producers' batches are refused.
    Reject,
    /// The subscription's oldest unacknowledged messages are skipped.
    Evict,
}

#[derive(Args)]
pub struct CreateSubscriptionArgs {
    pub topic: String,
    pub name: String,
    /// How consumers share the messages.
    #[arg(long = "type", value_enum)]
    pub subscription_type: TypeArg,
    /// Language of --selector; without both, every message is selected.
    #[arg(long, value_enum, requires = "selector")]
    pub selector_kind: Option<SelectorKindArg>,
    /// Only messages this expression selects are delivered.
    #[arg(long, requires = "selector_kind")]
    pub selector: Option<String>,
    /// Where the subscription starts.
    #[arg(long, value_enum, default_value = "latest")]
    pub initial_position: InitialPositionArg,
    /// Redeliver a message not acknowledged within this time (`30s`, or milliseconds; 0: server
    /// default, 30000).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = crate::units::parse_duration_ms)]
    pub ack_timeout_ms: u64,
    /// Move a message to the dead-letter topic after this many deliveries (0: never).
    #[arg(long, default_value_t = 0)]
    pub max_deliveries: u32,
    /// Where dead letters go (default TOPIC-NAME-DLQ, created when missing).
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// First redelivery delay after a negative acknowledgement (`1s`, or milliseconds; 0: server
    /// default, 1000).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = crate::units::parse_duration_ms)]
    pub redelivery_backoff_initial_ms: u64,
    /// Largest redelivery delay (`1m`, or milliseconds; 0: server default, 60000).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = crate::units::parse_duration_ms)]
    pub redelivery_backoff_max_ms: u64,
    /// This subscription's backlog quota in messages, replacing the topic's (0: the topic's).
    #[arg(long, default_value_t = 0)]
    pub backlog_quota_messages: u64,
    /// This subscription's backlog quota in (estimated) bytes (`1GiB`, or bytes; 0: the topic's).
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = crate::units::parse_bytes)]
    pub backlog_quota_bytes: u64,
    /// This subscription's quota on the oldest unacknowledged message's age (`1h`, or
    /// milliseconds; 0: the topic's).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = crate::units::parse_duration_ms)]
    pub backlog_quota_age_ms: u64,
    /// At this subscription's quota (default: the topic's policy).
    #[arg(long, value_enum)]
    pub backlog_policy: Option<BacklogPolicyArg>,
}

impl CreateSubscriptionArgs {
    fn to_subscription(&self) -> Subscription {
        Subscription {
            topic: self.topic.clone(),
            name: self.name.clone(),
            r#type: SubscriptionType::from(self.subscription_type) as i32,
            selector_kind: self
                .selector_kind
                .map_or(SelectorKind::All, SelectorKindArg::proto)
                as i32,
            selector: self.selector.clone().unwrap_or_default(),
            initial_position: match self.initial_position {
                InitialPositionArg::Earliest => InitialPosition::Earliest,
                InitialPositionArg::Latest => InitialPosition::Latest,
            } as i32,
            ack_timeout_ms: self.ack_timeout_ms,
            redelivery_backoff_initial_ms: self.redelivery_backoff_initial_ms,
            redelivery_backoff_max_ms: self.redelivery_backoff_max_ms,
            max_deliveries: self.max_deliveries,
            dead_letter_topic: self.dead_letter_topic.clone().unwrap_or_default(),
            created_at_ms: 0,
            backlog_quota_bytes: self.backlog_quota_bytes,
            backlog_quota_messages: self.backlog_quota_messages,
            backlog_quota_age_ms: self.backlog_quota_age_ms,
            backlog_policy: match self.backlog_policy {
                None => BacklogPolicy::Unspecified,
                Some(BacklogPolicyArg::Hold) => BacklogPolicy::Hold,
                Some(BacklogPolicyArg::Reject) => BacklogPolicy::Reject,
                Some(BacklogPolicyArg::Evict) => BacklogPolicy::Evict,
            } as i32,
            // "latest": the SDK reads each partition's end before creating.
            start_offsets: Vec::new(),
        }
    }
}

pub async fn run(config: ClientConfig, command: SubscriptionCommand) -> Result<()> {
    let admin = Admin::connect(config.clone()).await?;
    match command {
        SubscriptionCommand::Skip { topic, name, count } => {
            crate::subscription_skip::skip(&admin, &topic, &name, Some(count)).await?
        }
        SubscriptionCommand::Clear { topic, name } => {
            crate::subscription_skip::skip(&admin, &topic, &name, None).await?
        }
        SubscriptionCommand::Update(args) => crate::subscription_skip::update(&admin, args).await?,
        SubscriptionCommand::Reset {
            topic,
            name,
            to_offset,
            to_time,
        } => {
            crate::subscription_skip::reset(&admin, &topic, &name, to_offset, to_time.as_deref())
                .await?
        }
        SubscriptionCommand::ReplayDeadLetters {
            topic,
            name,
            idle_timeout_ms,
            limit,
        } => {
            crate::dead_letters::replay(config, &topic, &name, idle_timeout_ms, limit).await?;
        }
        SubscriptionCommand::Create(args) => {
            let created = admin
                .create_subscription(args.to_subscription())
                .await
                .map_err(|error| point_at_selector(error, &args))
                .with_context(|| {
                    format!("creating subscription {:?} of {:?}", args.name, args.topic)
                })?;
            print!("{}", describe(&created));
        }
        SubscriptionCommand::List { topic } => {
            let subscriptions = admin
                .list_subscriptions(&topic)
                .await
                .with_context(|| format!("listing subscriptions of {topic:?}"))?;
            if crate::output::json() {
                let list: Vec<serde_json::Value> = subscriptions
                    .iter()
                    .map(crate::views::subscription)
                    .collect();
                return crate::output::print_json(&serde_json::json!({ "subscriptions": list }));
            }
            let rows: Vec<Vec<String>> = subscriptions
                .iter()
                .map(|subscription| {
                    vec![
                        subscription.name.clone(),
                        type_name(subscription.r#type).to_string(),
                        selector_text(subscription),
                        subscription.ack_timeout_ms.to_string(),
                        subscription.max_deliveries.to_string(),
                        dash_if_empty(&subscription.dead_letter_topic),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME",
                        "TYPE",
                        "SELECTOR",
                        "ACK_TIMEOUT_MS",
                        "MAX_DELIVERIES",
                        "DEAD_LETTER_TOPIC"
                    ],
                    &rows
                )
            );
        }
        SubscriptionCommand::Describe { topic, name } => {
            let subscription = admin
                .get_subscription(&topic, &name)
                .await
                .with_context(|| format!("describing subscription {name:?} of {topic:?}"))?;
            if crate::output::json() {
                let mut document = crate::views::subscription(&subscription);
                document["backlog"] = match admin.describe_subscription(&topic, &name).await {
                    Ok(lag) => crate::views::subscription_lag(&lag),
                    Err(error) => serde_json::json!({ "error": error.to_string() }),
                };
                return crate::output::print_json(&document);
            }
            print!("{}", describe(&subscription));
            match admin.describe_subscription(&topic, &name).await {
                Ok(lag) => print!("\n{}", lag_report(&lag)),
                Err(error) => println!("\nbacklog: not available ({error})"),
            }
        }
        SubscriptionCommand::Delete { topic, name } => {
            admin
                .delete_subscription(&topic, &name)
                .await
                .with_context(|| format!("deleting subscription {name:?} of {topic:?}"))?;
            println!("deleted subscription {name} of {topic}");
        }
    }
    Ok(())
}

/// A selector the server refused is shown again with a caret under the
/// column. The server's message is the authority; the column comes from
/// parsing locally with the same crate, and is left out if this build
/// would accept the expression (a server of another version).
fn point_at_selector(error: ClientError, args: &CreateSubscriptionArgs) -> anyhow::Error {
    let (Some(kind), Some(expression)) = (args.selector_kind, args.selector.as_deref()) else {
        return error.into();
    };
    if error.code() != Some(ErrorCode::InvalidSelector) {
        return error.into();
    }
    match sluice_selector::Selector::parse(kind.parser(), expression) {
        Err(local) => anyhow!(
            "{error}\n  {expression}\n  {}^ column {}",
            " ".repeat(local.position),
            local.position
        ),
        Ok(_) => error.into(),
    }
}

fn type_name(value: i32) -> &'static str {
    match SubscriptionType::try_from(value) {
        Ok(SubscriptionType::Exclusive) => "exclusive",
        Ok(SubscriptionType::Failover) => "failover",
        Ok(SubscriptionType::Shared) => "shared",
        Ok(SubscriptionType::KeyShared) => "key-shared",
        Ok(SubscriptionType::Unspecified) | Err(_) => "unknown",
    }
}

fn selector_text(subscription: &Subscription) -> String {
    match SelectorKind::try_from(subscription.selector_kind) {
        Ok(SelectorKind::All) => "all".to_string(),
        Ok(SelectorKind::Tag) => format!("tag: {}", subscription.selector),
        Ok(SelectorKind::Sql) => format!("sql: {}", subscription.selector),
        Err(_) => format!("unknown: {}", subscription.selector),
    }
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// The subscription's own backlog quotas (ADR 0012), or that the topic's
/// apply.
fn subscription_quota_text(subscription: &Subscription) -> String {
    let parts = crate::admin::backlog_quota_limits(
        subscription.backlog_quota_messages,
        subscription.backlog_quota_bytes,
        subscription.backlog_quota_age_ms,
    );
    let policy = match BacklogPolicy::try_from(subscription.backlog_policy) {
        Ok(BacklogPolicy::Hold) => Some("hold"),
        Ok(BacklogPolicy::Reject) => Some("reject"),
        Ok(BacklogPolicy::Evict) => Some("evict"),
        _ => None,
    };
    if parts.is_empty() && policy.is_none() {
        return "the topic's".to_string();
    }
    let quotas = if parts.is_empty() {
        "the topic's quotas".to_string()
    } else {
        format!("{} (others the topic's)", parts.join(", "))
    };
    format!(
        "{quotas}; at the limit: {}",
        policy.unwrap_or("the topic's policy")
    )
}

/// Start offsets shown by `describe`; more partitions are counted.
const SHOWN_START_OFFSETS: usize = 8;

/// "latest", with where each partition starts when it was recorded at
/// creation.
fn latest_text(start_offsets: &[u64]) -> String {
    if start_offsets.is_empty() {
        return "latest".to_string();
    }
    let shown: Vec<String> = start_offsets
        .iter()
        .take(SHOWN_START_OFFSETS)
        .enumerate()
        .map(|(partition, offset)| format!("{partition}:{offset}"))
        .collect();
    let more = start_offsets.len().saturating_sub(SHOWN_START_OFFSETS);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("latest (from partition:offset {}{more})", shown.join(" "))
}

/// Every setting, one per line.
fn describe(subscription: &Subscription) -> String {
    let initial_position = match InitialPosition::try_from(subscription.initial_position) {
        Ok(InitialPosition::Earliest) => "earliest".to_string(),
        Ok(InitialPosition::Latest) => latest_text(&subscription.start_offsets),
        Err(_) => "unknown".to_string(),
    };
    let dead_letters = if subscription.max_deliveries == 0 {
        "never (max deliveries 0)".to_string()
    } else {
        format!(
            "after {} deliveries, to {}",
            subscription.max_deliveries, subscription.dead_letter_topic
        )
    };
    let rows = [
        ("topic", subscription.topic.clone()),
        ("subscription", subscription.name.clone()),
        ("type", type_name(subscription.r#type).to_string()),
        ("selector", selector_text(subscription)),
        ("initial position", initial_position),
        ("ack timeout ms", subscription.ack_timeout_ms.to_string()),
        (
            "redelivery backoff ms",
            format!(
                "{} doubling up to {}",
                subscription.redelivery_backoff_initial_ms, subscription.redelivery_backoff_max_ms
            ),
        ),
        ("dead letters", dead_letters),
        ("backlog quota", subscription_quota_text(subscription)),
        (
            "created at",
            crate::units::format_unix_ms(
                i64::try_from(subscription.created_at_ms).unwrap_or(i64::MAX),
            ),
        ),
    ];
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(label, value)| format!("{:<width$} {value}\n", format!("{label}:")))
        .collect()
}

fn milliseconds(value: Option<u64>) -> String {
    match value {
        None => "unknown".to_string(),
        Some(ms) if ms >= 10_000 => format!("{}s", ms / 1000),
        Some(ms) => format!("{ms}ms"),
    }
}

fn level_name(level: i32) -> &'static str {
    match PressureLevel::try_from(level) {
        Ok(PressureLevel::Ok) => "ok",
        Ok(PressureLevel::Warn) => "WARN",
        Ok(PressureLevel::Limit) => "LIMIT",
        Err(_) => "unknown",
    }
}

/// Totals, one row per partition, and a warning line per partition whose
/// backlog crossed a quota's warning line (ADR 0012).
fn lag_report(lag: &SubscriptionLag) -> String {
    let mut out = String::new();
    let unknown = lag
        .partitions
        .iter()
        .filter(|partition| partition.error != ErrorCode::None as i32)
        .count();
    if unknown > 0 {
        out.push_str(&format!(
            "{unknown} partition(s) unknown (their owners could not be asked): the totals below are lower bounds\n"
        ));
    }
    out.push_str(&format!(
        "backlog: {} messages, ~{} bytes, oldest unacknowledged {} old
",
        lag.backlog_messages,
        lag.backlog_bytes,
        milliseconds(Some(lag.oldest_unacknowledged_age_ms))
    ));
    out.push_str(&format!(
        "rates: drain {:.1} msg/s, incoming {:.1} msg/s; estimated drain time {}
",
        lag.drain_rate,
        lag.incoming_rate,
        milliseconds(lag.estimated_drain_ms)
    ));
    out.push_str(&format!(
        "consumers: {} connected, {} recommended; evicted by quota: {}
",
        lag.consumers, lag.recommended_consumers, lag.evicted
    ));
    let rows: Vec<Vec<String>> = lag
        .partitions
        .iter()
        .map(|partition| {
            if partition.error != ErrorCode::None as i32 {
                let code = ErrorCode::try_from(partition.error)
                    .map(|code| code.as_str_name())
                    .unwrap_or("ERROR");
                return vec![
                    partition.partition.to_string(),
                    format!("{code}: {}", partition.error_message),
                ];
            }
            vec![
                partition.partition.to_string(),
                partition.mark_delete.to_string(),
                partition.high_watermark.to_string(),
                partition.backlog_messages.to_string(),
                partition.backlog_bytes.to_string(),
                milliseconds(Some(partition.oldest_unacknowledged_age_ms)),
                format!("{:.1}", partition.drain_rate_milli_per_sec as f64 / 1000.0),
                milliseconds(u64::try_from(partition.estimated_drain_ms).ok()),
                partition.consumers.to_string(),
                partition.in_flight.to_string(),
                partition.redelivered.to_string(),
                partition.dead_lettered.to_string(),
                partition.evicted.to_string(),
                level_name(partition.pressure).to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PARTITION",
            "MARK_DELETE",
            "HIGH_WATERMARK",
            "BACKLOG",
            "BYTES",
            "OLDEST",
            "DRAIN/S",
            "DRAIN_TIME",
            "CONSUMERS",
            "IN_FLIGHT",
            "REDELIVERED",
            "DEAD_LETTERED",
            "EVICTED",
            "PRESSURE",
        ],
        &rows,
    ));
    for partition in &lag.partitions {
        let level = PressureLevel::try_from(partition.pressure).unwrap_or(PressureLevel::Ok);
        if partition.error == ErrorCode::None as i32 && level != PressureLevel::Ok {
            let what = if level == PressureLevel::Limit {
                "is at"
            } else {
                "crossed the warning line of"
            };
            out.push_str(&format!(
                "WARNING: partition {} {what} its backlog quota ({} messages, ~{} bytes, oldest {}; quota kind: {})\n",
                partition.partition,
                partition.backlog_messages,
                partition.backlog_bytes,
                milliseconds(Some(partition.oldest_unacknowledged_age_ms)),
                if partition.pressure_reason.is_empty() { "-" } else { &partition.pressure_reason },
            ));
        }
    }
    out
}

/// Rows as columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(subcommand)]
        command: SubscriptionCommand,
    }

    fn parse(args: &[&str]) -> Result<SubscriptionCommand, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("subscription").chain(args.iter().copied()))
            .map(|wrapper| wrapper.command)
    }

    #[test]
    fn create_flags_become_the_request() {
        let Ok(SubscriptionCommand::Create(args)) = parse(&[
            "create",
            "orders",
            "billing",
            "--type",
            "key-shared",
            "--selector-kind",
            "sql",
            "--selector",
            "region = 'eu'",
            "--initial-position",
            "earliest",
            "--ack-timeout-ms",
            "5000",
            "--max-deliveries",
            "4",
            "--dead-letter-topic",
            "parked",
            "--redelivery-backoff-initial-ms",
            "10",
            "--redelivery-backoff-max-ms",
            "20",
        ]) else {
            panic!("create parses");
        };
        assert_eq!(
            args.to_subscription(),
            Subscription {
                topic: "orders".to_string(),
                name: "billing".to_string(),
                r#type: SubscriptionType::KeyShared as i32,
                selector_kind: SelectorKind::Sql as i32,
                selector: "region = 'eu'".to_string(),
                initial_position: InitialPosition::Earliest as i32,
                ack_timeout_ms: 5_000,
                redelivery_backoff_initial_ms: 10,
                redelivery_backoff_max_ms: 20,
                max_deliveries: 4,
                dead_letter_topic: "parked".to_string(),
                created_at_ms: 0,
                ..Subscription::default()
            }
        );
        let Ok(SubscriptionCommand::Create(minimal)) =
            parse(&["create", "orders", "audit", "--type", "shared"])
        else {
            panic!("minimal create parses");
        };
        let request = minimal.to_subscription();
        assert_eq!(request.selector_kind, SelectorKind::All as i32);
        assert_eq!(request.initial_position, InitialPosition::Latest as i32);
        assert_eq!(request.ack_timeout_ms, 0);
    }

    #[test]
    fn bad_flags_are_refused() {
        for args in [
            &["create", "orders", "billing"][..],
            &["create", "orders", "billing", "--type", "fanout"],
            &[
                "create",
                "orders",
                "billing",
                "--type",
                "shared",
                "--selector",
                "x",
            ],
            &[
                "create",
                "orders",
                "billing",
                "--type",
                "shared",
                "--selector-kind",
                "sql",
            ],
            &[
                "create",
                "orders",
                "billing",
                "--type",
                "shared",
                "--selector-kind",
                "all",
                "--selector",
                "x",
            ],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }

    #[test]
    fn a_refused_selector_gets_a_caret_under_its_column() {
        let Ok(SubscriptionCommand::Create(args)) = parse(&[
            "create",
            "orders",
            "billing",
            "--type",
            "shared",
            "--selector-kind",
            "sql",
            "--selector",
            "a = = 1",
        ]) else {
            panic!("create parses");
        };
        let refused = ClientError::Server(sluice_proto::SluiceError::new(
            ErrorCode::InvalidSelector,
            "invalid selector",
        ));
        let text = point_at_selector(refused, &args).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1], "  a = = 1");
        assert_eq!(lines[2], "      ^ column 4");
        // Other errors pass through unchanged.
        let other = ClientError::Server(sluice_proto::SluiceError::new(
            ErrorCode::UnknownTopic,
            "unknown topic",
        ));
        assert!(!point_at_selector(other, &args).to_string().contains('^'));
    }

    #[test]
    fn descriptions_show_every_setting() {
        let text = describe(&Subscription {
            topic: "orders".to_string(),
            name: "billing".to_string(),
            r#type: SubscriptionType::Failover as i32,
            selector_kind: SelectorKind::Tag as i32,
            selector: "red || blue".to_string(),
            ack_timeout_ms: 30_000,
            redelivery_backoff_initial_ms: 1_000,
            redelivery_backoff_max_ms: 60_000,
            max_deliveries: 5,
            dead_letter_topic: "orders-billing-DLQ".to_string(),
            ..Subscription::default()
        });
        for expected in [
            "type:                  failover",
            "selector:              tag: red || blue",
            "initial position:      latest",
            "redelivery backoff ms: 1000 doubling up to 60000",
            "dead letters:          after 5 deliveries, to orders-billing-DLQ",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        assert_eq!(latest_text(&[]), "latest");
        assert_eq!(
            latest_text(&[2, 0, u64::MAX]),
            format!("latest (from partition:offset 0:2 1:0 2:{})", u64::MAX)
        );
        assert_eq!(
            latest_text(&[7; 10]),
            "latest (from partition:offset 0:7 1:7 2:7 3:7 4:7 5:7 6:7 7:7 and 2 more)"
        );
        let listed = table(
            &["NAME", "TYPE"],
            &[vec!["billing".to_string(), "shared".to_string()]],
        );
        assert_eq!(listed, "NAME     TYPE\nbilling  shared\n");
    }

    #[test]
    fn lag_report_shows_partitions_and_warns_at_the_quota() {
        let lag = SubscriptionLag::merge(
            "orders",
            "billing",
            SubscriptionType::Shared,
            vec![
                sluice_proto::v1::SubscriptionPartitionLag {
                    partition: 0,
                    backlog_messages: 85,
                    high_watermark: 100,
                    mark_delete: 15,
                    pressure: PressureLevel::Warn as i32,
                    pressure_reason: "messages".into(),
                    estimated_drain_ms: -1,
                    ..Default::default()
                },
                sluice_proto::v1::SubscriptionPartitionLag {
                    partition: 1,
                    error: ErrorCode::Unavailable as i32,
                    error_message: "no owner".into(),
                    ..Default::default()
                },
            ],
            60_000,
        );
        let report = lag_report(&lag);
        assert!(report.contains("backlog: 85 messages"), "{report}");
        assert!(report.contains("estimated drain time unknown"), "{report}");
        assert!(
            report.contains(
                "WARNING: partition 0 crossed the warning line of its backlog quota (85 messages"
            ),
            "{report}"
        );
        assert!(report.contains("quota kind: messages"), "{report}");
        assert!(report.contains("UNAVAILABLE: no owner"), "{report}");
        assert!(!report.contains("WARNING: partition 1"), "{report}");
        assert!(
            report.contains("1 partition(s) unknown") && report.contains("lower bounds"),
            "{report}"
        );
        let json = crate::views::subscription_lag(&lag);
        assert_eq!(json["partitions_unknown"], 1, "{json}");
        assert_eq!(json["partitions"][1]["error"], "UNAVAILABLE", "{json}");
    }
}
