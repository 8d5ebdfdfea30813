//! One shared completion per batch: every record of a batch resolves from
//! the same outcome (base offset or error), so a record costs an index into
//! its batch instead of a channel of its own.

use crate::cluster::TopicPartition;
use crate::producer::{Pressure, RecordMetadata};
use crate::ClientError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// The outcome of one batch, shared by its records' delivery futures.
pub(crate) struct BatchCompletion {
    partition: TopicPartition,
    state: Mutex<CompletionState>,
}

struct CompletionState {
    /// Base offset and backlog pressure on success.
    outcome: Option<Result<(u64, Pressure), ClientError>>,
    /// Tasks waiting on records of the batch. A future keeps the slot it
    /// registered in, so polling again replaces instead of growing.
    wakers: Vec<Waker>,
}

impl BatchCompletion {
    pub fn new(partition: TopicPartition) -> Arc<Self> {
        Arc::new(Self {
            partition,
            state: Mutex::new(CompletionState {
                outcome: None,
                wakers: Vec::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, CompletionState> {
        // Nothing panics while holding the lock; a poisoned lock still
        // holds a consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves record `index` of the batch if the outcome is known;
    /// otherwise registers the waker (in `slot`) and returns `Pending`.
    pub fn poll_record(
        &self,
        index: u32,
        timestamp_ms: i64,
        slot: &mut Option<usize>,
        context: &mut Context<'_>,
    ) -> Poll<Result<RecordMetadata, ClientError>> {
        let mut state = self.state();
        match &state.outcome {
            Some(Ok((base_offset, pressure))) => {
                return Poll::Ready(Ok(RecordMetadata {
                    topic: self.partition.topic.clone(),
                    partition: self.partition.partition,
                    offset: base_offset + u64::from(index),
                    timestamp_ms,
                    pressure: *pressure,
                }))
            }
            Some(Err(error)) => return Poll::Ready(Err(error.clone())),
            None => {}
        }
        match slot {
            Some(registered) if *registered < state.wakers.len() => {
                let waker = &mut state.wakers[*registered];
                if !waker.will_wake(context.waker()) {
                    waker.clone_from(context.waker());
                }
            }
            _ => {
                state.wakers.push(context.waker().clone());
                *slot = Some(state.wakers.len() - 1);
            }
        }
        Poll::Pending
    }

    fn complete(&self, outcome: Result<(u64, Pressure), ClientError>) {
        let wakers = {
            let mut state = self.state();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// The dispatcher's handle on a batch's completion. Dropping it without
/// completing (the dispatcher stopped) fails the records with
/// [`ClientError::Closed`], so no delivery future waits forever.
pub(crate) struct Completer {
    shared: Arc<BatchCompletion>,
}

impl Completer {
    pub fn new(shared: Arc<BatchCompletion>) -> Self {
        Self { shared }
    }

    pub fn shared(&self) -> &Arc<BatchCompletion> {
        &self.shared
    }

    /// Every record of the batch was written from `base_offset` on.
    pub fn deliver(self, base_offset: u64, pressure: Pressure) {
        self.shared.complete(Ok((base_offset, pressure)));
    }

    pub fn fail(self, error: ClientError) {
        self.shared.complete(Err(error));
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        // No-op when `deliver` or `fail` already ran.
        self.shared.complete(Err(ClientError::Closed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(
        completion: &BatchCompletion,
        index: u32,
        slot: &mut Option<usize>,
        waker: &Waker,
    ) -> Poll<Result<RecordMetadata, ClientError>> {
        completion.poll_record(index, 77, slot, &mut Context::from_waker(waker))
    }

    #[test]
    fn records_resolve_to_base_offset_plus_index_and_waiters_wake() {
        let shared = BatchCompletion::new(TopicPartition::new("t", 2));
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut slot = None;
        assert!(poll(&shared, 3, &mut slot, &waker).is_pending());
        // Polling again with the same waker reuses the slot.
        assert!(poll(&shared, 3, &mut slot, &waker).is_pending());
        assert_eq!(shared.state().wakers.len(), 1);
        Completer::new(shared.clone()).deliver(100, Pressure::default());
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        match poll(&shared, 3, &mut slot, noop_waker_ref()) {
            Poll::Ready(Ok(metadata)) => {
                assert_eq!(metadata.topic, "t");
                assert_eq!(metadata.partition, 2);
                assert_eq!(metadata.offset, 103);
                assert_eq!(metadata.timestamp_ms, 77);
            }
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn dropped_completer_fails_with_closed_and_first_outcome_wins() {
        let shared = BatchCompletion::new(TopicPartition::new("t", 0));
        drop(Completer::new(shared.clone()));
        assert!(matches!(
            poll(&shared, 0, &mut None, noop_waker_ref()),
            Poll::Ready(Err(ClientError::Closed))
        ));
        let shared = BatchCompletion::new(TopicPartition::new("t", 0));
        Completer::new(shared.clone()).fail(ClientError::InvalidArgument("bad".into()));
        assert!(matches!(
            poll(&shared, 5, &mut None, noop_waker_ref()),
            Poll::Ready(Err(ClientError::InvalidArgument(_)))
        ));
    }
}
