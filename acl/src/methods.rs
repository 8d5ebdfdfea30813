//! The one table of what every gRPC method needs: an operation on a
//! resource the request names. A server's authorisation layer looks a
//! method up here; a method with no entry is refused (and the test below
//! fails when the proto gains a method without an entry, or the table keeps
//! one the proto lost).
//!
//! Choices:
//! - Everything one service does to another needs `ClusterAction` on the
//!   cluster: every store RPC, registration and heartbeats, segment
//!   metadata writes, assignment watches, group registration (the lesson of
//!   Kafka CVE-2018-1288: a client posing as a broker).
//! - Admin actions need `Alter`, `Create` or `Delete` on their resource,
//!   never only `Read` (the lesson of Pulsar CVE-2024-29834).
//! - Reading segment metadata (`ListSegments`) is `Describe` of the topic:
//!   what it shows (epochs, stores) authorises nothing by itself.
//! - `Filtered` methods list things: any authenticated principal may call
//!   them, and the answer holds only what it may `Describe`.

use crate::model::Operation;

/// Where the resource a method acts on comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceSource {
    /// The cluster itself.
    Cluster,
    /// Every topic the request names.
    Topic,
    /// The consumer group the request names.
    Group,
    /// The subscription the request names, as `<topic>/<subscription>`.
    Subscription,
    /// The transactional id the request names (ADR 0016 §1).
    TransactionalId,
    /// A listing: allowed to any authenticated principal, answered with
    /// only the entries it may `Describe`.
    Filtered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodRule {
    /// The gRPC path, `/sluice.v1.<Service>/<Method>`.
    pub path: &'static str,
    pub operation: Operation,
    pub resource: ResourceSource,
}

const fn rule(path: &'static str, operation: Operation, resource: ResourceSource) -> MethodRule {
    MethodRule {
        path,
        operation,
        resource,
    }
}

use Operation::{Alter, ClusterAction, Create, Delete, Describe, IdempotentWrite, Read, Write};
use ResourceSource::{Cluster, Filtered, Group, Subscription, Topic, TransactionalId};

/// Every method of every Sluice service.
pub const METHOD_RULES: &[MethodRule] = &[
    // Nameserver: registration and sessions.
    rule("/sluice.v1.NameServer/RegisterNode", ClusterAction, Cluster),
    rule("/sluice.v1.NameServer/Heartbeat", ClusterAction, Cluster),
    rule(
        "/sluice.v1.NameServer/DeregisterNode",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.AssignmentWatch/WatchAssignments",
        ClusterAction,
        Cluster,
    ),
    // Nameserver: topics and routes.
    rule("/sluice.v1.NameServer/CreateTopic", Create, Topic),
    rule("/sluice.v1.NameServer/ListTopics", Describe, Filtered),
    rule("/sluice.v1.NameServer/DescribeTopic", Describe, Topic),
    rule("/sluice.v1.NameServer/DeleteTopic", Delete, Topic),
    rule("/sluice.v1.NameServer/AlterTopic", Alter, Topic),
    rule("/sluice.v1.NameServer/AddPartitions", Alter, Topic),
    rule("/sluice.v1.NameServer/GetRoutes", Describe, Topic),
    rule("/sluice.v1.NameServer/WatchRoutes", Describe, Topic),
    rule("/sluice.v1.NameServer/FindCoordinator", Describe, Group),
    // Nameserver: segment metadata.
    rule("/sluice.v1.NameServer/ListSegments", Describe, Topic),
    rule(
        "/sluice.v1.NameServer/CreateSegment",
        ClusterAction,
        Cluster,
    ),
    rule("/sluice.v1.NameServer/CloseSegment", ClusterAction, Cluster),
    rule(
        "/sluice.v1.NameServer/UpdateSegmentReplicas",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/DeleteSegments",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/PlaceCompactedSegment",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/ReplaceSegments",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/ListCompactions",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/ForgetCompactions",
        ClusterAction,
        Cluster,
    ),
    rule("/sluice.v1.NameServer/AcceptDataLoss", Alter, Topic),
    // Nameserver: groups, status, producer ids, subscriptions.
    rule(
        "/sluice.v1.NameServer/RegisterGroup",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/UnregisterGroup",
        ClusterAction,
        Cluster,
    ),
    rule("/sluice.v1.NameServer/ListGroups", Describe, Filtered),
    rule("/sluice.v1.NameServer/ClusterStatus", Describe, Cluster),
    rule(
        "/sluice.v1.NameServer/AllocateProducerId",
        IdempotentWrite,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/GetProducerIdKey",
        ClusterAction,
        Cluster,
    ),
    rule(
        "/sluice.v1.NameServer/CreateSubscription",
        Create,
        Subscription,
    ),
    rule(
        "/sluice.v1.NameServer/GetSubscription",
        Describe,
        Subscription,
    ),
    rule(
        "/sluice.v1.NameServer/ListSubscriptions",
        Describe,
        Filtered,
    ),
    rule(
        "/sluice.v1.NameServer/DeleteSubscription",
        Delete,
        Subscription,
    ),
    rule(
        "/sluice.v1.NameServer/UpdateSubscription",
        Alter,
        Subscription,
    ),
    // Nameserver: ACLs.
    rule("/sluice.v1.NameServer/CreateAcls", Alter, Cluster),
    rule("/sluice.v1.NameServer/ListAcls", Describe, Cluster),
    rule("/sluice.v1.NameServer/DeleteAcls", Alter, Cluster),
    // Broker.
    rule("/sluice.v1.Broker/Produce", Write, Topic),
    rule("/sluice.v1.Broker/Fetch", Read, Topic),
    rule("/sluice.v1.Broker/ListOffsets", Describe, Topic),
    rule("/sluice.v1.Broker/GroupHeartbeat", Read, Group),
    rule("/sluice.v1.Broker/CommitOffsets", Read, Group),
    rule("/sluice.v1.Broker/FetchOffsets", Describe, Group),
    rule("/sluice.v1.Broker/DescribeGroup", Describe, Group),
    rule("/sluice.v1.Broker/DeleteGroup", Delete, Group),
    rule("/sluice.v1.Broker/Subscribe", Read, Subscription),
    rule("/sluice.v1.Broker/SkipSubscription", Alter, Subscription),
    rule(
        "/sluice.v1.Broker/ResetSubscriptionCursor",
        Alter,
        Subscription,
    ),
    rule(
        "/sluice.v1.Broker/DescribeSubscription",
        Describe,
        Subscription,
    ),
    rule("/sluice.v1.Broker/GetMessage", Read, Topic),
    rule("/sluice.v1.Broker/FindMessages", Read, Topic),
    rule("/sluice.v1.Broker/ExplainMessage", Describe, Topic),
    // Transaction markers: from transaction coordinators (ADR 0016).
    rule("/sluice.v1.Broker/WriteTxnMarkers", ClusterAction, Cluster),
    // Transaction coordinator (ADR 0016 §1): `Write` on the id to use it,
    // `Describe` (filtered) to look, `Alter` to abort; partition owners
    // verifying a first write are brokers.
    rule("/sluice.v1.Broker/InitProducerId", Write, TransactionalId),
    rule("/sluice.v1.Broker/EndTransaction", Write, TransactionalId),
    rule(
        "/sluice.v1.Broker/AddTransactionParticipants",
        ClusterAction,
        Cluster,
    ),
    rule("/sluice.v1.Broker/ListTransactions", Describe, Filtered),
    rule(
        "/sluice.v1.Broker/DescribeTransaction",
        Describe,
        TransactionalId,
    ),
    rule("/sluice.v1.Broker/AbortTransaction", Alter, TransactionalId),
    // Store: only other services.
    rule("/sluice.v1.Store/CreateSegment", ClusterAction, Cluster),
    rule("/sluice.v1.Store/Append", ClusterAction, Cluster),
    rule("/sluice.v1.Store/Read", ClusterAction, Cluster),
    rule("/sluice.v1.Store/SealSegment", ClusterAction, Cluster),
    rule("/sluice.v1.Store/GetSegmentStatus", ClusterAction, Cluster),
    rule("/sluice.v1.Store/RecoveryAppend", ClusterAction, Cluster),
    rule("/sluice.v1.Store/DeleteSegment", ClusterAction, Cluster),
    rule("/sluice.v1.Store/FindOffset", ClusterAction, Cluster),
    rule("/sluice.v1.Store/ListSegments", ClusterAction, Cluster),
    rule("/sluice.v1.Store/FindInSegment", ClusterAction, Cluster),
];

/// The rule of a gRPC path; `None` means refuse.
pub fn method_rule(path: &str) -> Option<&'static MethodRule> {
    METHOD_RULES.iter().find(|rule| rule.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `/sluice.v1.<Service>/<Method>` of every rpc in the proto file.
    fn methods_in_proto() -> BTreeSet<String> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../proto/proto/sluice/v1/sluice.proto"
        );
        let text = std::fs::read_to_string(path).expect("the proto file is readable");
        assert!(text.contains("package sluice.v1;"), "the package moved");
        let mut service = None;
        let mut methods = BTreeSet::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or_default().trim();
                let service = service.as_deref().expect("an rpc inside a service");
                methods.insert(format!("/sluice.v1.{service}/{name}"));
            }
        }
        methods
    }

    #[test]
    fn every_method_of_the_proto_has_exactly_one_rule() {
        let in_proto = methods_in_proto();
        assert!(in_proto.len() > 40, "the parser found {in_proto:?}");
        let in_table: BTreeSet<String> = METHOD_RULES
            .iter()
            .map(|rule| rule.path.to_string())
            .collect();
        assert_eq!(
            in_table.len(),
            METHOD_RULES.len(),
            "a method is listed twice"
        );
        let missing: Vec<_> = in_proto.difference(&in_table).collect();
        assert!(
            missing.is_empty(),
            "methods without an authorisation rule: {missing:?}"
        );
        let stale: Vec<_> = in_table.difference(&in_proto).collect();
        assert!(
            stale.is_empty(),
            "rules for methods the proto no longer has: {stale:?}"
        );
    }

    #[test]
    fn services_talking_to_services_need_cluster_action() {
        for rule in METHOD_RULES {
            let internal = rule.path.starts_with("/sluice.v1.Store/")
                || rule.path.starts_with("/sluice.v1.AssignmentWatch/")
                || rule.path == "/sluice.v1.Broker/WriteTxnMarkers"
                || rule.path == "/sluice.v1.Broker/AddTransactionParticipants"
                || [
                    "RegisterNode",
                    "Heartbeat",
                    "DeregisterNode",
                    "CreateSegment",
                    "CloseSegment",
                    "UpdateSegmentReplicas",
                    "DeleteSegments",
                    "PlaceCompactedSegment",
                    "ReplaceSegments",
                    "ListCompactions",
                    "ForgetCompactions",
                    "RegisterGroup",
                    "UnregisterGroup",
                    "GetProducerIdKey",
                ]
                .iter()
                .any(|name| rule.path == format!("/sluice.v1.NameServer/{name}"));
            if internal {
                assert_eq!(
                    (rule.operation, rule.resource),
                    (ClusterAction, Cluster),
                    "{}",
                    rule.path
                );
            } else {
                assert_ne!(rule.operation, ClusterAction, "{}", rule.path);
            }
        }
        assert!(method_rule("/sluice.v1.Store/DeleteSegment").is_some());
        assert!(method_rule("/sluice.v1.Store/Nonexistent").is_none());
    }
}
