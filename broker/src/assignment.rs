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

/// A member whose backlog is this much above the average (in percent) is
/// relieved by [`balance_backlog`]; below it targets stay as they are, so
/// small changes of lag never move partitions.
pub const BACKLOG_IMBALANCE_PERCENT: u64 = 50;
/// Most swaps [`balance_backlog`] makes per computation: each one moves two
/// partitions, and a partition moves only after its owner released it.
pub const MAX_BACKLOG_SWAPS: usize = 4;

/// Weighs balanced targets by backlog (ADR 0012): while the member with
/// the most backlog (sum of `backlog` over its partitions; unknown ones
/// weigh 0) has more than `BACKLOG_IMBALANCE_PERCENT` above the average,
/// swaps its heaviest partition with the lightest one of the member with
/// the least backlog that may take it, if that lowers the larger of the
/// two sums. Swaps keep every member's partition count, so the count
/// balance of [`compute_targets`] holds; at most `MAX_BACKLOG_SWAPS`.
pub fn balance_backlog(
    targets: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
    members: &BTreeMap<String, MemberInput>,
    backlog: &BTreeMap<TopicPartition, u64>,
) -> usize {
    if targets.len() < 2 || backlog.is_empty() {
        return 0;
    }
    let weight = |partition: &TopicPartition| backlog.get(partition).copied().unwrap_or(0);
    let load = |target: &BTreeSet<TopicPartition>| -> u64 {
        target.iter().map(weight).fold(0u64, u64::saturating_add)
    };
    let subscribed = |member: &str, partition: &TopicPartition| {
        members
            .get(member)
            .is_some_and(|input| input.topics.contains(&partition.0))
    };
    let mut swaps = 0;
    while swaps < MAX_BACKLOG_SWAPS {
        let loads: BTreeMap<&String, u64> = targets
            .iter()
            .map(|(member, target)| (member, load(target)))
            .collect();
        let total: u64 = loads
            .values()
            .fold(0u64, |sum, load| sum.saturating_add(*load));
        let average = total / targets.len() as u64;
        let Some((heavy, heavy_load)) = loads
            .iter()
            .max_by(|left, right| left.1.cmp(right.1).then(right.0.cmp(left.0)))
            .map(|(member, load)| ((*member).clone(), *load))
        else {
            break;
        };
        let threshold =
            average.saturating_add(average.saturating_mul(BACKLOG_IMBALANCE_PERCENT) / 100);
        if heavy_load <= threshold || heavy_load == 0 {
            break;
        }
        // The best swap: the heavy member's partition and another member's
        // lighter one that lowers the pair's larger sum the most.
        let mut best: Option<(u64, String, TopicPartition, TopicPartition)> = None;
        for (light, light_load) in loads.iter().filter(|(member, _)| ***member != heavy) {
            let light = (*light).clone();
            for given in &targets[&heavy] {
                if !subscribed(&light, given) {
                    continue;
                }
                for taken in &targets[&light] {
                    if !subscribed(&heavy, taken) || weight(taken) >= weight(given) {
                        continue;
                    }
                    let moved = weight(given) - weight(taken);
                    let new_max = (heavy_load - moved).max(light_load.saturating_add(moved));
                    if new_max < heavy_load && best.as_ref().is_none_or(|(max, ..)| new_max < *max)
                    {
                        best = Some((new_max, light.clone(), given.clone(), taken.clone()));
                    }
                }
            }
        }
        let Some((_, light, given, taken)) = best else {
            break;
        };
        if let Some(target) = targets.get_mut(&heavy) {
            target.remove(&given);
            target.insert(taken.clone());
        }
        if let Some(target) = targets.get_mut(&light) {
            target.remove(&taken);
            target.insert(given);
        }
        swaps += 1;
    }
    swaps
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

    fn members_of(names: &[&str], topic: &str) -> BTreeMap<String, MemberInput> {
        names
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    MemberInput {
                        topics: topics(&[topic]),
                        sticky: BTreeSet::new(),
                    },
                )
            })
            .collect()
    }

    fn load_of(target: &BTreeSet<TopicPartition>, backlog: &BTreeMap<TopicPartition, u64>) -> u64 {
        target
            .iter()
            .map(|partition| backlog.get(partition).copied().unwrap_or(0))
            .sum()
    }

    #[test]
    fn backlog_is_spread_by_swapping_and_counts_stay_balanced() {
        let members = members_of(&["a", "b"], "t");
        let mut targets = BTreeMap::new();
        // a holds both heavy partitions.
        targets.insert("a".to_string(), partitions("t", &[0, 1]));
        targets.insert("b".to_string(), partitions("t", &[2, 3]));
        let backlog: BTreeMap<TopicPartition, u64> = [(0, 1000), (1, 900), (2, 10), (3, 0)]
            .into_iter()
            .map(|(index, lag)| (("t".to_string(), index), lag))
            .collect();
        let swaps = balance_backlog(&mut targets, &members, &backlog);
        assert_eq!(swaps, 1);
        assert_partitioned(&targets, 4);
        let (a, b) = (
            load_of(&targets["a"], &backlog),
            load_of(&targets["b"], &backlog),
        );
        assert!(a.max(b) <= 1010, "loads {a} and {b}");
    }

    #[test]
    fn small_imbalance_and_unknown_backlog_move_nothing() {
        let members = members_of(&["a", "b"], "t");
        let mut targets = BTreeMap::new();
        targets.insert("a".to_string(), partitions("t", &[0, 1]));
        targets.insert("b".to_string(), partitions("t", &[2, 3]));
        let before = targets.clone();
        // 120 against 100: within 50 % of the average (110).
        let backlog: BTreeMap<TopicPartition, u64> = [(0, 60), (1, 60), (2, 50), (3, 50)]
            .into_iter()
            .map(|(index, lag)| (("t".to_string(), index), lag))
            .collect();
        assert_eq!(balance_backlog(&mut targets, &members, &backlog), 0);
        assert_eq!(targets, before);
        assert_eq!(balance_backlog(&mut targets, &members, &BTreeMap::new()), 0);
        assert_eq!(targets, before);
    }

    #[test]
    fn swaps_respect_subscriptions_and_their_bound() {
        let mut members = members_of(&["a"], "t");
        members.insert(
            "b".to_string(),
            MemberInput {
                topics: topics(&["u"]),
                sticky: BTreeSet::new(),
            },
        );
        let mut targets = BTreeMap::new();
        targets.insert("a".to_string(), partitions("t", &[0, 1]));
        targets.insert("b".to_string(), partitions("u", &[0]));
        let backlog: BTreeMap<TopicPartition, u64> =
            [(("t".to_string(), 0), 1000), (("t".to_string(), 1), 1000)]
                .into_iter()
                .collect();
        // b is not subscribed to t: nothing can move.
        assert_eq!(balance_backlog(&mut targets, &members, &backlog), 0);
        // Many members, one heavy each way: never more than the bound.
        let names: Vec<String> = (0..10).map(|index| format!("m{index}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let members = members_of(&name_refs, "t");
        let mut targets: BTreeMap<String, BTreeSet<TopicPartition>> = BTreeMap::new();
        let mut backlog = BTreeMap::new();
        for (index, name) in names.iter().enumerate() {
            let index = index as u32;
            targets.insert(name.clone(), partitions("t", &[index * 2, index * 2 + 1]));
            let heavy = if index < 5 { 1000 } else { 0 };
            backlog.insert(("t".to_string(), index * 2), heavy);
            backlog.insert(("t".to_string(), index * 2 + 1), heavy);
        }
        let swaps = balance_backlog(&mut targets, &members, &backlog);
        assert!(swaps <= MAX_BACKLOG_SWAPS, "{swaps} swaps");
        assert_partitioned(&targets, 20);
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
