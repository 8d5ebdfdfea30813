//! One-time migration of the JSON file earlier versions kept
//! (`metadata.json`, rewritten whole on every change) into the redb
//! database.
//!
//! At open, when `metadata.json` exists and `metadata.redb` does not: the
//! JSON is read and checked (a bad file is [`MetadataError::Corrupt`]
//! naming it, and nothing is changed), written into
//! `metadata.redb.migrating` in one durable transaction, that file is
//! renamed to `metadata.redb`, and the JSON is renamed to
//! `metadata.json.migrated` (kept for the operator to delete). A crash at
//! any step leaves either the JSON alone (migrated again at the next start)
//! or the complete database (the JSON is then ignored with a warning).

use super::super::{LeaseId, MetadataError};
use super::disk::{Disk, Loaded, FILE_NAME};
use super::state::Entry;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

pub(super) const LEGACY_FILE_NAME: &str = "metadata.json";
const LEGACY_VERSION: u32 = 1;

#[derive(Deserialize)]
struct LegacyEntry {
    key: String,
    value: Vec<u8>,
    mod_revision: i64,
    create_revision: i64,
}

#[derive(Deserialize)]
struct LegacyFile {
    version: u32,
    revision: i64,
    next_lease_id: LeaseId,
    entries: Vec<LegacyEntry>,
}

/// What [`migrate`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Migration {
    /// No legacy file.
    NotNeeded,
    /// The legacy file's keys are now in the database.
    Migrated { keys: usize },
    /// Both files exist: the database is used, the JSON left alone.
    LegacyIgnored,
}

/// Parses and checks a legacy file's contents.
fn parse_legacy(path: &Path, contents: &[u8]) -> Result<Loaded, MetadataError> {
    let corrupt = |reason: String| {
        MetadataError::Corrupt(format!(
            "{} is not a valid metadata file ({reason}); move it away to start empty",
            path.display()
        ))
    };
    let file: LegacyFile =
        serde_json::from_slice(contents).map_err(|error| corrupt(error.to_string()))?;
    if file.version != LEGACY_VERSION {
        return Err(corrupt(format!(
            "version {}, expected {LEGACY_VERSION}",
            file.version
        )));
    }
    let mut entries = BTreeMap::new();
    for entry in file.entries {
        if entry.mod_revision > file.revision
            || entry.create_revision > entry.mod_revision
            || entry.create_revision < 1
        {
            return Err(corrupt(format!(
                "key {:?} has revisions beyond the store revision",
                entry.key
            )));
        }
        let stored = Entry {
            value: entry.value,
            mod_revision: entry.mod_revision,
            create_revision: entry.create_revision,
            lease: None,
        };
        entries.insert(entry.key, stored);
    }
    Ok(Loaded {
        revision: file.revision,
        next_lease_id: file.next_lease_id.max(1),
        entries,
    })
}

fn unavailable(path: &Path, error: impl std::fmt::Display) -> MetadataError {
    MetadataError::Unavailable(format!("cannot migrate {}: {error}", path.display()))
}

fn sync_directory(directory: &Path) -> Result<(), MetadataError> {
    std::fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| unavailable(directory, error))
}

/// Migrates `data_dir/metadata.json` into `data_dir/metadata.redb` when
/// only the former exists. Blocking (file IO).
pub(super) fn migrate(data_dir: &Path) -> Result<Migration, MetadataError> {
    let legacy = data_dir.join(LEGACY_FILE_NAME);
    let database = data_dir.join(FILE_NAME);
    let contents = match std::fs::read(&legacy) {
        Ok(contents) => contents,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Migration::NotNeeded)
        }
        Err(error) => return Err(unavailable(&legacy, error)),
    };
    if database.exists() {
        return Ok(Migration::LegacyIgnored);
    }
    let loaded = parse_legacy(&legacy, &contents)?;
    let temporary = data_dir.join(format!("{FILE_NAME}.migrating"));
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(unavailable(&temporary, error)),
    }
    {
        let (disk, _) = Disk::open(&temporary)?;
        disk.import(&loaded)?;
    }
    std::fs::rename(&temporary, &database).map_err(|error| unavailable(&database, error))?;
    sync_directory(data_dir)?;
    let kept = data_dir.join(format!("{LEGACY_FILE_NAME}.migrated"));
    std::fs::rename(&legacy, &kept).map_err(|error| unavailable(&kept, error))?;
    sync_directory(data_dir)?;
    Ok(Migration::Migrated {
        keys: loaded.entries.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY: &str = r#"{"version":1,"revision":5,"next_lease_id":4,"entries":[
        {"key":"topics/a","value":[1,2],"mod_revision":5,"create_revision":2}]}"#;

    #[test]
    fn a_legacy_file_is_migrated_once_and_kept_aside() {
        let directory = tempfile::tempdir().expect("temp dir");
        std::fs::write(directory.path().join(LEGACY_FILE_NAME), LEGACY).expect("write");
        assert_eq!(
            migrate(directory.path()).expect("migrate"),
            Migration::Migrated { keys: 1 }
        );
        assert!(!directory.path().join(LEGACY_FILE_NAME).exists());
        assert!(directory.path().join("metadata.json.migrated").exists());
        let (_disk, loaded) = Disk::open(&directory.path().join(FILE_NAME)).expect("open");
        assert_eq!(loaded.revision, 5);
        assert_eq!(loaded.next_lease_id, 4);
        let entry = loaded.entries.get("topics/a").expect("migrated");
        assert_eq!((entry.create_revision, entry.mod_revision), (2, 5));
        assert_eq!(entry.value, vec![1, 2]);
        assert_eq!(
            migrate(directory.path()).expect("again"),
            Migration::NotNeeded
        );
    }

    #[test]
    fn a_legacy_file_beside_a_database_is_left_alone() {
        let directory = tempfile::tempdir().expect("temp dir");
        drop(Disk::open(&directory.path().join(FILE_NAME)).expect("create"));
        std::fs::write(directory.path().join(LEGACY_FILE_NAME), LEGACY).expect("write");
        assert_eq!(
            migrate(directory.path()).expect("migrate"),
            Migration::LegacyIgnored
        );
        assert!(directory.path().join(LEGACY_FILE_NAME).exists());
    }

    #[test]
    fn a_bad_legacy_file_is_corrupt_and_nothing_changes() {
        let directory = tempfile::tempdir().expect("temp dir");
        let bad = r#"{"version":1,"revision":1,"next_lease_id":1,"entries":[
            {"key":"k","value":[],"mod_revision":9,"create_revision":1}]}"#;
        std::fs::write(directory.path().join(LEGACY_FILE_NAME), bad).expect("write");
        assert!(matches!(
            migrate(directory.path()),
            Err(MetadataError::Corrupt(message)) if message.contains(LEGACY_FILE_NAME)
        ));
        assert!(!directory.path().join(FILE_NAME).exists());
    }
}
