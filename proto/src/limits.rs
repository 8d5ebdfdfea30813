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

/// Largest header block (all metadata of one request, decoded) a Sluice
/// server accepts: headers arrive before a request is authenticated, so
/// this bounds what an unauthenticated peer makes a server hold per
/// stream. Room for a bearer token and Sluice's own metadata.
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;

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

/// Smallest `max_batch_bytes` a topic may have, in bytes: below it no
/// useful batch (a 57-byte header plus records) could ever be accepted.
pub const MIN_MAX_BATCH_BYTES: u32 = 1024;

/// Bytes of a gRPC message kept for the envelope around a record batch (a
/// produce request's topic name, partition, ids and protobuf framing): a
/// topic's `max_batch_bytes` may be at most the gRPC message limit less
/// this, so a batch the topic accepts always fits in a request the server
/// decodes.
pub const PRODUCE_ENVELOPE_BYTES: usize = 64 * 1024;

/// Largest `max_batch_bytes` a topic may have under a gRPC message limit of
/// `max_grpc_message_bytes`, in bytes: the limit less
/// [`PRODUCE_ENVELOPE_BYTES`] (0 when the limit is smaller), at most
/// `u32::MAX`.
pub const fn largest_max_batch_bytes(max_grpc_message_bytes: usize) -> u32 {
    let largest = max_grpc_message_bytes.saturating_sub(PRODUCE_ENVELOPE_BYTES);
    if largest > u32::MAX as usize {
        u32::MAX
    } else {
        largest as u32
    }
}

/// Largest ensemble (stores per segment) a topic may ask for; the write
/// and ack quorums are at most the ensemble.
pub const MAX_ENSEMBLE_SIZE: u32 = 16;

/// Smallest record or batch timestamp a producer may send, in unix
/// milliseconds (1970-01-01T00:00:00Z): timestamps are wall-clock times,
/// and negative ones only come from bugs or hostile input.
pub const MIN_TIMESTAMP_MS: i64 = 0;

/// Largest record or batch timestamp a producer may send, in unix
/// milliseconds (9999-12-31T23:59:59.999Z): far beyond any clock, yet far
/// from `i64::MAX`, so ages and deltas computed from it never overflow.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
