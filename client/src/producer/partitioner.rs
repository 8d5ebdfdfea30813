//! Choosing a partition: explicit, by key hash (`partition_for_key`, the
//! Kafka-compatible murmur2) or sticky for unkeyed records (fill one
//! partition's batch, then move on) so unkeyed traffic forms full batches.

use std::collections::HashMap;

/// Sticky choice for unkeyed records, per topic.
pub(crate) struct StickyPartitioner {
    topics: HashMap<String, StickyState>,
    start: u32,
}

struct StickyState {
    partition: u32,
    bytes: usize,
}

impl StickyPartitioner {
    /// `start` is where each topic begins (random in production so that many
    /// producers do not all start on partition 0).
    pub fn new(start: u32) -> Self {
        Self {
            topics: HashMap::new(),
            start,
        }
    }

    /// Stays on the current partition until about a batch's worth of bytes
    /// went there, then moves to the next one.
    pub fn choose(
        &mut self,
        topic: &str,
        partitions: u32,
        record_bytes: usize,
        batch_max_bytes: usize,
    ) -> u32 {
        let start = self.start;
        let state = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| StickyState {
                partition: start % partitions.max(1),
                bytes: 0,
            });
        if state.partition >= partitions
            || (state.bytes > 0 && state.bytes + record_bytes > batch_max_bytes)
        {
            state.partition = (state.partition + 1) % partitions.max(1);
            state.bytes = 0;
        }
        state.bytes += record_bytes;
        state.partition
    }
}

/// The partition of a record: explicit, else by key, else sticky.
pub(crate) fn choose_partition(
    explicit: Option<u32>,
    key: Option<&[u8]>,
    partitions: u32,
    sticky: impl FnOnce() -> u32,
) -> Result<u32, String> {
    if partitions == 0 {
        return Err("topic has no partitions".into());
    }
    match (explicit, key) {
        (Some(partition), _) if partition >= partitions => Err(format!(
            "partition {partition} does not exist (the topic has {partitions})"
        )),
        (Some(partition), _) => Ok(partition),
        (None, Some(key)) => Ok(sluice_proto::partitioning::partition_for_key(
            key, partitions,
        )),
        (None, None) => Ok(sticky()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_match_the_contract() {
        let first = choose_partition(None, Some(b"user-42"), 12, || 0).expect("valid");
        for _ in 0..10 {
            assert_eq!(
                choose_partition(None, Some(b"user-42"), 12, || 99).expect("valid"),
                first
            );
        }
        assert_eq!(
            first,
            sluice_proto::partitioning::partition_for_key(b"user-42", 12)
        );
    }

    #[test]
    fn explicit_partition_wins_and_is_checked() {
        assert_eq!(choose_partition(Some(3), Some(b"k"), 4, || 0), Ok(3));
        assert!(choose_partition(Some(4), None, 4, || 0).is_err());
        assert!(choose_partition(None, None, 0, || 0).is_err());
        assert_eq!(choose_partition(None, None, 4, || 2), Ok(2));
    }

    #[test]
    fn sticky_fills_a_batch_then_moves_on() {
        let mut sticky = StickyPartitioner::new(1);
        assert_eq!(sticky.choose("t", 3, 40, 100), 1);
        assert_eq!(sticky.choose("t", 3, 40, 100), 1);
        assert_eq!(sticky.choose("t", 3, 40, 100), 2);
        assert_eq!(sticky.choose("t", 3, 40, 100), 2);
        assert_eq!(sticky.choose("t", 3, 40, 100), 0);
        // Other topics keep their own position.
        assert_eq!(sticky.choose("u", 3, 40, 100), 1);
        // A record larger than a batch still goes somewhere, alone.
        assert_eq!(sticky.choose("t", 3, 500, 100), 1);
        assert_eq!(sticky.choose("t", 3, 1, 100), 2);
    }

    #[test]
    fn sticky_survives_a_partition_count_drop() {
        let mut sticky = StickyPartitioner::new(5);
        assert_eq!(sticky.choose("t", 8, 1, 100), 5);
        assert!(sticky.choose("t", 2, 1, 100) < 2);
    }
}
