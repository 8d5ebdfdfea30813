//! The `sluice-nameserver` binary: the service shell
//! ([`sluice_service::main`]) around [`sluice_nameserver::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let binary = sluice_service::Binary {
        name: "sluice-nameserver",
        about: "Sluice nameserver",
        example_config: "config/nameserver.toml",
    };
    sluice_service::main(binary, sluice_nameserver::run).await
}
