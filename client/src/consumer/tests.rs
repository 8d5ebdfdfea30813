//! The consumer against fake brokers: corrupt batches, assignment order,
//! start offsets, revocation, fencing, coordinator lookup and owner moves.

use super::*;
use crate::testing::FakeBroker;
use crate::{Producer, ProducerConfig, Record};
use sluice_proto::ErrorCode;

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

/// A fake broker owning both partitions of topic `t`, each holding
/// `per_partition` records valued `{partition}-{index}`.
pub(super) async fn broker_with_data(per_partition: u32) -> (FakeBroker, Arc<Cluster>, String) {
    let broker = FakeBroker::default();
    let address = broker.start().await;
    let cluster = Cluster::unconnected(test_client_config());
    cluster.set_routes("t", &[&address, &address]);
    let producer = Producer::with_cluster(
        cluster.clone(),
        ProducerConfig {
            client: test_client_config(),
            linger_ms: 1,
            batch_max_records: 9,
            ..ProducerConfig::default()
        },
    );
    for index in 0..per_partition {
        for partition in 0..2 {
            producer
                .enqueue(Record::new("t", format!("{partition}-{index}")).with_partition(partition))
                .await
                .expect("enqueued");
        }
    }
    producer.close().await.expect("all records written");
    (broker, cluster, address)
}

/// Partition 0 of `t` holds 100 records, then a poison batch at
/// 100..1100 (a block of three records claiming 1000), then 10 more
/// records; partition 1 holds 100 records.
async fn broker_with_a_poison_batch() -> (FakeBroker, Arc<Cluster>) {
    use sluice_proto::test_util::poison::{compress, forged_batch, records_section};
    let (broker, cluster, _) = broker_with_data(100).await;
    let key = ("t".to_string(), 0);
    let compression = sluice_proto::batch::Compression::Zstd;
    let block = compress(compression, &records_section(&["x", "y", "z"]));
    let mut poison = forged_batch(compression, 1000, &block).to_vec();
    sluice_proto::batch::assign(&mut poison, 100, 1);
    let mut state = broker.lock();
    state
        .logs
        .entry(key.clone())
        .or_default()
        .push(Bytes::from(poison));
    for index in 0..10u64 {
        let mut after = sluice_proto::test_util::batch(&["after"]).to_vec();
        sluice_proto::batch::assign(&mut after, 1100 + index, 1);
        state
            .logs
            .entry(key.clone())
            .or_default()
            .push(Bytes::from(after));
    }
    state.next_offset.insert(key, 1110);
    drop(state);
    (broker, cluster)
}

async fn assign_both(cluster: Arc<Cluster>, policy: CorruptBatchPolicy) -> Consumer {
    let config = ConsumerConfig {
        on_corrupt_batch: policy,
        ..small_buffer_config()
    };
    Consumer::assign_on(
        cluster,
        config,
        vec![
            ("t".into(), 0, StartOffset::Earliest),
            ("t".into(), 1, StartOffset::Earliest),
        ],
    )
    .await
    .expect("assigned")
}

#[tokio::test]
async fn a_corrupt_batch_stops_its_partition_with_its_offsets_until_a_seek_past_it() {
    let (_broker, cluster) = broker_with_a_poison_batch().await;
    let mut consumer = assign_both(cluster, CorruptBatchPolicy::default()).await;
    let mut records = Vec::new();
    let error = loop {
        match consumer.recv_timeout(Duration::from_secs(10)).await {
            Ok(Some(record)) => records.push(record),
            Ok(None) => panic!("no error after {} records", records.len()),
            Err(error) => break error,
        }
    };
    let ClientError::CorruptBatch {
        topic,
        partition: 0,
        base_offset: 100,
        end_offset: 1100,
        ..
    } = &error
    else {
        panic!("not the poison batch's error: {error}");
    };
    assert_eq!(topic, "t");
    // Every record before the batch came first; partition 1 goes on.
    records.extend(receive(&mut consumer, 200 - records.len()).await);
    assert_eq!(offsets_of(&records, 0), (0..100).collect::<Vec<_>>());
    assert_eq!(offsets_of(&records, 1), (0..100).collect::<Vec<_>>());
    // Stopped: nothing more from partition 0, no error twice.
    assert_eq!(
        consumer
            .recv_timeout(Duration::from_millis(200))
            .await
            .expect("no second error"),
        None
    );
    consumer
        .seek("t", 0, StartOffset::Offset(1100))
        .await
        .expect("seek past it");
    let after = receive(&mut consumer, 10).await;
    assert_eq!(offsets_of(&after, 0), (1100..1110).collect::<Vec<_>>());
    assert_eq!(consumer.skipped_corrupt_batches(), 0);
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn skip_goes_past_a_corrupt_batch_and_counts_it() {
    let (_broker, cluster) = broker_with_a_poison_batch().await;
    let mut consumer = assign_both(cluster, CorruptBatchPolicy::Skip).await;
    let records = receive(&mut consumer, 210).await;
    let mut expected: Vec<u64> = (0..100).collect();
    expected.extend(1100..1110);
    assert_eq!(offsets_of(&records, 0), expected);
    assert_eq!(offsets_of(&records, 1), (0..100).collect::<Vec<_>>());
    assert_eq!(consumer.skipped_corrupt_batches(), 1);
    consumer.close().await.expect("close");
}

pub(super) fn small_buffer_config() -> ConsumerConfig {
    ConsumerConfig {
        client: test_client_config(),
        fetch_max_wait_ms: 10,
        fetch_partition_max_bytes: 300,
        // Far less than the data: fetching must pause and resume.
        max_buffered_bytes: 600,
        ..ConsumerConfig::default()
    }
}

pub(super) async fn receive(consumer: &mut Consumer, count: usize) -> Vec<ConsumerRecord> {
    let mut records = Vec::new();
    while records.len() < count {
        match consumer.recv_timeout(Duration::from_secs(10)).await {
            Ok(Some(record)) => records.push(record),
            Ok(None) => panic!("only {} of {count} records arrived", records.len()),
            Err(error) => panic!("recv failed: {error}"),
        }
    }
    records
}

pub(super) fn offsets_of(records: &[ConsumerRecord], partition: u32) -> Vec<u64> {
    records
        .iter()
        .filter(|record| record.partition == partition)
        .map(|record| record.offset)
        .collect()
}

#[tokio::test]
async fn assigned_partitions_arrive_in_order_from_their_start() {
    let (_broker, cluster, _) = broker_with_data(100).await;
    let mut consumer = Consumer::assign_on(
        cluster,
        small_buffer_config(),
        vec![
            ("t".into(), 0, StartOffset::Offset(5)),
            ("t".into(), 1, StartOffset::Earliest),
        ],
    )
    .await
    .expect("assigned");
    assert_eq!(
        consumer.assignment(),
        vec![("t".to_string(), 0), ("t".to_string(), 1)]
    );
    let records = receive(&mut consumer, 195).await;
    assert_eq!(offsets_of(&records, 0), (5..100).collect::<Vec<_>>());
    assert_eq!(offsets_of(&records, 1), (0..100).collect::<Vec<_>>());
    let first = records
        .iter()
        .find(|record| record.partition == 0)
        .expect("partition 0");
    assert_eq!(first.value.as_deref(), Some(&b"0-5"[..]));
    // Nothing more, and nothing twice.
    assert_eq!(
        consumer
            .recv_timeout(Duration::from_millis(100))
            .await
            .expect("no error"),
        None
    );

    // Seek back: buffered data is dropped, delivery restarts there.
    consumer
        .seek("t", 0, StartOffset::Offset(90))
        .await
        .expect("seek");
    let records = receive(&mut consumer, 10).await;
    assert_eq!(offsets_of(&records, 0), (90..100).collect::<Vec<_>>());
    assert!(consumer
        .seek("other", 0, StartOffset::Earliest)
        .await
        .is_err());
    assert!(
        matches!(
            consumer.commit().await,
            Err(ClientError::InvalidArgument(_))
        ),
        "no group, nothing to commit to"
    );

    // The stream view yields the same records.
    consumer
        .seek("t", 1, StartOffset::Offset(97))
        .await
        .expect("seek");
    let streamed: Vec<u64> = {
        use futures::StreamExt;
        let stream = consumer.stream();
        futures::pin_mut!(stream);
        let mut offsets = Vec::new();
        while offsets.len() < 3 {
            let record = stream
                .next()
                .await
                .expect("endless stream")
                .expect("record");
            offsets.push(record.offset);
        }
        offsets
    };
    assert_eq!(streamed, vec![97, 98, 99]);
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn latest_starts_at_the_end() {
    let (_broker, cluster, _) = broker_with_data(10).await;
    let mut consumer = Consumer::assign_on(
        cluster,
        small_buffer_config(),
        vec![("t".into(), 0, StartOffset::Latest)],
    )
    .await
    .expect("assigned");
    assert_eq!(
        consumer
            .recv_timeout(Duration::from_millis(200))
            .await
            .expect("no error"),
        None
    );
    sluice_proto::test_util::eventually_true(
        "the start is resolved",
        Duration::from_secs(10),
        || consumer.position("t", 0).is_some(),
    )
    .await;
    assert_eq!(consumer.position("t", 0), Some(10));
    assert_eq!(consumer.position("t", 1), None, "not assigned");
    consumer.close().await.expect("close");
}

/// Read-committed, `Latest` is the last stable offset: starting at the
/// end would skip the records of a transaction open below it once it
/// commits. Read-uncommitted, it is the end.
#[tokio::test]
async fn latest_read_committed_starts_at_the_last_stable_offset() {
    let (broker, cluster, _) = broker_with_data(10).await;
    broker.lock().last_stable.insert(("t".into(), 0), 4);
    for (isolation, start) in [
        (Isolation::ReadCommitted, 4),
        (Isolation::ReadUncommitted, 10),
    ] {
        let consumer = Consumer::assign_on(
            cluster.clone(),
            ConsumerConfig {
                isolation,
                ..small_buffer_config()
            },
            vec![("t".into(), 0, StartOffset::Latest)],
        )
        .await
        .expect("assigned");
        sluice_proto::test_util::eventually_true(
            "the start is resolved",
            Duration::from_secs(10),
            || consumer.position("t", 0).is_some(),
        )
        .await;
        assert_eq!(consumer.position("t", 0), Some(start), "{isolation:?}");
        consumer.close().await.expect("close");
    }
}

#[tokio::test]
async fn revoked_partition_is_committed_before_it_is_reported_released() {
    let (broker, cluster, address) = broker_with_data(50).await;
    {
        let mut state = broker.lock();
        state.group_target = [("t".to_string(), 0), ("t".to_string(), 1)]
            .into_iter()
            .collect();
        // Partition 1 resumes from a committed offset.
        state.committed.insert(("t".to_string(), 1), 20);
    }
    let config = ConsumerConfig {
        group: Some("g".into()),
        auto_commit_interval_ms: 3_600_000,
        ..small_buffer_config()
    };
    let mut consumer = Consumer::subscribe_on(cluster, config, "g".into(), &["t"], Some(address))
        .await
        .expect("subscribed");
    let records = receive(&mut consumer, 80).await;
    assert_eq!(offsets_of(&records, 0), (0..50).collect::<Vec<_>>());
    assert_eq!(offsets_of(&records, 1), (20..50).collect::<Vec<_>>());

    // The coordinator takes partition 0 away.
    broker.lock().group_target = [("t".to_string(), 1)].into_iter().collect();
    let mut released = false;
    for _ in 0..200 {
        assert_eq!(
            consumer
                .recv_timeout(Duration::from_millis(20))
                .await
                .expect("no error"),
            None
        );
        if consumer.assignment() == vec![("t".to_string(), 1)] {
            released = true;
            break;
        }
    }
    assert!(released, "partition 0 was never released");
    // Wait for the heartbeat that reports it, polling the consumer as an
    // application does: a poll cut short by its timeout while the
    // release's commit was in flight finishes the release in the next.
    let mut reported = false;
    for _ in 0..200 {
        if broker.lock().group_events.last().map(String::as_str) == Some("heartbeat t/1") {
            reported = true;
            break;
        }
        assert_eq!(
            consumer
                .recv_timeout(Duration::from_millis(10))
                .await
                .expect("no error"),
            None
        );
    }
    assert!(
        reported,
        "release never reported: {:?}",
        broker.lock().group_events
    );
    let events = broker.lock().group_events.clone();
    let commit = events
        .iter()
        .position(|event| event == "commit t/0 50")
        .unwrap_or_else(|| panic!("position of t/0 committed on release: {events:?}"));
    let release = events
        .iter()
        .position(|event| event == "heartbeat t/1")
        .expect("release heartbeat");
    assert!(
        commit < release,
        "commit precedes the release report: {events:?}"
    );
    assert!(
        !events.iter().any(|event| event.starts_with("commit t/1")),
        "partition 1 is not committed on a release of partition 0: {events:?}"
    );

    consumer.close().await.expect("close");
    let state = broker.lock();
    assert!(state.left, "close leaves the group");
    assert_eq!(
        state.committed.get(&("t".to_string(), 1)),
        Some(&50),
        "close commits"
    );
}

#[tokio::test]
async fn out_of_range_position_applies_the_reset_policy() {
    let (_broker, cluster, _) = broker_with_data(10).await;
    let mut consumer = Consumer::assign_on(
        cluster,
        small_buffer_config(),
        vec![("t".into(), 0, StartOffset::Offset(1_000))],
    )
    .await
    .expect("assigned");
    let records = receive(&mut consumer, 10).await;
    assert_eq!(offsets_of(&records, 0), (0..10).collect::<Vec<_>>());
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn fenced_member_rejoins_reporting_what_it_owns() {
    let (broker, cluster, address) = broker_with_data(30).await;
    broker.lock().group_target = [("t".to_string(), 0)].into_iter().collect();
    let config = ConsumerConfig {
        group: Some("g".into()),
        ..small_buffer_config()
    };
    let mut consumer = Consumer::subscribe_on(cluster, config, "g".into(), &["t"], Some(address))
        .await
        .expect("subscribed");
    let first = receive(&mut consumer, 10).await;
    broker.lock().fail_heartbeats = vec![ErrorCode::UnknownMember];
    let rest = receive(&mut consumer, 20).await;
    let offsets: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|record| record.offset)
        .collect();
    assert_eq!(
        offsets,
        (0..30).collect::<Vec<_>>(),
        "no gap, no duplicate across the rejoin"
    );
    let mut rejoined = false;
    for _ in 0..200 {
        {
            let state = broker.lock();
            // After the first join (empty member id) came heartbeats as
            // member-1; a later empty member id is the rejoin.
            rejoined = state
                .heartbeat_members
                .iter()
                .skip_while(|(member, _, _)| member.is_empty())
                .any(|(member, epoch, owned)| {
                    member.is_empty() && *epoch == 0 && owned.contains(&("t".to_string(), 0))
                });
        }
        if rejoined {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        rejoined,
        "rejoin with empty member id, epoch 0 and owned partitions: {:?}",
        broker.lock().heartbeat_members
    );
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn subscribe_finds_the_coordinator_through_the_nameserver() {
    use crate::testing::FakeNameServer;
    let (broker, _, address) = broker_with_data(5).await;
    broker.lock().group_target = [("t".to_string(), 0), ("t".to_string(), 1)]
        .into_iter()
        .collect();
    let nameserver = FakeNameServer::default();
    {
        let mut state = nameserver.lock();
        state
            .routes
            .insert("t".into(), vec![address.clone(), address.clone()]);
        state.coordinator = address;
    }
    let nameserver_address = nameserver.start().await;
    let config = ConsumerConfig {
        client: ClientConfig {
            bootstrap: vec![nameserver_address],
            ..test_client_config()
        },
        group: Some("g".into()),
        ..small_buffer_config()
    };
    assert!(matches!(
        Consumer::subscribe(config.clone(), &["missing"]).await,
        Err(ClientError::Server(error)) if error.code == ErrorCode::UnknownTopic
    ));
    let mut consumer = Consumer::subscribe(config, &["t"])
        .await
        .expect("subscribed");
    let records = receive(&mut consumer, 10).await;
    assert_eq!(offsets_of(&records, 0), (0..5).collect::<Vec<_>>());
    assert_eq!(offsets_of(&records, 1), (0..5).collect::<Vec<_>>());
    consumer.close().await.expect("close");
    assert_eq!(broker.lock().committed.get(&("t".to_string(), 0)), Some(&5));
}

/// Partition t/0 with 200 records on an old owner and, with the same
/// log, on a new one; a fake nameserver routing to the old owner.
struct MovingPartition {
    old_owner: FakeBroker,
    new_owner: FakeBroker,
    new_address: String,
    nameserver: crate::testing::FakeNameServer,
    nameserver_address: String,
}

impl MovingPartition {
    async fn start() -> Self {
        let (old_owner, _, old_address) = broker_with_data(200).await;
        let new_owner = FakeBroker {
            state: old_owner.state.clone(),
            ..FakeBroker::default()
        };
        let new_address = new_owner.start().await;
        let nameserver = crate::testing::FakeNameServer::default();
        nameserver
            .lock()
            .routes
            .insert("t".into(), vec![old_address.clone(), old_address]);
        let nameserver_address = nameserver.start().await;
        Self {
            old_owner,
            new_owner,
            new_address,
            nameserver,
            nameserver_address,
        }
    }

    /// A consumer of t/0 from the start, through the fake nameserver.
    async fn consumer(&self, request_timeout_ms: Option<u64>) -> Consumer {
        let mut client = ClientConfig {
            bootstrap: vec![self.nameserver_address.clone()],
            ..test_client_config()
        };
        if let Some(timeout_ms) = request_timeout_ms {
            client.request_timeout_ms = timeout_ms;
        }
        let config = ConsumerConfig {
            client,
            ..small_buffer_config()
        };
        Consumer::assign(config, vec![("t".into(), 0, StartOffset::Earliest)])
            .await
            .expect("assigned")
    }

    /// Reads the rest after `first` and checks every offset came once,
    /// in order, and the new owner served data.
    async fn read_the_rest(&self, consumer: &mut Consumer, first: Vec<ConsumerRecord>) {
        let rest = receive(consumer, 190).await;
        let offsets: Vec<u64> = first
            .iter()
            .chain(&rest)
            .map(|record| record.offset)
            .collect();
        assert_eq!(offsets, (0..200).collect::<Vec<_>>());
        assert!(
            self.new_owner
                .fetched_bytes
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0,
            "the new owner served data"
        );
    }
}

#[tokio::test]
async fn fetching_moves_to_the_new_owner_without_waiting_for_a_frozen_old_one() {
    let moving = MovingPartition::start().await;
    // Far beyond `receive`'s 10 s: waiting out a fetch to the frozen
    // owner would fail the test.
    let mut consumer = moving.consumer(Some(120_000)).await;
    let first = receive(&mut consumer, 10).await;
    moving
        .old_owner
        .frozen
        .store(true, std::sync::atomic::Ordering::SeqCst);
    moving.nameserver.move_topic("t", &moving.new_address);
    moving.read_the_rest(&mut consumer, first).await;
    moving
        .old_owner
        .frozen
        .store(false, std::sync::atomic::Ordering::SeqCst);
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn fetching_follows_a_partition_to_its_new_owner() {
    let moving = MovingPartition::start().await;
    let mut consumer = moving.consumer(None).await;
    let first = receive(&mut consumer, 10).await;
    moving
        .old_owner
        .refuse_fetch
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let new_address = moving.new_address.clone();
    moving
        .nameserver
        .lock()
        .routes
        .insert("t".into(), vec![new_address.clone(), new_address]);
    moving.read_the_rest(&mut consumer, first).await;
    consumer.close().await.expect("close");
}
