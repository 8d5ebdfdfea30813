//! `sluice bench topics`: how the metadata store scales with the number of
//! topics. Creates `--count` topics through the SDK, `--concurrency` at a
//! time, reports the time of each thousand (a store that slows down with
//! its size shows here), optionally waits until every partition of every
//! created topic is writable (`--wait-writable-s`: create-to-writable time
//! of a many-partition topic), then times `ClusterStatus`, which reads
//! every topic, partition owner and segment.

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use sluice_client::{Admin, ClientConfig};
use sluice_proto::v1::TopicConfig;
use std::time::{Duration, Instant};

/// Most creations in flight at once.
const MAX_CONCURRENCY: usize = 256;
/// Most `ClusterStatus` calls timed.
const MAX_STATUS_CALLS: u32 = 100;
/// Longest wait for the created topics to become writable.
const MAX_WAIT_WRITABLE_S: u64 = 3_600;

#[derive(Args, Clone)]
pub struct TopicsBenchArgs {
    /// Topics to create (named PREFIX-00000, ...; none may exist yet).
    #[arg(long, default_value_t = 10_000)]
    pub count: u32,
    /// Partitions per topic; 0 takes the nameserver's default.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Creations in flight at once (1 to 256).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Prefix of the topic names.
    #[arg(long, default_value = "bench-topics")]
    pub prefix: String,
    /// `ClusterStatus` calls timed after the creations (1 to 100).
    #[arg(long, default_value_t = 5)]
    pub status_calls: u32,
    /// After creating, wait at most this many seconds until every partition of every created
    /// topic is writable and report when it was (0: do not wait; at most 3600).
    #[arg(long, default_value_t = 0)]
    pub wait_writable_s: u64,
}

/// Checks the arguments' ranges.
fn check(args: &TopicsBenchArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
        bail!("--concurrency must be 1 to {MAX_CONCURRENCY}");
    }
    if !(1..=MAX_STATUS_CALLS).contains(&args.status_calls) {
        bail!("--status-calls must be 1 to {MAX_STATUS_CALLS}");
    }
    if args.wait_writable_s > MAX_WAIT_WRITABLE_S {
        bail!("--wait-writable-s must be 0 to {MAX_WAIT_WRITABLE_S}");
    }
    Ok(())
}

/// The elapsed time at which each thousand (and the last, partial, group)
/// completed, turned into the duration of each group.
fn group_durations(completions: &[Duration], group: usize) -> Vec<Duration> {
    let mut sorted = completions.to_vec();
    sorted.sort();
    let mut durations = Vec::new();
    let mut previous = Duration::ZERO;
    for chunk in sorted.chunks(group.max(1)) {
        if let Some(last) = chunk.last() {
            durations.push(last.saturating_sub(previous));
            previous = *last;
        }
    }
    durations
}

pub async fn run(client: ClientConfig, args: TopicsBenchArgs) -> Result<()> {
    check(&args)?;
    let admin = Admin::connect(client).await?;
    let config = TopicConfig {
        partitions: args.partitions,
        ..TopicConfig::default()
    };
    let start = Instant::now();
    let mut creations = futures::stream::iter(0..args.count)
        .map(|index| {
            let name = format!("{}-{index:05}", args.prefix);
            let admin = &admin;
            async move {
                let result = admin.create_topic(&name, config).await;
                (name, result, start.elapsed())
            }
        })
        .buffer_unordered(args.concurrency);
    let mut completions = Vec::with_capacity(args.count as usize);
    while let Some((name, result, at)) = creations.next().await {
        result.with_context(|| format!("creating topic {name}"))?;
        completions.push(at);
    }
    let total = start.elapsed();
    drop(creations);
    println!(
        "created {} topics of {} partition(s) in {:.1} s ({:.0} topics/s, concurrency {})",
        args.count,
        args.partitions,
        total.as_secs_f64(),
        f64::from(args.count) / total.as_secs_f64().max(f64::EPSILON),
        args.concurrency
    );
    let groups: Vec<String> = group_durations(&completions, 1_000)
        .iter()
        .map(|duration| format!("{:.2}", duration.as_secs_f64()))
        .collect();
    println!("seconds per 1,000 topics, in order: {}", groups.join(" "));
    if args.wait_writable_s > 0 {
        wait_writable(&admin, &args, start).await?;
    }
    time_status(&admin, args.status_calls).await
}

/// Waits until every created topic is writable (one after the other, all
/// within `--wait-writable-s`) and prints the time since the first
/// creation started.
async fn wait_writable(admin: &Admin, args: &TopicsBenchArgs, start: Instant) -> Result<()> {
    let deadline = start + Duration::from_secs(args.wait_writable_s);
    for index in 0..args.count {
        let name = format!("{}-{index:05}", args.prefix);
        let left = deadline.saturating_duration_since(Instant::now());
        admin
            .wait_until_writable(&name, left)
            .await
            .with_context(|| format!("waiting for every partition of {name} to be writable"))?;
    }
    println!(
        "every partition writable {:.2} s after the first creation started",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Times `ClusterStatus` and prints each call's latency.
async fn time_status(admin: &Admin, calls: u32) -> Result<()> {
    let mut latencies = Vec::new();
    let mut topics = 0;
    for _ in 0..calls {
        let start = Instant::now();
        let status = admin.cluster_status().await.context("cluster status")?;
        latencies.push(start.elapsed());
        topics = status.topics;
    }
    latencies.sort();
    let milliseconds = |duration: &Duration| duration.as_secs_f64() * 1_000.0;
    println!(
        "cluster status ({topics} topics): min {:.0} ms, median {:.0} ms, max {:.0} ms over {calls} calls",
        latencies.first().map_or(0.0, milliseconds),
        latencies.get(latencies.len() / 2).map_or(0.0, milliseconds),
        latencies.last().map_or(0.0, milliseconds),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_timed_from_the_previous_group_end() {
        let at = |ms: u64| Duration::from_millis(ms);
        let completions = vec![at(30), at(10), at(20), at(50), at(45)];
        assert_eq!(
            group_durations(&completions, 2),
            vec![at(20), at(25), at(5)]
        );
        assert!(group_durations(&[], 1_000).is_empty());
    }

    #[test]
    fn out_of_range_arguments_are_refused() {
        let args = TopicsBenchArgs {
            count: 10,
            partitions: 1,
            concurrency: 16,
            prefix: "t".into(),
            status_calls: 5,
            wait_writable_s: 0,
        };
        assert!(check(&args).is_ok());
        assert!(check(&TopicsBenchArgs {
            count: 0,
            ..args.clone()
        })
        .is_err());
        assert!(check(&TopicsBenchArgs {
            concurrency: 0,
            ..args.clone()
        })
        .is_err());
        assert!(check(&TopicsBenchArgs {
            concurrency: 257,
            ..args.clone()
        })
        .is_err());
        assert!(check(&TopicsBenchArgs {
            status_calls: 0,
            ..args.clone()
        })
        .is_err());
        assert!(check(&TopicsBenchArgs {
            wait_writable_s: 3_600,
            ..args.clone()
        })
        .is_ok());
        assert!(check(&TopicsBenchArgs {
            wait_writable_s: 3_601,
            ..args
        })
        .is_err());
    }
}
