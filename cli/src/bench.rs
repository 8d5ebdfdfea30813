//! `sluice bench produce|consume|e2e` (and `topics`, in `bench_topics.rs`): throughput and latency against a
//! running cluster.
//!
//! Latencies go into an HdrHistogram (microsecond resolution). With
//! `--rate`, latency is measured from each record's *scheduled* send time,
//! not from when the producer got round to it, so a stall shows up in the
//! percentiles instead of hiding (coordinated omission).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use sluice_client::{
    Admin, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, Record,
    StartOffset,
};
use sluice_proto::v1::TopicConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Produce as fast as allowed and report acknowledgement latency
    /// (`--transactional`: and commit latency).
    Produce(ProduceBenchArgs),
    /// Read a backlog as fast as possible.
    Consume(BenchArgs),
    /// Produce and consume at once; latency is send → receive.
    E2e(BenchArgs),
    /// Work queue: subscribers on one shared subscription acknowledge every message.
    Subscribe(crate::bench_subscription::SubscribeBenchArgs),
    /// Delayed delivery: schedule messages, measure the timing error of firing.
    Delay(crate::bench_delay::DelayBenchArgs),
    /// Metadata scale: create many topics, time each thousand and `ClusterStatus`.
    Topics(crate::bench_topics::TopicsBenchArgs),
}

/// When the first and the last record of a consume run arrived.
#[derive(Debug, Default, Clone, Copy)]
struct ActiveSpan {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl ActiveSpan {
    fn record(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// From the first record to the last (0 with fewer than two).
    fn elapsed(&self) -> Duration {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        }
    }
}

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Topic to use; created with --partitions if missing.
    #[arg(long, default_value = "sluice-bench")]
    pub topic: String,
    /// Number of messages in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Batches in flight per partition and producer (at most 16 while the
    /// producer is idempotent).
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Turn the idempotent producer off (allows more than 16 batches in
    /// flight; retries after failures may then duplicate).
    #[arg(long)]
    pub no_idempotence: bool,
    /// Concurrent producers (each its own connection).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Partitions of the topic (when creating it) and to spread over.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Target total rate in messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Producer linger in milliseconds.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// Batch compression.
    #[arg(long, default_value = "none", value_parser = ["none", "lz4", "zstd"])]
    pub compression: String,
    /// Topic durability when creating it.
    #[arg(long, default_value = "fsync", value_parser = ["fsync", "periodic"])]
    pub durability: String,
    /// Producer memory limit in bytes.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub memory_limit_bytes: usize,
    /// Consumer: most bytes one fetch returns per partition; the SDK's
    /// default when not given (BENCHMARKS.md figures use the default).
    #[arg(long)]
    pub fetch_partition_max_bytes: Option<u32>,
}

/// `bench produce`: the common flags and the transactional mode.
#[derive(Args, Clone)]
pub struct ProduceBenchArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// Transactional producers (ADR 0016): each commits every
    /// --transaction-interval-ms; commit latency is reported.
    #[arg(long)]
    pub transactional: bool,
    /// With --transactional: how long each transaction takes in records
    /// before it commits (`100ms`, `1s`, or milliseconds; at most 30 s).
    #[arg(long, value_name = "DURATION", default_value = "100", requires = "transactional", value_parser = crate::bench_transactional::parse_interval_ms)]
    pub transaction_interval_ms: u64,
}

pub async fn run(client: ClientConfig, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Produce(ProduceBenchArgs {
            common: args,
            transactional,
            transaction_interval_ms,
        }) => {
            ensure_topic(&client, &args).await?;
            if transactional {
                let (report, commits) =
                    crate::bench_transactional::produce(&client, &args, transaction_interval_ms)
                        .await?;
                report.print("produce (transactional)", args.size);
                commits.print();
            } else {
                let report = produce(&client, &args, false).await?;
                report.print("produce", args.size);
            }
        }
        BenchCommand::Consume(args) => {
            ensure_topic(&client, &args).await?;
            let report = consume(&client, &args, false).await?;
            report.print("consume", args.size);
        }
        BenchCommand::E2e(args) => {
            ensure_topic(&client, &args).await?;
            let consumer_client = client.clone();
            let consumer_args = args.clone();
            let consumer =
                tokio::spawn(async move { consume(&consumer_client, &consumer_args, true).await });
            // Give the consumer time to position itself at the end.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let produced = produce(&client, &args, true).await?;
            let consumed = consumer.await.context("consumer task panicked")??;
            produced.print("produce (ack latency)", args.size);
            consumed.print("end to end (send → receive)", args.size);
        }
        BenchCommand::Subscribe(args) => crate::bench_subscription::run(client, args).await?,
        BenchCommand::Delay(args) => crate::bench_delay::run(client, args).await?,
        BenchCommand::Topics(args) => crate::bench_topics::run(client, args).await?,
    }
    Ok(())
}

async fn ensure_topic(client: &ClientConfig, args: &BenchArgs) -> Result<()> {
    let admin = Admin::connect(client.clone()).await?;
    match admin.describe_topic(&args.topic).await {
        Ok(description) => {
            let partitions = description
                .topic
                .and_then(|topic| topic.config)
                .map(|config| config.partitions)
                .unwrap_or(0);
            if partitions != args.partitions {
                bail!(
                    "topic {} exists with {partitions} partition(s), not {}; delete it (`sluice topic delete {}`) or pass --partitions {partitions}",
                    args.topic,
                    args.partitions,
                    args.topic
                );
            }
            wait_until_writable(&admin, &args.topic).await
        }
        Err(ClientError::Server(error)) if error.code == sluice_proto::ErrorCode::UnknownTopic => {
            let config = TopicConfig {
                partitions: args.partitions,
                durability: crate::admin::parse_durability(&args.durability)? as i32,
                ..TopicConfig::default()
            };
            admin.create_topic(&args.topic, config).await?;
            wait_until_writable(&admin, &args.topic).await
        }
        Err(error) => Err(error.into()),
    }
}

/// Waits until every partition was taken over by its owner, so the
/// measurement does not include the first assignment.
async fn wait_until_writable(admin: &Admin, topic: &str) -> Result<()> {
    admin
        .wait_until_writable(topic, Duration::from_secs(60))
        .await
        .with_context(|| {
            format!("partitions of {topic} are not writable; check `sluice cluster status`")
        })
}

pub struct Report {
    pub(crate) messages: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) errors: u64,
}

impl Report {
    pub(crate) fn print(&self, what: &str, size: usize) {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        let rate = self.messages as f64 / seconds;
        let megabytes = rate * size as f64 / 1_000_000.0;
        println!(
            "{what}: {} messages of {size} bytes in {seconds:.2} s",
            self.messages
        );
        println!("  throughput: {rate:.0} msg/s, {megabytes:.1} MB/s");
        if !self.latency_us.is_empty() {
            let ms = |quantile: f64| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
            println!(
                "  latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                self.latency_us.max() as f64 / 1000.0
            );
        }
        if self.errors > 0 {
            println!("  errors: {}", self.errors);
        }
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Prints progress every second until `done` is set.
pub(crate) fn spawn_progress(
    label: &'static str,
    counter: Arc<AtomicU64>,
    total: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = 0;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let now = counter.load(Ordering::Relaxed);
            eprintln!(
                "{label}: {now}/{total} ({} msg/s now, {:.0} s)",
                now - last,
                started.elapsed().as_secs_f64()
            );
            last = now;
            if now >= total {
                break;
            }
        }
    })
}

/// Produces `args.messages` records. With `stamp_send_time` each value
/// starts with its send time (a copy of the payload per record, which only
/// end-to-end latency needs); otherwise every record shares one payload.
async fn produce(client: &ClientConfig, args: &BenchArgs, stamp_send_time: bool) -> Result<Report> {
    let compression = sluice_proto::batch::Compression::parse(&args.compression)
        .with_context(|| format!("unknown compression {:?}", args.compression))?;
    let producers = args.producers.max(1);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress("produce", acknowledged.clone(), args.messages);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for producer_index in 0..producers {
        let share = args.messages / producers as u64
            + u64::from((producer_index as u64) < args.messages % producers as u64);
        let config = ProducerConfig {
            client: client.clone(),
            linger_ms: args.linger_ms,
            batch_max_records: args.batch,
            batch_max_bytes: (args.batch * (args.size + 64)).max(1024),
            max_in_flight_per_partition: args.in_flight,
            memory_limit_bytes: args.memory_limit_bytes,
            compression,
            idempotence: !args.no_idempotence,
            ..ProducerConfig::default()
        };
        let run = ProduceRun {
            args: args.clone(),
            producers: producers as u64,
            started,
            acknowledged: acknowledged.clone(),
            stamp_send_time,
        };
        tasks.push(tokio::spawn(async move {
            produce_one(config, run, share).await
        }));
    }
    let mut latency_us = new_histogram();
    let mut errors = 0;
    for task in tasks {
        let (histogram, task_errors) = task.await.context("producer task panicked")??;
        latency_us.add(&histogram).context("merging histograms")?;
        errors += task_errors;
    }
    let elapsed = started.elapsed();
    progress.abort();
    Ok(Report {
        messages: args.messages - errors,
        elapsed,
        latency_us,
        errors,
    })
}

/// What every producer task of one `produce` run shares.
struct ProduceRun {
    args: BenchArgs,
    producers: u64,
    started: Instant,
    acknowledged: Arc<AtomicU64>,
    stamp_send_time: bool,
}

async fn produce_one(
    config: ProducerConfig,
    run: ProduceRun,
    messages: u64,
) -> Result<(Histogram<u64>, u64)> {
    let ProduceRun {
        args,
        producers,
        started,
        acknowledged,
        stamp_send_time,
    } = run;
    let producer = Producer::new(config).await?;
    let (sender, mut receiver) = mpsc::channel::<(Instant, sluice_client::DeliveryFuture)>(100_000);
    let collector = tokio::spawn(async move {
        let mut histogram = new_histogram();
        let mut errors = 0u64;
        while let Some((scheduled, delivery)) = receiver.recv().await {
            match delivery.await {
                Ok(_) => {
                    let micros = scheduled.elapsed().as_micros().max(1) as u64;
                    histogram.saturating_record(micros);
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    if errors < 5 {
                        eprintln!("bench: send failed: {error}");
                    }
                    errors += 1;
                }
            }
        }
        (histogram, errors)
    });
    let payload = Bytes::from(vec![b'x'; args.size]);
    let per_producer_rate = args.rate as f64 / producers as f64;
    for index in 0..messages {
        let scheduled = if per_producer_rate > 0.0 {
            let due = started + Duration::from_secs_f64(index as f64 / per_producer_rate);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            }
            due
        } else {
            Instant::now()
        };
        let record = Record {
            topic: args.topic.clone(),
            partition: Some((index % u64::from(args.partitions.max(1))) as u32),
            key: None,
            value: Some(if stamp_send_time {
                stamp(&payload)
            } else {
                payload.clone()
            }),
            headers: Vec::new(),
            tags: Vec::new(),
            timestamp_ms: None,
        };
        let delivery = producer.enqueue(record).await?;
        if sender.send((scheduled, delivery)).await.is_err() {
            bail!("latency collector stopped early");
        }
    }
    drop(sender);
    producer.flush().await?;
    let (histogram, errors) = collector.await.context("collector panicked")?;
    producer.close().await?;
    Ok((histogram, errors))
}

/// The payload with its first 8 bytes set to the send time (µs since the
/// Unix epoch), so a consumer in the same host can compute end-to-end
/// latency.
fn stamp(payload: &Bytes) -> Bytes {
    if payload.len() < 8 {
        return payload.clone();
    }
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0);
    let mut stamped = payload.to_vec();
    stamped[..8].copy_from_slice(&micros.to_le_bytes());
    Bytes::from(stamped)
}

async fn consume(client: &ClientConfig, args: &BenchArgs, from_latest: bool) -> Result<Report> {
    let start = if from_latest {
        StartOffset::Latest
    } else {
        StartOffset::Earliest
    };
    let assignment = (0..args.partitions)
        .map(|partition| (args.topic.clone(), partition, start))
        .collect();
    let defaults = ConsumerConfig::default();
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: client.clone(),
            group: None,
            reset: start,
            fetch_partition_max_bytes: args
                .fetch_partition_max_bytes
                .unwrap_or(defaults.fetch_partition_max_bytes),
            ..defaults
        },
        assignment,
    )
    .await?;
    let received = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress("consume", received.clone(), args.messages);
    let mut latency_us = new_histogram();
    let mut span = ActiveSpan::default();
    let mut count = 0u64;
    let idle = Duration::from_secs(10);
    while count < args.messages {
        let Some(record) = consumer.recv_timeout(idle).await? else {
            eprintln!(
                "consume: no record for {} s after {count} records; stopping",
                idle.as_secs()
            );
            break;
        };
        span.record(Instant::now());
        count += 1;
        received.store(count, Ordering::Relaxed);
        if from_latest {
            if let Some(value) = record.value.as_deref().filter(|value| value.len() >= 8) {
                let mut sent = [0u8; 8];
                sent.copy_from_slice(&value[..8]);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_micros() as u64)
                    .unwrap_or(0);
                latency_us.saturating_record(now.saturating_sub(u64::from_le_bytes(sent)).max(1));
            }
        }
    }
    // First to last record: the idle wait that ends a short run is not
    // consuming time and would understate the throughput.
    let elapsed = span.elapsed();
    progress.abort();
    consumer.close().await?;
    Ok(Report {
        messages: count,
        elapsed,
        latency_us,
        errors: 0,
    })
}

#[cfg(test)]
mod span_tests {
    use super::*;

    #[test]
    fn the_idle_tail_after_the_last_record_is_not_counted() {
        let start = Instant::now();
        let mut span = ActiveSpan::default();
        assert_eq!(span.elapsed(), Duration::ZERO);
        span.record(start);
        assert_eq!(span.elapsed(), Duration::ZERO);
        span.record(start + Duration::from_millis(1_500));
        span.record(start + Duration::from_millis(2_000));
        // The consumer then waits 10 s for more and gives up: not counted.
        assert_eq!(span.elapsed(), Duration::from_millis(2_000));
    }
}
