//! Closed segments damaged on every copy (issue 11): the ranges of a
//! closed segment that no copy holds intact, what the owner reports about
//! them (`NodeLoad.damaged_partitions`), and the reports themselves.
//! Repair (`crate::repair`) asks the stores and records accepted losses;
//! the decision of what is unreadable is the pure [`unreadable_ranges`].
//! The partition stays online: reads of such a range answer
//! STORAGE_CORRUPT, reads elsewhere and produce keep working.

use crate::recovery_plan::{OffsetRange, Piece};
use crate::tail_cache::PartitionKey;
use sluice_proto::v1::{DamagedPartition, DamagedRange, SegmentInfo};
use std::collections::HashMap;
use std::sync::Mutex;

/// What one copy of a closed segment holds, as its store reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Offsets from the segment's base up to `end_offset`, except
    /// `damaged`.
    Copy {
        end_offset: u64,
        damaged: Vec<OffsetRange>,
    },
    /// Nothing: the copy is missing on a live store, or its store answers
    /// STORAGE_CORRUPT for the whole segment (unusable metadata).
    Nothing,
    /// Not known now (the store is not live or did not answer): it may
    /// hold anything, so no loss is ever recorded while a copy is unknown.
    Unknown,
}

impl Holding {
    fn holds(&self, offset: u64) -> bool {
        match self {
            Holding::Copy {
                end_offset,
                damaged,
            } => offset < *end_offset && !damaged.iter().any(|range| range.contains(offset)),
            Holding::Nothing | Holding::Unknown => false,
        }
    }

    fn boundaries(&self) -> Vec<u64> {
        match self {
            Holding::Copy {
                end_offset,
                damaged,
            } => std::iter::once(*end_offset)
                .chain(damaged.iter().flat_map(|range| [range.start, range.end]))
                .collect(),
            Holding::Nothing | Holding::Unknown => Vec::new(),
        }
    }
}

/// Whether every copy answered, so that the unreadable ranges are certain
/// (not merely unreadable while a store is away).
pub fn all_known(copies: &[Holding]) -> bool {
    !copies.contains(&Holding::Unknown)
}

/// The ranges of the closed segment `[base, end)` that no copy holds
/// intact (the intersection of the copies' damage, a copy holding nothing
/// counting as damaged over the whole segment), leaving out `lost`: ranges
/// already accepted as lost are not reported again. By start offset,
/// adjacent ranges merged; empty when some copy holds every offset.
pub fn unreadable_ranges(
    base: u64,
    end: u64,
    copies: &[Holding],
    lost: &[OffsetRange],
) -> Vec<OffsetRange> {
    // Between two consecutive boundaries every copy either holds every
    // offset or none, so one probe per piece decides it.
    let mut cuts: Vec<u64> = copies
        .iter()
        .flat_map(Holding::boundaries)
        .chain(lost.iter().flat_map(|range| [range.start, range.end]))
        .chain([base, end])
        .filter(|cut| (base..=end).contains(cut))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut unreadable: Vec<OffsetRange> = Vec::new();
    for piece in cuts.windows(2) {
        let (start, stop) = (piece[0], piece[1]);
        let readable = copies.iter().any(|copy| copy.holds(start));
        let accepted = lost.iter().any(|range| range.contains(start));
        if readable || accepted {
            continue;
        }
        match unreadable.last_mut() {
            Some(last) if last.end == start => last.end = stop,
            _ => unreadable.push(OffsetRange { start, end: stop }),
        }
    }
    debug_assert!(unreadable
        .iter()
        .all(|range| base <= range.start && range.start < range.end && range.end <= end));
    unreadable
}

/// With no copy holding the whole closed segment `[base, end)` intact
/// (else repair copies from that one) but every offset held by some copy:
/// a copy to rebuild and the pieces of the other copies to rebuild it
/// from, in order. The copy rebuilt is the first whose offsets the others
/// hold between them, so deleting it loses nothing; once it is whole,
/// repair fills the rest from it. None while a copy is unknown.
pub fn rebuild_plan(base: u64, end: u64, copies: &[Holding]) -> Option<(usize, Vec<Piece>)> {
    if !all_known(copies) || base >= end {
        return None;
    }
    let whole = |copy: &Holding| pieces(base, end, std::slice::from_ref(copy)).is_some();
    if copies.iter().any(whole) {
        return None;
    }
    (0..copies.len()).find_map(|target| {
        let others: Vec<Holding> = copies
            .iter()
            .enumerate()
            .map(|(index, copy)| {
                if index == target {
                    Holding::Nothing
                } else {
                    copy.clone()
                }
            })
            .collect();
        pieces(base, end, &others).map(|pieces| (target, pieces))
    })
}

/// `[base, end)` as pieces of the copies holding them (the lowest-index
/// copy holding each part), adjacent pieces of one copy merged; None when
/// some offset is held by no copy.
fn pieces(base: u64, end: u64, copies: &[Holding]) -> Option<Vec<Piece>> {
    let mut cuts: Vec<u64> = copies
        .iter()
        .flat_map(Holding::boundaries)
        .chain([base, end])
        .filter(|cut| (base..=end).contains(cut))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<Piece> = Vec::new();
    for part in cuts.windows(2) {
        let (start, stop) = (part[0], part[1]);
        let source = copies.iter().position(|copy| copy.holds(start))?;
        match pieces.last_mut() {
            Some(last) if last.source == source && last.end == start => last.end = stop,
            _ => pieces.push(Piece {
                start,
                end: stop,
                source,
            }),
        }
    }
    Some(pieces)
}

/// A segment's recorded lost ranges, as offset ranges.
pub fn lost_of(segment: &SegmentInfo) -> Vec<OffsetRange> {
    segment
        .lost_ranges
        .iter()
        .map(|range| OffsetRange {
            start: range.start_offset,
            end: range.end_offset,
        })
        .collect()
}

/// Unreadable ranges as the nameserver records them.
pub fn as_lost_ranges(ranges: &[OffsetRange]) -> Vec<DamagedRange> {
    ranges
        .iter()
        .map(|range| DamagedRange {
            start_offset: range.start,
            end_offset: range.end,
            detail: "damaged on every copy of the closed segment; an operator accepted the loss"
                .to_string(),
        })
        .collect()
}

/// The report of one closed segment with unreadable `ranges`: names the
/// segment, its stores, the ranges and the operator's command.
pub fn report(
    key: &PartitionKey,
    segment: &SegmentInfo,
    ranges: &[OffsetRange],
) -> DamagedPartition {
    let stores: Vec<&str> = segment
        .replicas
        .iter()
        .map(|replica| replica.store_id.as_str())
        .collect();
    let listed: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    DamagedPartition {
        topic: key.topic.clone(),
        partition: key.partition,
        segment_id: segment.segment_id,
        ranges: ranges
            .iter()
            .map(|range| DamagedRange {
                start_offset: range.start,
                end_offset: range.end,
                detail: "damaged on every copy".to_string(),
            })
            .collect(),
        reason: format!(
            "closed segment {} [{}, {}): offsets {} are damaged on every copy (stores {}); reads there fail, the rest of the partition is served. Bring back or repair an intact copy if one exists; otherwise accept the loss: sluice partition recover {} {} --accept-data-loss",
            segment.segment_id,
            segment.base_offset,
            segment.end_offset,
            listed.join(", "),
            stores.join(", "),
            key.topic,
            key.partition
        ),
    }
}

/// The current reports, per (partition, segment), kept by repair and read
/// by the heartbeat.
#[derive(Default)]
pub struct DamageReports(Mutex<HashMap<(PartitionKey, u64), DamagedPartition>>);

impl DamageReports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(PartitionKey, u64), DamagedPartition>> {
        // Nothing panics while holding the lock.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets (or with `None` clears) a segment's report; answers whether
    /// that changed it (a new or different report, or one cleared).
    pub fn set(
        &self,
        key: &PartitionKey,
        segment_id: u64,
        report: Option<DamagedPartition>,
    ) -> bool {
        let mut reports = self.lock();
        let entry = (key.clone(), segment_id);
        match report {
            None => reports.remove(&entry).is_some(),
            Some(report) => reports.insert(entry, report.clone()).as_ref() != Some(&report),
        }
    }

    /// Drops the reports of `key` whose segment is not in `segment_ids`
    /// (deleted by retention, or the partition is gone).
    pub fn retain_segments(&self, key: &PartitionKey, segment_ids: &[u64]) {
        self.lock().retain(|(partition, segment_id), _| {
            partition != key || segment_ids.contains(segment_id)
        });
    }

    /// The reports of the partitions `owned` accepts, by topic, partition
    /// and segment.
    pub fn of(&self, owned: impl Fn(&PartitionKey) -> bool) -> Vec<DamagedPartition> {
        let mut reports: Vec<DamagedPartition> = self
            .lock()
            .iter()
            .filter(|((key, _), _)| owned(key))
            .map(|(_, report)| report.clone())
            .collect();
        reports.sort_by(|a, b| {
            (&a.topic, a.partition, a.segment_id).cmp(&(&b.topic, b.partition, b.segment_id))
        });
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> OffsetRange {
        OffsetRange { start, end }
    }

    fn copy(end_offset: u64, damaged: &[(u64, u64)]) -> Holding {
        Holding::Copy {
            end_offset,
            damaged: damaged
                .iter()
                .map(|(start, end)| range(*start, *end))
                .collect(),
        }
    }

    #[test]
    fn disjoint_damage_loses_nothing() {
        let copies = [copy(100, &[(10, 20)]), copy(100, &[(20, 40), (60, 70)])];
        assert_eq!(unreadable_ranges(0, 100, &copies, &[]), vec![]);
    }

    #[test]
    fn overlapping_damage_loses_the_overlap_only() {
        let copies = [
            copy(100, &[(10, 30)]),
            copy(100, &[(20, 40)]),
            copy(100, &[(25, 50)]),
        ];
        assert_eq!(unreadable_ranges(0, 100, &copies, &[]), vec![range(25, 30)]);
        // Several overlaps, and a short copy's missing tail counts too.
        let copies = [copy(80, &[(10, 20)]), copy(100, &[(15, 25), (85, 95)])];
        assert_eq!(
            unreadable_ranges(0, 100, &copies, &[]),
            vec![range(15, 20), range(85, 95)]
        );
    }

    #[test]
    fn one_intact_copy_loses_nothing() {
        let copies = [copy(100, &[(0, 100)]), Holding::Nothing, copy(100, &[])];
        assert_eq!(unreadable_ranges(0, 100, &copies, &[]), vec![]);
        assert!(all_known(&copies));
    }

    #[test]
    fn copies_holding_nothing_lose_the_whole_segment() {
        let copies = [Holding::Nothing, Holding::Nothing];
        assert_eq!(unreadable_ranges(40, 90, &copies, &[]), vec![range(40, 90)]);
        // Unknown copies hold nothing readable now, but make it uncertain.
        let copies = [Holding::Nothing, Holding::Unknown];
        assert_eq!(unreadable_ranges(40, 90, &copies, &[]), vec![range(40, 90)]);
        assert!(!all_known(&copies));
        // An empty segment has nothing to lose.
        assert_eq!(unreadable_ranges(40, 40, &[Holding::Nothing], &[]), vec![]);
    }

    fn piece(start: u64, end: u64, source: usize) -> Piece {
        Piece { start, end, source }
    }

    #[test]
    fn a_copy_is_rebuilt_from_the_others_when_no_copy_is_whole() {
        // Disjoint damage on every copy: the first copy is rebuilt from
        // pieces of the other two, never from itself.
        let copies = [
            copy(100, &[(10, 20)]),
            copy(100, &[(40, 50)]),
            copy(100, &[(70, 80)]),
        ];
        let (target, pieces) = rebuild_plan(0, 100, &copies).expect("a rebuild");
        assert_eq!(target, 0);
        assert_eq!(
            pieces,
            vec![piece(0, 40, 1), piece(40, 50, 2), piece(50, 100, 1)]
        );
        // Not when a copy is whole (repair copies it), a copy is
        // unknown, or some offset is on no copy.
        let whole = [copy(100, &[(10, 20)]), copy(100, &[])];
        assert_eq!(rebuild_plan(0, 100, &whole), None);
        let unknown = [copies[0].clone(), copies[1].clone(), Holding::Unknown];
        assert_eq!(rebuild_plan(0, 100, &unknown), None);
        let overlapping = [copy(100, &[(10, 20)]), copy(100, &[(15, 25)])];
        assert_eq!(rebuild_plan(0, 100, &overlapping), None);
        // Two copies with disjoint damage: each holds what the other
        // lacks, so neither may be deleted to be rebuilt (a known gap:
        // that needs a third store or a repair of the range in place).
        let two = [copy(100, &[(10, 20)]), copy(100, &[(40, 50)])];
        assert_eq!(rebuild_plan(0, 100, &two), None);
    }

    #[test]
    fn accepted_ranges_are_not_reported_again_and_ranges_stay_inside() {
        let copies = [copy(100, &[(10, 30)]), copy(100, &[(10, 30)])];
        assert_eq!(unreadable_ranges(0, 100, &copies, &[range(10, 30)]), vec![]);
        assert_eq!(
            unreadable_ranges(0, 100, &copies, &[range(10, 20)]),
            vec![range(20, 30)]
        );
        // Damage a store reports beyond the segment is clipped to it.
        let copies = [copy(150, &[(90, 140)])];
        assert_eq!(
            unreadable_ranges(0, 100, &copies, &[]),
            vec![range(90, 100)]
        );
    }

    #[test]
    fn reports_name_the_segment_stores_ranges_and_command() {
        let segment = SegmentInfo {
            segment_id: 7,
            base_offset: 0,
            end_offset: 100,
            replicas: vec![sluice_proto::v1::SegmentReplica {
                store_id: "s1".into(),
                address: "h:1".into(),
            }],
            ..SegmentInfo::default()
        };
        let key = PartitionKey::new("orders", 3);
        let report = report(&key, &segment, &[range(10, 20)]);
        for part in [
            "segment 7",
            "[10, 20)",
            "s1",
            "recover orders 3 --accept-data-loss",
        ] {
            assert!(report.reason.contains(part), "{part}: {}", report.reason);
        }
        assert_eq!(
            (report.ranges[0].start_offset, report.ranges[0].end_offset),
            (10, 20)
        );
        let reports = DamageReports::default();
        assert!(reports.set(&key, 7, Some(report.clone())));
        assert!(!reports.set(&key, 7, Some(report.clone())), "unchanged");
        assert!(reports.set(&key, 7, None), "cleared");
        assert!(!reports.set(&key, 7, None), "nothing to clear");
        reports.set(&key, 7, Some(report));
        assert_eq!(reports.of(|_| true).len(), 1);
        assert!(reports.of(|_| false).is_empty());
        reports.retain_segments(&key, &[8]);
        assert!(reports.of(|_| true).is_empty());
    }
}
