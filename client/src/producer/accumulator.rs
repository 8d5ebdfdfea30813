//! Per-partition batching: records gather in an open batch that closes at
//! `batch_max_bytes`, `batch_max_records` or after `linger_ms`. Pure (no IO,
//! time passed in) so it is tested directly.

use crate::cluster::TopicPartition;
use bytes::Bytes;
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Limits that close a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_bytes: usize,
    pub max_records: usize,
    pub linger: Duration,
    pub compression: Compression,
}

struct OpenBatch<T> {
    builder: BatchBuilder,
    items: Vec<T>,
    opened_at: Instant,
}

/// A finished batch with whatever the caller attached to each record (in
/// record order).
pub(crate) struct ClosedBatch<T> {
    pub partition: TopicPartition,
    pub data: Bytes,
    pub items: Vec<T>,
    /// When its first record arrived; the delivery timeout counts from here.
    pub created_at: Instant,
}

pub(crate) struct Accumulator<T> {
    limits: BatchLimits,
    open: HashMap<TopicPartition, OpenBatch<T>>,
}

impl<T> Accumulator<T> {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            open: HashMap::new(),
        }
    }

    /// Adds a record; returns the batches this closed (the previous open
    /// one if the record does not fit, and the new one if it is full). A
    /// record larger than `max_bytes` travels alone in its own batch.
    pub fn append(
        &mut self,
        partition: TopicPartition,
        record: &RecordData,
        item: T,
        now: Instant,
    ) -> Vec<ClosedBatch<T>> {
        let mut closed = Vec::new();
        let record_bytes = BatchBuilder::record_size(record);
        let fits = self.open.get(&partition).is_none_or(|open| {
            open.builder.size_bytes() + record_bytes <= self.limits.max_bytes
                && (open.items.len()) < self.limits.max_records
        });
        if !fits {
            if let Some(open) = self.open.remove(&partition) {
                closed.push(close(partition.clone(), open));
            }
        }
        let compression = self.limits.compression;
        let open = self
            .open
            .entry(partition.clone())
            .or_insert_with(|| OpenBatch {
                builder: BatchBuilder::new(compression),
                items: Vec::new(),
                opened_at: now,
            });
        open.builder.push(record);
        open.items.push(item);
        if open.builder.size_bytes() >= self.limits.max_bytes
            || open.items.len() >= self.limits.max_records
        {
            if let Some(open) = self.open.remove(&partition) {
                closed.push(close(partition, open));
            }
        }
        closed
    }

    /// Closes batches that have lingered long enough.
    pub fn expire(&mut self, now: Instant) -> Vec<ClosedBatch<T>> {
        let linger = self.limits.linger;
        let due: Vec<TopicPartition> = self
            .open
            .iter()
            .filter(|(_, open)| now.duration_since(open.opened_at) >= linger)
            .map(|(partition, _)| partition.clone())
            .collect();
        due.into_iter()
            .filter_map(|partition| {
                self.open
                    .remove(&partition)
                    .map(|open| close(partition, open))
            })
            .collect()
    }

    /// Closes every open batch (flush, close).
    pub fn drain(&mut self) -> Vec<ClosedBatch<T>> {
        self.open
            .drain()
            .map(|(partition, open)| close(partition, open))
            .collect()
    }

    /// When the oldest open batch's linger ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|open| crate::cluster::instant_after(open.opened_at, self.limits.linger))
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

fn close<T>(partition: TopicPartition, open: OpenBatch<T>) -> ClosedBatch<T> {
    ClosedBatch {
        partition,
        data: open.builder.build(),
        items: open.items,
        created_at: open.opened_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::decode;

    fn limits(max_bytes: usize, max_records: usize, linger_ms: u64) -> BatchLimits {
        BatchLimits {
            max_bytes,
            max_records,
            linger: Duration::from_millis(linger_ms),
            compression: Compression::None,
        }
    }

    fn record(size: usize) -> RecordData {
        RecordData {
            value: Some(Bytes::from(vec![7u8; size])),
            timestamp_ms: Some(1),
            ..RecordData::default()
        }
    }

    fn tp() -> TopicPartition {
        TopicPartition::new("t", 0)
    }

    #[test]
    fn closes_at_record_limit() {
        let mut accumulator = Accumulator::new(limits(1 << 20, 3, 1000));
        let now = Instant::now();
        assert!(accumulator.append(tp(), &record(10), 1, now).is_empty());
        assert!(accumulator.append(tp(), &record(10), 2, now).is_empty());
        let closed = accumulator.append(tp(), &record(10), 3, now);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].items, vec![1, 2, 3]);
        let (header, records) = decode(&closed[0].data, 1 << 20).expect("valid batch");
        assert_eq!(header.record_count, 3);
        assert_eq!(records.len(), 3);
        assert!(accumulator.is_empty());
    }

    #[test]
    fn closes_at_byte_limit_before_overflowing() {
        let one = BatchBuilder::record_size(&record(100));
        let max_bytes = sluice_proto::batch::HEADER_BYTES + 2 * one + one / 2;
        let mut accumulator = Accumulator::new(limits(max_bytes, 1000, 1000));
        let now = Instant::now();
        assert!(accumulator.append(tp(), &record(100), 1, now).is_empty());
        assert!(accumulator.append(tp(), &record(100), 2, now).is_empty());
        let closed = accumulator.append(tp(), &record(100), 3, now);
        assert_eq!(closed.len(), 1, "third record does not fit");
        assert_eq!(closed[0].items, vec![1, 2]);
        assert!(closed[0].data.len() <= max_bytes);
        let rest = accumulator.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].items, vec![3]);
    }

    #[test]
    fn oversized_record_gets_its_own_batch() {
        let mut accumulator = Accumulator::new(limits(200, 1000, 1000));
        let now = Instant::now();
        assert!(accumulator.append(tp(), &record(10), 1, now).is_empty());
        let closed = accumulator.append(tp(), &record(1000), 2, now);
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].items, vec![1]);
        assert_eq!(closed[1].items, vec![2]);
        assert!(accumulator.is_empty());
    }

    #[test]
    fn linger_closes_only_old_batches() {
        let mut accumulator = Accumulator::new(limits(1 << 20, 1000, 5));
        let start = Instant::now();
        accumulator.append(tp(), &record(10), 1, start);
        accumulator.append(
            TopicPartition::new("t", 1),
            &record(10),
            2,
            start + Duration::from_millis(3),
        );
        assert_eq!(
            accumulator.next_deadline(),
            Some(start + Duration::from_millis(5))
        );
        assert!(accumulator
            .expire(start + Duration::from_millis(4))
            .is_empty());
        let closed = accumulator.expire(start + Duration::from_millis(5));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].partition, tp());
        assert_eq!(closed[0].created_at, start);
        let closed = accumulator.expire(start + Duration::from_millis(8));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].partition.partition, 1);
        assert_eq!(accumulator.next_deadline(), None);
    }

    #[test]
    fn partitions_batch_separately() {
        let mut accumulator = Accumulator::new(limits(1 << 20, 2, 1000));
        let now = Instant::now();
        accumulator.append(TopicPartition::new("t", 0), &record(1), 1, now);
        accumulator.append(TopicPartition::new("t", 1), &record(1), 2, now);
        let closed = accumulator.append(TopicPartition::new("t", 0), &record(1), 3, now);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].items, vec![1, 3]);
    }
}
