//! `sluice subscription replay-dead-letters TOPIC NAME`: moves what a
//! subscription dead-lettered back into the topic it came from, so it is
//! delivered again (to every subscription of that topic, as new messages).
//!
//! Reads the dead-letter topic through its own shared subscription
//! (`<name>-replay`, from the earliest message), writes each letter to the
//! topic named in its `sluice-dlq-topic` header with its key, value, tags and
//! headers (minus the `sluice-dlq-*` history), and acknowledges the letter
//! only once that write is durable: a letter is never lost, and is replayed
//! twice only if the command dies between the two steps.

use anyhow::{bail, Context, Result};
use sluice_client::{
    Admin, ClientConfig, InitialPosition, Producer, ProducerConfig, Record, Subscriber,
    SubscriberConfig, SubscriptionType,
};
use sluice_proto::headers;
use std::time::Duration;

pub async fn replay(
    config: ClientConfig,
    topic: &str,
    name: &str,
    idle_timeout_ms: u64,
    limit: Option<u64>,
) -> Result<()> {
    let admin = Admin::connect(config.clone()).await?;
    let subscription = admin
        .get_subscription(topic, name)
        .await
        .with_context(|| format!("looking up subscription {name:?} of {topic:?}"))?;
    if subscription.dead_letter_topic.is_empty() {
        bail!("subscription {name:?} of {topic:?} has no dead-letter topic (max_deliveries is 0)");
    }
    let dead_letter_topic = subscription.dead_letter_topic.clone();
    let reader = Subscriber::connect(SubscriberConfig {
        client: config.clone(),
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Earliest,
        receiver_queue_size: 100,
        ..SubscriberConfig::new(dead_letter_topic.clone(), format!("{name}-replay"))
    })
    .await
    .with_context(|| format!("reading {dead_letter_topic:?}"))?;
    let producer = Producer::new(ProducerConfig {
        client: config,
        ..ProducerConfig::default()
    })
    .await?;
    let mut replayed = 0u64;
    while limit.is_none_or(|limit| replayed < limit) {
        let Some(letter) = reader
            .recv_timeout(Duration::from_millis(idle_timeout_ms))
            .await?
        else {
            break;
        };
        let origin = letter
            .headers
            .iter()
            .find(|(header, _)| header == headers::DEAD_LETTER_TOPIC)
            .and_then(|(_, value)| String::from_utf8(value.to_vec()).ok())
            .unwrap_or_else(|| topic.to_string());
        let mut record = Record::new(origin.clone(), letter.value.clone().unwrap_or_default())
            .with_timestamp_ms(letter.timestamp_ms);
        if let Some(key) = &letter.key {
            record = record.with_key(key.clone());
        }
        for (header, value) in &letter.headers {
            if !header.starts_with("sluice-dlq-") {
                record = record.with_header(header.clone(), value.clone());
            }
        }
        for tag in &letter.tags {
            record = record.with_tag(tag.clone());
        }
        let written = producer
            .send(record)
            .await
            .with_context(|| format!("writing {} back to {origin:?}", letter.id()))?;
        reader
            .ack(&letter)
            .await
            .with_context(|| format!("acknowledging {}", letter.id()))?;
        println!(
            "{}\t-> {origin}/{}@{}",
            letter.id(),
            written.partition,
            written.offset
        );
        replayed += 1;
    }
    producer.close().await?;
    reader.close().await?;
    eprintln!("replayed {replayed} dead letter(s) from {dead_letter_topic}");
    Ok(())
}
