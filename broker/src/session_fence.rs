//! When the broker must stop serving (ADR 0014): before any nameserver can
//! end its session, so before anyone else can own its partitions.
//!
//! A nameserver ends a session `session_timeout` after the last heartbeat
//! it *received*; a heartbeat is received after it was *sent*. So the
//! broker may serve until `sent_at(last successful heartbeat) + timeout -
//! margin`, the margin covering clock-rate differences: with both
//! monotonic clocks within a rate error ρ of real time, the broker stops
//! (in real time) by `(timeout - margin) / (1 - ρ)` after sending and the
//! nameserver ends the session no earlier than `timeout / (1 + ρ)` after
//! receiving, which is later whenever `margin > timeout · 2ρ / (1 + ρ)`:
//! a 20 % margin holds for ρ up to 11 % (NTP slews clocks by at most
//! 0.05 %). [`ServingLease`] is the cheap check every produce and fetch
//! makes, so a broker resumed after SIGSTOP refuses what sits in its
//! socket buffers before its heartbeat loop even runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Smallest accepted `[cluster] session_fence_margin_percent`.
pub const MIN_MARGIN_PERCENT: u32 = 10;
/// Largest accepted `[cluster] session_fence_margin_percent`.
pub const MAX_MARGIN_PERCENT: u32 = 50;
/// One heartbeat attempt may take this share of the session timeout before
/// the broker tries the next nameserver, so several fit before the fence.
const ATTEMPT_SHARE_DIVISOR: u32 = 4;
/// Shortest heartbeat attempt.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// The session's timings as the nameserver announced them at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTerms {
    /// How long the nameserver waits for a heartbeat before ending the
    /// session.
    pub timeout: Duration,
    /// How much earlier the broker stops serving.
    pub margin: Duration,
}

impl SessionTerms {
    /// From the registration answer: `session_timeout_ms` (0 from older
    /// nameservers, which then end sessions only by the lease) or the lease.
    pub fn new(session_timeout_ms: u64, lease_ttl_ms: u64, margin_percent: u32) -> Self {
        let timeout_ms = if session_timeout_ms == 0 {
            lease_ttl_ms
        } else {
            session_timeout_ms
        };
        let timeout = Duration::from_millis(timeout_ms.max(1));
        let percent = margin_percent.clamp(MIN_MARGIN_PERCENT, MAX_MARGIN_PERCENT);
        Self {
            timeout,
            margin: timeout * percent / 100,
        }
    }

    /// Until when a heartbeat sent at `sent_at` and answered with success
    /// lets the broker serve.
    pub fn serving_until(&self, sent_at: Instant) -> Instant {
        sent_at + self.timeout.saturating_sub(self.margin)
    }

    /// When to give up on a heartbeat attempt sent at `sent_at` (and try
    /// the next nameserver): after a share of the timeout, and no later
    /// than the fence, so the loop notices the fence on time.
    pub fn attempt_deadline(&self, sent_at: Instant, serving_until: Option<Instant>) -> Instant {
        let longest = sent_at + (self.timeout / ATTEMPT_SHARE_DIVISOR).max(MIN_ATTEMPT);
        match serving_until {
            Some(until) if until > sent_at => longest.min(until),
            _ => longest,
        }
    }
}

/// "Serving until" as one atomic: milliseconds since `origin`, 0 when not
/// serving. Checked by every request that reads or writes a partition.
#[derive(Debug)]
pub struct ServingLease {
    origin: Instant,
    until_ms: AtomicU64,
}

impl Default for ServingLease {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl ServingLease {
    /// Serve until `until` (a later heartbeat moves it).
    pub fn serve_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.origin).as_millis();
        self.until_ms.store(
            u64::try_from(ms).unwrap_or(u64::MAX).max(1),
            Ordering::Release,
        );
    }

    /// Stop serving now.
    pub fn stop(&self) {
        self.until_ms.store(0, Ordering::Release);
    }

    pub fn is_serving(&self) -> bool {
        self.is_serving_at(Instant::now())
    }

    pub fn is_serving_at(&self, now: Instant) -> bool {
        let until = self.until_ms.load(Ordering::Acquire);
        let elapsed = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX);
        until != 0 && elapsed < until
    }
}

#[cfg(test)]
mod tests;
