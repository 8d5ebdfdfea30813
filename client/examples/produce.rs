//! Produces a few keyed records to topic `demo` (created if missing) and
//! prints where each landed. Run against `sluice dev`:
//! `cargo run -p sluice-client --example produce`.
//! Set SLUICE_BOOTSTRAP to use another nameserver.

use sluice_client::{Admin, ClientConfig, ClientError, Producer, ProducerConfig, Record};
use sluice_client::{ErrorCode, TopicConfig};

fn client_config() -> ClientConfig {
    let mut config = ClientConfig {
        client_id: "example-produce".into(),
        ..ClientConfig::default()
    };
    if let Ok(bootstrap) = std::env::var("SLUICE_BOOTSTRAP") {
        config.bootstrap = bootstrap.split(',').map(str::to_string).collect();
    }
    config
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = client_config();
    let admin = Admin::connect(client.clone()).await?;
    match admin
        .create_topic(
            "demo",
            TopicConfig {
                partitions: 3,
                ..TopicConfig::default()
            },
        )
        .await
    {
        Ok(_) => println!("created topic demo"),
        Err(ClientError::Server(error)) if error.code == ErrorCode::TopicAlreadyExists => {}
        Err(error) => return Err(error.into()),
    }

    let producer = Producer::new(ProducerConfig {
        client,
        ..ProducerConfig::default()
    })
    .await?;
    let mut deliveries = Vec::new();
    for index in 0..10 {
        let record = Record::new("demo", format!("event {index}"))
            .with_key(format!("user-{}", index % 3))
            .with_header("example", "produce");
        deliveries.push(producer.enqueue(record).await?);
    }
    for delivery in deliveries {
        let metadata = delivery.await?;
        println!(
            "{}/{} @ {}",
            metadata.topic, metadata.partition, metadata.offset
        );
    }
    producer.close().await?;
    Ok(())
}
