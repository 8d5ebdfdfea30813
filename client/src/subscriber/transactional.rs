//! Acknowledging subscription messages inside a producer's transaction
//! (ADR 0016 §6, Pulsar's pending acks): "take the input, write the
//! output" becomes atomic on shared and key-shared subscriptions.

use super::partition::Command;
use super::{AckFuture, Message, Subscriber};
use crate::{ClientError, Producer};
use tokio::sync::oneshot;

impl Subscriber {
    /// Acknowledges `message` inside `producer`'s open transaction: once
    /// this returns `Ok`, the broker holds the acknowledgement durably as
    /// *pending* — the message is not delivered again, and its ack timeout
    /// is stopped — until the transaction ends: `commit_transaction` makes
    /// it acknowledged (never delivered again on this subscription),
    /// `abort_transaction` (or the coordinator's abort on timeout or when
    /// another instance with the same transactional id starts) delivers it
    /// again, with its delivery count kept.
    ///
    /// `commit_transaction` waits for every such acknowledgement; one that
    /// fails makes the transaction abortable (abort and redo the work).
    /// Fails like [`Subscriber::ack`] when this consumer does not hold the
    /// message (DELIVERY_EXPIRED, UNKNOWN_MESSAGE), with
    /// [`ClientError::InvalidTransactionState`] outside a transaction, and
    /// with the coordinator's answer (`ProducerFenced`,
    /// `TransactionAbortable`) when it refuses the transaction.
    ///
    /// ```no_run
    /// use sluice_client::{ClientError, Producer, ProducerConfig, Record, Subscriber, SubscriberConfig};
    ///
    /// # async fn demo(subscriber: Subscriber, producer: Producer) -> Result<(), ClientError> {
    /// let message = subscriber.recv().await?;
    /// producer.begin_transaction()?;
    /// producer.enqueue(Record::new("results", message.value.clone().unwrap_or_default())).await?;
    /// subscriber.ack_in_transaction(&message, &producer).await?;
    /// producer.commit_transaction().await?; // output visible and input acknowledged, or neither
    /// # Ok(()) }
    /// ```
    pub async fn ack_in_transaction(
        &self,
        message: &Message,
        producer: &Producer,
    ) -> Result<(), ClientError> {
        let partition = self.partition(message)?;
        let token = message.ack_token();
        let ticket = producer.join_transaction_ack()?;
        let outcome = async {
            let slot = self
                .shared
                .ack_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ClientError::Closed)?;
            let (reply, receipt) = oneshot::channel();
            partition
                .send(Command::TxnAck {
                    offset: token.offset,
                    session: token.session,
                    transaction: ticket.context.clone(),
                    reply,
                    slot,
                })
                .await?;
            AckFuture {
                receipt,
                timeout_ms: self.shared.config.client.request_timeout_ms,
            }
            .await
        }
        .await;
        ticket.finish(&outcome);
        outcome
    }
}
