//! The consumer at a range accepted as lost, against a fake broker that
//! answers DATA_LOST inside it: skipped and counted by default, an error
//! naming the range under `DataLossPolicy::Fail`.

use super::tests::{broker_with_data, offsets_of, receive, small_buffer_config};
use super::*;
use crate::testing::FakeBroker;
use sluice_proto::batch::BatchIter;
use sluice_proto::ErrorCode;
use std::time::Duration;

/// Marks three whole batches of partition 0 of `t` as lost; returns the
/// range (batch boundaries, as the broker's lost ranges are).
fn lose_three_batches(broker: &FakeBroker) -> (u64, u64) {
    let mut state = broker.lock();
    let key = ("t".to_string(), 0);
    let bounds: Vec<(u64, u64)> = state.logs[&key]
        .iter()
        .map(|batch| {
            let header = BatchIter::new(batch)
                .next()
                .expect("one batch")
                .expect("valid")
                .1;
            (header.base_offset, header.end_offset())
        })
        .collect();
    let range = (bounds[2].0, bounds[4].1);
    state.lost.insert(key, range);
    range
}

async fn assign_both(broker_cluster: Arc<Cluster>, policy: DataLossPolicy) -> Consumer {
    let config = ConsumerConfig {
        on_data_loss: policy,
        ..small_buffer_config()
    };
    Consumer::assign_on(
        broker_cluster,
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
async fn by_default_a_lost_range_is_skipped_and_counted() {
    let (broker, cluster, _) = broker_with_data(100).await;
    let (start, end) = lose_three_batches(&broker);
    let mut consumer = assign_both(cluster, ConsumerConfig::default().on_data_loss).await;
    let expected: Vec<u64> = (0..start).chain(end..100).collect();
    let records = receive(&mut consumer, expected.len() + 100).await;
    assert_eq!(offsets_of(&records, 0), expected, "in order, none twice");
    assert_eq!(offsets_of(&records, 1), (0..100).collect::<Vec<_>>());
    assert_eq!(consumer.skipped_lost_offsets(), end - start);
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn fail_stops_the_partition_with_the_range_until_a_seek_past_it() {
    let (broker, cluster, _) = broker_with_data(100).await;
    let (start, end) = lose_three_batches(&broker);
    let mut consumer = assign_both(cluster, DataLossPolicy::Fail).await;
    let mut records = Vec::new();
    let error = loop {
        match consumer.recv_timeout(Duration::from_secs(10)).await {
            Ok(Some(record)) => records.push(record),
            Ok(None) => panic!("no error after {} records", records.len()),
            Err(error) => break error,
        }
    };
    let ClientError::DataLost {
        topic,
        partition: 0,
        start_offset,
        end_offset,
    } = &error
    else {
        panic!("not a data-loss error: {error}");
    };
    assert_eq!(
        (topic.as_str(), *start_offset, *end_offset),
        ("t", start, end)
    );
    assert_eq!(error.code(), Some(ErrorCode::DataLost));
    assert!(!error.is_retriable());
    records.extend(receive(&mut consumer, start as usize + 100 - records.len()).await);
    assert_eq!(offsets_of(&records, 0), (0..start).collect::<Vec<_>>());
    assert_eq!(offsets_of(&records, 1), (0..100).collect::<Vec<_>>());
    assert_eq!(consumer.skipped_lost_offsets(), 0);
    consumer
        .seek("t", 0, StartOffset::Offset(*end_offset))
        .await
        .expect("seek past it");
    let after = receive(&mut consumer, (100 - end) as usize).await;
    assert_eq!(offsets_of(&after, 0), (end..100).collect::<Vec<_>>());
    consumer.close().await.expect("close");
}
