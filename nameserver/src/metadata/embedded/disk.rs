//! The embedded store's durable half: one redb database file
//! (`metadata.redb`) holding the non-leased keys with their revisions, the
//! global revision and the next lease id.
//!
//! Every write is one redb write transaction committed with
//! [`Durability::Immediate`]: `commit` returns after the new pages and the
//! checksummed header are fsynced, so a write the store acknowledged
//! survives a crash or power loss, and a torn commit is rolled back to the
//! previous one when the file is opened (redb's crash recovery). Two-phase
//! commit is not enabled: it adds a second fsync per write and guards only
//! against a checksum collision.

use super::super::{LeaseId, MetadataError};
use super::state::{DiskOp, DiskWrite, Entry};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The database file in the metadata directory.
pub(super) const FILE_NAME: &str = "metadata.redb";
/// key -> [mod revision: i64 LE][create revision: i64 LE][value bytes].
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// The store's counters: [`REVISION`], [`NEXT_LEASE_ID`], [`FORMAT`].
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
const NEXT_LEASE_ID: &str = "next_lease_id";
const FORMAT: &str = "format";
const FORMAT_VERSION: i64 = 1;
/// Bytes of the two revisions before each value.
const HEADER_BYTES: usize = 16;

/// What the database holds.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub revision: i64,
    pub next_lease_id: LeaseId,
    pub entries: BTreeMap<String, Entry>,
}

/// The open database file.
pub(super) struct Disk {
    database: Database,
    path: PathBuf,
}

fn encode(entry: &Entry) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + entry.value.len());
    bytes.extend_from_slice(&entry.mod_revision.to_le_bytes());
    bytes.extend_from_slice(&entry.create_revision.to_le_bytes());
    bytes.extend_from_slice(&entry.value);
    bytes
}

/// Decodes one stored entry, checking its revisions against the store's.
fn decode(key: &str, bytes: &[u8], revision: i64) -> Result<Entry, String> {
    let (Some(mod_bytes), Some(create_bytes), Some(value)) =
        (bytes.get(0..8), bytes.get(8..16), bytes.get(HEADER_BYTES..))
    else {
        return Err(format!("key {key:?} has a truncated record"));
    };
    let mod_revision = i64::from_le_bytes(mod_bytes.try_into().map_err(|_| "short")?);
    let create_revision = i64::from_le_bytes(create_bytes.try_into().map_err(|_| "short")?);
    if create_revision < 1 || create_revision > mod_revision || mod_revision > revision {
        return Err(format!(
            "key {key:?} has revisions (create {create_revision}, mod {mod_revision}) beyond the store revision {revision}"
        ));
    }
    Ok(Entry {
        value: value.to_vec(),
        mod_revision,
        create_revision,
        lease: None,
    })
}

fn corrupt(path: &Path, error: impl std::fmt::Display) -> MetadataError {
    MetadataError::Corrupt(format!(
        "{} cannot be read ({error}); move it away to start with empty metadata (its topics are then lost), or restore a copy",
        path.display()
    ))
}

impl Disk {
    /// Opens the database at `path`, creating an empty one when there is
    /// none, and reads everything it holds. An unreadable or damaged file
    /// is [`MetadataError::Corrupt`] naming the path; a file another
    /// process has open is [`MetadataError::Unavailable`].
    pub(super) fn open(path: &Path) -> Result<(Self, Loaded), MetadataError> {
        let database = Database::builder().create(path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => MetadataError::Unavailable(format!(
                "{} is in use by another process (is another `sluice dev` running on this data directory?)",
                path.display()
            )),
            other => corrupt(path, other),
        })?;
        let disk = Self {
            database,
            path: path.to_path_buf(),
        };
        disk.initialize()?;
        let loaded = disk.load()?;
        Ok((disk, loaded))
    }

    /// Creates the tables and the format marker of a new file; checks the
    /// marker of an existing one.
    fn initialize(&self) -> Result<(), MetadataError> {
        let path = &self.path;
        let transaction = self.database.begin_write().map_err(|e| corrupt(path, e))?;
        {
            transaction.open_table(KEYS).map_err(|e| corrupt(path, e))?;
            let mut meta = transaction.open_table(META).map_err(|e| corrupt(path, e))?;
            let format = meta
                .get(FORMAT)
                .map_err(|e| corrupt(path, e))?
                .map(|v| v.value());
            match format {
                None => {
                    meta.insert(FORMAT, FORMAT_VERSION)
                        .map_err(|e| corrupt(path, e))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(corrupt(
                        path,
                        format!("format {other}, this version reads {FORMAT_VERSION}"),
                    ))
                }
            }
        }
        transaction.commit().map_err(|e| corrupt(path, e))
    }

    fn load(&self) -> Result<Loaded, MetadataError> {
        let path = &self.path;
        let transaction = self.database.begin_read().map_err(|e| corrupt(path, e))?;
        let meta = transaction.open_table(META).map_err(|e| corrupt(path, e))?;
        let counter = |name: &str| -> Result<i64, MetadataError> {
            Ok(meta
                .get(name)
                .map_err(|e| corrupt(path, e))?
                .map_or(0, |value| value.value()))
        };
        let revision = counter(REVISION)?;
        let next_lease_id = counter(NEXT_LEASE_ID)?.max(1);
        let keys = transaction.open_table(KEYS).map_err(|e| corrupt(path, e))?;
        let mut entries = BTreeMap::new();
        for item in keys.iter().map_err(|e| corrupt(path, e))? {
            let (key, value) = item.map_err(|e| corrupt(path, e))?;
            let entry =
                decode(key.value(), value.value(), revision).map_err(|e| corrupt(path, e))?;
            entries.insert(key.value().to_string(), entry);
        }
        Ok(Loaded {
            revision,
            next_lease_id,
            entries,
        })
    }

    /// Writes change sets (in revision order) in one transaction, durably:
    /// returns after the fsync. The stored revision becomes the last one's.
    pub(super) fn write(
        &self,
        writes: &[DiskWrite],
        next_lease_id: LeaseId,
    ) -> Result<(), MetadataError> {
        let Some(last) = writes.last() else {
            return Ok(());
        };
        let ops = writes.iter().flat_map(|write| write.ops.iter());
        self.write_ops(last.revision, next_lease_id, ops)
    }

    /// Writes everything `loaded` holds (a migration into a new file).
    pub(super) fn import(&self, loaded: &Loaded) -> Result<(), MetadataError> {
        let ops: Vec<DiskOp> = loaded
            .entries
            .iter()
            .map(|(key, entry)| DiskOp::Put(key.clone(), entry.clone()))
            .collect();
        self.write_ops(loaded.revision, loaded.next_lease_id, ops.iter())
    }

    fn write_ops<'a>(
        &self,
        revision: i64,
        next_lease_id: LeaseId,
        ops: impl Iterator<Item = &'a DiskOp>,
    ) -> Result<(), MetadataError> {
        let failed = |error: &dyn std::fmt::Display| {
            MetadataError::Unavailable(format!("cannot write {}: {error}", self.path.display()))
        };
        let mut transaction = self.database.begin_write().map_err(|e| failed(&e))?;
        transaction.set_durability(Durability::Immediate);
        {
            let mut keys = transaction.open_table(KEYS).map_err(|e| failed(&e))?;
            for op in ops {
                match op {
                    DiskOp::Put(key, entry) => keys
                        .insert(key.as_str(), encode(entry).as_slice())
                        .map(|_| ()),
                    DiskOp::Delete(key) => keys.remove(key.as_str()).map(|_| ()),
                }
                .map_err(|e| failed(&e))?;
            }
            let mut meta = transaction.open_table(META).map_err(|e| failed(&e))?;
            meta.insert(REVISION, revision).map_err(|e| failed(&e))?;
            meta.insert(NEXT_LEASE_ID, next_lease_id)
                .map_err(|e| failed(&e))?;
        }
        transaction.commit().map_err(|e| failed(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str, mod_revision: i64, create_revision: i64) -> Entry {
        Entry {
            value: value.as_bytes().to_vec(),
            mod_revision,
            create_revision,
            lease: None,
        }
    }

    #[test]
    fn entries_round_trip_and_bad_records_are_refused() {
        let stored = entry("hello", 7, 3);
        assert_eq!(decode("k", &encode(&stored), 7), Ok(stored.clone()));
        assert!(
            decode("k", &encode(&stored), 6).is_err(),
            "beyond the store revision"
        );
        assert!(
            decode("k", &encode(&entry("x", 2, 3)), 9).is_err(),
            "created after modified"
        );
        assert!(decode("k", &[1, 2, 3], 9).is_err(), "truncated");
    }

    #[test]
    fn writes_survive_reopening() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join(FILE_NAME);
        {
            let (disk, loaded) = Disk::open(&path).expect("create");
            assert_eq!(loaded.revision, 0);
            assert!(loaded.entries.is_empty());
            let first = DiskWrite {
                revision: 2,
                ops: vec![
                    DiskOp::Put("a".into(), entry("1", 1, 1)),
                    DiskOp::Put("b".into(), entry("2", 2, 2)),
                ],
            };
            let second = DiskWrite {
                revision: 3,
                ops: vec![DiskOp::Delete("a".into())],
            };
            // Two change sets in one transaction, applied in order.
            disk.write(&[first, second], 5).expect("write");
        }
        let (_disk, loaded) = Disk::open(&path).expect("reopen");
        assert_eq!(loaded.revision, 3);
        assert_eq!(loaded.next_lease_id, 5);
        let keys: Vec<&String> = loaded.entries.keys().collect();
        assert_eq!(keys, vec!["b"]);
    }
}
