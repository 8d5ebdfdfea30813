//! Default size limits for gRPC messages and record batches.
//!
//! tonic decodes at most 4 MiB per message by default and encodes without
//! any bound; every Sluice server and client sets both explicitly from these
//! values (servers make them configurable).

/// Largest record batch a broker accepts by default, in bytes.
pub const DEFAULT_MAX_BATCH_BYTES: u32 = 8 * 1024 * 1024;

/// Largest gRPC message any Sluice endpoint decodes or encodes by default,
/// in bytes. A produce request carries one batch plus a small envelope; a
/// fetch response is bounded by its `max_bytes` plus one batch.
pub const DEFAULT_MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// HTTP/2 flow-control window of one stream, set on every Sluice server and
/// channel: how many bytes a peer may send on a stream before the receiver
/// has taken them. hyper's defaults (1 MiB on servers, 2 MiB on clients)
/// are smaller than the bytes a produce stream keeps in flight (16 batches
/// of ~100 KiB) and than a 4 MiB fetch answer, so the sender stalled a
/// round trip for every window update. Application-level limits (in-flight
/// bytes per produce stream, fetch sizes) still bound memory.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// HTTP/2 flow-control window of one connection (all its streams).
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Largest HTTP/2 DATA frame a Sluice endpoint accepts (the protocol's
/// default is 16 KiB): a 100 KiB batch then travels in one frame instead
/// of seven.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Largest decompressed size of one batch's records, in bytes; guards
/// against compression bombs.
pub const MAX_UNCOMPRESSED_RECORDS_BYTES: usize = 64 * 1024 * 1024;

/// Largest number of records in one batch.
pub const MAX_RECORDS_PER_BATCH: u32 = 1_000_000;

/// Largest offset a batch or a segment may start at: the signed 64-bit
/// range Kafka's offsets have. Refusing anything beyond it at the edges
/// (batch parsing, segment creation) means `base + records` can never
/// overflow anywhere inside.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// Longest topic or group name, in bytes.
pub const MAX_NAME_BYTES: usize = 249;

/// Largest partition count of one topic.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 4096;

/// Batches an idempotent producer may have in flight per partition, and so
/// how many of each producer's latest batches a broker remembers per
/// partition to recognise a resent one: every batch a producer may resend
/// after an unknown outcome is among its last this many. The SDK refuses a
/// larger `max_in_flight_per_partition` while idempotence is on.
pub const MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER: usize = 16;
