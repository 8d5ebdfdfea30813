//! Periodic retention over the partitions served here: deletes whole closed
//! segments by age or partition size (selection in `decisions`), in
//! metadata first (conditional on our epoch), then on the stores.

use crate::clients::{nameserver_call, request};
use crate::decisions::{keep_for_subscriptions, select_for_deletion};
use crate::partition::{Partition, Phase};
use crate::Shared;
use sluice_proto::v1::{DeleteSegmentsRequest, StoreDeleteSegmentRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most segments deleted per partition and round; the nameserver bounds
/// one metadata transaction, and the next round continues.
const MAX_SEGMENTS_PER_ROUND: usize = 100;

pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(shared.config.retention.check_interval_ms.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::wait_until_set(&mut shutdown) => return,
        }
        for partition in shared.partitions() {
            if partition.status().phase != Phase::Serving {
                continue;
            }
            apply(&shared, &partition).await;
        }
        shared.coordinator.evict_expired_members();
    }
}

async fn apply(shared: &Shared, partition: &Partition) {
    let config = partition.config();
    if config.retention_ms == 0 && config.retention_bytes == 0 {
        return;
    }
    // A COMPACT-only topic keeps every key's latest record however old or
    // large the partition is (ADR 0016 §8); compaction bounds it instead.
    if !sluice_proto::cleanup::deletes_by_retention(&config) {
        return;
    }
    let segments = partition.segments();
    let mut doomed = select_for_deletion(
        &segments,
        sluice_proto::now_unix_ms(),
        config.retention_ms,
        config.retention_bytes,
    );
    doomed.truncate(MAX_SEGMENTS_PER_ROUND);
    if !partition.is_offsets_topic() && !config.retention_ignores_subscriptions {
        // Segments a subscription has not finished with stay (ADR 0011),
        // unless the topic says retention ignores subscriptions; the
        // backlog quota's EVICT policy is what bounds them otherwise.
        let floor = shared
            .backlog
            .slowest_mark_delete(shared, &partition.key, partition.epoch)
            .await;
        doomed = keep_for_subscriptions(&segments, doomed, floor);
    }
    if doomed.is_empty() {
        return;
    }
    if partition.is_offsets_topic() {
        // No compaction: keep every group's latest commit in the live log
        // before its older copies go.
        if let Err(error) = shared.coordinator.snapshot_partition(partition).await {
            tracing::warn!(partition = %partition.key, %error, "retention: offsets snapshot failed; not deleting");
            return;
        }
    }
    let deleted = nameserver_call!(
        &shared.clients,
        delete_segments,
        DeleteSegmentsRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            epoch: partition.epoch,
            segment_ids: doomed.clone(),
        }
    );
    if let Err(error) = deleted {
        tracing::warn!(partition = %partition.key, %error, "retention: metadata delete failed");
        return;
    }
    partition.segments_deleted(&doomed);
    tracing::info!(partition = %partition.key, segments = ?doomed, "retention deleted segments");
    for segment in segments
        .iter()
        .filter(|segment| doomed.contains(&segment.segment_id))
    {
        for replica in &segment.replicas {
            let result = match shared.clients.store(&replica.address) {
                Ok(mut store) => store
                    .delete_segment(request(
                        StoreDeleteSegmentRequest {
                            segment_id: segment.segment_id,
                        },
                        shared.clients.store_timeout,
                    ))
                    .await
                    .map(|_| ())
                    .map_err(|status| status.to_string()),
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = result {
                tracing::warn!(segment = segment.segment_id, store = %replica.store_id, %error, "retention: store delete failed; the file stays until the store cleans it");
            }
        }
    }
}
