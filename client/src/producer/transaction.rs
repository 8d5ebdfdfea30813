//! The transactional producer's client-side state machine (ADR 0016 §7).
//! Pure: time is passed in, the producer does the IO (flush, the
//! coordinator's `EndTransaction`) around it.
//!
//! ```text
//! Ready --begin--> InTransaction --commit/abort--> Ending --ended--> Ready
//!                      |  a failed batch, the timeout         |  Timeout / retriable
//!                      v                                      v
//!                  Abortable --abort--> Ending          EndUnknown (call it again)
//! anywhere --PRODUCER_FENCED--> Fenced (for good)
//! ```
//!
//! It lives under the producer's batching lock, so `enqueue` checks it at
//! the moment it appends, and a commit that moved it to `Ending` sees every
//! record appended before (the flush that follows takes them).

use crate::ClientError;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// No transaction open.
    Ready,
    InTransaction {
        started_at: Instant,
        /// A record was appended: the end needs the coordinator.
        sent: bool,
    },
    /// A commit or abort is flushing or waiting for the coordinator.
    Ending { commit: bool, sent: bool },
    /// The end's outcome is unknown (timeout, coordinator moving): calling
    /// the same end again retries the idempotent `EndTransaction`.
    EndUnknown { commit: bool },
    /// Cannot commit any more: only `abort_transaction` is allowed.
    Abortable { reason: String, sent: bool },
    /// Another instance took the transactional id: nothing is allowed.
    Fenced { message: String },
}

/// What the producer does for an end the state machine allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndPlan {
    pub commit: bool,
    /// Flush and wait for every batch first (false for a retried end:
    /// they were waited for before).
    pub flush: bool,
    /// Ask the coordinator (false when the transaction wrote nothing: no
    /// partition and no coordinator knows of it).
    pub call_coordinator: bool,
    pub producer_id: i64,
    pub epoch: i16,
}

#[derive(Debug)]
pub(crate) struct Transaction {
    state: State,
    producer_id: i64,
    epoch: i16,
    timeout: Duration,
    /// Subscription acknowledgements joining the open transaction whose
    /// receipt has not come yet (bounded by the subscribers'
    /// `max_pending_acks`); the end waits for them.
    acks_in_flight: u32,
}

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::InvalidTransactionState(message.into())
}

impl Transaction {
    /// After `InitProducerId` answered `(producer_id, epoch)`.
    pub fn new(producer_id: i64, epoch: i16, timeout: Duration) -> Self {
        Self {
            state: State::Ready,
            producer_id,
            epoch,
            timeout,
            acks_in_flight: 0,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn identity(&self) -> (i64, i16) {
        (self.producer_id, self.epoch)
    }

    /// The error every call gets once fenced.
    fn fenced_error(&self) -> Option<ClientError> {
        match &self.state {
            State::Fenced { message } => Some(ClientError::ProducerFenced(message.clone())),
            _ => None,
        }
    }

    /// `begin_transaction`: from Ready only (local; the coordinator learns
    /// of the transaction from its first partition).
    pub fn begin(&mut self, now: Instant) -> Result<(), ClientError> {
        if let Some(error) = self.fenced_error() {
            return Err(error);
        }
        match &self.state {
            State::Ready => {
                self.state = State::InTransaction {
                    started_at: now,
                    sent: false,
                };
                Ok(())
            }
            State::InTransaction { .. } | State::Abortable { .. } => Err(invalid(
                "a transaction is already open: commit or abort it before beginning another",
            )),
            State::Ending { .. } | State::EndUnknown { .. } => Err(invalid(
                "the previous transaction is still ending: wait for its commit or abort to return",
            )),
            State::Fenced { .. } => Err(invalid("fenced")),
        }
    }

    /// A record may be appended now (checked under the batching lock).
    /// Past the transaction timeout the transaction becomes abortable: the
    /// coordinator aborts it anyway.
    pub fn check_enqueue(&mut self, now: Instant) -> Result<(), ClientError> {
        self.check_in_transaction(now, true)
    }

    /// A transaction is open and may still commit (nothing joins it).
    pub fn check_open(&mut self, now: Instant) -> Result<(), ClientError> {
        self.check_in_transaction(now, false)
    }

    /// Whether something may join the open transaction now; `joins`: it
    /// does (the end then needs the coordinator).
    fn check_in_transaction(&mut self, now: Instant, joins: bool) -> Result<(), ClientError> {
        if let Some(error) = self.fenced_error() {
            return Err(error);
        }
        self.expire(now);
        match &mut self.state {
            State::InTransaction { sent, .. } => {
                *sent |= joins;
                Ok(())
            }
            State::Abortable { reason, .. } => Err(ClientError::TransactionAbortable {
                reason: reason.clone(),
            }),
            State::Ready => Err(invalid(
                "a transactional producer sends only inside a transaction: call begin_transaction first",
            )),
            State::Ending { .. } | State::EndUnknown { .. } => Err(invalid(
                "the transaction is ending: records cannot join it; begin the next one after the commit or abort returns",
            )),
            State::Fenced { .. } => Err(invalid("fenced")),
        }
    }

    /// A subscription acknowledgement joins the transaction (same rules
    /// as a record: only while it is open); returns the `(producer_id,
    /// epoch)` it carries. Its receipt must be reported with
    /// [`Self::ack_finished`].
    pub fn begin_ack(&mut self, now: Instant) -> Result<(i64, i16), ClientError> {
        self.check_enqueue(now)?;
        self.acks_in_flight = self.acks_in_flight.saturating_add(1);
        Ok((self.producer_id, self.epoch))
    }

    /// The receipt of an acknowledgement that joined the transaction: a
    /// refusal (or no receipt) makes the transaction abortable, since the
    /// message is not acknowledged in it.
    pub fn ack_finished(&mut self, error: Option<&ClientError>) {
        self.acks_in_flight = self.acks_in_flight.saturating_sub(1);
        if let Some(error) = error {
            self.on_failure(error);
        }
    }

    /// Acknowledgements joining the transaction still without a receipt.
    pub fn acks_in_flight(&self) -> u32 {
        self.acks_in_flight
    }

    /// Past the transaction timeout an open transaction becomes abortable
    /// (the coordinator aborts it anyway); whether it just did.
    fn expire(&mut self, now: Instant) -> bool {
        let State::InTransaction { started_at, .. } = &self.state else {
            return false;
        };
        if now.duration_since(*started_at) <= self.timeout {
            return false;
        }
        self.state = State::Abortable {
            reason: format!(
                "the transaction has been open longer than transaction_timeout_ms ({} ms) and the coordinator aborts it",
                self.timeout.as_millis()
            ),
            sent: true,
        };
        true
    }

    /// A batch of the transaction failed (or `PRODUCER_FENCED` came back
    /// from anywhere): the transaction cannot commit.
    pub fn on_failure(&mut self, error: &ClientError) {
        self.failed(
            format!("a record or acknowledgement of the transaction failed: {error}"),
            error,
        );
    }

    /// `send_offsets_to_transaction` failed: the transaction cannot commit
    /// (its offsets would be missing).
    pub fn on_offsets_failure(&mut self, error: &ClientError) {
        self.failed(
            format!("the transaction's offset commit failed: {error}"),
            error,
        );
    }

    fn failed(&mut self, reason: String, error: &ClientError) {
        if let ClientError::ProducerFenced(message) = error {
            self.state = State::Fenced {
                message: message.clone(),
            };
            return;
        }
        match &self.state {
            State::InTransaction { .. } | State::Ending { commit: true, .. } => {
                self.state = State::Abortable { reason, sent: true };
            }
            // An abort goes on regardless; other states have nothing in flight.
            _ => {}
        }
    }

    /// `commit_transaction` (`commit`) or `abort_transaction`: moves to
    /// Ending and says what to do, or refuses. A second concurrent call
    /// finds Ending and is refused.
    pub fn start_end(&mut self, commit: bool, now: Instant) -> Result<EndPlan, ClientError> {
        if let Some(error) = self.fenced_error() {
            return Err(error);
        }
        if commit {
            self.expire(now);
        }
        let verb = if commit { "commit" } else { "abort" };
        let (flush, sent) = match &self.state {
            State::InTransaction { sent, .. } => (true, *sent),
            State::Abortable { sent, .. } if !commit => (true, *sent),
            State::Abortable { reason, .. } => {
                return Err(ClientError::TransactionAbortable {
                    reason: reason.clone(),
                })
            }
            State::EndUnknown { commit: pending } if *pending == commit => (false, true),
            State::EndUnknown { commit: pending } => {
                let pending = if *pending { "commit" } else { "abort" };
                return Err(invalid(format!(
                    "the {pending} of this transaction has an unknown outcome: call {pending} again, not {verb}"
                )));
            }
            State::Ready => {
                return Err(invalid(format!(
                    "{verb} without an open transaction: call begin_transaction first"
                )))
            }
            State::Ending { .. } => {
                return Err(invalid(format!(
                    "cannot {verb}: a commit or abort of this transaction is already in progress"
                )))
            }
            State::Fenced { .. } => return Err(invalid("fenced")),
        };
        self.state = State::Ending { commit, sent };
        Ok(EndPlan {
            commit,
            flush,
            call_coordinator: sent,
            producer_id: self.producer_id,
            epoch: self.epoch,
        })
    }

    /// The flush of a commit finished: refuses the commit if a batch
    /// failed meanwhile (then the state is Abortable).
    pub fn flushed(&self) -> Result<(), ClientError> {
        match &self.state {
            State::Ending { .. } => Ok(()),
            State::Abortable { reason, .. } => Err(ClientError::TransactionAbortable {
                reason: reason.clone(),
            }),
            State::Fenced { message } => Err(ClientError::ProducerFenced(message.clone())),
            other => Err(invalid(format!(
                "unexpected state after a flush: {other:?}"
            ))),
        }
    }

    /// The coordinator ended the transaction and answered the next
    /// `(producer_id, epoch)` (every end bumps the epoch); `None` when no
    /// coordinator was asked (nothing was sent: the epoch stays).
    pub fn ended(&mut self, next: Option<(i64, i16)>) {
        if let Some((producer_id, epoch)) = next {
            self.producer_id = producer_id;
            self.epoch = epoch;
        }
        self.state = State::Ready;
    }

    /// The end failed with `error`; returns the error the caller gets.
    pub fn end_failed(&mut self, commit: bool, error: ClientError) -> ClientError {
        match &error {
            ClientError::ProducerFenced(message) => {
                self.state = State::Fenced {
                    message: message.clone(),
                };
            }
            // The outcome is unknown: the same call retries it.
            error if error.is_retriable() => self.state = State::EndUnknown { commit },
            // A flush refusal already moved the state; anything else on a
            // commit (the coordinator aborted it on timeout, a limit) makes
            // it abortable.
            _ if commit && matches!(self.state, State::Ending { .. }) => {
                self.state = State::Abortable {
                    reason: error.to_string(),
                    sent: true,
                };
            }
            _ if !commit => self.state = State::EndUnknown { commit },
            _ => {}
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{ErrorCode, SluiceError};

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn open(now: Instant) -> Transaction {
        let mut transaction = Transaction::new(7, 3, TIMEOUT);
        transaction.begin(now).expect("begin");
        transaction
    }

    fn is_invalid(result: Result<impl std::fmt::Debug, ClientError>) -> bool {
        matches!(result, Err(ClientError::InvalidTransactionState(_)))
    }

    #[test]
    fn commit_takes_the_coordinators_next_epoch_with_sequences_from_scratch() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.check_enqueue(now).expect("in a transaction");
        let plan = transaction.start_end(true, now).expect("commit");
        assert_eq!(
            plan,
            EndPlan {
                commit: true,
                flush: true,
                call_coordinator: true,
                producer_id: 7,
                epoch: 3
            }
        );
        transaction.flushed().expect("nothing failed");
        transaction.ended(Some((7, 4)));
        assert_eq!(transaction.identity(), (7, 4));
        assert_eq!(transaction.state(), &State::Ready);
        transaction.begin(now).expect("the next transaction");
    }

    #[test]
    fn an_empty_transaction_ends_without_the_coordinator() {
        let now = Instant::now();
        let mut transaction = open(now);
        let plan = transaction.start_end(false, now).expect("abort");
        assert!(!plan.call_coordinator);
        transaction.ended(None);
        assert_eq!(transaction.identity(), (7, 3));
    }

    #[test]
    fn a_failed_offset_commit_makes_the_transaction_abortable() {
        let now = Instant::now();
        let mut transaction = open(now);
        // Offsets join the transaction: the end needs the coordinator even
        // without records.
        transaction.check_enqueue(now).expect("offsets may join");
        let error = ClientError::Server(SluiceError::new(ErrorCode::StaleMemberEpoch, "lost"));
        transaction.on_offsets_failure(&error);
        match transaction.start_end(true, now) {
            Err(ClientError::TransactionAbortable { reason }) => {
                assert!(reason.contains("offset commit"), "{reason}")
            }
            other => panic!("the commit must be refused, got {other:?}"),
        }
        let plan = transaction.start_end(false, now).expect("abort");
        assert!(plan.call_coordinator);
    }

    #[test]
    fn checking_an_open_transaction_adds_nothing_to_it() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.check_open(now).expect("open");
        assert!(
            !transaction
                .start_end(true, now)
                .expect("commit")
                .call_coordinator
        );
        let mut ready = Transaction::new(7, 3, TIMEOUT);
        assert!(is_invalid(ready.check_open(now)));
        let mut fenced = open(now);
        fenced.on_offsets_failure(&ClientError::ProducerFenced("taken".into()));
        assert!(matches!(
            fenced.check_open(now),
            Err(ClientError::ProducerFenced(_))
        ));
    }

    #[test]
    fn every_illegal_call_is_refused() {
        let now = Instant::now();
        let mut transaction = Transaction::new(7, 3, TIMEOUT);
        assert!(
            is_invalid(transaction.check_enqueue(now)),
            "send before begin"
        );
        assert!(
            is_invalid(transaction.start_end(true, now)),
            "commit without begin"
        );
        assert!(
            is_invalid(transaction.start_end(false, now)),
            "abort without begin"
        );
        transaction.begin(now).expect("begin");
        assert!(is_invalid(transaction.begin(now)), "begin twice");
        transaction.check_enqueue(now).expect("send");
        transaction.start_end(true, now).expect("commit");
        assert!(
            is_invalid(transaction.start_end(true, now)),
            "a concurrent commit"
        );
        assert!(
            is_invalid(transaction.start_end(false, now)),
            "a concurrent abort"
        );
        assert!(
            is_invalid(transaction.check_enqueue(now)),
            "send while committing"
        );
        assert!(is_invalid(transaction.begin(now)), "begin while committing");
        transaction.ended(Some((7, 4)));
        assert!(
            is_invalid(transaction.check_enqueue(now)),
            "send after commit"
        );
        assert!(is_invalid(transaction.start_end(true, now)), "commit twice");
    }

    #[test]
    fn a_failed_batch_makes_the_transaction_abortable_and_abort_recovers() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.check_enqueue(now).expect("send");
        transaction.on_failure(&ClientError::Timeout {
            what: "delivery".into(),
            timeout_ms: 1,
        });
        assert!(matches!(
            transaction.start_end(true, now),
            Err(ClientError::TransactionAbortable { .. })
        ));
        assert!(matches!(
            transaction.check_enqueue(now),
            Err(ClientError::TransactionAbortable { .. })
        ));
        assert!(is_invalid(transaction.begin(now)));
        let plan = transaction.start_end(false, now).expect("abort is allowed");
        assert!(plan.call_coordinator && !plan.commit);
        transaction.ended(Some((7, 4)));
        transaction.begin(now).expect("begin after the abort");
    }

    #[test]
    fn a_failure_during_the_commit_flush_refuses_the_commit() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.check_enqueue(now).expect("send");
        transaction.start_end(true, now).expect("commit");
        transaction.on_failure(&ClientError::Server(SluiceError::new(
            ErrorCode::TooLarge,
            "big",
        )));
        assert!(matches!(
            transaction.flushed(),
            Err(ClientError::TransactionAbortable { .. })
        ));
        transaction.start_end(false, now).expect("abort");
    }

    #[test]
    fn fenced_is_for_good() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.check_enqueue(now).expect("send");
        transaction.on_failure(&ClientError::ProducerFenced("epoch 5 took it".into()));
        let fenced =
            |result: Result<(), ClientError>| matches!(result, Err(ClientError::ProducerFenced(_)));
        assert!(fenced(transaction.check_enqueue(now)));
        assert!(fenced(transaction.start_end(true, now).map(|_| ())));
        assert!(fenced(transaction.start_end(false, now).map(|_| ())));
        assert!(fenced(transaction.begin(now)));
        transaction.ended(None);
        // `ended` is only called after an allowed end; fencing from the
        // coordinator's answer sticks too.
        let mut transaction = open(now);
        transaction.check_enqueue(now).expect("send");
        transaction.start_end(true, now).expect("commit");
        let error = transaction.end_failed(true, ClientError::ProducerFenced("x".into()));
        assert!(matches!(error, ClientError::ProducerFenced(_)));
        assert!(fenced(transaction.begin(now)));
    }

    #[test]
    fn an_end_with_an_unknown_outcome_is_retried_by_the_same_call_only() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.check_enqueue(now).expect("send");
        transaction.start_end(true, now).expect("commit");
        let timeout = ClientError::Timeout {
            what: "EndTransaction".into(),
            timeout_ms: 1,
        };
        transaction.end_failed(true, timeout);
        assert!(
            is_invalid(transaction.start_end(false, now)),
            "the other decision"
        );
        assert!(is_invalid(transaction.begin(now)));
        let retry = transaction.start_end(true, now).expect("commit again");
        assert!(!retry.flush && retry.call_coordinator);
        assert_eq!(retry.epoch, 3, "the retry ends the same epoch");
        transaction.ended(Some((7, 4)));
        assert_eq!(transaction.identity(), (7, 4));
    }

    #[test]
    fn a_refused_commit_becomes_abortable() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.check_enqueue(now).expect("send");
        transaction.start_end(true, now).expect("commit");
        let refused = ClientError::TransactionAbortable {
            reason: "expired".into(),
        };
        transaction.end_failed(true, refused);
        assert!(matches!(transaction.state(), State::Abortable { .. }));
        transaction.start_end(false, now).expect("abort");
    }

    #[test]
    fn past_the_timeout_sends_are_refused_abortable() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction
            .check_enqueue(now + TIMEOUT)
            .expect("at the limit");
        assert!(matches!(
            transaction.check_enqueue(now + TIMEOUT + Duration::from_millis(1)),
            Err(ClientError::TransactionAbortable { .. })
        ));
        assert!(
            transaction
                .start_end(false, now)
                .expect("abort")
                .call_coordinator
        );
    }

    #[test]
    fn subscription_acks_join_only_an_open_transaction_and_a_failed_one_makes_it_abortable() {
        let now = Instant::now();
        let mut transaction = Transaction::new(7, 3, TIMEOUT);
        assert!(
            is_invalid(transaction.begin_ack(now)),
            "no transaction open"
        );
        transaction.begin(now).expect("begin");
        assert_eq!(transaction.begin_ack(now).expect("joins"), (7, 3));
        assert_eq!(transaction.begin_ack(now).expect("joins"), (7, 3));
        assert_eq!(transaction.acks_in_flight(), 2);
        transaction.ack_finished(None);
        let refused = ClientError::Server(SluiceError::new(ErrorCode::DeliveryExpired, "not held"));
        transaction.ack_finished(Some(&refused));
        assert_eq!(transaction.acks_in_flight(), 0);
        assert!(matches!(
            transaction.start_end(true, now),
            Err(ClientError::TransactionAbortable { .. })
        ));
        let plan = transaction.start_end(false, now).expect("abort allowed");
        assert!(
            plan.call_coordinator,
            "an ack joined: the coordinator knows the transaction"
        );
        transaction.ended(Some((7, 4)));
        assert!(is_invalid(transaction.begin_ack(now)), "ended");
    }

    #[test]
    fn an_ack_alone_makes_the_commit_call_the_coordinator() {
        let now = Instant::now();
        let mut transaction = open(now);
        transaction.begin_ack(now).expect("joins");
        transaction.ack_finished(None);
        let plan = transaction.start_end(true, now).expect("commit");
        assert!(plan.call_coordinator);
        assert!(
            is_invalid(transaction.begin_ack(now)),
            "no ack joins an ending transaction"
        );
    }
}
