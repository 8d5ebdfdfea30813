use super::*;

const NOW: i64 = 1_000_000;

/// Closed, undamaged, never compacted segments of `sizes` bytes, 10
/// offsets each from 0, their newest record an hour old.
fn segments(sizes: &[u64]) -> Vec<SegmentView> {
    sizes
        .iter()
        .enumerate()
        .map(|(index, &size_bytes)| SegmentView {
            segment_id: index as u64 + 1,
            base_offset: index as u64 * 10,
            end_offset: index as u64 * 10 + 10,
            size_bytes,
            max_timestamp_ms: NOW - 3_600_000,
            closed: true,
            damaged: false,
            first_compacted_at_ms: 0,
        })
        .collect()
}

fn bounds() -> Bounds {
    Bounds {
        last_stable_offset: u64::MAX,
        rebuild_window_start: u64::MAX,
        now_ms: NOW,
        min_compaction_lag_ms: 0,
        dirty_ratio_percent: 50,
    }
}

#[test]
fn every_bound_limits_the_cleanable_range() {
    let mut log = segments(&[100, 100, 100, 100]);
    log[3].closed = false;
    assert_eq!(plan(&log, &bounds()).map(|plan| plan.cleanable), Ok(3));
    // The LSO inside segment 2 (offsets 20..30) keeps it out.
    let lso = Bounds {
        last_stable_offset: 25,
        ..bounds()
    };
    assert_eq!(plan(&log, &lso).map(|plan| plan.cleanable), Ok(2));
    // Exactly at a segment's end: that segment is cleanable.
    let at_end = Bounds {
        last_stable_offset: 20,
        ..bounds()
    };
    assert_eq!(plan(&log, &at_end).map(|plan| plan.cleanable), Ok(2));
    let window = Bounds {
        rebuild_window_start: 9,
        ..bounds()
    };
    assert_eq!(plan(&log, &window), Err(NotDue::NothingCleanable));
    // Segment 1 is younger than the lag: it and all after stay.
    log[1].max_timestamp_ms = NOW - 10;
    let lag = Bounds {
        min_compaction_lag_ms: 60_000,
        ..bounds()
    };
    assert_eq!(plan(&log, &lag).map(|plan| plan.cleanable), Ok(1));
    assert_eq!(first_uncleanable(&log, &lag), 10);
    // A lag of u64::MAX never compacts; a clock before 1970 neither
    // overflows.
    let never = Bounds {
        min_compaction_lag_ms: u64::MAX,
        now_ms: i64::MIN,
        ..bounds()
    };
    assert_eq!(plan(&log, &never), Err(NotDue::NothingCleanable));
}

#[test]
fn damage_and_holes_stop_the_range() {
    let mut log = segments(&[100, 100, 100]);
    log[1].damaged = true;
    assert_eq!(plan(&log, &bounds()).map(|plan| plan.cleanable), Ok(1));
    let mut log = segments(&[100, 100, 100]);
    log[2].base_offset = 21; // a hole at 20
    assert_eq!(plan(&log, &bounds()).map(|plan| plan.cleanable), Ok(2));
    let mut log = segments(&[100]);
    log[0].end_offset = 5;
    log[0].base_offset = 6; // corrupt metadata: end before base
    assert_eq!(plan(&log, &bounds()), Err(NotDue::NothingCleanable));
    assert_eq!(plan(&[], &bounds()), Err(NotDue::NothingCleanable));
}

#[test]
fn the_dirty_ratio_decides_whether_a_pass_is_due() {
    let mut log = segments(&[300, 100, 100, 100]);
    log[0].first_compacted_at_ms = 5;
    // Dirty 300 of 600 bytes: exactly 50 %.
    let due = plan(&log, &bounds()).expect("due at exactly the ratio");
    assert_eq!(
        (
            due.dirty_from,
            due.cleanable,
            due.dirty_bytes,
            due.cleanable_bytes
        ),
        (1, 4, 300, 600)
    );
    let strict = Bounds {
        dirty_ratio_percent: 51,
        ..bounds()
    };
    assert_eq!(
        plan(&log, &strict),
        Err(NotDue::BelowRatio {
            dirty_bytes: 300,
            cleanable_bytes: 600
        })
    );
    // 1 % and 100 %: 100 % needs every byte dirty.
    let one = Bounds {
        dirty_ratio_percent: 1,
        ..bounds()
    };
    assert!(plan(&log, &one).is_ok());
    let all = Bounds {
        dirty_ratio_percent: 100,
        ..bounds()
    };
    assert!(plan(&log, &all).is_err());
    assert!(plan(&segments(&[1, 1]), &all).is_ok());
    // 0 (a topic stored before the setting) reads as 50.
    let unset = Bounds {
        dirty_ratio_percent: 0,
        ..bounds()
    };
    assert!(plan(&log, &unset).is_ok());
    // Everything compacted: nothing dirty.
    for segment in &mut log {
        segment.first_compacted_at_ms = 5;
    }
    assert_eq!(plan(&log, &bounds()), Err(NotDue::NothingDirty));
    // Huge sizes do not overflow.
    let huge = segments(&[u64::MAX, u64::MAX]);
    assert!(plan(&huge, &bounds()).is_ok());
}

#[test]
fn the_dirty_part_follows_the_last_compacted_segment() {
    let mut log = segments(&[10, 10, 10, 10]);
    // An uncompacted segment before a compacted one (an empty segment
    // the last pass left alone) is not dirty.
    log[1].first_compacted_at_ms = 7;
    let due = plan(&log, &bounds()).expect("due");
    assert_eq!(due.dirty_from, 2);
    assert_eq!(due.dirty_bytes, 20);
}
