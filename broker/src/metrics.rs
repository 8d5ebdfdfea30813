//! The broker's Prometheus series (`sluice_broker_…`). Counters on the
//! produce and fetch paths are per topic and looked up once per partition
//! handle ([`BrokerMetrics::topic`] at spawn), so recording is atomic
//! adds only; everything else is read from the broker's state when
//! scraped.

use crate::Shared;
use sluice_telemetry::metrics::{
    AtomicHistogram, Counter, Family, GaugeFn, LabelledFn, Labels, MetricsConfig, MetricsRegistry,
    TopicLabels,
};
use std::sync::{Arc, Weak};

type TopicLabel = Vec<(&'static str, String)>;

/// One topic's produce and fetch counters, and the broker's produce
/// latency histogram; clones share them.
#[derive(Debug, Clone)]
pub struct TopicSeries {
    pub bytes_in: Counter,
    pub records_in: Counter,
    pub bytes_out: Counter,
    pub records_out: Counter,
    pub produce_latency: AtomicHistogram,
}

impl Default for TopicSeries {
    fn default() -> Self {
        Self {
            bytes_in: Counter::default(),
            records_in: Counter::default(),
            bytes_out: Counter::default(),
            records_out: Counter::default(),
            produce_latency: AtomicHistogram::latency_seconds(),
        }
    }
}

impl TopicSeries {
    /// Counts an acknowledged produce request of `bytes` and `records`
    /// that reached its partition at `started`: three atomic adds and a
    /// histogram observation, no lock, no allocation.
    pub fn count_produced(&self, bytes: u64, records: u64, started: std::time::Instant) {
        self.bytes_in.inc_by(bytes);
        self.records_in.inc_by(records);
        self.produce_latency.observe_duration(started.elapsed());
    }

    /// Counts a fetch's answered bytes and records (one header read per
    /// batch; a batch whose header does not parse ends the record count).
    pub fn count_fetched(&self, batches: &[u8]) {
        if batches.is_empty() {
            return;
        }
        let records: u64 = sluice_proto::batch::BatchIter::new(batches)
            .map_while(Result::ok)
            .map(|(_, header, _)| u64::from(header.record_count))
            .sum();
        self.bytes_out.inc_by(batches.len() as u64);
        self.records_out.inc_by(records);
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct BrokerMetrics {
    topics: TopicLabels,
    max_label_values: usize,
    bytes_in: Family<TopicLabel, Counter>,
    records_in: Family<TopicLabel, Counter>,
    bytes_out: Family<TopicLabel, Counter>,
    records_out: Family<TopicLabel, Counter>,
    /// From a produce request's arrival at its partition to its answer
    /// (quorum durable), per request.
    pub produce_latency: AtomicHistogram,
    /// Time to read a fetch's data (long-poll waits excluded), per read.
    pub fetch_latency: AtomicHistogram,
}

impl BrokerMetrics {
    pub fn new(config: &MetricsConfig) -> Self {
        Self {
            topics: TopicLabels::new(config.max_label_values()),
            max_label_values: config.max_label_values(),
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            produce_latency: AtomicHistogram::latency_seconds(),
            fetch_latency: AtomicHistogram::latency_seconds(),
        }
    }

    /// The counters of `topic` (or of `<other>` beyond the label bound);
    /// called once per partition handle.
    pub fn topic(&self, topic: &str) -> TopicSeries {
        let label: TopicLabel = vec![("topic", self.topics.label(topic).to_string())];
        TopicSeries {
            bytes_in: self.bytes_in.get_or_create(&label).clone(),
            records_in: self.records_in.get_or_create(&label).clone(),
            bytes_out: self.bytes_out.get_or_create(&label).clone(),
            records_out: self.records_out.get_or_create(&label).clone(),
            produce_latency: self.produce_latency.clone(),
        }
    }

    /// Registers every broker series; those read at scrape time hold
    /// `shared` weakly (a stopped broker's read as empty).
    pub fn register(&self, registry: &MetricsRegistry, shared: &Arc<Shared>) {
        registry.register(
            "sluice_broker_bytes_in",
            "Record batch bytes produced and acknowledged, per topic",
            self.bytes_in.clone(),
        );
        registry.register(
            "sluice_broker_records_in",
            "Records produced and acknowledged, per topic",
            self.records_in.clone(),
        );
        registry.register(
            "sluice_broker_bytes_out",
            "Record batch bytes answered to fetches, per topic",
            self.bytes_out.clone(),
        );
        registry.register(
            "sluice_broker_records_out",
            "Records answered to fetches, per topic",
            self.records_out.clone(),
        );
        registry.register(
            "sluice_broker_produce_latency_seconds",
            "Produce request latency at the broker: arrival at the partition to the quorum-durable answer",
            self.produce_latency.clone(),
        );
        registry.register(
            "sluice_broker_fetch_latency_seconds",
            "Fetch read latency (tail cache or stores), long-poll waits excluded",
            self.fetch_latency.clone(),
        );
        self.register_partitions(registry, shared);
        self.register_lag_seconds(registry, shared);
        self.register_subscriptions(registry, shared);
        let weak = Arc::downgrade(shared);
        registry.register(
            "sluice_broker_group_lag_records",
            "Consumer-group lag in records per group and topic, for groups coordinated here (refreshed every 10 s)",
            LabelledFn::gauges(self.max_label_values, move || {
                let Some(shared) = weak.upgrade() else {
                    return Vec::new();
                };
                shared
                    .coordinator
                    .lag_by_group_and_topic()
                    .into_iter()
                    .map(|((group, topic), lag)| {
                        (vec![("group", group), ("topic", topic)], lag as f64)
                    })
                    .collect()
            }),
        );
    }

    fn register_lag_seconds(&self, registry: &MetricsRegistry, shared: &Arc<Shared>) {
        let weak = Arc::downgrade(shared);
        registry.register(
            "sluice_broker_group_lag_seconds",
            "Age of the oldest record a group has not committed, per group and topic, on partitions this broker owns (refreshed every 10 s)",
            LabelledFn::gauges(self.max_label_values, move || {
                let Some(shared) = weak.upgrade() else {
                    return Vec::new();
                };
                shared
                    .coordinator
                    .lag_seconds_by_group_and_topic()
                    .into_iter()
                    .map(|((group, topic), age)| (vec![("group", group), ("topic", topic)], age))
                    .collect()
            }),
        );
    }

    fn register_partitions(&self, registry: &MetricsRegistry, shared: &Arc<Shared>) {
        let read = |weak: Weak<Shared>, read: fn(&Shared) -> f64| {
            GaugeFn::new(move || weak.upgrade().map_or(0.0, |shared| read(&shared)))
        };
        registry.register(
            "sluice_broker_partitions_owned",
            "Partitions this broker owns",
            read(Arc::downgrade(shared), |shared| {
                shared.partition_count() as f64
            }),
        );
        registry.register(
            "sluice_broker_offline_partitions",
            "Owned partitions that are offline (cannot be recovered without an operator)",
            read(Arc::downgrade(shared), |shared| {
                shared
                    .partitions()
                    .iter()
                    .filter(|partition| partition.status().offline.is_some())
                    .count() as f64
            }),
        );
        registry.register(
            "sluice_broker_repairs_in_progress",
            "Segment re-replications running",
            read(Arc::downgrade(shared), |shared| {
                f64::from(
                    shared
                        .repair
                        .in_progress
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
            }),
        );
        registry.register(
            "sluice_broker_takeovers_running",
            "Partition takeovers running (at most [replication] max_concurrent_takeovers)",
            read(Arc::downgrade(shared), |shared| {
                shared.takeovers.running() as f64
            }),
        );
        registry.register(
            "sluice_broker_takeovers_waiting",
            "Partition takeovers waiting for a turn",
            read(Arc::downgrade(shared), |shared| {
                shared.takeovers.waiting() as f64
            }),
        );
        registry.register(
            "sluice_broker_live_stores",
            "Stores with a live session, as of the last heartbeat",
            read(Arc::downgrade(shared), |shared| shared.live_stores() as f64),
        );
    }

    fn register_subscriptions(&self, registry: &MetricsRegistry, shared: &Arc<Shared>) {
        type Pick = fn(&crate::backlog::SubscriptionSample) -> f64;
        let families: [(&str, &str, bool, Pick); 6] = [
            (
                "sluice_broker_subscription_backlog_messages",
                "Messages not acknowledged by the subscription, per topic and subscription",
                false,
                |sample| sample.backlog_messages as f64,
            ),
            (
                "sluice_broker_subscription_oldest_age_seconds",
                "Age of the oldest unacknowledged message",
                false,
                |sample| sample.oldest_age_ms as f64 / 1000.0,
            ),
            (
                "sluice_broker_subscription_in_flight",
                "Messages delivered and not yet acknowledged",
                false,
                |sample| sample.in_flight as f64,
            ),
            (
                "sluice_broker_subscription_redeliveries",
                "Messages delivered again (since each partition's dispatcher started here)",
                true,
                |sample| sample.redelivered as f64,
            ),
            (
                "sluice_broker_subscription_dead_letters",
                "Messages moved to the dead-letter topic (since each partition's dispatcher started here)",
                true,
                |sample| sample.dead_lettered as f64,
            ),
            (
                "sluice_broker_subscription_backlog_pressure_level",
                "Worst backlog pressure level over the topic's partitions: 0 OK, 1 WARN, 2 LIMIT",
                false,
                |sample| f64::from(sample.level),
            ),
        ];
        for (name, help, counter, pick) in families {
            let weak = Arc::downgrade(shared);
            let read = move || subscription_series(&weak, pick, name.ends_with("_level"));
            let family = if counter {
                LabelledFn::counters(self.max_label_values, read)
            } else {
                LabelledFn::gauges(self.max_label_values, read)
            };
            registry.register(name, help, family);
        }
    }
}

/// One series per (topic, subscription): summed over partitions, or the
/// highest for a level.
fn subscription_series(
    shared: &Weak<Shared>,
    pick: fn(&crate::backlog::SubscriptionSample) -> f64,
    highest: bool,
) -> Vec<(Labels, f64)> {
    let Some(shared) = shared.upgrade() else {
        return Vec::new();
    };
    let mut series: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for sample in shared.backlog.samples() {
        let value = pick(&sample);
        let entry = series
            .entry((sample.topic, sample.subscription))
            .or_insert(if highest { f64::MIN } else { 0.0 });
        *entry = if highest {
            entry.max(value)
        } else {
            *entry + value
        };
    }
    series
        .into_iter()
        .map(|((topic, subscription), value)| {
            (
                vec![("topic", topic), ("subscription", subscription)],
                value,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produced_requests_count_into_the_topic_and_the_broker_histogram() {
        let metrics = BrokerMetrics::new(&MetricsConfig::default());
        let orders = metrics.topic("orders");
        orders.count_produced(100, 3, std::time::Instant::now());
        metrics
            .topic("clicks")
            .count_produced(10, 1, std::time::Instant::now());
        assert_eq!(orders.bytes_in.get(), 100);
        assert_eq!(orders.records_in.get(), 3);
        assert_eq!(metrics.produce_latency.count(), 2);
    }

    #[test]
    fn fetched_bytes_and_records_are_counted_up_to_a_garbled_batch() {
        let series = TopicSeries::default();
        let mut batches = sluice_proto::test_util::stored_batch(0, &["a", "b", "c"]);
        batches.extend(sluice_proto::test_util::stored_batch(3, &["d"]));
        series.count_fetched(&batches);
        assert_eq!(series.records_out.get(), 4);
        assert_eq!(series.bytes_out.get(), batches.len() as u64);
        // Garbage after whole batches: its bytes count, no records.
        let mut garbled = sluice_proto::test_util::stored_batch(4, &["e"]);
        garbled.extend_from_slice(&[0xff; 7]);
        series.count_fetched(&garbled);
        assert_eq!(series.records_out.get(), 5);
        series.count_fetched(&[]);
        assert_eq!(
            series.bytes_out.get(),
            (batches.len() + garbled.len()) as u64
        );
    }

    #[test]
    fn topics_beyond_the_bound_share_the_other_series() {
        let metrics = BrokerMetrics::new(&MetricsConfig {
            max_label_values: 1,
            ..MetricsConfig::default()
        });
        let orders = metrics.topic("orders");
        let again = metrics.topic("orders");
        let clicks = metrics.topic("clicks");
        let views = metrics.topic("views");
        orders.bytes_in.inc_by(10);
        again.bytes_in.inc_by(5);
        clicks.bytes_in.inc_by(1);
        views.bytes_in.inc_by(2);
        let registry = MetricsRegistry::new();
        registry.register("sluice_broker_bytes_in", "", metrics.bytes_in.clone());
        let text = registry.encode().expect("encodes");
        let value = |labels| {
            sluice_telemetry::metrics::sample_value(&text, "sluice_broker_bytes_in_total", labels)
        };
        assert_eq!(value("topic=\"orders\""), Some(15.0), "{text}");
        assert_eq!(value("topic=\"<other>\""), Some(3.0), "{text}");
        assert_eq!(value("topic=\"clicks\""), None, "{text}");
    }
}
