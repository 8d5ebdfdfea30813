//! Segments of a partition: create (placing the replicas), close, list,
//! delete, and replica updates by repair. Every write is pinned to the
//! caller's partition epoch, so a fenced owner changes nothing.

use super::{invalid, lookup_topic_name, now_ms, segment_ids, NameServerHandler};
use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner, SegmentIdCounter};
use crate::metadata::{Compare, KeyValue, Put, Transaction};
use crate::placement::{self, EnsembleShape};
use sluice_proto::names;
use sluice_proto::v1::{
    CloseSegmentRequest, CreateSegmentRequest, DeleteSegmentsRequest, SegmentInfo, SegmentReplica,
    SegmentState, Topic, UpdateSegmentReplicasRequest,
};
use std::collections::HashSet;

impl NameServerHandler {
    /// The decodable segments under `prefix`, by (partition, base offset, id).
    pub(crate) async fn segments_of(
        &self,
        prefix: &str,
    ) -> Result<Vec<SegmentInfo>, NameServerError> {
        let mut segments = Vec::new();
        for KeyValue { key, value, .. } in self.store.range(prefix).await? {
            match keys::decode::<SegmentInfo>(&key, &value) {
                Ok(segment) => segments.push(segment),
                Err(error) => tracing::warn!(%error, "skipping undecodable segment"),
            }
        }
        segments
            .sort_by_key(|segment| (segment.partition, segment.base_offset, segment.segment_id));
        Ok(segments)
    }

    /// The segments of one partition of an existing topic.
    pub(crate) async fn do_list_segments(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<SegmentInfo>, NameServerError> {
        lookup_topic_name(topic)?;
        self.get_topic(topic).await?;
        self.segments_of(&keys::segments_of(topic, partition)).await
    }

    /// Reads the partition owner and checks the caller's epoch is current;
    /// returns the compare that pins that ownership in a transaction.
    pub(super) async fn check_epoch(
        &self,
        topic: &str,
        partition: u32,
        epoch: u64,
    ) -> Result<(Topic, Compare), NameServerError> {
        lookup_topic_name(topic)?;
        let (topic_record, _) = self.get_topic(topic).await?;
        let partitions = topic_record.config.as_ref().map_or(0, |c| c.partitions);
        if partition >= partitions {
            return Err(NameServerError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            });
        }
        let key = keys::partition(topic, partition);
        let entry = self.store.get(&key).await?;
        let (current, compare) = match entry {
            Some(entry) => (
                keys::decode::<PartitionOwner>(&key, &entry.value)?.epoch,
                Compare::ModRevisionEquals(key, entry.mod_revision),
            ),
            None => (0, Compare::Absent(key)),
        };
        if current == 0 || current != epoch {
            return Err(NameServerError::Fenced {
                topic: topic.to_string(),
                partition,
                given: epoch,
                current,
            });
        }
        Ok((topic_record, compare))
    }

    /// After a failed ownership-pinned transaction: fenced if the epoch
    /// moved, otherwise a plain conflict.
    pub(super) async fn explain_failed_commit(
        &self,
        topic: &str,
        partition: u32,
        epoch: u64,
    ) -> NameServerError {
        match self.check_epoch(topic, partition, epoch).await {
            Err(error) => error,
            Ok(_) => NameServerError::Conflict(format!(
                "metadata of {topic}/{partition} changed concurrently; retry"
            )),
        }
    }

    /// Commits `transaction` (pinned to the caller's ownership); a refused
    /// commit is explained as fenced or as a conflict.
    pub(super) async fn commit_as_owner(
        &self,
        transaction: Transaction,
        topic: &str,
        partition: u32,
        epoch: u64,
    ) -> Result<(), NameServerError> {
        if self.store.commit(transaction).await? {
            Ok(())
        } else {
            Err(self.explain_failed_commit(topic, partition, epoch).await)
        }
    }

    /// The next segment id, from a compare-and-set increment of the
    /// cluster-wide counter shared by every request waiting on this
    /// nameserver (`segment_ids.rs`), so ids are never handed out twice and
    /// only increase.
    pub(super) async fn allocate_segment_id(&self) -> Result<u64, NameServerError> {
        self.segment_ids
            .next(|count| self.increment_segment_id_counter(count))
            .await
    }

    /// Raises the segment-id counter by `count`; the first of the `count`
    /// ids it reserved.
    async fn increment_segment_id_counter(&self, count: u64) -> Result<u64, NameServerError> {
        for attempt in 0..self.config.max_cas_retries.max(1) {
            super::pause_before_cas_retry(attempt).await;
            let entry = self.store.get(keys::SEGMENT_ID_COUNTER).await?;
            let (next, compare) = match entry {
                Some(entry) => (
                    keys::decode::<SegmentIdCounter>(keys::SEGMENT_ID_COUNTER, &entry.value)?
                        .next_segment_id
                        .max(1),
                    Compare::ModRevisionEquals(
                        keys::SEGMENT_ID_COUNTER.to_string(),
                        entry.mod_revision,
                    ),
                ),
                None => (1, Compare::Absent(keys::SEGMENT_ID_COUNTER.to_string())),
            };
            // The counter comes from the metadata store: an exhausted one
            // is refused rather than wrapped, which would reuse ids.
            let Some(next_segment_id) = segment_ids::following(next, count) else {
                return Err(NameServerError::Refused(
                    "segment ids are exhausted".to_string(),
                ));
            };
            let following = SegmentIdCounter { next_segment_id };
            // Ids start at 1 (0 is never a segment) and only increase.
            debug_assert!(next >= 1 && following.next_segment_id > next);
            let transaction = Transaction {
                compares: vec![compare],
                puts: vec![Put::new(keys::SEGMENT_ID_COUNTER, keys::encode(&following))],
                deletes: Vec::new(),
            };
            if self.store.commit(transaction).await? {
                return Ok(next);
            }
        }
        Err(NameServerError::Conflict(format!(
            "segment id counter contended for {} attempts",
            self.config.max_cas_retries
        )))
    }

    /// Opens a new segment at `base_offset` on an ensemble of live stores.
    pub(crate) async fn do_create_segment(
        &self,
        request: CreateSegmentRequest,
    ) -> Result<SegmentInfo, NameServerError> {
        let placed = NewSegment {
            topic: &request.topic,
            partition: request.partition,
            epoch: request.epoch,
            base_offset: request.base_offset,
            end_offset: request.base_offset,
            exclude_store_ids: &request.exclude_store_ids,
        };
        let (segment, ownership) = self.place_segment(placed).await?;
        let segment_id = segment.segment_id;
        // Placement never returns fewer stores than the ack quorum (>= 1).
        debug_assert!(!segment.replicas.is_empty(), "a segment without replicas");
        let key = keys::segment(&request.topic, request.partition, segment_id);
        let transaction = Transaction {
            compares: vec![ownership, Compare::Absent(key.clone())],
            puts: vec![Put::new(key, keys::encode(&segment))],
            deletes: Vec::new(),
        };
        self.commit_as_owner(
            transaction,
            &request.topic,
            request.partition,
            request.epoch,
        )
        .await?;
        tracing::info!(
            topic = %request.topic,
            partition = request.partition,
            segment_id,
            base_offset = request.base_offset,
            "segment created"
        );
        Ok(segment)
    }

    /// Closes an open segment at `end_offset`; closing again at the same
    /// end is a no-op, at another end a conflict.
    pub(crate) async fn do_close_segment(
        &self,
        request: CloseSegmentRequest,
    ) -> Result<SegmentInfo, NameServerError> {
        let at = SegmentAt {
            topic: &request.topic,
            partition: request.partition,
            epoch: request.epoch,
            segment_id: request.segment_id,
        };
        self.change_segment(at, |segment| {
            if request.end_offset < segment.base_offset {
                return Err(invalid(format!(
                    "end offset {} is before the segment's base offset {}",
                    request.end_offset, segment.base_offset
                )));
            }
            if segment.state == SegmentState::Closed as i32 {
                return record_on_closed(segment, &request);
            }
            check_lost_ranges(segment, &request)?;
            segment.state = SegmentState::Closed as i32;
            segment.lost_ranges = request.lost_ranges.clone();
            // The acceptance was for this close; a closed segment's flag
            // means an acceptance repair has yet to record.
            segment.data_loss_accepted = false;
            segment.end_offset = request.end_offset;
            segment.size_bytes = request.size_bytes;
            segment.max_timestamp_ms = request.max_timestamp_ms;
            // Checked above; a closed segment covers [base, end).
            debug_assert!(segment.end_offset >= segment.base_offset);
            Ok(true)
        })
        .await
    }

    /// Replaces a closed segment's replica list (after repair copied it).
    pub(crate) async fn do_update_segment_replicas(
        &self,
        request: UpdateSegmentReplicasRequest,
    ) -> Result<SegmentInfo, NameServerError> {
        validate_replicas(&request.replicas)?;
        let at = SegmentAt {
            topic: &request.topic,
            partition: request.partition,
            epoch: request.epoch,
            segment_id: request.segment_id,
        };
        let segment = self
            .change_segment(at, |segment| {
                if segment.state != SegmentState::Closed as i32 {
                    return Err(NameServerError::Conflict(format!(
                        "segment {} is open; only closed segments are repaired",
                        request.segment_id
                    )));
                }
                segment.replicas = request.replicas.clone();
                Ok(true)
            })
            .await?;
        tracing::info!(topic = %request.topic, partition = request.partition, segment_id = request.segment_id, replicas = ?segment.replicas.iter().map(|replica| &replica.store_id).collect::<Vec<_>>(), "segment replicas updated by repair");
        Ok(segment)
    }

    /// Reads a segment as the partition's owner at `at.epoch`, lets
    /// `change` edit it (`Ok(false)`: nothing to write, answer it as it
    /// is), and writes it back conditional on the ownership and on the
    /// segment not having changed since it was read.
    async fn change_segment(
        &self,
        at: SegmentAt<'_>,
        change: impl FnOnce(&mut SegmentInfo) -> Result<bool, NameServerError>,
    ) -> Result<SegmentInfo, NameServerError> {
        let (_, ownership) = self.check_epoch(at.topic, at.partition, at.epoch).await?;
        let key = keys::segment(at.topic, at.partition, at.segment_id);
        let entry = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| NameServerError::UnknownSegment {
                topic: at.topic.to_string(),
                partition: at.partition,
                segment_id: at.segment_id,
            })?;
        let mut segment: SegmentInfo = keys::decode(&key, &entry.value)?;
        if !change(&mut segment)? {
            return Ok(segment);
        }
        let transaction = Transaction {
            compares: vec![
                ownership,
                Compare::ModRevisionEquals(key.clone(), entry.mod_revision),
            ],
            puts: vec![Put::new(key, keys::encode(&segment))],
            deletes: Vec::new(),
        };
        self.commit_as_owner(transaction, at.topic, at.partition, at.epoch)
            .await?;
        Ok(segment)
    }

    /// Deletes segment keys of a partition (at most
    /// `max_segments_per_delete` in one request).
    pub(crate) async fn do_delete_segments(
        &self,
        request: DeleteSegmentsRequest,
    ) -> Result<(), NameServerError> {
        let limit = self.config.max_segments_per_delete;
        if request.segment_ids.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(invalid(format!(
                "{} segments in one request; the limit is {limit}",
                request.segment_ids.len()
            )));
        }
        let (_, ownership) = self
            .check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        let transaction = Transaction {
            compares: vec![ownership],
            puts: Vec::new(),
            deletes: request
                .segment_ids
                .iter()
                .map(|id| keys::segment(&request.topic, request.partition, *id))
                .collect(),
        };
        self.commit_as_owner(
            transaction,
            &request.topic,
            request.partition,
            request.epoch,
        )
        .await
    }
}

/// Closing a closed segment again: at the same end a no-op, unless it
/// brings lost ranges (repair of a closed segment damaged on every copy,
/// after an operator accepted): recorded like at the first close, and
/// the acceptance is used up. At another end a conflict.
fn record_on_closed(
    segment: &mut SegmentInfo,
    request: &CloseSegmentRequest,
) -> Result<bool, NameServerError> {
    if segment.end_offset != request.end_offset {
        return Err(NameServerError::Conflict(format!(
            "segment {} is already closed at {}",
            request.segment_id, segment.end_offset
        )));
    }
    if request.lost_ranges.is_empty() && !segment.data_loss_accepted {
        return Ok(false);
    }
    check_lost_ranges(segment, request)?;
    for range in &request.lost_ranges {
        if !segment.lost_ranges.contains(range) {
            segment.lost_ranges.push(range.clone());
        }
    }
    segment.lost_ranges.sort_by_key(|range| range.start_offset);
    segment.data_loss_accepted = false;
    Ok(true)
}

/// Lost ranges may be recorded only on a segment an operator accepted
/// loss for, and only inside the closed segment.
fn check_lost_ranges(
    segment: &SegmentInfo,
    request: &CloseSegmentRequest,
) -> Result<(), NameServerError> {
    if request.lost_ranges.is_empty() {
        return Ok(());
    }
    if !segment.data_loss_accepted {
        return Err(invalid(format!(
            "segment {} may not be closed over lost ranges: no operator accepted data loss for it",
            segment.segment_id
        )));
    }
    for range in &request.lost_ranges {
        if range.start_offset >= range.end_offset
            || range.start_offset < segment.base_offset
            || range.end_offset > request.end_offset
        {
            return Err(invalid(format!(
                "lost range [{}, {}) is not inside segment {} [{}, {})",
                range.start_offset,
                range.end_offset,
                segment.segment_id,
                segment.base_offset,
                request.end_offset
            )));
        }
    }
    Ok(())
}

/// A replica list from repair: not empty, valid store ids, none twice.
fn validate_replicas(replicas: &[SegmentReplica]) -> Result<(), NameServerError> {
    if replicas.is_empty() {
        return Err(invalid("a segment needs at least one replica".to_string()));
    }
    let mut seen = HashSet::new();
    for replica in replicas {
        names::validate_node_id(&replica.store_id).map_err(|error| invalid(error.to_string()))?;
        if !seen.insert(replica.store_id.as_str()) {
            return Err(invalid(format!(
                "store {} listed twice as a replica",
                replica.store_id
            )));
        }
    }
    Ok(())
}

/// One segment of a partition, changed by its owner at `epoch`.
struct SegmentAt<'a> {
    topic: &'a str,
    partition: u32,
    epoch: u64,
    segment_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str) -> SegmentReplica {
        SegmentReplica {
            store_id: id.to_string(),
            address: format!("{id}:1"),
        }
    }

    #[test]
    fn repaired_replica_lists_must_be_non_empty_valid_and_distinct() {
        assert!(validate_replicas(&[replica("s1"), replica("s2")]).is_ok());
        for bad in [
            vec![],
            vec![replica("s1"), replica("s1")],
            vec![replica("../s1")],
        ] {
            assert!(
                matches!(
                    validate_replicas(&bad),
                    Err(NameServerError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lost_ranges_need_an_operator_and_must_lie_inside_the_segment() {
        use sluice_proto::v1::DamagedRange;
        let lost = |start_offset, end_offset| DamagedRange {
            start_offset,
            end_offset,
            detail: String::new(),
        };
        let mut segment = SegmentInfo {
            segment_id: 7,
            base_offset: 100,
            ..SegmentInfo::default()
        };
        let mut request = CloseSegmentRequest {
            end_offset: 4000,
            ..CloseSegmentRequest::default()
        };
        assert!(check_lost_ranges(&segment, &request).is_ok());
        request.lost_ranges = vec![lost(2980, 3000)];
        assert!(
            check_lost_ranges(&segment, &request).is_err(),
            "no operator accepted the loss"
        );
        segment.data_loss_accepted = true;
        assert!(check_lost_ranges(&segment, &request).is_ok());
        for (start, end) in [(99, 200), (3990, 4001), (10, 10), (u64::MAX, 0)] {
            request.lost_ranges = vec![lost(start, end)];
            assert!(
                check_lost_ranges(&segment, &request).is_err(),
                "{start}..{end}"
            );
        }
    }
}

#[cfg(test)]
#[path = "closed_loss_tests.rs"]
mod closed_loss_tests;

/// A segment to place: the owner's epoch and the range it covers.
pub(super) struct NewSegment<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub epoch: u64,
    pub base_offset: u64,
    pub end_offset: u64,
    pub exclude_store_ids: &'a [String],
}

impl NameServerHandler {
    /// Checks the owner's epoch, chooses an ensemble of live stores (not
    /// those excluded) and allocates an id: the OPEN segment to record, and
    /// the owner's compare for the transaction that records it. Shared by
    /// `CreateSegment` and `PlaceCompactedSegment`.
    pub(super) async fn place_segment(
        &self,
        new: NewSegment<'_>,
    ) -> Result<(SegmentInfo, Compare), NameServerError> {
        let (topic, ownership) = self
            .check_epoch(new.topic, new.partition, new.epoch)
            .await?;
        let stores = placement::choose_ensemble(
            self.live_stores().await?,
            new.exclude_store_ids,
            EnsembleShape::of(topic.config.as_ref()),
        )?;
        let segment = SegmentInfo {
            segment_id: self.allocate_segment_id().await?,
            topic: new.topic.to_string(),
            partition: new.partition,
            state: SegmentState::Open as i32,
            base_offset: new.base_offset,
            end_offset: new.end_offset,
            replicas: stores
                .into_iter()
                .map(|store| SegmentReplica {
                    store_id: store.node_id,
                    address: store.address,
                })
                .collect(),
            writer_epoch: new.epoch,
            created_at_ms: now_ms(),
            ..SegmentInfo::default()
        };
        Ok((segment, ownership))
    }
}
