//! A histogram recorded with atomics only: no lock and no allocation per
//! observation, so it can sit on the produce path. Buckets are fixed at
//! construction; the sum is kept in integer micro-units.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Buckets for latencies in seconds: 100 µs to 10 s.
pub const LATENCY_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for counts (entries per group commit): 1 to 4096.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Sum resolution: values are summed as `value × SUM_SCALE` in a u64.
const SUM_SCALE: f64 = 1_000_000.0;

/// Largest value added to the sum (larger ones still count in +Inf): at
/// most 10^15 micro-units an observation, so the u64 sum holds 18,000 of
/// them before it could wrap, and centuries of real latencies.
const MAX_SUMMED_VALUE: f64 = 1e9;

#[derive(Debug)]
struct Inner {
    upper_bounds: &'static [f64],
    /// One counter per bucket (not cumulative) plus one for +Inf.
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// A cloneable handle; clones record into the same buckets.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

impl AtomicHistogram {
    /// A histogram over `upper_bounds` (ascending; +Inf is implied).
    pub fn new(upper_bounds: &'static [f64]) -> Self {
        let counts = (0..=upper_bounds.len())
            .map(|_| AtomicU64::new(0))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            inner: Arc::new(Inner {
                upper_bounds,
                counts,
                sum_micros: AtomicU64::new(0),
            }),
        }
    }

    /// Latency buckets ([`LATENCY_SECONDS_BUCKETS`]).
    pub fn latency_seconds() -> Self {
        Self::new(LATENCY_SECONDS_BUCKETS)
    }

    /// Records one value. Negative and NaN values count as 0; the sum
    /// takes at most [`MAX_SUMMED_VALUE`] of one.
    pub fn observe(&self, value: f64) {
        let value = if value.is_nan() || value < 0.0 {
            0.0
        } else {
            value
        };
        let inner = &self.inner;
        let index = inner
            .upper_bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.upper_bounds.len());
        inner.counts[index].fetch_add(1, Ordering::Relaxed);
        inner.sum_micros.fetch_add(
            (value.min(MAX_SUMMED_VALUE) * SUM_SCALE) as u64,
            Ordering::Relaxed,
        );
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, duration: std::time::Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observations (micro-unit resolution).
    pub fn sum(&self) -> f64 {
        self.inner.sum_micros.load(Ordering::Relaxed) as f64 / SUM_SCALE
    }

    /// (sum, count, cumulative buckets) as the exposition wants them.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &self.inner;
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(inner.counts.len());
        for (index, count) in inner.counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
            let bound = inner
                .upper_bounds
                .get(index)
                .copied()
                .unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        (self.sum(), cumulative, buckets)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let histogram = AtomicHistogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.0, 1.5, 3.0, f64::NAN, -1.0] {
            histogram.observe(value);
        }
        let (sum, count, buckets) = histogram.snapshot();
        assert_eq!(count, 6);
        // 0.5, 1.0, NaN→0, −1→0 ≤ 1; 1.5 ≤ 2; 3 beyond.
        assert_eq!(buckets, vec![(1.0, 4), (2.0, 5), (f64::INFINITY, 6)]);
        assert!((sum - 6.0).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn clones_share_their_buckets_and_huge_values_do_not_wrap_the_sum() {
        let histogram = AtomicHistogram::latency_seconds();
        let clone = histogram.clone();
        clone.observe(f64::MAX);
        histogram.observe(f64::INFINITY);
        assert_eq!(histogram.count(), 2);
        let (sum, _, buckets) = histogram.snapshot();
        assert!((sum - 2.0 * MAX_SUMMED_VALUE).abs() < 1.0, "{sum}");
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2)));
    }
}
