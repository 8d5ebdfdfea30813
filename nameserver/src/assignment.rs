//! Partition assignment: the pure decision function [`plan`] (`plan.rs`:
//! each topic spread over the live brokers, moved back gradually), the
//! spacing of rounds that move partitions ([`BalancePacing`], `pacing.rs`)
//! and the reconcile round that applies the plan with compare-and-set
//! writes.
//!
//! Only the elected assigner runs the reconciler (see `election.rs`). Each
//! change is a CAS on the partition key's mod revision and on the topic key
//! (so a deleted topic is never resurrected), and carries the election
//! fence, so a deposed assigner's writes are refused by the metadata store
//! even if it still believes it leads. Changes are written in transactions
//! of up to `max_transaction_operations` compares (`batch.rs`); a refused
//! transaction is written again one change at a time, so one lost race
//! does not hold back the others, unless the fence no longer holds. A lost
//! race is re-planned next round.

use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner};
use crate::metadata::{Compare, KeyValue, MetadataStore, Transaction};
use sluice_proto::v1::{NodeInfo, NodeKind, Topic};
use std::collections::HashMap;

mod batch;
mod pacing;
mod plan;
#[cfg(test)]
mod plan_properties;

pub use batch::chunks as transaction_chunks;
pub use pacing::BalancePacing;
pub use plan::plan;

/// One partition as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: u32,
    /// `None` when the owner key does not exist yet.
    pub owner: Option<PartitionOwner>,
    /// Mod revision of the owner key; `None` when it does not exist.
    pub mod_revision: Option<i64>,
    /// New epochs are above this: the topic key's create revision. Every
    /// epoch bump is a metadata write, so epochs of a deleted and
    /// re-created topic never repeat those of the earlier one.
    pub epoch_floor: u64,
}

/// A broker with a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveBroker {
    pub broker_id: String,
    pub session_id: u64,
    /// Produce bytes per second the broker last reported; breaks ties
    /// between brokers with equally many partitions.
    pub bytes_in_per_sec: u64,
}

/// Why a partition changes owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// The owner's session is not live (or there never was an owner).
    Orphaned,
    /// Moved from an overloaded broker to an underloaded one.
    Balance,
}

/// One write the reconciler should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub topic: String,
    pub partition: u32,
    /// The CAS condition: the owner key's mod revision as read, or `None`
    /// for "must be absent".
    pub expected_mod_revision: Option<i64>,
    pub new_owner: PartitionOwner,
    pub reason: ChangeReason,
}

/// Live brokers from `nodes/broker/`.
pub async fn live_brokers(
    store: &dyn MetadataStore,
) -> Result<Vec<(NodeInfo, i64)>, NameServerError> {
    let mut brokers = Vec::new();
    for entry in store.range(&keys::nodes_of_kind(NodeKind::Broker)).await? {
        match keys::decode::<NodeInfo>(&entry.key, &entry.value) {
            Ok(info) => brokers.push((info, entry.mod_revision)),
            Err(error) => tracing::warn!(%error, "skipping undecodable broker registration"),
        }
    }
    Ok(brokers)
}

/// What one reconcile round wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Orphaned partitions given an owner.
    pub orphans_assigned: usize,
    /// Partitions moved between live brokers.
    pub balance_moves: usize,
}

/// How much one reconcile round may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundLimits {
    /// Balance moves (orphans are always reassigned).
    pub max_moves: usize,
    /// Compares (and puts) in one owner transaction; etcd's
    /// `--max-txn-ops`.
    pub max_transaction_operations: usize,
}

/// One reconcile round: read, [`plan`], CAS-write. Every transaction also
/// carries `fence` (the assigner's election token as a compare), so nothing
/// is written once this nameserver no longer leads. Returns how many
/// changes were applied (lost races are retried next round).
pub async fn reconcile_once(
    store: &dyn MetadataStore,
    limits: RoundLimits,
    fence: &Compare,
) -> Result<usize, NameServerError> {
    let outcome = reconcile_round(store, limits, fence).await?;
    Ok(outcome.orphans_assigned + outcome.balance_moves)
}

/// [`reconcile_once`], telling orphan assignments and balance moves apart
/// (the caller spaces rounds that moved, see [`BalancePacing`]).
pub async fn reconcile_round(
    store: &dyn MetadataStore,
    limits: RoundLimits,
    fence: &Compare,
) -> Result<RoundOutcome, NameServerError> {
    let topics = store.range(keys::TOPICS).await?;
    let owners = store.range(keys::PARTITIONS).await?;
    let brokers: Vec<LiveBroker> = live_brokers(store)
        .await?
        .into_iter()
        .map(|(info, _)| LiveBroker {
            bytes_in_per_sec: info.load.map(|load| load.bytes_in_per_sec).unwrap_or(0),
            broker_id: info.node_id,
            session_id: info.session_id,
        })
        .collect();
    let (states, topic_revisions) = partition_states(&topics, &owners);
    let changes: Vec<Change> = plan(&states, &brokers, limits.max_moves)
        .into_iter()
        .filter(|change| topic_revisions.contains_key(&change.topic))
        .collect();
    let mut outcome = RoundOutcome::default();
    for group in batch::chunks(&changes, limits.max_transaction_operations) {
        let transaction = batch::transaction(group, &topic_revisions, fence);
        let written: Vec<&Change> = if store.commit(transaction).await? {
            group.iter().collect()
        } else if fence_holds(store, fence).await? {
            // A lost race on some key: the others one at a time, so it
            // does not hold them back.
            write_one_by_one(store, group, &topic_revisions, fence).await?
        } else {
            tracing::info!("no longer the assigner; the round's remaining changes are dropped");
            return Ok(outcome);
        };
        for change in written {
            log_change(change);
            match change.reason {
                ChangeReason::Orphaned => outcome.orphans_assigned += 1,
                ChangeReason::Balance => outcome.balance_moves += 1,
            }
        }
    }
    Ok(outcome)
}

/// Whether `fence` still holds: a transaction with only that compare.
async fn fence_holds(store: &dyn MetadataStore, fence: &Compare) -> Result<bool, NameServerError> {
    let check = Transaction {
        compares: vec![fence.clone()],
        ..Transaction::default()
    };
    Ok(store.commit(check).await?)
}

/// Writes each change of `group` in its own transaction; the ones
/// committed.
async fn write_one_by_one<'a>(
    store: &dyn MetadataStore,
    group: &'a [Change],
    topic_revisions: &HashMap<String, i64>,
    fence: &Compare,
) -> Result<Vec<&'a Change>, NameServerError> {
    let mut written = Vec::new();
    for change in group {
        let single = std::slice::from_ref(change);
        if store
            .commit(batch::transaction(single, topic_revisions, fence))
            .await?
        {
            written.push(change);
        } else {
            tracing::debug!(
                topic = %change.topic,
                partition = change.partition,
                "partition assignment refused (lost a race, or no longer the assigner); re-planning next round"
            );
        }
    }
    Ok(written)
}

/// Every partition of every topic with its owner record as read, and each
/// topic's mod revision (the CAS condition that keeps a deleted topic
/// deleted).
fn partition_states(
    topics: &[KeyValue],
    owners: &[KeyValue],
) -> (Vec<PartitionState>, HashMap<String, i64>) {
    let mut owner_by_key: HashMap<&str, (Option<PartitionOwner>, i64)> = HashMap::new();
    for entry in owners {
        // A garbage owner record is treated as orphaned so it gets
        // overwritten with a good one (CAS on its revision).
        let owner = keys::decode::<PartitionOwner>(&entry.key, &entry.value).ok();
        owner_by_key.insert(entry.key.as_str(), (owner, entry.mod_revision));
    }
    let mut states = Vec::new();
    let mut topic_revisions: HashMap<String, i64> = HashMap::new();
    // Keys are deleted with their topic; a later topic of the same name
    // starts its epochs above its own create revision.
    for entry in topics {
        let Ok(topic) = keys::decode::<Topic>(&entry.key, &entry.value) else {
            continue;
        };
        let partitions = topic.config.as_ref().map_or(0, |config| config.partitions);
        topic_revisions.insert(topic.name.clone(), entry.mod_revision);
        for partition in 0..partitions {
            let key = keys::partition(&topic.name, partition);
            let (owner, mod_revision) = match owner_by_key.get(key.as_str()) {
                // Written before this topic was created: left over from an
                // earlier topic of the same name, so not an owner of this
                // one (overwritten with a fresh epoch, CAS on its revision).
                Some((_, revision)) if *revision < entry.create_revision => (None, Some(*revision)),
                Some((owner, revision)) => (owner.clone(), Some(*revision)),
                None => (None, None),
            };
            states.push(PartitionState {
                topic: topic.name.clone(),
                partition,
                owner,
                mod_revision,
                epoch_floor: u64::try_from(entry.create_revision).unwrap_or(0),
            });
        }
    }
    (states, topic_revisions)
}

fn log_change(change: &Change) {
    tracing::info!(
        topic = %change.topic,
        partition = change.partition,
        broker = %change.new_owner.broker_id,
        epoch = change.new_owner.epoch,
        reason = ?change.reason,
        "partition assigned"
    );
}
