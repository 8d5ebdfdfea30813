//! Rates from the numbers the pages poll: a topic's records in per second
//! (from the sum of its high watermarks) and a group's records consumed
//! per second (from the sum of its committed offsets), each from the
//! previous sample of the same series to this one. A group's drain
//! estimate is its lag over its consume rate.
//!
//! Between samples at least [`MIN_SAMPLE_GAP_MS`] apart the rate is
//! replaced; closer samples keep the last rate (two tabs polling at once
//! do not make noise). A counter that went down (a deleted and recreated
//! topic, an offset reset) restarts the series. At most
//! [`MAX_TRACKED_SERIES`] series are kept; the least recently sampled is
//! forgotten beyond it. A pure state machine: time is passed in.

use std::collections::HashMap;

/// Series remembered at most.
pub const MAX_TRACKED_SERIES: usize = 4_096;
/// Samples closer than this keep the previous rate.
pub const MIN_SAMPLE_GAP_MS: u64 = 1_000;

/// What a series counts: a topic's records written or a group's consumed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Series {
    TopicRecords(String),
    GroupConsumed(String),
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    value: u64,
    at_ms: u64,
    /// Records per second between the two latest samples far enough apart.
    rate: Option<f64>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RateTracker {
    series: HashMap<Series, Sample>,
}

impl RateTracker {
    /// Records `value` of `series` at `now_ms` and answers its rate per
    /// second, `None` until two samples far enough apart were seen.
    pub fn observe(&mut self, series: Series, value: u64, now_ms: u64) -> Option<f64> {
        let fresh = Sample {
            value,
            at_ms: now_ms,
            rate: None,
        };
        let Some(last) = self.series.get_mut(&series) else {
            self.make_room();
            self.series.insert(series, fresh);
            return None;
        };
        if value < last.value || now_ms < last.at_ms {
            *last = fresh; // restarted (or the clock went back)
            return None;
        }
        let gap_ms = now_ms - last.at_ms;
        if gap_ms < MIN_SAMPLE_GAP_MS {
            return last.rate;
        }
        let rate = (value - last.value) as f64 * 1_000.0 / gap_ms as f64;
        *last = Sample {
            value,
            at_ms: now_ms,
            rate: Some(rate),
        };
        Some(rate)
    }

    fn make_room(&mut self) {
        while self.series.len() >= MAX_TRACKED_SERIES {
            let oldest = self
                .series
                .iter()
                .min_by_key(|(_, sample)| sample.at_ms)
                .map(|(series, _)| series.clone());
            match oldest {
                Some(series) => self.series.remove(&series),
                None => return,
            };
        }
    }

    /// Series held now.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when no series is held.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// How long `lag` records take to consume at `rate` per second: `None`
/// when nothing is being consumed (never drains at this rate) or the rate
/// is unknown; 0 when there is no lag.
pub fn drain_estimate_ms(lag: u64, rate: Option<f64>) -> Option<u64> {
    if lag == 0 {
        return Some(0);
    }
    let rate = rate.filter(|rate| rate.is_finite() && *rate > 0.0)?;
    let ms = lag as f64 * 1_000.0 / rate;
    Some(if ms >= u64::MAX as f64 {
        u64::MAX
    } else {
        ms as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Series {
        Series::TopicRecords(name.into())
    }

    #[test]
    fn a_rate_needs_two_samples_far_enough_apart() {
        let mut rates = RateTracker::default();
        assert_eq!(rates.observe(topic("t"), 100, 10_000), None);
        assert_eq!(rates.observe(topic("t"), 150, 10_500), None, "too close");
        assert_eq!(rates.observe(topic("t"), 300, 12_000), Some(100.0));
        assert_eq!(rates.observe(topic("t"), 999, 12_100), Some(100.0), "kept");
        assert_eq!(
            rates.observe(topic("t"), 200, 13_000),
            None,
            "went down: restart"
        );
        assert_eq!(rates.observe(topic("t"), 300, 15_000), Some(50.0));
        assert_eq!(rates.observe(topic("t"), 300, 16_000), Some(0.0), "idle");
        let group = Series::GroupConsumed("t".into());
        assert_eq!(rates.observe(group, 5, 15_000), None, "another series");
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut rates = RateTracker::default();
        rates.observe(topic("t"), 0, 0);
        let rate = rates.observe(topic("t"), u64::MAX, u64::MAX).unwrap();
        assert!(rate.is_finite() && rate >= 0.0);
        assert_eq!(rates.observe(topic("t"), u64::MAX, 1), None, "clock back");
    }

    #[test]
    fn the_least_recently_sampled_series_is_forgotten_first() {
        let mut rates = RateTracker::default();
        for index in 0..MAX_TRACKED_SERIES as u64 {
            rates.observe(topic(&index.to_string()), 0, 1_000 + index);
        }
        rates.observe(topic("0"), 10, 5_000_000); // refreshed: now the newest
        rates.observe(topic("new"), 0, 5_000_001);
        assert_eq!(rates.len(), MAX_TRACKED_SERIES);
        assert!(rates.observe(topic("0"), 20, 5_002_000).is_some(), "kept");
        assert_eq!(rates.observe(topic("1"), 1, 5_003_000), None, "forgotten");
    }

    #[test]
    fn drains_are_estimated_only_while_consuming() {
        assert_eq!(drain_estimate_ms(0, None), Some(0));
        assert_eq!(drain_estimate_ms(100, Some(50.0)), Some(2_000));
        assert_eq!(drain_estimate_ms(100, Some(0.0)), None);
        assert_eq!(drain_estimate_ms(100, None), None);
        assert_eq!(drain_estimate_ms(100, Some(f64::NAN)), None);
        assert_eq!(drain_estimate_ms(u64::MAX, Some(1e-9)), Some(u64::MAX));
    }
}
