//! Per-partition batching: records gather in an open batch that closes at
//! `batch_max_bytes`, `batch_max_records` or after `linger_ms`. Pure (no IO,
//! time passed in) so it is tested directly.
//!
//! Each batch carries one attachment `T` (the producer keeps the batch's
//! shared completion and merged memory permit there) instead of one item
//! per record, so a record costs no allocation of its own.
//!
//! For an idempotent producer a batch gets its producer id, epoch and base
//! sequence when it closes (ADR 0010): batches of a partition close one
//! after the other, in the order they are sent, so each partition's
//! sequence counts its records in send order. A retry resends the closed
//! bytes unchanged, sequence included.

use crate::cluster::TopicPartition;
use crate::fast_hash::FastHashMap;
use bytes::Bytes;
use sluice_proto::batch::{BatchBuilder, Compression, RecordData, HEADER_BYTES};
use std::collections::VecDeque;
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
    records: u32,
    opened_at: Instant,
    attachment: T,
}

/// A finished batch with what the caller attached to it.
pub(crate) struct ClosedBatch<T> {
    pub partition: TopicPartition,
    pub data: Bytes,
    pub records: u32,
    pub attachment: T,
    /// When its first record arrived; the delivery timeout counts from here.
    pub created_at: Instant,
}

/// What [`Accumulator::append`] did with a record.
pub(crate) struct Appended<R> {
    /// What the `add` callback returned.
    pub value: R,
    /// The record opened a batch that is still open: its linger deadline
    /// is new.
    pub opened: bool,
}

pub(crate) struct Accumulator<T> {
    limits: BatchLimits,
    open: FastHashMap<TopicPartition, OpenBatch<T>>,
    /// Size of the last closed batch: new batches reserve about that much
    /// up front so their buffer rarely grows (and copies) while filling.
    last_batch_bytes: usize,
    /// Set for an idempotent producer.
    sequencer: Option<Sequencer>,
}

/// An idempotent producer's id and its next sequence per partition.
pub(crate) struct Sequencer {
    producer_id: i64,
    /// partition -> (producer epoch, next sequence; up to `i32::MAX + 1`).
    next: FastHashMap<TopicPartition, (i16, i64)>,
    /// A transactional producer's epoch (ADR 0016 §1): every partition
    /// uses it, sequences restart at 0 when it changes, batches carry the
    /// transactional bit, and the overflow bump is off.
    transactional_epoch: Option<i16>,
}

impl Sequencer {
    pub fn new(producer_id: i64) -> Self {
        Self {
            producer_id,
            next: FastHashMap::default(),
            transactional_epoch: None,
        }
    }

    /// Starts a new transactional epoch (after `InitProducerId` or an end):
    /// sequences restart at 0 on every partition.
    pub fn set_transactional(&mut self, producer_id: i64, epoch: i16) {
        self.producer_id = producer_id;
        self.transactional_epoch = Some(epoch);
        self.next.clear();
    }

    /// (epoch, base sequence) of the next batch of `records` records on
    /// `partition`. The sequence counts records from 0, like Kafka's; when
    /// it would pass `i32::MAX` (2^31 records on one partition from one
    /// producer) it restarts at 0 under the next epoch, which the broker
    /// takes as a fresh start of that producer.
    pub fn assign(&mut self, partition: &TopicPartition, records: u32) -> (i16, i32) {
        let records = i64::from(records.max(1));
        let start = self.transactional_epoch.unwrap_or(0);
        let (epoch, next) = self.next.entry(partition.clone()).or_insert((start, 0));
        // A transaction's epoch never moves under it: 2^31 records of one
        // transaction on one partition saturate the sequence, which the
        // broker refuses (the transaction becomes abortable).
        if self.transactional_epoch.is_none() && *next + records - 1 > i64::from(i32::MAX) {
            *epoch = epoch.saturating_add(1);
            *next = 0;
        }
        let base = i32::try_from(*next).unwrap_or(i32::MAX);
        *next += records;
        (*epoch, base)
    }
}

impl<T> Accumulator<T> {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            open: FastHashMap::default(),
            last_batch_bytes: 0,
            sequencer: None,
        }
    }

    /// Stamps closed batches with `producer_id` and per-partition sequences.
    pub fn idempotent(mut self, producer_id: i64) -> Self {
        self.sequencer = Some(Sequencer::new(producer_id));
        self
    }

    /// A transactional producer's `(producer_id, epoch)` from now on; open
    /// batches must have been drained (they belong to the ended epoch).
    pub fn set_transactional(&mut self, producer_id: i64, epoch: i16) {
        self.sequencer
            .get_or_insert_with(|| Sequencer::new(producer_id))
            .set_transactional(producer_id, epoch);
    }

    fn fits(&self, open: &OpenBatch<T>, record_bytes: usize) -> bool {
        open.builder.size_bytes() + record_bytes <= self.limits.max_bytes
            && (open.records as usize) < self.limits.max_records
    }

    fn is_full(&self, open: &OpenBatch<T>) -> bool {
        open.builder.size_bytes() >= self.limits.max_bytes
            || open.records as usize >= self.limits.max_records
    }

    /// Adds a record to its partition's open batch, opening one (time from
    /// `now`, attachment from `attach`) if needed, and calls `add` with the
    /// batch's attachment and the record's index in the batch. Batches this
    /// closes (the previous open one if the record does not fit, and the
    /// record's own if it is full) go to the back of `closed`, in order. A
    /// record larger than `max_bytes` travels alone in its own batch.
    pub fn append<R>(
        &mut self,
        partition: TopicPartition,
        record: &RecordData,
        now: impl FnOnce() -> Instant,
        attach: impl FnOnce(&TopicPartition) -> T,
        add: impl FnOnce(&mut T, u32) -> R,
        closed: &mut VecDeque<ClosedBatch<T>>,
    ) -> Appended<R> {
        let record_bytes = BatchBuilder::record_size(record);
        let fits = self
            .open
            .get(&partition)
            .map(|open| self.fits(open, record_bytes));
        match fits {
            Some(true) => {
                let open = self
                    .open
                    .get_mut(&partition)
                    .expect("the open batch was just looked up");
                open.builder.push(record);
                let index = open.records;
                open.records += 1;
                let value = add(&mut open.attachment, index);
                let full = open.builder.size_bytes() >= self.limits.max_bytes
                    || open.records as usize >= self.limits.max_records;
                if full {
                    if let Some(open) = self.open.remove(&partition) {
                        closed.push_back(close(
                            partition,
                            open,
                            &mut self.last_batch_bytes,
                            self.sequencer.as_mut(),
                        ));
                    }
                }
                return Appended {
                    value,
                    opened: false,
                };
            }
            Some(false) => {
                if let Some(previous) = self.open.remove(&partition) {
                    closed.push_back(close(
                        partition.clone(),
                        previous,
                        &mut self.last_batch_bytes,
                        self.sequencer.as_mut(),
                    ));
                }
            }
            None => {}
        }
        let expected_bytes = (self.last_batch_bytes + self.last_batch_bytes / 8)
            .min(self.limits.max_bytes)
            .max(HEADER_BYTES + record_bytes);
        let mut open = OpenBatch {
            builder: BatchBuilder::with_capacity(self.limits.compression, expected_bytes),
            records: 1,
            opened_at: now(),
            attachment: attach(&partition),
        };
        open.builder.push(record);
        let value = add(&mut open.attachment, 0);
        if self.is_full(&open) {
            closed.push_back(close(
                partition,
                open,
                &mut self.last_batch_bytes,
                self.sequencer.as_mut(),
            ));
            Appended {
                value,
                opened: false,
            }
        } else {
            self.open.insert(partition, open);
            Appended {
                value,
                opened: true,
            }
        }
    }

    /// Closes batches that have lingered long enough, onto `closed`.
    pub fn expire(&mut self, now: Instant, closed: &mut VecDeque<ClosedBatch<T>>) {
        let linger = self.limits.linger;
        if self
            .open
            .values()
            .all(|open| now.duration_since(open.opened_at) < linger)
        {
            return;
        }
        let due: Vec<TopicPartition> = self
            .open
            .iter()
            .filter(|(_, open)| now.duration_since(open.opened_at) >= linger)
            .map(|(partition, _)| partition.clone())
            .collect();
        for partition in due {
            if let Some(open) = self.open.remove(&partition) {
                closed.push_back(close(
                    partition,
                    open,
                    &mut self.last_batch_bytes,
                    self.sequencer.as_mut(),
                ));
            }
        }
    }

    /// Closes every open batch (flush, close), onto `closed`.
    pub fn drain(&mut self, closed: &mut VecDeque<ClosedBatch<T>>) {
        let last_batch_bytes = &mut self.last_batch_bytes;
        let mut sequencer = self.sequencer.as_mut();
        closed.extend(self.open.drain().map(|(partition, open)| {
            close(partition, open, last_batch_bytes, sequencer.as_deref_mut())
        }));
    }

    /// Drops every open batch unsent (an aborted transaction's), returning
    /// their attachments; no sequence was assigned to them.
    pub fn discard_open(&mut self) -> Vec<T> {
        self.open.drain().map(|(_, open)| open.attachment).collect()
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

fn close<T>(
    partition: TopicPartition,
    open: OpenBatch<T>,
    last_batch_bytes: &mut usize,
    sequencer: Option<&mut Sequencer>,
) -> ClosedBatch<T> {
    *last_batch_bytes = open.builder.size_bytes();
    let builder = match sequencer {
        Some(sequencer) => {
            let (epoch, base_sequence) = sequencer.assign(&partition, open.records);
            let builder = open
                .builder
                .with_producer(sequencer.producer_id, epoch, base_sequence);
            if sequencer.transactional_epoch.is_some() {
                builder.transactional()
            } else {
                builder
            }
        }
        None => open.builder,
    };
    ClosedBatch {
        partition,
        data: builder.build(),
        records: open.records,
        attachment: open.attachment,
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

    /// The test attachment lists (id, index in batch) of its records.
    type Items = Vec<(u32, u32)>;

    struct Harness {
        accumulator: Accumulator<Items>,
        closed: VecDeque<ClosedBatch<Items>>,
    }

    impl Harness {
        fn new(limits: BatchLimits) -> Self {
            Self {
                accumulator: Accumulator::new(limits),
                closed: VecDeque::new(),
            }
        }

        /// Appends; returns whether a batch was opened and left open.
        fn append(
            &mut self,
            partition: TopicPartition,
            record: &RecordData,
            id: u32,
            now: Instant,
        ) -> bool {
            self.accumulator
                .append(
                    partition,
                    record,
                    || now,
                    |_| Vec::new(),
                    |items, index| items.push((id, index)),
                    &mut self.closed,
                )
                .opened
        }

        fn take_closed(&mut self) -> Vec<ClosedBatch<Items>> {
            self.closed.drain(..).collect()
        }
    }

    fn ids(batch: &ClosedBatch<Items>) -> Vec<u32> {
        batch.attachment.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn closes_at_record_limit() {
        let mut harness = Harness::new(limits(1 << 20, 3, 1000));
        let now = Instant::now();
        assert!(harness.append(tp(), &record(10), 1, now), "opens a batch");
        assert!(!harness.append(tp(), &record(10), 2, now));
        assert!(harness.take_closed().is_empty());
        harness.append(tp(), &record(10), 3, now);
        let closed = harness.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].attachment, vec![(1, 0), (2, 1), (3, 2)]);
        assert_eq!(closed[0].records, 3);
        let (header, records) = decode(&closed[0].data, 1 << 20).expect("valid batch");
        assert_eq!(header.record_count, 3);
        assert_eq!(records.len(), 3);
        assert!(harness.accumulator.is_empty());
    }

    #[test]
    fn closes_at_byte_limit_before_overflowing() {
        let one = BatchBuilder::record_size(&record(100));
        let max_bytes = sluice_proto::batch::HEADER_BYTES + 2 * one + one / 2;
        let mut harness = Harness::new(limits(max_bytes, 1000, 1000));
        let now = Instant::now();
        harness.append(tp(), &record(100), 1, now);
        harness.append(tp(), &record(100), 2, now);
        assert!(harness.take_closed().is_empty());
        assert!(
            harness.append(tp(), &record(100), 3, now),
            "the third record opens a new batch"
        );
        let closed = harness.take_closed();
        assert_eq!(closed.len(), 1, "third record does not fit");
        assert_eq!(ids(&closed[0]), vec![1, 2]);
        assert!(closed[0].data.len() <= max_bytes);
        harness.accumulator.drain(&mut harness.closed);
        let rest = harness.take_closed();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].attachment, vec![(3, 0)]);
    }

    #[test]
    fn oversized_record_gets_its_own_batch() {
        let mut harness = Harness::new(limits(200, 1000, 1000));
        let now = Instant::now();
        harness.append(tp(), &record(10), 1, now);
        assert!(
            !harness.append(tp(), &record(1000), 2, now),
            "an oversized record's batch closes at once"
        );
        let closed = harness.take_closed();
        assert_eq!(closed.len(), 2);
        assert_eq!(ids(&closed[0]), vec![1]);
        assert_eq!(ids(&closed[1]), vec![2]);
        assert!(harness.accumulator.is_empty());
    }

    #[test]
    fn linger_closes_only_old_batches() {
        let mut harness = Harness::new(limits(1 << 20, 1000, 5));
        let start = Instant::now();
        harness.append(tp(), &record(10), 1, start);
        harness.append(
            TopicPartition::new("t", 1),
            &record(10),
            2,
            start + Duration::from_millis(3),
        );
        assert_eq!(
            harness.accumulator.next_deadline(),
            Some(start + Duration::from_millis(5))
        );
        harness
            .accumulator
            .expire(start + Duration::from_millis(4), &mut harness.closed);
        assert!(harness.take_closed().is_empty());
        harness
            .accumulator
            .expire(start + Duration::from_millis(5), &mut harness.closed);
        let closed = harness.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].partition, tp());
        assert_eq!(closed[0].created_at, start);
        harness
            .accumulator
            .expire(start + Duration::from_millis(8), &mut harness.closed);
        let closed = harness.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].partition.partition, 1);
        assert_eq!(harness.accumulator.next_deadline(), None);
    }

    #[test]
    fn idempotent_batches_carry_per_partition_record_sequences() {
        let mut harness = Harness::new(limits(1 << 20, 3, 1000));
        harness.accumulator = Accumulator::new(limits(1 << 20, 3, 1000)).idempotent(77);
        let now = Instant::now();
        let other = TopicPartition::new("t", 1);
        for id in 0..7 {
            harness.append(tp(), &record(1), id, now);
        }
        harness.append(other.clone(), &record(1), 100, now);
        harness.accumulator.drain(&mut harness.closed);
        let mut seen = Vec::new();
        for batch in harness.take_closed() {
            let (header, _) = decode(&batch.data, 1 << 20).expect("valid batch");
            assert_eq!((header.producer_id, header.producer_epoch), (77, 0));
            seen.push((
                batch.partition.partition,
                header.base_sequence,
                header.record_count,
            ));
        }
        seen.sort();
        // Partition 0: 3 + 3 + 1 records; partition 1 counts on its own.
        assert_eq!(seen, vec![(0, 0, 3), (0, 3, 3), (0, 6, 1), (1, 0, 1)]);
    }

    #[test]
    fn transactional_batches_carry_the_epoch_the_bit_and_restart_sequences() {
        let mut harness = Harness::new(limits(1 << 20, 2, 1000));
        harness.accumulator.set_transactional(9, 4);
        let now = Instant::now();
        for id in 0..3 {
            harness.append(tp(), &record(1), id, now);
        }
        harness.accumulator.drain(&mut harness.closed);
        harness.accumulator.set_transactional(9, 5);
        harness.append(tp(), &record(1), 3, now);
        harness.accumulator.drain(&mut harness.closed);
        let seen: Vec<_> = harness
            .take_closed()
            .iter()
            .map(|batch| {
                let (header, _) = decode(&batch.data, 1 << 20).expect("valid batch");
                assert!(header.transactional);
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                )
            })
            .collect();
        assert_eq!(seen, vec![(9, 4, 0), (9, 4, 2), (9, 5, 0)]);
    }

    #[test]
    fn discarded_batches_take_no_sequence() {
        let mut harness = Harness::new(limits(1 << 20, 10, 1000));
        harness.accumulator.set_transactional(9, 4);
        let now = Instant::now();
        harness.append(tp(), &record(1), 1, now);
        harness.append(tp(), &record(1), 2, now);
        let discarded = harness.accumulator.discard_open();
        assert_eq!(discarded, vec![vec![(1, 0), (2, 1)]]);
        assert!(harness.accumulator.is_empty());
        harness.accumulator.set_transactional(9, 5);
        harness.append(tp(), &record(1), 3, now);
        harness.accumulator.drain(&mut harness.closed);
        let closed = harness.take_closed();
        let (header, _) = decode(&closed[0].data, 1 << 20).expect("valid batch");
        assert_eq!((header.producer_epoch, header.base_sequence), (5, 0));
    }

    #[test]
    fn a_transactional_sequence_never_bumps_the_epoch() {
        let mut sequencer = Sequencer::new(5);
        sequencer.set_transactional(5, 3);
        let partition = tp();
        sequencer
            .next
            .insert(partition.clone(), (3, i64::from(i32::MAX)));
        assert_eq!(sequencer.assign(&partition, 2).0, 3);
    }

    #[test]
    fn plain_batches_have_no_producer() {
        let mut harness = Harness::new(limits(1 << 20, 1, 1000));
        harness.append(tp(), &record(1), 1, Instant::now());
        let closed = harness.take_closed();
        let (header, _) = decode(&closed[0].data, 1 << 20).expect("valid batch");
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (-1, -1, -1)
        );
    }

    #[test]
    fn sequences_restart_under_a_new_epoch_before_overflowing() {
        let mut sequencer = Sequencer::new(5);
        let partition = tp();
        assert_eq!(sequencer.assign(&partition, 10), (0, 0));
        sequencer
            .next
            .insert(partition.clone(), (0, i64::from(i32::MAX) - 4));
        assert_eq!(
            sequencer.assign(&partition, 5),
            (0, i32::MAX - 4),
            "the last record gets i32::MAX"
        );
        assert_eq!(sequencer.assign(&partition, 1), (1, 0));
        assert_eq!(sequencer.assign(&partition, 2), (1, 1));
    }

    #[test]
    fn partitions_batch_separately() {
        let mut harness = Harness::new(limits(1 << 20, 2, 1000));
        let now = Instant::now();
        harness.append(TopicPartition::new("t", 0), &record(1), 1, now);
        harness.append(TopicPartition::new("t", 1), &record(1), 2, now);
        harness.append(TopicPartition::new("t", 0), &record(1), 3, now);
        let closed = harness.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].attachment, vec![(1, 0), (3, 1)]);
    }
}
