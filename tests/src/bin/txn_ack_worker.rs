//! `sluice-txn-ack-worker`: a queue worker for the transactional-ack
//! process test (`tests/tests/transactional_acks.rs`), run as its own
//! process so the test can `kill -9` it mid-transaction. It takes
//! `--take` messages from a shared subscription, writes `zombie-<value>`
//! for each to the output topic and acknowledges each inside one
//! transaction, prints `PENDING <values, comma-separated>` on stdout, then
//! waits forever without committing.

use clap::Parser;
use sluice_client::{
    ClientConfig, ClientTls, Producer, ProducerConfig, Record, Subscriber, SubscriberConfig,
};
use sluice_proto::v1::{InitialPosition, SubscriptionType};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
struct Arguments {
    #[arg(long, required = true)]
    bootstrap: Vec<String>,
    /// Directory with ca.pem, client.pem and client.key (TLS clusters).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    subscription: String,
    #[arg(long)]
    output_topic: String,
    #[arg(long)]
    transactional_id: String,
    #[arg(long, default_value_t = 5)]
    take: usize,
    /// The subscription's ack timeout (must match the test's).
    #[arg(long, default_value_t = 30_000)]
    ack_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let tls = match &arguments.tls_dir {
        Some(dir) => Some(ClientTls::from_files(
            dir.join("ca.pem"),
            Some((dir.join("client.pem"), dir.join("client.key"))),
        )?),
        None => None,
    };
    let client = ClientConfig {
        bootstrap: arguments.bootstrap.clone(),
        tls,
        ..ClientConfig::default()
    };
    let producer = Producer::new(ProducerConfig {
        client: client.clone(),
        transactional_id: Some(arguments.transactional_id.clone()),
        transaction_timeout_ms: 60_000,
        delivery_timeout_ms: 20_000,
        ..ProducerConfig::default()
    })
    .await?;
    let subscriber = Subscriber::connect(SubscriberConfig {
        client,
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Earliest,
        ack_timeout_ms: arguments.ack_timeout_ms,
        receiver_queue_size: 100,
        ..SubscriberConfig::new(arguments.topic.as_str(), arguments.subscription.as_str())
    })
    .await?;
    producer.begin_transaction()?;
    let mut values = Vec::new();
    while values.len() < arguments.take {
        let message = subscriber.recv().await?;
        let value = String::from_utf8(message.value.clone().unwrap_or_default().to_vec())?;
        producer
            .send(Record::new(
                arguments.output_topic.as_str(),
                format!("zombie-{value}"),
            ))
            .await?;
        subscriber.ack_in_transaction(&message, &producer).await?;
        values.push(value);
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "PENDING {}", values.join(","))?;
    stdout.flush()?;
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
