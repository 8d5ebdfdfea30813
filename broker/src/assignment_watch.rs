//! Follows `AssignmentWatch.WatchAssignments` for the current session
//! (ADR 0014): every message wakes the heartbeat loop, which heartbeats at
//! once and applies the answer's assignment list. A broken stream is opened
//! again (on the nameserver the clients currently use) after
//! [`REWATCH_BACKOFF_MS`]; a nameserver without the service ends the
//! follower (heartbeats then bring assignments as before).

use crate::Shared;
use sluice_proto::v1::assignment_watch_client::AssignmentWatchClient;
use sluice_proto::v1::WatchAssignmentsRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Pause before opening the stream again after it broke or failed.
pub const REWATCH_BACKOFF_MS: u64 = 200;

/// Runs until aborted (the session ended) or the nameserver does not know
/// the service.
pub async fn follow(shared: Arc<Shared>, session_id: u64, wake: Arc<Notify>) {
    loop {
        match open(&shared, session_id).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(_)) => wake.notify_one(),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "assignment watch broke");
                        break;
                    }
                }
            },
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!("the nameserver does not push assignments; heartbeats bring them");
                return;
            }
            Err(status) => tracing::debug!(%status, "cannot watch assignments yet"),
        }
        tokio::time::sleep(Duration::from_millis(REWATCH_BACKOFF_MS)).await;
    }
}

async fn open(
    shared: &Shared,
    session_id: u64,
) -> Result<tonic::Streaming<sluice_proto::v1::AssignmentsChanged>, tonic::Status> {
    let channel = shared
        .clients
        .nameserver_channel()
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut client = AssignmentWatchClient::new(channel);
    let request = WatchAssignmentsRequest {
        node_id: shared.config.cluster.node_id.clone(),
        session_id,
    };
    Ok(client.watch_assignments(request).await?.into_inner())
}
