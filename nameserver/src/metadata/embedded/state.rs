//! The embedded store's keys in memory: the global revision and an ordered
//! index of entries. Pure: every write is first planned as a [`WriteSet`]
//! (one new revision, the changes), then the part that must be durable is
//! taken out of it ([`State::disk_part`]) and written, and only then the
//! set is applied ([`State::apply`]). `apply` is the one place every
//! change lands, so a watch notifier hooks in there.

use super::super::{Compare, KeyValue, LeaseId, MetadataError, Put, Transaction};
use std::collections::{BTreeMap, HashMap};

/// One key's value and revisions; `lease` is `None` for persisted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub lease: Option<LeaseId>,
}

/// One change of a [`WriteSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Put(String, Entry),
    Delete(String),
}

/// The changes of one write, all at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WriteSet {
    pub revision: i64,
    pub changes: Vec<Change>,
}

/// One durable change, in the order it must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DiskOp {
    Put(String, Entry),
    Delete(String),
}

/// What of a [`WriteSet`] goes to disk: non-leased puts, and removals of
/// keys that were on disk (deleted, or overwritten under a lease).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DiskWrite {
    pub revision: i64,
    pub ops: Vec<DiskOp>,
}

/// What a transaction comes to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A compare failed: nothing is written.
    CompareFailed,
    /// Every compare held and there is nothing to write.
    Nothing,
    Write(WriteSet),
}

#[derive(Debug, Default)]
pub(super) struct State {
    revision: i64,
    entries: BTreeMap<String, Entry>,
}

fn key_value(key: &str, entry: &Entry) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: entry.value.clone(),
        mod_revision: entry.mod_revision,
        create_revision: entry.create_revision,
    }
}

impl State {
    /// The state loaded from disk (every entry without a lease).
    pub(super) fn loaded(revision: i64, entries: BTreeMap<String, Entry>) -> Self {
        Self { revision, entries }
    }

    pub(super) fn revision(&self) -> i64 {
        self.revision
    }

    /// The mod revision of every key under `prefix` (for the watch).
    pub(super) fn mod_revisions(&self, prefix: &str) -> BTreeMap<String, i64> {
        self.keys_with_prefix(prefix)
            .map(|(key, entry)| (key.clone(), entry.mod_revision))
            .collect()
    }

    pub(super) fn get(&self, key: &str) -> Option<KeyValue> {
        self.entries.get(key).map(|entry| key_value(key, entry))
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
    }

    /// Every key starting with `prefix`, in key order.
    pub(super) fn range(&self, prefix: &str) -> Vec<KeyValue> {
        self.keys_with_prefix(prefix)
            .map(|(key, entry)| key_value(key, entry))
            .collect()
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::ModRevisionEquals(key, revision) => self
                .entries
                .get(key)
                .is_some_and(|entry| entry.mod_revision == *revision),
            Compare::Absent(key) => !self.entries.contains_key(key),
            Compare::ValueEquals(key, value) => self
                .entries
                .get(key)
                .is_some_and(|entry| &entry.value == value),
            Compare::CreateRevisionEquals(key, revision) => self
                .entries
                .get(key)
                .is_some_and(|entry| entry.create_revision == *revision),
        }
    }

    /// The entry `put` writes at `revision`; `recreated` when the key is
    /// deleted earlier in the same write (a new incarnation).
    fn entry_for(&self, put: Put, revision: i64, recreated: bool) -> (String, Entry) {
        let create_revision = match self.entries.get(&put.key) {
            Some(entry) if !recreated => entry.create_revision,
            _ => revision,
        };
        let entry = Entry {
            value: put.value,
            mod_revision: revision,
            create_revision,
            lease: put.lease,
        };
        (put.key, entry)
    }

    /// One put (the caller checked its lease is live).
    pub(super) fn plan_put(&self, put: Put) -> WriteSet {
        let revision = self.revision + 1;
        let (key, entry) = self.entry_for(put, revision, false);
        WriteSet {
            revision,
            changes: vec![Change::Put(key, entry)],
        }
    }

    /// Removal of `keys` that exist, at one new revision; `None` if none does.
    pub(super) fn plan_deletes(&self, keys: impl IntoIterator<Item = String>) -> Option<WriteSet> {
        let changes: Vec<Change> = keys
            .into_iter()
            .filter(|key| self.entries.contains_key(key))
            .map(Change::Delete)
            .collect();
        (!changes.is_empty()).then(|| WriteSet {
            revision: self.revision + 1,
            changes,
        })
    }

    pub(super) fn plan_delete_prefix(&self, prefix: &str) -> Option<WriteSet> {
        let keys: Vec<String> = self
            .keys_with_prefix(prefix)
            .map(|(key, _)| key.clone())
            .collect();
        self.plan_deletes(keys)
    }

    /// Removal of every key attached to one of `leases` (expired or revoked).
    pub(super) fn plan_lease_removal(&self, leases: &[LeaseId]) -> Option<WriteSet> {
        if leases.is_empty() {
            return None;
        }
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.lease.is_some_and(|lease| leases.contains(&lease)))
            .map(|(key, _)| key.clone())
            .collect();
        self.plan_deletes(keys)
    }

    /// Plans `transaction`: its compares, then its deletes and puts at one
    /// new revision. A put under a lease that is not live is a conflict.
    pub(super) fn plan_transaction(
        &self,
        transaction: Transaction,
        lease_live: impl Fn(LeaseId) -> bool,
    ) -> Result<Outcome, MetadataError> {
        if !transaction
            .compares
            .iter()
            .all(|compare| self.compare_holds(compare))
        {
            return Ok(Outcome::CompareFailed);
        }
        if let Some(put) = transaction
            .puts
            .iter()
            .find(|put| put.lease.is_some_and(|lease| !lease_live(lease)))
        {
            return Err(MetadataError::Conflict(format!(
                "lease {} not found for key {:?}",
                put.lease.unwrap_or_default(),
                put.key
            )));
        }
        if transaction.puts.is_empty() && transaction.deletes.is_empty() {
            return Ok(Outcome::Nothing);
        }
        let revision = self.revision + 1;
        let mut changes: Vec<Change> = Vec::new();
        for key in &transaction.deletes {
            if self.entries.contains_key(key) {
                changes.push(Change::Delete(key.clone()));
            }
        }
        for put in transaction.puts {
            let recreated = transaction.deletes.contains(&put.key);
            let (key, entry) = self.entry_for(put, revision, recreated);
            changes.push(Change::Put(key, entry));
        }
        Ok(Outcome::Write(WriteSet { revision, changes }))
    }

    /// The durable part of `write` (computed before it is applied); `None`
    /// when it changes only leased keys.
    pub(super) fn disk_part(&self, write: &WriteSet) -> Option<DiskWrite> {
        // Whether each key is on disk, as the changes so far leave it.
        let mut on_disk: HashMap<&str, bool> = HashMap::new();
        let mut disk = DiskWrite {
            revision: write.revision,
            ..DiskWrite::default()
        };
        for change in &write.changes {
            let key = match change {
                Change::Put(key, _) | Change::Delete(key) => key.as_str(),
            };
            let was_on_disk = on_disk.get(key).copied().unwrap_or_else(|| {
                self.entries
                    .get(key)
                    .is_some_and(|entry| entry.lease.is_none())
            });
            match change {
                Change::Put(key, entry) if entry.lease.is_none() => {
                    disk.ops.push(DiskOp::Put(key.clone(), entry.clone()));
                    on_disk.insert(key, true);
                }
                Change::Put(key, _) | Change::Delete(key) => {
                    if was_on_disk {
                        disk.ops.push(DiskOp::Delete(key.clone()));
                    }
                    on_disk.insert(key, false);
                }
            }
        }
        (!disk.ops.is_empty()).then_some(disk)
    }

    /// Applies a planned write.
    pub(super) fn apply(&mut self, write: WriteSet) {
        debug_assert!(write.revision > self.revision);
        self.revision = write.revision;
        for change in write.changes {
            match change {
                Change::Put(key, entry) => {
                    self.entries.insert(key, entry);
                }
                Change::Delete(key) => {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, lease: Option<LeaseId>) -> Put {
        Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease,
        }
    }

    fn write(state: &mut State, put_: Put) -> Option<DiskWrite> {
        let set = state.plan_put(put_);
        let disk = state.disk_part(&set);
        state.apply(set);
        disk
    }

    #[test]
    fn puts_keep_the_create_revision_and_advance_the_mod_revision() {
        let mut state = State::default();
        write(&mut state, put("a", "1", None));
        write(&mut state, put("a", "2", None));
        let entry = state.get("a").expect("present");
        assert_eq!((entry.create_revision, entry.mod_revision), (1, 2));
        assert_eq!(state.revision(), 2);
    }

    #[test]
    fn only_unleased_keys_go_to_disk_and_leasing_a_key_removes_it_there() {
        let mut state = State::default();
        let disk = write(&mut state, put("p", "1", None)).expect("persisted");
        assert!(matches!(disk.ops.as_slice(), [DiskOp::Put(key, _)] if key == "p"));
        assert_eq!(write(&mut state, put("l", "1", Some(9))), None);
        let disk = write(&mut state, put("p", "2", Some(9))).expect("leaves disk");
        assert_eq!(disk.ops, vec![DiskOp::Delete("p".into())]);
        // Both keys are now leased: dropping the lease touches no disk.
        let removal = state.plan_lease_removal(&[9]).expect("two keys");
        assert_eq!(removal.changes.len(), 2);
        assert_eq!(state.disk_part(&removal), None);
        state.apply(removal);
        assert!(state.range("").is_empty());
        assert_eq!(state.revision(), 4);
    }

    #[test]
    fn a_transaction_applies_all_or_nothing() {
        let mut state = State::default();
        write(&mut state, put("t/a", "1", None));
        let failing = Transaction {
            compares: vec![Compare::Absent("t/a".into())],
            puts: vec![put("t/b", "x", None)],
            deletes: vec![],
        };
        assert_eq!(
            state.plan_transaction(failing, |_| true).expect("plan"),
            Outcome::CompareFailed
        );
        let dead_lease = Transaction {
            compares: vec![],
            puts: vec![put("t/b", "x", Some(3))],
            deletes: vec![],
        };
        assert!(matches!(
            state.plan_transaction(dead_lease, |_| false),
            Err(MetadataError::Conflict(_))
        ));
        let recreate = Transaction {
            compares: vec![Compare::ModRevisionEquals("t/a".into(), 1)],
            puts: vec![put("t/a", "2", None)],
            deletes: vec!["t/a".into(), "t/missing".into()],
        };
        let Outcome::Write(set) = state.plan_transaction(recreate, |_| true).expect("plan") else {
            panic!("expected a write");
        };
        let disk = state.disk_part(&set).expect("durable");
        // In order: the delete, then the new incarnation.
        assert!(matches!(
            disk.ops.as_slice(),
            [DiskOp::Delete(deleted), DiskOp::Put(put, _)] if deleted == "t/a" && put == "t/a"
        ));
        state.apply(set);
        let entry = state.get("t/a").expect("present");
        // Deleted and put again in one write: a new incarnation.
        assert_eq!((entry.create_revision, entry.mod_revision), (2, 2));
    }

    #[test]
    fn a_key_put_then_leased_in_one_write_leaves_the_disk_last() {
        let state = State::default();
        let transaction = Transaction {
            compares: vec![],
            puts: vec![put("k", "1", None), put("k", "2", Some(4))],
            deletes: vec![],
        };
        let Outcome::Write(set) = state.plan_transaction(transaction, |_| true).expect("plan")
        else {
            panic!("expected a write");
        };
        let disk = state.disk_part(&set).expect("durable");
        assert!(matches!(
            disk.ops.as_slice(),
            [DiskOp::Put(_, _), DiskOp::Delete(_)]
        ));
    }

    #[test]
    fn prefix_deletes_take_one_revision_and_only_matching_keys() {
        let mut state = State::default();
        for key in ["r/a/1", "r/a/2", "r/ab", "r/b"] {
            write(&mut state, put(key, "v", None));
        }
        let set = state.plan_delete_prefix("r/a/").expect("two keys");
        assert_eq!(set.revision, 5);
        state.apply(set);
        let left: Vec<String> = state.range("r/").into_iter().map(|kv| kv.key).collect();
        assert_eq!(left, vec!["r/ab".to_string(), "r/b".to_string()]);
        assert_eq!(state.plan_delete_prefix("r/a/"), None);
        assert_eq!(state.plan_deletes(["nope".to_string()]), None);
    }
}
