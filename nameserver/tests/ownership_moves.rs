//! Ownership moves over gRPC against a real etcd: a broker whose lease
//! expires loses its partitions to the others with a higher epoch (only the
//! moved ones), and a restarted broker gets partitions back with a new one.

mod common;

use common::requests::{create_segment_request, heartbeat_request, owned_partitions, routes_of};
use common::{code, eventually, Client, Fixture};
use sluice_proto::v1::{DeregisterNodeRequest, GetRoutesRequest, NodeKind, WatchRoutesRequest};
use sluice_proto::ErrorCode;
use std::collections::HashMap;

#[tokio::test]
async fn expired_broker_partitions_move_with_higher_epoch() {
    let mut cluster = Fixture::new()
        .store("store-1")
        .broker("broker-a")
        .broker("broker-b")
        .topic("events", 4)
        .build()
        .await;
    let mut client = cluster.client();
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

    let before = balanced_over_both_brokers(&client).await;
    let a_partition = before
        .iter()
        .find(|(_, (id, _))| id == "broker-a")
        .map(|(partition, (_, epoch))| (*partition, *epoch))
        .expect("broker-a owns a partition");

    // broker-a stops heartbeating; its lease expires.
    let session_a = cluster.stop_heartbeating("broker-a");
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
    only_moved_partitions_get_a_new_epoch(&before, &after);
    owned_partitions(&cluster, "broker-b", "events", 4).await;
    the_old_session_is_gone_and_fenced(&mut client, session_a, a_partition).await;
    the_watch_saw_the_move(&mut watch).await;

    // broker-a restarts (new session): it gets partitions back, with new epochs.
    let session_a2 = cluster.start_broker("broker-a").await.session_id;
    assert_ne!(session_a2, session_a);
    // Balancing gives it three of the six partitions back.
    eventually("restarted broker-a gets three partitions", || {
        let owned = cluster.node("broker-a").assignments.borrow().len();
        async move { (owned == 3).then_some(()) }
    })
    .await;
    let regained = cluster.node("broker-a").assignments_of("events");
    assert!(
        !regained.is_empty(),
        "balancing moves events partitions too"
    );
    for assignment in regained {
        let (_, epoch_after_failover) = &after[assignment.partition as usize];
        assert!(assignment.epoch > *epoch_after_failover);
    }
    cluster.stop().await;
}

/// Waits until the partitions are balanced over both brokers, counting the
/// two offsets partitions too (3 each); whichever way the reconciler got
/// there, broker-a holds at least one `events` partition. Returns the
/// routes of `events` by partition.
async fn balanced_over_both_brokers(client: &Client) -> HashMap<u32, (String, u64)> {
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
    .await
}

fn only_moved_partitions_get_a_new_epoch(
    before: &HashMap<u32, (String, u64)>,
    after: &[(String, u64)],
) {
    for (partition, (owner, epoch)) in before {
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
}

async fn the_old_session_is_gone_and_fenced(
    client: &mut Client,
    session_a: u64,
    (partition, epoch): (u32, u64),
) {
    let expired = client
        .heartbeat(heartbeat_request(NodeKind::Broker, "broker-a", session_a))
        .await
        .expect_err("expired session");
    assert_eq!(code(&expired), ErrorCode::SessionExpired);
    let fenced = client
        .create_segment(create_segment_request("events", partition, epoch, 0))
        .await
        .expect_err("old owner is fenced");
    assert_eq!(code(&fenced), ErrorCode::Fenced);
}

async fn the_watch_saw_the_move(watch: &mut tonic::Streaming<sluice_proto::v1::GetRoutesResponse>) {
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
}

#[tokio::test]
async fn restarted_broker_gets_its_partitions_with_a_new_epoch() {
    let mut cluster = Fixture::new()
        .store("store-1")
        .broker("broker-1")
        .topic("t", 1)
        .build()
        .await;
    let mut client = cluster.client();
    let before = eventually("broker-1 owns t/0", || {
        let owned = cluster.node("broker-1").assignments_of("t");
        async move { owned.first().map(|assignment| assignment.epoch) }
    })
    .await;
    let first_session = cluster.stop_heartbeating("broker-1");
    // Registering again replaces (and revokes) the old session at once.
    let second_session = cluster.register(NodeKind::Broker, "broker-1").await;
    let old = client
        .heartbeat(heartbeat_request(
            NodeKind::Broker,
            "broker-1",
            first_session,
        ))
        .await
        .expect_err("old session revoked");
    assert_eq!(code(&old), ErrorCode::SessionExpired);
    cluster.heartbeat(NodeKind::Broker, "broker-1", second_session);
    let after = eventually("new session of broker-1 owns t/0", || {
        let owned = cluster.node("broker-1").assignments_of("t");
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
    cluster.stop().await;
}
