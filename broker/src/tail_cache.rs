//! The in-memory tail cache: the most recent acknowledged batches of every
//! served partition, so consumers near the head never touch a store. The
//! total is bounded by `[fetch] tail_cache_bytes`, split evenly across partitions;
//! each partition evicts its oldest batches first.

use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: u32,
}

impl PartitionKey {
    pub fn new(topic: &str, partition: u32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
        }
    }
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.topic, self.partition)
    }
}

#[derive(Debug, Clone)]
struct CachedBatch {
    base_offset: u64,
    end_offset: u64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct PartitionTail {
    /// Contiguous: each batch starts where the previous one ended.
    batches: VecDeque<CachedBatch>,
    size_bytes: u64,
}

#[derive(Debug)]
pub struct TailCache {
    budget_bytes: u64,
    total_bytes: u64,
    partitions: HashMap<PartitionKey, PartitionTail>,
}

impl TailCache {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            total_bytes: 0,
            partitions: HashMap::new(),
        }
    }

    /// Starts caching a partition (shrinking every partition's share).
    pub fn add_partition(&mut self, key: PartitionKey) {
        self.partitions.entry(key).or_default();
        self.enforce_budget();
    }

    pub fn remove_partition(&mut self, key: &PartitionKey) {
        if let Some(tail) = self.partitions.remove(key) {
            self.total_bytes -= tail.size_bytes;
        }
    }

    #[cfg(test)]
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn share_bytes(&self) -> u64 {
        self.budget_bytes / (self.partitions.len().max(1) as u64)
    }

    /// Adds an acknowledged batch. A batch that does not continue the cached
    /// range (after a recovery) replaces it.
    pub fn insert(&mut self, key: &PartitionKey, base_offset: u64, end_offset: u64, bytes: Bytes) {
        let share = self.share_bytes();
        let Some(tail) = self.partitions.get_mut(key) else {
            return;
        };
        if tail
            .batches
            .back()
            .is_some_and(|last| last.end_offset != base_offset)
        {
            self.total_bytes -= tail.size_bytes;
            tail.batches.clear();
            tail.size_bytes = 0;
        }
        let length = bytes.len() as u64;
        if length > share {
            // Would evict everything and still not fit.
            self.total_bytes -= tail.size_bytes;
            tail.batches.clear();
            tail.size_bytes = 0;
            return;
        }
        tail.batches.push_back(CachedBatch {
            base_offset,
            end_offset,
            bytes,
        });
        tail.size_bytes += length;
        self.total_bytes += length;
        while tail.size_bytes > share {
            let Some(evicted) = tail.batches.pop_front() else {
                break;
            };
            tail.size_bytes -= evicted.bytes.len() as u64;
            self.total_bytes -= evicted.bytes.len() as u64;
        }
        self.enforce_budget();
    }

    /// Drops the cached batches that start below `end_offset`: a
    /// compaction swap replaced that range (ADR 0016 §8), and readers must
    /// get the compacted segments from the stores, not the old bytes.
    pub fn evict_below(&mut self, key: &PartitionKey, end_offset: u64) {
        let Some(tail) = self.partitions.get_mut(key) else {
            return;
        };
        while tail
            .batches
            .front()
            .is_some_and(|batch| batch.base_offset < end_offset)
        {
            if let Some(evicted) = tail.batches.pop_front() {
                tail.size_bytes -= evicted.bytes.len() as u64;
                self.total_bytes -= evicted.bytes.len() as u64;
            }
        }
    }

    /// Evicts from partitions above their share until the total fits (the
    /// share shrinks when partitions are added).
    fn enforce_budget(&mut self) {
        let share = self.share_bytes();
        if self.total_bytes <= self.budget_bytes {
            return;
        }
        for tail in self.partitions.values_mut() {
            while tail.size_bytes > share {
                let Some(evicted) = tail.batches.pop_front() else {
                    break;
                };
                tail.size_bytes -= evicted.bytes.len() as u64;
                self.total_bytes -= evicted.bytes.len() as u64;
            }
        }
    }

    /// Batches starting with the one containing `offset`, up to `max_bytes`
    /// (at least one whole batch). `None` when the cache does not cover
    /// `offset` (read the store instead), including at or past its end.
    pub fn read(&self, key: &PartitionKey, offset: u64, max_bytes: usize) -> Option<Bytes> {
        let tail = self.partitions.get(key)?;
        let first = tail.batches.front()?;
        if offset < first.base_offset {
            return None;
        }
        let last = tail.batches.back()?;
        if offset >= last.end_offset {
            // The caller reads below the high watermark, which can be past
            // the cached end (entries a recovery made part of the log were
            // never cached): the store has them.
            return None;
        }
        let start = tail
            .batches
            .partition_point(|batch| batch.end_offset <= offset);
        let mut output = BytesMut::new();
        for batch in tail.batches.iter().skip(start) {
            if !output.is_empty() && output.len() + batch.bytes.len() > max_bytes {
                break;
            }
            output.extend_from_slice(&batch.bytes);
        }
        Some(output.freeze())
    }
}

/// The broker's one tail cache, shared by its partitions' tasks and reads.
#[derive(Clone)]
pub struct SharedTailCache(std::sync::Arc<std::sync::Mutex<TailCache>>);

impl SharedTailCache {
    pub fn new(budget_bytes: u64) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(TailCache::new(
            budget_bytes,
        ))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TailCache> {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn read(&self, key: &PartitionKey, offset: u64, max_bytes: usize) -> Option<Bytes> {
        self.lock().read(key, offset, max_bytes)
    }

    pub fn insert(&self, key: &PartitionKey, base_offset: u64, end_offset: u64, bytes: Bytes) {
        self.lock().insert(key, base_offset, end_offset, bytes);
    }

    pub fn add_partition(&self, key: PartitionKey) {
        self.lock().add_partition(key);
    }

    pub fn evict_below(&self, key: &PartitionKey, end_offset: u64) {
        self.lock().evict_below(key, end_offset);
    }

    pub fn remove_partition(&self, key: &PartitionKey) {
        self.lock().remove_partition(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(size: usize) -> Bytes {
        Bytes::from(vec![7u8; size])
    }

    #[test]
    fn a_compacted_range_is_no_longer_served_from_the_cache() {
        let key = PartitionKey::new("t", 0);
        let mut cache = TailCache::new(1 << 20);
        cache.add_partition(key.clone());
        cache.insert(&key, 0, 10, batch(100));
        cache.insert(&key, 10, 20, batch(100));
        cache.insert(&key, 20, 30, batch(100));
        cache.evict_below(&key, 20);
        assert!(cache.read(&key, 5, 1 << 20).is_none());
        assert!(cache.read(&key, 15, 1 << 20).is_none());
        assert_eq!(
            cache.read(&key, 25, 1 << 20).map(|bytes| bytes.len()),
            Some(100)
        );
        assert_eq!(cache.total_bytes(), 100);
        cache.evict_below(&key, u64::MAX);
        assert_eq!(cache.total_bytes(), 0);
        cache.evict_below(&PartitionKey::new("other", 0), 5);
    }

    #[test]
    fn reads_from_the_batch_containing_the_offset() {
        let key = PartitionKey::new("t", 0);
        let mut cache = TailCache::new(1000);
        cache.add_partition(key.clone());
        cache.insert(&key, 0, 5, batch(10));
        cache.insert(&key, 5, 8, batch(20));
        assert_eq!(cache.read(&key, 6, 100).map(|b| b.len()), Some(20));
        assert_eq!(cache.read(&key, 0, 100).map(|b| b.len()), Some(30));
        // max_bytes smaller than one batch still returns one whole batch.
        assert_eq!(cache.read(&key, 0, 1).map(|b| b.len()), Some(10));
        // At the cached end the store is asked: after a recovery the high
        // watermark can be past it.
        assert_eq!(cache.read(&key, 8, 100), None);
        assert_eq!(cache.read(&key, 9, 100), None);
    }

    #[test]
    fn evicts_oldest_within_the_partition_share() {
        let first = PartitionKey::new("t", 0);
        let second = PartitionKey::new("t", 1);
        let mut cache = TailCache::new(100);
        cache.add_partition(first.clone());
        cache.add_partition(second.clone());
        for index in 0..10u64 {
            cache.insert(&first, index, index + 1, batch(20));
        }
        // Share is 50: two batches of 20 fit.
        assert_eq!(cache.total_bytes(), 40);
        assert_eq!(cache.read(&first, 7, 1000), None);
        assert_eq!(cache.read(&first, 8, 1000).map(|b| b.len()), Some(40));
    }

    #[test]
    fn adding_partitions_shrinks_existing_tails() {
        let first = PartitionKey::new("t", 0);
        let second = PartitionKey::new("t", 1);
        let mut cache = TailCache::new(100);
        cache.add_partition(first.clone());
        for index in 0..5u64 {
            cache.insert(&first, index, index + 1, batch(20));
        }
        assert_eq!(cache.total_bytes(), 100);
        cache.add_partition(second.clone());
        cache.add_partition(PartitionKey::new("t", 2));
        // The next insert anywhere keeps the total within the budget and
        // brings the big tail down to its share (33).
        cache.insert(&second, 0, 1, batch(20));
        assert!(cache.total_bytes() <= 100, "{}", cache.total_bytes());
        cache.insert(&first, 5, 6, batch(20));
        assert_eq!(cache.read(&first, 4, 1000), None);
        assert_eq!(cache.read(&first, 5, 1000).map(|b| b.len()), Some(20));
    }

    #[test]
    fn a_gap_resets_the_partition_tail() {
        let key = PartitionKey::new("t", 0);
        let mut cache = TailCache::new(1000);
        cache.add_partition(key.clone());
        cache.insert(&key, 0, 5, batch(10));
        cache.insert(&key, 9, 10, batch(10));
        assert_eq!(cache.read(&key, 0, 100), None);
        assert_eq!(cache.read(&key, 9, 100).map(|b| b.len()), Some(10));
        cache.remove_partition(&key);
        assert_eq!(cache.total_bytes(), 0);
    }
}
