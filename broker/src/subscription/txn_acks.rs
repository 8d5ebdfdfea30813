//! Transactional acknowledgements at the dispatcher task's IO edge (ADR
//! 0016 §6): an ack carrying a transaction is checked by the pure
//! dispatcher (only the holder may acknowledge), then this subscription
//! partition is added to the transaction by its coordinator (the
//! `TxnVerifier`, participant `{topic, partition, subscription}`), then the
//! dispatcher checks again and makes the messages pending. The receipt
//! goes out once the cursor holding them is committed, like any receipt.
//!
//! The transaction's marker comes through [`super::Registry::resolve_transaction`]:
//! the dispatcher resolves the pending messages and the marker is
//! answered once the cursor holding the resolution is durable (at once if
//! nothing was pending), so the coordinator's Complete implies it.

use super::dispatcher::{ConsumerId, TxnAck};
use super::task::Task;
use crate::error::BrokerError;
use crate::txn_verifier::Verification;
use futures::future::BoxFuture;
use sluice_proto::batch::control::Marker;
use sluice_proto::v1::subscribe_response::Response as ToConsumer;
use sluice_proto::v1::{AckReceipt, AckResult};
use sluice_proto::ErrorCode;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most transactional-ack verifications in flight per dispatcher (each
/// one coordinator call bounded by `verification_timeout_ms`); beyond it
/// an ack request is refused `THROTTLED` (retriable) instead of queued.
pub(super) const MAX_VERIFICATIONS_IN_FLIGHT: usize = 1_024;

/// A verification's answer, handed back to the task.
pub(super) struct VerifiedAck {
    consumer: ConsumerId,
    receipt: AckReceipt,
    offsets: Vec<u64>,
    transaction: TxnAck,
    verified: Result<(), BrokerError>,
}

pub(super) type Verifying = BoxFuture<'static, VerifiedAck>;

/// A marker's answer, sent once its resolution is durable.
pub(super) type MarkerReply = oneshot::Sender<Result<(), BrokerError>>;

impl Task {
    /// Acks of `offsets` by `consumer` inside `transaction`: the holder
    /// check now, then the verification (answered later as a
    /// [`VerifiedAck`]); the offsets refused now are refused in the receipt.
    pub(super) fn handle_txn_ack(
        &mut self,
        consumer: ConsumerId,
        request_id: u64,
        offsets: Vec<u64>,
        transaction: TxnAck,
    ) {
        if !self.consumers.contains_key(&consumer) {
            return;
        }
        let mut receipt = AckReceipt {
            request_id,
            acknowledged: Vec::new(),
            rejected: Vec::new(),
        };
        let mut allowed = Vec::with_capacity(offsets.len());
        for offset in offsets {
            match self
                .dispatcher
                .check_transactional_ack(consumer, offset, &transaction)
            {
                Ok(()) => allowed.push(offset),
                Err(code) => receipt.rejected.push(AckResult {
                    offset,
                    error: code as i32,
                }),
            }
        }
        if self.verifications.len() >= MAX_VERIFICATIONS_IN_FLIGHT {
            let code = ErrorCode::Throttled as i32;
            receipt
                .rejected
                .extend(allowed.drain(..).map(|offset| AckResult {
                    offset,
                    error: code,
                }));
        }
        if allowed.is_empty() {
            self.send(consumer, ToConsumer::AckReceipt(receipt));
            return;
        }
        let verification = Verification {
            transactional_id: transaction.transactional_id.clone(),
            producer_id: transaction.producer_id,
            epoch: transaction.epoch,
            topic: self.key.topic.clone(),
            partition: self.key.partition,
            subscription: self.subscription.name.clone(),
        };
        let timeout =
            Duration::from_millis(self.shared.config.transactions.verification_timeout_ms);
        let verify = self.shared.txn_verifier.verify(verification);
        self.verifications.push(Box::pin(async move {
            let verified = match tokio::time::timeout(timeout, verify).await {
                Ok(verified) => verified,
                Err(_) => Err(BrokerError::Timeout(format!(
                    "the transaction coordinator did not answer within {} ms",
                    timeout.as_millis()
                ))),
            };
            VerifiedAck {
                consumer,
                receipt,
                offsets: allowed,
                transaction,
                verified,
            }
        }));
    }

    /// The coordinator answered: on success the dispatcher checks again
    /// and makes the messages pending (their receipt waits for the cursor
    /// commit); a refusal refuses them with the coordinator's code.
    pub(super) fn txn_ack_verified(&mut self, verified: VerifiedAck) {
        let VerifiedAck {
            consumer,
            mut receipt,
            offsets,
            transaction,
            verified,
        } = verified;
        if !self.consumers.contains_key(&consumer) {
            return;
        }
        match verified {
            Ok(()) => {
                for offset in offsets {
                    match self
                        .dispatcher
                        .ack_in_transaction(consumer, offset, &transaction)
                    {
                        Ok(()) => receipt.acknowledged.push(offset),
                        Err(code) => receipt.rejected.push(AckResult {
                            offset,
                            error: code as i32,
                        }),
                    }
                }
            }
            Err(error) => {
                tracing::debug!(partition = %self.key, subscription = %self.subscription.name,
                    transactional_id = %transaction.transactional_id, %error,
                    "transactional acknowledgement refused by the coordinator");
                let code = error.code();
                receipt
                    .rejected
                    .extend(offsets.into_iter().map(|offset| AckResult {
                        offset,
                        error: code as i32,
                    }));
            }
        }
        if receipt.acknowledged.is_empty() {
            self.send(consumer, ToConsumer::AckReceipt(receipt));
        } else {
            self.receipts_waiting.push((consumer, receipt));
        }
    }

    /// The transaction's marker: resolve what is pending in it; answer
    /// once a cursor commit started after it is durable — also when
    /// nothing was pending here, since a retried marker may find its
    /// resolution in a commit still in flight.
    pub(super) fn handle_marker(&mut self, marker: Marker, reply: MarkerReply) {
        let resolved = self.dispatcher.resolve_transaction(
            marker.producer_id,
            marker.txn_epoch,
            marker.commit,
        );
        tracing::debug!(partition = %self.key, subscription = %self.subscription.name,
            producer_id = marker.producer_id, txn_epoch = marker.txn_epoch,
            commit = marker.commit, resolved, "transaction marker");
        self.markers_waiting.push(reply);
    }
}

/// Answers markers with their cursor commit's outcome (an error: the
/// coordinator sends the marker again, here or at the next owner).
pub(super) fn answer_markers(replies: Vec<MarkerReply>, outcome: &Result<(), BrokerError>) {
    for reply in replies {
        let _ = reply.send(match outcome {
            Ok(()) => Ok(()),
            Err(error) => Err(BrokerError::Relayed(sluice_proto::SluiceError::new(
                if error.code() == ErrorCode::None {
                    ErrorCode::Unavailable
                } else {
                    error.code()
                },
                error.to_string(),
            ))),
        });
    }
}
