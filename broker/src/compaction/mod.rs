//! Compacted topics (ADR 0016 §8): the partition owner keeps the latest
//! committed record of every key.
//!
//! - [`plan`]: which closed segments a pass may rewrite, and whether one
//!   is due (dirty ratio, `first_uncleanable`).
//! - [`key_map`]: key hash → latest offset, bounded by `[compaction]
//!   key_map_bytes`.
//! - [`rewrite`]: which records stay; output batches and GAP batches at
//!   unchanged offsets.
//! - `pass`: one pass (IO): map, rewrite, write, swap.
//! - `writer`: writing a compacted segment to its replicas; IO pacing.
//! - `cleanup`: copies of abandoned placements and replaced segments.
//!
//! This task: every `[compaction] check_interval_ms`, over the served
//! partitions of COMPACT and COMPACT_DELETE topics (never DELETE ones),
//! one partition at a time, first the cleanup, then a pass if one is due.

pub mod key_map;
pub mod plan;
pub mod rewrite;

mod cleanup;
mod pass;
mod writer;

use crate::partition::Phase;
use crate::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(shared.config.compaction.check_interval_ms.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::wait_until_set(&mut shutdown) => return,
        }
        for partition in shared.partitions() {
            if *shutdown.borrow() {
                return;
            }
            let serving = partition.status().phase == Phase::Serving;
            if !serving || !sluice_proto::cleanup::compacts(&partition.config()) {
                continue;
            }
            match cleanup::collect(&shared, &partition).await {
                Ok(0) => {}
                Ok(forgotten) => {
                    tracing::info!(partition = %partition.key, forgotten, "compaction: deleted leftover copies")
                }
                Err(error) => {
                    tracing::warn!(partition = %partition.key, %error, "compaction: cleanup failed; retried next round")
                }
            }
            let started = std::time::Instant::now();
            let pass = tokio::select! {
                pass = pass::run_pass(&shared, &partition) => pass,
                _ = crate::wait_until_set(&mut shutdown) => return,
            };
            match pass {
                Ok(None) => {}
                Ok(Some(report)) => tracing::info!(
                    partition = %partition.key,
                    segments = report.segments_replaced,
                    bytes_before = report.bytes_before,
                    bytes_after = report.bytes_after,
                    removed_offsets = report.removed_offsets,
                    keys = report.keys_mapped,
                    key_map_capacity = report.key_map_capacity,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compaction pass done"
                ),
                Err(error) => {
                    tracing::warn!(partition = %partition.key, %error, "compaction pass failed; retried next round")
                }
            }
        }
    }
}
