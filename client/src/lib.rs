//! The Sluice SDK: [`Producer`], [`Consumer`] and [`Admin`].
//!
//! All three start from a [`ClientConfig`] naming bootstrap nameservers;
//! routes to partition owners are looked up and cached, and refreshed when
//! a broker says it no longer owns a partition.
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

mod admin;
mod cluster;
mod config;
mod consumer;
mod error;
mod producer;
#[cfg(test)]
mod testing;

pub use admin::Admin;
pub use config::ClientConfig;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartOffset};
pub use error::ClientError;
pub use producer::{DeliveryFuture, Producer, ProducerConfig, Record, RecordMetadata};
pub use sluice_proto::batch::Compression;
