//! Segment ids for concurrent `CreateSegment`s. A broker taking over a
//! 1,000-partition topic asks for 1,000 segments at once; one
//! compare-and-set on the cluster-wide counter each made them race for it
//! (one winner per round trip, the others backing off). Instead the
//! requests waiting on this nameserver take turns: whoever holds the turn
//! takes every waiting request (at most [`MAX_IDS_PER_INCREMENT`]), raises
//! the counter by that many in one compare-and-set, and hands each request
//! its own id.
//!
//! Ids stay unique and increasing in real time: an increment that starts
//! after another one ended reads (and compares) the counter the other one
//! wrote, so every id handed out later is higher. Requests of one increment
//! get consecutive ids in the order they arrived.

use crate::error::NameServerError;
use crate::metadata::MetadataError;
use tokio::sync::oneshot;

/// Most ids one counter increment hands out.
pub const MAX_IDS_PER_INCREMENT: usize = 1024;

type Reply = oneshot::Sender<Result<u64, NameServerError>>;

/// The requests waiting for an id and the turn to increment the counter.
#[derive(Default)]
pub(crate) struct SegmentIdQueue {
    waiting: std::sync::Mutex<Vec<Reply>>,
    turn: tokio::sync::Mutex<()>,
}

impl SegmentIdQueue {
    /// Gets an id: waits for a turn, and unless an earlier turn already
    /// answered, increments the counter for every waiting request with
    /// `increment(count)` (which returns the first of `count` new ids).
    pub(crate) async fn next<F, Fut>(&self, increment: F) -> Result<u64, NameServerError>
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = Result<u64, NameServerError>>,
    {
        let mut receiver = self.enqueue();
        loop {
            // Answered by another request's turn, or this request's turn.
            let turn = tokio::select! {
                biased;
                answer = &mut receiver => match answer {
                    Ok(answer) => return answer,
                    // The turn that took this request was cancelled before
                    // it answered: ask again.
                    Err(_) => {
                        receiver = self.enqueue();
                        continue;
                    }
                },
                turn = self.turn.lock() => turn,
            };
            let batch = self.take();
            if !batch.is_empty() {
                let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
                let result = increment(count).await;
                for (offset, reply) in (0u64..).zip(batch) {
                    let answer = match &result {
                        Ok(first) => Ok(first + offset),
                        Err(error) => Err(shared_error(error)),
                    };
                    // A request that went away does not need its id.
                    let _ = reply.send(answer);
                }
            }
            drop(turn);
        }
    }

    fn enqueue(&self) -> oneshot::Receiver<Result<u64, NameServerError>> {
        let (sender, receiver) = oneshot::channel();
        self.lock_waiting().push(sender);
        receiver
    }

    /// The oldest waiting requests, at most [`MAX_IDS_PER_INCREMENT`].
    fn take(&self) -> Vec<Reply> {
        let mut waiting = self.lock_waiting();
        let count = waiting.len().min(MAX_IDS_PER_INCREMENT);
        waiting.drain(..count).collect()
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Reply>> {
        // The list stays consistent even if a holder panicked.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The counter after handing out `count` ids from `next`: `None` when
/// that would pass `u64::MAX` (refused rather than wrapped, which would
/// reuse ids).
pub fn following(next: u64, count: u64) -> Option<u64> {
    next.checked_add(count)
}

/// An increment's failure as told to each request it answers.
fn shared_error(error: &NameServerError) -> NameServerError {
    match error {
        NameServerError::Metadata(error) => NameServerError::Metadata(error.clone()),
        NameServerError::Refused(reason) => NameServerError::Refused(reason.clone()),
        NameServerError::CorruptValue { key, reason } => NameServerError::CorruptValue {
            key: key.clone(),
            reason: reason.clone(),
        },
        other => NameServerError::Metadata(MetadataError::Conflict(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_counter_is_refused_rather_than_wrapped() {
        assert_eq!(following(1, 1), Some(2));
        assert_eq!(following(1, 1024), Some(1025));
        assert_eq!(following(u64::MAX - 1, 1), Some(u64::MAX));
        assert_eq!(following(u64::MAX - 1, 2), None);
        assert_eq!(following(u64::MAX, 1), None);
    }

    /// A counter that takes 5 ms per increment, like an etcd round trip.
    struct Counter {
        next: AtomicU64,
        increments: AtomicUsize,
    }

    impl Counter {
        async fn increment(&self, count: u64) -> Result<u64, NameServerError> {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            self.increments.fetch_add(1, Ordering::SeqCst);
            Ok(self.next.fetch_add(count, Ordering::SeqCst))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_increments_and_get_distinct_ids() {
        let queue = Arc::new(SegmentIdQueue::default());
        let counter = Arc::new(Counter {
            next: AtomicU64::new(1),
            increments: AtomicUsize::new(0),
        });
        let tasks: Vec<_> = (0..2_000)
            .map(|_| {
                let queue = queue.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    queue
                        .next(|count| {
                            let counter = counter.clone();
                            async move { counter.increment(count).await }
                        })
                        .await
                })
            })
            .collect();
        let mut ids = HashSet::new();
        for task in tasks {
            let id = task.await.expect("task").expect("id");
            assert!(ids.insert(id), "id {id} handed out twice");
        }
        assert_eq!(ids.len(), 2_000);
        assert_eq!(ids.iter().min(), Some(&1));
        assert_eq!(ids.iter().max(), Some(&2_000));
        let increments = counter.increments.load(Ordering::SeqCst);
        assert!(
            increments < 100,
            "{increments} increments for 2,000 concurrent requests"
        );
    }

    #[tokio::test]
    async fn ids_taken_one_after_another_increase() {
        let queue = SegmentIdQueue::default();
        let counter = Counter {
            next: AtomicU64::new(7),
            increments: AtomicUsize::new(0),
        };
        let mut last = 0;
        for _ in 0..5 {
            let id = queue
                .next(|count| counter.increment(count))
                .await
                .expect("id");
            assert!(id > last);
            last = id;
        }
        assert_eq!(last, 11);
        assert_eq!(counter.increments.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_increment_fails_every_request_it_took() {
        let queue = Arc::new(SegmentIdQueue::default());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    queue
                        .next(|_| async {
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                            Err(NameServerError::Metadata(MetadataError::Unavailable(
                                "etcd down".to_string(),
                            )))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            match task.await.expect("task") {
                Err(NameServerError::Metadata(MetadataError::Unavailable(reason))) => {
                    assert_eq!(reason, "etcd down")
                }
                other => panic!("expected the increment's error, got {other:?}"),
            }
        }
    }

    fn spawn_next<F, Fut>(
        queue: &Arc<SegmentIdQueue>,
        increment: F,
    ) -> tokio::task::JoinHandle<Result<u64, NameServerError>>
    where
        F: Fn(u64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<u64, NameServerError>> + Send,
    {
        let queue = queue.clone();
        tokio::spawn(async move { queue.next(increment).await })
    }

    #[tokio::test]
    async fn a_cancelled_turn_does_not_strand_the_requests_it_took() {
        let queue = Arc::new(SegmentIdQueue::default());
        let counter = Arc::new(Counter {
            next: AtomicU64::new(1),
            increments: AtomicUsize::new(0),
        });
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(20));
        // `first` holds the turn until the gate opens; `hanging` and
        // `waiting` queue up behind it, then `hanging` takes both and
        // never answers.
        let first = spawn_next(&queue, {
            let (counter, gate) = (counter.clone(), gate.clone());
            move |count| {
                let (counter, gate) = (counter.clone(), gate.clone());
                async move {
                    let _permit = gate.acquire().await;
                    counter.increment(count).await
                }
            }
        });
        settle().await;
        let hanging = spawn_next(&queue, |_| std::future::pending());
        let waiting = spawn_next(&queue, {
            let counter = counter.clone();
            move |count| {
                let counter = counter.clone();
                async move { counter.increment(count).await }
            }
        });
        settle().await;
        assert_eq!(queue.lock_waiting().len(), 2);
        gate.add_permits(1);
        assert_eq!(first.await.expect("task").expect("id"), 1);
        settle().await;
        assert!(
            queue.lock_waiting().is_empty(),
            "the hanging turn took both"
        );
        hanging.abort();
        let id = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiting request was answered")
            .expect("task")
            .expect("id");
        assert_eq!(id, 2);
        assert_eq!(counter.increments.load(Ordering::SeqCst), 2);
    }
}
