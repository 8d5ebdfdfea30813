use super::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};

const LIMITS: Limits = Limits {
    max_timeout_ms: 300_000,
    max_participants: 4,
};

const EXPIRE: Event = Event::Expire {
    fresh_producer_id: None,
};

fn part(topic: &str, partition: u32) -> Participant {
    Participant {
        topic: topic.into(),
        partition,
        subscription: String::new(),
    }
}

fn init(principal: &str, fresh: Option<i64>) -> Event {
    Event::Init {
        timeout_ms: 1_000,
        principal: principal.into(),
        fresh_producer_id: fresh,
    }
}

fn add(pid: i64, epoch: i16, partition: u32) -> Event {
    Event::Add {
        producer_id: pid,
        epoch,
        participants: vec![part("t", partition)],
    }
}

fn end(pid: i64, epoch: i16, commit: bool) -> Event {
    Event::End {
        producer_id: pid,
        epoch,
        commit,
        fresh_producer_id: None,
    }
}

/// Applies an accepted event, installing its record as the IO edge does
/// once it is durable.
fn apply(meta: &mut Option<TxnMeta>, event: &Event, now: u64) -> Result<Plan, TxnError> {
    let plan = transition(meta.as_ref(), event, &LIMITS, now)?;
    if let Some(record) = &plan.record {
        *meta = Some(record.clone());
    }
    Ok(plan)
}

fn producer(plan: &Plan) -> (i64, i16) {
    match plan.reply {
        Reply::Producer { producer_id, epoch } => (producer_id, epoch),
        other => panic!("expected a producer answer, got {other:?}"),
    }
}

#[test]
fn init_needs_a_fresh_id_then_answers_epoch_zero_and_bumps_on_every_init() {
    let mut meta = None;
    assert_eq!(
        apply(&mut meta, &init("alice", None), 0),
        Err(TxnError::NeedsProducerId)
    );
    let first = apply(&mut meta, &init("alice", Some(7)), 0).unwrap();
    assert_eq!(producer(&first), (7, 0));
    let second = apply(&mut meta, &init("alice", None), 1).unwrap();
    assert_eq!(producer(&second), (7, 1));
    let meta = meta.unwrap();
    assert_eq!((meta.state, meta.previous_epoch), (TxnState::Empty, -1));
}

#[test]
fn init_refuses_timeouts_outside_the_limit() {
    for timeout_ms in [0, LIMITS.max_timeout_ms + 1, u64::MAX] {
        let event = Event::Init {
            timeout_ms,
            principal: "a".into(),
            fresh_producer_id: Some(1),
        };
        let refused = transition(None, &event, &LIMITS, 0);
        assert!(
            matches!(&refused, Err(TxnError::InvalidArgument(m)) if m.contains("max_timeout_ms")),
            "{refused:?}"
        );
    }
}

#[test]
fn commit_prepares_answers_the_next_epoch_and_completes_on_markers() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    apply(&mut meta, &add(1, 0, 0), 10).unwrap();
    let again = apply(&mut meta, &add(1, 0, 0), 11).unwrap();
    assert_eq!(again.record, None, "a known participant writes nothing");
    apply(&mut meta, &add(1, 0, 1), 12).unwrap();
    let plan = apply(&mut meta, &end(1, 0, true), 20).unwrap();
    assert!(plan.write_markers);
    assert_eq!(producer(&plan), (1, 1));
    let prepared = meta.clone().unwrap();
    assert_eq!(prepared.state, TxnState::Prepare { commit: true });
    assert_eq!(
        (prepared.txn_epoch, prepared.previous_epoch, prepared.epoch),
        (0, 0, 1)
    );
    assert_eq!(prepared.participants.len(), 2);
    // The next transaction waits for the markers.
    assert!(matches!(
        apply(&mut meta, &add(1, 1, 0), 21),
        Err(TxnError::Concurrent(_))
    ));
    // A stale MarkersWritten changes nothing.
    let stale = apply(&mut meta, &Event::MarkersWritten { txn_epoch: 5 }, 22).unwrap();
    assert_eq!(stale.record, None);
    apply(&mut meta, &Event::MarkersWritten { txn_epoch: 0 }, 23).unwrap();
    assert_eq!(
        meta.as_ref().unwrap().state,
        TxnState::Complete { commit: true }
    );
    // A retried End(0, commit) is answered from the record.
    let retried = apply(&mut meta, &end(1, 0, true), 24).unwrap();
    assert_eq!((&retried.record, producer(&retried)), (&None, (1, 1)));
    // The other decision is refused: committed is final.
    assert!(matches!(
        apply(&mut meta, &end(1, 0, false), 25),
        Err(TxnError::InvalidState(_))
    ));
    // The next transaction starts at epoch 1 with no participants.
    apply(&mut meta, &add(1, 1, 3), 26).unwrap();
    let next = meta.unwrap();
    assert_eq!(next.state, TxnState::Ongoing);
    assert_eq!(next.participants, [part("t", 3)].into_iter().collect());
    assert_eq!(next.started_at_ms, 26);
}

#[test]
fn end_without_init_or_with_an_unissued_epoch_is_refused() {
    assert!(matches!(
        transition(None, &end(1, 0, true), &LIMITS, 0),
        Err(TxnError::InvalidState(m)) if m.contains("InitProducerId")
    ));
    assert!(matches!(
        transition(None, &add(1, 0, 0), &LIMITS, 0),
        Err(TxnError::InvalidState(_))
    ));
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    assert!(matches!(
        apply(&mut meta, &end(1, 3, true), 1),
        Err(TxnError::InvalidState(m)) if m.contains("never issued")
    ));
}

#[test]
fn an_empty_transaction_ends_without_markers() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    let plan = apply(&mut meta, &end(1, 0, true), 1).unwrap();
    assert!(!plan.write_markers);
    assert_eq!(producer(&plan), (1, 1));
    assert_eq!(meta.unwrap().state, TxnState::Complete { commit: true });
}

#[test]
fn a_second_init_fences_the_first_instance() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    apply(&mut meta, &add(1, 0, 0), 1).unwrap();
    // Init on an open transaction first records its abort.
    let plan = apply(&mut meta, &init("a", None), 2).unwrap();
    assert!(plan.retry_after_complete && plan.write_markers);
    assert_eq!(
        meta.as_ref().unwrap().state,
        TxnState::Prepare { commit: false }
    );
    assert_eq!(meta.as_ref().unwrap().reason, EndReason::Fenced);
    assert!(matches!(
        apply(&mut meta, &init("a", None), 3),
        Err(TxnError::Concurrent(_))
    ));
    apply(&mut meta, &Event::MarkersWritten { txn_epoch: 0 }, 4).unwrap();
    let plan = apply(&mut meta, &init("a", None), 5).unwrap();
    assert_eq!(producer(&plan), (1, 2));
    // The zombie at epoch 0 is fenced, whatever it asks.
    for event in [end(1, 0, true), end(1, 0, false), add(1, 0, 9)] {
        assert!(
            matches!(
                apply(&mut meta, &event, 6),
                Err(TxnError::ProducerFenced(_))
            ),
            "{event:?}"
        );
    }
}

#[test]
fn init_from_another_principal_takes_a_new_producer_id() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    assert_eq!(
        apply(&mut meta, &init("b", None), 1),
        Err(TxnError::NeedsProducerId)
    );
    let plan = apply(&mut meta, &init("b", Some(2)), 1).unwrap();
    assert_eq!(producer(&plan), (2, 0));
    assert_eq!(meta.as_ref().unwrap().principal, "b");
    assert!(matches!(
        apply(&mut meta, &add(1, 0, 0), 2),
        Err(TxnError::ProducerFenced(_))
    ));
}

#[test]
fn a_timed_out_transaction_is_aborted_and_its_producer_told_to_abort() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    apply(&mut meta, &add(1, 0, 0), 100).unwrap();
    let early = apply(&mut meta, &EXPIRE, 1_099).unwrap();
    assert_eq!(early.record, None);
    let plan = apply(&mut meta, &EXPIRE, 1_100).unwrap();
    assert!(plan.write_markers);
    let aborted = meta.clone().unwrap();
    assert_eq!(
        (aborted.state, aborted.reason),
        (TxnState::Prepare { commit: false }, EndReason::Timeout)
    );
    assert!(matches!(
        apply(&mut meta, &end(1, 0, true), 1_101),
        Err(TxnError::Abortable(m)) if m.contains("timeout")
    ));
    assert!(matches!(
        apply(&mut meta, &add(1, 0, 2), 1_101),
        Err(TxnError::Abortable(_))
    ));
    // KAFKA-19690: its abort succeeds and returns the next epoch.
    let plan = apply(&mut meta, &end(1, 0, false), 1_102).unwrap();
    assert_eq!(producer(&plan), (1, 1));
}

#[test]
fn too_many_participants_make_the_transaction_abortable() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    let many = Event::Add {
        producer_id: 1,
        epoch: 0,
        participants: (0..=LIMITS.max_participants as u32)
            .map(|index| part("t", index))
            .collect(),
    };
    assert!(matches!(
        apply(&mut meta, &many, 1),
        Err(TxnError::Abortable(m)) if m.contains("max_participants_per_transaction")
    ));
    assert_eq!(meta.unwrap().state, TxnState::Empty, "nothing half-applied");
}

#[test]
fn the_epoch_overflows_into_a_fresh_producer_id() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    if let Some(meta) = meta.as_mut() {
        meta.epoch = MAX_EPOCH;
    }
    apply(&mut meta, &add(1, MAX_EPOCH, 0), 1).unwrap();
    assert_eq!(
        apply(&mut meta, &end(1, MAX_EPOCH, true), 2),
        Err(TxnError::NeedsProducerId)
    );
    let with_fresh = Event::End {
        producer_id: 1,
        epoch: MAX_EPOCH,
        commit: true,
        fresh_producer_id: Some(9),
    };
    let plan = apply(&mut meta, &with_fresh, 2).unwrap();
    assert_eq!(producer(&plan), (9, 0));
    let state = meta.clone().unwrap();
    assert_eq!((state.txn_producer_id(), state.txn_epoch), (1, MAX_EPOCH));
    // A retry with the old id is recognised.
    let retried = apply(&mut meta, &end(1, MAX_EPOCH, true), 3).unwrap();
    assert_eq!(producer(&retried), (9, 0));
}

#[test]
fn a_timeout_at_the_last_epoch_aborts_with_a_fresh_producer_id() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    if let Some(meta) = meta.as_mut() {
        meta.epoch = MAX_EPOCH;
    }
    apply(&mut meta, &add(1, MAX_EPOCH, 0), 0).unwrap();
    assert_eq!(
        apply(&mut meta, &EXPIRE, 5_000),
        Err(TxnError::NeedsProducerId),
        "never left open for want of an epoch"
    );
    let with_fresh = Event::Expire {
        fresh_producer_id: Some(2),
    };
    apply(&mut meta, &with_fresh, 5_000).unwrap();
    let aborted = meta.unwrap();
    assert_eq!(aborted.state, TxnState::Prepare { commit: false });
    assert_eq!(
        (aborted.txn_producer_id(), aborted.txn_epoch),
        (1, MAX_EPOCH)
    );
    assert_eq!((aborted.producer_id, aborted.epoch), (2, 0));
}

#[test]
fn admin_abort_of_a_committing_transaction_is_refused() {
    let mut meta = None;
    apply(&mut meta, &init("a", Some(1)), 0).unwrap();
    let admin = Event::Abort {
        reason: EndReason::Admin,
        fresh_producer_id: None,
    };
    assert!(matches!(
        apply(&mut meta, &admin, 1),
        Err(TxnError::InvalidState(_))
    ));
    apply(&mut meta, &add(1, 0, 0), 1).unwrap();
    apply(&mut meta, &end(1, 0, true), 2).unwrap();
    assert!(matches!(
        apply(&mut meta, &admin, 3),
        Err(TxnError::InvalidState(_))
    ));
}

/// A producer instance in the randomised test: what it was last told.
#[derive(Debug, Clone)]
struct Instance {
    principal: &'static str,
    held: Option<(i64, i16)>,
}

/// Random events from several instances of one id, replays of old events
/// and timeouts; after every step the ADR's invariants hold:
/// - a decision, once recorded for `(pid, e)`, never changes (I1);
/// - a Prepare is followed only by the Complete of the same decision with
///   the same participants;
/// - epochs of a producer id never go back, and every producer id taken
///   is fresh;
/// - a commit is recorded only for an End of the instance that most
///   recently initialised the id, at the epoch it was handed (no zombie
///   commits);
/// - no answered epoch exceeds [`MAX_EPOCH`], and no Init answer repeats.
#[test]
fn randomised_events_keep_the_invariants() {
    let mut seen = Coverage::default();
    for seed in 0..400u64 {
        let mut run = Run::new(seed);
        for step in 0..200 {
            run.step(step, &mut seen);
        }
    }
    // The run must reach what it checks.
    let counts = [seen.commits, seen.aborts, seen.fenced, seen.fresh_ids];
    assert!(counts.iter().all(|count| *count > 50), "coverage {seen:?}");
}

/// How often the randomised runs reached what they check.
#[derive(Debug, Default)]
struct Coverage {
    commits: usize,
    aborts: usize,
    fenced: usize,
    fresh_ids: usize,
}

/// One randomised run: the id's durable state, the instances and what
/// has been observed so far.
struct Run {
    seed: u64,
    rng: rand::rngs::StdRng,
    meta: Option<TxnMeta>,
    instances: Vec<Instance>,
    latest_init: Option<usize>,
    next_pid: i64,
    now: u64,
    decisions: HashMap<(i64, i16), bool>,
    init_answers: HashSet<(i64, i16)>,
    highest: BTreeMap<i64, i16>,
    history: Vec<(usize, Event)>,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut instances = vec![
            Instance {
                principal: "a",
                held: None,
            };
            3
        ];
        instances[2].principal = "b";
        // A quarter of the runs start near the epoch limit (overflow).
        let meta = seed.is_multiple_of(4).then(|| TxnMeta {
            producer_id: 100,
            epoch: MAX_EPOCH - 2,
            previous_producer_id: -1,
            previous_epoch: -1,
            state: TxnState::Empty,
            txn_epoch: -1,
            reason: EndReason::Client,
            participants: BTreeSet::new(),
            timeout_ms: 1_000,
            started_at_ms: 0,
            updated_at_ms: 0,
            principal: "a".into(),
        });
        Self {
            seed,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            meta,
            instances,
            latest_init: None,
            next_pid: 101,
            now: 0,
            decisions: HashMap::new(),
            init_answers: HashSet::new(),
            highest: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    /// A random event and the instance that sends it (a replayed one is
    /// attributed to its original sender).
    fn next_event(&mut self) -> (usize, Event) {
        let who = self.rng.random_range(0..self.instances.len());
        let held = self.instances[who].held.unwrap_or((100, 0));
        let event = match self.rng.random_range(0..10) {
            0 => Event::Init {
                timeout_ms: 1_000,
                principal: self.instances[who].principal.into(),
                fresh_producer_id: None,
            },
            1..=3 => add(held.0, held.1, self.rng.random_range(0..6)),
            4 | 5 => end(held.0, held.1, self.rng.random_bool(0.5)),
            6 => Event::MarkersWritten {
                txn_epoch: self.meta.as_ref().map_or(0, |meta| meta.txn_epoch),
            },
            7 => EXPIRE,
            8 => Event::Abort {
                reason: EndReason::Takeover,
                fresh_producer_id: None,
            },
            _ if self.history.is_empty() => EXPIRE,
            _ => {
                let index = self.rng.random_range(0..self.history.len());
                return self.history[index].clone();
            }
        };
        (who, event)
    }

    /// `event` with a fresh producer id, as the IO edge redelivers it.
    fn with_fresh(&mut self, event: &Event) -> Event {
        self.next_pid += 1;
        let fresh = Some(self.next_pid);
        let mut event = event.clone();
        match &mut event {
            Event::Init {
                fresh_producer_id, ..
            }
            | Event::End {
                fresh_producer_id, ..
            }
            | Event::Abort {
                fresh_producer_id, ..
            }
            | Event::Expire { fresh_producer_id } => *fresh_producer_id = fresh,
            other => panic!("seed {}: {other:?} asked for a pid", self.seed),
        }
        event
    }

    fn step(&mut self, step: usize, seen: &mut Coverage) {
        self.now += self.rng.random_range(0..400);
        let (who, event) = self.next_event();
        self.history.push((who, event.clone()));
        let mut outcome = transition(self.meta.as_ref(), &event, &LIMITS, self.now);
        if outcome == Err(TxnError::NeedsProducerId) {
            let with_fresh = self.with_fresh(&event);
            outcome = transition(self.meta.as_ref(), &with_fresh, &LIMITS, self.now);
            seen.fresh_ids += usize::from(outcome.is_ok());
        }
        seen.fenced += usize::from(matches!(outcome, Err(TxnError::ProducerFenced(_))));
        let Ok(plan) = outcome else { return };
        let at = format!("seed {} step {step}", self.seed);
        if let Some(record) = &plan.record {
            self.check_decision(&at, who, &event, record, seen);
            check_record(
                &at,
                self.meta.as_ref(),
                record,
                &mut self.decisions,
                &mut self.highest,
            );
            self.meta = Some(record.clone());
        }
        if let Reply::Producer { producer_id, epoch } = plan.reply {
            self.answered(&at, who, &event, (producer_id, epoch));
        }
    }

    /// A new commit decision comes only from the latest initialiser, at
    /// the epoch it holds (no zombie commits).
    fn check_decision(
        &self,
        at: &str,
        who: usize,
        event: &Event,
        record: &TxnMeta,
        seen: &mut Coverage,
    ) {
        let decided = decision_of(Some(record));
        if decided.is_none() || decision_of(self.meta.as_ref()) == decided {
            return;
        }
        if let TxnState::Prepare { commit: false } | TxnState::Complete { commit: false } =
            record.state
        {
            seen.aborts += 1;
            return;
        }
        seen.commits += 1;
        let Event::End {
            producer_id, epoch, ..
        } = event
        else {
            panic!("{at}: commit decided by {event:?}");
        };
        assert_eq!(self.latest_init, Some(who), "{at}: zombie commit");
        assert_eq!(
            self.instances[who].held,
            Some((*producer_id, *epoch)),
            "{at}"
        );
    }

    /// Records what the instance was told.
    fn answered(&mut self, at: &str, who: usize, event: &Event, answer: (i64, i16)) {
        assert!((0..=MAX_EPOCH).contains(&answer.1), "{at}");
        if let Event::Init { .. } = event {
            assert!(
                self.init_answers.insert(answer),
                "{at}: Init answered {answer:?} twice"
            );
            self.latest_init = Some(who);
        }
        // A replayed End of an epoch its sender left behind tells the
        // sender nothing new.
        let own = match event {
            Event::End {
                producer_id, epoch, ..
            } => self.instances[who].held == Some((*producer_id, *epoch)),
            _ => true,
        };
        if own {
            self.instances[who].held = Some(answer);
        }
    }
}

/// The decision a state records, as (producer id, epoch ended, commit).
fn decision_of(meta: Option<&TxnMeta>) -> Option<(i64, i16, bool)> {
    let meta = meta?;
    match meta.state {
        TxnState::Prepare { commit } | TxnState::Complete { commit } => {
            Some((meta.txn_producer_id(), meta.txn_epoch, commit))
        }
        TxnState::Empty | TxnState::Ongoing => None,
    }
}

fn check_record(
    at: &str,
    before: Option<&TxnMeta>,
    record: &TxnMeta,
    decisions: &mut HashMap<(i64, i16), bool>,
    highest: &mut BTreeMap<i64, i16>,
) {
    if let Some(before) = before {
        if let TxnState::Prepare { commit } = before.state {
            assert_eq!(
                record.state,
                TxnState::Complete { commit },
                "{at}: Prepare left"
            );
            assert_eq!(
                record.participants, before.participants,
                "{at}: participants"
            );
        }
        if before.state == TxnState::Ongoing && record.state == TxnState::Ongoing {
            assert!(
                record.participants.is_superset(&before.participants),
                "{at}"
            );
        }
    }
    match highest.get(&record.producer_id) {
        Some(&epoch) => assert!(record.epoch >= epoch, "{at}: epoch went back"),
        None => assert!(
            highest.keys().all(|pid| *pid < record.producer_id),
            "{at}: producer id reused"
        ),
    }
    highest.insert(record.producer_id, record.epoch);
    if let TxnState::Prepare { commit } | TxnState::Complete { commit } = record.state {
        let key = (record.txn_producer_id(), record.txn_epoch);
        let recorded = *decisions.entry(key).or_insert(commit);
        assert_eq!(recorded, commit, "{at}: decision of {key:?} changed");
    }
    assert!(record.participants.len() <= LIMITS.max_participants, "{at}");
}
