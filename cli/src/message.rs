//! `sluice message`: look messages up by id (`get`), by key, tag or time
//! range (`find`), and ask why one was or was not delivered to a
//! subscription (`why`), through the SDK's `Admin` (ADR 0013).

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use sluice_client::{Admin, ClientConfig, ConsumerRecord, MessageQuery, MAX_FIND_LIMIT};
use sluice_proto::v1::MessageState;
use std::io::Write;

#[derive(Subcommand)]
pub enum MessageCommand {
    /// Print one message by id: topic, partition and offset.
    Get {
        topic: String,
        partition: u32,
        offset: u64,
    },
    /// Find messages by key, tag and/or time range (every filter given must match).
    Find(FindArgs),
    /// Say why a message was or was not delivered to a subscription.
    Why {
        topic: String,
        partition: u32,
        offset: u64,
        /// The subscription asked about.
        #[arg(long)]
        subscription: String,
    },
}

#[derive(Args)]
pub struct FindArgs {
    pub topic: String,
    /// Only this partition (repeatable); default every partition.
    #[arg(long = "partition")]
    pub partitions: Vec<u32>,
    /// Records with exactly this key (UTF-8).
    #[arg(long)]
    pub key: Option<String>,
    /// Records carrying this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Records with a timestamp at or after this (unix ms).
    #[arg(long)]
    pub from_time_ms: Option<i64>,
    /// Records with a timestamp at or before this (unix ms).
    #[arg(long)]
    pub to_time_ms: Option<i64>,
    /// Most messages printed.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Continue an earlier search: PARTITION:OFFSET as it printed
    /// (repeatable); only those partitions are searched.
    #[arg(long = "continue", value_parser = parse_position)]
    pub continue_from: Vec<(u32, u64)>,
}

/// `PARTITION:OFFSET`.
fn parse_position(text: &str) -> Result<(u32, u64), String> {
    let (partition, offset) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not PARTITION:OFFSET"))?;
    let partition = partition
        .parse()
        .map_err(|_| format!("{partition:?} is not a partition number"))?;
    let offset = offset
        .parse()
        .map_err(|_| format!("{offset:?} is not an offset"))?;
    Ok((partition, offset))
}

pub async fn run(client: ClientConfig, command: MessageCommand) -> Result<()> {
    let admin = Admin::connect(client).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        MessageCommand::Get {
            topic,
            partition,
            offset,
        } => {
            let record = admin.get_message(&topic, partition, offset).await?;
            if crate::output::json() {
                return crate::output::print_json(&record_json(&record));
            }
            print_record(&record, &mut out)?;
        }
        MessageCommand::Find(args) => {
            let query = query_of(&args)?;
            let found = admin.find_messages(query).await?;
            if crate::output::json() {
                let continue_from: Vec<serde_json::Value> = found
                    .continue_from
                    .iter()
                    .map(|(partition, offset)| serde_json::json!({"partition": partition, "offset": offset}))
                    .collect();
                return crate::output::print_json(&serde_json::json!({
                    "messages": found.records.iter().map(record_json).collect::<Vec<_>>(),
                    "notes": found.notes,
                    "continue_from": continue_from,
                }));
            }
            for record in &found.records {
                print_record(record, &mut out)?;
            }
            for note in &found.notes {
                eprintln!("note: {note}");
            }
            if !found.continue_from.is_empty() {
                let positions: Vec<String> = found
                    .continue_from
                    .iter()
                    .map(|(partition, offset)| format!("--continue {partition}:{offset}"))
                    .collect();
                eprintln!(
                    "more may match: the search stopped early; go on with {}",
                    positions.join(" ")
                );
            }
            eprintln!("{} message(s) found", found.records.len());
        }
        MessageCommand::Why {
            topic,
            partition,
            offset,
            subscription,
        } => {
            let why = admin
                .explain_message(&topic, partition, offset, &subscription)
                .await?;
            if crate::output::json() {
                return crate::output::print_json(&serde_json::json!({
                    "state": state_name(why.state()).to_ascii_lowercase(),
                    "explanation": why.explanation,
                    "delivery_count": why.delivery_count,
                    "log_start_offset": why.log_start_offset,
                    "high_watermark": why.high_watermark,
                    "mark_delete": why.mark_delete,
                    "from_dispatcher": why.from_dispatcher,
                }));
            }
            writeln!(out, "{}: {}", state_name(why.state()), why.explanation)?;
            if why.delivery_count > 0 {
                writeln!(out, "deliveries: {}", why.delivery_count)?;
            }
            writeln!(
                out,
                "log: offsets {} to {}; cursor: acknowledged below {}; source: {}",
                why.log_start_offset,
                why.high_watermark,
                why.mark_delete,
                if why.from_dispatcher {
                    "the running dispatcher"
                } else {
                    "the stored cursor"
                }
            )?;
        }
    }
    Ok(())
}

/// The SDK query for `find`'s arguments.
fn query_of(args: &FindArgs) -> Result<MessageQuery> {
    if args.key.is_none()
        && args.tag.is_none()
        && args.from_time_ms.is_none()
        && args.to_time_ms.is_none()
    {
        return Err(anyhow!(
            "give --key, --tag or --from-time-ms/--to-time-ms to find messages by"
        ));
    }
    if args.limit == 0 || args.limit > MAX_FIND_LIMIT {
        return Err(anyhow!("--limit must be 1 to {MAX_FIND_LIMIT}"));
    }
    let mut query = MessageQuery::new(&args.topic)
        .time_range(args.from_time_ms, args.to_time_ms)
        .limit(args.limit);
    if let Some(key) = &args.key {
        query = query.key(key.clone().into_bytes());
    }
    if let Some(tag) = &args.tag {
        query = query.tag(tag.clone());
    }
    if !args.partitions.is_empty() {
        query = query.partitions(args.partitions.clone());
    }
    query.from_offsets = args.continue_from.clone();
    Ok(query)
}

/// `PARTITION OFFSET TIMESTAMP_MS key=K tags=a,b VALUE [header=value...]`,
/// tab separated.
/// A record for `--output json`: key and value as (lossy) UTF-8 text.
fn record_json(record: &ConsumerRecord) -> serde_json::Value {
    let text = |bytes: Option<&[u8]>| bytes.map(|bytes| String::from_utf8_lossy(bytes).to_string());
    let headers: serde_json::Map<String, serde_json::Value> = record
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                String::from_utf8_lossy(value).to_string().into(),
            )
        })
        .collect();
    serde_json::json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": crate::units::format_unix_ms(record.timestamp_ms),
        "key": text(record.key.as_deref()),
        "value": text(record.value.as_deref()),
        "tags": record.tags,
        "headers": headers,
    })
}

fn print_record(record: &ConsumerRecord, out: &mut impl Write) -> std::io::Result<()> {
    let key = record
        .key
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let value = record
        .value
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    write!(
        out,
        "{}\t{}\t{}\tkey={key}\ttags={}\t{value}",
        record.partition,
        record.offset,
        crate::units::format_unix_ms(record.timestamp_ms),
        record.tags.join(",")
    )?;
    for (name, value) in &record.headers {
        write!(out, "\t{name}={}", String::from_utf8_lossy(value))?;
    }
    writeln!(out)
}

/// Short upper-case name of a state, as printed first by `why`.
fn state_name(state: MessageState) -> &'static str {
    match state {
        MessageState::Unspecified => "UNKNOWN",
        MessageState::NotFound => "NOT_FOUND",
        MessageState::Pending => "PENDING",
        MessageState::Ready => "READY",
        MessageState::InFlight => "IN_FLIGHT",
        MessageState::WaitingForRedelivery => "WAITING_FOR_REDELIVERY",
        MessageState::BeingDeadLettered => "BEING_DEAD_LETTERED",
        MessageState::Acknowledged => "ACKNOWLEDGED",
        MessageState::Filtered => "FILTERED",
        MessageState::Expired => "EXPIRED",
        MessageState::DeadLettered => "DEAD_LETTERED",
        MessageState::Delayed => "DELAYED",
        MessageState::BeforeStart => "BEFORE_START",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key: Option<&str>, limit: u32) -> FindArgs {
        FindArgs {
            topic: "orders".to_string(),
            partitions: vec![1],
            key: key.map(str::to_string),
            tag: None,
            from_time_ms: Some(5),
            to_time_ms: None,
            limit,
            continue_from: vec![(1, 40)],
        }
    }

    #[test]
    fn find_arguments_become_a_query_and_absurd_ones_are_refused() {
        let query = query_of(&args(Some("k"), 7)).expect("valid");
        assert_eq!(query.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(query.partitions, Some(vec![1]));
        assert_eq!(query.from_time_ms, Some(5));
        assert_eq!(query.limit, 7);
        assert_eq!(query.from_offsets, vec![(1, 40)]);
        assert_eq!(parse_position("3:17"), Ok((3, 17)));
        for bad in ["3", "x:1", "1:-2", ""] {
            assert!(parse_position(bad).is_err(), "{bad}");
        }
        assert!(query_of(&args(Some("k"), 0)).is_err());
        assert!(query_of(&args(Some("k"), MAX_FIND_LIMIT + 1)).is_err());
        let mut no_filter = args(None, 5);
        no_filter.from_time_ms = None;
        assert!(query_of(&no_filter).is_err());
    }

    #[test]
    fn records_print_on_one_tab_separated_line() {
        let record = ConsumerRecord {
            topic: "orders".to_string(),
            partition: 2,
            offset: 9,
            timestamp_ms: 1000,
            key: Some("k".into()),
            value: Some("hello".into()),
            headers: vec![("h".to_string(), "v".into())],
            tags: vec!["a".to_string(), "b".to_string()],
        };
        let mut out = Vec::new();
        print_record(&record, &mut out).expect("print");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "2\t9\t1970-01-01T00:00:01.000Z\tkey=k\ttags=a,b\thello\th=v\n"
        );
    }
}
