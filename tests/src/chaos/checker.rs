//! The history checker of the chaos tests, modelled on Jepsen's Kafka
//! queue checker. Pure: it takes the operation log, what a final drain of
//! every partition read (from offset 0, after the faults healed) and what
//! the group consumers saw, and counts every anomaly with examples.
//!
//! A write is *known written* when it was acknowledged, or when a group
//! member received it (a read proves it was written even if the producer
//! never learnt so). The anomalies:
//!
//! - **lost write**: known written, but the final drain does not contain it.
//! - **duplicate**: one value at more than one position in the drain.
//! - **inconsistent offset**: one position (partition, offset) with two
//!   values, across the acknowledgement, the drain and group deliveries.
//! - **moved write**: acknowledged at one position, read only elsewhere.
//! - **nonmonotonic read**: the drain of a partition went back or repeated
//!   an offset.
//! - **out-of-order write**: within a partition, a producer's values appear
//!   (first occurrences, in offset order) out of its send order.
//! - **failed-write read**: a write that failed (definitely rejected) was read.
//! - **unexpected value**: something was read that no producer wrote.
//! - **incomplete drain**: the drain of a partition stopped below its
//!   high watermark.
//! - **commit regression**: a committed offset observed at the coordinator
//!   went back (or vanished) between two observations.
//! - **group skip**: an offset below a committed offset exists in the log but
//!   no group member ever received it.
//! - **commit beyond log**: a committed offset above the end of the log.
//!
//! **Unseen** writes (outcome unknown and not read) are reported but are not
//! failures. Pass means every anomaly count is zero.

use super::history::{parse_value, CommitObservation, Delivery, Operation, Outcome};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// Examples kept per anomaly kind.
pub const MAX_EXAMPLES: usize = 10;

/// One record read by the final drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub offset: u64,
    pub value: String,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub operations: &'a [Operation],
    /// Per partition, the records of the final drain in the order read.
    pub drained: &'a BTreeMap<u32, Vec<ReadRecord>>,
    /// End of each partition's log when the drain started (partitions
    /// without an entry are not checked for completeness).
    pub high_watermarks: &'a BTreeMap<u32, u64>,
    pub deliveries: &'a [Delivery],
    pub commits: &'a [CommitObservation],
    /// Partitions of the topic: one whose end is unknown (no high
    /// watermark) counts as an incomplete drain.
    pub partitions: u32,
}

/// The kinds of anomaly, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Anomaly {
    LostWrite,
    Duplicate,
    InconsistentOffset,
    MovedWrite,
    NonmonotonicRead,
    OutOfOrderWrite,
    FailedWriteRead,
    UnexpectedValue,
    IncompleteDrain,
    CommitRegression,
    GroupSkip,
    CommitBeyondLog,
}

impl Anomaly {
    pub const ALL: [Anomaly; 12] = [
        Anomaly::LostWrite,
        Anomaly::Duplicate,
        Anomaly::InconsistentOffset,
        Anomaly::MovedWrite,
        Anomaly::NonmonotonicRead,
        Anomaly::OutOfOrderWrite,
        Anomaly::FailedWriteRead,
        Anomaly::UnexpectedValue,
        Anomaly::IncompleteDrain,
        Anomaly::CommitRegression,
        Anomaly::GroupSkip,
        Anomaly::CommitBeyondLog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Anomaly::LostWrite => "lost-write",
            Anomaly::Duplicate => "duplicate",
            Anomaly::InconsistentOffset => "inconsistent-offset",
            Anomaly::MovedWrite => "moved-write",
            Anomaly::NonmonotonicRead => "nonmonotonic-read",
            Anomaly::OutOfOrderWrite => "out-of-order-write",
            Anomaly::FailedWriteRead => "failed-write-read",
            Anomaly::UnexpectedValue => "unexpected-value",
            Anomaly::IncompleteDrain => "incomplete-drain",
            Anomaly::CommitRegression => "commit-regression",
            Anomaly::GroupSkip => "group-skip",
            Anomaly::CommitBeyondLog => "commit-beyond-log",
        }
    }
}

/// Totals that are not anomalies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub invoked: usize,
    pub ok: usize,
    pub failed: usize,
    /// Outcome unknown (including operations never completed).
    pub info: usize,
    /// Unknown outcome and never read: reported, not a failure.
    pub unseen: usize,
    /// Unknown outcome but read: they were written.
    pub info_read: usize,
    pub drained_records: usize,
    pub group_deliveries: usize,
    pub commit_observations: usize,
    /// Offsets missing between the first and last offset drained of a
    /// partition (no acknowledged write there, else it is a lost write).
    pub offset_gaps: u64,
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    counts: BTreeMap<Anomaly, usize>,
    examples: BTreeMap<Anomaly, Vec<String>>,
    example_times: BTreeMap<Anomaly, Vec<Option<u64>>>,
    pub unseen_examples: Vec<String>,
    pub stats: Stats,
}

impl CheckReport {
    /// Counts one `anomaly`; `at_ms` is when the operation involved was
    /// invoked (or the observation made), to line examples up with faults.
    fn add(&mut self, anomaly: Anomaly, at_ms: Option<u64>, example: impl FnOnce() -> String) {
        let count = self.counts.entry(anomaly).or_default();
        *count += 1;
        let examples = self.examples.entry(anomaly).or_default();
        if examples.len() < MAX_EXAMPLES {
            examples.push(example());
            self.example_times.entry(anomaly).or_default().push(at_ms);
        }
    }

    /// When each example's operation was invoked (same order as
    /// [`CheckReport::examples`]).
    pub fn example_times(&self, anomaly: Anomaly) -> &[Option<u64>] {
        self.example_times.get(&anomaly).map_or(&[], Vec::as_slice)
    }

    pub fn count(&self, anomaly: Anomaly) -> usize {
        self.counts.get(&anomaly).copied().unwrap_or(0)
    }

    pub fn examples(&self, anomaly: Anomaly) -> &[String] {
        self.examples.get(&anomaly).map_or(&[], Vec::as_slice)
    }

    /// Sum of every anomaly count.
    pub fn total_anomalies(&self) -> usize {
        self.counts.values().sum()
    }

    /// True when every anomaly count is zero.
    pub fn is_valid(&self) -> bool {
        self.total_anomalies() == 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = &self.stats;
        writeln!(
            formatter,
            "operations: {} invoked, {} ok, {} failed, {} unknown ({} of them read, {} unseen)",
            stats.invoked, stats.ok, stats.failed, stats.info, stats.info_read, stats.unseen
        )?;
        writeln!(
            formatter,
            "reads: {} drained, {} group deliveries, {} commit observations, {} offset gaps",
            stats.drained_records,
            stats.group_deliveries,
            stats.commit_observations,
            stats.offset_gaps
        )?;
        for anomaly in Anomaly::ALL {
            writeln!(formatter, "{:>20}: {}", anomaly.name(), self.count(anomaly))?;
            for example in self.examples(anomaly) {
                writeln!(formatter, "{:>20}    e.g. {example}", "")?;
            }
        }
        writeln!(
            formatter,
            "{:>20}: {} (not a failure)",
            "unseen", stats.unseen
        )?;
        for example in &self.unseen_examples {
            writeln!(formatter, "{:>20}    e.g. {example}", "")?;
        }
        write!(
            formatter,
            "verdict: {}",
            if self.is_valid() {
                "valid (every anomaly count is zero)".to_string()
            } else {
                format!("INVALID ({} anomalies)", self.total_anomalies())
            }
        )
    }
}

/// Runs every check.
pub fn check(input: CheckInput<'_>) -> CheckReport {
    let mut report = CheckReport::default();
    let operations: HashMap<&str, &Operation> = input
        .operations
        .iter()
        .map(|operation| (operation.value.as_str(), operation))
        .collect();
    report.stats.invoked = input.operations.len();
    report.stats.group_deliveries = input.deliveries.len();
    report.stats.commit_observations = input.commits.len();

    // Every value seen at each position, and the positions of each value
    // in the drain.
    let mut values_at: BTreeMap<(u32, u64), BTreeSet<&str>> = BTreeMap::new();
    let mut drained_at: HashMap<&str, BTreeSet<(u32, u64)>> = HashMap::new();
    let mut unexpected: BTreeSet<&str> = BTreeSet::new();
    for (&partition, records) in input.drained {
        report.stats.drained_records += records.len();
        let mut previous: Option<u64> = None;
        for record in records {
            if let Some(previous) = previous {
                if record.offset <= previous {
                    report.add(Anomaly::NonmonotonicRead, None, || {
                        format!(
                            "partition {partition}: offset {} read after {previous}",
                            record.offset
                        )
                    });
                }
            }
            previous = Some(previous.map_or(record.offset, |previous| previous.max(record.offset)));
            values_at
                .entry((partition, record.offset))
                .or_default()
                .insert(&record.value);
            drained_at
                .entry(&record.value)
                .or_default()
                .insert((partition, record.offset));
            if !operations.contains_key(record.value.as_str()) {
                unexpected.insert(&record.value);
            }
        }
        let offsets: BTreeSet<u64> = records.iter().map(|record| record.offset).collect();
        if let (Some(first), Some(last)) = (offsets.first(), offsets.last()) {
            report.stats.offset_gaps += (last - first + 1) - offsets.len() as u64;
        }
        if let Some(&high_watermark) = input.high_watermarks.get(&partition) {
            let end = offsets.last().map_or(0, |last| last + 1);
            if end < high_watermark {
                report.add(Anomaly::IncompleteDrain, None, || {
                    format!("partition {partition}: drained up to {end}, high watermark {high_watermark}")
                });
            }
        }
    }
    for partition in 0..input.partitions {
        if !input.high_watermarks.contains_key(&partition) {
            report.add(Anomaly::IncompleteDrain, None, || {
                format!("partition {partition}: the end of its log is unknown (no high watermark)")
            });
        }
    }
    for (&partition, &high_watermark) in input.high_watermarks {
        if high_watermark > 0 && !input.drained.contains_key(&partition) {
            report.add(Anomaly::IncompleteDrain, None, || {
                format!("partition {partition}: nothing drained, high watermark {high_watermark}")
            });
        }
    }

    let mut delivered: HashSet<&str> = HashSet::new();
    for delivery in input.deliveries {
        values_at
            .entry((delivery.partition, delivery.offset))
            .or_default()
            .insert(&delivery.value);
        delivered.insert(&delivery.value);
        if !operations.contains_key(delivery.value.as_str()) {
            unexpected.insert(&delivery.value);
        }
    }
    for value in unexpected {
        report.add(Anomaly::UnexpectedValue, None, || {
            format!("{value:?} was read but never written")
        });
    }

    for operation in input.operations {
        let value = operation.value.as_str();
        let drained = drained_at.get(value);
        let read = drained.is_some() || delivered.contains(value);
        match &operation.outcome {
            Some(Outcome::Ok { partition, offset }) => {
                report.stats.ok += 1;
                values_at
                    .entry((*partition, *offset))
                    .or_default()
                    .insert(value);
                match drained {
                    None => report.add(Anomaly::LostWrite, Some(operation.invoked_at_ms), || {
                        format!(
                            "{value} acknowledged at {partition}@{offset} (invoked {} ms, ok {} ms) is not in the drain",
                            operation.invoked_at_ms,
                            operation.completed_at_ms.unwrap_or_default()
                        )
                    }),
                    Some(positions) if !positions.contains(&(*partition, *offset)) => {
                        report.add(Anomaly::MovedWrite, Some(operation.invoked_at_ms), || {
                            format!(
                                "{value} acknowledged at {partition}@{offset} but read at {}",
                                describe_positions(positions)
                            )
                        })
                    }
                    Some(_) => {}
                }
            }
            Some(Outcome::Fail { error }) => {
                report.stats.failed += 1;
                if read {
                    report.add(
                        Anomaly::FailedWriteRead,
                        Some(operation.invoked_at_ms),
                        || format!("{value} failed ({error}) but was read"),
                    );
                }
            }
            Some(Outcome::Info { .. }) | None => {
                report.stats.info += 1;
                if drained.is_some() {
                    report.stats.info_read += 1;
                } else if delivered.contains(value) {
                    report.add(Anomaly::LostWrite, Some(operation.invoked_at_ms), || {
                        format!(
                            "{value} (outcome unknown) was delivered to the group but is not in the drain"
                        )
                    });
                } else {
                    report.stats.unseen += 1;
                    if report.unseen_examples.len() < MAX_EXAMPLES {
                        let error = match &operation.outcome {
                            Some(Outcome::Info { error }) => error.as_str(),
                            _ => "never completed",
                        };
                        report.unseen_examples.push(format!(
                            "{value} (invoked {} ms): {error}",
                            operation.invoked_at_ms
                        ));
                    }
                }
            }
        }
    }

    let mut duplicates: Vec<(&str, &BTreeSet<(u32, u64)>)> = drained_at
        .iter()
        .filter(|(_, positions)| positions.len() > 1)
        .map(|(value, positions)| (*value, positions))
        .collect();
    duplicates.sort();
    for (value, positions) in duplicates {
        report.add(
            Anomaly::Duplicate,
            operations
                .get(value)
                .map(|operation| operation.invoked_at_ms),
            || {
                format!(
                    "{value} at {}{}",
                    describe_positions(positions),
                    describe_operation(operations.get(value).copied())
                )
            },
        );
    }

    for ((partition, offset), values) in &values_at {
        if values.len() > 1 {
            report.add(
                Anomaly::InconsistentOffset,
                values
                    .iter()
                    .filter_map(|value| operations.get(value))
                    .map(|operation| operation.invoked_at_ms)
                    .min(),
                || {
                    let described: Vec<String> = values
                        .iter()
                        .map(|value| {
                            format!(
                                "{value}{}",
                                describe_operation(operations.get(value).copied())
                            )
                        })
                        .collect();
                    format!("{partition}@{offset} holds {}", described.join(" and "))
                },
            );
        }
    }

    check_write_order(input.drained, &operations, &mut report);
    check_group(&input, &mut report);
    report
}

/// When the operation was invoked and how it ended, for examples.
fn describe_operation(operation: Option<&Operation>) -> String {
    let Some(operation) = operation else {
        return " (never written)".to_string();
    };
    let outcome = match &operation.outcome {
        Some(Outcome::Ok { partition, offset }) => format!("ok at {partition}@{offset}"),
        Some(Outcome::Fail { error }) => format!("failed: {error}"),
        Some(Outcome::Info { error }) => format!("unknown: {error}"),
        None => "never completed".to_string(),
    };
    format!(
        " (invoked {} ms, {outcome} at {} ms)",
        operation.invoked_at_ms,
        operation.completed_at_ms.unwrap_or_default()
    )
}

fn describe_positions(positions: &BTreeSet<(u32, u64)>) -> String {
    positions
        .iter()
        .map(|(partition, offset)| format!("{partition}@{offset}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Within each partition, the first occurrences of one producer's values,
/// in offset order, must follow its send order.
fn check_write_order(
    drained: &BTreeMap<u32, Vec<ReadRecord>>,
    operations: &HashMap<&str, &Operation>,
    report: &mut CheckReport,
) {
    for (&partition, records) in drained {
        let mut in_offset_order: Vec<&ReadRecord> = records.iter().collect();
        in_offset_order.sort_by_key(|record| record.offset);
        let mut seen: HashSet<&str> = HashSet::new();
        // producer -> (highest sequence so far, its offset)
        let mut highest: HashMap<u32, (u64, u64)> = HashMap::new();
        for record in in_offset_order {
            if !seen.insert(&record.value) {
                continue;
            }
            let Some((producer, sequence)) = parse_value(&record.value) else {
                continue;
            };
            match highest.get(&producer) {
                Some(&(top, top_offset)) if sequence < top => {
                    report.add(Anomaly::OutOfOrderWrite, operations.get(record.value.as_str()).map(|operation| operation.invoked_at_ms), || {
                        format!(
                            "partition {partition}: {} at offset {} after p{producer}-{top} at offset {top_offset}",
                            record.value, record.offset
                        )
                    });
                }
                _ => {
                    highest.insert(producer, (sequence, record.offset));
                }
            }
        }
    }
}

fn check_group(input: &CheckInput<'_>, report: &mut CheckReport) {
    let mut last: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    let mut highest: BTreeMap<u32, u64> = BTreeMap::new();
    for observation in input.commits {
        let partition = observation.partition;
        if let Some(Some(previous)) = last.get(&partition) {
            let went_back = match observation.committed_offset {
                Some(now) => now < *previous,
                None => true,
            };
            if went_back {
                report.add(Anomaly::CommitRegression, Some(observation.at_ms), || {
                    format!(
                        "partition {partition}: committed offset {} at {} ms after {previous}",
                        observation
                            .committed_offset
                            .map_or("none".to_string(), |offset| offset.to_string()),
                        observation.at_ms
                    )
                });
            }
        }
        last.insert(partition, observation.committed_offset);
        if let Some(offset) = observation.committed_offset {
            let top = highest.entry(partition).or_default();
            *top = (*top).max(offset);
        }
    }
    let mut delivered: HashSet<(u32, u64)> = HashSet::new();
    for delivery in input.deliveries {
        delivered.insert((delivery.partition, delivery.offset));
    }
    for (&partition, &committed) in &highest {
        let records = input.drained.get(&partition).map_or(&[][..], Vec::as_slice);
        let offsets: BTreeSet<u64> = records.iter().map(|record| record.offset).collect();
        let end = offsets.last().map_or(0, |last| last + 1);
        if committed > end {
            report.add(Anomaly::CommitBeyondLog, None, || {
                format!("partition {partition}: committed {committed}, log ends at {end}")
            });
        }
        for offset in offsets.range(..committed) {
            if !delivered.contains(&(partition, *offset)) {
                report.add(Anomaly::GroupSkip, None, || {
                    format!(
                        "partition {partition}: offset {offset} is below the committed {committed} but no member received it"
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::value_of;

    /// A small history built by hand.
    #[derive(Default)]
    struct Scenario {
        operations: Vec<Operation>,
        drained: BTreeMap<u32, Vec<ReadRecord>>,
        high_watermarks: BTreeMap<u32, u64>,
        deliveries: Vec<Delivery>,
        commits: Vec<CommitObservation>,
        partitions: u32,
    }

    impl Scenario {
        fn write(&mut self, producer: u32, sequence: u64, outcome: Option<Outcome>) -> String {
            let value = value_of(producer, sequence);
            self.operations.push(Operation {
                value: value.clone(),
                producer,
                sequence,
                invoked_at_ms: sequence,
                completed_at_ms: outcome.as_ref().map(|_| sequence + 1),
                outcome,
            });
            value
        }

        fn ok(&mut self, producer: u32, sequence: u64, partition: u32, offset: u64) -> String {
            self.write(producer, sequence, Some(Outcome::Ok { partition, offset }))
        }

        fn read(&mut self, partition: u32, offset: u64, value: &str) {
            self.drained.entry(partition).or_default().push(ReadRecord {
                offset,
                value: value.to_string(),
            });
        }

        fn deliver(&mut self, partition: u32, offset: u64, value: &str) {
            self.deliveries.push(Delivery {
                member: 0,
                partition,
                offset,
                value: value.to_string(),
                at_ms: 0,
            });
        }

        fn commit(&mut self, partition: u32, committed_offset: Option<u64>) {
            self.commits.push(CommitObservation {
                partition,
                committed_offset,
                at_ms: self.commits.len() as u64,
            });
        }

        fn check(&self) -> CheckReport {
            check(CheckInput {
                operations: &self.operations,
                drained: &self.drained,
                high_watermarks: &self.high_watermarks,
                deliveries: &self.deliveries,
                commits: &self.commits,
                partitions: self.partitions,
            })
        }

        /// Two producers, two partitions, acknowledged and read back in
        /// order, delivered to the group and committed: no anomaly.
        fn clean() -> Scenario {
            let mut scenario = Scenario::default();
            for sequence in 0..4 {
                for producer in 0..2 {
                    let partition = producer;
                    let value = scenario.ok(producer, sequence, partition, sequence);
                    scenario.read(partition, sequence, &value);
                    scenario.deliver(partition, sequence, &value);
                }
            }
            scenario.high_watermarks.insert(0, 4);
            scenario.high_watermarks.insert(1, 4);
            scenario.commit(0, None);
            scenario.commit(0, Some(2));
            scenario.commit(1, Some(4));
            scenario.commit(0, Some(4));
            scenario
        }
    }

    fn only(report: &CheckReport, anomaly: Anomaly, count: usize) {
        assert_eq!(report.count(anomaly), count, "{report}");
        assert_eq!(
            report.total_anomalies(),
            count,
            "only {} expected:\n{report}",
            anomaly.name()
        );
        assert_eq!(report.examples(anomaly).len(), count.min(MAX_EXAMPLES));
        assert!(!report.is_valid());
    }

    #[test]
    fn clean_history_passes() {
        let report = Scenario::clean().check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.ok, 8);
        assert_eq!(report.stats.drained_records, 8);
        assert_eq!(report.stats.unseen, 0);
        assert!(report.to_string().contains("verdict: valid"));
    }

    #[test]
    fn acknowledged_write_missing_from_the_drain_is_lost() {
        let mut scenario = Scenario::clean();
        let value = scenario.ok(0, 4, 0, 4);
        scenario.high_watermarks.insert(0, 4);
        let report = scenario.check();
        only(&report, Anomaly::LostWrite, 1);
        assert!(report.examples(Anomaly::LostWrite)[0].contains(&value));
        assert_eq!(report.example_times(Anomaly::LostWrite), [Some(4)]);
    }

    #[test]
    fn unknown_write_seen_by_the_group_then_missing_is_lost() {
        let mut scenario = Scenario::clean();
        let value = scenario.write(
            0,
            4,
            Some(Outcome::Info {
                error: "timeout".into(),
            }),
        );
        scenario.deliver(0, 4, &value);
        only(&scenario.check(), Anomaly::LostWrite, 1);
    }

    #[test]
    fn value_read_twice_is_a_duplicate() {
        let mut scenario = Scenario::clean();
        scenario.read(0, 4, "p0-3");
        scenario.high_watermarks.insert(0, 5);
        let report = scenario.check();
        only(&report, Anomaly::Duplicate, 1);
        assert!(report.examples(Anomaly::Duplicate)[0].contains("0@3, 0@4"));
    }

    #[test]
    fn acknowledged_offset_holding_another_value_is_inconsistent() {
        let mut scenario = Scenario::clean();
        // p0-4 acknowledged at 0@4; the log holds an unknown-outcome write
        // there and p0-4 one further.
        let acknowledged = scenario.ok(0, 4, 0, 4);
        let unknown = scenario.write(
            0,
            5,
            Some(Outcome::Info {
                error: "connection lost".into(),
            }),
        );
        scenario.read(0, 4, &unknown);
        scenario.read(0, 5, &acknowledged);
        let report = scenario.check();
        assert_eq!(report.count(Anomaly::InconsistentOffset), 1, "{report}");
        assert_eq!(report.count(Anomaly::MovedWrite), 1, "{report}");
        assert_eq!(report.count(Anomaly::OutOfOrderWrite), 1, "{report}");
        assert_eq!(report.total_anomalies(), 3, "{report}");
    }

    #[test]
    fn group_delivery_disagreeing_with_the_drain_is_inconsistent() {
        let mut scenario = Scenario::clean();
        scenario.deliver(1, 2, "p0-2");
        only(&scenario.check(), Anomaly::InconsistentOffset, 1);
    }

    #[test]
    fn acknowledged_write_read_elsewhere_moved() {
        let mut scenario = Scenario::default();
        let value = scenario.ok(0, 0, 0, 0);
        scenario.read(0, 1, &value);
        only(&scenario.check(), Anomaly::MovedWrite, 1);
    }

    #[test]
    fn drain_going_back_is_nonmonotonic() {
        let mut scenario = Scenario::clean();
        let records = scenario.drained.get_mut(&0).expect("partition 0 drained");
        records.swap(1, 2);
        only(&scenario.check(), Anomaly::NonmonotonicRead, 1);
    }

    #[test]
    fn producer_order_violated_within_a_partition() {
        let mut scenario = Scenario::default();
        let first = scenario.ok(0, 0, 0, 1);
        let second = scenario.ok(0, 1, 0, 0);
        scenario.read(0, 0, &second);
        scenario.read(0, 1, &first);
        let report = scenario.check();
        only(&report, Anomaly::OutOfOrderWrite, 1);
        assert!(report.examples(Anomaly::OutOfOrderWrite)[0].contains("p0-0"));
    }

    #[test]
    fn retried_batch_duplicates_are_not_reorders() {
        // 0, 1, then the retry of 0, 1 and the next: duplicates only.
        let mut scenario = Scenario::default();
        let zero = scenario.write(0, 0, Some(Outcome::Info { error: "t".into() }));
        let one = scenario.ok(0, 1, 0, 3);
        let two = scenario.ok(0, 2, 0, 4);
        for (offset, value) in [&zero, &one, &zero, &one, &two].into_iter().enumerate() {
            scenario.read(0, offset as u64, value);
        }
        only(&scenario.check(), Anomaly::Duplicate, 2);
    }

    #[test]
    fn failed_write_that_was_read() {
        let mut scenario = Scenario::clean();
        let value = scenario.write(
            1,
            4,
            Some(Outcome::Fail {
                error: "too large".into(),
            }),
        );
        scenario.read(1, 4, &value);
        only(&scenario.check(), Anomaly::FailedWriteRead, 1);
    }

    #[test]
    fn value_nobody_wrote() {
        let mut scenario = Scenario::clean();
        scenario.read(0, 4, "garbage");
        scenario.read(0, 5, "p9-9");
        only(&scenario.check(), Anomaly::UnexpectedValue, 2);
    }

    #[test]
    fn drain_stopping_below_the_high_watermark() {
        let mut scenario = Scenario::clean();
        scenario.high_watermarks.insert(1, 6);
        scenario.high_watermarks.insert(2, 1);
        only(&scenario.check(), Anomaly::IncompleteDrain, 2);
        // A partition whose end could not be learnt at all.
        scenario.high_watermarks.remove(&2);
        scenario.partitions = 4;
        only(&scenario.check(), Anomaly::IncompleteDrain, 3);
    }

    #[test]
    fn committed_offset_going_back_or_vanishing() {
        let mut scenario = Scenario::clean();
        scenario.commit(0, Some(3));
        scenario.commit(1, None);
        let report = scenario.check();
        only(&report, Anomaly::CommitRegression, 2);
        assert!(report.examples(Anomaly::CommitRegression)[0].contains("3"));
    }

    #[test]
    fn offset_below_a_commit_that_no_member_received() {
        let mut scenario = Scenario::clean();
        scenario.deliveries.retain(|delivery| {
            !(delivery.partition == 1 && (delivery.offset == 1 || delivery.offset == 2))
        });
        let report = scenario.check();
        only(&report, Anomaly::GroupSkip, 2);
    }

    #[test]
    fn commit_beyond_the_end_of_the_log() {
        let mut scenario = Scenario::clean();
        scenario.commit(1, Some(9));
        only(&scenario.check(), Anomaly::CommitBeyondLog, 1);
    }

    #[test]
    fn unknown_writes_not_read_are_unseen_not_failures() {
        let mut scenario = Scenario::clean();
        scenario.write(
            0,
            4,
            Some(Outcome::Info {
                error: "timeout".into(),
            }),
        );
        scenario.write(1, 4, None);
        let written = scenario.write(
            0,
            5,
            Some(Outcome::Info {
                error: "timeout".into(),
            }),
        );
        scenario.read(0, 4, &written);
        scenario.high_watermarks.insert(0, 5);
        let report = scenario.check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.unseen, 2);
        assert_eq!(report.stats.info, 3);
        assert_eq!(report.stats.info_read, 1);
        assert_eq!(report.unseen_examples.len(), 2);
    }

    #[test]
    fn gaps_are_counted_as_statistics() {
        let mut scenario = Scenario::default();
        let first = scenario.ok(0, 0, 0, 0);
        let second = scenario.ok(0, 1, 0, 3);
        scenario.read(0, 0, &first);
        scenario.read(0, 3, &second);
        let report = scenario.check();
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.stats.offset_gaps, 2);
    }

    #[test]
    fn examples_are_capped_but_counts_are_not() {
        let mut scenario = Scenario::default();
        for sequence in 0..(MAX_EXAMPLES as u64 + 5) {
            scenario.ok(0, sequence, 0, sequence);
        }
        let report = scenario.check();
        assert_eq!(report.count(Anomaly::LostWrite), MAX_EXAMPLES + 5);
        assert_eq!(report.examples(Anomaly::LostWrite).len(), MAX_EXAMPLES);
    }
}
