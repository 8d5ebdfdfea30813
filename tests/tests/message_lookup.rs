//! Message lookup against real processes (ADR 0013): messages found by key,
//! tag, time range and id across segment rolls (the stores' key/tag
//! indexes, verified by the broker), bounded answers that say where to
//! continue, `ExplainMessage` in every state a subscription can hold a
//! message in (from the running dispatcher and from the stored cursor), and
//! bad input.

use bytes::Bytes;
use futures::StreamExt;
use sluice_client::{Admin, ClientError, MessageQuery, Record};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::subscribe_request::Request as ConsumerRequest;
use sluice_proto::v1::subscribe_response::Response as ToConsumer;
use sluice_proto::v1::{
    Delivery, ExplainMessageResponse, FindMessagesRequest, GetMessageRequest, InitialPosition,
    MessageState, SelectorKind, SubscribeAck, SubscribeNack, SubscribeOpen, SubscribeRequest,
    Subscription, SubscriptionType, TopicConfig,
};
use sluice_proto::ErrorCode;
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Record timestamps start here, one second apart per message.
const BASE_TIME_MS: i64 = 1_700_000_000_000;
const MESSAGES: u64 = 300;

fn key_of(value: u64) -> String {
    format!("customer-{}", value % 10)
}

fn tag_of(value: u64) -> &'static str {
    if value.is_multiple_of(7) {
        "vip"
    } else {
        "standard"
    }
}

/// Writes `records` and waits until every one is acknowledged.
async fn produce(cluster: &Cluster, records: Vec<Record>) {
    cluster.produce_acknowledged(records).await;
}

fn value_of(value: &Option<Bytes>) -> u64 {
    std::str::from_utf8(value.as_ref().expect("a value"))
        .expect("utf-8")
        .parse()
        .expect("a number")
}

async fn find_values(admin: &Admin, query: MessageQuery) -> (BTreeSet<u64>, usize) {
    let found = admin.find_messages(query).await.expect("find");
    assert!(found.continue_from.is_empty(), "{:?}", found.continue_from);
    let values: BTreeSet<u64> = found
        .records
        .iter()
        .map(|record| value_of(&record.value))
        .collect();
    (values, found.records.len())
}

async fn broker_of(
    admin: &Admin,
    topic: &str,
    partition: u32,
) -> BrokerClient<tonic::transport::Channel> {
    let address = admin
        .describe_topic(topic)
        .await
        .expect("describe")
        .partitions
        .into_iter()
        .nth(partition as usize)
        .and_then(|description| description.route)
        .map(|route| route.broker_address)
        .expect("a route");
    BrokerClient::connect(format!("http://{address}"))
        .await
        .expect("connect broker")
}

/// The code a refused call failed with.
fn refused<T>(result: Result<tonic::Response<T>, tonic::Status>) -> ErrorCode {
    match result {
        Ok(_) => panic!("accepted"),
        Err(status) => sluice_proto::SluiceError::from_status(&status).code,
    }
}

fn code_of(error: &ClientError) -> Option<ErrorCode> {
    error.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_are_found_by_key_tag_time_and_id_across_segment_rolls() {
    let cluster = Cluster::start(ClusterSpec {
        broker_config: "[lookup]\nmax_results = 50\n".to_string(),
        ..ClusterSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    cluster
        .create_topic_with(
            "orders",
            TopicConfig {
                partitions: 2,
                // A few dozen messages per segment: lookups span many.
                segment_bytes: 1024,
                ..TopicConfig::default()
            },
        )
        .await;
    // Several rounds so batches stay small and segments roll in between.
    for round in 0..10u64 {
        let records = (round * 30..(round + 1) * 30)
            .map(|value| {
                Record::new("orders", value.to_string())
                    .with_key(key_of(value))
                    .with_tag(tag_of(value))
                    .with_timestamp_ms(BASE_TIME_MS + value as i64 * 1000)
            })
            .collect();
        produce(&cluster, records).await;
    }
    let description = admin.describe_topic("orders").await.expect("describe");
    let segments: usize = description
        .partitions
        .iter()
        .map(|partition| partition.segments.len())
        .sum();
    assert!(segments >= 6, "segments did not roll: {segments}");

    // By key: every message of the key, from whichever partition holds it.
    for key in [3u64, 8] {
        let (values, count) = find_values(
            &admin,
            MessageQuery::new("orders").key(key_of(key)).limit(100),
        )
        .await;
        let expected: BTreeSet<u64> = (0..MESSAGES).filter(|value| value % 10 == key).collect();
        assert_eq!(values, expected, "key {key}");
        assert_eq!(count, expected.len(), "no duplicates for key {key}");
    }
    // By tag, across both partitions (each partition answers up to the
    // broker's [lookup] max_results of 50: 43 fit).
    let (values, _) = find_values(&admin, MessageQuery::new("orders").tag("vip").limit(100)).await;
    let expected: BTreeSet<u64> = (0..MESSAGES)
        .filter(|value| value.is_multiple_of(7))
        .collect();
    assert_eq!(values, expected);
    // By time range, and by key within a time range.
    let (values, _) = find_values(
        &admin,
        MessageQuery::new("orders")
            .time_range(Some(BASE_TIME_MS + 100_000), Some(BASE_TIME_MS + 109_000))
            .limit(100),
    )
    .await;
    assert_eq!(values, (100..=109).collect());
    let (values, _) = find_values(
        &admin,
        MessageQuery::new("orders")
            .key(key_of(1))
            .tag("vip")
            .time_range(Some(BASE_TIME_MS + 50_000), None)
            .limit(100),
    )
    .await;
    let expected: BTreeSet<u64> = (50..MESSAGES)
        .filter(|value| value % 10 == 1 && value.is_multiple_of(7))
        .collect();
    assert_eq!(values, expected);
    // Nothing matches: an empty, complete answer.
    let (values, _) = find_values(&admin, MessageQuery::new("orders").key("nobody")).await;
    assert!(values.is_empty());

    // A limit cuts the answer and says where to go on; going on from there
    // yields the rest, once each.
    let mut query = MessageQuery::new("orders").key(key_of(4)).limit(7);
    let mut seen = Vec::new();
    for _ in 0..10 {
        let found = admin.find_messages(query.clone()).await.expect("find page");
        assert!(found.records.len() <= 7);
        seen.extend(found.records.iter().map(|record| value_of(&record.value)));
        if found.continue_from.is_empty() {
            break;
        }
        query.from_offsets = found.continue_from.clone();
    }
    let expected: Vec<u64> = (0..MESSAGES).filter(|value| value % 10 == 4).collect();
    seen.sort_unstable();
    assert_eq!(seen, expected);

    // Pages over both partitions, cut by the query's limit: every match
    // once.
    let mut query = MessageQuery::new("orders").tag("vip").limit(10);
    let mut seen = Vec::new();
    for _ in 0..20 {
        let found = admin.find_messages(query.clone()).await.expect("find page");
        assert!(found.records.len() <= 10);
        seen.extend(found.records.iter().map(|record| value_of(&record.value)));
        if found.continue_from.is_empty() {
            break;
        }
        query.from_offsets = found.continue_from.clone();
    }
    let expected: Vec<u64> = (0..MESSAGES)
        .filter(|value| value.is_multiple_of(7))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, expected);

    // By id: what `find` returned is what `get` returns.
    let found = admin
        .find_messages(MessageQuery::new("orders").tag("vip").limit(20))
        .await
        .expect("find");
    assert_eq!(found.records.len(), 20);
    for record in &found.records {
        let got = admin
            .get_message("orders", record.partition, record.offset)
            .await
            .expect("get");
        assert_eq!(&got, record);
        assert_eq!(got.tags, vec!["vip".to_string()]);
        assert_eq!(
            got.timestamp_ms,
            BASE_TIME_MS + value_of(&got.value) as i64 * 1000
        );
    }

    // The broker caps an absurd limit at its [lookup] max_results.
    let mut broker = broker_of(&admin, "orders", 0).await;
    let capped = broker
        .find_messages(FindMessagesRequest {
            topic: "orders".into(),
            partition: 0,
            tag: Some("standard".into()),
            limit: u32::MAX,
            ..FindMessagesRequest::default()
        })
        .await
        .expect("find with an absurd limit")
        .into_inner();
    assert_eq!(capped.offsets.len(), 50);
    assert!(capped.next_offset.is_some());
    // Bad input is refused with the right code.
    for (request, code) in [
        (
            FindMessagesRequest {
                topic: "orders".into(),
                partition: 0,
                ..FindMessagesRequest::default()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            FindMessagesRequest {
                topic: "orders".into(),
                partition: 0,
                from_time_ms: Some(10),
                to_time_ms: Some(5),
                ..FindMessagesRequest::default()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            FindMessagesRequest {
                topic: "../orders".into(),
                partition: 0,
                key: Some(Bytes::from_static(b"k")),
                ..FindMessagesRequest::default()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            FindMessagesRequest {
                topic: "orders".into(),
                partition: 0,
                tag: Some(String::new()),
                ..FindMessagesRequest::default()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            FindMessagesRequest {
                topic: "no-such-topic".into(),
                partition: 0,
                key: Some(Bytes::from_static(b"k")),
                ..FindMessagesRequest::default()
            },
            ErrorCode::UnknownTopic,
        ),
        (
            FindMessagesRequest {
                topic: "orders".into(),
                partition: 7,
                key: Some(Bytes::from_static(b"k")),
                ..FindMessagesRequest::default()
            },
            ErrorCode::UnknownPartition,
        ),
    ] {
        assert_eq!(
            refused(broker.find_messages(request.clone()).await),
            code,
            "{request:?}"
        );
    }
    for (offset, code) in [
        (u64::MAX, ErrorCode::OffsetOutOfRange),
        (MESSAGES * 10, ErrorCode::OffsetOutOfRange),
    ] {
        assert_eq!(
            refused(
                broker
                    .get_message(GetMessageRequest {
                        topic: "orders".into(),
                        partition: 0,
                        offset,
                    })
                    .await
            ),
            code
        );
    }
    let error = admin
        .get_message("orders", 0, MESSAGES * 10)
        .await
        .expect_err("beyond the log");
    assert_eq!(code_of(&error), Some(ErrorCode::OffsetOutOfRange));
    let error = admin
        .get_message("no-such-topic", 0, 0)
        .await
        .expect_err("unknown topic");
    assert_eq!(code_of(&error), Some(ErrorCode::UnknownTopic));
    assert!(matches!(
        admin.get_message("orders", 99, 0).await,
        Err(ClientError::InvalidArgument(_))
    ));
    for bad in [
        MessageQuery::new("orders"),
        MessageQuery::new("orders").key("k").limit(0),
        MessageQuery::new("orders").key("k").limit(u32::MAX),
        MessageQuery::new("bad name!").key("k"),
    ] {
        assert!(
            matches!(
                admin.find_messages(bad.clone()).await,
                Err(ClientError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
}

/// Opens a raw `Subscribe` stream on partition 0 with `permits` credit.
async fn raw_stream(
    admin: &Admin,
    topic: &str,
    subscription: &str,
    permits: u32,
) -> (
    tokio::sync::mpsc::Sender<SubscribeRequest>,
    tonic::Streaming<sluice_proto::v1::SubscribeResponse>,
) {
    let mut client = broker_of(admin, topic, 0).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    sender
        .send(SubscribeRequest {
            request: Some(ConsumerRequest::Open(SubscribeOpen {
                topic: topic.into(),
                partition: 0,
                subscription: subscription.into(),
                consumer_name: "raw".into(),
                priority: 0,
                permits,
            })),
        })
        .await
        .expect("queue open");
    let responses = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("stream starts")
        .into_inner();
    (sender, responses)
}

async fn next_delivery(
    responses: &mut tonic::Streaming<sluice_proto::v1::SubscribeResponse>,
) -> Delivery {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), responses.next())
            .await
            .expect("a delivery in time")
            .expect("the stream goes on")
            .expect("no error");
        if let Some(ToConsumer::Delivery(delivery)) = message.response {
            return delivery;
        }
    }
}

async fn next_receipt(responses: &mut tonic::Streaming<sluice_proto::v1::SubscribeResponse>) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), responses.next())
            .await
            .expect("a receipt in time")
            .expect("the stream goes on")
            .expect("no error");
        if let Some(ToConsumer::AckReceipt(receipt)) = message.response {
            assert!(receipt.rejected.is_empty(), "{receipt:?}");
            return;
        }
    }
}

async fn explain(admin: &Admin, offset: u64, subscription: &str) -> ExplainMessageResponse {
    admin
        .explain_message("jobs", 0, offset, subscription)
        .await
        .expect("explain")
}

/// Asks until the answer is in `state` (dispatchers work asynchronously).
async fn explain_until(
    admin: &Admin,
    offset: u64,
    subscription: &str,
    state: MessageState,
) -> ExplainMessageResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = explain(admin, offset, subscription).await;
        if answer.state() == state {
            assert!(!answer.explanation.is_empty());
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "offset {offset} of {subscription} never became {state:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explain_tells_where_a_message_stands_in_a_subscription() {
    let cluster = Cluster::start(ClusterSpec {
        // Dispatchers without consumers stop soon, so the stored cursor
        // answers.
        broker_config: "[subscriptions]\nidle_stop_ms = 1000\n".to_string(),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic("jobs", 1).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    // Offsets equal values: one partition, written in order.
    produce(
        &cluster,
        (0..20u64)
            .map(|value| {
                Record::new("jobs", value.to_string())
                    .with_key(format!("k{value}"))
                    .with_tag(if value == 5 { "skip" } else { "work" })
            })
            .collect(),
    )
    .await;
    let subscription = |name: &str, selector: &str, max_deliveries: u32| Subscription {
        topic: "jobs".into(),
        name: name.into(),
        r#type: SubscriptionType::Shared as i32,
        selector_kind: if selector.is_empty() {
            SelectorKind::All
        } else {
            SelectorKind::Tag
        } as i32,
        selector: selector.into(),
        initial_position: InitialPosition::Earliest as i32,
        max_deliveries,
        ..Subscription::default()
    };
    for definition in [
        subscription("workers", "work", 2),
        subscription("slow", "", 0),
        subscription("fresh", "", 0),
    ] {
        admin
            .create_subscription(definition)
            .await
            .expect("create subscription");
    }

    // Nobody consumed "fresh" yet: pending in the backlog, from no cursor.
    let fresh = explain(&admin, 2, "fresh").await;
    assert_eq!(fresh.state(), MessageState::Pending, "{fresh:?}");
    assert!(!fresh.from_dispatcher);
    // Beyond the log.
    let beyond = explain(&admin, 1000, "fresh").await;
    assert_eq!(beyond.state(), MessageState::NotFound, "{beyond:?}");
    assert_eq!(beyond.high_watermark, 20);
    // A selector that does not match: filtered, consumed or not.
    assert_eq!(
        explain(&admin, 5, "workers").await.state(),
        MessageState::Filtered
    );

    // "slow": two permits, so two messages in flight and the rest ready.
    let (slow_sender, mut slow) = raw_stream(&admin, "jobs", "slow", 2).await;
    let mut in_flight = Vec::new();
    while in_flight.len() < 2 {
        in_flight.extend(next_delivery(&mut slow).await.offsets);
    }
    assert_eq!(in_flight, vec![0, 1]);
    let held = explain(&admin, 1, "slow").await;
    assert_eq!(held.state(), MessageState::InFlight, "{held:?}");
    assert_eq!(held.delivery_count, 1);
    assert!(held.consumer_id.is_some());
    assert!(held.remaining_ms.is_some_and(|ms| ms <= 30_000), "{held:?}");
    assert!(held.from_dispatcher);
    let ready = explain_until(&admin, 12, "slow", MessageState::Ready).await;
    assert_eq!(ready.delivery_count, 0);
    slow_sender
        .send(SubscribeRequest {
            request: Some(ConsumerRequest::Ack(SubscribeAck {
                request_id: 1,
                offsets: vec![0],
                cumulative_offset: None,
                transaction: None,
            })),
        })
        .await
        .expect("send ack");
    next_receipt(&mut slow).await;
    assert_eq!(
        explain(&admin, 0, "slow").await.state(),
        MessageState::Acknowledged
    );

    // "workers": acknowledge all but 3 (held), 7 (negatively acknowledged
    // with a long delay) and 9 (negatively acknowledged until it is
    // dead-lettered after two deliveries).
    let (workers_sender, mut workers) = raw_stream(&admin, "jobs", "workers", 100).await;
    let mut delivered = BTreeSet::new();
    while delivered.len() < 19 {
        delivered.extend(next_delivery(&mut workers).await.offsets);
    }
    assert!(!delivered.contains(&5), "a filtered message was delivered");
    let acked: Vec<u64> = delivered
        .iter()
        .copied()
        .filter(|offset| ![3, 7, 9].contains(offset))
        .collect();
    let nack = |offsets: Vec<u64>, delay_ms: u64| SubscribeRequest {
        request: Some(ConsumerRequest::Nack(SubscribeNack { offsets, delay_ms })),
    };
    workers_sender
        .send(SubscribeRequest {
            request: Some(ConsumerRequest::Ack(SubscribeAck {
                request_id: 1,
                offsets: acked.clone(),
                cumulative_offset: None,
                transaction: None,
            })),
        })
        .await
        .expect("send acks");
    next_receipt(&mut workers).await;
    workers_sender
        .send(nack(vec![7], 600_000))
        .await
        .expect("nack 7");
    workers_sender.send(nack(vec![9], 1)).await.expect("nack 9");
    let redelivered = next_delivery(&mut workers).await;
    assert_eq!(redelivered.offsets, vec![9]);
    assert_eq!(redelivered.delivery_counts, vec![2]);
    workers_sender
        .send(nack(vec![9], 1))
        .await
        .expect("nack 9 again");
    let dead = explain_until(&admin, 9, "workers", MessageState::DeadLettered).await;
    assert_eq!(dead.delivery_count, 2);
    let waiting = explain(&admin, 7, "workers").await;
    assert_eq!(
        waiting.state(),
        MessageState::WaitingForRedelivery,
        "{waiting:?}"
    );
    assert_eq!(waiting.delivery_count, 1);
    assert!(
        waiting
            .remaining_ms
            .is_some_and(|ms| ms > 0 && ms <= 600_000),
        "{waiting:?}"
    );
    assert_eq!(
        explain(&admin, 3, "workers").await.state(),
        MessageState::InFlight
    );
    assert_eq!(
        explain(&admin, 0, "workers").await.state(),
        MessageState::Acknowledged
    );
    assert_eq!(
        explain(&admin, 5, "workers").await.state(),
        MessageState::Filtered
    );

    // The consumers leave; once the dispatchers stopped, the stored cursor
    // answers: acknowledged (dead letters count as acknowledged there) or
    // pending.
    drop(workers_sender);
    drop(workers);
    drop(slow_sender);
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(30);
    while explain(&admin, 0, "workers").await.from_dispatcher {
        assert!(Instant::now() < deadline, "the dispatcher never stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for offset in [0, 9, 19] {
        let answer = explain(&admin, offset, "workers").await;
        assert_eq!(
            answer.state(),
            MessageState::Acknowledged,
            "{offset}: {answer:?}"
        );
        assert!(!answer.from_dispatcher);
    }
    for offset in [3, 7] {
        let answer = explain(&admin, offset, "workers").await;
        assert_eq!(
            answer.state(),
            MessageState::Pending,
            "{offset}: {answer:?}"
        );
    }
    assert_eq!(
        explain(&admin, 5, "workers").await.state(),
        MessageState::Filtered
    );
    // Held when its consumer left, so not acknowledged: pending (a running
    // dispatcher would call it ready again).
    let cursor = explain_until(&admin, 1, "slow", MessageState::Pending).await;
    assert!(!cursor.from_dispatcher);

    // Time-to-live and delays: an expired message and a delayed one, first
    // from no cursor, then from the running dispatcher.
    cluster.create_topic("timed", 1).await;
    let old_ms = sluice_proto::now_unix_ms() - 60_000;
    produce(
        &cluster,
        vec![
            Record::new("timed", "0")
                .with_timestamp_ms(old_ms)
                .with_ttl(Duration::from_secs(1)),
            Record::new("timed", "1").with_delay(Duration::from_secs(600)),
            Record::new("timed", "2"),
        ],
    )
    .await;
    admin
        .create_subscription(Subscription {
            topic: "timed".into(),
            ..subscription("later", "", 0)
        })
        .await
        .expect("create subscription");
    let timed = |offset: u64| {
        let admin = &admin;
        async move {
            admin
                .explain_message("timed", 0, offset, "later")
                .await
                .expect("explain")
        }
    };
    assert_eq!(timed(0).await.state(), MessageState::Expired);
    let delayed = timed(1).await;
    assert_eq!(delayed.state(), MessageState::Delayed, "{delayed:?}");
    assert!(delayed
        .remaining_ms
        .is_some_and(|ms| ms > 0 && ms <= 600_000));
    assert_eq!(timed(2).await.state(), MessageState::Pending);
    let (_later_sender, mut later) = raw_stream(&admin, "timed", "later", 10).await;
    assert_eq!(next_delivery(&mut later).await.offsets, vec![2]);
    let expired = timed(0).await;
    assert_eq!(expired.state(), MessageState::Expired, "{expired:?}");
    assert!(expired.from_dispatcher);
    let delayed = timed(1).await;
    assert_eq!(delayed.state(), MessageState::Delayed, "{delayed:?}");
    assert!(delayed.from_dispatcher);
    assert_eq!(timed(2).await.state(), MessageState::InFlight);

    // Bad input.
    let error = admin
        .explain_message("jobs", 0, 1, "no-such-subscription")
        .await
        .expect_err("unknown subscription");
    assert_eq!(code_of(&error), Some(ErrorCode::UnknownSubscription));
    assert!(matches!(
        admin.explain_message("jobs", 0, 1, "../bad").await,
        Err(ClientError::InvalidArgument(_))
    ));
    let error = admin
        .explain_message("no-such-topic", 0, 1, "workers")
        .await
        .expect_err("unknown topic");
    assert_eq!(code_of(&error), Some(ErrorCode::UnknownTopic));

    // The same through `sluice message`.
    let get = sluice(&cluster, &["message", "get", "jobs", "0", "3"]);
    assert!(get.status.success(), "{get:?}");
    let line = String::from_utf8_lossy(&get.stdout).to_string();
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    assert_eq!(fields[..2], ["0", "3"], "{line}");
    assert_eq!(fields[3..], ["key=k3", "tags=work", "3"], "{line}");
    let find = sluice(&cluster, &["message", "find", "jobs", "--key", "k7"]);
    assert!(find.status.success(), "{find:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&find.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("0\t7\t"), "{lines:?}");
    assert!(String::from_utf8_lossy(&find.stderr).contains("1 message(s) found"));
    let why = sluice(
        &cluster,
        &[
            "message",
            "why",
            "jobs",
            "0",
            "5",
            "--subscription",
            "workers",
        ],
    );
    assert!(why.status.success(), "{why:?}");
    assert!(
        String::from_utf8_lossy(&why.stdout).starts_with("FILTERED: "),
        "{why:?}"
    );
    for bad in [
        vec!["message", "find", "jobs"],
        vec!["message", "find", "jobs", "--key", "k", "--limit", "0"],
        vec!["message", "get", "jobs", "0", "999"],
        vec!["message", "why", "jobs", "0", "1", "--subscription", "nope"],
    ] {
        let output = sluice(&cluster, &bad);
        assert!(!output.status.success(), "{bad:?} succeeded");
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("error: "),
            "{bad:?}: {output:?}"
        );
    }
}

/// Runs the `sluice` CLI against `cluster`.
fn sluice(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(sluice_tests::cluster::binary("sluice"))
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .args(args)
        .output()
        .expect("run sluice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unindexed_ranges_are_scanned_and_every_answer_is_bounded() {
    // Stores index one batch per segment; the broker scans the rest, at
    // most 3000 bytes per answer. (The variable reaches every store this
    // test binary starts; other tests' answers do not depend on it.)
    std::env::set_var("SLUICE_STORE_MESSAGE_INDEX_MAX_BATCHES_PER_SEGMENT", "1");
    let cluster = Cluster::start(ClusterSpec {
        broker_config: "[lookup]\nmax_scan_bytes = 3000\n".to_string(),
        ..ClusterSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    cluster
        .create_topic_with(
            "events",
            TopicConfig {
                partitions: 1,
                segment_bytes: 2048,
                ..TopicConfig::default()
            },
        )
        .await;
    for round in 0..10u64 {
        let records = (round * 30..(round + 1) * 30)
            .map(|value| {
                Record::new("events", value.to_string()).with_key(format!("k{}", value % 3))
            })
            .collect();
        produce(&cluster, records).await;
    }
    let mut query = MessageQuery::new("events").key("k1").limit(1000);
    let mut seen = Vec::new();
    let mut notes = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 1000, "the search does not progress");
        let found = admin.find_messages(query.clone()).await.expect("find");
        seen.extend(found.records.iter().map(|record| value_of(&record.value)));
        notes.extend(found.notes);
        if found.continue_from.is_empty() {
            break;
        }
        query.from_offsets = found.continue_from;
    }
    seen.sort_unstable();
    let expected: Vec<u64> = (0..300).filter(|value| value % 3 == 1).collect();
    assert_eq!(seen, expected);
    assert!(pages > 1, "the scan budget never stopped an answer");
    assert!(
        notes
            .iter()
            .any(|note| note.contains("the rest was scanned")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|note| note.contains("[lookup] max_scan_bytes")),
        "{notes:?}"
    );
}
