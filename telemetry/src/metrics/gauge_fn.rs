//! Gauges read when scraped, from state the service keeps anyway (a
//! backlog monitor, the connection slots, the disk): nothing is recorded
//! ahead of time and a series disappears with what it measures.

use super::topic_labels::OTHER_TOPICS_LABEL;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One gauge whose value `read` returns at each scrape.
#[derive(Clone)]
pub struct GaugeFn {
    read: Arc<dyn Fn() -> f64 + Send + Sync>,
}

impl GaugeFn {
    pub fn new(read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        Self {
            read: Arc::new(read),
        }
    }
}

impl fmt::Debug for GaugeFn {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("GaugeFn")
    }
}

impl TypedMetric for GaugeFn {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for GaugeFn {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.read)())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One counter whose total `read` returns at each scrape (a total the
/// service keeps anyway, e.g. in an `AtomicU64`).
#[derive(Clone)]
pub struct CounterFn {
    read: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl CounterFn {
    pub fn new(read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            read: Arc::new(read),
        }
    }
}

impl fmt::Debug for CounterFn {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("CounterFn")
    }
}

impl TypedMetric for CounterFn {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for CounterFn {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&(self.read)(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A label set: (name, value) pairs in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

/// A family of gauges (or counters: [`LabelledFn::counters`]) whose label
/// sets and values `read` returns at each scrape. At most `max_series` series are written: beyond, the values of
/// the rest are summed into one series whose every label value is
/// [`OTHER_TOPICS_LABEL`] (label sets sorted, so the same ones win each
/// scrape).
#[derive(Clone)]
pub struct LabelledFn {
    read: Arc<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>,
    max_series: usize,
    kind: MetricType,
}

impl LabelledFn {
    /// Gauges.
    pub fn gauges(
        max_series: usize,
        read: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) -> Self {
        Self {
            read: Arc::new(read),
            max_series,
            kind: MetricType::Gauge,
        }
    }

    /// Counters (totals that only grow, except when what counts them
    /// restarts, which `rate()` handles).
    pub fn counters(
        max_series: usize,
        read: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind: MetricType::Counter,
            ..Self::gauges(max_series, read)
        }
    }
}

impl fmt::Debug for LabelledFn {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("LabelledFn")
    }
}

/// The series to write: same label sets summed, at most `max_series`
/// kept, the rest summed under [`OTHER_TOPICS_LABEL`].
pub fn bound_series(series: Vec<(Labels, f64)>, max_series: usize) -> Vec<(Labels, f64)> {
    let mut merged: BTreeMap<Labels, f64> = BTreeMap::new();
    for (labels, value) in series {
        *merged.entry(labels).or_insert(0.0) += value;
    }
    let mut kept = Vec::with_capacity(merged.len().min(max_series + 1));
    let mut other: Option<(Labels, f64)> = None;
    for (labels, value) in merged {
        if kept.len() < max_series {
            kept.push((labels, value));
            continue;
        }
        let entry = other.get_or_insert_with(|| {
            let labels = labels
                .iter()
                .map(|(name, _)| (*name, OTHER_TOPICS_LABEL.to_string()))
                .collect();
            (labels, 0.0)
        });
        entry.1 += value;
    }
    kept.extend(other);
    kept
}

impl EncodeMetric for LabelledFn {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, value) in bound_series((self.read)(), self.max_series) {
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            let mut series = encoder.encode_family(&labels)?;
            if matches!(self.kind, MetricType::Counter) {
                series.encode_counter::<NoLabelSet, _, f64>(&value, None)?;
            } else {
                series.encode_gauge(&value)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, value: f64) -> (Labels, f64) {
        (vec![("topic", name.to_string())], value)
    }

    #[test]
    fn series_beyond_the_bound_are_summed_under_other() {
        let bounded = bound_series(
            vec![
                series("c", 3.0),
                series("a", 1.0),
                series("b", 2.0),
                series("d", 4.0),
            ],
            2,
        );
        assert_eq!(
            bounded,
            vec![
                series("a", 1.0),
                series("b", 2.0),
                series(OTHER_TOPICS_LABEL, 7.0)
            ]
        );
    }

    #[test]
    fn equal_label_sets_are_summed_and_a_bound_of_zero_keeps_one_series() {
        let bounded = bound_series(vec![series("a", 1.0), series("a", 2.0)], 5);
        assert_eq!(bounded, vec![series("a", 3.0)]);
        let bounded = bound_series(vec![series("a", 1.0), series("b", 2.0)], 0);
        assert_eq!(bounded, vec![series(OTHER_TOPICS_LABEL, 3.0)]);
        assert!(bound_series(Vec::new(), 3).is_empty());
    }
}
