//! Transactional offsets waiting for their marker (ADR 0016 §5), for one
//! `__consumer_offsets` partition. Pure: the coordinator installs durable
//! transactional commits here (live, and when replaying), and a durable
//! marker of `(producer_id, txn_epoch)` on that partition resolves them:
//! a commit hands them over to be committed, an abort drops them.
//!
//! Rules: at most one transaction holds pending offsets for a group's
//! partition at a time (another one is `CONCURRENT_TRANSACTIONS`, so no
//! race decides which offset wins), and at most `max_per_group` partitions
//! of one group are pending (admission checks both with [`check`];
//! installing a durable commit never refuses, so memory follows the log).
//!
//! [`check`]: PendingOffsets::check

use crate::assignment::TopicPartition;
use crate::commit_record::CommittedOffset;
use std::collections::{BTreeMap, HashMap};

/// A transaction's identity at its participants: producer id and epoch.
pub type TxnKey = (i64, i16);

/// Why a transactional commit cannot be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingRefusal {
    /// Another transaction's offsets are pending for the partition.
    Concurrent {
        topic: String,
        partition: u32,
        holder: TxnKey,
    },
    /// The group would have more pending partitions than allowed.
    TooMany { pending: usize, limit: usize },
}

/// Pending offsets of every group of one offsets partition.
#[derive(Debug, Default)]
pub struct PendingOffsets {
    /// Offsets by transaction, then by (group, partition): the later of
    /// two commits of one transaction wins.
    by_txn: BTreeMap<TxnKey, BTreeMap<(String, TopicPartition), CommittedOffset>>,
    /// Which transaction holds each (group, partition).
    holder: HashMap<(String, TopicPartition), TxnKey>,
    /// Pending partitions per group.
    per_group: HashMap<String, usize>,
}

impl PendingOffsets {
    /// The transaction whose offsets are pending for `group`'s partition.
    pub fn holder(&self, group: &str, partition: &TopicPartition) -> Option<TxnKey> {
        self.holder
            .get(&(group.to_string(), partition.clone()))
            .copied()
    }

    /// The partitions of `group` with offsets pending, in order.
    pub fn partitions_of(&self, group: &str) -> Vec<TopicPartition> {
        if !self.group_has_pending(group) {
            return Vec::new();
        }
        let mut partitions: Vec<TopicPartition> = self
            .holder
            .keys()
            .filter(|(owner, _)| owner == group)
            .map(|(_, partition)| partition.clone())
            .collect();
        partitions.sort();
        partitions
    }

    /// Whether anything of `group` is pending.
    pub fn group_has_pending(&self, group: &str) -> bool {
        self.per_group.get(group).is_some_and(|count| *count > 0)
    }

    /// Every pending entry, for tests and diagnostics.
    pub fn len(&self) -> usize {
        self.holder.len()
    }

    /// Whether a transactional commit of `txn` for `group` naming
    /// `partitions` may be appended now.
    pub fn check(
        &self,
        group: &str,
        txn: TxnKey,
        partitions: &[TopicPartition],
        max_per_group: usize,
    ) -> Result<(), PendingRefusal> {
        let mut new_entries = 0;
        for partition in partitions {
            match self.holder(group, partition) {
                Some(holder) if holder != txn => {
                    return Err(PendingRefusal::Concurrent {
                        topic: partition.0.clone(),
                        partition: partition.1,
                        holder,
                    })
                }
                Some(_) => {}
                None => new_entries += 1,
            }
        }
        let pending = self.per_group.get(group).copied().unwrap_or(0);
        if pending + new_entries > max_per_group {
            return Err(PendingRefusal::TooMany {
                pending: pending + new_entries,
                limit: max_per_group,
            });
        }
        Ok(())
    }

    /// A transactional commit of `txn` became durable (or was replayed).
    /// A partition another transaction holds is taken over (only replay of
    /// a log written without the admission check can get here).
    pub fn install(&mut self, group: &str, txn: TxnKey, offsets: &[CommittedOffset]) {
        for offset in offsets {
            let key = (group.to_string(), (offset.topic.clone(), offset.partition));
            if let Some(previous) = self.holder.insert(key.clone(), txn) {
                if previous != txn {
                    self.forget_entry(previous, &key);
                } else {
                    self.decrement(group);
                }
            }
            *self.per_group.entry(group.to_string()).or_default() += 1;
            self.by_txn
                .entry(txn)
                .or_default()
                .insert(key, offset.clone());
        }
    }

    fn forget_entry(&mut self, txn: TxnKey, key: &(String, TopicPartition)) {
        if let Some(entries) = self.by_txn.get_mut(&txn) {
            entries.remove(key);
            if entries.is_empty() {
                self.by_txn.remove(&txn);
            }
        }
        self.decrement(&key.0);
    }

    fn decrement(&mut self, group: &str) {
        if let Some(count) = self.per_group.get_mut(group) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_group.remove(group);
            }
        }
    }

    /// The marker of `txn` is durable: its offsets leave the pending set.
    /// Returns them by group when `commit` (to be committed, in this
    /// order), nothing for an abort.
    pub fn resolve(&mut self, txn: TxnKey, commit: bool) -> Vec<(String, Vec<CommittedOffset>)> {
        let Some(entries) = self.by_txn.remove(&txn) else {
            return Vec::new();
        };
        let mut by_group: BTreeMap<String, Vec<CommittedOffset>> = BTreeMap::new();
        for ((group, partition), offset) in entries {
            let key = (group.clone(), partition);
            if self.holder.get(&key) == Some(&txn) {
                self.holder.remove(&key);
                self.decrement(&group);
            }
            by_group.entry(group).or_default().push(offset);
        }
        if commit {
            by_group.into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Forgets everything pending for `group` (it was deleted).
    pub fn forget_group(&mut self, group: &str) {
        let keys: Vec<(String, TopicPartition)> = self
            .holder
            .keys()
            .filter(|(owner, _)| owner == group)
            .cloned()
            .collect();
        for key in keys {
            if let Some(txn) = self.holder.remove(&key) {
                self.forget_entry(txn, &key);
            }
        }
    }
}

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;
