//! The metadata key layout (see ARCHITECTURE.md, "Metadata layout") and the
//! nameserver's own stored records, all prost-encoded.

use crate::error::NameServerError;
use sluice_proto::v1::NodeKind;

pub const NODES: &str = "nodes/";
/// Nodes whose session was ended for silence (`DownNode` values, no
/// lease): one key per node id, deleted when it registers again or by
/// `ClusterStatus` once older than the report window.
pub const DOWN_NODES: &str = "down-nodes/";
pub const TOPICS: &str = "topics/";
pub const PARTITIONS: &str = "partitions/";
pub const SEGMENTS: &str = "segments/";
/// Compaction's placed segments and replaced ones awaiting the deletion
/// of their copies (ADR 0016 §8).
pub const COMPACTIONS: &str = "compactions/";
pub const GROUPS: &str = "groups/";
pub const SUBSCRIPTIONS: &str = "subscriptions/";
pub const SUBSCRIPTION_GUARDS: &str = "subscription-guards/";
pub const ACLS: &str = "acls/";
pub const SEGMENT_ID_COUNTER: &str = "counters/segment_id";
pub const PRODUCER_ID_COUNTER: &str = "counters/producer_id";
/// The 32-byte key binding producer ids to principals (ADR 0015): written
/// once, never logged.
pub const PRODUCER_ID_KEY: &str = "secrets/producer_id_key";

/// Owner of a partition: written only by the reconciler, with a CAS on the
/// key's mod revision. An empty `broker_id` means "never assigned".
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PartitionOwner {
    #[prost(string, tag = "1")]
    pub broker_id: String,
    /// The broker's session (lease id) when it was given the partition.
    #[prost(uint64, tag = "2")]
    pub broker_session: u64,
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
}

/// Value of `counters/segment_id`: the next id to hand out.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SegmentIdCounter {
    #[prost(uint64, tag = "1")]
    pub next_segment_id: u64,
}

/// Value of `counters/producer_id`: the next idempotent-producer id to hand
/// out. Ids are never reused, so a broker never mistakes a new producer's
/// batches for an old one's.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ProducerIdCounter {
    #[prost(uint64, tag = "1")]
    pub next_producer_id: u64,
}

pub fn kind_segment(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Broker => "broker",
        NodeKind::Store => "store",
        NodeKind::Nameserver => "nameserver",
        NodeKind::Unspecified => "unspecified",
    }
}

pub fn nodes_of_kind(kind: NodeKind) -> String {
    format!("{NODES}{}/", kind_segment(kind))
}

pub fn node(kind: NodeKind, node_id: &str) -> String {
    format!("{NODES}{}/{node_id}", kind_segment(kind))
}

pub fn down_node(kind: NodeKind, node_id: &str) -> String {
    format!("{DOWN_NODES}{}/{node_id}", kind_segment(kind))
}

pub fn topic(topic: &str) -> String {
    format!("{TOPICS}{topic}")
}

pub fn partitions_of(topic: &str) -> String {
    format!("{PARTITIONS}{topic}/")
}

pub fn partition(topic: &str, partition: u32) -> String {
    format!("{PARTITIONS}{topic}/{partition:05}")
}

pub fn segments_of_topic(topic: &str) -> String {
    format!("{SEGMENTS}{topic}/")
}

pub fn segments_of(topic: &str, partition: u32) -> String {
    format!("{SEGMENTS}{topic}/{partition:05}/")
}

pub fn segment(topic: &str, partition: u32, segment_id: u64) -> String {
    format!("{SEGMENTS}{topic}/{partition:05}/{segment_id:020}")
}

pub fn compactions_of_topic(topic: &str) -> String {
    format!("{COMPACTIONS}{topic}/")
}

/// Every compaction record of a partition (placed and replaced).
pub fn compactions_of(topic: &str, partition: u32) -> String {
    format!("{COMPACTIONS}{topic}/{partition:05}/")
}

/// A segment placed by a compaction pass, not yet swapped in.
pub fn compaction(topic: &str, partition: u32, segment_id: u64) -> String {
    format!("{COMPACTIONS}{topic}/{partition:05}/{segment_id:020}")
}

/// A segment a swap replaced; its copies are deleted after the delay.
pub fn compaction_deleted(topic: &str, partition: u32, segment_id: u64) -> String {
    format!("{COMPACTIONS}{topic}/{partition:05}/deleted/{segment_id:020}")
}

/// Key of an ACL binding: its canonical text, hex-encoded (no `/`).
pub fn acl(binding: &sluice_acl::AclBinding) -> String {
    let canonical = sluice_acl::canonical(binding);
    let mut key = String::with_capacity(ACLS.len() + canonical.len() * 2);
    key.push_str(ACLS);
    for byte in canonical.bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

pub fn group(group: &str) -> String {
    format!("{GROUPS}{group}")
}

/// Prefix of every subscription of `topic` (`subscriptions/{topic}/`).
pub fn subscriptions_of(topic: &str) -> String {
    format!("{SUBSCRIPTIONS}{topic}/")
}

/// Prefix of the subscription guard of `topic`
/// (`subscription-guards/{topic}/`), deleted with the topic.
pub fn subscription_guard_of(topic: &str) -> String {
    format!("{SUBSCRIPTION_GUARDS}{topic}/")
}

/// The key every subscription creation on `topic` rewrites, conditional on
/// its revision, in the transaction that writes the subscription: of two
/// creations that counted the same subscriptions, one commits and the
/// other counts again, so the per-topic limit holds exactly. Its value is
/// the count after the last creation (informational).
pub fn subscription_guard(topic: &str) -> String {
    format!("{}guard", subscription_guard_of(topic))
}

/// Key of one subscription definition (a prost-encoded `Subscription`).
pub fn subscription(topic: &str, name: &str) -> String {
    format!("{SUBSCRIPTIONS}{topic}/{name}")
}

/// Parses `partitions/{topic}/{partition:05}` back into its parts.
pub fn parse_partition(key: &str) -> Option<(String, u32)> {
    let rest = key.strip_prefix(PARTITIONS)?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some((topic.to_string(), partition.parse().ok()?))
}

/// Decodes a stored value; garbage is logged and reported, never a panic.
pub fn decode<T: prost::Message + Default>(key: &str, value: &[u8]) -> Result<T, NameServerError> {
    T::decode(value).map_err(|error| {
        tracing::error!(key, %error, "undecodable metadata value");
        NameServerError::CorruptValue {
            key: key.to_string(),
            reason: error.to_string(),
        }
    })
}

pub fn encode<T: prost::Message>(message: &T) -> Vec<u8> {
    message.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_round_trip() {
        let key = partition("orders", 7);
        assert_eq!(key, "partitions/orders/00007");
        assert_eq!(parse_partition(&key), Some(("orders".to_string(), 7)));
        assert_eq!(parse_partition("partitions/x"), None);
        assert_eq!(segment("t", 1, 42), "segments/t/00001/00000000000000000042");
        assert_eq!(
            subscription("orders", "billing"),
            "subscriptions/orders/billing"
        );
        // The trailing slash keeps topic "orders" from listing "orders-eu"'s.
        assert!(!subscription("orders-eu", "x").starts_with(&subscriptions_of("orders")));
    }

    #[test]
    fn garbage_values_are_errors() {
        let result: Result<PartitionOwner, _> = decode("k", &[0xff, 0xff, 0xff]);
        assert!(result.is_err());
    }
}
