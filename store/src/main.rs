//! The `sluice-store` binary: the service shell ([`sluice_service::main`])
//! around [`sluice_store::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let binary = sluice_service::Binary {
        name: "sluice-store",
        about: "Sluice storage node",
        example_config: "config/store.toml",
    };
    sluice_service::main(binary, sluice_store::run).await
}
