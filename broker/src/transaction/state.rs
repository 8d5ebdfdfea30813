//! The transaction coordinator's decisions for one transactional id
//! (ADR 0016 §2.2), as a pure state machine: [`transition`] takes the
//! durable state of `T` (or none), an event and the time, and returns a
//! [`Plan`]: the whole new state to append to the transaction log (or
//! none), the answer to give once that record is durable, and whether the
//! new state's markers must then be written. No IO and no clock.
//!
//! Rules (KIP-98 with KIP-890 "transaction version 2"):
//! - **Epochs.** `Init` bumps the epoch (fencing older instances: `prev`
//!   becomes −1); ending transaction `e` bumps it to `e + 1`, which the
//!   `End` answer returns and the next transaction uses, and records `prev
//!   = e` so a retried `End(e)` is answered from the record. An epoch never
//!   goes back and a `(pid, epoch)` is handed out once; past
//!   [`MAX_EPOCH`] the id gets a fresh producer id at epoch 0 (passed in
//!   by the caller, who allocates it: [`TxnError::NeedsProducerId`]).
//! - **Decisions.** A decision (Prepare*) is recorded only for the open
//!   transaction at the current epoch, and never changes: Prepare moves
//!   only to the Complete of the same decision, once every marker is
//!   acknowledged. The participant set is frozen at Prepare.
//! - **Zombies.** A request of another producer id, or of an epoch below
//!   the current one that is not a retry of the last ended transaction, is
//!   `PRODUCER_FENCED`; a request of the last ended transaction's epoch
//!   that it did not end itself (timeout, takeover, admin) is
//!   `TRANSACTION_ABORTABLE` naming why (abort and redo: KAFKA-19690).
//! - **Timeouts.** An Ongoing transaction past `started_at_ms +
//!   timeout_ms` is aborted by [`Event::Expire`] (reason TIMEOUT); a
//!   takeover or an operator aborts it the same way ([`Event::Abort`]).
//! - `Init` or the next transaction's first add while a decision is being
//!   completed answer `CONCURRENT_TRANSACTIONS` (retriable); `Init` on an
//!   Ongoing transaction first records its abort (reason FENCED).

use std::collections::BTreeSet;

/// The highest epoch a transaction runs at: its markers carry `epoch + 1`,
/// which must still fit the batch header's i16.
pub const MAX_EPOCH: i16 = i16::MAX - 1;

/// Where a transactional id's transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// No transaction open; the current epoch is ready for the next one.
    Empty,
    /// Open: participants are being added.
    Ongoing,
    /// Decided (commit or abort); markers being written.
    Prepare { commit: bool },
    /// Decided and every marker acknowledged.
    Complete { commit: bool },
}

/// Why a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    Client,
    Timeout,
    Fenced,
    Takeover,
    Admin,
}

impl EndReason {
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::Client => "the producer ended it",
            EndReason::Timeout => "it passed its transaction timeout",
            EndReason::Fenced => "another producer instance initialised the transactional id",
            EndReason::Takeover => "its coordinator failed over before the producer ended it",
            EndReason::Admin => "an operator aborted it",
        }
    }
}

/// A partition (or subscription partition) taking part in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Participant {
    pub topic: String,
    pub partition: u32,
    /// Empty: a log partition.
    pub subscription: String,
}

/// The durable state of one transactional id: exactly what one transaction
/// log record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    /// `cur`: the epoch of the open transaction, or of the next one.
    pub epoch: i16,
    /// The producer id before the last epoch overflow; −1 when none.
    pub previous_producer_id: i64,
    /// `prev`: the epoch of the last ended transaction whose `End` may be
    /// retried; −1 after a fence (or before any end).
    pub previous_epoch: i16,
    pub state: TxnState,
    /// The epoch being ended (Prepare/Complete); −1 otherwise.
    pub txn_epoch: i16,
    pub reason: EndReason,
    pub participants: BTreeSet<Participant>,
    pub timeout_ms: u64,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    /// Who initialised the id: only it may use the producer id.
    pub principal: String,
}

impl TxnMeta {
    /// The producer id the transaction being ended wrote with.
    pub fn txn_producer_id(&self) -> i64 {
        if self.previous_producer_id >= 0 && self.txn_epoch > self.epoch {
            self.previous_producer_id
        } else {
            self.producer_id
        }
    }
}

/// The coordinator's limits that decisions check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_timeout_ms: u64,
    pub max_participants: usize,
}

/// Something that happens to a transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `InitProducerId`. `fresh_producer_id`: a newly allocated id, given
    /// when a previous call answered [`TxnError::NeedsProducerId`].
    Init {
        timeout_ms: u64,
        principal: String,
        fresh_producer_id: Option<i64>,
    },
    /// `AddTransactionParticipants` (a partition verifying a first batch).
    Add {
        producer_id: i64,
        epoch: i16,
        participants: Vec<Participant>,
    },
    /// `EndTransaction`.
    End {
        producer_id: i64,
        epoch: i16,
        commit: bool,
        fresh_producer_id: Option<i64>,
    },
    /// Every marker of the transaction at `txn_epoch` is acknowledged.
    MarkersWritten { txn_epoch: i16 },
    /// The periodic timeout check; `fresh_producer_id` as for `Init` (an
    /// abort at [`MAX_EPOCH`] needs one).
    Expire { fresh_producer_id: Option<i64> },
    /// Abort the open transaction (takeover replay or operator).
    Abort {
        reason: EndReason,
        fresh_producer_id: Option<i64>,
    },
}

/// What to answer once the plan's record (if any) is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The producer id and epoch to use (Init, End).
    Producer { producer_id: i64, epoch: i16 },
    /// Done (Add, Abort, MarkersWritten).
    Done,
    /// Nothing to do (an Expire of a transaction not past its timeout, a
    /// stale MarkersWritten).
    Nothing,
}

/// The outcome of an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The whole new state to append; `None`: nothing changes.
    pub record: Option<TxnMeta>,
    pub reply: Reply,
    /// After the record is durable, write its (Prepare) markers.
    pub write_markers: bool,
    /// The event was `Init` on an Ongoing transaction: the plan records its
    /// abort; the caller answers once the abort completed by delivering
    /// `Init` again (which then bumps the epoch).
    pub retry_after_complete: bool,
}

impl Plan {
    fn reply(reply: Reply) -> Self {
        Plan {
            record: None,
            reply,
            write_markers: false,
            retry_after_complete: false,
        }
    }

    fn record(meta: TxnMeta, reply: Reply) -> Self {
        let write_markers = matches!(meta.state, TxnState::Prepare { .. });
        Plan {
            record: Some(meta),
            reply,
            write_markers,
            retry_after_complete: false,
        }
    }
}

/// A refused event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("producer fenced: {0}")]
    ProducerFenced(String),
    #[error("transaction abortable: {0}")]
    Abortable(String),
    #[error("invalid transaction state: {0}")]
    InvalidState(String),
    #[error("{0}")]
    Concurrent(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Deliver the event again with a freshly allocated producer id.
    #[error("a new producer id is needed")]
    NeedsProducerId,
}

/// Decides `event` for the id whose durable state is `meta`.
pub fn transition(
    meta: Option<&TxnMeta>,
    event: &Event,
    limits: &Limits,
    now_ms: u64,
) -> Result<Plan, TxnError> {
    match event {
        Event::Init {
            timeout_ms,
            principal,
            fresh_producer_id,
        } => init(
            meta,
            *timeout_ms,
            principal,
            *fresh_producer_id,
            limits,
            now_ms,
        ),
        Event::Add {
            producer_id,
            epoch,
            participants,
        } => add(meta, *producer_id, *epoch, participants, limits, now_ms),
        Event::End {
            producer_id,
            epoch,
            commit,
            fresh_producer_id,
        } => end(
            meta,
            *producer_id,
            *epoch,
            *commit,
            *fresh_producer_id,
            now_ms,
        ),
        Event::MarkersWritten { txn_epoch } => Ok(markers_written(meta, *txn_epoch, now_ms)),
        Event::Expire { fresh_producer_id } => expire(meta, *fresh_producer_id, now_ms),
        Event::Abort {
            reason,
            fresh_producer_id,
        } => abort(meta, *reason, *fresh_producer_id, now_ms),
    }
}

/// The producer id and epoch after `meta`'s current one: `epoch + 1`, or a
/// fresh id at epoch 0 past [`MAX_EPOCH`].
fn bump(meta: &TxnMeta, fresh: Option<i64>) -> Result<(i64, i16, i64), TxnError> {
    match meta.epoch.checked_add(1).filter(|next| *next <= MAX_EPOCH) {
        Some(next) => Ok((meta.producer_id, next, meta.previous_producer_id)),
        None => match fresh {
            Some(pid) if pid >= 0 && pid != meta.producer_id => Ok((pid, 0, meta.producer_id)),
            _ => Err(TxnError::NeedsProducerId),
        },
    }
}

/// The first `Init` of an id: a fresh producer id at epoch 0.
fn first_init(
    timeout_ms: u64,
    principal: &str,
    fresh: Option<i64>,
    now_ms: u64,
) -> Result<Plan, TxnError> {
    let pid = fresh
        .filter(|pid| *pid >= 0)
        .ok_or(TxnError::NeedsProducerId)?;
    let next = TxnMeta {
        producer_id: pid,
        epoch: 0,
        previous_producer_id: -1,
        previous_epoch: -1,
        state: TxnState::Empty,
        txn_epoch: -1,
        reason: EndReason::Client,
        participants: BTreeSet::new(),
        timeout_ms,
        started_at_ms: 0,
        updated_at_ms: now_ms,
        principal: principal.to_string(),
    };
    let reply = Reply::Producer {
        producer_id: pid,
        epoch: 0,
    };
    Ok(Plan::record(next, reply))
}

fn init(
    meta: Option<&TxnMeta>,
    timeout_ms: u64,
    principal: &str,
    fresh: Option<i64>,
    limits: &Limits,
    now_ms: u64,
) -> Result<Plan, TxnError> {
    if timeout_ms == 0 || timeout_ms > limits.max_timeout_ms {
        return Err(TxnError::InvalidArgument(format!(
            "transaction_timeout_ms {timeout_ms} is outside 1..={} ([transactions] max_timeout_ms)",
            limits.max_timeout_ms
        )));
    }
    let Some(meta) = meta else {
        return first_init(timeout_ms, principal, fresh, now_ms);
    };
    match meta.state {
        TxnState::Prepare { .. } => Err(TxnError::Concurrent(format!(
            "the previous transaction of producer {} is completing; retry",
            meta.producer_id
        ))),
        TxnState::Ongoing => {
            let mut plan = decide(meta, false, EndReason::Fenced, fresh, now_ms)?;
            plan.reply = Reply::Nothing;
            plan.retry_after_complete = true;
            Ok(plan)
        }
        TxnState::Empty | TxnState::Complete { .. } => {
            // Another principal gets a producer id of its own (ADR 0016 §1).
            let (pid, epoch, previous_pid) = if meta.principal != principal {
                let pid = fresh
                    .filter(|pid| *pid >= 0 && *pid != meta.producer_id)
                    .ok_or(TxnError::NeedsProducerId)?;
                (pid, 0, meta.producer_id)
            } else {
                bump(meta, fresh)?
            };
            let next = TxnMeta {
                producer_id: pid,
                epoch,
                previous_producer_id: previous_pid,
                previous_epoch: -1,
                state: TxnState::Empty,
                txn_epoch: -1,
                participants: BTreeSet::new(),
                timeout_ms,
                started_at_ms: 0,
                updated_at_ms: now_ms,
                principal: principal.to_string(),
                ..meta.clone()
            };
            let reply = Reply::Producer {
                producer_id: pid,
                epoch,
            };
            Ok(Plan::record(next, reply))
        }
    }
}

/// Refuses a request of `(pid, epoch)` that is not the current producer at
/// its current epoch: a retry of the last ended transaction that did not
/// end it itself, or a zombie.
fn stale(meta: &TxnMeta, pid: i64, epoch: i16) -> TxnError {
    let last_ended = meta.previous_epoch >= 0
        && epoch == meta.previous_epoch
        && (pid == meta.producer_id || pid == meta.previous_producer_id);
    if last_ended && meta.reason != EndReason::Client {
        return TxnError::Abortable(format!(
            "transaction {pid}/{epoch} was aborted because {}; abort and redo it",
            meta.reason.describe()
        ));
    }
    if last_ended {
        return TxnError::InvalidState(format!(
            "transaction {pid}/{epoch} has already ended; the current epoch is {}",
            meta.epoch
        ));
    }
    if pid == meta.producer_id && epoch > meta.epoch {
        return TxnError::InvalidState(format!(
            "epoch {epoch} of producer {pid} was never issued (current {})",
            meta.epoch
        ));
    }
    TxnError::ProducerFenced(format!(
        "producer {pid} epoch {epoch} is not the current holder of the transactional id \
         (producer {} epoch {}): another instance took it",
        meta.producer_id, meta.epoch
    ))
}

fn no_transaction() -> TxnError {
    TxnError::InvalidState("the transactional id has no producer: call InitProducerId first".into())
}

fn add(
    meta: Option<&TxnMeta>,
    pid: i64,
    epoch: i16,
    participants: &[Participant],
    limits: &Limits,
    now_ms: u64,
) -> Result<Plan, TxnError> {
    let meta = meta.ok_or_else(no_transaction)?;
    if participants.is_empty() {
        return Err(TxnError::InvalidArgument("no participants to add".into()));
    }
    if pid != meta.producer_id || epoch != meta.epoch {
        return Err(stale(meta, pid, epoch));
    }
    let (mut set, started_at_ms) = match meta.state {
        TxnState::Prepare { .. } => {
            return Err(TxnError::Concurrent(format!(
                "the previous transaction of producer {pid} is completing; retry"
            )))
        }
        TxnState::Ongoing => (meta.participants.clone(), meta.started_at_ms),
        TxnState::Empty | TxnState::Complete { .. } => (BTreeSet::new(), now_ms),
    };
    let before = set.len();
    set.extend(participants.iter().cloned());
    if meta.state == TxnState::Ongoing && set.len() == before {
        return Ok(Plan::reply(Reply::Done));
    }
    if set.len() > limits.max_participants {
        return Err(TxnError::Abortable(format!(
            "the transaction would have {} participants; the limit is {} \
             ([transactions] max_participants_per_transaction)",
            set.len(),
            limits.max_participants
        )));
    }
    let next = TxnMeta {
        state: TxnState::Ongoing,
        txn_epoch: -1,
        reason: EndReason::Client,
        participants: set,
        started_at_ms,
        updated_at_ms: now_ms,
        ..meta.clone()
    };
    Ok(Plan::record(next, Reply::Done))
}

/// Records the decision on the open (or empty) transaction at the current
/// epoch: Prepare (Complete at once when no partition took part).
fn decide(
    meta: &TxnMeta,
    commit: bool,
    reason: EndReason,
    fresh: Option<i64>,
    now_ms: u64,
) -> Result<Plan, TxnError> {
    let (pid, epoch, previous_pid) = bump(meta, fresh)?;
    let empty = meta.state != TxnState::Ongoing || meta.participants.is_empty();
    let next = TxnMeta {
        producer_id: pid,
        epoch,
        previous_producer_id: previous_pid,
        previous_epoch: if reason == EndReason::Fenced {
            -1
        } else {
            meta.epoch
        },
        state: if empty {
            TxnState::Complete { commit }
        } else {
            TxnState::Prepare { commit }
        },
        txn_epoch: meta.epoch,
        reason,
        participants: if empty {
            BTreeSet::new()
        } else {
            meta.participants.clone()
        },
        updated_at_ms: now_ms,
        ..meta.clone()
    };
    let reply = Reply::Producer {
        producer_id: pid,
        epoch,
    };
    Ok(Plan::record(next, reply))
}

fn end(
    meta: Option<&TxnMeta>,
    pid: i64,
    epoch: i16,
    commit: bool,
    fresh: Option<i64>,
    now_ms: u64,
) -> Result<Plan, TxnError> {
    let meta = meta.ok_or_else(no_transaction)?;
    let current = pid == meta.producer_id && epoch == meta.epoch;
    if current {
        return match meta.state {
            TxnState::Prepare { .. } => Err(TxnError::Concurrent(format!(
                "the previous transaction of producer {pid} is completing; retry"
            ))),
            _ => decide(meta, commit, EndReason::Client, fresh, now_ms),
        };
    }
    // A retry of the last ended transaction's End, answered from its record.
    let decided = match meta.state {
        TxnState::Prepare { commit } | TxnState::Complete { commit } => Some(commit),
        TxnState::Empty | TxnState::Ongoing => None,
    };
    let retry = meta.previous_epoch >= 0
        && epoch == meta.previous_epoch
        && epoch == meta.txn_epoch
        && pid == meta.txn_producer_id();
    match decided {
        Some(recorded) if retry && recorded == commit => Ok(Plan::reply(Reply::Producer {
            producer_id: meta.producer_id,
            epoch: meta.epoch,
        })),
        Some(true) if retry => Err(TxnError::InvalidState(format!(
            "transaction {pid}/{epoch} was committed; it cannot be aborted"
        ))),
        _ => Err(stale(meta, pid, epoch)),
    }
}

fn markers_written(meta: Option<&TxnMeta>, txn_epoch: i16, now_ms: u64) -> Plan {
    match meta {
        Some(meta) if meta.txn_epoch == txn_epoch => match meta.state {
            TxnState::Prepare { commit } => {
                let next = TxnMeta {
                    state: TxnState::Complete { commit },
                    updated_at_ms: now_ms,
                    ..meta.clone()
                };
                Plan::record(next, Reply::Done)
            }
            _ => Plan::reply(Reply::Nothing),
        },
        _ => Plan::reply(Reply::Nothing),
    }
}

fn expire(meta: Option<&TxnMeta>, fresh: Option<i64>, now_ms: u64) -> Result<Plan, TxnError> {
    let Some(meta) = meta else {
        return Ok(Plan::reply(Reply::Nothing));
    };
    let deadline = meta.started_at_ms.saturating_add(meta.timeout_ms);
    if meta.state != TxnState::Ongoing || now_ms < deadline {
        return Ok(Plan::reply(Reply::Nothing));
    }
    let mut plan = decide(meta, false, EndReason::Timeout, fresh, now_ms)?;
    plan.reply = Reply::Done;
    Ok(plan)
}

fn abort(
    meta: Option<&TxnMeta>,
    reason: EndReason,
    fresh: Option<i64>,
    now_ms: u64,
) -> Result<Plan, TxnError> {
    let meta = meta.ok_or_else(no_transaction)?;
    match meta.state {
        TxnState::Ongoing => {
            let mut plan = decide(meta, false, reason, fresh, now_ms)?;
            plan.reply = Reply::Done;
            Ok(plan)
        }
        TxnState::Prepare { commit: false } => Ok(Plan::reply(Reply::Done)),
        TxnState::Prepare { commit: true } => Err(TxnError::InvalidState(
            "the transaction is already committing; it cannot be aborted".into(),
        )),
        TxnState::Empty | TxnState::Complete { .. } => Err(TxnError::InvalidState(
            "the transactional id has no open transaction".into(),
        )),
    }
}

#[cfg(test)]
mod tests;
