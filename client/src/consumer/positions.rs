//! Bookkeeping of consumed positions and what has been committed, and the
//! assignment diff that drives revocation. Pure, so it is tested directly.

use crate::cluster::TopicPartition;
use std::collections::{BTreeMap, BTreeSet};

/// Next offset to consume per partition, as far as `recv()` has returned
/// records, and the last position committed.
#[derive(Debug, Default)]
pub(crate) struct PositionTracker {
    consumed: BTreeMap<TopicPartition, u64>,
    committed: BTreeMap<TopicPartition, u64>,
}

impl PositionTracker {
    /// The application received the record at `offset`.
    pub fn record_returned(&mut self, partition: &TopicPartition, offset: u64) {
        let next = offset.saturating_add(1);
        // Runs for every record: only a new partition costs a key copy.
        match self.consumed.get_mut(partition) {
            Some(position) => *position = (*position).max(next),
            None => {
                self.consumed.insert(partition.clone(), next);
            }
        }
    }

    /// Moves the position (seek); a later commit stores it.
    pub fn set_position(&mut self, partition: &TopicPartition, offset: u64) {
        self.consumed.insert(partition.clone(), offset);
    }

    /// Forgets the consumed position (seek to a not yet resolved start);
    /// the committed one is kept.
    pub fn clear_position(&mut self, partition: &TopicPartition) {
        self.consumed.remove(partition);
    }

    /// Remembers a position that is already committed (found with
    /// `FetchOffsets` when the partition was assigned).
    pub fn set_committed(&mut self, partition: &TopicPartition, offset: u64) {
        self.committed.insert(partition.clone(), offset);
    }

    pub fn position(&self, partition: &TopicPartition) -> Option<u64> {
        self.consumed.get(partition).copied()
    }

    /// Positions that differ from what is committed, optionally only for
    /// `only`.
    pub fn uncommitted(
        &self,
        only: Option<&BTreeSet<TopicPartition>>,
    ) -> Vec<(TopicPartition, u64)> {
        self.consumed
            .iter()
            .filter(|(partition, _)| only.is_none_or(|only| only.contains(*partition)))
            .filter(|(partition, offset)| self.committed.get(*partition) != Some(offset))
            .map(|(partition, offset)| (partition.clone(), *offset))
            .collect()
    }

    /// Records a successful commit.
    pub fn committed(&mut self, offsets: &[(TopicPartition, u64)]) {
        for (partition, offset) in offsets {
            self.committed.insert(partition.clone(), *offset);
        }
    }

    /// Forgets a partition that was released.
    pub fn remove(&mut self, partition: &TopicPartition) {
        self.consumed.remove(partition);
        self.committed.remove(partition);
    }
}

/// What changes between the partitions owned now and the coordinator's
/// target assignment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AssignmentChange {
    /// Owned but not in the target: release (commit, stop fetching).
    pub revoked: BTreeSet<TopicPartition>,
    /// In the target but not owned: start fetching.
    pub added: BTreeSet<TopicPartition>,
}

impl AssignmentChange {
    pub fn between(owned: &BTreeSet<TopicPartition>, target: &BTreeSet<TopicPartition>) -> Self {
        Self {
            revoked: owned.difference(target).cloned().collect(),
            added: target.difference(owned).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty() && self.added.is_empty()
    }
}

/// Decides whether a fetched record may be handed to the application: it
/// must belong to the current fetch generation of an owned partition and
/// be exactly the next offset expected (none skipped, none twice) or, at
/// the start of a generation, at or after the requested start.
pub(crate) fn accept_offset(expected_next: Option<u64>, start: u64, offset: u64) -> bool {
    match expected_next {
        Some(next) => offset >= next,
        None => offset >= start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: u32) -> TopicPartition {
        TopicPartition::new("t", partition)
    }

    #[test]
    fn positions_follow_returned_records_and_commits() {
        let mut tracker = PositionTracker::default();
        tracker.record_returned(&tp(0), 10);
        tracker.record_returned(&tp(0), 11);
        tracker.record_returned(&tp(1), 3);
        assert_eq!(tracker.position(&tp(0)), Some(12));
        assert_eq!(tracker.uncommitted(None), vec![(tp(0), 12), (tp(1), 4)]);
        tracker.committed(&[(tp(0), 12)]);
        assert_eq!(tracker.uncommitted(None), vec![(tp(1), 4)]);
        tracker.record_returned(&tp(0), 12);
        assert_eq!(tracker.uncommitted(None), vec![(tp(0), 13), (tp(1), 4)]);
    }

    #[test]
    fn commit_of_a_subset_for_revocation() {
        let mut tracker = PositionTracker::default();
        tracker.record_returned(&tp(0), 1);
        tracker.record_returned(&tp(1), 1);
        let only: BTreeSet<_> = [tp(1)].into_iter().collect();
        assert_eq!(tracker.uncommitted(Some(&only)), vec![(tp(1), 2)]);
        tracker.remove(&tp(1));
        assert_eq!(tracker.uncommitted(None), vec![(tp(0), 2)]);
    }

    #[test]
    fn already_committed_position_is_not_committed_again() {
        let mut tracker = PositionTracker::default();
        tracker.set_committed(&tp(0), 5);
        tracker.set_position(&tp(0), 5);
        assert!(tracker.uncommitted(None).is_empty());
        tracker.set_position(&tp(0), 2);
        assert_eq!(tracker.uncommitted(None), vec![(tp(0), 2)]);
    }

    #[test]
    fn position_never_moves_backwards_on_returned_records() {
        let mut tracker = PositionTracker::default();
        tracker.record_returned(&tp(0), 9);
        tracker.record_returned(&tp(0), 4);
        assert_eq!(tracker.position(&tp(0)), Some(10));
    }

    #[test]
    fn assignment_diff() {
        let owned: BTreeSet<_> = [tp(0), tp(1), tp(2)].into_iter().collect();
        let target: BTreeSet<_> = [tp(1), tp(2), tp(3)].into_iter().collect();
        let change = AssignmentChange::between(&owned, &target);
        assert_eq!(change.revoked, [tp(0)].into_iter().collect());
        assert_eq!(change.added, [tp(3)].into_iter().collect());
        assert!(AssignmentChange::between(&owned, &owned).is_empty());
    }

    #[test]
    fn duplicate_and_early_offsets_are_refused() {
        // A batch may start before the requested position.
        assert!(!accept_offset(None, 10, 9));
        assert!(accept_offset(None, 10, 10));
        // Once delivering, nothing at or before the last returned.
        assert!(!accept_offset(Some(12), 10, 11));
        assert!(accept_offset(Some(12), 10, 12));
    }
}
