//! One chaos run end to end: create the topic, start the workload, apply
//! the fault schedule, heal, stop the workload, drain, check, report.

use super::checker::{check, Anomaly, CheckInput, CheckReport};
use super::faults::{
    node_from_id, schedule, FaultEvent, FaultKind, FaultTarget, Nemesis, Node, ProcessTarget,
    ScheduleConfig, ScheduledFault, Topology,
};
use super::history::History;
use super::txn_checker::{check_transactions, TxnCheckReport};
use super::txn_history::{TxnHistory, TxnOutcome};
use super::txn_workload::{drain_committed, wait_stable, TxnWorkload, TxnWorkloadConfig};
use super::workload::{drain, Workload, WorkloadConfig};
use crate::cluster::{wait_until_writable, Cluster, ClusterSpec};
use anyhow::Context;
use sluice_client::Admin;
use std::fmt;
use std::time::{Duration, Instant};

/// Seed of the CI run when `SLUICE_CHAOS_SEED` is not set.
pub const DEFAULT_SEED: u64 = 0x51CE_C4A0;

/// Workload time before the first fault, in milliseconds.
const WARM_UP_MS: u64 = 2_000;

/// Longest wait for the owner of a partition before a fault goes ahead
/// without knowing it, in milliseconds.
const OWNER_LOOKUP_TIMEOUT_MS: u64 = 2_000;

/// Longest wait after healing for every node to be registered and every
/// partition writable, in milliseconds.
const RECOVERY_TIMEOUT_MS: u64 = 60_000;

/// Longest time the drain waits for a next record, in milliseconds.
const DRAIN_IDLE_TIMEOUT_MS: u64 = 20_000;

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub seed: u64,
    pub faults: usize,
    /// Time over which the faults are spread, in milliseconds.
    pub fault_duration_ms: u64,
    pub partitions: u32,
    /// Keep writing this long after the last heal, in milliseconds, so the
    /// healed cluster is written to as well.
    pub quiet_after_ms: u64,
    /// Fault kinds to draw from (those the cluster cannot do are dropped).
    pub kinds: Vec<FaultKind>,
    /// Let faults overlap (see [`ScheduleConfig::overlapping`]).
    pub overlapping: bool,
    pub workload: WorkloadConfig,
    /// Transactional producers and a read-committed reader on their own
    /// topic as well (ADR 0016); needs brokers with `[transactions]
    /// enabled = true` ([`TRANSACTIONS_BROKER_CONFIG`]). On in the CI run
    /// (`tests/tests/chaos.rs`).
    pub transactions: Option<TxnWorkloadConfig>,
}

/// Broker configuration a run with [`ChaosOptions::transactions`] needs.
pub const TRANSACTIONS_BROKER_CONFIG: &str =
    "[transactions]\nenabled = true\nmax_timeout_ms = 60000\n";

/// Quiet time that ends the transactional drain, in milliseconds.
const TXN_DRAIN_IDLE_MS: u64 = 3_000;

impl ChaosOptions {
    /// The CI run: `faults` faults over `fault_duration_ms`.
    pub fn new(seed: u64, faults: usize, fault_duration_ms: u64, partitions: u32) -> Self {
        Self {
            seed,
            faults,
            fault_duration_ms,
            partitions,
            quiet_after_ms: 3_000,
            kinds: FaultKind::ALL.to_vec(),
            overlapping: false,
            workload: WorkloadConfig::default(),
            transactions: None,
        }
    }

    /// Whether the network cut is among the kinds.
    pub fn network_cuts(&self) -> bool {
        self.kinds.contains(&FaultKind::CutNode)
    }
}

/// The cluster of the chaos runs: 2 nameservers, 3 brokers, 3 stores, a
/// 3-member etcd. Each store runs on its own 256 MiB `tmpfs` (so one
/// store's disk can be filled) with 8 MiB journal files and a file limit
/// of 256 (so idle connections can exhaust it).
pub fn cluster_spec() -> ClusterSpec {
    ClusterSpec {
        nameservers: 2,
        brokers: 3,
        stores: 3,
        lease_ttl_ms: 3_000,
        heartbeat_interval_ms: 250,
        session_timeout_ms: 1_500,
        default_timings: false,
        offsets_partitions: 4,
        transaction_log_partitions: 2,
        etcd_members: 3,
        broker_config: String::new(),
        store_config: "journal_file_max_bytes = 8388608\nsegment_preallocate_bytes = 1048576\n"
            .to_string(),
        store_file_limit: Some(256),
        store_filesystem_bytes: Some(256 * 1024 * 1024),
        tls: false,
        auth_config: String::new(),
        metrics: false,
    }
}

/// Reads the seed from `SLUICE_CHAOS_SEED` (decimal or 0x-hex); unset or
/// empty means the default.
pub fn seed_from_env() -> anyhow::Result<u64> {
    match std::env::var("SLUICE_CHAOS_SEED") {
        Ok(text) if !text.trim().is_empty() => parse_seed(&text),
        _ => Ok(DEFAULT_SEED),
    }
}

/// Parses a seed written in decimal or as `0x` hex.
pub fn parse_seed(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.with_context(|| format!("seed {text:?} is not a u64 (decimal or 0x-hex)"))
}

/// Everything a run found.
#[derive(Debug)]
pub struct ChaosReport {
    pub options: ChaosOptions,
    /// ensemble/write/ack of the topic.
    pub replication: (u32, u32, u32),
    pub schedule: Vec<ScheduledFault>,
    pub fault_log: Vec<FaultEvent>,
    /// Faults the backend could not apply or heal.
    pub fault_errors: Vec<String>,
    /// The cluster did not come back after healing within the limit.
    pub recovery_problems: Vec<String>,
    pub drain_problems: Vec<String>,
    pub check: CheckReport,
    /// The transactional workload's check, when it ran.
    pub txn_check: Option<TxnCheckReport>,
    pub elapsed_ms: u64,
}

impl ChaosReport {
    /// Every anomaly count is zero and every fault was applied and healed.
    pub fn passed(&self) -> bool {
        self.check.is_valid()
            && self.txn_check.as_ref().is_none_or(TxnCheckReport::is_valid)
            && self.fault_errors.is_empty()
            && self.recovery_problems.is_empty()
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = &self.options;
        writeln!(formatter, "===== sluice chaos report =====")?;
        writeln!(
            formatter,
            "seed: {} (0x{:x}; rerun with SLUICE_CHAOS_SEED={} or `sluice-chaos --seed {}`)",
            options.seed, options.seed, options.seed, options.seed
        )?;
        writeln!(
            formatter,
            "faults: {} over {} ms; partitions: {}; replication {}/{}/{}; producers: {}; group members: {}; run took {} ms",
            options.faults,
            options.fault_duration_ms,
            options.partitions,
            self.replication.0,
            self.replication.1,
            self.replication.2,
            options.workload.producers,
            options.workload.group_members,
            self.elapsed_ms
        )?;
        writeln!(formatter, "schedule (ms after the first fault slot):")?;
        for scheduled in &self.schedule {
            writeln!(formatter, "  {scheduled}")?;
        }
        writeln!(formatter, "fault log (ms since the workload started):")?;
        for event in &self.fault_log {
            writeln!(formatter, "  {event}")?;
        }
        for problem in &self.recovery_problems {
            writeln!(formatter, "RECOVERY PROBLEM: {problem}")?;
        }
        for problem in &self.drain_problems {
            writeln!(formatter, "drain problem: {problem}")?;
        }
        writeln!(formatter, "{}", self.check)?;
        if let Some(txn_check) = &self.txn_check {
            writeln!(formatter, "{txn_check}")?;
        }
        if !self.check.is_valid() {
            writeln!(
                formatter,
                "anomaly examples and the last fault event before each (ms since the workload started):"
            )?;
            for anomaly in Anomaly::ALL {
                let examples = self.check.examples(anomaly);
                let times = self.check.example_times(anomaly);
                for (example, at_ms) in examples.iter().zip(times) {
                    let Some(at_ms) = at_ms else {
                        continue;
                    };
                    let before = self
                        .fault_log
                        .iter()
                        .rev()
                        .find(|event| event.at_ms <= *at_ms)
                        .map_or("none (before the first fault)".to_string(), |event| {
                            event.to_string()
                        });
                    writeln!(
                        formatter,
                        "  {} at {at_ms} ms: {example}\n      after: {}",
                        anomaly.name(),
                        before.trim()
                    )?;
                }
            }
        }
        if !self.fault_errors.is_empty() {
            writeln!(
                formatter,
                "FAULT ERRORS ({}): the run did not do what it claims",
                self.fault_errors.len()
            )?;
        }
        write!(
            formatter,
            "result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Copies every service log of `cluster` into a fresh directory under
/// `target/<profile>/chaos-logs/` (kept after the cluster's temporary
/// directory is gone) and returns it.
pub fn save_logs(cluster: &Cluster, seed: u64) -> std::io::Result<std::path::PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    let directory = crate::cluster::binaries_dir()
        .join("chaos-logs")
        .join(format!("seed-{seed}-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    for service in cluster
        .nameservers
        .iter()
        .chain(&cluster.stores)
        .chain(&cluster.brokers)
    {
        std::fs::copy(
            service.log_path(),
            directory.join(format!("{}.log", service.node_id)),
        )?;
    }
    Ok(directory)
}

/// The nameserver elected to make assignments right now, if one is.
async fn active_assigner(admin: &Admin) -> Option<String> {
    let lookup = admin.cluster_status();
    match tokio::time::timeout(Duration::from_millis(OWNER_LOOKUP_TIMEOUT_MS), lookup).await {
        Ok(Ok(status)) => Some(status.active_assigner).filter(|node_id| !node_id.is_empty()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cluster status failed");
            None
        }
        Err(_) => None,
    }
}

/// The broker owning `partition` right now, if a nameserver knows.
async fn partition_owner(admin: &Admin, topic: &str, partition: u32) -> Option<String> {
    let lookup = admin.describe_topic(topic);
    match tokio::time::timeout(Duration::from_millis(OWNER_LOOKUP_TIMEOUT_MS), lookup).await {
        Ok(Ok(description)) => description
            .partitions
            .get(partition as usize)
            .and_then(|description| description.route.as_ref())
            .map(|route| route.broker_id.clone())
            .filter(|broker_id| !broker_id.is_empty()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "describe topic failed");
            None
        }
        Err(_) => None,
    }
}

/// Waits until every broker and store is registered again and every
/// partition is writable; says what is missing when that takes longer than
/// [`RECOVERY_TIMEOUT_MS`].
async fn wait_recovered(
    client: &sluice_client::ClientConfig,
    topology: &Topology,
    topic: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(RECOVERY_TIMEOUT_MS);
    let want_brokers = topology.brokers;
    let want_stores = topology.stores;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let status = match Admin::connect(client.clone()).await {
            Ok(admin) => admin.cluster_status().await.map(|status| (admin, status)),
            Err(error) => Err(error),
        };
        match status {
            Ok((admin, status))
                if status.brokers.len() >= want_brokers && status.stores.len() >= want_stores =>
            {
                let left = deadline.saturating_duration_since(Instant::now());
                return admin
                    .wait_until_writable(topic, left)
                    .await
                    .map_err(|error| format!("{topic} not writable after healing: {error}"));
            }
            Ok((_, status)) => {
                last = format!(
                    "{} of {want_brokers} brokers and {} of {want_stores} stores registered",
                    status.brokers.len(),
                    status.stores.len()
                )
            }
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "cluster not recovered {RECOVERY_TIMEOUT_MS} ms after healing: {last}"
    ))
}

async fn sleep_until(history: &History, at_ms: u64) {
    let now = history.now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

/// Runs the workload against a process `cluster` while `options`'
/// schedule of faults hits it, then heals, drains and checks.
pub async fn run(cluster: &mut Cluster, options: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let deployment = Deployment {
        client: cluster.client_config(),
        lease_ttl_ms: cluster.spec.lease_ttl_ms,
        replication: (
            cluster.spec.ensemble_size() as u32,
            cluster.spec.ensemble_size() as u32,
            cluster.spec.ack_quorum() as u32,
        ),
    };
    let network_cuts = options.network_cuts();
    let mut target = ProcessTarget::new(cluster, network_cuts)?;
    run_with(&mut target, &deployment, options).await
}

/// How to reach a deployment under test and what to create on it.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub client: sluice_client::ClientConfig,
    /// Registration lease of its brokers: pauses last longer.
    pub lease_ttl_ms: u64,
    /// ensemble/write/ack of the chaos topic.
    pub replication: (u32, u32, u32),
}

/// Runs the workload against any deployment a [`FaultTarget`] can break
/// (processes, containers) while `options`' schedule of faults hits it,
/// then heals, drains and checks.
pub async fn run_with<T: FaultTarget>(
    target: &mut T,
    deployment: &Deployment,
    options: ChaosOptions,
) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let topic = options.workload.topic.clone();
    let client = deployment.client.clone();
    let replication = deployment.replication;
    let admin = Admin::connect(client.clone())
        .await
        .context("admin client")?;
    admin
        .create_topic(
            &topic,
            sluice_proto::v1::TopicConfig {
                partitions: options.partitions,
                ensemble_size: replication.0,
                write_quorum: replication.1,
                ack_quorum: replication.2,
                ..sluice_proto::v1::TopicConfig::default()
            },
        )
        .await
        .context("create the chaos topic")?;
    wait_until_writable(client.clone(), &topic).await;

    let history = History::new();
    let mut workload = Workload::start(client.clone(), options.workload.clone(), history.clone());
    let txn_history = TxnHistory::new();
    let mut txn_workload = match &options.transactions {
        Some(config) => {
            create_txn_topic(&admin, &client, config, replication).await?;
            Some(TxnWorkload::start(
                client.clone(),
                config.clone(),
                txn_history.clone(),
            ))
        }
        None => None,
    };
    let topology = target.topology();
    let schedule_config = ScheduleConfig {
        seed: options.seed,
        faults: options.faults,
        duration_ms: options.fault_duration_ms,
        topology,
        partitions: options.partitions,
        lease_ttl_ms: deployment.lease_ttl_ms,
        kinds: options.kinds.clone(),
        overlapping: options.overlapping,
    };
    let faults = schedule(&schedule_config);
    eprintln!(
        "[chaos] seed {} (0x{:x}), {} faults over {} ms:",
        options.seed, options.seed, options.faults, options.fault_duration_ms
    );
    for scheduled in &faults {
        eprintln!("[chaos]   {scheduled}");
    }
    let (fault_log, fault_errors) = {
        let mut nemesis = Nemesis::new(&mut *target);
        let phase_start_ms = history.now_ms() + WARM_UP_MS;
        // Every fault is applied at its time and healed `heal_after_ms`
        // later; with overlapping schedules several are in effect at once.
        let mut events: Vec<(u64, usize, bool)> = Vec::with_capacity(faults.len() * 2);
        for (index, scheduled) in faults.iter().enumerate() {
            events.push((scheduled.at_ms, index, true));
            events.push((scheduled.at_ms + scheduled.heal_after_ms, index, false));
        }
        // Heals before applies at the same instant.
        events.sort_by_key(|(at_ms, index, apply)| (*at_ms, *apply, *index));
        let mut heals: Vec<Option<super::faults::Heal>> = vec![None; faults.len()];
        for (at_ms, index, apply) in events {
            sleep_until(&history, phase_start_ms + at_ms).await;
            if !apply {
                if let Some(heal) = heals[index].take() {
                    nemesis.heal(history.now_ms(), heal);
                }
                continue;
            }
            let scheduled = &faults[index];
            let resolved: Option<Node> = match scheduled.fault {
                super::faults::Fault::KillPartitionOwner { partition }
                | super::faults::Fault::PausePartitionOwner { partition } => {
                    partition_owner(&admin, &topic, partition)
                        .await
                        .and_then(|broker_id| nemesis.target.broker_by_id(&broker_id))
                }
                super::faults::Fault::KillActiveNameserver => active_assigner(&admin)
                    .await
                    .and_then(|node_id| node_from_id(&node_id)),
                _ => None,
            };
            heals[index] = nemesis.apply(history.now_ms(), &scheduled.fault, resolved);
        }
        nemesis.heal_all(history.now_ms());
        sleep_until(&history, phase_start_ms + options.fault_duration_ms).await;
        (nemesis.log.clone(), nemesis.errors())
    };

    let mut recovery_problems = Vec::new();
    if let Err(problem) = wait_recovered(&client, &topology, &topic).await {
        eprintln!("[chaos] {problem}");
        recovery_problems.push(problem);
    }
    tokio::time::sleep(Duration::from_millis(options.quiet_after_ms)).await;
    // The transactional part stops, drains and is checked beside the main
    // workload's stop and drain, not after them.
    let main_part = async {
        workload.stop_producers().await;
        workload.stop_consumers().await;
        drain(
            client.clone(),
            &topic,
            options.partitions,
            Duration::from_millis(DRAIN_IDLE_TIMEOUT_MS),
        )
        .await
    };
    let txn_part = async {
        match (&mut txn_workload, &options.transactions) {
            (Some(running), Some(config)) => {
                running.stop().await;
                Some(check_txn_workload(&client, config, &txn_history).await)
            }
            _ => None,
        }
    };
    let (drained, txn_outcome) = tokio::join!(main_part, txn_part);
    let (txn_check, drain_problems) = match txn_outcome {
        Some((check, problems)) => (Some(check), problems),
        None => (None, Vec::new()),
    };
    let operations = history.operations();
    let deliveries = history.deliveries();
    let commits = history.commits();
    let check = check(CheckInput {
        operations: &operations,
        drained: &drained.records,
        high_watermarks: &drained.high_watermarks,
        deliveries: &deliveries,
        commits: &commits,
        partitions: options.partitions,
    });
    Ok(ChaosReport {
        options,
        replication,
        schedule: faults,
        fault_log,
        fault_errors,
        recovery_problems,
        drain_problems: drained.problems.into_iter().chain(drain_problems).collect(),
        check,
        txn_check,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

async fn create_txn_topic(
    admin: &Admin,
    client: &sluice_client::ClientConfig,
    config: &TxnWorkloadConfig,
    replication: (u32, u32, u32),
) -> anyhow::Result<()> {
    admin
        .create_topic(
            &config.topic,
            sluice_proto::v1::TopicConfig {
                partitions: config.partitions,
                ensemble_size: replication.0,
                write_quorum: replication.1,
                ack_quorum: replication.2,
                ..sluice_proto::v1::TopicConfig::default()
            },
        )
        .await
        .context("create the transactional chaos topic")?;
    wait_until_writable(client.clone(), &config.topic).await;
    Ok(())
}

/// After the transactional producers stopped: waits until no transaction
/// holds an LSO back (bounded by the transaction timeout and 10 s), drains
/// read-committed and checks; the problems met on the way.
async fn check_txn_workload(
    client: &sluice_client::ClientConfig,
    config: &TxnWorkloadConfig,
    history: &TxnHistory,
) -> (TxnCheckReport, Vec<String>) {
    let bound = Duration::from_millis(config.transaction_timeout_ms + 10_000);
    let mut problems: Vec<String> = wait_stable(client.clone(), config, bound)
        .await
        .into_iter()
        .collect();
    let idle = Duration::from_millis(TXN_DRAIN_IDLE_MS);
    let transactions = history.transactions();
    let expected = transactions
        .iter()
        .filter(|txn| txn.outcome == TxnOutcome::Committed)
        .map(|txn| txn.values.len())
        .sum();
    let (drained, drain_problems) = drain_committed(client.clone(), config, (expected, idle)).await;
    problems.extend(drain_problems);
    let check = check_transactions(&transactions, &history.reads(), &drained);
    (check, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42").expect("decimal"), 42);
        assert_eq!(parse_seed("0x2a").expect("hex"), 42);
        assert!(parse_seed("forty-two").is_err());
    }
}
