//! Deciding deliveries: which ready message goes to which consumer now,
//! dead letters, key-shared parking, and failover switches.

use super::{Action, Consumer, ConsumerId, Dispatcher, Entry, State, MAX_PARKED_KEYS};
use sluice_proto::v1::SubscriptionType;
use std::collections::{BTreeMap, BTreeSet};

/// Most consecutive messages handed to one shared consumer before the next
/// one gets a turn: large enough to keep whole batches together, small
/// enough to spread load.
const SHARED_RUN_MESSAGES: u64 = 100;
/// Key-shared: ready messages looked at per pass beyond the available
/// credit (messages of busy keys are skipped), bounding each pass's work.
const KEY_SHARED_LOOK_AHEAD: usize = 4096;

impl Dispatcher {
    /// Failover and exclusive: the consumer that gets the messages.
    fn preferred_active(&self) -> Option<ConsumerId> {
        self.consumers
            .iter()
            .min_by(|(id_a, a), (id_b, b)| {
                (a.priority, &a.name, *id_a).cmp(&(b.priority, &b.name, *id_b))
            })
            .map(|(id, _)| *id)
    }

    /// Decides deliveries, dead letters and failover switches for now.
    pub fn dispatch(&mut self, now_ms: u64) -> Vec<Action> {
        self.tick(now_ms);
        let mut actions = Vec::new();
        if matches!(
            self.settings.kind,
            SubscriptionType::Failover | SubscriptionType::Exclusive
        ) {
            let preferred = self.preferred_active();
            if preferred != self.active {
                if let Some(previous) = self.active {
                    if self.consumers.contains_key(&previous) {
                        self.release_held_by(previous);
                        actions.push(Action::Status {
                            consumer: previous,
                            active: false,
                        });
                    }
                }
                if let Some(next) = preferred {
                    actions.push(Action::Status {
                        consumer: next,
                        active: true,
                    });
                }
                self.active = preferred;
            }
        }
        let mut deliveries: BTreeMap<ConsumerId, Vec<(u64, u32)>> = BTreeMap::new();
        // Keys that must not move in this pass (an earlier message of the
        // key is waiting for its consumer's credit).
        let mut blocked_keys: BTreeSet<u64> = BTreeSet::new();
        // Bounded work per pass: as many candidates as there is credit
        // (key-shared may skip blocked keys, so it looks further).
        let mut permits_left = self.total_permits();
        let look_ahead = if self.settings.kind == SubscriptionType::KeyShared {
            KEY_SHARED_LOOK_AHEAD
        } else {
            0
        };
        let limit = usize::try_from(permits_left)
            .unwrap_or(usize::MAX)
            .saturating_add(look_ahead);
        let candidates: Vec<u64> = self.ready.iter().take(limit).copied().collect();
        for offset in candidates {
            if permits_left == 0 {
                break;
            }
            let Some(entry) = self.entries.get(&offset).copied() else {
                continue;
            };
            if entry.expire_at_ms.is_some_and(|at| at <= now_ms) {
                self.expire(offset);
                continue;
            }
            let key_shared = self.settings.kind == SubscriptionType::KeyShared;
            if key_shared {
                if let Some(key) = entry.key_hash {
                    if blocked_keys.contains(&key)
                        || self
                            .held_keys
                            .get(&key)
                            .is_some_and(|holder| *holder != offset)
                    {
                        continue;
                    }
                }
            }
            let exhausted = self.settings.max_deliveries > 0
                && entry.deliveries >= self.settings.max_deliveries;
            let parked = key_shared
                && entry
                    .key_hash
                    .is_some_and(|key| self.parked_keys.contains(&key));
            if exhausted || parked {
                self.ready.remove(&offset);
                if let Some(entry) = self.entries.get_mut(&offset) {
                    entry.state = State::DeadLettering;
                }
                if key_shared {
                    if let Some(key) = entry.key_hash {
                        self.held_keys.insert(key, offset);
                        self.park(key);
                    }
                }
                actions.push(Action::DeadLetter {
                    offset,
                    deliveries: entry.deliveries,
                });
                continue;
            }
            let Some(consumer) = self.choose_consumer(&entry) else {
                if let Some(key) = entry.key_hash.filter(|_| key_shared) {
                    blocked_keys.insert(key);
                    continue;
                }
                if key_shared {
                    continue;
                }
                break;
            };
            let deadline_ms = now_ms.saturating_add(self.settings.ack_timeout_ms);
            let deliveries_now = entry.deliveries.saturating_add(1);
            if let Some(entry) = self.entries.get_mut(&offset) {
                entry.deliveries = deliveries_now;
                entry.state = State::InFlight {
                    consumer,
                    deadline_ms,
                };
            }
            self.ready.remove(&offset);
            self.deadlines.insert((deadline_ms, offset));
            self.counters.delivered += 1;
            if deliveries_now > 1 {
                self.counters.redelivered += 1;
                self.redelivered.insert(offset);
            }
            permits_left -= 1;
            self.turn_at_batch_end = entry.ends_batch;
            if let Some(key) = entry.key_hash.filter(|_| key_shared) {
                self.held_keys.insert(key, offset);
            }
            if let Some(state) = self.consumers.get_mut(&consumer) {
                state.permits -= 1;
                state.in_flight += 1;
            }
            deliveries
                .entry(consumer)
                .or_default()
                .push((offset, deliveries_now));
        }
        actions.extend(
            deliveries
                .into_iter()
                .map(|(consumer, messages)| Action::Deliver { consumer, messages }),
        );
        actions
    }

    fn park(&mut self, key: u64) {
        if self.parked_keys.insert(key) {
            self.dirty = true;
            if self.parked_keys.len() > MAX_PARKED_KEYS {
                // Forget an arbitrary (the smallest) parking: bounded memory
                // beats remembering every key forever.
                self.parked_keys.pop_first();
            }
        }
    }

    fn total_permits(&self) -> u64 {
        self.consumers.values().fold(0u64, |total, consumer| {
            total.saturating_add(consumer.permits)
        })
    }

    fn choose_consumer(&mut self, entry: &Entry) -> Option<ConsumerId> {
        match self.settings.kind {
            SubscriptionType::Exclusive | SubscriptionType::Failover => self.active.filter(|id| {
                self.consumers
                    .get(id)
                    .is_some_and(|c| can_take(c, self.settings.max_unacknowledged_per_consumer))
            }),
            SubscriptionType::KeyShared if entry.key_hash.is_some() => {
                let key = entry.key_hash.unwrap_or_default();
                // Rendezvous hashing: a key stays with its consumer while
                // the set of consumers does not change.
                let chosen = self
                    .consumers
                    .keys()
                    .max_by_key(|id| mix(key ^ mix(**id)))
                    .copied()?;
                self.consumers
                    .get(&chosen)
                    .filter(|consumer| {
                        can_take(consumer, self.settings.max_unacknowledged_per_consumer)
                    })
                    .map(|_| chosen)
            }
            _ => self.next_shared_consumer(),
        }
    }

    /// Shared: runs of up to `SHARED_RUN_MESSAGES` per consumer, in turn.
    fn next_shared_consumer(&mut self) -> Option<ConsumerId> {
        if let Some((id, given)) = self.turn {
            let run_may_go_on = given < SHARED_RUN_MESSAGES
                || (!self.turn_at_batch_end && given < SHARED_RUN_MESSAGES * 4);
            if run_may_go_on
                && self
                    .consumers
                    .get(&id)
                    .is_some_and(|c| can_take(c, self.settings.max_unacknowledged_per_consumer))
            {
                self.turn = Some((id, given + 1));
                return Some(id);
            }
        }
        let after = self.turn.map(|(id, _)| id);
        let next = after
            .and_then(|after| {
                self.consumers
                    .range(after + 1..)
                    .find(|(_, consumer)| {
                        can_take(consumer, self.settings.max_unacknowledged_per_consumer)
                    })
                    .map(|(id, _)| *id)
            })
            .or_else(|| {
                self.consumers
                    .iter()
                    .find(|(_, consumer)| {
                        can_take(consumer, self.settings.max_unacknowledged_per_consumer)
                    })
                    .map(|(id, _)| *id)
            })?;
        self.turn = Some((next, 1));
        Some(next)
    }
}

/// Whether a consumer may be given one more message: it has credit and is
/// below the limit of unacknowledged messages (0: none).
fn can_take(consumer: &Consumer, max_unacknowledged: u64) -> bool {
    consumer.permits > 0 && (max_unacknowledged == 0 || consumer.in_flight < max_unacknowledged)
}

/// A 64-bit mixer (splitmix64's finaliser) for rendezvous hashing.
fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}
