use super::*;
use rand::{Rng, SeedableRng};
use sluice_proto::batch::Compression;

const LIMITS: Limits = Limits {
    max_open: 1_000,
    max_ended: MAX_ENDED_PRODUCERS,
    max_aborted: MAX_ABORTED_TRANSACTIONS,
};

fn header(producer_id: i64, epoch: i16, transactional: bool, base_offset: u64) -> BatchHeader {
    BatchHeader {
        base_offset,
        batch_length: 100,
        writer_epoch: 1,
        crc: 0,
        compression: Compression::None,
        transactional,
        control: false,
        record_count: 1,
        first_timestamp_ms: 0,
        max_timestamp_ms: 0,
        producer_id,
        producer_epoch: epoch,
        base_sequence: 0,
    }
}

fn marker(producer_id: i64, txn_epoch: i16, commit: bool) -> Marker {
    Marker {
        producer_id,
        txn_epoch,
        commit,
        coordinator_epoch: 1,
        first_offset: None,
    }
}

fn marker_header(producer_id: i64, txn_epoch: i16, base_offset: u64) -> BatchHeader {
    BatchHeader {
        control: true,
        base_sequence: -1,
        ..header(producer_id, txn_epoch + 1, false, base_offset)
    }
}

type State = PartitionTransactions<u32>;

fn loaded() -> State {
    let mut state = State::new(LIMITS);
    state.finish_rebuild();
    state
}

/// Verifies and opens `(pid, epoch)` with its first batch at `offset`.
fn open(state: &mut State, producer_id: i64, epoch: i16, offset: u64) {
    let data = header(producer_id, epoch, true, offset);
    assert_eq!(
        state.check_data(&data),
        DataVerdict::Verify { producer_id, epoch }
    );
    state.hold(producer_id, epoch, 1);
    assert_eq!(
        state.verified(producer_id, epoch, Ok(())),
        (vec![1], Ok(()))
    );
    assert_eq!(state.check_data(&data), DataVerdict::Append);
    state.data_appending(&data, offset);
}

#[test]
fn nothing_is_stable_before_the_rebuild() {
    let mut state = State::new(LIMITS);
    assert_eq!(state.last_stable_offset(10), None);
    state.finish_rebuild();
    assert_eq!(state.last_stable_offset(10), Some(10));
}

#[test]
fn an_open_transaction_holds_the_lso_until_its_marker_is_durable() {
    let mut state = loaded();
    open(&mut state, 7, 0, 5);
    assert_eq!(state.last_stable_offset(6), Some(5));
    let end = marker(7, 0, true);
    assert_eq!(
        state.check_marker(&end),
        (
            MarkerVerdict::Append {
                first_offset: Some(5)
            },
            vec![]
        )
    );
    assert_eq!(state.last_stable_offset(6), Some(5), "not durable yet");
    // No data of the transaction once its marker is in the pipeline.
    assert!(matches!(
        state.check_data(&header(7, 0, true, 6)),
        DataVerdict::Refuse(Refusal::Abortable(_))
    ));
    // A retried marker is not answered before the first is durable.
    assert!(matches!(
        state.check_marker(&end).0,
        MarkerVerdict::Refuse(Refusal::Concurrent(_))
    ));
    state.marker_durable(&end, 6);
    assert_eq!(state.last_stable_offset(7), Some(7));
    assert_eq!(state.check_marker(&end).0, MarkerVerdict::AlreadyApplied);
    assert!(state.aborted_in(0, u64::MAX).is_empty(), "a commit");
    assert!(matches!(
        state.check_data(&header(7, 0, true, 7)),
        DataVerdict::Refuse(Refusal::Abortable(_))
    ));
    // The next epoch is a new transaction.
    assert_eq!(
        state.check_data(&header(7, 1, true, 7)),
        DataVerdict::Verify {
            producer_id: 7,
            epoch: 1
        }
    );
}

#[test]
fn aborts_with_data_are_indexed_and_without_data_are_not() {
    let mut state = loaded();
    open(&mut state, 1, 0, 10);
    let abort = marker(1, 0, false);
    assert_eq!(
        state.check_marker(&abort).0,
        MarkerVerdict::Append {
            first_offset: Some(10)
        }
    );
    state.marker_durable(&abort, 12);
    // A marker for a transaction that wrote nothing here: a fence.
    let empty = marker(2, 3, false);
    assert_eq!(
        state.check_marker(&empty).0,
        MarkerVerdict::Append { first_offset: None }
    );
    assert!(matches!(
        state.check_data(&header(2, 3, true, 13)),
        DataVerdict::Refuse(Refusal::Abortable(_))
    ));
    state.marker_durable(&empty, 13);
    let entry = AbortedTxn {
        producer_id: 1,
        first_offset: 10,
        marker_offset: 12,
    };
    assert_eq!(state.aborted_in(0, 100), vec![entry]);
    assert_eq!(state.aborted_in(12, 13), vec![entry]);
    assert_eq!(state.aborted_in(13, 100), vec![]);
    assert_eq!(
        state.aborted_in(0, 10),
        vec![],
        "ends before its first offset"
    );
}

#[test]
fn held_batches_wait_for_the_verification_and_a_marker_fences_them() {
    let mut state = loaded();
    let data = header(3, 2, true, 0);
    assert!(matches!(
        state.check_data(&data),
        DataVerdict::Verify { .. }
    ));
    state.hold(3, 2, 1);
    assert_eq!(state.check_data(&data), DataVerdict::Hold);
    state.hold(3, 2, 2);
    // Another producer is never held.
    assert!(matches!(
        state.check_data(&header(4, 0, true, 0)),
        DataVerdict::Verify { .. }
    ));
    // A plain batch of a producer being verified is out of order.
    assert!(matches!(
        state.check_data(&header(3, 2, false, 0)),
        DataVerdict::Refuse(Refusal::InvalidState(_))
    ));
    let (verdict, fenced) = state.check_marker(&marker(3, 2, false));
    assert_eq!(verdict, MarkerVerdict::Append { first_offset: None });
    assert_eq!(fenced, vec![1, 2]);
    // The late answer finds nothing to release.
    assert_eq!(state.verified(3, 2, Ok(())), (vec![], Ok(())));
}

#[test]
fn a_verification_answered_after_the_marker_refuses_its_jobs() {
    let mut state = loaded();
    state.hold(5, 1, 9);
    // The marker of an older epoch does not fence a newer verification.
    let (verdict, fenced) = state.check_marker(&marker(5, 0, true));
    assert_eq!(verdict, MarkerVerdict::Append { first_offset: None });
    assert!(fenced.is_empty());
    state.marker_durable(&marker(5, 0, true), 0);
    assert_eq!(state.verified(5, 1, Ok(())), (vec![9], Ok(())));
    // A refused verification relays the coordinator's refusal.
    state.hold(6, 0, 4);
    let refusal = Refusal::Abortable("fenced".into());
    assert_eq!(
        state.verified(6, 0, Err(refusal.clone())),
        (vec![4], Err(refusal))
    );
    assert!(!state.is_open(6));
}

#[test]
fn markers_of_older_and_newer_epochs() {
    let mut state = loaded();
    open(&mut state, 8, 4, 0);
    assert_eq!(
        state.check_marker(&marker(8, 3, false)).0,
        MarkerVerdict::AlreadyApplied,
        "a delayed marker of an earlier transaction"
    );
    assert!(matches!(
        state.check_marker(&marker(8, 5, false)).0,
        MarkerVerdict::Refuse(Refusal::Hanging(_))
    ));
    assert!(matches!(
        state.check_data(&header(8, 3, true, 1)),
        DataVerdict::Refuse(Refusal::Abortable(_))
    ));
    assert!(matches!(
        state.check_data(&header(8, 5, true, 1)),
        DataVerdict::Refuse(Refusal::Concurrent(_))
    ));
}

#[test]
fn open_transactions_are_bounded() {
    let mut state = State::new(Limits {
        max_open: 2,
        max_ended: 10,
        max_aborted: 10,
    });
    state.finish_rebuild();
    open(&mut state, 1, 0, 0);
    state.hold(2, 0, 7);
    assert!(matches!(
        state.check_data(&header(3, 0, true, 1)),
        DataVerdict::Refuse(Refusal::Throttled(_))
    ));
    assert_eq!(
        state.check_data(&header(1, 0, true, 1)),
        DataVerdict::Append,
        "an open one goes on"
    );
}

#[test]
fn ended_epochs_are_bounded() {
    let mut state = State::new(Limits {
        max_open: 10,
        max_ended: 3,
        max_aborted: 10,
    });
    state.finish_rebuild();
    for producer_id in 0..10 {
        state.check_marker(&marker(producer_id, 0, true));
        state.marker_durable(&marker(producer_id, 0, true), producer_id as u64);
    }
    assert_eq!(state.ended.len(), 3);
    assert_eq!(state.ended_recency.len(), 3);
}

#[test]
fn aborted_transactions_are_bounded_and_forgotten_below_the_log_start() {
    let mut state = State::new(Limits {
        max_open: 10,
        max_ended: 10,
        max_aborted: 2,
    });
    state.finish_rebuild();
    for producer_id in 0..2 {
        let offset = producer_id as u64 * 2;
        open(&mut state, producer_id, 0, offset);
        let abort = marker(producer_id, 0, false);
        state.check_marker(&abort);
        state.marker_durable(&abort, offset + 1);
    }
    assert_eq!(state.aborted_in(0, u64::MAX).len(), 2);
    assert!(matches!(
        state.check_data(&header(9, 0, true, 4)),
        DataVerdict::Refuse(Refusal::Throttled(_))
    ));
    // Retention deleted offsets below 2: the first abort (marker at 1) goes.
    state.forget_aborted_before(2);
    assert_eq!(state.aborted_in(0, u64::MAX).len(), 1);
    assert!(matches!(
        state.check_data(&header(9, 0, true, 4)),
        DataVerdict::Verify { .. }
    ));
}

#[test]
fn reset_returns_held_jobs_and_forgets() {
    let mut state = loaded();
    open(&mut state, 1, 0, 0);
    state.hold(2, 0, 5);
    assert_eq!(state.reset(), vec![5]);
    assert_eq!(state.last_stable_offset(3), None);
    assert!(!state.is_open(1));
}

// ------------------------------------------------------------ randomised

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data { producer_id: i64, epoch: i16 },
    Marker(Marker),
}

/// The coordinator of every producer, as a correct one behaves: one
/// transaction per epoch, verification OK only for the current epoch,
/// markers sent only after the decision.
#[derive(Debug, Default)]
struct Coordinator {
    /// pid -> (current epoch, transaction ongoing)
    producers: HashMap<i64, (i16, bool)>,
    /// Markers sent (and re-sent: duplicates, delays).
    sent: Vec<Marker>,
    /// Verifications granted: (pid, epoch).
    granted: BTreeSet<(i64, i16)>,
}

impl Coordinator {
    fn add(&mut self, producer_id: i64, epoch: i16) -> Result<(), Refusal> {
        let (current, ongoing) = self.producers.entry(producer_id).or_default();
        if *current != epoch {
            return Err(Refusal::Abortable(format!(
                "epoch {epoch} is not {current}"
            )));
        }
        *ongoing = true;
        self.granted.insert((producer_id, epoch));
        Ok(())
    }

    fn end(&mut self, producer_id: i64, commit: bool) {
        let (current, ongoing) = self.producers.entry(producer_id).or_default();
        if *ongoing {
            self.sent.push(marker(producer_id, *current, commit));
        }
        *current += 1;
        *ongoing = false;
    }
}

/// A verification asked: producer, epoch, the coordinator's answer once
/// given.
type Asked = (i64, i16, Option<Result<(), Refusal>>);

struct Sim {
    state: State,
    durable: Vec<(u64, Kind)>,
    pipeline: VecDeque<(u64, Kind)>,
    next_offset: u64,
    high_watermark: u64,
    /// Verifications asked, with the coordinator's answer once it gave
    /// one (delivered to the partition later).
    verifications: Vec<Asked>,
    coordinator: Coordinator,
}

impl Sim {
    fn new() -> Self {
        Self {
            state: loaded(),
            durable: Vec::new(),
            pipeline: VecDeque::new(),
            next_offset: 0,
            high_watermark: 0,
            verifications: Vec::new(),
            coordinator: Coordinator::default(),
        }
    }

    fn append_data(&mut self, producer_id: i64, epoch: i16) {
        let data = header(producer_id, epoch, true, self.next_offset);
        assert_eq!(self.state.check_data(&data), DataVerdict::Append);
        self.state.data_appending(&data, self.next_offset);
        self.pipeline
            .push_back((self.next_offset, Kind::Data { producer_id, epoch }));
        self.next_offset += 1;
    }

    fn produce(&mut self, producer_id: i64, epoch: i16) {
        match self
            .state
            .check_data(&header(producer_id, epoch, true, self.next_offset))
        {
            DataVerdict::Append => self.append_data(producer_id, epoch),
            DataVerdict::Verify { .. } => {
                self.state.hold(producer_id, epoch, 0);
                self.verifications.push((producer_id, epoch, None));
            }
            DataVerdict::Hold => self.state.hold(producer_id, epoch, 0),
            DataVerdict::Refuse(_) => {}
        }
    }

    /// The coordinator decides a verification, or its answer reaches the
    /// partition.
    fn answer(&mut self, index: usize) {
        let (producer_id, epoch, answer) = &mut self.verifications[index];
        if answer.is_none() {
            *answer = Some(self.coordinator.add(*producer_id, *epoch));
            return;
        }
        let (producer_id, epoch, answer) = self.verifications.swap_remove(index);
        let answer = answer.unwrap_or(Ok(()));
        let (jobs, outcome) = self.state.verified(producer_id, epoch, answer);
        if outcome.is_ok() {
            for _ in jobs {
                self.append_data(producer_id, epoch);
            }
        }
    }

    fn deliver(&mut self, marker: Marker) {
        if let (MarkerVerdict::Append { .. }, _) = self.state.check_marker(&marker) {
            self.pipeline
                .push_back((self.next_offset, Kind::Marker(marker)));
            self.next_offset += 1;
        }
    }

    fn complete(&mut self) {
        let Some((offset, kind)) = self.pipeline.pop_front() else {
            return;
        };
        assert_eq!(offset, self.high_watermark);
        self.high_watermark += 1;
        if let Kind::Marker(marker) = kind {
            self.state.marker_durable(&marker, offset);
        }
        self.durable.push((offset, kind));
    }

    /// A pipeline failure: what was not durable is gone, the state is
    /// rebuilt from the durable log.
    fn fail(&mut self) {
        self.pipeline.clear();
        self.verifications.clear();
        self.next_offset = self.high_watermark;
        self.state.reset();
        self.state = rebuilt(&self.durable);
    }

    fn step(&mut self, rng: &mut rand::rngs::StdRng) {
        let producer_id = rng.random_range(0..4);
        match rng.random_range(0..100) {
            0..=29 => {
                let current = self
                    .coordinator
                    .producers
                    .get(&producer_id)
                    .map_or(0, |p| p.0);
                // Mostly the current epoch; sometimes a delayed earlier one.
                let epoch = (current - rng.random_range(0..2i16)).max(0);
                self.produce(producer_id, epoch);
            }
            30..=44 if !self.verifications.is_empty() => {
                let index = rng.random_range(0..self.verifications.len());
                self.answer(index);
            }
            45..=52 => self.coordinator.end(producer_id, rng.random_bool(0.5)),
            53..=67 if !self.coordinator.sent.is_empty() => {
                // Markers arrive late, out of order and more than once.
                let index = rng.random_range(0..self.coordinator.sent.len());
                let marker = self.coordinator.sent[index];
                self.deliver(marker);
            }
            68..=97 => self.complete(),
            98 => self.fail(),
            _ => {}
        }
    }
}

fn rebuilt(log: &[(u64, Kind)]) -> State {
    let mut state = State::new(LIMITS);
    for &(offset, kind) in log {
        match kind {
            Kind::Data { producer_id, epoch } => {
                state.apply_log(&header(producer_id, epoch, true, offset), None)
            }
            Kind::Marker(marker) => state.apply_log(
                &marker_header(marker.producer_id, marker.txn_epoch, offset),
                Some(&marker),
            ),
        }
    }
    state.finish_rebuild();
    state
}

/// The LSO and aborted ranges as the durable log defines them.
fn model(log: &[(u64, Kind)], high_watermark: u64) -> (u64, Vec<AbortedTxn>) {
    let mut first: HashMap<(i64, i16), u64> = HashMap::new();
    let mut aborted = Vec::new();
    for &(offset, kind) in log {
        match kind {
            Kind::Data { producer_id, epoch } => {
                first.entry((producer_id, epoch)).or_insert(offset);
            }
            Kind::Marker(marker) => {
                if let Some(first_offset) = first.remove(&(marker.producer_id, marker.txn_epoch)) {
                    if !marker.commit {
                        aborted.push(AbortedTxn {
                            producer_id: marker.producer_id,
                            first_offset,
                            marker_offset: offset,
                        });
                    }
                }
            }
        }
    }
    let lso = first.values().copied().min().unwrap_or(high_watermark);
    (lso.min(high_watermark), aborted)
}

/// I2 and I5 on the durable log: data of `(pid, e)` only after a granted
/// verification, never after its marker; at most one marker per
/// transaction in the log, one transaction per pid open at a time.
fn check_log(log: &[(u64, Kind)], granted: &BTreeSet<(i64, i16)>) {
    let mut marked: BTreeSet<(i64, i16)> = BTreeSet::new();
    let mut open: HashMap<i64, i16> = HashMap::new();
    for &(offset, kind) in log {
        match kind {
            Kind::Data { producer_id, epoch } => {
                assert!(
                    granted.contains(&(producer_id, epoch)),
                    "I2: unverified data at {offset}"
                );
                assert!(
                    !marked.contains(&(producer_id, epoch)),
                    "I2: data of ({producer_id}, {epoch}) after its marker at {offset}"
                );
                let current = *open.entry(producer_id).or_insert(epoch);
                assert_eq!(
                    current, epoch,
                    "I5: two transactions of {producer_id} open at {offset}"
                );
            }
            Kind::Marker(marker) => {
                assert!(
                    marked.insert((marker.producer_id, marker.txn_epoch)),
                    "one marker per transaction: {marker:?} at {offset}"
                );
                if open.get(&marker.producer_id) == Some(&marker.txn_epoch) {
                    open.remove(&marker.producer_id);
                }
            }
        }
    }
}

#[test]
fn random_schedules_keep_the_invariants_and_rebuild_to_the_same_state() {
    for seed in 0..300u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut sim = Sim::new();
        for step in 0..400 {
            sim.step(&mut rng);
            let (lso, aborted) = model(&sim.durable, sim.high_watermark);
            assert_eq!(
                sim.state.last_stable_offset(sim.high_watermark),
                Some(lso),
                "seed {seed} step {step}: I4 LSO"
            );
            assert_eq!(
                sim.state.aborted_in(0, u64::MAX),
                aborted,
                "seed {seed} step {step}: I6 index"
            );
        }
        check_log(&sim.durable, &sim.coordinator.granted);
        // Drain: every decided transaction's marker arrives; then the
        // state rebuilt from the log says the same as the live one.
        while !sim.pipeline.is_empty() {
            sim.complete();
        }
        let rebuilt = rebuilt(&sim.durable);
        assert_eq!(
            rebuilt.last_stable_offset(sim.high_watermark),
            sim.state.last_stable_offset(sim.high_watermark),
            "seed {seed}: rebuild LSO"
        );
        assert_eq!(
            rebuilt.aborted_in(0, u64::MAX),
            sim.state.aborted_in(0, u64::MAX),
            "seed {seed}: rebuild index"
        );
    }
}

#[test]
fn the_transaction_holding_the_lso_carries_its_first_timestamp_live_and_rebuilt() {
    let stamped = |producer_id: i64, epoch: i16, offset: u64, timestamp_ms: i64| BatchHeader {
        first_timestamp_ms: timestamp_ms,
        max_timestamp_ms: timestamp_ms,
        ..header(producer_id, epoch, true, offset)
    };
    let mut state = loaded();
    assert_eq!(state.holding_lso(), None);
    // Verified but no batch placed yet: nothing holds the LSO.
    let first = stamped(7, 0, 5, 1_000);
    assert_eq!(
        state.check_data(&first),
        DataVerdict::Verify {
            producer_id: 7,
            epoch: 0
        }
    );
    state.hold(7, 0, 1);
    let _ = state.verified(7, 0, Ok(()));
    assert_eq!(state.holding_lso(), None);
    state.data_appending(&first, 5);
    // A later batch of the same transaction does not move its start.
    state.data_appending(&stamped(7, 0, 6, 9_000), 6);
    assert_eq!(state.holding_lso(), Some((5, 1_000)));
    // A second transaction starting later: the first still holds the LSO.
    let second = stamped(8, 0, 7, 2_000);
    let _ = state.check_data(&second);
    state.hold(8, 0, 2);
    let _ = state.verified(8, 0, Ok(()));
    state.data_appending(&second, 7);
    assert_eq!(state.holding_lso(), Some((5, 1_000)));
    // The first ends: the second holds it.
    let end = marker(7, 0, true);
    let _ = state.check_marker(&end);
    state.marker_durable(&end, 8);
    assert_eq!(state.holding_lso(), Some((7, 2_000)));
    let end = marker(8, 0, false);
    let _ = state.check_marker(&end);
    state.marker_durable(&end, 9);
    assert_eq!(state.holding_lso(), None);
    // Rebuilt from the log: the same answer from the batches' timestamps.
    let mut rebuilt = State::new(LIMITS);
    rebuilt.apply_log(&stamped(7, 0, 5, 1_000), None);
    rebuilt.apply_log(&stamped(8, 0, 7, 2_000), None);
    rebuilt.apply_log(&stamped(7, 0, 6, 9_000), None);
    rebuilt.finish_rebuild();
    assert_eq!(rebuilt.holding_lso(), Some((5, 1_000)));
    rebuilt.apply_log(&marker_header(7, 0, 8), Some(&marker(7, 0, true)));
    assert_eq!(rebuilt.holding_lso(), Some((7, 2_000)));
}
