//! Queue semantics against real processes (etcd, nameserver, brokers,
//! stores): shared subscriptions with consumers crashing mid-flight and the
//! owning broker killed, key order under key-shared while consumers come and
//! go, redelivery and dead letters, selectors, exclusive and failover, and
//! bad input on the `Subscribe` stream.

use bytes::Bytes;
use futures::StreamExt;
use sluice_client::{Admin, ClientError, Record, Subscriber, SubscriberConfig};
use sluice_proto::test_util::{eventually, eventually_true};
use sluice_proto::v1::subscribe_request::Request as ConsumerRequest;
use sluice_proto::v1::subscribe_response::Response as ToConsumer;
use sluice_proto::v1::{
    InitialPosition, SelectorKind, SubscribeAck, SubscribeRequest, Subscription, SubscriptionType,
};
use sluice_proto::ErrorCode;
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::subscription_kit::{
    acknowledge_distinct, crashing_worker, open_request, produce, raw_stream, stream_error,
    subscriber_config, value_of, Acked,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_subscription_acknowledges_each_message_once_while_consumers_crash() {
    const MESSAGES: u64 = 3_000;
    let cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic("jobs", 2).await;
    produce(&cluster, "jobs", MESSAGES, |_| None, |_, record| record).await;
    let acked: Acked = Arc::default();
    // Waves of consumers that each take some messages and die holding
    // some, then finishers that take everything left.
    for wave in 0..3 {
        let mut workers = Vec::new();
        for index in 0..4 {
            let mut config =
                subscriber_config(&cluster, "jobs", "workers", SubscriptionType::Shared);
            config.consumer_name = format!("wave{wave}-{index}");
            workers.push(tokio::spawn(crashing_worker(
                config,
                acked.clone(),
                150 + index * 40,
                true,
            )));
        }
        for worker in workers {
            worker.await.expect("worker");
        }
    }
    let mut finishers = Vec::new();
    for index in 0..3 {
        let mut config = subscriber_config(&cluster, "jobs", "workers", SubscriptionType::Shared);
        config.consumer_name = format!("finisher-{index}");
        finishers.push(tokio::spawn(crashing_worker(
            config,
            acked.clone(),
            usize::MAX,
            false,
        )));
    }
    let acked_check = acked.clone();
    eventually_true(
        "every message acknowledged",
        Duration::from_secs(120),
        || acked_check.lock().expect("lock").len() as u64 == MESSAGES,
    )
    .await;
    for finisher in finishers {
        finisher.await.expect("finisher");
    }
    let acked = acked.lock().expect("lock");
    let twice: Vec<_> = acked.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "acknowledged more than once: {twice:?}");
    assert_eq!(acked.len() as u64, MESSAGES, "a message was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledgements_survive_the_owning_broker_being_killed() {
    const MESSAGES: u64 = 2_000;
    let mut cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic("ledger", 1).await;
    produce(&cluster, "ledger", MESSAGES, |_| None, |_, record| record).await;
    let acked: Acked = Arc::default();
    let config = subscriber_config(&cluster, "ledger", "auditors", SubscriptionType::Shared);
    let subscriber = Subscriber::connect(config.clone()).await.expect("connect");
    // Acknowledge the first half.
    while acked.lock().expect("lock").len() < (MESSAGES / 2) as usize {
        let message = subscriber.recv().await.expect("recv");
        subscriber.ack(&message).await.expect("ack before the kill");
        *acked
            .lock()
            .expect("lock")
            .entry(value_of(&message))
            .or_default() += 1;
    }
    drop(subscriber);
    // Kill -9 the broker owning the partition; the other takes over.
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let owner = admin
        .describe_topic("ledger")
        .await
        .expect("describe")
        .partitions
        .first()
        .and_then(|partition| partition.route.as_ref())
        .map(|route| route.broker_id.clone())
        .expect("an owner");
    let victim = cluster
        .brokers
        .iter_mut()
        .find(|broker| broker.node_id == owner)
        .expect("owner is one of ours");
    victim.kill();
    let subscriber = Subscriber::connect(config).await.expect("reconnect");
    let deadline = Instant::now() + Duration::from_secs(60);
    while (acked.lock().expect("lock").len() as u64) < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "the rest did not arrive after failover"
        );
        let Some(message) = subscriber
            .recv_timeout(Duration::from_secs(5))
            .await
            .expect("recv")
        else {
            continue;
        };
        let value = value_of(&message);
        assert!(
            !acked.lock().expect("lock").contains_key(&value),
            "{value} was acknowledged before the failover and delivered again"
        );
        match subscriber.ack(&message).await {
            Ok(()) => *acked.lock().expect("lock").entry(value).or_default() += 1,
            Err(ClientError::Server(error)) if error.code.is_retriable() => {}
            Err(ClientError::Server(error)) if error.code == ErrorCode::DeliveryExpired => {}
            Err(error) => panic!("ack failed: {error}"),
        }
    }
    subscriber.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_shared_keeps_each_keys_order_while_consumers_join_and_leave() {
    const MESSAGES: u64 = 2_000;
    const KEYS: u64 = 20;
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("events", 1).await;
    produce(
        &cluster,
        "events",
        MESSAGES,
        |value| Some(format!("key-{}", value % KEYS)),
        |_, record| record,
    )
    .await;
    // Per key, the values in the order they were processed (acknowledged).
    let processed: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::new();
    for index in 0..5u64 {
        let mut config =
            subscriber_config(&cluster, "events", "per-key", SubscriptionType::KeyShared);
        config.consumer_name = format!("worker-{index}");
        let processed = processed.clone();
        let total = total.clone();
        handles.push(tokio::spawn(async move {
            // Consumers start at different times and the first two leave
            // early, so keys move between consumers.
            tokio::time::sleep(Duration::from_millis(300 * index)).await;
            let subscriber = Subscriber::connect(config).await.expect("connect");
            let quota = if index < 2 { 150 } else { u64::MAX };
            let mut handled = 0;
            while handled < quota && total.load(std::sync::atomic::Ordering::SeqCst) < MESSAGES {
                let Ok(Some(message)) = subscriber.recv_timeout(Duration::from_secs(1)).await
                else {
                    continue;
                };
                let key =
                    String::from_utf8(message.key.clone().expect("keyed").to_vec()).expect("utf-8");
                // Processing is recorded before the acknowledgement: the
                // key's next message cannot be delivered before the ack, so
                // the recorded order is the processing order.
                let value = value_of(&message);
                processed
                    .lock()
                    .expect("lock")
                    .entry(key.clone())
                    .or_default()
                    .push(value);
                tokio::time::sleep(Duration::from_micros(200)).await;
                if subscriber.ack(&message).await.is_ok() {
                    total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    handled += 1;
                } else {
                    // Not acknowledged: it comes again, and counts then.
                    let mut processed = processed.lock().expect("lock");
                    let values = processed.entry(key).or_default();
                    if let Some(position) = values.iter().rposition(|seen| *seen == value) {
                        values.remove(position);
                    }
                }
            }
            drop(subscriber);
        }));
    }
    for handle in handles {
        handle.await.expect("worker");
    }
    let processed = processed.lock().expect("lock");
    assert_eq!(processed.len() as u64, KEYS);
    for (key, values) in processed.iter() {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        assert_eq!(values, &sorted, "{key} was processed out of order");
        assert_eq!(
            values.len() as u64,
            MESSAGES / KEYS,
            "{key} lost or repeated messages"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nacked_messages_come_back_and_go_to_the_dead_letter_topic_after_max_deliveries() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("payments", 1).await;
    produce(
        &cluster,
        "payments",
        50,
        |value| {
            Some(if value % 10 == 3 {
                "poison".into()
            } else {
                format!("k{value}")
            })
        },
        |_, record| record,
    )
    .await;
    let mut config = subscriber_config(&cluster, "payments", "settle", SubscriptionType::Shared);
    config.max_deliveries = 3;
    config.redelivery_backoff_initial_ms = 50;
    config.redelivery_backoff_max_ms = 100;
    let subscriber = Subscriber::connect(config).await.expect("connect");
    let mut deliveries: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut acked = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let poisons_done = |deliveries: &HashMap<u64, Vec<u32>>| {
        [3, 13, 23, 33, 43]
            .iter()
            .all(|poison| deliveries.get(poison).is_some_and(|seen| seen.len() >= 3))
    };
    while acked.len() < 45 || !poisons_done(&deliveries) {
        assert!(
            Instant::now() < deadline,
            "acked {}, deliveries {deliveries:?}",
            acked.len()
        );
        let Some(message) = subscriber
            .recv_timeout(Duration::from_secs(2))
            .await
            .expect("recv")
        else {
            continue;
        };
        let value = value_of(&message);
        deliveries
            .entry(value)
            .or_default()
            .push(message.delivery_count);
        if message.key.as_deref() == Some(b"poison".as_slice()) {
            subscriber.nack(&message).await.expect("nack");
        } else {
            subscriber.ack(&message).await.expect("ack");
            acked.insert(value);
        }
    }
    // The dead letters arrive in "<topic>-<subscription>-DLQ".
    let dead = Subscriber::connect(SubscriberConfig {
        client: cluster.client_config(),
        initial_position: InitialPosition::Earliest,
        ..SubscriberConfig::new("payments-settle-DLQ", "inspect")
    })
    .await
    .expect("connect to the dead-letter topic");
    let mut letters = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while letters.len() < 5 {
        assert!(Instant::now() < deadline, "dead letters: {letters:?}");
        let Some(letter) = dead
            .recv_timeout(Duration::from_secs(2))
            .await
            .expect("recv dead letter")
        else {
            continue;
        };
        let header = |name: &str| {
            letter
                .headers
                .iter()
                .find(|(header, _)| header == name)
                .map(|(_, value)| String::from_utf8_lossy(value).to_string())
        };
        assert_eq!(header("sluice-dlq-topic").as_deref(), Some("payments"));
        assert_eq!(header("sluice-dlq-subscription").as_deref(), Some("settle"));
        assert_eq!(header("sluice-dlq-deliveries").as_deref(), Some("3"));
        letters.insert(value_of(&letter), header("sluice-dlq-offset"));
        dead.ack(&letter).await.expect("ack dead letter");
    }
    assert_eq!(
        letters.keys().copied().collect::<Vec<_>>(),
        vec![3, 13, 23, 33, 43]
    );
    for poison in [3, 13, 23, 33, 43] {
        assert_eq!(deliveries[&poison], vec![1, 2, 3], "deliveries of {poison}");
    }
    subscriber.close().await.expect("close");
    dead.close().await.expect("close dead");

    // Replayed from the dead-letter topic, the letters come back to the
    // subscription as new messages, without their dead-letter history.
    let output = cluster
        .cli()
        .args(["subscription", "replay-dead-letters", "payments", "settle"])
        .output()
        .expect("run sluice");
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("replayed 5 dead letter(s)"));
    let mut config = subscriber_config(&cluster, "payments", "settle", SubscriptionType::Shared);
    config.max_deliveries = 3;
    config.redelivery_backoff_initial_ms = 50;
    config.redelivery_backoff_max_ms = 100;
    let subscriber = Subscriber::connect(config).await.expect("reconnect");
    let mut replayed = Vec::new();
    while replayed.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(20), subscriber.recv())
            .await
            .expect("the replayed letters arrive")
            .expect("recv");
        assert!(
            message
                .headers
                .iter()
                .all(|(name, _)| !name.starts_with("sluice-dlq-")),
            "history headers were replayed"
        );
        assert_eq!(message.delivery_count, 1);
        assert_eq!(message.key.as_deref(), Some(b"poison".as_slice()));
        replayed.push(value_of(&message));
        subscriber.ack(&message).await.expect("ack replayed");
    }
    replayed.sort_unstable();
    assert_eq!(replayed, vec![3, 13, 23, 33, 43]);
    subscriber.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn selectors_deliver_only_matching_messages_and_bad_ones_are_refused() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("orders", 1).await;
    produce(
        &cluster,
        "orders",
        100,
        |_| None,
        |value, record| {
            let record = record
                .with_header("region", if value % 2 == 0 { "eu" } else { "us" })
                .with_header("amount", (value * 10).to_string());
            if value % 5 == 0 {
                record.with_tag("vip")
            } else {
                record.with_tag("standard")
            }
        },
    )
    .await;
    let collect = |mut config: SubscriberConfig| async move {
        config.receiver_queue_size = 1000;
        let subscriber = Subscriber::connect(config).await.expect("connect");
        let mut values = Vec::new();
        while let Ok(Some(message)) = subscriber.recv_timeout(Duration::from_secs(2)).await {
            subscriber.ack(&message).await.expect("ack");
            values.push(value_of(&message));
        }
        subscriber.close().await.expect("close");
        values.sort_unstable();
        values
    };
    let mut sql = subscriber_config(&cluster, "orders", "big-eu", SubscriptionType::Shared);
    sql.selector_kind = SelectorKind::Sql;
    sql.selector = "region = 'eu' AND amount > 500".into();
    let expected: Vec<u64> = (0..100)
        .filter(|value| value % 2 == 0 && value * 10 > 500)
        .collect();
    assert_eq!(collect(sql).await, expected);
    let mut tags = subscriber_config(&cluster, "orders", "vips", SubscriptionType::Shared);
    tags.selector_kind = SelectorKind::Tag;
    tags.selector = "vip || gold".into();
    let expected: Vec<u64> = (0..100).filter(|value| value % 5 == 0).collect();
    assert_eq!(collect(tags).await, expected);
    // Everything else counted as handled: nothing is left in the backlog.
    let mut bad = subscriber_config(&cluster, "orders", "broken", SubscriptionType::Shared);
    bad.selector_kind = SelectorKind::Sql;
    bad.selector = "region = 'eu' AND amount >".into();
    match Subscriber::connect(bad).await {
        Err(ClientError::Server(error)) => {
            assert_eq!(error.code, ErrorCode::InvalidSelector);
            assert!(error.message.contains("column"), "{}", error.message);
        }
        other => panic!("a bad selector was accepted: {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exclusive_refuses_a_second_consumer_and_failover_hands_over_in_order() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("audit", 1).await;
    produce(&cluster, "audit", 100, |_| None, |_, record| record).await;
    let first = Subscriber::connect(subscriber_config(
        &cluster,
        "audit",
        "solo",
        SubscriptionType::Exclusive,
    ))
    .await
    .expect("first exclusive consumer");
    let second = Subscriber::connect(subscriber_config(
        &cluster,
        "audit",
        "solo",
        SubscriptionType::Exclusive,
    ))
    .await;
    match second {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::ConsumerBusy),
        Ok(subscriber) => {
            // The SDK may surface the refusal on the first receive instead.
            match subscriber.recv_timeout(Duration::from_secs(5)).await {
                Err(ClientError::Server(error)) => {
                    assert_eq!(error.code, ErrorCode::ConsumerBusy)
                }
                other => panic!("a second exclusive consumer got {other:?}"),
            }
        }
        Err(other) => panic!("unexpected error {other}"),
    }
    first.close().await.expect("close");

    // Failover: the active consumer takes 40 in order, acknowledging
    // cumulatively, then leaves; the standby continues at 40.
    let mut active_config = subscriber_config(
        &cluster,
        "audit",
        "standby-pair",
        SubscriptionType::Failover,
    );
    active_config.consumer_name = "a-primary".into();
    let mut standby_config = active_config.clone();
    standby_config.consumer_name = "b-standby".into();
    let active = Subscriber::connect(active_config).await.expect("active");
    let standby = Subscriber::connect(standby_config).await.expect("standby");
    let mut last = None;
    for expected in 0..40 {
        let message = active.recv().await.expect("recv");
        assert_eq!(
            value_of(&message),
            expected,
            "in order on the active consumer"
        );
        last = Some(message);
    }
    active
        .ack_cumulative(&last.expect("received"))
        .await
        .expect("cumulative ack");
    active.close().await.expect("close active");
    for expected in 40..100 {
        let message = standby.recv().await.expect("standby recv");
        assert_eq!(
            value_of(&message),
            expected,
            "the standby continues in order"
        );
        standby.ack(&message).await.expect("ack");
    }
    standby.close().await.expect("close standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_the_subscribe_stream_gets_clear_errors() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("raw", 1).await;
    produce(&cluster, "raw", 10, |_| None, |_, record| record).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    admin
        .create_subscription(Subscription {
            topic: "raw".into(),
            name: "raw-sub".into(),
            r#type: SubscriptionType::Shared as i32,
            initial_position: InitialPosition::Earliest as i32,
            ..Subscription::default()
        })
        .await
        .expect("create subscription");

    // Unknown subscription.
    let (_sender, mut responses) = raw_stream(&cluster, open_request("raw", "nobody", 10)).await;
    assert_eq!(
        stream_error(&mut responses).await.code,
        ErrorCode::UnknownSubscription
    );
    // A stream that does not start with open.
    let (_sender, mut responses) = raw_stream(
        &cluster,
        SubscribeRequest {
            request: Some(ConsumerRequest::Ack(SubscribeAck::default())),
        },
    )
    .await;
    assert_eq!(
        stream_error(&mut responses).await.code,
        ErrorCode::InvalidArgument
    );
    // Bad names.
    for name in ["../x", "", &"s".repeat(300)] {
        let (_sender, mut responses) = raw_stream(&cluster, open_request("raw", name, 10)).await;
        assert_eq!(
            stream_error(&mut responses).await.code,
            ErrorCode::InvalidArgument,
            "subscription name {name:?}"
        );
    }
    // A huge credit request is capped, acks of unknown or foreign offsets
    // are refused per offset, and the broker keeps serving.
    let (sender, mut responses) =
        raw_stream(&cluster, open_request("raw", "raw-sub", u32::MAX)).await;
    let mut delivered = Vec::new();
    while delivered.len() < 10 {
        match responses.next().await.expect("stream open").expect("ok") {
            sluice_proto::v1::SubscribeResponse {
                response: Some(ToConsumer::Delivery(delivery)),
            } => delivered.extend(delivery.offsets),
            _ => continue,
        }
    }
    sender
        .send(SubscribeRequest {
            request: Some(ConsumerRequest::Ack(SubscribeAck {
                request_id: 7,
                offsets: vec![delivered[0], 1_000_000, u64::MAX],
                cumulative_offset: Some(5),
                transaction: None,
            })),
        })
        .await
        .expect("send ack");
    let receipt = loop {
        match responses.next().await.expect("stream open").expect("ok") {
            sluice_proto::v1::SubscribeResponse {
                response: Some(ToConsumer::AckReceipt(receipt)),
            } => break receipt,
            _ => continue,
        }
    };
    assert_eq!(receipt.request_id, 7);
    assert_eq!(receipt.acknowledged, vec![delivered[0]]);
    let rejected: HashMap<u64, i32> = receipt
        .rejected
        .iter()
        .map(|result| (result.offset, result.error))
        .collect();
    assert_eq!(rejected[&1_000_000], ErrorCode::UnknownMessage as i32);
    assert_eq!(rejected[&u64::MAX], ErrorCode::UnknownMessage as i32);
    assert_eq!(
        rejected[&5],
        ErrorCode::InvalidArgument as i32,
        "cumulative ack on a shared subscription"
    );
    // Too many offsets in one request end the stream with a clear error.
    sender
        .send(SubscribeRequest {
            request: Some(ConsumerRequest::Ack(SubscribeAck {
                request_id: 8,
                offsets: vec![0; 20_000],
                cumulative_offset: None,
                transaction: None,
            })),
        })
        .await
        .expect("send huge ack");
    assert_eq!(
        stream_error(&mut responses).await.code,
        ErrorCode::InvalidArgument
    );
    // Still serving.
    let (_sender, mut responses) = raw_stream(&cluster, open_request("raw", "raw-sub", 10)).await;
    let first = tokio::time::timeout(Duration::from_secs(10), responses.next())
        .await
        .expect("answer")
        .expect("stream")
        .expect("ok");
    assert!(matches!(first.response, Some(ToConsumer::Opened(_))));
    let _ = Bytes::new();
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    u64::try_from(sluice_proto::now_unix_ms()).expect("clock after 1970")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delayed_messages_arrive_on_time_survive_failover_and_expired_ones_never_arrive() {
    // Stated tolerance of delivery after the requested time on an idle
    // cluster; the failover part allows the takeover bound on top.
    const LATE_TOLERANCE_MS: u64 = 1_000;
    let mut cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        ..ClusterSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    cluster
        .create_topic_with(
            "reminders",
            sluice_proto::v1::TopicConfig {
                partitions: 1,
                // Topic-wide TTL: anything older than a minute is dropped.
                message_ttl_ms: 60_000,
                ..Default::default()
            },
        )
        .await;
    // Created before anything is produced: it starts at the end ("latest").
    let config = SubscriberConfig {
        initial_position: InitialPosition::Latest,
        ..subscriber_config(&cluster, "reminders", "due", SubscriptionType::Shared)
    };
    let subscriber = Subscriber::connect(config.clone()).await.expect("connect");
    let base = now_ms();
    // value → requested delivery time; values 100.. expire (1 ms TTL, or a
    // timestamp older than the topic's TTL).
    let mut due: BTreeMap<u64, u64> = BTreeMap::new();
    produce(
        &cluster,
        "reminders",
        40,
        |_| None,
        |value, record| record.with_deliver_at_ms(base + 200 + (value * 97) % 2_500),
    )
    .await;
    for value in 0..40u64 {
        due.insert(value, base + 200 + (value * 97) % 2_500);
    }
    let producer = cluster.producer().await;
    for value in 100..105u64 {
        producer
            .send(Record::new("reminders", value.to_string()).with_ttl(Duration::from_millis(1)))
            .await
            .expect("send expiring");
    }
    producer
        .send(
            Record::new("reminders", "105")
                .with_timestamp_ms(sluice_proto::now_unix_ms() - 120_000),
        )
        .await
        .expect("send old");
    // Too long a delay is refused by the SDK with a clear error.
    match producer
        .send(Record::new("reminders", "x").with_delay(Duration::from_secs(365 * 86_400)))
        .await
    {
        Err(ClientError::InvalidArgument(message)) => assert!(message.contains("days ahead")),
        other => panic!("an absurd delay was accepted: {:?}", other.map(|_| ())),
    }
    let mut received: BTreeMap<u64, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < 40 {
        assert!(Instant::now() < deadline, "received only {received:?}");
        let Some(message) = subscriber
            .recv_timeout(Duration::from_secs(1))
            .await
            .expect("recv")
        else {
            continue;
        };
        let at = now_ms();
        let value = value_of(&message);
        assert!(value < 100, "expired message {value} was delivered");
        received.insert(value, at);
        subscriber.ack(&message).await.expect("ack");
    }
    for (value, at) in &received {
        let wanted = due[value];
        // The delivery time is checked against the broker's clock, which is
        // this machine's; 20 ms of slack for the clock read order.
        assert!(*at + 20 >= wanted, "{value} came {} ms early", wanted - at);
        assert!(
            *at <= wanted + LATE_TOLERANCE_MS,
            "{value} came {} ms late",
            at - wanted
        );
    }
    // Nothing else (the expired ones) arrives.
    assert!(subscriber
        .recv_timeout(Duration::from_secs(2))
        .await
        .expect("recv")
        .is_none());
    drop(subscriber);

    // Delays survive the owner's death: due in 6-8 s, owner killed now.
    let base = now_ms();
    for value in 200..210u64 {
        producer
            .send(
                Record::new("reminders", value.to_string())
                    .with_deliver_at_ms(base + 6_000 + (value - 200) * 200),
            )
            .await
            .expect("send delayed");
    }
    producer.close().await.expect("close producer");
    let owner = admin
        .describe_topic("reminders")
        .await
        .expect("describe")
        .partitions
        .first()
        .and_then(|partition| partition.route.as_ref())
        .map(|route| route.broker_id.clone())
        .expect("an owner");
    cluster
        .brokers
        .iter_mut()
        .find(|broker| broker.node_id == owner)
        .expect("owner is ours")
        .kill();
    let subscriber = Subscriber::connect(config).await.expect("reconnect");
    let mut late = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while late.len() < 10 {
        assert!(
            Instant::now() < deadline,
            "after failover got only {late:?}"
        );
        let Some(message) = subscriber
            .recv_timeout(Duration::from_secs(1))
            .await
            .expect("recv")
        else {
            continue;
        };
        let value = value_of(&message);
        assert!(
            (200..210).contains(&value),
            "unexpected {value} after failover"
        );
        let wanted = base + 6_000 + (value - 200) * 200;
        let at = now_ms();
        assert!(at + 20 >= wanted, "{value} came early after failover");
        late.insert(value, at - wanted.min(at));
        subscriber.ack(&message).await.expect("ack");
    }
    subscriber.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_keeps_what_a_subscription_has_not_consumed_unless_told_otherwise() {
    let cluster = Cluster::start(ClusterSpec {
        broker_config: "[retention]\ncheck_interval_ms = 300\n[backlog]\ncheck_interval_ms = 200\n"
            .into(),
        ..ClusterSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    for (topic, ignores) in [("kept", false), ("dropped", true)] {
        cluster
            .create_topic_with(
                topic,
                sluice_proto::v1::TopicConfig {
                    partitions: 1,
                    retention_ms: 1,
                    segment_bytes: 16 * 1024,
                    retention_ignores_subscriptions: ignores,
                    ..Default::default()
                },
            )
            .await;
        admin
            .create_subscription(Subscription {
                topic: topic.into(),
                name: "slow".into(),
                r#type: SubscriptionType::Shared as i32,
                initial_position: InitialPosition::Earliest as i32,
                ..Subscription::default()
            })
            .await
            .expect("create subscription");
        // One record per batch, so the 16 KiB segments roll often.
        let producer = cluster.producer().await;
        for value in 0..300u64 {
            producer
                .send(Record::new(topic, value.to_string()).with_header("pad", vec![b'p'; 512]))
                .await
                .expect("send");
        }
        producer.close().await.expect("close producer");
    }
    // Several retention rounds pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        segments_of(&admin, "kept").await > 3,
        "kept segments were deleted: {} left",
        segments_of(&admin, "kept").await
    );
    eventually(
        "retention of the topic that ignores subscriptions",
        Duration::from_secs(30),
        || async { (segments_of(&admin, "dropped").await <= 2).then_some(()) },
    )
    .await;
    // Everything is still there for the subscription.
    let subscriber = Subscriber::connect(subscriber_config(
        &cluster,
        "kept",
        "slow",
        SubscriptionType::Shared,
    ))
    .await
    .expect("connect");
    acknowledge_distinct(&subscriber, 300, "the backlog is still there").await;
    subscriber.close().await.expect("close");
    // Consumed: now retention may take it.
    eventually(
        "retention after the subscription caught up",
        Duration::from_secs(30),
        || async { (segments_of(&admin, "kept").await <= 2).then_some(()) },
    )
    .await;
}

async fn segments_of(admin: &Admin, topic: &str) -> usize {
    admin
        .describe_topic(topic)
        .await
        .expect("describe")
        .partitions
        .iter()
        .map(|partition| partition.segments.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscription_gets_every_message_and_a_stuck_consumer_stalls_nobody() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("fanout", 1).await;
    produce(&cluster, "fanout", 200, |_| None, |_, record| record).await;
    // A consumer that takes its credit's worth and then never reads nor
    // acknowledges again.
    let stuck = Subscriber::connect(SubscriberConfig {
        ack_timeout_ms: 1_000,
        receiver_queue_size: 10,
        consumer_name: "stuck".into(),
        ..subscriber_config(&cluster, "fanout", "work", SubscriptionType::Shared)
    })
    .await
    .expect("stuck consumer");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let healthy = Subscriber::connect(SubscriberConfig {
        ack_timeout_ms: 1_000,
        // Small enough to work through well within the ack timeout.
        receiver_queue_size: 20,
        consumer_name: "healthy".into(),
        ..subscriber_config(&cluster, "fanout", "work", SubscriptionType::Shared)
    })
    .await
    .expect("healthy consumer");
    // Another subscription on the same topic gets every message too.
    let audit = Subscriber::connect(subscriber_config(
        &cluster,
        "fanout",
        "audit",
        SubscriptionType::Shared,
    ))
    .await
    .expect("audit consumer");
    // Read beside the work, not before it: while the audit was read first
    // the healthy consumer's 20 buffered deliveries sat past their ack
    // timeout on a loaded machine and came again, beyond the bound below.
    let audit = tokio::spawn(async move {
        acknowledge_distinct(&audit, 200, "audit receives everything").await;
        audit
    });
    let mut work = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while work.len() < 200 {
        assert!(Instant::now() < deadline, "work got {}", work.len());
        if let Some(message) = healthy
            .recv_timeout(Duration::from_secs(1))
            .await
            .expect("recv work")
        {
            if healthy.ack(&message).await.is_ok() {
                work.insert(value_of(&message), message.delivery_count);
            }
        }
    }
    let audit = audit.await.expect("the audit consumer's task");
    // What the stuck consumer held (its 10 of credit) came to the healthy
    // one after the ack timeout, as later deliveries; so may some of the
    // healthy one's own 20 buffered if it fell behind.
    let redelivered = work.values().filter(|count| **count >= 2).count();
    assert!(
        (1..=30).contains(&redelivered),
        "{redelivered} redelivered messages"
    );
    drop(stuck);
    healthy.close().await.expect("close");
    audit.close().await.expect("close");
}
