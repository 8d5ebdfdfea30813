//! Reads of a partition for fetch, subscriptions and lookups: from the
//! tail cache when it covers the offset, else from a store of the segment
//! holding it, never beyond the high watermark; the store read of a
//! sequential reader's next range started ahead (see [`crate::read_ahead`]);
//! offset-for-timestamp lookups.

use super::{Partition, PartitionStatus};
use crate::clients::request;
use crate::decisions::{prefix_within_high_watermark, segment_for_offset, whole_batches_within};
use crate::error::BrokerError;
use crate::lost_ranges::{lost_range_at, read_end_before_lost};
use crate::replica_io::read_segment;
use bytes::Bytes;
use sluice_proto::v1::{FindOffsetRequest, SegmentInfo, SegmentState};

impl Partition {
    /// Whole batches from `offset` (the first contains it), at most
    /// `max_bytes` unless one batch is larger, never beyond the high
    /// watermark nor into a range accepted as lost: from the tail cache if
    /// it covers `offset`, else from the store of the segment holding it.
    /// An `offset` inside a lost range is [`BrokerError::DataLost`], with
    /// no store asked.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<Bytes, BrokerError> {
        self.read_from(false, offset, max_bytes).await
    }

    /// [`Partition::read`] for fetches: once this partition's reads from
    /// the stores are sequential, the store read of the range after the
    /// answer is started before returning it (see [`crate::read_ahead`]).
    pub async fn read_for_fetch(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Bytes, BrokerError> {
        self.read_from(true, offset, max_bytes).await
    }

    /// [`Partition::read`], reading ahead when `read_ahead` is set.
    async fn read_from(
        &self,
        read_ahead: bool,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Bytes, BrokerError> {
        let high_watermark = self.status().high_watermark;
        if offset >= high_watermark {
            return Ok(Bytes::new());
        }
        // Never a byte of an accepted loss: an offset inside one answers
        // DATA_LOST, a read from before one stops at its start.
        let limit = self.read_limit(offset, high_watermark)?;
        if let Some(cached) = self.io.tail_cache.read(&self.key, offset, max_bytes) {
            if limit == high_watermark {
                return Ok(cached);
            }
            let prefix = prefix_within_high_watermark(&cached, limit);
            if prefix.length > 0 {
                return Ok(cached.slice(..prefix.length));
            }
        }
        let segments = self.segments();
        let Some((segment, end_offset)) = readable_segment(&segments, offset, limit) else {
            return Ok(Bytes::new());
        };
        let (pending, sequential) = if read_ahead {
            self.read_ahead.take(offset, segment.segment_id)
        } else {
            (None, false)
        };
        let ahead = match pending {
            // A failed or empty read-ahead is retried directly, with the
            // replica order and error handling of a direct read.
            Some(pending) => pending.wait().await.ok().filter(|bytes| !bytes.is_empty()),
            None => None,
        };
        let batches = match ahead {
            Some(batches) => whole_batches_within(batches, max_bytes, true),
            None => {
                read_segment(
                    &self.io.clients,
                    &self.key,
                    segment,
                    offset,
                    end_offset,
                    max_bytes,
                )
                .await?
            }
        };
        let prefix = prefix_within_high_watermark(&batches, limit);
        if let (true, Some(next_offset)) = (read_ahead, prefix.end_offset) {
            self.read_ahead.read_ended(next_offset);
            if sequential {
                self.start_read_ahead(&segments, next_offset, high_watermark, max_bytes);
            }
        }
        Ok(batches.slice(..prefix.length))
    }

    /// Starts the store read of `offset` for the next fetch, if there is
    /// durable data there and budget for `max_bytes` more.
    fn start_read_ahead(
        &self,
        segments: &[SegmentInfo],
        offset: u64,
        high_watermark: u64,
        max_bytes: usize,
    ) {
        if lost_range_at(segments, offset).is_some() {
            return;
        }
        let limit = read_end_before_lost(segments, offset, high_watermark);
        let Some((segment, end_offset)) = readable_segment(segments, offset, limit) else {
            return;
        };
        let Ok(permits) = u32::try_from(max_bytes) else {
            return;
        };
        let Ok(budget) = self
            .io
            .read_ahead_budget
            .clone()
            .try_acquire_many_owned(permits)
        else {
            return;
        };
        let segment = segment.clone();
        let segment_id = segment.segment_id;
        let clients = self.io.clients.clone();
        let key = self.key.clone();
        let task = tokio::spawn(async move {
            read_segment(&clients, &key, &segment, offset, end_offset, max_bytes).await
        });
        self.read_ahead.keep(offset, segment_id, task, budget);
    }
}

/// The segment holding `offset` and where reading it must stop: its end,
/// or the high watermark while it is open. None when nothing durable is
/// there.
fn readable_segment(
    segments: &[SegmentInfo],
    offset: u64,
    high_watermark: u64,
) -> Option<(&SegmentInfo, u64)> {
    let segment = segment_for_offset(segments, offset)?;
    let end_offset = if segment.state() == SegmentState::Open {
        high_watermark
    } else {
        segment.end_offset.min(high_watermark)
    };
    (offset < end_offset).then_some((segment, end_offset))
}

impl Partition {
    /// First offset whose record timestamp is at least `timestamp_ms`, as
    /// of `status`: the first segment whose max timestamp reaches it
    /// (closed ones from metadata, the open one by asking its store), then
    /// that store's time index; the high watermark when none. Used by
    /// ListOffsets and by the backlog quota's age eviction.
    pub async fn offset_for_timestamp(
        &self,
        status: &PartitionStatus,
        timestamp_ms: i64,
    ) -> Result<u64, BrokerError> {
        for segment in self.segments() {
            let open = segment.state() == SegmentState::Open;
            if !open
                && (segment.max_timestamp_ms < timestamp_ms
                    || segment.end_offset <= segment.base_offset)
            {
                continue;
            }
            let Some(replica) = segment.replicas.first() else {
                continue;
            };
            let mut store = self.io.clients.store(&replica.address)?;
            let found = store
                .find_offset(request(
                    FindOffsetRequest {
                        segment_id: segment.segment_id,
                        timestamp_ms,
                    },
                    self.io.clients.store_timeout,
                ))
                .await
                .map_err(|status| BrokerError::remote("store FindOffset", &status))?
                .into_inner()
                .offset;
            if let Some(offset) = found {
                if offset < status.high_watermark {
                    return Ok(offset.max(status.log_start_offset));
                }
            }
        }
        Ok(status.high_watermark)
    }
}
