//! Registration with the nameserver: `RegisterNode`, periodic `Heartbeat`
//! with the node's load, re-registration when the session expired, capped
//! exponential backoff across every configured nameserver while none
//! answers, and `DeregisterNode` at shutdown. The store serves regardless.

use crate::config::StoreConfig;
use crate::storage::Storage;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    DeregisterNodeRequest, HeartbeatRequest, NodeKind, NodeLoad, RegisterNodeRequest,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Used when a nameserver answers with a zero heartbeat interval.
const FALLBACK_HEARTBEAT_INTERVAL_MS: u64 = 1000;
/// Shortest wait for one heartbeat answer, whatever the session timeout.
const MIN_HEARTBEAT_ATTEMPT_MS: u64 = 50;

/// Total and free bytes of the file system holding `path`.
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` is a
    // properly sized, writable statvfs struct that outlives the call.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if result != 0 {
        return None;
    }
    let fragment = stats.f_frsize as u64;
    Some((
        (stats.f_blocks as u64).saturating_mul(fragment),
        (stats.f_bavail as u64).saturating_mul(fragment),
    ))
}

fn current_load(config: &StoreConfig, storage: &Storage) -> NodeLoad {
    let (disk_total_bytes, disk_free_bytes) = disk_space(&config.data_dir).unwrap_or((0, 0));
    let fault = storage.write_fault();
    let files = storage.file_budget();
    NodeLoad {
        disk_total_bytes,
        disk_free_bytes,
        segments: storage.segment_count() as u32,
        healthy: fault.is_none(),
        detail: fault.unwrap_or_default(),
        open_segment_files: files.open_segment_files,
        max_open_segment_files: files.max_open_segment_files,
        refused_segment_file_opens: files.refused_opens,
        ..NodeLoad::default()
    }
}

async fn connect(
    config: &StoreConfig,
    address: &str,
) -> Result<NameServerClient<Channel>, SluiceError> {
    let timeout = Duration::from_millis(config.nameserver_request_timeout_ms.max(1));
    // Read at every connect: a rotated certificate is used from the next
    // reconnection on.
    let peer_tls = sluice_service::PeerTls::from_config(&config.tls)
        .map_err(|error| SluiceError::new(ErrorCode::InvalidArgument, error.to_string()))?;
    let endpoint = peer_tls
        .endpoint(address)
        .map_err(|error| {
            SluiceError::new(
                ErrorCode::InvalidArgument,
                format!("bad nameserver address {address}: {error}"),
            )
        })?
        .configure(|endpoint| endpoint.connect_timeout(timeout).timeout(timeout));
    let channel = endpoint.connect().await.map_err(|error| {
        SluiceError::new(
            ErrorCode::Unavailable,
            format!("cannot reach nameserver {address}: {error}"),
        )
    })?;
    Ok(NameServerClient::new(channel)
        .max_decoding_message_size(config.max_grpc_message_bytes)
        .max_encoding_message_size(config.max_grpc_message_bytes))
}

struct Session {
    client: NameServerClient<Channel>,
    session_id: u64,
    heartbeat_interval: Duration,
    /// Longest wait for one heartbeat's answer: a quarter of the
    /// nameserver's session timeout (ADR 0014), or the request timeout
    /// when the nameserver announces none.
    attempt_timeout: Duration,
}

async fn register(
    config: &StoreConfig,
    storage: &Storage,
    address: &str,
    nameserver: &str,
) -> Result<Session, SluiceError> {
    let mut client = connect(config, nameserver).await?;
    let response = client
        .register_node(RegisterNodeRequest {
            kind: NodeKind::Store as i32,
            node_id: config.node_id.clone(),
            address: address.to_string(),
            load: Some(current_load(config, storage)),
            rack: config.rack.clone(),
        })
        .await
        .map_err(|status| SluiceError::from_status(&status))?
        .into_inner();
    let interval_ms = if response.heartbeat_interval_ms == 0 {
        FALLBACK_HEARTBEAT_INTERVAL_MS
    } else {
        response.heartbeat_interval_ms
    };
    tracing::info!(
        nameserver,
        session_id = response.session_id,
        interval_ms,
        "registered with the nameserver"
    );
    let attempt_timeout_ms = if response.session_timeout_ms == 0 {
        config.nameserver_request_timeout_ms
    } else {
        (response.session_timeout_ms / 4).max(MIN_HEARTBEAT_ATTEMPT_MS)
    };
    Ok(Session {
        client,
        session_id: response.session_id,
        heartbeat_interval: Duration::from_millis(interval_ms),
        attempt_timeout: Duration::from_millis(attempt_timeout_ms.max(1)),
    })
}

/// Sleeps `duration` unless shutdown comes first; true if shutting down.
async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let interrupted = tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.wait_for(|stopping| *stopping) => true,
    };
    interrupted || *shutdown.borrow()
}

/// Keeps this node registered until `shutdown` turns true, then
/// deregisters.
pub async fn run(
    config: StoreConfig,
    storage: Storage,
    address: String,
    mut shutdown: watch::Receiver<bool>,
) {
    if config.nameservers.is_empty() {
        tracing::warn!("no nameserver configured; this store will not register");
        return;
    }
    let initial_backoff = Duration::from_millis(config.register_retry_initial_backoff_ms.max(1));
    let max_backoff = Duration::from_millis(
        config
            .register_retry_max_backoff_ms
            .max(config.register_retry_initial_backoff_ms.max(1)),
    );
    let mut backoff = initial_backoff;
    let mut nameserver_index = 0usize;
    let mut session: Option<Session> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let Some(current) = session.as_mut() else {
            let nameserver = &config.nameservers[nameserver_index % config.nameservers.len()];
            match register(&config, &storage, &address, nameserver).await {
                Ok(registered) => {
                    session = Some(registered);
                    backoff = initial_backoff;
                }
                Err(error) => {
                    tracing::warn!(nameserver, %error, retry_ms = backoff.as_millis() as u64, "registration failed");
                    nameserver_index += 1;
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
            continue;
        };
        if sleep_or_shutdown(current.heartbeat_interval, &mut shutdown).await {
            break;
        }
        let heartbeat = current.client.heartbeat(HeartbeatRequest {
            kind: NodeKind::Store as i32,
            node_id: config.node_id.clone(),
            session_id: current.session_id,
            load: Some(current_load(&config, &storage)),
        });
        // A hung nameserver must not cost the session (ADR 0014): give up
        // on it in time to try the next one.
        let result = match tokio::time::timeout(current.attempt_timeout, heartbeat).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "heartbeat attempt timed out",
            )),
        };
        match result {
            Ok(_) => backoff = initial_backoff,
            Err(status) => {
                let error = SluiceError::from_status(&status);
                if error.code == ErrorCode::SessionExpired {
                    tracing::warn!("nameserver session expired; registering again");
                    session = None;
                } else {
                    tracing::warn!(%error, "heartbeat failed; trying the next nameserver");
                    nameserver_index += 1;
                    let nameserver =
                        &config.nameservers[nameserver_index % config.nameservers.len()];
                    if let Ok(client) = connect(&config, nameserver).await {
                        current.client = client;
                    }
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }
    if let Some(mut current) = session {
        let result = current
            .client
            .deregister_node(DeregisterNodeRequest {
                kind: NodeKind::Store as i32,
                node_id: config.node_id.clone(),
                session_id: current.session_id,
            })
            .await;
        match result {
            Ok(_) => tracing::info!("deregistered from the nameserver"),
            Err(status) => tracing::warn!(%status, "deregistration failed"),
        }
    }
}
