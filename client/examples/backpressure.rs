//! A producer that slows down when consumers fall behind (ADR 0012): it
//! writes to topic `demo`, pauses between records while any partition's
//! backlog is past its quota's warning line, stops writing to a partition
//! refused with BACKLOG_QUOTA_EXCEEDED for a while, and prints pressure
//! changes and its pressure counters. Give the topic a quota first, e.g.
//! `sluice topic create demo --backlog-quota-messages 10000 --backlog-policy
//! reject` and `sluice subscription create demo workers --type shared`, then
//! run it against `sluice dev`:
//! `cargo run -p sluice-client --example backpressure`.
//! Set SLUICE_BOOTSTRAP to use another nameserver.

use sluice_client::ErrorCode;
use sluice_client::{
    ClientConfig, ClientError, PressureLevel, PressureListener, Producer, ProducerConfig, Record,
};
use std::time::Duration;

/// Pause between records while a partition is past its warning line.
const SLOW_DOWN: Duration = Duration::from_millis(50);
/// Pause after a refusal at the limit.
const BACK_OFF: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut client = ClientConfig {
        client_id: "example-backpressure".into(),
        ..ClientConfig::default()
    };
    if let Ok(bootstrap) = std::env::var("SLUICE_BOOTSTRAP") {
        client.bootstrap = bootstrap.split(',').map(str::to_string).collect();
    }
    let producer = Producer::new(ProducerConfig {
        client,
        // Called on the producer's task: keep it short.
        on_pressure: Some(PressureListener::new(|event| {
            let drain = event
                .pressure
                .estimated_drain_ms
                .map_or("unknown".to_string(), |ms| format!("{ms} ms"));
            println!(
                "{}/{}: {:?} -> {:?} ({} messages behind, drains in {drain})",
                event.topic,
                event.partition,
                event.previous,
                event.pressure.level,
                event.pressure.backlog_messages
            );
        })),
        ..ProducerConfig::default()
    })
    .await?;
    for number in 0..100_000u64 {
        match producer
            .send(Record::new("demo", format!("record {number}")))
            .await
        {
            Ok(written) if written.pressure.level == PressureLevel::Ok => {}
            Ok(_) => tokio::time::sleep(SLOW_DOWN).await,
            Err(ClientError::Server(error)) if error.code == ErrorCode::BacklogQuotaExceeded => {
                println!("refused: {}; backing off", error.message);
                tokio::time::sleep(BACK_OFF).await;
            }
            Err(error) => return Err(error.into()),
        }
        if number % 10_000 == 0 {
            println!("{:?}", producer.pressure_metrics());
        }
    }
    producer.close().await?;
    Ok(())
}
