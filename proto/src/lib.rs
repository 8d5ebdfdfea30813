//! The Sluice wire contract.
//!
//! - [`v1`]: generated gRPC messages and services (package `sluice.v1`).
//! - [`batch`]: the binary record-batch format, with CRC-32C and compression.
//! - [`cleanup`]: what a topic's cleanup policy (delete, compact) means.
//! - [`error`]: stable error codes and their one mapping to `tonic::Status`.
//! - [`headers`]: record headers with a meaning to Sluice (delays, TTL, dead letters).
//! - [`names`]: validated topic and group names.
//! - [`limits`]: default message-size limits shared by servers and clients.
//! - [`partitioning`]: the key and group hashes every client and server agree on.
//! - [`pressure`]: backlog pressure as produce answers carry it.
//!
//! Everything that crosses a process boundary is defined here, so the
//! services and the SDK agree by construction.

pub mod batch;
pub mod cleanup;
pub mod error;
pub mod headers;
pub mod limits;
pub mod names;
pub mod partitioning;
pub mod pressure;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

/// Generated code for `proto/sluice/v1/sluice.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

pub use error::{ErrorCode, SluiceError};
pub use pressure::Pressure;

/// Milliseconds since the Unix epoch, saturating at zero for clocks set
/// before 1970.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}
