//! The `sluice-nameserver` binary: parse `--config`, load it, start
//! telemetry, bind, and run until ctrl-c or SIGTERM.

use clap::Parser;
use sluice_nameserver::NameServerConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Sluice nameserver")]
struct Arguments {
    /// TOML config file (see config/nameserver.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let config = NameServerConfig::load(arguments.config.as_deref())?;
    let _telemetry = sluice_telemetry::init("sluice-nameserver", &config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(&config.listen_address).await?;
    sluice_nameserver::run(config, listener, shutdown_signal()).await?;
    Ok(())
}
