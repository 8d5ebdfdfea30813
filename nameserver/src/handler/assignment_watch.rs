//! `AssignmentWatch.WatchAssignments` (ADR 0014): tells a broker session
//! at once when its assignments change, so the new owner of a partition
//! starts taking it over without waiting for its next heartbeat. The
//! message carries no list: the broker heartbeats at once and applies the
//! heartbeat's answer, so one source (the heartbeat) orders every change.

use super::{invalid, NameServerHandler};
use crate::assignment_index::AssignmentIndex;
use crate::error::NameServerError;
use sluice_proto::names;
use sluice_proto::v1::{AssignmentsChanged, PartitionAssignment, WatchAssignmentsRequest};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Notifications buffered per stream; one pending is enough (the broker
/// heartbeats and reads the current list), so more are dropped.
const ASSIGNMENT_WATCH_CHANNEL_MESSAGES: usize = 1;

/// The stream a `WatchAssignments` call answers with.
pub(crate) type AssignmentStream = ReceiverStream<Result<AssignmentsChanged, Status>>;

/// The session's assignments in `index`, if one is loaded.
fn assignments(
    index: &watch::Receiver<Option<Arc<AssignmentIndex>>>,
    broker_id: &str,
    session: u64,
) -> Option<Vec<PartitionAssignment>> {
    let current = index.borrow().clone()?;
    Some(current.of(broker_id, session))
}

impl NameServerHandler {
    /// Starts an assignment watch: a message now, then one per change of
    /// the session's assignments. At most `max_assignment_watches` at once.
    pub(crate) async fn do_watch_assignments(
        &self,
        request: WatchAssignmentsRequest,
    ) -> Result<AssignmentStream, NameServerError> {
        names::validate_node_id(&request.node_id).map_err(|error| invalid(error.to_string()))?;
        let permit = self
            .assignment_watch_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| NameServerError::Throttled {
                what: "assignment watches",
                limit: self.config.max_assignment_watches,
            })?;
        let (sender, receiver) = mpsc::channel(ASSIGNMENT_WATCH_CHANNEL_MESSAGES);
        let mut index = self.assignment_index.subscribe();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (broker_id, session) = (request.node_id, request.session_id);
            let mut sent: Option<Vec<PartitionAssignment>> = None;
            loop {
                let now = assignments(&index, &broker_id, session);
                if now.is_some() && now != sent {
                    let partitions = now.as_ref().map_or(0, Vec::len);
                    let message = AssignmentsChanged {
                        partitions: u32::try_from(partitions).unwrap_or(u32::MAX),
                    };
                    // Full: a notification is already pending, which is
                    // all the broker needs.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = sender.try_send(Ok(message))
                    {
                        return;
                    }
                    sent = now;
                }
                let stop = tokio::select! {
                    changed = index.changed() => changed.is_err(),
                    _ = stopping.wait_for(|stopping| *stopping) => true,
                    _ = sender.closed() => true,
                };
                if stop {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(receiver))
    }
}
