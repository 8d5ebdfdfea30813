//! The decisions of one subscription on one partition, as a pure state
//! machine (no IO, time passed in): which scanned message goes to which
//! consumer, what an acknowledgement or negative acknowledgement does, when
//! an unacknowledged message is delivered again, when it is dead-lettered,
//! and what the cursor is. The task in `mod.rs` feeds it the log and the
//! consumers' requests and carries out its [`Action`]s.
//!
//! Rules (ADR 0011):
//! - A message is *in flight* from its delivery until it is acknowledged,
//!   negatively acknowledged, its ack timeout passes, or its consumer goes;
//!   then it is *ready* again (after the backoff, for a negative ack).
//! - Only the consumer holding a message may acknowledge it; an ack for a
//!   message whose delivery ended is refused (`DeliveryExpired`), so one
//!   message is never acknowledged twice.
//! - A message delivered `max_deliveries` times without an ack goes to the
//!   dead-letter topic instead of a further delivery.
//! - Key-shared: a key has at most one message outstanding (in flight,
//!   waiting for redelivery, or being dead-lettered), so a key's messages
//!   are processed in log order whichever consumers come and go. A key
//!   whose message was dead-lettered is *parked*: its later messages go to
//!   the dead-letter topic too, in order, while other keys flow.
//! - Failover: the connected consumer with the lowest (priority, name) is
//!   active and gets everything; when it changes, what the previous one
//!   held is delivered again to the new one.
//! - At most `window_messages` scanned, unacknowledged messages are held,
//!   which bounds memory and the cursor's size; delayed messages are bounded
//!   separately (`max_delayed_messages`).
//! - A delayed message waits until its delivery time (it does not hold its
//!   key: delays reorder by design). An expired message (TTL) is never
//!   delivered; it counts as handled.
//! - Transactional acknowledgements (ADR 0016 §6, `pending.rs`): a held
//!   message acknowledged inside a transaction is *pending* until the
//!   transaction's marker: never redelivered, no ack timeout, its key
//!   (key-shared) still held, acks by anyone else refused. Commit makes it
//!   acknowledged, abort makes it ready again with its delivery count.
//! - Time is Unix milliseconds, passed in by the caller.

use super::cursor::{AckedRanges, CursorSnapshot, PendingTransaction};
use sluice_proto::v1::SubscriptionType;
use sluice_proto::ErrorCode;
use std::collections::{BTreeMap, BTreeSet, HashMap};

mod dispatch;
mod explain;
mod pending;

pub use explain::{Counters, Explanation, Handled};
pub use pending::TxnAck;

pub type ConsumerId = u64;

/// Most parked keys remembered per subscription and partition; beyond it
/// the oldest parking is forgotten (those keys flow again).
pub const MAX_PARKED_KEYS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Settings {
    pub kind: SubscriptionType,
    pub ack_timeout_ms: u64,
    pub redelivery_backoff_initial_ms: u64,
    pub redelivery_backoff_max_ms: u64,
    /// 0: never dead-letter.
    pub max_deliveries: u32,
    /// Most scanned, unacknowledged messages held (delayed ones apart).
    pub window_messages: usize,
    /// Most delayed messages held.
    pub max_delayed_messages: usize,
    /// Most undelivered credit one consumer may hold; larger grants are
    /// capped.
    pub max_permits_per_consumer: u64,
    /// Most messages in flight to one consumer whatever its credit
    /// (Pulsar's max unacknowledged per consumer); 0: no limit.
    pub max_unacknowledged_per_consumer: u64,
}

/// A message read from the log, as the dispatcher needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    pub offset: u64,
    /// Hash of the record key; None for keyless records.
    pub key_hash: Option<u64>,
    /// False when the subscription's selector filtered it out: it counts
    /// as handled.
    pub selected: bool,
    /// Not to be delivered before this time.
    pub deliver_at_ms: Option<u64>,
    /// Never delivered from this time on.
    pub expire_at_ms: Option<u64>,
    /// The last record of its batch: shared runs end only here, so one
    /// stored batch goes to one consumer instead of being sent to two.
    pub ends_batch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    InFlight {
        consumer: ConsumerId,
        deadline_ms: u64,
    },
    Waiting {
        until_ms: u64,
    },
    Delayed {
        until_ms: u64,
    },
    DeadLettering,
    /// Acknowledged inside transaction `(producer_id, epoch)`, waiting for
    /// its marker.
    PendingAck {
        producer_id: i64,
        epoch: i16,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key_hash: Option<u64>,
    deliveries: u32,
    state: State,
    expire_at_ms: Option<u64>,
    ends_batch: bool,
}

#[derive(Debug, Clone)]
struct Consumer {
    name: String,
    priority: u32,
    permits: u64,
    /// Messages in flight to it (delivered, not yet acknowledged).
    in_flight: u64,
}

/// What the IO shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these (offset, delivery count) to the consumer, ascending.
    Deliver {
        consumer: ConsumerId,
        messages: Vec<(u64, u32)>,
    },
    /// Write this message to the dead-letter topic, then call
    /// [`Dispatcher::dead_lettered`]. Issued in offset order per key.
    DeadLetter { offset: u64, deliveries: u32 },
    /// Failover: tell the consumer whether it is active.
    Status { consumer: ConsumerId, active: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the exclusive subscription already has a consumer on this partition")]
    Busy,
}

pub struct Dispatcher {
    settings: Settings,
    epoch: u64,
    subscription_created_at_ms: u64,
    acked: AckedRanges,
    /// Next offset to scan.
    read_position: u64,
    entries: BTreeMap<u64, Entry>,
    ready: BTreeSet<u64>,
    deadlines: BTreeSet<(u64, u64)>,
    waiting: BTreeSet<(u64, u64)>,
    consumers: BTreeMap<ConsumerId, Consumer>,
    /// Key-shared: key hash → the offset holding it.
    held_keys: HashMap<u64, u64>,
    parked_keys: BTreeSet<u64>,
    /// Delivery counts restored from a cursor for messages not yet scanned.
    restored_deliveries: BTreeMap<u64, u32>,
    /// Failover: the active consumer, as last announced.
    active: Option<ConsumerId>,
    /// Shared: the consumer whose turn it is, and how many it got in it.
    turn: Option<(ConsumerId, u64)>,
    /// Shared: the last message given ended its batch (a turn may end).
    turn_at_batch_end: bool,
    dirty: bool,
    /// Entries in `State::Delayed`.
    delayed: usize,
    /// Held offsets delivered more than once (their counts are persisted).
    redelivered: BTreeSet<u64>,
    /// Key-shared: keys held by an acknowledgement not yet in a cursor
    /// commit, and those in the commit in flight (released when it is
    /// durable).
    keys_awaiting_commit: Vec<(u64, u64)>,
    keys_in_commit: Vec<(u64, u64)>,
    counters: Counters,
    /// Offsets recently handled without an acknowledgement (filtered,
    /// dead-lettered), newest last, at most `RECENTLY_HANDLED` of them:
    /// answers "why was this not delivered" for recent messages.
    recently_handled: std::collections::VecDeque<(u64, Handled)>,
    /// Acknowledgements pending in transactions, by `(producer_id, epoch)`
    /// (scanned or not yet: restored from the cursor), and the transaction
    /// of each pending offset.
    pending: BTreeMap<(i64, i16), PendingTransaction>,
    pending_index: BTreeMap<u64, (i64, i16)>,
    /// Producer id → the lowest epoch whose transaction has not ended here
    /// (a marker of `e` sets `e + 1`): a verification answered after the
    /// marker must not open a pending acknowledgement. At most
    /// `pending::MAX_ENDED_PRODUCERS`.
    ended_transactions: BTreeMap<i64, i16>,
}

impl Dispatcher {
    /// A dispatcher resuming from `snapshot` (acknowledged ranges, counts,
    /// parked keys) under ownership `epoch`.
    pub fn new(settings: Settings, epoch: u64, snapshot: CursorSnapshot) -> Self {
        Self {
            read_position: snapshot.acked.mark_delete(),
            settings,
            epoch,
            subscription_created_at_ms: snapshot.subscription_created_at_ms,
            acked: snapshot.acked,
            entries: BTreeMap::new(),
            ready: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            waiting: BTreeSet::new(),
            consumers: BTreeMap::new(),
            held_keys: HashMap::new(),
            parked_keys: snapshot.parked_keys,
            restored_deliveries: snapshot.delivery_counts,
            active: None,
            turn: None,
            turn_at_batch_end: true,
            dirty: false,
            delayed: 0,
            redelivered: BTreeSet::new(),
            keys_awaiting_commit: Vec::new(),
            keys_in_commit: Vec::new(),
            counters: Counters::default(),
            recently_handled: std::collections::VecDeque::new(),
            pending_index: pending::index_of(&snapshot.pending),
            pending: snapshot
                .pending
                .into_iter()
                .map(|transaction| ((transaction.producer_id, transaction.epoch), transaction))
                .collect(),
            ended_transactions: BTreeMap::new(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn kind(&self) -> SubscriptionType {
        self.settings.kind
    }

    /// Next offset the shell should scan from.
    pub fn read_position(&self) -> u64 {
        self.read_position
    }

    /// Every offset below this is acknowledged.
    pub fn mark_delete(&self) -> u64 {
        self.acked.mark_delete()
    }

    /// How many more messages may be scanned now.
    pub fn window_room(&self) -> usize {
        if self.delayed >= self.settings.max_delayed_messages {
            return 0;
        }
        self.settings
            .window_messages
            .saturating_sub(self.entries.len() - self.delayed)
    }

    /// Delayed messages held.
    #[cfg(test)]
    pub fn delayed(&self) -> usize {
        self.delayed
    }

    /// True if `offset` is held and waiting for its delivery time.
    pub fn is_delayed(&self, offset: u64) -> bool {
        matches!(
            self.entries.get(&offset).map(|entry| entry.state),
            Some(State::Delayed { .. })
        )
    }

    /// True if any offset in `[start, end)` is held and not delayed (its
    /// batch must stay in memory; delayed ones are read again when due).
    pub fn holds_undelayed_in(&self, start: u64, end: u64) -> bool {
        self.entries
            .range(start..end)
            .any(|(_, entry)| !matches!(entry.state, State::Delayed { .. }))
    }

    /// Scanned, unacknowledged messages held.
    pub fn unacknowledged(&self) -> usize {
        self.entries.len()
    }

    pub fn in_flight(&self) -> usize {
        self.deadlines.len()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// True if the cursor changed since the last [`Self::snapshot`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The cursor committed durably: keys held by the acknowledgements it
    /// holds go free.
    pub fn commit_succeeded(&mut self) {
        for (key, offset) in std::mem::take(&mut self.keys_in_commit) {
            if self.held_keys.get(&key) == Some(&offset) {
                self.held_keys.remove(&key);
            }
        }
    }

    /// The cursor commit failed: its acknowledgements go into the next one.
    pub fn commit_failed(&mut self) {
        self.dirty = true;
        let mut keys = std::mem::take(&mut self.keys_in_commit);
        keys.append(&mut self.keys_awaiting_commit);
        self.keys_awaiting_commit = keys;
    }

    /// The cursor to persist (the caller commits it, then reports with
    /// [`Self::commit_succeeded`] or [`Self::commit_failed`]; one commit at
    /// a time); clears the dirty flag.
    pub fn snapshot(&mut self) -> CursorSnapshot {
        self.dirty = false;
        let awaiting = std::mem::take(&mut self.keys_awaiting_commit);
        self.keys_in_commit.extend(awaiting);
        let mut delivery_counts: BTreeMap<u64, u32> = self
            .redelivered
            .iter()
            .filter_map(|offset| {
                self.entries
                    .get(offset)
                    .map(|entry| (*offset, entry.deliveries))
            })
            .collect();
        delivery_counts.extend(
            self.restored_deliveries
                .range(self.read_position..)
                .map(|(offset, count)| (*offset, *count)),
        );
        CursorSnapshot {
            epoch: self.epoch,
            subscription_created_at_ms: self.subscription_created_at_ms,
            acked: self.acked.clone(),
            delivery_counts,
            parked_keys: self.parked_keys.clone(),
            pending: self.pending.values().cloned().collect(),
        }
    }

    /// Adds scanned messages (ascending, from [`Self::read_position`]).
    /// Acknowledged ones (from the restored cursor) are skipped, filtered
    /// and expired ones count as acknowledged.
    pub fn add_scanned(&mut self, messages: &[Scanned], now_ms: u64) {
        for message in messages {
            if message.offset < self.read_position {
                continue;
            }
            self.read_position = message.offset + 1;
            if self.acked.contains(message.offset) {
                continue;
            }
            if self.add_restored_pending(message) {
                // Pending in a transaction (restored from the cursor): it
                // waits for the marker whatever its selector, delay or TTL
                // say now.
                continue;
            }
            if !message.selected {
                self.acked.insert(message.offset);
                self.dirty = true;
                self.counters.filtered += 1;
                self.remember_handled(message.offset, Handled::Filtered);
                continue;
            }
            if message.expire_at_ms.is_some_and(|at| at <= now_ms) {
                self.acked.insert(message.offset);
                self.dirty = true;
                self.counters.expired += 1;
                self.remember_handled(message.offset, Handled::Expired);
                continue;
            }
            let deliveries = self
                .restored_deliveries
                .remove(&message.offset)
                .unwrap_or(0);
            if deliveries >= 2 {
                self.redelivered.insert(message.offset);
            }
            let state = match message.deliver_at_ms.filter(|at| *at > now_ms) {
                Some(until_ms) => {
                    self.waiting.insert((until_ms, message.offset));
                    self.delayed += 1;
                    State::Delayed { until_ms }
                }
                None => {
                    self.ready.insert(message.offset);
                    State::Ready
                }
            };
            self.entries.insert(
                message.offset,
                Entry {
                    key_hash: message.key_hash,
                    deliveries,
                    state,
                    expire_at_ms: message.expire_at_ms,
                    ends_batch: message.ends_batch,
                },
            );
        }
    }

    /// A held message's time is up: handled without delivery.
    fn expire(&mut self, offset: u64) {
        if let Some(entry) = self.entries.get(&offset).copied() {
            match entry.state {
                State::Delayed { until_ms } => {
                    self.waiting.remove(&(until_ms, offset));
                    self.delayed -= 1;
                }
                State::Waiting { until_ms } => {
                    self.waiting.remove(&(until_ms, offset));
                }
                State::InFlight { deadline_ms, .. } => {
                    self.deadlines.remove(&(deadline_ms, offset));
                }
                State::Ready | State::DeadLettering | State::PendingAck { .. } => {}
            }
        }
        self.complete(offset);
        self.counters.expired += 1;
        self.remember_handled(offset, Handled::Expired);
    }

    /// Skips the log up to `offset` (offsets with no record: control data,
    /// or retention removed them). Unscanned offsets below it count as
    /// acknowledged.
    /// Steps over a stored batch whose records cannot be decoded: nobody
    /// can read its messages, so they are treated as acknowledged (like
    /// filtered ones) and counted, instead of stopping the subscription.
    pub fn skip_undecodable(&mut self, end_offset: u64) {
        self.counters.undecodable_batches += 1;
        self.skip_to(end_offset);
    }

    /// Steps the scan over a range of the log accepted as lost, up to
    /// `end_offset`: its offsets count as acknowledged (nobody can read
    /// them) and as lost, instead of stalling the subscription there.
    pub fn skip_lost(&mut self, end_offset: u64) {
        self.counters.lost_offsets += end_offset.saturating_sub(self.read_position);
        self.skip_to(end_offset);
    }

    /// A message scanned before its range was accepted as lost cannot be
    /// read back for delivery: it is done with (counted as lost) instead
    /// of being redelivered forever.
    pub fn lost_after_scan(&mut self, offset: u64) {
        if self.entries.contains_key(&offset) {
            self.complete(offset);
            self.counters.lost_offsets += 1;
        }
    }

    pub fn skip_to(&mut self, offset: u64) {
        if offset <= self.read_position {
            return;
        }
        self.forget_pending_in(self.read_position, offset);
        self.acked.insert_range(self.read_position, offset);
        self.read_position = offset;
        self.dirty = true;
    }

    /// Backlog eviction (ADR 0012): every message below `offset` counts as
    /// acknowledged, whatever its state (a consumer's later ack of one is
    /// answered like a retried ack). Returns how many unacknowledged
    /// messages that skipped.
    pub fn evict_before(&mut self, offset: u64) -> u64 {
        if offset <= self.acked.mark_delete() {
            return 0;
        }
        let held: Vec<u64> = self.entries.range(..offset).map(|(at, _)| *at).collect();
        let mut evicted = held.len() as u64;
        for at in held {
            // Ready first, so every per-state count is released, then
            // forgotten like an acknowledged message.
            self.make_ready(at);
            self.complete(at);
        }
        self.deadlines.retain(|(_, at)| *at >= offset);
        self.waiting.retain(|(_, at)| *at >= offset);
        self.restored_deliveries = self.restored_deliveries.split_off(&offset);
        if offset > self.read_position {
            let unread = offset - self.read_position;
            let acked_unread: u64 = self
                .acked
                .ranges()
                .map(|(start, end)| {
                    end.min(offset)
                        .saturating_sub(start.max(self.read_position))
                })
                .sum();
            evicted += unread.saturating_sub(acked_unread);
            self.skip_to(offset);
        }
        self.acked.insert_range(self.acked.mark_delete(), offset);
        self.dirty = true;
        evicted
    }

    pub fn add_consumer(
        &mut self,
        id: ConsumerId,
        name: String,
        priority: u32,
        permits: u64,
    ) -> Result<(), OpenError> {
        if self.settings.kind == SubscriptionType::Exclusive && !self.consumers.is_empty() {
            return Err(OpenError::Busy);
        }
        self.consumers.insert(
            id,
            Consumer {
                name,
                priority,
                permits: permits.min(self.settings.max_permits_per_consumer),
                in_flight: 0,
            },
        );
        Ok(())
    }

    /// The consumer left: what it held is delivered again.
    pub fn remove_consumer(&mut self, id: ConsumerId) {
        if self.consumers.remove(&id).is_none() {
            return;
        }
        self.release_held_by(id);
        if self.turn.is_some_and(|(turn, _)| turn == id) {
            self.turn = None;
        }
    }

    fn release_held_by(&mut self, id: ConsumerId) {
        let held: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter_map(|(offset, entry)| match entry.state {
                State::InFlight {
                    consumer,
                    deadline_ms,
                } if consumer == id => Some((*offset, deadline_ms)),
                _ => None,
            })
            .collect();
        for (offset, deadline_ms) in held {
            self.deadlines.remove(&(deadline_ms, offset));
            self.make_ready(offset);
        }
    }

    fn make_ready(&mut self, offset: u64) {
        if let Some(state) = self.entries.get(&offset).map(|entry| entry.state) {
            self.leave_flight(state);
            self.forget_pending(offset, state);
        }
        if let Some(entry) = self.entries.get_mut(&offset) {
            if matches!(entry.state, State::Delayed { .. }) {
                self.delayed -= 1;
            }
            entry.state = State::Ready;
            self.ready.insert(offset);
        }
    }

    /// Adds credit, up to `max_permits_per_consumer`.
    pub fn flow(&mut self, id: ConsumerId, permits: u64) {
        if let Some(consumer) = self.consumers.get_mut(&id) {
            consumer.permits = consumer
                .permits
                .saturating_add(permits)
                .min(self.settings.max_permits_per_consumer);
        }
    }

    /// Acknowledges `offset` for consumer `id`.
    pub fn ack(&mut self, id: ConsumerId, offset: u64) -> Result<(), ErrorCode> {
        if self.acked.contains(offset) {
            // A retried ack whose receipt was lost, or a filtered message.
            return Ok(());
        }
        let Some(entry) = self.entries.get(&offset) else {
            return Err(ErrorCode::UnknownMessage);
        };
        match entry.state {
            State::InFlight {
                consumer,
                deadline_ms,
            } if consumer == id => {
                let key = entry.key_hash;
                self.deadlines.remove(&(deadline_ms, offset));
                self.complete(offset);
                self.counters.acknowledged += 1;
                if let Some(key) = key.filter(|_| self.settings.kind == SubscriptionType::KeyShared)
                {
                    // The key's next message waits until this ack is
                    // durable: were it lost in a failover, this message
                    // would come again after the next one.
                    self.held_keys.insert(key, offset);
                    self.keys_awaiting_commit.push((key, offset));
                }
                Ok(())
            }
            _ if entry.deliveries == 0 => Err(ErrorCode::UnknownMessage),
            _ => Err(ErrorCode::DeliveryExpired),
        }
    }

    /// Exclusive and failover: acknowledges everything in flight to `id`
    /// at or below `offset`.
    pub fn ack_cumulative(&mut self, id: ConsumerId, offset: u64) -> Result<(), ErrorCode> {
        if !matches!(
            self.settings.kind,
            SubscriptionType::Exclusive | SubscriptionType::Failover
        ) {
            return Err(ErrorCode::InvalidArgument);
        }
        let held: Vec<u64> = self
            .entries
            .range(..=offset)
            .filter(|(_, entry)| {
                matches!(entry.state, State::InFlight { consumer, .. } if consumer == id)
            })
            .map(|(offset, _)| *offset)
            .collect();
        for offset in held {
            self.ack(id, offset)?;
        }
        Ok(())
    }

    /// Acknowledged or dead-lettered: forget it, release its key.
    /// Bookkeeping when a message stops being in flight to a consumer.
    fn leave_flight(&mut self, state: State) {
        if let State::InFlight { consumer, .. } = state {
            if let Some(consumer) = self.consumers.get_mut(&consumer) {
                consumer.in_flight = consumer.in_flight.saturating_sub(1);
            }
        }
    }

    fn complete(&mut self, offset: u64) {
        if let Some(entry) = self.entries.remove(&offset) {
            self.leave_flight(entry.state);
            self.forget_pending(offset, entry.state);
            self.ready.remove(&offset);
            if entry.deliveries >= 2 {
                self.redelivered.remove(&offset);
            }
            if let Some(key) = entry.key_hash {
                if self.held_keys.get(&key) == Some(&offset) {
                    self.held_keys.remove(&key);
                }
            }
        }
        self.acked.insert(offset);
        self.dirty = true;
    }

    /// Negative acknowledgement: deliver again after `delay_ms` (None: the
    /// subscription's backoff for this delivery count). Ignored unless `id`
    /// holds the message.
    pub fn nack(
        &mut self,
        id: ConsumerId,
        offset: u64,
        delay_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), ErrorCode> {
        let backoff = self.backoff_ms(offset);
        let Some(entry) = self.entries.get_mut(&offset) else {
            return Err(if self.acked.contains(offset) {
                ErrorCode::DeliveryExpired
            } else {
                ErrorCode::UnknownMessage
            });
        };
        match entry.state {
            State::InFlight {
                consumer,
                deadline_ms,
            } if consumer == id => {
                self.deadlines.remove(&(deadline_ms, offset));
                let until_ms = now_ms.saturating_add(delay_ms.unwrap_or(backoff));
                entry.state = State::Waiting { until_ms };
                if let Some(consumer) = self.consumers.get_mut(&id) {
                    consumer.in_flight = consumer.in_flight.saturating_sub(1);
                }
                self.waiting.insert((until_ms, offset));
                Ok(())
            }
            _ => Err(ErrorCode::DeliveryExpired),
        }
    }

    fn backoff_ms(&self, offset: u64) -> u64 {
        let deliveries = self
            .entries
            .get(&offset)
            .map(|entry| entry.deliveries)
            .unwrap_or(1);
        let doublings = deliveries.saturating_sub(1).min(32);
        self.settings
            .redelivery_backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.settings.redelivery_backoff_max_ms)
    }

    /// The dead-letter write of `offset` is durable.
    pub fn dead_lettered(&mut self, offset: u64) {
        if let Some(entry) = self.entries.get(&offset).copied() {
            if entry.state == State::DeadLettering {
                self.complete(offset);
                self.counters.dead_lettered += 1;
                self.remember_handled(
                    offset,
                    Handled::DeadLettered {
                        deliveries: entry.deliveries,
                    },
                );
            }
        }
    }

    /// The dead-letter write failed; try again on a later dispatch.
    pub fn dead_letter_failed(&mut self, offset: u64) {
        if matches!(
            self.entries.get(&offset).map(|entry| entry.state),
            Some(State::DeadLettering)
        ) {
            self.make_ready(offset);
        }
    }

    /// Expires ack timeouts and ends backoffs due by `now_ms`.
    pub fn tick(&mut self, now_ms: u64) {
        while let Some(&(deadline_ms, offset)) = self.deadlines.first() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.remove(&(deadline_ms, offset));
            self.make_ready(offset);
        }
        while let Some(&(until_ms, offset)) = self.waiting.first() {
            if until_ms > now_ms {
                break;
            }
            self.waiting.remove(&(until_ms, offset));
            self.make_ready(offset);
        }
    }

    /// When [`Self::tick`] next has something to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let deadline = self.deadlines.first().map(|(at, _)| *at);
        let waiting = self.waiting.first().map(|(at, _)| *at);
        match (deadline, waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
