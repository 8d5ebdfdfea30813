//! Consumes topic `demo` as a member of group `demo-group`, printing each
//! record, until ctrl-c; then commits and leaves. Run against `sluice dev`:
//! `cargo run -p sluice-client --example consume_group`.
//! Set SLUICE_BOOTSTRAP to use another nameserver.

use sluice_client::{ClientConfig, Consumer, ConsumerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut client = ClientConfig {
        client_id: "example-consume".into(),
        ..ClientConfig::default()
    };
    if let Ok(bootstrap) = std::env::var("SLUICE_BOOTSTRAP") {
        client.bootstrap = bootstrap.split(',').map(str::to_string).collect();
    }
    let config = ConsumerConfig {
        client,
        group: Some("demo-group".into()),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::subscribe(config, &["demo"]).await?;
    loop {
        tokio::select! {
            record = consumer.recv() => {
                let record = record?;
                let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                println!("{}/{} @ {}: {value}", record.topic, record.partition, record.offset);
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("assignment at exit: {:?}", consumer.assignment());
    consumer.close().await?;
    Ok(())
}
