//! Where a segment's replicas go: pure choices over the live stores'
//! registrations, no IO. The handler reads the registrations from the
//! metadata store and writes the chosen ensemble back
//! (`handler/segments.rs`); partition → broker balancing is
//! [`crate::assignment`].

use crate::error::NameServerError;
use sluice_proto::v1::{NodeInfo, TopicConfig};
use std::collections::HashSet;

/// How many replicas a segment of a topic gets: `size` wanted, never fewer
/// than `ack_quorum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnsembleShape {
    pub size: u32,
    pub ack_quorum: u32,
}

impl EnsembleShape {
    /// The shape of a topic's segments; zero (or no config) counts as 1.
    pub fn of(config: Option<&TopicConfig>) -> Self {
        config.map_or(
            Self {
                size: 1,
                ack_quorum: 1,
            },
            |config| Self {
                size: config.ensemble_size.max(1),
                ack_quorum: config.ack_quorum.max(1),
            },
        )
    }
}

/// A topic can be created only while every segment can get its full
/// ensemble: `ensemble_size` at most the number of live stores.
pub(crate) fn check_ensemble_fits(ensemble_size: u32, live: usize) -> Result<(), NameServerError> {
    let live = u32::try_from(live).unwrap_or(u32::MAX);
    if ensemble_size > live {
        return Err(NameServerError::NotEnoughStores {
            needed: ensemble_size,
            live,
        });
    }
    Ok(())
}

/// The ensemble of a new segment: `shape.size` live stores chosen by
/// [`choose_stores`], avoiding `excluded` (stores the writer just saw
/// fail). When fewer are available the ensemble shrinks, down to
/// `shape.ack_quorum` (writes go on with fewer copies; the broker rolls to
/// a full ensemble once enough stores are live and repair restores the
/// closed segments); an excluded store is used again only if that is the
/// only way to reach the ack quorum. A size of 0 counts as 1.
pub(crate) fn choose_ensemble(
    live: Vec<NodeInfo>,
    excluded: &[String],
    shape: EnsembleShape,
) -> Result<Vec<NodeInfo>, NameServerError> {
    let ensemble_size = shape.size.max(1);
    let ack_quorum = shape.ack_quorum.clamp(1, ensemble_size);
    let (avoided, eligible): (Vec<NodeInfo>, Vec<NodeInfo>) = live
        .into_iter()
        .partition(|store| excluded.contains(&store.node_id));
    let eligible_count = u32::try_from(eligible.len()).unwrap_or(u32::MAX);
    let chosen = if eligible_count >= ack_quorum {
        choose_stores(eligible, ensemble_size.min(eligible_count))?
    } else {
        let mut chosen = choose_stores(eligible, eligible_count)?;
        let missing = ack_quorum - eligible_count;
        let available = u32::try_from(avoided.len()).unwrap_or(u32::MAX);
        if available < missing {
            return Err(NameServerError::NotEnoughStores {
                needed: ack_quorum,
                live: eligible_count + available,
            });
        }
        chosen.extend(choose_stores(avoided, missing)?);
        chosen
    };
    debug_assert!(
        (ack_quorum as usize..=ensemble_size as usize).contains(&chosen.len()),
        "an ensemble of {} stores for ack quorum {ack_quorum} and size {ensemble_size}",
        chosen.len()
    );
    Ok(chosen)
}

/// Picks `count` stores: fewest segments, then most free disk, then id;
/// distinct racks first when racks are set.
pub(crate) fn choose_stores(
    mut stores: Vec<NodeInfo>,
    count: u32,
) -> Result<Vec<NodeInfo>, NameServerError> {
    let live = u32::try_from(stores.len()).unwrap_or(u32::MAX);
    if live < count {
        return Err(NameServerError::NotEnoughStores {
            needed: count,
            live,
        });
    }
    stores.sort_by(|a, b| {
        let load_a = a.load.clone().unwrap_or_default();
        let load_b = b.load.clone().unwrap_or_default();
        load_a
            .segments
            .cmp(&load_b.segments)
            .then(load_b.disk_free_bytes.cmp(&load_a.disk_free_bytes))
            .then(a.node_id.cmp(&b.node_id))
    });
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut chosen: Vec<NodeInfo> = Vec::new();
    let mut racks: HashSet<String> = HashSet::new();
    let mut rest = Vec::new();
    for store in stores {
        if chosen.len() < count && (store.rack.is_empty() || racks.insert(store.rack.clone())) {
            chosen.push(store);
        } else {
            rest.push(store);
        }
    }
    for store in rest {
        if chosen.len() >= count {
            break;
        }
        chosen.push(store);
    }
    debug_assert_eq!(chosen.len(), count, "the length check above guarantees it");
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::{NodeKind, NodeLoad};

    fn store(id: &str, segments: u32, free: u64, rack: &str) -> NodeInfo {
        NodeInfo {
            kind: NodeKind::Store as i32,
            node_id: id.to_string(),
            address: format!("{id}:1"),
            load: Some(NodeLoad {
                segments,
                disk_free_bytes: free,
                ..NodeLoad::default()
            }),
            rack: rack.to_string(),
            ..NodeInfo::default()
        }
    }

    /// `count` idle stores `s1`, `s2`, … without racks.
    fn idle(count: usize) -> Vec<NodeInfo> {
        (1..=count)
            .map(|index| store(&format!("s{index}"), 0, 0, ""))
            .collect()
    }

    fn ids(stores: &[NodeInfo]) -> Vec<&str> {
        stores.iter().map(|store| store.node_id.as_str()).collect()
    }

    fn shape(size: u32, ack_quorum: u32) -> EnsembleShape {
        EnsembleShape { size, ack_quorum }
    }

    fn excluded(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    fn assert_not_enough(result: Result<Vec<NodeInfo>, NameServerError>, needed: u32, live: u32) {
        match result {
            Err(NameServerError::NotEnoughStores {
                needed: got_needed,
                live: got_live,
            }) => assert_eq!((got_needed, got_live), (needed, live)),
            other => panic!("expected NotEnoughStores {{ {needed}, {live} }}, got {other:?}"),
        }
    }

    #[test]
    fn stores_with_fewest_segments_then_most_free_disk_are_chosen() {
        let stores = vec![
            store("busy", 9, 100, ""),
            store("idle-small", 1, 10, ""),
            store("idle-big", 1, 50, ""),
        ];
        let chosen = choose_stores(stores, 2).expect("enough stores");
        assert_eq!(ids(&chosen), ["idle-big", "idle-small"]);
    }

    #[test]
    fn ties_go_to_the_smaller_id_whatever_the_input_order() {
        let stores = vec![
            store("c", 2, 7, ""),
            store("a", 2, 7, ""),
            store("b", 2, 7, ""),
        ];
        let chosen = choose_stores(stores.clone(), 2).expect("enough");
        assert_eq!(ids(&chosen), ["a", "b"]);
        let reversed: Vec<NodeInfo> = stores.into_iter().rev().collect();
        let chosen = choose_stores(reversed, 2).expect("enough");
        assert_eq!(ids(&chosen), ["a", "b"]);
    }

    #[test]
    fn a_store_without_a_load_report_counts_as_empty() {
        let unreported = NodeInfo {
            load: None,
            ..store("new", 0, 0, "")
        };
        let stores = vec![store("old", 1, 1_000, ""), unreported];
        let chosen = choose_stores(stores, 1).expect("enough");
        assert_eq!(ids(&chosen), ["new"]);
    }

    #[test]
    fn distinct_racks_are_preferred() {
        let stores = vec![
            store("a1", 0, 0, "a"),
            store("a2", 0, 0, "a"),
            store("b1", 5, 0, "b"),
        ];
        let chosen = choose_stores(stores.clone(), 2).expect("enough");
        assert_eq!(ids(&chosen), ["a1", "b1"]);
        // More replicas than racks: racks repeat rather than failing.
        let chosen = choose_stores(stores, 3).expect("enough");
        assert_eq!(ids(&chosen), ["a1", "b1", "a2"]);
    }

    #[test]
    fn too_few_stores_is_not_enough_stores() {
        assert_not_enough(choose_stores(vec![store("only", 0, 0, "")], 2), 2, 1);
        assert_not_enough(choose_stores(Vec::new(), 1), 1, 0);
        assert!(choose_stores(Vec::new(), 0)
            .expect("nothing asked")
            .is_empty());
    }

    #[test]
    fn ensembles_avoid_failed_stores_and_shrink_down_to_the_ack_quorum() {
        let stores = vec![
            store("s1", 0, 0, ""),
            store("s2", 0, 0, ""),
            store("s3", 0, 0, ""),
            store("s4", 9, 0, ""),
        ];
        let failed = excluded(&["s1"]);
        // A spare store replaces the failed one.
        let chosen = choose_ensemble(stores.clone(), &failed, shape(3, 2)).expect("enough");
        assert_eq!(ids(&chosen), ["s2", "s3", "s4"]);
        // No spare: a smaller ensemble, still at least the ack quorum.
        let chosen = choose_ensemble(stores[..3].to_vec(), &failed, shape(3, 2)).expect("degraded");
        assert_eq!(ids(&chosen), ["s2", "s3"]);
        // Below the ack quorum, a failed store is tried again rather than
        // refusing every write.
        let failed_two = excluded(&["s1", "s2"]);
        let chosen = choose_ensemble(stores[..3].to_vec(), &failed_two, shape(3, 2))
            .expect("reuses one failed store");
        assert_eq!(ids(&chosen), ["s3", "s1"]);
        // Not enough live stores at all.
        assert_not_enough(
            choose_ensemble(stores[..1].to_vec(), &[], shape(3, 2)),
            2,
            1,
        );
    }

    #[test]
    fn excluded_stores_are_avoided_even_when_least_loaded() {
        let stores = vec![
            store("idle", 0, 1_000, ""),
            store("busy-1", 5, 0, ""),
            store("busy-2", 6, 0, ""),
        ];
        let chosen = choose_ensemble(stores, &excluded(&["idle"]), shape(2, 1)).expect("enough");
        assert_eq!(ids(&chosen), ["busy-1", "busy-2"]);
    }

    #[test]
    fn excluding_a_store_that_is_not_live_changes_nothing() {
        let chosen = choose_ensemble(idle(3), &excluded(&["gone"]), shape(3, 3)).expect("enough");
        assert_eq!(ids(&chosen), ["s1", "s2", "s3"]);
    }

    #[test]
    fn every_store_excluded_below_the_quorum_is_not_enough_stores() {
        // Two live stores, both excluded, ack quorum three: even reusing
        // them all falls short.
        assert_not_enough(
            choose_ensemble(idle(2), &excluded(&["s1", "s2"]), shape(3, 3)),
            3,
            2,
        );
        // No live stores at all.
        assert_not_enough(choose_ensemble(Vec::new(), &[], shape(1, 1)), 1, 0);
    }

    #[test]
    fn ensemble_size_zero_counts_as_one() {
        let chosen = choose_ensemble(idle(3), &[], shape(0, 0)).expect("enough");
        assert_eq!(ids(&chosen), ["s1"]);
    }

    #[test]
    fn ensemble_size_one_takes_the_least_loaded_store() {
        let stores = vec![store("busy", 3, 0, ""), store("idle", 0, 0, "")];
        let chosen = choose_ensemble(stores, &[], shape(1, 1)).expect("enough");
        assert_eq!(ids(&chosen), ["idle"]);
    }

    #[test]
    fn the_largest_ensemble_size_takes_every_eligible_store() {
        let chosen =
            choose_ensemble(idle(4), &excluded(&["s2"]), shape(u32::MAX, 2)).expect("enough");
        assert_eq!(ids(&chosen), ["s1", "s3", "s4"]);
        // An ack quorum as large cannot be met.
        assert_not_enough(
            choose_ensemble(idle(4), &[], shape(u32::MAX, u32::MAX)),
            u32::MAX,
            4,
        );
    }

    #[test]
    fn an_ack_quorum_above_the_ensemble_size_is_the_ensemble_size() {
        // Ack quorum 5 of an ensemble of 2: two stores are enough.
        let chosen = choose_ensemble(idle(2), &[], shape(2, 5)).expect("enough");
        assert_eq!(ids(&chosen), ["s1", "s2"]);
    }

    #[test]
    fn an_ensemble_never_lists_a_store_twice() {
        for excluded_ids in [&[][..], &["s1"][..], &["s1", "s2", "s3"][..]] {
            for size in 1..=4 {
                let Ok(chosen) = choose_ensemble(idle(3), &excluded(excluded_ids), shape(size, 1))
                else {
                    continue;
                };
                let distinct: HashSet<&str> = ids(&chosen).into_iter().collect();
                assert_eq!(
                    distinct.len(),
                    chosen.len(),
                    "{excluded_ids:?}, size {size}"
                );
            }
        }
    }

    #[test]
    fn shapes_come_from_the_topic_config_with_zero_as_one() {
        assert_eq!(EnsembleShape::of(None), shape(1, 1));
        let config = TopicConfig {
            ensemble_size: 3,
            ack_quorum: 2,
            ..TopicConfig::default()
        };
        assert_eq!(EnsembleShape::of(Some(&config)), shape(3, 2));
        assert_eq!(
            EnsembleShape::of(Some(&TopicConfig::default())),
            shape(1, 1)
        );
    }

    #[test]
    fn a_topic_fits_when_its_ensemble_does() {
        assert!(check_ensemble_fits(3, 3).is_ok());
        assert!(check_ensemble_fits(0, 0).is_ok());
        match check_ensemble_fits(2, 1) {
            Err(NameServerError::NotEnoughStores { needed: 2, live: 1 }) => {}
            other => panic!("expected NotEnoughStores, got {other:?}"),
        }
    }
}
