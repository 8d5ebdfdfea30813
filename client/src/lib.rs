#![deny(missing_docs)]
//! The Sluice SDK: [`Producer`], [`Consumer`] (log consumption in
//! consumer groups), [`Subscriber`] (queue consumption: durable
//! subscriptions with per-message acknowledgements) and [`Admin`].
//!
//! All of them start from a [`ClientConfig`] naming bootstrap nameservers
//! (tried in turn; any one can answer). Routes to partition owners are
//! looked up with `GetRoutes`, cached, kept current by a `WatchRoutes`
//! stream (producers, consumers and subscribers follow an owner change as
//! soon as the nameserver reports it, without waiting for an error or a
//! timeout), and refreshed (rate-limited) when a broker says it no longer
//! owns a partition, is unavailable, or cannot be reached. There is one gRPC channel per server address, with explicit
//! message-size limits and timeouts, and W3C trace context is injected into
//! every request.
//!
//! # Guarantees
//!
//! - **Producer**: at least once. Records of one partition are written in
//!   the order they were enqueued, retries included: after a failure the
//!   producer waits for every in-flight batch of the partition to answer,
//!   then resends the failed ones in order (flagged `resume`). When the
//!   route watch reports that a partition's owner changed, the batches in
//!   flight to the old owner are resent to the new one at once, in order,
//!   without waiting for the old owner's answers (which are ignored). A retry after
//!   an unknown outcome (connection lost, timeout) can write a batch twice
//!   until idempotent produce exists. Memory is bounded by
//!   `memory_limit_bytes` (backpressure in `send`/`enqueue`).
//! - **Consumer**: within one consumer's ownership of a partition, offsets
//!   arrive in order, none skipped and none twice. In a group with
//!   auto-commit, a revoked partition is committed inside the next `recv()`
//!   before it is reported released, so an application that finishes each
//!   record before calling `recv()` again sees every record once across
//!   graceful rebalances (at least once after crashes).
//! - **Subscriber**: at least once, per message. A subscription's type
//!   says how its consumers share messages: *exclusive* (one consumer per
//!   partition; another is refused with CONSUMER_BUSY), *failover* (one
//!   active consumer per partition, the others stand by:
//!   [`Subscriber::is_active`]), *shared* (a work queue: each message to
//!   one of any number of consumers) and *key-shared* (shared, but one
//!   key's messages go to one consumer at a time, in order).
//!   - A successful [`Subscriber::ack`] means the acknowledgement is
//!     durable on the broker's side: the message is never delivered again
//!     on this subscription. [`Subscriber::ack_nowait`] queues it and
//!     returns the same outcome as a future.
//!   - A message not acknowledged is delivered again: after the
//!     subscription's ack timeout, after [`Subscriber::nack`] (following
//!     its redelivery backoff), or at once when the stream it came on ends
//!     (owner moved, connection lost, [`Subscriber::close`]), possibly to
//!     another consumer. [`Message::delivery_count`] counts deliveries;
//!     after `max_deliveries` the message goes to the dead-letter topic
//!     instead.
//!   - An acknowledgement that comes after the delivery ended is refused
//!     with DELIVERY_EXPIRED ([`ClientError::code`]); so is one whose
//!     stream ended before the broker's receipt arrived (its outcome is
//!     unknown). The SDK never reports such an acknowledgement as a
//!     success: the application must expect to see the message again, so
//!     handlers should be idempotent.
//!   - Memory is bounded: the broker delivers only what the subscriber
//!     granted (`receiver_queue_size` messages across the partitions,
//!     refilled as the application takes them), and at most
//!     `max_pending_acks` acknowledgements wait for receipts.
//!   - Order: exclusive and failover consumers get each partition's
//!     messages in offset order (redeliveries aside); a listener with
//!     [`Ordering::PerKey`] or [`Ordering::PerPartition`] runs the
//!     handlers of one key or partition one at a time, in delivery order.
//!
//! ```no_run
//! use sluice_client::{Consumer, ConsumerConfig, Producer, ProducerConfig, Record};
//!
//! # async fn example() -> Result<(), sluice_client::ClientError> {
//! let producer = Producer::new(ProducerConfig::default()).await?;
//! producer.send(Record::new("orders", "hello").with_key("customer-1")).await?;
//! producer.close().await?;
//!
//! let config = ConsumerConfig { group: Some("billing".into()), ..ConsumerConfig::default() };
//! let mut consumer = Consumer::subscribe(config, &["orders"]).await?;
//! let record = consumer.recv().await?;
//! println!("{:?}", record.value);
//! consumer.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! A work queue (shared subscription, created on first use):
//!
//! ```no_run
//! use sluice_client::{Subscriber, SubscriberConfig};
//!
//! # async fn example() -> Result<(), sluice_client::ClientError> {
//! let subscriber = Subscriber::connect(SubscriberConfig::new("orders", "billing")).await?;
//! let message = subscriber.recv().await?;
//! println!("{} delivered {} time(s)", message.id(), message.delivery_count);
//! subscriber.ack(&message).await?; // durable: never delivered again
//! subscriber.close().await?;
//! # Ok(())
//! # }
//! ```

mod admin;
mod cluster;
mod config;
mod consumer;
mod credentials;
mod error;
mod fast_hash;
pub mod lag;
mod producer;
mod route_cache;
mod route_watch;
mod subscriber;
mod subscription_create;
#[cfg(test)]
mod testing;
mod tls;
mod tls_reload;

pub use admin::{
    reset_target, Admin, FoundMessages, MessageQuery, OffsetReset, OffsetResetPlan, PartitionReset,
    SubscriptionReset, SubscriptionSkip, KEY_ORDER_NOTICE, MAX_FIND_LIMIT,
};
pub use config::ClientConfig;
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, CorruptBatchPolicy, DataLossPolicy, GroupMetadata,
    Isolation, StartOffset, TopicPartitionOffset,
};
pub use credentials::{Credentials, MAX_TOKEN_FILE_BYTES, TOKEN_FILE_CHECK_INTERVAL_MS};
pub use error::ClientError;
pub use lag::SubscriptionLag;
pub use producer::{
    DeliveryFuture, Pressure, PressureEvent, PressureLevel, PressureListener, PressureMetrics,
    Producer, ProducerConfig, Record, RecordMetadata,
};
pub use sluice_proto::batch::Compression;
pub use sluice_proto::now_unix_ms;
/// The wire types the [`Admin`] API takes and returns (topic configs and
/// descriptions, cluster status, subscriptions, ACL bindings, offsets), so
/// that applications need not depend on `sluice-proto` themselves.
pub use sluice_proto::v1 as proto;
pub use sluice_proto::v1::{
    Durability, InitialPosition, OffsetSpec, SelectorKind, SubscriptionType, TopicConfig,
};
pub use sluice_proto::{ErrorCode, SluiceError};
pub use subscriber::{
    AckFuture, ListenerConfig, ListenerHandle, Message, MessageId, Ordering, Subscriber,
    SubscriberConfig, MAX_LISTENER_CONCURRENCY, MAX_RECEIVER_QUEUE_SIZE,
};
pub use tls::{with_scheme, ClientTls, ClientTlsFiles, TLS_FILES_CHECK_INTERVAL_MS};
pub use tls_reload::MAX_TLS_FILE_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Applications share producers and admins across tasks and move
    /// consumers and futures into spawned tasks; this fails to compile if
    /// that stops being possible.
    #[allow(dead_code)]
    fn futures_are_send(producer: &Producer, admin: &Admin, consumer: &mut Consumer) {
        assert_send(&producer.enqueue(Record::new("t", "v")));
        assert_send(&producer.send(Record::new("t", "v")));
        assert_send(&producer.flush());
        assert_send(&admin.describe_group("g"));
        assert_send(&consumer.recv());
        assert_send(&consumer.commit());
    }

    #[allow(dead_code)]
    fn subscriber_futures_are_send(subscriber: &Subscriber, message: &Message) {
        assert_send(&subscriber.recv());
        assert_send(&subscriber.ack(message));
        assert_send(&subscriber.ack_nowait(message));
        assert_send(&subscriber.nack(message));
    }

    #[test]
    fn public_types_are_thread_safe() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send + 'static>() {}
        send_sync::<Producer>();
        send_sync::<Admin>();
        send_sync::<ClientError>();
        send::<Consumer>();
        send::<DeliveryFuture>();
        send_sync::<Subscriber>();
        send_sync::<Message>();
        send::<AckFuture>();
        send_sync::<ListenerHandle>();
    }
}
