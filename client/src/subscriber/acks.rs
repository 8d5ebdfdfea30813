//! Acknowledgement batching and receipt matching for one subscription
//! stream: acknowledgements collected during `ack_flush_interval_ms` go out
//! as one `SubscribeAck` (at most [`MAX_ACK_OFFSETS_PER_REQUEST`] offsets),
//! and each caller is answered from the `AckReceipt` with the same request
//! id. Pure bookkeeping: `W` is whatever answers a caller (a oneshot sender
//! in the SDK, a number in tests).

use crate::ClientError;
use sluice_proto::v1::{AckReceipt, SubscribeAck, TransactionContext};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::{HashMap, HashSet};

/// Upper bound on the offsets in one `SubscribeAck` (about 10 bytes each),
/// far below the gRPC message limit.
pub(crate) const MAX_ACK_OFFSETS_PER_REQUEST: usize = 4096;

struct InFlight<W> {
    individual: Vec<(u64, W)>,
    cumulative: Vec<(u64, W)>,
}

/// The acknowledgements of one stream: waiting to be sent, or sent and
/// waiting for their receipt.
pub(crate) struct AckTracker<W> {
    next_request_id: u64,
    pending: Vec<(u64, W)>,
    pending_cumulative: Vec<(u64, W)>,
    /// Acknowledgements inside a transaction (ADR 0016 §6), sent in
    /// requests of their own, one transaction each.
    pending_transactional: Vec<(u64, TransactionContext, W)>,
    in_flight: HashMap<u64, InFlight<W>>,
}

impl<W> Default for AckTracker<W> {
    fn default() -> Self {
        Self {
            next_request_id: 1,
            pending: Vec::new(),
            pending_cumulative: Vec::new(),
            pending_transactional: Vec::new(),
            in_flight: HashMap::new(),
        }
    }
}

/// The answer for one caller.
pub(crate) type AckOutcome<W> = (W, Result<(), ClientError>);

impl<W> AckTracker<W> {
    /// Queues an individual acknowledgement.
    pub fn add(&mut self, offset: u64, waiter: W) {
        self.pending.push((offset, waiter));
    }

    /// Queues a cumulative acknowledgement (everything delivered to this
    /// consumer at or below `offset`).
    pub fn add_cumulative(&mut self, offset: u64, waiter: W) {
        self.pending_cumulative.push((offset, waiter));
    }

    /// Queues an acknowledgement inside `transaction`.
    pub fn add_transactional(&mut self, offset: u64, transaction: TransactionContext, waiter: W) {
        self.pending_transactional
            .push((offset, transaction, waiter));
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
            || !self.pending_cumulative.is_empty()
            || !self.pending_transactional.is_empty()
    }

    /// The next transactional request: the queued acknowledgements of the
    /// oldest one's transaction, at most `max_offsets` (duplicates sent
    /// once).
    pub fn take_transactional_request(&mut self, max_offsets: usize) -> Option<SubscribeAck> {
        let transaction = self.pending_transactional.first()?.1.clone();
        let mut individual = Vec::new();
        let mut offsets = Vec::new();
        let mut seen = HashSet::new();
        let mut rest = Vec::new();
        for (offset, context, waiter) in self.pending_transactional.drain(..) {
            let fits = seen.contains(&offset) || offsets.len() < max_offsets.max(1);
            if context != transaction || !fits {
                rest.push((offset, context, waiter));
                continue;
            }
            if seen.insert(offset) {
                offsets.push(offset);
            }
            individual.push((offset, waiter));
        }
        self.pending_transactional = rest;
        offsets.sort_unstable();
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.in_flight.insert(
            request_id,
            InFlight {
                individual,
                cumulative: Vec::new(),
            },
        );
        Some(SubscribeAck {
            request_id,
            offsets,
            cumulative_offset: None,
            transaction: Some(transaction),
        })
    }

    /// Nothing waits to be sent or for a receipt.
    pub fn is_idle(&self) -> bool {
        !self.has_pending() && self.in_flight.is_empty()
    }

    /// The next request to send, taking at most `max_offsets` individual
    /// offsets (duplicates sent once) and every cumulative acknowledgement
    /// (the highest offset covers the others).
    pub fn take_request(&mut self, max_offsets: usize) -> Option<SubscribeAck> {
        if self.pending.is_empty() && self.pending_cumulative.is_empty() {
            return None;
        }
        let mut individual = Vec::new();
        let mut offsets = Vec::new();
        let mut seen = HashSet::new();
        while let Some((offset, _)) = self.pending.last() {
            if !seen.contains(offset) && offsets.len() >= max_offsets.max(1) {
                break;
            }
            let Some((offset, waiter)) = self.pending.pop() else {
                break;
            };
            if seen.insert(offset) {
                offsets.push(offset);
            }
            individual.push((offset, waiter));
        }
        offsets.sort_unstable();
        let cumulative = std::mem::take(&mut self.pending_cumulative);
        let cumulative_offset = cumulative.iter().map(|(offset, _)| *offset).max();
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.in_flight.insert(
            request_id,
            InFlight {
                individual,
                cumulative,
            },
        );
        Some(SubscribeAck {
            request_id,
            offsets,
            cumulative_offset,
            transaction: None,
        })
    }

    /// Answers the callers of the request the receipt is for: acknowledged
    /// offsets succeed, rejected ones fail with the broker's code, and an
    /// offset the receipt does not mention fails (a broker bug, not
    /// something to report as success). Cumulative acknowledgements succeed
    /// unless their offset is rejected.
    pub fn on_receipt(&mut self, receipt: &AckReceipt) -> Vec<AckOutcome<W>> {
        let Some(request) = self.in_flight.remove(&receipt.request_id) else {
            tracing::warn!(
                request_id = receipt.request_id,
                "ack receipt for an unknown request; ignored"
            );
            return Vec::new();
        };
        let acknowledged: HashSet<u64> = receipt.acknowledged.iter().copied().collect();
        let rejected: HashMap<u64, i32> = receipt
            .rejected
            .iter()
            .map(|result| (result.offset, result.error))
            .collect();
        let rejection = |offset: u64, code: i32| {
            let error = ClientError::from_code(
                code,
                format!("acknowledgement of offset {offset} refused by the broker"),
            );
            Err(error.unwrap_or_else(|| {
                ClientError::Server(SluiceError::new(
                    ErrorCode::Internal,
                    format!("offset {offset} was listed as rejected without an error code"),
                ))
            }))
        };
        let mut outcomes = Vec::with_capacity(request.individual.len() + request.cumulative.len());
        for (offset, waiter) in request.individual {
            let result = if let Some(code) = rejected.get(&offset) {
                rejection(offset, *code)
            } else if acknowledged.contains(&offset) {
                Ok(())
            } else {
                Err(ClientError::Server(SluiceError::new(
                    ErrorCode::Internal,
                    format!(
                        "the broker's ack receipt {} does not mention offset {offset}",
                        receipt.request_id
                    ),
                )))
            };
            outcomes.push((waiter, result));
        }
        for (offset, waiter) in request.cumulative {
            let result = match rejected.get(&offset) {
                Some(code) => rejection(offset, *code),
                None => Ok(()),
            };
            outcomes.push((waiter, result));
        }
        outcomes
    }

    /// Fails every caller, pending or in flight (the stream ended).
    pub fn fail_all(&mut self, error: impl Fn(u64) -> ClientError) -> Vec<AckOutcome<W>> {
        let mut outcomes = Vec::new();
        let in_flight = std::mem::take(&mut self.in_flight);
        let transactional: Vec<(u64, W)> = self
            .pending_transactional
            .drain(..)
            .map(|(offset, _, waiter)| (offset, waiter))
            .collect();
        let waiters = self
            .pending
            .drain(..)
            .chain(self.pending_cumulative.drain(..))
            .chain(transactional)
            .chain(
                in_flight
                    .into_values()
                    .flat_map(|request| request.individual.into_iter().chain(request.cumulative)),
            );
        for (offset, waiter) in waiters {
            outcomes.push((waiter, Err(error(offset))));
        }
        outcomes
    }
}

/// The error of an acknowledgement whose stream ended before its receipt:
/// the broker redelivers every unacknowledged message of a closed stream,
/// so the application must expect to see the message again.
pub(crate) fn delivery_expired(offset: u64, why: &str) -> ClientError {
    ClientError::Server(SluiceError::new(
        ErrorCode::DeliveryExpired,
        format!("offset {offset}: {why}; the message may be delivered again"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::AckResult;

    fn codes(outcomes: Vec<AckOutcome<u32>>) -> Vec<(u32, Option<ErrorCode>)> {
        let mut codes: Vec<(u32, Option<ErrorCode>)> = outcomes
            .into_iter()
            .map(|(waiter, result)| (waiter, result.err().and_then(|error| error.code())))
            .collect();
        codes.sort();
        codes
    }

    #[test]
    fn batches_and_matches_receipts() {
        let mut tracker = AckTracker::default();
        assert!(tracker.is_idle());
        assert!(tracker.take_request(10).is_none());
        tracker.add(7, 1u32);
        tracker.add(3, 2);
        tracker.add(9, 3);
        tracker.add(3, 4);
        let request = tracker.take_request(10).expect("acks pending");
        assert_eq!(request.offsets, vec![3, 7, 9]);
        assert_eq!(request.cumulative_offset, None);
        assert!(!tracker.has_pending());
        assert!(!tracker.is_idle());
        let receipt = AckReceipt {
            request_id: request.request_id,
            acknowledged: vec![3, 9],
            rejected: vec![AckResult {
                offset: 7,
                error: ErrorCode::DeliveryExpired as i32,
            }],
        };
        assert_eq!(
            codes(tracker.on_receipt(&receipt)),
            vec![
                (1, Some(ErrorCode::DeliveryExpired)),
                (2, None),
                (3, None),
                (4, None)
            ]
        );
        assert!(tracker.is_idle());
        // A second receipt for the same request answers nobody.
        assert!(tracker.on_receipt(&receipt).is_empty());
    }

    #[test]
    fn unmentioned_offsets_fail() {
        let mut tracker = AckTracker::default();
        tracker.add(5, 1u32);
        let request = tracker.take_request(10).expect("pending");
        let outcomes = tracker.on_receipt(&AckReceipt {
            request_id: request.request_id,
            ..AckReceipt::default()
        });
        assert_eq!(codes(outcomes), vec![(1, Some(ErrorCode::Internal))]);
    }

    #[test]
    fn requests_are_bounded_and_numbered() {
        let mut tracker = AckTracker::default();
        for offset in 0..10u64 {
            tracker.add(offset, offset as u32);
        }
        let first = tracker.take_request(4).expect("pending");
        let second = tracker.take_request(4).expect("pending");
        let third = tracker.take_request(4).expect("pending");
        assert!(tracker.take_request(4).is_none());
        assert_eq!(
            [
                first.offsets.len(),
                second.offsets.len(),
                third.offsets.len()
            ],
            [4, 4, 2]
        );
        assert!(first.request_id < second.request_id && second.request_id < third.request_id);
        let mut all: Vec<u64> = [&first, &second, &third]
            .iter()
            .flat_map(|request| request.offsets.clone())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<u64>>());
        // Receipts may come in any order.
        let answer = |request: &SubscribeAck| AckReceipt {
            request_id: request.request_id,
            acknowledged: request.offsets.clone(),
            rejected: Vec::new(),
        };
        assert_eq!(tracker.on_receipt(&answer(&third)).len(), 2);
        assert_eq!(tracker.on_receipt(&answer(&first)).len(), 4);
        assert_eq!(tracker.on_receipt(&answer(&second)).len(), 4);
        assert!(tracker.is_idle());
    }

    #[test]
    fn cumulative_takes_the_highest_offset() {
        let mut tracker = AckTracker::default();
        tracker.add_cumulative(4, 1u32);
        tracker.add_cumulative(9, 2);
        tracker.add(11, 3);
        let request = tracker.take_request(10).expect("pending");
        assert_eq!(request.cumulative_offset, Some(9));
        assert_eq!(request.offsets, vec![11]);
        let outcomes = tracker.on_receipt(&AckReceipt {
            request_id: request.request_id,
            acknowledged: vec![11],
            rejected: vec![AckResult {
                offset: 9,
                error: ErrorCode::InvalidArgument as i32,
            }],
        });
        assert_eq!(
            codes(outcomes),
            vec![(1, None), (2, Some(ErrorCode::InvalidArgument)), (3, None)]
        );
    }

    #[test]
    fn a_broken_stream_fails_everything_as_expired() {
        let mut tracker = AckTracker::default();
        tracker.add(1, 1u32);
        let _sent = tracker.take_request(10).expect("pending");
        tracker.add(2, 2);
        tracker.add_cumulative(3, 3);
        let outcomes = tracker.fail_all(|offset| delivery_expired(offset, "stream closed"));
        assert_eq!(
            codes(outcomes),
            vec![
                (1, Some(ErrorCode::DeliveryExpired)),
                (2, Some(ErrorCode::DeliveryExpired)),
                (3, Some(ErrorCode::DeliveryExpired))
            ]
        );
        assert!(tracker.is_idle());
    }

    #[test]
    fn transactional_acks_go_in_requests_of_their_own_transaction() {
        let context = |epoch: i32| TransactionContext {
            transactional_id: "worker".into(),
            producer_id: 9,
            producer_epoch: epoch,
        };
        let mut tracker = AckTracker::default();
        tracker.add(1, 10u32);
        tracker.add_transactional(2, context(0), 20);
        tracker.add_transactional(3, context(1), 30);
        tracker.add_transactional(4, context(0), 40);
        let plain = tracker.take_request(100).expect("plain request");
        assert_eq!((plain.offsets.clone(), plain.transaction), (vec![1], None));
        assert!(
            tracker.take_request(100).is_none(),
            "transactional acks are not mixed in"
        );
        let first = tracker
            .take_transactional_request(100)
            .expect("first transaction");
        assert_eq!(first.offsets, vec![2, 4]);
        assert_eq!(first.transaction, Some(context(0)));
        assert_eq!(first.cumulative_offset, None);
        let second = tracker
            .take_transactional_request(1)
            .expect("second transaction");
        assert_eq!(second.offsets, vec![3]);
        assert_eq!(second.transaction, Some(context(1)));
        assert!(tracker.take_transactional_request(100).is_none());
        let answered = codes(tracker.on_receipt(&AckReceipt {
            request_id: first.request_id,
            acknowledged: vec![2],
            rejected: vec![AckResult {
                offset: 4,
                error: ErrorCode::ProducerFenced as i32,
            }],
        }));
        assert_eq!(
            answered,
            vec![(20, None), (40, Some(ErrorCode::ProducerFenced))]
        );
        let failed = codes(tracker.fail_all(|offset| delivery_expired(offset, "gone")));
        assert_eq!(
            failed,
            vec![
                (10, Some(ErrorCode::DeliveryExpired)),
                (30, Some(ErrorCode::DeliveryExpired))
            ]
        );
        assert!(tracker.is_idle());
    }
}
