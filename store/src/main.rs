//! The `sluice-store` binary: parses `--config`, loads the configuration,
//! starts telemetry, binds the listener and runs the store until ctrl-c or
//! SIGTERM.

use clap::Parser;
use sluice_store::StoreConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "sluice-store", about = "Sluice storage node")]
struct Arguments {
    /// TOML configuration file (see config/store.toml).
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
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let config = match StoreConfig::load(arguments.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice-store: bad configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = match sluice_telemetry::init("sluice-store", &config.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("sluice-store: cannot start telemetry: {error}");
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
    match sluice_store::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "store stopped with an error");
            ExitCode::FAILURE
        }
    }
}
