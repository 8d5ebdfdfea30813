//! A budget shared between tasks (of bytes, or of open streams): reserve
//! before holding, release after; a reservation that would exceed the
//! limit is refused (never waited for: a stream waiting for bytes would
//! keep HTTP/2 flow-control windows closed that the streams holding the
//! budget need to finish).

use std::sync::atomic::{AtomicU64, Ordering};

/// At most `limit` units reserved at once.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Units reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `units` if that keeps the total within the limit.
    pub fn try_reserve(&self, units: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(units).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Returns `units` reserved earlier.
    pub fn release(&self, units: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(units))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_up_to_the_limit_and_not_beyond() {
        let budget = Budget::new(10);
        assert!(budget.try_reserve(4));
        assert!(budget.try_reserve(6));
        assert!(!budget.try_reserve(1), "the limit is reached");
        assert_eq!(budget.used(), 10);
        budget.release(6);
        assert!(
            !budget.try_reserve(7),
            "a refused reservation takes nothing"
        );
        assert!(budget.try_reserve(6));
        budget.release(10);
        assert_eq!(budget.used(), 0);
        assert!(!budget.try_reserve(u64::MAX), "no overflow");
        budget.release(5);
        assert_eq!(budget.used(), 0, "releasing more than held floors at 0");
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let budget = std::sync::Arc::new(Budget::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if budget.try_reserve(7) {
                            assert!(budget.used() <= 1000);
                            budget.release(7);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        assert_eq!(budget.used(), 0);
    }
}
