//! `sluice dev`: nameserver, store and broker in this one process, on
//! localhost, with the embedded metadata store and one data directory.
//!
//! This is for trying Sluice and for development: no etcd, one binary, data
//! that survives a restart. Production clusters run the three services as
//! separate processes against etcd.

use anyhow::{Context, Result};
use clap::Args;
use sluice_broker::config::{ClusterConfig, ServerConfig, TransactionsConfig};
use sluice_broker::BrokerConfig;
use sluice_nameserver::config::{MetadataBackend, MetadataConfig};
use sluice_nameserver::{NameServerConfig, TopicDefaults};
use sluice_store::StoreConfig;
use sluice_telemetry::TelemetryConfig;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long the services get to drain on ctrl-c before the process exits.
const SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

#[derive(Args)]
pub struct DevArgs {
    /// Where metadata and log segments are kept.
    #[arg(long, default_value = "./sluice-data")]
    pub data_dir: PathBuf,
    /// Nameserver port (clients bootstrap here).
    #[arg(long, default_value_t = 7400)]
    pub nameserver_port: u16,
    #[arg(long, default_value_t = 7401)]
    pub broker_port: u16,
    #[arg(long, default_value_t = 7402)]
    pub store_port: u16,
    /// Prometheus endpoint port (GET /metrics, the three services' series in one); 0 serves none.
    #[arg(long, default_value_t = 7403)]
    pub metrics_port: u16,
    /// Log filter (tracing directives): `warn` keeps the terminal quiet, `info` shows what each service does.
    #[arg(long, default_value = "warn")]
    pub log_filter: String,
    /// Run the broker with `[transactions] enabled = true` (ADR 0016):
    /// transactional producers, offsets committed in transactions
    /// (`client/examples/copier.rs`). A takeover then replays each
    /// partition's whole log.
    #[arg(long)]
    pub transactions: bool,
}

async fn bind(port: u16, what: &str) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).await.with_context(|| {
        format!("cannot listen on 127.0.0.1:{port} for the {what}: is another `sluice dev` running? Choose another port with --{what}-port")
    })
}

pub async fn run(args: DevArgs) -> Result<()> {
    // First of all: a directory another `sluice dev` uses is refused
    // before any banner, listener or file of the cluster.
    let _lock = crate::dev_lock::lock(&args.data_dir)?;
    let _telemetry = sluice_telemetry::init(
        "sluice-dev",
        &TelemetryConfig {
            log_filter: args.log_filter.clone(),
            ..TelemetryConfig::default()
        },
    )?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;

    let nameserver_listener = bind(args.nameserver_port, "nameserver").await?;
    let store_listener = bind(args.store_port, "store").await?;
    let broker_listener = bind(args.broker_port, "broker").await?;
    let registry = sluice_telemetry::metrics::MetricsRegistry::new();
    let _metrics_endpoint = if args.metrics_port == 0 {
        None
    } else {
        let listener = bind(args.metrics_port, "metrics").await?;
        sluice_telemetry::metrics::process::register(&registry);
        Some(tokio::spawn(sluice_telemetry::metrics::serve(
            listener,
            registry.clone(),
            std::future::pending::<()>(),
        )))
    };
    let nameserver_url = format!("http://127.0.0.1:{}", args.nameserver_port);

    let nameserver_config = NameServerConfig {
        node_id: "dev-nameserver".to_string(),
        listen_address: format!("127.0.0.1:{}", args.nameserver_port),
        metadata: MetadataConfig {
            backend: MetadataBackend::Embedded,
            data_dir: Some(data_dir.join("metadata")),
            ..MetadataConfig::default()
        },
        // One store in a dev cluster: one copy of each segment.
        topic_defaults: TopicDefaults {
            ensemble_size: 1,
            write_quorum: 1,
            ack_quorum: 1,
            ..TopicDefaults::default()
        },
        ..NameServerConfig::default()
    };
    let store_config = StoreConfig {
        node_id: "dev-store".to_string(),
        listen_address: format!("127.0.0.1:{}", args.store_port),
        nameservers: vec![nameserver_url.clone()],
        data_dir: data_dir.join("store"),
        ..StoreConfig::default()
    };
    let broker_config = BrokerConfig {
        server: ServerConfig {
            listen_address: format!("127.0.0.1:{}", args.broker_port),
            ..ServerConfig::default()
        },
        cluster: ClusterConfig {
            node_id: "dev-broker".to_string(),
            nameservers: vec![nameserver_url.clone()],
            ..ClusterConfig::default()
        },
        transactions: TransactionsConfig {
            enabled: args.transactions,
            ..TransactionsConfig::default()
        },
        ..BrokerConfig::default()
    };

    // One stop per service, sent in order on shutdown: the broker first
    // (it flushes appends to the store and deregisters at the
    // nameserver), then the store, then the nameserver, so that a clean
    // stop has nothing to warn about.
    let (stop_broker, broker_stopped) = watch::channel(false);
    let (stop_store, store_stopped) = watch::channel(false);
    let (stop_nameserver, nameserver_stopped) = watch::channel(false);
    let signal = |mut receiver: watch::Receiver<bool>| async move {
        // Either a stop was sent or every sender is gone: both mean stop.
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let nameserver = tokio::spawn(sluice_nameserver::run_with_metrics(
        nameserver_config,
        nameserver_listener,
        signal(nameserver_stopped),
        registry.clone(),
    ));
    let store = tokio::spawn(sluice_store::run_with_metrics(
        store_config,
        store_listener,
        signal(store_stopped),
        registry.clone(),
    ));
    let broker = tokio::spawn(sluice_broker::run_with_metrics(
        broker_config,
        broker_listener,
        signal(broker_stopped),
        registry.clone(),
    ));

    say(&banner(
        &data_dir,
        &nameserver_url,
        args.broker_port,
        args.store_port,
        args.metrics_port,
    ));

    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for ctrl-c")?;
            tell("stopping...");
        }
        _ = terminate() => tell("SIGTERM: stopping..."),
    }
    let _ = stop_broker.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS), async {
        let broker = broker.await;
        let _ = stop_store.send(true);
        let store = store.await;
        let _ = stop_nameserver.send(true);
        let nameserver = nameserver.await;
        (broker, store, nameserver)
    })
    .await;
    match drained {
        Ok((broker, store, nameserver)) => {
            broker.context("broker task panicked")?.context("broker")?;
            store.context("store task panicked")?.context("store")?;
            nameserver
                .context("nameserver task panicked")?
                .context("nameserver")?;
            Ok(())
        }
        Err(_) => anyhow::bail!("services did not stop within {SHUTDOWN_TIMEOUT_MS} ms"),
    }
}

/// What `sluice dev` prints once it serves: where each service listens,
/// and that it is plaintext on loopback with no authentication or
/// authorisation (issue 13: `sluice dev` stays zero-config and says so).
fn banner(
    data_dir: &std::path::Path,
    nameserver_url: &str,
    broker_port: u16,
    store_port: u16,
    metrics_port: u16,
) -> String {
    let metrics = if metrics_port == 0 {
        "off (--metrics-port)".to_string()
    } else {
        format!("http://127.0.0.1:{metrics_port}/metrics   <- Prometheus scrapes here")
    };
    format!(
        "Sluice dev cluster running (data in {})\n  \
         nameserver: {nameserver_url}   <- clients bootstrap here (the CLI's default)\n  \
         broker:     http://127.0.0.1:{broker_port}\n  \
         store:      http://127.0.0.1:{store_port}\n  \
         metrics:    {metrics}\n  \
         plaintext on loopback: no TLS, no authentication, no authorisation \
         (for a secured cluster see `sluice certs` and compose.yaml)\n\
         Press ctrl-c to stop.",
        data_dir.display(),
    )
}

/// Prints a line to stdout; a closed or broken stdout (the terminal or
/// the reading end of a pipe went away) drops it: the cluster keeps
/// serving, unlike `println!`, which panics on EPIPE.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Like [`say`], on stderr.
fn tell(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_says_plaintext_on_loopback_without_authentication() {
        let text = banner(
            std::path::Path::new("/tmp/data"),
            "http://127.0.0.1:7400",
            7401,
            7402,
            7403,
        );
        for wanted in [
            "plaintext on loopback",
            "no TLS",
            "no authentication",
            "no authorisation",
            "http://127.0.0.1:7400",
            "http://127.0.0.1:7401",
            "http://127.0.0.1:7402",
            "http://127.0.0.1:7403/metrics",
        ] {
            assert!(text.contains(wanted), "banner lacks {wanted:?}:\n{text}");
        }
        assert!(!text.contains("https://"), "{text}");
        let off = banner(
            std::path::Path::new("/tmp/data"),
            "http://127.0.0.1:7400",
            7401,
            7402,
            0,
        );
        assert!(off.contains("metrics:    off"), "{off}");
    }
}
