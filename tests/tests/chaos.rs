//! Process-level chaos test: a short seeded schedule of 11 faults
//! (kill -9 of stores, of partition owners and of the active nameserver,
//! SIGSTOP of an owner beyond its lease, network cuts, graceful restarts,
//! a store's disk filled, a store's file handles used up by idle
//! connections, a byte of a store's segment flipped while it is down)
//! while producers write unique values and a consumer group commits; then
//! heal, drain every partition from 0 and check the history. Transactional
//! producers (aborting every 4th transaction on purpose) and a
//! read-committed reader run on a topic of their own meanwhile (ADR 0016
//! §12): no aborted or uncommitted read, no lost, duplicated or partial
//! committed transaction. Every anomaly count must be zero.
//!
//! `SLUICE_CHAOS_SEED` overrides the seed (printed in the report);
//! `SLUICE_CHAOS_NO_NETWORK=1` leaves out the network cut on machines
//! without root/iptables/cgroup v2 (it is printed, not silent). Longer
//! schedules: the `sluice-chaos` binary.

use sluice_tests::chaos::faults::{listening_pid, FaultKind, NetworkCuts};
use sluice_tests::chaos::runner::{
    cluster_spec, run, save_logs, seed_from_env, ChaosOptions, TRANSACTIONS_BROKER_CONFIG,
};
use sluice_tests::chaos::txn_workload::TxnWorkloadConfig;
use sluice_tests::cluster::Cluster;
use sluice_tests::etcd::Etcd;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const FAULTS: usize = 11;
const FAULT_DURATION_MS: u64 = 66_000;
const PARTITIONS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_stays_clean_under_process_faults() {
    let seed = seed_from_env().expect("SLUICE_CHAOS_SEED must be a u64");
    let mut options = ChaosOptions::new(seed, FAULTS, FAULT_DURATION_MS, PARTITIONS);
    if std::env::var_os("SLUICE_CHAOS_NO_NETWORK").is_some() {
        eprintln!("SLUICE_CHAOS_NO_NETWORK is set: the network-cut fault is left out");
        options.kinds.retain(|kind| *kind != FaultKind::CutNode);
    }
    options.transactions = Some(TxnWorkloadConfig::default());
    let mut spec = cluster_spec();
    spec.broker_config.push_str(TRANSACTIONS_BROKER_CONFIG);
    let mut cluster = Cluster::start(spec).await;
    let report = match run(&mut cluster, options).await {
        Ok(report) => report,
        Err(error) => {
            cluster.dump_logs();
            panic!("the chaos run could not run (seed {seed}): {error:#}");
        }
    };
    println!("{report}");
    if !report.passed() {
        cluster.dump_logs();
        match save_logs(&cluster, seed) {
            Ok(directory) => eprintln!("full service logs saved in {}", directory.display()),
            Err(error) => eprintln!("could not save the service logs: {error}"),
        }
    }
    assert!(
        report.recovery_problems.is_empty(),
        "the cluster did not recover after the faults were healed (seed {seed}): {:?}",
        report.recovery_problems
    );
    assert!(
        report.check.is_valid(),
        "history anomalies under faults (seed {seed}); see the report above"
    );
    assert!(
        report
            .txn_check
            .as_ref()
            .is_some_and(|check| check.is_valid()),
        "transactional anomalies under faults (seed {seed}); see the report above"
    );
    assert!(
        report.fault_errors.is_empty(),
        "faults not applied or healed (seed {seed}): {:?}",
        report.fault_errors
    );
}

/// The network cut the chaos run uses, on a real process (etcd): while cut,
/// nothing reaches its port and the process sits in the cut's cgroup (whose
/// outgoing packets are dropped); after reconnecting it is reachable again
/// and back in its old cgroup.
#[test]
fn network_cut_isolates_a_process_and_heals() {
    let etcd = Etcd::start();
    let address: SocketAddr = etcd
        .client_url()
        .trim_start_matches("http://")
        .parse()
        .expect("etcd's client URL is host:port");
    let reachable = || TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok();
    assert!(reachable(), "etcd is not reachable before the cut");
    let pid = listening_pid(address.port()).expect("find the pid listening on etcd's port");
    let cgroup = || std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut cuts = NetworkCuts::new()
        .expect("network cuts need root, iptables with the cgroup match and a cgroup v2 hierarchy");
    cuts.cut("etcd-under-test", address.port())
        .expect("cut etcd off");
    assert!(!reachable(), "etcd is still reachable while cut off");
    assert!(
        cgroup().contains("etcd-under-test"),
        "etcd is not in the cut's cgroup: {}",
        cgroup()
    );
    cuts.reconnect("etcd-under-test").expect("reconnect etcd");
    assert!(reachable(), "etcd is not reachable after reconnecting");
    assert!(!cgroup().contains("etcd-under-test"), "{}", cgroup());
    // A cut left in place is undone when the guard drops.
    cuts.cut("etcd-under-test", address.port())
        .expect("cut etcd off again");
    assert!(!reachable());
    drop(cuts);
    assert!(reachable(), "etcd is not reachable after the guard dropped");
}
