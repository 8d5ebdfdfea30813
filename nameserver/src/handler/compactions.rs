//! Compaction's segment swaps (ADR 0016 §8, step 4), epoch-fenced like
//! every segment write:
//!
//! - `PlaceCompactedSegment`: an id and an ensemble for a segment a pass
//!   will write over `[base, end)`, recorded under
//!   `compactions/{topic}/{partition:05}/{segment_id:020}` (not under
//!   `segments/`, so no reader sees it).
//! - `ReplaceSegments`: in one metadata transaction, comparing the owner's
//!   epoch, each old segment's revision (unchanged since the owner read
//!   it: a concurrent retention, repair or takeover fails the swap) and
//!   each placement record, deletes the old segment keys, puts the new
//!   (CLOSED) and moves the old ones to `compactions/.../deleted/`. Readers
//!   thus see all old or all new segments.
//! - `ListCompactions` / `ForgetCompactions`: the owner finds placements
//!   a dead pass left and replaced segments whose copies are due for
//!   deletion, deletes the copies, then forgets the records.

use super::{invalid, now_ms, NameServerHandler};
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::{Compare, KeyValue, Put, Transaction};
use sluice_proto::v1::{
    CompactionRecord, CompactionRecordKind, ForgetCompactionsRequest, ListCompactionsRequest,
    PlaceCompactedSegmentRequest, ReplaceSegmentsRequest, SegmentInfo, SegmentState,
};

/// Most segments one `ReplaceSegments` swaps on each side (one etcd
/// transaction holds three operations per old and per new segment).
pub const MAX_SEGMENTS_PER_SWAP: usize = 64;
/// Most records one `ForgetCompactions` deletes.
pub const MAX_FORGOTTEN_PER_REQUEST: usize = 256;

impl NameServerHandler {
    /// `PlaceCompactedSegment`: a new segment id and ensemble, recorded as
    /// placed.
    pub(crate) async fn do_place_compacted_segment(
        &self,
        request: PlaceCompactedSegmentRequest,
    ) -> Result<SegmentInfo, NameServerError> {
        if request.end_offset <= request.base_offset {
            return Err(invalid(format!(
                "a compacted segment covers [base, end) with end > base; got [{}, {})",
                request.base_offset, request.end_offset
            )));
        }
        let placed = super::segments::NewSegment {
            topic: &request.topic,
            partition: request.partition,
            epoch: request.epoch,
            base_offset: request.base_offset,
            end_offset: request.end_offset,
            exclude_store_ids: &request.exclude_store_ids,
        };
        let (segment, ownership) = self.place_segment(placed).await?;
        let segment_id = segment.segment_id;
        let record = CompactionRecord {
            segment: Some(segment.clone()),
            kind: CompactionRecordKind::Placed as i32,
            recorded_at_ms: now_ms(),
        };
        let key = keys::compaction(&request.topic, request.partition, segment_id);
        let transaction = Transaction {
            compares: vec![ownership, Compare::Absent(key.clone())],
            puts: vec![Put::new(key, keys::encode(&record))],
            deletes: Vec::new(),
        };
        self.commit_as_owner(
            transaction,
            &request.topic,
            request.partition,
            request.epoch,
        )
        .await?;
        tracing::info!(topic = %request.topic, partition = request.partition, segment_id, base_offset = request.base_offset, end_offset = request.end_offset, "compacted segment placed");
        Ok(segment)
    }

    /// `ReplaceSegments`: the swap, all or nothing.
    pub(crate) async fn do_replace_segments(
        &self,
        request: ReplaceSegmentsRequest,
    ) -> Result<Vec<SegmentInfo>, NameServerError> {
        check_swap_shape(&request)?;
        let (_, ownership) = self
            .check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        let (topic, partition) = (request.topic.as_str(), request.partition);
        let mut transaction = Transaction {
            compares: vec![ownership],
            puts: Vec::new(),
            deletes: Vec::new(),
        };
        self.retire_replaced(&request, &mut transaction).await?;
        let installed = self.install_compacted(&request, &mut transaction).await?;
        if !self.store.commit(transaction).await? {
            // A concurrent change of a segment or the ownership.
            return Err(self
                .explain_failed_commit(topic, partition, request.epoch)
                .await);
        }
        tracing::info!(topic, partition, replaced = ?request.replaced.iter().map(|segment| segment.segment_id).collect::<Vec<_>>(), installed = ?installed.iter().map(|segment| segment.segment_id).collect::<Vec<_>>(), "compaction swapped segments");
        Ok(installed)
    }

    /// Adds to `transaction` the removal of each replaced segment (as the
    /// owner read it, unchanged since: compared by revision) and its
    /// `deleted/` record.
    async fn retire_replaced(
        &self,
        request: &ReplaceSegmentsRequest,
        transaction: &mut Transaction,
    ) -> Result<(), NameServerError> {
        let (topic, partition) = (request.topic.as_str(), request.partition);
        let now = now_ms();
        for old in &request.replaced {
            let key = keys::segment(topic, partition, old.segment_id);
            let stored = self.read_as::<SegmentInfo>(&key).await?;
            let Some((current, revision)) = stored else {
                return Err(stale(format!("segment {} is gone", old.segment_id)));
            };
            if current != *old {
                return Err(stale(format!(
                    "segment {} changed since the pass read it",
                    old.segment_id
                )));
            }
            transaction
                .compares
                .push(Compare::ModRevisionEquals(key.clone(), revision));
            transaction.deletes.push(key);
            let deleted = CompactionRecord {
                segment: Some(current),
                kind: CompactionRecordKind::Replaced as i32,
                recorded_at_ms: now,
            };
            transaction.puts.push(Put::new(
                keys::compaction_deleted(topic, partition, old.segment_id),
                keys::encode(&deleted),
            ));
        }
        Ok(())
    }

    /// Adds to `transaction` each compacted segment, CLOSED, in place of its
    /// placement record (compared by revision); the segments installed.
    async fn install_compacted(
        &self,
        request: &ReplaceSegmentsRequest,
        transaction: &mut Transaction,
    ) -> Result<Vec<SegmentInfo>, NameServerError> {
        let (topic, partition) = (request.topic.as_str(), request.partition);
        let mut installed = Vec::with_capacity(request.compacted.len());
        for new in &request.compacted {
            let key = keys::compaction(topic, partition, new.segment_id);
            let stored = self.read_as::<CompactionRecord>(&key).await?;
            let Some((record, revision)) = stored else {
                return Err(stale(format!(
                    "segment {} was not placed for compaction",
                    new.segment_id
                )));
            };
            let placed = record.segment.unwrap_or_default();
            check_matches_placement(new, &placed, record.kind)?;
            transaction
                .compares
                .push(Compare::ModRevisionEquals(key.clone(), revision));
            transaction.deletes.push(key);
            let segment_key = keys::segment(topic, partition, new.segment_id);
            transaction
                .compares
                .push(Compare::Absent(segment_key.clone()));
            let segment = SegmentInfo {
                state: SegmentState::Closed as i32,
                size_bytes: new.size_bytes,
                max_timestamp_ms: new.max_timestamp_ms,
                first_compacted_at_ms: new.first_compacted_at_ms,
                ..placed
            };
            transaction
                .puts
                .push(Put::new(segment_key, keys::encode(&segment)));
            installed.push(segment);
        }
        Ok(installed)
    }

    /// `ListCompactions`: the partition's placement and replaced records.
    pub(crate) async fn do_list_compactions(
        &self,
        request: ListCompactionsRequest,
    ) -> Result<Vec<CompactionRecord>, NameServerError> {
        self.check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        let mut records = Vec::new();
        let prefix = keys::compactions_of(&request.topic, request.partition);
        for KeyValue { key, value, .. } in self.store.range(&prefix).await? {
            match keys::decode::<CompactionRecord>(&key, &value) {
                Ok(record) => records.push(record),
                Err(error) => tracing::warn!(%error, "skipping an undecodable compaction record"),
            }
        }
        Ok(records)
    }

    /// `ForgetCompactions`: deletes records whose copies the owner deleted.
    pub(crate) async fn do_forget_compactions(
        &self,
        request: ForgetCompactionsRequest,
    ) -> Result<(), NameServerError> {
        let count = request.placed_segment_ids.len() + request.replaced_segment_ids.len();
        if count > MAX_FORGOTTEN_PER_REQUEST {
            return Err(invalid(format!(
                "{count} records in one request; the limit is {MAX_FORGOTTEN_PER_REQUEST}"
            )));
        }
        let (_, ownership) = self
            .check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        let (topic, partition) = (request.topic.as_str(), request.partition);
        let deletes = request
            .placed_segment_ids
            .iter()
            .map(|id| keys::compaction(topic, partition, *id))
            .chain(
                request
                    .replaced_segment_ids
                    .iter()
                    .map(|id| keys::compaction_deleted(topic, partition, *id)),
            )
            .collect();
        let transaction = Transaction {
            compares: vec![ownership],
            puts: Vec::new(),
            deletes,
        };
        self.commit_as_owner(transaction, topic, partition, request.epoch)
            .await
    }

    /// A key's value decoded, with its revision; `None` if absent.
    async fn read_as<T: prost::Message + Default>(
        &self,
        key: &str,
    ) -> Result<Option<(T, i64)>, NameServerError> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(entry) => Ok(Some((keys::decode(key, &entry.value)?, entry.mod_revision))),
        }
    }
}

/// A refused swap: the pass worked on metadata that changed; it retries
/// from fresh metadata.
fn stale(reason: String) -> NameServerError {
    NameServerError::Conflict(format!("compaction swap refused: {reason}; retry the pass"))
}

/// Both sides non-empty and bounded, each contiguous, covering the same
/// `[base, end)`, no id twice.
fn check_swap_shape(request: &ReplaceSegmentsRequest) -> Result<(), NameServerError> {
    let (old, new) = (&request.replaced, &request.compacted);
    if old.is_empty()
        || new.is_empty()
        || old.len() > MAX_SEGMENTS_PER_SWAP
        || new.len() > MAX_SEGMENTS_PER_SWAP
    {
        return Err(invalid(format!(
            "a swap replaces 1 ..= {MAX_SEGMENTS_PER_SWAP} segments by 1 ..= {MAX_SEGMENTS_PER_SWAP}; got {} by {}",
            old.len(),
            new.len()
        )));
    }
    let span_of = |segments: &[SegmentInfo], side: &str| -> Result<(u64, u64), NameServerError> {
        let mut expected = segments[0].base_offset;
        for segment in segments {
            if segment.base_offset != expected || segment.end_offset < segment.base_offset {
                return Err(invalid(format!(
                    "the {side} segments must be contiguous in offset order; segment {} covers [{}, {}) where {expected} was expected",
                    segment.segment_id, segment.base_offset, segment.end_offset
                )));
            }
            expected = segment.end_offset;
        }
        Ok((segments[0].base_offset, expected))
    };
    let old_span = span_of(old, "replaced")?;
    let new_span = span_of(new, "compacted")?;
    if old_span != new_span {
        return Err(invalid(format!(
            "the compacted segments cover [{}, {}), the replaced ones [{}, {}): offsets never change",
            new_span.0, new_span.1, old_span.0, old_span.1
        )));
    }
    let mut ids: Vec<u64> = old
        .iter()
        .chain(new.iter())
        .map(|segment| segment.segment_id)
        .collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(invalid("a segment id appears twice in the swap"));
    }
    Ok(())
}

/// The new segment is the one placed: same id, range and replicas.
fn check_matches_placement(
    new: &SegmentInfo,
    placed: &SegmentInfo,
    kind: i32,
) -> Result<(), NameServerError> {
    if kind != CompactionRecordKind::Placed as i32
        || placed.segment_id != new.segment_id
        || placed.base_offset != new.base_offset
        || placed.end_offset != new.end_offset
        || placed.replicas != new.replicas
    {
        return Err(invalid(format!(
            "segment {} [{}, {}) is not the one placed for compaction",
            new.segment_id, new.base_offset, new.end_offset
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(segment_id: u64, base_offset: u64, end_offset: u64) -> SegmentInfo {
        SegmentInfo {
            segment_id,
            base_offset,
            end_offset,
            ..SegmentInfo::default()
        }
    }

    fn swap(replaced: Vec<SegmentInfo>, compacted: Vec<SegmentInfo>) -> ReplaceSegmentsRequest {
        ReplaceSegmentsRequest {
            topic: "t".into(),
            partition: 0,
            epoch: 1,
            replaced,
            compacted,
        }
    }

    #[test]
    fn swaps_must_cover_the_same_contiguous_offsets() {
        let ok = swap(
            vec![segment(1, 0, 10), segment(2, 10, 20)],
            vec![segment(3, 0, 10), segment(4, 10, 20)],
        );
        assert!(check_swap_shape(&ok).is_ok());
        let too_many: Vec<SegmentInfo> = (0..=MAX_SEGMENTS_PER_SWAP as u64)
            .map(|index| segment(100 + index, index, index + 1))
            .collect();
        for bad in [
            swap(vec![], vec![segment(3, 0, 10)]),
            swap(vec![segment(1, 0, 10)], vec![]),
            swap(vec![segment(1, 0, 10)], vec![segment(3, 0, 9)]),
            swap(vec![segment(1, 0, 10)], vec![segment(3, 1, 10)]),
            swap(
                vec![segment(1, 0, 10), segment(2, 11, 20)],
                vec![segment(3, 0, 20)],
            ),
            swap(vec![segment(1, 0, 10)], vec![segment(1, 0, 10)]),
            swap(vec![segment(1, 5, 4)], vec![segment(3, 5, 4)]),
            swap(
                too_many.clone(),
                vec![segment(3, 0, MAX_SEGMENTS_PER_SWAP as u64 + 1)],
            ),
        ] {
            assert!(
                matches!(
                    check_swap_shape(&bad),
                    Err(NameServerError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        // The maximum itself passes.
        let most: Vec<SegmentInfo> = too_many[..MAX_SEGMENTS_PER_SWAP].to_vec();
        let covering = segment(1, 0, MAX_SEGMENTS_PER_SWAP as u64);
        assert!(check_swap_shape(&swap(most, vec![covering])).is_ok());
    }

    #[test]
    fn only_the_placed_segment_is_installed() {
        let placed = segment(3, 0, 10);
        let kind = CompactionRecordKind::Placed as i32;
        assert!(check_matches_placement(&placed, &placed, kind).is_ok());
        assert!(check_matches_placement(&segment(3, 0, 11), &placed, kind).is_err());
        assert!(
            check_matches_placement(&placed, &placed, CompactionRecordKind::Replaced as i32)
                .is_err()
        );
        let mut moved = placed.clone();
        moved
            .replicas
            .push(sluice_proto::v1::SegmentReplica::default());
        assert!(check_matches_placement(&moved, &placed, kind).is_err());
    }
}
