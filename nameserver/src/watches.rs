//! The nameserver's background loops driven by time and by the metadata
//! watch (ADR 0014):
//! - ending sessions silent for `session_timeout_ms`, every
//!   `session_check_interval_ms`;
//! - waking the reconciler as soon as a broker's node key disappears, so
//!   its partitions move at once rather than at the next round;
//! - keeping the assignment index heartbeats answer from, rebuilt when
//!   topics or owners change and at least every `reconcile_interval_ms`.
//!
//! A broken watch is set up again after [`REWATCH_BACKOFF_MS`]; the
//! periodic reconcile round and index rebuild stay as the backstop.

use crate::assignment_index::AssignmentIndex;
use crate::handler::NameServerHandler;
use crate::keys;
use crate::metadata::{WatchEvent, WatchEvents};
use sluice_proto::v1::NodeKind;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Pause before setting up a watch again after it broke or could not be
/// set up.
pub const REWATCH_BACKOFF_MS: u64 = 200;

/// Ends silent sessions until the nameserver stops.
pub async fn session_loop(handler: Arc<NameServerHandler>, mut stopping: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(
        handler.config.session_check_interval_ms,
    ));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = interval.tick() => false,
            _ = stopping.wait_for(|stopping| *stopping) => true,
        };
        if stop {
            return;
        }
        handler.end_silent_sessions().await;
    }
}

/// Whether a broker's node key was deleted (its session ended).
fn broker_left(event: &WatchEvent, brokers_prefix: &str) -> bool {
    matches!(event, WatchEvent::Delete(key) if key.starts_with(brokers_prefix))
}

/// Wakes the reconciler whenever a broker's node key disappears.
pub async fn broker_departures(
    handler: Arc<NameServerHandler>,
    mut stopping: watch::Receiver<bool>,
) {
    let prefix = keys::nodes_of_kind(NodeKind::Broker);
    loop {
        let Some(mut events) = watch_or_stop(&handler, &prefix, &mut stopping).await else {
            return;
        };
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = stopping.wait_for(|stopping| *stopping) => return,
            };
            match event {
                Some(event) if broker_left(&event, &prefix) => {
                    tracing::info!(?event, "a broker's session ended; reconciling now");
                    handler.reconcile_now.notify_one();
                }
                Some(_) => {}
                None => break,
            }
        }
        // Anything missed while the watch was down: reconcile once.
        handler.reconcile_now.notify_one();
    }
}

/// Keeps `handler.assignment_index` current until the nameserver stops.
pub async fn assignment_index_loop(
    handler: Arc<NameServerHandler>,
    mut stopping: watch::Receiver<bool>,
) {
    let refresh = Duration::from_millis(handler.config.reconcile_interval_ms);
    loop {
        let Some(mut topics) = watch_or_stop(&handler, keys::TOPICS, &mut stopping).await else {
            return;
        };
        let Some(mut owners) = watch_or_stop(&handler, keys::PARTITIONS, &mut stopping).await
        else {
            return;
        };
        loop {
            // Watches first, then the read: no change falls in between.
            rebuild_index(&handler).await;
            let open = tokio::select! {
                event = topics.recv() => event.is_some(),
                event = owners.recv() => event.is_some(),
                _ = tokio::time::sleep(refresh) => true,
                _ = stopping.wait_for(|stopping| *stopping) => return,
            };
            if !open {
                break;
            }
            // One rebuild covers every change already reported.
            let drained = drain(&mut topics) && drain(&mut owners);
            if !drained {
                break;
            }
        }
    }
}

/// Empties the channel; false if the watch broke.
fn drain(events: &mut WatchEvents) -> bool {
    loop {
        match events.try_recv() {
            Ok(_) => continue,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return true,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

async fn rebuild_index(handler: &NameServerHandler) {
    let topics = handler.store.range(keys::TOPICS).await;
    let owners = handler.store.range(keys::PARTITIONS).await;
    match (topics, owners) {
        (Ok(topics), Ok(owners)) => {
            let index = AssignmentIndex::build(&topics, &owners);
            handler.assignment_index.send_replace(Some(Arc::new(index)));
        }
        (Err(error), _) | (_, Err(error)) => {
            // Heartbeats keep the last index; the next change or refresh
            // tries again.
            tracing::warn!(%error, "cannot rebuild the assignment index");
        }
    }
}

/// Sets up a watch on `prefix`, retrying until it works; `None` when the
/// nameserver stops first.
async fn watch_or_stop(
    handler: &NameServerHandler,
    prefix: &str,
    stopping: &mut watch::Receiver<bool>,
) -> Option<WatchEvents> {
    loop {
        if *stopping.borrow() {
            return None;
        }
        match handler.store.watch_prefix(prefix).await {
            Ok(events) => return Some(events),
            Err(error) => tracing::warn!(%error, prefix, "cannot watch metadata; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(REWATCH_BACKOFF_MS)) => {}
            _ = stopping.wait_for(|stopping| *stopping) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_deleted_broker_key_wakes_the_reconciler() {
        let prefix = keys::nodes_of_kind(NodeKind::Broker);
        assert!(broker_left(
            &WatchEvent::Delete("nodes/broker/b1".into()),
            &prefix
        ));
        assert!(!broker_left(
            &WatchEvent::Put("nodes/broker/b1".into()),
            &prefix
        ));
        assert!(!broker_left(
            &WatchEvent::Delete("nodes/store/s1".into()),
            &prefix
        ));
    }
}
