//! Recording lost ranges on a closed segment (issue 11, closed segments
//! damaged on every copy): only the partition's owner at its current
//! epoch, only after an operator accepted, only inside the segment; the
//! acceptance is used up. Runs the handler on the embedded metadata store.

use super::super::NameServerHandler;
use crate::config::NameServerConfig;
use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner};
use crate::metadata::{EmbeddedMetadataStore, MetadataStore, Put, Transaction};
use sluice_proto::v1::{
    CloseSegmentRequest, DamagedRange, SegmentInfo, SegmentState, Topic, TopicConfig,
};
use std::sync::Arc;
use tokio::sync::watch;

const OWNER_EPOCH: u64 = 5;
const SEGMENT_ID: u64 = 7;

fn lost(start_offset: u64, end_offset: u64) -> DamagedRange {
    DamagedRange {
        start_offset,
        end_offset,
        detail: "damaged on every copy".into(),
    }
}

/// A handler over a topic `orders` with one partition owned at
/// `OWNER_EPOCH` and a closed segment [100, 4000).
async fn handler_with_closed_segment(
    directory: &std::path::Path,
    accepted: bool,
) -> (NameServerHandler, watch::Sender<bool>) {
    let store = EmbeddedMetadataStore::open(directory).await.expect("store");
    let topic = Topic {
        name: "orders".into(),
        config: Some(TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        }),
        ..Topic::default()
    };
    let owner = PartitionOwner {
        broker_id: "b1".into(),
        broker_session: 1,
        epoch: OWNER_EPOCH,
    };
    let segment = SegmentInfo {
        segment_id: SEGMENT_ID,
        topic: "orders".into(),
        partition: 0,
        state: SegmentState::Closed as i32,
        base_offset: 100,
        end_offset: 4000,
        data_loss_accepted: accepted,
        ..SegmentInfo::default()
    };
    let transaction = Transaction {
        compares: Vec::new(),
        puts: vec![
            Put::new(keys::topic("orders"), keys::encode(&topic)),
            Put::new(keys::partition("orders", 0), keys::encode(&owner)),
            Put::new(
                keys::segment("orders", 0, SEGMENT_ID),
                keys::encode(&segment),
            ),
        ],
        deletes: Vec::new(),
    };
    assert!(store.commit(transaction).await.expect("commit"));
    let (stop, stopping) = watch::channel(false);
    let store: Arc<dyn MetadataStore> = store;
    (
        NameServerHandler::new(NameServerConfig::default(), store, stopping),
        stop,
    )
}

fn close_again(epoch: u64, lost_ranges: Vec<DamagedRange>) -> CloseSegmentRequest {
    CloseSegmentRequest {
        topic: "orders".into(),
        partition: 0,
        epoch,
        segment_id: SEGMENT_ID,
        end_offset: 4000,
        lost_ranges,
        ..CloseSegmentRequest::default()
    }
}

async fn stored(handler: &NameServerHandler) -> SegmentInfo {
    handler
        .do_list_segments("orders", 0)
        .await
        .expect("list")
        .into_iter()
        .find(|segment| segment.segment_id == SEGMENT_ID)
        .expect("the segment")
}

#[tokio::test]
async fn only_the_current_owner_records_accepted_losses_of_a_closed_segment() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (handler, _stop) = handler_with_closed_segment(directory.path(), true).await;
    for stale in [OWNER_EPOCH - 1, OWNER_EPOCH + 1, 0] {
        let refused = handler
            .do_close_segment(close_again(stale, vec![lost(2000, 2020)]))
            .await
            .expect_err("a stale owner is refused");
        assert!(
            matches!(refused, NameServerError::Fenced { .. }),
            "epoch {stale}: {refused:?}"
        );
    }
    assert!(stored(&handler).await.lost_ranges.is_empty());
    // Outside the segment: refused, nothing recorded.
    for (start, end) in [(50, 120), (3990, 4001)] {
        let refused = handler
            .do_close_segment(close_again(OWNER_EPOCH, vec![lost(start, end)]))
            .await
            .expect_err("outside the segment");
        assert!(matches!(refused, NameServerError::InvalidArgument(_)));
    }
    let recorded = handler
        .do_close_segment(close_again(OWNER_EPOCH, vec![lost(2000, 2020)]))
        .await
        .expect("the owner records");
    assert_eq!(recorded.lost_ranges, vec![lost(2000, 2020)]);
    let now = stored(&handler).await;
    assert_eq!(now.lost_ranges, vec![lost(2000, 2020)]);
    assert!(!now.data_loss_accepted, "the acceptance is used up");
    assert_eq!((now.base_offset, now.end_offset), (100, 4000));
    // Used up: a second recording needs a new acceptance.
    let refused = handler
        .do_close_segment(close_again(OWNER_EPOCH, vec![lost(3000, 3010)]))
        .await
        .expect_err("no acceptance left");
    assert!(matches!(refused, NameServerError::InvalidArgument(_)));
    // A plain close at the same end still changes nothing.
    let same = handler
        .do_close_segment(close_again(OWNER_EPOCH, Vec::new()))
        .await
        .expect("a repeated close");
    assert_eq!(same.lost_ranges, vec![lost(2000, 2020)]);
}

#[tokio::test]
async fn without_an_acceptance_no_loss_is_recorded_on_a_closed_segment() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (handler, _stop) = handler_with_closed_segment(directory.path(), false).await;
    let refused = handler
        .do_close_segment(close_again(OWNER_EPOCH, vec![lost(2000, 2020)]))
        .await
        .expect_err("nobody accepted");
    assert!(matches!(refused, NameServerError::InvalidArgument(_)));
    assert!(stored(&handler).await.lost_ranges.is_empty());
}

#[tokio::test]
async fn an_acceptance_whose_damage_went_away_is_used_up_recording_nothing() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (handler, _stop) = handler_with_closed_segment(directory.path(), true).await;
    let refused = handler
        .do_close_segment(close_again(OWNER_EPOCH - 1, Vec::new()))
        .await
        .expect_err("a stale owner is refused");
    assert!(matches!(refused, NameServerError::Fenced { .. }));
    assert!(stored(&handler).await.data_loss_accepted);
    handler
        .do_close_segment(close_again(OWNER_EPOCH, Vec::new()))
        .await
        .expect("the owner uses it up");
    let now = stored(&handler).await;
    assert!(!now.data_loss_accepted);
    assert!(now.lost_ranges.is_empty());
}
