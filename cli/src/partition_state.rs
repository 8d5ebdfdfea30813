//! What `sluice topic describe` says about each partition's health: online,
//! offline (no owner, or its owner reports it offline), or damaged (its
//! owner reports closed segments with ranges no copy holds intact), and
//! the ranges already accepted as lost. From the topic's description and
//! the brokers' load in the cluster status.

use sluice_proto::v1::{
    DamagedPartition, DamagedRange, NodeInfo, OfflinePartition, PartitionDescription,
};

/// Most ranges listed in one table cell; more are counted.
const MAX_RANGES_SHOWN: usize = 3;

/// One partition's health, compact for a table cell, and the owner's
/// explanation (printed below the table) when it is not online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionHealth {
    pub state: String,
    pub lost: String,
    pub explanation: Option<String>,
}

fn ranges_text(ranges: &[&DamagedRange]) -> String {
    if ranges.is_empty() {
        return "-".to_string();
    }
    let mut shown: Vec<String> = ranges
        .iter()
        .take(MAX_RANGES_SHOWN)
        .map(|range| format!("[{}, {})", range.start_offset, range.end_offset))
        .collect();
    if ranges.len() > MAX_RANGES_SHOWN {
        shown.push(format!("+{} more", ranges.len() - MAX_RANGES_SHOWN));
    }
    shown.join(" ")
}

/// The health of `partition` of `topic`; `brokers` from cluster status
/// (None: it could not be read, the state is unknown).
pub fn health(
    topic: &str,
    partition: &PartitionDescription,
    brokers: Option<&[NodeInfo]>,
) -> PartitionHealth {
    let route = partition.route.clone().unwrap_or_default();
    let lost: Vec<&DamagedRange> = partition
        .segments
        .iter()
        .flat_map(|segment| segment.lost_ranges.iter())
        .collect();
    let lost = ranges_text(&lost);
    let load = brokers.and_then(|brokers| {
        brokers
            .iter()
            .find(|broker| broker.node_id == route.broker_id)
            .and_then(|broker| broker.load.clone())
    });
    let mine = |entry_topic: &str, entry_partition: u32| {
        entry_topic == topic && entry_partition == route.partition
    };
    let (state, explanation) = if route.broker_id.is_empty() {
        ("offline: no owner".to_string(), None)
    } else if brokers.is_none() {
        ("?".to_string(), None)
    } else if let Some(offline) = load.as_ref().and_then(|load| {
        load.offline_partitions
            .iter()
            .find(|offline: &&OfflinePartition| mine(&offline.topic, offline.partition))
    }) {
        ("offline".to_string(), Some(offline.reason.clone()))
    } else {
        let damaged: Vec<&DamagedPartition> = load
            .as_ref()
            .map(|load| {
                load.damaged_partitions
                    .iter()
                    .filter(|damaged| mine(&damaged.topic, damaged.partition))
                    .collect()
            })
            .unwrap_or_default();
        if damaged.is_empty() {
            ("online".to_string(), None)
        } else {
            let ranges: Vec<&DamagedRange> = damaged
                .iter()
                .flat_map(|damaged| damaged.ranges.iter())
                .collect();
            let reasons: Vec<&str> = damaged.iter().map(|entry| entry.reason.as_str()).collect();
            (
                format!("damaged {}", ranges_text(&ranges)),
                Some(reasons.join("; ")),
            )
        }
    };
    PartitionHealth {
        state,
        lost,
        explanation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::{NodeLoad, PartitionRoute, SegmentInfo};

    fn range(start_offset: u64, end_offset: u64) -> DamagedRange {
        DamagedRange {
            start_offset,
            end_offset,
            detail: String::new(),
        }
    }

    fn owned_by(broker_id: &str, partition: u32, lost: Vec<DamagedRange>) -> PartitionDescription {
        PartitionDescription {
            route: Some(PartitionRoute {
                partition,
                broker_id: broker_id.into(),
                ..PartitionRoute::default()
            }),
            segments: vec![SegmentInfo {
                lost_ranges: lost,
                ..SegmentInfo::default()
            }],
        }
    }

    fn broker(load: NodeLoad) -> NodeInfo {
        NodeInfo {
            node_id: "b1".into(),
            load: Some(load),
            ..NodeInfo::default()
        }
    }

    #[test]
    fn online_offline_and_damaged_partitions_are_told_apart() {
        let brokers = [broker(NodeLoad {
            offline_partitions: vec![OfflinePartition {
                topic: "orders".into(),
                partition: 1,
                reason: "open segment 3 damaged".into(),
            }],
            damaged_partitions: vec![DamagedPartition {
                topic: "orders".into(),
                partition: 2,
                reason: "closed segment 7 ...".into(),
                segment_id: 7,
                ranges: vec![range(10, 20)],
            }],
            ..NodeLoad::default()
        })];
        let state = |partition, owner: &str| {
            health(
                "orders",
                &owned_by(owner, partition, Vec::new()),
                Some(&brokers),
            )
        };
        assert_eq!(state(0, "b1").state, "online");
        assert_eq!(state(0, "b1").explanation, None);
        assert_eq!(state(0, "").state, "offline: no owner");
        let offline = state(1, "b1");
        assert_eq!(offline.state, "offline");
        assert_eq!(
            offline.explanation.as_deref(),
            Some("open segment 3 damaged")
        );
        let damaged = state(2, "b1");
        assert_eq!(damaged.state, "damaged [10, 20)");
        assert!(damaged
            .explanation
            .is_some_and(|text| text.contains("segment 7")));
        // Another topic's entries do not count; unknown without status.
        let other = health("other", &owned_by("b1", 2, Vec::new()), Some(&brokers));
        assert_eq!(other.state, "online");
        assert_eq!(state(0, "b1").lost, "-");
        let unknown = health("orders", &owned_by("b1", 2, Vec::new()), None);
        assert_eq!(unknown.state, "?");
    }

    #[test]
    fn lost_ranges_are_listed_compactly() {
        let lost: Vec<DamagedRange> = (0..5)
            .map(|index| range(index * 10, index * 10 + 5))
            .collect();
        let shown = health("orders", &owned_by("b1", 0, lost), Some(&[]));
        assert_eq!(shown.lost, "[0, 5) [10, 15) [20, 25) +2 more");
    }
}
