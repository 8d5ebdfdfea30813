//! Cluster status: the registered nodes with their remaining lease, topic
//! and partition counts (offline ones too), segment counts (under-replicated
//! ones too), the metadata backend and the active assigner.

use super::{lease_of, NameServerHandler};
use crate::error::NameServerError;
use crate::keys;
use sluice_proto::v1::{
    ClusterStatusResponse, GetRoutesResponse, NodeInfo, NodeKind, SegmentInfo, Topic,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Partitions counted over routes, and how many of them have no live broker.
#[derive(Debug, Default, PartialEq, Eq)]
struct PartitionCounts {
    partitions: u32,
    offline: u32,
}

/// Segments counted over topics, and how many have fewer live replicas
/// than their topic's ensemble size.
#[derive(Debug, Default, PartialEq, Eq)]
struct SegmentCounts {
    segments: u32,
    under_replicated: u32,
}

/// Counts partitions over `routes`: offline when no live broker owns one,
/// or when its owner reports it offline (`reported`: (broker, topic,
/// partition) from the brokers' load; a range damaged on every copy).
fn count_partitions(
    routes: &GetRoutesResponse,
    reported: &HashSet<(&str, &str, u32)>,
) -> PartitionCounts {
    let mut counts = PartitionCounts::default();
    for topic in &routes.topics {
        for route in &topic.partitions {
            counts.partitions += 1;
            let owner_reports = reported.contains(&(
                route.broker_id.as_str(),
                topic.topic.as_str(),
                route.partition,
            ));
            if route.broker_id.is_empty() || owner_reports {
                counts.offline += 1;
            }
        }
    }
    counts
}

/// The partitions live brokers report offline, as (broker, topic,
/// partition).
fn reported_offline(brokers: &[NodeInfo]) -> HashSet<(&str, &str, u32)> {
    brokers
        .iter()
        .filter(|broker| broker.lease_remaining_ms >= 0)
        .flat_map(|broker| {
            broker
                .load
                .iter()
                .flat_map(|load| load.offline_partitions.iter())
                .map(|offline| {
                    (
                        broker.node_id.as_str(),
                        offline.topic.as_str(),
                        offline.partition,
                    )
                })
        })
        .collect()
}

impl NameServerHandler {
    /// The registered nodes of `kind`, each with its lease's remaining time
    /// (-1 when the lease is gone).
    async fn nodes_with_ttl(&self, kind: NodeKind) -> Result<Vec<NodeInfo>, NameServerError> {
        let mut nodes = Vec::new();
        for entry in self.store.range(&keys::nodes_of_kind(kind)).await? {
            let Ok(mut info) = keys::decode::<NodeInfo>(&entry.key, &entry.value) else {
                continue;
            };
            info.lease_remaining_ms =
                match self.store.time_to_live(lease_of(info.session_id)).await? {
                    Some(remaining) => i64::try_from(remaining).unwrap_or(i64::MAX),
                    None => -1,
                };
            info.last_heartbeat_ms_ago = self
                .session_silent_for(&entry.key, info.session_id)
                .map(|silent| i64::try_from(silent.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(-1);
            nodes.push(info);
        }
        Ok(nodes)
    }

    pub(crate) async fn do_cluster_status(&self) -> Result<ClusterStatusResponse, NameServerError> {
        let now_unix_ms = sluice_proto::now_unix_ms();
        // Down nodes before live ones: a node that registered again in
        // between shows live (the later read), never both.
        let down = self.down_nodes(now_unix_ms).await?;
        let nameservers = self.nodes_with_ttl(NodeKind::Nameserver).await?;
        let brokers = self.nodes_with_ttl(NodeKind::Broker).await?;
        let stores = self.nodes_with_ttl(NodeKind::Store).await?;
        let down_nodes = super::down_nodes::not_live(down, [&nameservers, &brokers, &stores]);
        let topics = self.all_topics().await?;
        let all_names: Vec<String> = topics.iter().map(|(topic, _)| topic.name.clone()).collect();
        // Routes from the topics just read, not read a second time.
        let all_routes = if all_names.is_empty() {
            GetRoutesResponse::default()
        } else {
            let by_name: BTreeMap<String, Topic> = topics
                .iter()
                .map(|(topic, _)| (topic.name.clone(), topic.clone()))
                .collect();
            let owners = self.owners(keys::PARTITIONS).await?;
            self.routes_from(&by_name, owners, &all_names).await?
        };
        let partitions = count_partitions(&all_routes, &reported_offline(&brokers));
        let live_stores: HashSet<&str> =
            stores.iter().map(|store| store.node_id.as_str()).collect();
        let segments = self.count_segments(&topics, &live_stores).await?;
        debug_assert!(partitions.offline <= partitions.partitions);
        debug_assert!(segments.under_replicated <= segments.segments);
        Ok(ClusterStatusResponse {
            under_replicated_segments: segments.under_replicated,
            segments: segments.segments,
            nameservers,
            brokers,
            stores,
            topics: u32::try_from(topics.len()).unwrap_or(u32::MAX),
            partitions: partitions.partitions,
            offline_partitions: partitions.offline,
            down_nodes,
            session_timeout_ms: self.config.session_timeout_ms,
            now_unix_ms,
            metadata_backend: self.store.backend_name().to_string(),
            active_assigner: crate::election::active_assigner(self.store.as_ref())
                .await?
                .unwrap_or_default(),
        })
    }

    /// Counts every segment with one range read of all segment keys (not
    /// one read per topic: at 10,000 topics that was 10,000 round trips to
    /// etcd).
    async fn count_segments(
        &self,
        topics: &[(Topic, i64)],
        live_stores: &HashSet<&str>,
    ) -> Result<SegmentCounts, NameServerError> {
        let ensemble_sizes: HashMap<&str, usize> = topics
            .iter()
            .map(|(topic, _)| (topic.name.as_str(), ensemble_size(topic)))
            .collect();
        let segments = self.segments_of(keys::SEGMENTS).await?;
        Ok(count_segments(&ensemble_sizes, &segments, live_stores))
    }
}

fn ensemble_size(topic: &Topic) -> usize {
    topic
        .config
        .as_ref()
        .map_or(1, |config| config.ensemble_size.max(1)) as usize
}

/// Counts the segments of existing topics (`ensemble_sizes`; left-overs of
/// deleted topics are not counted): under-replicated when fewer of its
/// replicas are on live stores than its topic's ensemble size.
fn count_segments(
    ensemble_sizes: &HashMap<&str, usize>,
    segments: &[SegmentInfo],
    live_stores: &HashSet<&str>,
) -> SegmentCounts {
    let mut counts = SegmentCounts::default();
    for segment in segments {
        let Some(ensemble_size) = ensemble_sizes.get(segment.topic.as_str()) else {
            continue;
        };
        counts.segments = counts.segments.saturating_add(1);
        let usable = segment
            .replicas
            .iter()
            .filter(|replica| live_stores.contains(replica.store_id.as_str()))
            .count();
        if usable < *ensemble_size {
            counts.under_replicated = counts.under_replicated.saturating_add(1);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::{PartitionRoute, TopicRoute};

    #[test]
    fn segments_count_per_topic_ensemble_and_leftovers_do_not_count() {
        use sluice_proto::v1::SegmentReplica;
        let segment = |topic: &str, stores: &[&str]| SegmentInfo {
            topic: topic.into(),
            replicas: stores
                .iter()
                .map(|store| SegmentReplica {
                    store_id: store.to_string(),
                    ..SegmentReplica::default()
                })
                .collect(),
            ..SegmentInfo::default()
        };
        let ensemble_sizes: HashMap<&str, usize> = [("a", 2), ("b", 1)].into_iter().collect();
        let live: HashSet<&str> = ["s1", "s2"].into_iter().collect();
        let segments = vec![
            segment("a", &["s1", "s2"]),
            segment("a", &["s1", "s3"]),
            segment("b", &["s3"]),
            segment("b", &["s2"]),
            segment("deleted", &[]),
        ];
        assert_eq!(
            count_segments(&ensemble_sizes, &segments, &live),
            SegmentCounts {
                segments: 4,
                under_replicated: 2
            }
        );
    }

    #[test]
    fn partitions_without_a_broker_count_as_offline() {
        let route = |broker: &str| PartitionRoute {
            broker_id: broker.to_string(),
            ..PartitionRoute::default()
        };
        let routes = GetRoutesResponse {
            topics: vec![
                TopicRoute {
                    partitions: vec![route("b1"), route("")],
                    ..TopicRoute::default()
                },
                TopicRoute {
                    partitions: vec![route("")],
                    ..TopicRoute::default()
                },
            ],
        };
        assert_eq!(
            count_partitions(&routes, &HashSet::new()),
            PartitionCounts {
                partitions: 3,
                offline: 2
            }
        );
    }

    #[test]
    fn partitions_their_owner_reports_offline_count_as_offline() {
        use sluice_proto::v1::{NodeLoad, OfflinePartition};
        let route = |partition: u32, broker: &str| PartitionRoute {
            partition,
            broker_id: broker.to_string(),
            ..PartitionRoute::default()
        };
        let routes = GetRoutesResponse {
            topics: vec![TopicRoute {
                topic: "orders".into(),
                partitions: vec![route(0, "b1"), route(1, "b1"), route(2, "")],
                ..TopicRoute::default()
            }],
        };
        let broker = |id: &str, lease_remaining_ms: i64, partition: u32| NodeInfo {
            node_id: id.into(),
            lease_remaining_ms,
            load: Some(NodeLoad {
                offline_partitions: vec![OfflinePartition {
                    topic: "orders".into(),
                    partition,
                    reason: "damaged".into(),
                }],
                ..NodeLoad::default()
            }),
            ..NodeInfo::default()
        };
        // b1 reports partition 1; a stale report by a previous owner of
        // partition 0 and one from an expired lease do not count.
        let brokers = vec![
            broker("b1", 1000, 1),
            broker("b0", 1000, 0),
            broker("b1", -1, 0),
        ];
        assert_eq!(
            count_partitions(&routes, &reported_offline(&brokers)),
            PartitionCounts {
                partitions: 3,
                offline: 2
            }
        );
    }
}
