//! Prometheus metrics: one registry per process ([`MetricsRegistry`]), the
//! HTTP endpoint that serves it (`server.rs`, `GET /metrics`, its own
//! port: `[metrics] listen_address`), an atomic histogram for hot paths
//! (`histogram.rs`), gauges read at scrape time (`gauge_fn.rs`), process
//! series (`process.rs`) and the cardinality rule for per-topic labels
//! (`topic_labels.rs`). Each service registers its own series, named
//! `sluice_<service>_…`.

mod gauge_fn;
mod histogram;
pub mod process;
mod server;
mod topic_labels;

pub use gauge_fn::{bound_series, CounterFn, GaugeFn, LabelledFn, Labels};
pub use histogram::{AtomicHistogram, COUNT_BUCKETS, LATENCY_SECONDS_BUCKETS};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use server::{serve, CONTENT_TYPE, MAX_CONNECTIONS};
pub use topic_labels::{TopicLabels, OTHER_TOPICS_LABEL};

use prometheus_client::registry::{Metric, Registry};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Default of `[metrics] max_label_values`.
pub const DEFAULT_MAX_LABEL_VALUES: u32 = 100;
/// Largest `[metrics] max_label_values`.
pub const MAX_LABEL_VALUES: u32 = 10_000;

/// `[metrics]`, in every service config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP endpoint serving `GET /metrics`; empty:
    /// no endpoint (the default).
    pub listen_address: String,
    /// Cardinality bound: per-topic counters label the first this many
    /// topics by name and the rest `topic="<other>"`; a family computed
    /// at scrape time (per subscription, per group) writes at most this
    /// many series and sums the rest into one `<other>` series.
    pub max_label_values: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen_address: String::new(),
            max_label_values: DEFAULT_MAX_LABEL_VALUES,
        }
    }
}

impl MetricsConfig {
    /// Whether an endpoint is configured.
    pub fn enabled(&self) -> bool {
        !self.listen_address.trim().is_empty()
    }

    /// [`Self::max_label_values`] as a usize.
    pub fn max_label_values(&self) -> usize {
        usize::try_from(self.max_label_values).unwrap_or(usize::MAX)
    }
}

/// The process's registry; clones share it. Series are registered at
/// start-up (a lock per registration) and encoded per scrape (a lock per
/// scrape); recording never takes its lock.
#[derive(Debug, Clone, Default)]
pub struct MetricsRegistry {
    inner: Arc<Mutex<Registry>>,
}

impl MetricsRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` as `name` (a counter's samples get `_total`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// The OpenMetrics text of every registered series.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.lock())?;
        Ok(text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The names a scrape of `exposition` can have samples under: each
/// `# TYPE` line's family with its type's suffixes (`_total` for
/// counters; `_bucket`, `_sum`, `_count` for histograms).
pub fn exposed_sample_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The value of the sample `name{labels}` in `exposition` (labels as
/// written, e.g. `topic="orders"`; empty for none), summed over every
/// sample whose label set contains them.
pub fn sample_value(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name || !labels.split(',').all(|label| series_labels.contains(label)) {
            continue;
        }
        if let Ok(value) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[cfg(test)]
mod tests;
