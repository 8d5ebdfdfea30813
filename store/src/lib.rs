//! `sluice-store`: a storage node holding segments (append-only sequences
//! of record batches) behind the `Store` gRPC service.
//!
//! - [`storage`]: the engine (journal with group commit, segment files,
//!   indexes, checkpoints, crash recovery), usable without gRPC.
//! - [`service`]: the `Store` gRPC service over the engine.
//! - [`registration`]: registration and heartbeats with the nameserver.
//! - [`run`]: the whole node.

pub mod config;
mod config_ranges;
pub mod error;
pub mod fault;
pub mod journal;
mod journal_file;
mod journal_spares;
pub mod journal_use;
pub mod message_index;
mod metrics;
pub mod segment;
pub mod segment_meta;
pub mod storage;

pub use config::StoreConfig;
pub use error::StoreError;
pub use storage::{NewSegment, ReadOutcome, RecoveryReport, Storage, StorageOptions};
pub mod registration;
pub mod service;

use sluice_proto::v1::store_server::StoreServer;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Directory under `data_dir` holding the message lookup indexes of
/// sealed segments (ADR 0013).
const MESSAGE_INDEX_DIR: &str = "message-index";
/// Room left in a gRPC message for the fields around the batches.
const READ_ENVELOPE_BYTES: usize = 64 * 1024;

/// Runs a store node: opens (and recovers) the storage, serves the `Store`
/// service on `listener`, registers with the nameserver in the background,
/// and on `shutdown` stops accepting, drains in-flight appends,
/// checkpoints and deregisters.
/// Serves its metrics on `[metrics] listen_address` when set.
pub async fn run(
    config: StoreConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    let registry = sluice_telemetry::metrics::MetricsRegistry::new();
    let _endpoint = sluice_service::start_metrics_endpoint(&config.metrics, &registry)
        .await
        .map_err(StoreError::InvalidArgument)?;
    run_with_metrics(config, listener, shutdown, registry).await
}

/// [`run`], with the store's series registered in `registry` (which the
/// caller serves, e.g. `sluice dev`) and no endpoint of its own.
pub async fn run_with_metrics(
    config: StoreConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    registry: sluice_telemetry::metrics::MetricsRegistry,
) -> Result<(), StoreError> {
    let local_address = listener
        .local_addr()
        .map_err(|error| StoreError::io("read the listener address", error))?;
    // A read answer is at most max(max_read_bytes, one batch) plus a small
    // envelope; it must fit the gRPC message limit.
    let largest_read_bytes = config.max_read_bytes.max(config.max_batch_bytes) as usize;
    if largest_read_bytes + READ_ENVELOPE_BYTES > config.max_grpc_message_bytes {
        return Err(StoreError::InvalidArgument(format!(
            "max_read_bytes/max_batch_bytes ({largest_read_bytes}) plus {READ_ENVELOPE_BYTES} \
             bytes of envelope exceed max_grpc_message_bytes ({})",
            config.max_grpc_message_bytes
        )));
    }
    let authorization = sluice_service::AuthorizationLayer::new(&config.auth)
        .map_err(StoreError::InvalidArgument)?;
    let limits = sluice_service::ServerLimits::new(&config.connections)
        .with_authorization(authorization.clone())
        .with_quotas(sluice_service::Quotas::for_server(
            &config.quotas,
            &config.auth,
        ));
    let incoming = limits
        .incoming_with_tls(listener, &config.tls)
        .map_err(|error| StoreError::InvalidArgument(error.to_string()))?;
    // Before the file budget is derived from it (done by the service's
    // `main` already, but not in `sluice dev`); a refusal is logged.
    let _ = sluice_service::raise_open_file_limit();
    let data_dir = config.data_dir.clone();
    let options = config.storage_options();
    let (storage, report) = tokio::task::spawn_blocking(move || Storage::open(&data_dir, options))
        .await
        .map_err(|error| StoreError::Failed(format!("storage open task failed: {error}")))??;
    if !report.is_clean() {
        tracing::warn!(?report, "recovery found damage; see the report");
    }
    metrics::register(&registry, &storage, config.data_dir.clone());
    limits.register_metrics(&registry, "sluice_store");
    let message_indexes = std::sync::Arc::new(message_index::MessageIndexes::with_directory(
        config.message_index_limits(),
        config.data_dir.join(MESSAGE_INDEX_DIR),
    ));
    let orphan_indexes = message_indexes.remove_orphans(&storage);
    if orphan_indexes > 0 {
        tracing::info!(
            orphan_indexes,
            "removed message index files of segments no longer held"
        );
    }
    let (stop_sender, stop_receiver) = watch::channel(false);
    if config.auth.enabled {
        let nameservers = config.nameservers.clone();
        let peer_tls = sluice_service::PeerTls::from_config(&config.tls)
            .map_err(|error| StoreError::InvalidArgument(error.to_string()))?;
        let timeout = Duration::from_millis(config.nameserver_request_timeout_ms.max(1));
        tokio::spawn(sluice_service::run_acl_refresh(
            authorization,
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
    let service = service::StoreService::new(
        storage.clone(),
        service::AppendStreamLimits {
            max_in_flight: config.append_stream_max_in_flight,
            max_in_flight_bytes: config.append_stream_max_in_flight_bytes,
        },
        stop_receiver.clone(),
    )
    .with_message_indexes(message_indexes);
    let server = StoreServer::new(service)
        .max_decoding_message_size(config.max_grpc_message_bytes)
        .max_encoding_message_size(config.max_grpc_message_bytes);
    // grpc.health.v1 for orchestrators (the compose healthcheck runs
    // `sluice health`): SERVING once recovery is done (it is, here),
    // NOT_SERVING once shutdown starts.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<StoreServer<service::StoreService>>()
        .await;
    let health_service = health_service
        .max_decoding_message_size(config.max_grpc_message_bytes)
        .max_encoding_message_size(config.max_grpc_message_bytes);
    let advertised_address = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| local_address.to_string());
    let registration = tokio::spawn(registration::run(
        config.clone(),
        storage.clone(),
        advertised_address,
        stop_receiver.clone(),
    ));
    let mut serve_stop = stop_receiver.clone();
    let serve = limits
        .grpc_server()
        .add_service(server)
        .add_service(health_service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = serve_stop.wait_for(|stopping| *stopping).await;
        });
    tokio::pin!(serve);
    tracing::info!(address = %local_address, node_id = %config.node_id, "store serving");
    let drain_timeout = Duration::from_millis(config.shutdown_drain_timeout_ms);
    let served = tokio::select! {
        result = &mut serve => result,
        () = shutdown => {
            tracing::info!("shutting down: draining in-flight requests");
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health_reporter
                .set_not_serving::<StoreServer<service::StoreService>>()
                .await;
            let _ = stop_sender.send(true);
            match tokio::time::timeout(drain_timeout, &mut serve).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("drain timed out; closing with requests still open");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_sender.send(true);
    if let Err(error) = storage.close().await {
        tracing::error!(%error, "final checkpoint failed; recovery will replay the journal");
    }
    if tokio::time::timeout(drain_timeout, registration)
        .await
        .is_err()
    {
        tracing::warn!("deregistration did not finish in time");
    }
    served.map_err(|error| StoreError::Serve {
        address: local_address.to_string(),
        reason: error.to_string(),
    })
}
