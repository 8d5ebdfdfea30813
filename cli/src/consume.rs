//! `sluice consume TOPIC`: prints records to stdout, in a consumer group
//! (`--group`), from a position without one, or as a consumer of a
//! subscription (`--subscription`, queue semantics: each message is
//! acknowledged once it is printed).
//!
//! Without `--follow` it stops once no record arrived for
//! `--idle-timeout-ms`, so scripts can drain a topic.

use anyhow::{bail, Result};
use clap::Args;
use sluice_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, InitialPosition, Isolation,
    Message, SelectorKind, StartOffset, Subscriber, SubscriberConfig, SubscriptionType,
};
use std::future::IntoFuture;
use std::io::Write;
use std::time::Duration;

/// `--isolation` (ADR 0016 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum IsolationArg {
    ReadCommitted,
    ReadUncommitted,
}

impl IsolationArg {
    fn isolation(self) -> Isolation {
        match self {
            IsolationArg::ReadCommitted => Isolation::ReadCommitted,
            IsolationArg::ReadUncommitted => Isolation::ReadUncommitted,
        }
    }
}

#[derive(Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consume in this group (committed offsets, shared partitions).
    #[arg(long)]
    pub group: Option<String>,
    /// Start at the oldest retained record when there is no committed offset.
    #[arg(long)]
    pub from_beginning: bool,
    /// Read only this partition (without a group).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Start at this offset (needs --partition; without a group).
    #[arg(long)]
    pub offset: Option<u64>,
    /// Start at the first record at or after this unix time in ms (without a group).
    #[arg(long)]
    pub from_timestamp_ms: Option<i64>,
    /// Stop after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Keep waiting for new records instead of stopping when idle.
    #[arg(long)]
    pub follow: bool,
    /// Without --follow: stop after this long without a record (`3s`, or milliseconds).
    #[arg(long, value_name = "DURATION", default_value = "3000", value_parser = crate::units::parse_duration_ms)]
    pub idle_timeout_ms: u64,
    /// Records of transactions: read_committed (the default) shows only
    /// committed ones and nothing past an open transaction;
    /// read_uncommitted shows every record, aborted ones included. Not
    /// with --subscription.
    #[arg(long, value_enum, conflicts_with = "subscription")]
    pub isolation: Option<IsolationArg>,
    /// Print `key<TAB>value`.
    #[arg(long)]
    pub print_key: bool,
    /// Print `partition<TAB>offset<TAB>` before each record.
    #[arg(long)]
    pub print_offset: bool,
    /// Print headers as `name=value` after the value.
    #[arg(long)]
    pub print_headers: bool,
    /// Consume as a consumer of this subscription (created if missing with
    /// the options below): every printed message is acknowledged.
    #[arg(long)]
    pub subscription: Option<String>,
    /// Subscription type when creating it: shared (the default), exclusive,
    /// failover or key-shared. An existing subscription is used as it is
    /// (this, --selector-kind and --selector must then match it).
    #[arg(long = "type", value_name = "TYPE", requires = "subscription")]
    pub subscription_type: Option<String>,
    /// Selector kind when creating the subscription: all (the default), tag
    /// or sql.
    #[arg(long, requires = "subscription")]
    pub selector_kind: Option<String>,
    /// Selector expression (`tagA || tagB`, or SQL over headers such as
    /// `region = 'eu' AND amount > 100`).
    #[arg(long, requires = "subscription")]
    pub selector: Option<String>,
}

fn start_offset(args: &ConsumeArgs) -> StartOffset {
    if let Some(offset) = args.offset {
        StartOffset::Offset(offset)
    } else if let Some(timestamp) = args.from_timestamp_ms {
        StartOffset::Timestamp(timestamp)
    } else if args.from_beginning || !args.follow {
        // Draining without --follow from the end would print nothing.
        StartOffset::Earliest
    } else {
        StartOffset::Latest
    }
}

fn print_record(
    record: &ConsumerRecord,
    args: &ConsumeArgs,
    out: &mut impl Write,
) -> std::io::Result<()> {
    if args.print_offset {
        write!(out, "{}\t{}\t", record.partition, record.offset)?;
    }
    if args.print_key {
        let key = record
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        write!(out, "{key}\t")?;
    }
    let value = record
        .value
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    write!(out, "{value}")?;
    if args.print_headers {
        for (name, value) in &record.headers {
            write!(out, "\t{name}={}", String::from_utf8_lossy(value))?;
        }
    }
    writeln!(out)
}

/// How long `sluice consume` waits for the topic's partitions to be served
/// (right after a topic is created or the cluster restarted) before the
/// idle timeout starts to count.
const WAIT_FOR_OWNERS_MS: u64 = 30_000;

pub async fn run(client: ClientConfig, args: ConsumeArgs) -> Result<()> {
    if args.subscription.is_some() {
        return run_subscription(client, args).await;
    }
    let start = start_offset(&args);
    Admin::connect(client.clone())
        .await?
        .wait_until_writable(&args.topic, Duration::from_millis(WAIT_FOR_OWNERS_MS))
        .await?;
    let config = ConsumerConfig {
        client: client.clone(),
        group: args.group.clone(),
        reset: start,
        isolation: args
            .isolation
            .map_or(Isolation::ReadCommitted, IsolationArg::isolation),
        ..ConsumerConfig::default()
    };
    let mut consumer = match &args.group {
        Some(_) => {
            if args.partition.is_some() || args.offset.is_some() || args.from_timestamp_ms.is_some()
            {
                bail!("--partition, --offset and --from-timestamp-ms read without a group; drop --group or them");
            }
            Consumer::subscribe(config, &[args.topic.as_str()]).await?
        }
        None => {
            if args.offset.is_some() && args.partition.is_none() {
                bail!("--offset needs --partition (offsets are per partition)");
            }
            let partitions: Vec<u32> = match args.partition {
                Some(partition) => vec![partition],
                None => {
                    let admin = Admin::connect(client).await?;
                    let description = admin.describe_topic(&args.topic).await?;
                    let count = description
                        .topic
                        .and_then(|topic| topic.config)
                        .map(|config| config.partitions)
                        .unwrap_or(0);
                    (0..count).collect()
                }
            };
            let assignment = partitions
                .into_iter()
                .map(|partition| (args.topic.clone(), partition, start))
                .collect();
            Consumer::assign(config, assignment).await?
        }
    };

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count: u64 = 0;
    let idle = Duration::from_millis(args.idle_timeout_ms);
    loop {
        if args.max_messages.is_some_and(|max| count >= max) {
            break;
        }
        let record = if args.follow {
            out.flush()?;
            Some(consumer.recv().await?)
        } else {
            consumer.recv_timeout(idle).await?
        };
        let Some(record) = record else { break };
        print_record(&record, &args, &mut out)?;
        count += 1;
    }
    out.flush()?;
    drop(out);
    consumer.close().await?;
    eprintln!("consumed {count} record(s) from {}", args.topic);
    Ok(())
}

pub fn parse_subscription_type(text: &str) -> Result<SubscriptionType> {
    Ok(match text {
        "shared" => SubscriptionType::Shared,
        "exclusive" => SubscriptionType::Exclusive,
        "failover" => SubscriptionType::Failover,
        "key-shared" | "key_shared" => SubscriptionType::KeyShared,
        other => bail!(
            "unknown subscription type {other:?}: use shared, exclusive, failover or key-shared"
        ),
    })
}

pub fn parse_selector_kind(text: &str) -> Result<SelectorKind> {
    Ok(match text {
        "all" => SelectorKind::All,
        "tag" => SelectorKind::Tag,
        "sql" => SelectorKind::Sql,
        other => bail!("unknown selector kind {other:?}: use all, tag or sql"),
    })
}

fn as_record(message: Message) -> ConsumerRecord {
    ConsumerRecord {
        topic: message.topic,
        partition: message.partition,
        offset: message.offset,
        timestamp_ms: message.timestamp_ms,
        key: message.key,
        value: message.value,
        headers: message.headers,
        tags: message.tags,
    }
}

/// Acknowledgements awaited at once before the next message is printed.
const MAX_ACKS_IN_FLIGHT: usize = 1024;

/// `--subscription`: prints each message, flushes stdout, then
/// acknowledges it (so a crash never loses a message that was not
/// printed; it may print one twice).
async fn run_subscription(client: ClientConfig, args: ConsumeArgs) -> Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt};
    if args.group.is_some()
        || args.partition.is_some()
        || args.offset.is_some()
        || args.from_timestamp_ms.is_some()
    {
        bail!("--subscription reads the whole topic from the subscription's cursor; drop --group, --partition, --offset and --from-timestamp-ms");
    }
    let Some(subscription) = args.subscription.clone() else {
        bail!("--subscription is missing");
    };
    let selector_kind_name = args.selector_kind.as_deref().unwrap_or("all");
    let selector_kind = parse_selector_kind(selector_kind_name)?;
    let selector = args.selector.clone().unwrap_or_default();
    if selector_kind != SelectorKind::All && selector.is_empty() {
        bail!("--selector-kind {selector_kind_name} needs --selector EXPRESSION");
    }
    let admin = Admin::connect(client.clone()).await?;
    admin
        .wait_until_writable(&args.topic, Duration::from_millis(WAIT_FOR_OWNERS_MS))
        .await?;
    let subscription_type =
        parse_subscription_type(args.subscription_type.as_deref().unwrap_or("shared"))?;
    // An existing subscription is consumed as it is (its initial position,
    // ack timeout and so on stay); settings given on the command line must
    // match it. A missing one is created with them.
    let create_if_missing = match admin.get_subscription(&args.topic, &subscription).await {
        Ok(stored) => {
            let mut differences = Vec::new();
            if args.subscription_type.is_some() && stored.r#type != subscription_type as i32 {
                differences.push(format!("type {}", stored.r#type().as_str_name()));
            }
            if args.selector_kind.is_some() && stored.selector_kind != selector_kind as i32 {
                differences.push(format!(
                    "selector kind {}",
                    stored.selector_kind().as_str_name()
                ));
            }
            if args.selector.is_some() && stored.selector != selector {
                differences.push(format!("selector {:?}", stored.selector));
            }
            if !differences.is_empty() {
                bail!(
                    "subscription {subscription} of {} exists with {}; drop the differing options or delete it (`sluice subscription delete`)",
                    args.topic,
                    differences.join(", ")
                );
            }
            false
        }
        Err(error) if error.code() == Some(sluice_proto::ErrorCode::UnknownSubscription) => true,
        Err(error) => return Err(error.into()),
    };
    let config = SubscriberConfig {
        client,
        create_if_missing,
        subscription_type,
        selector_kind,
        selector,
        // Draining without --follow from the end would print nothing.
        initial_position: if args.from_beginning || !args.follow {
            InitialPosition::Earliest
        } else {
            InitialPosition::Latest
        },
        ..SubscriberConfig::new(args.topic.clone(), subscription.clone())
    };
    let subscriber = Subscriber::connect(config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count: u64 = 0;
    let mut refused: u64 = 0;
    let mut receipts = FuturesUnordered::new();
    let idle = Duration::from_millis(args.idle_timeout_ms);
    loop {
        if args.max_messages.is_some_and(|max| count >= max) {
            break;
        }
        while receipts.len() >= MAX_ACKS_IN_FLIGHT {
            if let Some(Err(error)) = receipts.next().await {
                refused += 1;
                eprintln!("warning: acknowledgement failed (the message may come again): {error}");
            }
        }
        let message = if args.follow {
            Some(subscriber.recv().await?)
        } else {
            subscriber.recv_timeout(idle).await?
        };
        let Some(message) = message else { break };
        let receipt = {
            let record = as_record(message.clone());
            print_record(&record, &args, &mut out)?;
            out.flush()?;
            subscriber.ack_nowait(&message).await?
        };
        receipts.push(receipt.into_future());
        count += 1;
    }
    while let Some(result) = receipts.next().await {
        if let Err(error) = result {
            refused += 1;
            eprintln!("warning: acknowledgement failed (the message may come again): {error}");
        }
    }
    drop(out);
    subscriber.close().await?;
    eprintln!(
        "consumed {count} message(s) from {} as subscription {subscription}{}",
        args.topic,
        if refused > 0 {
            format!(", {refused} acknowledgement(s) refused")
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_settings_parse() {
        assert_eq!(
            parse_subscription_type("key-shared").expect("valid"),
            SubscriptionType::KeyShared
        );
        assert_eq!(
            parse_subscription_type("failover").expect("valid"),
            SubscriptionType::Failover
        );
        assert!(parse_subscription_type("queue").is_err());
        assert_eq!(
            parse_selector_kind("sql").expect("valid"),
            SelectorKind::Sql
        );
        assert!(parse_selector_kind("regex").is_err());
    }
}
