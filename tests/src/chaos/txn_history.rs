//! The history of the transactional part of a chaos run (ADR 0016 §12):
//! each transaction with the unique values it wrote, when its commit was
//! called and how it ended; what a read-committed reader saw during the
//! run (with times) and what the final read-committed drain read.
//!
//! Recording is thread-safe; the checker (`txn_checker`) works on the
//! plain snapshots.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How a transaction ended, as its producer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Still open (the run ended first, or the producer died with it).
    Open,
    /// `commit_transaction` returned OK.
    Committed,
    /// Never committed: commit was not called (an abort was asked for, or
    /// the producer gave up before), or the commit was refused
    /// `TRANSACTION_ABORTABLE` and the abort then succeeded.
    Aborted,
    /// The commit was called and failed otherwise (timeout, fenced,
    /// connection lost): it may or may not have committed.
    Unknown,
}

/// One transaction and its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub producer: u32,
    /// Position in its producer's transactions.
    pub index: u64,
    /// The values sent in it, in order.
    pub values: Vec<String>,
    /// When `commit_transaction` was called, in milliseconds since the run
    /// started.
    pub commit_called_at_ms: Option<u64>,
    pub outcome: TxnOutcome,
}

/// The value `i` of transaction `index` of `producer`.
pub fn txn_value(producer: u32, index: u64, i: u32) -> String {
    format!("t{producer}-{index}-{i}")
}

/// A value a read-committed reader returned while the run went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRead {
    pub partition: u32,
    pub offset: u64,
    pub value: String,
    /// Milliseconds since the run started.
    pub at_ms: u64,
}

/// Index of a transaction in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnId(usize);

#[derive(Debug, Default)]
struct Logs {
    transactions: Vec<Txn>,
    reads: Vec<LiveRead>,
}

/// Shared, append-only recorder.
#[derive(Debug, Clone)]
pub struct TxnHistory {
    started: Instant,
    logs: Arc<Mutex<Logs>>,
}

impl Default for TxnHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl TxnHistory {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            logs: Arc::default(),
        }
    }

    /// Milliseconds since the history was created.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Logs> {
        // Every update is one push or field write: a poisoned lock is
        // still consistent.
        self.logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A transaction begins.
    pub fn begin(&self, producer: u32, index: u64) -> TxnId {
        let mut logs = self.lock();
        logs.transactions.push(Txn {
            producer,
            index,
            values: Vec::new(),
            commit_called_at_ms: None,
            outcome: TxnOutcome::Open,
        });
        TxnId(logs.transactions.len() - 1)
    }

    /// `value` is about to be sent in `txn`.
    pub fn wrote(&self, txn: TxnId, value: String) {
        if let Some(txn) = self.lock().transactions.get_mut(txn.0) {
            txn.values.push(value);
        }
    }

    /// `commit_transaction` is about to be called.
    pub fn commit_called(&self, txn: TxnId) {
        let at_ms = self.now_ms();
        if let Some(txn) = self.lock().transactions.get_mut(txn.0) {
            txn.commit_called_at_ms = Some(at_ms);
        }
    }

    pub fn ended(&self, txn: TxnId, outcome: TxnOutcome) {
        if let Some(txn) = self.lock().transactions.get_mut(txn.0) {
            txn.outcome = outcome;
        }
    }

    pub fn read(&self, partition: u32, offset: u64, value: String) {
        let at_ms = self.now_ms();
        self.lock().reads.push(LiveRead {
            partition,
            offset,
            value,
            at_ms,
        });
    }

    pub fn transactions(&self) -> Vec<Txn> {
        self.lock().transactions.clone()
    }

    pub fn reads(&self) -> Vec<LiveRead> {
        self.lock().reads.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_recorded_in_place() {
        let history = TxnHistory::new();
        let first = history.begin(0, 0);
        let second = history.begin(1, 0);
        history.wrote(first, txn_value(0, 0, 0));
        history.commit_called(first);
        history.ended(first, TxnOutcome::Committed);
        history.ended(second, TxnOutcome::Aborted);
        history.read(2, 7, "t0-0-0".into());
        let transactions = history.transactions();
        assert_eq!(transactions[0].values, ["t0-0-0"]);
        assert!(transactions[0].commit_called_at_ms.is_some());
        assert_eq!(transactions[0].outcome, TxnOutcome::Committed);
        assert_eq!(transactions[1].outcome, TxnOutcome::Aborted);
        assert_eq!(transactions[1].commit_called_at_ms, None);
        assert_eq!(history.reads()[0].offset, 7);
    }
}
