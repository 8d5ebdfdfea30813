//! An operator's acceptance of data loss on a partition whose open segment
//! is damaged on every copy (`sluice partition recover --accept-data-loss`,
//! issue 11): the open segments are marked, durably, so the owner's next
//! takeover closes them at the highest end any copy reports (or the
//! operator's floor) and goes on after it. Offsets are never reused.
//! Closed segments a broker reports damaged on every copy
//! (`NodeLoad.damaged_partitions`) are marked too: the owner's next repair
//! round records what no copy holds as lost (fenced by its epoch).

use super::{invalid, lookup_topic_name, NameServerHandler};
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::{Compare, KeyValue, Put, Transaction};
use sluice_proto::v1::{AcceptDataLossRequest, NodeInfo, NodeKind, SegmentInfo, SegmentState};
use std::collections::HashSet;

/// Checks an acceptance before anything is written.
fn check_request(request: &AcceptDataLossRequest) -> Result<(), NameServerError> {
    if !request.accept_data_loss {
        return Err(invalid(format!(
            "refusing to recover {}/{} without accepting data loss: the ranges of its segments that no copy holds intact would be skipped for good (readers get an error there, the log continues after the highest offset any copy reports). Repair or bring back a store holding an intact copy if you can; otherwise repeat with --accept-data-loss",
            request.topic, request.partition
        )));
    }
    if request.resume_at_offset > sluice_proto::limits::MAX_OFFSET {
        return Err(invalid(format!(
            "resume offset {} is beyond the largest offset {}",
            request.resume_at_offset,
            sluice_proto::limits::MAX_OFFSET
        )));
    }
    Ok(())
}

/// Marks `segment` (open) as accepting loss with the floor `resume_at`.
fn mark(segment: &mut SegmentInfo, resume_at: u64) {
    segment.data_loss_accepted = true;
    segment.accepted_end_offset = segment.accepted_end_offset.max(resume_at);
}

/// What the brokers report about the partition an operator decides on.
struct Reported {
    /// Closed segments damaged on every copy.
    damaged: HashSet<u64>,
    /// Whether its owner reports it offline.
    offline: bool,
}

/// Whether the acceptance marks `segment`: the closed ones a broker
/// reports damaged on every copy, unless marked already, and the open
/// ones, except when the only damage reported is in closed segments and
/// the partition is not offline (accepting that loss does not also accept
/// whatever a later takeover of the healthy open segment finds). Other
/// closed segments are not: an acceptance is for the damage known now.
fn marks(segment: &SegmentInfo, reported: &Reported) -> bool {
    if segment.state == SegmentState::Open as i32 {
        return reported.offline || reported.damaged.is_empty();
    }
    segment.state == SegmentState::Closed as i32
        && !segment.data_loss_accepted
        && reported.damaged.contains(&segment.segment_id)
}

/// Whether registered brokers report `topic`/`partition` offline.
fn reported_offline(brokers: &[NodeInfo], topic: &str, partition: u32) -> bool {
    brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.offline_partitions.iter())
        .any(|offline| offline.topic == topic && offline.partition == partition)
}

/// The closed segments of `topic`/`partition` that registered brokers
/// report damaged on every copy, from their last heartbeat's load.
fn reported_damaged(brokers: &[NodeInfo], topic: &str, partition: u32) -> HashSet<u64> {
    brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.damaged_partitions.iter())
        .filter(|damaged| damaged.topic == topic && damaged.partition == partition)
        .map(|damaged| damaged.segment_id)
        .collect()
}

impl NameServerHandler {
    /// Marks every open segment of the partition as accepting data loss;
    /// answers their ids. Each write is conditional on the segment not
    /// having changed since it was read (a concurrent close answers a
    /// conflict: ask again).
    pub(crate) async fn do_accept_data_loss(
        &self,
        request: AcceptDataLossRequest,
    ) -> Result<Vec<u64>, NameServerError> {
        lookup_topic_name(&request.topic)?;
        let (topic, _) = self.get_topic(&request.topic).await?;
        let partitions = topic.config.as_ref().map_or(0, |config| config.partitions);
        if request.partition >= partitions {
            return Err(NameServerError::UnknownPartition {
                topic: request.topic.clone(),
                partition: request.partition,
            });
        }
        check_request(&request)?;
        let mut brokers = Vec::new();
        for entry in self
            .store
            .range(&keys::nodes_of_kind(NodeKind::Broker))
            .await?
        {
            match keys::decode::<NodeInfo>(&entry.key, &entry.value) {
                Ok(broker) => brokers.push(broker),
                Err(error) => tracing::warn!(%error, "skipping undecodable broker"),
            }
        }
        let reported = Reported {
            damaged: reported_damaged(&brokers, &request.topic, request.partition),
            offline: reported_offline(&brokers, &request.topic, request.partition),
        };
        let prefix = keys::segments_of(&request.topic, request.partition);
        let mut marked = Vec::new();
        for KeyValue {
            key,
            value,
            mod_revision,
            ..
        } in self.store.range(&prefix).await?
        {
            let mut segment: SegmentInfo = keys::decode(&key, &value)?;
            if !marks(&segment, &reported) {
                continue;
            }
            if segment.state == SegmentState::Open as i32 {
                mark(&mut segment, request.resume_at_offset);
            } else {
                segment.data_loss_accepted = true;
            }
            let transaction = Transaction {
                compares: vec![Compare::ModRevisionEquals(key.clone(), mod_revision)],
                puts: vec![Put::new(key, keys::encode(&segment))],
                deletes: Vec::new(),
            };
            if !self.store.commit(transaction).await? {
                return Err(NameServerError::Conflict(format!(
                    "segment {} of {}/{} changed meanwhile; retry",
                    segment.segment_id, request.topic, request.partition
                )));
            }
            marked.push(segment.segment_id);
        }
        tracing::warn!(topic = %request.topic, partition = request.partition, segments = ?marked, resume_at_offset = request.resume_at_offset, "an operator accepted data loss");
        Ok(marked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_must_be_explicit_and_the_floor_bounded() {
        let request = AcceptDataLossRequest {
            topic: "orders".into(),
            partition: 0,
            accept_data_loss: false,
            resume_at_offset: 0,
        };
        let refused = check_request(&request).expect_err("refused");
        assert!(
            refused.to_string().contains("--accept-data-loss"),
            "{refused}"
        );
        let accepted = AcceptDataLossRequest {
            accept_data_loss: true,
            ..request
        };
        assert!(check_request(&accepted).is_ok());
        let beyond = AcceptDataLossRequest {
            resume_at_offset: u64::MAX,
            ..accepted.clone()
        };
        assert!(check_request(&beyond).is_err());
        let top = AcceptDataLossRequest {
            resume_at_offset: sluice_proto::limits::MAX_OFFSET,
            ..accepted
        };
        assert!(check_request(&top).is_ok());
    }

    #[test]
    fn open_segments_and_reported_closed_ones_are_marked() {
        use sluice_proto::v1::{DamagedPartition, NodeLoad};
        let broker = |topic: &str, partition, segment_id| NodeInfo {
            load: Some(NodeLoad {
                damaged_partitions: vec![DamagedPartition {
                    topic: topic.into(),
                    partition,
                    segment_id,
                    ..DamagedPartition::default()
                }],
                ..NodeLoad::default()
            }),
            ..NodeInfo::default()
        };
        let brokers = [
            broker("orders", 0, 7),
            broker("orders", 1, 8),
            broker("other", 0, 9),
        ];
        let damaged = reported_damaged(&brokers, "orders", 0);
        assert_eq!(damaged, HashSet::from([7]));
        let reported = Reported {
            damaged,
            offline: false,
        };
        let segment = |segment_id, state: SegmentState| SegmentInfo {
            segment_id,
            state: state as i32,
            ..SegmentInfo::default()
        };
        assert!(marks(&segment(7, SegmentState::Closed), &reported));
        // Only closed damage reported, not offline: the open segment is
        // left alone; offline, or nothing reported, it is marked.
        assert!(!marks(&segment(3, SegmentState::Open), &reported));
        let offline = Reported {
            damaged: HashSet::from([7]),
            offline: true,
        };
        assert!(marks(&segment(3, SegmentState::Open), &offline));
        let nothing = Reported {
            damaged: HashSet::new(),
            offline: false,
        };
        assert!(marks(&segment(3, SegmentState::Open), &nothing));
        assert!(!marks(&segment(7, SegmentState::Closed), &nothing));
        let offline_broker = NodeInfo {
            load: Some(NodeLoad {
                offline_partitions: vec![sluice_proto::v1::OfflinePartition {
                    topic: "orders".into(),
                    partition: 1,
                    reason: String::new(),
                }],
                ..NodeLoad::default()
            }),
            ..NodeInfo::default()
        };
        assert!(reported_offline(
            std::slice::from_ref(&offline_broker),
            "orders",
            1
        ));
        assert!(!reported_offline(&[offline_broker], "orders", 0));
        assert!(!marks(&segment(8, SegmentState::Closed), &reported));
        let mut marked_already = segment(7, SegmentState::Closed);
        marked_already.data_loss_accepted = true;
        assert!(!marks(&marked_already, &reported));
    }

    #[test]
    fn the_floor_only_rises() {
        let mut segment = SegmentInfo::default();
        mark(&mut segment, 50);
        assert!(segment.data_loss_accepted);
        assert_eq!(segment.accepted_end_offset, 50);
        mark(&mut segment, 0);
        assert_eq!(segment.accepted_end_offset, 50);
    }
}
