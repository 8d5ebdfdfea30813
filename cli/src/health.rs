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

pub async fn run(args: HealthArgs) -> Result<()> {
    let address = crate::parse_bootstrap(&args.address)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("--address is empty: give host:port or http://host:port"))?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let endpoint = Endpoint::from_shared(address.clone())
        .with_context(|| format!("{address:?} is not a valid address"))?
        .connect_timeout(timeout)
        .timeout(timeout);
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
