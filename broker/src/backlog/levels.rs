//! The backlog rules, pure (ADR 0012): a topic's and a subscription's
//! quotas, the pressure level they give, a cursor's backlog, drain
//! estimates and the rate window they come from.

use super::*;

/// A topic's backlog quotas, defaults filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// 0: no quota of that kind.
    pub bytes: u64,
    pub messages: u64,
    pub age_ms: u64,
    pub warn_ratio_percent: u32,
    pub policy: BacklogPolicy,
    pub hold_timeout_ms: u64,
}

impl Quota {
    pub fn of(config: &TopicConfig) -> Self {
        Self {
            bytes: config.backlog_quota_bytes,
            messages: config.backlog_quota_messages,
            age_ms: config.backlog_quota_age_ms,
            warn_ratio_percent: match config.backlog_warn_ratio_percent {
                0 => DEFAULT_WARN_RATIO_PERCENT,
                ratio => ratio.min(100),
            },
            policy: match config.backlog_policy() {
                BacklogPolicy::Unspecified => BacklogPolicy::Hold,
                policy => policy,
            },
            hold_timeout_ms: match config.backlog_hold_timeout_ms {
                0 => DEFAULT_HOLD_TIMEOUT_MS,
                timeout => timeout,
            },
        }
    }

    /// The quota of `subscription`: its own non-zero quotas and its policy
    /// (unless UNSPECIFIED) replace the topic's.
    pub fn for_subscription(&self, subscription: &Subscription) -> Self {
        let own = |value: u64, topic: u64| if value > 0 { value } else { topic };
        Self {
            bytes: own(subscription.backlog_quota_bytes, self.bytes),
            messages: own(subscription.backlog_quota_messages, self.messages),
            age_ms: own(subscription.backlog_quota_age_ms, self.age_ms),
            policy: match subscription.backlog_policy() {
                BacklogPolicy::Unspecified => self.policy,
                policy => policy,
            },
            ..*self
        }
    }

    pub fn any(&self) -> bool {
        self.bytes > 0 || self.messages > 0 || self.age_ms > 0
    }

    /// The warning line of a quota of `limit` (at most `limit`).
    pub(super) fn warn_line(&self, limit: u64) -> u64 {
        (u128::from(limit) * u128::from(self.warn_ratio_percent) / 100) as u64
    }

    /// What eviction leaves of a quota of `limit`: its warning line, and
    /// below the limit itself (so the level leaves LIMIT).
    pub(super) fn keep_line(&self, limit: u64) -> u64 {
        self.warn_line(limit).min(limit.saturating_sub(1))
    }
}

/// How one backlog stands against the quota: the level and which quota
/// decided it (the worst one).
pub fn level_of(
    quota: &Quota,
    messages: u64,
    bytes: u64,
    age_ms: u64,
) -> (PressureLevel, Option<&'static str>) {
    let mut worst = (PressureLevel::Ok, None);
    for (limit, value, name) in [
        (quota.messages, messages, "messages"),
        (quota.bytes, bytes, "bytes"),
        (quota.age_ms, age_ms, "age"),
    ] {
        if limit == 0 {
            continue;
        }
        let level = if value >= limit {
            PressureLevel::Limit
        } else if value >= quota.warn_line(limit) {
            PressureLevel::Warn
        } else {
            PressureLevel::Ok
        };
        if level > worst.0 {
            worst = (level, Some(name));
        }
    }
    worst
}

/// Messages at or above the mark-delete offset and below
/// `high_watermark` that are not acknowledged.
pub fn backlog_of_cursor(acked: &AckedRanges, high_watermark: u64) -> u64 {
    let mark = acked.mark_delete();
    if high_watermark <= mark {
        return 0;
    }
    let acknowledged: u64 = acked
        .ranges()
        .map(|(start, end)| end.min(high_watermark).saturating_sub(start))
        .sum();
    (high_watermark - mark).saturating_sub(acknowledged)
}

/// Time to work through `backlog` messages at `rate_per_sec`; None when
/// nothing drains.
pub fn estimated_drain_ms(backlog: u64, rate_per_sec: f64) -> Option<u64> {
    if backlog == 0 {
        return Some(0);
    }
    if rate_per_sec <= 0.0 || !rate_per_sec.is_finite() {
        return None;
    }
    let milliseconds = backlog as f64 / rate_per_sec * 1000.0;
    Some(if milliseconds >= u64::MAX as f64 {
        u64::MAX
    } else {
        milliseconds.ceil() as u64
    })
}

/// Samples of (time ms, handled messages, high watermark) over a sliding
/// window; rates are the change between its oldest and newest sample.
#[derive(Debug, Default, Clone)]
pub struct RateWindow {
    samples: VecDeque<(u64, u64, u64)>,
}

impl RateWindow {
    pub fn push(&mut self, at_ms: u64, handled: u64, high_watermark: u64, window_ms: u64) {
        if let Some(&(last_at, last_handled, _)) = self.samples.back() {
            if at_ms < last_at || handled < last_handled {
                // A clock step or a cursor moving back (a subscription
                // recreated, a takeover restoring an older commit): start over.
                self.samples.clear();
            }
        }
        self.samples.push_back((at_ms, handled, high_watermark));
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(first_at, _, _)| at_ms.saturating_sub(*first_at) > window_ms)
        {
            self.samples.pop_front();
        }
    }

    /// (drain, incoming) in messages per second; None until two samples
    /// at different times.
    pub fn rates(&self) -> Option<(f64, f64)> {
        let (first_at, first_handled, first_high) = *self.samples.front()?;
        let (last_at, last_handled, last_high) = *self.samples.back()?;
        if last_at <= first_at {
            return None;
        }
        let seconds = (last_at - first_at) as f64 / 1000.0;
        Some((
            last_handled.saturating_sub(first_handled) as f64 / seconds,
            last_high.saturating_sub(first_high) as f64 / seconds,
        ))
    }
}

/// The partition's pressure: what produce answers report, and at LIMIT
/// what producers are subject to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPressure {
    pub reported: Pressure,
    /// At LIMIT: what producers are subject to (REJECT if a subscription at
    /// its limit rejects, else HOLD if one holds); EVICT or UNSPECIFIED
    /// leave producers alone.
    pub policy: BacklogPolicy,
}

impl Default for PartitionPressure {
    fn default() -> Self {
        Self {
            reported: Pressure::default(),
            policy: BacklogPolicy::Unspecified,
        }
    }
}

impl PartitionPressure {
    /// At a limit whose policy is `policy`.
    pub fn limits_with(&self, policy: BacklogPolicy) -> bool {
        self.reported.level == PressureLevel::Limit && self.policy == policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(messages: u64, bytes: u64, age_ms: u64) -> Quota {
        Quota {
            bytes,
            messages,
            age_ms,
            warn_ratio_percent: 80,
            policy: BacklogPolicy::Reject,
            hold_timeout_ms: 1000,
        }
    }

    #[test]
    fn levels_follow_the_warning_line_and_the_quota() {
        let quota = quota(100, 0, 0);
        assert_eq!(level_of(&quota, 0, 0, 0), (PressureLevel::Ok, None));
        assert_eq!(level_of(&quota, 79, 0, 0), (PressureLevel::Ok, None));
        assert_eq!(
            level_of(&quota, 80, 0, 0),
            (PressureLevel::Warn, Some("messages"))
        );
        assert_eq!(
            level_of(&quota, 100, 0, 0),
            (PressureLevel::Limit, Some("messages"))
        );
        // Kinds without a quota never count, however large.
        assert_eq!(
            level_of(&quota, 10, u64::MAX, u64::MAX).0,
            PressureLevel::Ok
        );
    }

    #[test]
    fn the_worst_quota_decides() {
        let quota = quota(100, 1000, 60_000);
        assert_eq!(
            level_of(&quota, 85, 2000, 1000),
            (PressureLevel::Limit, Some("bytes"))
        );
        assert_eq!(
            level_of(&quota, 10, 10, 59_000),
            (PressureLevel::Warn, Some("age"))
        );
    }

    #[test]
    fn defaults_fill_a_bare_topic_config() {
        let quota = Quota::of(&TopicConfig {
            backlog_quota_messages: 5,
            ..TopicConfig::default()
        });
        assert_eq!(quota.warn_ratio_percent, 80);
        assert_eq!(quota.policy, BacklogPolicy::Hold);
        assert_eq!(quota.hold_timeout_ms, DEFAULT_HOLD_TIMEOUT_MS);
        assert!(quota.any());
        assert!(!Quota::of(&TopicConfig::default()).any());
    }

    #[test]
    fn a_subscriptions_own_quotas_replace_the_topics() {
        let topic = quota(100, 1000, 0);
        let own = topic.for_subscription(&Subscription {
            backlog_quota_messages: 10,
            backlog_policy: BacklogPolicy::Evict as i32,
            ..Subscription::default()
        });
        assert_eq!((own.messages, own.bytes, own.age_ms), (10, 1000, 0));
        assert_eq!(own.policy, BacklogPolicy::Evict);
        assert_eq!(own.warn_ratio_percent, 80);
        let inherited = topic.for_subscription(&Subscription::default());
        assert_eq!(inherited, topic);
    }

    #[test]
    fn eviction_keeps_below_the_limit_even_at_a_full_warning_ratio() {
        let mut full = quota(100, 0, 0);
        full.warn_ratio_percent = 100;
        assert_eq!(full.keep_line(100), 99);
        assert_eq!(quota(100, 0, 0).keep_line(100), 80);
    }

    #[test]
    fn backlog_skips_acknowledged_ranges_and_ends_at_the_high_watermark() {
        let mut acked = AckedRanges::new(10);
        acked.insert_range(15, 20);
        acked.insert_range(30, 40);
        // [10, 35): 25 offsets, of which 15..20 and 30..35 acknowledged.
        assert_eq!(backlog_of_cursor(&acked, 35), 15);
        assert_eq!(backlog_of_cursor(&acked, 50), 50 - 10 - 5 - 10);
        assert_eq!(backlog_of_cursor(&acked, 5), 0);
    }

    #[test]
    fn drain_estimate_is_backlog_over_rate_and_unknown_without_progress() {
        assert_eq!(estimated_drain_ms(0, 0.0), Some(0));
        assert_eq!(estimated_drain_ms(100, 0.0), None);
        assert_eq!(estimated_drain_ms(100, 50.0), Some(2000));
        assert_eq!(estimated_drain_ms(1, 3.0), Some(334));
    }

    #[test]
    fn rates_come_from_the_window_edges() {
        let mut window = RateWindow::default();
        assert_eq!(window.rates(), None);
        window.push(1000, 0, 100, 10_000);
        assert_eq!(window.rates(), None);
        window.push(2000, 50, 300, 10_000);
        assert_eq!(window.rates(), Some((50.0, 200.0)));
        // Samples older than the window are dropped.
        window.push(20_000, 50, 300, 10_000);
        assert_eq!(window.rates(), None);
        window.push(22_000, 150, 300, 10_000);
        assert_eq!(window.rates(), Some((50.0, 0.0)));
        // A cursor moving back starts afresh instead of a negative rate.
        window.push(23_000, 10, 300, 10_000);
        assert_eq!(window.rates(), None);
    }
}
