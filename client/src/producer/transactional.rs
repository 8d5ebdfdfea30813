//! The transactional producer's calls (ADR 0016 §7): begin, commit and
//! abort around the pure [`Transaction`](super::transaction::Transaction).

use super::batching::{lock, Batching};
use super::transaction::{EndPlan, Transaction};
use super::{txn_coordinator, Producer};
use crate::ClientError;
use sluice_proto::v1::TransactionContext;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A subscription acknowledgement that joined the producer's open
/// transaction ([`crate::Subscriber::ack_in_transaction`]): report its
/// receipt with [`TxnAckTicket::finish`]; dropped unfinished (the caller
/// gave up waiting), it makes the transaction abortable, since whether the
/// message is pending in it is unknown.
pub(crate) struct TxnAckTicket {
    batching: Arc<Mutex<Batching>>,
    done: Arc<Notify>,
    pub context: TransactionContext,
    finished: bool,
}

impl TxnAckTicket {
    pub fn finish(mut self, outcome: &Result<(), ClientError>) {
        self.report(outcome.as_ref().err());
    }

    fn report(&mut self, error: Option<&ClientError>) {
        self.finished = true;
        if let Some(transaction) = &mut lock(&self.batching).transaction {
            transaction.ack_finished(error);
        }
        self.done.notify_waiters();
    }
}

impl Drop for TxnAckTicket {
    fn drop(&mut self) {
        if !self.finished {
            let abandoned = ClientError::Timeout {
                what: "a transactional acknowledgement's receipt (abandoned by its caller)".into(),
                timeout_ms: 0,
            };
            self.report(Some(&abandoned));
        }
    }
}

impl Producer {
    /// Runs `step` on the transaction state; refuses a producer built
    /// without `transactional_id`.
    pub(super) fn with_transaction<R>(
        &self,
        step: impl FnOnce(&mut Transaction) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        match &mut lock(&self.batching).transaction {
            Some(transaction) => step(transaction),
            None => Err(ClientError::InvalidTransactionState(
                "this producer has no transactional_id: set ProducerConfig::transactional_id to use transactions".into(),
            )),
        }
    }

    /// The transactional id, or the refusal of a plain producer.
    pub(super) fn transactional_id(&self) -> Result<&str, ClientError> {
        self.config.transactional_id.as_deref().ok_or_else(|| {
            ClientError::InvalidTransactionState(
                "this producer has no transactional_id: set ProducerConfig::transactional_id to use transactions".into(),
            )
        })
    }

    /// The current `(producer_id, epoch)` of a transactional producer (every
    /// commit or abort that wrote something moves to the next epoch).
    pub fn transactional_identity(&self) -> Option<(i64, i16)> {
        lock(&self.batching)
            .transaction
            .as_ref()
            .map(Transaction::identity)
    }

    /// Joins a subscription acknowledgement to the open transaction: the
    /// context it carries, and the ticket that reports its receipt.
    pub(crate) fn join_transaction_ack(&self) -> Result<TxnAckTicket, ClientError> {
        let id = self.transactional_id()?.to_string();
        let (producer_id, epoch) =
            self.with_transaction(|transaction| transaction.begin_ack(Instant::now()))?;
        Ok(TxnAckTicket {
            batching: self.batching.clone(),
            done: self.txn_acks_done.clone(),
            context: TransactionContext {
                transactional_id: id,
                producer_id,
                producer_epoch: i32::from(epoch),
            },
            finished: false,
        })
    }

    /// Waits until every acknowledgement that joined the transaction has
    /// its receipt (each is bounded by its subscriber's request timeout).
    async fn wait_for_txn_acks(&self) {
        loop {
            let notified = self.txn_acks_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let in_flight = lock(&self.batching)
                .transaction
                .as_ref()
                .map_or(0, Transaction::acks_in_flight);
            if in_flight == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Opens a transaction (local: the coordinator learns of it from the
    /// first partition written). Refused with
    /// [`ClientError::InvalidTransactionState`] while one is open or ending,
    /// [`ClientError::ProducerFenced`] once fenced.
    ///
    /// ```no_run
    /// use sluice_client::{ClientError, Producer, ProducerConfig, Record};
    ///
    /// # async fn demo() -> Result<(), ClientError> {
    /// let producer = Producer::new(ProducerConfig {
    ///     transactional_id: Some("copier-7".into()), // fences older instances with this id
    ///     transaction_timeout_ms: 60_000,
    ///     ..ProducerConfig::default()
    /// }).await?;
    /// producer.begin_transaction()?;
    /// producer.enqueue(Record::new("orders", "paid")).await?;
    /// producer.enqueue(Record::new("audit", "order paid")).await?;
    /// match producer.commit_transaction().await {
    ///     Ok(()) => {}
    ///     Err(ClientError::TransactionAbortable { .. }) => producer.abort_transaction().await?, // then redo
    ///     Err(error) => return Err(error), // ProducerFenced: another instance took over; stop
    /// }
    /// # Ok(()) }
    /// ```
    pub fn begin_transaction(&self) -> Result<(), ClientError> {
        self.with_transaction(|transaction| transaction.begin(Instant::now()))
    }

    /// Sends every record of the transaction, waits for all their
    /// acknowledgements and for the receipts of subscription
    /// acknowledgements made with
    /// [`Subscriber::ack_in_transaction`](crate::Subscriber::ack_in_transaction),
    /// then commits it with the coordinator; the records become visible to
    /// read-committed readers and the acknowledged messages are never
    /// delivered again. On
    /// [`ClientError::TransactionAbortable`] call `abort_transaction` and
    /// redo the work; on [`ClientError::ProducerFenced`] stop; on
    /// [`ClientError::Timeout`] the outcome is unknown: call it again.
    pub async fn commit_transaction(&self) -> Result<(), ClientError> {
        self.end_transaction(true).await
    }

    /// Drops the records not yet handed to a broker stream (their futures
    /// fail [`ClientError::TransactionAborted`]), waits for those in
    /// flight, then aborts the transaction: no read-committed reader ever
    /// sees its records.
    pub async fn abort_transaction(&self) -> Result<(), ClientError> {
        self.end_transaction(false).await
    }

    async fn end_transaction(&self, commit: bool) -> Result<(), ClientError> {
        let id = self.transactional_id()?.to_string();
        let plan =
            self.with_transaction(|transaction| transaction.start_end(commit, Instant::now()))?;
        if let Err(error) = self.flush_for_end(&plan).await {
            return Err(
                self.with_transaction(|transaction| Ok(transaction.end_failed(commit, error)))?
            );
        }
        if !plan.call_coordinator {
            return self.with_transaction(|transaction| {
                transaction.ended(None);
                Ok(())
            });
        }
        let bound = Duration::from_millis(self.config.delivery_timeout_ms);
        let ended = txn_coordinator::end(
            &self.cluster,
            &id,
            (plan.producer_id, plan.epoch),
            commit,
            bound,
        )
        .await;
        let mut batching = lock(&self.batching);
        let batching = &mut *batching;
        let Some(transaction) = &mut batching.transaction else {
            return Err(ClientError::Closed);
        };
        match ended {
            Ok((producer_id, epoch)) => {
                // Nothing is open: the state refused appends since the end
                // began and the flush drained every batch.
                batching.accumulator.set_transactional(producer_id, epoch);
                transaction.ended(Some((producer_id, epoch)));
                Ok(())
            }
            Err(error) => Err(transaction.end_failed(commit, error)),
        }
    }

    /// An abort's records not yet handed to the dispatcher are dropped:
    /// their futures fail [`ClientError::TransactionAborted`]. Batches the
    /// dispatcher holds are sent and waited for (they are aborted all the
    /// same).
    fn discard_unsent(&self) {
        let (open, ready) = {
            let mut batching = lock(&self.batching);
            let open = batching.accumulator.discard_open();
            let ready: Vec<_> = batching.ready.drain(..).collect();
            (open, ready)
        };
        let dropped = open.len() + ready.len();
        for attachment in open
            .into_iter()
            .chain(ready.into_iter().map(|batch| batch.attachment))
        {
            attachment.completer.fail(ClientError::TransactionAborted);
        }
        if dropped > 0 {
            tracing::debug!(
                batches = dropped,
                "aborted transaction: unsent batches dropped"
            );
        }
    }

    /// Flushes the transaction's batches (unless the plan is a retry) and
    /// says whether the end may go on.
    async fn flush_for_end(&self, plan: &EndPlan) -> Result<(), ClientError> {
        if !plan.flush {
            return Ok(());
        }
        if !plan.commit {
            self.discard_unsent();
        }
        self.flush().await?;
        // Subscription acknowledgements in the transaction: their receipts
        // say they are durably pending (a refusal made it abortable).
        self.wait_for_txn_acks().await;
        self.with_transaction(|transaction| transaction.flushed())
    }
}
