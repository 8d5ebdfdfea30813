//! Read-committed filtering of fetched batches (ADR 0016 §4), pure.
//!
//! A read-committed reader gets only whole batches ending at or below the
//! partition's last stable offset (LSO), never a control batch (markers
//! are not records), and never a transactional batch of an aborted
//! transaction: a batch of producer `p` starting inside an aborted range
//! `[first_offset, marker_offset]` of `p` (one producer's transactions at a
//! partition never overlap, so that range holds only the aborted one's
//! batches). When nothing is dropped the stored bytes go out as they are;
//! otherwise the kept batches are copied into one buffer, unchanged (CRCs
//! intact). The aborted ranges are looked up only if the bytes hold a
//! transactional batch, so topics without transactions pay one flag test
//! per header. `next_offset` is the end of the last batch examined, kept
//! or dropped, so a reader whose whole answer was dropped still moves on.
//! Parsing stops at the first malformed header, as the high-watermark cut
//! (`decisions::prefix_within_high_watermark`) does.

use crate::partition::transactions::AbortedTxn;
use bytes::{Bytes, BytesMut};
use sluice_proto::batch::BatchIter;

/// What a read-committed reader gets of some batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    pub bytes: Bytes,
    /// End of the last batch examined (kept or dropped); `None` if none
    /// lies below the LSO.
    pub next_offset: Option<u64>,
    /// Batches dropped (control or aborted).
    pub skipped_batches: u32,
}

/// Filters `batches` (whole batches, as a read returns them) for a
/// read-committed reader. `aborted(from, to)` gives the aborted
/// transactions whose ranges meet `[from, to)`; it is called at most once.
pub fn filter(
    batches: &Bytes,
    last_stable_offset: u64,
    aborted: impl FnOnce(u64, u64) -> Vec<AbortedTxn>,
) -> Filtered {
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut examined_length = 0;
    let mut next_offset = None;
    let mut skipped_batches = 0;
    let mut aborted = Some(aborted);
    let mut ranges: Option<Vec<AbortedTxn>> = None;
    for (position, header, batch) in BatchIter::new(batches).map_while(Result::ok) {
        if header.end_offset() > last_stable_offset {
            break;
        }
        let dropped = header.control
            || (header.transactional && {
                let ranges = ranges.get_or_insert_with(|| match aborted.take() {
                    Some(lookup) => lookup(header.base_offset, last_stable_offset),
                    None => Vec::new(),
                });
                in_aborted(ranges, header.producer_id, header.base_offset)
            });
        let end = position + batch.len();
        if dropped {
            skipped_batches += 1;
        } else {
            match kept.last_mut() {
                Some(last) if last.1 == position => last.1 = end,
                _ => kept.push((position, end)),
            }
        }
        examined_length = end;
        next_offset = Some(header.end_offset());
    }
    let bytes = match kept.as_slice() {
        [] => Bytes::new(),
        [(0, end)] if *end == examined_length => batches.slice(..examined_length),
        [(start, end)] => batches.slice(*start..*end),
        runs => {
            let total = runs.iter().map(|(start, end)| end - start).sum();
            let mut buffer = BytesMut::with_capacity(total);
            for (start, end) in runs {
                buffer.extend_from_slice(&batches[*start..*end]);
            }
            buffer.freeze()
        }
    };
    Filtered {
        bytes,
        next_offset,
        skipped_batches,
    }
}

fn in_aborted(ranges: &[AbortedTxn], producer_id: i64, offset: u64) -> bool {
    ranges.iter().any(|range| {
        range.producer_id == producer_id
            && range.first_offset <= offset
            && offset <= range.marker_offset
    })
}

#[cfg(test)]
mod tests;
