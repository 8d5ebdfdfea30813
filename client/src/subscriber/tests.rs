//! Tests of the [`Subscriber`] and its listener against the scripted fake
//! broker (`crate::testing::FakeBroker`): credit, acknowledgements and
//! receipts, negative acknowledgements, reopening after a broken stream,
//! refusals at connect, failover status, listener ordering. The helpers
//! (`fake_topic`, `subscriber_on`, `wait_for`) are meant for further tests.

use super::*;
use crate::testing::{FakeBroker, FakeNameServer};
use crate::{Producer, ProducerConfig, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Offsets handled, per (partition, key).
type OffsetsByKey = HashMap<(u32, String), Vec<u64>>;

/// Upper bound on waiting for a condition in these tests, in milliseconds.
const WAIT_LIMIT_MS: u64 = 10_000;

pub(crate) fn test_client_config() -> ClientConfig {
    ClientConfig {
        // Nothing listens there: route refreshes fail fast and the seeded
        // routes stay.
        bootstrap: vec!["http://127.0.0.1:1".into()],
        connect_timeout_ms: 200,
        request_timeout_ms: 5_000,
        ..ClientConfig::default()
    }
}

/// A fake broker owning every partition of topic `t`, each holding
/// `per_partition` records valued `{partition}-{index}` with the key
/// `k{index % keys}` (no key when `keys` is 0).
pub(crate) async fn fake_topic(
    partitions: u32,
    per_partition: u32,
    keys: u32,
) -> (FakeBroker, Arc<Cluster>) {
    let broker = FakeBroker::default();
    let address = broker.start().await;
    let cluster = Cluster::unconnected(test_client_config());
    let addresses: Vec<&str> = (0..partitions).map(|_| address.as_str()).collect();
    cluster.set_routes("t", &addresses);
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerConfig {
            client: test_client_config(),
            linger_ms: 1,
            batch_max_records: 7,
            ..ProducerConfig::default()
        },
    );
    for index in 0..per_partition {
        for partition in 0..partitions {
            let mut record =
                Record::new("t", format!("{partition}-{index}")).with_partition(partition);
            if keys > 0 {
                record = record.with_key(format!("k{}", index % keys));
            }
            producer.enqueue(record).await.expect("enqueued");
        }
    }
    producer.close().await.expect("all records written");
    (broker, cluster)
}

pub(crate) fn test_config() -> SubscriberConfig {
    SubscriberConfig {
        client: test_client_config(),
        reconnect_backoff_initial_ms: 10,
        reconnect_backoff_max_ms: 50,
        ..SubscriberConfig::new("t", "s")
    }
}

pub(crate) async fn subscriber_on(cluster: &Arc<Cluster>, config: SubscriberConfig) -> Subscriber {
    Subscriber::connect_on(cluster.clone(), config)
        .await
        .expect("subscriber connects to the fake broker")
}

/// Waits (up to [`WAIT_LIMIT_MS`]) until `condition` holds.
pub(crate) async fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    sluice_proto::test_util::eventually_true(what, Duration::from_millis(WAIT_LIMIT_MS), condition)
        .await
}

async fn recv(subscriber: &Subscriber) -> Message {
    subscriber
        .recv_timeout(Duration::from_millis(WAIT_LIMIT_MS))
        .await
        .expect("no error")
        .expect("a message within the wait limit")
}

fn text(message: &Message) -> String {
    String::from_utf8_lossy(message.value.as_deref().unwrap_or_default()).into_owned()
}

#[tokio::test]
async fn every_message_is_received_and_acknowledged_durably() {
    let (broker, cluster) = fake_topic(2, 20, 0).await;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let message = recv(&subscriber).await;
        assert_eq!(message.delivery_count, 1);
        assert_eq!(
            text(&message),
            format!("{}-{}", message.partition, message.offset)
        );
        subscriber.ack(&message).await.expect("acknowledged");
        assert!(broker.lock().subscription.acked.contains(&(
            "t".to_string(),
            message.partition,
            message.offset
        )));
        assert!(seen.insert(message.id()), "{} twice", message.id());
    }
    assert_eq!(broker.lock().subscription.acked.len(), 40);
    subscriber.close().await.expect("closed");
}

#[tokio::test]
async fn credit_bounds_what_the_broker_delivers() {
    let (broker, cluster) = fake_topic(1, 100, 0).await;
    let config = SubscriberConfig {
        receiver_queue_size: 10,
        ..test_config()
    };
    let subscriber = subscriber_on(&cluster, config).await;
    let _first = recv(&subscriber).await;
    wait_for("the first window", || {
        broker.lock().subscription.deliveries == 10
    })
    .await;
    // The broker has no permits left until the application takes half the
    // queue; give it time to (wrongly) deliver more.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(broker.lock().subscription.deliveries, 10);
    for _ in 0..4 {
        recv(&subscriber).await;
    }
    wait_for("the refill", || broker.lock().subscription.deliveries == 15).await;
    assert!(broker
        .lock()
        .subscription
        .events
        .contains(&"flow 5".to_string()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(broker.lock().subscription.deliveries, 15);
}

#[tokio::test]
async fn refused_acknowledgements_are_reported_with_their_code() {
    let (broker, cluster) = fake_topic(1, 3, 0).await;
    broker
        .lock()
        .subscription
        .reject_acks
        .insert(1, ErrorCode::DeliveryExpired);
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let messages = [
        recv(&subscriber).await,
        recv(&subscriber).await,
        recv(&subscriber).await,
    ];
    let receipts =
        futures::future::join_all(messages.iter().map(|message| subscriber.ack(message))).await;
    let codes: Vec<Option<ErrorCode>> = receipts
        .iter()
        .map(|result| result.as_ref().err().and_then(ClientError::code))
        .collect();
    assert_eq!(codes, vec![None, Some(ErrorCode::DeliveryExpired), None]);
}

#[tokio::test]
async fn a_broken_stream_is_reopened_and_its_messages_come_again() {
    let (broker, cluster) = fake_topic(1, 5, 0).await;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let mut first: Vec<Message> = Vec::new();
    for _ in 0..5 {
        first.push(recv(&subscriber).await);
    }
    subscriber.ack(&first[0]).await.expect("acknowledged");
    broker.lock().subscription.break_streams = Some((1, ErrorCode::NotOwner));
    // Everything not acknowledged comes again on the new stream.
    let mut again = BTreeMap::new();
    while again.len() < 4 {
        let message = recv(&subscriber).await;
        again.insert(message.offset, message.delivery_count);
    }
    assert_eq!(again, BTreeMap::from([(1, 2), (2, 2), (3, 2), (4, 2)]));
    assert_eq!(broker.lock().subscription.opens, 2);
    // An acknowledgement of the first delivery is refused, not faked.
    let error = subscriber
        .ack(&first[1])
        .await
        .expect_err("its stream ended");
    assert_eq!(error.code(), Some(ErrorCode::DeliveryExpired));
    assert!(!broker
        .lock()
        .subscription
        .acked
        .contains(&("t".to_string(), 0, 1)));
}

#[tokio::test]
async fn acknowledgements_in_flight_when_the_stream_breaks_fail() {
    let (broker, cluster) = fake_topic(1, 1, 0).await;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let message = recv(&subscriber).await;
    broker.lock().subscription.hold_receipts = true;
    let receipt = subscriber.ack_nowait(&message).await.expect("queued");
    wait_for("the ack to reach the broker", || {
        broker
            .lock()
            .subscription
            .events
            .contains(&"ack 0".to_string())
    })
    .await;
    broker.lock().subscription.break_streams = Some((1, ErrorCode::Unavailable));
    let error = receipt.await.expect_err("no receipt came");
    assert_eq!(error.code(), Some(ErrorCode::DeliveryExpired));
}

#[tokio::test]
async fn connect_reports_what_retrying_cannot_fix() {
    let (broker, cluster) = fake_topic(1, 1, 0).await;
    for code in [ErrorCode::ConsumerBusy, ErrorCode::UnknownSubscription] {
        broker.lock().subscription.refuse_opens.push_back(code);
        let error = Subscriber::connect_on(cluster.clone(), test_config())
            .await
            .err()
            .expect("refused");
        assert_eq!(error.code(), Some(code));
    }
    // An owner change while connecting is retried.
    broker
        .lock()
        .subscription
        .refuse_opens
        .push_back(ErrorCode::NotOwner);
    let subscriber = subscriber_on(&cluster, test_config()).await;
    assert_eq!(text(&recv(&subscriber).await), "0-0");
}

#[tokio::test]
async fn negative_acknowledgements_bring_messages_back() {
    let (broker, cluster) = fake_topic(1, 2, 0).await;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let first = recv(&subscriber).await;
    let second = recv(&subscriber).await;
    subscriber
        .nack_with_delay(&first, Duration::from_millis(30))
        .await
        .expect("queued");
    subscriber.ack(&second).await.expect("acknowledged");
    let again = recv(&subscriber).await;
    assert_eq!((again.offset, again.delivery_count), (0, 2));
    assert!(broker
        .lock()
        .subscription
        .events
        .contains(&"nack 0 delay=30".to_string()));
    subscriber.ack(&again).await.expect("acknowledged");
}

#[tokio::test]
async fn cumulative_acknowledgement_needs_an_ordered_subscription() {
    let (broker, cluster) = fake_topic(1, 3, 0).await;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let message = recv(&subscriber).await;
    let error = subscriber
        .ack_cumulative(&message)
        .await
        .expect_err("shared subscriptions have no order to acknowledge up to");
    assert!(matches!(error, ClientError::InvalidArgument(_)));
    subscriber.close().await.expect("closed");

    broker.lock().subscription.subscription_type = SubscriptionType::Exclusive;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let mut last = recv(&subscriber).await;
    while last.offset < 2 {
        last = recv(&subscriber).await;
    }
    subscriber
        .ack_cumulative(&last)
        .await
        .expect("acknowledged");
    assert_eq!(broker.lock().subscription.acked.len(), 3);
}

#[tokio::test]
async fn failover_status_is_followed() {
    let (broker, cluster) = fake_topic(2, 1, 0).await;
    broker.lock().subscription.subscription_type = SubscriptionType::Failover;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    assert_eq!(subscriber.is_active(0), Some(false));
    assert_eq!(subscriber.is_active(7), None);
    broker.lock().subscription.push_status = Some(true);
    wait_for("a status", || {
        subscriber.is_active(0) == Some(true) || subscriber.is_active(1) == Some(true)
    })
    .await;
    assert_eq!(subscriber.active_partitions().len(), 1);
}

#[tokio::test]
async fn close_sends_pending_acknowledgements() {
    let (broker, cluster) = fake_topic(1, 1, 0).await;
    let config = SubscriberConfig {
        // Long enough that only close can have sent it.
        ack_flush_interval_ms: 60_000,
        ..test_config()
    };
    let subscriber = subscriber_on(&cluster, config).await;
    let message = recv(&subscriber).await;
    let receipt = subscriber.ack_nowait(&message).await.expect("queued");
    subscriber.close().await.expect("closed");
    receipt.await.expect("acknowledged during close");
    assert_eq!(broker.lock().subscription.acked.len(), 1);
}

#[tokio::test]
async fn the_listener_keeps_per_key_order_and_redelivers_failures() {
    let (broker, cluster) = fake_topic(2, 30, 3).await;
    let subscriber = subscriber_on(
        &cluster,
        SubscriberConfig {
            receiver_queue_size: 8,
            ..test_config()
        },
    )
    .await;
    // Per key: offsets of every handler start, and which keys are running.
    let log: Arc<Mutex<OffsetsByKey>> = Arc::default();
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlaps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handler_log = log.clone();
    let handler_overlaps = overlaps.clone();
    let listener = subscriber
        .listen(
            ListenerConfig {
                concurrency: 4,
                ordering: Ordering::PerKey,
                ..ListenerConfig::default()
            },
            move |message: Message| {
                let log = handler_log.clone();
                let running = running.clone();
                let overlaps = handler_overlaps.clone();
                async move {
                    let key = String::from_utf8_lossy(message.key.as_deref().unwrap_or_default())
                        .into_owned();
                    if !lock(&running).insert(key.clone()) {
                        overlaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    lock(&log)
                        .entry((message.partition, key.clone()))
                        .or_default()
                        .push(message.offset);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    lock(&running).remove(&key);
                    // Every seventh message fails on its first delivery.
                    if message.offset % 7 == 3 && message.delivery_count == 1 {
                        return Err("first attempt fails");
                    }
                    Ok(())
                }
            },
        )
        .expect("listening");
    wait_for("every message to be acknowledged", || {
        broker.lock().subscription.acked.len() == 60
    })
    .await;
    assert!(listener.failed() > 0);
    assert_eq!(listener.handled(), 60);
    listener.shutdown().await.expect("shut down");
    assert_eq!(overlaps.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The fake delivers in offset order except for redeliveries, so apart
    // from the retried offsets each key's offsets rise.
    for ((partition, key), offsets) in lock(&log).iter() {
        let first_attempts: Vec<u64> = {
            let mut seen = HashSet::new();
            offsets
                .iter()
                .copied()
                .filter(|offset| seen.insert(*offset))
                .collect()
        };
        let mut sorted = first_attempts.clone();
        sorted.sort_unstable();
        assert_eq!(first_attempts, sorted, "{partition}/{key}: {offsets:?}");
    }
}

#[tokio::test]
async fn connect_creates_the_subscription_once_and_reports_conflicts() {
    let (broker, cluster) = fake_topic(2, 1, 0).await;
    let broker_address = cluster
        .cached_route("t", 0)
        .expect("seeded route")
        .broker_address;
    let nameserver = FakeNameServer::default();
    nameserver
        .lock()
        .routes
        .insert("t".into(), vec![broker_address.clone(), broker_address]);
    let nameserver_address = nameserver.start().await;
    let config = SubscriberConfig {
        client: ClientConfig {
            bootstrap: vec![nameserver_address],
            ..test_client_config()
        },
        subscription_type: SubscriptionType::KeyShared,
        max_deliveries: 3,
        ..test_config()
    };
    let subscriber = Subscriber::connect(config.clone())
        .await
        .expect("connects through the nameserver");
    let created = nameserver
        .lock()
        .subscriptions
        .get(&("t".to_string(), "s".to_string()))
        .cloned()
        .expect("the subscription was created");
    assert_eq!(created.r#type, SubscriptionType::KeyShared as i32);
    assert_eq!(created.max_deliveries, 3);
    let mut values = vec![
        text(&recv(&subscriber).await),
        text(&recv(&subscriber).await),
    ];
    values.sort();
    assert_eq!(values, vec!["0-0".to_string(), "1-0".to_string()]);
    subscriber.close().await.expect("closed");
    // Same settings again: fine. Other settings: refused, with the code.
    Subscriber::connect(config.clone())
        .await
        .expect("creating again with the same settings is a no-op")
        .close()
        .await
        .expect("closed");
    let error = Subscriber::connect(SubscriberConfig {
        max_deliveries: 4,
        ..config
    })
    .await
    .err()
    .expect("other settings conflict");
    assert_eq!(error.code(), Some(ErrorCode::SubscriptionConflict));
    assert_eq!(broker.lock().subscription.opens, 4);
}

#[test]
fn settings_are_checked() {
    for (config, what) in [
        (SubscriberConfig::new("t", ""), "subscription name"),
        (SubscriberConfig::new("", "s"), "topic name"),
        (
            SubscriberConfig {
                receiver_queue_size: 0,
                ..SubscriberConfig::new("t", "s")
            },
            "receiver_queue_size",
        ),
        (
            SubscriberConfig {
                receiver_queue_size: MAX_RECEIVER_QUEUE_SIZE + 1,
                ..SubscriberConfig::new("t", "s")
            },
            "receiver_queue_size",
        ),
        (
            SubscriberConfig {
                max_pending_acks: 0,
                ..SubscriberConfig::new("t", "s")
            },
            "max_pending_acks",
        ),
    ] {
        match config.validate() {
            Err(ClientError::InvalidArgument(message)) => {
                assert!(message.contains(what), "{message} should name {what}")
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert!(SubscriberConfig::new("t", "s").validate().is_ok());
}

#[tokio::test]
async fn consumer_names_default_to_the_client_id() {
    let (broker, cluster) = fake_topic(1, 0, 0).await;
    let mut config = test_config();
    config.client.client_id = "worker".into();
    let first = subscriber_on(&cluster, config.clone()).await;
    let second = subscriber_on(&cluster, config.clone()).await;
    assert!(first.consumer_name().starts_with("worker-"));
    assert_ne!(first.consumer_name(), second.consumer_name());
    config.consumer_name = "named".into();
    assert_eq!(
        subscriber_on(&cluster, config).await.consumer_name(),
        "named"
    );
    assert_eq!(broker.lock().subscription.opens, 3);
}

#[tokio::test]
async fn the_listener_bounds_concurrency_and_gives_back_panics() {
    let (broker, cluster) = fake_topic(1, 40, 0).await;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let running = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let most = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (handler_running, handler_most) = (running.clone(), most.clone());
    let listener = subscriber
        .listen(
            ListenerConfig {
                concurrency: 3,
                ..ListenerConfig::default()
            },
            move |message: Message| {
                let running = handler_running.clone();
                let most = handler_most.clone();
                async move {
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    if message.offset == 5 && message.delivery_count == 1 {
                        panic!("a handler bug (test)");
                    }
                    Ok::<(), String>(())
                }
            },
        )
        .expect("listening");
    wait_for("every message to be acknowledged", || {
        broker.lock().subscription.acked.len() == 40
    })
    .await;
    listener.shutdown().await.expect("shut down");
    assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    assert!(broker
        .lock()
        .subscription
        .events
        .iter()
        .any(|event| event.starts_with("nack 5")));
}

#[tokio::test]
async fn shutdown_waits_for_running_handlers_and_sends_their_acknowledgements() {
    let (broker, cluster) = fake_topic(1, 1, 0).await;
    let config = SubscriberConfig {
        // Only the final flush can send it.
        ack_flush_interval_ms: 60_000,
        ..test_config()
    };
    let subscriber = subscriber_on(&cluster, config).await;
    let (started, started_signal) = tokio::sync::oneshot::channel();
    let started = Arc::new(Mutex::new(Some(started)));
    let listener = subscriber
        .listen(ListenerConfig::default(), move |_message: Message| {
            let started = started.clone();
            async move {
                if let Some(started) = lock(&started).take() {
                    let _ = started.send(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<(), String>(())
            }
        })
        .expect("listening");
    started_signal.await.expect("the handler started");
    listener.shutdown().await.expect("shut down");
    assert_eq!(broker.lock().subscription.acked.len(), 1);
}

#[tokio::test]
async fn listener_settings_are_checked() {
    let (_broker, cluster) = fake_topic(1, 0, 0).await;
    let subscriber = subscriber_on(&cluster, test_config()).await;
    let error = subscriber
        .listen(
            ListenerConfig {
                concurrency: 0,
                ..ListenerConfig::default()
            },
            |_message: Message| async { Ok::<(), String>(()) },
        )
        .err()
        .expect("zero concurrency is refused");
    assert!(matches!(error, ClientError::InvalidArgument(_)));
}

#[tokio::test]
async fn a_stream_moves_to_the_new_owner_without_waiting_for_a_frozen_old_one() {
    let (old_owner, cluster) = fake_topic(1, 40, 0).await;
    // Same subscription state, another server.
    let new_owner = FakeBroker {
        state: old_owner.state.clone(),
        ..FakeBroker::default()
    };
    let new_address = new_owner.start().await;
    let config = SubscriberConfig {
        receiver_queue_size: 4,
        ..test_config()
    };
    let subscriber = subscriber_on(&cluster, config).await;
    let mut seen = BTreeSet::new();
    let limit = Duration::from_millis(WAIT_LIMIT_MS);
    while seen.len() < 5 {
        let message = subscriber
            .recv_timeout(limit)
            .await
            .expect("recv")
            .expect("a message from the first owner");
        seen.insert(message.offset);
    }
    old_owner
        .frozen
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let opens = old_owner.lock().subscription.opens;
    // A takeover: the route names another broker at a higher epoch. The
    // frozen owner never ends its stream; the subscriber must not wait for
    // it (nor for any request timeout).
    cluster.set_partition_routes(
        "t",
        vec![sluice_proto::v1::PartitionRoute {
            partition: 0,
            broker_id: "new".into(),
            broker_address: new_address,
            epoch: 2,
        }],
    );
    while seen.len() < 40 {
        let message = subscriber
            .recv_timeout(limit)
            .await
            .expect("recv")
            .expect("messages keep coming from the new owner");
        seen.insert(message.offset);
    }
    assert_eq!(seen, (0..40).collect::<BTreeSet<u64>>());
    assert!(
        old_owner.lock().subscription.opens > opens,
        "a stream was opened at the new owner"
    );
    old_owner
        .frozen
        .store(false, std::sync::atomic::Ordering::SeqCst);
    subscriber.close().await.expect("close");
}
