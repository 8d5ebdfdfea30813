//! The quota state of every principal on one node: a [`Bucket`] per
//! (principal, kind) with a limit, created on first use. Pure: time is
//! passed in.
//!
//! Memory is bounded: principals with their own `[[quotas.principal]]`
//! entry (bounded by the config) are always tracked; others at most
//! `max_tracked_principals` at once. When that is reached, buckets idle
//! long enough to have refilled (they hold no state) are forgotten, at
//! most one sweep per window; while none is idle, new principals share one
//! overflow bucket per kind at the default limit, so a flood of
//! identities is throttled together rather than let through.
//! Principals without any limit (super users, or no limit configured)
//! cost nothing.

use super::bucket::{Bucket, Verdict};
use super::config::{QuotaLimits, QuotasConfig};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// gRPC calls.
    Requests,
    /// Bytes of produced batches.
    ProduceBytes,
    /// Bytes of fetched batches.
    FetchBytes,
}

impl QuotaKind {
    const ALL: [QuotaKind; 3] = [
        QuotaKind::Requests,
        QuotaKind::ProduceBytes,
        QuotaKind::FetchBytes,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn rate(self, limits: &QuotaLimits) -> Option<u64> {
        match self {
            QuotaKind::Requests => limits.requests_per_second,
            QuotaKind::ProduceBytes => limits.produce_bytes_per_second,
            QuotaKind::FetchBytes => limits.fetch_bytes_per_second,
        }
    }

    /// The config key of this kind's rate.
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Requests => "requests_per_second",
            QuotaKind::ProduceBytes => "produce_bytes_per_second",
            QuotaKind::FetchBytes => "fetch_bytes_per_second",
        }
    }
}

type Buckets = [Option<Bucket>; QuotaKind::ALL.len()];

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct QuotaTable {
    window_ms: u64,
    max_throttle_ms: u64,
    max_tracked: usize,
    default: QuotaLimits,
    /// Each configured principal's limits, merged with the default.
    configured: HashMap<String, QuotaLimits>,
    /// Never limited.
    exempt: HashSet<String>,
    /// Principals without an entry of their own, at most `max_tracked`.
    tracked: HashMap<String, Buckets>,
    /// Principals with an entry of their own.
    pinned: HashMap<String, Buckets>,
    overflow: Buckets,
    last_sweep: Option<Duration>,
}

impl QuotaTable {
    /// Limits from `config`; `exempt` (super users) are never limited.
    pub fn new(config: &QuotasConfig, exempt: impl IntoIterator<Item = String>) -> Self {
        let configured = config
            .principal
            .iter()
            .map(|entry| (entry.name.clone(), entry.limits().or(&config.default)))
            .collect();
        Self {
            window_ms: config.window_ms,
            max_throttle_ms: config.max_throttle_ms,
            max_tracked: usize::try_from(config.max_tracked_principals).unwrap_or(usize::MAX),
            default: config.default.clone(),
            configured,
            exempt: exempt.into_iter().collect(),
            tracked: HashMap::new(),
            pinned: HashMap::new(),
            overflow: Default::default(),
            last_sweep: None,
        }
    }

    /// `principal`'s limits (none for exempt principals).
    pub fn limits_of(&self, principal: &str) -> QuotaLimits {
        if self.exempt.contains(principal) {
            return QuotaLimits::default();
        }
        self.configured
            .get(principal)
            .unwrap_or(&self.default)
            .clone()
    }

    /// Whether `principal` has any limit of `kind` (callers may skip the
    /// byte counting otherwise).
    pub fn limits(&self, principal: &str, kind: QuotaKind) -> bool {
        self.rate(principal, kind).is_some()
    }

    fn rate(&self, principal: &str, kind: QuotaKind) -> Option<u64> {
        if self.exempt.contains(principal) {
            return None;
        }
        kind.rate(self.configured.get(principal).unwrap_or(&self.default))
    }

    /// Whether `principal` may go ahead with a request of `kind` now,
    /// without charging it.
    pub fn check(&mut self, principal: &str, kind: QuotaKind, now: Duration) -> Verdict {
        let max_throttle_ms = self.max_throttle_ms;
        match self.bucket(principal, kind, now) {
            Some(bucket) => bucket.check(now, max_throttle_ms),
            None => Verdict::Admit,
        }
    }

    /// Charges `units` of `kind` to `principal` (after admitting it).
    pub fn charge(&mut self, principal: &str, kind: QuotaKind, units: u64, now: Duration) {
        if let Some(bucket) = self.bucket(principal, kind, now) {
            bucket.charge(units, now);
        }
    }

    /// [`QuotaTable::check`], then [`QuotaTable::charge`] if admitted.
    pub fn admit(
        &mut self,
        principal: &str,
        kind: QuotaKind,
        units: u64,
        now: Duration,
    ) -> Verdict {
        let max_throttle_ms = self.max_throttle_ms;
        match self.bucket(principal, kind, now) {
            Some(bucket) => bucket.admit(units, now, max_throttle_ms),
            None => Verdict::Admit,
        }
    }

    /// Principals tracked now, configured ones included.
    pub fn tracked(&self) -> usize {
        self.tracked.len() + self.pinned.len()
    }

    fn bucket(&mut self, principal: &str, kind: QuotaKind, now: Duration) -> Option<&mut Bucket> {
        let rate = self.rate(principal, kind)?;
        let window_ms = self.window_ms;
        let new_bucket = || Bucket::new(rate, window_ms, now);
        let buckets = if self.configured.contains_key(principal) {
            self.pinned.entry(principal.to_string()).or_default()
        } else if self.tracked.contains_key(principal) || self.make_room(now) {
            self.tracked.entry(principal.to_string()).or_default()
        } else {
            &mut self.overflow
        };
        Some(buckets[kind.index()].get_or_insert_with(new_bucket))
    }

    /// Whether one more principal may be tracked, after forgetting idle
    /// ones if the table is full (at most one sweep per window).
    fn make_room(&mut self, now: Duration) -> bool {
        if self.tracked.len() < self.max_tracked {
            return true;
        }
        let window = Duration::from_millis(self.window_ms);
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_sub(last) < window)
        {
            return false;
        }
        self.last_sweep = Some(now);
        self.tracked
            .retain(|_, buckets| buckets.iter().flatten().any(|bucket| !bucket.is_idle(now)));
        self.tracked.len() < self.max_tracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::config::PrincipalQuota;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn config(max_tracked: u64) -> QuotasConfig {
        QuotasConfig {
            max_tracked_principals: max_tracked,
            default: QuotaLimits {
                requests_per_second: Some(10),
                ..QuotaLimits::default()
            },
            principal: vec![PrincipalQuota {
                name: "User:alice".into(),
                produce_bytes_per_second: Some(1000),
                ..PrincipalQuota::default()
            }],
            ..QuotasConfig::default()
        }
    }

    #[test]
    fn each_principal_has_its_own_buckets_and_super_users_none() {
        let mut table = QuotaTable::new(&config(100), ["User:node".to_string()]);
        assert_eq!(
            table.admit("User:alice", QuotaKind::ProduceBytes, 5000, ms(0)),
            Verdict::Admit
        );
        assert_eq!(
            table.check("User:alice", QuotaKind::ProduceBytes, ms(0)),
            Verdict::Throttle { wait_ms: 4000 }
        );
        // Bob has no produce limit; alice's requests come from the default.
        assert_eq!(
            table.admit("User:bob", QuotaKind::ProduceBytes, 1 << 40, ms(0)),
            Verdict::Admit
        );
        assert_eq!(
            table.check("User:bob", QuotaKind::ProduceBytes, ms(0)),
            Verdict::Admit
        );
        // A burst of 10, and the one that goes into debt.
        for _ in 0..11 {
            assert_eq!(
                table.admit("User:alice", QuotaKind::Requests, 1, ms(0)),
                Verdict::Admit
            );
        }
        assert_eq!(
            table.admit("User:alice", QuotaKind::Requests, 1, ms(0)),
            Verdict::Throttle { wait_ms: 100 }
        );
        for _ in 0..1000 {
            assert_eq!(
                table.admit("User:node", QuotaKind::Requests, 1, ms(0)),
                Verdict::Admit
            );
        }
        assert!(!table.limits("User:node", QuotaKind::Requests));
        assert!(!table.limits("User:bob", QuotaKind::FetchBytes));
    }

    #[test]
    fn a_flood_of_identities_is_bounded_and_throttled_together() {
        let mut table = QuotaTable::new(&config(100), []);
        let mut throttled = 0;
        for index in 0..100_000 {
            let name = format!("User:flood-{index}");
            if table.admit(&name, QuotaKind::Requests, 1, ms(0)) != Verdict::Admit {
                throttled += 1;
            }
        }
        assert!(table.tracked() <= 100, "{}", table.tracked());
        // 100 tracked each with a burst of 10, then one shared bucket of
        // 10 (and 1 into debt).
        assert!(throttled >= 100_000 - 100 * 10 - 10, "{throttled}");
        // The configured principal is always tracked.
        assert_eq!(
            table.admit("User:alice", QuotaKind::ProduceBytes, 1, ms(0)),
            Verdict::Admit
        );
        assert_eq!(table.tracked(), 101);
    }

    #[test]
    fn idle_principals_are_forgotten_to_make_room() {
        let mut table = QuotaTable::new(&config(2), []);
        table.admit("User:a", QuotaKind::Requests, 1, ms(0));
        table.admit("User:b", QuotaKind::Requests, 1, ms(0));
        table.admit("User:c", QuotaKind::Requests, 1, ms(0));
        assert_eq!(table.tracked(), 2, "c shares the overflow bucket");
        // After a window a and b are refilled: forgotten for d and e.
        table.admit("User:d", QuotaKind::Requests, 1, ms(1000));
        table.admit("User:e", QuotaKind::Requests, 1, ms(1000));
        assert_eq!(table.tracked(), 2);
        assert!(table.tracked.contains_key("User:d") && table.tracked.contains_key("User:e"));
    }

    #[test]
    fn a_principal_in_debt_is_not_forgotten() {
        let mut table = QuotaTable::new(&config(1), []);
        table.admit("User:a", QuotaKind::Requests, 1, ms(0));
        table.charge("User:a", QuotaKind::Requests, 100, ms(0));
        // a is still in debt after a window: it stays, b overflows.
        for now in [1000, 2000] {
            table.admit("User:b", QuotaKind::Requests, 1, ms(now));
            assert!(table.tracked.contains_key("User:a"));
        }
    }
}
