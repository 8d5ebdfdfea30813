//! Batching state shared by `enqueue` and the dispatcher.

use super::accumulator::{Accumulator, ClosedBatch};
use super::completion::Completer;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds
    // a consistent state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Batching state shared by `enqueue` (appends) and the dispatcher
/// (lingers, flushes, takes closed batches). Closed batches wait in
/// `ready`, in closing order, so batches of one partition reach the
/// pipeline in the order their records were enqueued.
pub(super) struct Batching {
    pub(super) accumulator: Accumulator<BatchAttachment>,
    pub(super) ready: VecDeque<ClosedBatch<BatchAttachment>>,
    /// A transactional producer's state (ADR 0016 §7), under the same
    /// lock so a record is appended only while its transaction is open.
    pub(super) transaction: Option<super::transaction::Transaction>,
}

/// What a batch carries for its records besides their bytes.
pub(super) struct BatchAttachment {
    /// Fails the records with `Closed` if the batch is dropped unsent
    /// (the dispatcher is gone).
    pub(super) completer: Completer,
    /// The records' memory, merged into one permit; released when the
    /// batch is acknowledged or failed.
    pub(super) memory: Option<OwnedSemaphorePermit>,
    /// Earliest start of a record that waited for memory (the delivery
    /// timeout counts that wait).
    pub(super) earliest_enqueued_at: Option<Instant>,
}

impl BatchAttachment {
    pub(super) fn add(&mut self, permit: OwnedSemaphorePermit, waited_since: Option<Instant>) {
        match &mut self.memory {
            Some(memory) => memory.merge(permit),
            None => self.memory = Some(permit),
        }
        if let Some(since) = waited_since {
            self.earliest_enqueued_at = Some(
                self.earliest_enqueued_at
                    .map_or(since, |earliest| earliest.min(since)),
            );
        }
    }
}
