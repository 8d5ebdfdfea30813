//! JetStream counterpart of `sluice bench produce` / `consume`: the same
//! message count, size and in-flight window, against a local nats-server
//! with file storage. Used only to fill the comparison in BENCHMARKS.md.
//!
//! JetStream has no client-side batching of publishes; the closest
//! equivalent of "batches of B with I in flight" is a window of B × I
//! asynchronous publishes awaiting their acks, which is what this does.

use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Records per "batch" (window = batch × in_flight outstanding acks).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Target rate in messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Also consume the stream back and report read throughput.
    #[arg(long)]
    consume: bool,
}

fn report(what: &str, messages: u64, size: usize, elapsed: Duration, histogram: Option<&Histogram<u64>>) {
    let seconds = elapsed.as_secs_f64();
    let rate = messages as f64 / seconds;
    println!("{what}: {messages} messages of {size} bytes in {seconds:.2} s");
    println!("  throughput: {rate:.0} msg/s, {:.1} MB/s", rate * size as f64 / 1e6);
    if let Some(histogram) = histogram {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        println!("  latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}", ms(0.5), ms(0.99), ms(0.999), histogram.max() as f64 / 1000.0);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let client = async_nats::connect(&args.server).await?;
    let jetstream = async_nats::jetstream::new(client);
    let _ = jetstream.delete_stream("BENCH").await;
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH".to_string(),
            subjects: vec!["bench.>".to_string()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let window = args.batch * args.in_flight;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut pending: VecDeque<(Instant, async_nats::jetstream::context::PublishAckFuture)> = VecDeque::new();
    let started = Instant::now();
    for index in 0..args.messages {
        let scheduled = if args.rate > 0 {
            let due = started + Duration::from_secs_f64(index as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
            due
        } else {
            Instant::now()
        };
        while pending.len() >= window {
            let (sent, ack) = pending.pop_front().expect("window is not empty");
            ack.await?;
            histogram.saturating_record(sent.elapsed().as_micros().max(1) as u64);
        }
        let ack = jetstream.publish("bench.one", payload.clone()).await?;
        pending.push_back((scheduled, ack));
    }
    while let Some((sent, ack)) = pending.pop_front() {
        ack.await?;
        histogram.saturating_record(sent.elapsed().as_micros().max(1) as u64);
    }
    report("jetstream publish", args.messages, args.size, started.elapsed(), Some(&histogram));

    if args.consume {
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: None,
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let started = Instant::now();
        let mut messages = consumer.stream().max_messages_per_batch(args.batch * 10).messages().await?;
        let mut count = 0;
        while count < args.messages {
            match messages.next().await {
                Some(Ok(_)) => count += 1,
                Some(Err(error)) => return Err(error.into()),
                None => break,
            }
        }
        report("jetstream consume", count, args.size, started.elapsed(), None);
    }
    Ok(())
}
