//! Where a subscription starts on a partition it has no cursor for yet
//! (issue 11): `INITIAL_POSITION_EARLIEST` at the first retained offset,
//! `INITIAL_POSITION_LATEST` at the offset recorded in the subscription
//! when it was created (`start_offsets`), so that neither a consumer
//! coming later, a restart nor an ownership move skips what was produced
//! after the creation. Pure.

use sluice_proto::v1::{InitialPosition, Subscription};

/// The offset a subscription recorded for `partition` at creation, when
/// it starts at "latest" and recorded one (subscriptions created before
/// `start_offsets` existed have none).
pub fn recorded_start(subscription: &Subscription, partition: u32) -> Option<u64> {
    if subscription.initial_position() != InitialPosition::Latest {
        return None;
    }
    let index = usize::try_from(partition).ok()?;
    subscription.start_offsets.get(index).copied()
}

/// Where a subscription without a cursor starts reading `partition`,
/// whose log holds `[log_start_offset, high_watermark)`.
///
/// - Earliest: the log start.
/// - Latest with a recorded start: that offset, moved up to the log start
///   when retention deleted what lay below it, and down to the high
///   watermark if it lies beyond it (nothing there yet; starting lower
///   can only deliver more, never skip).
/// - Latest with no start recorded for the partition while others have
///   one: the log start (a partition the subscription never saw the end
///   of holds only messages newer than it).
/// - Latest with none recorded at all (created before `start_offsets`):
///   the high watermark, as then.
pub fn initial_offset(
    subscription: &Subscription,
    partition: u32,
    log_start_offset: u64,
    high_watermark: u64,
) -> u64 {
    match subscription.initial_position() {
        InitialPosition::Earliest => log_start_offset,
        InitialPosition::Latest => match recorded_start(subscription, partition) {
            Some(recorded) => recorded.min(high_watermark).max(log_start_offset),
            None if subscription.start_offsets.is_empty() => high_watermark,
            None => log_start_offset,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latest(start_offsets: Vec<u64>) -> Subscription {
        Subscription {
            initial_position: InitialPosition::Latest as i32,
            start_offsets,
            ..Subscription::default()
        }
    }

    #[test]
    fn latest_starts_at_the_recorded_offset_not_at_the_high_watermark() {
        let subscription = latest(vec![3, 0, 50]);
        // Messages were produced after the creation: the end moved on.
        assert_eq!(initial_offset(&subscription, 0, 0, 10), 3);
        assert_eq!(initial_offset(&subscription, 1, 0, 10), 0);
        assert_eq!(initial_offset(&subscription, 2, 20, 90), 50);
        assert_eq!(recorded_start(&subscription, 2), Some(50));
    }

    #[test]
    fn a_recorded_start_is_kept_inside_the_log() {
        let subscription = latest(vec![3, 100, u64::MAX]);
        // Retention deleted up to 5.
        assert_eq!(initial_offset(&subscription, 0, 5, 10), 5);
        // Beyond the end: the end (never above what exists).
        assert_eq!(initial_offset(&subscription, 1, 0, 10), 10);
        assert_eq!(initial_offset(&subscription, 2, 0, u64::MAX), u64::MAX);
        assert_eq!(initial_offset(&subscription, 2, 0, 0), 0);
        // An inconsistent status (start above end) never panics.
        assert_eq!(initial_offset(&subscription, 1, 20, 10), 20);
    }

    #[test]
    fn a_partition_without_a_recorded_start_starts_at_its_log_start() {
        let subscription = latest(vec![7]);
        assert_eq!(initial_offset(&subscription, 1, 2, 10), 2);
        assert_eq!(initial_offset(&subscription, u32::MAX, 0, 10), 0);
        assert_eq!(recorded_start(&subscription, 1), None);
    }

    #[test]
    fn latest_without_any_recorded_start_starts_at_the_high_watermark() {
        let subscription = latest(Vec::new());
        assert_eq!(initial_offset(&subscription, 0, 2, 10), 10);
        assert_eq!(recorded_start(&subscription, 0), None);
    }

    #[test]
    fn earliest_starts_at_the_log_start_whatever_is_recorded() {
        let subscription = Subscription {
            initial_position: InitialPosition::Earliest as i32,
            start_offsets: vec![9],
            ..Subscription::default()
        };
        assert_eq!(initial_offset(&subscription, 0, 2, 10), 2);
        assert_eq!(recorded_start(&subscription, 0), None);
    }
}
