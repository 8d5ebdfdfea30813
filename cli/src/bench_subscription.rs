//! `sluice bench subscribe`: a work-queue benchmark. One shared
//! subscription, `--consumers` subscribers each acknowledging every
//! message; reports end-to-end throughput (produce start or consumer start
//! to the last durable acknowledgement) and acknowledgement latency (ack
//! call to receipt).
//!
//! `--mode backlog` (default) produces every message first, then starts
//! the consumers; `--mode concurrent` starts the consumers, then produces.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use sluice_client::{
    Admin, ClientConfig, ClientError, InitialPosition, Producer, ProducerConfig, Record,
    Subscriber, SubscriberConfig, SubscriptionType,
};
use sluice_proto::v1::TopicConfig;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct SubscribeBenchArgs {
    /// Topic to use; created with --partitions if missing.
    #[arg(long, default_value = "sluice-bench-queue")]
    pub topic: String,
    /// Subscription name; default: a new one per run (`bench-<random>`).
    #[arg(long)]
    pub subscription: Option<String>,
    /// Subscribers on the one shared subscription.
    #[arg(long, default_value_t = 8)]
    pub consumers: usize,
    /// Messages to produce and acknowledge.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Partitions of the topic (when creating it).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// `backlog`: produce everything, then consume; `concurrent`: both at once.
    #[arg(long, default_value = "backlog")]
    pub mode: String,
    /// Each subscriber's receiver queue, in messages.
    #[arg(long, default_value_t = 1000)]
    pub receiver_queue_size: u32,
    /// Acknowledgements each subscriber awaits at once.
    #[arg(long, default_value_t = 1000)]
    pub acks_in_flight: usize,
    /// Give up after this long without progress, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
}

/// What all subscribers share.
struct Totals {
    acknowledged: AtomicU64,
    redelivered: AtomicU64,
    refused: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    last_ack: Mutex<Option<Instant>>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

pub async fn run(client: ClientConfig, args: SubscribeBenchArgs) -> Result<()> {
    let concurrent = match args.mode.as_str() {
        "backlog" => false,
        "concurrent" => true,
        other => bail!("unknown --mode {other:?}: use backlog or concurrent"),
    };
    if args.consumers == 0 || args.messages == 0 {
        bail!("--consumers and --messages must be at least 1");
    }
    ensure_topic(&client, &args.topic, args.partitions).await?;
    let subscription = args
        .subscription
        .clone()
        .unwrap_or_else(|| format!("bench-{:08x}", rand_suffix()));
    let config = SubscriberConfig {
        client: client.clone(),
        subscription_type: SubscriptionType::Shared,
        // Created before anything is produced, so latest is exactly this
        // run's messages.
        initial_position: InitialPosition::Latest,
        receiver_queue_size: args.receiver_queue_size,
        ..SubscriberConfig::new(args.topic.clone(), subscription.clone())
    };
    // Creates the subscription (and checks it can be consumed).
    Subscriber::connect(config.clone())
        .await
        .with_context(|| format!("subscribing {subscription} to {}", args.topic))?
        .close()
        .await?;
    let totals = Arc::new(Totals {
        acknowledged: AtomicU64::new(0),
        redelivered: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        latency_us: Mutex::new(new_histogram()),
        last_ack: Mutex::new(None),
    });
    let mut started = Instant::now();
    if !concurrent {
        produce(&client, &args).await?;
        started = Instant::now();
    }
    let mut consumers = Vec::new();
    for index in 0..args.consumers {
        let config = SubscriberConfig {
            consumer_name: format!("{subscription}-{index}"),
            ..config.clone()
        };
        let subscriber = Subscriber::connect(config).await?;
        consumers.push(tokio::spawn(consume(
            subscriber,
            args.clone(),
            totals.clone(),
        )));
    }
    let producer = if concurrent {
        let client = client.clone();
        let args = args.clone();
        Some(tokio::spawn(async move { produce(&client, &args).await }))
    } else {
        None
    };
    let progress = spawn_progress(totals.clone(), args.messages);
    let mut failures = Vec::new();
    for consumer in consumers {
        match consumer.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failures.push(error.to_string()),
            Err(error) => failures.push(format!("consumer task failed: {error}")),
        }
    }
    if let Some(producer) = producer {
        producer.await.context("producer task failed")??;
    }
    progress.abort();
    let acknowledged = totals.acknowledged.load(Ordering::Relaxed);
    let finished = totals
        .last_ack
        .lock()
        .map_err(|_| anyhow::anyhow!("a consumer panicked"))?
        .unwrap_or_else(Instant::now);
    let seconds = finished.duration_since(started).as_secs_f64().max(1e-9);
    let rate = acknowledged as f64 / seconds;
    println!(
        "subscribe ({} consumers, shared, {}): {acknowledged} messages of {} bytes acknowledged in {seconds:.2} s",
        args.consumers, args.mode, args.size
    );
    println!(
        "  throughput: {rate:.0} msg/s, {:.1} MB/s end to end",
        rate * args.size as f64 / 1_000_000.0
    );
    let latency = totals
        .latency_us
        .lock()
        .map_err(|_| anyhow::anyhow!("a consumer panicked"))?
        .clone();
    if !latency.is_empty() {
        let ms = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
        println!(
            "  ack latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            latency.max() as f64 / 1000.0
        );
    }
    let redelivered = totals.redelivered.load(Ordering::Relaxed);
    let refused = totals.refused.load(Ordering::Relaxed);
    if redelivered > 0 || refused > 0 {
        println!("  redeliveries: {redelivered}, refused acknowledgements: {refused}");
    }
    if !failures.is_empty() {
        bail!(
            "{} consumer(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    if acknowledged < args.messages {
        bail!(
            "only {acknowledged} of {} messages were acknowledged",
            args.messages
        );
    }
    Ok(())
}

pub(crate) fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// Creates `topic` with `partitions` unless it exists, and waits until it
/// is writable.
pub(crate) async fn ensure_topic(
    client: &ClientConfig,
    topic: &str,
    partitions: u32,
) -> Result<()> {
    let admin = Admin::connect(client.clone()).await?;
    match admin.describe_topic(topic).await {
        Ok(_) => {}
        Err(ClientError::Server(error)) if error.code == sluice_proto::ErrorCode::UnknownTopic => {
            let config = TopicConfig {
                partitions,
                ..TopicConfig::default()
            };
            admin.create_topic(topic, config).await?;
        }
        Err(error) => return Err(error.into()),
    }
    admin
        .wait_until_writable(topic, Duration::from_secs(60))
        .await
        .with_context(|| format!("partitions of {topic} are not writable"))
}

async fn produce(client: &ClientConfig, args: &SubscribeBenchArgs) -> Result<()> {
    let producer = Producer::new(ProducerConfig {
        client: client.clone(),
        linger_ms: 1,
        ..ProducerConfig::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; args.size]);
    for _ in 0..args.messages {
        producer
            .enqueue(Record::new(args.topic.clone(), payload.clone()))
            .await?;
    }
    producer.close().await?;
    Ok(())
}

/// One subscriber: receive, acknowledge, time the receipt; stops when
/// every message is acknowledged (by anyone) or nothing came for the idle
/// timeout.
async fn consume(
    subscriber: Subscriber,
    args: SubscribeBenchArgs,
    totals: Arc<Totals>,
) -> Result<(), ClientError> {
    let mut receipts = FuturesUnordered::new();
    let mut idle_since = Instant::now();
    let idle = Duration::from_millis(args.idle_timeout_ms);
    let check_interval = Duration::from_millis(100);
    let record = |result: (Instant, Result<(), ClientError>)| {
        let (sent, outcome) = result;
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Ok(mut histogram) = totals.latency_us.lock() {
                    let _ = histogram.record(micros.max(1));
                }
                totals.acknowledged.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = totals.last_ack.lock() {
                    *last = Some(Instant::now());
                }
            }
            Err(error) => {
                tracing::debug!(%error, "acknowledgement refused");
                totals.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    while totals.acknowledged.load(Ordering::Relaxed) < args.messages {
        if receipts.len() >= args.acks_in_flight.max(1) {
            if let Some(result) = receipts.next().await {
                record(result);
            }
            continue;
        }
        tokio::select! {
            Some(result) = receipts.next(), if !receipts.is_empty() => record(result),
            message = subscriber.recv_timeout(check_interval) => match message? {
                Some(message) => {
                    idle_since = Instant::now();
                    if message.delivery_count > 1 {
                        totals.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    let sent = Instant::now();
                    let receipt = subscriber.ack_nowait(&message).await?.into_future();
                    receipts.push(async move { (sent, receipt.await) });
                }
                None if idle_since.elapsed() >= idle => {
                    return Err(ClientError::Timeout {
                        what: "the next message".into(),
                        timeout_ms: args.idle_timeout_ms,
                    });
                }
                None => {}
            },
        }
    }
    while let Some(result) = receipts.next().await {
        record(result);
    }
    subscriber.close().await
}

fn spawn_progress(totals: Arc<Totals>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let now = totals.acknowledged.load(Ordering::Relaxed);
            eprintln!(
                "subscribe: {now}/{total} acknowledged ({} msg/s now)",
                now - last
            );
            last = now;
        }
    })
}
