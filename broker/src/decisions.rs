//! Pure decisions of the data path: where a fetch offset falls, which
//! segments retention deletes, how much of a store read may be returned,
//! and the quorum arithmetic of replicated segments (ADR 0008).

use bytes::Bytes;
use sluice_proto::batch::BatchIter;
use sluice_proto::v1::{SegmentInfo, SegmentState};

/// What a fetch at `offset` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchDecision {
    /// Before the log start or beyond the high watermark.
    OutOfRange,
    /// At the high watermark: nothing yet (long-poll).
    NothingYet,
    /// Data is available from `offset`.
    Read,
}

pub fn fetch_decision(offset: u64, log_start_offset: u64, high_watermark: u64) -> FetchDecision {
    if offset < log_start_offset || offset > high_watermark {
        FetchDecision::OutOfRange
    } else if offset == high_watermark {
        FetchDecision::NothingYet
    } else {
        FetchDecision::Read
    }
}

/// The prefix of concatenated batches holding only whole batches that end
/// at or before a high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholePrefix {
    pub length: usize,
    /// End offset of its last batch (None when empty): where a reader
    /// continues.
    pub end_offset: Option<u64>,
}

/// The prefix of concatenated `batches` holding only whole batches that
/// end at or before `high_watermark`.
pub fn prefix_within_high_watermark(batches: &[u8], high_watermark: u64) -> WholePrefix {
    let mut prefix = WholePrefix {
        length: 0,
        end_offset: None,
    };
    for item in BatchIter::new(batches) {
        match item {
            Ok((position, header, batch)) if header.end_offset() <= high_watermark => {
                prefix.length = position + batch.len();
                prefix.end_offset = Some(header.end_offset());
            }
            _ => break,
        }
    }
    prefix
}

/// The whole batches at the start of `batches` that fit in `limit` bytes;
/// with `at_least_one`, the first batch even when it alone is larger (the
/// first data of a fetch always goes out whole).
pub fn whole_batches_within(batches: Bytes, limit: usize, at_least_one: bool) -> Bytes {
    if batches.len() <= limit {
        return batches;
    }
    let mut length = 0;
    for (position, _, batch) in BatchIter::new(&batches).map_while(Result::ok) {
        let first = length == 0 && at_least_one;
        if !first && position + batch.len() > limit {
            break;
        }
        length = position + batch.len();
    }
    batches.slice(..length)
}

/// The segment holding `offset`: the last one starting at or before it
/// that is open or ends after it.
pub fn segment_for_offset(segments: &[SegmentInfo], offset: u64) -> Option<&SegmentInfo> {
    segments.iter().rev().find(|segment| {
        segment.base_offset <= offset
            && (segment.state() == SegmentState::Open || segment.end_offset > offset)
    })
}

/// `retention_ms` meaning "keep forever": `u64::MAX` as documented, and
/// any value above `i64::MAX`, which no age of an `i64` clock can exceed.
pub const RETENTION_FOREVER_FROM_MS: u64 = i64::MAX as u64 + 1;

/// Whether a closed segment whose newest record is `max_timestamp_ms` is
/// older than `retention_ms` at `now_ms`. 0 means no age limit, and so
/// does anything from [`RETENTION_FOREVER_FROM_MS`] (`u64::MAX` = keep
/// forever); a segment stamped in the future (clock skew) is not old.
/// Exact over the whole `i64` / `u64` ranges: no wrapping.
pub fn expired_by_age(now_ms: i64, max_timestamp_ms: i64, retention_ms: u64) -> bool {
    if retention_ms == 0 || retention_ms >= RETENTION_FOREVER_FROM_MS {
        return false;
    }
    let age_ms = i128::from(now_ms) - i128::from(max_timestamp_ms);
    age_ms > i128::from(retention_ms)
}

/// Segments retention deletes, oldest first: a prefix of the closed
/// segments (sorted by base offset) that are older than `retention_ms` (by
/// max timestamp; see [`expired_by_age`]) or needed to bring the partition
/// within `retention_bytes` (0 = no size limit). Never the last segment
/// nor an open one.
pub fn select_for_deletion(
    segments: &[SegmentInfo],
    now_ms: i64,
    retention_ms: u64,
    retention_bytes: u64,
) -> Vec<u64> {
    // u128: a sum of u64 sizes (from metadata) cannot overflow it.
    let mut total_bytes: u128 = segments
        .iter()
        .map(|segment| u128::from(segment.size_bytes))
        .sum();
    let mut selected = Vec::new();
    let deletable = segments.len().saturating_sub(1);
    for segment in &segments[..deletable] {
        if segment.state() != SegmentState::Closed {
            break;
        }
        let expired = expired_by_age(now_ms, segment.max_timestamp_ms, retention_ms);
        let oversized = retention_bytes > 0 && total_bytes > u128::from(retention_bytes);
        if !(expired || oversized) {
            break;
        }
        total_bytes -= u128::from(segment.size_bytes);
        selected.push(segment.segment_id);
    }
    selected
}

/// The prefix of `doomed` (segment ids, oldest first) whose segments every
/// subscription has finished with: they end at or below `floor`, the
/// slowest subscription's mark-delete offset (None: unknown yet, nothing
/// may go).
pub fn keep_for_subscriptions(
    segments: &[SegmentInfo],
    doomed: Vec<u64>,
    floor: Option<u64>,
) -> Vec<u64> {
    let Some(floor) = floor else {
        return Vec::new();
    };
    doomed
        .into_iter()
        .take_while(|id| {
            segments
                .iter()
                .find(|segment| segment.segment_id == *id)
                .is_some_and(|segment| segment.end_offset <= floor)
        })
        .collect()
}

/// Ack quorum of a segment with `replicas` copies under a topic asking for
/// `configured` (0 = unset means 1): never more than the copies there are.
pub fn effective_ack_quorum(configured: u32, replicas: usize) -> usize {
    (configured as usize).clamp(1, replicas.max(1))
}

/// How many of a segment's replicas a new owner must fence before it may
/// trust what they hold: enough that every set of `ack_quorum` replicas
/// includes a fenced one. Then (a) the previous writer can get no further
/// append acknowledged, since an acknowledgement needs `ack_quorum`
/// unfenced replicas, and (b) every acknowledged append, being on
/// `ack_quorum` replicas, is on at least one fenced replica.
pub fn fence_quorum(replicas: usize, ack_quorum: usize) -> usize {
    let ack_quorum = ack_quorum.clamp(1, replicas.max(1));
    let fence = replicas.saturating_sub(ack_quorum) + 1;
    // Within the ensemble, and every ack quorum meets every fence quorum.
    assert!(
        replicas == 0 || (fence <= replicas && fence + ack_quorum > replicas),
        "fence quorum {fence} of {replicas} replicas misses ack quorum {ack_quorum}"
    );
    fence
}

/// Whether closing an open segment at `recovered_end` would take the
/// partition below the high watermark this broker already acknowledged
/// up to (known once `loaded`): with every acknowledged append on an ack
/// quorum and a fence quorum answering, only damaged or lost copies can
/// recover less, and closing there would hand acknowledged offsets to new
/// data. [`recover_segment`] never recovers less than the highest end a
/// fenced copy reports, so this fires only when copies were lost.
pub fn closing_would_rewind(loaded: bool, high_watermark: u64, recovered_end: u64) -> bool {
    loaded && recovered_end < high_watermark
}

pub use crate::recovery_plan::{recover_segment, FencedCopy, OffsetRange, SegmentRecovery};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_proto::batch::{assign, BatchBuilder, Compression, RecordData};

    fn segment(id: u64, base: u64, end: u64, size: u64, max_ts: i64, open: bool) -> SegmentInfo {
        SegmentInfo {
            segment_id: id,
            base_offset: base,
            end_offset: end,
            size_bytes: size,
            max_timestamp_ms: max_ts,
            state: if open {
                SegmentState::Open
            } else {
                SegmentState::Closed
            } as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_recovered_end_below_the_acknowledged_high_watermark_is_a_rewind() {
        // Before the first takeover nothing was acknowledged here.
        assert!(!closing_would_rewind(false, 100, 0));
        assert!(!closing_would_rewind(true, 100, 100));
        assert!(
            !closing_would_rewind(true, 100, 150),
            "more than acknowledged is fine"
        );
        assert!(closing_would_rewind(true, 100, 99));
        assert!(closing_would_rewind(true, u64::MAX, 0));
    }

    #[test]
    fn fetch_offsets_relative_to_log_bounds() {
        assert_eq!(fetch_decision(4, 5, 10), FetchDecision::OutOfRange);
        assert_eq!(fetch_decision(11, 5, 10), FetchDecision::OutOfRange);
        assert_eq!(fetch_decision(10, 5, 10), FetchDecision::NothingYet);
        assert_eq!(fetch_decision(5, 5, 10), FetchDecision::Read);
        assert_eq!(fetch_decision(0, 0, 0), FetchDecision::NothingYet);
    }

    #[test]
    fn retention_keeps_what_a_subscription_still_needs() {
        let segment = |id: u64, base: u64, end: u64| SegmentInfo {
            segment_id: id,
            base_offset: base,
            end_offset: end,
            ..SegmentInfo::default()
        };
        let segments = vec![
            segment(1, 0, 100),
            segment(2, 100, 200),
            segment(3, 200, 300),
        ];
        assert_eq!(
            keep_for_subscriptions(&segments, vec![1, 2], Some(150)),
            vec![1]
        );
        assert_eq!(
            keep_for_subscriptions(&segments, vec![1, 2], Some(u64::MAX)),
            vec![1, 2]
        );
        assert!(keep_for_subscriptions(&segments, vec![1, 2], None).is_empty());
        assert!(keep_for_subscriptions(&segments, vec![1], Some(99)).is_empty());
    }

    #[test]
    fn retention_by_age_deletes_old_prefix_only() {
        let segments = vec![
            segment(1, 0, 10, 100, 1_000, false),
            segment(2, 10, 20, 100, 9_000, false),
            segment(3, 20, 30, 100, 1_000, false),
            segment(4, 30, 30, 0, 0, true),
        ];
        // Segment 3 is old but follows a young one: the log stays contiguous.
        assert_eq!(select_for_deletion(&segments, 10_000, 5_000, 0), vec![1]);
        assert!(select_for_deletion(&segments, 10_000, 0, 0).is_empty());
    }

    /// Extremes of `retention_ms` (0 = no age limit, u64::MAX and anything
    /// beyond i64::MAX = keep forever), of the clock and of segment
    /// timestamps: nothing may wrap into "expired".
    #[test]
    fn retention_by_age_at_the_extremes() {
        let old = |max_timestamp_ms: i64| {
            vec![
                segment(1, 0, 10, 100, max_timestamp_ms, false),
                segment(2, 10, 10, 0, 0, true),
            ]
        };
        let now = 1_700_000_000_000;
        // (now, segment max timestamp, retention_ms, deleted)
        let cases: [(i64, i64, u64, bool); 14] = [
            (now, 0, 0, false),
            (now, 0, 1, true),
            (now, now, 1, false),
            (now, now - 2, 1, true),
            (now, now - 1, 1, false),
            (now, 0, u64::MAX, false),
            (now, i64::MIN, u64::MAX, false),
            (now, 0, i64::MAX as u64, false),
            (now, 0, i64::MAX as u64 + 1, false),
            (i64::MAX, i64::MIN, u64::MAX, false),
            (i64::MAX, i64::MIN, i64::MAX as u64, true),
            (i64::MIN, i64::MAX, 1, false),
            (now, i64::MAX, 1, false),
            (now, i64::MIN, 1, true),
        ];
        for (now_ms, max_timestamp_ms, retention_ms, deleted) in cases {
            let selected = select_for_deletion(&old(max_timestamp_ms), now_ms, retention_ms, 0);
            assert_eq!(
                !selected.is_empty(),
                deleted,
                "now {now_ms}, segment max timestamp {max_timestamp_ms}, retention_ms {retention_ms}"
            );
        }
    }

    #[test]
    fn retention_by_size_at_the_extremes() {
        let segments = vec![
            segment(1, 0, 10, u64::MAX, 0, false),
            segment(2, 10, 20, u64::MAX, 0, false),
            segment(3, 20, 20, 0, 0, true),
        ];
        // Sizes whose sum overflows u64: counted exactly, no panic.
        assert_eq!(
            select_for_deletion(&segments, 0, 0, u64::MAX - 1),
            vec![1, 2]
        );
        assert_eq!(select_for_deletion(&segments, 0, 0, u64::MAX), vec![1]);
        assert_eq!(select_for_deletion(&segments, 0, 0, 1), vec![1, 2]);
    }

    #[test]
    fn retention_by_size_never_deletes_the_open_or_last_segment() {
        let segments = vec![
            segment(1, 0, 10, 100, 0, false),
            segment(2, 10, 20, 100, 0, false),
            segment(3, 20, 25, 50, 0, true),
        ];
        assert_eq!(select_for_deletion(&segments, 0, 0, 120), vec![1, 2]);
        assert_eq!(select_for_deletion(&segments, 0, 0, 150), vec![1]);
        assert_eq!(
            select_for_deletion(&segments, 0, 0, 1000),
            Vec::<u64>::new()
        );
        let only_closed = vec![segment(1, 0, 10, 100, 0, false)];
        assert!(select_for_deletion(&only_closed, 0, 0, 1).is_empty());
    }

    #[test]
    fn finds_segment_holding_offset() {
        let segments = vec![
            segment(1, 0, 10, 1, 0, false),
            segment(2, 10, 10, 0, 0, false),
            segment(3, 10, 0, 0, 0, true),
        ];
        assert_eq!(
            segment_for_offset(&segments, 3).map(|s| s.segment_id),
            Some(1)
        );
        assert_eq!(
            segment_for_offset(&segments, 10).map(|s| s.segment_id),
            Some(3)
        );
        assert_eq!(segment_for_offset(&segments[..2], 10), None);
    }

    #[test]
    fn trims_batches_beyond_high_watermark() {
        let mut bytes = Vec::new();
        for base in [0u64, 2] {
            let mut builder = BatchBuilder::new(Compression::None);
            for _ in 0..2 {
                builder.push(&RecordData {
                    value: Some(Bytes::from_static(b"v")),
                    ..Default::default()
                });
            }
            let mut batch = builder.build().to_vec();
            assign(&mut batch, base, 1);
            bytes.extend_from_slice(&batch);
        }
        let first_length = bytes.len() / 2;
        assert_eq!(prefix_within_high_watermark(&bytes, 4).length, bytes.len());
        assert_eq!(prefix_within_high_watermark(&bytes, 3).length, first_length);
        assert_eq!(prefix_within_high_watermark(&bytes, 1).length, 0);
    }

    #[test]
    fn fence_quorum_intersects_every_ack_quorum() {
        for replicas in 1..=7usize {
            for ack_quorum in 1..=replicas {
                let fence = fence_quorum(replicas, ack_quorum);
                assert!(fence <= replicas);
                // Any ack quorum and any fence quorum share a replica.
                assert!(fence + ack_quorum > replicas, "{replicas}/{ack_quorum}");
                // And the fence quorum is the smallest such set.
                assert!(fence - 1 + ack_quorum <= replicas);
            }
        }
        assert_eq!(fence_quorum(3, 2), 2);
        assert_eq!(fence_quorum(3, 3), 1);
        assert_eq!(fence_quorum(3, 1), 3);
        assert_eq!(fence_quorum(1, 1), 1);
        // A quorum asked above the copies there are is clamped.
        assert_eq!(fence_quorum(2, 3), 1);
        assert_eq!(effective_ack_quorum(2, 1), 1);
        assert_eq!(effective_ack_quorum(0, 3), 1);
        assert_eq!(effective_ack_quorum(2, 3), 2);
    }
}
