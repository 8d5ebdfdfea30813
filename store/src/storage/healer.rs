//! The healer: a store recovers from a write-path failure by itself.
//!
//! Once a journal write, journal fsync, segment write or segment fsync
//! fails (a full disk, an I/O error, no file handles left), the write path
//! that saw it refuses everything (`writer.rs`): after a failed fsync the
//! kernel may have dropped the pages it could not write, so nothing that
//! path believes about its files can be trusted. Earlier versions stayed
//! that way until a restart. Now this thread notices the failure and does
//! what a restart does, in-process: it drops the failed write path,
//! recovers the directory afresh (segment scan, journal replay from the
//! last checkpoint) and starts a new write path
//! (`Inner::recover_write_path`). Reads go on meanwhile over the segments
//! as they were; writes are refused with `WritesSuspended`, a retriable
//! error that names the cause.
//!
//! Attempts are spaced by [`RetrySchedule`]: the first soon after the
//! failure, then doubling (with jitter, so stores that failed together do
//! not retry together) up to [`MAX_RETRY_DELAY_MS`]. An attempt fails
//! while the cause lasts (recovery must create and preallocate a journal
//! file and write a checkpoint), so a full disk is retried at most every
//! few seconds and writes resume within that of space being freed.

use super::Inner;
use crate::error::StoreError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Delay before the first attempt after a failure, in milliseconds.
pub(super) const FIRST_RETRY_DELAY_MS: u64 = 100;
/// Longest delay between attempts, in milliseconds.
pub(super) const MAX_RETRY_DELAY_MS: u64 = 5_000;
/// How often the healer looks at the write path, in milliseconds.
const POLL_INTERVAL_MS: u64 = 50;

/// When to attempt a recovery: pure, time passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RetrySchedule {
    /// `None` while the write path is healthy.
    next_attempt: Option<Instant>,
    /// Delay after the next failed attempt (before jitter).
    delay_ms: u64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            next_attempt: None,
            delay_ms: FIRST_RETRY_DELAY_MS,
        }
    }
}

impl RetrySchedule {
    /// Whether to attempt now, given whether the write path is failed.
    /// The first sight of a failure schedules an attempt
    /// [`FIRST_RETRY_DELAY_MS`] later; a healthy path resets the schedule.
    pub(super) fn due(&mut self, failed: bool, now: Instant) -> bool {
        if !failed {
            *self = Self::default();
            return false;
        }
        match self.next_attempt {
            None => {
                self.next_attempt = Some(now + Duration::from_millis(FIRST_RETRY_DELAY_MS));
                false
            }
            Some(at) => now >= at,
        }
    }

    /// An attempt failed at `now`: the next one waits the current delay
    /// scaled by `jitter` (in `[0.5, 1.0]`), and the delay doubles up to
    /// [`MAX_RETRY_DELAY_MS`].
    pub(super) fn failed(&mut self, now: Instant, jitter: f64) {
        let jitter = jitter.clamp(0.5, 1.0);
        let wait_ms = (self.delay_ms as f64 * jitter) as u64;
        self.next_attempt = Some(now + Duration::from_millis(wait_ms.max(1)));
        self.delay_ms = self.delay_ms.saturating_mul(2).min(MAX_RETRY_DELAY_MS);
    }

    /// An attempt succeeded: back to healthy.
    pub(super) fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// Starts the healer thread of a storage; it ends once the storage is
/// dropped or closing.
pub(super) fn start(inner: Weak<Inner>) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("sluice-healer".to_string())
        .spawn(move || run(inner))
        .map(|_| ())
        .map_err(|error| StoreError::io("start the storage healer thread", error))
}

fn run(inner: Weak<Inner>) {
    let mut schedule = RetrySchedule::default();
    loop {
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closing.load(Ordering::SeqCst) {
            return;
        }
        if !schedule.due(write_path_failed(&inner), Instant::now()) {
            continue;
        }
        attempt(&inner, &mut schedule);
    }
}

fn attempt(inner: &Arc<Inner>, schedule: &mut RetrySchedule) {
    match inner.recover_write_path() {
        Ok(report) => {
            schedule.succeeded();
            tracing::info!(
                ?report,
                "storage write path recovered; accepting writes again"
            );
        }
        Err(error) => {
            schedule.failed(Instant::now(), rand::random_range(0.5..=1.0));
            tracing::warn!(%error, "storage write path still failing; will retry");
        }
    }
}

/// Whether the write path failed or is missing (a recovery failed). A
/// path held exclusively is being replaced: not failed from here.
fn write_path_failed(inner: &Inner) -> bool {
    match inner.write_path.try_read() {
        Ok(slot) => match slot.as_ref() {
            Some(path) => super::read_failure(&path.failure).is_some(),
            None => true,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_path_is_never_due() {
        let mut schedule = RetrySchedule::default();
        let now = Instant::now();
        assert!(!schedule.due(false, now));
        assert!(!schedule.due(false, now + Duration::from_secs(60)));
    }

    #[test]
    fn the_first_attempt_comes_shortly_after_the_failure_is_seen() {
        let mut schedule = RetrySchedule::default();
        let seen = Instant::now();
        assert!(!schedule.due(true, seen));
        let first = Duration::from_millis(FIRST_RETRY_DELAY_MS);
        assert!(!schedule.due(true, seen + first - Duration::from_millis(1)));
        assert!(schedule.due(true, seen + first));
    }

    #[test]
    fn failed_attempts_back_off_doubling_up_to_the_maximum() {
        let mut schedule = RetrySchedule::default();
        let mut now = Instant::now();
        schedule.due(true, now);
        let mut waits = Vec::new();
        for _ in 0..12 {
            schedule.failed(now, 1.0);
            let at = schedule.next_attempt.expect("scheduled");
            waits.push((at - now).as_millis() as u64);
            assert!(!schedule.due(true, at - Duration::from_millis(1)));
            assert!(schedule.due(true, at));
            now = at;
        }
        assert_eq!(&waits[..4], &[100, 200, 400, 800]);
        assert!(waits.iter().all(|wait| *wait <= MAX_RETRY_DELAY_MS));
        assert_eq!(*waits.last().expect("waits"), MAX_RETRY_DELAY_MS);
    }

    #[test]
    fn jitter_shortens_a_wait_by_at_most_half_and_never_to_zero() {
        let mut schedule = RetrySchedule::default();
        let now = Instant::now();
        schedule.due(true, now);
        schedule.failed(now, 0.0);
        let wait = schedule.next_attempt.expect("scheduled") - now;
        assert_eq!(wait, Duration::from_millis(FIRST_RETRY_DELAY_MS / 2));
        let mut tiny = RetrySchedule {
            next_attempt: None,
            delay_ms: 1,
        };
        tiny.failed(now, 0.5);
        assert_eq!(
            tiny.next_attempt.expect("scheduled") - now,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn recovery_or_a_healthy_sight_resets_the_backoff() {
        let mut schedule = RetrySchedule::default();
        let now = Instant::now();
        schedule.due(true, now);
        schedule.failed(now, 1.0);
        schedule.failed(now, 1.0);
        schedule.succeeded();
        assert_eq!(schedule, RetrySchedule::default());
        schedule.due(true, now);
        schedule.failed(now, 1.0);
        assert!(!schedule.due(false, now));
        assert_eq!(schedule, RetrySchedule::default());
    }
}
