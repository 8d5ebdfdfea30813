use super::produce::refuse_held;
use super::*;
use futures::stream::FuturesOrdered;
use sluice_proto::v1::{FetchPartition, FetchedPartition};
use sluice_proto::ErrorCode;
use std::collections::HashMap;

/// A request refused at intake (a produce quota) poisons its partition
/// on the stream at once: a later request arriving before the refusal's
/// answer leaves the ordered queue (behind an append still in progress)
/// is refused too, never appended ahead of the resend. Found by
/// `quotas.rs` failing with OUT_OF_ORDER_SEQUENCE on a loaded machine.
#[test]
fn a_refusal_at_intake_poisons_the_partition_at_once() {
    let mut pending = FuturesOrdered::new();
    let mut streams = HashMap::new();
    let request = |request_id| ProduceRequest {
        request_id,
        topic: "orders".to_string(),
        partition: 0,
        ..Default::default()
    };
    let throttled = BrokerError::Throttled("over the produce quota".to_string());
    refuse_held(&mut pending, &mut streams, request(1), &throttled);
    let entry = &streams[&PartitionKey::new("orders", 0)];
    assert_eq!(entry.poisoned, Some(ErrorCode::Throttled));
    assert_eq!(entry.outstanding, 1);
    // Not retriable: the request fails for good and poisons nothing.
    let refused = BrokerError::InvalidArgument("not allowed".to_string());
    refuse_held(&mut pending, &mut streams, request(2), &refused);
    let mut other = HashMap::new();
    refuse_held(&mut pending, &mut other, request(3), &refused);
    assert_eq!(other[&PartitionKey::new("orders", 0)].poisoned, None);
}

#[test]
fn an_answer_that_dropped_everything_but_moved_on_is_not_held() {
    let request = FetchRequest {
        partitions: vec![
            FetchPartition {
                offset: 5,
                ..Default::default()
            },
            FetchPartition {
                offset: 7,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let answer = |next: [Option<u64>; 2], data: bool| FetchResponse {
        partitions: next
            .iter()
            .map(|&next_offset| FetchedPartition {
                next_offset,
                batches: if data {
                    bytes::Bytes::from_static(b"x")
                } else {
                    bytes::Bytes::new()
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    assert!(!skipped_ahead(&request, &answer([None, None], false)));
    assert!(!skipped_ahead(&request, &answer([Some(5), Some(7)], false)));
    assert!(skipped_ahead(&request, &answer([None, Some(9)], false)));
    // Data goes out through min_bytes anyway.
    assert!(!skipped_ahead(&request, &answer([Some(6), Some(8)], true)));
}
