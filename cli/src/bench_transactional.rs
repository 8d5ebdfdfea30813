//! `sluice bench produce --transactional --transaction-interval-ms N`
//! (ADR 0016 §12): each producer is transactional and commits every N ms;
//! besides throughput and acknowledgement latency it reports the commit
//! latency (from the `commit_transaction` call to its return: the flush
//! of the transaction's last records, their acknowledgements and the
//! coordinator's decision), p50/p99/max.

use crate::bench::{new_histogram, spawn_progress, BenchArgs, Report};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_client::{ClientConfig, ClientError, Producer, ProducerConfig, Record};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest `--transaction-interval-ms`: half the producers' transaction
/// timeout, so a transaction of one interval plus its commit never times
/// out on a loaded machine.
pub const MAX_TRANSACTION_INTERVAL_MS: u64 = TRANSACTION_TIMEOUT_MS / 2;
/// The bench producers' `transaction_timeout_ms` (the SDK's default).
const TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// `--transaction-interval-ms`: 1..=[`MAX_TRANSACTION_INTERVAL_MS`].
pub fn parse_interval_ms(text: &str) -> Result<u64, String> {
    let ms = crate::units::parse_duration_ms(text)?;
    if ms == 0 || ms > MAX_TRANSACTION_INTERVAL_MS {
        return Err(format!(
            "give 1ms..={MAX_TRANSACTION_INTERVAL_MS}ms (half the transaction timeout)"
        ));
    }
    Ok(ms)
}

/// What a transactional run measured beyond [`Report`].
pub struct CommitReport {
    /// Commit call to return, microseconds.
    pub commit_latency_us: Histogram<u64>,
    /// Transactions committed.
    pub committed: u64,
    /// Transactions aborted after a refused commit (their records count as
    /// errors).
    pub aborted: u64,
}

impl CommitReport {
    pub fn print(&self) {
        println!(
            "  transactions: {} committed, {} aborted",
            self.committed, self.aborted
        );
        if !self.commit_latency_us.is_empty() {
            let ms =
                |quantile: f64| self.commit_latency_us.value_at_quantile(quantile) as f64 / 1000.0;
            println!(
                "  commit latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
                ms(0.5),
                ms(0.99),
                self.commit_latency_us.max() as f64 / 1000.0
            );
        }
    }
}

/// Produces `args.messages` records in transactions of `interval_ms`.
pub async fn produce(
    client: &ClientConfig,
    args: &BenchArgs,
    interval_ms: u64,
) -> Result<(Report, CommitReport)> {
    let producers = args.producers.max(1);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress("produce", acknowledged.clone(), args.messages);
    let started = Instant::now();
    let run_tag = format!("{}-{}", std::process::id(), sluice_proto::now_unix_ms());
    let mut tasks = Vec::new();
    for index in 0..producers {
        let share = args.messages / producers as u64
            + u64::from((index as u64) < args.messages % producers as u64);
        let config = producer_config(client, args, format!("sluice-bench-{run_tag}-{index}"))?;
        let run = Run {
            args: args.clone(),
            producers: producers as u64,
            started,
            interval: Duration::from_millis(interval_ms),
            acknowledged: acknowledged.clone(),
        };
        tasks.push(tokio::spawn(async move {
            produce_one(config, run, share).await
        }));
    }
    let mut latency_us = new_histogram();
    let mut commits = CommitReport {
        commit_latency_us: new_histogram(),
        committed: 0,
        aborted: 0,
    };
    let mut errors = 0;
    for task in tasks {
        let outcome = task.await.context("producer task panicked")??;
        latency_us
            .add(&outcome.latency_us)
            .context("merging histograms")?;
        commits
            .commit_latency_us
            .add(&outcome.commits.commit_latency_us)
            .context("merging histograms")?;
        commits.committed += outcome.commits.committed;
        commits.aborted += outcome.commits.aborted;
        errors += outcome.errors;
    }
    let elapsed = started.elapsed();
    progress.abort();
    let report = Report {
        messages: args.messages - errors.min(args.messages),
        elapsed,
        latency_us,
        errors,
    };
    Ok((report, commits))
}

fn producer_config(
    client: &ClientConfig,
    args: &BenchArgs,
    transactional_id: String,
) -> Result<ProducerConfig> {
    if args.no_idempotence {
        bail!("--transactional needs the idempotent producer; drop --no-idempotence");
    }
    let compression = sluice_proto::batch::Compression::parse(&args.compression)
        .with_context(|| format!("unknown compression {:?}", args.compression))?;
    Ok(ProducerConfig {
        client: client.clone(),
        linger_ms: args.linger_ms,
        batch_max_records: args.batch,
        batch_max_bytes: (args.batch * (args.size + 64)).max(1024),
        max_in_flight_per_partition: args.in_flight,
        memory_limit_bytes: args.memory_limit_bytes,
        compression,
        idempotence: true,
        transactional_id: Some(transactional_id),
        transaction_timeout_ms: TRANSACTION_TIMEOUT_MS,
        ..ProducerConfig::default()
    })
}

struct Run {
    args: BenchArgs,
    producers: u64,
    started: Instant,
    interval: Duration,
    acknowledged: Arc<AtomicU64>,
}

struct Outcome {
    latency_us: Histogram<u64>,
    commits: CommitReport,
    errors: u64,
}

async fn produce_one(config: ProducerConfig, run: Run, messages: u64) -> Result<Outcome> {
    let producer = Producer::new(config).await?;
    let mut outcome = Outcome {
        latency_us: new_histogram(),
        commits: CommitReport {
            commit_latency_us: new_histogram(),
            committed: 0,
            aborted: 0,
        },
        errors: 0,
    };
    let payload = Bytes::from(vec![b'x'; run.args.size]);
    let rate = run.args.rate as f64 / run.producers as f64;
    let mut index = 0u64;
    while index < messages {
        producer.begin_transaction()?;
        let close_at = Instant::now() + run.interval;
        let mut deliveries = Vec::new();
        while index < messages && Instant::now() < close_at {
            let scheduled = pace(run.started, index, rate).await;
            let record = Record {
                partition: Some((index % u64::from(run.args.partitions.max(1))) as u32),
                ..Record::new(run.args.topic.clone(), payload.clone())
            };
            deliveries.push((scheduled, producer.enqueue(record).await?));
            index += 1;
        }
        let commit_started = Instant::now();
        match producer.commit_transaction().await {
            Ok(()) => {
                let micros = commit_started.elapsed().as_micros().max(1) as u64;
                outcome.commits.commit_latency_us.saturating_record(micros);
                outcome.commits.committed += 1;
            }
            Err(error @ ClientError::ProducerFenced(_)) => return Err(error.into()),
            Err(error) => {
                eprintln!("bench: commit refused ({error}); aborting that transaction");
                producer.abort_transaction().await?;
                outcome.commits.aborted += 1;
                outcome.errors += deliveries.len() as u64;
                continue;
            }
        }
        for (scheduled, delivery) in deliveries {
            // Committed: every record was acknowledged before the commit.
            match delivery.await {
                Ok(_) => {
                    let micros = scheduled.elapsed().as_micros().max(1) as u64;
                    outcome.latency_us.saturating_record(micros);
                    run.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => bail!("a committed transaction's record failed: {error}"),
            }
        }
    }
    producer.close().await?;
    Ok(outcome)
}

/// With a rate, waits until record `index` is due and returns when it was
/// due (latency counts from then: no coordinated omission); without one,
/// now.
async fn pace(started: Instant, index: u64, rate: f64) -> Instant {
    if rate <= 0.0 {
        return Instant::now();
    }
    let due = started + Duration::from_secs_f64(index as f64 / rate);
    if due > Instant::now() {
        tokio::time::sleep_until(due.into()).await;
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_bounded_and_takes_human_units() {
        assert_eq!(parse_interval_ms("100"), Ok(100));
        assert_eq!(parse_interval_ms("2s"), Ok(2_000));
        assert_eq!(
            parse_interval_ms(&MAX_TRANSACTION_INTERVAL_MS.to_string()),
            Ok(MAX_TRANSACTION_INTERVAL_MS)
        );
        assert!(parse_interval_ms("0").is_err());
        assert!(parse_interval_ms("31s").is_err());
        assert!(parse_interval_ms("soon").is_err());
    }

    #[tokio::test]
    async fn pacing_without_a_rate_does_not_wait_and_with_one_returns_the_due_time() {
        let started = Instant::now();
        let now = pace(started, 1_000_000, 0.0).await;
        assert!(now.duration_since(started) < Duration::from_secs(1));
        // Record 10 at 1,000/s is due 10 ms after the start.
        let due = pace(started, 10, 1_000.0).await;
        assert_eq!(due, started + Duration::from_millis(10));
        assert!(Instant::now() >= due);
    }
}
