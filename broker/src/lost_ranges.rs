//! Ranges of a partition's log accepted as lost (`SegmentInfo.lost_ranges`,
//! written by the takeover after `sluice partition recover
//! --accept-data-loss`): which one covers an offset, where a read starting
//! before one must stop, and a per-partition tally of what the broker's own
//! readers stepped over (each range warned about once per reader).
//!
//! Pure except for the tally's lock; no IO.

use sluice_proto::v1::SegmentInfo;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// `[start, end)` of a partition's log that no copy holds and that is
/// never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LostRange {
    pub start: u64,
    pub end: u64,
}

impl LostRange {
    /// How many offsets it takes.
    pub fn offsets(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

impl std::fmt::Display for LostRange {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}..{}", self.start, self.end)
    }
}

fn ranges(segments: &[SegmentInfo]) -> impl Iterator<Item = LostRange> + '_ {
    segments
        .iter()
        .flat_map(|segment| segment.lost_ranges.iter())
        .filter(|range| range.start_offset < range.end_offset)
        .map(|range| LostRange {
            start: range.start_offset,
            end: range.end_offset,
        })
}

/// The lost range covering `offset` (start inclusive, end exclusive), if
/// any, in any of `segments`. Adjacent ranges are joined, so the answer's
/// end is where readable data resumes.
pub fn lost_range_at(segments: &[SegmentInfo], offset: u64) -> Option<LostRange> {
    let mut found = ranges(segments).find(|range| range.start <= offset && offset < range.end)?;
    // Ranges touching end to start (several damaged stretches, or a range
    // per segment) are one gap for a reader.
    while let Some(next) = ranges(segments)
        .filter(|range| range.start <= found.end && found.end < range.end)
        .max_by_key(|range| range.end)
    {
        found.end = next.end;
    }
    Some(found)
}

/// Where a read from `offset` (not itself lost) must stop: `end`, or the
/// start of the first lost range beyond `offset` if that comes sooner.
pub fn read_end_before_lost(segments: &[SegmentInfo], offset: u64, end: u64) -> u64 {
    ranges(segments)
        .map(|range| range.start)
        .filter(|start| *start > offset)
        .fold(end, u64::min)
}

/// What the broker's own readers (subscription scans, offsets replay,
/// backlog measurement) stepped over: offsets skipped per reader, and the
/// ranges each already warned about.
#[derive(Debug, Default)]
pub struct LostSkips {
    inner: Mutex<SkipTally>,
}

#[derive(Debug, Default)]
struct SkipTally {
    skipped_offsets: BTreeMap<&'static str, u64>,
    warned: HashSet<(&'static str, LostRange)>,
}

impl LostSkips {
    /// Counts `range` as skipped by `reader`; true the first time this
    /// reader skips this range (the caller warns then, not on every pass).
    pub fn skipped(&self, reader: &'static str, range: LostRange) -> bool {
        let mut tally = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = tally.warned.insert((reader, range));
        if first {
            *tally.skipped_offsets.entry(reader).or_default() += range.offsets();
        }
        first
    }

    /// Offsets `reader` stepped over (each range counted once).
    pub fn skipped_offsets(&self, reader: &'static str) -> u64 {
        let tally = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tally.skipped_offsets.get(reader).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::DamagedRange;

    fn segment(base: u64, end: u64, lost: &[(u64, u64)]) -> SegmentInfo {
        SegmentInfo {
            base_offset: base,
            end_offset: end,
            lost_ranges: lost
                .iter()
                .map(|(start, end)| DamagedRange {
                    start_offset: *start,
                    end_offset: *end,
                    detail: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn range(start: u64, end: u64) -> Option<LostRange> {
        Some(LostRange { start, end })
    }

    #[test]
    fn start_is_inside_and_end_is_outside() {
        let segments = [segment(0, 100, &[(40, 60)])];
        assert_eq!(lost_range_at(&segments, 39), None);
        assert_eq!(lost_range_at(&segments, 40), range(40, 60));
        assert_eq!(lost_range_at(&segments, 50), range(40, 60));
        assert_eq!(lost_range_at(&segments, 59), range(40, 60));
        assert_eq!(lost_range_at(&segments, 60), None);
    }

    #[test]
    fn adjacent_ranges_are_one_gap() {
        let segments = [
            segment(0, 100, &[(40, 60), (60, 70)]),
            segment(100, 200, &[]),
        ];
        assert_eq!(lost_range_at(&segments, 45), range(40, 70));
        assert_eq!(lost_range_at(&segments, 65), range(60, 70));
        assert_eq!(lost_range_at(&segments, 70), None);
    }

    #[test]
    fn ranges_of_several_segments() {
        let segments = [
            segment(0, 100, &[(10, 20)]),
            segment(100, 200, &[(150, 200)]),
            segment(200, 300, &[(200, 210)]),
        ];
        assert_eq!(lost_range_at(&segments, 15), range(10, 20));
        assert_eq!(lost_range_at(&segments, 120), None);
        // A gap running across a segment boundary resumes after both.
        assert_eq!(lost_range_at(&segments, 199), range(150, 210));
        assert_eq!(lost_range_at(&segments, 205), range(200, 210));
        assert_eq!(lost_range_at(&segments, 210), None);
    }

    #[test]
    fn nothing_lost_without_ranges() {
        assert_eq!(lost_range_at(&[], 0), None);
        let segments = [segment(0, 100, &[]), segment(100, 200, &[(150, 150)])];
        assert_eq!(lost_range_at(&segments, 150), None, "an empty range");
        assert_eq!(read_end_before_lost(&segments, 0, 200), 200);
    }

    #[test]
    fn reads_stop_at_the_next_lost_start() {
        let segments = [
            segment(0, 100, &[(40, 60)]),
            segment(100, 200, &[(150, 160)]),
        ];
        assert_eq!(read_end_before_lost(&segments, 0, 100), 40);
        assert_eq!(read_end_before_lost(&segments, 39, 100), 40);
        assert_eq!(read_end_before_lost(&segments, 60, 100), 100);
        assert_eq!(read_end_before_lost(&segments, 60, 200), 150);
        assert_eq!(read_end_before_lost(&segments, 0, 30), 30);
    }

    #[test]
    fn each_reader_counts_a_range_once() {
        let skips = LostSkips::default();
        let lost = LostRange { start: 40, end: 60 };
        assert!(skips.skipped("scan", lost));
        assert!(!skips.skipped("scan", lost), "warned once");
        assert!(skips.skipped("replay", lost));
        assert_eq!(skips.skipped_offsets("scan"), 20);
        assert_eq!(skips.skipped_offsets("replay"), 20);
        assert_eq!(skips.skipped_offsets("backlog"), 0);
    }
}
