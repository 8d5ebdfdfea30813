//! The `sluice-broker` binary: parses `--config`, loads the configuration,
//! starts telemetry, binds the listener and runs the broker until ctrl-c or
//! SIGTERM.

use clap::Parser;
use sluice_broker::{run, BrokerConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice-broker",
    about = "Sluice broker: produce, fetch and consumer groups"
)]
struct Arguments {
    /// TOML configuration file (see config/broker.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only ctrl-c stops the broker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let config = match BrokerConfig::load(arguments.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice-broker: invalid configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = match sluice_telemetry::init("sluice-broker", &config.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("sluice-broker: telemetry: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&config.listen_address).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(address = %config.listen_address, %error, "cannot bind");
            return ExitCode::FAILURE;
        }
    };
    match run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "broker failed");
            ExitCode::FAILURE
        }
    }
}
