//! Randomized properties of [`plan`] (the workspace has no proptest; the
//! cases come from fixed seeds, so a failure names its seed and
//! reproduces): 1 to 6 brokers, 1 to 5 user topics of 1 to 32 partitions,
//! `__consumer_offsets` with 8 (and sometimes a second internal topic),
//! owners new, scattered, dead, stale or all on one broker. Rounds are
//! applied like successful CAS writes until the plan is empty.

use super::{plan, Change, ChangeReason, LiveBroker, PartitionState};
use crate::keys::PartitionOwner;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashSet};

const CASES: u64 = 300;

struct Case {
    brokers: Vec<LiveBroker>,
    states: Vec<PartitionState>,
    max_moves: usize,
}

fn random_case(seed: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let brokers: Vec<LiveBroker> = (0..rng.random_range(1..=6u64))
        .map(|index| LiveBroker {
            broker_id: format!("b{index}"),
            session_id: 100 + index,
            bytes_in_per_sec: rng.random_range(0..4),
        })
        .collect();
    let mut topics: Vec<(String, u32)> = (0..rng.random_range(1..=5))
        .map(|index| (format!("t{index}"), rng.random_range(1..=32)))
        .collect();
    topics.push(("__consumer_offsets".to_string(), 8));
    if rng.random_bool(0.3) {
        topics.push(("__other".to_string(), rng.random_range(1..=4)));
    }
    let shape = rng.random_range(0..3);
    let mut states = Vec::new();
    for (topic, partitions) in topics {
        let epoch_floor = rng.random_range(0..50);
        for partition in 0..partitions {
            let owner = match shape {
                0 => None,
                1 => random_owner(&mut rng, &brokers),
                _ => Some(owner_of(&brokers[0], rng.random_range(0..60))),
            };
            states.push(PartitionState {
                topic: topic.clone(),
                partition,
                mod_revision: (owner.is_some() || rng.random_bool(0.1))
                    .then(|| rng.random_range(1..1_000)),
                owner,
                epoch_floor,
            });
        }
    }
    Case {
        brokers,
        states,
        max_moves: rng.random_range(1..=6),
    }
}

/// A live broker's, a dead broker's, a stale session's, or none.
fn random_owner(rng: &mut StdRng, brokers: &[LiveBroker]) -> Option<PartitionOwner> {
    let epoch = rng.random_range(0..60);
    let broker = &brokers[rng.random_range(0..brokers.len())];
    match rng.random_range(0..6) {
        0 => None,
        1 => Some(PartitionOwner {
            broker_id: "gone".to_string(),
            broker_session: 7,
            epoch,
        }),
        2 => Some(PartitionOwner {
            broker_session: broker.session_id + 1_000,
            ..owner_of(broker, epoch)
        }),
        _ => Some(owner_of(broker, epoch)),
    }
}

fn owner_of(broker: &LiveBroker, epoch: u64) -> PartitionOwner {
    PartitionOwner {
        broker_id: broker.broker_id.clone(),
        broker_session: broker.session_id,
        epoch,
    }
}

fn is_live(owner: Option<&PartitionOwner>, brokers: &[LiveBroker]) -> bool {
    owner.is_some_and(|owner| {
        brokers
            .iter()
            .any(|b| b.broker_id == owner.broker_id && b.session_id == owner.broker_session)
    })
}

/// Every rule of one round's changes against the states it was planned on.
fn check_round(
    seed: u64,
    states: &[PartitionState],
    brokers: &[LiveBroker],
    max_moves: usize,
    changes: &[Change],
) {
    let mut seen = HashSet::new();
    let mut moved_topics = HashSet::new();
    let mut balance_moves = 0;
    for change in changes {
        assert!(
            seen.insert((&change.topic, change.partition)),
            "seed {seed}: changed twice"
        );
        let state = states
            .iter()
            .find(|s| s.topic == change.topic && s.partition == change.partition)
            .expect("a change names a partition of the input");
        let live = is_live(state.owner.as_ref(), brokers);
        assert_eq!(
            change.reason == ChangeReason::Balance,
            live,
            "seed {seed}: {change:?}"
        );
        if change.reason == ChangeReason::Balance {
            balance_moves += 1;
            assert!(
                moved_topics.insert(&change.topic),
                "seed {seed}: two moves of {}",
                change.topic
            );
            let from = state.owner.as_ref().map(|owner| &owner.broker_id);
            assert_ne!(
                from,
                Some(&change.new_owner.broker_id),
                "seed {seed}: moved in place"
            );
        }
        assert!(
            is_live(Some(&change.new_owner), brokers),
            "seed {seed}: to a dead broker"
        );
        assert_eq!(
            change.expected_mod_revision, state.mod_revision,
            "seed {seed}"
        );
        let old = state.owner.as_ref().map_or(0, |owner| owner.epoch);
        assert_eq!(
            change.new_owner.epoch,
            old.max(state.epoch_floor) + 1,
            "seed {seed}"
        );
    }
    assert!(
        balance_moves <= max_moves,
        "seed {seed}: {balance_moves} moves > {max_moves}"
    );
    let orphans = states
        .iter()
        .filter(|s| !is_live(s.owner.as_ref(), brokers))
        .count();
    let orphan_changes = changes.len() - balance_moves;
    assert_eq!(
        orphan_changes, orphans,
        "seed {seed}: every orphan is reassigned"
    );
}

fn apply(states: &mut [PartitionState], changes: &[Change]) {
    for change in changes {
        if let Some(state) = states
            .iter_mut()
            .find(|s| s.topic == change.topic && s.partition == change.partition)
        {
            state.owner = Some(change.new_owner.clone());
            state.mod_revision = Some(state.mod_revision.unwrap_or(0) + 1_000);
        }
    }
}

/// Counts per broker (in `brokers` order) of the partitions `select` picks.
fn counts(
    states: &[PartitionState],
    brokers: &[LiveBroker],
    select: impl Fn(&PartitionState) -> bool,
) -> Vec<usize> {
    brokers
        .iter()
        .map(|broker| {
            states
                .iter()
                .filter(|s| select(s))
                .filter(|s| {
                    s.owner
                        .as_ref()
                        .is_some_and(|o| o.broker_id == broker.broker_id)
                })
                .count()
        })
        .collect()
}

fn spread(counts: &[usize]) -> usize {
    counts.iter().max().copied().unwrap_or(0) - counts.iter().min().copied().unwrap_or(0)
}

fn topics(states: &[PartitionState]) -> BTreeSet<String> {
    states.iter().map(|s| s.topic.clone()).collect()
}

/// Brokers holding at least one partition of each topic.
fn holders(states: &[PartitionState]) -> BTreeMap<String, BTreeSet<String>> {
    let mut holders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for state in states {
        if let Some(owner) = &state.owner {
            holders
                .entry(state.topic.clone())
                .or_default()
                .insert(owner.broker_id.clone());
        }
    }
    holders
}

/// Plans and applies rounds until the plan is empty, checking each round;
/// returns how many rounds changed something.
fn settle(
    seed: u64,
    states: &mut [PartitionState],
    brokers: &[LiveBroker],
    max_moves: usize,
) -> usize {
    let bound = states.len() + 1;
    for round in 0..=bound {
        let changes = plan(states, brokers, max_moves);
        if changes.is_empty() {
            return round;
        }
        check_round(seed, states, brokers, max_moves, &changes);
        let orphaned = changes.iter().any(|c| c.reason == ChangeReason::Orphaned);
        let before = holders(states);
        apply(states, &changes);
        if !orphaned {
            // Balance moves never shrink the set of brokers a topic is on.
            let after = holders(states);
            for (topic, on) in &before {
                let now = after.get(topic).map_or(0, BTreeSet::len);
                assert!(
                    now >= on.len(),
                    "seed {seed}: {topic} went from {} to {now} brokers",
                    on.len()
                );
            }
        }
    }
    panic!(
        "seed {seed}: no fixpoint within {bound} rounds ({} partitions)",
        states.len()
    );
}

/// The settled layout: per topic, per group and overall counts differ by at
/// most one between live brokers.
fn check_balanced(seed: u64, states: &[PartitionState], brokers: &[LiveBroker]) {
    for topic in topics(states) {
        let per_topic = counts(states, brokers, |s| s.topic == topic);
        assert!(
            spread(&per_topic) <= 1,
            "seed {seed}: {topic} spread {per_topic:?}"
        );
    }
    for internal in [false, true] {
        let per_group = counts(states, brokers, |s| s.topic.starts_with("__") == internal);
        assert!(
            spread(&per_group) <= 1,
            "seed {seed}: group {internal} {per_group:?}"
        );
    }
    let total = counts(states, brokers, |_| true);
    assert!(spread(&total) <= 1, "seed {seed}: overall {total:?}");
}

#[test]
fn repeated_rounds_converge_to_a_layout_spread_per_topic_per_group_and_overall() {
    let mut most_rounds = 0;
    for seed in 0..CASES {
        let mut case = random_case(seed);
        let rounds = settle(seed, &mut case.states, &case.brokers, case.max_moves);
        check_balanced(seed, &case.states, &case.brokers);
        most_rounds = most_rounds.max(rounds);
    }
    eprintln!("most rounds to a fixpoint over {CASES} cases: {most_rounds}");
}

#[test]
fn a_restarted_broker_is_covered_while_away_and_takes_back_one_partition_per_topic_per_round() {
    for seed in 0..CASES {
        let mut case = random_case(seed);
        if case.brokers.len() < 2 {
            continue;
        }
        settle(seed, &mut case.states, &case.brokers, case.max_moves);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let away = rng.random_range(0..case.brokers.len());
        let mut survivors = case.brokers.clone();
        let mut returned = survivors.remove(away);
        settle(seed, &mut case.states, &survivors, case.max_moves);
        check_balanced(seed, &case.states, &survivors);
        returned.session_id += 10_000;
        let mut all = survivors.clone();
        all.insert(away, returned.clone());
        // Nothing is orphaned now: only balance moves, each round checked
        // (at most one per topic, the set of brokers of a topic never
        // shrinks).
        settle(seed, &mut case.states, &all, case.max_moves);
        check_balanced(seed, &case.states, &all);
    }
}

#[test]
fn without_moves_only_orphans_change() {
    for seed in 0..CASES {
        let case = random_case(seed);
        let changes = plan(&case.states, &case.brokers, 0);
        check_round(seed, &case.states, &case.brokers, 0, &changes);
        assert!(changes.iter().all(|c| c.reason == ChangeReason::Orphaned));
    }
}

#[test]
fn the_plan_is_deterministic_whatever_the_input_order() {
    for seed in 0..CASES {
        let case = random_case(seed);
        let mut shuffled_states = case.states.clone();
        shuffled_states.reverse();
        let mut shuffled_brokers = case.brokers.clone();
        shuffled_brokers.reverse();
        assert_eq!(
            plan(&case.states, &case.brokers, case.max_moves),
            plan(&shuffled_states, &shuffled_brokers, case.max_moves),
            "seed {seed}"
        );
    }
}
