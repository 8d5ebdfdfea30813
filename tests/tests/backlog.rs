//! Backlog quotas and producer pressure (ADR 0012) against real processes:
//! each policy (REJECT refuses with BACKLOG_QUOTA_EXCEEDED, HOLD blocks
//! producers until consumers drain and gives up after its timeout, EVICT
//! skips and counts the oldest unconsumed messages while the subscription
//! goes on), pressure levels OK → WARN → LIMIT in produce acknowledgements
//! and the SDK listener, and `DescribeSubscription` numbers that match what
//! was produced and acknowledged.

use sluice_client::{
    Admin, ClientError, PressureEvent, PressureLevel, PressureListener, Producer, ProducerConfig,
    Record, Subscriber, SubscriberConfig, SubscriptionLag,
};
use sluice_proto::v1::{
    BacklogPolicy, InitialPosition, Subscription, SubscriptionType, TopicConfig,
};
use sluice_proto::ErrorCode;
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs the `sluice` CLI against the cluster; returns its standard output.
fn sluice_cli(cluster: &Cluster, args: &[&str]) -> String {
    let output = std::process::Command::new(sluice_tests::cluster::binary("sluice"))
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .args(args)
        .output()
        .expect("run sluice");
    assert!(
        output.status.success(),
        "`sluice {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Short monitor intervals so the tests see pressure change quickly.
fn spec() -> ClusterSpec {
    ClusterSpec {
        broker_config: "[backlog]\ncheck_interval_ms = 100\nsubscriptions_refresh_ms = 200\n"
            .to_string(),
        ..ClusterSpec::default()
    }
}

/// Creates a one-partition topic with a message quota and a shared
/// subscription `workers` from the earliest offset.
async fn topic_with_quota(
    cluster: &Cluster,
    topic: &str,
    quota_messages: u64,
    policy: BacklogPolicy,
    hold_timeout_ms: u64,
) -> Admin {
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin client");
    cluster
        .create_topic_with(
            topic,
            TopicConfig {
                partitions: 1,
                backlog_quota_messages: quota_messages,
                backlog_warn_ratio_percent: 50,
                backlog_policy: policy as i32,
                backlog_hold_timeout_ms: hold_timeout_ms,
                ..TopicConfig::default()
            },
        )
        .await;
    admin
        .create_subscription(Subscription {
            topic: topic.to_string(),
            name: "workers".to_string(),
            r#type: SubscriptionType::Shared as i32,
            initial_position: InitialPosition::Earliest as i32,
            ..Subscription::default()
        })
        .await
        .expect("create subscription");
    admin
}

fn subscriber_config(cluster: &Cluster, topic: &str) -> SubscriberConfig {
    SubscriberConfig {
        client: cluster.client_config(),
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Earliest,
        ack_timeout_ms: 30_000,
        receiver_queue_size: 100,
        ..SubscriberConfig::new(topic, "workers")
    }
}

fn value_of(value: Option<&bytes::Bytes>) -> u64 {
    std::str::from_utf8(value.expect("a value"))
        .expect("utf-8")
        .parse()
        .expect("a number")
}

/// Polls `DescribeSubscription` of `workers` until `condition` holds;
/// panics with the last answer after `timeout`.
async fn describe_until(
    admin: &Admin,
    topic: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&SubscriptionLag) -> bool,
) -> SubscriptionLag {
    describe_subscription_until(admin, topic, "workers", what, timeout, condition).await
}

async fn describe_subscription_until(
    admin: &Admin,
    topic: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&SubscriptionLag) -> bool,
) -> SubscriptionLag {
    let deadline = Instant::now() + timeout;
    loop {
        let lag = admin.describe_subscription(topic, name).await;
        if let Ok(lag) = &lag {
            if condition(lag) {
                return lag.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last answer: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Receives and acknowledges up to `count` messages (stops after 5 s
/// without one); returns their values.
async fn consume(subscriber: &Subscriber, count: usize) -> Vec<u64> {
    let mut values = Vec::new();
    while values.len() < count {
        let Some(message) = subscriber
            .recv_timeout(Duration::from_secs(5))
            .await
            .expect("receive")
        else {
            break;
        };
        subscriber.ack(&message).await.expect("acknowledge");
        values.push(value_of(message.value.as_ref()));
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reject_policy_refuses_produce_at_the_quota_with_levels_in_acks_listener_and_describe() {
    const QUOTA: u64 = 100;
    let cluster = Cluster::start(spec()).await;
    let admin = topic_with_quota(&cluster, "orders", QUOTA, BacklogPolicy::Reject, 0).await;
    let heard: Arc<Mutex<Vec<PressureEvent>>> = Arc::default();
    let sink = heard.clone();
    let producer = Producer::new(ProducerConfig {
        client: cluster.client_config(),
        linger_ms: 0,
        on_pressure: Some(PressureListener::new(move |event| {
            sink.lock().expect("lock").push(event)
        })),
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    // One record at a time until the broker refuses: the acknowledgements
    // go from OK through WARN (half the quota) to the refusal.
    let mut levels = Vec::new();
    let mut accepted = 0u64;
    let refusal = loop {
        assert!(
            accepted < 20 * QUOTA,
            "never refused; levels seen: {levels:?}"
        );
        match producer
            .send(Record::new("orders", accepted.to_string()))
            .await
        {
            Ok(metadata) => {
                assert_eq!(metadata.offset, accepted);
                if levels.last() != Some(&metadata.pressure.level) {
                    levels.push(metadata.pressure.level);
                }
                accepted += 1;
                if accepted == QUOTA * 6 / 10 {
                    // Between the warning line and the quota: let the
                    // monitor see it, so the next acknowledgements say WARN
                    // however loaded the machine is.
                    describe_until(&admin, "orders", "WARN", Duration::from_secs(30), |lag| {
                        lag.pressure == PressureLevel::Warn
                    })
                    .await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => break error,
        }
    };
    assert_eq!(
        refusal.code(),
        Some(ErrorCode::BacklogQuotaExceeded),
        "refused with {refusal}"
    );
    assert!(
        refusal.to_string().contains("backlog quota") && refusal.to_string().contains("REJECT"),
        "the refusal says why: {refusal}"
    );
    assert!(accepted >= QUOTA, "refused below the quota ({accepted})");
    assert_eq!(
        levels.first(),
        Some(&PressureLevel::Ok),
        "levels: {levels:?}"
    );
    assert!(levels.contains(&PressureLevel::Warn), "levels: {levels:?}");
    let changes: Vec<(PressureLevel, PressureLevel)> = heard
        .lock()
        .expect("lock")
        .iter()
        .map(|event| (event.previous, event.pressure.level))
        .collect();
    assert!(
        changes.starts_with(&[
            (PressureLevel::Ok, PressureLevel::Warn),
            (PressureLevel::Warn, PressureLevel::Limit)
        ]),
        "listener heard {changes:?}"
    );
    let metrics = producer.pressure_metrics();
    assert_eq!(metrics.partitions_limit, 1, "{metrics:?}");
    assert!(metrics.acknowledgements_warn > 0, "{metrics:?}");
    let latest = producer.pressure("orders", 0).expect("pressure known");
    assert_eq!(latest.level, PressureLevel::Limit);
    assert!(latest.backlog_messages >= QUOTA, "{latest:?}");

    // Nobody consumed: the backlog is everything accepted.
    let lag = describe_until(
        &admin,
        "orders",
        "the backlog",
        Duration::from_secs(30),
        |lag| lag.backlog_messages == accepted,
    )
    .await;
    assert_eq!(lag.pressure, PressureLevel::Limit);
    assert_eq!(lag.pressure_reason, "messages");
    assert_eq!(lag.consumers, 0);
    assert_eq!(lag.partitions.len(), 1);
    assert_eq!(lag.partitions[0].mark_delete, 0);
    assert_eq!(lag.partitions[0].high_watermark, accepted);
    assert!(lag.backlog_bytes > 0, "{lag:?}");
    assert!(lag.recommended_consumers >= 1, "{lag:?}");
    // The CLI shows the lag table with the warning.
    let described = sluice_cli(&cluster, &["subscription", "describe", "orders", "workers"]);
    assert!(
        described.contains("WARNING: partition 0 is at its backlog quota")
            && described.contains("quota kind: messages"),
        "{described}"
    );
    assert!(
        described.contains(&format!("backlog: {accepted} messages")),
        "{described}"
    );

    // Consumers catch up on 60: the backlog drops below the quota and
    // produce is accepted again.
    let subscriber = Subscriber::connect(subscriber_config(&cluster, "orders"))
        .await
        .expect("subscriber");
    let values = consume(&subscriber, 60).await;
    assert_eq!(values, (0..60).collect::<Vec<_>>());
    let lag = describe_until(
        &admin,
        "orders",
        "the acknowledgements",
        Duration::from_secs(30),
        |lag| lag.backlog_messages == accepted - 60,
    )
    .await;
    assert_eq!(lag.partitions[0].mark_delete, 60);
    assert_eq!(lag.consumers, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match producer.send(Record::new("orders", "after")).await {
            Ok(metadata) => {
                assert_ne!(metadata.pressure.level, PressureLevel::Limit);
                break;
            }
            Err(error) if error.code() == Some(ErrorCode::BacklogQuotaExceeded) => {
                assert!(Instant::now() < deadline, "still refused: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("unexpected produce error: {error}"),
        }
    }
    subscriber.close().await.expect("close subscriber");
    producer.close().await.expect("close producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hold_policy_blocks_producers_until_consumers_drain_and_gives_up_after_its_timeout() {
    const QUOTA: u64 = 50;
    const RECORDS: u64 = 150;
    let cluster = Cluster::start(spec()).await;
    let admin = topic_with_quota(&cluster, "held", QUOTA, BacklogPolicy::Hold, 120_000).await;
    cluster.create_topic("free", 1).await;
    let producer = Arc::new(
        Producer::new(ProducerConfig {
            client: cluster.client_config(),
            linger_ms: 0,
            // Longer than the broker may hold a batch.
            delivery_timeout_ms: 300_000,
            ..ProducerConfig::default()
        })
        .await
        .expect("producer"),
    );
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let producer = producer.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            for value in 0..RECORDS {
                producer
                    .send(Record::new("held", value.to_string()))
                    .await
                    .expect("held, then accepted");
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // The broker holds the producer once the backlog reaches the quota.
    let lag = describe_until(
        &admin,
        "held",
        "the limit",
        Duration::from_secs(60),
        |lag| lag.pressure == PressureLevel::Limit,
    )
    .await;
    assert!(lag.backlog_messages >= QUOTA, "{lag:?}");
    // While nobody consumes, it stays held.
    let before = sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sent.load(Ordering::SeqCst);
    assert!(after < RECORDS, "the producer was never held");
    assert!(
        after <= before + 1,
        "the producer went on while held: {before} then {after}"
    );
    // Only the held partition waits: the same producer (the same stream to
    // the broker) still writes elsewhere.
    let free = producer
        .send(Record::new("free", "not held"))
        .await
        .expect("another topic is not held");
    assert_eq!(free.pressure.level, PressureLevel::Ok);
    assert!(sent.load(Ordering::SeqCst) < RECORDS, "no longer held?");
    // A consumer drains: the producer proceeds and everything arrives, in
    // order, once.
    let subscriber = Subscriber::connect(subscriber_config(&cluster, "held"))
        .await
        .expect("subscriber");
    let values = consume(&subscriber, RECORDS as usize).await;
    writer.await.expect("writer finished");
    assert_eq!(sent.load(Ordering::SeqCst), RECORDS);
    assert_eq!(values, (0..RECORDS).collect::<Vec<_>>());
    subscriber.close().await.expect("close subscriber");

    // With a short hold timeout the batch fails with the quota error.
    topic_with_quota(&cluster, "held-briefly", QUOTA, BacklogPolicy::Hold, 1_000).await;
    let mut accepted = 0u64;
    let failure = loop {
        assert!(accepted < 20 * QUOTA, "never held");
        match producer
            .send(Record::new("held-briefly", accepted.to_string()))
            .await
        {
            Ok(_) => {
                accepted += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => break error,
        }
    };
    assert_eq!(
        failure.code(),
        Some(ErrorCode::BacklogQuotaExceeded),
        "{failure}"
    );
    assert!(failure.to_string().contains("HOLD"), "{failure}");
    assert!(accepted >= QUOTA);
    match Arc::try_unwrap(producer) {
        Ok(producer) => producer.close().await.expect("close producer"),
        Err(_) => panic!("the writer still holds the producer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evict_policy_skips_and_counts_the_oldest_unconsumed_messages_and_the_subscription_goes_on()
{
    const QUOTA: u64 = 100;
    const RECORDS: u64 = 300;
    // What eviction keeps: the warning line (50% of the quota).
    const KEPT: u64 = 50;
    let cluster = Cluster::start(spec()).await;
    let admin = topic_with_quota(&cluster, "metrics", QUOTA, BacklogPolicy::Evict, 0).await;
    let producer = cluster.producer().await;
    // Producers are never held or refused under EVICT.
    let mut pending = Vec::new();
    for value in 0..RECORDS {
        pending.push(
            producer
                .enqueue(Record::new("metrics", value.to_string()))
                .await
                .expect("enqueue"),
        );
    }
    for delivery in pending {
        delivery.await.expect("accepted under EVICT");
    }
    let lag = describe_until(
        &admin,
        "metrics",
        "the eviction",
        Duration::from_secs(60),
        |lag| lag.backlog_messages == KEPT,
    )
    .await;
    assert_eq!(lag.evicted, RECORDS - KEPT, "{lag:?}");
    assert_eq!(lag.partitions[0].mark_delete, RECORDS - KEPT);
    assert_eq!(lag.pressure, PressureLevel::Warn, "{lag:?}");
    // The subscription gets what was not evicted, then carries on.
    let subscriber = Subscriber::connect(subscriber_config(&cluster, "metrics"))
        .await
        .expect("subscriber");
    let values = consume(&subscriber, KEPT as usize).await;
    assert_eq!(values, (RECORDS - KEPT..RECORDS).collect::<Vec<_>>());
    for value in RECORDS..RECORDS + 10 {
        producer
            .send(Record::new("metrics", value.to_string()))
            .await
            .expect("produce");
    }
    let values: BTreeSet<u64> = consume(&subscriber, 10).await.into_iter().collect();
    assert_eq!(values, (RECORDS..RECORDS + 10).collect::<BTreeSet<_>>());
    let lag = describe_until(
        &admin,
        "metrics",
        "the backlog drained",
        Duration::from_secs(30),
        |lag| lag.backlog_messages == 0,
    )
    .await;
    assert_eq!(lag.evicted, RECORDS - KEPT);
    assert_eq!(lag.pressure, PressureLevel::Ok);
    assert_eq!(lag.estimated_drain_ms, Some(0));
    subscriber.close().await.expect("close subscriber");
    producer.close().await.expect("close producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn describing_an_unknown_subscription_fails_clearly() {
    let cluster = Cluster::start(spec()).await;
    let admin = topic_with_quota(&cluster, "plain", 0, BacklogPolicy::Reject, 0).await;
    // Quotas given on the command line are stored and shown.
    sluice_cli(
        &cluster,
        &[
            "topic",
            "create",
            "capped",
            "--backlog-quota-messages",
            "1000",
            "--backlog-policy",
            "evict",
        ],
    );
    let described = sluice_cli(&cluster, &["topic", "describe", "capped"]);
    assert!(
        described.contains("backlog quota: 1000 messages; warn from 80%; at the limit: evict"),
        "{described}"
    );
    match admin.describe_subscription("plain", "nobody").await {
        Err(ClientError::Server(error)) => {
            assert_eq!(error.code, ErrorCode::UnknownSubscription)
        }
        other => panic!("expected UNKNOWN_SUBSCRIPTION, got {other:?}"),
    }
    // Without a quota the level stays OK whatever the backlog.
    let producer = cluster.producer().await;
    for value in 0..20u64 {
        let metadata = producer
            .send(Record::new("plain", value.to_string()))
            .await
            .expect("produce");
        assert_eq!(metadata.pressure.level, PressureLevel::Ok);
    }
    let lag = describe_until(
        &admin,
        "plain",
        "the backlog",
        Duration::from_secs(30),
        |lag| lag.backlog_messages == 20,
    )
    .await;
    assert_eq!(lag.pressure, PressureLevel::Ok);
    assert_eq!(lag.estimated_drain_ms, None, "nothing drains: unknown");
    producer.close().await.expect("close producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn age_and_byte_quotas_are_measured_and_applied() {
    let cluster = Cluster::start(spec()).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin client");
    let producer = cluster.producer().await;
    let subscription = |topic: &str| Subscription {
        topic: topic.to_string(),
        name: "workers".to_string(),
        r#type: SubscriptionType::Shared as i32,
        initial_position: InitialPosition::Earliest as i32,
        ..Subscription::default()
    };

    // Age: messages an hour old are evicted down to those younger than
    // the warning line (half of one minute); the young ones stay.
    cluster
        .create_topic_with(
            "aged",
            TopicConfig {
                partitions: 1,
                backlog_quota_age_ms: 60_000,
                backlog_warn_ratio_percent: 50,
                backlog_policy: BacklogPolicy::Evict as i32,
                ..TopicConfig::default()
            },
        )
        .await;
    admin
        .create_subscription(subscription("aged"))
        .await
        .expect("create subscription");
    let an_hour_ago = sluice_proto::now_unix_ms() - 3_600_000;
    let mut pending = Vec::new();
    for value in 0..100u64 {
        pending.push(
            producer
                .enqueue(Record::new("aged", value.to_string()).with_timestamp_ms(an_hour_ago))
                .await
                .expect("enqueue"),
        );
    }
    producer.flush().await.expect("flush");
    for delivery in pending {
        delivery.await.expect("old records accepted");
    }
    for value in 100..120u64 {
        producer
            .send(Record::new("aged", value.to_string()))
            .await
            .expect("young records accepted");
    }
    let lag = describe_until(
        &admin,
        "aged",
        "the old ones evicted",
        Duration::from_secs(60),
        |lag| lag.evicted == 100 && lag.backlog_messages == 20,
    )
    .await;
    assert!(lag.oldest_unacknowledged_age_ms < 60_000, "{lag:?}");
    assert_eq!(lag.pressure, PressureLevel::Ok, "{lag:?}");
    let subscriber = Subscriber::connect(subscriber_config(&cluster, "aged"))
        .await
        .expect("subscriber");
    assert_eq!(
        consume(&subscriber, 20).await,
        (100..120).collect::<Vec<_>>()
    );
    subscriber.close().await.expect("close subscriber");

    // Bytes: records of about 1 KiB against a 20 KiB quota are refused
    // after about 20.
    cluster
        .create_topic_with(
            "heavy",
            TopicConfig {
                partitions: 1,
                backlog_quota_bytes: 20 * 1024,
                backlog_policy: BacklogPolicy::Reject as i32,
                ..TopicConfig::default()
            },
        )
        .await;
    admin
        .create_subscription(subscription("heavy"))
        .await
        .expect("create subscription");
    let payload = "x".repeat(1024);
    let mut accepted = 0u64;
    let refusal = loop {
        assert!(accepted < 1000, "never refused");
        match producer.send(Record::new("heavy", payload.clone())).await {
            Ok(_) => {
                accepted += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => break error,
        }
    };
    assert_eq!(
        refusal.code(),
        Some(ErrorCode::BacklogQuotaExceeded),
        "{refusal}"
    );
    assert!(accepted >= 15, "refused after {accepted} records");
    let lag = describe_until(
        &admin,
        "heavy",
        "the byte backlog",
        Duration::from_secs(30),
        |lag| lag.backlog_messages == accepted,
    )
    .await;
    assert!(lag.backlog_bytes >= 20 * 1024, "{lag:?}");
    assert_eq!(lag.pressure, PressureLevel::Limit);
    assert_eq!(lag.pressure_reason, "bytes");
    producer.close().await.expect("close producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_describe_shows_the_time_lag_of_a_streaming_group() {
    let cluster = Cluster::start(spec()).await;
    cluster.create_topic("clicks", 1).await;
    let producer = cluster.producer().await;
    let ten_minutes_ago = sluice_proto::now_unix_ms() - 600_000;
    for value in 0..20u64 {
        producer
            .send(Record::new("clicks", value.to_string()).with_timestamp_ms(ten_minutes_ago))
            .await
            .expect("produce");
    }
    producer.close().await.expect("close producer");
    // A group that read and committed 5 of them.
    let mut consumer = sluice_client::Consumer::subscribe(
        sluice_client::ConsumerConfig {
            client: cluster.client_config(),
            group: Some("readers".to_string()),
            auto_commit: false,
            reset: sluice_client::StartOffset::Earliest,
            ..sluice_client::ConsumerConfig::default()
        },
        &["clicks"],
    )
    .await
    .expect("consumer");
    for expected in 0..5u64 {
        let record = consumer.recv().await.expect("record");
        assert_eq!(record.offset, expected);
    }
    consumer.commit().await.expect("commit");
    consumer.close().await.expect("close consumer");
    let described = sluice_cli(&cluster, &["group", "describe", "readers"]);
    let row = described
        .lines()
        .find(|line| line.starts_with("clicks"))
        .unwrap_or_else(|| panic!("no row for clicks: {described}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // TOPIC PARTITION COMMITTED END LAG LAG_TIME [MEMBER]; the time lag
    // in human form (`10m`), in milliseconds in JSON.
    assert_eq!(&cells[..5], ["clicks", "0", "5", "20", "15"], "{described}");
    assert!(cells[5].ends_with('m'), "no time lag in {row:?}");
    let json = sluice_cli(
        &cluster,
        &["--output", "json", "group", "describe", "readers"],
    );
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let lag_ms = json["partitions"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["topic"] == "clicks"))
        .and_then(|row| row["lag_time_ms"].as_u64())
        .unwrap_or_else(|| panic!("no time lag in {json}"));
    assert!(
        lag_ms >= 600_000,
        "the first unconsumed record is ten minutes old: {json}"
    );
}

/// Commits `offset` for every partition of `topic` on behalf of `group`,
/// from outside the group (as admin tools do).
async fn commit_from_outside(cluster: &Cluster, group: &str, topic: &str, partitions: u32) {
    use sluice_proto::v1::broker_client::BrokerClient;
    use sluice_proto::v1::name_server_client::NameServerClient;
    use sluice_proto::v1::{CommitOffsetsRequest, FindCoordinatorRequest, PartitionOffset};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut nameserver = NameServerClient::connect(cluster.bootstrap()[0].clone())
                .await
                .map_err(|error| error.to_string())?;
            let coordinator = nameserver
                .find_coordinator(FindCoordinatorRequest {
                    group: group.to_string(),
                    ..Default::default()
                })
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            if coordinator.broker_address.is_empty() {
                return Err("no coordinator yet".to_string());
            }
            let address = if coordinator.broker_address.starts_with("http") {
                coordinator.broker_address.clone()
            } else {
                format!("http://{}", coordinator.broker_address)
            };
            let mut broker = BrokerClient::connect(address)
                .await
                .map_err(|error| error.to_string())?;
            let answer = broker
                .commit_offsets(CommitOffsetsRequest {
                    group: group.to_string(),
                    member_id: String::new(),
                    member_epoch: -1,
                    offsets: (0..partitions)
                        .map(|partition| PartitionOffset {
                            topic: topic.to_string(),
                            partition,
                            offset: 0,
                            ..PartitionOffset::default()
                        })
                        .collect(),
                    transaction: None,
                })
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            if answer.offsets.iter().all(|offset| offset.error == 0) {
                Ok(())
            } else {
                Err(format!("commit refused: {answer:?}"))
            }
        };
        match attempt.await {
            Ok(()) => return,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot commit: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A group member that keeps polling (so it heartbeats and releases what
/// it is told to) without committing, until `stop` is set.
fn polling_member(
    cluster: &Cluster,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let config = sluice_client::ConsumerConfig {
        client: cluster.client_config(),
        group: Some("dashboards".to_string()),
        auto_commit: false,
        reset: sluice_client::StartOffset::Earliest,
        ..sluice_client::ConsumerConfig::default()
    };
    tokio::spawn(async move {
        let mut consumer = sluice_client::Consumer::subscribe(config, &["skewed"])
            .await
            .expect("consumer");
        while !stop.load(Ordering::SeqCst) {
            consumer
                .recv_timeout(Duration::from_millis(200))
                .await
                .expect("poll");
        }
        consumer.close().await.expect("close consumer");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_assignment_spreads_the_lagging_partitions_over_members() {
    let cluster = Cluster::start(spec()).await;
    cluster.create_topic("skewed", 4).await;
    // Partitions 0 and 1 carry the backlog; 2 and 3 almost nothing.
    let records = (0..2000u64)
        .map(|value| {
            let partition = if value < 10 {
                2 + (value % 2) as u32
            } else {
                (value % 2) as u32
            };
            Record::new("skewed", value.to_string()).with_partition(partition)
        })
        .collect();
    cluster.produce_acknowledged(records).await;
    commit_from_outside(&cluster, "dashboards", "skewed", 4).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin client");
    let owned = |description: &sluice_proto::v1::DescribeGroupResponse| -> Vec<BTreeSet<u32>> {
        description
            .members
            .iter()
            .map(|member| {
                member
                    .assignment
                    .iter()
                    .flat_map(|topic| topic.partitions.iter().copied())
                    .collect()
            })
            .collect()
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The first member takes everything; by count a second one would then
    // take 2 and 3 and leave both lagging partitions with the first.
    let first = polling_member(&cluster, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let description = admin.describe_group("dashboards").await.expect("describe");
        if owned(&description) == vec![BTreeSet::from([0, 1, 2, 3])] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first member never owned all: {description:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = polling_member(&cluster, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let description = admin.describe_group("dashboards").await.expect("describe");
        let sets = owned(&description);
        let spread = sets.len() == 2
            && sets.iter().all(|set| {
                set.len() == 2 && set.iter().filter(|partition| **partition < 2).count() == 1
            });
        if spread {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lagging partitions were not spread: {sets:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    first.await.expect("first member");
    second.await.expect("second member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriptions_own_quota_evicts_only_its_backlog() {
    let cluster = Cluster::start(spec()).await;
    // No topic quota; "workers" keeps everything.
    let admin = topic_with_quota(&cluster, "feed", 0, BacklogPolicy::Hold, 0).await;
    sluice_cli(
        &cluster,
        &[
            "subscription",
            "create",
            "feed",
            "analytics",
            "--type",
            "shared",
            "--initial-position",
            "earliest",
            "--backlog-quota-messages",
            "50",
            "--backlog-policy",
            "evict",
        ],
    );
    let described = sluice_cli(&cluster, &["subscription", "describe", "feed", "analytics"]);
    assert!(
        described.contains("50 messages (others the topic's); at the limit: evict"),
        "{described}"
    );
    // A consumer creating it on subscribe with default settings is not in
    // conflict with the operator's quota.
    let subscriber = Subscriber::connect(SubscriberConfig {
        client: cluster.client_config(),
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Earliest,
        ..SubscriberConfig::new("feed", "analytics")
    })
    .await
    .expect("subscriber with default settings");
    subscriber.close().await.expect("close subscriber");

    let producer = cluster.producer().await;
    for value in 0..200u64 {
        let metadata = producer
            .send(Record::new("feed", value.to_string()))
            .await
            .expect("producers are never held for an evicting subscription");
        assert!(metadata.offset == value);
    }
    producer.close().await.expect("close producer");
    // Eviction keeps the topic's warning line (50 % of the subscription's
    // 50): everything else was evicted, possibly over several checks while
    // the records arrived.
    let analytics = describe_subscription_until(
        &admin,
        "feed",
        "analytics",
        "analytics evicted",
        Duration::from_secs(60),
        |lag| lag.backlog_messages < 50 && lag.evicted + lag.backlog_messages == 200,
    )
    .await;
    assert!(analytics.backlog_messages >= 25, "{analytics:?}");
    let workers = describe_until(
        &admin,
        "feed",
        "the other backlog",
        Duration::from_secs(30),
        |lag| lag.backlog_messages == 200,
    )
    .await;
    assert_eq!(workers.evicted, 0);
    assert_eq!(workers.pressure, PressureLevel::Ok);
    // `sluice produce` warns when the acknowledgement says consumers fall
    // behind (analytics is past its warning line).
    let output = std::process::Command::new(sluice_tests::cluster::binary("sluice"))
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .args(["produce", "feed", "one more"])
        .output()
        .expect("run sluice");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: feed/0 backlog at")
            && stderr.contains("not acknowledged by its slowest subscription"),
        "{stderr}"
    );
}
