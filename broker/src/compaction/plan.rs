//! Which segments a compaction pass may touch, and whether one is due
//! (ADR 0016 §8, step 1). Pure.
//!
//! A pass rewrites whole closed segments from the log start up to
//! `first_uncleanable = min(LSO, the open segment's base, the first
//! segment newer than min_compaction_lag_ms, the producer-state rebuild
//! window's start)`, stopping before any segment with lost or damaged
//! ranges (its bytes are not all known) and at any hole in the segment
//! list. The *dirty* part follows the last cleanable segment already
//! compacted once (`first_compacted_at_ms > 0`); a pass is due when the
//! dirty bytes are at least `min_cleanable_dirty_ratio_percent` of the
//! cleanable bytes.

/// What the plan needs of one segment (from its `SegmentInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentView {
    pub segment_id: u64,
    pub base_offset: u64,
    pub end_offset: u64,
    pub size_bytes: u64,
    pub max_timestamp_ms: i64,
    pub closed: bool,
    /// Lost ranges, or data loss accepted and not yet settled.
    pub damaged: bool,
    /// When a pass first rewrote it (unix ms); 0 if never.
    pub first_compacted_at_ms: u64,
}

/// The partition's state and the topic's settings a plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Last stable offset (the HW when no transaction is open).
    pub last_stable_offset: u64,
    /// Start of the window the producer-state rebuild reads at a takeover
    /// (compaction must not remove what it needs).
    pub rebuild_window_start: u64,
    pub now_ms: i64,
    pub min_compaction_lag_ms: u64,
    /// 1 ..= 100; 0 reads as the default 50 (topics stored before the
    /// setting existed).
    pub dirty_ratio_percent: u32,
}

/// The segments a due pass covers: `segments[..cleanable]` may be
/// rewritten, of which `segments[dirty_from..cleanable]` were never
/// compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub cleanable: usize,
    pub dirty_from: usize,
    pub first_uncleanable: u64,
    pub cleanable_bytes: u64,
    pub dirty_bytes: u64,
}

/// Why no pass is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDue {
    /// No closed segment lies wholly below `first_uncleanable`.
    NothingCleanable,
    /// Every cleanable segment was compacted and nothing new arrived.
    NothingDirty,
    /// The dirty share is below the ratio.
    BelowRatio {
        dirty_bytes: u64,
        cleanable_bytes: u64,
    },
}

const DEFAULT_DIRTY_RATIO_PERCENT: u32 = 50;

/// `min(LSO, open segment's base, first too-young segment's base, rebuild
/// window start)`. `segments` are in offset order.
pub fn first_uncleanable(segments: &[SegmentView], bounds: &Bounds) -> u64 {
    let youngest_allowed_ms = i128::from(bounds.now_ms) - i128::from(bounds.min_compaction_lag_ms);
    let mut limit = bounds.last_stable_offset.min(bounds.rebuild_window_start);
    for segment in segments {
        let too_young = i128::from(segment.max_timestamp_ms) > youngest_allowed_ms;
        if !segment.closed || too_young {
            limit = limit.min(segment.base_offset);
            break;
        }
    }
    limit
}

/// The pass due now over `segments` (in offset order), or why none is.
pub fn plan(segments: &[SegmentView], bounds: &Bounds) -> Result<Plan, NotDue> {
    let limit = first_uncleanable(segments, bounds);
    let mut cleanable = 0;
    let mut expected_base = segments.first().map(|segment| segment.base_offset);
    for segment in segments {
        let contiguous = Some(segment.base_offset) == expected_base;
        let usable = segment.closed
            && !segment.damaged
            && segment.end_offset >= segment.base_offset
            && segment.end_offset <= limit;
        if !contiguous || !usable {
            break;
        }
        expected_base = Some(segment.end_offset);
        cleanable += 1;
    }
    if cleanable == 0 {
        return Err(NotDue::NothingCleanable);
    }
    let dirty_from = segments[..cleanable]
        .iter()
        .rposition(|segment| segment.first_compacted_at_ms > 0)
        .map_or(0, |last| last + 1);
    let bytes = |range: &[SegmentView]| {
        range.iter().fold(0u64, |total, segment| {
            total.saturating_add(segment.size_bytes)
        })
    };
    let cleanable_bytes = bytes(&segments[..cleanable]);
    let dirty_bytes = bytes(&segments[dirty_from..cleanable]);
    if dirty_from == cleanable {
        return Err(NotDue::NothingDirty);
    }
    let ratio = match bounds.dirty_ratio_percent {
        0 => DEFAULT_DIRTY_RATIO_PERCENT,
        ratio => ratio.min(100),
    };
    if u128::from(dirty_bytes) * 100 < u128::from(ratio) * u128::from(cleanable_bytes) {
        return Err(NotDue::BelowRatio {
            dirty_bytes,
            cleanable_bytes,
        });
    }
    Ok(Plan {
        cleanable,
        dirty_from,
        first_uncleanable: limit,
        cleanable_bytes,
        dirty_bytes,
    })
}

#[cfg(test)]
mod tests;
