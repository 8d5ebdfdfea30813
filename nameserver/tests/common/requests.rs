//! Request builders and waits several nameserver test files use.

use super::{eventually, Client, Cluster};
use sluice_proto::v1::{
    CreateSegmentRequest, GetRoutesRequest, HeartbeatRequest, NodeKind, PartitionAssignment,
};

pub async fn routes_of(client: &mut Client, topic: &str) -> Vec<(String, u64)> {
    let response = client
        .get_routes(GetRoutesRequest {
            topics: vec![topic.to_string()],
        })
        .await
        .expect("get routes")
        .into_inner();
    response.topics[0]
        .partitions
        .iter()
        .map(|route| (route.broker_id.clone(), route.epoch))
        .collect()
}

pub fn create_segment_request(
    topic: &str,
    partition: u32,
    epoch: u64,
    base_offset: u64,
) -> CreateSegmentRequest {
    CreateSegmentRequest {
        topic: topic.to_string(),
        partition,
        epoch,
        base_offset,
        exclude_store_ids: Vec::new(),
    }
}

pub fn heartbeat_request(kind: NodeKind, node_id: &str, session_id: u64) -> HeartbeatRequest {
    HeartbeatRequest {
        kind: kind as i32,
        node_id: node_id.to_string(),
        session_id,
        load: None,
    }
}

/// Waits until `broker` owns `count` partitions of `topic`.
pub async fn owned_partitions(
    cluster: &Cluster,
    broker: &str,
    topic: &str,
    count: usize,
) -> Vec<PartitionAssignment> {
    eventually(
        &format!("{broker} owns {count} partitions of {topic}"),
        || {
            let owned = cluster.node(broker).assignments_of(topic);
            async move { (owned.len() == count).then_some(owned) }
        },
    )
    .await
}
