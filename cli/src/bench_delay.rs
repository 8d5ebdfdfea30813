//! `sluice bench delay`: scheduling and firing delayed messages. Produces
//! `--messages` records whose delivery times are spread pseudo-randomly
//! over `[start + delay, start + delay + spread)`, while subscribers on one
//! shared subscription receive and acknowledge them; reports how fast they
//! were scheduled (produced) and the timing error of each delivery (receive
//! time minus requested time: p50, p99, p99.9, max, and any early ones).

use crate::bench_subscription::{ensure_topic, rand_suffix};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use sluice_client::{
    ClientConfig, ClientError, InitialPosition, Producer, ProducerConfig, Record, Subscriber,
    SubscriberConfig, SubscriptionType,
};
use sluice_proto::headers;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct DelayBenchArgs {
    /// Topic to use; created with --partitions if missing.
    #[arg(long, default_value = "sluice-bench-delay")]
    pub topic: String,
    /// Messages to schedule.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Partitions of the topic (when creating it).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Earliest delivery time, after the start, in milliseconds. Must
    /// exceed the time producing takes, or early messages come due before
    /// they exist.
    #[arg(long, default_value_t = 30_000)]
    pub delay_ms: u64,
    /// Delivery times are spread over this many milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub spread_ms: u64,
    /// Subscribers on the shared subscription.
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Give up after this long without a message once delivery started,
    /// in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
}

struct Totals {
    received: AtomicU64,
    early: AtomicU64,
    refused: AtomicU64,
    lateness_ms: Mutex<Histogram<u64>>,
}

/// A fixed pseudo-random permutation-ish spread (splitmix64), so delivery
/// order differs from offset order and runs are repeatable.
fn spread_of(index: u64, spread_ms: u64) -> u64 {
    let mut value = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (value ^ (value >> 31)) % spread_ms.max(1)
}

fn now_ms() -> u64 {
    u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0)
}

pub async fn run(client: ClientConfig, args: DelayBenchArgs) -> Result<()> {
    if args.consumers == 0 || args.messages == 0 {
        bail!("--consumers and --messages must be at least 1");
    }
    if args.delay_ms.saturating_add(args.spread_ms) > headers::MAX_DELAY_MS {
        bail!("--delay-ms plus --spread-ms exceeds the longest delay");
    }
    ensure_topic(&client, &args.topic, args.partitions).await?;
    let subscription = format!("bench-delay-{:08x}", rand_suffix());
    let config = SubscriberConfig {
        client: client.clone(),
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Latest,
        ack_timeout_ms: 300_000,
        ..SubscriberConfig::new(args.topic.clone(), subscription.clone())
    };
    let totals = Arc::new(Totals {
        received: AtomicU64::new(0),
        early: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        // 0 ms to 1 hour late, 3 significant digits.
        lateness_ms: Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000, 3).expect("static histogram bounds are valid"),
        ),
    });
    let mut consumers = Vec::new();
    for index in 0..args.consumers {
        let subscriber = Subscriber::connect(SubscriberConfig {
            consumer_name: format!("{subscription}-{index}"),
            ..config.clone()
        })
        .await
        .with_context(|| format!("subscribing {subscription} to {}", args.topic))?;
        consumers.push(tokio::spawn(consume(
            subscriber,
            args.clone(),
            totals.clone(),
        )));
    }
    let start_ms = now_ms();
    let started = Instant::now();
    let producer = Producer::new(ProducerConfig {
        client: client.clone(),
        linger_ms: 1,
        ..ProducerConfig::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut pending = Vec::new();
    for index in 0..args.messages {
        let deliver_at_ms = start_ms + args.delay_ms + spread_of(index, args.spread_ms);
        pending.push(
            producer
                .enqueue(
                    Record::new(args.topic.clone(), payload.clone())
                        .with_deliver_at_ms(deliver_at_ms),
                )
                .await?,
        );
        if pending.len() >= 100_000 {
            for delivery in pending.drain(..) {
                delivery.await?;
            }
        }
    }
    for delivery in pending {
        delivery.await?;
    }
    producer.close().await?;
    let scheduled_in = started.elapsed().as_secs_f64();
    println!(
        "delay: scheduled {} messages of {} bytes in {scheduled_in:.2} s ({:.0} msg/s), due from +{} ms over {} ms",
        args.messages,
        args.size,
        args.messages as f64 / scheduled_in.max(1e-9),
        args.delay_ms,
        args.spread_ms
    );
    if started.elapsed() > Duration::from_millis(args.delay_ms) {
        eprintln!("warning: scheduling took longer than --delay-ms; the first messages were due before they were produced");
    }
    let progress = spawn_progress(totals.clone(), args.messages);
    let mut failures = Vec::new();
    for consumer in consumers {
        match consumer.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failures.push(error.to_string()),
            Err(error) => failures.push(format!("consumer task failed: {error}")),
        }
    }
    progress.abort();
    let received = totals.received.load(Ordering::Relaxed);
    let lateness = totals
        .lateness_ms
        .lock()
        .map_err(|_| anyhow::anyhow!("a consumer panicked"))?
        .clone();
    println!(
        "  fired {received} messages; early: {}; timing error (receive - requested) ms: p50 {}  p99 {}  p99.9 {}  max {}",
        totals.early.load(Ordering::Relaxed),
        lateness.value_at_quantile(0.5),
        lateness.value_at_quantile(0.99),
        lateness.value_at_quantile(0.999),
        lateness.max()
    );
    let refused = totals.refused.load(Ordering::Relaxed);
    if refused > 0 {
        println!("  refused acknowledgements: {refused}");
    }
    if !failures.is_empty() {
        bail!(
            "{} consumer(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    if received < args.messages {
        bail!(
            "only {received} of {} delayed messages arrived",
            args.messages
        );
    }
    Ok(())
}

async fn consume(
    subscriber: Subscriber,
    args: DelayBenchArgs,
    totals: Arc<Totals>,
) -> Result<(), ClientError> {
    let mut receipts = FuturesUnordered::new();
    let mut last_message = Instant::now();
    // Nothing is due before the delay: the idle clock starts after it.
    let quiet_until = Instant::now() + Duration::from_millis(args.delay_ms);
    let idle = Duration::from_millis(args.idle_timeout_ms);
    while totals.received.load(Ordering::Relaxed) < args.messages {
        let has_receipts = !receipts.is_empty();
        tokio::select! {
            Some(outcome) = receipts.next(), if has_receipts => {
                let outcome: Result<(), ClientError> = outcome;
                if outcome.is_err() {
                    totals.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            message = subscriber.recv_timeout(Duration::from_millis(200)) => match message? {
                Some(message) => {
                    last_message = Instant::now();
                    let received_ms = now_ms();
                    let wanted_ms = headers::number(&message.headers, headers::DELIVER_AT_MS).unwrap_or(received_ms);
                    if received_ms < wanted_ms {
                        totals.early.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut histogram) = totals.lateness_ms.lock() {
                        let _ = histogram.record(received_ms.saturating_sub(wanted_ms).max(1));
                    }
                    if message.delivery_count == 1 {
                        totals.received.fetch_add(1, Ordering::Relaxed);
                    }
                    let receipt = subscriber.ack_nowait(&message).await?.into_future();
                    receipts.push(receipt);
                    if receipts.len() >= 10_000 {
                        if let Some(Err(_)) = receipts.next().await {
                            totals.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                None if Instant::now() > quiet_until && last_message.elapsed() >= idle => {
                    return Err(ClientError::Timeout { what: "the next delayed message".into(), timeout_ms: args.idle_timeout_ms });
                }
                None => {}
            },
        }
    }
    while let Some(outcome) = receipts.next().await {
        if outcome.is_err() {
            totals.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
    subscriber.close().await
}

fn spawn_progress(totals: Arc<Totals>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            eprintln!(
                "delay: {}/{total} fired",
                totals.received.load(Ordering::Relaxed)
            );
        }
    })
}
