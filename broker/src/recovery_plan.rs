//! The pure decision of a takeover over fenced copies of an open segment,
//! some of which may be damaged (issue 11): where the segment ends, which
//! copy fills which copy's tail, and whether the partition may go on at
//! all. Never closes below the highest end a fenced copy reports, so no
//! offset ever handed out is handed out again; a range held intact by no
//! fenced copy stops the partition until an operator accepts its loss.

use sluice_proto::v1::SegmentStatus;

/// Offsets `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    pub start: u64,
    pub end: u64,
}

impl std::fmt::Display for OffsetRange {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "[{}, {})", self.start, self.end)
    }
}

/// A fenced replica's answer: how far its store ever wrote the segment
/// and which of those offsets it cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedCopy {
    pub replica: usize,
    /// One past the highest offset its store made durable (damage never
    /// lowers it).
    pub end_offset: u64,
    pub size_bytes: u64,
    pub max_timestamp_ms: i64,
    /// Ranges below `end_offset` it holds damaged.
    pub damaged: Vec<OffsetRange>,
}

impl FencedCopy {
    /// The copy a store's seal answer describes, for replica `replica`.
    pub fn from_status(replica: usize, status: &SegmentStatus) -> Self {
        Self {
            replica,
            end_offset: status.end_offset,
            size_bytes: status.size_bytes,
            max_timestamp_ms: status.max_timestamp_ms,
            damaged: damaged_ranges(status),
        }
    }

    /// Whether it can serve `offset`.
    fn holds(&self, offset: u64) -> bool {
        offset < self.end_offset && !self.damaged.iter().any(|range| range.contains(offset))
    }

    /// From an offset it holds: where its intact run ends.
    fn intact_until(&self, offset: u64) -> u64 {
        self.damaged
            .iter()
            .filter(|range| range.start > offset)
            .map(|range| range.start)
            .fold(self.end_offset, u64::min)
    }

    /// From an offset inside its damage: where the damage ends (it may
    /// hold what follows), if before its end.
    fn damage_ends_after(&self, offset: u64) -> Option<u64> {
        let mut position = offset;
        while let Some(range) = self.damaged.iter().find(|range| range.contains(position)) {
            position = range.end;
        }
        (position > offset && position < self.end_offset).then_some(position)
    }

    fn is_damaged_within(&self, range: OffsetRange) -> bool {
        self.damaged
            .iter()
            .any(|damage| damage.start < range.end && range.start < damage.end)
    }
}

impl OffsetRange {
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.start <= offset && offset < self.end
    }
}

/// The damaged ranges a store reports: its `damaged_ranges` when given,
/// otherwise everything from `corrupt_from_offset` to its end (a store
/// that names only where damage starts may have more after it). Empty
/// and inverted ranges are dropped.
pub fn damaged_ranges(status: &SegmentStatus) -> Vec<OffsetRange> {
    let ranges: Vec<OffsetRange> = if status.damaged_ranges.is_empty() {
        status
            .corrupt_from_offset
            .map(|start| OffsetRange {
                start,
                end: status.end_offset,
            })
            .into_iter()
            .collect()
    } else {
        status
            .damaged_ranges
            .iter()
            .map(|range| OffsetRange {
                start: range.start_offset,
                end: range.end_offset,
            })
            .collect()
    };
    ranges
        .into_iter()
        .filter(|range| range.start < range.end)
        .collect()
}

/// Copy `[start, end)` from replica `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub start: u64,
    pub end: u64,
    pub source: usize,
}

/// How `[start, end)` can be read from the fenced copies: pieces in order
/// (each from the copy whose intact run reaches furthest), and the gaps no
/// copy holds intact.
fn cover(start: u64, end: u64, copies: &[FencedCopy]) -> (Vec<Piece>, Vec<OffsetRange>) {
    let mut pieces = Vec::new();
    let mut gaps: Vec<OffsetRange> = Vec::new();
    let mut position = start;
    while position < end {
        let best = copies
            .iter()
            .filter(|copy| copy.holds(position))
            .map(|copy| (copy.intact_until(position).min(end), copy.replica))
            .max_by_key(|(reach, replica)| (*reach, std::cmp::Reverse(*replica)));
        if let Some((reach, source)) = best {
            pieces.push(Piece {
                start: position,
                end: reach,
                source,
            });
            position = reach;
            continue;
        }
        let next = copies
            .iter()
            .filter_map(|copy| copy.damage_ends_after(position))
            .min()
            .unwrap_or(end)
            .min(end);
        match gaps.last_mut() {
            Some(last) if last.end == position => last.end = next,
            _ => gaps.push(OffsetRange {
                start: position,
                end: next,
            }),
        }
        position = next;
    }
    (pieces, gaps)
}

/// Filling one fenced copy's missing tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailFill {
    pub target: usize,
    pub pieces: Vec<Piece>,
}

/// What a takeover does with an open segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentRecovery {
    /// Fewer than the fence quorum answered: retry.
    Unfenced { answered: usize, quorum: usize },
    /// Stay offline: `unreadable` ranges below `end_offset` are intact on
    /// no fenced copy, or (`end_unknown`) copies whose store lost the
    /// segment may have held more than the others report. An operator
    /// decides.
    Offline {
        end_offset: u64,
        unreadable: Vec<OffsetRange>,
        end_unknown: bool,
    },
    /// Close at `end_offset` (the highest end any fenced copy reports);
    /// fill the undamaged short copies' tails first. `lost` ranges were
    /// accepted as lost; `damaged_copies` are left to repair.
    Close {
        end_offset: u64,
        size_bytes: u64,
        max_timestamp_ms: i64,
        fills: Vec<TailFill>,
        lost: Vec<OffsetRange>,
        damaged_copies: Vec<usize>,
    },
}

/// Decides the end of an open segment at `base_offset` from its fenced
/// copies and `lost_copies` replicas whose store lost it (answered
/// STORAGE_CORRUPT: fenced, holding nothing), given the fence `quorum` and
/// whether an operator accepted data loss for it (and where the log
/// continues at the earliest: `accepted_end_offset`, 0 for no floor).
///
/// Every replica's copy is a prefix of its writer's sequence, so the
/// highest reported end is where the writer got to; closing lower would
/// hand out offsets again. With at least `quorum` holders every
/// acknowledged entry is on one of them (ADR 0008), though maybe damaged.
pub fn recover_segment(
    base_offset: u64,
    fenced: &[FencedCopy],
    lost_copies: usize,
    quorum: usize,
    loss_accepted: bool,
    accepted_end_offset: u64,
) -> SegmentRecovery {
    let quorum = quorum.max(1);
    let answered = fenced.len().saturating_add(lost_copies);
    if answered < quorum {
        return SegmentRecovery::Unfenced { answered, quorum };
    }
    let reported_end = fenced
        .iter()
        .map(|copy| copy.end_offset)
        .fold(base_offset, u64::max);
    let (_, mut unreadable) = cover(base_offset, reported_end, fenced);
    let end_unknown = fenced.len() < quorum;
    // With copies lost and too few holders, the writer may have got
    // further than any holder: only the operator can say where to go on.
    let floor_missing = end_unknown && accepted_end_offset <= reported_end;
    if (end_unknown || !unreadable.is_empty()) && (!loss_accepted || floor_missing) {
        return SegmentRecovery::Offline {
            end_offset: reported_end,
            unreadable,
            end_unknown,
        };
    }
    let end_offset = if loss_accepted {
        reported_end.max(accepted_end_offset)
    } else {
        reported_end
    };
    if end_offset > reported_end {
        unreadable.push(OffsetRange {
            start: reported_end,
            end: end_offset,
        });
    }
    let whole = OffsetRange {
        start: base_offset,
        end: reported_end,
    };
    // Size and newest timestamp from the longest copy, undamaged first.
    let longest = fenced
        .iter()
        .filter(|copy| copy.end_offset == reported_end)
        .min_by_key(|copy| (copy.is_damaged_within(whole), copy.replica));
    let fills = fenced
        .iter()
        .filter(|copy| copy.end_offset < reported_end && copy.damaged.is_empty())
        .filter_map(|copy| {
            let start = copy.end_offset.max(base_offset);
            let (pieces, gaps) = cover(start, reported_end, fenced);
            // Appends continue at a copy's end: stop before a hole.
            let first_gap = gaps.first().map_or(u64::MAX, |gap| gap.start);
            let pieces: Vec<Piece> = pieces
                .into_iter()
                .filter(|piece| piece.end <= first_gap)
                .collect();
            (!pieces.is_empty()).then_some(TailFill {
                target: copy.replica,
                pieces,
            })
        })
        .collect();
    SegmentRecovery::Close {
        end_offset,
        size_bytes: longest.map_or(0, |copy| copy.size_bytes),
        max_timestamp_ms: longest.map_or(0, |copy| copy.max_timestamp_ms),
        fills,
        lost: unreadable,
        damaged_copies: fenced
            .iter()
            .filter(|copy| copy.is_damaged_within(whole))
            .map(|copy| copy.replica)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> OffsetRange {
        OffsetRange { start, end }
    }

    fn copy(replica: usize, end_offset: u64, damaged: &[(u64, u64)]) -> FencedCopy {
        FencedCopy {
            replica,
            end_offset,
            size_bytes: end_offset.saturating_mul(10),
            max_timestamp_ms: end_offset as i64,
            damaged: damaged
                .iter()
                .map(|(start, end)| range(*start, *end))
                .collect(),
        }
    }

    fn closed_at(recovery: &SegmentRecovery) -> Option<u64> {
        match recovery {
            SegmentRecovery::Close { end_offset, .. } => Some(*end_offset),
            _ => None,
        }
    }

    #[test]
    fn healthy_copies_close_at_the_longest_and_fill_the_others() {
        let copies = [copy(0, 5, &[]), copy(1, 9, &[]), copy(2, 9, &[])];
        let recovery = recover_segment(0, &copies, 0, 2, false, 0);
        assert_eq!(
            recovery,
            SegmentRecovery::Close {
                end_offset: 9,
                size_bytes: 90,
                max_timestamp_ms: 9,
                fills: vec![TailFill {
                    target: 0,
                    pieces: vec![Piece {
                        start: 5,
                        end: 9,
                        source: 1
                    }]
                }],
                lost: vec![],
                damaged_copies: vec![],
            }
        );
        assert_eq!(
            recover_segment(0, &[copy(0, 5, &[])], 0, 2, false, 0),
            SegmentRecovery::Unfenced {
                answered: 1,
                quorum: 2
            }
        );
        assert!(matches!(
            recover_segment(0, &[], 0, 0, false, 0),
            SegmentRecovery::Unfenced { .. }
        ));
    }

    #[test]
    fn a_damaged_copy_counts_for_the_end_and_others_serve_its_damage() {
        // The case: the damaged copy reports 4000, damage at 2980.
        let copies = [
            copy(0, 4000, &[(2980, 3000)]),
            copy(1, 4000, &[]),
            copy(2, 3990, &[]),
        ];
        let SegmentRecovery::Close {
            end_offset,
            fills,
            lost,
            damaged_copies,
            size_bytes,
            ..
        } = recover_segment(0, &copies, 0, 2, false, 0)
        else {
            panic!("closes");
        };
        assert_eq!(end_offset, 4000);
        assert_eq!(size_bytes, 40_000, "sizes from the undamaged longest copy");
        assert!(lost.is_empty());
        assert_eq!(damaged_copies, vec![0]);
        assert_eq!(
            fills,
            vec![TailFill {
                target: 2,
                pieces: vec![Piece {
                    start: 3990,
                    end: 4000,
                    source: 0
                }]
            }],
            "ties go to the lowest replica; the damaged copy serves past its damage"
        );
    }

    #[test]
    fn the_longest_copy_being_damaged_never_shortens_the_segment() {
        // Before issue 11 this closed at 2980 (the usable end).
        let copies = [copy(0, 4000, &[(2980, 3000)]), copy(1, 3500, &[])];
        let SegmentRecovery::Close {
            end_offset, fills, ..
        } = recover_segment(0, &copies, 0, 2, false, 0)
        else {
            panic!("closes");
        };
        assert_eq!(end_offset, 4000);
        assert_eq!(
            fills,
            vec![TailFill {
                target: 1,
                pieces: vec![Piece {
                    start: 3500,
                    end: 4000,
                    source: 0
                }]
            }]
        );
        // Damage within the tail only the damaged copy has: nobody holds it.
        let copies = [copy(0, 4000, &[(3600, 3700)]), copy(1, 3500, &[])];
        assert_eq!(
            recover_segment(0, &copies, 0, 2, false, 0),
            SegmentRecovery::Offline {
                end_offset: 4000,
                unreadable: vec![range(3600, 3700)],
                end_unknown: false
            }
        );
    }

    #[test]
    fn a_single_damaged_copy_stays_offline_until_loss_is_accepted() {
        let copies = [copy(0, 4000, &[(2980, 3000)])];
        assert_eq!(
            recover_segment(0, &copies, 0, 1, false, 0),
            SegmentRecovery::Offline {
                end_offset: 4000,
                unreadable: vec![range(2980, 3000)],
                end_unknown: false
            }
        );
        assert_eq!(
            recover_segment(0, &copies, 0, 1, true, 0),
            SegmentRecovery::Close {
                end_offset: 4000,
                size_bytes: 40_000,
                max_timestamp_ms: 4000,
                fills: vec![],
                lost: vec![range(2980, 3000)],
                damaged_copies: vec![0],
            }
        );
        // The operator may move the end further, never back.
        assert_eq!(
            closed_at(&recover_segment(0, &copies, 0, 1, true, 5000)),
            Some(5000)
        );
        assert_eq!(
            closed_at(&recover_segment(0, &copies, 0, 1, true, 10)),
            Some(4000)
        );
    }

    #[test]
    fn damage_at_the_base_or_the_end_and_on_every_copy() {
        let at_base = [copy(0, 100, &[(0, 10)])];
        assert!(matches!(
            recover_segment(0, &at_base, 0, 1, false, 0),
            SegmentRecovery::Offline { ref unreadable, .. } if unreadable == &vec![range(0, 10)]
        ));
        let at_end = [copy(0, 100, &[(90, 100)]), copy(1, 100, &[(90, 100)])];
        assert!(matches!(
            recover_segment(0, &at_end, 0, 2, false, 0),
            SegmentRecovery::Offline { ref unreadable, .. } if unreadable == &vec![range(90, 100)]
        ));
        // Every copy damaged, but at different places: stitched, no loss.
        let stitched = [
            copy(0, 100, &[(10, 20), (15, 30)]),
            copy(1, 100, &[(50, 60)]),
        ];
        let SegmentRecovery::Close {
            end_offset,
            lost,
            damaged_copies,
            ..
        } = recover_segment(0, &stitched, 0, 2, false, 0)
        else {
            panic!("closes");
        };
        assert_eq!((end_offset, lost), (100, vec![]));
        assert_eq!(damaged_copies, vec![0, 1]);
        // Overlapping damage on both: one merged gap.
        let overlapping = [copy(0, 100, &[(10, 40)]), copy(1, 100, &[(20, 50)])];
        assert!(matches!(
            recover_segment(0, &overlapping, 0, 2, false, 0),
            SegmentRecovery::Offline { ref unreadable, .. } if unreadable == &vec![range(20, 40)]
        ));
    }

    #[test]
    fn a_copy_whose_store_lost_the_segment_leaves_the_end_unknown() {
        // 1/1/1 and the store lost the segment (garbage metadata).
        assert_eq!(
            recover_segment(100, &[], 1, 1, false, 0),
            SegmentRecovery::Offline {
                end_offset: 100,
                unreadable: vec![],
                end_unknown: true
            }
        );
        // Accepting loss without saying where the log continues keeps it
        // offline: closing at the base would reuse offsets.
        assert!(matches!(
            recover_segment(100, &[], 1, 1, true, 0),
            SegmentRecovery::Offline {
                end_unknown: true,
                ..
            }
        ));
        assert_eq!(
            closed_at(&recover_segment(100, &[], 1, 1, true, 4100)),
            Some(4100)
        );
        // 3/3/2: one lost, two holders: the holders have everything.
        let copies = [copy(0, 400, &[]), copy(2, 400, &[])];
        assert_eq!(
            closed_at(&recover_segment(100, &copies, 1, 2, false, 0)),
            Some(400)
        );
        // One lost, one holder, one silent: maybe not everything.
        assert!(matches!(
            recover_segment(100, &copies[..1], 1, 2, false, 0),
            SegmentRecovery::Offline {
                end_unknown: true,
                ..
            }
        ));
    }

    #[test]
    fn extremes_neither_overflow_nor_loop() {
        let top = [copy(0, u64::MAX, &[(u64::MAX - 1, u64::MAX)])];
        assert_eq!(
            recover_segment(u64::MAX - 2, &top, 0, 1, false, 0),
            SegmentRecovery::Offline {
                end_offset: u64::MAX,
                unreadable: vec![range(u64::MAX - 1, u64::MAX)],
                end_unknown: false
            }
        );
        // Copies reporting less than the base: empty, closed at the base.
        let short = [copy(0, 0, &[(0, u64::MAX)]), copy(1, 3, &[])];
        assert_eq!(
            closed_at(&recover_segment(10, &short, 0, 2, false, 0)),
            Some(10)
        );
        // Damage reported beyond the copy's end is ignored there.
        let beyond = [copy(0, 50, &[(60, 70)])];
        assert_eq!(
            closed_at(&recover_segment(0, &beyond, 0, 1, false, 0)),
            Some(50)
        );
        assert_eq!(
            closed_at(&recover_segment(0, &beyond, 0, 1, true, u64::MAX)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn store_reports_become_ranges() {
        let status = SegmentStatus {
            end_offset: 4000,
            corrupt_from_offset: Some(2980),
            ..SegmentStatus::default()
        };
        assert_eq!(damaged_ranges(&status), vec![range(2980, 4000)]);
        let precise = SegmentStatus {
            damaged_ranges: vec![
                sluice_proto::v1::DamagedRange {
                    start_offset: 2980,
                    end_offset: 3000,
                    detail: "crc".into(),
                },
                sluice_proto::v1::DamagedRange {
                    start_offset: 7,
                    end_offset: 7,
                    detail: "empty".into(),
                },
            ],
            ..status.clone()
        };
        assert_eq!(damaged_ranges(&precise), vec![range(2980, 3000)]);
        let at_end = SegmentStatus {
            end_offset: 10,
            corrupt_from_offset: Some(10),
            ..SegmentStatus::default()
        };
        assert!(damaged_ranges(&at_end).is_empty());
    }
}
