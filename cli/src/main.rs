//! `sluice`: the command-line tool.
//!
//! - `sluice dev`: a whole cluster in one process, for trying Sluice out.
//! - `sluice topic|subscription|group|cluster`: administration.
//! - `sluice produce|consume`: records from stdin / to stdout.
//! - `sluice bench`: throughput and latency measurements.
//! - `sluice health`: whether one node is serving (container healthchecks).
//! - `sluice message get|find|why`: message lookup (ADR 0013).
//! - `sluice console`: a web UI on localhost (no authentication of its own).
//!
//! Every command finds the cluster through `--bootstrap` or
//! `SLUICE_BOOTSTRAP`, defaulting to where `sluice dev` listens.

mod acl;
mod admin;
mod bench;
mod bench_delay;
mod bench_subscription;
mod bench_topics;
mod certs;
mod console;
mod consume;
mod dead_letters;
mod dev;
mod health;
mod message;
mod partition;
mod partition_state;
mod produce;
mod subscription;

use clap::{Parser, Subcommand};
use sluice_client::{ClientConfig, ClientError};
use std::process::ExitCode;

/// Where `sluice dev` puts its nameserver, and so the default bootstrap.
pub const DEFAULT_BOOTSTRAP: &str = "http://127.0.0.1:7400";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a distributed message queue and event-streaming platform"
)]
struct Cli {
    /// Nameserver addresses, comma separated (host:port or http://host:port).
    #[arg(long, global = true, env = "SLUICE_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP)]
    bootstrap: String,

    /// Timeout of each request to the cluster, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    request_timeout_ms: u64,

    /// PEM CA certificates to trust: connect with TLS (see `sluice certs`).
    #[arg(long, global = true, env = "SLUICE_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for mutual TLS (with --tls-key and --tls-ca).
    #[arg(long, global = true, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// File holding a bearer token (JWT) sent with every request, for
    /// servers with [auth.jwt]; read again when it changes. Needs --tls-ca.
    #[arg(long, global = true, env = "SLUICE_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run nameserver, broker and store in this process (embedded metadata, no etcd needed).
    Dev(dev::DevArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(admin::TopicCommand),
    /// Create, list, describe and delete subscriptions (queue semantics).
    #[command(subcommand)]
    Subscription(subscription::SubscriptionCommand),
    /// List and describe consumer groups, with lag.
    #[command(subcommand)]
    Group(admin::GroupCommand),
    /// Cluster health: nameservers, brokers, stores and their leases.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Operator decisions about one partition (recover a damaged one).
    #[command(subcommand)]
    Partition(partition::PartitionCommand),
    /// Produce records: arguments, or one per line from stdin.
    Produce(produce::ProduceArgs),
    /// Consume records to stdout, in a group or from an offset.
    Consume(consume::ConsumeArgs),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Ask one node whether it is serving (gRPC health); exits non-zero if not.
    Health(health::HealthArgs),
    /// Look messages up by id, key, tag or time; ask why one was (not) delivered.
    #[command(subcommand)]
    Message(message::MessageCommand),
    /// Create a development CA and certificates for a TLS cluster.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Add, list and remove ACL bindings (who may do what).
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Serve a web UI on localhost: cluster, topics, consumers, messages (no authentication of its own).
    Console(console::ConsoleArgs),
}

impl Command {
    /// Whether a closed stdout should end the process at once (SIGPIPE's
    /// default), as for any printing tool. Not for `dev`: a long-running
    /// cluster whose terminal or log pipe goes away keeps serving, ignores
    /// EPIPE (Rust's default disposition) and drops what it cannot print.
    fn ends_quietly_on_a_closed_pipe(&self) -> bool {
        !matches!(self, Command::Dev(_) | Command::Console(_))
    }
}

/// Turns `host:port` into `http://host:port` and splits the list.
pub fn parse_bootstrap(bootstrap: &str) -> Vec<String> {
    bootstrap
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| {
            if address.starts_with("http://") || address.starts_with("https://") {
                address.to_string()
            } else {
                format!("http://{address}")
            }
        })
        .collect()
}

fn client_config(cli: &Cli) -> Result<ClientConfig, ClientError> {
    let tls = match (&cli.tls_ca, &cli.tls_cert, &cli.tls_key) {
        (None, None, None) => None,
        (None, _, _) => return Err(ClientError::InvalidArgument(
            "--tls-cert and --tls-key need --tls-ca (the CA that signed the servers' certificates)"
                .into(),
        )),
        (Some(ca), cert, key) => Some(sluice_client::ClientTls::from_files(
            ca,
            cert.as_ref().zip(key.as_ref()),
        )?),
    };
    if cli.token_file.is_some() && tls.is_none() {
        return Err(ClientError::InvalidArgument(
            "--token-file needs --tls-ca: a token must not travel in plaintext".into(),
        ));
    }
    Ok(ClientConfig {
        bootstrap: parse_bootstrap(&cli.bootstrap),
        request_timeout_ms: cli.request_timeout_ms,
        tls,
        credentials: cli
            .token_file
            .clone()
            .map(sluice_client::Credentials::TokenFile),
        ..ClientConfig::default()
    })
}

/// Adds what a person can do about an error to its message.
fn explain(error: &anyhow::Error) -> String {
    let mut text = format!("error: {error:#}");
    if let Some(client_error) = error.downcast_ref::<ClientError>() {
        match client_error {
            ClientError::NoNameserver { .. } => text.push_str(
                "\nhint: is a cluster running? Start one with `sluice dev`, or point at yours with \
                 --bootstrap HOST:PORT or SLUICE_BOOTSTRAP.",
            ),
            ClientError::Server(server) if server.code == sluice_proto::ErrorCode::UnknownTopic => {
                text.push_str("\nhint: list topics with `sluice topic list`; create one with `sluice topic create NAME --partitions N`.")
            }
            _ => {}
        }
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.ends_quietly_on_a_closed_pipe() {
        // Like other Unix tools, end quietly when the reader of stdout goes
        // away (`sluice cluster status | head -3`) instead of panicking in
        // `println!` on EPIPE: Rust ignores SIGPIPE by default.
        // SAFETY: called on the main thread before any other thread exists
        // (parsing arguments starts none); restores the default
        // disposition of one signal.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = match client_config(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Topic(command) => admin::topic(config, command).await,
            Command::Subscription(command) => subscription::run(config, command).await,
            Command::Group(command) => admin::group(config, command).await,
            Command::Cluster(command) => admin::cluster(config, command).await,
            Command::Partition(command) => partition::run(config, command).await,
            Command::Produce(args) => produce::run(config, args).await,
            Command::Consume(args) => consume::run(config, args).await,
            Command::Bench(command) => bench::run(config, command).await,
            Command::Health(args) => health::run(args, config.tls).await,
            Command::Certs(command) => certs::run(command),
            Command::Acl(command) => acl::run(config, command).await,
            Command::Message(command) => message::run(config, command).await,
            Command::Console(args) => console::run(config, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", explain(&error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_accepts_bare_and_full_addresses() {
        assert_eq!(
            parse_bootstrap("127.0.0.1:7400, http://a:1,,"),
            vec![
                "http://127.0.0.1:7400".to_string(),
                "http://a:1".to_string()
            ]
        );
    }

    #[test]
    fn only_printing_commands_die_of_a_closed_pipe() {
        let dev = Cli::parse_from(["sluice", "dev"]);
        assert!(!dev.command.ends_quietly_on_a_closed_pipe());
        let status = Cli::parse_from(["sluice", "cluster", "status"]);
        assert!(status.command.ends_quietly_on_a_closed_pipe());
        let consume = Cli::parse_from(["sluice", "consume", "orders", "--group", "g"]);
        assert!(consume.command.ends_quietly_on_a_closed_pipe());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
