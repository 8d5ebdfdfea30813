//! Every broker session's partition assignments, built from one read of
//! the topic and owner records (ADR 0014). The nameserver rebuilds it when
//! its metadata watch reports a change of topics or owners (and at least
//! every reconcile interval), so a heartbeat's answer costs a lookup of
//! what that broker owns instead of a read of every owner in the cluster.

use crate::keys::{self, PartitionOwner};
use crate::metadata::KeyValue;
use sluice_proto::v1::{PartitionAssignment, Topic};
use std::collections::HashMap;

/// Assignments per (broker id, session), each list in (topic, partition)
/// order, with the topic's config.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AssignmentIndex {
    by_session: HashMap<(String, u64), Vec<PartitionAssignment>>,
}

impl AssignmentIndex {
    /// Builds the index from the `topics/` and `partitions/` records.
    /// Undecodable records and owners of topics that do not exist are left
    /// out, as the heartbeat's own scan did.
    pub fn build(topic_records: &[KeyValue], owner_records: &[KeyValue]) -> Self {
        let topics: HashMap<String, Topic> = topic_records
            .iter()
            .filter_map(|entry| keys::decode::<Topic>(&entry.key, &entry.value).ok())
            .map(|topic| (topic.name.clone(), topic))
            .collect();
        let mut owned: Vec<((String, u32), PartitionOwner)> = owner_records
            .iter()
            .filter_map(|entry| {
                let key = keys::parse_partition(&entry.key)?;
                let owner = keys::decode::<PartitionOwner>(&entry.key, &entry.value).ok()?;
                (!owner.broker_id.is_empty()).then_some((key, owner))
            })
            .collect();
        owned.sort_by(|left, right| left.0.cmp(&right.0));
        let mut by_session: HashMap<(String, u64), Vec<PartitionAssignment>> = HashMap::new();
        for ((topic, partition), owner) in owned {
            let Some(record) = topics.get(&topic) else {
                continue;
            };
            by_session
                .entry((owner.broker_id, owner.broker_session))
                .or_default()
                .push(PartitionAssignment {
                    topic,
                    partition,
                    epoch: owner.epoch,
                    config: record.config,
                });
        }
        Self { by_session }
    }

    /// The partitions `broker_id` owns in `session`.
    pub fn of(&self, broker_id: &str, session: u64) -> Vec<PartitionAssignment> {
        self.by_session
            .get(&(broker_id.to_string(), session))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::TopicConfig;

    fn topic(name: &str, partitions: u32) -> KeyValue {
        let record = Topic {
            name: name.into(),
            config: Some(TopicConfig {
                partitions,
                ..TopicConfig::default()
            }),
            ..Topic::default()
        };
        KeyValue {
            key: keys::topic(name),
            value: keys::encode(&record),
            mod_revision: 1,
            create_revision: 1,
        }
    }

    fn owner(topic: &str, partition: u32, broker: &str, session: u64, epoch: u64) -> KeyValue {
        let record = PartitionOwner {
            broker_id: broker.into(),
            broker_session: session,
            epoch,
        };
        KeyValue {
            key: keys::partition(topic, partition),
            value: keys::encode(&record),
            mod_revision: 2,
            create_revision: 2,
        }
    }

    #[test]
    fn assignments_are_grouped_by_session_in_partition_order() {
        let index = AssignmentIndex::build(
            &[topic("a", 3), topic("b", 1)],
            &[
                owner("b", 0, "b1", 7, 4),
                owner("a", 2, "b1", 7, 1),
                owner("a", 0, "b1", 7, 2),
                owner("a", 1, "b2", 9, 1),
                // An older session of b1: not b1's current assignments.
                owner("a", 1, "b1", 6, 1),
                // A topic that does not exist (being deleted).
                owner("gone", 0, "b1", 7, 1),
                owner("a", 5, "", 0, 0),
            ],
        );
        let listed: Vec<(String, u32, u64)> = index
            .of("b1", 7)
            .into_iter()
            .map(|assignment| (assignment.topic, assignment.partition, assignment.epoch))
            .collect();
        assert_eq!(
            listed,
            vec![("a".into(), 0, 2), ("a".into(), 2, 1), ("b".into(), 0, 4)]
        );
        assert_eq!(index.of("b2", 9).len(), 1);
        assert_eq!(index.of("b1", 6).len(), 1);
        assert!(index.of("b1", 8).is_empty());
        assert_eq!(
            index.of("b1", 7)[0].config.map(|config| config.partitions),
            Some(3)
        );
    }
}
