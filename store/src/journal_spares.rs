//! Recycled journal files.
//!
//! A checkpoint makes the journal files before it obsolete. Deleting them
//! frees their blocks, and on a file system mounted with `discard` (as the
//! machines measured here are) that sends the device a discard of the
//! whole file, which stalled every fsync queued behind it: deleting one
//! 64 MiB journal file per roll put the 3/3/2 acknowledgement p99 at
//! 11–24 ms instead of 5 (BENCHMARKS.md, session 4). So obsolete files are
//! kept as spares instead (at most [`MAX_SPARES`]; beyond that they are
//! deleted as before): a background thread overwrites a spare with zeros
//! and fsyncs it, and the journal writer renames a zeroed spare to its
//! next journal file instead of creating and preallocating one. Its blocks
//! are then already written, so the journal's fsyncs also carry no extent
//! conversions.
//!
//! Safety: a spare becomes a journal file only once it is all zeros on
//! disk, so after the rename it reads exactly like a freshly preallocated
//! file (records, then zeros), and a write torn in it leaves zeros after
//! the tear. Spares are named `spare-*`, which recovery never reads, and
//! every spare left by an earlier process (possibly half zeroed) is
//! deleted when the storage opens.

use crate::journal_file::{open_maybe_direct, DirectBuffer, BLOCK_BYTES};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// Spares kept at most (being zeroed or ready); obsolete files beyond
/// these are deleted.
pub const MAX_SPARES: usize = 2;
/// Pause after each zeroed piece: a spare zeroed in one burst would queue
/// 64 MiB of writes in front of the journal's next fsync; paced, each
/// fsync waits behind at most one piece. (A 64 MiB file takes ~130 ms,
/// still well within a journal file's life at full speed.)
const ZERO_PAUSE_MS: u64 = 1;
/// How often an idle zeroing thread checks whether its storage is gone.
const IDLE_CHECK_MS: u64 = 200;

/// Unique spare names within this process (storages reopened in one
/// directory, as tests do, never reuse a name an old thread still has).
static NEXT_SPARE_ID: AtomicU64 = AtomicU64::new(0);

const SPARE_PREFIX: &str = "spare-";
const ZEROING_SUFFIX: &str = ".zeroing";
const READY_SUFFIX: &str = ".ready";

/// The spares of one journal directory, shared by the checkpointer (which
/// offers obsolete files), the journal writer (which takes zeroed ones)
/// and the zeroing thread.
#[derive(Clone)]
pub(crate) struct JournalSpares {
    inner: Arc<Inner>,
}

struct Inner {
    journal_dir: PathBuf,
    direct_io: bool,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    /// Renamed out of the journal, not yet zeroed.
    to_zero: Vec<PathBuf>,
    /// Zeroed and fsynced: can become the next journal file.
    ready: Vec<PathBuf>,
    /// Being zeroed by the thread right now.
    zeroing: usize,
}

impl State {
    fn count(&self) -> usize {
        self.to_zero.len() + self.ready.len() + self.zeroing
    }
}

impl JournalSpares {
    /// Deletes spares an earlier process left in `journal_dir` and starts
    /// the zeroing thread (which ends once every handle is dropped).
    pub(crate) fn start(journal_dir: &Path, direct_io: bool) -> std::io::Result<Self> {
        for entry in std::fs::read_dir(journal_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|name| name.starts_with(SPARE_PREFIX))
            {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    // Gone since it was listed: the zeroing thread of an
                    // engine on this directory that was just dropped (in
                    // this process; it ends on its own) renamed or removed
                    // it. What it leaves is removed at the next start.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
            }
        }
        let inner = Arc::new(Inner {
            journal_dir: journal_dir.to_path_buf(),
            direct_io,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("sluice-journal-spares".to_string())
            .spawn(move || zero_spares(weak))?;
        Ok(Self { inner })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the obsolete journal file at `path` as a spare (renaming it
    /// out of the journal) if fewer than [`MAX_SPARES`] are kept; false
    /// when the caller should delete it.
    pub(crate) fn offer(&self, path: &Path) -> bool {
        let mut state = self.state();
        if state.count() >= MAX_SPARES {
            return false;
        }
        let id = NEXT_SPARE_ID.fetch_add(1, Ordering::Relaxed);
        let spare = self.inner.journal_dir.join(format!(
            "{SPARE_PREFIX}{}-{id:020}{ZEROING_SUFFIX}",
            std::process::id()
        ));
        if let Err(error) = std::fs::rename(path, &spare) {
            tracing::warn!(path = %path.display(), %error, "cannot keep an obsolete journal file as a spare; deleting it");
            return false;
        }
        state.to_zero.push(spare);
        self.inner.work.notify_one();
        true
    }

    /// A zeroed spare, if one is ready.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        self.state().ready.pop()
    }
}

/// The zeroing thread: overwrites each offered spare with zeros, fsyncs it
/// and marks it ready; a spare that cannot be zeroed is deleted.
fn zero_spares(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let next = {
            let mut state = inner
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.to_zero.is_empty() {
                let (guard, _) = inner
                    .work
                    .wait_timeout(state, Duration::from_millis(IDLE_CHECK_MS))
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                state = guard;
            }
            let next = state.to_zero.pop();
            if next.is_some() {
                state.zeroing += 1;
            }
            next
        };
        let Some(path) = next else {
            continue;
        };
        let ready = match zero_file(&path, inner.direct_io) {
            Ok(()) => {
                let ready_name = path
                    .to_str()
                    .and_then(|name| name.strip_suffix(ZEROING_SUFFIX))
                    .map(|stem| PathBuf::from(format!("{stem}{READY_SUFFIX}")));
                match ready_name {
                    Some(ready_path) => std::fs::rename(&path, &ready_path)
                        .map(|()| ready_path)
                        .map_err(|error| error.to_string()),
                    None => Err("unexpected spare name".to_string()),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        let mut state = inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.zeroing -= 1;
        match ready {
            Ok(ready_path) => state.ready.push(ready_path),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot zero a spare journal file; deleting it");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Overwrites the whole file at `path` with zeros and fsyncs it, in
/// pieces of one (all-zero) direct-write buffer.
fn zero_file(path: &Path, direct_io: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    let (file, _) = open_maybe_direct(options, path, direct_io)?;
    let length = file.metadata()?.len();
    let end = length.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64;
    let mut zeros = DirectBuffer::new();
    let zeros = zeros.window();
    let mut position = 0u64;
    while position < end {
        let piece = (end - position).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..piece], position)?;
        position += piece as u64;
        std::thread::sleep(Duration::from_millis(ZERO_PAUSE_MS));
    }
    if end > length {
        // Padding to a whole block grew the file: keep its length.
        file.set_len(length)?;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal_file::DIRECT_BUFFER_BYTES;
    use std::time::Instant;

    fn wait_for_ready(spares: &JournalSpares) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(path) = spares.take() {
                return path;
            }
            assert!(Instant::now() < deadline, "no spare became ready");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_offered_file_comes_back_zeroed_under_a_name_recovery_ignores() {
        let directory = tempfile::tempdir().expect("temp dir");
        // Left by an earlier process: deleted at start.
        std::fs::write(directory.path().join("spare-1-7.zeroing"), b"old").expect("write");
        let spares = JournalSpares::start(directory.path(), true).expect("start");
        assert!(!directory.path().join("spare-1-7.zeroing").exists());
        let mut paths = Vec::new();
        for index in 0..MAX_SPARES + 1 {
            let path = directory.path().join(format!("{index:020}.journal"));
            std::fs::write(&path, vec![0xabu8; 3 * DIRECT_BUFFER_BYTES / 2 + 123]).expect("write");
            paths.push(path);
        }
        for path in &paths[..MAX_SPARES] {
            assert!(spares.offer(path), "room for a spare");
            assert!(!path.exists(), "renamed out of the journal");
        }
        assert!(
            !spares.offer(&paths[MAX_SPARES]),
            "at most MAX_SPARES are kept"
        );
        assert!(
            paths[MAX_SPARES].exists(),
            "a refused file stays for the caller"
        );
        for _ in 0..MAX_SPARES {
            let ready = wait_for_ready(&spares);
            let name = ready
                .file_name()
                .and_then(|name| name.to_str())
                .expect("name");
            assert!(name.starts_with(SPARE_PREFIX) && name.ends_with(READY_SUFFIX));
            let bytes = std::fs::read(&ready).expect("read spare");
            assert_eq!(
                bytes.len(),
                3 * DIRECT_BUFFER_BYTES / 2 + 123,
                "length kept"
            );
            assert!(bytes.iter().all(|byte| *byte == 0), "all zeros");
        }
        assert_eq!(
            crate::journal::list_journal_files(directory.path()).expect("list"),
            vec![MAX_SPARES as u64],
            "spares are not journal files"
        );
        // Taken spares no longer count: there is room again.
        assert!(spares.offer(&paths[MAX_SPARES]));
    }
}
