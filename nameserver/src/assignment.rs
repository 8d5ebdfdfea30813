//! Partition assignment: the pure decision function [`plan`] and the
//! reconcile round that applies its decisions with compare-and-set writes.
//!
//! Only the elected assigner runs the reconciler (see `election.rs`). Each
//! write is a CAS on the partition key's mod revision and on the topic key
//! (so a deleted topic is never resurrected), and carries the election
//! fence, so a deposed assigner's writes are refused by the metadata store
//! even if it still believes it leads. A lost race is re-planned next round.

use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner};
use crate::metadata::{Compare, MetadataStore, Put, Transaction};
use sluice_proto::v1::{NodeInfo, NodeKind, Topic};
use std::collections::{BTreeMap, HashMap, HashSet};

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

/// Decides ownership changes. Orphans go to the live broker with fewest
/// partitions; then up to `max_moves` partitions move from the most loaded
/// broker to the least loaded while they differ by more than one. Every
/// change bumps the epoch. Deterministic for a given input.
pub fn plan(
    partitions: &[PartitionState],
    brokers: &[LiveBroker],
    max_moves: usize,
) -> Vec<Change> {
    if brokers.is_empty() {
        return Vec::new();
    }
    let mut sorted_brokers: Vec<&LiveBroker> = brokers.iter().collect();
    sorted_brokers.sort_by(|a, b| a.broker_id.cmp(&b.broker_id));
    let live: HashSet<(&str, u64)> = sorted_brokers
        .iter()
        .map(|broker| (broker.broker_id.as_str(), broker.session_id))
        .collect();

    let mut ordered: Vec<&PartitionState> = partitions.iter().collect();
    ordered.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));

    // Current (planned) holder of each partition, by index into ordered.
    let mut holder: Vec<Option<usize>> = vec![None; ordered.len()];
    let mut counts: Vec<usize> = vec![0; sorted_brokers.len()];
    let broker_index: HashMap<(&str, u64), usize> = sorted_brokers
        .iter()
        .enumerate()
        .map(|(index, broker)| ((broker.broker_id.as_str(), broker.session_id), index))
        .collect();
    let mut changed: BTreeMap<usize, ChangeReason> = BTreeMap::new();

    for (index, state) in ordered.iter().enumerate() {
        let owner_key = state
            .owner
            .as_ref()
            .map(|owner| (owner.broker_id.as_str(), owner.broker_session));
        match owner_key.filter(|key| live.contains(key)) {
            Some(key) => {
                let broker = broker_index[&key];
                holder[index] = Some(broker);
                counts[broker] += 1;
            }
            None => {
                changed.insert(index, ChangeReason::Orphaned);
            }
        }
    }
    let orphans: Vec<usize> = changed.keys().copied().collect();
    let loads: Vec<u64> = sorted_brokers
        .iter()
        .map(|broker| broker.bytes_in_per_sec)
        .collect();
    for index in orphans {
        let target = least_loaded(&counts, &loads);
        holder[index] = Some(target);
        counts[target] += 1;
    }

    let mut moves = 0;
    while moves < max_moves {
        let target = least_loaded(&counts, &loads);
        let donor = most_loaded(&counts);
        if counts[donor] <= counts[target] + 1 {
            break;
        }
        // Move the donor's last partition; prefer ones not already changed
        // this round so one write per partition suffices either way.
        let candidate = (0..ordered.len())
            .rev()
            .filter(|index| holder[*index] == Some(donor))
            .min_by_key(|index| changed.contains_key(index));
        let Some(index) = candidate else { break };
        holder[index] = Some(target);
        counts[donor] -= 1;
        counts[target] += 1;
        changed.entry(index).or_insert(ChangeReason::Balance);
        moves += 1;
    }

    changed
        .into_iter()
        .filter_map(|(index, reason)| {
            let state = ordered[index];
            let broker = sorted_brokers[holder[index]?];
            let old_epoch = state
                .owner
                .as_ref()
                .map_or(0, |owner| owner.epoch)
                .max(state.epoch_floor);
            Some(Change {
                topic: state.topic.clone(),
                partition: state.partition,
                expected_mod_revision: state.mod_revision,
                new_owner: PartitionOwner {
                    broker_id: broker.broker_id.clone(),
                    broker_session: broker.session_id,
                    epoch: old_epoch + 1,
                },
                reason,
            })
        })
        .collect()
}

fn least_loaded(counts: &[usize], loads: &[u64]) -> usize {
    // Fewest partitions, then least produce traffic, then lowest broker id.
    let mut best = 0;
    for index in 0..counts.len() {
        if (counts[index], loads[index]) < (counts[best], loads[best]) {
            best = index;
        }
    }
    best
}

fn most_loaded(counts: &[usize]) -> usize {
    let mut best = 0;
    for (index, count) in counts.iter().enumerate() {
        if *count > counts[best] {
            best = index;
        }
    }
    best
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

/// One reconcile round: read, [`plan`], CAS-write. Every transaction also
/// carries `fence` (the assigner's election token as a compare), so nothing
/// is written once this nameserver no longer leads. Returns how many
/// changes were applied (lost races are retried next round).
pub async fn reconcile_once(
    store: &dyn MetadataStore,
    max_moves: usize,
    fence: &Compare,
) -> Result<usize, NameServerError> {
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

    let mut owner_by_key: HashMap<&str, (Option<PartitionOwner>, i64)> = HashMap::new();
    for entry in &owners {
        // A garbage owner record is treated as orphaned so it gets
        // overwritten with a good one (CAS on its revision).
        let owner = keys::decode::<PartitionOwner>(&entry.key, &entry.value).ok();
        owner_by_key.insert(entry.key.as_str(), (owner, entry.mod_revision));
    }

    let mut states = Vec::new();
    let mut topic_revisions: HashMap<String, i64> = HashMap::new();
    // Keys are deleted with their topic; a later topic of the same name
    // starts its epochs above its own create revision.
    for entry in &topics {
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

    let changes = plan(&states, &brokers, max_moves);
    let mut applied = 0;
    // Each change is its own transaction so one lost race does not block
    // the others.
    for change in changes {
        let key = keys::partition(&change.topic, change.partition);
        let Some(topic_revision) = topic_revisions.get(&change.topic) else {
            continue;
        };
        let owner_compare = match change.expected_mod_revision {
            Some(revision) => Compare::ModRevisionEquals(key.clone(), revision),
            None => Compare::Absent(key.clone()),
        };
        let transaction = Transaction {
            compares: vec![
                owner_compare,
                Compare::ModRevisionEquals(keys::topic(&change.topic), *topic_revision),
                fence.clone(),
            ],
            puts: vec![Put::new(key.clone(), keys::encode(&change.new_owner))],
            deletes: Vec::new(),
        };
        if store.commit(transaction).await? {
            tracing::info!(
                topic = %change.topic,
                partition = change.partition,
                broker = %change.new_owner.broker_id,
                epoch = change.new_owner.epoch,
                reason = ?change.reason,
                "partition assigned"
            );
            applied += 1;
        } else {
            tracing::debug!(
                key,
                "partition assignment refused (lost a race, or no longer the assigner); re-planning next round"
            );
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_in_partition_count_go_to_the_less_loaded_broker() {
        let brokers = vec![
            LiveBroker {
                bytes_in_per_sec: 50_000_000,
                ..broker("a", 1)
            },
            LiveBroker {
                bytes_in_per_sec: 1_000,
                ..broker("b", 2)
            },
        ];
        let orphan = PartitionState {
            topic: "t".into(),
            partition: 0,
            owner: None,
            mod_revision: None,
            epoch_floor: 0,
        };
        let changes = plan(&[orphan], &brokers, 0);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].new_owner.broker_id, "b");
    }

    fn broker(id: &str, session: u64) -> LiveBroker {
        LiveBroker {
            broker_id: id.to_string(),
            session_id: session,
            bytes_in_per_sec: 0,
        }
    }

    fn owned(topic: &str, partition: u32, owner: Option<(&str, u64, u64)>) -> PartitionState {
        PartitionState {
            topic: topic.to_string(),
            partition,
            owner: owner.map(|(id, session, epoch)| PartitionOwner {
                broker_id: id.to_string(),
                broker_session: session,
                epoch,
            }),
            mod_revision: owner.map(|_| 10 + i64::from(partition)),
            epoch_floor: 0,
        }
    }

    /// Applies changes to the states, like a successful CAS round would.
    fn apply(states: &mut [PartitionState], changes: &[Change]) {
        for change in changes {
            let state = states
                .iter_mut()
                .find(|state| state.topic == change.topic && state.partition == change.partition)
                .expect("changes only name partitions from the input");
            assert_eq!(state.mod_revision, change.expected_mod_revision);
            state.owner = Some(change.new_owner.clone());
            state.mod_revision = Some(state.mod_revision.unwrap_or(0) + 100);
        }
    }

    fn count(states: &[PartitionState], id: &str) -> usize {
        states
            .iter()
            .filter(|state| {
                state
                    .owner
                    .as_ref()
                    .is_some_and(|owner| owner.broker_id == id)
            })
            .count()
    }

    #[test]
    fn no_brokers_means_no_changes() {
        let states = vec![owned("t", 0, None)];
        assert!(plan(&states, &[], 10).is_empty());
    }

    #[test]
    fn new_partitions_are_spread_over_brokers_with_epoch_one() {
        let states: Vec<_> = (0..4).map(|p| owned("t", p, None)).collect();
        let changes = plan(&states, &[broker("a", 1), broker("b", 2)], 0);
        assert_eq!(changes.len(), 4);
        assert!(changes.iter().all(|change| change.new_owner.epoch == 1));
        assert!(changes
            .iter()
            .all(|change| change.reason == ChangeReason::Orphaned));
        assert!(changes
            .iter()
            .all(|change| change.expected_mod_revision.is_none()));
        let on_a = changes
            .iter()
            .filter(|c| c.new_owner.broker_id == "a")
            .count();
        assert_eq!(on_a, 2);
    }

    #[test]
    fn orphans_of_a_dead_broker_go_to_live_ones_with_higher_epoch() {
        let states = vec![
            owned("t", 0, Some(("a", 1, 3))),
            owned("t", 1, Some(("dead", 9, 5))),
            owned("t", 2, Some(("dead", 9, 7))),
        ];
        let changes = plan(&states, &[broker("a", 1), broker("b", 2)], 0);
        assert_eq!(changes.len(), 2);
        for change in &changes {
            assert_ne!(change.new_owner.broker_id, "dead");
            assert_eq!(change.reason, ChangeReason::Orphaned);
        }
        assert_eq!(changes[0].new_owner.epoch, 6);
        assert_eq!(changes[1].new_owner.epoch, 8);
        // b had none, so it gets the first orphan; then a and b are tied at
        // one each and a wins the tie.
        assert_eq!(changes[0].new_owner.broker_id, "b");
        assert_eq!(changes[0].expected_mod_revision, Some(11));
    }

    #[test]
    fn epochs_start_above_the_floor() {
        let mut fresh = owned("t", 0, None);
        fresh.epoch_floor = 40;
        let mut reset = owned("t", 1, Some(("", 0, 0)));
        reset.epoch_floor = 40;
        let mut already_above = owned("t", 2, Some(("dead", 1, 90)));
        already_above.epoch_floor = 40;
        let changes = plan(&[fresh, reset, already_above], &[broker("a", 1)], 0);
        let epochs: Vec<u64> = changes
            .iter()
            .map(|change| change.new_owner.epoch)
            .collect();
        assert_eq!(epochs, [41, 41, 91]);
    }

    #[test]
    fn restarted_broker_with_new_session_gets_epoch_bumped() {
        let states = vec![owned("t", 0, Some(("a", 1, 4)))];
        let changes = plan(&states, &[broker("a", 2)], 5);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].new_owner.broker_id, "a");
        assert_eq!(changes[0].new_owner.broker_session, 2);
        assert_eq!(changes[0].new_owner.epoch, 5);
    }

    #[test]
    fn balancing_respects_the_move_bound_and_converges() {
        let mut states: Vec<_> = (0..8).map(|p| owned("t", p, Some(("a", 1, 1)))).collect();
        let brokers = [broker("a", 1), broker("b", 2)];
        let changes = plan(&states, &brokers, 1);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].reason, ChangeReason::Balance);
        assert_eq!(changes[0].new_owner.broker_id, "b");
        assert_eq!(changes[0].new_owner.epoch, 2);
        apply(&mut states, &changes);
        let mut rounds = 1;
        loop {
            let changes = plan(&states, &brokers, 1);
            if changes.is_empty() {
                break;
            }
            assert_eq!(changes.len(), 1, "bound of one move per round");
            apply(&mut states, &changes);
            rounds += 1;
            assert!(rounds < 20, "balancing did not converge");
        }
        assert_eq!(count(&states, "a"), 4);
        assert_eq!(count(&states, "b"), 4);
        assert_eq!(rounds, 4);
    }

    #[test]
    fn new_broker_gets_partitions() {
        let states: Vec<_> = (0..6)
            .map(|p| {
                owned(
                    "t",
                    p,
                    Some(if p % 2 == 0 { ("a", 1, 1) } else { ("b", 2, 1) }),
                )
            })
            .collect();
        let changes = plan(
            &states,
            &[broker("a", 1), broker("b", 2), broker("c", 3)],
            10,
        );
        assert_eq!(changes.len(), 2);
        assert!(changes
            .iter()
            .all(|change| change.new_owner.broker_id == "c"));
        assert!(changes.iter().all(|change| change.new_owner.epoch == 2));
    }

    #[test]
    fn balanced_cluster_is_left_alone() {
        let states: Vec<_> = (0..5)
            .map(|p| owned("t", p, Some(if p < 3 { ("a", 1, 1) } else { ("b", 2, 1) })))
            .collect();
        assert!(plan(&states, &[broker("a", 1), broker("b", 2)], 10).is_empty());
    }

    #[test]
    fn a_partition_is_changed_at_most_once_per_round() {
        let mut states: Vec<_> = (0..6).map(|p| owned("t", p, Some(("a", 1, 1)))).collect();
        states.push(owned("t", 6, None));
        let changes = plan(&states, &[broker("a", 1), broker("b", 2)], 100);
        let mut seen = HashSet::new();
        for change in &changes {
            assert!(seen.insert((change.topic.clone(), change.partition)));
        }
        apply(&mut states, &changes);
        assert!(count(&states, "a").abs_diff(count(&states, "b")) <= 1);
    }
}
