//! Where a subscription starts on each partition (issue 11): the
//! `start_offsets` a subscription with `INITIAL_POSITION_LATEST` records
//! at creation, so that "latest" means the end of the log when the
//! subscription was created, not when its first consumer came.
//!
//! The nameserver never calls brokers, so it does not know a partition's
//! high watermark: the SDK resolves the high watermarks from the owners
//! and sends them. A request without them gets, per partition, the end of
//! the partition's last closed segment, a lower bound of the log's end
//! (every closed segment's end is at most the high watermark, and the log
//! never rewinds below it). An open segment's base offset is not used: a
//! segment prepared ahead of a roll that never happened can start above
//! what was acknowledged.
//!
//! Pure functions; the IO is in `subscriptions.rs`.

use crate::error::NameServerError;
use crate::handler::invalid;
use sluice_proto::limits::{MAX_OFFSET, MAX_PARTITIONS_PER_TOPIC};
use sluice_proto::v1::{InitialPosition, SegmentInfo, SegmentState};

/// Checks the `start_offsets` a creation request gives for a topic of
/// `partitions` partitions: none for `EARLIEST`; for `LATEST` none (the
/// nameserver fills them) or exactly one per partition, each at most
/// [`MAX_OFFSET`].
pub fn check_start_offsets(
    position: InitialPosition,
    start_offsets: &[u64],
    partitions: u32,
) -> Result<(), NameServerError> {
    if start_offsets.is_empty() {
        return Ok(());
    }
    if position != InitialPosition::Latest {
        return Err(invalid(format!(
            "start_offsets go only with INITIAL_POSITION_LATEST; {} starts at each \
             partition's first retained offset (leave start_offsets empty)",
            position.as_str_name()
        )));
    }
    if usize::try_from(partitions).ok() != Some(start_offsets.len()) {
        return Err(invalid(format!(
            "start_offsets has {} entries; the topic has {partitions} partitions (give one \
             per partition, or none)",
            start_offsets.len()
        )));
    }
    if let Some((partition, offset)) = start_offsets
        .iter()
        .enumerate()
        .find(|(_, offset)| **offset > MAX_OFFSET)
    {
        return Err(invalid(format!(
            "start_offsets[{partition}] = {offset} exceeds the largest offset {MAX_OFFSET}"
        )));
    }
    Ok(())
}

/// Per partition (`0..partitions`), the end of its last closed segment
/// among `segments` (0 when none is closed): a lower bound of where its
/// log ends. Segments of partitions beyond the count are ignored, and
/// so is a count beyond [`MAX_PARTITIONS_PER_TOPIC`] (a topic never has
/// more).
pub fn closed_ends(segments: &[SegmentInfo], partitions: u32) -> Vec<u64> {
    let count = partitions.min(MAX_PARTITIONS_PER_TOPIC);
    let mut ends = vec![0u64; usize::try_from(count).unwrap_or(0)];
    for segment in segments {
        if segment.state() != SegmentState::Closed {
            continue;
        }
        let Some(end) = usize::try_from(segment.partition)
            .ok()
            .and_then(|index| ends.get_mut(index))
        else {
            continue;
        };
        *end = (*end).max(segment.end_offset.min(MAX_OFFSET));
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(partition: u32, state: SegmentState, base: u64, end: u64) -> SegmentInfo {
        SegmentInfo {
            partition,
            state: state as i32,
            base_offset: base,
            end_offset: end,
            ..SegmentInfo::default()
        }
    }

    #[test]
    fn empty_start_offsets_are_always_accepted() {
        for position in [InitialPosition::Latest, InitialPosition::Earliest] {
            for partitions in [0, 1, 4096, u32::MAX] {
                assert!(check_start_offsets(position, &[], partitions).is_ok());
            }
        }
    }

    #[test]
    fn latest_takes_exactly_one_offset_per_partition_up_to_the_largest() {
        let latest = InitialPosition::Latest;
        assert!(check_start_offsets(latest, &[0, 7, MAX_OFFSET], 3).is_ok());
        let error = check_start_offsets(latest, &[1, 2], 3).expect_err("too few");
        assert!(error.to_string().contains("3 partitions"), "{error}");
        let error = check_start_offsets(latest, &[1, 2, 3, 4], 3).expect_err("too many");
        assert!(error.to_string().contains("4 entries"), "{error}");
        let error = check_start_offsets(latest, &[1], 0).expect_err("no partitions");
        assert!(error.to_string().contains("0 partitions"), "{error}");
        let error =
            check_start_offsets(latest, &[0, MAX_OFFSET + 1], 2).expect_err("beyond MAX_OFFSET");
        assert!(error.to_string().contains("start_offsets[1]"), "{error}");
        assert!(check_start_offsets(latest, &[u64::MAX], 1).is_err());
    }

    #[test]
    fn earliest_takes_no_start_offsets() {
        let error = check_start_offsets(InitialPosition::Earliest, &[0], 1)
            .expect_err("earliest with offsets");
        assert!(error.to_string().contains("EARLIEST"), "{error}");
    }

    #[test]
    fn closed_ends_take_the_last_closed_end_and_ignore_open_segments() {
        let segments = [
            segment(0, SegmentState::Closed, 0, 10),
            segment(0, SegmentState::Closed, 10, 25),
            // Open, or prepared ahead of a roll that may never happen: its
            // base is not known to be acknowledged.
            segment(0, SegmentState::Open, 25, 0),
            segment(1, SegmentState::Open, 0, 0),
            segment(2, SegmentState::Open, 40, 0),
            segment(2, SegmentState::Closed, 0, 40),
            segment(2, SegmentState::Unspecified, 90, 100),
            // A partition the topic does not have.
            segment(7, SegmentState::Closed, 0, 1000),
            segment(u32::MAX, SegmentState::Closed, 0, 1000),
        ];
        assert_eq!(closed_ends(&segments, 3), vec![25, 0, 40]);
        assert_eq!(closed_ends(&segments, 0), Vec::<u64>::new());
        assert_eq!(closed_ends(&[], 2), vec![0, 0]);
        assert_eq!(
            closed_ends(&[], u32::MAX).len(),
            MAX_PARTITIONS_PER_TOPIC as usize
        );
    }

    #[test]
    fn a_closed_end_beyond_the_largest_offset_is_cut_to_it() {
        let segments = [segment(0, SegmentState::Closed, 0, u64::MAX)];
        assert_eq!(closed_ends(&segments, 1), vec![MAX_OFFSET]);
    }
}
