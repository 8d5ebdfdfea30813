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
mod alter;
mod bench;
mod bench_delay;
mod bench_subscription;
mod bench_topics;
mod bench_transactional;
mod certs;
mod cluster_status;
mod console;
mod consume;
mod dead_letters;
mod dev;
mod dev_lock;
mod diagnose;
mod group_offsets;
mod health;
mod message;
mod output;
mod partition;
mod partition_state;
mod produce;
mod subscription;
mod subscription_skip;
mod transaction;
mod units;
mod views;

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

    /// Timeout of each request to the cluster (`10s`, or milliseconds).
    #[arg(long, global = true, value_name = "DURATION", default_value = "10000", value_parser = units::parse_duration_ms)]
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

    /// How listings and descriptions print: `table` for people, `json` for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = output::OutputFormat::Table)]
    output: output::OutputFormat,

    /// Client debug logging on stderr (`-vv`: trace). RUST_LOG, when set, chooses instead.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,

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
    /// List, describe and abort transactions (exactly-once producers).
    #[command(subcommand)]
    Transaction(transaction::TransactionCommand),
    /// Print a shell completion script (e.g. `sluice completion bash > /etc/bash_completion.d/sluice`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    if tls.is_none() {
        if let Some(address) = parse_bootstrap(&cli.bootstrap)
            .into_iter()
            .find(|address| address.starts_with("https://"))
        {
            return Err(ClientError::InvalidArgument(format!(
                "{address} asks for TLS but no --tls-ca was given (the CA that signed the \
                 servers' certificates); for a plaintext server use http://"
            )));
        }
    }
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

/// The log filter of a client command: RUST_LOG when set, else debug
/// logging of the SDK and this tool with `-v` (trace with `-vv`), else
/// errors only (a failed command says why on its own).
fn client_log_filter(verbose: u8, rust_log: Option<&str>) -> String {
    match (rust_log.filter(|filter| !filter.is_empty()), verbose) {
        (Some(filter), _) => filter.to_string(),
        (None, 0) => "error".to_string(),
        (None, 1) => "warn,sluice_client=debug,sluice=debug".to_string(),
        (None, _) => "info,sluice_client=trace,sluice=trace,tonic=debug".to_string(),
    }
}

/// Like other Unix tools, end quietly when the reader of stdout goes away
/// (`sluice cluster status | head -3`): a `println!` that fails with a
/// broken pipe dies of SIGPIPE instead of panicking. SIGPIPE itself stays
/// ignored (Rust's default), so a network peer closing a socket under a
/// write (an HTTP server given as the bootstrap hangs up on the gRPC
/// preface) is an error to report, not a silent death.
fn end_quietly_on_a_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if is_closed_stdout(message) {
            die_of_sigpipe();
        }
        default_hook(info);
    }));
}

/// Whether a panic message is `println!`'s on a closed stdout.
fn is_closed_stdout(panic_message: &str) -> bool {
    panic_message.starts_with("failed printing to stdout") && panic_message.contains("Broken pipe")
}

fn die_of_sigpipe() -> ! {
    // SAFETY: restores the default disposition of one signal and raises
    // it in this process; no memory is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}

/// Whether `error` is a write to a closed stdout (a `writeln!` to a
/// locked stdout that returned the error instead of panicking).
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Global flags the command at `path` (`["topic", "create"]`) has no use
/// for, hidden from its help (they are still accepted, e.g. from the
/// environment). A flag hidden on a command is hidden on its subcommands.
fn unused_global_flags(path: &[&str]) -> &'static [&'static str] {
    const CONNECTION: [&str; 8] = [
        "bootstrap",
        "request_timeout_ms",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "token_file",
        "verbose",
        "output",
    ];
    match path {
        ["dev" | "certs" | "completion"] => &CONNECTION,
        ["topic", "create" | "delete"]
        | ["subscription", "create" | "delete" | "replay-dead-letters"]
        | ["acl", "add" | "remove"] => &["output"],
        ["topic" | "group" | "subscription" | "cluster" | "acl" | "message" | "transaction", ..] => {
            &[]
        }
        [_] => &["output"],
        _ => &[],
    }
}

/// The command line definition, with each subcommand's help listing only
/// the flags it uses: a subcommand gets hidden copies of the global flags
/// it has no use for (clap propagates a global flag only to subcommands
/// without one of the same id; the copies stay global, so values still
/// reach `Cli` and nested subcommands inherit the hiding).
fn command() -> clap::Command {
    use clap::CommandFactory;
    let command = Cli::command();
    let globals: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .cloned()
        .collect();
    hide_unused(command, &[], &globals)
}

fn hide_unused(mut command: clap::Command, path: &[&str], globals: &[clap::Arg]) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_string())
        .collect();
    for name in names {
        let mut sub_path = path.to_vec();
        sub_path.push(name.as_str());
        let hidden = unused_global_flags(&sub_path);
        let copies: Vec<clap::Arg> = globals
            .iter()
            .filter(|arg| hidden.contains(&arg.get_id().as_str()))
            .map(|arg| arg.clone().hide(true))
            .collect();
        command = command.mut_subcommand(&name, |sub| {
            hide_unused(sub.args(copies), &sub_path, globals)
        });
    }
    command
}

fn main() -> ExitCode {
    let cli = {
        use clap::FromArgMatches;
        match Cli::from_arg_matches(&command().get_matches()) {
            Ok(cli) => cli,
            Err(error) => error.exit(),
        }
    };
    output::set_format(cli.output);
    if let Command::Completion { shell } = cli.command {
        print_completion(shell);
        return ExitCode::SUCCESS;
    }
    let ends_quietly = cli.command.ends_quietly_on_a_closed_pipe();
    if ends_quietly {
        end_quietly_on_a_closed_stdout();
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
    let _telemetry = match init_client_logging(&cli) {
        Ok(guard) => guard,
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
            Command::Transaction(command) => transaction::run(config, command).await,
            Command::Message(command) => message::run(config, command).await,
            Command::Completion { .. } => Ok(()),
            Command::Console(args) => console::run(config, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) && ends_quietly => die_of_sigpipe(),
        Err(error) => {
            let mut text = explain(&error);
            if let Some(ClientError::NoNameserver { tried, .. }) =
                error.downcast_ref::<ClientError>()
            {
                text.push_str(&runtime.block_on(diagnose::explain_addresses(tried)));
            }
            eprintln!("{text}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice completion SHELL`: the script on stdout (a closed stdout, as
/// in `| head`, ends quietly).
fn print_completion(shell: clap_complete::Shell) {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "sluice", &mut script);
    let _ = std::io::stdout().lock().write_all(&script);
}

/// Logging of a client command on stderr (see [`client_log_filter`]);
/// `sluice dev` sets up its own (--log-filter).
fn init_client_logging(
    cli: &Cli,
) -> Result<Option<sluice_telemetry::TelemetryGuard>, sluice_telemetry::TelemetryError> {
    if matches!(cli.command, Command::Dev(_)) {
        return Ok(None);
    }
    let telemetry = sluice_telemetry::TelemetryConfig {
        log_filter: client_log_filter(cli.verbose, std::env::var("RUST_LOG").ok().as_deref()),
        ..sluice_telemetry::TelemetryConfig::default()
    };
    sluice_telemetry::init("sluice", &telemetry).map(Some)
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
    fn verbose_turns_on_client_debug_logs_and_rust_log_wins() {
        assert_eq!(client_log_filter(0, None), "error");
        assert!(client_log_filter(1, None).contains("sluice_client=debug"));
        assert!(client_log_filter(2, None).contains("sluice_client=trace"));
        assert_eq!(client_log_filter(1, Some("tonic=trace")), "tonic=trace");
        assert_eq!(client_log_filter(0, Some("")), "error");
    }

    #[test]
    fn output_and_verbose_are_global_and_json_is_a_listed_value() {
        let cli = Cli::parse_from(["sluice", "topic", "list", "--output", "json", "-v"]);
        assert_eq!(cli.output, output::OutputFormat::Json);
        assert_eq!(cli.verbose, 1);
        let bad = Cli::try_parse_from(["sluice", "topic", "list", "--output", "yaml"]);
        let text = bad.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(text.contains("table") && text.contains("json"), "{text}");
    }

    #[test]
    fn enumerated_flags_list_their_values_in_help() {
        let mut command = command();
        command.build();
        for (path, flag, values) in [
            (
                &["topic", "create"][..],
                "durability",
                &["fsync", "periodic"][..],
            ),
            (
                &["topic", "create"][..],
                "backlog-policy",
                &["hold", "reject", "evict"][..],
            ),
            (
                &["produce"][..],
                "compression",
                &["none", "lz4", "zstd"][..],
            ),
            (
                &["bench", "produce"][..],
                "compression",
                &["none", "lz4", "zstd"][..],
            ),
            (
                &["subscription", "create"][..],
                "type",
                &["exclusive", "shared"][..],
            ),
            (
                &["subscription", "create"][..],
                "selector-kind",
                &["sql"][..],
            ),
        ] {
            let mut sub = &mut command;
            for name in path {
                sub = sub.find_subcommand_mut(name).expect("subcommand");
            }
            let help = sub.render_long_help().to_string();
            let at = help.find(&format!("--{flag}")).expect("flag in help");
            let section = &help[at..];
            for value in values {
                assert!(
                    section.contains(value),
                    "--{flag} lacks {value}:\n{section}"
                );
            }
        }
    }

    #[test]
    fn human_durations_and_sizes_reach_the_topic_config() {
        let cli = Cli::parse_from([
            "sluice",
            "topic",
            "create",
            "t",
            "--retention",
            "7d",
            "--segment-size",
            "64MiB",
            "--retention-bytes",
            "1048576",
            "--ttl",
            "90s",
        ]);
        let Command::Topic(admin::TopicCommand::Create(args)) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.retention_ms, 7 * 86_400_000);
        assert_eq!(args.segment_bytes, 64 << 20);
        assert_eq!(args.retention_bytes, 1 << 20);
        assert_eq!(args.message_ttl_ms, 90_000);
        let bad =
            Cli::try_parse_from(["sluice", "topic", "create", "t", "--retention", "7 parsecs"]);
        assert!(bad.is_err());
    }

    #[test]
    fn subcommands_list_only_the_flags_they_use() {
        let mut command = command();
        command.build();
        let certs = command
            .find_subcommand_mut("certs")
            .and_then(|certs| certs.find_subcommand_mut("create"))
            .expect("certs create")
            .render_long_help()
            .to_string();
        assert!(!certs.contains("--bootstrap"), "{certs}");
        assert!(!certs.contains("--output"), "{certs}");
        let dev = command.find_subcommand_mut("dev").expect("dev");
        let dev = dev.render_long_help().to_string();
        assert!(
            !dev.contains("--tls-ca") && dev.contains("--data-dir"),
            "{dev}"
        );
        let produce = command.find_subcommand_mut("produce").expect("produce");
        let produce = produce.render_long_help().to_string();
        assert!(
            produce.contains("--bootstrap") && !produce.contains("--output"),
            "{produce}"
        );
        let list = command
            .find_subcommand_mut("topic")
            .and_then(|topic| topic.find_subcommand_mut("list"))
            .expect("topic list")
            .render_long_help()
            .to_string();
        assert!(
            list.contains("--output") && list.contains("--bootstrap"),
            "{list}"
        );
        let create = command
            .find_subcommand_mut("topic")
            .and_then(|topic| topic.find_subcommand_mut("create"))
            .expect("topic create")
            .render_long_help()
            .to_string();
        assert!(
            !create.contains("--output") && create.contains("--bootstrap"),
            "{create}"
        );
    }

    #[test]
    fn completion_scripts_are_generated_for_each_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "sluice", &mut script);
            let script = String::from_utf8(script).expect("utf-8");
            assert!(
                script.contains("subscription") && script.contains("output"),
                "{shell}"
            );
        }
    }

    #[test]
    fn only_a_closed_stdout_counts_as_the_reader_going_away() {
        assert!(is_closed_stdout(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_stdout(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_stdout("index out of bounds"));
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(io).context("writing")));
        assert!(!is_broken_pipe(&anyhow::anyhow!("Broken pipe")));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
