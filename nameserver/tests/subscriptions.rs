//! Subscription definitions over gRPC, in-process: the same scenario
//! against a real etcd (spawned per test) and against the embedded store,
//! plus the per-topic limit and two nameservers creating at once.

mod common;

use common::{code, topic_request, Client, Cluster, Fixture};
use sluice_nameserver::metadata::MetadataStore;
use sluice_nameserver::subscriptions::{
    DEFAULT_ACK_TIMEOUT_MS, DEFAULT_REDELIVERY_BACKOFF_INITIAL_MS,
    DEFAULT_REDELIVERY_BACKOFF_MAX_MS, LARGEST_MAX_DELIVERIES, MAX_ACK_TIMEOUT_MS,
    MAX_REDELIVERY_BACKOFF_MS,
};
use sluice_proto::limits::MAX_NAME_BYTES;
use sluice_proto::v1::{
    CreateSubscriptionRequest, DeleteSubscriptionRequest, DeleteTopicRequest, DescribeTopicRequest,
    GetSubscriptionRequest, InitialPosition, ListSubscriptionsRequest, SegmentInfo, SegmentState,
    SelectorKind, Subscription, SubscriptionType,
};
use sluice_proto::ErrorCode;
use std::sync::Arc;

fn subscription(topic: &str, name: &str, subscription_type: SubscriptionType) -> Subscription {
    Subscription {
        topic: topic.to_string(),
        name: name.to_string(),
        r#type: subscription_type as i32,
        ..Subscription::default()
    }
}

async fn create(
    client: &mut Client,
    subscription: Subscription,
) -> Result<Subscription, tonic::Status> {
    client
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(subscription),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(client: &mut Client, topic: &str, name: &str) -> Result<Subscription, tonic::Status> {
    client
        .get_subscription(GetSubscriptionRequest {
            topic: topic.to_string(),
            name: name.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list(client: &mut Client, topic: &str) -> Result<Vec<String>, tonic::Status> {
    client
        .list_subscriptions(ListSubscriptionsRequest {
            topic: topic.to_string(),
        })
        .await
        .map(|response| {
            response
                .into_inner()
                .subscriptions
                .into_iter()
                .map(|subscription| subscription.name)
                .collect()
        })
}

async fn delete(client: &mut Client, topic: &str, name: &str) -> Result<(), tonic::Status> {
    client
        .delete_subscription(DeleteSubscriptionRequest {
            topic: topic.to_string(),
            name: name.to_string(),
        })
        .await
        .map(|_| ())
}

async fn create_topic(client: &mut Client, name: &str, partitions: u32) {
    client
        .create_topic(topic_request(name, partitions))
        .await
        .unwrap_or_else(|status| panic!("create topic {name}: {status}"));
}

/// Partitions of `topic`, or `None` when it does not exist.
async fn partitions_of(client: &mut Client, topic: &str) -> Option<u32> {
    match client
        .describe_topic(DescribeTopicRequest {
            name: topic.to_string(),
        })
        .await
    {
        Ok(response) => Some(
            response
                .into_inner()
                .topic
                .and_then(|topic| topic.config)
                .map_or(0, |config| config.partitions),
        ),
        Err(status) if code(&status) == ErrorCode::UnknownTopic => None,
        Err(status) => panic!("describe {topic}: {status}"),
    }
}

fn expect_refused(
    what: &str,
    result: Result<Subscription, tonic::Status>,
    expected: ErrorCode,
    fragment: &str,
) -> String {
    let status = match result {
        Ok(subscription) => panic!("{what}: accepted {subscription:?}"),
        Err(status) => status,
    };
    assert_eq!(code(&status), expected, "{what}: {status}");
    assert!(
        status.message().contains(fragment),
        "{what}: {:?} does not mention {fragment:?}",
        status.message()
    );
    status.message().to_string()
}

/// A cluster on `fixture` with a store (topics have ensemble 1 in the test
/// config) and the topic `orders` of two partitions.
async fn with_orders(fixture: Fixture) -> Cluster {
    fixture.store("store-1").topic("orders", 2).build().await
}

/// The whole life of subscriptions on one backend, on the topic `orders`
/// of two partitions; `store` is the same metadata the nameserver uses,
/// to check what is (not) left behind.
async fn lifecycle(client: &mut Client, store: Arc<dyn MetadataStore>) {
    let billing = defaults_are_filled_on_creation(client).await;
    same_settings_return_the_stored_record(client, &billing).await;
    other_settings_conflict_naming_each_field(client).await;
    dead_letter_topics_are_created_or_reused(client).await;
    listing_is_by_topic(client).await;
    validation_errors(client).await;
    missing_ones_are_refused(client).await;
    deleted_subscriptions_can_be_created_afresh(client).await;
    deleting_the_topic_deletes_its_subscriptions(client, store.as_ref()).await;
}

/// Defaults are filled and the creation time is set.
async fn defaults_are_filled_on_creation(client: &mut Client) -> Subscription {
    let billing = create(
        client,
        subscription("orders", "billing", SubscriptionType::Shared),
    )
    .await
    .expect("create billing");
    assert_eq!(billing.topic, "orders");
    assert_eq!(billing.name, "billing");
    assert_eq!(billing.r#type, SubscriptionType::Shared as i32);
    assert_eq!(billing.selector_kind, SelectorKind::All as i32);
    assert_eq!(billing.initial_position, InitialPosition::Latest as i32);
    assert_eq!(billing.ack_timeout_ms, DEFAULT_ACK_TIMEOUT_MS);
    assert_eq!(billing.ack_timeout_ms, 30_000);
    assert_eq!(
        billing.redelivery_backoff_initial_ms,
        DEFAULT_REDELIVERY_BACKOFF_INITIAL_MS
    );
    assert_eq!(
        billing.redelivery_backoff_max_ms,
        DEFAULT_REDELIVERY_BACKOFF_MAX_MS
    );
    assert_eq!(billing.max_deliveries, 0);
    assert_eq!(billing.dead_letter_topic, "");
    assert!(billing.created_at_ms > 0);
    assert_eq!(
        get(client, "orders", "billing").await.expect("get"),
        billing
    );
    billing
}

/// Idempotent: the same settings (also spelled out instead of 0, and
/// whatever creation time the caller sends) return the stored record.
async fn same_settings_return_the_stored_record(client: &mut Client, billing: &Subscription) {
    let again = create(
        client,
        subscription("orders", "billing", SubscriptionType::Shared),
    )
    .await
    .expect("create billing again");
    assert_eq!(&again, billing);
    let explicit = Subscription {
        ack_timeout_ms: 30_000,
        redelivery_backoff_initial_ms: 1_000,
        redelivery_backoff_max_ms: 60_000,
        created_at_ms: 7,
        ..subscription("orders", "billing", SubscriptionType::Shared)
    };
    assert_eq!(
        create(client, explicit)
            .await
            .expect("defaults spelled out"),
        *billing
    );
}

/// Other settings: a conflict naming each differing field.
async fn other_settings_conflict_naming_each_field(client: &mut Client) {
    let message = expect_refused(
        "billing with other settings",
        create(
            client,
            Subscription {
                ack_timeout_ms: 5_000,
                ..subscription("orders", "billing", SubscriptionType::Exclusive)
            },
        )
        .await,
        ErrorCode::SubscriptionConflict,
        "ack_timeout_ms (stored 30000, requested 5000)",
    );
    assert!(
        message.contains(
            "type (stored SUBSCRIPTION_TYPE_SHARED, requested SUBSCRIPTION_TYPE_EXCLUSIVE)"
        ),
        "{message}"
    );
    assert!(!message.contains("selector"), "{message}");
}

/// Dead letters: the default topic is created with one partition.
async fn dead_letter_topics_are_created_or_reused(client: &mut Client) {
    assert_eq!(partitions_of(client, "orders-audit-DLQ").await, None);
    let audit = create(
        client,
        Subscription {
            selector_kind: SelectorKind::Sql as i32,
            selector: "region = 'eu' AND amount > 100".to_string(),
            initial_position: InitialPosition::Earliest as i32,
            max_deliveries: 5,
            ..subscription("orders", "audit", SubscriptionType::KeyShared)
        },
    )
    .await
    .expect("create audit");
    assert_eq!(audit.dead_letter_topic, "orders-audit-DLQ");
    assert_eq!(audit.selector, "region = 'eu' AND amount > 100");
    assert_eq!(partitions_of(client, "orders-audit-DLQ").await, Some(1));
    // An explicitly named one that does not exist is created the same way.
    let tagged = create(
        client,
        Subscription {
            selector_kind: SelectorKind::Tag as i32,
            selector: "red || blue".to_string(),
            max_deliveries: 3,
            dead_letter_topic: "orders-parked".to_string(),
            ack_timeout_ms: 2_000,
            redelivery_backoff_initial_ms: 10,
            redelivery_backoff_max_ms: 20,
            ..subscription("orders", "tagged", SubscriptionType::Failover)
        },
    )
    .await
    .expect("create tagged");
    assert_eq!(tagged.dead_letter_topic, "orders-parked");
    assert_eq!(
        (
            tagged.ack_timeout_ms,
            tagged.redelivery_backoff_initial_ms,
            tagged.redelivery_backoff_max_ms
        ),
        (2_000, 10, 20)
    );
    assert_eq!(partitions_of(client, "orders-parked").await, Some(1));
    // An existing one is used as it is.
    create_topic(client, "shared-dlq", 3).await;
    create(
        client,
        Subscription {
            max_deliveries: 1,
            dead_letter_topic: "shared-dlq".to_string(),
            ..subscription("orders", "reuses", SubscriptionType::Shared)
        },
    )
    .await
    .expect("create with an existing dead-letter topic");
    assert_eq!(partitions_of(client, "shared-dlq").await, Some(3));
    // No max_deliveries, no dead-letter topic.
    assert_eq!(partitions_of(client, "orders-billing-DLQ").await, None);
}

/// Listing is per topic, by name; a topic without subscriptions lists none.
async fn listing_is_by_topic(client: &mut Client) {
    assert_eq!(
        list(client, "orders").await.expect("list"),
        ["audit", "billing", "reuses", "tagged"]
    );
    assert!(list(client, "orders-parked")
        .await
        .expect("list a topic without subscriptions")
        .is_empty());
}

/// Unknown subscriptions and topics, and bad names, are refused.
async fn missing_ones_are_refused(client: &mut Client) {
    let status = get(client, "orders", "nobody").await.expect_err("missing");
    assert_eq!(code(&status), ErrorCode::UnknownSubscription, "{status}");
    let status = delete(client, "orders", "nobody")
        .await
        .expect_err("missing");
    assert_eq!(code(&status), ErrorCode::UnknownSubscription, "{status}");
    let status = list(client, "no-such-topic")
        .await
        .expect_err("unknown topic");
    assert_eq!(code(&status), ErrorCode::UnknownTopic, "{status}");
    let status = get(client, "no-such-topic", "billing")
        .await
        .expect_err("unknown topic");
    assert_eq!(code(&status), ErrorCode::UnknownTopic, "{status}");
    let status = get(client, "orders", "../x").await.expect_err("bad name");
    assert_eq!(code(&status), ErrorCode::InvalidArgument, "{status}");
}

/// Delete, then the name can be created afresh with other settings.
async fn deleted_subscriptions_can_be_created_afresh(client: &mut Client) {
    delete(client, "orders", "billing").await.expect("delete");
    let status = get(client, "orders", "billing").await.expect_err("deleted");
    assert_eq!(code(&status), ErrorCode::UnknownSubscription, "{status}");
    let recreated = create(
        client,
        subscription("orders", "billing", SubscriptionType::Exclusive),
    )
    .await
    .expect("re-create with other settings");
    assert_eq!(recreated.r#type, SubscriptionType::Exclusive as i32);
    assert_eq!(
        list(client, "orders").await.expect("list"),
        ["audit", "billing", "reuses", "tagged"]
    );
}

/// Deleting the topic deletes its subscriptions (and only its own: asked
/// to keep them, the dead-letter topics and their own subscriptions stay).
async fn deleting_the_topic_deletes_its_subscriptions(
    client: &mut Client,
    store: &dyn MetadataStore,
) {
    create(
        client,
        subscription("orders-parked", "inspect", SubscriptionType::Shared),
    )
    .await
    .expect("subscription of the dead-letter topic");
    assert_eq!(
        store
            .range("subscriptions/orders/")
            .await
            .expect("range")
            .len(),
        4
    );
    client
        .delete_topic(DeleteTopicRequest {
            name: "orders".to_string(),
            keep_dead_letters: true,
        })
        .await
        .expect("delete topic");
    assert!(
        store
            .range("subscriptions/orders/")
            .await
            .expect("range")
            .is_empty(),
        "subscriptions of a deleted topic are left in the metadata"
    );
    let status = list(client, "orders").await.expect_err("topic deleted");
    assert_eq!(code(&status), ErrorCode::UnknownTopic, "{status}");
    let status = create(
        client,
        subscription("orders", "billing", SubscriptionType::Shared),
    )
    .await
    .expect_err("topic deleted");
    assert_eq!(code(&status), ErrorCode::UnknownTopic, "{status}");
    assert_eq!(
        list(client, "orders-parked").await.expect("list"),
        ["inspect"]
    );
    create_topic(client, "orders", 1).await;
    assert!(list(client, "orders").await.expect("list").is_empty());
}

/// Every refused request, each with its code and the words that explain it.
async fn validation_errors(client: &mut Client) {
    let valid = || subscription("orders", "checked", SubscriptionType::Shared);
    let overlong = "x".repeat(MAX_NAME_BYTES + 1);
    let cases: Vec<(&str, Subscription, ErrorCode, &str)> = vec![
        (
            "topic ../x",
            Subscription {
                topic: "../x".to_string(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "'/'",
        ),
        (
            "empty topic",
            Subscription {
                topic: String::new(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "topic name is empty",
        ),
        (
            "name ../x",
            Subscription {
                name: "../x".to_string(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "subscription name",
        ),
        (
            "empty name",
            Subscription {
                name: String::new(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "subscription name is empty",
        ),
        (
            "overlong name",
            Subscription {
                name: overlong.clone(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "the limit is 249",
        ),
        (
            "overlong topic",
            Subscription {
                topic: overlong.clone(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "the limit is 249",
        ),
        (
            "unknown topic",
            subscription("no-such-topic", "checked", SubscriptionType::Shared),
            ErrorCode::UnknownTopic,
            "no-such-topic",
        ),
        (
            "unspecified type",
            Subscription {
                r#type: 0,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "SUBSCRIPTION_TYPE_UNSPECIFIED",
        ),
        (
            "unknown type",
            Subscription {
                r#type: 17,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "unknown subscription type 17",
        ),
        (
            "unknown selector kind",
            Subscription {
                selector_kind: 9,
                selector: "a".to_string(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "unknown selector kind 9",
        ),
        (
            "ALL with a selector",
            Subscription {
                selector: "red".to_string(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "SELECTOR_KIND_ALL takes no selector",
        ),
        (
            "unknown initial position",
            Subscription {
                initial_position: 4,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "unknown initial position 4",
        ),
        (
            "ack timeout too short",
            Subscription {
                ack_timeout_ms: 1,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "ack_timeout_ms 1 is outside",
        ),
        (
            "absurd ack timeout",
            Subscription {
                ack_timeout_ms: u64::MAX,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "ack_timeout_ms",
        ),
        (
            "ack timeout over a day",
            Subscription {
                ack_timeout_ms: MAX_ACK_TIMEOUT_MS + 1,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "86400000",
        ),
        (
            "backoff initial above max",
            Subscription {
                redelivery_backoff_initial_ms: 5_000,
                redelivery_backoff_max_ms: 1_000,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "redelivery_backoff_initial_ms 5000 exceeds redelivery_backoff_max_ms 1000",
        ),
        (
            "absurd backoff",
            Subscription {
                redelivery_backoff_max_ms: MAX_REDELIVERY_BACKOFF_MS * 1_000,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "redelivery_backoff_max_ms",
        ),
        (
            "absurd max deliveries",
            Subscription {
                max_deliveries: LARGEST_MAX_DELIVERIES * 1_000,
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "max_deliveries 1000000 exceeds the limit 1000",
        ),
        (
            "bad dead-letter topic",
            Subscription {
                max_deliveries: 2,
                dead_letter_topic: "../dlq".to_string(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "dead_letter_topic",
        ),
        (
            "dead letters into the topic itself",
            Subscription {
                max_deliveries: 2,
                dead_letter_topic: "orders".to_string(),
                ..valid()
            },
            ErrorCode::InvalidArgument,
            "must differ",
        ),
    ];
    for (what, request, expected, fragment) in cases {
        expect_refused(what, create(client, request).await, expected, fragment);
    }

    // A default dead-letter name over the limit asks for an explicit one.
    let long_topic = "t".repeat(200);
    create_topic(client, &long_topic, 1).await;
    let long = Subscription {
        max_deliveries: 1,
        ..subscription(&long_topic, &"s".repeat(60), SubscriptionType::Shared)
    };
    expect_refused(
        "default dead-letter topic too long",
        create(client, long.clone()).await,
        ErrorCode::InvalidArgument,
        "give dead_letter_topic explicitly",
    );
    create(
        client,
        Subscription {
            dead_letter_topic: "long-dlq".to_string(),
            ..long
        },
    )
    .await
    .expect("explicit dead-letter topic");

    // Selectors that do not parse: INVALID_SELECTOR with the column the
    // selector crate reports.
    for (kind, selector_kind, expression) in [
        (
            sluice_selector::SelectorKind::Sql,
            SelectorKind::Sql,
            "amount > 100 AND region = = 'eu'",
        ),
        (
            sluice_selector::SelectorKind::Tag,
            SelectorKind::Tag,
            "red || || blue",
        ),
    ] {
        let position = sluice_selector::Selector::parse(kind, expression)
            .expect_err("the test's selector is invalid")
            .position;
        assert!(position > 0, "{expression:?} fails at its start");
        expect_refused(
            expression,
            create(
                client,
                Subscription {
                    selector_kind: selector_kind as i32,
                    selector: expression.to_string(),
                    ..valid()
                },
            )
            .await,
            ErrorCode::InvalidSelector,
            &format!("column {position}"),
        );
    }

    let status = client
        .create_subscription(CreateSubscriptionRequest { subscription: None })
        .await
        .expect_err("no subscription");
    assert_eq!(code(&status), ErrorCode::InvalidArgument, "{status}");
    // Nothing refused was stored.
    let status = get(client, "orders", "checked").await.expect_err("refused");
    assert_eq!(code(&status), ErrorCode::UnknownSubscription, "{status}");
}

#[tokio::test]
async fn subscription_lifecycle_on_etcd() {
    let cluster = with_orders(Fixture::new()).await;
    lifecycle(&mut cluster.client(), cluster.metadata_store().await).await;
    cluster.stop().await;
}

#[tokio::test]
async fn subscription_lifecycle_on_the_embedded_store() {
    let cluster = with_orders(Fixture::embedded()).await;
    lifecycle(&mut cluster.client(), cluster.metadata_store().await).await;
    cluster.stop().await;
}

#[tokio::test]
async fn subscriptions_per_topic_are_limited() {
    let cluster = Fixture::new()
        .configure(|config| config.max_subscriptions_per_topic = 3)
        .store("store-1")
        .topic("orders", 1)
        .topic("other", 1)
        .build()
        .await;
    let mut client = cluster.client();
    for name in ["a", "b", "c"] {
        create(
            &mut client,
            subscription("orders", name, SubscriptionType::Shared),
        )
        .await
        .expect("within the limit");
    }
    expect_refused(
        "a fourth subscription",
        create(
            &mut client,
            subscription("orders", "d", SubscriptionType::Shared),
        )
        .await,
        ErrorCode::InvalidArgument,
        "max_subscriptions_per_topic",
    );
    // At the limit an existing one is still returned, and the limit is
    // per topic.
    create(
        &mut client,
        subscription("orders", "a", SubscriptionType::Shared),
    )
    .await
    .expect("idempotent at the limit");
    create(
        &mut client,
        subscription("other", "d", SubscriptionType::Shared),
    )
    .await
    .expect("another topic");
    delete(&mut client, "orders", "b").await.expect("delete");
    create(
        &mut client,
        subscription("orders", "d", SubscriptionType::Shared),
    )
    .await
    .expect("room again after a delete");
    assert_eq!(
        list(&mut client, "orders").await.expect("list"),
        ["a", "c", "d"]
    );
    cluster.stop().await;
}

/// Many creations of different subscriptions at once, over two
/// nameservers, never exceed the per-topic limit (the count check and the
/// write are one atomic step), and every refusal names the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_never_exceed_the_limit() {
    const LIMIT: u32 = 10;
    const CREATIONS: usize = 60;
    let cluster = Fixture::new()
        .nameservers(2)
        .configure(|config| config.max_subscriptions_per_topic = LIMIT)
        .store("store-1")
        .topic("orders", 1)
        .build()
        .await;
    let clients = [cluster.client_of("ns-1"), cluster.client_of("ns-2")];
    let creations: Vec<_> = (0..CREATIONS)
        .map(|index| {
            let mut client = clients[index % 2].clone();
            tokio::spawn(async move {
                let name = format!("s{index}");
                create(
                    &mut client,
                    subscription("orders", &name, SubscriptionType::Shared),
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    for creation in creations {
        match creation.await.expect("creation task") {
            Ok(_) => created += 1,
            Err(status) => {
                assert_eq!(code(&status), ErrorCode::InvalidArgument, "{status:?}");
                assert!(
                    status.message().contains("max_subscriptions_per_topic"),
                    "{status:?}"
                );
            }
        }
    }
    let stored = list(&mut cluster.client(), "orders").await.expect("list");
    assert_eq!(stored.len(), LIMIT as usize, "{stored:?}");
    assert_eq!(created, LIMIT as usize);
    cluster.stop().await;
}

#[tokio::test]
async fn two_nameservers_creating_at_once_write_once() {
    let cluster = Fixture::new()
        .nameservers(2)
        .store("store-1")
        .topic("orders", 1)
        .build()
        .await;
    let mut first_client = cluster.client_of("ns-1");
    let mut second_client = cluster.client_of("ns-2");

    for round in 0..10 {
        // Different settings: one wins, the other is told what differs.
        let name = format!("differ-{round}");
        let (shared, exclusive) = tokio::join!(
            create(
                &mut first_client,
                subscription("orders", &name, SubscriptionType::Shared)
            ),
            create(
                &mut second_client,
                subscription("orders", &name, SubscriptionType::Exclusive)
            ),
        );
        let stored = get(&mut first_client, "orders", &name).await.expect("get");
        match (shared, exclusive) {
            (Ok(winner), Err(status)) | (Err(status), Ok(winner)) => {
                assert_eq!(winner, stored, "the winner's record is the stored one");
                assert_eq!(code(&status), ErrorCode::SubscriptionConflict, "{status}");
                assert!(status.message().contains("type (stored"), "{status}");
            }
            other => panic!("round {round}: expected one success and one conflict, got {other:?}"),
        }

        // Same settings: both get the one stored record, creation time and all.
        let name = format!("same-{round}");
        let (one, other) = tokio::join!(
            create(
                &mut first_client,
                subscription("orders", &name, SubscriptionType::KeyShared)
            ),
            create(
                &mut second_client,
                subscription("orders", &name, SubscriptionType::KeyShared)
            ),
        );
        let one = one.expect("first creation");
        let other = other.expect("second creation");
        assert_eq!(one, other);
        assert_eq!(
            get(&mut second_client, "orders", &name).await.expect("get"),
            one
        );
    }
    cluster.stop().await;
}

/// Writes a segment record as the owner's calls would have left it.
async fn put_segment(
    store: &dyn MetadataStore,
    (partition, segment_id): (u32, u64),
    state: SegmentState,
    (base_offset, end_offset): (u64, u64),
) {
    let key = sluice_nameserver::keys::segment("orders", partition, segment_id);
    let segment = SegmentInfo {
        segment_id,
        topic: "orders".to_string(),
        partition,
        state: state as i32,
        base_offset,
        end_offset,
        ..SegmentInfo::default()
    };
    store
        .put(&key, sluice_nameserver::keys::encode(&segment), None)
        .await
        .expect("put segment");
}

/// Issue 11: "latest" is where each partition ended when the subscription
/// was created, recorded with it. The SDK sends the high watermarks; a
/// request without them gets the ends of the last closed segments (never
/// an open segment's base, which a segment prepared ahead of a roll can
/// put above what was acknowledged).
#[tokio::test]
async fn latest_records_where_each_partition_starts() {
    let cluster = with_orders(Fixture::embedded()).await;
    let store = cluster.metadata_store().await;
    let mut client = cluster.client();
    put_segment(store.as_ref(), (0, 1), SegmentState::Closed, (0, 10)).await;
    put_segment(store.as_ref(), (0, 2), SegmentState::Closed, (10, 25)).await;
    put_segment(store.as_ref(), (0, 3), SegmentState::Open, (25, 0)).await;
    put_segment(store.as_ref(), (1, 4), SegmentState::Open, (0, 0)).await;
    put_segment(store.as_ref(), (1, 5), SegmentState::Open, (40, 0)).await;

    let latest = subscription("orders", "latest", SubscriptionType::Shared);
    let created = create(&mut client, latest.clone()).await.expect("create");
    assert_eq!(created.start_offsets, [25, 0]);
    assert_eq!(
        get(&mut client, "orders", "latest")
            .await
            .expect("get")
            .start_offsets,
        [25, 0]
    );
    // Another creator's ends are not a different setting: the stored
    // record comes back unchanged.
    let again = create(
        &mut client,
        Subscription {
            start_offsets: vec![99, 99],
            ..latest
        },
    )
    .await
    .expect("create again");
    assert_eq!(again, created);

    let given = create(
        &mut client,
        Subscription {
            start_offsets: vec![30, sluice_proto::limits::MAX_OFFSET],
            ..subscription("orders", "given", SubscriptionType::Shared)
        },
    )
    .await
    .expect("create with the ends given");
    assert_eq!(given.start_offsets, [30, sluice_proto::limits::MAX_OFFSET]);

    let earliest = create(
        &mut client,
        Subscription {
            initial_position: InitialPosition::Earliest as i32,
            ..subscription("orders", "earliest", SubscriptionType::Shared)
        },
    )
    .await
    .expect("create earliest");
    assert!(earliest.start_offsets.is_empty());

    for (what, start_offsets, initial_position, fragment) in [
        ("too few", vec![1], InitialPosition::Latest, "2 partitions"),
        (
            "too many",
            vec![1, 2, 3],
            InitialPosition::Latest,
            "3 entries",
        ),
        (
            "beyond the largest offset",
            vec![0, u64::MAX],
            InitialPosition::Latest,
            "start_offsets[1]",
        ),
        (
            "with earliest",
            vec![0, 0],
            InitialPosition::Earliest,
            "INITIAL_POSITION_LATEST",
        ),
    ] {
        expect_refused(
            what,
            create(
                &mut client,
                Subscription {
                    start_offsets,
                    initial_position: initial_position as i32,
                    ..subscription("orders", "refused", SubscriptionType::Shared)
                },
            )
            .await,
            ErrorCode::InvalidArgument,
            fragment,
        );
    }
    let status = get(&mut client, "orders", "refused")
        .await
        .expect_err("nothing refused was stored");
    assert_eq!(code(&status), ErrorCode::UnknownSubscription, "{status}");
    cluster.stop().await;
}
