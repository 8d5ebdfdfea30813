//! The operation log of a chaos run: every produce attempt of a unique
//! value as invoked, then ok (partition, offset), failed (definitely not
//! written) or info (outcome unknown), with timestamps; and what the group
//! consumers saw (deliveries, committed offsets observed at the
//! coordinator).
//!
//! Recording is thread-safe and cheap; the checker works on the plain
//! snapshots ([`Operation`], [`Delivery`], [`CommitObservation`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How one produce attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at this position.
    Ok { partition: u32, offset: u64 },
    /// Rejected before anything was written (validation, never sent).
    Fail { error: String },
    /// Unknown: it may or may not have been written (timeouts, connection
    /// loss, a retry after either).
    Info { error: String },
}

/// One unique value and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// `p{producer}-{sequence}`.
    pub value: String,
    pub producer: u32,
    /// Position in its producer's send order (starts at 0).
    pub sequence: u64,
    /// Milliseconds since the run started.
    pub invoked_at_ms: u64,
    /// `None` until the outcome is known; an operation still open when the
    /// history is checked counts as unknown.
    pub completed_at_ms: Option<u64>,
    pub outcome: Option<Outcome>,
}

/// The unique value written by `producer` as its `sequence`-th send.
pub fn value_of(producer: u32, sequence: u64) -> String {
    format!("p{producer}-{sequence}")
}

/// Inverse of [`value_of`]; `None` for anything not of that form.
pub fn parse_value(value: &str) -> Option<(u32, u64)> {
    let rest = value.strip_prefix('p')?;
    let (producer, sequence) = rest.split_once('-')?;
    Some((producer.parse().ok()?, sequence.parse().ok()?))
}

/// A record a group member returned to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub member: u32,
    pub partition: u32,
    pub offset: u64,
    pub value: String,
    pub at_ms: u64,
}

/// A committed offset of one partition as the group's coordinator reported
/// it (`DescribeGroup`), in the order the observations were made by one
/// sequential observer. `committed_offset` is the next offset to consume;
/// `None` means "nothing committed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitObservation {
    pub partition: u32,
    pub committed_offset: Option<u64>,
    pub at_ms: u64,
}

/// Index of an operation in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationId(usize);

#[derive(Debug, Default)]
struct Logs {
    operations: Vec<Operation>,
    deliveries: Vec<Delivery>,
    commits: Vec<CommitObservation>,
}

/// Shared, append-only recorder of a run.
#[derive(Debug, Clone)]
pub struct History {
    started: Instant,
    logs: Arc<Mutex<Logs>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
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
        // A panicking recorder leaves the log consistent (every update is
        // a single push or field write), so a poisoned lock is still usable.
        self.logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Logs that `producer` is about to send its `sequence`-th value.
    pub fn invoke(&self, producer: u32, sequence: u64) -> OperationId {
        let operation = Operation {
            value: value_of(producer, sequence),
            producer,
            sequence,
            invoked_at_ms: self.now_ms(),
            completed_at_ms: None,
            outcome: None,
        };
        let mut logs = self.lock();
        logs.operations.push(operation);
        OperationId(logs.operations.len() - 1)
    }

    /// Logs the outcome of an invoked operation.
    pub fn complete(&self, id: OperationId, outcome: Outcome) {
        let at_ms = self.now_ms();
        let mut logs = self.lock();
        if let Some(operation) = logs.operations.get_mut(id.0) {
            operation.completed_at_ms = Some(at_ms);
            operation.outcome = Some(outcome);
        }
    }

    pub fn delivered(&self, member: u32, partition: u32, offset: u64, value: String) {
        let at_ms = self.now_ms();
        self.lock().deliveries.push(Delivery {
            member,
            partition,
            offset,
            value,
            at_ms,
        });
    }

    pub fn commit_observed(&self, partition: u32, committed_offset: Option<u64>) {
        let at_ms = self.now_ms();
        self.lock().commits.push(CommitObservation {
            partition,
            committed_offset,
            at_ms,
        });
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.lock().operations.clone()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    pub fn commits(&self) -> Vec<CommitObservation> {
        self.lock().commits.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        assert_eq!(value_of(3, 17), "p3-17");
        assert_eq!(parse_value("p3-17"), Some((3, 17)));
        assert_eq!(parse_value("q3-17"), None);
        assert_eq!(parse_value("p3_17"), None);
        assert_eq!(parse_value("p-1"), None);
    }

    #[test]
    fn operations_are_completed_in_place() {
        let history = History::new();
        let first = history.invoke(0, 0);
        let second = history.invoke(0, 1);
        history.complete(
            second,
            Outcome::Ok {
                partition: 2,
                offset: 9,
            },
        );
        let operations = history.operations();
        assert_eq!(operations.len(), 2);
        assert_eq!(operations[0].outcome, None);
        assert_eq!(
            operations[1].outcome,
            Some(Outcome::Ok {
                partition: 2,
                offset: 9
            })
        );
        assert!(operations[1].completed_at_ms.is_some());
        history.complete(
            first,
            Outcome::Info {
                error: "timeout".into(),
            },
        );
        assert!(matches!(
            history.operations()[0].outcome,
            Some(Outcome::Info { .. })
        ));
    }
}
