//! Idempotent produce: per partition, what the broker remembers of each
//! producer's latest batches so a resent batch is answered with its
//! original offset instead of being appended twice (ADR 0010).
//!
//! [`ProducerStates`] is a pure state machine owned by the partition's
//! pipeline task: [`ProducerStates::check`] judges a batch before offsets
//! are assigned (and reserves it as in flight), [`ProducerStates::appended`]
//! records it once durable. After a takeover, or after the pipeline failed
//! with appends whose fate the stores' seal decided, the partition's
//! takeover restores the state from batch headers at the tail of the log
//! ([`ProducerStates::rebuild_start`], [`ProducerStates::apply_log`]).

use sluice_proto::batch::{BatchError, BatchHeader, BatchIter};
use sluice_proto::limits::MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER;
use sluice_proto::v1::{SegmentInfo, SegmentState};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Batches remembered per producer and partition. A producer resends only
/// batches it had in flight, at most this many (the SDK refuses a larger
/// `max_in_flight_per_partition` with idempotence on), and they are its
/// latest ones: so every batch it may resend is among those remembered.
pub const REMEMBERED_BATCHES_PER_PRODUCER: usize = MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER;

/// A durable batch of one producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: u64,
    /// When the broker appended it; for batches rebuilt from the log (which
    /// does not keep append times) the batch's max timestamp instead.
    pub append_time_ms: i64,
}

/// A batch given offsets and sent to the stores, not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
}

#[derive(Debug)]
struct ProducerState {
    epoch: i16,
    /// Latest durable batches, oldest first, at most
    /// [`REMEMBERED_BATCHES_PER_PRODUCER`].
    appended: VecDeque<AppendedBatch>,
    /// In the pipeline, in offset order.
    pending: VecDeque<PendingBatch>,
    /// Position in `ProducerStates::recency`.
    last_used: u64,
}

impl ProducerState {
    fn new(epoch: i16) -> Self {
        Self {
            epoch,
            appended: VecDeque::new(),
            pending: VecDeque::new(),
            last_used: 0,
        }
    }

    /// Highest sequence appended or in flight.
    fn last_sequence(&self) -> Option<i32> {
        self.pending
            .back()
            .map(|pending| pending.last_sequence)
            .or_else(|| self.appended.back().map(|batch| batch.last_sequence))
    }

    fn remember(&mut self, batch: AppendedBatch) {
        if self.appended.len() >= REMEMBERED_BATCHES_PER_PRODUCER {
            self.appended.pop_front();
        }
        self.appended.push_back(batch);
    }
}

/// What to do with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No producer id: appended as is, nothing remembered.
    NotIdempotent,
    /// New for its producer: append it (it is now reserved as in flight).
    Accept,
    /// Already durable: answer with the original's placement, append nothing.
    Duplicate(AppendedBatch),
    /// The original is still in the pipeline: refuse with a retriable
    /// error; the retry finds it durable (or failed, and appends it).
    DuplicateInFlight,
    /// Not acceptable for its producer (stale epoch, overlap, a sequence
    /// older than what is remembered): refuse, not retriable.
    OutOfOrder(String),
}

/// The producers of one partition, bounded by `max_producers` (least
/// recently used evicted).
#[derive(Debug)]
pub struct ProducerStates {
    max_producers: usize,
    producers: HashMap<i64, ProducerState>,
    /// `last_used` tick -> producer id, oldest first.
    recency: BTreeMap<u64, i64>,
    clock: u64,
    /// True once rebuilt from the log after a takeover; until then the
    /// state knows nothing of what earlier owners appended.
    loaded: bool,
    /// Producers with a transaction open on the partition (ADR 0016
    /// §3.2): never evicted, or a resend mid-transaction would be taken as
    /// new. At most `[produce] max_open_transactions_per_partition`.
    protected: HashSet<i64>,
}

/// The sequence of the last record of a batch, if it fits.
fn last_sequence_of(header: &BatchHeader) -> Option<i32> {
    let count = i32::try_from(header.record_count).ok()?;
    header.base_sequence.checked_add(count - 1)
}

impl ProducerStates {
    pub fn new(max_producers: usize) -> Self {
        Self {
            max_producers: max_producers.max(1),
            producers: HashMap::new(),
            recency: BTreeMap::new(),
            clock: 0,
            loaded: false,
            protected: HashSet::new(),
        }
    }

    /// Sets the producers whose state must not be evicted (those with an
    /// open transaction).
    pub fn set_protected(&mut self, producers: impl IntoIterator<Item = i64>) {
        self.protected = producers.into_iter().collect();
    }

    /// Protects (`true`) or releases one producer; see
    /// [`ProducerStates::set_protected`].
    pub fn protect(&mut self, producer_id: i64, protected: bool) {
        if protected {
            self.protected.insert(producer_id);
        } else {
            self.protected.remove(&producer_id);
        }
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Marks `producer_id` most recently used, creating its state (and
    /// evicting the least recently used unprotected one beyond the bound;
    /// with every one protected, the bound gives way to the bound on open
    /// transactions).
    fn touch(&mut self, producer_id: i64, epoch: i16) -> &mut ProducerState {
        self.clock += 1;
        let tick = self.clock;
        if !self.producers.contains_key(&producer_id) {
            while self.producers.len() >= self.max_producers {
                let victim = self
                    .recency
                    .iter()
                    .find(|(_, producer)| !self.protected.contains(producer))
                    .map(|(&tick, &producer)| (tick, producer));
                let Some((victim_tick, evicted)) = victim else {
                    break;
                };
                self.recency.remove(&victim_tick);
                self.producers.remove(&evicted);
            }
        }
        let state = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerState::new(epoch));
        self.recency.remove(&state.last_used);
        state.last_used = tick;
        self.recency.insert(tick, producer_id);
        state
    }

    /// Judges a batch about to be appended at `base_offset`; an accepted
    /// one is reserved as in flight until [`ProducerStates::appended`] (or
    /// a rebuild after a failure) settles it.
    ///
    /// Sequence gaps are accepted: the SDK never reorders (the broker
    /// refuses a partition's later requests on a stream after a failure
    /// until the client resends in order), but a batch that failed for
    /// good or expired in the client leaves its sequences unused. A
    /// sequence below the latest that matches no remembered batch cannot
    /// be a new batch, and its original's outcome is no longer known, so
    /// it is refused rather than risk a duplicate.
    pub fn check(&mut self, header: &BatchHeader, base_offset: u64) -> Verdict {
        if header.producer_id < 0 {
            return Verdict::NotIdempotent;
        }
        let first_sequence = header.base_sequence;
        let Some(last_sequence) = last_sequence_of(header).filter(|_| first_sequence >= 0) else {
            return Verdict::OutOfOrder(format!(
                "producer {} sent base sequence {} with {} records, outside 0..=i32::MAX",
                header.producer_id, first_sequence, header.record_count
            ));
        };
        let producer_id = header.producer_id;
        let pending = PendingBatch {
            first_sequence,
            last_sequence,
            base_offset,
        };
        let known_epoch = self.producers.get(&producer_id).map(|state| state.epoch);
        let state = self.touch(producer_id, header.producer_epoch);
        match known_epoch {
            Some(epoch) if header.producer_epoch < epoch => {
                return Verdict::OutOfOrder(format!(
                    "producer {producer_id} epoch {} is older than its current epoch {epoch}",
                    header.producer_epoch
                ));
            }
            Some(epoch) if header.producer_epoch > epoch => {
                // A new epoch restarts the sequences.
                *state = ProducerState {
                    last_used: state.last_used,
                    ..ProducerState::new(header.producer_epoch)
                };
            }
            _ => {}
        }
        if let Some(in_flight) = state
            .pending
            .iter()
            .find(|in_flight| in_flight.first_sequence == first_sequence)
        {
            return if in_flight.last_sequence == last_sequence {
                Verdict::DuplicateInFlight
            } else {
                Verdict::OutOfOrder(format!(
                    "producer {producer_id} sequences {first_sequence}..={last_sequence} overlap in-flight {}..={}",
                    in_flight.first_sequence, in_flight.last_sequence
                ))
            };
        }
        if let Some(original) = state
            .appended
            .iter()
            .find(|batch| batch.first_sequence == first_sequence)
        {
            return if original.last_sequence == last_sequence {
                Verdict::Duplicate(*original)
            } else {
                Verdict::OutOfOrder(format!(
                    "producer {producer_id} sequences {first_sequence}..={last_sequence} overlap appended {}..={}",
                    original.first_sequence, original.last_sequence
                ))
            };
        }
        match state.last_sequence() {
            Some(latest) if first_sequence <= latest => Verdict::OutOfOrder(format!(
                "producer {producer_id} sent sequence {first_sequence} but is at {latest}, and no remembered batch starts there"
            )),
            _ => {
                state.pending.push_back(pending);
                Verdict::Accept
            }
        }
    }

    /// Records a durable batch (in log order).
    pub fn appended(&mut self, header: &BatchHeader, base_offset: u64, append_time_ms: i64) {
        if header.producer_id < 0 || header.base_sequence < 0 {
            return;
        }
        let Some(last_sequence) = last_sequence_of(header) else {
            return;
        };
        let known_epoch = self
            .producers
            .get(&header.producer_id)
            .map(|state| state.epoch);
        let state = self.touch(header.producer_id, header.producer_epoch);
        match known_epoch {
            Some(epoch) if header.producer_epoch < epoch => return,
            Some(epoch) if header.producer_epoch > epoch => {
                *state = ProducerState {
                    last_used: state.last_used,
                    ..ProducerState::new(header.producer_epoch)
                };
            }
            _ => {}
        }
        // Completions come in offset order, so what is in flight before
        // this batch can only be ahead of it by a failure; drop it.
        while state
            .pending
            .front()
            .is_some_and(|pending| pending.base_offset <= base_offset)
        {
            state.pending.pop_front();
        }
        if state
            .appended
            .iter()
            .any(|batch| batch.base_offset == base_offset)
        {
            // Seen already (a rebuild reading what it knew).
            return;
        }
        state.remember(AppendedBatch {
            first_sequence: header.base_sequence,
            last_sequence,
            base_offset,
            append_time_ms,
        });
    }

    /// Where a rebuild must start reading the log, or `None` when the
    /// state is exact (nothing is in doubt). Before the first rebuild:
    /// the last `window_bytes` of the log (whole batches). After a
    /// pipeline failure: the first batch that was in flight, since the
    /// stores' seal decided which of the in-flight ones are in the log.
    pub fn rebuild_start(
        &self,
        segments: &[SegmentInfo],
        log_start_offset: u64,
        window_bytes: u64,
    ) -> Option<u64> {
        if !self.loaded {
            return Some(window_start(segments, window_bytes).max(log_start_offset));
        }
        self.producers
            .values()
            .filter_map(|state| state.pending.front().map(|pending| pending.base_offset))
            .min()
    }

    /// Applies concatenated batches read from the log, at or after
    /// `from_offset` (a batch ending before it is skipped). Returns the
    /// offset after the last batch, or `from_offset` if there was none.
    pub fn apply_log(&mut self, batches: &[u8], from_offset: u64) -> Result<u64, BatchError> {
        let mut next_offset = from_offset;
        for item in BatchIter::new(batches) {
            let (_, header, _) = item?;
            if header.end_offset() <= from_offset {
                continue;
            }
            self.appended(&header, header.base_offset, header.max_timestamp_ms);
            next_offset = next_offset.max(header.end_offset());
        }
        Ok(next_offset)
    }

    /// The log has been read: in-flight reservations were either found in
    /// it (and recorded) or lost with the failure.
    pub fn finish_rebuild(&mut self) {
        for state in self.producers.values_mut() {
            state.pending.clear();
        }
        self.loaded = true;
    }

    #[cfg(test)]
    fn remembered(&self, producer_id: i64) -> Option<Vec<AppendedBatch>> {
        self.producers
            .get(&producer_id)
            .map(|state| state.appended.iter().copied().collect())
    }
}

/// The first offset of the last `window_bytes` of the log, by the sizes of
/// the closed segments (interpolated inside the segment where the window
/// starts; at least one whole batch may precede it). The open segment is
/// the one just created by the takeover and still empty.
pub fn window_start(segments: &[SegmentInfo], window_bytes: u64) -> u64 {
    let mut closed: Vec<&SegmentInfo> = segments
        .iter()
        .filter(|segment| segment.state() != SegmentState::Open)
        .collect();
    closed.sort_by_key(|segment| segment.base_offset);
    let Some(first) = closed.first() else {
        return segments
            .iter()
            .map(|segment| segment.base_offset)
            .min()
            .unwrap_or(0);
    };
    let mut remaining = window_bytes;
    for segment in closed.iter().rev() {
        let records = segment.end_offset.saturating_sub(segment.base_offset);
        if segment.size_bytes <= remaining {
            remaining -= segment.size_bytes;
            continue;
        }
        // The window starts inside this segment: keep the share of its
        // records that matches the share of its bytes (rounded up).
        let keep = (u128::from(records) * u128::from(remaining))
            .div_ceil(u128::from(segment.size_bytes.max(1)));
        let keep = u64::try_from(keep).unwrap_or(records);
        return segment.end_offset - keep.min(records);
    }
    first.base_offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use sluice_proto::batch::{assign, BatchBuilder, Compression, RecordData};

    fn batch(producer_id: i64, epoch: i16, sequence: i32, records: u32) -> Bytes {
        let mut builder =
            BatchBuilder::new(Compression::None).with_producer(producer_id, epoch, sequence);
        for index in 0..records {
            builder.push(&RecordData {
                value: Some(Bytes::from(format!("{producer_id}-{sequence}-{index}"))),
                timestamp_ms: Some(1_000),
                ..RecordData::default()
            });
        }
        builder.build()
    }

    fn header(producer_id: i64, epoch: i16, sequence: i32, records: u32) -> BatchHeader {
        BatchHeader::parse(&batch(producer_id, epoch, sequence, records)).expect("valid header")
    }

    /// Checks and, if accepted, completes at `offset`; returns the verdict.
    fn append(states: &mut ProducerStates, header: &BatchHeader, offset: u64) -> Verdict {
        let verdict = states.check(header, offset);
        if verdict == Verdict::Accept {
            states.appended(header, offset, 7);
        }
        verdict
    }

    #[test]
    fn batches_without_a_producer_id_are_not_tracked() {
        let mut states = ProducerStates::new(10);
        let plain = header(-1, -1, -1, 3);
        assert_eq!(states.check(&plain, 0), Verdict::NotIdempotent);
        states.appended(&plain, 0, 1);
        assert_eq!(states.len(), 0);
    }

    #[test]
    fn a_resent_batch_gets_the_original_placement() {
        let mut states = ProducerStates::new(10);
        assert_eq!(
            append(&mut states, &header(1, 0, 0, 5), 100),
            Verdict::Accept
        );
        assert_eq!(
            append(&mut states, &header(1, 0, 5, 2), 105),
            Verdict::Accept
        );
        assert_eq!(
            states.check(&header(1, 0, 0, 5), 200),
            Verdict::Duplicate(AppendedBatch {
                first_sequence: 0,
                last_sequence: 4,
                base_offset: 100,
                append_time_ms: 7,
            })
        );
        match states.check(&header(1, 0, 5, 2), 200) {
            Verdict::Duplicate(original) => assert_eq!(original.base_offset, 105),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        // Another producer with the same sequences is not a duplicate.
        assert_eq!(
            append(&mut states, &header(2, 0, 0, 5), 107),
            Verdict::Accept
        );
    }

    #[test]
    fn only_the_remembered_window_is_recognised() {
        let mut states = ProducerStates::new(10);
        let total = REMEMBERED_BATCHES_PER_PRODUCER as i32 + 3;
        for sequence in 0..total {
            assert_eq!(
                append(&mut states, &header(1, 0, sequence, 1), sequence as u64),
                Verdict::Accept
            );
        }
        let remembered = states.remembered(1).expect("producer 1 is known");
        assert_eq!(remembered.len(), REMEMBERED_BATCHES_PER_PRODUCER);
        assert_eq!(remembered[0].first_sequence, 3);
        // Every batch of the last in-flight window is recognised...
        for sequence in 3..total {
            assert!(matches!(
                states.check(&header(1, 0, sequence, 1), 1_000),
                Verdict::Duplicate(original) if original.base_offset == sequence as u64
            ));
        }
        // ...an older one is refused: its outcome is no longer known.
        assert!(matches!(
            states.check(&header(1, 0, 2, 1), 1_000),
            Verdict::OutOfOrder(_)
        ));
    }

    #[test]
    fn a_duplicate_of_an_in_flight_batch_is_refused_until_it_is_durable() {
        let mut states = ProducerStates::new(10);
        let original = header(1, 0, 0, 4);
        assert_eq!(states.check(&original, 50), Verdict::Accept);
        assert_eq!(states.check(&original, 54), Verdict::DuplicateInFlight);
        // A new batch behind the in-flight one is fine.
        assert_eq!(states.check(&header(1, 0, 4, 1), 54), Verdict::Accept);
        states.appended(&original, 50, 9);
        assert!(matches!(
            states.check(&original, 55),
            Verdict::Duplicate(found) if found.base_offset == 50
        ));
    }

    #[test]
    fn gaps_are_accepted_overlaps_and_stale_epochs_are_not() {
        let mut states = ProducerStates::new(10);
        assert_eq!(append(&mut states, &header(1, 0, 0, 5), 0), Verdict::Accept);
        // Sequences 5..10 failed for good in the client: a gap.
        assert_eq!(
            append(&mut states, &header(1, 0, 10, 5), 5),
            Verdict::Accept
        );
        assert!(matches!(
            states.check(&header(1, 0, 10, 3), 10),
            Verdict::OutOfOrder(_)
        ));
        assert!(matches!(
            states.check(&header(1, 0, 12, 3), 10),
            Verdict::OutOfOrder(_)
        ));
        assert!(matches!(
            states.check(&header(1, 0, -1, 1), 10),
            Verdict::OutOfOrder(_)
        ));
        assert!(matches!(
            states.check(&header(1, 0, i32::MAX, 2), 10),
            Verdict::OutOfOrder(_)
        ));
        // A new epoch restarts the sequences; the old one is then refused.
        assert_eq!(
            append(&mut states, &header(1, 1, 0, 1), 10),
            Verdict::Accept
        );
        assert!(matches!(
            states.check(&header(1, 0, 15, 1), 11),
            Verdict::OutOfOrder(_)
        ));
        // An unknown producer may start anywhere (its state may have been
        // evicted or be older than the rebuilt window).
        assert_eq!(
            append(&mut states, &header(9, 0, 500, 1), 11),
            Verdict::Accept
        );
    }

    #[test]
    fn least_recently_used_producers_are_evicted_beyond_the_bound() {
        let mut states = ProducerStates::new(3);
        for producer in 1..=3 {
            append(&mut states, &header(producer, 0, 0, 1), producer as u64);
        }
        // Producer 1 is used again, so 2 is now the least recently used.
        assert!(matches!(
            states.check(&header(1, 0, 0, 1), 10),
            Verdict::Duplicate(_)
        ));
        append(&mut states, &header(4, 0, 0, 1), 4);
        assert_eq!(states.len(), 3);
        assert!(states.remembered(2).is_none(), "2 was evicted");
        assert!(states.remembered(1).is_some());
        assert!(states.remembered(3).is_some());
        assert!(states.remembered(4).is_some());
        // Evicted: the resend is taken as new (the documented cost).
        assert_eq!(states.check(&header(2, 0, 0, 1), 5), Verdict::Accept);
    }

    #[test]
    fn producers_with_an_open_transaction_are_not_evicted() {
        let mut states = ProducerStates::new(2);
        append(&mut states, &header(1, 0, 0, 1), 1);
        append(&mut states, &header(2, 0, 0, 1), 2);
        states.protect(1, true);
        append(&mut states, &header(3, 0, 0, 1), 3);
        assert!(states.remembered(1).is_some(), "1 is protected");
        assert!(states.remembered(2).is_none(), "2 went instead");
        // Every one protected: the bound gives way rather than forget one.
        states.set_protected([1, 3]);
        append(&mut states, &header(4, 0, 0, 1), 4);
        assert_eq!(states.len(), 3);
        assert!(matches!(
            states.check(&header(1, 0, 0, 1), 10),
            Verdict::Duplicate(_)
        ));
        // Released: evictable again.
        states.protect(1, false);
        states.set_protected([3, 4]);
        append(&mut states, &header(5, 0, 0, 1), 5);
        assert!(states.remembered(1).is_none());
    }

    /// A log of concatenated batches as stores hold them (offsets assigned).
    fn log_of(batches: &[(i64, i32, u32)], first_offset: u64) -> (Bytes, Vec<u64>) {
        let mut log = BytesMut::new();
        let mut offsets = Vec::new();
        let mut offset = first_offset;
        for (producer, sequence, records) in batches {
            let mut bytes = BytesMut::from(&batch(*producer, 0, *sequence, *records)[..]);
            assign(&mut bytes, offset, 3);
            offsets.push(offset);
            offset += u64::from(*records);
            log.extend_from_slice(&bytes);
        }
        (log.freeze(), offsets)
    }

    #[test]
    fn rebuild_from_the_log_recognises_resends_after_a_takeover() {
        let (log, offsets) = log_of(&[(1, 0, 3), (-1, -1, 2), (2, 0, 1), (1, 3, 4)], 1_000);
        let mut states = ProducerStates::new(10);
        assert_eq!(states.rebuild_start(&[], 1_000, 1 << 20), Some(1_000));
        let next = states.apply_log(&log, 1_000).expect("valid log");
        assert_eq!(next, 1_010);
        states.finish_rebuild();
        assert_eq!(states.len(), 2);
        assert!(matches!(
            states.check(&header(1, 0, 3, 4), 1_010),
            Verdict::Duplicate(original) if original.base_offset == offsets[3]
        ));
        assert!(matches!(
            states.check(&header(2, 0, 0, 1), 1_010),
            Verdict::Duplicate(original) if original.base_offset == offsets[2]
        ));
        assert_eq!(states.check(&header(1, 0, 7, 1), 1_010), Verdict::Accept);
        // A read that starts inside a batch already applied skips it.
        let mut again = ProducerStates::new(10);
        assert_eq!(again.apply_log(&log, 1_004).expect("valid"), 1_010);
        assert!(again
            .remembered(1)
            .is_some_and(|batches| batches.len() == 1));
    }

    #[test]
    fn after_a_failure_only_the_in_flight_tail_is_reread() {
        let mut states = ProducerStates::new(10);
        states.finish_rebuild();
        assert_eq!(states.rebuild_start(&[], 0, 1 << 20), None, "exact");
        append(&mut states, &header(1, 0, 0, 2), 0);
        assert_eq!(states.check(&header(1, 0, 2, 2), 2), Verdict::Accept);
        assert_eq!(states.check(&header(1, 0, 4, 2), 4), Verdict::Accept);
        // The pipeline failed: the seal kept the first in-flight batch only.
        assert_eq!(states.rebuild_start(&[], 0, 1 << 20), Some(2));
        let (log, _) = log_of(&[(1, 2, 2)], 2);
        states.apply_log(&log, 2).expect("valid");
        states.finish_rebuild();
        assert!(matches!(
            states.check(&header(1, 0, 2, 2), 4),
            Verdict::Duplicate(original) if original.base_offset == 2
        ));
        // The lost one is appended when resent.
        assert_eq!(states.check(&header(1, 0, 4, 2), 4), Verdict::Accept);
    }

    fn segment(base_offset: u64, end_offset: u64, size_bytes: u64, open: bool) -> SegmentInfo {
        SegmentInfo {
            base_offset,
            end_offset,
            size_bytes,
            state: if open {
                SegmentState::Open as i32
            } else {
                SegmentState::Closed as i32
            },
            ..SegmentInfo::default()
        }
    }

    #[test]
    fn the_window_covers_the_last_bytes_of_the_log() {
        let segments = [
            segment(0, 100, 1_000, false),
            segment(100, 200, 1_000, false),
            segment(200, 200, 0, true),
        ];
        assert_eq!(window_start(&segments, 10_000), 0, "whole log");
        assert_eq!(window_start(&segments, 1_000), 100, "last segment");
        assert_eq!(window_start(&segments, 1_500), 50, "half of the first");
        assert_eq!(window_start(&segments, 1), 199, "at least one record");
        assert_eq!(window_start(&segments, 0), 200, "nothing");
        assert_eq!(window_start(&[segment(40, 40, 0, true)], 1_000), 40);
        assert_eq!(window_start(&[], 1_000), 0);
    }
}
