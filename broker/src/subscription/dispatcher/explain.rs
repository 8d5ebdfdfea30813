//! Where a message stands in a subscription (`ExplainMessage`), the
//! totals since the dispatcher started, and the recently handled list
//! that answers "why was this not delivered".

use super::{ConsumerId, Dispatcher, State};

/// Most offsets remembered in [`Dispatcher`]'s recently-handled list.
const RECENTLY_HANDLED: usize = 10_000;

/// Totals since the dispatcher started (rates are derived by the caller).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub delivered: u64,
    pub redelivered: u64,
    pub acknowledged: u64,
    pub filtered: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    /// Stored batches stepped over because their records cannot be
    /// decoded (poison batches that bypassed the produce path's check).
    pub undecodable_batches: u64,
    /// Offsets stepped over because an operator accepted them as lost
    /// (`sluice partition recover --accept-data-loss`).
    pub lost_offsets: u64,
}

/// How a message was handled without an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Filtered,
    Expired,
    DeadLettered { deliveries: u32 },
}

/// Where one message stands in a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Explanation {
    /// Below the cursor's read position and handled: acknowledged, or
    /// handled as said when still remembered.
    Handled(Option<Handled>),
    /// Not read by the subscription yet (beyond its read-ahead).
    NotYetRead,
    /// Read and waiting to be delivered (first time or again).
    Ready {
        deliveries: u32,
    },
    InFlight {
        consumer: ConsumerId,
        deliveries: u32,
        ack_deadline_ms: u64,
    },
    WaitingForRedelivery {
        deliveries: u32,
        until_ms: u64,
    },
    Delayed {
        until_ms: u64,
    },
    BeingDeadLettered {
        deliveries: u32,
    },
    /// Acknowledged inside an open transaction, waiting for its commit
    /// (acknowledged) or abort (delivered again).
    PendingTransaction {
        deliveries: u32,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
    },
}

impl Dispatcher {
    /// Where `offset` stands (`now_ms` on the dispatcher's clock).
    pub fn explain(&self, offset: u64) -> Explanation {
        if let Some(entry) = self.entries.get(&offset) {
            return match entry.state {
                State::Ready => Explanation::Ready {
                    deliveries: entry.deliveries,
                },
                State::InFlight {
                    consumer,
                    deadline_ms,
                } => Explanation::InFlight {
                    consumer,
                    deliveries: entry.deliveries,
                    ack_deadline_ms: deadline_ms,
                },
                State::Waiting { until_ms } => Explanation::WaitingForRedelivery {
                    deliveries: entry.deliveries,
                    until_ms,
                },
                State::Delayed { until_ms } => Explanation::Delayed { until_ms },
                State::DeadLettering => Explanation::BeingDeadLettered {
                    deliveries: entry.deliveries,
                },
                State::PendingAck { producer_id, epoch } => Explanation::PendingTransaction {
                    deliveries: entry.deliveries,
                    transactional_id: self
                        .pending
                        .get(&(producer_id, epoch))
                        .map(|transaction| transaction.transactional_id.clone())
                        .unwrap_or_default(),
                    producer_id,
                    epoch,
                },
            };
        }
        if offset >= self.read_position && !self.acked.contains(offset) {
            return Explanation::NotYetRead;
        }
        Explanation::Handled(
            self.recently_handled
                .iter()
                .rev()
                .find(|(handled, _)| *handled == offset)
                .map(|(_, how)| *how),
        )
    }

    pub(super) fn remember_handled(&mut self, offset: u64, how: Handled) {
        if self.recently_handled.len() >= RECENTLY_HANDLED {
            self.recently_handled.pop_front();
        }
        self.recently_handled.push_back((offset, how));
    }
}
