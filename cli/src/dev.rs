//! `sluice dev`: nameserver, store and broker in this one process, on
//! localhost, with the embedded metadata store and one data directory.
//!
//! This is for trying Sluice and for development: no etcd, one binary, data
//! that survives a restart. Production clusters run the three services as
//! separate processes against etcd.

use anyhow::{Context, Result};
use clap::Args;
use sluice_broker::config::{ClusterConfig, ServerConfig};
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
    /// Log filter (tracing directives): `warn` keeps the terminal quiet, `info` shows what each service does.
    #[arg(long, default_value = "warn")]
    pub log_filter: String,
}

async fn bind(port: u16, what: &str) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).await.with_context(|| {
        format!("cannot listen on 127.0.0.1:{port} for the {what}: is another `sluice dev` running? Choose another port with --{what}-port")
    })
}

pub async fn run(args: DevArgs) -> Result<()> {
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
        ..BrokerConfig::default()
    };

    let (stop, stopped) = watch::channel(false);
    let signal = |mut receiver: watch::Receiver<bool>| async move {
        // Either a stop was sent or every sender is gone: both mean stop.
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let nameserver = tokio::spawn(sluice_nameserver::run(
        nameserver_config,
        nameserver_listener,
        signal(stopped.clone()),
    ));
    let store = tokio::spawn(sluice_store::run(
        store_config,
        store_listener,
        signal(stopped.clone()),
    ));
    let broker = tokio::spawn(sluice_broker::run(
        broker_config,
        broker_listener,
        signal(stopped.clone()),
    ));

    say(&format!(
        "Sluice dev cluster running (data in {})\n  \
         nameserver: {nameserver_url}   <- clients bootstrap here (the CLI's default)\n  \
         broker:     http://127.0.0.1:{}\n  \
         store:      http://127.0.0.1:{}\n  \
         plaintext on loopback: no TLS, no authorisation (for a secured cluster see `sluice certs`)\n\
         Press ctrl-c to stop.",
        data_dir.display(),
        args.broker_port,
        args.store_port
    ));

    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for ctrl-c")?;
            tell("stopping...");
        }
        _ = terminate() => tell("SIGTERM: stopping..."),
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS), async {
        // Broker first: it flushes appends to the store and deregisters.
        let broker = broker.await;
        let store = store.await;
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
