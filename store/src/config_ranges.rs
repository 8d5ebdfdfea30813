//! The accepted range of every numeric key of the store's config (see
//! `sluice_service::KeyRange`): loading refuses a config with a value
//! outside, naming the key and the range.

use crate::config::StoreConfig;
use sluice_proto::limits::MIN_MAX_BATCH_BYTES;
use sluice_service::KeyRange;

/// Smallest gRPC message limit accepted, in bytes (1 MiB).
pub const MIN_GRPC_MESSAGE_BYTES: u64 = 1 << 20;
/// Largest gRPC message limit accepted, in bytes: gRPC frames carry their
/// length in 32 bits.
pub const MAX_GRPC_MESSAGE_BYTES: u64 = u32::MAX as u64;

pub fn ranges(config: &StoreConfig) -> Vec<KeyRange> {
    let c = config;
    let mut ranges = config.connections.ranges();
    ranges.extend(sluice_service::metrics_ranges(&config.metrics));
    ranges.extend(config.tls.ranges());
    ranges.extend(config.auth.ranges());
    ranges.extend(config.quotas.ranges(false));
    ranges.extend([
        KeyRange::bytes("journal_file_max_bytes", c.journal_file_max_bytes),
        KeyRange::bytes("segment_preallocate_bytes", c.segment_preallocate_bytes)
            .or_zero("no preallocation"),
        KeyRange::bytes("journal_queue_max_bytes", c.journal_queue_max_bytes),
        KeyRange::count("journal_queue_max_entries", c.journal_queue_max_entries),
        KeyRange::count("apply_queue_max_groups", c.apply_queue_max_groups),
        KeyRange::duration_ms("checkpoint_interval_ms", c.checkpoint_interval_ms),
        KeyRange::bytes("index_interval_bytes", c.index_interval_bytes),
        KeyRange::duration_ms("periodic_flush_interval_ms", c.periodic_flush_interval_ms),
        KeyRange::new(
            "max_batch_bytes",
            c.max_batch_bytes,
            MIN_MAX_BATCH_BYTES.into(),
            u32::MAX.into(),
        ),
        KeyRange::bytes("max_read_bytes", c.max_read_bytes),
        KeyRange::new(
            "max_grpc_message_bytes",
            c.max_grpc_message_bytes,
            MIN_GRPC_MESSAGE_BYTES,
            MAX_GRPC_MESSAGE_BYTES,
        ),
        KeyRange::count("append_stream_max_in_flight", c.append_stream_max_in_flight),
        KeyRange::bytes(
            "append_stream_max_in_flight_bytes",
            c.append_stream_max_in_flight_bytes,
        ),
        KeyRange::duration_ms(
            "register_retry_initial_backoff_ms",
            c.register_retry_initial_backoff_ms,
        ),
        KeyRange::duration_ms(
            "register_retry_max_backoff_ms",
            c.register_retry_max_backoff_ms,
        ),
        KeyRange::duration_ms(
            "nameserver_request_timeout_ms",
            c.nameserver_request_timeout_ms,
        ),
        KeyRange::duration_ms("shutdown_drain_timeout_ms", c.shutdown_drain_timeout_ms)
            .or_zero("close the storage at once"),
        KeyRange::count("message_index_max_segments", c.message_index_max_segments),
        KeyRange::count(
            "message_index_max_batches_per_segment",
            c.message_index_max_batches_per_segment,
        ),
        KeyRange::count(
            "message_index_max_terms_per_segment",
            c.message_index_max_terms_per_segment,
        ),
        KeyRange::count(
            "message_index_max_postings_per_segment",
            c.message_index_max_postings_per_segment,
        ),
        KeyRange::count(
            "message_index_max_candidate_batches",
            c.message_index_max_candidate_batches,
        ),
    ]);
    ranges
}

/// Rules between keys.
pub fn cross_checks(config: &StoreConfig) -> Vec<String> {
    let mut broken = config
        .connections
        .cross_checks(config.max_grpc_message_bytes);
    broken.extend(config.tls.cross_checks());
    broken.extend(config.auth.cross_checks(&config.tls));
    broken.extend(config.quotas.cross_checks(false));
    if config.register_retry_initial_backoff_ms > config.register_retry_max_backoff_ms {
        broken.push(format!(
            "register_retry_initial_backoff_ms ({}) must be at most \
             register_retry_max_backoff_ms ({})",
            config.register_retry_initial_backoff_ms, config.register_retry_max_backoff_ms
        ));
    }
    if config.max_batch_bytes as usize > config.max_grpc_message_bytes {
        broken.push(format!(
            "max_batch_bytes ({}) must be at most max_grpc_message_bytes ({})",
            config.max_batch_bytes, config.max_grpc_message_bytes
        ));
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_service::out_of_range;

    #[test]
    fn the_defaults_are_within_every_range() {
        let config = StoreConfig::default();
        assert_eq!(out_of_range(&ranges(&config)), Vec::<String>::new());
        assert_eq!(cross_checks(&config), Vec::<String>::new());
    }
}
