//! `sluice-store`: a storage node holding segments (append-only sequences
//! of record batches) behind the `Store` gRPC service.
//!
//! - [`storage`]: the engine (journal with group commit, segment files,
//!   indexes, checkpoints, crash recovery), usable without gRPC.
//! - [`service`]: the `Store` gRPC service over the engine.
//! - [`registration`]: registration and heartbeats with the nameserver.
//! - [`run`]: the whole node.

pub mod config;
pub mod error;
pub mod journal;
pub mod segment;
pub mod storage;

pub use config::StoreConfig;
pub use error::StoreError;
pub use storage::{NewSegment, ReadOutcome, RecoveryReport, Storage, StorageOptions};
