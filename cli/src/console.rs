//! `sluice console`: wires the web console (`sluice-console`) to the
//! command line: the listen address, the cluster connection (with the
//! CLI's TLS client identity and token, when given) and Ctrl-C.

use anyhow::{Context, Result};
use clap::Args;
use sluice_client::ClientConfig;

#[derive(Args)]
#[command(
    after_help = "The console has NO AUTHENTICATION of its own: anyone who can reach \
    its address can view the cluster and create or delete topics, with the cluster identity \
    of this process (the --tls-cert/--tls-key client certificate or --token-file token, when \
    given). Keep it on loopback (the default) or behind an authenticating proxy."
)]
pub struct ConsoleArgs {
    /// Address to serve the web UI on (host:port). Loopback by default; see
    /// below before binding it anywhere else.
    #[arg(long, default_value = sluice_console::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
}

pub async fn run(config: ClientConfig, args: ConsoleArgs) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("console listener address")?;
    if !address.ip().is_loopback() {
        eprintln!(
            "warning: the console listens on {address}, not loopback, and has no \
             authentication of its own"
        );
    }
    println!("Sluice console on http://{address}/ (Ctrl-C stops it)");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    sluice_console::run(listener, config, shutdown).await?;
    Ok(())
}
