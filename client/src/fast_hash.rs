//! A small, fast, non-cryptographic hasher (the FxHash multiply-rotate
//! scheme) for the SDK's internal maps on the hot path, keyed by topic
//! names, partition numbers and request ids. Keys come from this process,
//! not from an attacker, so SipHash's flooding resistance buys nothing
//! there and costs a measurable share of produce CPU.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash's multiplier (from Firefox / rustc).
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FastBuildHasher = BuildHasherDefault<FastHasher>;
pub(crate) type FastHashMap<K, V> = HashMap<K, V, FastBuildHasher>;
pub(crate) type FastHashSet<K> = HashSet<K, FastBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash_of(value: impl Hash) -> u64 {
        FastBuildHasher::default().hash_one(value)
    }

    #[test]
    fn equal_keys_hash_equal_and_neighbours_differ() {
        assert_eq!(hash_of(("orders", 3u32)), hash_of(("orders", 3u32)));
        assert_ne!(hash_of(("orders", 3u32)), hash_of(("orders", 4u32)));
        assert_ne!(hash_of("orders"), hash_of("orderz"));
        // Strings of more than one word, and a partial last word.
        assert_ne!(
            hash_of("a-rather-long-topic-name-1"),
            hash_of("a-rather-long-topic-name-2")
        );
    }

    #[test]
    fn map_works_with_many_keys() {
        let mut map: FastHashMap<(String, u32), u32> = FastHashMap::default();
        for partition in 0..1000 {
            map.insert((format!("topic-{}", partition % 7), partition), partition);
        }
        assert_eq!(map.len(), 1000);
        for partition in 0..1000 {
            assert_eq!(
                map.get(&(format!("topic-{}", partition % 7), partition)),
                Some(&partition)
            );
        }
    }
}
