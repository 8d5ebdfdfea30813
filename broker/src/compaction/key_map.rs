//! The key map of one compaction pass (ADR 0016 §8, step 2): each key's
//! 128-bit hash → the offset of its latest committed record in the mapped
//! part of the log. Bounded by `[compaction] key_map_bytes`; pure.
//!
//! The hash is two independently keyed SipHash-1-3 (std's `RandomState`),
//! 128 bits together, with fresh random keys for every pass: the map lives
//! only for one pass in one process, so nothing needs a stable hash, and
//! a producer cannot craft keys that collide. Two different keys share a
//! hash with probability about 2^-128 per pair; that collision (the later
//! key's record would drop the earlier key's) is the accepted exception,
//! as Kafka accepts MD5's.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// Bytes one entry is charged against `key_map_bytes`: 16 of hash, 8 of
/// offset, and the hash table's control byte and spare capacity (load
/// factor 7/8) rounded up. 64 MiB hold 2,097,152 keys.
pub const BYTES_PER_ENTRY: u64 = 32;

/// A key's 128-bit hash under one pass's keys.
pub type KeyHash = u128;

/// Hashes keys with the random keys of one pass.
#[derive(Debug, Clone)]
pub struct KeyHasher {
    low: RandomState,
    high: RandomState,
}

impl KeyHasher {
    /// A hasher with fresh random keys.
    pub fn new() -> Self {
        Self {
            low: RandomState::new(),
            high: RandomState::new(),
        }
    }

    pub fn hash(&self, key: &[u8]) -> KeyHash {
        let low = self.low.hash_one(key);
        let high = self.high.hash_one(key);
        (u128::from(high) << 64) | u128::from(low)
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a record could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapFull {
    /// The map holds `capacity` keys; a new one does not fit.
    Full { capacity: u64 },
}

/// Hash → latest offset, holding at most `capacity` keys.
#[derive(Debug)]
pub struct KeyMap {
    hasher: KeyHasher,
    latest: HashMap<KeyHash, u64>,
    capacity: u64,
}

impl KeyMap {
    /// A map charged at most `key_map_bytes` (at least one key).
    pub fn new(key_map_bytes: u64) -> Self {
        Self::with_hasher(key_map_bytes, KeyHasher::new())
    }

    /// As [`KeyMap::new`] with a given hasher (tests).
    pub fn with_hasher(key_map_bytes: u64, hasher: KeyHasher) -> Self {
        let capacity = (key_map_bytes / BYTES_PER_ENTRY).max(1);
        Self {
            hasher,
            latest: HashMap::new(),
            capacity,
        }
    }

    /// Most keys the map holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Keys held.
    pub fn len(&self) -> u64 {
        self.latest.len() as u64
    }

    #[cfg(test)]
    pub fn hash(&self, key: &[u8]) -> KeyHash {
        self.hasher.hash(key)
    }

    /// Records that `key`'s record at `offset` is its latest so far
    /// (records are put in offset order; an older offset never replaces a
    /// newer one). A new key beyond the capacity is [`MapFull`] and
    /// changes nothing.
    pub fn put(&mut self, key: &[u8], offset: u64) -> Result<(), MapFull> {
        let hash = self.hasher.hash(key);
        if let Some(latest) = self.latest.get_mut(&hash) {
            *latest = (*latest).max(offset);
            return Ok(());
        }
        if self.len() >= self.capacity {
            return Err(MapFull::Full {
                capacity: self.capacity,
            });
        }
        self.latest.insert(hash, offset);
        Ok(())
    }

    /// The latest mapped offset of `key`, if mapped.
    pub fn latest(&self, key: &[u8]) -> Option<u64> {
        self.latest.get(&self.hasher.hash(key)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_offset_wins_and_capacity_bounds_new_keys() {
        let mut map = KeyMap::new(3 * BYTES_PER_ENTRY);
        assert_eq!(map.capacity(), 3);
        for (key, offset) in [("a", 0), ("b", 1), ("a", 2), ("c", 3)] {
            map.put(key.as_bytes(), offset).expect("fits");
        }
        assert_eq!(map.latest(b"a"), Some(2));
        assert_eq!(map.latest(b"z"), None);
        // An older offset never replaces a newer one.
        map.put(b"a", 1).expect("known key");
        assert_eq!(map.latest(b"a"), Some(2));
        // Full: a known key still updates, a new one is refused and
        // leaves the map as it was.
        map.put(b"b", 9).expect("known key");
        assert_eq!(map.put(b"d", 10), Err(MapFull::Full { capacity: 3 }));
        assert_eq!(map.len(), 3);
        assert_eq!(map.latest(b"d"), None);
        assert_eq!(map.latest(b"b"), Some(9));
    }

    #[test]
    fn zero_one_and_huge_budgets() {
        assert_eq!(KeyMap::new(0).capacity(), 1, "at least one key");
        assert_eq!(KeyMap::new(1).capacity(), 1);
        assert_eq!(KeyMap::new(u64::MAX).capacity(), u64::MAX / BYTES_PER_ENTRY);
        assert_eq!(KeyMap::new(64 << 20).capacity(), 2_097_152);
    }

    #[test]
    fn huge_and_empty_keys_hash_apart() {
        let map = KeyMap::new(1 << 20);
        let huge = vec![7u8; 4 << 20];
        let mut other = huge.clone();
        other[(4 << 20) - 1] = 8;
        assert_ne!(map.hash(&huge), map.hash(&other));
        assert_ne!(map.hash(b""), map.hash(b"\0"));
        // Fresh keys per pass: two hashers disagree (with overwhelming
        // probability), one hasher agrees with itself.
        assert_ne!(KeyHasher::new().hash(b"k"), KeyHasher::new().hash(b"k"));
        assert_eq!(map.hash(b"k"), map.hash(b"k"));
    }
}
