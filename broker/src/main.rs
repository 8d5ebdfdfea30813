//! The `sluice-broker` binary: the service shell ([`sluice_service::main`])
//! around [`sluice_broker::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let binary = sluice_service::Binary {
        name: "sluice-broker",
        about: "Sluice broker: produce, fetch and consumer groups",
        example_config: "config/broker.toml",
    };
    sluice_service::main(binary, sluice_broker::run).await
}
