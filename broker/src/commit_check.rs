//! What a committed offset may be: at most [`MAX_OFFSET`], for a topic and
//! partition that exist, and not beyond the end of the partition's log
//! where this broker knows it (it owns the partition). The decision is
//! pure; [`check_commits`] gathers what it needs.

use crate::error::BrokerError;
use crate::partition::Phase;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use sluice_proto::limits::MAX_OFFSET;
use sluice_proto::v1::PartitionOffset;
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::BTreeMap;

/// What the broker knows about the partition a commit names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The topic's partition count; `None` when the topic does not exist.
    /// Not consulted when `topics_known` is false (no metadata answer).
    pub partition_count: Option<u32>,
    /// The partition's log end (high watermark), when this broker serves it.
    pub high_watermark: Option<u64>,
}

/// Refuses a commit of `offset` at `topic`/`partition` given what is
/// `known`; `topics_known` is false when the metadata could not be read,
/// and then only the offset checks apply.
pub fn check_commit(
    topic: &str,
    partition: u32,
    offset: u64,
    known: Known,
    topics_known: bool,
) -> Result<(), BrokerError> {
    if topics_known {
        match known.partition_count {
            None => return Err(BrokerError::UnknownTopic(topic.to_string())),
            Some(count) if partition >= count => {
                return Err(BrokerError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                })
            }
            Some(_) => {}
        }
    }
    let beyond = if offset > MAX_OFFSET {
        Some(format!("the largest offset {MAX_OFFSET}"))
    } else {
        known
            .high_watermark
            .filter(|end| offset > *end)
            .map(|end| format!("the end of the partition's log, {end}"))
    };
    match beyond {
        None => Ok(()),
        Some(limit) => Err(BrokerError::Relayed(SluiceError::new(
            ErrorCode::OffsetOutOfRange,
            format!("commit of {topic}/{partition} at offset {offset} is beyond {limit}"),
        ))),
    }
}

/// Checks every offset of a commit; the first refused one fails the whole
/// commit (it is one record). Topic existence comes from the cached
/// partition counts, read again once for a topic or partition the cache
/// does not know (it may predate the topic); if the nameserver cannot be
/// asked, existence is not checked (commits stay available) but the offset
/// checks still apply.
pub async fn check_commits(
    shared: &Shared,
    offsets: &[PartitionOffset],
) -> Result<(), BrokerError> {
    let topics: Vec<String> = offsets.iter().map(|offset| offset.topic.clone()).collect();
    let mut counts = match shared.partition_counts(&topics).await {
        Ok(counts) => Some(counts),
        Err(error) => {
            tracing::debug!(%error, "commit: partition counts unavailable; not checking topics");
            None
        }
    };
    let unknown: Vec<String> = match &counts {
        Some(counts) => offsets
            .iter()
            .filter(|offset| !covers(counts, &offset.topic, offset.partition))
            .map(|offset| offset.topic.clone())
            .collect(),
        None => Vec::new(),
    };
    if !unknown.is_empty() {
        if let Ok(fresh) = shared.partition_counts_fresh(&unknown).await {
            counts.get_or_insert_with(BTreeMap::new).extend(fresh);
        }
    }
    for offset in offsets {
        let known = Known {
            partition_count: counts
                .as_ref()
                .and_then(|counts| counts.get(&offset.topic).copied()),
            high_watermark: served_end(shared, &offset.topic, offset.partition),
        };
        check_commit(
            &offset.topic,
            offset.partition,
            offset.offset,
            known,
            counts.is_some(),
        )?;
    }
    Ok(())
}

fn covers(counts: &BTreeMap<String, u32>, topic: &str, partition: u32) -> bool {
    counts.get(topic).is_some_and(|count| partition < *count)
}

/// The log end of a partition this broker serves and has loaded.
fn served_end(shared: &Shared, topic: &str, partition: u32) -> Option<u64> {
    let partition = shared.partition(&PartitionKey::new(topic, partition))?;
    let status = partition.status();
    (status.phase == Phase::Serving && status.loaded).then_some(status.high_watermark)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_at_the_extremes() {
        let served = |count, end| Known {
            partition_count: Some(count),
            high_watermark: Some(end),
        };
        let elsewhere = Known {
            partition_count: Some(3),
            high_watermark: None,
        };
        let missing = Known {
            partition_count: None,
            high_watermark: None,
        };
        // (partition, offset, known, topics known, expected)
        let cases = [
            (0, 0, served(1, 0), true, ErrorCode::None),
            (0, 10, served(1, 10), true, ErrorCode::None),
            (0, 11, served(1, 10), true, ErrorCode::OffsetOutOfRange),
            (
                0,
                u64::MAX,
                served(1, 10),
                true,
                ErrorCode::OffsetOutOfRange,
            ),
            (2, MAX_OFFSET, elsewhere, true, ErrorCode::None),
            (
                2,
                MAX_OFFSET + 1,
                elsewhere,
                true,
                ErrorCode::OffsetOutOfRange,
            ),
            (2, u64::MAX, elsewhere, true, ErrorCode::OffsetOutOfRange),
            (3, 0, elsewhere, true, ErrorCode::UnknownPartition),
            (u32::MAX, 0, elsewhere, true, ErrorCode::UnknownPartition),
            (0, 0, missing, true, ErrorCode::UnknownTopic),
            (0, 0, missing, false, ErrorCode::None),
            (0, u64::MAX, missing, false, ErrorCode::OffsetOutOfRange),
        ];
        for (partition, offset, known, topics_known, expected) in cases {
            let code = match check_commit("t", partition, offset, known, topics_known) {
                Ok(()) => ErrorCode::None,
                Err(error) => error.code(),
            };
            assert_eq!(code, expected, "{partition} at {offset} with {known:?}");
        }
    }
}
