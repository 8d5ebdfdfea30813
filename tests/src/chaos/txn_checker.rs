//! The checker of a transactional chaos history (ADR 0016 §12), pure:
//!
//! - **aborted read**: a read-committed read (during the run or in the
//!   final drain) returned a value of a transaction that never committed
//!   (aborted, or its commit refused and the abort done);
//! - **uncommitted read**: a read-committed read returned a value before
//!   its transaction's commit was called, or of a transaction whose commit
//!   was never called and that did not end as aborted either (still open);
//! - **lost committed write**: a value of a transaction whose commit
//!   returned OK is missing from the final drain;
//! - **duplicated committed write**: the final drain returned a value
//!   more than once;
//! - **partial transaction**: a transaction of unknown outcome (its commit
//!   failed without saying how) is in the drain with some of its values
//!   but not all: transactions are all or nothing;
//! - **unexpected value**: a value no transaction wrote.
//!
//! The drain reads every partition read-committed after every transaction
//! ended, so a committed transaction's values are all there.

use super::txn_history::{LiveRead, Txn, TxnOutcome};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Examples kept per anomaly.
const MAX_EXAMPLES: usize = 5;

/// The kinds of anomaly, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnAnomaly {
    AbortedRead,
    UncommittedRead,
    LostCommittedWrite,
    DuplicatedCommittedWrite,
    PartialTransaction,
    UnexpectedValue,
}

impl TxnAnomaly {
    pub const ALL: [TxnAnomaly; 6] = [
        TxnAnomaly::AbortedRead,
        TxnAnomaly::UncommittedRead,
        TxnAnomaly::LostCommittedWrite,
        TxnAnomaly::DuplicatedCommittedWrite,
        TxnAnomaly::PartialTransaction,
        TxnAnomaly::UnexpectedValue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TxnAnomaly::AbortedRead => "aborted-read",
            TxnAnomaly::UncommittedRead => "uncommitted-read",
            TxnAnomaly::LostCommittedWrite => "lost-committed-write",
            TxnAnomaly::DuplicatedCommittedWrite => "duplicated-committed-write",
            TxnAnomaly::PartialTransaction => "partial-transaction",
            TxnAnomaly::UnexpectedValue => "unexpected-txn-value",
        }
    }
}

/// Totals that are not anomalies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnStats {
    pub transactions: usize,
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    pub open: usize,
    pub live_reads: usize,
    pub drained: usize,
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct TxnCheckReport {
    counts: BTreeMap<TxnAnomaly, usize>,
    examples: BTreeMap<TxnAnomaly, Vec<String>>,
    pub stats: TxnStats,
}

impl TxnCheckReport {
    fn add(&mut self, anomaly: TxnAnomaly, example: impl FnOnce() -> String) {
        *self.counts.entry(anomaly).or_default() += 1;
        let examples = self.examples.entry(anomaly).or_default();
        if examples.len() < MAX_EXAMPLES {
            examples.push(example());
        }
    }

    pub fn count(&self, anomaly: TxnAnomaly) -> usize {
        self.counts.get(&anomaly).copied().unwrap_or(0)
    }

    pub fn examples(&self, anomaly: TxnAnomaly) -> &[String] {
        self.examples.get(&anomaly).map_or(&[], Vec::as_slice)
    }

    pub fn total_anomalies(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn is_valid(&self) -> bool {
        self.total_anomalies() == 0
    }
}

impl fmt::Display for TxnCheckReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = &self.stats;
        writeln!(
            formatter,
            "transactions: {} ({} committed, {} aborted, {} unknown, {} open); reads: {} live, {} drained",
            stats.transactions,
            stats.committed,
            stats.aborted,
            stats.unknown,
            stats.open,
            stats.live_reads,
            stats.drained
        )?;
        for anomaly in TxnAnomaly::ALL {
            writeln!(formatter, "{:>26}: {}", anomaly.name(), self.count(anomaly))?;
            for example in self.examples(anomaly) {
                writeln!(formatter, "{:>26}    e.g. {example}", "")?;
            }
        }
        write!(
            formatter,
            "transactional verdict: {}",
            if self.is_valid() {
                "valid".to_string()
            } else {
                format!("INVALID ({} anomalies)", self.total_anomalies())
            }
        )
    }
}

/// Judges one read-committed read of `value` (at `at_ms` when live).
fn check_read(
    report: &mut TxnCheckReport,
    writers: &HashMap<&str, &Txn>,
    value: &str,
    at_ms: Option<u64>,
    where_: &str,
) {
    let Some(txn) = writers.get(value) else {
        report.add(TxnAnomaly::UnexpectedValue, || {
            format!("{where_} read {value:?}, which no transaction wrote")
        });
        return;
    };
    match (txn.outcome, txn.commit_called_at_ms) {
        (TxnOutcome::Aborted, _) => report.add(TxnAnomaly::AbortedRead, || {
            format!(
                "{where_} read {value:?} of aborted transaction {}/{}",
                txn.producer, txn.index
            )
        }),
        (_, None) => report.add(TxnAnomaly::UncommittedRead, || {
            format!(
                "{where_} read {value:?} of transaction {}/{}, whose commit was never called",
                txn.producer, txn.index
            )
        }),
        (_, Some(called)) if at_ms.is_some_and(|at| at < called) => {
            report.add(TxnAnomaly::UncommittedRead, || {
                format!(
                    "{where_} read {value:?} at {} ms, before its commit was called at {called} ms",
                    at_ms.unwrap_or_default()
                )
            })
        }
        _ => {}
    }
}

/// Runs every check.
pub fn check_transactions(
    transactions: &[Txn],
    live_reads: &[LiveRead],
    drained: &[String],
) -> TxnCheckReport {
    let mut report = TxnCheckReport::default();
    let writers: HashMap<&str, &Txn> = transactions
        .iter()
        .flat_map(|txn| txn.values.iter().map(move |value| (value.as_str(), txn)))
        .collect();
    report.stats = TxnStats {
        transactions: transactions.len(),
        committed: count(transactions, TxnOutcome::Committed),
        aborted: count(transactions, TxnOutcome::Aborted),
        unknown: count(transactions, TxnOutcome::Unknown),
        open: count(transactions, TxnOutcome::Open),
        live_reads: live_reads.len(),
        drained: drained.len(),
    };
    for read in live_reads {
        let where_ = format!("the live reader (p{} @{})", read.partition, read.offset);
        check_read(
            &mut report,
            &writers,
            &read.value,
            Some(read.at_ms),
            &where_,
        );
    }
    let mut times_drained: HashMap<&str, usize> = HashMap::new();
    for value in drained {
        *times_drained.entry(value.as_str()).or_default() += 1;
        check_read(&mut report, &writers, value, None, "the drain");
    }
    for (value, times) in &times_drained {
        if *times > 1 {
            report.add(TxnAnomaly::DuplicatedCommittedWrite, || {
                format!("the drain read {value:?} {times} times")
            });
        }
    }
    for txn in transactions {
        let present = txn
            .values
            .iter()
            .filter(|value| times_drained.contains_key(value.as_str()))
            .count();
        match txn.outcome {
            TxnOutcome::Committed => {
                for value in &txn.values {
                    if !times_drained.contains_key(value.as_str()) {
                        report.add(TxnAnomaly::LostCommittedWrite, || {
                            format!(
                                "{value:?} of committed transaction {}/{} is not in the drain",
                                txn.producer, txn.index
                            )
                        });
                    }
                }
            }
            TxnOutcome::Unknown if present > 0 && present < txn.values.len() => {
                report.add(TxnAnomaly::PartialTransaction, || {
                    format!(
                        "transaction {}/{} of unknown outcome: {present} of its {} values drained",
                        txn.producer,
                        txn.index,
                        txn.values.len()
                    )
                })
            }
            _ => {}
        }
    }
    report
}

fn count(transactions: &[Txn], outcome: TxnOutcome) -> usize {
    transactions
        .iter()
        .filter(|txn| txn.outcome == outcome)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::txn_history::txn_value;

    fn txn(producer: u32, index: u64, outcome: TxnOutcome, called: Option<u64>) -> Txn {
        Txn {
            producer,
            index,
            values: (0..3).map(|i| txn_value(producer, index, i)).collect(),
            commit_called_at_ms: called,
            outcome,
        }
    }

    fn live(value: &str, at_ms: u64) -> LiveRead {
        LiveRead {
            partition: 0,
            offset: 0,
            value: value.into(),
            at_ms,
        }
    }

    /// Two committed transactions, one aborted, one of unknown outcome
    /// that did not commit, one still open; the drain holds exactly the
    /// committed values and the live reader read some after their commits.
    fn clean() -> (Vec<Txn>, Vec<LiveRead>, Vec<String>) {
        let transactions = vec![
            txn(0, 0, TxnOutcome::Committed, Some(100)),
            txn(0, 1, TxnOutcome::Aborted, None),
            txn(1, 0, TxnOutcome::Committed, Some(150)),
            txn(1, 1, TxnOutcome::Unknown, Some(300)),
            txn(2, 0, TxnOutcome::Open, None),
        ];
        let reads = vec![live("t0-0-0", 120), live("t1-0-2", 150)];
        let mut drained: Vec<String> = transactions[0].values.clone();
        drained.extend(transactions[2].values.clone());
        (transactions, reads, drained)
    }

    fn only(report: &TxnCheckReport, anomaly: TxnAnomaly, count: usize) {
        assert_eq!(report.count(anomaly), count, "{report}");
        assert_eq!(
            report.total_anomalies(),
            count,
            "only {anomaly:?}: {report}"
        );
        assert!(!report.examples(anomaly).is_empty() || count == 0);
    }

    #[test]
    fn a_clean_history_is_valid() {
        let (transactions, reads, drained) = clean();
        let report = check_transactions(&transactions, &reads, &drained);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.committed, 2);
        assert_eq!(report.stats.aborted, 1);
        assert_eq!(report.stats.unknown, 1);
        assert_eq!(report.stats.open, 1);
        // An unknown transaction drained whole (it did commit) is fine.
        let mut drained = drained;
        drained.extend(transactions[3].values.clone());
        assert!(check_transactions(&transactions, &reads, &drained).is_valid());
    }

    #[test]
    fn a_value_of_an_aborted_transaction_is_an_aborted_read_live_or_drained() {
        let (transactions, mut reads, drained) = clean();
        reads.push(live("t0-1-1", 500));
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::AbortedRead,
            1,
        );
        let (transactions, reads, mut drained) = clean();
        drained.push("t0-1-0".into());
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::AbortedRead,
            1,
        );
    }

    #[test]
    fn a_read_before_the_commit_call_or_of_an_open_transaction_is_uncommitted() {
        let (transactions, mut reads, drained) = clean();
        reads.push(live("t1-0-0", 149));
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::UncommittedRead,
            1,
        );
        let (transactions, mut reads, drained) = clean();
        reads.push(live("t2-0-0", 900));
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::UncommittedRead,
            1,
        );
        let (transactions, reads, mut drained) = clean();
        drained.push("t2-0-1".into());
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::UncommittedRead,
            1,
        );
    }

    #[test]
    fn a_committed_value_missing_from_the_drain_is_lost() {
        let (transactions, reads, mut drained) = clean();
        drained.retain(|value| value != "t1-0-1");
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::LostCommittedWrite,
            1,
        );
    }

    #[test]
    fn a_value_drained_twice_is_duplicated() {
        let (transactions, reads, mut drained) = clean();
        drained.push("t0-0-2".into());
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::DuplicatedCommittedWrite,
            1,
        );
    }

    #[test]
    fn an_unknown_transaction_drained_in_part_is_partial() {
        let (transactions, reads, mut drained) = clean();
        drained.push("t1-1-0".into());
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::PartialTransaction,
            1,
        );
    }

    #[test]
    fn a_value_nobody_wrote_is_unexpected() {
        let (transactions, mut reads, drained) = clean();
        reads.push(live("t9-9-9", 10));
        only(
            &check_transactions(&transactions, &reads, &drained),
            TxnAnomaly::UnexpectedValue,
            1,
        );
    }

    #[test]
    fn examples_are_capped_but_counts_are_not() {
        let (transactions, reads, mut drained) = clean();
        for _ in 0..20 {
            drained.push("t0-1-0".into());
        }
        let report = check_transactions(&transactions, &reads, &drained);
        assert_eq!(report.count(TxnAnomaly::AbortedRead), 20);
        assert_eq!(report.examples(TxnAnomaly::AbortedRead).len(), MAX_EXAMPLES);
        assert!(report.to_string().contains("INVALID"), "{report}");
    }
}
