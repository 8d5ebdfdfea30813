//! Alter operations of issue 15 against a real cluster: a topic's settings
//! changed while its partitions serve (retention applied by the running
//! owner), concurrent alters that must not lose each other, partitions
//! added and produced to, and what an attacker or a careless operator
//! tries (a topic that does not exist, shrinking, 0 and u64::MAX, an
//! internal topic, a principal without `Alter`); a group's offsets reset
//! while it is inactive and refused while it is not, and deleted; a
//! subscription skipped and cleared.

use bytes::Bytes;
use sluice_client::{
    Admin, ClientError, Consumer, ConsumerConfig, OffsetReset, Record, StartOffset, Subscriber,
    SubscriberConfig, SubscriptionReset, SubscriptionSkip,
};
use sluice_proto::v1::{
    InitialPosition, OffsetSpec, Subscription, SubscriptionType, TopicConfig, TopicConfigChanges,
};
use sluice_proto::ErrorCode;
use sluice_tests::cluster::{wait_until_writable, Cluster, ClusterSpec};
use sluice_tests::security::{allow, issue_client, until};
use std::time::{Duration, Instant};

/// Longest any condition below is waited for.
const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it is `Some`, at most [`WAIT`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn records(topic: &str, partition: Option<u32>, count: usize, bytes: usize) -> Vec<Record> {
    (0..count)
        .map(|index| Record {
            topic: topic.to_string(),
            partition,
            value: Some(Bytes::from(format!("{index:0>bytes$}"))),
            ..Record::default()
        })
        .collect()
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(error) => error.code(),
    }
}

fn cluster_spec() -> ClusterSpec {
    ClusterSpec {
        broker_config: "[retention]\ncheck_interval_ms = 200\n".into(),
        ..ClusterSpec::default()
    }
}

/// Retention by size set after the data was written deletes the running
/// partition's oldest segments; the cluster keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn altered_retention_applies_to_a_running_partition() {
    let cluster = Cluster::start(cluster_spec()).await;
    let topic = "alter-retention";
    cluster
        .create_topic_with(
            topic,
            TopicConfig {
                partitions: 1,
                segment_bytes: 2048,
                retention_ms: u64::MAX,
                retention_bytes: u64::MAX,
                ..TopicConfig::default()
            },
        )
        .await;
    // One record per batch (produced one after another), about 512 bytes
    // each: several closed segments.
    let producer = cluster.producer().await;
    for record in records(topic, Some(0), 40, 512) {
        producer.send(record).await.expect("acknowledged");
    }
    producer.close().await.expect("close");
    let admin = cluster.admin().await;
    let earliest = async || {
        admin
            .list_offsets(topic, 0, OffsetSpec::Earliest, 0)
            .await
            .expect("list offsets")
            .log_start_offset
    };
    let before = admin.describe_topic(topic).await.expect("describe");
    let segments_before = before.partitions[0].segments.len();
    assert!(segments_before >= 4, "{segments_before} segments");
    assert_eq!(earliest().await, 0);
    // The retention check runs every 200 ms: nothing was deleted under
    // u64::MAX, so the alter is what deletes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(earliest().await, 0, "deleted before the alter");

    let altered = admin
        .alter_topic(
            topic,
            TopicConfigChanges {
                retention_bytes: Some(1),
                ..TopicConfigChanges::default()
            },
        )
        .await
        .expect("alter");
    let config = altered.config.expect("config");
    assert_eq!(config.retention_bytes, 1);
    assert_eq!(config.retention_ms, u64::MAX, "untouched");
    let described = admin.describe_topic(topic).await.expect("describe");
    assert_eq!(
        described.topic.and_then(|topic| topic.config),
        Some(config),
        "describe shows the altered config"
    );
    let start = eventually("retention deleting the oldest segments", async || {
        let start = earliest().await;
        (start > 0).then_some(start)
    })
    .await;
    // Every closed segment may go (only the open one is always kept);
    // nothing acknowledged beyond the log start was lost.
    assert!(start <= 40, "start {start} beyond the high watermark");
    let latest = admin
        .list_offsets(topic, 0, OffsetSpec::Latest, 0)
        .await
        .expect("list offsets");
    assert_eq!(latest.high_watermark, 40);
    // Still serving: a new record is acknowledged after the kept ones.
    let metadata = cluster
        .produce_acknowledged(records(topic, Some(0), 1, 8))
        .await;
    assert_eq!(metadata[0].offset, 40);
}

/// Alters of different settings at once all land (compare-and-swap on the
/// topic key, applied again on a conflict).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_alters_do_not_lose_each_other() {
    let cluster = Cluster::start(cluster_spec()).await;
    let topic = "alter-concurrent";
    cluster.create_topic(topic, 1).await;
    let admin = std::sync::Arc::new(cluster.admin().await);
    let changes: Vec<TopicConfigChanges> = vec![
        TopicConfigChanges {
            retention_ms: Some(111_111),
            ..TopicConfigChanges::default()
        },
        TopicConfigChanges {
            retention_bytes: Some(222_222),
            ..TopicConfigChanges::default()
        },
        TopicConfigChanges {
            segment_bytes: Some(333_333),
            ..TopicConfigChanges::default()
        },
        TopicConfigChanges {
            segment_ms: Some(444_444),
            ..TopicConfigChanges::default()
        },
        TopicConfigChanges {
            message_ttl_ms: Some(555_555),
            ..TopicConfigChanges::default()
        },
        TopicConfigChanges {
            backlog_quota_messages: Some(666_666),
            ..TopicConfigChanges::default()
        },
    ];
    let tasks: Vec<_> = changes
        .into_iter()
        .map(|change| {
            let admin = admin.clone();
            tokio::spawn(async move { admin.alter_topic(topic, change).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("alter");
    }
    let config = admin
        .describe_topic(topic)
        .await
        .expect("describe")
        .topic
        .and_then(|topic| topic.config)
        .expect("config");
    assert_eq!(
        (
            config.retention_ms,
            config.retention_bytes,
            config.segment_bytes,
            config.segment_ms,
            config.message_ttl_ms,
            config.backlog_quota_messages
        ),
        (111_111, 222_222, 333_333, 444_444, 555_555, 666_666)
    );
}

/// `topic add-partitions` grows the topic, says what happens to key
/// order, and the new partition is served and takes records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn added_partitions_are_served_and_take_records() {
    let cluster = Cluster::start(cluster_spec()).await;
    let topic = "alter-grow";
    cluster.create_topic(topic, 1).await;
    let output = cluster
        .cli()
        .args(["topic", "add-partitions", topic, "--count", "3"])
        .output()
        .expect("sluice runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("now has 3 partitions"), "{stdout}");
    assert!(
        stdout.contains("keys hash to different partitions"),
        "{stdout}"
    );
    wait_until_writable(cluster.client_config(), topic).await;
    let metadata = cluster
        .produce_acknowledged(records(topic, Some(2), 3, 8))
        .await;
    assert_eq!(
        metadata
            .iter()
            .map(|m| (m.partition, m.offset))
            .collect::<Vec<_>>(),
        vec![(2, 0), (2, 1), (2, 2)]
    );
    let admin = cluster.admin().await;
    let read = admin.get_message(topic, 2, 1).await.expect("read back");
    assert_eq!(read.value, Some(Bytes::from(format!("{:0>8}", 1))));

    // Shrinking, the same count and past the limit are refused; the
    // topic keeps its 3 partitions.
    for count in ["1", "3", "4097"] {
        let output = cluster
            .cli()
            .args(["topic", "add-partitions", topic, "--count", count])
            .output()
            .expect("sluice runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{count} partitions accepted");
        assert!(stderr.contains("partitions"), "{count}: {stderr}");
    }
    let described = admin.describe_topic(topic).await.expect("describe");
    assert_eq!(described.partitions.len(), 3);
}

/// What a careless operator or an attacker tries gets a clear refusal and
/// leaves the topic and the nameserver as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_alters_are_refused_and_change_nothing() {
    let cluster = Cluster::start(cluster_spec()).await;
    let topic = "alter-bad";
    cluster.create_topic(topic, 2).await;
    let admin = cluster.admin().await;
    let config_now = async || {
        admin
            .describe_topic(topic)
            .await
            .expect("describe")
            .topic
            .and_then(|topic| topic.config)
            .expect("config")
    };
    let before = config_now().await;
    let retention = |ms| TopicConfigChanges {
        retention_ms: Some(ms),
        ..TopicConfigChanges::default()
    };
    assert_eq!(
        code(admin.alter_topic("no-such-topic", retention(1)).await),
        Some(ErrorCode::UnknownTopic)
    );
    assert_eq!(
        code(admin.add_partitions("no-such-topic", 4).await),
        Some(ErrorCode::UnknownTopic)
    );
    for bad in [
        retention(0),
        TopicConfigChanges::default(),
        TopicConfigChanges {
            message_ttl_ms: Some(u64::MAX),
            ..TopicConfigChanges::default()
        },
        TopicConfigChanges {
            ensemble_size: Some(u32::MAX),
            ..TopicConfigChanges::default()
        },
        TopicConfigChanges {
            durability: Some(7),
            ..TopicConfigChanges::default()
        },
    ] {
        assert_eq!(
            code(admin.alter_topic(topic, bad).await),
            Some(ErrorCode::InvalidArgument),
            "{bad:?}"
        );
    }
    assert_eq!(
        code(admin.add_partitions(topic, 1).await),
        Some(ErrorCode::InvalidArgument)
    );
    match admin.alter_topic("__consumer_offsets", retention(1)).await {
        Err(error) => {
            assert_eq!(error.code(), Some(ErrorCode::InvalidArgument), "{error}");
            assert!(error.to_string().contains("internal topic"), "{error}");
        }
        Ok(topic) => panic!("the offsets topic was altered: {topic:?}"),
    }
    assert_eq!(config_now().await, before, "nothing changed");
    // u64::MAX is "forever", accepted.
    let forever = admin
        .alter_topic(topic, retention(u64::MAX))
        .await
        .expect("u64::MAX retention");
    assert_eq!(forever.config.map(|c| c.retention_ms), Some(u64::MAX));
    // The CLI says what is wrong with 0.
    let output = cluster
        .cli()
        .args(["topic", "alter", topic, "--retention-ms", "0"])
        .output()
        .expect("sluice runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("retention_ms 0"), "{stderr}");
    let output = cluster
        .cli()
        .args(["topic", "alter", topic, "--segment-ms", "60000"])
        .output()
        .expect("sluice runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("segment_ms:                      60000"),
        "{stdout}"
    );
}

/// A principal that may describe and write the topic but holds no
/// `Alter` on it is refused NOT_AUTHORIZED, and the topic is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn altering_needs_the_alter_acl() {
    let cluster = Cluster::start(ClusterSpec {
        tls: true,
        ..cluster_spec()
    })
    .await;
    let topic = "alter-acl";
    cluster.create_topic(topic, 1).await;
    let mallory = issue_client(&cluster, "mallory");
    allow(&cluster, "User:mallory", "Write", &["--topic", topic]);
    allow(&cluster, "User:mallory", "Describe", &["--topic", topic]);
    let admin = Admin::connect(mallory).await.expect("admin");
    until("mallory may describe the topic", async || {
        admin.describe_topic(topic).await.is_ok()
    })
    .await;
    let before = admin.describe_topic(topic).await.expect("describe").topic;
    let refused = admin
        .alter_topic(
            topic,
            TopicConfigChanges {
                retention_ms: Some(1),
                ..TopicConfigChanges::default()
            },
        )
        .await;
    assert_eq!(code(refused), Some(ErrorCode::NotAuthorized));
    assert_eq!(
        code(admin.add_partitions(topic, 2).await),
        Some(ErrorCode::NotAuthorized)
    );
    let after = admin.describe_topic(topic).await.expect("describe").topic;
    assert_eq!(before, after);
    // With the ACL it works.
    allow(&cluster, "User:mallory", "Alter", &["--topic", topic]);
    until("mallory may alter the topic", async || {
        admin
            .alter_topic(
                topic,
                TopicConfigChanges {
                    retention_ms: Some(7_200_000),
                    ..TopicConfigChanges::default()
                },
            )
            .await
            .is_ok()
    })
    .await;
}

/// A group consumer of `topic` in `group` that reads `count` records
/// (earliest when nothing is committed) and commits them; answers the
/// (partition, offset) pairs read, in order, and the still-joined consumer.
async fn consume_in_group(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    count: usize,
) -> (Vec<(u32, u64)>, Consumer) {
    let config = ConsumerConfig {
        client: cluster.client_config(),
        group: Some(group.to_string()),
        auto_commit: false,
        reset: StartOffset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::subscribe(config, &[topic])
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < count {
        assert!(Instant::now() < deadline, "read {seen:?} of {count}");
        if let Some(record) = consumer
            .recv_timeout(Duration::from_millis(500))
            .await
            .expect("recv")
        {
            seen.push((record.partition, record.offset));
        }
    }
    consumer.commit().await.expect("commit");
    (seen, consumer)
}

/// The group's committed offset per partition of `topic`, as its
/// coordinator reports them.
async fn committed(admin: &Admin, group: &str, topic: &str) -> Vec<(u32, i64)> {
    let mut offsets: Vec<(u32, i64)> = admin
        .describe_group(group)
        .await
        .expect("describe group")
        .lag
        .into_iter()
        .filter(|lag| lag.topic == topic)
        .map(|lag| (lag.partition, lag.committed_offset))
        .collect();
    offsets.sort();
    offsets
}

/// Reset offsets of an inactive group, through the CLI and the SDK: a dry
/// run changes nothing, a reset to an offset is where the group reads
/// from next, an active group and an offset beyond the end are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_offsets_reset_for_an_inactive_group() {
    let mut cluster = Cluster::start(cluster_spec()).await;
    let (topic, group) = ("alter-group", "billing");
    cluster.create_topic(topic, 2).await;
    let mut produced = records(topic, Some(0), 10, 8);
    produced.extend(records(topic, Some(1), 10, 8));
    cluster.produce_acknowledged(produced).await;
    let admin = cluster.admin().await;

    let (_, consumer) = consume_in_group(&cluster, group, topic, 20).await;
    assert_eq!(
        committed(&admin, group, topic).await,
        vec![(0, 10), (1, 10)]
    );
    // Active: refused, naming why, and nothing changes.
    let refused = admin
        .reset_group_offsets(group, topic, OffsetReset::Earliest, false)
        .await
        .expect_err("the group has a member");
    assert!(refused.to_string().contains("is active"), "{refused}");
    assert_eq!(refused.code(), Some(ErrorCode::GroupNotEmpty));
    let output = cluster
        .cli()
        .args(["group", "delete", group])
        .output()
        .expect("sluice runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an active group was deleted");
    assert!(stderr.contains("GROUP_NOT_EMPTY"), "{stderr}");
    consumer.close().await.expect("leave");
    eventually("the group empty", async || {
        let description = admin.describe_group(group).await.expect("describe");
        description.members.is_empty().then_some(())
    })
    .await;

    let cli = |args: &[&str]| {
        let mut command = cluster.cli();
        command.args(["group", "reset-offsets", group, "--topic", topic]);
        run_cli(command, args)
    };
    let (ok, output) = cli(&["--to-offset", "4", "--dry-run"]);
    assert!(ok, "{output}");
    assert!(output.contains("would reset (dry run)"), "{output}");
    assert_eq!(
        committed(&admin, group, topic).await,
        vec![(0, 10), (1, 10)]
    );
    for beyond in ["11", "18446744073709551615"] {
        let (ok, output) = cli(&["--to-offset", beyond]);
        assert!(!ok && output.contains("outside"), "{beyond}: {output}");
    }
    let (ok, output) = cli(&["--to-time", "not-a-time"]);
    assert!(!ok && output.contains("RFC 3339"), "{output}");
    assert_eq!(
        committed(&admin, group, topic).await,
        vec![(0, 10), (1, 10)]
    );

    let (ok, output) = cli(&["--to-offset", "4"]);
    assert!(ok, "{output}");
    assert_eq!(committed(&admin, group, topic).await, vec![(0, 4), (1, 4)]);
    // The group reads from there.
    let (seen, consumer) = consume_in_group(&cluster, group, topic, 12).await;
    for partition in [0, 1] {
        let offsets: Vec<u64> = seen
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, offset)| *offset)
            .collect();
        assert_eq!(
            offsets,
            (4..10).collect::<Vec<u64>>(),
            "partition {partition}"
        );
    }
    consumer.close().await.expect("leave");
    eventually("the group empty again", async || {
        let description = admin.describe_group(group).await.expect("describe");
        description.members.is_empty().then_some(())
    })
    .await;

    let reset = async |reset| {
        let plan = admin
            .reset_group_offsets(group, topic, reset, false)
            .await
            .expect("reset");
        assert!(plan.applied);
        committed(&admin, group, topic).await
    };
    assert_eq!(reset(OffsetReset::ShiftBy(-3)).await, vec![(0, 7), (1, 7)]);
    assert_eq!(
        reset(OffsetReset::ShiftBy(i64::MAX)).await,
        vec![(0, 10), (1, 10)]
    );
    assert_eq!(reset(OffsetReset::Earliest).await, vec![(0, 0), (1, 0)]);
    assert_eq!(reset(OffsetReset::Latest).await, vec![(0, 10), (1, 10)]);
    assert_eq!(reset(OffsetReset::Time(0)).await, vec![(0, 0), (1, 0)]);
    assert_eq!(
        reset(OffsetReset::Time(i64::MAX)).await,
        vec![(0, 10), (1, 10)]
    );
    // A group that never committed cannot be shifted.
    let never = admin
        .reset_group_offsets("never-committed", topic, OffsetReset::ShiftBy(1), false)
        .await
        .expect_err("nothing to shift");
    assert!(
        never.to_string().contains("nothing is committed"),
        "{never}"
    );

    // Deleting the inactive group forgets its offsets and listing, also
    // after the coordinator replays the offsets partition.
    let output = cluster
        .cli()
        .args(["group", "delete", group])
        .output()
        .expect("sluice runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(committed(&admin, group, topic).await, vec![]);
    let listed = admin.list_groups().await.expect("list groups");
    assert!(
        listed.iter().all(|listing| listing.group != group),
        "{listed:?}"
    );
    assert_eq!(
        code(admin.delete_group(group).await),
        Some(ErrorCode::UnknownGroup)
    );
    cluster.brokers[0].stop(Duration::from_secs(10));
    cluster.brokers[0].start();
    wait_until_writable(cluster.client_config(), topic).await;
    let after_restart = eventually("the coordinator back", async || {
        admin
            .describe_group(group)
            .await
            .ok()
            .map(|description| description.lag)
    })
    .await;
    assert!(after_restart.is_empty(), "{after_restart:?}");
    // The group starts again from its reset policy (earliest).
    let (seen, consumer) = consume_in_group(&cluster, group, topic, 20).await;
    for partition in [0, 1] {
        let offsets: Vec<u64> = seen
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, offset)| *offset)
            .collect();
        assert_eq!(
            offsets,
            (0..10).collect::<Vec<u64>>(),
            "partition {partition}"
        );
    }
    consumer.close().await.expect("leave");
}

/// Receives `count` messages of `subscriber`, acknowledging each; their
/// offsets in order.
async fn receive_and_ack(subscriber: &Subscriber, count: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let message = tokio::time::timeout(WAIT, subscriber.recv())
            .await
            .unwrap_or_else(|_| panic!("received only {offsets:?}"))
            .expect("recv");
        subscriber.ack(&message).await.expect("ack");
        offsets.push(message.offset);
    }
    offsets
}

/// `subscription skip` and `clear` move the cursor forward only: what
/// was skipped is never delivered, what comes after is; `update` changes
/// settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_skip_and_clear() {
    let cluster = Cluster::start(cluster_spec()).await;
    let (topic, name) = ("alter-sub", "work");
    let admin = topic_with_subscription(&cluster, topic, name, 20).await;
    let cli = |args: &[&str]| {
        let mut command = cluster.cli();
        command.arg("subscription");
        run_cli(command, args)
    };
    // No consumer yet: the committed cursor moves.
    let (ok, output) = cli(&["skip", topic, name, "--count", "5"]);
    assert!(ok, "{output}");
    assert!(output.contains("skipped 5 unacknowledged"), "{output}");
    let config = SubscriberConfig {
        client: cluster.client_config(),
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Earliest,
        ack_timeout_ms: 30_000,
        ..SubscriberConfig::new(topic, name)
    };
    let subscriber = Subscriber::connect(config.clone()).await.expect("connect");
    assert_eq!(receive_and_ack(&subscriber, 5).await, vec![5, 6, 7, 8, 9]);
    subscriber.close().await.expect("close");

    let (ok, output) = cli(&["clear", topic, name]);
    assert!(ok, "{output}");
    assert!(output.contains("skipped 10 unacknowledged"), "{output}");
    // Cleared: skipping again moves nothing, and never back.
    let again = admin
        .skip_subscription(topic, name, SubscriptionSkip::Messages(u64::MAX))
        .await
        .expect("skip");
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].1.skipped, again[0].1.mark_delete),
        (0, 20),
        "{again:?}"
    );
    cluster
        .produce_acknowledged(records(topic, Some(0), 3, 8))
        .await;
    let subscriber = Subscriber::connect(config).await.expect("reconnect");
    assert_eq!(receive_and_ack(&subscriber, 3).await, vec![20, 21, 22]);
    assert!(
        subscriber
            .recv_timeout(Duration::from_millis(500))
            .await
            .expect("recv")
            .is_none(),
        "something skipped or acknowledged came back"
    );
    subscriber.close().await.expect("close");

    // Careless input.
    let (ok, output) = cli(&["skip", topic, name, "--count", "0"]);
    assert!(!ok && output.contains("skips nothing"), "{output}");
    assert_eq!(
        code(
            admin
                .skip_subscription(topic, "no-such", SubscriptionSkip::All)
                .await
        ),
        Some(ErrorCode::UnknownSubscription)
    );
    assert_eq!(
        code(
            admin
                .skip_subscription("no-such-topic", name, SubscriptionSkip::All)
                .await
        ),
        Some(ErrorCode::UnknownTopic)
    );

    // Settings: only the given ones change; 0 and a dead-letter count
    // without a dead-letter topic are refused.
    let before = admin.get_subscription(topic, name).await.expect("get");
    let (ok, output) = cli(&[
        "update",
        topic,
        name,
        "--ack-timeout-ms",
        "5000",
        "--backlog-quota-messages",
        "7",
    ]);
    assert!(ok && output.contains("ack timeout 5000 ms"), "{output}");
    let after = admin.get_subscription(topic, name).await.expect("get");
    assert_eq!(
        after,
        Subscription {
            ack_timeout_ms: 5000,
            backlog_quota_messages: 7,
            ..before.clone()
        }
    );
    let (ok, output) = cli(&["update", topic, name, "--ack-timeout-ms", "0"]);
    assert!(!ok && output.contains("ack_timeout_ms 0"), "{output}");
    let (ok, output) = cli(&["update", topic, name, "--max-deliveries", "2"]);
    assert!(!ok && output.contains("dead-letter topic"), "{output}");
    let (ok, output) = cli(&["update", topic, "no-such", "--max-deliveries", "0"]);
    assert!(!ok && output.contains("UNKNOWN_SUBSCRIPTION"), "{output}");
    assert_eq!(
        admin.get_subscription(topic, name).await.expect("get"),
        after
    );
}

/// Deleting a topic deletes its subscriptions' dead-letter topics, keeps
/// one another topic's subscription also uses, and keeps them all when
/// asked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_topic_deletes_its_dead_letter_topics() {
    let cluster = Cluster::start(cluster_spec()).await;
    let admin = cluster.admin().await;
    for topic in ["alter-dlq", "alter-other", "alter-kept"] {
        cluster.create_topic(topic, 1).await;
    }
    let subscribe = async |topic: &str, name: &str, dead_letters: &str| {
        admin
            .create_subscription(Subscription {
                topic: topic.into(),
                name: name.into(),
                r#type: SubscriptionType::Shared as i32,
                max_deliveries: 3,
                dead_letter_topic: dead_letters.into(),
                ..Subscription::default()
            })
            .await
            .expect("create subscription")
            .dead_letter_topic
    };
    assert_eq!(
        subscribe("alter-dlq", "work", "").await,
        "alter-dlq-work-DLQ"
    );
    subscribe("alter-dlq", "audit", "shared-errors").await;
    subscribe("alter-other", "audit", "shared-errors").await;
    subscribe("alter-kept", "work", "").await;
    let exists = async |topic: &str| match admin.describe_topic(topic).await {
        Ok(_) => true,
        Err(error) if error.code() == Some(ErrorCode::UnknownTopic) => false,
        Err(error) => panic!("describe {topic}: {error}"),
    };
    assert!(exists("alter-dlq-work-DLQ").await && exists("shared-errors").await);

    let output = cluster
        .cli()
        .args(["topic", "delete", "alter-dlq"])
        .output()
        .expect("sluice runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("deleted its dead-letter topic alter-dlq-work-DLQ"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kept dead-letter topic shared-errors (also"),
        "{stdout}"
    );
    assert!(!exists("alter-dlq").await);
    assert!(
        !exists("alter-dlq-work-DLQ").await,
        "the DLQ outlived its topic"
    );
    assert!(exists("shared-errors").await, "a shared DLQ was deleted");

    let kept = admin
        .delete_topic_with("alter-kept", true)
        .await
        .expect("delete keeping dead letters");
    assert!(kept.deleted_dead_letter_topics.is_empty(), "{kept:?}");
    assert!(exists("alter-kept-work-DLQ").await);
    assert_eq!(
        code(admin.delete_topic_with("alter-kept", false).await),
        Some(ErrorCode::UnknownTopic)
    );
}

/// `subscription reset` sets the cursor to an offset (back as well: the
/// operator asked to rewind) or a time, only while nobody consumes the
/// subscription on the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_cursor_reset_rewinds_an_idle_subscription() {
    let cluster = Cluster::start(ClusterSpec {
        broker_config: "[subscriptions]\nidle_stop_ms = 300\n".into(),
        ..ClusterSpec::default()
    })
    .await;
    let (topic, name) = ("alter-rewind", "work");
    let admin = topic_with_subscription(&cluster, topic, name, 10).await;
    let config = SubscriberConfig {
        client: cluster.client_config(),
        subscription_type: SubscriptionType::Shared,
        initial_position: InitialPosition::Earliest,
        ack_timeout_ms: 30_000,
        ..SubscriberConfig::new(topic, name)
    };
    let subscriber = Subscriber::connect(config.clone()).await.expect("connect");
    assert_eq!(
        receive_and_ack(&subscriber, 10).await,
        (0..10).collect::<Vec<u64>>()
    );
    // Consumed: refused, nothing changes.
    let refused = admin
        .reset_subscription_cursor(topic, name, SubscriptionReset::Offset(3))
        .await
        .expect_err("a consumer is connected");
    assert!(refused.to_string().contains("being consumed"), "{refused}");
    subscriber.close().await.expect("close");
    let reset = eventually("the dispatcher stopping", async || {
        admin
            .reset_subscription_cursor(topic, name, SubscriptionReset::Offset(3))
            .await
            .ok()
    })
    .await;
    assert_eq!(reset[0].1.mark_delete, 3);
    assert_eq!(
        code(
            admin
                .reset_subscription_cursor(topic, name, SubscriptionReset::Offset(11))
                .await
        ),
        Some(ErrorCode::OffsetOutOfRange)
    );
    // Rewound: 3..10 are delivered again, and nothing below 3.
    let subscriber = Subscriber::connect(config.clone()).await.expect("connect");
    assert_eq!(
        receive_and_ack(&subscriber, 7).await,
        (3..10).collect::<Vec<u64>>()
    );
    subscriber.close().await.expect("close");
    // To a time after every record: the end.
    let output = eventually("the dispatcher stopping again", async || {
        let output = cluster
            .cli()
            .args(["subscription", "reset", topic, name, "--to-time"])
            .arg("2100-01-01T00:00:00Z")
            .output()
            .expect("sluice runs");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).to_string())
    })
    .await;
    assert!(output.contains("0  10  10"), "{output}");
    let subscriber = Subscriber::connect(config).await.expect("connect");
    assert!(
        subscriber
            .recv_timeout(Duration::from_millis(500))
            .await
            .expect("recv")
            .is_none(),
        "a message below the reset position was delivered"
    );
    subscriber.close().await.expect("close");
}

/// A producer and a group consumer running before `add-partitions` see
/// the new partitions through their routes: the producer writes to one,
/// and the group is assigned it and reads the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_clients_see_added_partitions() {
    let cluster = Cluster::start(cluster_spec()).await;
    let topic = "alter-grow-live";
    cluster.create_topic(topic, 1).await;
    let producer = cluster.producer().await;
    let config = ConsumerConfig {
        client: cluster.client_config(),
        group: Some("grow".to_string()),
        auto_commit: false,
        reset: StartOffset::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::subscribe(config, &[topic])
        .await
        .expect("subscribe");
    producer
        .send(records(topic, Some(0), 1, 8).remove(0))
        .await
        .expect("acknowledged");
    let first = consumer.recv_timeout(WAIT).await.expect("recv");
    assert_eq!(
        first.map(|record| (record.partition, record.offset)),
        Some((0, 0))
    );

    let admin = cluster.admin().await;
    admin
        .add_partitions(topic, 3)
        .await
        .expect("add partitions");
    let written = eventually("the producer writing to partition 2", async || {
        producer
            .send(records(topic, Some(2), 1, 8).remove(0))
            .await
            .ok()
    })
    .await;
    assert_eq!((written.partition, written.offset), (2, 0));
    let read = eventually("the group reading partition 2", async || {
        consumer
            .recv_timeout(Duration::from_millis(200))
            .await
            .expect("recv")
            .map(|record| (record.partition, record.offset))
    })
    .await;
    assert_eq!(read, (2, 0));
    consumer.close().await.expect("close");
    producer.close().await.expect("close producer");
}

/// A one-partition `topic` with a shared subscription `name` from the
/// earliest record, and `count` records produced to it.
async fn topic_with_subscription(
    cluster: &Cluster,
    topic: &str,
    name: &str,
    count: usize,
) -> Admin {
    cluster.create_topic(topic, 1).await;
    let admin = cluster.admin().await;
    admin
        .create_subscription(Subscription {
            topic: topic.into(),
            name: name.into(),
            r#type: SubscriptionType::Shared as i32,
            initial_position: InitialPosition::Earliest as i32,
            ..Subscription::default()
        })
        .await
        .expect("create subscription");
    cluster
        .produce_acknowledged(records(topic, Some(0), count, 8))
        .await;
    admin
}

/// Runs `command` with `args`: whether it succeeded, and its stdout then
/// stderr.
fn run_cli(mut command: std::process::Command, args: &[&str]) -> (bool, String) {
    let output = command.args(args).output().expect("sluice runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr),
    )
}
