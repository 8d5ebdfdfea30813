//! The nameserver over gRPC, in-process, against a real etcd spawned per
//! test (and one run against the embedded store).

mod common;

use common::requests::{create_segment_request, heartbeat_request, owned_partitions, routes_of};
use common::{code, eventually, topic_request, Client, Cluster, Fixture};
use sluice_proto::v1::{
    CloseSegmentRequest, ClusterStatusRequest, CoordinatorKind, CreateTopicRequest,
    DeleteSegmentsRequest, DeleteTopicRequest, DescribeTopicRequest, FindCoordinatorRequest,
    GetRoutesRequest, HeartbeatRequest, ListGroupsRequest, ListSegmentsRequest, ListTopicsRequest,
    NodeKind, PartitionAssignment, RegisterGroupRequest, RegisterNodeRequest, SegmentInfo,
    SegmentState, TopicConfig,
};
use sluice_proto::ErrorCode;

fn close_segment_request(
    epoch: u64,
    segment_id: u64,
    end_offset: u64,
    size_bytes: u64,
    max_timestamp_ms: i64,
) -> CloseSegmentRequest {
    CloseSegmentRequest {
        topic: "orders".to_string(),
        partition: 0,
        epoch,
        segment_id,
        end_offset,
        size_bytes,
        max_timestamp_ms,
        ..CloseSegmentRequest::default()
    }
}

async fn list_topics(client: &mut Client, include_internal: bool) -> Vec<sluice_proto::v1::Topic> {
    client
        .list_topics(ListTopicsRequest { include_internal })
        .await
        .expect("list")
        .into_inner()
        .topics
}

async fn segments_of_orders_0(client: &mut Client) -> Vec<SegmentInfo> {
    client
        .list_segments(ListSegmentsRequest {
            topic: "orders".to_string(),
            partition: 0,
        })
        .await
        .expect("list segments")
        .into_inner()
        .segments
}

#[tokio::test]
async fn topic_lifecycle_assignment_and_segments() {
    let mut cluster = Fixture::new().build().await;
    let mut client = cluster.client();

    // No stores yet: a topic cannot be placed.
    let status = client
        .create_topic(topic_request("orders", 3))
        .await
        .expect_err("no live stores");
    assert_eq!(code(&status), ErrorCode::NotEnoughStores);

    cluster.start_store("store-1").await;
    cluster.start_broker("broker-1").await;
    topics_are_created_with_defaults_and_checked(&mut client).await;
    let assignments = owned_partitions(&cluster, "broker-1", "orders", 3).await;
    routes_and_listing_show_the_assignment(&mut client, &assignments).await;
    let epoch = assignments
        .iter()
        .find(|assignment| assignment.partition == 0)
        .expect("partition 0 assigned")
        .epoch;
    segments_are_epoch_checked(&cluster, &mut client, epoch).await;
    groups_find_their_coordinator(&cluster, &mut client).await;
    status_counts_nodes_topics_and_partitions(&mut client).await;
    deleted_topics_are_gone(&cluster, &mut client).await;
    cluster.stop().await;
}

/// Created with defaults filled; duplicates, ensembles wider than the live
/// stores and striping refused.
async fn topics_are_created_with_defaults_and_checked(client: &mut Client) {
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
}

/// The broker's heartbeat lists all three partitions with their configs,
/// routes name it, and the internal topic exists but is hidden by default.
async fn routes_and_listing_show_the_assignment(
    client: &mut Client,
    assignments: &[PartitionAssignment],
) {
    assert!(assignments.iter().all(|assignment| assignment.epoch >= 1));
    assert!(assignments
        .iter()
        .all(|assignment| assignment.config.is_some()));
    let routes = routes_of(client, "orders").await;
    assert!(
        routes.iter().all(|(broker_id, _)| broker_id == "broker-1"),
        "{routes:?}"
    );
    let listed = list_topics(client, false).await;
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["orders"]
    );
    let all = list_topics(client, true).await;
    assert!(all
        .iter()
        .any(|t| t.name == "__consumer_offsets" && t.internal));
    assert!(all
        .iter()
        .any(|t| t.name == "__transaction_state" && t.internal));
}

/// Segments of orders/0 created, closed, listed, described and deleted by
/// the owner at `epoch`; stale epochs and unknown segments refused.
async fn segments_are_epoch_checked(cluster: &Cluster, client: &mut Client, epoch: u64) {
    let first = client
        .create_segment(create_segment_request("orders", 0, epoch, 0))
        .await
        .expect("create segment")
        .into_inner();
    assert_eq!(first.state, SegmentState::Open as i32);
    assert_eq!(first.replicas.len(), 1);
    assert_eq!(first.replicas[0].store_id, "store-1");
    assert_eq!(first.replicas[0].address, cluster.address_of("store-1"));
    for stale in [epoch - 1, epoch + 1] {
        let fenced = client
            .create_segment(create_segment_request("orders", 0, stale, 0))
            .await
            .expect_err("stale epoch");
        assert_eq!(code(&fenced), ErrorCode::Fenced, "epoch {stale}");
    }
    let closed = client
        .close_segment(close_segment_request(
            epoch,
            first.segment_id,
            100,
            4096,
            1234,
        ))
        .await
        .expect("close")
        .into_inner();
    assert_eq!(closed.state, SegmentState::Closed as i32);
    assert_eq!(closed.end_offset, 100);
    let second = client
        .create_segment(create_segment_request("orders", 0, epoch, 100))
        .await
        .expect("second segment")
        .into_inner();
    assert!(second.segment_id > first.segment_id);
    let bases: Vec<u64> = segments_of_orders_0(client)
        .await
        .iter()
        .map(|s| s.base_offset)
        .collect();
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
        .close_segment(close_segment_request(epoch, 999_999, 1, 1, 0))
        .await
        .expect_err("unknown segment");
    assert_eq!(code(&unknown_segment), ErrorCode::UnknownSegment);
    segment_deletes_are_epoch_checked(client, epoch, first.segment_id).await;
    let listed = segments_of_orders_0(client).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].segment_id, second.segment_id);
}

async fn segment_deletes_are_epoch_checked(client: &mut Client, epoch: u64, segment_id: u64) {
    let delete = |epoch: u64| DeleteSegmentsRequest {
        topic: "orders".to_string(),
        partition: 0,
        epoch,
        segment_ids: vec![segment_id],
    };
    let fenced_delete = client
        .delete_segments(delete(epoch + 7))
        .await
        .expect_err("stale delete");
    assert_eq!(code(&fenced_delete), ErrorCode::Fenced);
    client
        .delete_segments(delete(epoch))
        .await
        .expect("delete segment");
}

/// Registering a group twice lists it once; its coordinator is the owner
/// of its offsets partition; bad group names are refused.
async fn groups_find_their_coordinator(cluster: &Cluster, client: &mut Client) {
    let register = || RegisterGroupRequest {
        group: "billing".to_string(),
    };
    client
        .register_group(register())
        .await
        .expect("register group");
    client
        .register_group(register())
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
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (!response.broker_id.is_empty()).then_some(response)
        }
    })
    .await;
    assert_eq!(coordinator.broker_id, "broker-1");
    assert_eq!(coordinator.broker_address, cluster.address_of("broker-1"));
    assert_eq!(
        coordinator.offsets_partition,
        sluice_proto::partitioning::offsets_partition_for_group("billing", 2)
    );
    let bad_group = client
        .find_coordinator(FindCoordinatorRequest {
            group: "../etc".to_string(),
            ..Default::default()
        })
        .await
        .expect_err("bad group");
    assert_eq!(code(&bad_group), ErrorCode::InvalidArgument);
    // Transaction coordinators live in __transaction_state (ADR 0016).
    let transactional = eventually("coordinator of copier-7 is live", || {
        let mut client = client.clone();
        async move {
            let response = client
                .find_coordinator(FindCoordinatorRequest {
                    kind: CoordinatorKind::Transaction as i32,
                    key: "copier-7".to_string(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (!response.broker_id.is_empty()).then_some(response)
        }
    })
    .await;
    assert_eq!(transactional.broker_id, "broker-1");
    assert_eq!(transactional.offsets_partition, 0, "one log partition");
    for (kind, key) in [
        (CoordinatorKind::Transaction as i32, "a b".to_string()),
        (CoordinatorKind::Transaction as i32, "x".repeat(250)),
        (CoordinatorKind::Transaction as i32, String::new()),
        (7, "copier-7".to_string()),
    ] {
        let refused = client
            .find_coordinator(FindCoordinatorRequest {
                kind,
                key: key.clone(),
                ..Default::default()
            })
            .await
            .expect_err("bad transactional lookup");
        assert_eq!(code(&refused), ErrorCode::InvalidArgument, "{kind} {key}");
    }
}

async fn status_counts_nodes_topics_and_partitions(client: &mut Client) {
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.metadata_backend, "etcd");
    assert_eq!(status.brokers.len(), 1);
    assert_eq!(status.stores.len(), 1);
    // events (3), __consumer_offsets (2), __transaction_state (1).
    assert_eq!(status.topics, 3);
    assert_eq!(status.partitions, 6);
    assert!(status.brokers[0].lease_remaining_ms > 0);
}

/// Internal topics cannot be deleted; an ordinary one goes with its
/// segments and leaves the broker's assignments.
async fn deleted_topics_are_gone(cluster: &Cluster, client: &mut Client) {
    let internal = client
        .delete_topic(DeleteTopicRequest {
            name: "__consumer_offsets".to_string(),
            ..DeleteTopicRequest::default()
        })
        .await
        .expect_err("internal topic");
    assert_eq!(code(&internal), ErrorCode::InvalidArgument);
    client
        .delete_topic(DeleteTopicRequest {
            name: "orders".to_string(),
            ..DeleteTopicRequest::default()
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
    owned_partitions(cluster, "broker-1", "orders", 0).await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let cluster = Fixture::new().store("store-1").build().await;
    let mut client = cluster.client();
    bad_topics_are_refused(&mut client).await;
    bad_registrations_are_refused(&mut client).await;
    unknown_names_are_reported(&mut client).await;

    // Still serving.
    client
        .create_topic(topic_request("ok", 2))
        .await
        .expect("good topic");
    let unknown_partition = client
        .create_segment(create_segment_request("ok", 9, 1, 0))
        .await
        .expect_err("no partition 9");
    assert_eq!(code(&unknown_partition), ErrorCode::UnknownPartition);
    cluster.stop().await;
}

async fn bad_topics_are_refused(client: &mut Client) {
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
}

async fn bad_registrations_are_refused(client: &mut Client) {
    let registration = |node_id: &str, address: &str| RegisterNodeRequest {
        kind: NodeKind::Broker as i32,
        node_id: node_id.to_string(),
        address: address.to_string(),
        load: None,
        rack: String::new(),
    };
    let bad_node = client
        .register_node(registration("../b", "127.0.0.1:1"))
        .await
        .expect_err("bad node id");
    assert_eq!(code(&bad_node), ErrorCode::InvalidArgument);
    let bad_address = client
        .register_node(registration("b", "no port"))
        .await
        .expect_err("bad address");
    assert_eq!(code(&bad_address), ErrorCode::InvalidArgument);
}

async fn unknown_names_are_reported(client: &mut Client) {
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
        .heartbeat(heartbeat_request(NodeKind::Broker, "ghost", 12345))
        .await
        .expect_err("unknown session");
    assert_eq!(code(&heartbeat), ErrorCode::SessionExpired);
}

#[tokio::test]
async fn two_nameservers_on_one_etcd_agree() {
    let mut cluster = Fixture::new()
        .nameservers(2)
        .store("store-1")
        .broker("broker-a")
        .broker("broker-b")
        .build()
        .await;
    let mut one = cluster.client_of("ns-1");
    let mut two = cluster.client_of("ns-2");

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

    let coordinator = |mut client: Client, via: &'static str| async move {
        client
            .find_coordinator(FindCoordinatorRequest {
                group: "g".to_string(),
                ..Default::default()
            })
            .await
            .expect(via)
            .into_inner()
    };
    // Balancing may move the offsets partition between the two lookups, so
    // they are asked again until both give the same answer.
    eventually("both nameservers name the same coordinator", || {
        let (one, two) = (one.clone(), two.clone());
        async move {
            let via_one = coordinator(one, "coordinator via ns-1").await;
            let via_two = coordinator(two, "coordinator via ns-2").await;
            (via_one == via_two).then_some(())
        }
    })
    .await;

    let status = registered_nameservers(&two, 2).await;
    let mut ids: Vec<&str> = status
        .nameservers
        .iter()
        .map(|n| n.node_id.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ns-1", "ns-2"]);
    assert_eq!(status.brokers.len(), 2);

    // Stopping ns-1 removes its registration; ns-2 keeps serving.
    cluster.stop_nameserver("ns-1").await;
    registered_nameservers(&two, 1).await;
    cluster.stop().await;
}

/// Waits until `count` nameservers are registered, as `client` sees it.
async fn registered_nameservers(
    client: &Client,
    count: usize,
) -> sluice_proto::v1::ClusterStatusResponse {
    eventually(&format!("{count} nameservers registered"), || {
        let mut client = client.clone();
        async move {
            let status = client
                .cluster_status(ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (status.nameservers.len() == count).then_some(status)
        }
    })
    .await
}

#[tokio::test]
async fn runs_on_the_embedded_store() {
    let mut cluster = Fixture::embedded()
        .store("store-1")
        .broker("broker-1")
        .topic("dev", 2)
        .build()
        .await;
    let mut client = cluster.client();
    owned_partitions(&cluster, "broker-1", "dev", 2).await;
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.metadata_backend, "embedded");

    // The topic survives a restart of the dev nameserver on the same directory.
    cluster.restart_on_the_same_directory().await;
    let topics = list_topics(&mut cluster.client(), false).await;
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].name, "dev");
    cluster.stop().await;
}

#[tokio::test]
async fn survives_an_etcd_restart() {
    let mut cluster = Fixture::restartable_etcd()
        .store("store-1")
        .topic("durable", 1)
        .build()
        .await;
    let mut client = cluster.client();

    cluster.stop_etcd();
    // A bounded, typed failure while etcd is down; the server stays up.
    let down = client
        .list_topics(ListTopicsRequest {
            include_internal: false,
        })
        .await
        .expect_err("etcd is down");
    assert_eq!(code(&down), ErrorCode::Unavailable, "{down:?}");

    cluster.resume_etcd();
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
    cluster.stop().await;
}

#[tokio::test]
async fn heartbeat_load_is_written_at_most_once_per_interval() {
    let mut cluster = Fixture::new()
        // Long enough that the second report inside this test is never written.
        .configure(|config| config.load_update_interval_ms = 3_600_000)
        .build()
        .await;
    let mut client = cluster.client();
    let session = cluster.register(NodeKind::Store, "store-1").await;
    let report = |segments: u32| HeartbeatRequest {
        load: Some(sluice_proto::v1::NodeLoad {
            segments,
            healthy: true,
            ..Default::default()
        }),
        ..heartbeat_request(NodeKind::Store, "store-1", session)
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
    cluster.stop().await;
}

#[tokio::test]
async fn wide_topics_and_recreated_topics() {
    let cluster = Fixture::new()
        // Forces the path where the reconciler creates the owner keys.
        .configure(|config| config.max_transaction_operations = 4)
        .store("store-1")
        .broker("broker-1")
        .topic("wide", 10)
        .build()
        .await;
    let mut client = cluster.client();
    let first = owned_partitions(&cluster, "broker-1", "wide", 10).await;
    let first_max = first.iter().map(|a| a.epoch).max().expect("ten partitions");

    client
        .delete_topic(DeleteTopicRequest {
            name: "wide".to_string(),
            ..DeleteTopicRequest::default()
        })
        .await
        .expect("delete");
    client
        .create_topic(topic_request("wide", 10))
        .await
        .expect("re-create");
    let second =
        eventually("re-created wide assigned again", || {
            let owned = cluster.node("broker-1").assignments_of("wide");
            async move {
                (owned.len() == 10 && owned.iter().all(|a| a.epoch > first_max)).then_some(owned)
            }
        })
        .await;
    // An owner of the old topic's epochs is fenced on the new one.
    let fenced = client
        .create_segment(create_segment_request(
            "wide",
            first[0].partition,
            first[0].epoch,
            0,
        ))
        .await
        .expect_err("old epoch");
    assert_eq!(code(&fenced), ErrorCode::Fenced);
    assert_eq!(second.len(), 10);
    cluster.stop().await;
}
