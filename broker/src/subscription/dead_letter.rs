//! Dead letters: a message delivered too often, written to the
//! subscription's dead-letter topic with the SDK's producer.

use crate::tail_cache::PartitionKey;
use crate::Shared;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use sluice_proto::batch::Record;
use sluice_proto::v1::Subscription;
use std::sync::Arc;

pub(super) type DeadLetters = FuturesUnordered<BoxFuture<'static, (u64, Result<(), String>)>>;

/// Writes `record` to the subscription's dead-letter topic with its history
/// in headers. Durable (acknowledged by the dead-letter topic's stores)
/// when it returns Ok.
pub(super) async fn write_dead_letter(
    shared: Arc<Shared>,
    key: PartitionKey,
    subscription: Subscription,
    record: Record,
    deliveries: u32,
) -> Result<(), String> {
    let producer = shared
        .subscriptions
        .dead_letter_producer
        .get_or_try_init(|| async {
            // With [tls], as the broker itself connects: its certificate.
            let tls_config = &shared.config.tls;
            let tls = if tls_config.enabled {
                let ca_file = tls_config.ca_file.clone().unwrap_or_default();
                let identity = Some((&tls_config.cert_file, &tls_config.key_file));
                Some(sluice_client::ClientTls::from_files(ca_file, identity)?)
            } else {
                None
            };
            let config = sluice_client::ProducerConfig {
                client: sluice_client::ClientConfig {
                    bootstrap: shared.config.cluster.nameservers.clone(),
                    client_id: format!("{}-dead-letters", shared.config.cluster.node_id),
                    tls,
                    ..sluice_client::ClientConfig::default()
                },
                ..sluice_client::ProducerConfig::default()
            };
            sluice_client::Producer::new(config).await
        })
        .await
        .map_err(|error| format!("dead-letter producer: {error}"))?;
    let mut letter = sluice_client::Record::new(
        subscription.dead_letter_topic.clone(),
        record.value.unwrap_or_default(),
    )
    .with_timestamp_ms(record.timestamp_ms);
    if let Some(record_key) = record.key {
        letter = letter.with_key(record_key);
    }
    for (name, value) in record.headers {
        letter = letter.with_header(name, value);
    }
    for tag in record.tags {
        letter = letter.with_tag(tag);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis().to_string())
        .unwrap_or_default();
    letter = letter
        .with_header("sluice-dlq-topic", key.topic.clone())
        .with_header("sluice-dlq-partition", key.partition.to_string())
        .with_header("sluice-dlq-offset", record.offset.to_string())
        .with_header("sluice-dlq-subscription", subscription.name.clone())
        .with_header("sluice-dlq-deliveries", deliveries.to_string())
        .with_header("sluice-dlq-time-ms", now_ms);
    producer
        .send(letter)
        .await
        .map(|_| ())
        .map_err(|error| format!("dead letter to {}: {error}", subscription.dead_letter_topic))
}
