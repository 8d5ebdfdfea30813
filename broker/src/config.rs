//! Broker configuration: one struct, loaded by the service shell from
//! defaults, an optional TOML file and `SLUICE_BROKER_*` environment
//! variables (in that order).

use serde::{Deserialize, Serialize};
use sluice_proto::limits::{DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_GRPC_MESSAGE_BYTES};
use sluice_service::{ConfigError, ServiceConfig};
use sluice_telemetry::TelemetryConfig;
use std::path::Path;

/// Everything a broker can be told. See `config/broker.toml` for the
/// commented list with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Stable id of this broker in the cluster. Default `broker-1`.
    pub node_id: String,
    /// Address the gRPC server binds. Default `127.0.0.1:7401`.
    pub listen_address: String,
    /// Address clients and other brokers use to reach this broker; default
    /// the listener's actual address.
    pub advertised_address: Option<String>,
    /// Nameserver endpoints, tried in order. Default `["http://127.0.0.1:7400"]`.
    pub nameservers: Vec<String>,
    /// Rack (failure domain) reported at registration. Default empty.
    pub rack: String,
    /// Total bytes of recent batches kept in memory across all served
    /// partitions (split evenly between them). Default 256 MiB.
    pub tail_cache_bytes: u64,
    /// Produce bytes accepted but not yet answered per produce stream; the
    /// broker stops reading the stream at this limit. Default 64 MiB.
    pub max_in_flight_bytes_per_connection: u64,
    /// Bytes queued in one partition's append pipeline (waiting or in flight
    /// to the stores); beyond it produce requests fail with THROTTLED.
    /// Default 32 MiB.
    pub partition_queue_bytes: u64,
    /// Appends one partition keeps in flight to its stores. Default 1024.
    pub max_in_flight_appends_per_partition: usize,
    /// Longest a fetch long-poll waits, whatever the client asks. Default 30000.
    pub max_fetch_wait_ms: u64,
    /// Largest fetch response, whatever the client asks. Default 8 MiB.
    pub max_fetch_bytes: u64,
    /// Bytes of store reads started ahead of sequential readers' next
    /// fetches, across all partitions (at most one range per partition);
    /// 0 turns read-ahead off. Default 64 MiB.
    pub fetch_read_ahead_bytes: u64,
    /// Message lookup (ADR 0013): most messages one `FindMessages` answer
    /// returns, whatever the client asks. Default 1000.
    pub max_find_results: u32,
    /// Message lookup: most bytes of record batches one `FindMessages`
    /// reads from the log to verify candidates and scan unindexed ranges;
    /// beyond it the answer stops and says where to continue. Default 64 MiB.
    pub max_find_scan_bytes: u64,
    /// Message lookup: largest `FindMessages` answer (the batches holding
    /// the matches). Default 8 MiB.
    pub max_find_response_bytes: u64,
    /// Batch size limit for topics whose config does not set one. Default 8 MiB.
    pub max_batch_bytes: u32,
    /// gRPC message limit for the server and every client. Default 16 MiB.
    pub max_grpc_message_bytes: usize,
    /// Timeout of each store request, and of each append waiting for its
    /// store acknowledgement. Default 10000.
    pub store_request_timeout_ms: u64,
    /// Timeout of each nameserver request. Default 5000.
    pub nameserver_request_timeout_ms: u64,
    /// TCP connect timeout to any peer. Default 3000.
    pub connect_timeout_ms: u64,
    /// Cap of the exponential backoff between registration attempts. Default 5000.
    pub register_backoff_max_ms: u64,
    /// Cap of the exponential backoff between takeover/recovery attempts. Default 5000.
    pub takeover_backoff_max_ms: u64,
    /// A store that leaves an append unacknowledged this long is dropped
    /// from the open segment's ensemble, which then rolls to a new one.
    /// Bounds how long a hung store can stall producers when its
    /// acknowledgement is needed for the ack quorum. Default 2000.
    pub replica_ack_timeout_ms: u64,
    /// When fencing a segment on takeover: once a fence quorum of replicas
    /// answered, how much longer to wait for the others (their copies then
    /// get the recovered tail at once instead of through repair).
    /// Default 200.
    pub fence_grace_ms: u64,
    /// How often a partition whose open segment has fewer replicas than the
    /// topic's ensemble size (stores were down when it was created) checks
    /// whether enough stores are live again to roll to a full ensemble.
    /// Default 10000.
    pub degraded_ensemble_check_interval_ms: u64,
    /// How often the repair task checks the copies of the closed segments
    /// of served partitions and repairs those short of the ensemble size.
    /// Default 30000.
    pub repair_interval_ms: u64,
    /// How long a store must have been gone (no live lease) before repair
    /// replaces its copies on other stores; a store back sooner has its
    /// copies checked and filled instead. Default 60000.
    pub repair_dead_store_grace_ms: u64,
    /// Session timeout of group members that do not ask for one. Default 45000.
    pub group_session_timeout_ms: u64,
    /// Smallest session timeout a member may ask for. Default 6000.
    pub group_min_session_timeout_ms: u64,
    /// Largest session timeout a member may ask for. Default 300000.
    pub group_max_session_timeout_ms: u64,
    /// Heartbeat interval told to group members. Default 3000.
    pub group_heartbeat_interval_ms: u64,
    /// Most members one group may have. Default 1000.
    pub group_max_members: usize,
    /// Most offsets one commit request may carry. Default 10000.
    pub max_offsets_per_commit: usize,
    /// Longest commit metadata string, in bytes. Default 4096.
    pub max_commit_metadata_bytes: usize,
    /// How long cached topic partition counts (from GetRoutes) are trusted. Default 10000.
    pub route_refresh_interval_ms: u64,
    /// How often retention runs over served partitions. Default 60000.
    pub retention_check_interval_ms: u64,
    /// Idempotent producers remembered per partition (each with its last
    /// few batches, to recognise resends); beyond it the least recently
    /// used is forgotten, and a resend of its batches could then be
    /// appended twice. Default 10000.
    pub max_producer_states_per_partition: usize,
    /// Bytes at the end of a partition's log read on takeover to rebuild
    /// the idempotent producers' state. A resend is recognised after a
    /// failover if its original is within this tail, so it must exceed
    /// what the partition takes in during a producer's delivery timeout
    /// (client `delivery_timeout_ms`, default 30 s; ADR 0010). Default
    /// 64 MiB.
    pub producer_state_rebuild_bytes: u64,
    /// Subscriptions (ADR 0011): most scanned, unacknowledged messages one
    /// subscription holds per partition (delivered or waiting); bounds its
    /// memory and its cursor's size. Default 20000.
    pub subscription_window_messages: usize,
    /// Subscriptions: most delayed messages (waiting for their delivery
    /// time) one subscription holds per partition, about 100 bytes of
    /// memory each; beyond it the subscription reads no further until some
    /// come due. Default 1000000.
    pub subscription_max_delayed_messages: usize,
    /// Subscriptions: bytes of delayed records one subscription keeps in
    /// memory per partition (each as a single-record batch) so they are
    /// sent from memory when due; beyond it due ones are read back from the
    /// log. Default 256 MiB.
    pub subscription_delayed_records_bytes: u64,
    /// Subscriptions: most bytes of record batches one subscription keeps
    /// read ahead per partition. Default 64 MiB.
    pub subscription_window_bytes: u64,
    /// Subscriptions: most credit (undelivered permits) one consumer may
    /// hold; larger flow requests are capped. Default 10000.
    pub subscription_max_permits_per_consumer: u64,
    /// Subscriptions: most messages in flight (delivered, unacknowledged) to
    /// one consumer whatever its credit; 0 means no limit. Default 5000.
    pub subscription_max_unacknowledged_per_consumer: u64,
    /// Subscriptions: most consumers of one subscription on one partition.
    /// Default 1000.
    pub subscription_max_consumers_per_partition: usize,
    /// Subscriptions: acknowledgements are made durable (the cursor
    /// committed) at most this often; receipts wait for it. Default 2.
    pub subscription_ack_flush_interval_ms: u64,
    /// Subscriptions: a dispatcher with no consumer for this long persists
    /// its cursor and stops. Default 60000.
    pub subscription_idle_stop_ms: u64,
    /// Backlog monitor (ADR 0012): how often each served partition's
    /// subscriptions are measured (backlog, age, rates) and the quota
    /// policies applied. Produce answers carry the latest measurement.
    /// Default 1000.
    pub backlog_check_interval_ms: u64,
    /// Backlog monitor: a topic's subscription list is asked from the
    /// nameserver at most this often. Default 5000.
    pub backlog_subscriptions_refresh_ms: u64,
    /// Backlog monitor: drain and incoming rates are measured over this
    /// sliding window. Default 30000.
    pub backlog_rate_window_ms: u64,
    pub telemetry: TelemetryConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: "broker-1".to_string(),
            listen_address: "127.0.0.1:7401".to_string(),
            advertised_address: None,
            nameservers: vec!["http://127.0.0.1:7400".to_string()],
            rack: String::new(),
            tail_cache_bytes: 256 * 1024 * 1024,
            max_in_flight_bytes_per_connection: 64 * 1024 * 1024,
            partition_queue_bytes: 32 * 1024 * 1024,
            max_in_flight_appends_per_partition: 1024,
            max_fetch_wait_ms: 30_000,
            max_fetch_bytes: 8 * 1024 * 1024,
            fetch_read_ahead_bytes: 64 * 1024 * 1024,
            max_find_results: 1000,
            max_find_scan_bytes: 64 * 1024 * 1024,
            max_find_response_bytes: 8 * 1024 * 1024,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_grpc_message_bytes: DEFAULT_MAX_GRPC_MESSAGE_BYTES,
            store_request_timeout_ms: 10_000,
            nameserver_request_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            register_backoff_max_ms: 5_000,
            takeover_backoff_max_ms: 5_000,
            replica_ack_timeout_ms: 2_000,
            fence_grace_ms: 200,
            degraded_ensemble_check_interval_ms: 10_000,
            repair_interval_ms: 30_000,
            repair_dead_store_grace_ms: 60_000,
            group_session_timeout_ms: 45_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 300_000,
            group_heartbeat_interval_ms: 3_000,
            group_max_members: 1000,
            max_offsets_per_commit: 10_000,
            max_commit_metadata_bytes: 4096,
            route_refresh_interval_ms: 10_000,
            retention_check_interval_ms: 60_000,
            max_producer_states_per_partition: 10_000,
            producer_state_rebuild_bytes: 64 * 1024 * 1024,
            subscription_window_messages: 20_000,
            subscription_max_delayed_messages: 1_000_000,
            subscription_delayed_records_bytes: 256 * 1024 * 1024,
            subscription_window_bytes: 64 * 1024 * 1024,
            subscription_max_permits_per_consumer: 10_000,
            subscription_max_unacknowledged_per_consumer: 5000,
            subscription_max_consumers_per_partition: 1000,
            subscription_ack_flush_interval_ms: 2,
            subscription_idle_stop_ms: 60_000,
            backlog_check_interval_ms: 1000,
            backlog_subscriptions_refresh_ms: 5000,
            backlog_rate_window_ms: 30_000,
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// Defaults, then the TOML file at `path` (which must exist when given),
    /// then `SLUICE_BROKER_*` variables (`__` separates nested keys).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        sluice_service::load_config(path)
    }
}

impl ServiceConfig for BrokerConfig {
    const ENV_PREFIX: &'static str = "SLUICE_BROKER_";

    fn listen_address(&self) -> &str {
        &self.listen_address
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/broker.toml");
        let loaded = BrokerConfig::load(Some(&path)).expect("config/broker.toml parses");
        assert_eq!(loaded, BrokerConfig::default());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("broker.toml");
        std::fs::write(&path, "tail_cache_byte = 1\n").expect("write config");
        let error =
            BrokerConfig::load(Some(&path)).expect_err("a misspelt key must not be ignored");
        assert!(error.to_string().contains("tail_cache_byte"), "{error}");
    }
}
