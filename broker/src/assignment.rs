//! Consumer-group assignment as pure functions: a sticky, balanced target
//! per member, and what a member may be granted now without any partition
//! being owned by two members at once (revoke before assign).

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type TopicPartition = (String, u32);

/// What the assignor needs to know about a member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberInput {
    pub topics: BTreeSet<String>,
    /// Its previous target and what it reports owning: kept when possible.
    pub sticky: BTreeSet<TopicPartition>,
}

/// Target assignment of every member: each member keeps the partitions it
/// had that are still subscribed and within its quota; the rest are given
/// to the eligible member with fewest, so with identical subscriptions the
/// counts differ by at most one.
pub fn compute_targets(
    members: &BTreeMap<String, MemberInput>,
    partition_counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut targets: BTreeMap<String, BTreeSet<TopicPartition>> = members
        .keys()
        .map(|member| (member.clone(), BTreeSet::new()))
        .collect();
    if members.is_empty() {
        return targets;
    }
    let mut all: BTreeSet<TopicPartition> = BTreeSet::new();
    for input in members.values() {
        for topic in &input.topics {
            if let Some(&count) = partition_counts.get(topic) {
                all.extend((0..count).map(|partition| (topic.clone(), partition)));
            }
        }
    }
    let eligible = |member: &str, partition: &TopicPartition| {
        members
            .get(member)
            .is_some_and(|input| input.topics.contains(&partition.0))
    };
    // Quota: total / members, the first `total % members` (by how much they
    // keep, so stickiness wins) get one more.
    let member_count = members.len();
    let base_quota = all.len() / member_count;
    let extra = all.len() % member_count;
    let mut kept: BTreeSet<TopicPartition> = BTreeSet::new();
    let mut by_kept: Vec<(&String, Vec<TopicPartition>)> = members
        .iter()
        .map(|(member, input)| {
            let keep: Vec<TopicPartition> = input
                .sticky
                .iter()
                .filter(|partition| all.contains(*partition) && eligible(member, partition))
                .cloned()
                .collect();
            (member, keep)
        })
        .collect();
    by_kept.sort_by(|left, right| right.1.len().cmp(&left.1.len()).then(left.0.cmp(right.0)));
    for (rank, (member, keep)) in by_kept.iter().enumerate() {
        let quota = base_quota + usize::from(rank < extra);
        let target = targets
            .get_mut(*member)
            .expect("targets has an entry for every member");
        for partition in keep {
            if target.len() >= quota {
                break;
            }
            if kept.insert(partition.clone()) {
                target.insert(partition.clone());
            }
        }
    }
    for partition in all.iter().filter(|partition| !kept.contains(*partition)) {
        let receiver = targets
            .iter()
            .filter(|(member, _)| eligible(member, partition))
            .min_by(|left, right| left.1.len().cmp(&right.1.len()).then(left.0.cmp(right.0)))
            .map(|(member, _)| member.clone());
        if let Some(member) = receiver {
            if let Some(target) = targets.get_mut(&member) {
                target.insert(partition.clone());
            }
        }
    }
    targets
}

/// The part of `target` a member may own now: partitions no other member
/// still owns or was last told it may own. Partitions of the target held
/// elsewhere are granted on a later heartbeat, after the holder released
/// them.
pub fn grantable(
    member: &str,
    target: &BTreeSet<TopicPartition>,
    held_by_members: &BTreeMap<String, BTreeSet<TopicPartition>>,
) -> BTreeSet<TopicPartition> {
    target
        .iter()
        .filter(|partition| {
            !held_by_members
                .iter()
                .any(|(other, held)| other != member && held.contains(*partition))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn partitions(topic: &str, indexes: &[u32]) -> BTreeSet<TopicPartition> {
        indexes
            .iter()
            .map(|&index| (topic.to_string(), index))
            .collect()
    }

    fn counts(items: &[(&str, u32)]) -> BTreeMap<String, u32> {
        items
            .iter()
            .map(|(topic, count)| (topic.to_string(), *count))
            .collect()
    }

    fn assert_partitioned(targets: &BTreeMap<String, BTreeSet<TopicPartition>>, total: usize) {
        let mut seen = BTreeSet::new();
        for target in targets.values() {
            for partition in target {
                assert!(
                    seen.insert(partition.clone()),
                    "{partition:?} assigned twice"
                );
            }
        }
        assert_eq!(seen.len(), total);
        let sizes: Vec<usize> = targets.values().map(BTreeSet::len).collect();
        let (min, max) = (
            sizes.iter().copied().min().unwrap_or(0),
            sizes.iter().copied().max().unwrap_or(0),
        );
        assert!(max - min <= 1, "unbalanced: {sizes:?}");
    }

    #[test]
    fn spreads_partitions_evenly() {
        let mut members = BTreeMap::new();
        for name in ["a", "b", "c"] {
            members.insert(
                name.to_string(),
                MemberInput {
                    topics: topics(&["t", "u"]),
                    sticky: BTreeSet::new(),
                },
            );
        }
        let targets = compute_targets(&members, &counts(&[("t", 4), ("u", 3)]));
        assert_partitioned(&targets, 7);
    }

    #[test]
    fn a_joining_member_takes_only_the_excess() {
        let mut members = BTreeMap::new();
        members.insert(
            "a".to_string(),
            MemberInput {
                topics: topics(&["t"]),
                sticky: partitions("t", &[0, 1, 2, 3]),
            },
        );
        members.insert(
            "b".to_string(),
            MemberInput {
                topics: topics(&["t"]),
                sticky: BTreeSet::new(),
            },
        );
        let targets = compute_targets(&members, &counts(&[("t", 4)]));
        assert_partitioned(&targets, 4);
        // a keeps two of its own; nothing it keeps moves.
        assert!(targets["a"].is_subset(&partitions("t", &[0, 1, 2, 3])));
        assert_eq!(targets["a"].len(), 2);
    }

    #[test]
    fn leaving_member_partitions_go_to_the_rest_and_others_stay() {
        let mut members = BTreeMap::new();
        members.insert(
            "a".to_string(),
            MemberInput {
                topics: topics(&["t"]),
                sticky: partitions("t", &[0, 1]),
            },
        );
        members.insert(
            "c".to_string(),
            MemberInput {
                topics: topics(&["t"]),
                sticky: partitions("t", &[4, 5]),
            },
        );
        // b (2, 3) left.
        let targets = compute_targets(&members, &counts(&[("t", 6)]));
        assert_partitioned(&targets, 6);
        assert!(targets["a"].is_superset(&partitions("t", &[0, 1])));
        assert!(targets["c"].is_superset(&partitions("t", &[4, 5])));
    }

    #[test]
    fn only_subscribed_topics_are_assigned() {
        let mut members = BTreeMap::new();
        members.insert(
            "a".to_string(),
            MemberInput {
                topics: topics(&["t"]),
                sticky: partitions("u", &[0]),
            },
        );
        members.insert(
            "b".to_string(),
            MemberInput {
                topics: topics(&["u"]),
                sticky: BTreeSet::new(),
            },
        );
        let targets = compute_targets(&members, &counts(&[("t", 2), ("u", 1)]));
        assert_eq!(targets["a"], partitions("t", &[0, 1]));
        assert_eq!(targets["b"], partitions("u", &[0]));
    }

    #[test]
    fn partition_is_granted_only_after_previous_owner_released_it() {
        let target_b = partitions("t", &[2, 3]);
        let mut held = BTreeMap::new();
        held.insert("a".to_string(), partitions("t", &[0, 1, 2, 3]));
        held.insert("b".to_string(), BTreeSet::new());
        assert!(grantable("b", &target_b, &held).is_empty());
        held.insert("a".to_string(), partitions("t", &[0, 1, 3]));
        assert_eq!(grantable("b", &target_b, &held), partitions("t", &[2]));
        held.insert("a".to_string(), partitions("t", &[0, 1]));
        assert_eq!(grantable("b", &target_b, &held), target_b);
        // A member's own holdings never block it.
        held.insert("b".to_string(), partitions("t", &[2]));
        assert_eq!(grantable("b", &target_b, &held), target_b);
    }
}
