//! Backlog pressure reported by brokers in produce acknowledgements (ADR
//! 0012): every acknowledgement says how close the partition's backlog (what
//! its slowest subscription has not acknowledged) is to the topic's quota.
//! The producer keeps the latest per partition with counters (read them
//! with [`Producer::pressure`](crate::Producer::pressure) and
//! [`Producer::pressure_metrics`](crate::Producer::pressure_metrics)) and
//! calls the application's [`PressureListener`] when a partition's level
//! changes.

use crate::cluster::TopicPartition;
use crate::fast_hash::FastHashMap;
pub use sluice_proto::v1::PressureLevel;
pub use sluice_proto::Pressure;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A partition's pressure level changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PressureEvent {
    /// The partition's topic.
    pub topic: String,
    /// The partition whose level changed.
    pub partition: u32,
    /// Its level before this acknowledgement.
    pub previous: PressureLevel,
    /// Its pressure as of this acknowledgement (the new level and the
    /// backlog against the quota).
    pub pressure: Pressure,
}

/// Called (on the producer's task: keep it short, hand work elsewhere)
/// whenever a partition's pressure level changes. A panic in it is caught
/// and logged.
#[derive(Clone)]
pub struct PressureListener(pub Arc<dyn Fn(PressureEvent) + Send + Sync>);

impl PressureListener {
    /// A listener calling `listener` for every level change.
    pub fn new(listener: impl Fn(PressureEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(listener))
    }
}

impl fmt::Debug for PressureListener {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PressureListener(..)")
    }
}

/// Counters of acknowledgements by level, since the producer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PressureMetrics {
    /// Acknowledgements at level OK.
    pub acknowledgements_ok: u64,
    /// Acknowledgements at level WARN.
    pub acknowledgements_warn: u64,
    /// Acknowledgements at level LIMIT.
    pub acknowledgements_limit: u64,
    /// Level changes reported to the listener (or that would have been).
    pub level_changes: u64,
    /// Partitions whose latest level is WARN.
    pub partitions_warn: u64,
    /// Partitions whose latest level is LIMIT.
    pub partitions_limit: u64,
}

/// Most partitions whose latest pressure is remembered; beyond it the
/// table starts over (levels are reported again on their next change).
const MAX_TRACKED_PARTITIONS: usize = 100_000;

#[derive(Default)]
struct State {
    latest: FastHashMap<TopicPartition, Pressure>,
    metrics: PressureMetrics,
}

/// The latest pressure per partition, shared by the producer's handle and
/// its dispatcher.
#[derive(Default)]
pub(crate) struct PressureTracker {
    state: Mutex<State>,
}

impl PressureTracker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an acknowledgement's pressure; calls `listener` when the
    /// partition's level changed (the first answer counts as a change only
    /// when it is not OK).
    pub fn observe(
        &self,
        partition: &TopicPartition,
        pressure: Pressure,
        listener: Option<&PressureListener>,
    ) {
        let event = {
            let mut state = self.state();
            match pressure.level {
                PressureLevel::Ok => state.metrics.acknowledgements_ok += 1,
                PressureLevel::Warn => state.metrics.acknowledgements_warn += 1,
                PressureLevel::Limit => state.metrics.acknowledgements_limit += 1,
            }
            if state.latest.len() >= MAX_TRACKED_PARTITIONS && !state.latest.contains_key(partition)
            {
                state.latest.clear();
            }
            let previous = state
                .latest
                .insert(partition.clone(), pressure)
                .map_or(PressureLevel::Ok, |previous| previous.level);
            if previous == pressure.level {
                None
            } else {
                state.metrics.level_changes += 1;
                Some(PressureEvent {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    previous,
                    pressure,
                })
            }
        };
        if let (Some(event), Some(listener)) = (event, listener) {
            let listener = listener.0.clone();
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener(event))).is_err() {
                tracing::error!("the producer's pressure listener panicked");
            }
        }
    }

    pub fn latest(&self, partition: &TopicPartition) -> Option<Pressure> {
        self.state().latest.get(partition).copied()
    }

    pub fn metrics(&self) -> PressureMetrics {
        let state = self.state();
        let mut metrics = state.metrics;
        metrics.partitions_warn = state
            .latest
            .values()
            .filter(|pressure| pressure.level == PressureLevel::Warn)
            .count() as u64;
        metrics.partitions_limit = state
            .latest
            .values()
            .filter(|pressure| pressure.level == PressureLevel::Limit)
            .count() as u64;
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(level: PressureLevel, backlog_messages: u64) -> Pressure {
        Pressure {
            level,
            backlog_messages,
            backlog_bytes: backlog_messages * 10,
            estimated_drain_ms: None,
        }
    }

    #[test]
    fn the_listener_hears_level_changes_only() {
        let tracker = PressureTracker::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        let listener = PressureListener::new(move |event: PressureEvent| {
            sink.lock()
                .expect("test lock")
                .push((event.previous, event.pressure.level));
        });
        let partition = TopicPartition::new("orders", 1);
        for (level, backlog) in [
            (PressureLevel::Ok, 1),
            (PressureLevel::Ok, 2),
            (PressureLevel::Warn, 80),
            (PressureLevel::Warn, 85),
            (PressureLevel::Limit, 100),
            (PressureLevel::Ok, 3),
        ] {
            tracker.observe(&partition, at(level, backlog), Some(&listener));
        }
        assert_eq!(
            *heard.lock().expect("test lock"),
            vec![
                (PressureLevel::Ok, PressureLevel::Warn),
                (PressureLevel::Warn, PressureLevel::Limit),
                (PressureLevel::Limit, PressureLevel::Ok),
            ]
        );
        assert_eq!(tracker.latest(&partition), Some(at(PressureLevel::Ok, 3)));
        let metrics = tracker.metrics();
        assert_eq!(metrics.acknowledgements_ok, 3);
        assert_eq!(metrics.acknowledgements_warn, 2);
        assert_eq!(metrics.acknowledgements_limit, 1);
        assert_eq!(metrics.level_changes, 3);
        assert_eq!(metrics.partitions_warn + metrics.partitions_limit, 0);
    }

    #[test]
    fn a_panicking_listener_does_not_break_the_producer() {
        let tracker = PressureTracker::default();
        let listener = PressureListener::new(|_| panic!("application bug"));
        let partition = TopicPartition::new("orders", 0);
        tracker.observe(&partition, at(PressureLevel::Limit, 5), Some(&listener));
        assert_eq!(tracker.metrics().partitions_limit, 1);
    }
}
