//! Reused journal files.
//!
//! A checkpoint makes the journal files before it obsolete. Deleting them
//! frees their blocks, and on a file system mounted with `discard` (as the
//! machines measured here are) that sends the device a discard of the
//! whole file, which stalled every fsync queued behind it: deleting one
//! 64 MiB journal file per roll put the 3/3/2 acknowledgement p99 at
//! 11–24 ms instead of 5 (BENCHMARKS.md, session 4). So obsolete files are
//! kept as spares instead (at most [`MAX_SPARES`]; beyond that they are
//! deleted as before), and the journal writer renames a spare to its next
//! journal file instead of creating and preallocating one. Its blocks are
//! already written, so the journal's fsyncs also carry no extent
//! conversions.
//!
//! Spares are not zeroed (ADR 0017; until then a background thread wrote
//! every spare over with zeros, a third of the store's disk writes): every
//! record carries the stamp of its file's use, so what an earlier use left
//! after the new records is recognised (`journal_use.rs`).
//!
//! Safety: only a file whose first record is a version 2 record of its own
//! sequence is kept. A file of an earlier version (version 1 records) is
//! deleted instead: reused, a crash before its first new write would leave
//! a version 1 record at its start, which reads as a version 1 file full
//! of stale records. Spares are named `spare-*`, which recovery never
//! reads, and every spare left by an earlier process is deleted when the
//! storage opens.

use crate::journal;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Spares kept at most; obsolete files beyond these are deleted.
pub const MAX_SPARES: usize = 2;
/// Most bytes read to check a file's first record: a first record longer
/// than this (a batch of over 16 MiB) makes the file deleted rather than
/// kept, which costs only the discard.
const FIRST_RECORD_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Unique spare names within this process (storages reopened in one
/// directory, as tests do, never reuse a name).
static NEXT_SPARE_ID: AtomicU64 = AtomicU64::new(0);

const SPARE_PREFIX: &str = "spare-";
const READY_SUFFIX: &str = ".ready";

/// The spares of one journal directory, shared by the checkpointer (which
/// offers obsolete files) and the journal writer (which takes them).
#[derive(Clone)]
pub(crate) struct JournalSpares {
    inner: Arc<Inner>,
}

struct Inner {
    journal_dir: PathBuf,
    ready: Mutex<Vec<PathBuf>>,
}

impl JournalSpares {
    /// Deletes spares an earlier process left in `journal_dir`.
    pub(crate) fn start(journal_dir: &Path) -> std::io::Result<Self> {
        for entry in std::fs::read_dir(journal_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|name| name.starts_with(SPARE_PREFIX))
            {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    // Gone since it was listed (a storage on this directory
                    // just dropped, in this process).
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                journal_dir: journal_dir.to_path_buf(),
                ready: Mutex::new(Vec::new()),
            }),
        })
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.inner
            .ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the obsolete journal file `sequence` at `path` as a spare
    /// (renaming it out of the journal) if fewer than [`MAX_SPARES`] are
    /// kept and its first record is a version 2 record of its own; false
    /// when the caller should delete it.
    pub(crate) fn offer(&self, path: &Path, sequence: u64) -> bool {
        // Read before the lock: the journal writer takes spares under it
        // when it rolls, and must not wait for this read.
        if self.ready().len() >= MAX_SPARES || !starts_with_own_record(path, sequence) {
            return false;
        }
        let mut ready = self.ready();
        if ready.len() >= MAX_SPARES {
            return false;
        }
        let id = NEXT_SPARE_ID.fetch_add(1, Ordering::Relaxed);
        let spare = self.inner.journal_dir.join(format!(
            "{SPARE_PREFIX}{}-{id:020}{READY_SUFFIX}",
            std::process::id()
        ));
        if let Err(error) = std::fs::rename(path, &spare) {
            tracing::warn!(path = %path.display(), %error, "cannot keep an obsolete journal file as a spare; deleting it");
            return false;
        }
        ready.push(spare);
        true
    }

    /// A spare, if one is kept.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        self.ready().pop()
    }
}

/// Whether the file at `path` starts with a valid version 2 record of
/// journal file `sequence`.
fn starts_with_own_record(path: &Path, sequence: u64) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut header = [0u8; journal::RECORD_HEADER_BYTES];
    let mut reader = file.take(FIRST_RECORD_MAX_BYTES);
    if reader.read_exact(&mut header).is_err() {
        return false;
    }
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
    let record_bytes = length.saturating_add(8);
    if record_bytes > FIRST_RECORD_MAX_BYTES || record_bytes < header.len() as u64 {
        return false;
    }
    let mut record = header.to_vec();
    record.resize(record_bytes as usize, 0);
    if reader.read_exact(&mut record[header.len()..]).is_err() {
        return false;
    }
    journal::decode_any_record(&record)
        .is_ok_and(|record| record.stamp.is_some_and(|stamp| stamp.sequence == sequence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{encode_legacy_record, encode_record, FileStamp, RecordKind};

    fn journal_file(directory: &Path, sequence: u64, version_2: bool) -> PathBuf {
        let path = journal::journal_file_path(directory, sequence);
        let mut bytes = Vec::new();
        if version_2 {
            let stamp = FileStamp::new_use(sequence);
            encode_record(&mut bytes, RecordKind::Append, 1, stamp, &[5u8; 5000]);
        } else {
            encode_legacy_record(&mut bytes, RecordKind::Append, 1, &[5u8; 5000]);
        }
        bytes.resize(256 * 1024, 0xab);
        std::fs::write(&path, &bytes).expect("write");
        path
    }

    #[test]
    fn an_offered_file_is_kept_as_it_is_under_a_name_recovery_ignores() {
        let directory = tempfile::tempdir().expect("temp dir");
        // Left by an earlier process: deleted at start.
        std::fs::write(directory.path().join("spare-1-7.ready"), b"old").expect("write");
        let spares = JournalSpares::start(directory.path()).expect("start");
        assert!(!directory.path().join("spare-1-7.ready").exists());
        let paths: Vec<PathBuf> = (0..MAX_SPARES as u64 + 1)
            .map(|sequence| journal_file(directory.path(), sequence, true))
            .collect();
        let contents = std::fs::read(&paths[0]).expect("read");
        for (sequence, path) in paths[..MAX_SPARES].iter().enumerate() {
            assert!(spares.offer(path, sequence as u64), "room for a spare");
            assert!(!path.exists(), "renamed out of the journal");
        }
        assert!(
            !spares.offer(&paths[MAX_SPARES], MAX_SPARES as u64),
            "at most MAX_SPARES are kept"
        );
        assert!(
            paths[MAX_SPARES].exists(),
            "a refused file stays for the caller"
        );
        let mut taken = Vec::new();
        while let Some(spare) = spares.take() {
            let name = spare
                .file_name()
                .and_then(|name| name.to_str())
                .expect("name");
            assert!(name.starts_with(SPARE_PREFIX) && name.ends_with(READY_SUFFIX));
            taken.push(std::fs::read(&spare).expect("read spare"));
        }
        assert_eq!(taken.len(), MAX_SPARES);
        assert!(taken.contains(&contents), "kept byte for byte, not zeroed");
        assert_eq!(
            journal::list_journal_files(directory.path()).expect("list"),
            vec![MAX_SPARES as u64],
            "spares are not journal files"
        );
        // Taken spares no longer count: there is room again.
        assert!(spares.offer(&paths[MAX_SPARES], MAX_SPARES as u64));
    }

    #[test]
    fn files_of_an_earlier_version_or_of_another_sequence_are_not_kept() {
        let directory = tempfile::tempdir().expect("temp dir");
        let spares = JournalSpares::start(directory.path()).expect("start");
        let legacy = journal_file(directory.path(), 1, false);
        assert!(!spares.offer(&legacy, 1), "version 1: deleted, not kept");
        let renamed = journal_file(directory.path(), 2, true);
        assert!(!spares.offer(&renamed, 3), "not a record of file 3");
        let empty = journal::journal_file_path(directory.path(), 4);
        std::fs::write(&empty, vec![0u8; 8192]).expect("write");
        assert!(!spares.offer(&empty, 4), "never written");
        assert!(spares.take().is_none());
    }
}
