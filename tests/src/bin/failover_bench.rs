//! Failover time: from `kill -9` of the broker owning a partition to the
//! first acknowledged write served by its new owner, over many trials.
//!
//! Starts a real cluster (etcd, one nameserver, two brokers, three stores;
//! topic with replication 3/3/2 and fsync before acknowledgement), keeps an
//! idempotent producer writing 1 KiB records to a one-partition topic, and
//! per trial: finds the owner, kills it, and measures until the first
//! acknowledgement of a record enqueued after the kill (nothing enqueued
//! then can be acknowledged by the dead owner). Restarts the killed broker
//! and lets the cluster settle before the next trial. Prints every trial,
//! the median, p99 and max, and the lease settings they depend on.
//!
//! `cargo build --release --bins && target/release/sluice-failover-bench --trials 20`
//! (the harness runs the service binaries found next to this one).

use clap::Parser;
use sluice_client::{Admin, Producer, ProducerConfig, Record};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "failover";

/// Since when to watch (the kill), and the first acknowledgement of a
/// record enqueued after it.
type FirstAcknowledgement = Arc<Mutex<Option<(Instant, Option<Instant>)>>>;

#[derive(Parser, Debug)]
#[command(
    about = "Measure broker failover time (kill -9 of the owner to the first acknowledged write on the new owner)"
)]
struct Arguments {
    /// Number of kill/measure trials.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// etcd lease behind broker and store sessions (the backstop), in
    /// milliseconds; the production default.
    #[arg(long, default_value_t = 5_000)]
    lease_ttl_ms: u64,
    /// Heartbeat interval, in milliseconds; the production default.
    #[arg(long, default_value_t = 250)]
    heartbeat_interval_ms: u64,
    /// Nameserver session timeout (ADR 0014), in milliseconds; the
    /// production default.
    #[arg(long, default_value_t = 1_500)]
    session_timeout_ms: u64,
    /// Pause between trials so the restarted broker registers, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    settle_ms: u64,
    /// Longest a single trial may take before the run fails, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    trial_timeout_ms: u64,
}

#[tokio::main]
async fn main() {
    let arguments = Arguments::parse();
    let mut cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        stores: 3,
        lease_ttl_ms: arguments.lease_ttl_ms,
        heartbeat_interval_ms: arguments.heartbeat_interval_ms,
        session_timeout_ms: arguments.session_timeout_ms,
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, 1).await;
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
    // Time of the first acknowledgement of a record enqueued after `since`.
    let first_ack_after: FirstAcknowledgement = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let producer = producer.clone();
        let first_ack_after = first_ack_after.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let value = vec![b'x'; 1024];
            while !stop.load(Ordering::SeqCst) {
                let enqueued_at = Instant::now();
                let delivery = match producer.enqueue(Record::new(TOPIC, value.clone())).await {
                    Ok(delivery) => delivery,
                    Err(error) => {
                        eprintln!("enqueue failed: {error}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let first_ack_after = first_ack_after.clone();
                tokio::spawn(async move {
                    if delivery.await.is_ok() {
                        let now = Instant::now();
                        let mut watch = first_ack_after.lock().expect("lock");
                        if let Some((since, first)) = watch.as_mut() {
                            if enqueued_at > *since && first.is_none() {
                                *first = Some(now);
                            }
                        }
                    }
                });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut samples_ms = Vec::with_capacity(arguments.trials);
    for trial in 1..=arguments.trials {
        tokio::time::sleep(Duration::from_millis(arguments.settle_ms)).await;
        let described = admin.describe_topic(TOPIC).await.expect("describe topic");
        let owner = described
            .partitions
            .first()
            .and_then(|partition| partition.route.as_ref())
            .map(|route| route.broker_id.clone())
            .filter(|owner| !owner.is_empty())
            .expect("the partition has an owner");
        let index = cluster
            .brokers
            .iter()
            .position(|broker| broker.node_id == owner)
            .expect("owner is one of the cluster's brokers");
        let killed_at = Instant::now();
        *first_ack_after.lock().expect("lock") = Some((killed_at, None));
        cluster.brokers[index].kill();
        let deadline = killed_at + Duration::from_millis(arguments.trial_timeout_ms);
        let acknowledged_at = loop {
            if let Some((_, Some(at))) = *first_ack_after.lock().expect("lock") {
                break at;
            }
            if Instant::now() > deadline {
                cluster.dump_logs();
                panic!(
                    "trial {trial}: no acknowledgement within {} ms",
                    arguments.trial_timeout_ms
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let took_ms = acknowledged_at.duration_since(killed_at).as_secs_f64() * 1000.0;
        println!("trial {trial:>3}: killed {owner}, first acknowledgement on the new owner after {took_ms:.0} ms");
        samples_ms.push(took_ms);
        cluster.brokers[index].start();
    }
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;

    samples_ms.sort_by(f64::total_cmp);
    let at = |quantile: f64| {
        let rank =
            ((quantile * samples_ms.len() as f64).ceil() as usize).clamp(1, samples_ms.len());
        samples_ms[rank - 1]
    };
    println!(
        "failover over {} trials: median {:.0} ms, p99 {:.0} ms, max {:.0} ms, min {:.0} ms \
         (lease_ttl_ms {}, heartbeat_interval_ms {}, session_timeout_ms {}, \
         nameserver reconcile_interval_ms 300)",
        samples_ms.len(),
        at(0.5),
        at(0.99),
        samples_ms.last().copied().unwrap_or(0.0),
        samples_ms.first().copied().unwrap_or(0.0),
        arguments.lease_ttl_ms,
        arguments.heartbeat_interval_ms,
        arguments.session_timeout_ms
    );
}
