//! What a service's `main` does: parse `--config`, load the configuration,
//! start telemetry, bind the listener, run until ctrl-c or SIGTERM.

use crate::config::{load_config, ServiceConfig};
use crate::signal::shutdown_signal;
use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use tokio::net::TcpListener;

/// A service binary: its name (also its telemetry service name) and what
/// `--help` says.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// e.g. `sluice-broker`.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The commented example configuration, e.g. `config/broker.toml`.
    pub example_config: &'static str,
}

/// The shutdown future handed to a service's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs a service binary: parses `--config PATH`, loads the configuration
/// ([`load_config`]), starts telemetry, raises the soft limit of open
/// files to the hard limit ([`raise_open_file_limit`](crate::raise_open_file_limit)), binds its `listen_address` and
/// calls `run` with ctrl-c/SIGTERM as shutdown. Failures are printed to
/// stderr (and logged, once telemetry is up) and exit non-zero.
pub async fn main<C, E, Run, Running>(binary: Binary, run: Run) -> ExitCode
where
    C: ServiceConfig,
    E: Display,
    Run: FnOnce(C, TcpListener, Shutdown) -> Running,
    Running: Future<Output = Result<(), E>>,
{
    let config_path = config_path(&binary);
    let config: C = match load_config(config_path.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: invalid configuration: {error}", binary.name);
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = match sluice_telemetry::init(binary.name, config.telemetry()) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{}: cannot start telemetry: {error}", binary.name);
            return ExitCode::FAILURE;
        }
    };
    // Logged by the call; a refusal leaves the limit as it was.
    let _ = crate::file_limit::raise_open_file_limit();
    let address = config.listen_address().to_string();
    let listener = match TcpListener::bind(&address).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%address, %error, "cannot bind");
            // Also unconditionally: the log filter may hide the event.
            eprintln!("{}: cannot bind {address}: {error}", binary.name);
            return ExitCode::FAILURE;
        }
    };
    match run(config, listener, Box::pin(shutdown_signal())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{} failed", binary.name);
            eprintln!("{}: {error}", binary.name);
            ExitCode::FAILURE
        }
    }
}

fn config_path(binary: &Binary) -> Option<PathBuf> {
    clap::Command::new(binary.name)
        .about(binary.about)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "TOML configuration file (see {})",
                    binary.example_config
                )),
        )
        .get_matches()
        .get_one::<PathBuf>("config")
        .cloned()
}
