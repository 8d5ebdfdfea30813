//! What passes leave behind (ADR 0016 §8, crash safety): placements a
//! dead pass (or a crashed owner) never swapped in, and replaced segments
//! whose copies are due for deletion `delete_delay_ms` after their swap.
//! The owner deletes the copies, then forgets the records; both steps are
//! retried on the next round until they succeed. Runs before each pass,
//! never during one, so no placement it sees is in use.

use super::writer::delete_copies;
use crate::clients::nameserver_call;
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::Shared;
use sluice_proto::v1::{CompactionRecordKind, ForgetCompactionsRequest, ListCompactionsRequest};

/// Most records forgotten per round (the nameserver's bound per request).
const MAX_FORGOTTEN_PER_ROUND: usize = 256;

/// Deletes the copies of abandoned placements and of replaced segments
/// past the delay; the number of records forgotten.
pub(super) async fn collect(shared: &Shared, partition: &Partition) -> Result<usize, BrokerError> {
    let records = nameserver_call!(
        &shared.clients,
        list_compactions,
        ListCompactionsRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            epoch: partition.epoch,
        }
    )?
    .records;
    let now_ms = u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0);
    let delay_ms = shared.config.compaction.delete_delay_ms;
    let mut placed = Vec::new();
    let mut replaced = Vec::new();
    for record in records {
        if placed.len() + replaced.len() >= MAX_FORGOTTEN_PER_ROUND {
            break;
        }
        let Some(segment) = record.segment else {
            continue;
        };
        let is_placed = record.kind == CompactionRecordKind::Placed as i32;
        let due = is_placed || record.recorded_at_ms.saturating_add(delay_ms) <= now_ms;
        if !due || !delete_copies(&shared.clients, &segment).await {
            continue;
        }
        if is_placed {
            placed.push(segment.segment_id);
        } else {
            replaced.push(segment.segment_id);
        }
    }
    let forgotten = placed.len() + replaced.len();
    if forgotten == 0 {
        return Ok(0);
    }
    nameserver_call!(
        &shared.clients,
        forget_compactions,
        ForgetCompactionsRequest {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            epoch: partition.epoch,
            placed_segment_ids: placed,
            replaced_segment_ids: replaced,
        }
    )?;
    Ok(forgotten)
}
