//! Takeover and the segment changes around the append pipeline: fencing
//! an open segment and recovering its end (ADR 0008), closing it, creating
//! the next segment on a new ensemble and opening its append streams, and
//! closing a segment rolled away from in the background.

use super::task::Backoff;
use super::{never, Partition};
use crate::clients::{nameserver_call, request};
use crate::closed_damage;
use crate::decisions::{closing_would_rewind, segment_for_offset};
use crate::decisions::{effective_ack_quorum, fence_quorum, recover_segment};
use crate::decisions::{FencedCopy, OffsetRange, SegmentRecovery};
use crate::error::BrokerError;
use crate::lost_ranges::{lost_range_at, read_end_before_lost};
use crate::recovery_plan::Piece;
use crate::replica_io::{copy_range, open_append_stream, read_segment, CopyRange};
use crate::Shared;
use futures::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures::StreamExt;
use sluice_proto::v1::{
    AppendRequest, AppendResponse, CloseSegmentRequest, CreateSegmentRequest, DamagedRange,
    DeleteSegmentsRequest, Durability, ListSegmentsRequest, SealSegmentRequest, SegmentInfo,
    SegmentState, StoreCreateSegmentRequest, TopicConfig,
};
use sluice_proto::ErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most bytes one store read of a producer-state rebuild asks for.
const REBUILD_READ_BYTES: u32 = 4 * 1024 * 1024;

/// Attempts to seal and close a segment rolled away from before leaving it
/// to the next takeover (which fences and closes any open segment).
const ROLLED_SEGMENT_CLOSE_ATTEMPTS_MAX: u32 = 10;

pub(super) type ReplicaResponses =
    SelectAll<BoxStream<'static, (usize, Result<AppendResponse, tonic::Status>)>>;

/// The open segment being appended to, with one ordered stream per
/// replica, in the order of `info.replicas`.
pub(super) struct OpenSegment {
    pub info: SegmentInfo,
    pub senders: Vec<mpsc::Sender<AppendRequest>>,
    pub responses: ReplicaResponses,
    pub opened_at: Instant,
}

pub(super) fn durability(config: &TopicConfig) -> i32 {
    match config.durability() {
        Durability::Unspecified => Durability::Fsync as i32,
        other => other as i32,
    }
}

/// What fencing and recovering an open segment established.
struct RecoveredSegment {
    end_offset: u64,
    size_bytes: u64,
    max_timestamp_ms: i64,
    /// Ranges no copy held intact, closed over because an operator
    /// accepted their loss.
    lost: Vec<OffsetRange>,
}

/// The answers to sealing an open segment's replicas.
#[derive(Default)]
struct Seals {
    copies: Vec<FencedCopy>,
    /// Replicas whose store answered STORAGE_CORRUPT: it lost the segment
    /// (fenced, but holding nothing).
    lost: Vec<usize>,
    last_error: Option<BrokerError>,
}

/// Seals `segment` on its replicas in parallel and collects the answers:
/// all of them, or those in by `fence_grace_ms` after a fence quorum.
async fn seal_replicas(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    quorum: usize,
) -> Seals {
    let replicas = &segment.replicas;
    let mut seals = FuturesUnordered::new();
    for (index, replica) in replicas.iter().enumerate() {
        let seal = SealSegmentRequest {
            segment_id: segment.segment_id,
            writer_epoch: partition.epoch,
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            base_offset: segment.base_offset,
            durability: durability(&partition.config()),
        };
        let store = shared.clients.store(&replica.address);
        let timeout = shared.clients.store_timeout;
        seals.push(async move {
            let answer = match store {
                Ok(mut store) => store
                    .seal_segment(request(seal, timeout))
                    .await
                    .map(|response| response.into_inner())
                    .map_err(|status| BrokerError::remote("store SealSegment", &status)),
                Err(error) => Err(error),
            };
            (index, answer)
        });
    }
    let mut answers = Seals::default();
    let grace = Duration::from_millis(shared.config.replication.fence_grace_ms);
    let mut grace_deadline: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            next = seals.next() => next,
            _ = tokio::time::sleep_until(grace_deadline.unwrap_or_else(never)), if grace_deadline.is_some() => None,
        };
        let Some((index, answer)) = next else { break };
        let store = &replicas[index].store_id;
        match answer {
            Ok(status) => {
                let copy = FencedCopy::from_status(index, &status);
                if !copy.damaged.is_empty() {
                    tracing::warn!(partition = %partition.key, segment = segment.segment_id, %store, end_offset = copy.end_offset, damaged = ?copy.damaged, "fenced copy is damaged; it counts for the end, not for serving its damage");
                }
                answers.copies.push(copy);
            }
            Err(error) if error.code() == ErrorCode::StorageCorrupt => {
                tracing::error!(partition = %partition.key, segment = segment.segment_id, %store, %error, "the store lost its copy of an open segment");
                answers.lost.push(index);
            }
            Err(error) => {
                tracing::warn!(partition = %partition.key, segment = segment.segment_id, %store, %error, "cannot fence a replica");
                answers.last_error = Some(error);
            }
        }
        if answers.copies.len() + answers.lost.len() >= quorum && grace_deadline.is_none() {
            grace_deadline = Some(Instant::now() + grace);
        }
    }
    answers
}

/// Fences an open segment and recovers its end (ADR 0008): seals it on its
/// replicas in parallel, waits for a fence quorum (and briefly for the
/// rest), and decides with [`recover_segment`]: the segment ends at the
/// highest end a fenced copy reports (damage never shortens it, so no
/// offset is reused), the undamaged short copies get the missing tail,
/// and damaged copies are left to repair (which deletes and recopies them
/// on their store once the segment is closed). A range no fenced copy
/// holds intact keeps the partition offline
/// ([`BrokerError::PartitionOffline`]) until an operator accepts its loss.
async fn fence_and_recover(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
) -> Result<RecoveredSegment, BrokerError> {
    let replicas = &segment.replicas;
    if replicas.is_empty() {
        return Ok(RecoveredSegment {
            end_offset: segment.base_offset,
            size_bytes: 0,
            max_timestamp_ms: segment.max_timestamp_ms,
            lost: Vec::new(),
        });
    }
    let ack_quorum = effective_ack_quorum(partition.config().ack_quorum, replicas.len());
    let quorum = fence_quorum(replicas.len(), ack_quorum);
    let seals = seal_replicas(shared, partition, segment, quorum).await;
    let decision = recover_segment(
        segment.base_offset,
        &seals.copies,
        seals.lost.len(),
        quorum,
        segment.data_loss_accepted,
        segment.accepted_end_offset,
    );
    match decision {
        SegmentRecovery::Unfenced { answered, quorum } => Err(BrokerError::Unavailable(format!(
            "fenced {answered} of the {} replicas of segment {} of {}, need {quorum}{}",
            replicas.len(),
            segment.segment_id,
            partition.key,
            seals
                .last_error
                .map(|error| format!(" (last error: {error})"))
                .unwrap_or_default()
        ))),
        SegmentRecovery::Offline {
            end_offset,
            unreadable,
            end_unknown,
        } => Err(BrokerError::PartitionOffline(offline_reason(
            partition,
            segment,
            &seals,
            (end_offset, &unreadable, end_unknown),
        ))),
        SegmentRecovery::Close {
            end_offset,
            size_bytes,
            max_timestamp_ms,
            fills,
            lost,
            damaged_copies,
        } => {
            for fill in &fills {
                for piece in &fill.pieces {
                    copy_piece(shared, partition, segment, piece, fill.target).await?;
                }
            }
            if !damaged_copies.is_empty() || !lost.is_empty() {
                let stores: Vec<&str> = damaged_copies
                    .iter()
                    .map(|index| replicas[*index].store_id.as_str())
                    .collect();
                tracing::warn!(partition = %partition.key, segment = segment.segment_id, end_offset, damaged_stores = ?stores, lost = ?lost, "closing a segment with damaged copies at the highest end reported; repair recopies them");
            }
            Ok(RecoveredSegment {
                end_offset,
                size_bytes,
                max_timestamp_ms,
                lost,
            })
        }
    }
}

/// The operator's explanation of an offline partition: the segment, the
/// stores, the damaged ranges and what decides.
fn offline_reason(
    partition: &Partition,
    segment: &SegmentInfo,
    seals: &Seals,
    (end_offset, unreadable, end_unknown): (u64, &[OffsetRange], bool),
) -> String {
    let replicas = &segment.replicas;
    let damaged: Vec<String> = seals
        .copies
        .iter()
        .filter(|copy| !copy.damaged.is_empty())
        .map(|copy| {
            let ranges: Vec<String> = copy.damaged.iter().map(ToString::to_string).collect();
            format!(
                "{} damaged at {}",
                replicas[copy.replica].store_id,
                ranges.join(", ")
            )
        })
        .chain(
            seals
                .lost
                .iter()
                .map(|index| format!("{} lost the segment", replicas[*index].store_id)),
        )
        .collect();
    let ranges: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
    let what = if end_unknown {
        format!(
            "too few copies survive to know where it ends (at least {end_offset}); recover with --resume-at-offset at or beyond the highest offset ever produced"
        )
    } else {
        format!(
            "offsets {} are held intact by no copy; its copies end at {end_offset}",
            ranges.join(", ")
        )
    };
    format!(
        "partition {} is offline: segment {} (base offset {}): {what} ({}). An operator decides: `sluice partition recover {} {} --accept-data-loss` continues the log after offset {end_offset} without those offsets",
        partition.key,
        segment.segment_id,
        segment.base_offset,
        damaged.join("; "),
        partition.key.topic,
        partition.key.partition
    )
}

/// Copies one piece of a fenced segment's missing tail from one replica
/// to another.
async fn copy_piece(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    piece: &Piece,
    target: usize,
) -> Result<(), BrokerError> {
    let source = &segment.replicas[piece.source];
    let target = &segment.replicas[target];
    let range = CopyRange {
        segment_id: segment.segment_id,
        source,
        target,
        from_offset: piece.start,
        end_offset: piece.end,
        fence_epoch: partition.epoch,
        chunk_bytes: u32::try_from(shared.config.fetch.max_bytes).unwrap_or(u32::MAX),
    };
    copy_range(&shared.clients, &range, &shared.repair.bytes_copied).await?;
    tracing::info!(partition = %partition.key, segment = segment.segment_id, from = %source.store_id, to = %target.store_id, start = piece.start, end = piece.end, "re-replicated the tail of a fenced segment");
    Ok(())
}

/// Takeover (and recovery, and a roll whose next segment could not be
/// prepared): fence and close whatever segment is open, then create a new
/// segment at the recovered end on a new ensemble (avoiding `excluded`
/// stores, which just failed) and open the append streams. A store that
/// fails while the segment is being opened is added to `excluded` for the
/// next attempt.
///
/// A segment created ahead of a roll (see [`serve`]) holds nothing until
/// every append to its predecessor reached the ack quorum, so if it starts
/// beyond where its predecessor was recovered to, the owner stopped before
/// using it: it is empty and is deleted rather than closed, which would
/// leave a hole in the offsets.
pub(super) async fn open_segment(
    shared: &Shared,
    partition: &Partition,
    excluded: &mut Vec<String>,
) -> Result<OpenSegment, BrokerError> {
    let key = &partition.key;
    let epoch = partition.epoch;
    let clients = &shared.clients;
    let mut segments = nameserver_call!(
        clients,
        list_segments,
        ListSegmentsRequest {
            topic: key.topic.clone(),
            partition: key.partition,
        }
    )?
    .segments;
    segments.sort_by_key(|segment| (segment.base_offset, segment.segment_id));
    let mut unused: Vec<u64> = Vec::new();
    let mut previous_end: Option<u64> = None;
    for segment in segments.iter_mut() {
        if segment.state() != SegmentState::Open {
            previous_end = Some(segment.end_offset);
            continue;
        }
        let recovered = fence_and_recover(shared, partition, segment).await?;
        refuse_rewind(partition, segment, recovered.end_offset)?;
        if previous_end.is_some_and(|end| segment.base_offset > end) {
            if recovered.end_offset == segment.base_offset {
                unused.push(segment.segment_id);
                continue;
            }
            // Cannot happen (see above); closing it keeps what is there.
            tracing::error!(partition = %key, segment = segment.segment_id, base_offset = segment.base_offset, previous_end, "open segment with data starts beyond its predecessor's end");
        }
        *segment = nameserver_call!(
            clients,
            close_segment,
            CloseSegmentRequest {
                topic: key.topic.clone(),
                partition: key.partition,
                epoch,
                segment_id: segment.segment_id,
                end_offset: recovered.end_offset,
                size_bytes: recovered.size_bytes,
                max_timestamp_ms: recovered.max_timestamp_ms,
                lost_ranges: lost_ranges(&recovered.lost),
            }
        )?;
        previous_end = Some(segment.end_offset);
    }
    if !unused.is_empty() {
        nameserver_call!(
            clients,
            delete_segments,
            DeleteSegmentsRequest {
                topic: key.topic.clone(),
                partition: key.partition,
                epoch,
                segment_ids: unused.clone(),
            }
        )?;
        tracing::info!(partition = %key, segments = ?unused, "deleted segments created ahead of a roll that never happened");
        segments.retain(|segment| !unused.contains(&segment.segment_id));
    }
    let high_watermark = segments
        .last()
        .map(|segment| segment.end_offset)
        .unwrap_or(0);
    let log_start_offset = segments
        .first()
        .map(|segment| segment.base_offset)
        .unwrap_or(high_watermark);
    let opened = create_and_open(shared, partition, high_watermark, excluded).await?;
    segments.push(opened.info.clone());
    partition.set_segments(segments);
    partition.status.send_modify(|status| {
        status.high_watermark = high_watermark;
        status.log_start_offset = log_start_offset;
        status.loaded = true;
    });
    Ok(opened)
}

/// Lost ranges as the nameserver records them.
fn lost_ranges(lost: &[OffsetRange]) -> Vec<DamagedRange> {
    lost.iter()
        .map(|range| DamagedRange {
            start_offset: range.start,
            end_offset: range.end,
            detail: "accepted as lost by an operator".to_string(),
        })
        .collect()
}

/// Refuses to close a segment shorter than what this broker already
/// acknowledged from it: with every acknowledged append on `ack_quorum`
/// replicas and a fence quorum answering, the recovered end can only fall
/// below the high watermark if copies were damaged or lost, and closing it
/// there would hand the lost offsets to new data. The takeover is retried
/// (with backoff) instead, in case the missing copies come back.
fn refuse_rewind(
    partition: &Partition,
    segment: &SegmentInfo,
    recovered_end: u64,
) -> Result<(), BrokerError> {
    let status = partition.status();
    if closing_would_rewind(status.loaded, status.high_watermark, recovered_end) {
        return Err(BrokerError::Unavailable(format!(
            "the fenced copies of segment {} of {} end at {recovered_end}, below the acknowledged high watermark {}; not closing it shorter, which would reuse offsets",
            segment.segment_id, partition.key, status.high_watermark
        )));
    }
    Ok(())
}

/// Creates a segment at `base_offset` (in metadata, then on each replica)
/// on an ensemble avoiding `excluded`, and opens its append streams. A
/// store that fails here is added to `excluded`.
pub(super) async fn create_and_open(
    shared: &Shared,
    partition: &Partition,
    base_offset: u64,
    excluded: &mut Vec<String>,
) -> Result<OpenSegment, BrokerError> {
    let key = &partition.key;
    let created = nameserver_call!(
        &shared.clients,
        create_segment,
        CreateSegmentRequest {
            topic: key.topic.clone(),
            partition: key.partition,
            epoch: partition.epoch,
            base_offset,
            exclude_store_ids: excluded.clone(),
        }
    )?;
    if created.replicas.is_empty() {
        return Err(BrokerError::Unavailable(format!(
            "segment {} of {key} has no replicas",
            created.segment_id
        )));
    }
    let capacity = shared
        .config
        .produce
        .max_in_flight_appends_per_partition
        .max(1)
        + 1;
    // Created on every replica at once: each creation waits for a journal
    // fsync on its store.
    let create = StoreCreateSegmentRequest {
        segment_id: created.segment_id,
        topic: key.topic.clone(),
        partition: key.partition,
        base_offset: created.base_offset,
        writer_epoch: partition.epoch,
        durability: durability(&partition.config()),
    };
    let opened = futures::future::join_all(created.replicas.iter().map(|replica| {
        open_append_stream(&shared.clients, create.clone(), &replica.address, capacity)
    }))
    .await;
    let mut senders = Vec::with_capacity(created.replicas.len());
    let mut responses: ReplicaResponses = SelectAll::new();
    let mut failure = None;
    for (index, (replica, opened)) in created.replicas.iter().zip(opened).enumerate() {
        let (sender, stream) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                if !excluded.contains(&replica.store_id) {
                    excluded.push(replica.store_id.clone());
                }
                failure = Some(error);
                continue;
            }
        };
        senders.push(sender);
        // A stream that ends fails its replica at once rather than after
        // the acknowledgement timeout.
        let ended = futures::stream::once(async move {
            (
                index,
                Err(tonic::Status::unavailable(
                    "the store ended the append stream",
                )),
            )
        });
        responses.push(stream.map(move |item| (index, item)).chain(ended).boxed());
    }
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(OpenSegment {
        info: created,
        senders,
        responses,
        opened_at: Instant::now(),
    })
}

/// Seals and closes a segment the pipeline rolled away from, after every
/// append to it reached the ack quorum (so it ends at `end_offset`), while
/// the next segment already takes appends. Retried with backoff until it
/// succeeds or the partition stops; if it never does, the next takeover
/// fences and closes it like any open segment.
pub(super) async fn close_rolled_segment(
    shared: Arc<Shared>,
    partition: Arc<Partition>,
    segment: SegmentInfo,
    end_offset: u64,
) {
    let mut stopped = partition.stopped.subscribe();
    let mut backoff = Backoff::new(shared.config.replication.takeover_backoff_max_ms);
    let key = &partition.key;
    for attempt_number in 1..=ROLLED_SEGMENT_CLOSE_ATTEMPTS_MAX {
        let attempt = async {
            let recovered = fence_and_recover(&shared, &partition, &segment).await?;
            if recovered.end_offset != end_offset {
                tracing::error!(partition = %key, segment = segment.segment_id, end_offset, recovered = recovered.end_offset, "a rolled segment's copies do not end where its appends did");
            }
            nameserver_call!(
                &shared.clients,
                close_segment,
                CloseSegmentRequest {
                    topic: key.topic.clone(),
                    partition: key.partition,
                    epoch: partition.epoch,
                    segment_id: segment.segment_id,
                    end_offset: recovered.end_offset,
                    size_bytes: recovered.size_bytes,
                    max_timestamp_ms: recovered.max_timestamp_ms,
                    lost_ranges: lost_ranges(&recovered.lost),
                }
            )
        };
        let result = tokio::select! {
            result = attempt => result,
            _ = crate::wait_until_set(&mut stopped) => return,
        };
        match result {
            Ok(closed) => {
                partition.segment_updated(closed);
                return;
            }
            Err(error) => {
                tracing::warn!(partition = %key, segment = segment.segment_id, attempt_number, %error, "closing a rolled segment failed");
                let delay = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = crate::wait_until_set(&mut stopped) => return,
                }
            }
        }
    }
    tracing::warn!(partition = %key, segment = segment.segment_id, "giving up closing a rolled segment; the next takeover closes it");
}

/// After a failed read at `offset` of a closed segment: where the range
/// holding it ends if no copy holds it intact (every copy answered; a
/// closed segment damaged on every copy, reported by repair), so that the
/// partition serves without the producer state from that range rather
/// than not at all. None for any other failure.
async fn unreadable_on_every_copy(
    shared: &Shared,
    segment: &SegmentInfo,
    offset: u64,
    error: &BrokerError,
) -> Option<u64> {
    if segment.state() != SegmentState::Closed || error.code() != ErrorCode::StorageCorrupt {
        return None;
    }
    let holdings = crate::replica_io::holdings(&shared.clients, segment).await;
    if !closed_damage::all_known(&holdings) {
        return None;
    }
    closed_damage::unreadable_ranges(
        segment.base_offset,
        segment.end_offset,
        &holdings,
        &closed_damage::lost_of(segment),
    )
    .into_iter()
    .find(|range| range.contains(offset))
    .map(|range| range.end)
}

/// Restores the producer states and the transaction state (ADR 0016 §3.6)
/// of a partition whose pipeline just (re)opened after a takeover or a
/// failure, from the batch headers of its log (read from the stores, like
/// a fetch), in one pass from the earlier of the two starts. Does nothing
/// after a plain roll, where both are exact. An error fails the takeover,
/// which is retried: serving without the state could append duplicates or
/// serve an open transaction's records read-committed.
pub(super) async fn rebuild_partition_state(
    shared: &Shared,
    partition: &Partition,
) -> Result<(), BrokerError> {
    let status = partition.status();
    let segments = partition.segments();
    let window_bytes = shared.config.produce.producer_state_rebuild_bytes;
    let producer_start = partition.producer_states(|states| {
        states.rebuild_start(&segments, status.log_start_offset, window_bytes)
    });
    let window = crate::idempotence::window_start(&segments, window_bytes);
    let txn_start = super::txn_io::rebuild_start(shared, partition, window);
    let Some(start) = producer_start.into_iter().chain(txn_start).min() else {
        // Both exact; the high watermark may have moved (the seal).
        super::txn_io::finish_rebuild(partition);
        return Ok(());
    };
    if txn_start.is_some() {
        super::txn_io::reset(
            partition,
            &BrokerError::Recovering {
                topic: partition.key.topic.clone(),
                partition: partition.key.partition,
            },
        );
    }
    let high_watermark = status.high_watermark;
    let mut offset = start;
    while offset < high_watermark {
        let Some(batches) = read_for_rebuild(shared, partition, &segments, &mut offset).await?
        else {
            continue;
        };
        let next = apply_rebuild_read(partition, &batches, offset, producer_start, txn_start)?;
        if next <= offset {
            return Err(BrokerError::Unavailable(format!(
                "stores of {} returned nothing at offset {offset}",
                partition.key
            )));
        }
        offset = next;
    }
    let producers = partition.producer_states(|states| {
        if producer_start.is_some() {
            states.finish_rebuild();
        }
        states.len()
    });
    let (last_stable_offset, open_transactions) = super::txn_io::finish_rebuild(partition);
    tracing::info!(partition = %partition.key, from_offset = start, high_watermark, producers, ?last_stable_offset, open_transactions, "producer and transaction state rebuilt from the log");
    Ok(())
}

/// One read of the rebuild at `offset`: `None` (with `offset` moved past
/// it) for a range accepted as lost or damaged on every copy.
async fn read_for_rebuild(
    shared: &Shared,
    partition: &Partition,
    segments: &[SegmentInfo],
    offset: &mut u64,
) -> Result<Option<bytes::Bytes>, BrokerError> {
    let high_watermark = partition.status().high_watermark;
    let Some(segment) = segment_for_offset(segments, *offset) else {
        return Err(BrokerError::Internal(format!(
            "no segment of {} holds offset {offset} below the high watermark {high_watermark}",
            partition.key
        )));
    };
    if let Some(lost) = lost_range_at(segments, *offset) {
        // Accepted as lost: nothing to read there (idempotence has no
        // state from it, like a batch older than the window).
        *offset = lost.end;
        return Ok(None);
    }
    let end_offset = if segment.state() == SegmentState::Open {
        high_watermark
    } else {
        segment.end_offset.min(high_watermark)
    };
    // Stop a read before the next lost range.
    let end_offset = read_end_before_lost(segments, *offset, end_offset);
    let read = read_segment(
        &shared.clients,
        &partition.key,
        segment,
        *offset,
        end_offset,
        REBUILD_READ_BYTES as usize,
    )
    .await;
    match read {
        Ok(batches) => Ok(Some(batches)),
        Err(error) => match unreadable_on_every_copy(shared, segment, *offset, &error).await {
            Some(damage_end) => {
                tracing::warn!(partition = %partition.key, segment = segment.segment_id, from_offset = *offset, to_offset = damage_end, "producer and transaction state not rebuilt from a range of a closed segment damaged on every copy: a producer's retry of a batch there is not recognised as a duplicate, and a transaction open there is not known");
                *offset = damage_end;
                Ok(None)
            }
            None => Err(error),
        },
    }
}

/// Feeds one read to the states that are being rebuilt; returns the offset
/// after its last batch.
fn apply_rebuild_read(
    partition: &Partition,
    batches: &[u8],
    offset: u64,
    producer_start: Option<u64>,
    txn_start: Option<u64>,
) -> Result<u64, BrokerError> {
    let failed = |error: sluice_proto::batch::BatchError| {
        BrokerError::Internal(format!(
            "rebuilding the state of {} at offset {offset}: {error}",
            partition.key
        ))
    };
    let mut next = offset;
    for item in sluice_proto::batch::BatchIter::new(batches) {
        let (_, header, _) = item.map_err(failed)?;
        next = next.max(header.end_offset());
    }
    if let Some(producer_start) = producer_start {
        // Only from its own start: older batches would be remembered
        // after newer ones.
        partition
            .producer_states(|states| states.apply_log(batches, offset.max(producer_start)))
            .map_err(failed)?;
    }
    if let Some(txn_start) = txn_start {
        super::txn_io::apply_log(partition, batches, offset.max(txn_start));
    }
    Ok(next)
}
