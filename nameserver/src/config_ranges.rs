//! The accepted range of every numeric key of the nameserver's config (see
//! `sluice_service::KeyRange`), and `[topic_defaults]` checked as the
//! config of a topic created with nothing set: loading refuses a config
//! with a value outside, naming the key and the range.

use crate::config::NameServerConfig;
use crate::error::NameServerError;
use sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC;
use sluice_proto::v1::TopicConfig;
use sluice_service::KeyRange;

/// Smallest gRPC message limit accepted, in bytes (1 MiB).
pub const MIN_GRPC_MESSAGE_BYTES: u64 = 1 << 20;
/// Largest gRPC message limit accepted, in bytes: gRPC frames carry their
/// length in 32 bits.
pub const MAX_GRPC_MESSAGE_BYTES: u64 = u32::MAX as u64;

pub fn ranges(config: &NameServerConfig) -> Vec<KeyRange> {
    let metadata = &config.metadata;
    let mut ranges = config.connections.ranges();
    ranges.extend(sluice_service::metrics_ranges(&config.metrics));
    ranges.extend(config.tls.ranges());
    ranges.extend(config.auth.ranges());
    ranges.extend(config.quotas.ranges(false));
    ranges.extend(crate::metadata_security::ranges(metadata));
    ranges.extend([
        KeyRange::duration_ms("[metadata] connect_timeout_ms", metadata.connect_timeout_ms),
        KeyRange::duration_ms("[metadata] request_timeout_ms", metadata.request_timeout_ms),
        KeyRange::duration_ms("lease_ttl_ms", config.lease_ttl_ms),
        KeyRange::duration_ms("heartbeat_interval_ms", config.heartbeat_interval_ms),
        KeyRange::duration_ms("session_timeout_ms", config.session_timeout_ms),
        KeyRange::duration_ms(
            "session_check_interval_ms",
            config.session_check_interval_ms,
        ),
        KeyRange::duration_ms("load_update_interval_ms", config.load_update_interval_ms),
        KeyRange::duration_ms("reconcile_interval_ms", config.reconcile_interval_ms),
        KeyRange::duration_ms("election_lease_ttl_ms", config.election_lease_ttl_ms),
        KeyRange::duration_ms(
            "election_check_interval_ms",
            config.election_check_interval_ms,
        ),
        KeyRange::count("max_moves_per_reconcile", config.max_moves_per_reconcile)
            .or_zero("no balancing moves (orphaned partitions are still reassigned)"),
        KeyRange::duration_ms("balance_interval_ms", config.balance_interval_ms)
            .or_zero("rounds that move partitions are not spaced"),
        KeyRange::new(
            "offsets_partitions",
            config.offsets_partitions,
            1,
            MAX_PARTITIONS_PER_TOPIC.into(),
        ),
        KeyRange::new(
            "transaction_log_partitions",
            config.transaction_log_partitions,
            1,
            MAX_PARTITIONS_PER_TOPIC.into(),
        ),
        KeyRange::count(
            "max_transaction_operations",
            config.max_transaction_operations,
        ),
        KeyRange::count("max_segments_per_delete", config.max_segments_per_delete),
        KeyRange::duration_ms("watch_routes_interval_ms", config.watch_routes_interval_ms),
        KeyRange::count("max_route_watches", config.max_route_watches)
            .or_zero("WatchRoutes is refused"),
        KeyRange::count("max_assignment_watches", config.max_assignment_watches)
            .or_zero("WatchAssignments is refused (heartbeats bring assignments)"),
        KeyRange::count("max_cas_retries", config.max_cas_retries),
        KeyRange::count(
            "max_subscriptions_per_topic",
            config.max_subscriptions_per_topic,
        )
        .or_zero("no subscriptions may be created"),
        KeyRange::new(
            "max_grpc_message_bytes",
            config.max_grpc_message_bytes,
            MIN_GRPC_MESSAGE_BYTES,
            MAX_GRPC_MESSAGE_BYTES,
        ),
    ]);
    ranges
}

/// Rules between keys, and `[topic_defaults]` as a whole.
pub fn cross_checks(config: &NameServerConfig) -> Vec<String> {
    let mut broken = config
        .connections
        .cross_checks(config.max_grpc_message_bytes);
    broken.extend(config.tls.cross_checks());
    broken.extend(config.auth.cross_checks(&config.tls));
    broken.extend(config.quotas.cross_checks(false));
    broken.extend(crate::metadata_security::checks(&config.metadata));
    if config.heartbeat_interval_ms >= config.lease_ttl_ms {
        broken.push(format!(
            "heartbeat_interval_ms ({}) must be below lease_ttl_ms ({})",
            config.heartbeat_interval_ms, config.lease_ttl_ms
        ));
    }
    broken.extend(session_checks(config));
    let check_interval = config.election_check_interval_ms;
    if check_interval.saturating_mul(3) > config.election_lease_ttl_ms {
        broken.push(format!(
            "election_check_interval_ms ({check_interval}) must be at most a third of \
             election_lease_ttl_ms ({})",
            config.election_lease_ttl_ms
        ));
    }
    let plain = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    let completed = crate::handler::complete_topic_config(
        Some(plain),
        &config.topic_defaults,
        config.max_grpc_message_bytes,
    );
    match completed {
        Ok(_) => {}
        Err(NameServerError::InvalidArgument(reason)) => {
            broken.push(format!("[topic_defaults]: {reason}"))
        }
        Err(error) => broken.push(format!("[topic_defaults]: {error}")),
    }
    broken
}

/// Rules between the session keys (ADR 0014): three heartbeats fit in a
/// session timeout, the check interval is below it, and the etcd lease
/// (the backstop) is at least twice it, so a nameserver always ends a
/// silent session before etcd would.
fn session_checks(config: &NameServerConfig) -> Vec<String> {
    let mut broken = Vec::new();
    let timeout = config.session_timeout_ms;
    if config.heartbeat_interval_ms.saturating_mul(3) > timeout {
        broken.push(format!(
            "heartbeat_interval_ms ({}) must be at most a third of session_timeout_ms ({timeout})",
            config.heartbeat_interval_ms
        ));
    }
    if config.session_check_interval_ms >= timeout {
        broken.push(format!(
            "session_check_interval_ms ({}) must be below session_timeout_ms ({timeout})",
            config.session_check_interval_ms
        ));
    }
    if config.lease_ttl_ms < timeout.saturating_mul(2) {
        broken.push(format!(
            "lease_ttl_ms ({}) must be at least twice session_timeout_ms ({timeout})",
            config.lease_ttl_ms
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
        let config = NameServerConfig::default();
        assert_eq!(out_of_range(&ranges(&config)), Vec::<String>::new());
        assert_eq!(cross_checks(&config), Vec::<String>::new());
    }

    #[test]
    fn topic_defaults_at_their_extremes() {
        type Change = fn(&mut NameServerConfig);
        // (change, refused)
        let cases: [(Change, bool); 11] = [
            (|c| c.topic_defaults.retention_ms = 0, false),
            (|c| c.topic_defaults.retention_ms = u64::MAX, false),
            (|c| c.topic_defaults.segment_bytes = 1, false),
            (|c| c.topic_defaults.max_batch_bytes = 0, true),
            (|c| c.topic_defaults.max_batch_bytes = u32::MAX, true),
            (|c| c.topic_defaults.ensemble_size = 0, true),
            (|c| c.topic_defaults.ack_quorum = u32::MAX, true),
            (|c| c.heartbeat_interval_ms = c.lease_ttl_ms, true),
            (|c| c.heartbeat_interval_ms = c.session_timeout_ms / 2, true),
            (|c| c.session_check_interval_ms = c.session_timeout_ms, true),
            (|c| c.lease_ttl_ms = c.session_timeout_ms * 2 - 1, true),
        ];
        for (index, (change, refused)) in cases.into_iter().enumerate() {
            let mut config = NameServerConfig::default();
            change(&mut config);
            let broken = cross_checks(&config);
            assert_eq!(!broken.is_empty(), refused, "case {index}: {broken:?}");
        }
    }
}
