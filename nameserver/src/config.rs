//! The nameserver's configuration: defaults, then a TOML file, then
//! `SLUICE_NAMESERVER_*` environment variables (nested keys split by `__`,
//! e.g. `SLUICE_NAMESERVER_METADATA__BACKEND=embedded`).

use serde::{Deserialize, Serialize};
use sluice_proto::limits;
use sluice_proto::v1::{Durability, TopicConfig};
use sluice_service::{
    AuthConfig, ConfigError, ConnectionsConfig, QuotasConfig, ServiceConfig, TlsConfig,
};
use sluice_telemetry::metrics::MetricsConfig;
use sluice_telemetry::TelemetryConfig;
use std::path::{Path, PathBuf};

/// Which metadata backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    /// etcd at `endpoints` (real clusters).
    Etcd,
    /// In-process store persisted in `data_dir` (`sluice dev` only).
    Embedded,
}

/// `[metadata]`: where cluster metadata lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// "etcd" (default) or "embedded".
    pub backend: MetadataBackend,
    /// etcd client URLs. Default `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Bound on establishing an etcd connection. Default 5000.
    pub connect_timeout_ms: u64,
    /// Bound on every single etcd request. Default 5000.
    pub request_timeout_ms: u64,
    /// Prefix of every key in etcd. Default "/sluice/v1/".
    pub key_prefix: String,
    /// Directory of the embedded store's file; required with
    /// `backend = "embedded"`. Default unset.
    pub data_dir: Option<PathBuf>,
    /// PEM CA certificates that signed etcd's server certificate; required
    /// with `https://` endpoints, refused with `http://` ones. Default unset.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to etcd (its
    /// `--client-cert-auth`); with `tls_key_file`. Default unset.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`. Default unset.
    pub tls_key_file: Option<PathBuf>,
    /// How often the `tls_*` files are looked at for changes, in
    /// milliseconds (rotated files are used for new etcd requests without a
    /// restart). Default 1000.
    pub tls_reload_check_interval_ms: u64,
    /// etcd user (etcd's own authentication, `etcdctl auth enable`); with
    /// `password_file` and `https://` endpoints. Default unset.
    pub user: Option<String>,
    /// File holding `user`'s password (one line; read once at start, at most
    /// `metadata_security::MAX_PASSWORD_FILE_BYTES`). Default unset.
    pub password_file: Option<PathBuf>,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            backend: MetadataBackend::Etcd,
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            connect_timeout_ms: 5_000,
            request_timeout_ms: 5_000,
            key_prefix: crate::metadata::etcd_default_key_prefix().to_string(),
            data_dir: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_reload_check_interval_ms: 1_000,
            user: None,
            password_file: None,
        }
    }
}

/// `[topic_defaults]`: values filled into a `CreateTopic` config for every
/// field left at 0 / unspecified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    /// Delete closed segments older than this. Default 604800000 (7 days).
    pub retention_ms: u64,
    /// Delete oldest closed segments while a partition is larger; 0 = no
    /// limit. Default 0.
    pub retention_bytes: u64,
    /// Roll the open segment at this size. Default 67108864 (64 MiB).
    pub segment_bytes: u64,
    /// Roll the open segment at this age. Default 3600000 (1 hour).
    pub segment_ms: u64,
    /// "fsync" or "periodic". Default "fsync".
    pub durability: DurabilityConfig,
    /// Stores per segment (E). Default 3. A cluster with fewer live stores
    /// refuses to create topics with the default; `sluice dev` sets 1.
    pub ensemble_size: u32,
    /// Stores each append is written to (W). Default 3.
    pub write_quorum: u32,
    /// Stores that must confirm an append durable before the producer is
    /// acknowledged (A). Default 2.
    pub ack_quorum: u32,
    /// Largest accepted record batch. Default 8388608 (8 MiB).
    pub max_batch_bytes: u32,
}

/// Durability as written in TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityConfig {
    Fsync,
    Periodic,
}

impl From<DurabilityConfig> for Durability {
    fn from(value: DurabilityConfig) -> Self {
        match value {
            DurabilityConfig::Fsync => Durability::Fsync,
            DurabilityConfig::Periodic => Durability::Periodic,
        }
    }
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: 0,
            segment_bytes: 64 * 1024 * 1024,
            segment_ms: 60 * 60 * 1000,
            durability: DurabilityConfig::Fsync,
            ensemble_size: 3,
            write_quorum: 3,
            ack_quorum: 2,
            max_batch_bytes: limits::DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

impl TopicDefaults {
    /// A full config for `partitions` partitions from these defaults.
    pub fn topic_config(&self, partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            durability: Durability::from(self.durability) as i32,
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            ensemble_size: self.ensemble_size,
            write_quorum: self.write_quorum,
            ack_quorum: self.ack_quorum,
            max_batch_bytes: self.max_batch_bytes,
            // Backlog quotas are per topic only (no nameserver-wide
            // default); `complete_topic_config` fills their defaults.
            ..TopicConfig::default()
        }
    }
}

/// Everything the nameserver can be configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NameServerConfig {
    /// This nameserver's id, registered under `nodes/nameserver/{id}`.
    /// Default "nameserver-1".
    pub node_id: String,
    /// gRPC listen address. Default "127.0.0.1:7400".
    pub listen_address: String,
    /// Address others should use; default unset = the bound address.
    pub advertised_address: Option<String>,
    pub metadata: MetadataConfig,
    /// etcd lease granted to registered nodes: the backstop that ends a
    /// session when no nameserver watches it any more (all of them down or
    /// restarted). etcd rounds it up to whole seconds. At least twice
    /// `session_timeout_ms`. Default 5000.
    pub lease_ttl_ms: u64,
    /// Heartbeat interval told to nodes (and used for our own lease). At
    /// most a third of `session_timeout_ms`. Default 250.
    pub heartbeat_interval_ms: u64,
    /// A node that sent this nameserver no heartbeat for this long loses
    /// its session: the nameserver deletes its key and revokes its lease
    /// (conditional on no other nameserver having taken the session over,
    /// ADR 0014). Brokers stop serving a margin before it. Default 1500.
    pub session_timeout_ms: u64,
    /// How often the nameserver looks for sessions past
    /// `session_timeout_ms`; detection takes at most the timeout plus this.
    /// Below `session_timeout_ms`. Default 50.
    pub session_check_interval_ms: u64,
    /// Minimum time between writes of a node's reported load into its key.
    /// Default 5000.
    pub load_update_interval_ms: u64,
    /// How often the assignment reconciler runs (on the elected assigner
    /// only). Default 1000.
    pub reconcile_interval_ms: u64,
    /// TTL of the assigner's election lease: when the assigner dies,
    /// another nameserver takes over after at most about this plus
    /// `election_check_interval_ms` (see docs/adr/0009). etcd rounds it up
    /// to whole seconds. Default 3000.
    pub election_lease_ttl_ms: u64,
    /// How often the assigner renews its election lease and the other
    /// nameservers check whether the role is free; also the margin by which
    /// an assigner that cannot renew steps down before its lease could
    /// expire. At most a third of `election_lease_ttl_ms`. Default 500.
    pub election_check_interval_ms: u64,
    /// Upper bound on balancing moves per reconcile round (orphaned
    /// partitions are always reassigned). A round also moves at most one
    /// partition of each topic. Default 4.
    pub max_moves_per_reconcile: u32,
    /// Least time between two reconcile rounds that move partitions between
    /// live brokers, so a broker that returns or joins takes its share back
    /// gradually (at most one partition per topic and
    /// `max_moves_per_reconcile` in all per interval); orphaned partitions
    /// are reassigned in every round regardless. 0 = no spacing. Default
    /// 5000.
    pub balance_interval_ms: u64,
    /// Partitions of the internal `__consumer_offsets` topic, created at
    /// startup when missing. Default 8.
    pub offsets_partitions: u32,
    /// Partitions of the internal `__transaction_state` topic (ADR 0016
    /// §2.1: the transaction coordinators' log), created at startup when
    /// missing. Default 8.
    pub transaction_log_partitions: u32,
    /// Largest number of compares, and of puts or deletes, put into one
    /// metadata transaction (etcd's `--max-txn-ops` defaults to 128 and
    /// refuses larger ones): the assigner's batches of owner changes and
    /// the deletion of a topic's keys are split into transactions of at
    /// most this many. Default 128.
    pub max_transaction_operations: u32,
    /// Upper bound on segments deleted by one `DeleteSegments`. Default 100.
    pub max_segments_per_delete: u32,
    /// How often `WatchRoutes` re-reads routes when nothing woke it
    /// earlier (owner and topic changes wake it at once, ADR 0014).
    /// Default 500.
    pub watch_routes_interval_ms: u64,
    /// Upper bound on concurrently open `WatchRoutes` streams. Default 1024.
    pub max_route_watches: u32,
    /// Upper bound on concurrently open `WatchAssignments` streams (one per
    /// broker session; ADR 0014). 0 = refused (brokers then learn their
    /// assignments from heartbeats only). Default 1024.
    pub max_assignment_watches: u32,
    /// Upper bound on retries of a lost compare-and-set (segment id
    /// counter). Default 16.
    pub max_cas_retries: u32,
    /// Upper bound on subscriptions of one topic; `CreateSubscription`
    /// beyond it is refused (INVALID_ARGUMENT). Exact under concurrency: the
    /// count and the write are one transaction (conditional on the topic's
    /// subscription guard). 0 = no subscriptions may be created. Default
    /// 1000.
    pub max_subscriptions_per_topic: u32,
    /// gRPC message size limit, both directions. Default 16777216.
    pub max_grpc_message_bytes: usize,
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
    pub topic_defaults: TopicDefaults,
    /// `[metrics]`: the Prometheus endpoint (off unless `listen_address`
    /// is set) and the label cardinality bound.
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for NameServerConfig {
    fn default() -> Self {
        Self {
            node_id: "nameserver-1".to_string(),
            listen_address: "127.0.0.1:7400".to_string(),
            advertised_address: None,
            metadata: MetadataConfig::default(),
            lease_ttl_ms: 5_000,
            heartbeat_interval_ms: 250,
            session_timeout_ms: 1_500,
            session_check_interval_ms: 50,
            load_update_interval_ms: 5_000,
            reconcile_interval_ms: 1_000,
            election_lease_ttl_ms: 3_000,
            election_check_interval_ms: 500,
            max_moves_per_reconcile: 4,
            balance_interval_ms: 5_000,
            offsets_partitions: 8,
            transaction_log_partitions: 8,
            max_transaction_operations: 128,
            max_segments_per_delete: 100,
            watch_routes_interval_ms: 500,
            max_route_watches: 1024,
            max_assignment_watches: 1024,
            max_cas_retries: 16,
            max_subscriptions_per_topic: 1_000,
            max_grpc_message_bytes: limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES,
            connections: ConnectionsConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            quotas: QuotasConfig::default(),
            topic_defaults: TopicDefaults::default(),
            metrics: MetricsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl NameServerConfig {
    /// Defaults, then `path` (must exist when given), then environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        sluice_service::load_config(path)
    }
}

impl ServiceConfig for NameServerConfig {
    const ENV_PREFIX: &'static str = "SLUICE_NAMESERVER_";

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

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/nameserver.toml` states each numeric key's range as loading
    /// enforces it (`SLUICE_UPDATE_CONFIG_DOCS=1` rewrites the file).
    #[test]
    fn example_file_states_every_range() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nameserver.toml");
        let ranges = crate::config_ranges::ranges(&NameServerConfig::default());
        if let Err(error) = sluice_service::check_example_config(&path, &ranges) {
            panic!("{error}");
        }
    }

    #[test]
    fn example_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nameserver.toml");
        let loaded = NameServerConfig::load(Some(&path)).expect("config/nameserver.toml loads");
        assert_eq!(loaded, NameServerConfig::default());
    }

    #[test]
    fn embedded_backend_parses() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("ns.toml");
        std::fs::write(
            &path,
            "[metadata]\nbackend = \"embedded\"\ndata_dir = \"/tmp/x\"\n",
        )
        .expect("write config");
        let loaded = NameServerConfig::load(Some(&path)).expect("loads");
        assert_eq!(loaded.metadata.backend, MetadataBackend::Embedded);
        assert_eq!(loaded.metadata.data_dir, Some(PathBuf::from("/tmp/x")));
    }

    /// Every numeric key at 0 and at TOML's largest integer (i64::MAX):
    /// the maximum is refused naming the key (out of range, or too large
    /// for the field), 0 only where it has a meaning of its own.
    #[test]
    fn every_numeric_key_at_its_extremes() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("ns.toml");
        for range in crate::config_ranges::ranges(&NameServerConfig::default()) {
            let (section, key) = match range.key.trim_start_matches('[').split_once("] ") {
                Some((section, key)) => (format!("[{section}]\n"), key.to_string()),
                None => (String::new(), range.key.clone()),
            };
            for value in [0, i64::MAX] {
                std::fs::write(&path, format!("{section}{key} = {value}\n")).expect("write");
                let loaded = NameServerConfig::load(Some(&path));
                let accepted = (value == 0 && range.zero_means.is_some())
                    || (range.min..=range.max).contains(&(value as u64));
                match (&loaded, accepted) {
                    (Ok(_), true) => {}
                    (Err(error), false) => {
                        assert!(error.to_string().contains(&key), "{key} = {value}: {error}")
                    }
                    _ => panic!("{key} = {value}: {loaded:?}"),
                }
            }
        }
    }

    /// The `[metadata]` TLS rules (`metadata_security.rs`) run at load.
    #[test]
    fn etcd_tls_settings_are_checked_at_load() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("ns.toml");
        std::fs::write(
            &path,
            "[metadata]\nendpoints = [\"https://127.0.0.1:2379\"]\n",
        )
        .expect("write config");
        let error = NameServerConfig::load(Some(&path)).expect_err("no CA");
        assert!(error.to_string().contains("tls_ca_file"), "{error}");
        std::fs::write(
            &path,
            "[metadata]\nendpoints = [\"https://127.0.0.1:2379\"]\ntls_ca_file = \"/tls/ca.pem\"\n\
             tls_cert_file = \"/tls/node.pem\"\ntls_key_file = \"/tls/node.key\"\n",
        )
        .expect("write config");
        let loaded = NameServerConfig::load(Some(&path)).expect("mutual TLS loads");
        assert_eq!(
            loaded.metadata.tls_key_file,
            Some(PathBuf::from("/tls/node.key"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("ns.toml");
        std::fs::write(&path, "lease_ttl = 5\n").expect("write config");
        let error = NameServerConfig::load(Some(&path)).expect_err("an unknown key");
        assert!(error.to_string().contains("lease_ttl"), "{error}");
        // In a section too.
        std::fs::write(&path, "[metadata]\nbackend_kind = \"etcd\"\n").expect("write config");
        let error = NameServerConfig::load(Some(&path)).expect_err("an unknown key");
        assert!(error.to_string().contains("backend_kind"), "{error}");
    }
}
