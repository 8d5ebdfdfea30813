//! The consumer's side of exactly-once read-process-write (ADR 0016 §5,
//! KIP-447): what a transactional producer needs to commit the consumer's
//! positions in its transaction ([`Consumer::group_metadata`],
//! [`Consumer::uncommitted_offsets`]), and what to do after the
//! transaction ended ([`Consumer::mark_committed`] after a commit,
//! [`Consumer::rewind_to_committed`] after an abort). Run such a consumer
//! with `auto_commit = false`: its offsets are committed only through the
//! producer's transactions.

use super::group::{self, OffsetTarget};
use super::Consumer;
use crate::cluster::TopicPartition;
use crate::consumer::StartOffset;
use crate::ClientError;
use std::collections::BTreeSet;

/// Who commits in a transaction: the group and the member's identity at
/// the coordinator. The coordinator refuses a transactional commit from a
/// member that is gone, at an older epoch than its previous one, or for a
/// partition the member is not assigned now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// The consumer group.
    pub group: String,
    /// The member id the coordinator gave this consumer.
    pub member_id: String,
    /// The member's epoch (bumped at each assignment change).
    pub member_epoch: i64,
}

/// A partition's next offset to read (the offset after the last record
/// processed), as committed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartitionOffset {
    /// The topic read.
    pub topic: String,
    /// The partition read.
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
}

impl Consumer {
    /// The group membership to pass to
    /// [`Producer::send_offsets_to_transaction`](crate::Producer::send_offsets_to_transaction);
    /// `None` without a group (assign mode) or before the first heartbeat
    /// joined.
    pub fn group_metadata(&self) -> Option<GroupMetadata> {
        let group = self.group.as_ref()?;
        let state = group.lock();
        if state.member_id.is_empty() || state.member_epoch <= 0 {
            return None;
        }
        Some(GroupMetadata {
            group: group.group.clone(),
            member_id: state.member_id.clone(),
            member_epoch: state.member_epoch,
        })
    }

    /// The positions after every record [`Consumer::recv`] returned, for
    /// the partitions where they differ from what is committed: what a
    /// transaction that processed those records commits.
    pub fn uncommitted_offsets(&self) -> Vec<TopicPartitionOffset> {
        self.positions
            .uncommitted(None)
            .into_iter()
            .map(|(partition, offset)| TopicPartitionOffset {
                topic: partition.topic,
                partition: partition.partition,
                offset,
            })
            .collect()
    }

    /// Records offsets as committed, after the transaction that carried
    /// them committed; offsets of partitions no longer assigned are
    /// ignored.
    pub fn mark_committed(&mut self, offsets: &[TopicPartitionOffset]) {
        let committed: Vec<(TopicPartition, u64)> = offsets
            .iter()
            .map(|offset| {
                (
                    TopicPartition::new(offset.topic.clone(), offset.partition),
                    offset.offset,
                )
            })
            .filter(|(partition, _)| self.positions.position(partition).is_some())
            .collect();
        self.positions.committed(&committed);
    }

    /// After an aborted transaction: moves every assigned partition back
    /// to its committed offset (stable: waits, bounded, while a
    /// transaction's offsets are pending; a partition without one restarts
    /// at `ConsumerConfig::reset`) and drops the records buffered, so the
    /// records of the aborted transaction are received again.
    pub async fn rewind_to_committed(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.config.group.clone() else {
            return Err(ClientError::InvalidArgument(
                "rewind_to_committed needs ConsumerConfig.group: offsets are stored per group"
                    .into(),
            ));
        };
        let assigned: BTreeSet<TopicPartition> =
            self.fetch.lock().partitions.keys().cloned().collect();
        if assigned.is_empty() {
            return Ok(());
        }
        let target = OffsetTarget {
            group: &group,
            member: self.group.as_deref(),
        };
        let committed = group::fetch_committed(&self.cluster, &target, &assigned).await?;
        {
            let mut state = self.fetch.lock();
            for partition in &assigned {
                // Revoked while the offsets were fetched: not ours to move.
                if !state.partitions.contains_key(partition) {
                    continue;
                }
                match committed.get(partition) {
                    Some(offset) => {
                        self.positions.set_committed(partition, *offset);
                        self.positions.set_position(partition, *offset);
                        state.set_start(partition.clone(), StartOffset::Offset(*offset));
                    }
                    None => {
                        self.positions.remove(partition);
                        state.set_start(partition.clone(), self.config.reset);
                    }
                }
            }
        }
        self.current.retain(|record| {
            !assigned.contains(&TopicPartition::new(record.topic.clone(), record.partition))
        });
        self.fetch.wake.notify_waiters();
        Ok(())
    }
}
