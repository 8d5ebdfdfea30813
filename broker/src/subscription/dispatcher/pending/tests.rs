//! The pending-ack rules of ADR 0016 §6, one test each, and a randomised
//! run against a model: a message is never acknowledged twice, never lost,
//! never delivered while pending, and the cursor (pending section included)
//! always decodes to what the dispatcher holds.

use super::super::{Action, ConsumerId, Dispatcher, Scanned, Settings};
use super::TxnAck;
use crate::subscription::cursor::{AckedRanges, CursorSnapshot};
use sluice_proto::v1::SubscriptionType;
use sluice_proto::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};

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

fn empty_cursor() -> CursorSnapshot {
    CursorSnapshot {
        epoch: 0,
        subscription_created_at_ms: 5,
        acked: AckedRanges::new(0),
        delivery_counts: BTreeMap::new(),
        parked_keys: BTreeSet::new(),
        pending: Vec::new(),
    }
}

fn scanned(range: std::ops::Range<u64>, keys: u64) -> Vec<Scanned> {
    range
        .map(|offset| Scanned {
            offset,
            key_hash: (keys > 0).then_some(offset % keys.max(1)),
            selected: true,
            deliver_at_ms: None,
            expire_at_ms: None,
            ends_batch: true,
        })
        .collect()
}

fn delivered(actions: &[Action]) -> BTreeMap<ConsumerId, Vec<u64>> {
    let mut map: BTreeMap<ConsumerId, Vec<u64>> = BTreeMap::new();
    for action in actions {
        if let Action::Deliver { consumer, messages } = action {
            map.entry(*consumer)
                .or_default()
                .extend(messages.iter().map(|(offset, _)| *offset));
        }
    }
    map
}

fn txn(producer_id: i64, epoch: i16) -> TxnAck {
    TxnAck {
        transactional_id: format!("worker-{producer_id}"),
        producer_id,
        epoch,
    }
}

/// A shared dispatcher with `count` messages, all delivered to consumer 1.
fn delivered_to_one(kind: SubscriptionType, count: u64, keys: u64) -> Dispatcher {
    let mut dispatcher = Dispatcher::new(settings(kind), 1, empty_cursor());
    dispatcher.add_consumer(1, "a".into(), 0, 1_000).unwrap();
    dispatcher.add_scanned(&scanned(0..count, keys), 0);
    let given = delivered(&dispatcher.dispatch(0));
    assert_eq!(given[&1].len() as u64, count);
    dispatcher
}

#[test]
fn only_the_holder_acknowledges_in_a_transaction() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 3, 0);
    dispatcher.add_consumer(2, "b".into(), 0, 0).unwrap();
    let t = txn(7, 0);
    assert_eq!(
        dispatcher.check_transactional_ack(2, 0, &t),
        Err(ErrorCode::DeliveryExpired)
    );
    assert_eq!(
        dispatcher.ack_in_transaction(2, 0, &t),
        Err(ErrorCode::DeliveryExpired)
    );
    assert_eq!(
        dispatcher.ack_in_transaction(1, 99, &t),
        Err(ErrorCode::UnknownMessage)
    );
    assert_eq!(dispatcher.ack_in_transaction(1, 0, &t), Ok(()));
    assert_eq!(
        dispatcher.ack_in_transaction(1, 0, &t),
        Ok(()),
        "a retried request of the same transaction is answered the same"
    );
    assert_eq!(
        dispatcher.ack_in_transaction(1, 0, &txn(7, 1)),
        Err(ErrorCode::DeliveryExpired),
        "another transaction of the same producer cannot take it"
    );
    let forged = TxnAck {
        transactional_id: "someone-else".into(),
        ..t.clone()
    };
    assert_eq!(
        dispatcher.ack_in_transaction(1, 0, &forged),
        Err(ErrorCode::InvalidTransactionState)
    );
    assert_eq!(dispatcher.pending_acks(), 1);
}

#[test]
fn a_pending_message_is_neither_redelivered_nor_timed_out_nor_acked_by_others() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 2, 0);
    dispatcher.ack_in_transaction(1, 0, &txn(7, 0)).unwrap();
    // Far past the ack timeout, and its consumer gone.
    dispatcher.remove_consumer(1);
    dispatcher.add_consumer(2, "b".into(), 0, 1_000).unwrap();
    let given = delivered(&dispatcher.dispatch(1_000_000));
    assert_eq!(
        given[&2],
        vec![1],
        "only the message not pending comes again"
    );
    assert_eq!(dispatcher.ack(2, 0), Err(ErrorCode::DeliveryExpired));
    assert_eq!(
        dispatcher.nack(2, 0, None, 0),
        Err(ErrorCode::DeliveryExpired)
    );
    assert_eq!(
        dispatcher.check_transactional_ack(2, 0, &txn(8, 0)),
        Err(ErrorCode::DeliveryExpired)
    );
    assert_eq!(dispatcher.mark_delete(), 0, "not acknowledged yet");
    assert_eq!(dispatcher.in_flight(), 1);
}

#[test]
fn commit_acknowledges_and_abort_redelivers_with_the_count_kept() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 4, 0);
    dispatcher.ack_in_transaction(1, 0, &txn(7, 0)).unwrap();
    dispatcher.ack_in_transaction(1, 1, &txn(7, 0)).unwrap();
    dispatcher.ack_in_transaction(1, 2, &txn(8, 3)).unwrap();
    assert_eq!(dispatcher.resolve_transaction(7, 0, true), 2);
    assert_eq!(dispatcher.mark_delete(), 2);
    assert_eq!(dispatcher.counters().acknowledged, 2);
    assert_eq!(dispatcher.resolve_transaction(8, 3, false), 1);
    let given = delivered(&dispatcher.dispatch(0));
    assert_eq!(given[&1], vec![2], "the aborted ack's message comes again");
    assert!(matches!(
        dispatcher.explain(2),
        super::super::Explanation::InFlight { deliveries: 2, .. }
    ));
    assert_eq!(dispatcher.pending_acks(), 0);
    assert_eq!(
        dispatcher.resolve_transaction(7, 0, false),
        0,
        "a retried marker finds nothing"
    );
    assert_eq!(dispatcher.mark_delete(), 2, "and changes nothing");
}

#[test]
fn an_abort_counts_towards_max_deliveries_and_dead_letters() {
    let mut config = settings(SubscriptionType::Shared);
    config.max_deliveries = 1;
    let mut dispatcher = Dispatcher::new(config, 1, empty_cursor());
    dispatcher.add_consumer(1, "a".into(), 0, 10).unwrap();
    dispatcher.add_scanned(&scanned(0..1, 0), 0);
    dispatcher.dispatch(0);
    dispatcher.ack_in_transaction(1, 0, &txn(7, 0)).unwrap();
    dispatcher.resolve_transaction(7, 0, false);
    assert_eq!(
        dispatcher.dispatch(0),
        vec![Action::DeadLetter {
            offset: 0,
            deliveries: 1
        }]
    );
}

#[test]
fn a_marker_of_another_epoch_or_producer_resolves_nothing() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 2, 0);
    dispatcher.ack_in_transaction(1, 0, &txn(7, 4)).unwrap();
    assert_eq!(dispatcher.resolve_transaction(7, 3, true), 0);
    assert_eq!(dispatcher.resolve_transaction(7, 5, true), 0);
    assert_eq!(dispatcher.resolve_transaction(8, 4, true), 0);
    assert_eq!(dispatcher.pending_acks(), 1);
    assert_eq!(dispatcher.mark_delete(), 0);
    assert_eq!(dispatcher.resolve_transaction(7, 4, true), 1);
    assert_eq!(dispatcher.mark_delete(), 1);
}

#[test]
fn a_verification_answered_after_the_marker_opens_nothing() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 2, 0);
    let t = txn(7, 2);
    assert_eq!(dispatcher.check_transactional_ack(1, 0, &t), Ok(()));
    // The coordinator aborted the transaction (timeout) and its marker
    // came before the verification's answer.
    assert_eq!(dispatcher.resolve_transaction(7, 2, false), 0);
    assert_eq!(
        dispatcher.ack_in_transaction(1, 0, &t),
        Err(ErrorCode::TransactionAbortable)
    );
    assert_eq!(
        dispatcher.ack_in_transaction(1, 0, &txn(7, 1)),
        Err(ErrorCode::TransactionAbortable),
        "older epochs too"
    );
    assert_eq!(dispatcher.ack_in_transaction(1, 0, &txn(7, 3)), Ok(()));
}

#[test]
fn key_shared_keeps_the_key_held_until_the_commit_is_durable() {
    // Keys: offset % 2, so 0 and 2 share a key.
    let mut dispatcher = Dispatcher::new(settings(SubscriptionType::KeyShared), 1, empty_cursor());
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..4, 2), 0);
    let first = delivered(&dispatcher.dispatch(0));
    assert_eq!(first[&1], vec![0, 1]);
    dispatcher.ack_in_transaction(1, 0, &txn(7, 0)).unwrap();
    assert!(
        !delivered(&dispatcher.dispatch(10_000))[&1].contains(&2),
        "offset 2 waits behind the pending 0, past any ack timeout"
    );
    dispatcher.resolve_transaction(7, 0, true);
    assert!(
        delivered(&dispatcher.dispatch(10_000))
            .get(&1)
            .is_none_or(|o| !o.contains(&2)),
        "still held until the cursor holding the commit is durable"
    );
    let _ = dispatcher.snapshot();
    dispatcher.commit_succeeded();
    assert!(delivered(&dispatcher.dispatch(10_000))[&1].contains(&2));
}

#[test]
fn key_shared_abort_gives_the_key_back_to_its_own_message_first() {
    let mut dispatcher = Dispatcher::new(settings(SubscriptionType::KeyShared), 1, empty_cursor());
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..4, 2), 0);
    dispatcher.dispatch(0);
    dispatcher.ack_in_transaction(1, 0, &txn(7, 0)).unwrap();
    dispatcher.resolve_transaction(7, 0, false);
    let again = delivered(&dispatcher.dispatch(0));
    assert_eq!(again[&1], vec![0], "0 again, 2 still behind it");
}

#[test]
fn the_pending_section_survives_an_owner_change() {
    // Keys offset % 3: 0 1 2 0 1 2.
    let mut dispatcher = Dispatcher::new(settings(SubscriptionType::KeyShared), 1, empty_cursor());
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..6, 3), 0);
    assert_eq!(delivered(&dispatcher.dispatch(0))[&1], vec![0, 1, 2]);
    dispatcher.ack_in_transaction(1, 1, &txn(7, 0)).unwrap();
    dispatcher.ack_in_transaction(1, 2, &txn(9, 2)).unwrap();
    dispatcher.ack(1, 0).unwrap();
    let cursor = CursorSnapshot::decode(&dispatcher.snapshot().encode()).expect("decodes");
    assert_eq!(cursor.pending.len(), 2);
    // The new owner: pending messages wait for the marker, keys held.
    let mut next = Dispatcher::new(settings(SubscriptionType::KeyShared), 2, cursor);
    next.add_consumer(5, "b".into(), 0, 100).unwrap();
    next.add_scanned(&scanned(0..6, 3), 0);
    assert_eq!(
        delivered(&next.dispatch(0))[&5],
        vec![3],
        "1 and 2 pending hold keys 1 and 2"
    );
    assert_eq!(next.pending_acks(), 2);
    assert_eq!(next.ack(5, 1), Err(ErrorCode::DeliveryExpired));
    assert_eq!(next.resolve_transaction(7, 0, true), 1);
    assert_eq!(next.resolve_transaction(9, 2, false), 1);
    assert_eq!(
        delivered(&next.dispatch(0))[&5],
        vec![2],
        "the aborted 2 again; 4 waits for the commit of 1 to be durable"
    );
    let _ = next.snapshot();
    next.commit_succeeded();
    assert_eq!(delivered(&next.dispatch(0))[&5], vec![4]);
    assert_eq!(next.mark_delete(), 2);
}

#[test]
fn a_marker_for_messages_not_scanned_yet_resolves_them_in_the_cursor() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 3, 0);
    dispatcher.ack_in_transaction(1, 1, &txn(7, 0)).unwrap();
    dispatcher.ack_in_transaction(1, 2, &txn(8, 0)).unwrap();
    let cursor = dispatcher.snapshot();
    let mut next = Dispatcher::new(settings(SubscriptionType::Shared), 2, cursor);
    assert_eq!(next.resolve_transaction(7, 0, true), 1);
    assert_eq!(next.resolve_transaction(8, 0, false), 1);
    let cursor = CursorSnapshot::decode(&next.snapshot().encode()).expect("decodes");
    assert!(cursor.pending.is_empty());
    assert!(cursor.acked.contains(1) && !cursor.acked.contains(2));
    next.add_consumer(1, "a".into(), 0, 10).unwrap();
    next.add_scanned(&scanned(0..3, 0), 0);
    assert_eq!(delivered(&next.dispatch(0))[&1], vec![0, 2]);
}

#[test]
fn a_restored_pending_message_ignores_its_ttl_until_the_marker() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 2, 0);
    dispatcher.ack_in_transaction(1, 1, &txn(7, 0)).unwrap();
    let mut next = Dispatcher::new(settings(SubscriptionType::Shared), 2, dispatcher.snapshot());
    let mut messages = scanned(0..2, 0);
    messages[1].expire_at_ms = Some(1);
    messages[1].selected = false;
    next.add_scanned(&messages, 100);
    assert_eq!(next.pending_acks(), 1);
    CursorSnapshot::decode(&next.snapshot().encode()).expect("still a valid cursor");
}

#[test]
fn eviction_and_skips_drop_pending_acks_and_keep_the_cursor_valid() {
    let mut dispatcher = delivered_to_one(SubscriptionType::Shared, 4, 0);
    dispatcher.ack_in_transaction(1, 1, &txn(7, 0)).unwrap();
    dispatcher.ack_in_transaction(1, 3, &txn(7, 0)).unwrap();
    let restored = dispatcher.snapshot();
    dispatcher.evict_before(2);
    assert_eq!(dispatcher.pending_acks(), 1);
    CursorSnapshot::decode(&dispatcher.snapshot().encode()).expect("valid");
    assert_eq!(dispatcher.resolve_transaction(7, 0, false), 1);
    // Restored and skipped before being scanned (retention).
    let mut next = Dispatcher::new(settings(SubscriptionType::Shared), 2, restored);
    next.skip_to(3);
    assert_eq!(next.pending_acks(), 1);
    CursorSnapshot::decode(&next.snapshot().encode()).expect("valid");
}

#[test]
fn the_window_bounds_pending_acks() {
    let mut config = settings(SubscriptionType::Shared);
    config.window_messages = 3;
    let mut dispatcher = Dispatcher::new(config, 1, empty_cursor());
    dispatcher.add_consumer(1, "a".into(), 0, 100).unwrap();
    dispatcher.add_scanned(&scanned(0..3, 0), 0);
    dispatcher.dispatch(0);
    for offset in 0..3 {
        dispatcher
            .ack_in_transaction(1, offset, &txn(7, 0))
            .unwrap();
    }
    assert_eq!(
        dispatcher.window_room(),
        0,
        "pending messages fill the window"
    );
    dispatcher.resolve_transaction(7, 0, true);
    assert_eq!(dispatcher.window_room(), 3);
}

/// xorshift64*
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Random consumers, plain and transactional acks, nacks, markers (right,
/// stale, duplicated), timeouts and owner changes through the cursor. A
/// model tracks, per offset, whether an ack is final; checked after every
/// step: nothing acknowledged is delivered again, nothing pending is
/// delivered, committed acks stay, and the cursor round-trips.
#[test]
fn randomised_pending_acks_against_a_model() {
    let mut resolved_total = 0;
    for round in 0..60u64 {
        let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (round + 1);
        let kind = if round % 2 == 0 {
            SubscriptionType::Shared
        } else {
            SubscriptionType::KeyShared
        };
        let count = 40;
        let mut dispatcher = Dispatcher::new(settings(kind), 1, empty_cursor());
        dispatcher.add_scanned(&scanned(0..count, 5), 0);
        let mut holders: BTreeMap<u64, ConsumerId> = BTreeMap::new();
        // Offset → (producer, epoch) of its pending ack.
        let mut pending: BTreeMap<u64, (i64, i16)> = BTreeMap::new();
        let mut committed: BTreeSet<u64> = BTreeSet::new();
        let mut epochs: BTreeMap<i64, i16> = BTreeMap::from([(1, 0), (2, 0)]);
        let mut now = 0u64;
        let mut owner_epoch = 1;
        for consumer in 1..=3 {
            dispatcher
                .add_consumer(consumer, format!("c{consumer}"), 0, 1_000)
                .unwrap();
        }
        for _step in 0..400 {
            now += next(&mut seed) % 300;
            match next(&mut seed) % 9 {
                0..=2 => {
                    for (consumer, offsets) in delivered(&dispatcher.dispatch(now)) {
                        for offset in offsets {
                            assert!(
                                !committed.contains(&offset),
                                "{offset} delivered after its commit"
                            );
                            assert!(
                                !pending.contains_key(&offset),
                                "{offset} delivered while pending"
                            );
                            holders.insert(offset, consumer);
                        }
                    }
                }
                3 | 4 => {
                    if let Some((&offset, &consumer)) =
                        holders.iter().nth((next(&mut seed) % 8) as usize)
                    {
                        let producer = 1 + (next(&mut seed) % 2) as i64;
                        let t = txn(producer, epochs[&producer]);
                        if dispatcher.ack_in_transaction(consumer, offset, &t).is_ok() {
                            holders.remove(&offset);
                            pending.insert(offset, (producer, t.epoch));
                        }
                    }
                }
                5 => {
                    if let Some((&offset, &consumer)) = holders.iter().next() {
                        if dispatcher.ack(consumer, offset).is_ok() {
                            holders.remove(&offset);
                            committed.insert(offset);
                        }
                    }
                }
                6 | 7 => {
                    let producer = 1 + (next(&mut seed) % 2) as i64;
                    let commit = next(&mut seed).is_multiple_of(2);
                    let stale = next(&mut seed).is_multiple_of(4) && epochs[&producer] > 0;
                    let epoch = epochs[&producer] - i16::from(stale);
                    resolved_total += dispatcher.resolve_transaction(producer, epoch, commit);
                    if !stale {
                        let resolved: Vec<u64> = pending
                            .iter()
                            .filter(|(_, which)| **which == (producer, epoch))
                            .map(|(offset, _)| *offset)
                            .collect();
                        for offset in resolved {
                            pending.remove(&offset);
                            if commit {
                                committed.insert(offset);
                            }
                        }
                        epochs.insert(producer, epoch + 1);
                    }
                }
                _ => {
                    // Owner change: the next owner starts from the cursor.
                    let cursor = CursorSnapshot::decode(&dispatcher.snapshot().encode())
                        .expect("the cursor always decodes");
                    owner_epoch += 1;
                    dispatcher = Dispatcher::new(settings(kind), owner_epoch, cursor);
                    dispatcher.add_scanned(&scanned(0..count, 5), now);
                    holders.clear();
                    for consumer in 1..=3 {
                        dispatcher
                            .add_consumer(consumer, format!("c{consumer}"), 0, 1_000)
                            .unwrap();
                    }
                }
            }
            if next(&mut seed).is_multiple_of(3) {
                let _ = dispatcher.snapshot();
                dispatcher.commit_succeeded();
            }
            assert_eq!(dispatcher.pending_acks(), pending.len(), "round {round}");
            for offset in &committed {
                assert!(
                    matches!(
                        dispatcher.explain(*offset),
                        super::super::Explanation::Handled(_)
                    ),
                    "committed {offset} is acknowledged"
                );
            }
            for offset in pending.keys() {
                assert!(matches!(
                    dispatcher.explain(*offset),
                    super::super::Explanation::PendingTransaction { .. }
                ));
            }
        }
    }
    assert!(
        resolved_total > 500,
        "the run resolved only {resolved_total} pending acks"
    );
}
