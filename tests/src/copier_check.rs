//! Pure checks of an exactly-once copy (issue 14's copier test, modelled
//! on Kafka's `transactions_test.py`): what a read-committed reader finds
//! in the output against the input, and what a reader running during the
//! whole copy saw against the final output.
//!
//! The copier keeps each record's partition number, so output partition
//! `p` must hold exactly input partition `p`'s values, in order, once
//! each. Every output record carries the tag of the transaction that wrote
//! it; a concurrent read of a record that is not in the final output at
//! that offset with that tag was a read of an aborted (or never committed)
//! transaction.

use std::collections::{BTreeMap, HashMap};

/// One record as read from the output: its offset, value and the tag of
/// the transaction that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub offset: u64,
    pub value: String,
    pub tag: String,
}

/// Input values per partition, in offset order.
pub type Input = BTreeMap<u32, Vec<String>>;
/// Output records per partition, in the order read.
pub type Output = BTreeMap<u32, Vec<Copied>>;

/// At most this many offending values are named in a failure message.
const SHOWN: usize = 5;

/// Output == input as a multiset, no value twice, and each partition's
/// values in the input's order. Inputs must be unique (the test makes them
/// so); the message names what is lost, duplicated, foreign or reordered.
pub fn check_exactly_once(input: &Input, output: &Output) -> Result<(), String> {
    let mut wanted: HashMap<&str, u32> = HashMap::new();
    for (partition, values) in input {
        for value in values {
            if wanted.insert(value, *partition).is_some() {
                return Err(format!("input value {value:?} is not unique"));
            }
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut foreign = Vec::new();
    for records in output.values() {
        for record in records {
            *seen.entry(&record.value).or_default() += 1;
            if !wanted.contains_key(record.value.as_str()) {
                foreign.push(record.value.clone());
            }
        }
    }
    let mut duplicated: Vec<String> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(value, count)| format!("{value} ×{count}"))
        .collect();
    duplicated.sort();
    let mut lost: Vec<&str> = wanted
        .keys()
        .filter(|value| !seen.contains_key(*value))
        .copied()
        .collect();
    lost.sort();
    let mut problems = Vec::new();
    if !duplicated.is_empty() {
        problems.push(summary("duplicated", &duplicated));
    }
    if !lost.is_empty() {
        problems.push(summary("lost", &lost));
    }
    if !foreign.is_empty() {
        problems.push(summary("not an input", &foreign));
    }
    if problems.is_empty() {
        check_order(input, output)?;
        return Ok(());
    }
    Err(problems.join("; "))
}

/// Each output partition holds its input partition's values in order.
fn check_order(input: &Input, output: &Output) -> Result<(), String> {
    let empty = Vec::new();
    for (partition, values) in input {
        let copied = output.get(partition).unwrap_or(&empty);
        let copied: Vec<&str> = copied.iter().map(|record| record.value.as_str()).collect();
        if let Some(at) =
            (0..values.len()).find(|index| copied.get(*index) != Some(&&*values[*index]))
        {
            return Err(format!(
                "partition {partition}: output position {at} holds {:?}, the input has {:?} there",
                copied.get(at),
                values[at]
            ));
        }
        if copied.len() != values.len() {
            return Err(format!(
                "partition {partition}: {} outputs for {} inputs",
                copied.len(),
                values.len()
            ));
        }
    }
    match output
        .keys()
        .find(|partition| !input.contains_key(partition))
    {
        Some(partition) => Err(format!(
            "output partition {partition} has no input partition"
        )),
        None => Ok(()),
    }
}

/// What a read-committed reader saw while the copy ran, against the final
/// output: every record it read is in the final output at the same offset
/// with the same value and transaction tag (else it read an aborted or
/// uncommitted transaction), and it read no offset twice nor backwards.
/// Returns how many records it read.
pub fn check_concurrent_reads(during: &Output, last: &Output) -> Result<usize, String> {
    let mut count = 0;
    for (partition, records) in during {
        let finals: HashMap<u64, &Copied> = last
            .get(partition)
            .map(|records| {
                records
                    .iter()
                    .map(|record| (record.offset, record))
                    .collect()
            })
            .unwrap_or_default();
        let mut previous: Option<u64> = None;
        for record in records {
            if previous.is_some_and(|previous| record.offset <= previous) {
                return Err(format!(
                    "partition {partition}: offset {} read after offset {previous:?}",
                    record.offset
                ));
            }
            previous = Some(record.offset);
            if finals.get(&record.offset) != Some(&record) {
                return Err(format!(
                    "partition {partition}: read {record:?} during the copy, but the final \
                     output has {:?} there: a read of an aborted or uncommitted transaction",
                    finals.get(&record.offset)
                ));
            }
            count += 1;
        }
    }
    Ok(count)
}

fn summary<T: std::fmt::Debug>(what: &str, values: &[T]) -> String {
    let shown: Vec<&T> = values.iter().take(SHOWN).collect();
    format!("{} {what} (first {shown:?})", values.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> Input {
        Input::from([
            (0, vec!["a0".into(), "a1".into(), "a2".into()]),
            (1, vec!["b0".into(), "b1".into()]),
        ])
    }

    fn copied(offset: u64, value: &str, tag: &str) -> Copied {
        Copied {
            offset,
            value: value.into(),
            tag: tag.into(),
        }
    }

    /// The input copied, with aborted records of tag "x" between.
    fn output() -> Output {
        Output::from([
            (
                0,
                vec![
                    copied(0, "a0", "t1"),
                    copied(3, "a1", "t2"),
                    copied(4, "a2", "t2"),
                ],
            ),
            (1, vec![copied(1, "b0", "t1"), copied(2, "b1", "t1")]),
        ])
    }

    #[test]
    fn an_exact_copy_passes() {
        assert_eq!(check_exactly_once(&input(), &output()), Ok(()));
    }

    #[test]
    fn a_lost_record_fails() {
        let mut output = output();
        output.get_mut(&1).expect("partition 1").pop();
        let error = check_exactly_once(&input(), &output).expect_err("lost");
        assert!(error.contains("1 lost") && error.contains("b1"), "{error}");
    }

    #[test]
    fn a_duplicate_fails_even_in_another_partition() {
        let mut output = output();
        output
            .get_mut(&1)
            .expect("partition 1")
            .push(copied(9, "a0", "t3"));
        let error = check_exactly_once(&input(), &output).expect_err("duplicated");
        assert!(
            error.contains("duplicated") && error.contains("a0 ×2"),
            "{error}"
        );
    }

    #[test]
    fn a_foreign_record_fails() {
        let mut output = output();
        output
            .get_mut(&0)
            .expect("partition 0")
            .push(copied(9, "zz", "t3"));
        let error = check_exactly_once(&input(), &output).expect_err("foreign");
        assert!(error.contains("not an input"), "{error}");
    }

    #[test]
    fn reordering_within_a_partition_fails() {
        let mut output = output();
        output.get_mut(&0).expect("partition 0").swap(1, 2);
        let error = check_exactly_once(&input(), &output).expect_err("reordered");
        assert!(error.contains("partition 0: output position 1"), "{error}");
    }

    #[test]
    fn a_record_in_the_wrong_partition_fails() {
        let mut output = output();
        let moved = output.get_mut(&0).expect("partition 0").remove(2);
        output.get_mut(&1).expect("partition 1").push(moved);
        assert!(check_exactly_once(&input(), &output).is_err());
    }

    #[test]
    fn a_concurrent_prefix_passes() {
        let during = Output::from([(0, vec![copied(0, "a0", "t1")]), (1, vec![])]);
        assert_eq!(check_concurrent_reads(&during, &output()), Ok(1));
        assert_eq!(check_concurrent_reads(&output(), &output()), Ok(5));
    }

    #[test]
    fn a_read_of_an_aborted_transaction_fails() {
        // Offset 1 of partition 0 held an aborted record of tag x.
        let during = Output::from([(0, vec![copied(0, "a0", "t1"), copied(1, "a1", "x")])]);
        let error = check_concurrent_reads(&during, &output()).expect_err("aborted read");
        assert!(error.contains("aborted or uncommitted"), "{error}");
        // Same value and offset, another transaction's tag.
        let during = Output::from([(0, vec![copied(3, "a1", "x")])]);
        assert!(check_concurrent_reads(&during, &output()).is_err());
    }

    #[test]
    fn a_concurrent_reread_fails() {
        let during = Output::from([(0, vec![copied(0, "a0", "t1"), copied(0, "a0", "t1")])]);
        let error = check_concurrent_reads(&during, &output()).expect_err("twice");
        assert!(error.contains("read after"), "{error}");
    }
}
