//! Which partition goes to which live broker: the pure decision of one
//! reconcile round (no IO; the round in `assignment.rs` reads the owner
//! keys and live brokers, calls [`plan`] and writes its [`Change`]s).
//!
//! Rules:
//! - **Goal, in order of precedence.** (1) Each topic's partitions are
//!   spread over the live brokers: per topic, partition counts differ by at
//!   most one between brokers. (2) Internal topics (names starting with
//!   `__`, e.g. `__consumer_offsets`) and user topics are balanced as two
//!   separate groups: per group, counts differ by at most one. (3) Overall
//!   partition counts differ by at most one. All three hold together once
//!   the plan has nothing left to do (every imbalance has a single move that
//!   repairs it without breaking a higher goal).
//! - **Orphans** (no owner, or the owner's session is not live) are always
//!   reassigned, however many there are, each to the broker that is best
//!   for it: fewest partitions of its topic, then of its group, then
//!   overall, then lowest `bytes_in_per_sec`, then lowest broker id.
//! - **Balance moves** take a partition from a live owner to another broker
//!   only when that makes the layout strictly better by the goals above
//!   (compared as sums of squared counts: per topic first, then per group,
//!   then overall), best move first. A round makes at most `max_moves` of
//!   them and **at most one per topic**, so rebalancing (a broker that
//!   returns or joins) never takes more than one partition of a topic
//!   offline at a time, and a returning broker gets its share back over
//!   several rounds. The caller spaces rounds that move
//!   (`balance_interval_ms`, see `pacing.rs`).
//! - A partition changes at most once per round (an orphan just placed is
//!   not moved again in the same round), every change bumps the epoch above
//!   both the old epoch and the topic's floor, and carries the owner key's
//!   mod revision as read (CAS condition).
//! - Deterministic: brokers are ordered by id, partitions by (topic,
//!   partition), and every tie is broken on those orders.
//!
//! Each balance move strictly decreases the layout's (per topic, per group,
//! overall) sums of squares, compared lexicographically, so repeated rounds
//! converge.

use super::{Change, ChangeReason, LiveBroker, PartitionState};
use crate::keys::PartitionOwner;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Topics whose names start with this are internal and balanced as their
/// own group.
const INTERNAL_TOPIC_PREFIX: &str = "__";
const USER_GROUP: usize = 0;
const INTERNAL_GROUP: usize = 1;

/// Decides ownership changes by the rules in the module doc.
pub fn plan(
    partitions: &[PartitionState],
    brokers: &[LiveBroker],
    max_moves: usize,
) -> Vec<Change> {
    if brokers.is_empty() {
        return Vec::new();
    }
    let mut layout = Layout::new(partitions, brokers);
    let mut changed: BTreeMap<usize, ChangeReason> = BTreeMap::new();
    for index in layout.orphans() {
        let target = layout.best_home(layout.topic_of[index]);
        layout.place(index, target);
        changed.insert(index, ChangeReason::Orphaned);
    }
    // One move per topic, so the topics moved are the moves made.
    let mut moved_topics: HashSet<usize> = HashSet::new();
    for _ in 0..max_moves {
        let Some(step) = layout.best_move(&moved_topics, &changed) else {
            break;
        };
        layout.place(step.partition, step.to);
        moved_topics.insert(layout.topic_of[step.partition]);
        changed.insert(step.partition, ChangeReason::Balance);
    }
    changed
        .into_iter()
        .filter_map(|(index, reason)| layout.change(index, reason))
        .collect()
}

/// The planned layout: who holds each partition and the counts the rules
/// compare.
struct Layout<'a> {
    /// Sorted by id.
    brokers: Vec<&'a LiveBroker>,
    /// Sorted by (topic, partition).
    partitions: Vec<&'a PartitionState>,
    /// Topic index of each partition; a topic's partitions are contiguous.
    topic_of: Vec<usize>,
    /// First partition index of each topic, plus one past the last.
    topic_start: Vec<usize>,
    group_of_topic: Vec<usize>,
    /// Planned broker of each partition; `None` until an orphan is placed.
    holder: Vec<Option<usize>>,
    /// `[topic][broker]`, `[group][broker]` and `[broker]` partition counts.
    per_topic: Vec<Vec<usize>>,
    per_group: [Vec<usize>; 2],
    total: Vec<usize>,
}

/// One balance move: `partition` goes to broker `to`.
struct Move {
    partition: usize,
    to: usize,
}

impl<'a> Layout<'a> {
    fn new(partitions: &'a [PartitionState], brokers: &'a [LiveBroker]) -> Self {
        let mut sorted_brokers: Vec<&LiveBroker> = brokers.iter().collect();
        sorted_brokers.sort_by(|a, b| a.broker_id.cmp(&b.broker_id));
        let mut ordered: Vec<&PartitionState> = partitions.iter().collect();
        ordered.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let mut topic_of = Vec::with_capacity(ordered.len());
        let mut topic_start = Vec::new();
        let mut group_of_topic = Vec::new();
        for (index, state) in ordered.iter().enumerate() {
            if index == 0 || ordered[index - 1].topic != state.topic {
                topic_start.push(index);
                group_of_topic.push(if state.topic.starts_with(INTERNAL_TOPIC_PREFIX) {
                    INTERNAL_GROUP
                } else {
                    USER_GROUP
                });
            }
            topic_of.push(topic_start.len() - 1);
        }
        topic_start.push(ordered.len());
        let broker_count = sorted_brokers.len();
        let mut layout = Self {
            per_topic: vec![vec![0; broker_count]; group_of_topic.len()],
            per_group: [vec![0; broker_count], vec![0; broker_count]],
            total: vec![0; broker_count],
            holder: vec![None; ordered.len()],
            brokers: sorted_brokers,
            partitions: ordered,
            topic_of,
            topic_start,
            group_of_topic,
        };
        layout.count_live_owners();
        layout
    }

    fn count_live_owners(&mut self) {
        let broker_index: HashMap<(&str, u64), usize> = self
            .brokers
            .iter()
            .enumerate()
            .map(|(index, broker)| ((broker.broker_id.as_str(), broker.session_id), index))
            .collect();
        for index in 0..self.partitions.len() {
            let live = self.partitions[index].owner.as_ref().and_then(|owner| {
                broker_index
                    .get(&(owner.broker_id.as_str(), owner.broker_session))
                    .copied()
            });
            if let Some(broker) = live {
                self.place(index, broker);
            }
        }
    }

    /// Partitions without a live holder, in (topic, partition) order.
    fn orphans(&self) -> Vec<usize> {
        (0..self.partitions.len())
            .filter(|index| self.holder[*index].is_none())
            .collect()
    }

    /// Gives `index` to `broker`, taking it from its holder if it has one.
    fn place(&mut self, index: usize, broker: usize) {
        let topic = self.topic_of[index];
        let group = self.group_of_topic[topic];
        if let Some(previous) = self.holder[index] {
            self.per_topic[topic][previous] -= 1;
            self.per_group[group][previous] -= 1;
            self.total[previous] -= 1;
        }
        self.per_topic[topic][broker] += 1;
        self.per_group[group][broker] += 1;
        self.total[broker] += 1;
        self.holder[index] = Some(broker);
    }

    /// The broker a new partition of `topic` is best placed on.
    fn best_home(&self, topic: usize) -> usize {
        let group = self.group_of_topic[topic];
        (0..self.brokers.len())
            .min_by_key(|broker| {
                (
                    self.per_topic[topic][*broker],
                    self.per_group[group][*broker],
                    self.total[*broker],
                    self.brokers[*broker].bytes_in_per_sec,
                    *broker,
                )
            })
            .unwrap_or(0)
    }

    /// How moving one partition of `topic` from `from` to `to` changes the
    /// sums of squared counts (per topic, per group, overall), each halved:
    /// negative is better, zero is as good.
    fn gain(&self, topic: usize, from: usize, to: usize) -> (i64, i64, i64) {
        let group = self.group_of_topic[topic];
        let delta = |counts: &[usize]| counts[to] as i64 - counts[from] as i64 + 1;
        (
            delta(&self.per_topic[topic]),
            delta(&self.per_group[group]),
            delta(&self.total),
        )
    }

    /// The best strictly improving move of a topic not moved this round,
    /// of a partition not changed this round; `None` when there is none.
    fn best_move(
        &self,
        moved_topics: &HashSet<usize>,
        changed: &BTreeMap<usize, ChangeReason>,
    ) -> Option<Move> {
        let brokers = self.brokers.len();
        let mut best: Option<(MoveRank, Move)> = None;
        for topic in (0..self.group_of_topic.len()).filter(|t| !moved_topics.contains(t)) {
            for from in (0..brokers).filter(|from| self.per_topic[topic][*from] > 0) {
                for to in (0..brokers).filter(|to| *to != from) {
                    let gain = self.gain(topic, from, to);
                    if gain >= (0, 0, 0) {
                        continue;
                    }
                    let rank = MoveRank {
                        gain,
                        target: (self.total[to], self.brokers[to].bytes_in_per_sec, to),
                        donor: (Reverse(self.total[from]), from),
                        topic,
                    };
                    if best.as_ref().is_some_and(|(current, _)| *current <= rank) {
                        continue;
                    }
                    if let Some(partition) = self.movable(topic, from, changed) {
                        best = Some((rank, Move { partition, to }));
                    }
                }
            }
        }
        best.map(|(_, step)| step)
    }

    /// The highest-numbered partition of `topic` held by `broker` and not
    /// changed this round.
    fn movable(
        &self,
        topic: usize,
        broker: usize,
        changed: &BTreeMap<usize, ChangeReason>,
    ) -> Option<usize> {
        (self.topic_start[topic]..self.topic_start[topic + 1])
            .rev()
            .find(|index| self.holder[*index] == Some(broker) && !changed.contains_key(index))
    }

    /// The write that gives partition `index` to its planned holder.
    fn change(&self, index: usize, reason: ChangeReason) -> Option<Change> {
        let state = self.partitions[index];
        let broker = self.brokers[self.holder[index]?];
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
    }
}

/// Orders candidate moves: biggest gain first, then the target with fewest
/// partitions overall (then least traffic, lowest id), then the donor with
/// most, then the first topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MoveRank {
    gain: (i64, i64, i64),
    target: (usize, u64, usize),
    donor: (Reverse<usize>, usize),
    topic: usize,
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
    fn new_broker_gets_partitions_one_per_topic_per_round() {
        let mut states: Vec<_> = (0..6)
            .map(|p| {
                owned(
                    "t",
                    p,
                    Some(if p % 2 == 0 { ("a", 1, 1) } else { ("b", 2, 1) }),
                )
            })
            .collect();
        let brokers = [broker("a", 1), broker("b", 2), broker("c", 3)];
        for round in 0..2 {
            let changes = plan(&states, &brokers, 10);
            assert_eq!(changes.len(), 1, "round {round}: one move of the topic");
            assert_eq!(changes[0].new_owner.broker_id, "c");
            assert_eq!(changes[0].new_owner.epoch, 2);
            assert_eq!(changes[0].reason, ChangeReason::Balance);
            apply(&mut states, &changes);
        }
        assert!(plan(&states, &brokers, 10).is_empty());
        for id in ["a", "b", "c"] {
            assert_eq!(count(&states, id), 2);
        }
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
        let brokers = [broker("a", 1), broker("b", 2)];
        for _ in 0..10 {
            let changes = plan(&states, &brokers, 100);
            let mut seen = HashSet::new();
            for change in &changes {
                assert!(seen.insert((change.topic.clone(), change.partition)));
            }
            apply(&mut states, &changes);
        }
        assert!(count(&states, "a").abs_diff(count(&states, "b")) <= 1);
    }

    fn spread(states: &[PartitionState], topic: &str, ids: &[&str]) -> Vec<usize> {
        ids.iter()
            .map(|id| {
                states
                    .iter()
                    .filter(|state| state.topic == topic)
                    .filter(|state| state.owner.as_ref().is_some_and(|o| o.broker_id == *id))
                    .count()
            })
            .collect()
    }

    fn settle(states: &mut [PartitionState], brokers: &[LiveBroker], max_moves: usize) -> usize {
        for round in 0..100 {
            let changes = plan(states, brokers, max_moves);
            if changes.is_empty() {
                return round;
            }
            apply(states, &changes);
        }
        panic!("no fixpoint within 100 rounds");
    }

    /// Issue 12's layout: 8 offsets partitions on 3 brokers, then a user
    /// topic of 4 created; counts alone put all 4 on one broker.
    #[test]
    fn a_new_topic_is_spread_whatever_the_internal_partitions() {
        let brokers = [broker("a", 1), broker("b", 2), broker("c", 3)];
        let offsets_owner = |p: u32| match p {
            6 | 7 => ("c", 3, 1),
            _ if p.is_multiple_of(2) => ("a", 1, 1),
            _ => ("b", 2, 1),
        };
        let mut states: Vec<_> = (0..8)
            .map(|p| owned("__consumer_offsets", p, Some(offsets_owner(p))))
            .collect();
        states.extend((0..4).map(|p| owned("orders", p, None)));
        let changes = plan(&states, &brokers, 4);
        assert_eq!(changes.len(), 4);
        assert!(changes.iter().all(|c| c.reason == ChangeReason::Orphaned));
        apply(&mut states, &changes);
        // c holds the fewest offsets partitions, so it takes the extra one.
        assert_eq!(spread(&states, "orders", &["a", "b", "c"]), [1, 1, 2]);
        assert_eq!(settle(&mut states, &brokers, 4), 0);
    }

    #[test]
    fn internal_topics_are_balanced_as_their_own_group() {
        let brokers = [broker("a", 1), broker("b", 2)];
        // Two single-partition internal topics and two single-partition
        // user topics, all on a: per topic nothing can improve, per group
        // one of each moves to b (the first of each, on ties).
        let mut states = vec![
            owned("__x", 0, Some(("a", 1, 1))),
            owned("__y", 0, Some(("a", 1, 1))),
            owned("p", 0, Some(("a", 1, 1))),
            owned("q", 0, Some(("a", 1, 1))),
        ];
        let changes = plan(&states, &brokers, 4);
        let moved: Vec<&str> = changes.iter().map(|c| c.topic.as_str()).collect();
        assert_eq!(moved, ["__x", "p"], "one internal and one user partition");
        apply(&mut states, &changes);
        assert!(plan(&states, &brokers, 4).is_empty());
    }

    #[test]
    fn a_restarted_broker_takes_its_share_back_one_partition_per_topic_per_round() {
        let brokers = [broker("a", 1), broker("b", 2), broker("c", 3)];
        let mut states: Vec<_> = (0..6).map(|p| owned("t", p, None)).collect();
        states.extend((0..6).map(|p| owned("u", p, None)));
        settle(&mut states, &brokers, 4);
        assert_eq!(spread(&states, "t", &["a", "b", "c"]), [2, 2, 2]);
        // c restarts: its session ends, so its partitions are orphans and
        // go to a and b while it is away.
        let survivors = [broker("a", 1), broker("b", 2)];
        settle(&mut states, &survivors, 4);
        assert_eq!(spread(&states, "t", &["a", "b", "c"]), [3, 3, 0]);
        // It comes back with a new session.
        let returned = [broker("a", 1), broker("b", 2), broker("c", 4)];
        let mut rounds = 0;
        loop {
            let changes = plan(&states, &returned, 4);
            if changes.is_empty() {
                break;
            }
            for topic in ["t", "u"] {
                let moved = changes.iter().filter(|c| c.topic == topic).count();
                assert!(moved <= 1, "round {rounds}: {moved} partitions of {topic}");
            }
            apply(&mut states, &changes);
            rounds += 1;
        }
        assert_eq!(
            rounds, 2,
            "two partitions of each topic come back, one per round"
        );
        for topic in ["t", "u"] {
            assert_eq!(spread(&states, topic, &["a", "b", "c"]), [2, 2, 2]);
        }
    }

    #[test]
    fn a_layout_spread_per_topic_but_uneven_overall_is_evened_out() {
        // Each topic 1/0 on a/b: per topic fine, overall 3 to 0.
        let brokers = [broker("a", 1), broker("b", 2)];
        let mut states: Vec<_> = ["p", "q", "r"]
            .iter()
            .map(|topic| owned(topic, 0, Some(("a", 1, 1))))
            .collect();
        let changes = plan(&states, &brokers, 4);
        assert_eq!(changes.len(), 1, "one move reaches 2/1");
        apply(&mut states, &changes);
        assert_eq!((count(&states, "a"), count(&states, "b")), (2, 1));
        assert!(plan(&states, &brokers, 4).is_empty());
    }
}
