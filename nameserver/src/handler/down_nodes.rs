//! Nodes that went down (issue 15): when a nameserver ends a session for
//! silence it records the node under `down-nodes/` (no lease) in the same
//! transaction that deletes the node key, so `ClusterStatus` can name it
//! with how long it has been down instead of just dropping it. A node
//! that registers again, or deregisters (a clean stop), has no record; a
//! record older than [`DOWN_NODE_REPORT_MS`] is no longer reported and is
//! deleted by the next `ClusterStatus`.
//!
//! Not covered: a node whose lease ran out while no nameserver watched
//! its session (every nameserver down longer than `lease_ttl_ms`).

use super::NameServerHandler;
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::Put;
use sluice_proto::v1::{DownNode, NodeInfo, NodeKind};

/// How long a down node stays in `ClusterStatus` (1 hour): long enough
/// for an operator to notice, short enough that records of retired node
/// ids do not pile up.
pub const DOWN_NODE_REPORT_MS: i64 = 3_600_000;

/// The record of `info`'s session ended at `now_unix_ms` after
/// `timeout_ms` of silence, and the put that stores it.
pub(super) fn down_node_put(info: &NodeInfo, now_unix_ms: i64, timeout_ms: u64) -> Put {
    let kind = NodeKind::try_from(info.kind).unwrap_or(NodeKind::Unspecified);
    let record = DownNode {
        kind: info.kind,
        node_id: info.node_id.clone(),
        address: info.address.clone(),
        down_since_unix_ms: now_unix_ms,
        reason: format!("no heartbeat for {timeout_ms} ms; session ended"),
    };
    Put {
        key: keys::down_node(kind, &info.node_id),
        value: keys::encode(&record),
        lease: None,
    }
}

/// Splits stored records into those to report (newest first) and the
/// keys of those older than the report window. A record stamped in the
/// future (clock skew between nameservers) is reported.
pub(super) fn split_down_nodes(
    records: Vec<(String, DownNode)>,
    now_unix_ms: i64,
    report_ms: i64,
) -> (Vec<DownNode>, Vec<String>) {
    let mut report = Vec::new();
    let mut stale = Vec::new();
    for (key, record) in records {
        if now_unix_ms.saturating_sub(record.down_since_unix_ms) > report_ms {
            stale.push(key);
        } else {
            report.push(record);
        }
    }
    report.sort_by(|left, right| {
        right
            .down_since_unix_ms
            .cmp(&left.down_since_unix_ms)
            .then_with(|| left.node_id.cmp(&right.node_id))
    });
    (report, stale)
}

/// The down records of nodes not among `live` (read after them: a node
/// listed live registered again, or its record is from before a restart
/// whose registration has not deleted it yet).
pub(super) fn not_live(down: Vec<DownNode>, live: [&Vec<NodeInfo>; 3]) -> Vec<DownNode> {
    down.into_iter()
        .filter(|record| {
            !live
                .iter()
                .flat_map(|nodes| nodes.iter())
                .any(|node| node.kind == record.kind && node.node_id == record.node_id)
        })
        .collect()
}

impl NameServerHandler {
    /// The down nodes to report; deletes records past the window (best
    /// effort: a failed delete is retried by the next status).
    pub(super) async fn down_nodes(
        &self,
        now_unix_ms: i64,
    ) -> Result<Vec<DownNode>, NameServerError> {
        let mut records = Vec::new();
        for entry in self.store.range(keys::DOWN_NODES).await? {
            match keys::decode::<DownNode>(&entry.key, &entry.value) {
                Ok(record) => records.push((entry.key, record)),
                Err(_) => continue,
            }
        }
        let (report, stale) = split_down_nodes(records, now_unix_ms, DOWN_NODE_REPORT_MS);
        for key in stale {
            if let Err(error) = self.store.delete(&key).await {
                tracing::debug!(%error, key, "could not delete an old down-node record");
            }
        }
        Ok(report)
    }

    /// The node registered again: it is no longer down.
    pub(super) async fn forget_down_node(&self, kind: NodeKind, node_id: &str) {
        let key = keys::down_node(kind, node_id);
        if let Err(error) = self.store.delete(&key).await {
            tracing::warn!(%error, key, "could not delete the down-node record of a registered node");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node_id: &str, down_since_unix_ms: i64) -> (String, DownNode) {
        (
            keys::down_node(NodeKind::Broker, node_id),
            DownNode {
                kind: NodeKind::Broker as i32,
                node_id: node_id.into(),
                down_since_unix_ms,
                ..DownNode::default()
            },
        )
    }

    #[test]
    fn records_inside_the_window_are_reported_newest_first_and_older_ones_deleted() {
        let now = 10_000_000;
        let (report, stale) = split_down_nodes(
            vec![
                record("old", now - DOWN_NODE_REPORT_MS - 1),
                record("a", now - 5_000),
                record("edge", now - DOWN_NODE_REPORT_MS),
                record("b", now - 1_000),
                record("skewed", now + 2_000),
            ],
            now,
            DOWN_NODE_REPORT_MS,
        );
        let ids: Vec<&str> = report.iter().map(|node| node.node_id.as_str()).collect();
        assert_eq!(ids, ["skewed", "b", "a", "edge"]);
        assert_eq!(stale, [keys::down_node(NodeKind::Broker, "old")]);
    }

    #[test]
    fn a_node_read_live_after_its_down_record_is_not_reported_down() {
        let down = vec![record("b1", 5).1, record("b2", 5).1];
        let live_broker = NodeInfo {
            kind: NodeKind::Broker as i32,
            node_id: "b2".into(),
            ..NodeInfo::default()
        };
        // A store of the same id is another node.
        let store = NodeInfo {
            kind: NodeKind::Store as i32,
            node_id: "b1".into(),
            ..NodeInfo::default()
        };
        let left = not_live(down, [&vec![], &vec![live_broker], &vec![store]]);
        let ids: Vec<&str> = left.iter().map(|node| node.node_id.as_str()).collect();
        assert_eq!(ids, ["b1"]);
    }

    #[test]
    fn the_record_names_the_node_its_address_and_why() {
        let info = NodeInfo {
            kind: NodeKind::Store as i32,
            node_id: "store-2".into(),
            address: "http://10.0.0.2:7402".into(),
            ..NodeInfo::default()
        };
        let put = down_node_put(&info, 42, 6_000);
        assert_eq!(put.key, "down-nodes/store/store-2");
        assert!(
            put.lease.is_none(),
            "a down record must outlive the session"
        );
        let record: DownNode = keys::decode(&put.key, &put.value).expect("decodes");
        assert_eq!(record.node_id, "store-2");
        assert_eq!(record.address, "http://10.0.0.2:7402");
        assert_eq!(record.down_since_unix_ms, 42);
        assert!(record.reason.contains("6000 ms"), "{}", record.reason);
    }
}
