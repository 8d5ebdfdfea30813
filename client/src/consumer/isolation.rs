//! Which records a consumer sees of transactionally written partitions
//! (ADR 0016 §4).

use sluice_proto::v1::IsolationLevel;

/// What a [`crate::Consumer`] reads.
///
/// [`Isolation::ReadCommitted`] (the default) gets only records below each
/// partition's last stable offset, never a record of an aborted
/// transaction: the broker filters, so aborted bytes never travel. On a
/// topic without transactions the last stable offset is the high
/// watermark, so it costs nothing; an open transaction holds the reader
/// back until it ends (bounded by the broker's largest transaction
/// timeout). [`Isolation::ReadUncommitted`] sees every record up to the
/// high watermark, aborted ones included. Transaction markers are never
/// records under either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Only committed records, up to the last stable offset (the default).
    #[default]
    ReadCommitted,
    /// Every record up to the high watermark, aborted ones included.
    ReadUncommitted,
}

impl Isolation {
    /// The protocol value.
    pub fn level(self) -> IsolationLevel {
        match self {
            Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
            Isolation::ReadUncommitted => IsolationLevel::ReadUncommitted,
        }
    }

    /// Whether a fetched answer may leave out offsets (dropped markers and
    /// aborted batches): the batches are then not contiguous, and the
    /// position moves to the broker's `next_offset`.
    pub(crate) fn allows_gaps(self) -> bool {
        self == Isolation::ReadCommitted
    }
}
