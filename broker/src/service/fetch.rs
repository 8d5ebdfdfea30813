//! Fetch: one pass over a fetch request's partitions (limits, read-committed
//! filtering), and the partition lookups `list_offsets` shares.

use super::BrokerService;
use crate::decisions::{fetch_decision, whole_batches_within, FetchDecision};
use crate::error::BrokerError;
use crate::partition::{Partition, PartitionStatus, Phase};
use crate::tail_cache::PartitionKey;
use sluice_proto::names::TopicName;
use sluice_proto::v1::{FetchRequest, FetchResponse, FetchedPartition, IsolationLevel};
use std::sync::Arc;
use tokio::time::Instant;

impl BrokerService {
    pub(super) async fn fetch_once(
        &self,
        request: &FetchRequest,
        total_max_bytes: usize,
    ) -> (FetchResponse, usize, bool) {
        let mut response = FetchResponse::default();
        let mut used_bytes = 0usize;
        let mut any_error = false;
        let read_committed = request.isolation == IsolationLevel::ReadCommitted as i32;
        for wanted in &request.partitions {
            let mut fetched = FetchedPartition {
                topic: wanted.topic.clone(),
                partition: wanted.partition,
                ..Default::default()
            };
            let result = self
                .fetch_partition(
                    FetchAt {
                        offset: wanted.offset,
                        topic: &wanted.topic,
                        partition: wanted.partition,
                        max_bytes: wanted.max_bytes,
                        read_committed,
                    },
                    total_max_bytes,
                    used_bytes,
                    &mut fetched,
                )
                .await;
            if let Err(error) = result {
                any_error = true;
                fetched.error = error.code() as i32;
                fetched.error_message = error.to_string();
                fetched.lost_end_offset = error.lost_end_offset().unwrap_or(0);
            }
            used_bytes += fetched.batches.len();
            response.partitions.push(fetched);
        }
        (response, used_bytes, any_error)
    }

    async fn fetch_partition(
        &self,
        at: FetchAt<'_>,
        total_max_bytes: usize,
        used_bytes: usize,
        fetched: &mut FetchedPartition,
    ) -> Result<(), BrokerError> {
        let FetchAt {
            offset,
            topic,
            partition: partition_index,
            max_bytes: partition_max_bytes,
            read_committed,
        } = at;
        let partition = self.served(topic, partition_index).await?;
        let status = loaded_status(&partition)?;
        fetched.high_watermark = status.high_watermark;
        fetched.log_start_offset = status.log_start_offset;
        fetched.last_stable_offset = status.last_stable_offset;
        // Read-committed reads stop at the last stable offset, which is
        // unknown (nothing served) until the transaction state is rebuilt.
        let stable_end = match (read_committed, status.last_stable_offset) {
            (false, _) => None,
            (true, Some(lso)) => Some(lso.max(status.log_start_offset)),
            (true, None) => {
                return Err(BrokerError::Recovering {
                    topic: topic.to_string(),
                    partition: partition_index,
                })
            }
        };
        match fetch_decision(offset, status.log_start_offset, status.high_watermark) {
            FetchDecision::OutOfRange => Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start_offset: status.log_start_offset,
                high_watermark: status.high_watermark,
            }),
            FetchDecision::NothingYet => Ok(()),
            FetchDecision::Read => {
                let remaining = total_max_bytes.saturating_sub(used_bytes);
                let partition_limit = if partition_max_bytes == 0 {
                    remaining
                } else {
                    (partition_max_bytes as usize).min(remaining)
                };
                if partition_limit == 0 && used_bytes > 0 {
                    return Ok(());
                }
                if stable_end.is_some_and(|end| offset >= end) {
                    return Ok(());
                }
                let started = Instant::now();
                let batches = partition
                    .read_for_fetch(offset, partition_limit.max(1))
                    .await?;
                // Only the first data of the response may exceed the limits
                // (one whole batch always goes out).
                let batches = if used_bytes == 0 {
                    batches
                } else {
                    whole_batches_within(batches, partition_limit, false)
                };
                match stable_end {
                    None => fetched.batches = batches,
                    Some(end) => {
                        let filtered = crate::read_committed::filter(&batches, end, |from, to| {
                            partition.aborted_in(from, to)
                        });
                        fetched.batches = filtered.bytes;
                        fetched.next_offset = filtered.next_offset;
                    }
                }
                self.shared
                    .metrics
                    .fetch_latency
                    .observe_duration(started.elapsed());
                partition.series.count_fetched(&fetched.batches);
                Ok(())
            }
        }
    }

    /// The partition if served here, else the right error.
    pub(super) async fn served(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, BrokerError> {
        TopicName::any(topic).map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
        match self.shared.partition(&PartitionKey::new(topic, partition)) {
            Some(partition) => Ok(partition),
            None => Err(self.shared.not_served_error(topic, partition).await),
        }
    }
}

/// A read-committed answer dropped everything it read of a partition
/// (markers, aborted batches) but moved its `next_offset`: answered at
/// once, so the reader moves on instead of waiting out the long poll.
pub(super) fn skipped_ahead(request: &FetchRequest, response: &FetchResponse) -> bool {
    request
        .partitions
        .iter()
        .zip(&response.partitions)
        .any(|(wanted, fetched)| {
            fetched.batches.is_empty()
                && fetched
                    .next_offset
                    .is_some_and(|next_offset| next_offset > wanted.offset)
        })
}

/// One partition of a fetch.
struct FetchAt<'a> {
    offset: u64,
    topic: &'a str,
    partition: u32,
    max_bytes: u32,
    read_committed: bool,
}

pub(super) fn loaded_status(partition: &Partition) -> Result<PartitionStatus, BrokerError> {
    let status = partition.status();
    if status.phase == Phase::Stopped {
        return Err(BrokerError::NotOwner {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        });
    }
    if let (false, Some(reason)) = (status.loaded, &status.offline) {
        return Err(BrokerError::PartitionOffline(reason.clone()));
    }
    if !status.loaded {
        return Err(BrokerError::Recovering {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        });
    }
    Ok(status)
}
