//! The open-file budget of the segment files, as a pure structure: which
//! segments' files are open, least recently used first, and which to close
//! to stay within `capacity`. No IO: `segment_files.rs` opens and closes
//! the files it names.
//!
//! A file in use (a read, a queued append, a checkpoint, or unsynced
//! writes hold it) is never chosen for closing, so the number of open
//! files can exceed the capacity while more than `capacity` files are in
//! use at once; it comes back within the capacity as they are released.

use std::collections::{BTreeMap, HashMap};

/// Least-recently-used order of open files, with a capacity.
#[derive(Debug)]
pub(super) struct LruBudget {
    capacity: usize,
    /// Ticks every use; the last use of each open key.
    clock: u64,
    last_use: HashMap<u64, u64>,
    /// Keys by their last use, oldest first.
    by_use: BTreeMap<u64, u64>,
}

impl LruBudget {
    /// An empty budget of `capacity` files (at least 1).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            clock: 0,
            last_use: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Open files counted.
    pub(super) fn len(&self) -> usize {
        self.last_use.len()
    }

    /// Records a use of `key`, adding it if absent (it is then the most
    /// recently used).
    pub(super) fn touch(&mut self, key: u64) {
        self.clock += 1;
        if let Some(previous) = self.last_use.insert(key, self.clock) {
            self.by_use.remove(&previous);
        }
        self.by_use.insert(self.clock, key);
    }

    /// Forgets `key` (its file was closed or replaced); true if it was
    /// counted.
    pub(super) fn remove(&mut self, key: u64) -> bool {
        match self.last_use.remove(&key) {
            Some(tick) => {
                self.by_use.remove(&tick);
                true
            }
            None => false,
        }
    }

    /// Chooses files to close, least recently used first, skipping those
    /// `in_use`, until `room` more fit within the capacity (or nothing
    /// more can be closed), and forgets them. The caller closes them.
    pub(super) fn evict_for(&mut self, room: usize, in_use: impl Fn(u64) -> bool) -> Vec<u64> {
        let target = self.capacity.saturating_sub(room);
        let mut chosen = Vec::new();
        let mut remaining = self.len();
        for (_, &key) in self.by_use.iter() {
            if remaining <= target {
                break;
            }
            if !in_use(key) {
                chosen.push(key);
                remaining -= 1;
            }
        }
        for key in &chosen {
            self.remove(*key);
        }
        chosen
    }

    /// Chooses every file not `in_use` (after the limit of open files was
    /// hit), and forgets them.
    pub(super) fn evict_all_unused(&mut self, in_use: impl Fn(u64) -> bool) -> Vec<u64> {
        let chosen: Vec<u64> = self
            .by_use
            .values()
            .copied()
            .filter(|key| !in_use(*key))
            .collect();
        for key in &chosen {
            self.remove(*key);
        }
        chosen
    }
}

/// The budget to use: `configured` if not 0, else half the process's soft
/// limit of open files (`soft_limit`, `None` when unlimited or unknown),
/// leaving the other half to the journal, sockets and everything else; at
/// least [`MIN_AUTO_BUDGET`], at most [`MAX_AUTO_BUDGET`].
pub(crate) fn resolve_budget(configured: u64, soft_limit: Option<u64>) -> usize {
    if configured > 0 {
        return usize::try_from(configured).unwrap_or(usize::MAX);
    }
    let half = soft_limit.map_or(MAX_AUTO_BUDGET, |limit| limit / 2);
    usize::try_from(half.clamp(MIN_AUTO_BUDGET, MAX_AUTO_BUDGET)).unwrap_or(usize::MAX)
}

/// Smallest derived budget (a very low file limit still gets this many).
pub(crate) const MIN_AUTO_BUDGET: u64 = 16;
/// Largest derived budget, for unlimited or huge file limits.
pub(crate) const MAX_AUTO_BUDGET: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(capacity: usize, keys: &[u64]) -> LruBudget {
        let mut budget = LruBudget::new(capacity);
        for key in keys {
            budget.touch(*key);
        }
        budget
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut budget = filled(3, &[1, 2, 3]);
        budget.touch(1);
        assert_eq!(budget.evict_for(1, |_| false), vec![2]);
        assert_eq!(budget.len(), 2);
        budget.touch(4);
        assert_eq!(budget.evict_for(1, |_| false), vec![3]);
    }

    #[test]
    fn nothing_is_evicted_while_there_is_room() {
        let mut budget = filled(3, &[1, 2]);
        assert!(budget.evict_for(1, |_| false).is_empty());
        assert_eq!(budget.len(), 2);
    }

    #[test]
    fn files_in_use_are_never_evicted_and_the_budget_may_be_exceeded() {
        let mut budget = filled(2, &[1, 2, 3]);
        assert!(budget.evict_for(1, |_| true).is_empty());
        assert_eq!(budget.len(), 3);
        // Once 1 and 2 are released, the count comes back within budget.
        assert_eq!(budget.evict_for(1, |key| key == 3), vec![1, 2]);
        assert_eq!(budget.len(), 1);
    }

    #[test]
    fn a_capacity_of_zero_is_one() {
        let mut budget = LruBudget::new(0);
        assert_eq!(budget.capacity(), 1);
        budget.touch(u64::MAX);
        assert_eq!(budget.evict_for(1, |_| false), vec![u64::MAX]);
        assert_eq!(budget.len(), 0);
    }

    #[test]
    fn touch_and_remove_keep_one_entry_per_key() {
        let mut budget = filled(10, &[5, 5, 5, 0]);
        assert_eq!(budget.len(), 2);
        assert!(budget.remove(5));
        assert!(!budget.remove(5));
        assert_eq!(budget.evict_for(10, |_| false), vec![0]);
        assert_eq!(budget.len(), 0);
    }

    #[test]
    fn evict_all_unused_keeps_only_files_in_use() {
        let mut budget = filled(100, &[1, 2, 3, 4]);
        assert_eq!(budget.evict_all_unused(|key| key % 2 == 0), vec![1, 3]);
        assert_eq!(budget.len(), 2);
    }

    #[test]
    fn the_open_count_never_exceeds_the_capacity_when_nothing_is_in_use() {
        let mut budget = LruBudget::new(7);
        for key in 0..1000u64 {
            budget.evict_for(1, |_| false);
            budget.touch(key % 50);
            assert!(budget.len() <= 7);
        }
    }

    #[test]
    fn the_budget_is_configured_or_half_the_soft_limit_within_bounds() {
        assert_eq!(resolve_budget(10, Some(4)), 10);
        assert_eq!(resolve_budget(u64::MAX, None), usize::MAX);
        assert_eq!(resolve_budget(0, Some(1024)), 512);
        assert_eq!(resolve_budget(0, Some(0)), MIN_AUTO_BUDGET as usize);
        assert_eq!(resolve_budget(0, Some(1)), MIN_AUTO_BUDGET as usize);
        assert_eq!(resolve_budget(0, Some(u64::MAX)), MAX_AUTO_BUDGET as usize);
        assert_eq!(resolve_budget(0, None), MAX_AUTO_BUDGET as usize);
    }
}
