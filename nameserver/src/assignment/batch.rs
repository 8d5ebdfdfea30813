//! How a reconcile round's owner changes are grouped into metadata
//! transactions, as pure functions (the round in `assignment.rs` commits
//! them).
//!
//! Rules:
//! - Every change keeps its own compare on the owner key as read (its mod
//!   revision, or "absent"), the topic key's mod revision (so a deleted
//!   topic stays deleted) is compared once per topic in the transaction,
//!   and the election fence once per transaction. A batch is therefore
//!   exactly as conditional as the one-change transactions it replaces: a
//!   deposed assigner, or one that read a stale owner, writes nothing.
//! - A transaction holds at most `max_operations` compares and at most
//!   `max_operations` puts (etcd checks each list against
//!   `--max-txn-ops`, default 128; the nameserver's
//!   `max_transaction_operations`). A change adds one put and one or two
//!   compares (two for the first change of its topic), plus the fence once.
//! - A single change always forms a transaction of its own even when its
//!   three compares exceed a `max_operations` below 3 (what the reconciler
//!   always wrote before batching).
//! - Changes keep the plan's order; chunks are filled greedily.

use super::Change;
use crate::keys;
use crate::metadata::{Compare, Put, Transaction};
use std::collections::{HashMap, HashSet};

/// Compares a transaction carries besides its changes: the fence.
const FIXED_COMPARES: usize = 1;

/// Splits `changes` (in order) into groups that each fit one transaction
/// of at most `max_operations` compares and puts.
pub fn chunks(changes: &[Change], max_operations: usize) -> Vec<&[Change]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut compares = FIXED_COMPARES;
    let mut topics: HashSet<&str> = HashSet::new();
    for (index, change) in changes.iter().enumerate() {
        let added = 1 + usize::from(!topics.contains(change.topic.as_str()));
        let puts = index - start + 1;
        let fits = compares + added <= max_operations && puts <= max_operations;
        if !fits && index > start {
            groups.push(&changes[start..index]);
            start = index;
            compares = FIXED_COMPARES;
            topics.clear();
        }
        compares += 1 + usize::from(topics.insert(change.topic.as_str()));
    }
    if start < changes.len() {
        groups.push(&changes[start..]);
    }
    groups
}

/// The transaction writing every change of `group`: per change the CAS on
/// its owner key, per topic the CAS on the topic key, and the fence. A
/// change whose topic has no revision in `topic_revisions` is left out
/// (its topic was not read this round).
pub fn transaction(
    group: &[Change],
    topic_revisions: &HashMap<String, i64>,
    fence: &Compare,
) -> Transaction {
    let mut compares = vec![fence.clone()];
    let mut puts = Vec::with_capacity(group.len());
    let mut topics_compared: HashSet<&str> = HashSet::new();
    for change in group {
        let Some(topic_revision) = topic_revisions.get(&change.topic) else {
            continue;
        };
        if topics_compared.insert(change.topic.as_str()) {
            compares.push(Compare::ModRevisionEquals(
                keys::topic(&change.topic),
                *topic_revision,
            ));
        }
        let key = keys::partition(&change.topic, change.partition);
        compares.push(match change.expected_mod_revision {
            Some(revision) => Compare::ModRevisionEquals(key.clone(), revision),
            None => Compare::Absent(key.clone()),
        });
        puts.push(Put::new(key, keys::encode(&change.new_owner)));
    }
    Transaction {
        compares,
        puts,
        deletes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::ChangeReason;
    use crate::keys::PartitionOwner;

    fn change(topic: &str, partition: u32, expected: Option<i64>) -> Change {
        Change {
            topic: topic.to_string(),
            partition,
            expected_mod_revision: expected,
            new_owner: PartitionOwner {
                broker_id: "b".to_string(),
                broker_session: 7,
                epoch: 9,
            },
            reason: ChangeReason::Orphaned,
        }
    }

    fn one_topic(count: u32) -> Vec<Change> {
        (0..count).map(|p| change("t", p, None)).collect()
    }

    fn sizes(groups: &[&[Change]]) -> Vec<usize> {
        groups.iter().map(|group| group.len()).collect()
    }

    fn fence() -> Compare {
        Compare::CreateRevisionEquals("election/assigner".to_string(), 5)
    }

    fn revisions(topics: &[&str]) -> HashMap<String, i64> {
        topics
            .iter()
            .enumerate()
            .map(|(index, topic)| (topic.to_string(), 100 + index as i64))
            .collect()
    }

    /// Compares of the transaction a group makes (what etcd checks).
    fn compares_of(group: &[Change], topics: &[&str]) -> usize {
        transaction(group, &revisions(topics), &fence())
            .compares
            .len()
    }

    #[test]
    fn no_changes_make_no_transaction() {
        assert!(chunks(&[], 128).is_empty());
    }

    #[test]
    fn one_change_is_one_transaction_even_below_its_three_compares() {
        let changes = one_topic(1);
        for limit in [1, 2, 3, 128] {
            assert_eq!(sizes(&chunks(&changes, limit)), vec![1], "limit {limit}");
        }
        assert_eq!(compares_of(&changes, &["t"]), 3);
        // A limit below 3 puts every change in its own transaction.
        assert_eq!(sizes(&chunks(&one_topic(3), 2)), vec![1, 1, 1]);
    }

    #[test]
    fn a_group_of_exactly_the_limit_is_one_transaction() {
        // One topic: fence + topic + one per change = limit.
        let limit = 128;
        let changes = one_topic(126);
        let groups = chunks(&changes, limit);
        assert_eq!(sizes(&groups), vec![126]);
        assert_eq!(compares_of(groups[0], &["t"]), limit);
    }

    #[test]
    fn one_over_the_limit_starts_a_second_transaction() {
        let limit = 128;
        let changes = one_topic(127);
        let groups = chunks(&changes, limit);
        assert_eq!(sizes(&groups), vec![126, 1]);
        for group in &groups {
            assert!(compares_of(group, &["t"]) <= limit);
        }
    }

    #[test]
    fn a_new_topic_costs_its_own_compare() {
        // fence + a + a/0 + a/1 = 4; b/0 needs b and b/0: 6 > 5.
        let changes = vec![
            change("a", 0, None),
            change("a", 1, None),
            change("b", 0, None),
        ];
        assert_eq!(sizes(&chunks(&changes, 5)), vec![2, 1]);
        assert_eq!(sizes(&chunks(&changes, 6)), vec![3]);
        assert_eq!(compares_of(&changes, &["a", "b"]), 6);
    }

    #[test]
    fn many_topics_never_exceed_the_limit_and_keep_the_order() {
        let changes: Vec<Change> = (0..1000)
            .map(|index| change(&format!("t{}", index % 7), index, Some(i64::from(index))))
            .collect();
        let names: Vec<String> = (0..7).map(|index| format!("t{index}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for limit in [3, 4, 10, 128, 4096] {
            let groups = chunks(&changes, limit);
            let flattened: Vec<&Change> = groups.iter().flat_map(|group| group.iter()).collect();
            assert_eq!(flattened.len(), changes.len());
            assert!(flattened.iter().zip(&changes).all(|(a, b)| *a == b));
            for group in &groups {
                let made = transaction(group, &revisions(&names), &fence());
                assert!(made.compares.len() <= limit, "limit {limit}");
                assert!(made.puts.len() <= limit, "limit {limit}");
            }
        }
    }

    #[test]
    fn every_change_keeps_its_own_compare_and_the_fence() {
        let changes = vec![
            change("a", 0, Some(41)),
            change("a", 1, None),
            change("b", 3, Some(7)),
        ];
        let made = transaction(&changes, &revisions(&["a", "b"]), &fence());
        assert_eq!(
            made.compares,
            vec![
                fence(),
                Compare::ModRevisionEquals(keys::topic("a"), 100),
                Compare::ModRevisionEquals(keys::partition("a", 0), 41),
                Compare::Absent(keys::partition("a", 1)),
                Compare::ModRevisionEquals(keys::topic("b"), 101),
                Compare::ModRevisionEquals(keys::partition("b", 3), 7),
            ]
        );
        let keys_put: Vec<&str> = made.puts.iter().map(|put| put.key.as_str()).collect();
        assert_eq!(
            keys_put,
            vec![
                keys::partition("a", 0),
                keys::partition("a", 1),
                keys::partition("b", 3)
            ]
        );
        assert!(made.deletes.is_empty());
    }

    #[test]
    fn a_change_of_a_topic_not_read_is_left_out() {
        let changes = vec![change("gone", 0, None), change("a", 0, None)];
        let made = transaction(&changes, &revisions(&["a"]), &fence());
        assert_eq!(made.puts.len(), 1);
        assert_eq!(made.puts[0].key, keys::partition("a", 0));
        assert_eq!(made.compares.len(), 3);
    }
}
