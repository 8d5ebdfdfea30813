//! Tests of the producer through its public API against fake brokers.

use super::*;

use crate::testing::FakeBroker;
use sluice_proto::ErrorCode;
use std::collections::HashMap;

fn test_client_config() -> ClientConfig {
    ClientConfig {
        // Nothing listens there: route refreshes fail fast and the
        // seeded routes stay.
        bootstrap: vec!["http://127.0.0.1:1".into()],
        connect_timeout_ms: 200,
        request_timeout_ms: 5_000,
        ..ClientConfig::default()
    }
}

fn fast_config() -> ProducerConfig {
    ProducerConfig {
        client: test_client_config(),
        linger_ms: 1,
        batch_max_records: 7,
        max_in_flight_per_partition: 4,
        retry_backoff_ms: 1,
        retry_backoff_max_ms: 5,
        ..ProducerConfig::default()
    }
}

#[tokio::test]
async fn memory_budget_blocks_and_releases() {
    let budget = MemoryBudget::new(100);
    let first = budget
        .acquire(60, Duration::from_secs(60))
        .await
        .expect("room for 60 of 100");
    let semaphore = budget.semaphore.clone();
    let waiter = tokio::spawn(async move { semaphore.acquire_many_owned(50).await.map(|_| ()) });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "60 + 50 > 100 must wait");
    drop(first);
    waiter.await.expect("task").expect("semaphore open");
    assert_eq!(budget.available_bytes(), 100);
    assert!(matches!(
        budget.acquire(101, Duration::from_secs(1)).await,
        Err(ClientError::InvalidArgument(_))
    ));
    let _all = budget
        .acquire(100, Duration::from_secs(1))
        .await
        .expect("whole budget");
    assert!(matches!(
        budget.acquire(1, Duration::from_millis(10)).await,
        Err(ClientError::Timeout { .. })
    ));
}

#[tokio::test]
async fn undeliverable_records_time_out_and_free_their_memory() {
    // A port nobody listens on.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", dead.local_addr().expect("address"));
    drop(dead);
    let cluster = Cluster::unconnected(test_client_config());
    cluster.set_routes("t", &[&address]);
    let config = ProducerConfig {
        delivery_timeout_ms: 300,
        memory_limit_bytes: 10_000,
        ..fast_config()
    };
    let producer = Producer::with_cluster(cluster, config);
    let delivery = producer
        .enqueue(Record::new("t", "lost"))
        .await
        .expect("enqueued");
    assert!(producer.memory.available_bytes() < 10_000);
    match delivery.await {
        Err(ClientError::Timeout { what, .. }) => assert!(what.contains("t/0"), "{what}"),
        other => panic!("expected a delivery timeout, got {other:?}"),
    }
    producer
        .flush()
        .await
        .expect("flush completes once nothing is outstanding");
    assert_eq!(producer.memory.available_bytes(), 10_000);
    producer.close().await.expect("close");
}

#[tokio::test]
async fn retries_keep_order_without_loss_or_duplicates() {
    let broker = FakeBroker::default();
    {
        let mut state = broker.lock();
        state.fail_produce.insert(3, ErrorCode::NotOwner);
        state.fail_produce.insert(10, ErrorCode::Unavailable);
        state.fail_produce.insert(25, ErrorCode::NotOwner);
        state.poison_after_failure = true;
    }
    let address = broker.start().await;
    let cluster = Cluster::unconnected(test_client_config());
    cluster.set_routes("t", &[&address, &address]);
    let producer = Producer::with_cluster(cluster, fast_config());
    let mut deliveries = Vec::new();
    for index in 0..400u32 {
        let partition = index % 2;
        let record = Record::new("t", format!("{partition}-{index}")).with_partition(partition);
        deliveries.push((
            partition,
            index,
            producer.enqueue(record).await.expect("enqueued"),
        ));
    }
    let mut acknowledged: HashMap<u32, Vec<(u64, String)>> = HashMap::new();
    for (partition, index, delivery) in deliveries {
        let metadata = delivery
            .await
            .expect("every record is delivered after retries");
        assert_eq!(metadata.partition, partition);
        acknowledged
            .entry(partition)
            .or_default()
            .push((metadata.offset, format!("{partition}-{index}")));
    }
    producer.close().await.expect("close");
    assert!(
        !broker.lock().resumed_requests.is_empty(),
        "retries after a failure carry `resume`"
    );
    let failed = broker.lock().failed_requests;
    assert!(
        failed >= 6,
        "injected failures and the ones behind them happened ({failed})"
    );
    for partition in 0..2 {
        let log = broker.values("t", partition);
        let expected = acknowledged
            .remove(&partition)
            .expect("records for the partition");
        assert_eq!(
            log, expected,
            "partition {partition}: log order equals send order, offsets match"
        );
    }
}

#[tokio::test]
async fn records_of_a_batch_resolve_together_and_free_memory() {
    let broker = FakeBroker::default();
    let address = broker.start().await;
    let cluster = Cluster::unconnected(test_client_config());
    cluster.set_routes("t", &[&address]);
    let config = ProducerConfig {
        memory_limit_bytes: 1_000_000,
        ..fast_config()
    };
    let producer = Producer::with_cluster(cluster, config);
    let mut deliveries = Vec::new();
    for index in 0..30 {
        deliveries.push(
            producer
                .enqueue(Record::new("t", format!("{index}")).with_timestamp_ms(index))
                .await
                .expect("enqueued"),
        );
    }
    assert!(producer.memory.available_bytes() < 1_000_000);
    // Awaited out of order: each future still gets its own record.
    let last = deliveries.pop().expect("30 deliveries");
    let last = last.await.expect("delivered");
    assert_eq!((last.offset, last.timestamp_ms), (29, 29));
    for (index, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await.expect("delivered");
        assert_eq!(metadata.topic, "t");
        assert_eq!(metadata.offset, index as u64, "offset = batch base + index");
        assert_eq!(metadata.timestamp_ms, index as i64);
    }
    producer.flush().await.expect("flush");
    assert_eq!(producer.memory.available_bytes(), 1_000_000);
    assert!(
        broker.lock().produce_requests >= 5,
        "30 records in batches of at most 7"
    );
    producer.close().await.expect("close");
    let values: Vec<String> = broker.values("t", 0).into_iter().map(|(_, v)| v).collect();
    let expected: Vec<String> = (0..30).map(|index| index.to_string()).collect();
    assert_eq!(values, expected);
}

#[tokio::test]
async fn deliveries_fail_with_closed_when_the_dispatcher_is_gone() {
    let cluster = Cluster::unconnected(test_client_config());
    cluster.set_routes("t", &["http://127.0.0.1:1"]);
    let config = ProducerConfig {
        linger_ms: 60_000,
        ..fast_config()
    };
    let producer = Producer::with_cluster(cluster, config);
    let delivery = producer
        .enqueue(Record::new("t", "x"))
        .await
        .expect("enqueued");
    producer.dispatcher.abort();
    // The open batch is only dropped with the producer's shared state.
    drop(producer);
    let outcome = tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("the delivery resolves instead of waiting forever");
    assert!(matches!(outcome, Err(ClientError::Closed)), "{outcome:?}");
}

#[tokio::test]
async fn non_retriable_error_fails_only_its_batch() {
    let broker = FakeBroker::default();
    {
        let mut state = broker.lock();
        state.fail_produce.insert(2, ErrorCode::TooLarge);
        state.poison_after_failure = true;
    }
    let address = broker.start().await;
    let cluster = Cluster::unconnected(test_client_config());
    cluster.set_routes("t", &[&address]);
    let config = ProducerConfig {
        batch_max_records: 1,
        max_in_flight_per_partition: 1,
        ..fast_config()
    };
    let producer = Producer::with_cluster(cluster, config);
    let mut outcomes = Vec::new();
    for index in 0..5 {
        outcomes.push(
            producer
                .enqueue(Record::new("t", format!("{index}")))
                .await
                .expect("enqueued"),
        );
    }
    let mut results = Vec::new();
    for outcome in outcomes {
        results.push(outcome.await);
    }
    producer.close().await.expect("close");
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().err().and_then(ClientError::code),
        Some(ErrorCode::TooLarge)
    );
    assert!(results[2..].iter().all(Result::is_ok), "{results:?}");
    let values: Vec<String> = broker
        .values("t", 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(values, vec!["0", "2", "3", "4"]);
}

#[tokio::test]
async fn unknown_partition_is_refused_at_enqueue() {
    let cluster = Cluster::unconnected(test_client_config());
    cluster.set_routes("t", &["http://127.0.0.1:1"]);
    let producer = Producer::with_cluster(cluster, fast_config());
    let result = producer
        .enqueue(Record::new("t", "x").with_partition(3))
        .await;
    assert!(matches!(result, Err(ClientError::InvalidArgument(_))));
    producer.close().await.expect("close");
}

#[test]
fn record_builders() {
    let record = Record::new("t", "v")
        .with_key("k")
        .with_partition(2)
        .with_timestamp_ms(5);
    assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(record.partition, Some(2));
    assert_eq!(record.timestamp_ms, Some(5));
}

#[test]
fn a_tombstone_is_a_key_with_a_null_value_unlike_an_empty_value() {
    use sluice_proto::batch::{decode, BatchBuilder, Compression, RecordData};
    let tombstone = Record::tombstone("t", "k");
    assert!(tombstone.is_tombstone());
    assert_eq!(tombstone.key.as_deref(), Some(&b"k"[..]));
    let empty = Record::new("t", "").with_key("k");
    assert!(!empty.is_tombstone());
    assert!(!Record::new("t", "v").is_tombstone());
    let mut builder = BatchBuilder::new(Compression::None);
    for record in [&tombstone, &empty] {
        builder.push(&RecordData {
            key: record.key.clone(),
            value: record.value.clone(),
            timestamp_ms: Some(1),
            ..RecordData::default()
        });
    }
    let (_, records) = decode(&builder.build(), 1 << 20).expect("valid");
    assert_eq!(records[0].value, None, "the null flag (length -1) survives");
    assert_eq!(records[1].value.as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn idempotent_producer_numbers_records_and_resends_batches_unchanged() {
    use crate::testing::FakeNameServer;
    use sluice_proto::batch::BatchHeader;
    let broker = FakeBroker::default();
    {
        let mut state = broker.lock();
        state.fail_produce.insert(2, ErrorCode::Unavailable);
        state.fail_produce.insert(9, ErrorCode::NotOwner);
        state.poison_after_failure = true;
    }
    let address = broker.start().await;
    let nameserver = FakeNameServer::default();
    nameserver
        .lock()
        .routes
        .insert("t".into(), vec![address.clone(), address]);
    let nameserver_address = nameserver.start().await;
    let config = ProducerConfig {
        client: ClientConfig {
            bootstrap: vec![nameserver_address],
            ..test_client_config()
        },
        ..fast_config()
    };
    assert!(config.idempotence, "on by default");
    let producer = Producer::new(config).await.expect("producer");
    let mut deliveries = Vec::new();
    for index in 0..120u32 {
        let record = Record::new("t", format!("{index}")).with_partition(index % 2);
        deliveries.push(producer.enqueue(record).await.expect("enqueued"));
    }
    for delivery in deliveries {
        delivery.await.expect("delivered after retries");
    }
    producer.close().await.expect("close");
    assert_eq!(nameserver.lock().allocated_producer_ids, 1);
    let state = broker.lock();
    assert!(state.failed_requests >= 2, "failures were injected");
    for partition in 0..2u32 {
        let log = &state.logs[&("t".to_string(), partition)];
        let mut next_sequence = 0;
        for batch in log {
            let header = BatchHeader::parse(batch).expect("valid header");
            assert_eq!((header.producer_id, header.producer_epoch), (1001, 0));
            assert_eq!(
                header.base_sequence, next_sequence,
                "partition {partition}: sequences count records in order"
            );
            next_sequence += header.record_count as i32;
        }
        assert_eq!(next_sequence, 60);
    }
    // Every request, retries included, carried a batch identical to
    // one in the log (same sequence, same CRC): resends are unchanged.
    let logged: std::collections::HashSet<(i32, u32)> = state
        .logs
        .values()
        .flatten()
        .map(|batch| {
            let header = BatchHeader::parse(batch).expect("valid header");
            (header.base_sequence, header.crc)
        })
        .collect();
    for sent in &state.sent_batches {
        let header = BatchHeader::parse(sent).expect("valid header");
        assert!(logged.contains(&(header.base_sequence, header.crc)));
    }
    assert!(state.sent_batches.len() > logged.len(), "some were resent");
}

#[tokio::test]
async fn idempotence_limits_batches_in_flight() {
    let config = ProducerConfig {
        max_in_flight_per_partition:
            sluice_proto::limits::MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER + 1,
        ..fast_config()
    };
    match Producer::new(config.clone()).await {
        Err(ClientError::InvalidArgument(message)) => {
            assert!(message.contains("idempotence"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {:?}", other.err()),
    }
    // Without idempotence the limit does not apply (connecting then
    // fails: nothing listens at the bootstrap address).
    let plain = ProducerConfig {
        idempotence: false,
        ..config
    };
    assert!(!matches!(
        Producer::new(plain).await,
        Err(ClientError::InvalidArgument(_))
    ));
}

/// Enqueues `values` and returns their deliveries.
async fn enqueue_values(producer: &Producer, values: std::ops::Range<u32>) -> Vec<DeliveryFuture> {
    let mut deliveries = Vec::new();
    for index in values {
        deliveries.push(
            producer
                .enqueue(Record::new("t", format!("{index}")))
                .await
                .expect("enqueued"),
        );
    }
    deliveries
}

fn logged_values(broker: &FakeBroker) -> Vec<String> {
    broker
        .values("t", 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect()
}

/// An old and a new owner of topic t (one partition) and a fake
/// nameserver routing to the old one; returns them with the new
/// owner's and the nameserver's addresses.
async fn two_owners() -> (
    FakeBroker,
    FakeBroker,
    String,
    crate::testing::FakeNameServer,
    String,
) {
    let old_owner = FakeBroker::default();
    let new_owner = FakeBroker::default();
    let old_address = old_owner.start().await;
    let new_address = new_owner.start().await;
    let nameserver = crate::testing::FakeNameServer::default();
    nameserver
        .lock()
        .routes
        .insert("t".into(), vec![old_address]);
    let nameserver_address = nameserver.start().await;
    (
        old_owner,
        new_owner,
        new_address,
        nameserver,
        nameserver_address,
    )
}

#[tokio::test]
async fn resends_to_the_new_owner_without_waiting_for_a_frozen_old_one() {
    let (old_owner, new_owner, new_address, nameserver, nameserver_address) = two_owners().await;
    let config = ProducerConfig {
        client: ClientConfig {
            bootstrap: vec![nameserver_address],
            // Far beyond the bound below: waiting for the frozen owner
            // would fail the test.
            request_timeout_ms: 120_000,
            ..test_client_config()
        },
        delivery_timeout_ms: 120_000,
        batch_max_records: 5,
        ..fast_config()
    };
    let producer = Producer::new(config).await.expect("producer");
    for delivery in enqueue_values(&producer, 0..20).await {
        delivery.await.expect("delivered before the freeze");
    }
    // The owner freezes with batches in flight.
    old_owner
        .frozen
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let taken = || old_owner.taken.load(std::sync::atomic::Ordering::SeqCst);
    let before = taken();
    let deliveries = enqueue_values(&producer, 20..60).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken() == before {
        assert!(Instant::now() < deadline, "batches reach the frozen owner");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another broker takes the partition over (a higher epoch).
    nameserver.move_topic("t", &new_address);
    let all = async {
        let mut offsets = Vec::new();
        for delivery in deliveries {
            offsets.push(delivery.await.expect("delivered by the new owner").offset);
        }
        offsets
    };
    let offsets = tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("acknowledged again within 10 s while the old owner stays frozen");
    assert_eq!(
        offsets,
        (0..40).collect::<Vec<u64>>(),
        "offsets are the new owner's"
    );
    let resent: Vec<String> = (20..60).map(|index| index.to_string()).collect();
    assert_eq!(logged_values(&new_owner), resent, "in order, once each");
    // The old owner thaws and answers its abandoned attempts late
    // (successfully: this fake has no fencing): they change nothing.
    old_owner
        .frozen
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for delivery in enqueue_values(&producer, 60..70).await {
        delivery.await.expect("delivered after the thaw");
    }
    producer.flush().await.expect("flush");
    let mut expected = resent;
    expected.extend((60..70).map(|index| index.to_string()));
    assert_eq!(logged_values(&new_owner), expected);
    let old_log = logged_values(&old_owner);
    assert!(
        old_log
            .iter()
            .all(|value| value.parse::<u32>().is_ok_and(|value| value < 60)),
        "nothing went to the old owner after the move: {old_log:?}"
    );
    producer.close().await.expect("close");
}

#[tokio::test]
async fn follows_a_partition_to_its_new_owner_in_order() {
    let (old_owner, new_owner, new_address, nameserver, nameserver_address) = two_owners().await;
    let config = ProducerConfig {
        client: ClientConfig {
            bootstrap: vec![nameserver_address],
            ..test_client_config()
        },
        batch_max_records: 5,
        ..fast_config()
    };
    let producer = Producer::new(config)
        .await
        .expect("connected to the fake nameserver");
    let send_range = |range: std::ops::Range<u32>| {
        let producer = &producer;
        async move {
            let mut deliveries = Vec::new();
            for index in range {
                deliveries.push(
                    producer
                        .enqueue(Record::new("t", format!("{index}")))
                        .await
                        .expect("enqueued"),
                );
            }
            for delivery in deliveries {
                delivery.await.expect("delivered");
            }
        }
    };
    send_range(0..20).await;
    // The partition moves: the old owner refuses from its next-but-one
    // request on, the nameserver points at the new owner.
    {
        let mut state = old_owner.lock();
        state.not_owner_from = Some(state.produce_requests + 2);
    }
    nameserver
        .lock()
        .routes
        .insert("t".into(), vec![new_address]);
    send_range(20..100).await;
    producer.close().await.expect("close");
    let mut values: Vec<String> = old_owner
        .values("t", 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    let moved: Vec<String> = new_owner
        .values("t", 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert!(!moved.is_empty(), "records went to the new owner");
    values.extend(moved);
    let expected: Vec<String> = (0..100).map(|index| index.to_string()).collect();
    assert_eq!(
        values, expected,
        "old owner's log then new owner's log is the send order"
    );
    let state = nameserver.lock();
    assert!(
        state.get_routes_calls >= 2 || state.watch_calls >= 1,
        "routes were refreshed (after the refusal, or by the route watch)"
    );
}

#[test]
fn delays_and_ttls_are_checked_before_sending() {
    use std::time::Duration;
    let ok = Record::new("t", "v")
        .with_delay(Duration::from_secs(3600))
        .with_ttl(Duration::from_secs(60));
    assert!(ok.check_timing_headers().is_ok());
    let too_far = Record::new("t", "v").with_delay(Duration::from_secs(200 * 86_400));
    assert!(matches!(
        too_far.check_timing_headers(),
        Err(ClientError::InvalidArgument(message)) if message.contains("days ahead")
    ));
    let zero_ttl = Record::new("t", "v").with_ttl(Duration::ZERO);
    assert!(zero_ttl.check_timing_headers().is_err());
    let garbage = Record::new("t", "v").with_header(sluice_proto::headers::DELIVER_AT_MS, "soon");
    assert!(garbage.check_timing_headers().is_err());
}
