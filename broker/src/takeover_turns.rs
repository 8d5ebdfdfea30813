//! Turns for partition takeovers (`[replication] max_concurrent_takeovers`).
//!
//! A takeover fences and recovers the open segment, opens a new one and
//! replays state: several store and nameserver round trips. When a broker
//! is handed a thousand partitions at once (a new wide topic, a failover),
//! running them all at once starved its heartbeats, so it missed its lease
//! and fenced itself in a loop (measured in session 12). A takeover
//! therefore waits for one of `max_concurrent_takeovers` turns. The counts
//! of takeovers running and waiting are exported as gauges
//! (`sluice_broker_takeovers_running`, `…_waiting`), and the most that ever
//! ran at once is kept for tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Semaphore, SemaphorePermit};

/// See the module documentation.
#[derive(Debug)]
pub struct TakeoverTurns {
    permits: Semaphore,
    running: AtomicUsize,
    waiting: AtomicUsize,
    most_running: AtomicUsize,
}

/// Held for the length of one takeover.
#[derive(Debug)]
pub struct Turn<'a> {
    turns: &'a TakeoverTurns,
    _permit: Option<SemaphorePermit<'a>>,
}

impl TakeoverTurns {
    /// Turns for `max_concurrent` takeovers at once (at least 1).
    pub fn new(max_concurrent: u32) -> Self {
        let permits = usize::try_from(max_concurrent)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Semaphore::new(permits),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        }
    }

    /// Waits for a turn.
    pub async fn turn(&self) -> Turn<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Never closed, so this cannot fail; without a permit the takeover
        // would still run (and be counted).
        let permit = self.permits.acquire().await.ok();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let running = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.most_running.fetch_max(running, Ordering::Relaxed);
        Turn {
            turns: self,
            _permit: permit,
        }
    }

    /// Takeovers running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Takeovers waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The most takeovers that ran at once since start.
    pub fn most_running(&self) -> usize {
        self.most_running.load(Ordering::Relaxed)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    async fn run_takeovers(turns: Arc<TakeoverTurns>, count: usize) {
        let mut tasks = Vec::new();
        for _ in 0..count {
            let turns = turns.clone();
            tasks.push(tokio::spawn(async move {
                let _turn = turns.turn().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
        }
        for task in tasks {
            task.await.expect("takeover task");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_cap_run_at_once() {
        for cap in [1u32, 3, 32] {
            let turns = Arc::new(TakeoverTurns::new(cap));
            run_takeovers(turns.clone(), 100).await;
            let most = turns.most_running();
            assert!(most <= cap as usize, "cap {cap}: {most} ran at once");
            assert_eq!(most, cap as usize, "cap {cap}: the turns are used");
            assert_eq!((turns.running(), turns.waiting()), (0, 0));
        }
    }

    #[tokio::test]
    async fn zero_and_the_maximum_are_usable() {
        let turns = TakeoverTurns::new(0);
        let first = turns.turn().await;
        assert_eq!(turns.running(), 1, "0 means one at a time, never none");
        let second = tokio::time::timeout(Duration::from_millis(50), turns.turn()).await;
        assert!(second.is_err(), "the second waits");
        drop(first);
        assert_eq!(turns.running(), 0);
        let wide = TakeoverTurns::new(u32::MAX);
        let _held: Vec<_> = futures::future::join_all((0..10).map(|_| wide.turn())).await;
        assert_eq!(wide.running(), 10);
    }
}
