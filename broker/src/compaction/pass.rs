//! One compaction pass over one partition (ADR 0016 §8): plan, key map
//! over the dirty segments, rewrite of `[log start, mapped_end)` into new
//! segments at the same offsets, swap. IO at the edge of the pure
//! `plan`, `key_map` and `rewrite`.

use super::key_map::KeyMap;
use super::plan::{self, Bounds, NotDue, SegmentView};
use super::rewrite::{self, Aborted, AbortedRange, MapError, Rewriter};
use super::writer::{delete_copies, Pacer, SegmentWriter};
use crate::clients::nameserver_call;
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::Shared;
use bytes::{Bytes, BytesMut};
use sluice_proto::batch::BatchIter;
use sluice_proto::v1::{
    ForgetCompactionsRequest, PlaceCompactedSegmentRequest, ReplaceSegmentsRequest, SegmentInfo,
    SegmentState,
};

/// Most old segments one swap replaces (the nameserver's bound); a pass
/// over more swaps them in groups from the log start.
const MAX_SEGMENTS_PER_SWAP: usize = 64;

/// What a pass did.
#[derive(Debug, Default)]
pub(super) struct PassReport {
    pub segments_replaced: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub removed_offsets: u64,
    pub keys_mapped: u64,
    pub key_map_capacity: u64,
}

/// Runs a pass if one is due; `Ok(None)` if not.
pub(super) async fn run_pass(
    shared: &Shared,
    partition: &Partition,
) -> Result<Option<PassReport>, BrokerError> {
    let config = partition.config();
    let status = partition.status();
    let Some(last_stable_offset) = status.last_stable_offset else {
        return Ok(None);
    };
    let mut segments = partition.segments();
    segments.sort_by_key(|segment| segment.base_offset);
    let views: Vec<SegmentView> = segments.iter().map(view_of).collect();
    let bounds = Bounds {
        last_stable_offset: last_stable_offset.min(status.high_watermark),
        rebuild_window_start: crate::idempotence::window_start(
            &segments,
            shared.config.produce.producer_state_rebuild_bytes,
        ),
        now_ms: sluice_proto::now_unix_ms(),
        min_compaction_lag_ms: config.min_compaction_lag_ms,
        dirty_ratio_percent: config.min_cleanable_dirty_ratio_percent,
    };
    let due = match plan::plan(&views, &bounds) {
        Ok(due) => due,
        Err(NotDue::NothingCleanable | NotDue::NothingDirty | NotDue::BelowRatio { .. }) => {
            return Ok(None)
        }
    };
    let compaction = &shared.config.compaction;
    let mut pacer = Pacer::new(compaction.max_bytes_per_second);
    let start = segments[0].base_offset;
    let aborted = Aborted(
        partition
            .aborted_in(start, due.first_uncleanable)
            .into_iter()
            .map(|entry| AbortedRange {
                producer_id: entry.producer_id,
                first_offset: entry.first_offset,
                marker_offset: entry.marker_offset,
            })
            .collect(),
    );
    let mut map = KeyMap::new(compaction.key_map_bytes);
    let mapped = build_map(
        shared,
        partition,
        &segments[due.dirty_from..due.cleanable],
        &mut map,
        &aborted,
        &mut pacer,
    )
    .await?;
    let rewrite_end = due.dirty_from + mapped;
    let mut report = PassReport {
        keys_mapped: map.len(),
        key_map_capacity: map.capacity(),
        ..PassReport::default()
    };
    let now_ms = u64::try_from(bounds.now_ms).unwrap_or(0);
    for group in segments[..rewrite_end].chunks(MAX_SEGMENTS_PER_SWAP) {
        let context = PassContext {
            shared,
            partition,
            map: &map,
            aborted: &aborted,
            now_ms,
        };
        rewrite_and_swap(&context, group, &mut pacer, &mut report).await?;
    }
    Ok(Some(report))
}

fn view_of(segment: &SegmentInfo) -> SegmentView {
    SegmentView {
        segment_id: segment.segment_id,
        base_offset: segment.base_offset,
        end_offset: segment.end_offset,
        size_bytes: segment.size_bytes,
        max_timestamp_ms: segment.max_timestamp_ms,
        closed: segment.state == SegmentState::Closed as i32,
        damaged: !segment.lost_ranges.is_empty() || segment.data_loss_accepted,
        first_compacted_at_ms: segment.first_compacted_at_ms,
    }
}

/// Maps the dirty segments in order, stopping before the first that does
/// not fit whole; the number mapped. A first segment that alone does not
/// fit fails the pass (raise `[compaction] key_map_bytes`).
async fn build_map(
    shared: &Shared,
    partition: &Partition,
    dirty: &[SegmentInfo],
    map: &mut KeyMap,
    aborted: &Aborted,
    pacer: &mut Pacer,
) -> Result<usize, BrokerError> {
    for (index, segment) in dirty.iter().enumerate() {
        let mut offset = segment.base_offset;
        while offset < segment.end_offset {
            let chunk = read_chunk(shared, partition, segment, offset).await?;
            pacer.pace(chunk.len() as u64).await;
            offset = end_of(&chunk, offset)?;
            match rewrite::map_chunk(map, &chunk, aborted) {
                Ok(()) => {}
                Err(MapError::Full(_)) if index > 0 => return Ok(index),
                Err(MapError::Full(full)) => {
                    return Err(BrokerError::Internal(format!(
                        "compaction of {}: segment {} alone has more keys than [compaction] key_map_bytes holds ({full:?}); raise it",
                        partition.key, segment.segment_id
                    )))
                }
                Err(MapError::Corrupt(reason)) => {
                    return Err(BrokerError::Internal(format!(
                        "compaction of {}: segment {} holds a corrupt batch: {reason}",
                        partition.key, segment.segment_id
                    )))
                }
            }
        }
    }
    Ok(dirty.len())
}

/// Whole batches of `segment` from `offset`.
async fn read_chunk(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    offset: u64,
) -> Result<Bytes, BrokerError> {
    let max_bytes = usize::try_from(shared.config.compaction.read_chunk_bytes).unwrap_or(1 << 20);
    crate::replica_io::read_segment(
        &shared.clients,
        &partition.key,
        segment,
        offset,
        segment.end_offset,
        max_bytes,
    )
    .await
}

/// The offset after the last batch of `chunk`, which must pass `offset`.
fn end_of(chunk: &[u8], offset: u64) -> Result<u64, BrokerError> {
    let mut end = offset;
    for item in BatchIter::new(chunk) {
        let (_, header, _) = item.map_err(|error| {
            BrokerError::Internal(format!("compaction read a corrupt batch: {error}"))
        })?;
        end = header.end_offset();
    }
    if end <= offset {
        return Err(BrokerError::Internal(format!(
            "compaction read made no progress at {offset}"
        )));
    }
    Ok(end)
}

/// What every segment rewrite of a pass shares.
struct PassContext<'a> {
    shared: &'a Shared,
    partition: &'a Partition,
    map: &'a KeyMap,
    aborted: &'a Aborted,
    now_ms: u64,
}

/// Rewrites `group` (contiguous old segments) and swaps the results in;
/// on any failure the written copies are deleted and their placements
/// forgotten, and the old segments stay.
async fn rewrite_and_swap(
    context: &PassContext<'_>,
    group: &[SegmentInfo],
    pacer: &mut Pacer,
    report: &mut PassReport,
) -> Result<(), BrokerError> {
    let mut compacted = Vec::new();
    let mut outcome = Ok(());
    for segment in group
        .iter()
        .filter(|segment| segment.end_offset > segment.base_offset)
    {
        match rewrite_segment(context, segment, pacer, report).await {
            Ok(new) => compacted.push(new),
            Err((placed, error)) => {
                compacted.extend(placed);
                outcome = Err(error);
                break;
            }
        }
    }
    if outcome.is_ok() && !compacted.is_empty() {
        outcome = swap(context, group, &compacted).await;
        if outcome.is_ok() {
            report.segments_replaced += group.len();
            return Ok(());
        }
    }
    give_up(context, &compacted).await;
    outcome
}

/// Rewrites one old segment into a new one placed by the nameserver;
/// on failure returns the placement (if any) with the error.
async fn rewrite_segment(
    context: &PassContext<'_>,
    old: &SegmentInfo,
    pacer: &mut Pacer,
    report: &mut PassReport,
) -> Result<SegmentInfo, (Option<SegmentInfo>, BrokerError)> {
    let (shared, partition) = (context.shared, context.partition);
    let placed = nameserver_call!(
        &shared.clients,
        place_compacted_segment,
        PlaceCompactedSegmentRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            epoch: partition.epoch,
            base_offset: old.base_offset,
            end_offset: old.end_offset,
            exclude_store_ids: Vec::new(),
        }
    )
    .map_err(|error| (None, error))?;
    let written = write_segment(context, old, placed.clone(), pacer).await;
    let (new, stats) = written.map_err(|error| (Some(placed), error))?;
    report.bytes_before += old.size_bytes;
    report.bytes_after += new.size_bytes;
    report.removed_offsets += stats.removed_offsets;
    Ok(new)
}

async fn write_segment(
    context: &PassContext<'_>,
    old: &SegmentInfo,
    placed: SegmentInfo,
    pacer: &mut Pacer,
) -> Result<(SegmentInfo, rewrite::RewriteStats), BrokerError> {
    let (shared, partition) = (context.shared, context.partition);
    let config = partition.config();
    let mut writer = SegmentWriter::create(
        &shared.clients,
        placed,
        partition.epoch,
        config.ack_quorum,
        config.durability,
    )
    .await?;
    let expired = rewrite::tombstones_expired(
        old.first_compacted_at_ms,
        config.delete_retention_ms,
        sluice_proto::now_unix_ms(),
    );
    let writer_epoch = u32::try_from(partition.epoch).unwrap_or(u32::MAX);
    let mut rewriter = Rewriter::new(
        context.map,
        context.aborted,
        old.base_offset,
        old.end_offset,
        expired,
        writer_epoch,
    );
    while rewriter.next_offset() < old.end_offset {
        let chunk = read_chunk(shared, partition, old, rewriter.next_offset()).await?;
        let output = rewriter.push(&chunk).map_err(|error| {
            BrokerError::Internal(format!("compaction of {}: {error}", partition.key))
        })?;
        let joined = join(output);
        pacer.pace((chunk.len() + joined.len()) as u64).await;
        writer.append(joined).await?;
    }
    let (tail, stats) = rewriter.finish().map_err(|error| {
        BrokerError::Internal(format!("compaction of {}: {error}", partition.key))
    })?;
    writer.append(join(tail)).await?;
    let size_bytes = writer.written_bytes();
    let sealed = writer.seal().await?;
    let first_compacted_at_ms = match old.first_compacted_at_ms {
        0 => context.now_ms.max(1),
        at => at,
    };
    Ok((
        SegmentInfo {
            size_bytes,
            max_timestamp_ms: old.max_timestamp_ms,
            first_compacted_at_ms,
            ..sealed
        },
        stats,
    ))
}

fn join(batches: Vec<Bytes>) -> Bytes {
    let mut joined = BytesMut::with_capacity(batches.iter().map(Bytes::len).sum());
    for batch in batches {
        joined.extend_from_slice(&batch);
    }
    joined.freeze()
}

/// The swap: all of `group` by all of `compacted`, or nothing.
async fn swap(
    context: &PassContext<'_>,
    group: &[SegmentInfo],
    compacted: &[SegmentInfo],
) -> Result<(), BrokerError> {
    let partition = context.partition;
    let installed = nameserver_call!(
        &context.shared.clients,
        replace_segments,
        ReplaceSegmentsRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            epoch: partition.epoch,
            replaced: group.to_vec(),
            compacted: compacted.to_vec(),
        }
    )?;
    let replaced: Vec<u64> = group.iter().map(|segment| segment.segment_id).collect();
    partition.segments_replaced(&replaced, installed.segments);
    // Reads of the range now go to the compacted segments.
    let end = group.last().map_or(0, |segment| segment.end_offset);
    context.shared.tail_cache.evict_below(&partition.key, end);
    Ok(())
}

/// After a failed rewrite or swap: the new copies go, their placements
/// are forgotten (if either fails, the cleanup of the next round does it).
async fn give_up(context: &PassContext<'_>, placed: &[SegmentInfo]) {
    let partition = context.partition;
    let mut forgotten = Vec::new();
    for segment in placed {
        if delete_copies(&context.shared.clients, segment).await {
            forgotten.push(segment.segment_id);
        }
    }
    if forgotten.is_empty() {
        return;
    }
    let forget = nameserver_call!(
        &context.shared.clients,
        forget_compactions,
        ForgetCompactionsRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            epoch: partition.epoch,
            placed_segment_ids: forgotten,
            replaced_segment_ids: Vec::new(),
        }
    );
    if let Err(error) = forget {
        tracing::warn!(partition = %partition.key, %error, "compaction: forgetting abandoned placements failed; the next round retries");
    }
}
