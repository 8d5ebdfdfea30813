//! `sluice health --address URL`: asks one node (nameserver, broker or
//! store) over the standard gRPC health protocol (`grpc.health.v1`) whether
//! it is serving. Exits 0 when it answers SERVING and non-zero otherwise, so
//! container healthchecks (the images have no shell or curl) and scripts
//! can use it.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES;
use std::time::Duration;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Args)]
pub struct HealthArgs {
    /// The node to ask (host:port or http://host:port).
    #[arg(long)]
    pub address: String,
    /// Service to ask about; empty (the default) means the whole server.
    /// Services: sluice.v1.NameServer, sluice.v1.Broker, sluice.v1.Store.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Bound on connecting and on the answer together, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub timeout_ms: u64,
    /// Print nothing when the node is serving.
    #[arg(long)]
    pub quiet: bool,
}

pub async fn run(args: HealthArgs, tls: Option<sluice_client::ClientTls>) -> Result<()> {
    let address = crate::parse_bootstrap(&args.address)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("--address is empty: give host:port or http://host:port"))?;
    let address = sluice_client::with_scheme(&address, tls.is_some());
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut endpoint = Endpoint::from_shared(address.clone())
        .with_context(|| format!("{address:?} is not a valid address"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(tls) = &tls {
        endpoint = endpoint
            .tls_config(tls.tonic_config())
            .with_context(|| format!("TLS settings for {address}"))?;
    }
    let status = tokio::time::timeout(timeout, async {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let mut client = HealthClient::new(channel)
            .max_decoding_message_size(DEFAULT_MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(DEFAULT_MAX_GRPC_MESSAGE_BYTES);
        let answer = client
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .with_context(|| format!("health check of {address} failed"))?;
        Ok::<i32, anyhow::Error>(answer.into_inner().status)
    })
    .await
    .map_err(|_| anyhow!("{address} did not answer within {} ms", args.timeout_ms))??;
    let what = if args.service.is_empty() {
        "server".to_string()
    } else {
        format!("service {}", args.service)
    };
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => {
            if !args.quiet {
                println!("{address}: {what} SERVING");
            }
            Ok(())
        }
        Ok(other) => bail!("{address}: {what} is {}", other.as_str_name()),
        Err(_) => bail!("{address}: {what} answered an unknown status {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::server::HealthReporter;

    /// A server with only the health service on a free loopback port.
    async fn health_server() -> (String, HealthReporter, tokio::sync::oneshot::Sender<()>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("bound address").to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        (address, reporter, stop)
    }

    fn args(address: &str, service: &str) -> HealthArgs {
        HealthArgs {
            address: address.to_string(),
            service: service.to_string(),
            timeout_ms: 5_000,
            quiet: true,
        }
    }

    #[tokio::test]
    async fn serving_server_passes() {
        let (address, _reporter, _stop) = health_server().await;
        run(args(&address, ""), None)
            .await
            .expect("a serving server passes");
    }

    #[tokio::test]
    async fn not_serving_server_fails_with_its_status() {
        let (address, reporter, _stop) = health_server().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let error = run(args(&address, ""), None)
            .await
            .expect_err("NOT_SERVING must fail");
        assert!(error.to_string().contains("NOT_SERVING"), "{error:#}");
    }

    #[tokio::test]
    async fn unknown_service_fails() {
        let (address, _reporter, _stop) = health_server().await;
        let error = run(args(&address, "sluice.v1.NoSuchService"), None)
            .await
            .expect_err("an unregistered service must fail");
        assert!(
            format!("{error:#}").contains("health check of"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_fails_with_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("bound address").to_string();
        drop(listener);
        let error = run(args(&address, ""), None)
            .await
            .expect_err("nothing listens there");
        assert!(error.to_string().contains("cannot connect"), "{error:#}");
    }
}
