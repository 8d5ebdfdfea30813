//! Broker configuration: one struct in sections, loaded by the service
//! shell from defaults, an optional TOML file and `SLUICE_BROKER_*`
//! environment variables (in that order; `__` separates a section from its
//! key, e.g. `SLUICE_BROKER_FETCH__TAIL_CACHE_BYTES`).
//!
//! The keys were flat before; the old names ([`MOVED_KEYS`]) are refused
//! with where they went.

use serde::{Deserialize, Serialize};
use sluice_proto::limits::{
    DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_GRPC_MESSAGE_BYTES, MAX_UNCOMPRESSED_RECORDS_BYTES,
};
use sluice_service::{
    AuthConfig, ConfigError, ConnectionsConfig, MovedKey, QuotasConfig, ServiceConfig, TlsConfig,
};
use sluice_telemetry::metrics::MetricsConfig;
use sluice_telemetry::TelemetryConfig;
use std::path::Path;

/// Everything a broker can be told. See `config/broker.toml` for the
/// commented list with defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub server: ServerConfig,
    /// `[connections]`: limits of the gRPC server's connections, streams
    /// and in-flight request bytes (shared by every service).
    pub connections: ConnectionsConfig,
    /// `[tls]`: TLS for this server and for its connections to other
    /// services (off by default; see `sluice_service::TlsConfig`).
    pub tls: TlsConfig,
    /// `[auth]`: authorisation of every request (off by default; see
    /// `sluice_service::AuthConfig`).
    pub auth: AuthConfig,
    /// `[quotas]`: per-principal limits (none by default; see
    /// `sluice_service::QuotasConfig`).
    pub quotas: QuotasConfig,
    pub cluster: ClusterConfig,
    pub produce: ProduceConfig,
    pub replication: ReplicationConfig,
    pub fetch: FetchConfig,
    pub lookup: LookupConfig,
    pub groups: GroupsConfig,
    pub retention: RetentionConfig,
    pub subscriptions: SubscriptionsConfig,
    pub backlog: BacklogConfig,
    /// `[metrics]`: the Prometheus endpoint (off unless `listen_address`
    /// is set) and the label cardinality bound.
    pub metrics: MetricsConfig,
    pub transactions: TransactionsConfig,
    /// `[compaction]`: compacted topics (ADR 0016 §8).
    pub compaction: CompactionConfig,
    pub telemetry: TelemetryConfig,
}

/// `[server]`: the gRPC server and connections to peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the gRPC server binds. Default `127.0.0.1:7401`.
    pub listen_address: String,
    /// Address clients and other brokers use to reach this broker; default
    /// the listener's actual address.
    pub advertised_address: Option<String>,
    /// gRPC message limit for the server and every client. Default 16 MiB.
    pub max_grpc_message_bytes: usize,
    /// TCP connect timeout to any peer. Default 3000.
    pub connect_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_address: "127.0.0.1:7401".to_string(),
            advertised_address: None,
            max_grpc_message_bytes: DEFAULT_MAX_GRPC_MESSAGE_BYTES,
            connect_timeout_ms: 3_000,
        }
    }
}

/// `[cluster]`: this broker's identity and its nameservers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Stable id of this broker in the cluster. Default `broker-1`.
    pub node_id: String,
    /// Nameserver endpoints, tried in order. Default `["http://127.0.0.1:7400"]`.
    pub nameservers: Vec<String>,
    /// Rack (failure domain) reported at registration. Default empty.
    pub rack: String,
    /// Timeout of each nameserver request. Default 5000.
    pub nameserver_request_timeout_ms: u64,
    /// Cap of the exponential backoff between registration attempts. Default 5000.
    pub register_backoff_max_ms: u64,
    /// How long cached topic partition counts (from GetRoutes) are trusted. Default 10000.
    pub route_refresh_interval_ms: u64,
    /// The broker stops serving this share (percent) of the nameserver's
    /// `session_timeout_ms` before the session could end, counted from
    /// when its last successful heartbeat was sent: room for the two
    /// machines' clocks running at different rates (ADR 0014). 10 to 50.
    /// Default 20.
    pub session_fence_margin_percent: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: "broker-1".to_string(),
            nameservers: vec!["http://127.0.0.1:7400".to_string()],
            rack: String::new(),
            nameserver_request_timeout_ms: 5_000,
            register_backoff_max_ms: 5_000,
            route_refresh_interval_ms: 10_000,
            session_fence_margin_percent: 20,
        }
    }
}

/// `[produce]`: the produce path's bounds and the idempotent producers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProduceConfig {
    /// Produce bytes accepted but not yet answered per produce stream; the
    /// broker stops reading the stream at this limit. Default 64 MiB.
    pub max_in_flight_bytes_per_connection: u64,
    /// Bytes queued in one partition's append pipeline (waiting or in flight
    /// to the stores); beyond it produce requests fail with THROTTLED.
    /// Default 32 MiB.
    pub partition_queue_bytes: u64,
    /// Appends one partition keeps in flight to its stores. Default 1024.
    pub max_in_flight_appends_per_partition: usize,
    /// Batch size limit for topics whose config does not set one. Default 8 MiB.
    pub max_batch_bytes: u32,
    /// Largest size a compressed batch's records may decompress to, in
    /// bytes. The broker decompresses every compressed batch once before
    /// taking its offsets and refuses with CORRUPT_BATCH one that does not
    /// decompress, decompresses to more than this (a decompression bomb)
    /// or whose records are badly framed or not as many as its header
    /// claims. Values above 64 MiB (`limits::MAX_UNCOMPRESSED_RECORDS_BYTES`,
    /// what consumers decode) act as 64 MiB; 0 refuses every compressed
    /// batch. Default 64 MiB.
    pub max_decompressed_batch_bytes: u64,
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
    /// Transactions open (or being verified) at once on one partition
    /// (ADR 0016); a producer's first batch beyond it is refused with
    /// THROTTLED. Default 1000.
    pub max_open_transactions_per_partition: usize,
}

impl Default for ProduceConfig {
    fn default() -> Self {
        Self {
            max_in_flight_bytes_per_connection: 64 * 1024 * 1024,
            partition_queue_bytes: 32 * 1024 * 1024,
            max_in_flight_appends_per_partition: 1024,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_decompressed_batch_bytes: MAX_UNCOMPRESSED_RECORDS_BYTES as u64,
            max_producer_states_per_partition: 10_000,
            producer_state_rebuild_bytes: 64 * 1024 * 1024,
            max_open_transactions_per_partition: 1000,
        }
    }
}

/// `[replication]`: segments on the stores (ADR 0008): requests,
/// acknowledgements, takeover and repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Timeout of each store request, and of each append waiting for its
    /// store acknowledgement. Default 10000.
    pub store_request_timeout_ms: u64,
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
    /// Cap of the exponential backoff between takeover/recovery attempts. Default 5000.
    pub takeover_backoff_max_ms: u64,
    /// Most partitions taking over at once (listing, fencing and closing
    /// segments, opening a new one); the others wait their turn. A broker
    /// given 1,000 partitions at once otherwise sends the nameserver and
    /// the stores 1,000 takeovers together, and its own heartbeats time
    /// out behind them. Default 32.
    pub max_concurrent_takeovers: u32,
    /// How often the repair task checks the copies of the closed segments
    /// of served partitions and repairs those short of the ensemble size.
    /// Default 30000.
    pub repair_interval_ms: u64,
    /// How long a store must have been gone (no live lease) before repair
    /// replaces its copies on other stores; a store back sooner has its
    /// copies checked and filled instead. Default 60000.
    pub repair_dead_store_grace_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            store_request_timeout_ms: 10_000,
            replica_ack_timeout_ms: 2_000,
            fence_grace_ms: 200,
            degraded_ensemble_check_interval_ms: 10_000,
            takeover_backoff_max_ms: 5_000,
            max_concurrent_takeovers: 32,
            repair_interval_ms: 30_000,
            repair_dead_store_grace_ms: 60_000,
        }
    }
}

/// `[fetch]`: serving reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Total bytes of recent batches kept in memory across all served
    /// partitions (split evenly between them). Default 256 MiB.
    pub tail_cache_bytes: u64,
    /// Longest a fetch long-poll waits, whatever the client asks. Default 30000.
    pub max_wait_ms: u64,
    /// Largest fetch response, whatever the client asks. Default 8 MiB.
    pub max_bytes: u64,
    /// Bytes of store reads started ahead of sequential readers' next
    /// fetches, across all partitions (at most one range per partition);
    /// 0 turns read-ahead off. Default 64 MiB.
    pub read_ahead_bytes: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            tail_cache_bytes: 256 * 1024 * 1024,
            max_wait_ms: 30_000,
            max_bytes: 8 * 1024 * 1024,
            read_ahead_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[lookup]`: message lookup (ADR 0013), `FindMessages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// Most messages one `FindMessages` answer returns, whatever the client
    /// asks. Default 1000.
    pub max_results: u32,
    /// Most bytes of record batches one `FindMessages` reads from the log
    /// to verify candidates and scan unindexed ranges; beyond it the answer
    /// stops and says where to continue. Default 64 MiB.
    pub max_scan_bytes: u64,
    /// Largest `FindMessages` answer (the batches holding the matches).
    /// Default 8 MiB.
    pub max_response_bytes: u64,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            max_results: 1000,
            max_scan_bytes: 64 * 1024 * 1024,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// `[groups]`: consumer groups coordinated here, and their offset commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Session timeout of group members that do not ask for one. Default 45000.
    pub session_timeout_ms: u64,
    /// Smallest session timeout a member may ask for. Default 6000.
    pub min_session_timeout_ms: u64,
    /// Largest session timeout a member may ask for. Default 300000.
    pub max_session_timeout_ms: u64,
    /// Heartbeat interval told to group members. Default 3000.
    pub heartbeat_interval_ms: u64,
    /// Most members one group may have. Default 1000.
    pub max_members: usize,
    /// Most offsets one commit request may carry. Default 10000.
    pub max_offsets_per_commit: usize,
    /// Longest commit metadata string, in bytes. Default 4096.
    pub max_commit_metadata_bytes: usize,
    /// Most partitions of one group with transactional offsets waiting for
    /// their transaction's marker (ADR 0016 §5); a transactional commit
    /// beyond is refused THROTTLED. Default 10000.
    pub max_pending_offsets_per_group: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            session_timeout_ms: 45_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 300_000,
            heartbeat_interval_ms: 3_000,
            max_members: 1000,
            max_offsets_per_commit: 10_000,
            max_commit_metadata_bytes: 4096,
            max_pending_offsets_per_group: 10_000,
        }
    }
}

/// `[retention]`: deleting old segments of served partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How often retention runs over served partitions (and expired group
    /// members are evicted). Default 60000.
    pub check_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            check_interval_ms: 60_000,
        }
    }
}

/// `[compaction]`: the compaction task of compacted topics' partitions
/// served here (ADR 0016 §8). One partition is compacted at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// How often the task looks for a partition due for a pass. Default
    /// 15000.
    pub check_interval_ms: u64,
    /// Memory of one pass's key map (32 bytes a key: 64 MiB hold about 2.1
    /// million keys). Default 64 MiB.
    pub key_map_bytes: u64,
    /// Most bytes a pass reads and writes per second, together. Default
    /// 32 MiB.
    pub max_bytes_per_second: u64,
    /// Most bytes one store read of a pass returns. Default 1 MiB.
    pub read_chunk_bytes: u64,
    /// How long replaced segments' copies stay on the stores after a swap
    /// (for reads under way). Default 60000.
    pub delete_delay_ms: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            check_interval_ms: 15_000,
            key_map_bytes: 64 << 20,
            max_bytes_per_second: 32 << 20,
            read_chunk_bytes: 1 << 20,
            delete_delay_ms: 60_000,
        }
    }
}

/// `[subscriptions]`: subscription dispatchers (ADR 0011), per subscription
/// and partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsConfig {
    /// Most scanned, unacknowledged messages one subscription holds per
    /// partition (delivered or waiting); bounds its memory and its cursor's
    /// size. Default 20000.
    pub window_messages: usize,
    /// Most delayed messages (waiting for their delivery time) one
    /// subscription holds per partition, about 100 bytes of memory each;
    /// beyond it the subscription reads no further until some come due.
    /// Default 1000000.
    pub max_delayed_messages: usize,
    /// Bytes of delayed records one subscription keeps in memory per
    /// partition (each as a single-record batch) so they are sent from
    /// memory when due; beyond it due ones are read back from the log.
    /// Default 256 MiB.
    pub delayed_records_bytes: u64,
    /// Most bytes of record batches one subscription keeps read ahead per
    /// partition. Default 64 MiB.
    pub window_bytes: u64,
    /// Most credit (undelivered permits) one consumer may hold; larger flow
    /// requests are capped. Default 10000.
    pub max_permits_per_consumer: u64,
    /// Most messages in flight (delivered, unacknowledged) to one consumer
    /// whatever its credit; 0 means no limit. Default 5000.
    pub max_unacknowledged_per_consumer: u64,
    /// Most consumers of one subscription on one partition. Default 1000.
    pub max_consumers_per_partition: usize,
    /// Acknowledgements are made durable (the cursor committed) at most
    /// this often; receipts wait for it. Default 2.
    pub ack_flush_interval_ms: u64,
    /// A dispatcher with no consumer for this long persists its cursor and
    /// stops. Default 60000.
    pub idle_stop_ms: u64,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            window_messages: 20_000,
            max_delayed_messages: 1_000_000,
            delayed_records_bytes: 256 * 1024 * 1024,
            window_bytes: 64 * 1024 * 1024,
            max_permits_per_consumer: 10_000,
            max_unacknowledged_per_consumer: 5000,
            max_consumers_per_partition: 1000,
            ack_flush_interval_ms: 2,
            idle_stop_ms: 60_000,
        }
    }
}

/// `[backlog]`: the backlog monitor (ADR 0012).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BacklogConfig {
    /// How often each served partition's subscriptions are measured
    /// (backlog, age, rates) and the quota policies applied. Produce
    /// answers carry the latest measurement. Default 1000.
    pub check_interval_ms: u64,
    /// A topic's subscription list is asked from the nameserver at most
    /// this often. Default 5000.
    pub subscriptions_refresh_ms: u64,
    /// Drain and incoming rates are measured over this sliding window.
    /// Default 30000.
    pub rate_window_ms: u64,
}

impl Default for BacklogConfig {
    fn default() -> Self {
        Self {
            check_interval_ms: 1000,
            subscriptions_refresh_ms: 5000,
            rate_window_ms: 30_000,
        }
    }
}

/// `[transactions]`: transactional produce (ADR 0016).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionsConfig {
    /// Coordinate transactions and accept transactional batches (each
    /// verified with its coordinator) and transaction markers. Off until
    /// the SDK's transactional producer ships (ADR 0016 stage 3): while
    /// off, a transactional batch, WriteTxnMarkers and the coordinator RPCs
    /// are refused with INVALID_ARGUMENT; read-committed reads work either
    /// way (the LSO is then the high watermark). Default false.
    pub enabled: bool,
    /// How long a partition waits for the transaction coordinator to
    /// verify a producer's first batch of a transaction before failing
    /// its held batches (retriable). Default 5000.
    pub verification_timeout_ms: u64,
    /// Largest `transaction_timeout_ms` an `InitProducerId` may ask for;
    /// larger is INVALID_ARGUMENT. Open transactions past their timeout
    /// are aborted by their coordinator. Default 300000.
    pub max_timeout_ms: u64,
    /// How often the coordinator looks for transactions past their
    /// timeout. Default 500.
    pub timeout_check_interval_ms: u64,
    /// Most partitions one transaction may touch; a first write to one
    /// more is refused TRANSACTION_ABORTABLE. Default 1000.
    pub max_participants_per_transaction: usize,
    /// How long the coordinator lets an InitProducerId, or the first write
    /// of the next transaction, wait for the previous transaction's
    /// markers before answering CONCURRENT_TRANSACTIONS (retriable).
    /// Default 5000.
    pub end_wait_ms: u64,
}

impl Default for TransactionsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            verification_timeout_ms: 5000,
            max_timeout_ms: 300_000,
            timeout_check_interval_ms: 500,
            max_participants_per_transaction: 1000,
            end_wait_ms: 5000,
        }
    }
}

const fn moved(old: &'static str, section: &'static str, key: &'static str) -> MovedKey {
    MovedKey { old, section, key }
}

/// The flat keys of the configuration before it had sections, and where
/// each went. Refused (from the file and from `SLUICE_BROKER_*`) with a
/// message naming the new key.
pub const MOVED_KEYS: &[MovedKey] = &[
    moved("listen_address", "server", "listen_address"),
    moved("advertised_address", "server", "advertised_address"),
    moved("max_grpc_message_bytes", "server", "max_grpc_message_bytes"),
    moved("connect_timeout_ms", "server", "connect_timeout_ms"),
    moved("node_id", "cluster", "node_id"),
    moved("nameservers", "cluster", "nameservers"),
    moved("rack", "cluster", "rack"),
    moved(
        "nameserver_request_timeout_ms",
        "cluster",
        "nameserver_request_timeout_ms",
    ),
    moved(
        "register_backoff_max_ms",
        "cluster",
        "register_backoff_max_ms",
    ),
    moved(
        "route_refresh_interval_ms",
        "cluster",
        "route_refresh_interval_ms",
    ),
    moved(
        "session_fence_margin_percent",
        "cluster",
        "session_fence_margin_percent",
    ),
    moved(
        "max_in_flight_bytes_per_connection",
        "produce",
        "max_in_flight_bytes_per_connection",
    ),
    moved("partition_queue_bytes", "produce", "partition_queue_bytes"),
    moved(
        "max_in_flight_appends_per_partition",
        "produce",
        "max_in_flight_appends_per_partition",
    ),
    moved("max_batch_bytes", "produce", "max_batch_bytes"),
    moved(
        "max_decompressed_batch_bytes",
        "produce",
        "max_decompressed_batch_bytes",
    ),
    moved(
        "max_producer_states_per_partition",
        "produce",
        "max_producer_states_per_partition",
    ),
    moved(
        "producer_state_rebuild_bytes",
        "produce",
        "producer_state_rebuild_bytes",
    ),
    moved(
        "max_open_transactions_per_partition",
        "produce",
        "max_open_transactions_per_partition",
    ),
    moved(
        "store_request_timeout_ms",
        "replication",
        "store_request_timeout_ms",
    ),
    moved(
        "replica_ack_timeout_ms",
        "replication",
        "replica_ack_timeout_ms",
    ),
    moved("fence_grace_ms", "replication", "fence_grace_ms"),
    moved(
        "degraded_ensemble_check_interval_ms",
        "replication",
        "degraded_ensemble_check_interval_ms",
    ),
    moved(
        "takeover_backoff_max_ms",
        "replication",
        "takeover_backoff_max_ms",
    ),
    // Never flat; listed so the flat spelling is refused with its section.
    moved(
        "max_concurrent_takeovers",
        "replication",
        "max_concurrent_takeovers",
    ),
    moved("repair_interval_ms", "replication", "repair_interval_ms"),
    moved(
        "repair_dead_store_grace_ms",
        "replication",
        "repair_dead_store_grace_ms",
    ),
    moved("tail_cache_bytes", "fetch", "tail_cache_bytes"),
    moved("max_fetch_wait_ms", "fetch", "max_wait_ms"),
    moved("max_fetch_bytes", "fetch", "max_bytes"),
    moved("fetch_read_ahead_bytes", "fetch", "read_ahead_bytes"),
    moved("max_find_results", "lookup", "max_results"),
    moved("max_find_scan_bytes", "lookup", "max_scan_bytes"),
    moved("max_find_response_bytes", "lookup", "max_response_bytes"),
    moved("group_session_timeout_ms", "groups", "session_timeout_ms"),
    moved(
        "group_min_session_timeout_ms",
        "groups",
        "min_session_timeout_ms",
    ),
    moved(
        "group_max_session_timeout_ms",
        "groups",
        "max_session_timeout_ms",
    ),
    moved(
        "group_heartbeat_interval_ms",
        "groups",
        "heartbeat_interval_ms",
    ),
    moved("group_max_members", "groups", "max_members"),
    moved("max_offsets_per_commit", "groups", "max_offsets_per_commit"),
    moved(
        "max_commit_metadata_bytes",
        "groups",
        "max_commit_metadata_bytes",
    ),
    moved(
        "max_pending_offsets_per_group",
        "groups",
        "max_pending_offsets_per_group",
    ),
    moved(
        "retention_check_interval_ms",
        "retention",
        "check_interval_ms",
    ),
    moved(
        "subscription_window_messages",
        "subscriptions",
        "window_messages",
    ),
    moved(
        "subscription_max_delayed_messages",
        "subscriptions",
        "max_delayed_messages",
    ),
    moved(
        "subscription_delayed_records_bytes",
        "subscriptions",
        "delayed_records_bytes",
    ),
    moved("subscription_window_bytes", "subscriptions", "window_bytes"),
    moved(
        "subscription_max_permits_per_consumer",
        "subscriptions",
        "max_permits_per_consumer",
    ),
    moved(
        "subscription_max_unacknowledged_per_consumer",
        "subscriptions",
        "max_unacknowledged_per_consumer",
    ),
    moved(
        "subscription_max_consumers_per_partition",
        "subscriptions",
        "max_consumers_per_partition",
    ),
    moved(
        "subscription_ack_flush_interval_ms",
        "subscriptions",
        "ack_flush_interval_ms",
    ),
    moved("subscription_idle_stop_ms", "subscriptions", "idle_stop_ms"),
    moved("backlog_check_interval_ms", "backlog", "check_interval_ms"),
    moved(
        "backlog_subscriptions_refresh_ms",
        "backlog",
        "subscriptions_refresh_ms",
    ),
    moved("backlog_rate_window_ms", "backlog", "rate_window_ms"),
];

impl BrokerConfig {
    /// Defaults, then the TOML file at `path` (which must exist when given),
    /// then `SLUICE_BROKER_*` variables (`__` separates nested keys).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        sluice_service::load_config(path)
    }
}

impl ServiceConfig for BrokerConfig {
    const ENV_PREFIX: &'static str = "SLUICE_BROKER_";
    const MOVED_KEYS: &'static [MovedKey] = MOVED_KEYS;

    fn listen_address(&self) -> &str {
        &self.server.listen_address
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }

    fn ranges(&self) -> Vec<sluice_service::KeyRange> {
        crate::config_ranges::ranges(self)
    }

    fn cross_checks(&self) -> Vec<String> {
        crate::config_ranges::cross_checks(self)
    }
}

#[cfg(test)]
// figment::Jail (which serializes environment changes between tests)
// takes closures returning figment::Error.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    /// `config/broker.toml` states each numeric key's range as loading
    /// enforces it (`SLUICE_UPDATE_CONFIG_DOCS=1` rewrites the file).
    #[test]
    fn example_file_states_every_range() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/broker.toml");
        let ranges = crate::config_ranges::ranges(&BrokerConfig::default());
        if let Err(error) = sluice_service::check_example_config(&path, &ranges) {
            panic!("{error}");
        }
    }

    #[test]
    fn example_file_matches_defaults() {
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/broker.toml");
            let loaded = BrokerConfig::load(Some(&path)).expect("config/broker.toml parses");
            assert_eq!(loaded, BrokerConfig::default());
            Ok(())
        });
    }

    /// Every numeric key at 0 and at u64::MAX through the environment:
    /// u64::MAX is refused naming the key (out of range, or too large for
    /// the field), 0 only where it has a meaning of its own.
    #[test]
    fn every_numeric_key_at_its_extremes() {
        for range in crate::config_ranges::ranges(&BrokerConfig::default()) {
            let (section, key) = range
                .key
                .trim_start_matches('[')
                .split_once("] ")
                .expect("[section] key");
            // A nested section (`auth.jwt`) is a nested variable.
            let section = section.replace('.', "__");
            let variable = format!("SLUICE_BROKER_{}__{}", section, key).to_uppercase();
            for value in [0, u64::MAX] {
                let accepted = (value == 0 && range.zero_means.is_some())
                    || (range.min..=range.max).contains(&value);
                figment::Jail::expect_with(|jail| {
                    jail.set_env(&variable, value);
                    let loaded = BrokerConfig::load(None);
                    match (&loaded, accepted) {
                        (Ok(_), true) => {}
                        (Err(error), false) => {
                            let message = error.to_string().to_lowercase();
                            assert!(message.contains(key), "{variable}={value}: {error}")
                        }
                        _ => panic!("{variable}={value}: {loaded:?}"),
                    }
                    Ok(())
                });
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("broker.toml", "[fetch]\ntail_cache_byte = 1\n")?;
            let error = BrokerConfig::load(Some(Path::new("broker.toml")))
                .expect_err("a misspelt key must not be ignored");
            assert!(error.to_string().contains("tail_cache_byte"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn sections_are_read_from_the_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "broker.toml",
                "[subscriptions]\nwindow_messages = 7\n[cluster]\nnode_id = \"b-9\"\n",
            )?;
            jail.set_env("SLUICE_BROKER_FETCH__TAIL_CACHE_BYTES", "4096");
            let loaded = BrokerConfig::load(Some(Path::new("broker.toml"))).expect("loads");
            assert_eq!(loaded.subscriptions.window_messages, 7);
            assert_eq!(loaded.cluster.node_id, "b-9");
            assert_eq!(loaded.fetch.tail_cache_bytes, 4096);
            assert_eq!(loaded.fetch.max_bytes, FetchConfig::default().max_bytes);
            Ok(())
        });
    }

    #[test]
    fn old_flat_keys_in_the_file_name_their_new_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "broker.toml",
                "subscription_window_messages = 7\nnode_id = \"b-9\"\n",
            )?;
            let error = BrokerConfig::load(Some(Path::new("broker.toml")))
                .expect_err("old keys must be refused");
            let message = error.to_string();
            assert!(
                message.contains(
                    "`subscription_window_messages` moved to `[subscriptions] window_messages`"
                ),
                "{message}"
            );
            assert!(
                message.contains("`node_id` moved to `[cluster] node_id`"),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn old_flat_environment_variables_name_their_new_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_BROKER_TAIL_CACHE_BYTES", "4096");
            let error = BrokerConfig::load(None).expect_err("old variables must be refused");
            assert_eq!(
                error.to_string(),
                "SLUICE_BROKER_TAIL_CACHE_BYTES: `tail_cache_bytes` moved to \
                 `[fetch] tail_cache_bytes` (set SLUICE_BROKER_FETCH__TAIL_CACHE_BYTES)"
            );
            Ok(())
        });
    }

    /// Every old key points at a key that exists, none is a current
    /// top-level key, and every key of the sections has its old name.
    #[test]
    fn moved_keys_cover_every_section_key() {
        let defaults = serde_json::to_value(BrokerConfig::default()).expect("serializes");
        let sections = defaults.as_object().expect("a table");
        let mut section_keys = 0;
        for (section, keys) in sections {
            // Sections that never had flat keys.
            if section == "telemetry"
                || section == "connections"
                || section == "tls"
                || section == "auth"
                || section == "quotas"
                || section == "metrics"
                || section == "transactions"
                || section == "compaction"
            {
                continue;
            }
            section_keys += keys.as_object().expect("a section").len();
        }
        assert_eq!(MOVED_KEYS.len(), section_keys);
        for moved in MOVED_KEYS {
            assert!(
                !sections.contains_key(moved.old),
                "{} is a section",
                moved.old
            );
            assert!(
                sections[moved.section]
                    .as_object()
                    .expect("a section")
                    .contains_key(moved.key),
                "{} has no {}",
                moved.section,
                moved.key
            );
        }
    }
}
