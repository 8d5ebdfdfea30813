//! The accepted range of every numeric key of the broker's config (see
//! `sluice_service::KeyRange`): loading refuses a config with a value
//! outside, naming the key and the range.

use crate::config::BrokerConfig;
use sluice_proto::limits::{largest_max_batch_bytes, MIN_MAX_BATCH_BYTES};
use sluice_service::KeyRange;

/// Smallest gRPC message limit a service accepts, in bytes (1 MiB).
pub const MIN_GRPC_MESSAGE_BYTES: u64 = 1 << 20;
/// Largest gRPC message limit a service accepts, in bytes: gRPC frames
/// carry their length in 32 bits.
pub const MAX_GRPC_MESSAGE_BYTES: u64 = u32::MAX as u64;

pub fn ranges(config: &BrokerConfig) -> Vec<KeyRange> {
    let server = &config.server;
    let cluster = &config.cluster;
    let produce = &config.produce;
    let replication = &config.replication;
    let fetch = &config.fetch;
    let lookup = &config.lookup;
    let groups = &config.groups;
    let subscriptions = &config.subscriptions;
    let backlog = &config.backlog;
    let largest_batch = u64::from(largest_max_batch_bytes(server.max_grpc_message_bytes));
    let mut ranges = config.connections.ranges();
    ranges.extend(sluice_service::metrics_ranges(&config.metrics));
    ranges.extend(config.tls.ranges());
    ranges.extend(config.auth.ranges());
    ranges.extend(config.quotas.ranges(true));
    ranges.extend([
        KeyRange::new(
            "[server] max_grpc_message_bytes",
            server.max_grpc_message_bytes,
            MIN_GRPC_MESSAGE_BYTES,
            MAX_GRPC_MESSAGE_BYTES,
        ),
        KeyRange::duration_ms("[server] connect_timeout_ms", server.connect_timeout_ms),
        KeyRange::duration_ms(
            "[cluster] nameserver_request_timeout_ms",
            cluster.nameserver_request_timeout_ms,
        ),
        KeyRange::duration_ms(
            "[cluster] register_backoff_max_ms",
            cluster.register_backoff_max_ms,
        ),
        KeyRange::duration_ms(
            "[cluster] route_refresh_interval_ms",
            cluster.route_refresh_interval_ms,
        ),
        KeyRange::new(
            "[cluster] session_fence_margin_percent",
            cluster.session_fence_margin_percent,
            crate::session_fence::MIN_MARGIN_PERCENT.into(),
            crate::session_fence::MAX_MARGIN_PERCENT.into(),
        ),
        KeyRange::bytes(
            "[produce] max_in_flight_bytes_per_connection",
            produce.max_in_flight_bytes_per_connection,
        ),
        KeyRange::bytes(
            "[produce] partition_queue_bytes",
            produce.partition_queue_bytes,
        ),
        KeyRange::count(
            "[produce] max_in_flight_appends_per_partition",
            produce.max_in_flight_appends_per_partition,
        ),
        KeyRange::new(
            "[produce] max_batch_bytes",
            produce.max_batch_bytes,
            u64::from(MIN_MAX_BATCH_BYTES),
            largest_batch,
        ),
        KeyRange::count(
            "[produce] max_producer_states_per_partition",
            produce.max_producer_states_per_partition,
        ),
        KeyRange::bytes(
            "[produce] producer_state_rebuild_bytes",
            produce.producer_state_rebuild_bytes,
        ),
        KeyRange::count(
            "[produce] max_open_transactions_per_partition",
            produce.max_open_transactions_per_partition,
        ),
        KeyRange::duration_ms(
            "[transactions] verification_timeout_ms",
            config.transactions.verification_timeout_ms,
        ),
        KeyRange::new(
            "[transactions] max_timeout_ms",
            config.transactions.max_timeout_ms,
            1_000,
            crate::transaction::log_record::MAX_RECORD_TIMEOUT_MS,
        ),
        KeyRange::duration_ms(
            "[transactions] timeout_check_interval_ms",
            config.transactions.timeout_check_interval_ms,
        ),
        KeyRange::new(
            "[transactions] max_participants_per_transaction",
            config.transactions.max_participants_per_transaction as u64,
            1,
            crate::transaction::log_record::MAX_RECORD_PARTICIPANTS as u64,
        ),
        KeyRange::duration_ms(
            "[transactions] end_wait_ms",
            config.transactions.end_wait_ms,
        ),
        KeyRange::duration_ms(
            "[replication] store_request_timeout_ms",
            replication.store_request_timeout_ms,
        ),
        KeyRange::duration_ms(
            "[replication] replica_ack_timeout_ms",
            replication.replica_ack_timeout_ms,
        ),
        KeyRange::duration_ms("[replication] fence_grace_ms", replication.fence_grace_ms)
            .or_zero("no wait beyond the fence quorum"),
        KeyRange::duration_ms(
            "[replication] degraded_ensemble_check_interval_ms",
            replication.degraded_ensemble_check_interval_ms,
        ),
        KeyRange::duration_ms(
            "[replication] takeover_backoff_max_ms",
            replication.takeover_backoff_max_ms,
        ),
        KeyRange::count(
            "[replication] max_concurrent_takeovers",
            replication.max_concurrent_takeovers,
        ),
        KeyRange::duration_ms(
            "[replication] repair_interval_ms",
            replication.repair_interval_ms,
        ),
        KeyRange::duration_ms(
            "[replication] repair_dead_store_grace_ms",
            replication.repair_dead_store_grace_ms,
        )
        .or_zero("replace a gone store's copies at once"),
        KeyRange::bytes("[fetch] tail_cache_bytes", fetch.tail_cache_bytes),
        KeyRange::duration_ms("[fetch] max_wait_ms", fetch.max_wait_ms).or_zero("no long-poll"),
        KeyRange::bytes("[fetch] max_bytes", fetch.max_bytes),
        KeyRange::bytes("[fetch] read_ahead_bytes", fetch.read_ahead_bytes)
            .or_zero("read-ahead off"),
        KeyRange::count("[lookup] max_results", lookup.max_results),
        KeyRange::bytes("[lookup] max_scan_bytes", lookup.max_scan_bytes),
        KeyRange::bytes("[lookup] max_response_bytes", lookup.max_response_bytes),
        KeyRange::duration_ms("[groups] session_timeout_ms", groups.session_timeout_ms),
        KeyRange::duration_ms(
            "[groups] min_session_timeout_ms",
            groups.min_session_timeout_ms,
        ),
        KeyRange::duration_ms(
            "[groups] max_session_timeout_ms",
            groups.max_session_timeout_ms,
        ),
        KeyRange::duration_ms(
            "[groups] heartbeat_interval_ms",
            groups.heartbeat_interval_ms,
        ),
        KeyRange::count("[groups] max_members", groups.max_members),
        KeyRange::count(
            "[groups] max_offsets_per_commit",
            groups.max_offsets_per_commit,
        ),
        KeyRange::count(
            "[groups] max_pending_offsets_per_group",
            groups.max_pending_offsets_per_group,
        ),
        KeyRange::bytes(
            "[groups] max_commit_metadata_bytes",
            groups.max_commit_metadata_bytes,
        )
        .or_zero("no commit metadata"),
        KeyRange::duration_ms(
            "[retention] check_interval_ms",
            config.retention.check_interval_ms,
        ),
        KeyRange::duration_ms(
            "[compaction] check_interval_ms",
            config.compaction.check_interval_ms,
        ),
        KeyRange::bytes(
            "[compaction] key_map_bytes",
            config.compaction.key_map_bytes,
        ),
        KeyRange::bytes(
            "[compaction] max_bytes_per_second",
            config.compaction.max_bytes_per_second,
        ),
        KeyRange::new(
            "[compaction] read_chunk_bytes",
            config.compaction.read_chunk_bytes,
            1 << 10,
            64 << 20,
        ),
        KeyRange::duration_ms(
            "[compaction] delete_delay_ms",
            config.compaction.delete_delay_ms,
        ),
        KeyRange::count(
            "[subscriptions] window_messages",
            subscriptions.window_messages,
        ),
        KeyRange::count(
            "[subscriptions] max_delayed_messages",
            subscriptions.max_delayed_messages,
        ),
        KeyRange::bytes(
            "[subscriptions] delayed_records_bytes",
            subscriptions.delayed_records_bytes,
        )
        .or_zero("delayed records are read back from the log"),
        KeyRange::bytes("[subscriptions] window_bytes", subscriptions.window_bytes),
        KeyRange::count(
            "[subscriptions] max_permits_per_consumer",
            subscriptions.max_permits_per_consumer,
        ),
        KeyRange::count(
            "[subscriptions] max_unacknowledged_per_consumer",
            subscriptions.max_unacknowledged_per_consumer,
        )
        .or_zero("no limit"),
        KeyRange::count(
            "[subscriptions] max_consumers_per_partition",
            subscriptions.max_consumers_per_partition,
        ),
        KeyRange::duration_ms(
            "[subscriptions] ack_flush_interval_ms",
            subscriptions.ack_flush_interval_ms,
        ),
        KeyRange::duration_ms("[subscriptions] idle_stop_ms", subscriptions.idle_stop_ms),
        KeyRange::duration_ms("[backlog] check_interval_ms", backlog.check_interval_ms),
        KeyRange::duration_ms(
            "[backlog] subscriptions_refresh_ms",
            backlog.subscriptions_refresh_ms,
        ),
        KeyRange::duration_ms("[backlog] rate_window_ms", backlog.rate_window_ms),
    ]);
    ranges
}

/// Rules between keys.
pub fn cross_checks(config: &BrokerConfig) -> Vec<String> {
    let groups = &config.groups;
    let mut broken = config
        .connections
        .cross_checks(config.server.max_grpc_message_bytes);
    broken.extend(config.tls.cross_checks());
    broken.extend(config.auth.cross_checks(&config.tls));
    broken.extend(config.quotas.cross_checks(true));
    if !(groups.min_session_timeout_ms <= groups.session_timeout_ms
        && groups.session_timeout_ms <= groups.max_session_timeout_ms)
    {
        broken.push(format!(
            "[groups] needs min_session_timeout_ms <= session_timeout_ms <= \
             max_session_timeout_ms, got {} / {} / {}",
            groups.min_session_timeout_ms, groups.session_timeout_ms, groups.max_session_timeout_ms
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
        let config = BrokerConfig::default();
        assert_eq!(out_of_range(&ranges(&config)), Vec::<String>::new());
        assert_eq!(cross_checks(&config), Vec::<String>::new());
    }
}
