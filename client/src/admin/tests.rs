//! Admin against fake servers.

use super::*;
use crate::testing::{FakeBroker, FakeNameServer};

#[tokio::test]
async fn admin_fails_over_to_a_live_nameserver() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_address = format!("http://{}", dead.local_addr().expect("address"));
    drop(dead);
    let nameserver = FakeNameServer::default();
    let live_address = nameserver.start().await;
    let admin = Admin::connect(ClientConfig {
        bootstrap: vec![dead_address, live_address],
        connect_timeout_ms: 500,
        ..ClientConfig::default()
    })
    .await
    .expect("the second nameserver answers");
    let topic = admin
        .create_topic(
            "orders",
            v1::TopicConfig {
                partitions: 2,
                ..v1::TopicConfig::default()
            },
        )
        .await
        .expect("created");
    assert_eq!(topic.name, "orders");
    assert_eq!(nameserver.lock().created, vec!["orders".to_string()]);
    nameserver
        .lock()
        .routes
        .insert("orders".into(), vec!["a:1".into(), "b:2".into()]);
    let error = admin
        .create_topic("orders", v1::TopicConfig::default())
        .await
        .expect_err("exists");
    assert_eq!(error.code(), Some(ErrorCode::TopicAlreadyExists));
    let names: Vec<String> = admin
        .list_topics(false)
        .await
        .expect("listed")
        .into_iter()
        .map(|topic| topic.name)
        .collect();
    assert_eq!(names, vec!["orders".to_string()]);
    assert!(matches!(
        admin
            .create_topic("bad name!", v1::TopicConfig::default())
            .await,
        Err(ClientError::InvalidArgument(_))
    ));
}

/// A partition without an owner: a new "latest" subscription is not
/// created (its start there is unknown), an existing one is returned
/// without asking the owners.
#[tokio::test]
async fn a_latest_subscription_needs_every_partition_end_only_when_new() {
    let broker = FakeBroker::default();
    let broker_address = broker.start().await;
    let nameserver = FakeNameServer::default();
    nameserver
        .lock()
        .routes
        .insert("orders".into(), vec![broker_address, String::new()]);
    let existing = v1::Subscription {
        topic: "orders".to_string(),
        name: "existing".to_string(),
        ..v1::Subscription::default()
    };
    let stored = v1::Subscription {
        start_offsets: vec![3, 4],
        created_at_ms: 1,
        ..existing.clone()
    };
    nameserver.lock().subscriptions.insert(
        ("orders".to_string(), "existing".to_string()),
        stored.clone(),
    );
    let address = nameserver.start().await;
    let admin = Admin::connect(ClientConfig {
        bootstrap: vec![address],
        request_timeout_ms: 200,
        ..ClientConfig::default()
    })
    .await
    .expect("connect");
    let error = admin
        .create_subscription(v1::Subscription {
            name: "new".to_string(),
            ..existing.clone()
        })
        .await
        .expect_err("partition 1 has no owner");
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    assert!(error.to_string().contains("partition 1"), "{error}");
    assert!(!nameserver
        .lock()
        .subscriptions
        .contains_key(&("orders".to_string(), "new".to_string())));
    assert_eq!(
        admin.create_subscription(existing).await.expect("existing"),
        stored
    );
}

#[tokio::test]
async fn subscriptions_are_created_listed_and_deleted() {
    let broker = FakeBroker::default();
    let broker_address = broker.start().await;
    broker.lock().next_offset.insert(("orders".into(), 0), 5);
    broker.lock().next_offset.insert(("orders".into(), 1), 7);
    let nameserver = FakeNameServer::default();
    nameserver.lock().routes.insert(
        "orders".into(),
        vec![broker_address.clone(), broker_address.clone()],
    );
    let address = nameserver.start().await;
    let admin = Admin::connect(ClientConfig {
        bootstrap: vec![address],
        ..ClientConfig::default()
    })
    .await
    .expect("connect");
    let billing = v1::Subscription {
        topic: "orders".to_string(),
        name: "billing".to_string(),
        r#type: v1::SubscriptionType::Shared as i32,
        ..v1::Subscription::default()
    };
    let created = admin
        .create_subscription(billing.clone())
        .await
        .expect("created");
    assert_eq!(created.name, "billing");
    // "latest": where each partition ended when it was created.
    assert_eq!(created.start_offsets, [5, 7]);
    // The same settings return the stored record, whatever the ends
    // are now.
    broker.lock().next_offset.insert(("orders".into(), 0), 9);
    assert_eq!(
        admin
            .create_subscription(billing.clone())
            .await
            .expect("same settings"),
        created
    );
    let conflict = admin
        .create_subscription(v1::Subscription {
            r#type: v1::SubscriptionType::Exclusive as i32,
            ..billing.clone()
        })
        .await
        .expect_err("other settings");
    assert_eq!(conflict.code(), Some(ErrorCode::SubscriptionConflict));
    assert_eq!(
        admin
            .get_subscription("orders", "billing")
            .await
            .expect("get"),
        created
    );
    let names: Vec<String> = admin
        .list_subscriptions("orders")
        .await
        .expect("list")
        .into_iter()
        .map(|subscription| subscription.name)
        .collect();
    assert_eq!(names, ["billing"]);
    admin
        .delete_subscription("orders", "billing")
        .await
        .expect("delete");
    let missing = admin
        .get_subscription("orders", "billing")
        .await
        .expect_err("deleted");
    assert_eq!(missing.code(), Some(ErrorCode::UnknownSubscription));
    // Bad names are refused before any request.
    for (topic, name) in [("orders", "../x"), ("", "billing")] {
        let error = admin
            .create_subscription(v1::Subscription {
                topic: topic.to_string(),
                name: name.to_string(),
                ..billing.clone()
            })
            .await
            .expect_err("bad name");
        assert!(matches!(error, ClientError::InvalidArgument(_)), "{error}");
    }
}
