//! The nameserver over gRPC, in-process, against a real etcd spawned per
//! test (and one run against the embedded store).

mod common;

use common::etcd::Etcd;
use common::{code, eventually, register, test_config, Heartbeater, RunningNameServer};
use sluice_nameserver::metadata::EmbeddedMetadataStore;
use sluice_proto::v1::{
    CloseSegmentRequest, ClusterStatusRequest, CreateSegmentRequest, CreateTopicRequest,
    DeleteSegmentsRequest, DeleteTopicRequest, DeregisterNodeRequest, DescribeTopicRequest,
    FindCoordinatorRequest, GetRoutesRequest, HeartbeatRequest, ListGroupsRequest,
    ListSegmentsRequest, ListTopicsRequest, NodeKind, RegisterGroupRequest, RegisterNodeRequest,
    SegmentState, TopicConfig, WatchRoutesRequest,
};
use sluice_proto::ErrorCode;
use std::collections::HashMap;

fn topic_request(name: &str, partitions: u32) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_string(),
        config: Some(TopicConfig {
            partitions,
            ..TopicConfig::default()
        }),
    }
}

async fn routes_of(client: &mut common::Client, topic: &str) -> Vec<(String, u64)> {
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

#[tokio::test]
async fn topic_lifecycle_assignment_and_segments() {
    let etcd = Etcd::start();
    let nameserver = RunningNameServer::start(test_config(etcd.client_url(), "ns-1")).await;
    let mut client = nameserver.client().await;

    // No stores yet: a topic cannot be placed.
    let status = client
        .create_topic(topic_request("orders", 3))
        .await
        .expect_err("no live stores");
    assert_eq!(code(&status), ErrorCode::NotEnoughStores);

    let store_session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let _store = Heartbeater::start(client.clone(), NodeKind::Store, "store-1", store_session);
    let broker_session =
        register(&mut client, NodeKind::Broker, "broker-1", "127.0.0.1:7401").await;
    let broker = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-1", broker_session);

    let topic = client
        .create_topic(topic_request("orders", 3))
        .await
        .expect("create topic")
        .into_inner();
    let config = topic.config.expect("config filled");
    assert_eq!(config.retention_ms, 7 * 24 * 60 * 60 * 1000);
    assert_eq!(config.segment_bytes, 64 * 1024 * 1024);
    assert_eq!(
        (config.ensemble_size, config.write_quorum, config.ack_quorum),
        (1, 1, 1)
    );
    let again = client
        .create_topic(topic_request("orders", 3))
        .await
        .expect_err("duplicate");
    assert_eq!(code(&again), ErrorCode::TopicAlreadyExists);
    let too_wide = client
        .create_topic(CreateTopicRequest {
            name: "wide".to_string(),
            config: Some(TopicConfig {
                partitions: 1,
                ensemble_size: 2,
                write_quorum: 2,
                ..TopicConfig::default()
            }),
        })
        .await
        .expect_err("ensemble larger than live stores");
    assert_eq!(code(&too_wide), ErrorCode::NotEnoughStores);
    let striped = client
        .create_topic(CreateTopicRequest {
            name: "striped-2".to_string(),
            config: Some(TopicConfig {
                partitions: 1,
                ensemble_size: 3,
                write_quorum: 2,
                ..TopicConfig::default()
            }),
        })
        .await
        .expect_err("striping is refused with a clear error");
    assert_eq!(code(&striped), ErrorCode::InvalidArgument);
    assert!(
        striped.message().contains("not supported yet"),
        "{}",
        striped.message()
    );
    assert_eq!(code(&too_wide), ErrorCode::NotEnoughStores);

    // The broker's heartbeat lists all three partitions.
    let assignments = eventually("broker-1 owns orders/0..3", || {
        let owned = broker.assignments_of("orders");
        async move { (owned.len() == 3).then_some(owned) }
    })
    .await;
    assert!(assignments.iter().all(|assignment| assignment.epoch >= 1));
    assert!(assignments
        .iter()
        .all(|assignment| assignment.config.is_some()));
    let routes = routes_of(&mut client, "orders").await;
    assert!(
        routes.iter().all(|(broker_id, _)| broker_id == "broker-1"),
        "{routes:?}"
    );

    // Internal topic exists, hidden by default.
    let listed = client
        .list_topics(ListTopicsRequest {
            include_internal: false,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["orders"]
    );
    let all = client
        .list_topics(ListTopicsRequest {
            include_internal: true,
        })
        .await
        .expect("list")
        .into_inner();
    assert!(all
        .topics
        .iter()
        .any(|t| t.name == "__consumer_offsets" && t.internal));

    // Segments, epoch-checked.
    let epoch = assignments
        .iter()
        .find(|assignment| assignment.partition == 0)
        .expect("partition 0 assigned")
        .epoch;
    let first = client
        .create_segment(CreateSegmentRequest {
            topic: "orders".to_string(),
            partition: 0,
            epoch,
            base_offset: 0,
            exclude_store_ids: Vec::new(),
        })
        .await
        .expect("create segment")
        .into_inner();
    assert_eq!(first.state, SegmentState::Open as i32);
    assert_eq!(first.replicas.len(), 1);
    assert_eq!(first.replicas[0].store_id, "store-1");
    assert_eq!(first.replicas[0].address, "127.0.0.1:7402");
    for stale in [epoch - 1, epoch + 1] {
        let fenced = client
            .create_segment(CreateSegmentRequest {
                topic: "orders".to_string(),
                partition: 0,
                epoch: stale,
                base_offset: 0,
                exclude_store_ids: Vec::new(),
            })
            .await
            .expect_err("stale epoch");
        assert_eq!(code(&fenced), ErrorCode::Fenced, "epoch {stale}");
    }
    let closed = client
        .close_segment(CloseSegmentRequest {
            topic: "orders".to_string(),
            partition: 0,
            epoch,
            segment_id: first.segment_id,
            end_offset: 100,
            size_bytes: 4096,
            max_timestamp_ms: 1234,
        })
        .await
        .expect("close")
        .into_inner();
    assert_eq!(closed.state, SegmentState::Closed as i32);
    assert_eq!(closed.end_offset, 100);
    let second = client
        .create_segment(CreateSegmentRequest {
            topic: "orders".to_string(),
            partition: 0,
            epoch,
            base_offset: 100,
            exclude_store_ids: Vec::new(),
        })
        .await
        .expect("second segment")
        .into_inner();
    assert!(second.segment_id > first.segment_id);
    let listed = client
        .list_segments(ListSegmentsRequest {
            topic: "orders".to_string(),
            partition: 0,
        })
        .await
        .expect("list segments")
        .into_inner();
    let bases: Vec<u64> = listed.segments.iter().map(|s| s.base_offset).collect();
    assert_eq!(bases, [0, 100]);
    let described = client
        .describe_topic(DescribeTopicRequest {
            name: "orders".to_string(),
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.partitions.len(), 3);
    assert_eq!(described.partitions[0].segments.len(), 2);
    assert_eq!(
        described.partitions[0]
            .route
            .as_ref()
            .map(|r| r.broker_id.as_str()),
        Some("broker-1")
    );
    let unknown_segment = client
        .close_segment(CloseSegmentRequest {
            topic: "orders".to_string(),
            partition: 0,
            epoch,
            segment_id: 999_999,
            end_offset: 1,
            size_bytes: 1,
            max_timestamp_ms: 0,
        })
        .await
        .expect_err("unknown segment");
    assert_eq!(code(&unknown_segment), ErrorCode::UnknownSegment);
    let fenced_delete = client
        .delete_segments(DeleteSegmentsRequest {
            topic: "orders".to_string(),
            partition: 0,
            epoch: epoch + 7,
            segment_ids: vec![first.segment_id],
        })
        .await
        .expect_err("stale delete");
    assert_eq!(code(&fenced_delete), ErrorCode::Fenced);
    client
        .delete_segments(DeleteSegmentsRequest {
            topic: "orders".to_string(),
            partition: 0,
            epoch,
            segment_ids: vec![first.segment_id],
        })
        .await
        .expect("delete segment");
    let listed = client
        .list_segments(ListSegmentsRequest {
            topic: "orders".to_string(),
            partition: 0,
        })
        .await
        .expect("list segments")
        .into_inner();
    assert_eq!(listed.segments.len(), 1);
    assert_eq!(listed.segments[0].segment_id, second.segment_id);

    // Groups and coordinator.
    client
        .register_group(RegisterGroupRequest {
            group: "billing".to_string(),
        })
        .await
        .expect("register group");
    client
        .register_group(RegisterGroupRequest {
            group: "billing".to_string(),
        })
        .await
        .expect("register group again");
    let groups = client
        .list_groups(ListGroupsRequest {})
        .await
        .expect("list groups")
        .into_inner();
    assert_eq!(groups.groups.len(), 1);
    let coordinator = eventually("coordinator of billing is live", || {
        let mut client = client.clone();
        async move {
            let response = client
                .find_coordinator(FindCoordinatorRequest {
                    group: "billing".to_string(),
                })
                .await
                .ok()?
                .into_inner();
            (!response.broker_id.is_empty()).then_some(response)
        }
    })
    .await;
    assert_eq!(coordinator.broker_id, "broker-1");
    assert_eq!(coordinator.broker_address, "127.0.0.1:7401");
    assert_eq!(
        coordinator.offsets_partition,
        sluice_proto::partitioning::offsets_partition_for_group("billing", 2)
    );
    let bad_group = client
        .find_coordinator(FindCoordinatorRequest {
            group: "../etc".to_string(),
        })
        .await
        .expect_err("bad group");
    assert_eq!(code(&bad_group), ErrorCode::InvalidArgument);

    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.metadata_backend, "etcd");
    assert_eq!(status.brokers.len(), 1);
    assert_eq!(status.stores.len(), 1);
    assert_eq!(status.topics, 2);
    assert_eq!(status.partitions, 5);
    assert!(status.brokers[0].lease_remaining_ms > 0);

    // Delete: internal refused, ordinary topic gone with its segments.
    let internal = client
        .delete_topic(DeleteTopicRequest {
            name: "__consumer_offsets".to_string(),
        })
        .await
        .expect_err("internal topic");
    assert_eq!(code(&internal), ErrorCode::InvalidArgument);
    client
        .delete_topic(DeleteTopicRequest {
            name: "orders".to_string(),
        })
        .await
        .expect("delete topic");
    let gone = client
        .describe_topic(DescribeTopicRequest {
            name: "orders".to_string(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(code(&gone), ErrorCode::UnknownTopic);
    eventually("deleted topic leaves the broker's assignments", || {
        let owned = broker.assignments_of("orders");
        async move { owned.is_empty().then_some(()) }
    })
    .await;

    nameserver.stop().await;
}

#[tokio::test]
async fn expired_broker_partitions_move_with_higher_epoch() {
    let etcd = Etcd::start();
    let nameserver = RunningNameServer::start(test_config(etcd.client_url(), "ns-1")).await;
    let mut client = nameserver.client().await;
    let store_session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:17402").await;
    let _store = Heartbeater::start(client.clone(), NodeKind::Store, "store-1", store_session);
    let session_a = register(&mut client, NodeKind::Broker, "broker-a", "127.0.0.1:17401").await;
    let broker_a = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-a", session_a);
    let session_b = register(&mut client, NodeKind::Broker, "broker-b", "127.0.0.1:17411").await;
    let broker_b = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-b", session_b);
    client
        .create_topic(topic_request("events", 4))
        .await
        .expect("create topic");

    let mut watch = client
        .watch_routes(WatchRoutesRequest {
            topics: vec!["events".to_string()],
        })
        .await
        .expect("watch routes")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("watch stream")
        .expect("first routes");
    assert_eq!(first.topics[0].partitions.len(), 4);

    // Balanced over both brokers, counting the two offsets partitions too
    // (3 each); whichever way the reconciler got there, broker-a holds at
    // least one `events` partition.
    let before: HashMap<u32, (String, u64)> =
        eventually("partitions balanced over both brokers", || {
            let mut client = client.clone();
            async move {
                let response = client
                    .get_routes(GetRoutesRequest {
                        topics: vec!["events".to_string(), "__consumer_offsets".to_string()],
                    })
                    .await
                    .ok()?
                    .into_inner();
                let all: Vec<&str> = response
                    .topics
                    .iter()
                    .flat_map(|topic| {
                        topic
                            .partitions
                            .iter()
                            .map(|route| route.broker_id.as_str())
                    })
                    .collect();
                let on_a = all.iter().filter(|id| **id == "broker-a").count();
                let on_b = all.iter().filter(|id| **id == "broker-b").count();
                let routes = routes_of(&mut client, "events").await;
                let events_on_a = routes.iter().filter(|(id, _)| id == "broker-a").count();
                (on_a == 3 && on_b == 3 && events_on_a >= 1).then(|| {
                    routes
                        .into_iter()
                        .enumerate()
                        .map(|(partition, route)| (partition as u32, route))
                        .collect()
                })
            }
        })
        .await;
    let a_partition = before
        .iter()
        .find(|(_, (id, _))| id == "broker-a")
        .map(|(partition, (_, epoch))| (*partition, *epoch))
        .expect("broker-a owns a partition");

    // broker-a stops heartbeating; its lease expires.
    drop(broker_a);
    let after = eventually("all partitions on broker-b", || {
        let mut client = client.clone();
        async move {
            let routes = routes_of(&mut client, "events").await;
            routes
                .iter()
                .all(|(id, _)| id == "broker-b")
                .then_some(routes)
        }
    })
    .await;
    for (partition, (owner, epoch)) in &before {
        let (_, new_epoch) = &after[*partition as usize];
        if owner == "broker-a" {
            assert!(
                new_epoch > epoch,
                "partition {partition}: {epoch} -> {new_epoch}"
            );
        } else {
            assert_eq!(new_epoch, epoch, "partition {partition} should not move");
        }
    }
    eventually("broker-b's heartbeat lists all four", || {
        let owned = broker_b.assignments_of("events");
        async move { (owned.len() == 4).then_some(()) }
    })
    .await;

    // The old session is gone, and its epoch is fenced.
    let expired = client
        .heartbeat(HeartbeatRequest {
            kind: NodeKind::Broker as i32,
            node_id: "broker-a".to_string(),
            session_id: session_a,
            load: None,
        })
        .await
        .expect_err("expired session");
    assert_eq!(code(&expired), ErrorCode::SessionExpired);
    let fenced = client
        .create_segment(CreateSegmentRequest {
            topic: "events".to_string(),
            partition: a_partition.0,
            epoch: a_partition.1,
            base_offset: 0,
            exclude_store_ids: Vec::new(),
        })
        .await
        .expect_err("old owner is fenced");
    assert_eq!(code(&fenced), ErrorCode::Fenced);

    // The watch saw the move.
    let moved = tokio::time::timeout(
        std::time::Duration::from_millis(common::EVENTUALLY_TIMEOUT_MS),
        async {
            loop {
                let routes = watch
                    .message()
                    .await
                    .expect("watch stream")
                    .expect("watch stream stays open");
                if routes.topics[0]
                    .partitions
                    .iter()
                    .all(|route| route.broker_id == "broker-b")
                {
                    return routes;
                }
            }
        },
    )
    .await
    .expect("watch reports all partitions on broker-b");
    assert_eq!(moved.topics[0].partitions.len(), 4);

    // broker-a restarts (new session): it gets partitions back, with new epochs.
    let session_a2 = register(&mut client, NodeKind::Broker, "broker-a", "127.0.0.1:17401").await;
    assert_ne!(session_a2, session_a);
    let broker_a2 = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-a", session_a2);
    // Balancing gives it three of the six partitions back.
    eventually("restarted broker-a gets three partitions", || {
        let owned = broker_a2.assignments.borrow().len();
        async move { (owned == 3).then_some(()) }
    })
    .await;
    let regained = broker_a2.assignments_of("events");
    assert!(
        !regained.is_empty(),
        "balancing moves events partitions too"
    );
    for assignment in regained {
        let (_, epoch_after_failover) = &after[assignment.partition as usize];
        assert!(assignment.epoch > *epoch_after_failover);
    }
    nameserver.stop().await;
}

#[tokio::test]
async fn restarted_broker_gets_its_partitions_with_a_new_epoch() {
    let etcd = Etcd::start();
    let nameserver = RunningNameServer::start(test_config(etcd.client_url(), "ns-1")).await;
    let mut client = nameserver.client().await;
    let store_session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let _store = Heartbeater::start(client.clone(), NodeKind::Store, "store-1", store_session);
    let first_session = register(&mut client, NodeKind::Broker, "broker-1", "127.0.0.1:7401").await;
    let first = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-1", first_session);
    client
        .create_topic(topic_request("t", 1))
        .await
        .expect("create");
    let before = eventually("broker-1 owns t/0", || {
        let owned = first.assignments_of("t");
        async move { owned.first().map(|assignment| assignment.epoch) }
    })
    .await;
    drop(first);
    // Registering again replaces (and revokes) the old session at once.
    let second_session =
        register(&mut client, NodeKind::Broker, "broker-1", "127.0.0.1:7401").await;
    let old = client
        .heartbeat(HeartbeatRequest {
            kind: NodeKind::Broker as i32,
            node_id: "broker-1".to_string(),
            session_id: first_session,
            load: None,
        })
        .await
        .expect_err("old session revoked");
    assert_eq!(code(&old), ErrorCode::SessionExpired);
    let second = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-1", second_session);
    let after = eventually("new session of broker-1 owns t/0", || {
        let owned = second.assignments_of("t");
        async move { owned.first().map(|assignment| assignment.epoch) }
    })
    .await;
    assert!(after > before, "{before} -> {after}");

    // Deregistering ends the session.
    client
        .deregister_node(DeregisterNodeRequest {
            kind: NodeKind::Broker as i32,
            node_id: "broker-1".to_string(),
            session_id: second_session,
        })
        .await
        .expect("deregister");
    let routes = eventually("t/0 offline after deregistration", || {
        let mut client = client.clone();
        async move {
            let routes = routes_of(&mut client, "t").await;
            routes[0].0.is_empty().then_some(routes)
        }
    })
    .await;
    assert_eq!(routes[0].1, after);
    nameserver.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let etcd = Etcd::start();
    let nameserver = RunningNameServer::start(test_config(etcd.client_url(), "ns-1")).await;
    let mut client = nameserver.client().await;
    let store_session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let _store = Heartbeater::start(client.clone(), NodeKind::Store, "store-1", store_session);

    let overlong = "x".repeat(300);
    for name in ["../x", "", overlong.as_str(), "a\0b", "a/b", "__mine", ".."] {
        let status = client
            .create_topic(topic_request(name, 1))
            .await
            .expect_err("bad topic name");
        assert_eq!(code(&status), ErrorCode::InvalidArgument, "{name:?}");
        assert!(!status.message().is_empty());
    }
    for partitions in [0, sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC + 1] {
        let status = client
            .create_topic(topic_request("ok", partitions))
            .await
            .expect_err("bad partition count");
        assert_eq!(code(&status), ErrorCode::InvalidArgument, "{partitions}");
    }
    let bad_quorum = client
        .create_topic(CreateTopicRequest {
            name: "ok".to_string(),
            config: Some(TopicConfig {
                partitions: 1,
                ensemble_size: 1,
                write_quorum: 2,
                ack_quorum: 1,
                ..TopicConfig::default()
            }),
        })
        .await
        .expect_err("write quorum above ensemble");
    assert_eq!(code(&bad_quorum), ErrorCode::InvalidArgument);
    let bad_node = client
        .register_node(RegisterNodeRequest {
            kind: NodeKind::Broker as i32,
            node_id: "../b".to_string(),
            address: "127.0.0.1:1".to_string(),
            load: None,
            rack: String::new(),
        })
        .await
        .expect_err("bad node id");
    assert_eq!(code(&bad_node), ErrorCode::InvalidArgument);
    let bad_address = client
        .register_node(RegisterNodeRequest {
            kind: NodeKind::Broker as i32,
            node_id: "b".to_string(),
            address: "no port".to_string(),
            load: None,
            rack: String::new(),
        })
        .await
        .expect_err("bad address");
    assert_eq!(code(&bad_address), ErrorCode::InvalidArgument);

    let unknown = client
        .describe_topic(DescribeTopicRequest {
            name: "nope".to_string(),
        })
        .await
        .expect_err("unknown topic");
    assert_eq!(code(&unknown), ErrorCode::UnknownTopic);
    let unknown_segments = client
        .list_segments(ListSegmentsRequest {
            topic: "nope".to_string(),
            partition: 0,
        })
        .await
        .expect_err("unknown topic");
    assert_eq!(code(&unknown_segments), ErrorCode::UnknownTopic);
    let routes = client
        .get_routes(GetRoutesRequest {
            topics: vec!["nope".to_string()],
        })
        .await
        .expect("routes answer per topic")
        .into_inner();
    assert_eq!(routes.topics[0].error, ErrorCode::UnknownTopic as i32);
    let heartbeat = client
        .heartbeat(HeartbeatRequest {
            kind: NodeKind::Broker as i32,
            node_id: "ghost".to_string(),
            session_id: 12345,
            load: None,
        })
        .await
        .expect_err("unknown session");
    assert_eq!(code(&heartbeat), ErrorCode::SessionExpired);

    // Still serving.
    client
        .create_topic(topic_request("ok", 2))
        .await
        .expect("good topic");
    let unknown_partition = client
        .create_segment(CreateSegmentRequest {
            topic: "ok".to_string(),
            partition: 9,
            epoch: 1,
            base_offset: 0,
            exclude_store_ids: Vec::new(),
        })
        .await
        .expect_err("no partition 9");
    assert_eq!(code(&unknown_partition), ErrorCode::UnknownPartition);
    nameserver.stop().await;
}

#[tokio::test]
async fn two_nameservers_on_one_etcd_agree() {
    let etcd = Etcd::start();
    let first = RunningNameServer::start(test_config(etcd.client_url(), "ns-1")).await;
    let second = RunningNameServer::start(test_config(etcd.client_url(), "ns-2")).await;
    let mut one = first.client().await;
    let mut two = second.client().await;

    let store_session = register(&mut one, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let _store = Heartbeater::start(two.clone(), NodeKind::Store, "store-1", store_session);
    let session_a = register(&mut one, NodeKind::Broker, "broker-a", "127.0.0.1:7401").await;
    let _a = Heartbeater::start(two.clone(), NodeKind::Broker, "broker-a", session_a);
    let session_b = register(&mut two, NodeKind::Broker, "broker-b", "127.0.0.1:7411").await;
    let _b = Heartbeater::start(one.clone(), NodeKind::Broker, "broker-b", session_b);

    one.create_topic(topic_request("shared", 6))
        .await
        .expect("create via ns-1");
    let duplicate = two
        .create_topic(topic_request("shared", 6))
        .await
        .expect_err("exists via ns-2 too");
    assert_eq!(code(&duplicate), ErrorCode::TopicAlreadyExists);

    let routes = eventually(
        "both nameservers report the same, fully assigned routes",
        || {
            let mut one = one.clone();
            let mut two = two.clone();
            async move {
                let from_one = routes_of(&mut one, "shared").await;
                let from_two = routes_of(&mut two, "shared").await;
                // Balance is over all partitions (the offsets topic too), so
                // only full assignment and agreement are checked here.
                let assigned = from_one.iter().all(|(id, _)| !id.is_empty());
                (assigned && from_one == from_two).then_some(from_one)
            }
        },
    )
    .await;
    // Two reconcilers never hand out an epoch twice: one CAS wins per change.
    assert!(routes.iter().all(|(_, epoch)| *epoch >= 1));

    let coordinator_one = one
        .find_coordinator(FindCoordinatorRequest {
            group: "g".to_string(),
        })
        .await
        .expect("coordinator via ns-1")
        .into_inner();
    let coordinator_two = two
        .find_coordinator(FindCoordinatorRequest {
            group: "g".to_string(),
        })
        .await
        .expect("coordinator via ns-2")
        .into_inner();
    assert_eq!(coordinator_one, coordinator_two);

    let status = eventually("both nameservers registered", || {
        let mut two = two.clone();
        async move {
            let status = two
                .cluster_status(ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (status.nameservers.len() == 2).then_some(status)
        }
    })
    .await;
    let mut ids: Vec<&str> = status
        .nameservers
        .iter()
        .map(|n| n.node_id.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ns-1", "ns-2"]);
    assert_eq!(status.brokers.len(), 2);

    // Stopping ns-1 removes its registration; ns-2 keeps serving.
    first.stop().await;
    eventually("ns-1 deregistered", || {
        let mut two = two.clone();
        async move {
            let status = two
                .cluster_status(ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (status.nameservers.len() == 1).then_some(())
        }
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn runs_on_the_embedded_store() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open embedded store");
    let mut config = test_config("http://127.0.0.1:1", "ns-dev");
    config.metadata.backend = sluice_nameserver::MetadataBackend::Embedded;
    let nameserver = RunningNameServer::start_with_store(config.clone(), store).await;
    let mut client = nameserver.client().await;
    let store_session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let _store = Heartbeater::start(client.clone(), NodeKind::Store, "store-1", store_session);
    let broker_session =
        register(&mut client, NodeKind::Broker, "broker-1", "127.0.0.1:7401").await;
    let broker = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-1", broker_session);
    client
        .create_topic(topic_request("dev", 2))
        .await
        .expect("create");
    eventually("broker-1 owns dev/0..2", || {
        let owned = broker.assignments_of("dev");
        async move { (owned.len() == 2).then_some(()) }
    })
    .await;
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.metadata_backend, "embedded");
    nameserver.stop().await;

    // The topic survives a restart of the dev nameserver on the same directory.
    config.metadata.data_dir = Some(directory.path().to_path_buf());
    let restarted = RunningNameServer::start(config).await;
    let mut client = restarted.client().await;
    let topics = client
        .list_topics(ListTopicsRequest {
            include_internal: false,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(topics.topics.len(), 1);
    assert_eq!(topics.topics[0].name, "dev");
    restarted.stop().await;
}

#[tokio::test]
async fn survives_an_etcd_restart() {
    let mut etcd = common::RestartableEtcd::start();
    let nameserver = RunningNameServer::start(test_config(&etcd.client_url(), "ns-1")).await;
    let mut client = nameserver.client().await;
    let store_session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let _store = Heartbeater::start(client.clone(), NodeKind::Store, "store-1", store_session);
    client
        .create_topic(topic_request("durable", 1))
        .await
        .expect("create");

    etcd.stop();
    // A bounded, typed failure while etcd is down; the server stays up.
    let down = client
        .list_topics(ListTopicsRequest {
            include_internal: false,
        })
        .await
        .expect_err("etcd is down");
    assert_eq!(code(&down), ErrorCode::Unavailable, "{down:?}");

    etcd.resume();
    let topics = eventually("requests succeed again after etcd is back", || {
        let mut client = client.clone();
        async move {
            let response = client
                .list_topics(ListTopicsRequest {
                    include_internal: false,
                })
                .await
                .ok()?;
            Some(response.into_inner().topics)
        }
    })
    .await;
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].name, "durable");
    // Writes work again too.
    eventually("create after restart", || {
        let mut client = client.clone();
        async move {
            match client.create_topic(topic_request("after", 1)).await {
                Ok(_) => Some(()),
                Err(status) if code(&status) == ErrorCode::TopicAlreadyExists => Some(()),
                Err(_) => None,
            }
        }
    })
    .await;
    nameserver.stop().await;
}

#[tokio::test]
async fn heartbeat_load_is_written_at_most_once_per_interval() {
    let etcd = Etcd::start();
    let mut config = test_config(etcd.client_url(), "ns-1");
    // Long enough that the second report inside this test is never written.
    config.load_update_interval_ms = 3_600_000;
    let nameserver = RunningNameServer::start(config).await;
    let mut client = nameserver.client().await;
    let session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let report = |segments: u32| HeartbeatRequest {
        kind: NodeKind::Store as i32,
        node_id: "store-1".to_string(),
        session_id: session,
        load: Some(sluice_proto::v1::NodeLoad {
            segments,
            healthy: true,
            ..Default::default()
        }),
    };
    client.heartbeat(report(5)).await.expect("heartbeat");
    client.heartbeat(report(6)).await.expect("heartbeat");
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let load = status.stores[0].load.clone().expect("load recorded");
    assert_eq!(load.segments, 5);
    assert!(status.stores[0].lease_remaining_ms > 0);
    nameserver.stop().await;
}

#[tokio::test]
async fn wide_topics_and_recreated_topics() {
    let etcd = Etcd::start();
    let mut config = test_config(etcd.client_url(), "ns-1");
    // Forces the path where the reconciler creates the owner keys.
    config.max_transaction_operations = 4;
    let nameserver = RunningNameServer::start(config).await;
    let mut client = nameserver.client().await;
    let store_session = register(&mut client, NodeKind::Store, "store-1", "127.0.0.1:7402").await;
    let _store = Heartbeater::start(client.clone(), NodeKind::Store, "store-1", store_session);
    let session = register(&mut client, NodeKind::Broker, "broker-1", "127.0.0.1:7401").await;
    let broker = Heartbeater::start(client.clone(), NodeKind::Broker, "broker-1", session);

    client
        .create_topic(topic_request("wide", 10))
        .await
        .expect("create");
    let first = eventually("all ten partitions of wide assigned", || {
        let owned = broker.assignments_of("wide");
        async move { (owned.len() == 10).then_some(owned) }
    })
    .await;
    let first_max = first.iter().map(|a| a.epoch).max().expect("ten partitions");

    client
        .delete_topic(DeleteTopicRequest {
            name: "wide".to_string(),
        })
        .await
        .expect("delete");
    client
        .create_topic(topic_request("wide", 10))
        .await
        .expect("re-create");
    let second =
        eventually("re-created wide assigned again", || {
            let owned = broker.assignments_of("wide");
            async move {
                (owned.len() == 10 && owned.iter().all(|a| a.epoch > first_max)).then_some(owned)
            }
        })
        .await;
    // An owner of the old topic's epochs is fenced on the new one.
    let fenced = client
        .create_segment(CreateSegmentRequest {
            topic: "wide".to_string(),
            partition: first[0].partition,
            epoch: first[0].epoch,
            base_offset: 0,
            exclude_store_ids: Vec::new(),
        })
        .await
        .expect_err("old epoch");
    assert_eq!(code(&fenced), ErrorCode::Fenced);
    assert_eq!(second.len(), 10);
    nameserver.stop().await;
}
