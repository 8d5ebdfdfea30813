//! The Sluice nameserver: node registration with leases, topic admin,
//! partition assignment, segment metadata, routes, coordinator lookup and
//! subscription definitions,
//! all kept in a [`metadata::MetadataStore`] (etcd, or the embedded store
//! for `sluice dev`).
//!
//! Run it with [`run`] (builds the store from the config) or
//! [`run_with_store`] (an already-built store, e.g. an
//! [`metadata::EmbeddedMetadataStore`] inside `sluice dev`).

pub mod assignment;
pub mod assignment_index;
pub mod config;
mod config_ranges;
pub mod election;
pub mod error;
mod handler;
pub mod keys;
pub mod metadata;
pub mod metadata_security;
mod metrics;
mod placement;
mod service;
pub mod session_monitor;
pub mod subscription_start;
pub mod subscriptions;
mod watches;

pub use config::{MetadataBackend, NameServerConfig, TopicDefaults};
pub use error::NameServerError;
pub use handler::NameServerHandler;
pub use metadata::{EmbeddedMetadataStore, EtcdMetadataStore, MetadataStore};

use metadata::{EtcdOptions, LeaseId, MetadataError};
use sluice_proto::v1::assignment_watch_server::AssignmentWatchServer;
use sluice_proto::v1::name_server_server::NameServerServer;
use sluice_proto::v1::{NodeInfo, NodeKind};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Builds the metadata store the config asks for.
pub async fn build_store(
    config: &NameServerConfig,
) -> Result<Arc<dyn MetadataStore>, NameServerError> {
    match config.metadata.backend {
        MetadataBackend::Etcd => {
            let store = EtcdMetadataStore::connect(EtcdOptions {
                endpoints: config.metadata.endpoints.clone(),
                connect_timeout_ms: config.metadata.connect_timeout_ms,
                request_timeout_ms: config.metadata.request_timeout_ms,
                key_prefix: config.metadata.key_prefix.clone(),
                security: metadata::EtcdSecurity {
                    tls_ca_file: config.metadata.tls_ca_file.clone(),
                    tls_cert_file: config.metadata.tls_cert_file.clone(),
                    tls_key_file: config.metadata.tls_key_file.clone(),
                    tls_reload_check_interval_ms: config.metadata.tls_reload_check_interval_ms,
                    user: config.metadata.user.clone(),
                    password_file: config.metadata.password_file.clone(),
                },
            })
            .await?;
            Ok(Arc::new(store))
        }
        MetadataBackend::Embedded => {
            let data_dir = config.metadata.data_dir.clone().ok_or_else(|| {
                NameServerError::Config(
                    "metadata.backend = \"embedded\" needs metadata.data_dir".to_string(),
                )
            })?;
            Ok(EmbeddedMetadataStore::open(data_dir).await?)
        }
    }
}

/// Runs the nameserver on `listener` with the store from `config` until
/// `shutdown` completes.
/// Serves its metrics on `[metrics] listen_address` when set.
pub async fn run(
    config: NameServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NameServerError> {
    let registry = sluice_telemetry::metrics::MetricsRegistry::new();
    let _endpoint = sluice_service::start_metrics_endpoint(&config.metrics, &registry)
        .await
        .map_err(NameServerError::Config)?;
    run_with_metrics(config, listener, shutdown, registry).await
}

/// [`run`], with the nameserver's series registered in `registry` (which
/// the caller serves, e.g. `sluice dev`) and no endpoint of its own.
pub async fn run_with_metrics(
    config: NameServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    registry: sluice_telemetry::metrics::MetricsRegistry,
) -> Result<(), NameServerError> {
    // A store that authenticates to etcd waits for it; a shutdown meanwhile
    // ends the wait.
    let mut shutdown = Box::pin(shutdown);
    let store = tokio::select! {
        store = build_store(&config) => store?,
        _ = &mut shutdown => return Ok(()),
    };
    run_with_store_and_metrics(config, store, listener, shutdown, registry).await
}

/// Runs the nameserver on `listener` with an already-built store until
/// `shutdown` completes; then stops the background loops and removes its
/// own registration.
pub async fn run_with_store(
    config: NameServerConfig,
    store: Arc<dyn MetadataStore>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NameServerError> {
    let registry = sluice_telemetry::metrics::MetricsRegistry::new();
    run_with_store_and_metrics(config, store, listener, shutdown, registry).await
}

/// [`run_with_store`], with the nameserver's series registered in
/// `registry`.
pub async fn run_with_store_and_metrics(
    config: NameServerConfig,
    store: Arc<dyn MetadataStore>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    registry: sluice_telemetry::metrics::MetricsRegistry,
) -> Result<(), NameServerError> {
    if config.heartbeat_interval_ms == 0
        || config.lease_ttl_ms <= config.heartbeat_interval_ms
        || config.reconcile_interval_ms == 0
        || config.session_check_interval_ms == 0
        || config.session_timeout_ms <= config.heartbeat_interval_ms
    {
        return Err(NameServerError::Config(format!(
            "need 0 < heartbeat_interval_ms ({}) < session_timeout_ms ({}), heartbeat_interval_ms < \
             lease_ttl_ms ({}), and reconcile_interval_ms and session_check_interval_ms above 0",
            config.heartbeat_interval_ms, config.session_timeout_ms, config.lease_ttl_ms
        )));
    }
    let election_timings = election::ElectionTimings {
        lease_ttl: Duration::from_millis(config.election_lease_ttl_ms),
        check_interval: Duration::from_millis(config.election_check_interval_ms),
    };
    election_timings
        .validate()
        .map_err(NameServerError::Config)?;
    let local_address = listener.local_addr()?;
    let authorization =
        sluice_service::AuthorizationLayer::new(&config.auth).map_err(NameServerError::Config)?;
    let limits = sluice_service::ServerLimits::new(&config.connections)
        .with_authorization(authorization.clone())
        .with_quotas(sluice_service::Quotas::for_server(
            &config.quotas,
            &config.auth,
        ));
    let incoming = limits
        .incoming_with_tls(listener, &config.tls)
        .map_err(|error| NameServerError::Config(error.to_string()))?;
    let advertised_address = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| local_address.to_string());
    let (stop_sender, stopping) = watch::channel(false);
    if config.auth.enabled {
        let acls = store.clone();
        tokio::spawn(sluice_service::run_acl_refresh(
            authorization,
            Duration::from_millis(config.auth.acl_refresh_interval_ms),
            stopping.clone(),
            move || {
                let acls = acls.clone();
                async move {
                    handler::read_acls(acls.as_ref())
                        .await
                        .map_err(|error| error.to_string())
                }
            },
        ));
    }
    let handler = Arc::new(NameServerHandler::new(
        config.clone(),
        store.clone(),
        stopping.clone(),
    ));

    let (leadership_sender, leadership) = watch::channel(None);
    let became_leader = Arc::new(tokio::sync::Notify::new());
    let election = tokio::spawn(election::run_election(
        store.clone(),
        election::Candidate {
            node_id: config.node_id.clone(),
            address: advertised_address.clone(),
        },
        election_timings,
        leadership_sender,
        became_leader.clone(),
        stopping.clone(),
    ));
    let metrics = metrics::NameServerMetrics::default();
    metrics.register(&registry, leadership.clone());
    limits.register_metrics(&registry, "sluice_nameserver");
    let cluster_gauges = tokio::spawn(metrics::cluster_gauges_loop(
        handler.clone(),
        metrics.clone(),
        leadership.clone(),
        stopping.clone(),
    ));
    let reconciler = tokio::spawn(reconcile_loop(
        handler.clone(),
        leadership,
        became_leader,
        metrics,
        stopping.clone(),
    ));
    let sessions = tokio::spawn(watches::session_loop(handler.clone(), stopping.clone()));
    let departures = tokio::spawn(watches::broker_departures(
        handler.clone(),
        stopping.clone(),
    ));
    let index = tokio::spawn(watches::assignment_index_loop(
        handler.clone(),
        stopping.clone(),
    ));
    let registration = tokio::spawn(self_registration_loop(
        store.clone(),
        config.clone(),
        advertised_address.clone(),
        stopping.clone(),
    ));

    let assignment_watch = AssignmentWatchServer::from_arc(handler.clone())
        .max_decoding_message_size(config.max_grpc_message_bytes)
        .max_encoding_message_size(config.max_grpc_message_bytes);
    let service = NameServerServer::from_arc(handler)
        .max_decoding_message_size(config.max_grpc_message_bytes)
        .max_encoding_message_size(config.max_grpc_message_bytes);
    // grpc.health.v1 for orchestrators (the compose healthcheck runs
    // `sluice health`): SERVING from here on, NOT_SERVING once shutdown starts.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<NameServerServer<NameServerHandler>>()
        .await;
    let health_service = health_service
        .max_decoding_message_size(config.max_grpc_message_bytes)
        .max_encoding_message_size(config.max_grpc_message_bytes);
    tracing::info!(
        node_id = %config.node_id,
        address = %local_address,
        advertised = %advertised_address,
        backend = store.backend_name(),
        "nameserver serving"
    );
    let signal = async move {
        shutdown.await;
        tracing::info!("nameserver shutting down");
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_reporter
            .set_not_serving::<NameServerServer<NameServerHandler>>()
            .await;
        // Ends watch streams and background loops so the server can drain.
        let _ = stop_sender.send(true);
    };
    let served = limits
        .grpc_server()
        .add_service(service)
        .add_service(assignment_watch)
        .add_service(health_service)
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    for task in [
        reconciler,
        cluster_gauges,
        election,
        registration,
        sessions,
        departures,
        index,
    ] {
        if let Err(error) = task.await {
            tracing::error!(%error, "nameserver background task failed");
        }
    }
    served?;
    Ok(())
}

async fn wait_or_stop(stopping: &mut watch::Receiver<bool>, interval: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(interval) => false,
        _ = stopping.wait_for(|stopping| *stopping) => true,
    }
}

/// Creates the offsets topic when missing (any nameserver may) and, while
/// this nameserver is the elected assigner, runs reconcile rounds fenced by
/// its election token.
async fn reconcile_loop(
    handler: Arc<NameServerHandler>,
    leadership: watch::Receiver<Option<election::Leadership>>,
    became_leader: Arc<tokio::sync::Notify>,
    metrics: metrics::NameServerMetrics,
    mut stopping: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(handler.config.reconcile_interval_ms);
    let max_moves = usize::try_from(handler.config.max_moves_per_reconcile).unwrap_or(usize::MAX);
    let max_transaction_operations =
        usize::try_from(handler.config.max_transaction_operations).unwrap_or(usize::MAX);
    let mut pacing =
        assignment::BalancePacing::new(Duration::from_millis(handler.config.balance_interval_ms));
    let mut offsets_topic_ready = false;
    loop {
        if !offsets_topic_ready {
            match handler.ensure_offsets_topic().await {
                Ok(()) => offsets_topic_ready = true,
                Err(error) => {
                    tracing::warn!(%error, "cannot create the consumer offsets topic yet")
                }
            }
        }
        let current = *leadership.borrow();
        if let Some(current) = current.filter(|current| current.is_valid_at(Instant::now())) {
            let fence = current.token.fence();
            let moves = pacing.moves_allowed(Instant::now(), max_moves);
            let limits = assignment::RoundLimits {
                max_moves: moves,
                max_transaction_operations,
            };
            match assignment::reconcile_round(handler.store.as_ref(), limits, &fence).await {
                Ok(outcome) => {
                    metrics.record_moves(outcome.orphans_assigned, outcome.balance_moves);
                    pacing.record(Instant::now(), outcome.balance_moves)
                }
                Err(error) => tracing::warn!(%error, "reconcile round failed"),
            }
        }
        tokio::select! {
            stop = wait_or_stop(&mut stopping, interval) => if stop { return },
            _ = handler.reconcile_now.notified() => {}
            _ = became_leader.notified() => {}
        }
    }
}

async fn register_self(
    store: &dyn MetadataStore,
    config: &NameServerConfig,
    address: &str,
) -> Result<LeaseId, MetadataError> {
    let lease = store.grant(config.lease_ttl_ms).await?;
    let info = NodeInfo {
        kind: NodeKind::Nameserver as i32,
        node_id: config.node_id.clone(),
        address: address.to_string(),
        session_id: lease as u64,
        // A nameserver that can write its own key is serving.
        load: Some(sluice_proto::v1::NodeLoad {
            healthy: true,
            ..Default::default()
        }),
        lease_remaining_ms: 0,
        last_heartbeat_ms_ago: -1,
        rack: String::new(),
        // Written by the nameserver itself, never through RegisterNode.
        principal: String::new(),
    };
    store
        .put(
            &keys::node(NodeKind::Nameserver, &config.node_id),
            keys::encode(&info),
            Some(lease),
        )
        .await?;
    Ok(lease)
}

async fn self_registration_loop(
    store: Arc<dyn MetadataStore>,
    config: NameServerConfig,
    address: String,
    mut stopping: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(config.heartbeat_interval_ms);
    let mut session: Option<LeaseId> = None;
    loop {
        match session {
            None => match register_self(store.as_ref(), &config, &address).await {
                Ok(lease) => {
                    tracing::info!(session = lease, "nameserver registered itself");
                    session = Some(lease);
                }
                Err(error) => tracing::warn!(%error, "nameserver self-registration failed"),
            },
            Some(lease) => match store.keep_alive(lease).await {
                Ok(_) => {}
                Err(MetadataError::LeaseExpired(_)) => {
                    tracing::warn!(
                        session = lease,
                        "nameserver session expired; registering again"
                    );
                    session = None;
                    continue;
                }
                Err(error) => tracing::warn!(%error, "nameserver keep-alive failed"),
            },
        }
        if wait_or_stop(&mut stopping, interval).await {
            break;
        }
    }
    if let Some(lease) = session {
        if let Err(error) = store.revoke(lease).await {
            tracing::warn!(%error, "could not remove the nameserver registration");
        }
    }
}
