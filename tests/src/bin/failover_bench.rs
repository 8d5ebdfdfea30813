//! Failover time: from `kill -9` or `SIGSTOP` of a broker owning partitions
//! to every partition of the topic acknowledging again, over many trials.
//!
//! Starts a real cluster (etcd, nameservers, brokers, three stores; topic
//! with replication 3/3/2 and fsync before acknowledgement) with the
//! services' **default** lease, heartbeat and reconcile settings unless told
//! otherwise, keeps one idempotent producer writing 1 KiB records to every
//! partition, and per trial: picks the broker owning the most partitions,
//! kills or freezes it, and measures, per partition, until the first
//! acknowledgement of a record enqueued after the fault (nothing enqueued
//! then can be acknowledged by a dead or frozen owner). The trial's figure
//! is the slowest partition's. Then it restarts (kill) or resumes (stop) the
//! broker and lets the cluster settle before the next trial. Prints every
//! trial and the median, p99 and max per fault kind.
//!
//! `cargo build --release --bins && target/release/sluice-failover-bench --trials 20`
//! (the harness runs the service binaries found next to this one).

use clap::{Parser, ValueEnum};
use sluice_client::{Admin, Producer, ProducerConfig, Record};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "failover";

/// The fault time and, per partition, the first acknowledgement of a record
/// enqueued after it.
#[derive(Default)]
struct Watch {
    since: Option<Instant>,
    first_ack: BTreeMap<u32, Instant>,
}

type SharedWatch = Arc<Mutex<Watch>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// `kill -9` of the owner; restarted after the trial.
    Kill,
    /// `SIGSTOP` of the owner; `SIGCONT` after the trial.
    Stop,
}

#[derive(Parser, Debug)]
#[command(
    about = "Measure broker failover: kill -9 or SIGSTOP of an owner to every partition acknowledging again"
)]
struct Arguments {
    /// Trials per fault kind.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Fault kinds to try, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Fault::Kill, Fault::Stop])]
    faults: Vec<Fault>,
    #[arg(long, default_value_t = 3)]
    brokers: usize,
    #[arg(long, default_value_t = 2)]
    nameservers: usize,
    /// Partitions of the measured topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Broker and store registration lease, in milliseconds; unset = the
    /// nameserver's default (with the default heartbeat and reconcile).
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// Heartbeat interval, in milliseconds (only with `--lease-ttl-ms`).
    #[arg(long, default_value_t = 250)]
    heartbeat_interval_ms: u64,
    /// Nameserver session timeout (ADR 0014), in milliseconds (only with
    /// `--lease-ttl-ms`).
    #[arg(long, default_value_t = 1_500)]
    session_timeout_ms: u64,
    /// Pause between trials so the restarted broker registers and takes
    /// partitions back, in milliseconds.
    #[arg(long, default_value_t = 8_000)]
    settle_ms: u64,
    /// Longest a single trial may take before the run fails, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    trial_timeout_ms: u64,
    /// Pause between two records of one partition, in milliseconds.
    #[arg(long, default_value_t = 2)]
    record_interval_ms: u64,
}

/// One writer per partition, so a stalled partition does not hold back
/// the others' enqueues.
fn spawn_writers(
    producer: Arc<Producer>,
    partitions: u32,
    interval: Duration,
    watch: SharedWatch,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..partitions)
        .map(|partition| {
            let (producer, watch, stop) = (producer.clone(), watch.clone(), stop.clone());
            tokio::spawn(async move {
                let value = vec![b'x'; 1024];
                while !stop.load(Ordering::SeqCst) {
                    let enqueued_at = Instant::now();
                    let record = Record::new(TOPIC, value.clone()).with_partition(partition);
                    match producer.enqueue(record).await {
                        Ok(delivery) => {
                            let watch = watch.clone();
                            tokio::spawn(async move {
                                if delivery.await.is_ok() {
                                    note_ack(&watch, partition, enqueued_at, Instant::now());
                                }
                            });
                        }
                        Err(error) => eprintln!("enqueue to partition {partition} failed: {error}"),
                    }
                    tokio::time::sleep(interval).await;
                }
            })
        })
        .collect()
}

fn note_ack(watch: &SharedWatch, partition: u32, enqueued_at: Instant, now: Instant) {
    let mut watch = watch.lock().expect("lock");
    if watch.since.is_some_and(|since| enqueued_at > since) {
        watch.first_ack.entry(partition).or_insert(now);
    }
}

/// Owner of each partition of the topic (empty while offline).
async fn owners(admin: &Admin) -> Vec<String> {
    let described = admin.describe_topic(TOPIC).await.expect("describe topic");
    sluice_tests::cluster::partition_owners(&described)
}

/// The broker owning the most partitions, and how many.
fn busiest(owners: &[String]) -> (String, usize) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in owners.iter().filter(|owner| !owner.is_empty()) {
        *counts.entry(owner).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .map(|(owner, count)| (owner.to_string(), count))
        .expect("some partition has an owner")
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn trial(
    cluster: &mut Cluster,
    admin: &Admin,
    watch: &SharedWatch,
    fault: Fault,
    arguments: &Arguments,
    number: usize,
) -> f64 {
    tokio::time::sleep(Duration::from_millis(arguments.settle_ms)).await;
    let spread = owners(admin).await;
    let (victim, owned) = busiest(&spread);
    let index = cluster
        .brokers
        .iter()
        .position(|broker| broker.node_id == victim)
        .expect("owner is one of the cluster's brokers");
    let fault_at = Instant::now();
    *watch.lock().expect("lock") = Watch {
        since: Some(fault_at),
        first_ack: BTreeMap::new(),
    };
    match fault {
        Fault::Kill => cluster.brokers[index].kill(),
        Fault::Stop => cluster.brokers[index].pause(),
    }
    let deadline = fault_at + Duration::from_millis(arguments.trial_timeout_ms);
    let every_partition_at = loop {
        {
            let watch = watch.lock().expect("lock");
            if watch.first_ack.len() == arguments.partitions as usize {
                break watch.first_ack.values().max().copied().expect("not empty");
            }
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!(
                "{fault:?} trial {number}: not every partition acknowledged within {} ms",
                arguments.trial_timeout_ms
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let took_ms = every_partition_at.duration_since(fault_at).as_secs_f64() * 1000.0;
    println!(
        "{fault:?} trial {number:>3}: {victim} owned {owned} of {} partitions ({}); \
         every partition acknowledged again after {took_ms:.0} ms",
        arguments.partitions,
        spread.join(",")
    );
    match fault {
        Fault::Kill => cluster.brokers[index].start(),
        Fault::Stop => cluster.brokers[index].resume(),
    }
    took_ms
}

#[tokio::main]
async fn main() {
    let arguments = Arguments::parse();
    let mut cluster = Cluster::start(ClusterSpec {
        nameservers: arguments.nameservers,
        brokers: arguments.brokers,
        stores: 3,
        default_timings: arguments.lease_ttl_ms.is_none(),
        lease_ttl_ms: arguments.lease_ttl_ms.unwrap_or(0),
        heartbeat_interval_ms: arguments.heartbeat_interval_ms,
        session_timeout_ms: arguments.session_timeout_ms,
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, arguments.partitions).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin client");
    let producer = Arc::new(
        Producer::new(ProducerConfig {
            client: cluster.client_config(),
            linger_ms: 1,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer"),
    );
    let watch: SharedWatch = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(
        producer,
        arguments.partitions,
        Duration::from_millis(arguments.record_interval_ms.max(1)),
        watch.clone(),
        stop.clone(),
    );
    let mut results = Vec::new();
    for &fault in &arguments.faults {
        let mut samples_ms = Vec::with_capacity(arguments.trials);
        for number in 1..=arguments.trials {
            samples_ms.push(trial(&mut cluster, &admin, &watch, fault, &arguments, number).await);
        }
        samples_ms.sort_by(f64::total_cmp);
        results.push((fault, samples_ms));
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        let _ = writer.await;
    }
    let timings = match arguments.lease_ttl_ms {
        None => "the services' default lease, heartbeat and reconcile settings".to_string(),
        Some(lease) => format!(
            "lease_ttl_ms {lease}, heartbeat_interval_ms {}, session_timeout_ms {}, reconcile_interval_ms 300",
            arguments.heartbeat_interval_ms, arguments.session_timeout_ms
        ),
    };
    for (fault, samples_ms) in results {
        println!(
            "{fault:?}: every partition acknowledging again over {} trials: median {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms, min {:.0} ms ({} brokers, {} nameservers, {} partitions, {timings})",
            samples_ms.len(),
            quantile(&samples_ms, 0.5),
            quantile(&samples_ms, 0.99),
            samples_ms.last().copied().unwrap_or(0.0),
            samples_ms.first().copied().unwrap_or(0.0),
            arguments.brokers,
            arguments.nameservers,
            arguments.partitions,
        );
    }
}
