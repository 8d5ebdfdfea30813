//! Sequential read-ahead for fetches served from the stores.
//!
//! A fetch that misses the tail cache goes to a store, and without
//! read-ahead a reader draining a backlog waits, for every fetch, for the
//! whole chain client → broker → store → broker → client: the store's read
//! and the broker's answer never overlap. Once a partition's reads from the
//! stores are sequential (a read starts where the last one ended), the
//! broker starts the store read for the next range while it answers the
//! current one, so the next fetch finds it ready, the way an operating
//! system reads ahead of a sequential file reader.
//!
//! Only data below the high watermark is ever read ahead, and that data
//! never changes, so a read-ahead cannot serve anything a direct read would
//! not. One read-ahead per partition at most; all of them together hold at
//! most `[fetch] read_ahead_bytes` (a permit per range). A read at another
//! offset (a second reader, a seek) drops the pending one and, not being
//! sequential, starts none: interleaved readers cost no wasted store reads.

use crate::error::BrokerError;
use bytes::Bytes;
use std::sync::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

/// A store read started ahead of the fetch that will want it.
pub(crate) struct PendingRead {
    offset: u64,
    segment_id: u64,
    task: JoinHandle<Result<Bytes, BrokerError>>,
    /// Budget the range holds until it is taken or dropped.
    _budget: OwnedSemaphorePermit,
}

impl Drop for PendingRead {
    fn drop(&mut self) {
        // Dropped unused (replaced, partition gone): stop the store read.
        self.task.abort();
    }
}

impl PendingRead {
    /// The read's result (the budget is released when this returns).
    pub(crate) async fn wait(mut self) -> Result<Bytes, BrokerError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(error) => Err(BrokerError::Internal(format!(
                "read-ahead task ended early: {error}"
            ))),
        }
    }
}

/// One partition's read-ahead state.
#[derive(Default)]
pub(crate) struct ReadAhead {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Where the last read from the stores ended: a read starting here is
    /// sequential.
    last_end_offset: Option<u64>,
    pending: Option<PendingRead>,
}

impl ReadAhead {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pending read if it is for `offset` in `segment_id`; any other
    /// pending read is dropped (the reader moved). Also says whether a read
    /// at `offset` continues the last one.
    pub(crate) fn take(&self, offset: u64, segment_id: u64) -> (Option<PendingRead>, bool) {
        let mut state = self.state();
        let sequential = state.last_end_offset == Some(offset);
        let pending = state.pending.take();
        let matching =
            pending.filter(|pending| pending.offset == offset && pending.segment_id == segment_id);
        (matching, sequential)
    }

    /// Records where a read from the stores ended.
    pub(crate) fn read_ended(&self, end_offset: u64) {
        self.state().last_end_offset = Some(end_offset);
    }

    /// Keeps `task`, the read of `offset` in `segment_id`, for the next
    /// fetch, replacing any pending one.
    pub(crate) fn keep(
        &self,
        offset: u64,
        segment_id: u64,
        task: JoinHandle<Result<Bytes, BrokerError>>,
        budget: OwnedSemaphorePermit,
    ) {
        self.state().pending = Some(PendingRead {
            offset,
            segment_id,
            task,
            _budget: budget,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::{BatchBuilder, Compression, RecordData};

    fn batch(base_offset: u64, records: usize) -> Vec<u8> {
        let mut builder = BatchBuilder::new(Compression::None);
        for _ in 0..records {
            builder.push(&RecordData {
                value: Some(Bytes::from(vec![7u8; 100])),
                timestamp_ms: Some(1),
                ..RecordData::default()
            });
        }
        let mut encoded = builder.build().to_vec();
        sluice_proto::batch::assign(&mut encoded, base_offset, 0);
        encoded
    }

    #[test]
    fn end_offset_is_that_of_the_last_whole_batch() {
        use crate::decisions::prefix_within_high_watermark;
        let end_offset_of =
            |batches: &[u8]| prefix_within_high_watermark(batches, u64::MAX).end_offset;
        let mut batches = batch(10, 3);
        batches.extend(batch(13, 2));
        assert_eq!(end_offset_of(&batches), Some(15));
        assert_eq!(end_offset_of(&[]), None);
        // A torn last batch does not count.
        let torn = batches.len() - 5;
        assert_eq!(end_offset_of(&batches[..torn]), Some(13));
    }

    #[test]
    fn trimming_keeps_whole_batches_and_the_first_when_asked() {
        use crate::decisions::whole_batches_within;
        let first = batch(0, 3);
        let second = batch(3, 3);
        let mut both = first.clone();
        both.extend(&second);
        let both = Bytes::from(both);
        let all = both.len();
        assert_eq!(whole_batches_within(both.clone(), all, false).len(), all);
        assert_eq!(
            whole_batches_within(both.clone(), all - 1, false).len(),
            first.len()
        );
        assert_eq!(whole_batches_within(both.clone(), 1, false).len(), 0);
        assert_eq!(
            whole_batches_within(both.clone(), 1, true).len(),
            first.len()
        );
    }

    #[tokio::test]
    async fn only_a_read_at_the_pending_offset_and_segment_takes_it() {
        let read_ahead = ReadAhead::default();
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(10));
        assert!(!read_ahead.take(0, 1).1, "nothing read yet: not sequential");
        read_ahead.read_ended(100);
        let permit = budget.clone().try_acquire_many_owned(4).expect("permit");
        read_ahead.keep(
            100,
            1,
            tokio::spawn(async { Ok(Bytes::from_static(b"x")) }),
            permit,
        );
        assert_eq!(budget.available_permits(), 6);
        // Another segment: dropped, budget back, but the offset continues.
        let (pending, sequential) = read_ahead.take(100, 2);
        assert!(pending.is_none());
        assert!(sequential);
        assert_eq!(budget.available_permits(), 10);
        let permit = budget.clone().try_acquire_many_owned(4).expect("permit");
        read_ahead.keep(
            100,
            1,
            tokio::spawn(async { Ok(Bytes::from_static(b"x")) }),
            permit,
        );
        let (pending, _) = read_ahead.take(100, 1);
        let bytes = pending.expect("matching read").wait().await.expect("read");
        assert_eq!(&bytes[..], b"x");
        assert_eq!(budget.available_permits(), 10);
        // A seek elsewhere is not sequential.
        assert!(!read_ahead.take(5, 1).1);
    }
}
