//! Configuration of a store node, loaded by the service shell from
//! defaults, an optional TOML file and `SLUICE_STORE_*` environment
//! variables.

use crate::message_index::MessageIndexLimits;
use crate::storage::StorageOptions;
use serde::{Deserialize, Serialize};
use sluice_service::{
    AuthConfig, ConfigError, ConnectionsConfig, QuotasConfig, ServiceConfig, TlsConfig,
};
use sluice_telemetry::metrics::MetricsConfig;
use sluice_telemetry::TelemetryConfig;
use std::path::{Path, PathBuf};

/// The store's default in-flight request budgets, per connection and in
/// all, in bytes (1 GiB; the other services: 64 MiB and 256 MiB). A
/// broker's append streams to one store share one connection, and HTTP/2
/// interleaves their messages frame by frame (1 MiB frames): with N
/// partitions appending at once, up to about N x 1 MiB of messages are in
/// progress on it. A refused append ends its stream, which the broker
/// takes as a failed replica (as for a store that closed its stream).
pub const STORE_INFLIGHT_REQUEST_BYTES: u64 = 1 << 30;

/// Every setting of a store node. See `config/store.toml` for an annotated
/// copy with the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Identity of this node in the cluster. Default `"store-1"`.
    pub node_id: String,
    /// Address the gRPC server binds. Default `"127.0.0.1:7402"`.
    pub listen_address: String,
    /// Address registered with the nameserver (`host:port`); default: the
    /// listener's actual address.
    pub advertised_address: Option<String>,
    /// Nameserver endpoints, tried in turn. Default `["http://127.0.0.1:7400"]`.
    pub nameservers: Vec<String>,
    /// Rack (failure domain) reported at registration. Default `""`.
    pub rack: String,
    /// Directory holding the journal, segments and checkpoint. Default
    /// `"./data/store"`.
    pub data_dir: PathBuf,
    /// A journal file is rolled once it reaches this size. Default 64 MiB.
    pub journal_file_max_bytes: u64,
    /// Write the journal with direct I/O (`O_DIRECT`), bypassing the page
    /// cache (journal data is only read back by recovery); falls back to
    /// the page cache where the file system refuses it. Default true.
    pub journal_direct_io: bool,
    /// Segment files grow in preallocated chunks of this many bytes
    /// (`fallocate` keeping the file length), so appends write into
    /// allocated blocks; the unused rest of the last chunk is released when
    /// the segment is sealed. 0 turns preallocation off. Journal files are
    /// always preallocated to `journal_file_max_bytes`. Default 16 MiB.
    pub segment_preallocate_bytes: u64,
    /// Bytes of appends waiting for the journal writer before appenders
    /// wait. Default 64 MiB.
    pub journal_queue_max_bytes: u64,
    /// Entries waiting for the journal writer before appenders wait.
    /// Default 4096.
    pub journal_queue_max_entries: usize,
    /// Groups the journal writer has committed (written and fsynced) that
    /// wait for the applier thread to write them to segment files and
    /// acknowledge them; the writer journals the next group meanwhile.
    /// Default 4.
    pub apply_queue_max_groups: usize,
    /// Interval between checkpoints (fsync segment files, record the journal
    /// position, delete older journal files). Default 200: frequent small
    /// segment fsyncs keep the disk queue short, so journal fsyncs (and so
    /// acknowledgements) are not stuck behind a burst of seconds' worth of
    /// segment data (p99 at 50k msg/s: ~15 ms at 200 ms, ~45-80 ms at 10 s).
    pub checkpoint_interval_ms: u64,
    /// An offset/time index entry every this many bytes of segment data.
    /// Default 4096.
    pub index_interval_bytes: u64,
    /// For `DURABILITY_PERIODIC` segments: the journal is fsynced at least
    /// this often. Appends to such segments are acknowledged once written
    /// to the OS, so a power loss (not a process crash) can lose
    /// acknowledged writes from the last interval. Default 1000.
    pub periodic_flush_interval_ms: u64,
    /// Largest record batch accepted by `Append`. Default
    /// `sluice_proto::limits::DEFAULT_MAX_BATCH_BYTES` (8 MiB).
    pub max_batch_bytes: u32,
    /// Largest `Read` answer (a single batch larger than the request's
    /// `max_bytes` is still returned whole). Default 8 MiB.
    pub max_read_bytes: u32,
    /// Segment files kept open at most (reads and writes open a segment's
    /// file on demand; the least recently used unused one is closed beyond
    /// this). Files in use at once (reads in progress, appends not yet
    /// fsynced by a checkpoint) may exceed it while they are. 0: half the
    /// soft limit of open files (`RLIMIT_NOFILE`, raised to the hard limit
    /// at start), at least 16 and at most 1048576, leaving the other half
    /// to the journal, connections and the rest. Default 0.
    pub max_open_segment_files: u64,
    /// gRPC message size limit, both directions. Default
    /// `sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES` (16 MiB).
    pub max_grpc_message_bytes: usize,
    /// Appends of one `Append` stream accepted but not yet answered.
    /// Default 1024.
    pub append_stream_max_in_flight: usize,
    /// Bytes of appends of one `Append` stream accepted but not yet
    /// answered. Default 32 MiB.
    pub append_stream_max_in_flight_bytes: u64,
    /// First retry delay after a failed registration. Default 200.
    pub register_retry_initial_backoff_ms: u64,
    /// Cap of the exponential registration retry delay. Default 10000.
    pub register_retry_max_backoff_ms: u64,
    /// Timeout of each call to a nameserver. Default 5000.
    pub nameserver_request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests before closing the
    /// storage anyway. Default 10000.
    pub shutdown_drain_timeout_ms: u64,
    /// Message lookup (ADR 0013): most segments whose key and tag index is
    /// kept in memory; the least recently looked up is dropped beyond it
    /// (and read from its file, if sealed, or rebuilt by reading its
    /// segment when looked up again). Default 32.
    pub message_index_max_segments: usize,
    /// Most batches indexed per segment; the index stops at the batch that
    /// would exceed it and lookups scan the rest. Default 262144 (32 bytes
    /// each).
    pub message_index_max_batches_per_segment: usize,
    /// Most distinct record keys and tags (hashes) indexed per segment.
    /// Default 65536.
    pub message_index_max_terms_per_segment: usize,
    /// Most (key or tag, batch) pairs indexed per segment. Default 1048576
    /// (4 bytes each).
    pub message_index_max_postings_per_segment: usize,
    /// Most candidate batches in one `FindInSegment` answer. Default 1024.
    pub message_index_max_candidate_batches: u32,
    /// `[connections]`: limits of the gRPC server's connections, streams
    /// and in-flight request bytes (shared by every service), with the
    /// store's own defaults of in-flight request bytes: 1 GiB per
    /// connection and in all ([`STORE_INFLIGHT_REQUEST_BYTES`]).
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
    /// `[metrics]`: the Prometheus endpoint (off unless `listen_address`
    /// is set) and the label cardinality bound.
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for StoreConfig {
    /// Node settings have their defaults here; the engine's and the
    /// message indexes' come from [`StorageOptions`] and
    /// [`MessageIndexLimits`], which own them.
    fn default() -> Self {
        let storage = StorageOptions::default();
        let message_index = MessageIndexLimits::default();
        Self {
            node_id: "store-1".to_string(),
            listen_address: "127.0.0.1:7402".to_string(),
            advertised_address: None,
            nameservers: vec!["http://127.0.0.1:7400".to_string()],
            rack: String::new(),
            data_dir: PathBuf::from("./data/store"),
            journal_file_max_bytes: storage.journal_file_max_bytes,
            journal_direct_io: storage.journal_direct_io,
            segment_preallocate_bytes: storage.segment_preallocate_bytes,
            journal_queue_max_bytes: storage.journal_queue_max_bytes,
            journal_queue_max_entries: storage.journal_queue_max_entries,
            apply_queue_max_groups: storage.apply_queue_max_groups,
            checkpoint_interval_ms: storage.checkpoint_interval_ms,
            index_interval_bytes: storage.index_interval_bytes,
            periodic_flush_interval_ms: storage.periodic_flush_interval_ms,
            max_batch_bytes: storage.max_batch_bytes,
            max_read_bytes: storage.max_read_bytes,
            max_open_segment_files: storage.max_open_segment_files,
            max_grpc_message_bytes: sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES,
            append_stream_max_in_flight: 1024,
            append_stream_max_in_flight_bytes: 32 * 1024 * 1024,
            register_retry_initial_backoff_ms: 200,
            register_retry_max_backoff_ms: 10_000,
            nameserver_request_timeout_ms: 5000,
            shutdown_drain_timeout_ms: 10_000,
            message_index_max_segments: message_index.max_indexed_segments,
            message_index_max_batches_per_segment: message_index.max_batches_per_segment,
            message_index_max_terms_per_segment: message_index.max_terms_per_segment,
            message_index_max_postings_per_segment: message_index.max_postings_per_segment,
            message_index_max_candidate_batches: message_index.max_candidate_batches,
            connections: ConnectionsConfig {
                max_inflight_request_bytes_per_connection: STORE_INFLIGHT_REQUEST_BYTES,
                max_inflight_request_bytes: STORE_INFLIGHT_REQUEST_BYTES,
                ..ConnectionsConfig::default()
            },
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            quotas: QuotasConfig::default(),
            metrics: MetricsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl ServiceConfig for StoreConfig {
    const ENV_PREFIX: &'static str = "SLUICE_STORE_";

    fn listen_address(&self) -> &str {
        &self.listen_address
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

impl StoreConfig {
    /// Defaults, then the TOML file at `path` (which must exist if given),
    /// then `SLUICE_STORE_*` variables (`__` separates nested keys).
    pub fn load(path: Option<&Path>) -> Result<StoreConfig, ConfigError> {
        sluice_service::load_config(path)
    }

    /// The engine settings derived from this configuration.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            journal_file_max_bytes: self.journal_file_max_bytes,
            journal_direct_io: self.journal_direct_io,
            segment_preallocate_bytes: self.segment_preallocate_bytes,
            journal_queue_max_bytes: self.journal_queue_max_bytes,
            journal_queue_max_entries: self.journal_queue_max_entries,
            apply_queue_max_groups: self.apply_queue_max_groups,
            checkpoint_interval_ms: self.checkpoint_interval_ms,
            index_interval_bytes: self.index_interval_bytes,
            periodic_flush_interval_ms: self.periodic_flush_interval_ms,
            max_batch_bytes: self.max_batch_bytes,
            max_read_bytes: self.max_read_bytes,
            max_open_segment_files: self.max_open_segment_files,
        }
    }

    /// The bounds of the message lookup indexes.
    pub fn message_index_limits(&self) -> MessageIndexLimits {
        MessageIndexLimits {
            max_indexed_segments: self.message_index_max_segments,
            max_batches_per_segment: self.message_index_max_batches_per_segment,
            max_terms_per_segment: self.message_index_max_terms_per_segment,
            max_postings_per_segment: self.message_index_max_postings_per_segment,
            max_candidate_batches: self.message_index_max_candidate_batches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/store.toml` states each numeric key's range as loading
    /// enforces it (`SLUICE_UPDATE_CONFIG_DOCS=1` rewrites the file).
    #[test]
    fn example_file_states_every_range() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/store.toml");
        let ranges = crate::config_ranges::ranges(&StoreConfig::default());
        if let Err(error) = sluice_service::check_example_config(&path, &ranges) {
            panic!("{error}");
        }
    }

    #[test]
    fn shipped_example_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/store.toml");
        let loaded = StoreConfig::load(Some(&path)).expect("config/store.toml must parse");
        assert_eq!(loaded, StoreConfig::default());
    }

    /// Every numeric key at 0 and at TOML's largest integer (i64::MAX):
    /// the maximum is refused naming the key (out of range, or too large
    /// for the field), 0 only where it has a meaning of its own.
    #[test]
    fn every_numeric_key_at_its_extremes() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("store.toml");
        for range in crate::config_ranges::ranges(&StoreConfig::default()) {
            let (section, key) = match range.key.trim_start_matches('[').split_once("] ") {
                Some((section, key)) => (format!("[{section}]\n"), key.to_string()),
                None => (String::new(), range.key.clone()),
            };
            for value in [0, i64::MAX] {
                std::fs::write(&path, format!("{section}{key} = {value}\n")).expect("write");
                let loaded = StoreConfig::load(Some(&path));
                let accepted = (value == 0 && range.zero_means.is_some())
                    || (range.min..=range.max).contains(&(value as u64));
                match (&loaded, accepted) {
                    (Ok(_), true) => {}
                    (Err(error), false) => assert!(
                        error.to_string().contains(&key),
                        "{} = {value}: {error}",
                        range.key
                    ),
                    _ => panic!("{} = {value}: {loaded:?}", range.key),
                }
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("store.toml");
        std::fs::write(&path, "no_such_key = 1\n").expect("write config");
        let error = StoreConfig::load(Some(&path)).expect_err("an unknown key");
        assert!(error.to_string().contains("no_such_key"), "{error}");
        // In a section too.
        std::fs::write(&path, "[telemetry]\nno_such_key = 1\n").expect("write config");
        let error = StoreConfig::load(Some(&path)).expect_err("an unknown key");
        assert!(error.to_string().contains("no_such_key"), "{error}");
    }

    #[test]
    fn default_engine_settings_are_the_engines_own_defaults() {
        let config = StoreConfig::default();
        assert_eq!(config.storage_options(), StorageOptions::default());
        assert_eq!(config.message_index_limits(), MessageIndexLimits::default());
    }
}
