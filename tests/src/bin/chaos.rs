//! `sluice-chaos`: runs the chaos test with a long schedule against a
//! process cluster (3 stores, 3 brokers, 2 nameservers, real etcd) and
//! prints the report. Exits non-zero when any anomaly count is non-zero or
//! a fault could not be applied.
//!
//! `cargo run -p sluice-tests --bin sluice-chaos -- --seed 7 --faults 100 --duration-s 600 --partitions 6`
//! (build the service binaries first: `cargo build -p sluice-nameserver
//! -p sluice-broker -p sluice-store --bins`).
//!
//! With `--transactional` transactional producers and a read-committed
//! reader run on a topic of their own as well (brokers with
//! `[transactions] enabled = true`), checked for aborted and uncommitted
//! reads and lost, duplicated or partial committed transactions.
//!
//! With `--compose compose.yaml` the same run targets the Docker Compose
//! stack instead (images from `scripts/build-images.sh`): containers are
//! killed, paused, stopped and disconnected from the network. The stack
//! runs as its own project on free ports and is removed afterwards.

use clap::Parser;
use sluice_tests::chaos::compose::ComposeTarget;
use sluice_tests::chaos::faults::FaultKind;
use sluice_tests::chaos::runner::{
    cluster_spec, parse_seed, run, run_with, save_logs, ChaosOptions, Deployment, DEFAULT_SEED,
    TRANSACTIONS_BROKER_CONFIG,
};
use sluice_tests::chaos::txn_workload::TxnWorkloadConfig;
use sluice_tests::cluster::Cluster;

#[derive(Debug, Parser)]
#[command(about = "Chaos run of a Sluice process cluster with a history checker")]
struct Arguments {
    /// Seed of the fault schedule (decimal or 0x-hex).
    #[arg(long, value_parser = parse_seed, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Number of faults.
    #[arg(long, default_value_t = 50)]
    faults: usize,
    /// Time over which the faults are spread, in seconds.
    #[arg(long = "duration-s", default_value_t = 300)]
    duration_s: u64,
    /// Partitions of the chaos topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Producers writing unique values.
    #[arg(long, default_value_t = 3)]
    producers: u32,
    /// Members of the consumer group.
    #[arg(long, default_value_t = 2)]
    group_members: u32,
    /// Let faults overlap (start times drawn over the whole duration)
    /// instead of one fault per slot, each healed before the next.
    #[arg(long)]
    overlap: bool,
    /// Leave out the network cut (it needs root, iptables and cgroup v2).
    #[arg(long)]
    no_network: bool,
    /// Transactional producers and a read-committed reader as well, on
    /// their own topic (process clusters only: the brokers get
    /// `[transactions] enabled = true`).
    #[arg(long, conflicts_with = "compose")]
    transactional: bool,
    /// Print the tail of every service log at the end, pass or fail.
    #[arg(long)]
    dump_logs: bool,
    /// Run against the Docker Compose stack of this file instead of
    /// processes.
    #[arg(long)]
    compose: Option<std::path::PathBuf>,
    /// Compose project name (default: sluice-chaos-<pid>).
    #[arg(long)]
    compose_project: Option<String>,
    /// Leave the compose stack running afterwards.
    #[arg(long)]
    keep_compose: bool,
    /// Broker lease of the compose stack, in milliseconds (pauses outlast
    /// it); the nameserver's default.
    #[arg(long, default_value_t = 10_000)]
    compose_lease_ttl_ms: u64,
}

fn main() -> std::process::ExitCode {
    let arguments = Arguments::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the tokio runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        let mut options = ChaosOptions::new(
            arguments.seed,
            arguments.faults,
            arguments.duration_s.saturating_mul(1_000),
            arguments.partitions,
        );
        options.workload.producers = arguments.producers;
        options.workload.group_members = arguments.group_members;
        options.overlapping = arguments.overlap;
        if arguments.transactional {
            options.transactions = Some(TxnWorkloadConfig::default());
        }
        if arguments.no_network {
            options.kinds.retain(|kind| *kind != FaultKind::CutNode);
        }
        if let Some(file) = arguments.compose.clone() {
            options
                .kinds
                .retain(|kind| !FaultKind::PROCESS_ONLY.contains(kind));
            return run_compose(&arguments, file, options).await;
        }
        // The cluster is dropped (every process killed, files removed)
        // before the exit code is returned.
        let mut spec = cluster_spec();
        if arguments.transactional {
            spec.broker_config.push_str(TRANSACTIONS_BROKER_CONFIG);
        }
        let mut cluster = Cluster::start(spec).await;
        let outcome = run(&mut cluster, options).await;
        match outcome {
            Ok(report) => {
                println!("{report}");
                if !report.passed() || arguments.dump_logs {
                    cluster.dump_logs();
                    match save_logs(&cluster, arguments.seed) {
                        Ok(directory) => {
                            eprintln!("full service logs saved in {}", directory.display())
                        }
                        Err(error) => eprintln!("could not save the service logs: {error}"),
                    }
                }
                if report.passed() {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("chaos run could not run: {error:#}");
                cluster.dump_logs();
                std::process::ExitCode::from(2)
            }
        }
    })
}

async fn run_compose(
    arguments: &Arguments,
    file: std::path::PathBuf,
    options: ChaosOptions,
) -> std::process::ExitCode {
    let project = arguments
        .compose_project
        .clone()
        .unwrap_or_else(|| format!("sluice-chaos-{}", std::process::id()));
    let mut target = match ComposeTarget::up(file, &project).await {
        Ok(target) => target,
        Err(error) => {
            eprintln!("cannot start the compose stack: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    target.keep = arguments.keep_compose;
    let deployment = Deployment {
        client: target.client_config(),
        lease_ttl_ms: arguments.compose_lease_ttl_ms,
        replication: (3, 3, 2),
    };
    match run_with(&mut target, &deployment, options).await {
        Ok(report) => {
            println!("{report}");
            if !report.passed() || arguments.dump_logs {
                eprintln!("{}", target.logs(40));
            }
            if report.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("chaos run could not run: {error:#}");
            eprintln!("{}", target.logs(40));
            std::process::ExitCode::from(2)
        }
    }
}
