//! Repair of closed segments with fewer good copies than their topic's
//! ensemble size: the partition's owner checks each copy (`GetSegmentStatus`)
//! and, from a complete copy, fills copies that missed the tail, recopies
//! damaged ones, and places new copies on other live stores in place of
//! stores that are gone or for segments written to a reduced ensemble.
//! Then it records the new replica list (conditional on its epoch).
//!
//! The owner does it because copying into a sealed segment needs an epoch
//! at least the segment's fence (ADR 0008), and the metadata update is
//! fenced by ownership like every other segment change. What to do is a
//! pure decision (`plan`); this module's loop is the IO around it.

use crate::clients::{nameserver_call, request};
use crate::closed_damage::{self, Holding};
use crate::partition::{Partition, Phase};
use crate::replica_io::{copy_range, holding_of, holding_on_error, CopyRange};
use crate::Shared;
use sluice_proto::v1::{
    CloseSegmentRequest, ClusterStatusRequest, ListSegmentsRequest, NodeInfo, SealSegmentRequest,
    SegmentInfo, SegmentReplica, SegmentState, SegmentStatusRequest, StoreCreateSegmentRequest,
    StoreDeleteSegmentRequest, UpdateSegmentReplicasRequest,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most segments repaired per partition and round, so one partition with a
/// long history does not hold up the others; the next round continues.
const MAX_REPAIRS_PER_PARTITION_PER_ROUND: usize = 4;

/// What one copy of a closed segment looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// Holds the whole segment, undamaged.
    Complete,
    /// Undamaged but ends at `end_offset`, before the segment's end (its
    /// store was down while the tail was written or recovered).
    Incomplete { end_offset: u64 },
    /// Corrupt below the segment's end, or missing on a live store.
    Damaged,
    /// The store is live but did not answer now: try again next round.
    Unreachable,
    /// The store has not been live for longer than the grace period.
    Gone,
}

/// What to do for one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// Replica index of the copy to read from.
    pub source: Option<usize>,
    /// Replicas to fill from their end to the segment's end.
    pub fill: Vec<(usize, u64)>,
    /// Replicas to delete and copy again from the start.
    pub recopy: Vec<usize>,
    /// Replicas to drop from the list.
    pub drop: Vec<usize>,
    /// Stores (ids) that get a new copy.
    pub add: Vec<String>,
}

impl RepairPlan {
    pub fn is_empty(&self) -> bool {
        self.fill.is_empty()
            && self.recopy.is_empty()
            && self.drop.is_empty()
            && self.add.is_empty()
    }
}

/// Decides the repair of one closed segment. `states` is per replica, in
/// replica order; `spares` are live stores not among the replicas, best
/// first. Nothing is done without a complete copy to copy from, and nothing
/// is dropped while its store might come back (`Unreachable`).
pub fn plan(
    states: &[CopyState],
    replica_ids: &[String],
    ensemble_size: usize,
    spares: &[String],
) -> RepairPlan {
    let Some(source) = states
        .iter()
        .position(|state| *state == CopyState::Complete)
    else {
        return RepairPlan::default();
    };
    let mut repair = RepairPlan {
        source: Some(source),
        ..RepairPlan::default()
    };
    for (index, state) in states.iter().enumerate() {
        match state {
            CopyState::Incomplete { end_offset } => repair.fill.push((index, *end_offset)),
            CopyState::Damaged => repair.recopy.push(index),
            CopyState::Gone => repair.drop.push(index),
            CopyState::Complete | CopyState::Unreachable => {}
        }
    }
    let kept = states.len() - repair.drop.len();
    let wanted = ensemble_size.saturating_sub(kept);
    repair.add = spares
        .iter()
        .filter(|spare| !replica_ids.contains(spare))
        .take(wanted)
        .cloned()
        .collect();
    if repair.add.len() < repair.drop.len() {
        // Not enough spares to replace every gone store: keep listing the
        // ones that cannot be replaced, so the segment's copy count is not
        // understated and a returning store is checked again.
        let keep = repair.drop.len() - repair.add.len();
        repair.drop.truncate(repair.drop.len() - keep);
    }
    repair
}

/// Counters shown in the broker's load report (`sluice cluster status`).
#[derive(Default)]
pub struct RepairProgress {
    pub in_progress: std::sync::atomic::AtomicU32,
    pub repaired_segments: std::sync::atomic::AtomicU64,
    pub bytes_copied: std::sync::atomic::AtomicU64,
}

pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(shared.config.replication.repair_interval_ms.max(1));
    // When each store was first seen not live, for the grace period.
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::wait_until_set(&mut shutdown) => return,
        }
        let status = nameserver_call!(&shared.clients, cluster_status, ClusterStatusRequest {});
        let live_stores = match status {
            Ok(status) => status.stores,
            Err(error) => {
                tracing::debug!(%error, "repair: cluster status unavailable; skipping this round");
                continue;
            }
        };
        let live_ids: HashSet<String> = live_stores
            .iter()
            .map(|store| store.node_id.clone())
            .collect();
        missing_since.retain(|store, _| !live_ids.contains(store));
        for partition in shared.partitions() {
            if partition.status().phase != Phase::Serving {
                continue;
            }
            for segment in partition.segments() {
                for replica in &segment.replicas {
                    if !live_ids.contains(&replica.store_id) {
                        missing_since
                            .entry(replica.store_id.clone())
                            .or_insert_with(Instant::now);
                    }
                }
            }
            repair_partition(&shared, &partition, &live_stores, &missing_since).await;
        }
    }
}

async fn repair_partition(
    shared: &Shared,
    partition: &Partition,
    live_stores: &[NodeInfo],
    missing_since: &HashMap<String, Instant>,
) {
    let ensemble_size = (partition.config().ensemble_size as usize).max(1);
    let grace = Duration::from_millis(shared.config.replication.repair_dead_store_grace_ms);
    let mut repairs = 0;
    let segments = partition.segments();
    let segment_ids: Vec<u64> = segments.iter().map(|segment| segment.segment_id).collect();
    shared
        .closed_damage
        .retain_segments(&partition.key, &segment_ids);
    for segment in segments {
        // Empty closed segments are repaired too: their replica list is
        // what the cluster status counts, and an empty copy is cheap.
        if segment.state() != SegmentState::Closed {
            continue;
        }
        if repairs >= MAX_REPAIRS_PER_PARTITION_PER_ROUND {
            break;
        }
        let (states, holdings) =
            check_copies(shared, &segment, live_stores, missing_since, grace).await;
        check_closed_damage(shared, partition, &segment, &holdings).await;
        let replica_ids: Vec<String> = segment
            .replicas
            .iter()
            .map(|replica| replica.store_id.clone())
            .collect();
        let mut spares: Vec<&NodeInfo> = live_stores
            .iter()
            .filter(|store| !replica_ids.contains(&store.node_id))
            .collect();
        spares.sort_by_key(|store| {
            (
                store.load.as_ref().map_or(0, |load| load.segments),
                store.node_id.clone(),
            )
        });
        let spare_ids: Vec<String> = spares.iter().map(|store| store.node_id.clone()).collect();
        let repair = plan(&states, &replica_ids, ensemble_size, &spare_ids);
        if repair.source.is_none() {
            // Ranges no copy holds are reported by `check_closed_damage`;
            // a copy the others cover between them is rebuilt from them.
            repairs += rebuild_round(shared, partition, &segment, &holdings).await;
            continue;
        }
        if repair.is_empty() {
            continue;
        }
        repairs += 1;
        shared.repair.in_progress.fetch_add(1, Ordering::Relaxed);
        let outcome = apply(shared, partition, &segment, &repair, live_stores).await;
        shared.repair.in_progress.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                shared
                    .repair
                    .repaired_segments
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(partition = %partition.key, segment = segment.segment_id, ?states, ?repair, "segment repaired");
            }
            Err(error) => {
                tracing::warn!(partition = %partition.key, segment = segment.segment_id, %error, "segment repair failed; retrying next round")
            }
        }
    }
}

/// Each copy's state for repair and what it holds intact, in replica
/// order: stores gone for `grace` or not live now are not asked.
async fn check_copies(
    shared: &Shared,
    segment: &SegmentInfo,
    live_stores: &[NodeInfo],
    missing_since: &HashMap<String, Instant>,
    grace: Duration,
) -> (Vec<CopyState>, Vec<Holding>) {
    let mut states = Vec::with_capacity(segment.replicas.len());
    let mut holdings = Vec::with_capacity(segment.replicas.len());
    for replica in &segment.replicas {
        let gone = missing_since
            .get(&replica.store_id)
            .is_some_and(|since| since.elapsed() >= grace);
        let live = live_stores
            .iter()
            .any(|store| store.node_id == replica.store_id);
        let (state, holding) = if gone {
            (CopyState::Gone, Holding::Unknown)
        } else if !live {
            (CopyState::Unreachable, Holding::Unknown)
        } else {
            copy_state(shared, segment, replica).await
        };
        states.push(state);
        holdings.push(holding);
    }
    (states, holdings)
}

/// Finds the ranges of a closed segment that no copy holds intact (not
/// yet accepted as lost), reports them in the heartbeat's
/// `damaged_partitions`, and once an operator accepted the loss (the
/// segment is marked `data_loss_accepted`) records them as lost.
async fn check_closed_damage(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    holdings: &[Holding],
) {
    if !closed_damage::all_known(holdings) {
        // A store that is away may hold what the others lack: its copy is
        // under-replication (counted in cluster status), not damage. A
        // report made before stays until every copy answers again.
        return;
    }
    let unreadable = closed_damage::unreadable_ranges(
        segment.base_offset,
        segment.end_offset,
        holdings,
        &closed_damage::lost_of(segment),
    );
    if unreadable.is_empty() {
        let cleared = shared
            .closed_damage
            .set(&partition.key, segment.segment_id, None);
        if cleared {
            use_up_acceptance(shared, partition, segment.segment_id, holdings).await;
        }
        return;
    }
    let report = closed_damage::report(&partition.key, segment, &unreadable);
    if shared
        .closed_damage
        .set(&partition.key, segment.segment_id, Some(report.clone()))
    {
        tracing::error!(partition = %partition.key, segment = segment.segment_id, reason = %report.reason, "closed segment damaged on every copy");
    }
    match record_accepted_loss(shared, partition, segment.segment_id, holdings).await {
        Ok(Some(recorded)) => {
            tracing::warn!(partition = %partition.key, segment = segment.segment_id, lost = ?recorded.lost_ranges, "recorded the ranges no copy holds as lost, as an operator accepted");
            let left = closed_damage::unreadable_ranges(
                recorded.base_offset,
                recorded.end_offset,
                holdings,
                &closed_damage::lost_of(&recorded),
            );
            let report =
                (!left.is_empty()).then(|| closed_damage::report(&partition.key, &recorded, &left));
            shared
                .closed_damage
                .set(&partition.key, segment.segment_id, report);
            partition.segment_updated(recorded);
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(partition = %partition.key, segment = segment.segment_id, %error, "recording accepted lost ranges failed; retrying next round")
        }
    }
}

/// The damage of a reported segment went away (a copy came back or was
/// repaired) before an operator's acceptance was recorded: the acceptance
/// is used up, recording nothing, so that it does not cover later damage.
async fn use_up_acceptance(
    shared: &Shared,
    partition: &Partition,
    segment_id: u64,
    holdings: &[Holding],
) {
    match record_accepted_loss(shared, partition, segment_id, holdings).await {
        Ok(Some(recorded)) => partition.segment_updated(recorded),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(partition = %partition.key, segment = segment_id, %error, "using up an acceptance of damage that went away failed")
        }
    }
}

/// If an operator accepted the loss of the closed segment (the metadata,
/// read now, marks it), records the ranges no copy holds intact as lost:
/// CloseSegment again at its end with them, fenced by this owner's epoch.
/// Answers the segment as recorded, or None when nothing was accepted.
async fn record_accepted_loss(
    shared: &Shared,
    partition: &Partition,
    segment_id: u64,
    holdings: &[Holding],
) -> Result<Option<SegmentInfo>, crate::error::BrokerError> {
    let listed = nameserver_call!(
        &shared.clients,
        list_segments,
        ListSegmentsRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        }
    )?;
    let Some(current) = listed
        .segments
        .into_iter()
        .find(|segment| segment.segment_id == segment_id)
    else {
        return Ok(None);
    };
    if !current.data_loss_accepted || current.state() != SegmentState::Closed {
        return Ok(None);
    }
    let lost = closed_damage::unreadable_ranges(
        current.base_offset,
        current.end_offset,
        holdings,
        &closed_damage::lost_of(&current),
    );
    let recorded = nameserver_call!(
        &shared.clients,
        close_segment,
        CloseSegmentRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            epoch: partition.epoch,
            segment_id,
            end_offset: current.end_offset,
            size_bytes: current.size_bytes,
            max_timestamp_ms: current.max_timestamp_ms,
            lost_ranges: closed_damage::as_lost_ranges(&lost),
        }
    )?;
    Ok(Some(recorded))
}

/// Asks one store for its copy of a closed segment: its state for repair
/// and what it holds intact.
async fn copy_state(
    shared: &Shared,
    segment: &SegmentInfo,
    replica: &SegmentReplica,
) -> (CopyState, Holding) {
    let Ok(mut store) = shared.clients.store(&replica.address) else {
        return (CopyState::Unreachable, Holding::Unknown);
    };
    let asked = SegmentStatusRequest {
        segment_id: segment.segment_id,
    };
    match store
        .get_segment_status(request(asked, shared.clients.store_timeout))
        .await
    {
        Ok(response) => {
            let status = response.into_inner();
            let holding = holding_of(&status);
            let state = match status.corrupt_from_offset {
                Some(corrupt) if corrupt < segment.end_offset => CopyState::Damaged,
                _ if status.end_offset >= segment.end_offset => CopyState::Complete,
                _ if status.end_offset < segment.base_offset => CopyState::Damaged,
                _ => CopyState::Incomplete {
                    end_offset: status.end_offset,
                },
            };
            (state, holding)
        }
        // A copy the store lost, or holds only as damaged (its metadata
        // unusable): recopied like any other damaged copy.
        Err(status) => match holding_on_error(&status) {
            Holding::Nothing => (CopyState::Damaged, Holding::Nothing),
            _ => (CopyState::Unreachable, Holding::Unknown),
        },
    }
}

async fn apply(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    repair: &RepairPlan,
    live_stores: &[NodeInfo],
) -> Result<(), crate::error::BrokerError> {
    let Some(source_index) = repair.source else {
        return Ok(());
    };
    let source = &segment.replicas[source_index];
    for (index, end_offset) in &repair.fill {
        let target = &segment.replicas[*index];
        copy(
            shared,
            partition,
            segment.segment_id,
            (source, target),
            (*end_offset, segment.end_offset),
        )
        .await?;
        // A copy whose store was down during the fence is still unsealed.
        seal_copy(shared, partition, segment, target).await?;
    }
    for index in &repair.recopy {
        let target = &segment.replicas[*index];
        delete_copy(shared, segment, target).await?;
        create_sealed_copy(shared, partition, segment, source, target).await?;
    }
    let mut replicas: Vec<SegmentReplica> = segment
        .replicas
        .iter()
        .enumerate()
        .filter(|(index, _)| !repair.drop.contains(index))
        .map(|(_, replica)| replica.clone())
        .collect();
    for store_id in &repair.add {
        let Some(store) = live_stores.iter().find(|store| &store.node_id == store_id) else {
            continue;
        };
        let target = SegmentReplica {
            store_id: store.node_id.clone(),
            address: store.address.clone(),
        };
        create_sealed_copy(shared, partition, segment, source, &target).await?;
        replicas.push(target);
    }
    if !repair.drop.is_empty() || !repair.add.is_empty() {
        let updated = nameserver_call!(
            &shared.clients,
            update_segment_replicas,
            UpdateSegmentReplicasRequest {
                topic: partition.key.topic.clone(),
                partition: partition.key.partition,
                epoch: partition.epoch,
                segment_id: segment.segment_id,
                replicas,
            }
        )?;
        partition.segment_updated(updated);
    }
    Ok(())
}

/// Deletes a copy so that it can be created again (a copy already gone
/// is fine).
async fn delete_copy(
    shared: &Shared,
    segment: &SegmentInfo,
    target: &SegmentReplica,
) -> Result<(), crate::error::BrokerError> {
    let mut store = shared.clients.store(&target.address)?;
    let delete = StoreDeleteSegmentRequest {
        segment_id: segment.segment_id,
    };
    match store
        .delete_segment(request(delete, shared.clients.store_timeout))
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if SluiceError::from_status(&status).code == ErrorCode::UnknownSegment => {
            Ok(())
        }
        Err(status) => Err(crate::error::BrokerError::remote(
            "store DeleteSegment (repair)",
            &status,
        )),
    }
}

/// [`rebuild_from_pieces`] counted in the repair progress; answers the
/// number of segments repaired (0 or 1).
async fn rebuild_round(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    holdings: &[Holding],
) -> usize {
    shared.repair.in_progress.fetch_add(1, Ordering::Relaxed);
    let outcome = rebuild_from_pieces(shared, partition, segment, holdings).await;
    shared.repair.in_progress.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Ok(true) => {
            shared
                .repair
                .repaired_segments
                .fetch_add(1, Ordering::Relaxed);
            1
        }
        Ok(false) => 0,
        Err(error) => {
            tracing::warn!(partition = %partition.key, segment = segment.segment_id, %error, "rebuilding a damaged copy from pieces failed; retrying next round");
            0
        }
    }
}

/// With no whole copy of a closed segment but every offset on some copy:
/// deletes one copy the others cover between them and rebuilds it from
/// their pieces (`closed_damage::rebuild_plan`). Answers whether it did.
async fn rebuild_from_pieces(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    holdings: &[Holding],
) -> Result<bool, crate::error::BrokerError> {
    let Some((target, pieces)) =
        closed_damage::rebuild_plan(segment.base_offset, segment.end_offset, holdings)
    else {
        return Ok(false);
    };
    let target = &segment.replicas[target];
    let pieces: Vec<(&SegmentReplica, u64, u64)> = pieces
        .iter()
        .map(|piece| (&segment.replicas[piece.source], piece.start, piece.end))
        .collect();
    delete_copy(shared, segment, target).await?;
    create_sealed_copy_from_pieces(shared, partition, segment, &pieces, target).await?;
    tracing::info!(partition = %partition.key, segment = segment.segment_id, store = %target.store_id, pieces = pieces.len(), "rebuilt a damaged copy from pieces of the other copies");
    Ok(true)
}

/// Creates an empty copy on `target`, fills it from `source`, and seals it.
async fn create_sealed_copy(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    source: &SegmentReplica,
    target: &SegmentReplica,
) -> Result<(), crate::error::BrokerError> {
    let whole = [(source, segment.base_offset, segment.end_offset)];
    create_sealed_copy_from_pieces(shared, partition, segment, &whole, target).await
}

/// Creates an empty copy on `target`, fills it piece by piece (`source`,
/// `[start, end)`, in offset order, covering the segment), and seals it.
async fn create_sealed_copy_from_pieces(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    pieces: &[(&SegmentReplica, u64, u64)],
    target: &SegmentReplica,
) -> Result<(), crate::error::BrokerError> {
    let mut store = shared.clients.store(&target.address)?;
    let create = StoreCreateSegmentRequest {
        segment_id: segment.segment_id,
        topic: partition.key.topic.clone(),
        partition: partition.key.partition,
        base_offset: segment.base_offset,
        writer_epoch: partition.epoch,
        durability: partition.config().durability,
    };
    store
        .create_segment(request(create, shared.clients.store_timeout))
        .await
        .map_err(|status| {
            crate::error::BrokerError::remote("store CreateSegment (repair)", &status)
        })?;
    for (source, start, end) in pieces {
        copy(
            shared,
            partition,
            segment.segment_id,
            (source, target),
            (*start, *end),
        )
        .await?;
    }
    seal_copy(shared, partition, segment, target).await
}

async fn seal_copy(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    target: &SegmentReplica,
) -> Result<(), crate::error::BrokerError> {
    let mut store = shared.clients.store(&target.address)?;
    let seal = SealSegmentRequest {
        segment_id: segment.segment_id,
        writer_epoch: partition.epoch,
        ..SealSegmentRequest::default()
    };
    store
        .seal_segment(request(seal, shared.clients.store_timeout))
        .await
        .map_err(|status| {
            crate::error::BrokerError::remote("store SealSegment (repair)", &status)
        })?;
    Ok(())
}

/// Copies `[range.0, range.1)` of a segment from one replica to another
/// as `partition`'s owner, counting the bytes in the repair progress.
async fn copy(
    shared: &Shared,
    partition: &Partition,
    segment_id: u64,
    (source, target): (&SegmentReplica, &SegmentReplica),
    (from_offset, end_offset): (u64, u64),
) -> Result<(), crate::error::BrokerError> {
    let range = CopyRange {
        segment_id,
        source,
        target,
        from_offset,
        end_offset,
        fence_epoch: partition.epoch,
        chunk_bytes: u32::try_from(shared.config.fetch.max_bytes).unwrap_or(u32::MAX),
    };
    copy_range(&shared.clients, &range, &shared.repair.bytes_copied).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn healthy_segments_need_nothing() {
        let states = [CopyState::Complete; 3];
        assert!(plan(&states, &ids(&["a", "b", "c"]), 3, &ids(&["d"])).is_empty());
    }

    #[test]
    fn short_and_damaged_copies_are_fixed_in_place_from_a_complete_one() {
        let states = [
            CopyState::Incomplete { end_offset: 40 },
            CopyState::Complete,
            CopyState::Damaged,
        ];
        let repair = plan(&states, &ids(&["a", "b", "c"]), 3, &[]);
        assert_eq!(repair.source, Some(1));
        assert_eq!(repair.fill, vec![(0, 40)]);
        assert_eq!(repair.recopy, vec![2]);
        assert!(repair.drop.is_empty() && repair.add.is_empty());
    }

    #[test]
    fn gone_stores_are_replaced_by_spares_and_reduced_ensembles_grow() {
        let states = [CopyState::Gone, CopyState::Complete, CopyState::Complete];
        let repair = plan(&states, &ids(&["a", "b", "c"]), 3, &ids(&["d", "e"]));
        assert_eq!(repair.drop, vec![0]);
        assert_eq!(repair.add, ids(&["d"]));
        // A segment written to two stores while the third was down.
        let states = [CopyState::Complete, CopyState::Complete];
        let repair = plan(&states, &ids(&["b", "c"]), 3, &ids(&["a"]));
        assert_eq!(repair.add, ids(&["a"]));
    }

    #[test]
    fn nothing_is_dropped_without_a_replacement_or_done_without_a_source() {
        let states = [CopyState::Gone, CopyState::Complete, CopyState::Complete];
        let repair = plan(&states, &ids(&["a", "b", "c"]), 3, &[]);
        assert!(repair.is_empty(), "{repair:?}");
        // An unreachable store is neither dropped nor replaced yet.
        let states = [
            CopyState::Unreachable,
            CopyState::Complete,
            CopyState::Complete,
        ];
        assert!(plan(&states, &ids(&["a", "b", "c"]), 3, &ids(&["d"])).is_empty());
        // No complete copy: nothing to copy from.
        let states = [CopyState::Incomplete { end_offset: 3 }, CopyState::Gone];
        let repair = plan(&states, &ids(&["a", "b"]), 3, &ids(&["d"]));
        assert_eq!(repair.source, None);
        assert!(repair.fill.is_empty() && repair.add.is_empty());
    }
}
