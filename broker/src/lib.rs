//! `sluice-broker`: the stateless serving layer of Sluice.
//!
//! A broker registers with the nameservers, takes over the partitions it is
//! assigned (sealing and closing the previous owner's open segment, opening
//! a new one on the stores), appends produced batches through one ordered
//! pipeline per partition, serves fetches from a bounded tail cache or the
//! stores, applies retention, and coordinates the consumer groups whose
//! `__consumer_offsets` partition it owns. It holds no data of its own.
//!
//! Public API: [`BrokerConfig`], [`BrokerError`] and [`run`].

mod assignment;
mod assignment_watch;
mod backlog;
mod clients;
mod closed_damage;
mod commit_check;
mod commit_record;
mod compaction;
pub mod config;
mod config_ranges;
mod coordinator;
mod decisions;
pub mod error;
mod group_lag_age;
mod idempotence;
mod internal_log;
mod lookup;
mod lost_ranges;
mod member_identity;
mod metrics;
mod ownership;
mod partition;
mod producer_ids;
mod quota_charge;
mod read_ahead;
mod read_committed;
mod recovery_plan;
mod repair;
mod replica_io;
mod retention;
mod service;
mod session_fence;
mod subscription;
mod subscription_skip;
mod tail_cache;
pub mod takeover_turns;
mod transaction;
mod txn_markers;
mod txn_verifier;

pub use config::BrokerConfig;
pub use error::BrokerError;

use clients::{nameserver_call, Clients};
use coordinator::Coordinator;
use partition::Partition;
use sluice_proto::v1::broker_server::BrokerServer;
use sluice_proto::v1::{GetRoutesRequest, TopicRoute};
use sluice_proto::ErrorCode;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tail_cache::{PartitionKey, SharedTailCache};
use tokio::sync::watch;

/// Most topics whose partition counts are cached.
const MAX_CACHED_ROUTES: usize = 10_000;

/// Everything the broker's tasks share.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub advertised_address: String,
    pub clients: Arc<Clients>,
    pub coordinator: Coordinator,
    /// The transaction coordinator of the ids whose `__transaction_state`
    /// partition is served here (ADR 0016 §2).
    pub transactions: transaction::TxnCoordinator,
    /// Becomes true when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
    partitions: RwLock<HashMap<PartitionKey, Arc<Partition>>>,
    pub tail_cache: SharedTailCache,
    /// Bytes all partitions' fetch read-aheads may hold (`[fetch] read_ahead_bytes`).
    pub read_ahead_budget: Arc<tokio::sync::Semaphore>,
    /// Turns for partition takeovers (`[replication] max_concurrent_takeovers`).
    pub takeovers: takeover_turns::TakeoverTurns,
    /// Topic → partition count (None: no such topic), and when learned.
    partition_counts: Mutex<HashMap<String, (Option<u32>, Instant)>>,
    /// Produce bytes accepted since start; the heartbeat reports the rate
    /// so the nameserver can weigh brokers by load.
    pub produced_bytes: std::sync::atomic::AtomicU64,
    /// Stores with a live lease, as of the last heartbeat.
    pub live_stores: std::sync::atomic::AtomicUsize,
    /// Counters of the segment repair task, reported in heartbeats.
    pub repair: repair::RepairProgress,
    /// Closed segments of owned partitions damaged on every copy, as
    /// repair last found them; reported in heartbeats.
    pub closed_damage: closed_damage::DamageReports,
    /// Subscription dispatchers running here (ADR 0011).
    pub subscriptions: subscription::Registry,
    /// Backlog measurements and pressure per partition (ADR 0012).
    pub backlog: backlog::Monitor,
    /// Until when the last successful heartbeat lets this broker serve
    /// (ADR 0014); past it no partition is found for any request.
    pub serving: session_fence::ServingLease,
    /// Checks that produced batches' producer ids belong to their sender
    /// (ADR 0015); its key is fetched before the first registration.
    pub producer_ids: producer_ids::ProducerIdVerifier,
    /// `[quotas]`: produce and fetch bytes per second per principal are
    /// charged here (`quota_charge.rs`); requests per second and
    /// connections by the server's layers.
    pub quotas: sluice_service::Quotas,
    /// Prometheus series (`metrics.rs`).
    pub metrics: metrics::BrokerMetrics,
    /// Verifies a producer's first transactional batch at a partition with
    /// its transaction coordinator (ADR 0016 §3.3): the coordinators when
    /// `[transactions] enabled`; otherwise no transactional batch reaches
    /// it.
    pub txn_verifier: Arc<dyn txn_verifier::TxnVerifier>,
}

impl Shared {
    pub fn live_stores(&self) -> usize {
        self.live_stores.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The partition if this broker serves it now: owned, and within the
    /// session's serving lease (a broker resumed after a freeze refuses at
    /// once, before its heartbeat loop noticed).
    pub fn partition(&self, key: &PartitionKey) -> Option<Arc<Partition>> {
        if !self.serving.is_serving() {
            return None;
        }
        self.partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn partition_count(&self) -> usize {
        self.partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn insert_partition(&self, key: PartitionKey, partition: Arc<Partition>) {
        self.partitions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key, partition);
    }

    pub fn remove_partition(&self, key: &PartitionKey) -> Option<Arc<Partition>> {
        self.partitions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key)
    }

    /// Current routes of `topics` from the nameserver.
    pub async fn routes(&self, topics: &[String]) -> Result<Vec<TopicRoute>, BrokerError> {
        Ok(nameserver_call!(
            &self.clients,
            get_routes,
            GetRoutesRequest {
                topics: topics.to_vec(),
            }
        )?
        .topics)
    }

    /// Partition counts of the existing topics among `topics`, cached for
    /// `[cluster] route_refresh_interval_ms`.
    pub async fn partition_counts(
        &self,
        topics: &[String],
    ) -> Result<BTreeMap<String, u32>, BrokerError> {
        let refresh = Duration::from_millis(self.config.cluster.route_refresh_interval_ms);
        let stale: Vec<String> = {
            let cache = self
                .partition_counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            topics
                .iter()
                .filter(|topic| {
                    cache
                        .get(*topic)
                        .is_none_or(|(_, at)| at.elapsed() > refresh)
                })
                .cloned()
                .collect()
        };
        if !stale.is_empty() {
            let routes = self.routes(&stale).await?;
            let mut cache = self
                .partition_counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if cache.len() + stale.len() > MAX_CACHED_ROUTES {
                cache.clear();
            }
            let now = Instant::now();
            for topic in &stale {
                let count = routes
                    .iter()
                    .find(|route| &route.topic == topic && route.error == ErrorCode::None as i32)
                    .map(|route| {
                        route
                            .partitions
                            .iter()
                            .map(|partition| partition.partition + 1)
                            .max()
                            .unwrap_or(0)
                    })
                    .filter(|count| *count > 0);
                cache.insert(topic.clone(), (count, now));
            }
        }
        let cache = self
            .partition_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(topics
            .iter()
            .filter_map(|topic| {
                cache
                    .get(topic)
                    .and_then(|(count, _)| *count)
                    .map(|count| (topic.clone(), count))
            })
            .collect())
    }

    /// [`Self::partition_counts`] read from the nameserver now, whatever
    /// the cache holds (a cached "no such topic" may predate its creation).
    pub async fn partition_counts_fresh(
        &self,
        topics: &[String],
    ) -> Result<BTreeMap<String, u32>, BrokerError> {
        {
            let mut cache = self
                .partition_counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for topic in topics {
                cache.remove(topic);
            }
        }
        self.partition_counts(topics).await
    }

    /// Why a partition is not served here: unknown topic, unknown
    /// partition, or someone else's.
    pub async fn not_served_error(&self, topic: &str, partition: u32) -> BrokerError {
        let not_owner = BrokerError::NotOwner {
            topic: topic.to_string(),
            partition,
        };
        match self.partition_counts(&[topic.to_string()]).await {
            Ok(counts) => match counts.get(topic) {
                None => BrokerError::UnknownTopic(topic.to_string()),
                Some(count) if partition >= *count => BrokerError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                },
                Some(_) => not_owner,
            },
            Err(error) => {
                tracing::debug!(%error, "cannot classify an unserved partition; answering NOT_OWNER");
                not_owner
            }
        }
    }
}

/// Serves the broker on `listener` until `shutdown` completes, then stops
/// serving partitions and deregisters. Serves its metrics on `[metrics]
/// listen_address` when set.
pub async fn run(
    config: BrokerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BrokerError> {
    let registry = sluice_telemetry::metrics::MetricsRegistry::new();
    let _endpoint = sluice_service::start_metrics_endpoint(&config.metrics, &registry)
        .await
        .map_err(BrokerError::InvalidArgument)?;
    run_with_metrics(config, listener, shutdown, registry).await
}

/// [`run`], with the broker's series registered in `registry` (which the
/// caller serves, e.g. `sluice dev`) and no endpoint of its own.
pub async fn run_with_metrics(
    config: BrokerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    registry: sluice_telemetry::metrics::MetricsRegistry,
) -> Result<(), BrokerError> {
    let local_address = listener
        .local_addr()
        .map_err(|error| BrokerError::Transport(format!("listener has no address: {error}")))?;
    let advertised_address = config
        .server
        .advertised_address
        .clone()
        .unwrap_or_else(|| local_address.to_string());
    let authorization = sluice_service::AuthorizationLayer::new(&config.auth)
        .map_err(BrokerError::InvalidArgument)?;
    let quotas = sluice_service::Quotas::for_server(&config.quotas, &config.auth);
    let limits = sluice_service::ServerLimits::new(&config.connections)
        .with_authorization(authorization.clone())
        .with_quotas(quotas.clone());
    let incoming = limits
        .incoming_with_tls(listener, &config.tls)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    let peer_tls = sluice_service::PeerTls::from_config(&config.tls)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    let (stop_sender, stop_receiver) = watch::channel(false);
    if config.auth.enabled {
        let nameservers = config.cluster.nameservers.clone();
        let peer_tls = peer_tls.clone();
        let timeout = Duration::from_millis(config.cluster.nameserver_request_timeout_ms);
        tokio::spawn(sluice_service::run_acl_refresh(
            authorization.clone(),
            Duration::from_millis(config.auth.acl_refresh_interval_ms),
            stop_receiver.clone(),
            move || {
                let (nameservers, peer_tls) = (nameservers.clone(), peer_tls.clone());
                async move {
                    sluice_service::read_from_nameservers(&nameservers, &peer_tls, timeout).await
                }
            },
        ));
    }
    let shared = Arc::new_cyclic(|weak| Shared {
        clients: Arc::new(Clients::new(&config, peer_tls)),
        coordinator: Coordinator::new(&config.groups),
        transactions: transaction::TxnCoordinator::new(&config.transactions),
        tail_cache: SharedTailCache::new(config.fetch.tail_cache_bytes),
        read_ahead_budget: Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(config.fetch.read_ahead_bytes)
                .unwrap_or(usize::MAX)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        takeovers: takeover_turns::TakeoverTurns::new(config.replication.max_concurrent_takeovers),
        partitions: RwLock::new(HashMap::new()),
        partition_counts: Mutex::new(HashMap::new()),
        produced_bytes: std::sync::atomic::AtomicU64::new(0),
        live_stores: std::sync::atomic::AtomicUsize::new(0),
        repair: repair::RepairProgress::default(),
        closed_damage: closed_damage::DamageReports::default(),
        subscriptions: subscription::Registry::default(),
        backlog: backlog::Monitor::default(),
        serving: session_fence::ServingLease::default(),
        producer_ids: producer_ids::ProducerIdVerifier::default(),
        quotas,
        metrics: metrics::BrokerMetrics::new(&config.metrics),
        txn_verifier: if config.transactions.enabled {
            Arc::new(transaction::verifier::CoordinatorVerifier::new(
                weak.clone(),
            ))
        } else {
            Arc::new(txn_verifier::DisabledVerifier)
        },
        shutdown: stop_receiver.clone(),
        advertised_address: advertised_address.clone(),
        config,
    });
    shared.metrics.register(&registry, &shared);
    limits.register_metrics(&registry, "sluice_broker");
    tracing::info!(node_id = %shared.config.cluster.node_id, address = %advertised_address, "broker starting");
    // Partitions keep serving until the server drained its requests, so
    // accepted appends still get their answers during shutdown.
    let (background_stop, background_stopped) = watch::channel(false);
    let ownership = tokio::spawn(ownership::run(shared.clone(), background_stopped.clone()));
    let retention = tokio::spawn(retention::run(shared.clone(), background_stopped.clone()));
    let compaction = tokio::spawn(compaction::run(shared.clone(), background_stopped.clone()));
    let backlog = tokio::spawn(backlog::run(shared.clone(), background_stopped.clone()));
    let expiry = shared.config.transactions.enabled.then(|| {
        tokio::spawn(transaction::coordinator::run_expiry(
            shared.clone(),
            background_stopped.clone(),
        ))
    });
    let repair = tokio::spawn(repair::run(shared.clone(), background_stopped));
    // grpc.health.v1 for orchestrators (the compose healthcheck runs
    // `sluice health`): SERVING from here on, NOT_SERVING once shutdown starts.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<BrokerServer<service::BrokerService>>()
        .await;
    let health_service = health_service
        .max_decoding_message_size(shared.config.server.max_grpc_message_bytes)
        .max_encoding_message_size(shared.config.server.max_grpc_message_bytes);
    let stop_on_shutdown = async move {
        shutdown.await;
        tracing::info!("broker shutting down");
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_reporter
            .set_not_serving::<BrokerServer<service::BrokerService>>()
            .await;
        stop_sender.send_replace(true);
    };
    let max_message_bytes = shared.config.server.max_grpc_message_bytes;
    let service = BrokerServer::new(service::BrokerService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    let served = limits
        .grpc_server()
        .add_service(service)
        .add_service(health_service)
        .serve_with_incoming_shutdown(incoming, stop_on_shutdown)
        .await;
    drop(stop_receiver);
    background_stop.send_replace(true);
    let _ = retention.await;
    let _ = compaction.await;
    let _ = repair.await;
    if let Some(expiry) = expiry {
        let _ = expiry.await;
    }
    let _ = backlog.await;
    let deregister_timeout = shared.clients.nameserver_timeout * 2;
    if tokio::time::timeout(deregister_timeout, ownership)
        .await
        .is_err()
    {
        tracing::warn!("deregistration did not finish in time");
        ownership::stop_all(&shared);
    }
    served.map_err(|error| BrokerError::Transport(error.to_string()))
}

/// Completes once `flag` is true (or its sender is gone). Returns no guard,
/// so it can sit in a `select!` whose other branches await.
pub(crate) async fn wait_until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
