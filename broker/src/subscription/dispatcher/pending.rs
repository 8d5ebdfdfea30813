//! Transactional acknowledgements (ADR 0016 §6, Pulsar's pending ack):
//! the dispatcher's side, pure.
//!
//! - [`Dispatcher::check_transactional_ack`] applies today's rule first
//!   (only the consumer holding a message may acknowledge it) before the IO
//!   edge asks the transaction's coordinator to add this subscription
//!   partition to the transaction; [`Dispatcher::ack_in_transaction`]
//!   checks again after the answer (the message may have timed out, its
//!   consumer gone, or the transaction's marker arrived meanwhile) and
//!   makes the message *pending* in the transaction.
//! - A pending message is never redelivered and has no ack timeout; under
//!   key-shared its key stays held; an ack or nack by anyone is refused
//!   `DELIVERY_EXPIRED`; it counts in the window (which bounds the cursor's
//!   pending section) and is persisted in the cursor.
//! - [`Dispatcher::resolve_transaction`] (the transaction's marker):
//!   commit acknowledges the pending messages (key-shared keys released
//!   once that is durable, as for any ack); abort makes them ready again
//!   with their delivery counts, so `max_deliveries` and dead letters
//!   apply. A marker of another epoch resolves nothing.

use super::{ConsumerId, Dispatcher, State};
use crate::subscription::cursor::PendingTransaction;
use sluice_proto::v1::SubscriptionType;
use sluice_proto::ErrorCode;
use std::collections::BTreeMap;

/// Most producers whose ended transaction epoch is remembered; beyond it
/// the smallest producer id is forgotten. The memory only has to outlive a
/// verification in flight (`verification_timeout_ms`): later, the
/// coordinator itself refuses an ended epoch.
pub const MAX_ENDED_PRODUCERS: usize = 10_000;

/// The transaction an acknowledgement joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnAck {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
}

/// Offset → transaction of every pending offset in `pending`.
pub(super) fn index_of(pending: &[PendingTransaction]) -> BTreeMap<u64, (i64, i16)> {
    pending
        .iter()
        .flat_map(|transaction| {
            transaction
                .offsets
                .keys()
                .map(|offset| (*offset, (transaction.producer_id, transaction.epoch)))
        })
        .collect()
}

impl Dispatcher {
    pub(super) fn is_key_shared(&self) -> bool {
        self.settings.kind == SubscriptionType::KeyShared
    }

    /// Messages pending in transactions (scanned or restored).
    pub fn pending_acks(&self) -> usize {
        self.pending_index.len()
    }

    /// Whether `consumer` may acknowledge `offset` inside `txn` now: it
    /// holds the message (in flight to it), or the message is already
    /// pending in this same transaction (a retried request).
    pub fn check_transactional_ack(
        &self,
        consumer: ConsumerId,
        offset: u64,
        txn: &TxnAck,
    ) -> Result<(), ErrorCode> {
        if self
            .ended_transactions
            .get(&txn.producer_id)
            .is_some_and(|next| *next > txn.epoch)
        {
            // Its marker came already: the transaction is over here.
            return Err(ErrorCode::TransactionAbortable);
        }
        let Some(entry) = self.entries.get(&offset) else {
            return Err(if self.acked.contains(offset) {
                ErrorCode::DeliveryExpired
            } else {
                ErrorCode::UnknownMessage
            });
        };
        match entry.state {
            State::InFlight {
                consumer: holder, ..
            } if holder == consumer => Ok(()),
            State::PendingAck { producer_id, epoch }
                if producer_id == txn.producer_id && epoch == txn.epoch =>
            {
                let same_id = self
                    .pending
                    .get(&(producer_id, epoch))
                    .is_some_and(|pending| pending.transactional_id == txn.transactional_id);
                if same_id {
                    Ok(())
                } else {
                    Err(ErrorCode::InvalidTransactionState)
                }
            }
            _ if entry.deliveries == 0 => Err(ErrorCode::UnknownMessage),
            _ => Err(ErrorCode::DeliveryExpired),
        }
    }

    /// After the coordinator recorded this subscription partition in
    /// `txn`: checks again and makes `offset` pending in it.
    pub fn ack_in_transaction(
        &mut self,
        consumer: ConsumerId,
        offset: u64,
        txn: &TxnAck,
    ) -> Result<(), ErrorCode> {
        self.check_transactional_ack(consumer, offset, txn)?;
        let Some(entry) = self.entries.get_mut(&offset) else {
            return Err(ErrorCode::UnknownMessage);
        };
        let previous = entry.state;
        let State::InFlight { deadline_ms, .. } = previous else {
            // Pending in this transaction already.
            return Ok(());
        };
        entry.state = State::PendingAck {
            producer_id: txn.producer_id,
            epoch: txn.epoch,
        };
        let deliveries = entry.deliveries;
        self.deadlines.remove(&(deadline_ms, offset));
        self.leave_flight(previous);
        self.pending
            .entry((txn.producer_id, txn.epoch))
            .or_insert_with(|| PendingTransaction {
                transactional_id: txn.transactional_id.clone(),
                producer_id: txn.producer_id,
                epoch: txn.epoch,
                offsets: BTreeMap::new(),
            })
            .offsets
            .insert(offset, deliveries);
        self.pending_index
            .insert(offset, (txn.producer_id, txn.epoch));
        self.dirty = true;
        Ok(())
    }

    /// The marker of transaction `(producer_id, txn_epoch)`: commit
    /// acknowledges its pending messages, abort makes them ready again.
    /// Returns how many it resolved (0: nothing to make durable).
    pub fn resolve_transaction(&mut self, producer_id: i64, txn_epoch: i16, commit: bool) -> usize {
        self.note_ended(producer_id, txn_epoch);
        let Some(transaction) = self.pending.remove(&(producer_id, txn_epoch)) else {
            return 0;
        };
        for (&offset, &deliveries) in &transaction.offsets {
            self.pending_index.remove(&offset);
            let held = self
                .entries
                .get(&offset)
                .filter(|entry| matches!(entry.state, State::PendingAck { .. }))
                .map(|entry| entry.key_hash);
            match held {
                Some(key) if commit => {
                    self.complete(offset);
                    self.counters.acknowledged += 1;
                    if let Some(key) = key.filter(|_| self.is_key_shared()) {
                        // As for any ack: the key's next message waits
                        // until the acknowledgement is durable.
                        self.held_keys.insert(key, offset);
                        self.keys_awaiting_commit.push((key, offset));
                    }
                }
                Some(_) => self.make_ready(offset),
                // Restored from the cursor and not scanned yet.
                None if commit => {
                    self.acked.insert(offset);
                    self.counters.acknowledged += 1;
                }
                None => {
                    self.restored_deliveries.insert(offset, deliveries);
                }
            }
        }
        self.dirty = true;
        transaction.offsets.len()
    }

    fn note_ended(&mut self, producer_id: i64, txn_epoch: i16) {
        let next = txn_epoch.saturating_add(1);
        let known = self.ended_transactions.entry(producer_id).or_insert(next);
        *known = (*known).max(next);
        if self.ended_transactions.len() > MAX_ENDED_PRODUCERS {
            self.ended_transactions.pop_first();
        }
    }

    /// A scanned message pending in a transaction restored from the
    /// cursor becomes an entry in that state (holding its key); false if
    /// it is not pending.
    pub(super) fn add_restored_pending(&mut self, message: &super::Scanned) -> bool {
        let Some(&(producer_id, epoch)) = self.pending_index.get(&message.offset) else {
            return false;
        };
        let deliveries = self
            .pending
            .get(&(producer_id, epoch))
            .and_then(|transaction| transaction.offsets.get(&message.offset))
            .copied()
            .unwrap_or(1);
        self.restored_deliveries.remove(&message.offset);
        if deliveries >= 2 {
            self.redelivered.insert(message.offset);
        }
        if let Some(key) = message.key_hash.filter(|_| self.is_key_shared()) {
            self.held_keys.insert(key, message.offset);
        }
        self.entries.insert(
            message.offset,
            super::Entry {
                key_hash: message.key_hash,
                deliveries,
                state: State::PendingAck { producer_id, epoch },
                expire_at_ms: message.expire_at_ms,
                ends_batch: message.ends_batch,
            },
        );
        true
    }

    /// A message leaves its pending state other than by its marker (an
    /// operator's eviction, a lost range): its transaction forgets it.
    pub(super) fn forget_pending(&mut self, offset: u64, state: State) {
        if matches!(state, State::PendingAck { .. }) {
            self.drop_pending_offset(offset);
        }
    }

    /// The scan steps over `[start, end)` (retention, a lost range): pending
    /// offsets restored there are forgotten, as they count as handled.
    pub(super) fn forget_pending_in(&mut self, start: u64, end: u64) {
        let skipped: Vec<u64> = self
            .pending_index
            .range(start..end)
            .map(|(offset, _)| *offset)
            .collect();
        for offset in skipped {
            self.drop_pending_offset(offset);
        }
    }

    fn drop_pending_offset(&mut self, offset: u64) {
        let Some((producer_id, epoch)) = self.pending_index.remove(&offset) else {
            return;
        };
        if let Some(transaction) = self.pending.get_mut(&(producer_id, epoch)) {
            transaction.offsets.remove(&offset);
            if transaction.offsets.is_empty() {
                self.pending.remove(&(producer_id, epoch));
            }
        }
    }
}

#[cfg(test)]
mod tests;
