//! The nameserver's Prometheus series (`sluice_nameserver_…`): whether
//! this node is the active assigner, the ownership moves it made, and —
//! from the active assigner only, refreshed every
//! [`CLUSTER_GAUGES_INTERVAL_MS`] — the cluster's offline partitions,
//! under-replicated segments and live nodes (other nameservers report 0,
//! so `max()` over nameservers is the cluster's value).

use crate::election::Leadership;
use crate::handler::NameServerHandler;
use sluice_telemetry::metrics::{Counter, Family, Gauge, GaugeFn, MetricsRegistry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the active assigner recounts the cluster for its gauges (a
/// `ClusterStatus`: every topic's routes and segments read).
pub const CLUSTER_GAUGES_INTERVAL_MS: u64 = 10_000;

type ReasonLabel = Vec<(&'static str, &'static str)>;

/// See the module documentation.
#[derive(Debug, Default, Clone)]
pub struct NameServerMetrics {
    moves: Family<ReasonLabel, Counter>,
    offline_partitions: Gauge,
    under_replicated_segments: Gauge,
    partitions: Gauge,
    brokers: Gauge,
    stores: Gauge,
}

impl NameServerMetrics {
    pub fn register(
        &self,
        registry: &MetricsRegistry,
        leadership: watch::Receiver<Option<Leadership>>,
    ) {
        registry.register(
            "sluice_nameserver_assigner_active",
            "1 while this nameserver is the elected assigner",
            GaugeFn::new(move || {
                let current = *leadership.borrow();
                let active = current.is_some_and(|current| current.is_valid_at(Instant::now()));
                if active {
                    1.0
                } else {
                    0.0
                }
            }),
        );
        registry.register(
            "sluice_nameserver_ownership_moves",
            "Partition ownership changes written by this assigner: reason=orphan (no live owner) or balance",
            self.moves.clone(),
        );
        let gauges = [
            ("sluice_nameserver_cluster_offline_partitions", "Partitions no live broker serves or whose owner reports them offline (active assigner only)", &self.offline_partitions),
            ("sluice_nameserver_cluster_under_replicated_segments", "Closed segments with fewer live copies than their ensemble (active assigner only)", &self.under_replicated_segments),
            ("sluice_nameserver_cluster_partitions", "Partitions in the cluster (active assigner only)", &self.partitions),
            ("sluice_nameserver_cluster_brokers", "Brokers with a live session (active assigner only)", &self.brokers),
            ("sluice_nameserver_cluster_stores", "Stores with a live session (active assigner only)", &self.stores),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
    }

    /// Counts one reconcile round's changes.
    pub fn record_moves(&self, orphans: usize, balance: usize) {
        for (reason, count) in [("orphan", orphans), ("balance", balance)] {
            if count > 0 {
                self.moves
                    .get_or_create(&vec![("reason", reason)])
                    .inc_by(count as u64);
            }
        }
    }

    fn clear_cluster(&self) {
        for gauge in [
            &self.offline_partitions,
            &self.under_replicated_segments,
            &self.partitions,
            &self.brokers,
            &self.stores,
        ] {
            gauge.set(0);
        }
    }
}

/// While this nameserver is the assigner, recounts the cluster every
/// [`CLUSTER_GAUGES_INTERVAL_MS`]; otherwise reports 0.
pub async fn cluster_gauges_loop(
    handler: Arc<NameServerHandler>,
    metrics: NameServerMetrics,
    leadership: watch::Receiver<Option<Leadership>>,
    mut stopping: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(CLUSTER_GAUGES_INTERVAL_MS);
    loop {
        let current = *leadership.borrow();
        if current.is_some_and(|current| current.is_valid_at(Instant::now())) {
            match handler.do_cluster_status().await {
                Ok(status) => {
                    let count = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
                    metrics
                        .offline_partitions
                        .set(i64::from(status.offline_partitions));
                    metrics
                        .under_replicated_segments
                        .set(i64::from(status.under_replicated_segments));
                    metrics.partitions.set(i64::from(status.partitions));
                    metrics.brokers.set(count(status.brokers.len()));
                    metrics.stores.set(count(status.stores.len()));
                }
                Err(error) => {
                    tracing::debug!(%error, "cluster gauges: status unavailable; keeping the last counts")
                }
            }
        } else {
            metrics.clear_cluster();
        }
        if crate::wait_or_stop(&mut stopping, interval).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_telemetry::metrics::sample_value;

    #[test]
    fn moves_are_counted_by_reason_and_the_assigner_flag_follows_leadership() {
        let registry = MetricsRegistry::new();
        let metrics = NameServerMetrics::default();
        let (leadership, watched) = watch::channel(None);
        metrics.register(&registry, watched);
        metrics.record_moves(3, 0);
        metrics.record_moves(1, 2);
        let text = registry.encode().expect("encodes");
        let moves = |reason: &str| {
            sample_value(
                &text,
                "sluice_nameserver_ownership_moves_total",
                &format!("reason=\"{reason}\""),
            )
        };
        assert_eq!(moves("orphan"), Some(4.0), "{text}");
        assert_eq!(moves("balance"), Some(2.0), "{text}");
        assert_eq!(
            sample_value(&text, "sluice_nameserver_assigner_active", ""),
            Some(0.0)
        );
        let leader = |valid_for: Duration| {
            Some(Leadership {
                token: crate::election::ElectionToken {
                    create_revision: 1,
                    lease: 1,
                },
                valid_until: Instant::now() + valid_for,
            })
        };
        let active = || {
            sample_value(
                &registry.encode().expect("encodes"),
                "sluice_nameserver_assigner_active",
                "",
            )
        };
        leadership.send_replace(leader(Duration::from_secs(3600)));
        assert_eq!(active(), Some(1.0));
        // A leadership past its validity is not active.
        leadership.send_replace(leader(Duration::ZERO));
        assert_eq!(active(), Some(0.0));
        metrics.offline_partitions.set(5);
        metrics.clear_cluster();
        let text = registry.encode().expect("encodes");
        assert_eq!(
            sample_value(&text, "sluice_nameserver_cluster_offline_partitions", ""),
            Some(0.0)
        );
        drop(leadership);
    }
}
