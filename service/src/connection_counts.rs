//! Connections open at once per key (a client IP address, a principal),
//! each counted by a guard that gives its place back when the connection
//! ends. Memory is one entry per key with an open connection, so it is
//! bounded by `max_connections`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// See the module documentation.
#[derive(Debug)]
pub struct ConnectionCounts<K: Hash + Eq + Clone> {
    open: Arc<Mutex<HashMap<K, u64>>>,
}

impl<K: Hash + Eq + Clone> Clone for ConnectionCounts<K> {
    fn clone(&self) -> Self {
        Self {
            open: self.open.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> Default for ConnectionCounts<K> {
    fn default() -> Self {
        Self {
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// One counted connection; dropping it (with the connection) uncounts it.
#[derive(Debug)]
pub struct ConnectionGuard<K: Hash + Eq + Clone> {
    key: K,
    counts: ConnectionCounts<K>,
}

impl<K: Hash + Eq + Clone> ConnectionCounts<K> {
    /// Counts one more connection of `key`, unless `limit` are open.
    pub fn try_open(&self, key: &K, limit: u64) -> Option<ConnectionGuard<K>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                open.remove(key);
            }
            return None;
        }
        *count += 1;
        Some(ConnectionGuard {
            key: key.clone(),
            counts: self.clone(),
        })
    }

    /// Connections of `key` open now.
    #[cfg(test)]
    pub fn open(&self, key: &K) -> u64 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(key).copied().unwrap_or(0)
    }

    /// Keys with a connection open now.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<K: Hash + Eq + Clone> Drop for ConnectionGuard<K> {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_the_limit_and_gives_places_back() {
        let counts = ConnectionCounts::<&str>::default();
        let first = counts.try_open(&"a", 2).expect("first");
        let second = counts.try_open(&"a", 2).expect("second");
        assert!(counts.try_open(&"a", 2).is_none());
        assert!(
            counts.try_open(&"b", 2).is_some(),
            "another key is not affected"
        );
        assert_eq!(counts.open(&"a"), 2);
        drop(first);
        let third = counts.try_open(&"a", 2).expect("a place was given back");
        drop((second, third));
        assert_eq!(counts.open(&"a"), 0);
        assert_eq!(counts.keys(), 0, "no entry is kept for closed keys");
        assert!(counts.try_open(&"c", 0).is_none());
        assert_eq!(counts.keys(), 0, "a refused key leaves nothing behind");
    }
}
