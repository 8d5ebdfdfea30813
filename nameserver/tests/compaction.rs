//! Compaction's segment swap (ADR 0016 §8) against a real etcd:
//! `PlaceCompactedSegment` records a placement outside `segments/`,
//! `ReplaceSegments` swaps all or nothing (a stale epoch, a changed old
//! segment, an unplaced or forged new one, a replay: refused, nothing
//! changed), `ListCompactions` / `ForgetCompactions` track what is left.

mod common;

use common::{code, eventually, topic_request, Client, Cluster, Fixture};
use sluice_proto::v1::{
    CloseSegmentRequest, CompactionRecordKind, CreateSegmentRequest, ForgetCompactionsRequest,
    ListCompactionsRequest, ListSegmentsRequest, PlaceCompactedSegmentRequest,
    ReplaceSegmentsRequest, SegmentInfo, SegmentState, UpdateSegmentReplicasRequest,
};
use sluice_proto::ErrorCode;

const TOPIC: &str = "compacted";

async fn owner_epoch(cluster: &Cluster) -> u64 {
    eventually("broker-1 owns the partition", || {
        let owned = cluster.node("broker-1").assignments_of(TOPIC);
        async move { owned.first().map(|assignment| assignment.epoch) }
    })
    .await
}

async fn segments(client: &mut Client) -> Vec<SegmentInfo> {
    client
        .list_segments(ListSegmentsRequest {
            topic: TOPIC.into(),
            partition: 0,
        })
        .await
        .expect("list segments")
        .into_inner()
        .segments
}

/// A closed segment over `[base, end)`.
async fn closed_segment(client: &mut Client, epoch: u64, base: u64, end: u64) {
    let created = client
        .create_segment(CreateSegmentRequest {
            topic: TOPIC.into(),
            partition: 0,
            epoch,
            base_offset: base,
            exclude_store_ids: Vec::new(),
        })
        .await
        .expect("create")
        .into_inner();
    client
        .close_segment(CloseSegmentRequest {
            topic: TOPIC.into(),
            partition: 0,
            epoch,
            segment_id: created.segment_id,
            end_offset: end,
            size_bytes: 1_000,
            max_timestamp_ms: 5,
            ..CloseSegmentRequest::default()
        })
        .await
        .expect("close");
}

fn place(epoch: u64, base: u64, end: u64) -> PlaceCompactedSegmentRequest {
    PlaceCompactedSegmentRequest {
        topic: TOPIC.into(),
        partition: 0,
        epoch,
        base_offset: base,
        end_offset: end,
        exclude_store_ids: Vec::new(),
    }
}

fn swap(
    epoch: u64,
    replaced: Vec<SegmentInfo>,
    compacted: Vec<SegmentInfo>,
) -> ReplaceSegmentsRequest {
    ReplaceSegmentsRequest {
        topic: TOPIC.into(),
        partition: 0,
        epoch,
        replaced,
        compacted,
    }
}

async fn records(client: &mut Client, epoch: u64) -> Vec<(u64, i32)> {
    let mut records: Vec<(u64, i32)> = client
        .list_compactions(ListCompactionsRequest {
            topic: TOPIC.into(),
            partition: 0,
            epoch,
        })
        .await
        .expect("list compactions")
        .into_inner()
        .records
        .into_iter()
        .map(|record| (record.segment.unwrap_or_default().segment_id, record.kind))
        .collect();
    records.sort_unstable();
    records
}

#[tokio::test]
async fn a_swap_is_all_or_nothing_and_fenced() {
    let mut cluster = Fixture::new().build().await;
    cluster.start_store("store-1").await;
    cluster.start_broker("broker-1").await;
    let mut client = cluster.client();
    client
        .create_topic(topic_request(TOPIC, 1))
        .await
        .expect("create topic");
    let epoch = owner_epoch(&cluster).await;
    closed_segment(&mut client, epoch, 0, 10).await;
    closed_segment(&mut client, epoch, 10, 25).await;
    let old = segments(&mut client).await;
    assert_eq!(old.len(), 2);

    // Placement: checked range and epoch, recorded outside segments/.
    for (base, end) in [(5, 5), (9, 3)] {
        let refused = client
            .place_compacted_segment(place(epoch, base, end))
            .await
            .expect_err("empty range");
        assert_eq!(
            code(&refused),
            ErrorCode::InvalidArgument,
            "[{base}, {end})"
        );
    }
    let stale = client
        .place_compacted_segment(place(epoch + 1, 0, 25))
        .await
        .expect_err("stale epoch");
    assert_eq!(code(&stale), ErrorCode::Fenced);
    let placed = client
        .place_compacted_segment(place(epoch, 0, 25))
        .await
        .expect("place")
        .into_inner();
    assert_eq!(
        segments(&mut client).await,
        old,
        "a placement is invisible to readers"
    );
    assert_eq!(
        records(&mut client, epoch).await,
        vec![(placed.segment_id, CompactionRecordKind::Placed as i32)]
    );
    let compacted = SegmentInfo {
        size_bytes: 300,
        max_timestamp_ms: 5,
        first_compacted_at_ms: 1_234,
        ..placed.clone()
    };

    // Refused swaps change nothing.
    let fenced = client
        .replace_segments(swap(epoch + 1, old.clone(), vec![compacted.clone()]))
        .await
        .expect_err("stale epoch");
    assert_eq!(code(&fenced), ErrorCode::Fenced);
    let forged = SegmentInfo {
        segment_id: placed.segment_id + 1_000,
        ..compacted.clone()
    };
    let unplaced = client
        .replace_segments(swap(epoch, old.clone(), vec![forged]))
        .await
        .expect_err("never placed");
    assert_eq!(code(&unplaced), ErrorCode::Conflict);
    let moved = SegmentInfo {
        end_offset: 24,
        ..compacted.clone()
    };
    let uncovered = client
        .replace_segments(swap(epoch, old.clone(), vec![moved]))
        .await
        .expect_err("other offsets");
    assert_eq!(code(&uncovered), ErrorCode::InvalidArgument);
    // A concurrent repair changes an old segment: the swap based on the
    // view before it is refused.
    let mut repaired = old[1].replicas.clone();
    repaired.push(sluice_proto::v1::SegmentReplica {
        store_id: "store-9".into(),
        address: "127.0.0.1:9".into(),
    });
    client
        .update_segment_replicas(UpdateSegmentReplicasRequest {
            topic: TOPIC.into(),
            partition: 0,
            epoch,
            segment_id: old[1].segment_id,
            replicas: repaired,
        })
        .await
        .expect("repair rewrites the segment");
    let changed = client
        .replace_segments(swap(epoch, old.clone(), vec![compacted.clone()]))
        .await
        .expect_err("changed");
    assert_eq!(code(&changed), ErrorCode::Conflict);
    let old = segments(&mut client).await;
    assert_eq!(
        old[1].replicas.len(),
        2,
        "nothing of the refused swaps happened"
    );

    // The swap.
    let installed = client
        .replace_segments(swap(epoch, old.clone(), vec![compacted.clone()]))
        .await
        .expect("swap")
        .into_inner()
        .segments;
    assert_eq!(installed.len(), 1);
    let now = segments(&mut client).await;
    assert_eq!(now, installed);
    assert_eq!(now[0].state, SegmentState::Closed as i32);
    assert_eq!(
        (
            now[0].base_offset,
            now[0].end_offset,
            now[0].first_compacted_at_ms
        ),
        (0, 25, 1_234)
    );
    let mut expected = vec![
        (old[0].segment_id, CompactionRecordKind::Replaced as i32),
        (old[1].segment_id, CompactionRecordKind::Replaced as i32),
    ];
    expected.sort_unstable();
    assert_eq!(records(&mut client, epoch).await, expected);
    // A replay finds the old segments gone.
    let replay = client
        .replace_segments(swap(epoch, old.clone(), vec![compacted]))
        .await
        .expect_err("replay");
    assert_eq!(code(&replay), ErrorCode::Conflict);

    // Forgetting: epoch-fenced, bounded.
    let forget = |epoch: u64, ids: Vec<u64>| ForgetCompactionsRequest {
        topic: TOPIC.into(),
        partition: 0,
        epoch,
        placed_segment_ids: Vec::new(),
        replaced_segment_ids: ids,
    };
    let ids: Vec<u64> = old.iter().map(|segment| segment.segment_id).collect();
    let stale = client
        .forget_compactions(forget(epoch + 1, ids.clone()))
        .await
        .expect_err("stale");
    assert_eq!(code(&stale), ErrorCode::Fenced);
    let too_many = client
        .forget_compactions(forget(epoch, (0..257).collect()))
        .await
        .expect_err("too many");
    assert_eq!(code(&too_many), ErrorCode::InvalidArgument);
    client
        .forget_compactions(forget(epoch, ids))
        .await
        .expect("forget");
    assert!(records(&mut client, epoch).await.is_empty());
    cluster.stop().await;
}
