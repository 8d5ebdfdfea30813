//! Consumer-group lag in time, for the metrics: the age of the first
//! record a group has not committed, per partition the group lags on,
//! from the timestamp of the batch at its committed offset. Reads are
//! bounded: a (partition, offset) read once is remembered until the group
//! commits past it, at most [`MAX_READS_PER_REFRESH`] new reads a refresh,
//! and only of partitions this broker owns (others have no age).

use crate::assignment::TopicPartition;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use std::collections::{BTreeMap, HashMap};

/// Most batches read per refresh to date lag.
pub const MAX_READS_PER_REFRESH: usize = 64;

/// First timestamp of the batch at (partition, committed offset).
pub type Timestamps = HashMap<(TopicPartition, u64), i64>;

/// Per group: (partition, committed offset, lag in records).
pub type Lagging = HashMap<String, Vec<(TopicPartition, u64, u64)>>;

/// The timestamps of every lagging (partition, offset): from `previous`
/// when known, else read (within the bound) where the partition is local.
pub async fn timestamps(shared: &Shared, lagging: &Lagging, previous: &Timestamps) -> Timestamps {
    let mut found = Timestamps::new();
    let mut reads = 0;
    for partitions in lagging.values() {
        for (partition, offset, lag) in partitions {
            let key = (partition.clone(), *offset);
            if *lag == 0 || found.contains_key(&key) {
                continue;
            }
            if let Some(timestamp) = previous.get(&key) {
                found.insert(key, *timestamp);
                continue;
            }
            if reads >= MAX_READS_PER_REFRESH {
                continue;
            }
            let Some(local) = shared.partition(&PartitionKey::new(&partition.0, partition.1))
            else {
                continue;
            };
            reads += 1;
            if let Some((timestamp, _)) = crate::backlog::first_batch_at(&local, *offset).await {
                found.insert(key, timestamp);
            }
        }
    }
    found
}

/// Lag in seconds per (group, topic): the oldest uncommitted record's age
/// over the topic's partitions (0 where the group does not lag). A
/// partition that lags without a known timestamp gives the topic no age.
pub fn ages(
    lagging: &Lagging,
    timestamps: &Timestamps,
    now_ms: i64,
) -> BTreeMap<(String, String), f64> {
    let mut ages: BTreeMap<(String, String), Option<f64>> = BTreeMap::new();
    for (group, partitions) in lagging {
        for (partition, offset, lag) in partitions {
            let age = if *lag == 0 {
                Some(0.0)
            } else {
                timestamps
                    .get(&(partition.clone(), *offset))
                    .map(|timestamp| now_ms.saturating_sub(*timestamp).max(0) as f64 / 1000.0)
            };
            let entry = ages
                .entry((group.clone(), partition.0.clone()))
                .or_insert(Some(0.0));
            *entry = match (*entry, age) {
                (Some(known), Some(age)) => Some(known.max(age)),
                _ => None,
            };
        }
    }
    ages.into_iter()
        .filter_map(|(key, age)| age.map(|age| (key, age)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(topic: &str, index: u32) -> TopicPartition {
        (topic.to_string(), index)
    }

    #[test]
    fn the_oldest_uncommitted_record_dates_the_topic_and_unknown_ones_hide_it() {
        let lagging: Lagging = HashMap::from([
            (
                "billing".to_string(),
                vec![
                    (partition("orders", 0), 10, 5),
                    (partition("orders", 1), 20, 0),
                    (partition("orders", 2), 30, 7),
                    (partition("clicks", 0), 40, 3),
                ],
            ),
            ("audit".to_string(), vec![(partition("orders", 0), 50, 0)]),
        ]);
        let timestamps: Timestamps = HashMap::from([
            ((partition("orders", 0), 10), 90_000),
            ((partition("orders", 2), 30), 95_000),
        ]);
        let ages = ages(&lagging, &timestamps, 100_000);
        let key = |group: &str, topic: &str| (group.to_string(), topic.to_string());
        assert_eq!(ages.get(&key("billing", "orders")), Some(&10.0));
        // clicks/0 lags but its timestamp is not known: no age.
        assert_eq!(ages.get(&key("billing", "clicks")), None);
        assert_eq!(ages.get(&key("audit", "orders")), Some(&0.0));
        // A timestamp in the future (producer clock) is age 0, not negative.
        let future: Timestamps = HashMap::from([((partition("orders", 0), 10), 200_000)]);
        let lagging_one: Lagging =
            HashMap::from([("g".to_string(), vec![(partition("orders", 0), 10, 1)])]);
        assert_eq!(
            self::ages(&lagging_one, &future, 100_000).get(&key("g", "orders")),
            Some(&0.0)
        );
    }
}
