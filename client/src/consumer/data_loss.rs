//! What a consumer does when it reaches a range of a partition's log that
//! an operator accepted as lost (the broker answers DATA_LOST with where
//! readable data resumes): skip it (default) or stop the partition there.

/// What [`crate::Consumer`] does at a range of the log accepted as lost
/// (`sluice partition recover --accept-data-loss`: no copy held it intact,
/// and the operator chose to go on without it). Those offsets will never
/// be readable, so retrying cannot help.
///
/// The default is [`DataLossPolicy::Skip`]: the operator already decided
/// to accept the loss, and stopping every consumer at it would be a second
/// outage for a decision already made. Each skipped range is logged at
/// warn level and its offsets counted
/// ([`crate::Consumer::skipped_lost_offsets`]); reading continues where
/// data resumes. [`DataLossPolicy::Fail`] is for applications that must
/// notice: `recv` returns [`crate::ClientError::DataLost`] naming the topic,
/// partition and offsets, the partition stops (the others go on), and the
/// application seeks to the error's `end_offset` to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataLossPolicy {
    /// Log it, count its offsets, and go on where readable data resumes.
    #[default]
    Skip,
    /// Return the error and stop the partition until the application
    /// seeks.
    Fail,
}

/// What the fetcher does with a DATA_LOST answer to a fetch at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataLossAction {
    /// Continue at `to`, counting `skipped` offsets.
    Skip { to: u64, skipped: u64 },
    /// Stop the partition with `ClientError::DataLost { start_offset:
    /// offset, end_offset }`.
    Fail { end_offset: u64 },
}

/// Decides under `policy` for a fetch at `offset` answered DATA_LOST with
/// `lost_end_offset` (0 when the broker did not say). Skipping needs an end
/// beyond `offset`; without one the partition stops rather than spin.
pub(crate) fn data_loss_action(
    policy: DataLossPolicy,
    offset: u64,
    lost_end_offset: u64,
) -> DataLossAction {
    match policy {
        DataLossPolicy::Skip if lost_end_offset > offset => DataLossAction::Skip {
            to: lost_end_offset,
            skipped: lost_end_offset - offset,
        },
        _ => DataLossAction::Fail {
            end_offset: lost_end_offset.max(offset),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_is_the_default_and_moves_to_the_end_of_the_range() {
        assert_eq!(DataLossPolicy::default(), DataLossPolicy::Skip);
        assert_eq!(
            data_loss_action(DataLossPolicy::Skip, 40, 60),
            DataLossAction::Skip {
                to: 60,
                skipped: 20
            }
        );
    }

    #[test]
    fn fail_names_where_data_resumes() {
        assert_eq!(
            data_loss_action(DataLossPolicy::Fail, 40, 60),
            DataLossAction::Fail { end_offset: 60 }
        );
    }

    #[test]
    fn without_an_end_beyond_the_offset_skipping_would_spin_so_it_fails() {
        assert_eq!(
            data_loss_action(DataLossPolicy::Skip, 40, 0),
            DataLossAction::Fail { end_offset: 40 }
        );
        assert_eq!(
            data_loss_action(DataLossPolicy::Skip, 40, 40),
            DataLossAction::Fail { end_offset: 40 }
        );
    }
}
