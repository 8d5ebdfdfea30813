//! `sluice consume TOPIC`: prints records to stdout, in a consumer group
//! (`--group`) or from a position without one.
//!
//! Without `--follow` it stops once no record arrived for
//! `--idle-timeout-ms`, so scripts can drain a topic.

use anyhow::{bail, Result};
use clap::Args;
use sluice_client::{Admin, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, StartOffset};
use std::io::Write;
use std::time::Duration;

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
    /// Without --follow: stop after this long without a record, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub idle_timeout_ms: u64,
    /// Print `key<TAB>value`.
    #[arg(long)]
    pub print_key: bool,
    /// Print `partition<TAB>offset<TAB>` before each record.
    #[arg(long)]
    pub print_offset: bool,
    /// Print headers as `name=value` after the value.
    #[arg(long)]
    pub print_headers: bool,
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
    let start = start_offset(&args);
    Admin::connect(client.clone())
        .await?
        .wait_until_writable(&args.topic, Duration::from_millis(WAIT_FOR_OWNERS_MS))
        .await?;
    let config = ConsumerConfig {
        client: client.clone(),
        group: args.group.clone(),
        reset: start,
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
