//! `sluice produce TOPIC`: sends each argument, or each line of stdin, as
//! one record; waits until every record is acknowledged.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use sluice_client::{ClientConfig, Producer, ProducerConfig, Record};
use tokio::io::AsyncBufReadExt;

#[derive(Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Record values; when absent, one record per line of stdin.
    pub values: Vec<String>,
    /// Key for every record (records with one key stay in one partition).
    #[arg(long)]
    pub key: Option<String>,
    /// Read `KEY<separator>VALUE` lines and key each record (Kafka's `parse.key`).
    #[arg(long)]
    pub key_separator: Option<String>,
    /// A header `name=value`; repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A tag; repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Send to this partition instead of choosing by key.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Batch compression.
    #[arg(long, default_value = "none", value_parser = ["none", "lz4", "zstd"])]
    pub compression: String,
    /// Print partition and offset of every record.
    #[arg(long)]
    pub print_offsets: bool,
}

fn parse_header(header: &str) -> Result<(String, Bytes)> {
    match header.split_once('=') {
        Some((name, value)) if !name.is_empty() => {
            Ok((name.to_string(), Bytes::from(value.to_string())))
        }
        _ => bail!("header {header:?} is not of the form name=value"),
    }
}

pub async fn run(client: ClientConfig, args: ProduceArgs) -> Result<()> {
    let compression =
        sluice_proto::batch::Compression::parse(&args.compression).with_context(|| {
            format!(
                "unknown compression {:?}: use none, lz4 or zstd",
                args.compression
            )
        })?;
    let headers: Vec<(String, Bytes)> = args
        .headers
        .iter()
        .map(|header| parse_header(header))
        .collect::<Result<_>>()?;
    let producer = Producer::new(ProducerConfig {
        client,
        compression,
        ..ProducerConfig::default()
    })
    .await?;

    let make_record = |line: String| -> Record {
        let (key, value) = match (&args.key_separator, &args.key) {
            (Some(separator), _) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (Some(Bytes::from(key.to_string())), value.to_string()),
                None => (None, line),
            },
            (None, Some(key)) => (Some(Bytes::from(key.clone())), line),
            (None, None) => (None, line),
        };
        Record {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value: Some(Bytes::from(value)),
            headers: headers.clone(),
            tags: args.tags.clone(),
            timestamp_ms: None,
        }
    };

    let mut pending = Vec::new();
    let mut count: u64 = 0;
    let mut partitions = std::collections::BTreeSet::new();
    if args.values.is_empty() {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await.context("reading stdin")? {
            pending.push(producer.enqueue(make_record(line)).await?);
            count += 1;
            // Report as we go and keep the list of waiting acks short.
            if pending.len() >= 10_000 {
                report(
                    std::mem::take(&mut pending),
                    args.print_offsets,
                    &mut partitions,
                )
                .await?;
            }
        }
    } else {
        for value in args.values.clone() {
            pending.push(producer.enqueue(make_record(value)).await?);
            count += 1;
        }
    }
    report(pending, args.print_offsets, &mut partitions).await?;
    // The alert of ADR 0012: consumers are falling behind on a partition.
    for partition in &partitions {
        let Some(pressure) = producer.pressure(&args.topic, *partition) else {
            continue;
        };
        if pressure.level != sluice_client::PressureLevel::Ok {
            let drain = pressure
                .estimated_drain_ms
                .map_or("unknown".to_string(), |ms| format!("{ms} ms"));
            eprintln!(
                "warning: {}/{partition} backlog at {:?} of its quota: {} messages (~{} bytes) not acknowledged by its slowest subscription; drain time {drain}",
                args.topic, pressure.level, pressure.backlog_messages, pressure.backlog_bytes
            );
        }
    }
    producer.close().await?;
    eprintln!("produced {count} record(s) to {}", args.topic);
    Ok(())
}

async fn report(
    pending: Vec<sluice_client::DeliveryFuture>,
    verbose: bool,
    partitions: &mut std::collections::BTreeSet<u32>,
) -> Result<()> {
    for delivery in pending {
        let metadata = delivery.await?;
        partitions.insert(metadata.partition);
        if verbose {
            println!(
                "{}/{}@{}",
                metadata.topic, metadata.partition, metadata.offset
            );
        }
    }
    Ok(())
}
