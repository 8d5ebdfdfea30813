//! Which nodes are down. `ClusterStatus` lists only nodes whose lease is
//! alive; a node that stops heartbeating just disappears from it. The
//! console remembers the nodes it saw and reports those gone as down, with
//! since when, until they come back or [`DOWN_NODE_MEMORY_MS`] passed.
//! A pure state machine: time is passed in.

use std::collections::BTreeMap;

/// How long a node that disappeared is still reported as down.
pub const DOWN_NODE_MEMORY_MS: u64 = 3_600_000;
/// Most nodes remembered (live and down); the longest-gone are forgotten
/// first beyond it.
pub const MAX_REMEMBERED_NODES: usize = 1_024;

/// A node by kind ("broker", "store", "nameserver") and id.
pub type NodeKey = (String, String);

/// A node seen live once and missing from the latest status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownNode {
    pub kind: String,
    pub node_id: String,
    pub address: String,
    /// When it was last seen live (unix ms).
    pub last_seen_ms: u64,
}

#[derive(Debug, Clone)]
struct Seen {
    address: String,
    last_seen_ms: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NodeTracker {
    seen: BTreeMap<NodeKey, Seen>,
}

impl NodeTracker {
    /// Records the nodes live at `now_ms` (kind, id, address) and answers
    /// the remembered ones missing from them, longest gone first.
    pub fn observe(&mut self, live: &[(String, String, String)], now_ms: u64) -> Vec<DownNode> {
        for (kind, node_id, address) in live {
            self.seen.insert(
                (kind.clone(), node_id.clone()),
                Seen {
                    address: address.clone(),
                    last_seen_ms: now_ms,
                },
            );
        }
        self.seen
            .retain(|_, seen| now_ms.saturating_sub(seen.last_seen_ms) <= DOWN_NODE_MEMORY_MS);
        while self.seen.len() > MAX_REMEMBERED_NODES {
            let oldest = self
                .seen
                .iter()
                .min_by_key(|(_, seen)| seen.last_seen_ms)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(key) => self.seen.remove(&key),
                None => break,
            };
        }
        let mut down: Vec<DownNode> = self
            .seen
            .iter()
            .filter(|(_, seen)| seen.last_seen_ms < now_ms)
            .map(|((kind, node_id), seen)| DownNode {
                kind: kind.clone(),
                node_id: node_id.clone(),
                address: seen.address.clone(),
                last_seen_ms: seen.last_seen_ms,
            })
            .collect();
        down.sort_by_key(|node| node.last_seen_ms);
        down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: &str, id: &str) -> (String, String, String) {
        (kind.into(), id.into(), format!("{id}:1"))
    }

    #[test]
    fn a_node_that_disappears_is_down_until_it_returns() {
        let mut tracker = NodeTracker::default();
        let both = [node("broker", "b1"), node("broker", "b2")];
        assert!(tracker.observe(&both, 1_000).is_empty());
        let down = tracker.observe(&[node("broker", "b1")], 2_000);
        assert_eq!(
            down,
            vec![DownNode {
                kind: "broker".into(),
                node_id: "b2".into(),
                address: "b2:1".into(),
                last_seen_ms: 1_000
            }]
        );
        assert!(tracker.observe(&both, 3_000).is_empty());
    }

    #[test]
    fn the_same_id_of_another_kind_is_another_node() {
        let mut tracker = NodeTracker::default();
        tracker.observe(&[node("broker", "n1"), node("store", "n1")], 10);
        let down = tracker.observe(&[node("store", "n1")], 20);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].kind, "broker");
    }

    #[test]
    fn down_nodes_are_forgotten_after_the_memory() {
        let mut tracker = NodeTracker::default();
        tracker.observe(&[node("store", "s1")], 0);
        assert_eq!(tracker.observe(&[], DOWN_NODE_MEMORY_MS).len(), 1);
        assert!(tracker.observe(&[], DOWN_NODE_MEMORY_MS + 1).is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let mut tracker = NodeTracker::default();
        for index in 0..(MAX_REMEMBERED_NODES as u64 + 10) {
            tracker.observe(&[node("broker", &format!("b{index}"))], index + 1);
        }
        let down = tracker.observe(&[], MAX_REMEMBERED_NODES as u64 + 20);
        assert_eq!(down.len(), MAX_REMEMBERED_NODES);
        // The longest-gone were forgotten: b0..b9 are not reported.
        assert!(down.iter().all(|node| node.last_seen_ms > 10));
    }
}
