//! One token bucket: a rate in units per second (bytes or requests) and a
//! burst of `window_ms` worth of that rate. Kafka's model: a request is
//! admitted while the bucket is not in debt and charged after, so one
//! large batch may take it below zero; while it is in debt the answer is
//! "throttled, wait W ms" with W = debt / rate, bounded by
//! `max_throttle_ms`. Time is passed in (a `Duration` since any fixed
//! origin the caller keeps), so the bucket is a pure state machine.
//!
//! Floating point keeps the arithmetic free of overflow at every rate up
//! to `u64::MAX` units per second; a bucket is refilled from the exact
//! time since its last update, so no time is lost to rounding.

use std::time::Duration;

/// The bucket's answer to "may this request go ahead now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// In debt: wait this many milliseconds (at least 1) and ask again.
    Throttle {
        wait_ms: u64,
    },
}

impl Verdict {
    /// The wait, or 0 when admitted.
    pub fn wait_ms(self) -> u64 {
        match self {
            Verdict::Admit => 0,
            Verdict::Throttle { wait_ms } => wait_ms,
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    rate_per_second: f64,
    /// The most the balance refills to: `rate × window`.
    burst: f64,
    /// Units that may still be spent; negative while in debt.
    balance: f64,
    updated: Duration,
}

impl Bucket {
    /// A full bucket (a new principal may use its whole burst at once).
    /// A rate of 0 is refused at config load; here it is treated as 1.
    pub fn new(rate_per_second: u64, window_ms: u64, now: Duration) -> Self {
        let rate_per_second = rate_per_second.max(1) as f64;
        let burst = (rate_per_second * window_ms.max(1) as f64 / 1000.0).max(1.0);
        Self {
            rate_per_second,
            burst,
            balance: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        // A clock that went backwards refills nothing.
        let elapsed = now.saturating_sub(self.updated).as_secs_f64();
        self.balance = (self.balance + elapsed * self.rate_per_second).min(self.burst);
        self.updated = self.updated.max(now);
    }

    /// Whether a request may go ahead now (without charging it).
    pub fn check(&mut self, now: Duration, max_throttle_ms: u64) -> Verdict {
        self.refill(now);
        if self.balance >= 0.0 {
            return Verdict::Admit;
        }
        let wait_ms = (-self.balance / self.rate_per_second * 1000.0).ceil();
        // `as` saturates a float too large for u64.
        let wait_ms = (wait_ms as u64).clamp(1, max_throttle_ms.max(1));
        Verdict::Throttle { wait_ms }
    }

    /// Takes `units` (after the request was admitted; may go into debt).
    pub fn charge(&mut self, units: u64, now: Duration) {
        self.refill(now);
        self.balance -= units as f64;
    }

    /// [`Bucket::check`], then [`Bucket::charge`] if admitted.
    pub fn admit(&mut self, units: u64, now: Duration, max_throttle_ms: u64) -> Verdict {
        let verdict = self.check(now, max_throttle_ms);
        if verdict == Verdict::Admit {
            self.charge(units, now);
        }
        verdict
    }

    /// Refilled to its burst by `now`: it holds no state worth keeping
    /// (a new bucket would answer the same).
    pub fn is_idle(&self, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.updated).as_secs_f64();
        self.balance + elapsed * self.rate_per_second >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_THROTTLE_MS: u64 = 30_000;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_new_bucket_admits_its_burst_then_throttles_for_the_debt() {
        // 1000 units/s, a 1 s window: 1000 units at once, then a debt.
        let mut bucket = Bucket::new(1000, 1000, ms(0));
        assert_eq!(bucket.admit(1500, ms(0), MAX_THROTTLE_MS), Verdict::Admit);
        // 500 in debt at 1000/s: 500 ms.
        assert_eq!(
            bucket.admit(1, ms(0), MAX_THROTTLE_MS),
            Verdict::Throttle { wait_ms: 500 }
        );
        assert_eq!(
            bucket.admit(1, ms(400), MAX_THROTTLE_MS),
            Verdict::Throttle { wait_ms: 100 }
        );
        assert_eq!(bucket.admit(1, ms(500), MAX_THROTTLE_MS), Verdict::Admit);
    }

    #[test]
    fn the_wait_is_bounded_by_max_throttle() {
        let mut bucket = Bucket::new(1, 1000, ms(0));
        bucket.charge(1_000_000, ms(0));
        assert_eq!(
            bucket.check(ms(0), MAX_THROTTLE_MS),
            Verdict::Throttle {
                wait_ms: MAX_THROTTLE_MS
            }
        );
    }

    #[test]
    fn rate_zero_is_treated_as_one_and_rate_one_works() {
        for rate in [0, 1] {
            let mut bucket = Bucket::new(rate, 1000, ms(0));
            assert_eq!(bucket.admit(1, ms(0), MAX_THROTTLE_MS), Verdict::Admit);
            bucket.charge(1, ms(0));
            assert_eq!(
                bucket.check(ms(0), MAX_THROTTLE_MS),
                Verdict::Throttle { wait_ms: 1000 }
            );
            assert_eq!(bucket.check(ms(1000), MAX_THROTTLE_MS), Verdict::Admit);
        }
    }

    #[test]
    fn the_largest_rate_never_throttles_and_never_overflows() {
        // u64::MAX units each second, for a thousand seconds.
        let mut bucket = Bucket::new(u64::MAX, 1000, ms(0));
        for second in 0..1000 {
            assert_eq!(
                bucket.admit(u64::MAX, ms(second * 1000), MAX_THROTTLE_MS),
                Verdict::Admit
            );
        }
        // Even a debt of many u64::MAX is a finite, bounded wait.
        let later = ms(1_000_000);
        for _ in 0..10 {
            bucket.charge(u64::MAX, later);
        }
        let wait = bucket.check(later, MAX_THROTTLE_MS).wait_ms();
        assert!((1..=MAX_THROTTLE_MS).contains(&wait), "{wait}");
    }

    #[test]
    fn steady_state_converges_to_the_rate() {
        // A client that sends 100-unit requests whenever admitted, asking
        // every millisecond, gets 10,000 units/s over a minute, give or
        // take the burst.
        let rate = 10_000;
        let mut bucket = Bucket::new(rate, 1000, ms(0));
        let mut admitted = 0u64;
        for now in 0..60_000 {
            if bucket.admit(100, ms(now), MAX_THROTTLE_MS) == Verdict::Admit {
                admitted += 100;
            }
        }
        let expected = rate * 60;
        let burst_and_one = rate + 100;
        assert!(
            admitted >= expected - 100 && admitted <= expected + burst_and_one,
            "admitted {admitted}, expected about {expected}"
        );
    }

    #[test]
    fn a_client_that_waits_as_told_is_admitted_at_once() {
        let mut bucket = Bucket::new(1_000_000, 1000, ms(0));
        let mut now = ms(0);
        let mut refusals = 0;
        let mut sent = 0u64;
        while sent < 5_000_000 {
            match bucket.admit(65_536, now, MAX_THROTTLE_MS) {
                Verdict::Admit => sent += 65_536,
                Verdict::Throttle { wait_ms } => {
                    refusals += 1;
                    now += ms(wait_ms);
                    assert_eq!(bucket.admit(65_536, now, MAX_THROTTLE_MS), Verdict::Admit);
                    sent += 65_536;
                }
            }
        }
        // 5 MB at 1 MB/s with a 1 MB burst: about 4 s.
        assert!(now >= ms(3_900), "{now:?}");
        assert!(refusals > 0);
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let mut bucket = Bucket::new(100, 1000, ms(0));
        bucket.charge(100, ms(0));
        assert!(!bucket.is_idle(ms(500)));
        assert!(bucket.is_idle(ms(1000)));
        // An hour idle still allows only one window's burst.
        assert_eq!(
            bucket.admit(150, ms(3_600_000), MAX_THROTTLE_MS),
            Verdict::Admit
        );
        assert_eq!(
            bucket.check(ms(3_600_000), MAX_THROTTLE_MS),
            Verdict::Throttle { wait_ms: 500 }
        );
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut bucket = Bucket::new(100, 1000, ms(10_000));
        bucket.charge(200, ms(10_000));
        assert_eq!(
            bucket.check(ms(0), MAX_THROTTLE_MS),
            Verdict::Throttle { wait_ms: 1000 }
        );
    }
}
