//! A work-queue worker: consumes topic `demo` through the shared
//! subscription `workers` with a push listener (8 handlers at once,
//! messages of one key in order), acknowledging each message its handler
//! finished and giving back the ones it failed, until ctrl-c; then it
//! finishes the running handlers and flushes acknowledgements. Start
//! several to share the work. Run against `sluice dev`:
//! `cargo run -p sluice-client --example queue_worker`.
//! Set SLUICE_BOOTSTRAP to use another nameserver.

use sluice_client::{
    ClientConfig, InitialPosition, ListenerConfig, Message, Ordering, Subscriber, SubscriberConfig,
    SubscriptionType,
};

async fn handle(message: Message) -> Result<(), String> {
    let value = message
        .value
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    if value.contains("fail") {
        // Given back: delivered again after the subscription's backoff,
        // and moved to the dead-letter topic after `max_deliveries`.
        return Err(format!("cannot process {value:?}"));
    }
    println!(
        "{} (delivery {}): {value}",
        message.id(),
        message.delivery_count
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut client = ClientConfig {
        client_id: "example-worker".into(),
        ..ClientConfig::default()
    };
    if let Ok(bootstrap) = std::env::var("SLUICE_BOOTSTRAP") {
        client.bootstrap = bootstrap.split(',').map(str::to_string).collect();
    }
    let config = SubscriberConfig {
        client,
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Earliest,
        max_deliveries: 5,
        ..SubscriberConfig::new("demo", "workers")
    };
    let subscriber = Subscriber::connect(config).await?;
    println!("consuming demo as {}", subscriber.consumer_name());
    let listener = subscriber.listen(
        ListenerConfig {
            concurrency: 8,
            ordering: Ordering::PerKey,
            ..ListenerConfig::default()
        },
        handle,
    )?;
    tokio::signal::ctrl_c().await?;
    println!(
        "stopping: {} handled, {} failed",
        listener.handled(),
        listener.failed()
    );
    listener.shutdown().await?;
    Ok(())
}
