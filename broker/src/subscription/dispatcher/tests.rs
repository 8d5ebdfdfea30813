//! Tests of the dispatcher's decisions, including randomized runs that try
//! to make it acknowledge a message twice, lose one, or break key order.

use super::*;
use std::collections::HashSet;

fn settings(kind: SubscriptionType) -> Settings {
    Settings {
        kind,
        ack_timeout_ms: 1_000,
        redelivery_backoff_initial_ms: 100,
        redelivery_backoff_max_ms: 400,
        max_deliveries: 0,
        window_messages: 10_000,
        max_delayed_messages: 1_000,
        max_permits_per_consumer: 10_000,
        max_unacknowledged_per_consumer: 0,
    }
}

fn fresh(settings: Settings) -> Dispatcher {
    Dispatcher::new(
        settings,
        1,
        CursorSnapshot {
            epoch: 0,
            subscription_created_at_ms: 5,
            acked: AckedRanges::new(0),
            delivery_counts: BTreeMap::new(),
            parked_keys: BTreeSet::new(),
            pending: Vec::new(),
        },
    )
}

fn scanned(range: std::ops::Range<u64>, keys: u64) -> Vec<Scanned> {
    range
        .map(|offset| Scanned {
            offset,
            key_hash: (keys > 0).then_some(offset % keys.max(1)),
            selected: true,
            deliver_at_ms: None,
            expire_at_ms: None,
            ends_batch: offset % 10 == 9,
        })
        .collect()
}

/// Commits the cursor as the shell does: snapshot, then success.
fn durable(dispatcher: &mut Dispatcher) {
    let _ = dispatcher.snapshot();
    dispatcher.commit_succeeded();
}

fn delivered(actions: &[Action]) -> BTreeMap<ConsumerId, Vec<(u64, u32)>> {
    let mut map: BTreeMap<ConsumerId, Vec<(u64, u32)>> = BTreeMap::new();
    for action in actions {
        if let Action::Deliver { consumer, messages } = action {
            map.entry(*consumer).or_default().extend(messages);
        }
    }
    map
}

#[test]
fn shared_spreads_runs_over_consumers_and_delivers_each_once() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 1_000).unwrap();
    dispatcher.add_consumer(2, "b".into(), 0, 1_000).unwrap();
    dispatcher.add_scanned(&scanned(0..250, 0), 0);
    let given = delivered(&dispatcher.dispatch(0));
    let first: Vec<u64> = given[&1].iter().map(|(offset, _)| *offset).collect();
    let second: Vec<u64> = given[&2].iter().map(|(offset, _)| *offset).collect();
    assert_eq!(first.len() + second.len(), 250);
    assert_eq!(&first[..100], &(0..100).collect::<Vec<_>>()[..]);
    assert_eq!(&second[..100], &(100..200).collect::<Vec<_>>()[..]);
    let all: HashSet<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(all.len(), 250);
    assert!(
        dispatcher.dispatch(0).is_empty(),
        "nothing is delivered twice"
    );
}

#[test]
fn credit_limits_deliveries() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 3).unwrap();
    dispatcher.add_scanned(&scanned(0..10, 0), 0);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1].len(), 3);
    assert!(dispatcher.dispatch(0).is_empty());
    dispatcher.flow(1, 2);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1], vec![(3, 1), (4, 1)]);
}

#[test]
fn only_the_holder_acknowledges() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 1).unwrap();
    dispatcher.add_consumer(2, "b".into(), 0, 0).unwrap();
    dispatcher.add_scanned(&scanned(0..3, 0), 0);
    dispatcher.dispatch(0);
    assert_eq!(dispatcher.ack(2, 0), Err(ErrorCode::DeliveryExpired));
    assert_eq!(
        dispatcher.ack(1, 1),
        Err(ErrorCode::UnknownMessage),
        "never delivered"
    );
    assert_eq!(
        dispatcher.ack(1, 99),
        Err(ErrorCode::UnknownMessage),
        "beyond the log"
    );
    assert_eq!(dispatcher.ack(1, 0), Ok(()));
    assert_eq!(
        dispatcher.ack(1, 0),
        Ok(()),
        "a retried ack is answered the same"
    );
    assert_eq!(dispatcher.mark_delete(), 1);
    assert!(dispatcher.is_dirty());
}

#[test]
fn a_departed_consumers_messages_go_to_another_and_its_late_ack_is_refused() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 5).unwrap();
    dispatcher.add_scanned(&scanned(0..5, 0), 0);
    dispatcher.dispatch(0);
    dispatcher.ack(1, 2).unwrap();
    dispatcher.remove_consumer(1);
    dispatcher.add_consumer(2, "b".into(), 0, 10).unwrap();
    let given = delivered(&dispatcher.dispatch(10));
    assert_eq!(given[&2], vec![(0, 2), (1, 2), (3, 2), (4, 2)]);
    assert_eq!(dispatcher.ack(1, 0), Err(ErrorCode::DeliveryExpired));
}

#[test]
fn ack_timeout_redelivers() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 10).unwrap();
    dispatcher.add_scanned(&scanned(0..1, 0), 0);
    dispatcher.dispatch(0);
    assert_eq!(dispatcher.next_deadline_ms(), Some(1_000));
    assert!(dispatcher.dispatch(999).is_empty());
    assert_eq!(delivered(&dispatcher.dispatch(1_000))[&1], vec![(0, 2)]);
}

#[test]
fn nack_waits_for_a_doubling_capped_backoff() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..1, 0), 0);
    let mut now = 0;
    let mut waits = Vec::new();
    for delivery in 1..=5u32 {
        let given = delivered(&dispatcher.dispatch(now));
        assert_eq!(given[&1], vec![(0, delivery)]);
        dispatcher.nack(1, 0, None, now).unwrap();
        let due = dispatcher.next_deadline_ms().unwrap();
        waits.push(due - now);
        assert!(dispatcher.dispatch(due - 1).is_empty());
        now = due;
    }
    assert_eq!(waits, vec![100, 200, 400, 400, 400]);
    dispatcher.dispatch(now);
    dispatcher.nack(1, 0, Some(7), now).unwrap();
    assert_eq!(dispatcher.next_deadline_ms(), Some(now + 7));
}

#[test]
fn max_deliveries_dead_letters_instead_of_delivering_again() {
    let mut dispatcher = fresh(Settings {
        max_deliveries: 2,
        ..settings(SubscriptionType::Shared)
    });
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..2, 0), 0);
    dispatcher.dispatch(0);
    dispatcher.ack(1, 1).unwrap();
    dispatcher.nack(1, 0, Some(0), 0).unwrap();
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1], vec![(0, 2)]);
    dispatcher.nack(1, 0, Some(0), 0).unwrap();
    assert_eq!(
        dispatcher.dispatch(0),
        vec![Action::DeadLetter {
            offset: 0,
            deliveries: 2
        }]
    );
    assert!(
        dispatcher.dispatch(0).is_empty(),
        "in the dead-letter write"
    );
    dispatcher.dead_letter_failed(0);
    assert_eq!(dispatcher.dispatch(0).len(), 1, "tried again");
    dispatcher.dead_lettered(0);
    assert_eq!(dispatcher.mark_delete(), 2);
    assert_eq!(dispatcher.unacknowledged(), 0);
}

#[test]
fn filtered_messages_count_as_handled() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_scanned(
        &[
            Scanned {
                offset: 0,
                key_hash: None,
                selected: false,
                deliver_at_ms: None,
                expire_at_ms: None,
                ends_batch: true,
            },
            Scanned {
                offset: 1,
                key_hash: None,
                selected: true,
                deliver_at_ms: None,
                expire_at_ms: None,
                ends_batch: true,
            },
            Scanned {
                offset: 2,
                key_hash: None,
                selected: false,
                deliver_at_ms: None,
                expire_at_ms: None,
                ends_batch: true,
            },
        ],
        0,
    );
    assert_eq!(dispatcher.mark_delete(), 1);
    assert_eq!(dispatcher.unacknowledged(), 1);
    assert_eq!(dispatcher.read_position(), 3);
    dispatcher.skip_to(10);
    assert_eq!(dispatcher.read_position(), 10);
}

#[test]
fn the_window_bounds_what_is_held() {
    let mut dispatcher = fresh(Settings {
        window_messages: 4,
        ..settings(SubscriptionType::Shared)
    });
    assert_eq!(dispatcher.window_room(), 4);
    dispatcher.add_scanned(&scanned(0..4, 0), 0);
    assert_eq!(dispatcher.window_room(), 0);
}

#[test]
fn exclusive_refuses_a_second_consumer() {
    let mut dispatcher = fresh(settings(SubscriptionType::Exclusive));
    dispatcher.add_consumer(1, "a".into(), 0, 1).unwrap();
    assert_eq!(
        dispatcher.add_consumer(2, "b".into(), 0, 1),
        Err(OpenError::Busy)
    );
    dispatcher.remove_consumer(1);
    dispatcher.add_consumer(2, "b".into(), 0, 1).unwrap();
}

#[test]
fn failover_switches_to_the_preferred_consumer_and_hands_over_what_was_held() {
    let mut dispatcher = fresh(settings(SubscriptionType::Failover));
    dispatcher.add_consumer(1, "b".into(), 5, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..3, 0), 0);
    let actions = dispatcher.dispatch(0);
    assert!(actions.contains(&Action::Status {
        consumer: 1,
        active: true
    }));
    assert_eq!(delivered(&actions)[&1].len(), 3);
    dispatcher.ack(1, 0).unwrap();
    // A consumer with a lower priority number arrives and takes over.
    dispatcher.add_consumer(2, "a".into(), 1, 100).unwrap();
    let actions = dispatcher.dispatch(1);
    assert!(actions.contains(&Action::Status {
        consumer: 1,
        active: false
    }));
    assert!(actions.contains(&Action::Status {
        consumer: 2,
        active: true
    }));
    assert_eq!(delivered(&actions)[&2], vec![(1, 2), (2, 2)]);
    assert_eq!(dispatcher.ack(1, 1), Err(ErrorCode::DeliveryExpired));
    assert_eq!(dispatcher.ack_cumulative(2, 2), Ok(()));
    assert_eq!(dispatcher.mark_delete(), 3);
}

#[test]
fn cumulative_ack_is_refused_on_shared() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 1).unwrap();
    assert_eq!(
        dispatcher.ack_cumulative(1, 5),
        Err(ErrorCode::InvalidArgument)
    );
}

#[test]
fn key_shared_holds_one_message_per_key() {
    let mut dispatcher = fresh(settings(SubscriptionType::KeyShared));
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_consumer(2, "b".into(), 0, 100).unwrap();
    // Keys 0, 1, 2 repeating.
    dispatcher.add_scanned(&scanned(0..9, 3), 0);
    let first: Vec<u64> = delivered(&dispatcher.dispatch(0))
        .values()
        .flatten()
        .map(|(offset, _)| *offset)
        .collect();
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2], "the first message of each key only");
    // Acknowledging key 1's message lets its next one (offset 4) go.
    let holder = |dispatcher: &Dispatcher, offset: u64| match dispatcher.entries[&offset].state {
        State::InFlight { consumer, .. } => consumer,
        state => panic!("{offset} is {state:?}"),
    };
    let consumer = holder(&dispatcher, 1);
    dispatcher.ack(consumer, 1).unwrap();
    // Not before the acknowledgement is durable.
    assert!(dispatcher.dispatch(0).is_empty());
    let _ = dispatcher.snapshot();
    assert!(dispatcher.dispatch(0).is_empty(), "the commit is in flight");
    dispatcher.commit_failed();
    let _ = dispatcher.snapshot();
    dispatcher.commit_succeeded();
    let next: Vec<u64> = delivered(&dispatcher.dispatch(0))
        .values()
        .flatten()
        .map(|(offset, _)| *offset)
        .collect();
    assert_eq!(next, vec![4]);
}

#[test]
fn key_shared_parks_a_failing_key_and_keeps_the_others_flowing() {
    let mut dispatcher = fresh(Settings {
        max_deliveries: 1,
        ..settings(SubscriptionType::KeyShared)
    });
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    // Offsets 0..6 with keys 0,1,0,1,0,1.
    dispatcher.add_scanned(&scanned(0..6, 2), 0);
    dispatcher.dispatch(0);
    dispatcher.nack(1, 0, Some(0), 0).unwrap();
    dispatcher.ack(1, 1).unwrap();
    durable(&mut dispatcher);
    let actions = dispatcher.dispatch(0);
    assert!(actions.contains(&Action::DeadLetter {
        offset: 0,
        deliveries: 1
    }));
    assert_eq!(delivered(&actions)[&1], vec![(3, 1)], "key 1 flows");
    dispatcher.dead_lettered(0);
    // Key 0 is parked: its later messages follow to the dead-letter
    // topic one at a time, in order.
    assert_eq!(
        dispatcher.dispatch(0),
        vec![Action::DeadLetter {
            offset: 2,
            deliveries: 0
        }]
    );
    dispatcher.dead_lettered(2);
    assert_eq!(
        dispatcher.dispatch(0),
        vec![Action::DeadLetter {
            offset: 4,
            deliveries: 0
        }]
    );
    assert!(dispatcher.snapshot().parked_keys.contains(&0));
}

#[test]
fn a_restored_cursor_skips_what_was_acknowledged_and_keeps_counts() {
    let mut first = fresh(settings(SubscriptionType::Shared));
    first.add_consumer(1, "a".into(), 0, 100).unwrap();
    first.add_scanned(&scanned(0..10, 0), 0);
    first.dispatch(0);
    for offset in [0, 1, 2, 5, 7] {
        first.ack(1, offset).unwrap();
    }
    first.nack(1, 3, Some(0), 0).unwrap();
    first.dispatch(0);
    let snapshot = CursorSnapshot::decode(&first.snapshot().encode()).unwrap();
    assert_eq!(snapshot.acked.mark_delete(), 3);
    assert_eq!(snapshot.delivery_counts.get(&3), Some(&2));
    let mut second = Dispatcher::new(settings(SubscriptionType::Shared), 2, snapshot);
    second.add_consumer(9, "z".into(), 0, 100).unwrap();
    second.add_scanned(&scanned(3..12, 0), 0);
    let given = delivered(&second.dispatch(0));
    assert_eq!(
        given[&9],
        vec![(3, 3), (4, 1), (6, 1), (8, 1), (9, 1), (10, 1), (11, 1)]
    );
}

/// A small deterministic generator so failures replay from the seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// Consumers come and go, ack, nack, stall past their ack timeout; at the
/// end every message has been acknowledged exactly once, and under
/// key-shared no key ever had two messages out at once nor went backwards.
fn simulate(kind: SubscriptionType, seed: u64) {
    const MESSAGES: u64 = 400;
    const KEYS: u64 = 7;
    let mut random = Random(seed);
    let mut dispatcher = fresh(Settings {
        window_messages: 64,
        ..settings(kind)
    });
    let mut now = 0u64;
    let mut next_consumer = 1u64;
    let mut live: Vec<ConsumerId> = Vec::new();
    let mut holding: BTreeMap<ConsumerId, Vec<u64>> = BTreeMap::new();
    let mut acknowledged: BTreeMap<u64, u32> = BTreeMap::new();
    let mut key_out: HashMap<u64, u64> = HashMap::new();
    let mut key_last_acked: HashMap<u64, u64> = HashMap::new();
    for _step in 0..20_000 {
        if dispatcher.read_position() < MESSAGES {
            let room = dispatcher.window_room() as u64;
            let end = (dispatcher.read_position() + room.min(10)).min(MESSAGES);
            dispatcher.add_scanned(&scanned(dispatcher.read_position()..end, KEYS), 0);
        }
        match random.below(10) {
            0 if live.len() < 4 => {
                let id = next_consumer;
                next_consumer += 1;
                if dispatcher
                    .add_consumer(id, format!("c{id}"), random.below(3) as u32, 8)
                    .is_ok()
                {
                    live.push(id);
                }
            }
            1 if !live.is_empty() => {
                let index = random.below(live.len() as u64) as usize;
                let id = live.swap_remove(index);
                dispatcher.remove_consumer(id);
                if let Some(lost) = holding.remove(&id) {
                    for offset in lost {
                        if kind == SubscriptionType::KeyShared {
                            key_out.remove(&(offset % KEYS));
                        }
                    }
                }
            }
            2 => now += 600,
            _ => {}
        }
        for action in dispatcher.dispatch(now) {
            if let Action::Deliver { consumer, messages } = action {
                for (offset, _) in messages {
                    assert!(
                        !dispatcher.acked.contains(offset),
                        "seed {seed}: {offset} delivered after its ack"
                    );
                    if kind == SubscriptionType::KeyShared {
                        let key = offset % KEYS;
                        // A redelivery of the message already out for the
                        // key (its ack timeout passed) is allowed.
                        if let Some(out) = key_out.get(&key) {
                            assert_eq!(*out, offset, "seed {seed}: key {key} has two out");
                        }
                        if let Some(last) = key_last_acked.get(&key) {
                            assert!(offset > *last, "seed {seed}: key {key} went backwards");
                        }
                        key_out.insert(key, offset);
                    }
                    holding.entry(consumer).or_default().push(offset);
                }
            }
        }
        // Each live consumer acts on some of what it holds.
        for id in live.clone() {
            let Some(held) = holding.get_mut(&id) else {
                continue;
            };
            if held.is_empty() {
                continue;
            }
            let index = random.below(held.len() as u64) as usize;
            let offset = held.swap_remove(index);
            match random.below(6) {
                0 => {
                    let _ = dispatcher.nack(id, offset, Some(random.below(50)), now);
                }
                1 => {} // Forgets it; the ack timeout brings it back.
                _ => {
                    let already = dispatcher.acked.contains(offset);
                    if dispatcher.ack(id, offset).is_ok() && !already {
                        *acknowledged.entry(offset).or_default() += 1;
                    }
                    if kind == SubscriptionType::KeyShared {
                        let key = offset % KEYS;
                        if key_out.get(&key) == Some(&offset) && dispatcher.acked.contains(offset) {
                            key_out.remove(&key);
                            key_last_acked.insert(key, offset);
                        }
                    }
                }
            }
            dispatcher.flow(id, 1);
        }
        // The cursor is committed now and then; key-shared holds a key
        // until its acknowledgement is durable.
        if random.below(3) == 0 {
            durable(&mut dispatcher);
        }
        now += 7;
    }
    // Drain: one well-behaved consumer acknowledges everything left.
    let finisher = next_consumer;
    for id in live {
        dispatcher.remove_consumer(id);
    }
    dispatcher
        .add_consumer(finisher, "finisher".into(), 0, u64::MAX / 2)
        .unwrap();
    for _ in 0..200 {
        if dispatcher.read_position() < MESSAGES {
            let end = (dispatcher.read_position() + dispatcher.window_room() as u64).min(MESSAGES);
            dispatcher.add_scanned(&scanned(dispatcher.read_position()..end, KEYS), 0);
        }
        now += 2_000;
        durable(&mut dispatcher);
        for action in dispatcher.dispatch(now) {
            if let Action::Deliver { messages, .. } = action {
                for (offset, _) in messages {
                    dispatcher.ack(finisher, offset).unwrap();
                    *acknowledged.entry(offset).or_default() += 1;
                }
            }
        }
    }
    assert_eq!(
        dispatcher.mark_delete(),
        MESSAGES,
        "seed {seed}: all acknowledged"
    );
    for offset in 0..MESSAGES {
        assert_eq!(
            acknowledged.get(&offset),
            Some(&1),
            "seed {seed}: offset {offset} acknowledged {:?} times",
            acknowledged.get(&offset)
        );
    }
}

#[test]
fn randomized_shared_acknowledges_each_message_exactly_once() {
    for seed in 1..=30 {
        simulate(SubscriptionType::Shared, seed * 7919);
    }
}

#[test]
fn randomized_key_shared_keeps_key_order_and_acknowledges_each_once() {
    for seed in 1..=30 {
        simulate(SubscriptionType::KeyShared, seed * 104_729);
    }
}

#[test]
fn randomized_failover_acknowledges_each_message_exactly_once() {
    for seed in 1..=30 {
        simulate(SubscriptionType::Failover, seed * 15_485_863);
    }
}

fn timed(offset: u64, deliver_at_ms: Option<u64>, expire_at_ms: Option<u64>) -> Scanned {
    Scanned {
        offset,
        key_hash: Some(offset % 2),
        selected: true,
        deliver_at_ms,
        expire_at_ms,
        ends_batch: true,
    }
}

#[test]
fn delayed_messages_wait_for_their_time_outside_the_window() {
    let mut dispatcher = fresh(Settings {
        window_messages: 2,
        max_delayed_messages: 3,
        ..settings(SubscriptionType::KeyShared)
    });
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    let now = 1_000_000;
    dispatcher.add_scanned(
        &[
            timed(0, Some(now + 500), None),
            timed(1, Some(now + 100), None),
            timed(2, None, None),
        ],
        now,
    );
    assert_eq!(dispatcher.delayed(), 2);
    assert_eq!(
        dispatcher.window_room(),
        1,
        "delayed ones are not in the window"
    );
    assert!(!dispatcher.holds_undelayed_in(0, 2));
    assert!(dispatcher.holds_undelayed_in(0, 3));
    assert_eq!(
        dispatcher.explain(0),
        Explanation::Delayed {
            until_ms: now + 500
        }
    );
    // Offset 2 (key 0) is not held back by the delayed offset 0 of its key.
    assert_eq!(delivered(&dispatcher.dispatch(now))[&1], vec![(2, 1)]);
    assert_eq!(dispatcher.next_deadline_ms(), Some(now + 100));
    assert!(dispatcher.dispatch(now + 99).is_empty());
    assert_eq!(delivered(&dispatcher.dispatch(now + 100))[&1], vec![(1, 1)]);
    // Due, but key 0 has offset 2 outstanding: it waits for that ack.
    assert!(dispatcher.dispatch(now + 500).is_empty());
    dispatcher.ack(1, 2).unwrap();
    durable(&mut dispatcher);
    assert_eq!(delivered(&dispatcher.dispatch(now + 500))[&1], vec![(0, 1)]);
    assert_eq!(dispatcher.delayed(), 0);
    // The delayed bound stops reading.
    dispatcher.add_scanned(
        &[
            timed(3, Some(now + 10_000), None),
            timed(4, Some(now + 10_000), None),
            timed(5, Some(now + 10_000), None),
        ],
        now + 500,
    );
    assert_eq!(dispatcher.window_room(), 0);
}

#[test]
fn expired_messages_are_never_delivered_and_are_counted() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    let now = 5_000;
    dispatcher.add_scanned(
        &[
            timed(0, None, Some(now)),
            timed(1, None, Some(now + 100)),
            timed(2, Some(now + 200), Some(now + 150)),
            timed(3, None, None),
        ],
        now,
    );
    assert_eq!(dispatcher.counters().expired, 1, "expired when read");
    assert_eq!(
        dispatcher.explain(0),
        Explanation::Handled(Some(Handled::Expired))
    );
    // Nobody takes offset 1 before it expires.
    assert!(dispatcher.dispatch(now + 100).is_empty());
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    assert_eq!(delivered(&dispatcher.dispatch(now + 100))[&1], vec![(3, 1)]);
    // Offset 2 comes due after it expired: never delivered.
    assert!(dispatcher.dispatch(now + 300).is_empty());
    assert_eq!(dispatcher.counters().expired, 3);
    dispatcher.ack(1, 3).unwrap();
    assert_eq!(dispatcher.mark_delete(), 4);
}

#[test]
fn eviction_skips_held_and_unread_messages_and_counts_them() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 3).unwrap();
    dispatcher.add_scanned(&scanned(0..6, 0), 0);
    dispatcher.dispatch(0);
    dispatcher.ack(1, 1).unwrap();
    dispatcher.nack(1, 2, Some(500), 0).unwrap();
    // 0 in flight, 1 acknowledged, 2 waiting, 3..6 ready, 6..10 unread.
    assert_eq!(dispatcher.evict_before(10), 9);
    assert_eq!(dispatcher.mark_delete(), 10);
    assert_eq!(dispatcher.read_position(), 10);
    assert_eq!(dispatcher.unacknowledged(), 0);
    assert_eq!(dispatcher.in_flight(), 0);
    assert_eq!(dispatcher.next_deadline_ms(), None);
    assert!(dispatcher.is_dirty());
    // The consumer's late ack of an evicted message is answered like a
    // retried one, and nothing evicted is delivered again.
    assert_eq!(dispatcher.ack(1, 0), Ok(()));
    assert!(delivered(&dispatcher.dispatch(10_000)).is_empty());
    assert_eq!(dispatcher.evict_before(5), 0, "already below the cursor");
    // The subscription goes on with later messages.
    dispatcher.flow(1, 2);
    dispatcher.add_scanned(&scanned(10..12, 0), 0);
    assert_eq!(
        delivered(&dispatcher.dispatch(10_000))[&1],
        vec![(10, 1), (11, 1)]
    );
}

#[test]
fn eviction_of_a_key_shared_message_releases_its_key() {
    let mut dispatcher = fresh(settings(SubscriptionType::KeyShared));
    dispatcher.add_consumer(1, "a".into(), 0, 10).unwrap();
    // One key: only offset 0 may be outstanding.
    dispatcher.add_scanned(&scanned(0..3, 1), 0);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1], vec![(0, 1)]);
    assert_eq!(dispatcher.evict_before(1), 1);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1], vec![(1, 1)]);
}

#[test]
fn a_consumer_stops_receiving_at_its_unacknowledged_limit_whatever_its_credit() {
    let mut dispatcher = fresh(Settings {
        max_unacknowledged_per_consumer: 3,
        ..settings(SubscriptionType::Shared)
    });
    dispatcher
        .add_consumer(1, "hoarder".into(), 0, 100)
        .unwrap();
    dispatcher.add_scanned(&scanned(0..10, 0), 0);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1].len(), 3);
    assert!(
        dispatcher.dispatch(0).is_empty(),
        "credit left, but at the limit"
    );
    dispatcher.ack(1, 0).unwrap();
    dispatcher.nack(1, 1, Some(1_000_000), 0).unwrap();
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1], vec![(3, 1), (4, 1)]);
    // Another consumer takes the rest meanwhile.
    dispatcher.add_consumer(2, "other".into(), 0, 100).unwrap();
    assert_eq!(delivered(&dispatcher.dispatch(0))[&2].len(), 3);
    // An ack timeout frees room too.
    assert_eq!(delivered(&dispatcher.dispatch(1_000))[&1].len(), 3);
}

#[test]
fn credit_is_capped_per_consumer() {
    let mut dispatcher = fresh(Settings {
        max_permits_per_consumer: 5,
        ..settings(SubscriptionType::Shared)
    });
    dispatcher
        .add_consumer(1, "greedy".into(), 0, u64::MAX)
        .unwrap();
    dispatcher.add_scanned(&scanned(0..20, 0), 0);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1].len(), 5);
    dispatcher.flow(1, u64::MAX);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1].len(), 5);
}

#[test]
fn an_undecodable_batch_is_stepped_over_counted_and_not_delivered() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..2, 0), 0);
    // A poison batch at 2..1002 (its records cannot be decoded).
    dispatcher.skip_undecodable(1002);
    dispatcher.add_scanned(&scanned(1002..1004, 0), 0);
    let given: Vec<u64> = delivered(&dispatcher.dispatch(0))[&1]
        .iter()
        .map(|(offset, _)| *offset)
        .collect();
    assert_eq!(given, vec![0, 1, 1002, 1003]);
    assert_eq!(dispatcher.counters().undecodable_batches, 1);
    for offset in given {
        dispatcher.ack(1, offset).expect("the holder acknowledges");
    }
    durable(&mut dispatcher);
    assert_eq!(dispatcher.mark_delete(), 1004, "the cursor passes it");
}

#[test]
fn a_lost_range_is_stepped_over_counted_and_not_delivered() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..2, 0), 0);
    // 2..40 was accepted as lost: the scan steps to its end.
    dispatcher.skip_lost(40);
    dispatcher.add_scanned(&scanned(40..42, 0), 0);
    let given: Vec<u64> = delivered(&dispatcher.dispatch(0))[&1]
        .iter()
        .map(|(offset, _)| *offset)
        .collect();
    assert_eq!(given, vec![0, 1, 40, 41]);
    assert_eq!(dispatcher.counters().lost_offsets, 38);
    for offset in given {
        dispatcher.ack(1, offset).expect("the holder acknowledges");
    }
    durable(&mut dispatcher);
    assert_eq!(dispatcher.mark_delete(), 42, "the cursor passes the gap");
}

#[test]
fn a_message_lost_after_it_was_scanned_is_done_with() {
    let mut dispatcher = fresh(settings(SubscriptionType::Shared));
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..3, 0), 0);
    let given = delivered(&dispatcher.dispatch(0))[&1].len();
    assert_eq!(given, 3);
    // Its batch cannot be read back: the range was accepted as lost.
    dispatcher.lost_after_scan(1);
    dispatcher.lost_after_scan(1);
    assert_eq!(dispatcher.counters().lost_offsets, 1, "counted once");
    dispatcher.ack(1, 0).expect("ack");
    dispatcher.ack(1, 2).expect("ack");
    durable(&mut dispatcher);
    assert_eq!(dispatcher.mark_delete(), 3);
    assert_eq!(dispatcher.unacknowledged(), 0);
}
