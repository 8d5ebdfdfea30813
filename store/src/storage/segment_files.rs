//! The open segment files, within the budget of `file_budget.rs`: a file
//! is opened on first use, shared (`Arc`) by everything using it, and
//! closed when it is the least recently used one beyond the budget and
//! nothing uses it. Whoever writes to a segment keeps its file until the
//! writes are fsynced (`SegmentLog::file`), so a file is never closed with
//! unsynced data.
//!
//! An open refused by the process's file limit (`EMFILE`, `ENFILE`)
//! closes every unused file and tries once more; if that fails too, the
//! request gets [`StoreError::FileLimit`] (`UNAVAILABLE`, retriable) and
//! nothing is latched: the next request tries again.

use super::file_budget::LruBudget;
use crate::error::StoreError;
use crate::segment;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The budget and its use, for status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudgetStatus {
    /// Segment files open now.
    pub open_segment_files: u64,
    /// The budget (`max_open_segment_files` resolved).
    pub max_open_segment_files: u64,
    /// Opens refused by the file limit since the start.
    pub refused_opens: u64,
}

#[derive(Debug)]
struct OpenFiles {
    budget: LruBudget,
    files: HashMap<u64, Arc<File>>,
}

impl OpenFiles {
    /// Takes the files to close out of the map, least recently used first
    /// and never one in use: until `room` more fit within the budget, or
    /// with `None` every unused one. The caller drops (closes) them.
    fn evict(&mut self, room: Option<usize>) -> Vec<Arc<File>> {
        let files = &self.files;
        let in_use = |segment_id: u64| {
            files
                .get(&segment_id)
                .is_some_and(|file| Arc::strong_count(file) > 1)
        };
        let chosen = match room {
            Some(room) => self.budget.evict_for(room, in_use),
            None => self.budget.evict_all_unused(in_use),
        };
        chosen
            .into_iter()
            .filter_map(|segment_id| self.files.remove(&segment_id))
            .collect()
    }
}

/// The segment files of one storage directory, opened within a budget.
#[derive(Debug)]
pub(crate) struct SegmentFiles {
    segments_dir: PathBuf,
    open: Mutex<OpenFiles>,
    refused_opens: AtomicU64,
}

impl SegmentFiles {
    pub(crate) fn new(segments_dir: &Path, budget: usize) -> Self {
        Self {
            segments_dir: segments_dir.to_path_buf(),
            open: Mutex::new(OpenFiles {
                budget: LruBudget::new(budget),
                files: HashMap::new(),
            }),
            refused_opens: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenFiles> {
        // Every update leaves the map and the budget consistent.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The log file of `segment_id`, opened (read and write) if it is not
    /// open. A missing file is an unknown segment (deleted meanwhile).
    pub(crate) fn get(&self, segment_id: u64) -> Result<Arc<File>, StoreError> {
        {
            let mut open = self.lock();
            if let Some(file) = open.files.get(&segment_id).cloned() {
                open.budget.touch(segment_id);
                // Over the budget only while more files were in use;
                // close the ones released since.
                if open.files.len() > open.budget.capacity() {
                    drop(open.evict(Some(0)));
                }
                return Ok(file);
            }
        }
        self.open_with(segment_id, |path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
        })
        .map_err(|error| match error {
            StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StoreError::UnknownSegment { segment_id }
            }
            other => other,
        })
    }

    /// Opens the log file of `segment_id` with `open` (given its path),
    /// replacing whatever file of that id was open (e.g. of a deleted
    /// segment whose id is created again), after closing unused files
    /// beyond the budget.
    pub(crate) fn open_with(
        &self,
        segment_id: u64,
        open: impl Fn(&Path) -> std::io::Result<File>,
    ) -> Result<Arc<File>, StoreError> {
        let path = segment::log_path(&self.segments_dir, segment_id);
        let mut state = self.lock();
        drop(state.evict(Some(1)));
        let file = match open(&path) {
            Err(error) if is_file_limit(&error) => {
                let freed = state.evict(None);
                let count = freed.len();
                drop(freed);
                tracing::warn!(segment_id, closed = count, %error, "the file limit was reached opening a segment file; closed every unused one and trying again");
                open(&path)
            }
            other => other,
        };
        let file = file.map_err(|error| {
            if is_file_limit(&error) {
                self.refused_opens.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(segment_id, open = state.files.len(), %error, "cannot open a segment file: the file limit is reached");
                StoreError::FileLimit {
                    context: format!(
                        "open segment {segment_id} ({} segment files open, budget {})",
                        state.files.len(),
                        state.budget.capacity()
                    ),
                    source: error,
                }
            } else {
                StoreError::io(format!("open {}", path.display()), error)
            }
        })?;
        let file = Arc::new(file);
        state.files.insert(segment_id, file.clone());
        state.budget.touch(segment_id);
        Ok(file)
    }

    /// Forgets the file of a deleted segment (closed once its last user
    /// drops it).
    pub(crate) fn forget(&self, segment_id: u64) {
        let mut state = self.lock();
        state.budget.remove(segment_id);
        let removed = state.files.remove(&segment_id);
        drop(state);
        drop(removed);
    }

    /// Whether more files are open than the budget allows (files in use
    /// or kept for unsynced writes).
    pub(crate) fn over_budget(&self) -> bool {
        let state = self.lock();
        state.files.len() > state.budget.capacity()
    }

    /// Segment files open now.
    pub(crate) fn open_count(&self) -> usize {
        self.lock().files.len()
    }

    pub(crate) fn budget(&self) -> usize {
        self.lock().budget.capacity()
    }

    /// The budget and its use, after closing unused files beyond it.
    pub(crate) fn status(&self) -> FileBudgetStatus {
        let mut state = self.lock();
        if state.files.len() > state.budget.capacity() {
            drop(state.evict(Some(0)));
        }
        FileBudgetStatus {
            open_segment_files: state.files.len() as u64,
            max_open_segment_files: state.budget.capacity() as u64,
            refused_opens: self.refused_opens.load(Ordering::Relaxed),
        }
    }
}

/// Whether `error` is the process's (`EMFILE`) or the system's (`ENFILE`)
/// limit of open files.
pub(crate) fn is_file_limit(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// The soft limit of open files of this process (`RLIMIT_NOFILE`), `None`
/// when unlimited or unknown.
pub(crate) fn soft_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if result != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(directory: &Path, count: u64) {
        for segment_id in 0..count {
            std::fs::write(segment::log_path(directory, segment_id), b"x").expect("write");
        }
    }

    #[test]
    fn opens_on_demand_and_closes_the_least_recently_used() {
        let directory = tempfile::tempdir().expect("temp dir");
        files_in(directory.path(), 10);
        let files = SegmentFiles::new(directory.path(), 3);
        for segment_id in 0..10 {
            let file = files.get(segment_id).expect("open");
            drop(file);
            assert!(files.open_count() <= 3);
        }
        assert_eq!(files.open_count(), 3);
    }

    #[test]
    fn a_file_in_use_stays_open_and_is_the_same_file() {
        let directory = tempfile::tempdir().expect("temp dir");
        files_in(directory.path(), 4);
        let files = SegmentFiles::new(directory.path(), 1);
        let held = files.get(0).expect("open");
        let other = files.get(1).expect("open");
        assert_eq!(files.open_count(), 2, "over budget while both are in use");
        drop(other);
        assert!(Arc::ptr_eq(&held, &files.get(0).expect("again")));
        files.get(2).expect("open");
        assert_eq!(files.open_count(), 2, "1 closed, 0 still in use");
        drop(held);
        files.get(3).expect("open");
        assert_eq!(files.open_count(), 1);
    }

    #[test]
    fn a_missing_file_is_an_unknown_segment() {
        let directory = tempfile::tempdir().expect("temp dir");
        let files = SegmentFiles::new(directory.path(), 4);
        let error = files.get(u64::MAX).expect_err("no such file");
        assert!(
            matches!(error, StoreError::UnknownSegment { segment_id } if segment_id == u64::MAX)
        );
        assert_eq!(files.open_count(), 0);
    }

    #[test]
    fn the_file_limit_is_a_retriable_error_and_not_latched() {
        let directory = tempfile::tempdir().expect("temp dir");
        files_in(directory.path(), 2);
        let files = SegmentFiles::new(directory.path(), 4);
        let refuse = |_: &Path| Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        let error = files.open_with(0, refuse).expect_err("refused");
        assert_eq!(error.code(), sluice_proto::ErrorCode::Unavailable);
        assert!(error.to_string().contains("open segment 0"), "{error}");
        assert_eq!(files.status().refused_opens, 1);
        // Once files are available again, the same open works.
        files.get(0).expect("open after the limit was lifted");
    }

    #[test]
    fn hitting_the_limit_closes_unused_files_and_retries() {
        let directory = tempfile::tempdir().expect("temp dir");
        files_in(directory.path(), 3);
        let files = SegmentFiles::new(directory.path(), 10);
        files.get(0).expect("open");
        let held = files.get(1).expect("open");
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let file = files.open_with(2, |path| {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(std::io::Error::from_raw_os_error(libc::ENFILE))
            } else {
                File::open(path)
            }
        });
        assert!(file.is_ok());
        assert_eq!(files.open_count(), 2, "0 closed, 1 in use kept, 2 open");
        drop(held);
    }
}
