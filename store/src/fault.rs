//! Fault injection under the storage engine's file I/O, for tests.
//!
//! The engine calls [`check`] just before each file operation that can fail
//! in ways tests must cover: opening or duplicating a file (`EMFILE`,
//! `ENFILE`), writing (`ENOSPC`, `EIO`), fsyncing (`EIO`) and renaming.
//! A test installs a rule with [`inject`]: every operation of that kind on
//! a path under the rule's prefix fails with the rule's `errno` (a number
//! of times, or until the returned [`Injection`] is dropped). Rules match
//! by path prefix, so tests running in one process with their own
//! directories never see each other's faults.
//!
//! Without the `fault-injection` feature (and outside the crate's own
//! tests) [`check`] is an empty inline function: release builds carry
//! nothing of this.

use std::path::Path;

/// The kinds of file operation a rule can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// Creating, opening or duplicating a file handle.
    Open,
    /// Writing file data.
    Write,
    /// `fsync`/`fdatasync` of a file or directory.
    Sync,
    /// Renaming a file.
    Rename,
}

#[cfg(any(test, feature = "fault-injection"))]
mod rules {
    use super::FileOp;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    struct Rule {
        id: u64,
        prefix: PathBuf,
        op: FileOp,
        errno: i32,
        /// Failures left; `None`: until removed.
        remaining: Option<u64>,
    }

    static RULES: Mutex<Vec<Rule>> = Mutex::new(Vec::new());
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);

    /// A rule in force; dropping it removes the rule.
    #[must_use = "the fault is removed when the injection is dropped"]
    pub struct Injection {
        id: u64,
    }

    impl Drop for Injection {
        fn drop(&mut self) {
            let mut rules = RULES
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            rules.retain(|rule| rule.id != self.id);
        }
    }

    /// Fails every `op` on a path under `prefix` with `errno`, `times`
    /// times (`None`: until the injection is dropped).
    pub fn inject(prefix: &Path, op: FileOp, errno: i32, times: Option<u64>) -> Injection {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        RULES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Rule {
                id,
                prefix: prefix.to_path_buf(),
                op,
                errno,
                remaining: times,
            });
        Injection { id }
    }

    pub fn check(path: &Path, op: FileOp) -> std::io::Result<()> {
        let mut rules = RULES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for rule in rules.iter_mut() {
            if rule.op != op || !path.starts_with(&rule.prefix) {
                continue;
            }
            match &mut rule.remaining {
                Some(0) => continue,
                Some(left) => *left -= 1,
                None => {}
            }
            return Err(std::io::Error::from_raw_os_error(rule.errno));
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "fault-injection"))]
pub use rules::{inject, Injection};

/// Fails with an injected error if a rule covers `op` on `path`.
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) fn check(path: &Path, op: FileOp) -> std::io::Result<()> {
    rules::check(path, op)
}

/// Fails with an injected error if a rule covers `op` on `path` (never,
/// in this build).
#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn check(_path: &Path, _op: FileOp) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_fails_matching_operations_under_its_prefix_only() {
        let base = Path::new("/fault-test/a");
        let injection = inject(base, FileOp::Write, libc::ENOSPC, None);
        let error = check(&base.join("journal/1"), FileOp::Write).expect_err("injected");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        check(&base.join("journal/1"), FileOp::Sync).expect("other operation");
        check(Path::new("/fault-test/b/journal/1"), FileOp::Write).expect("other directory");
        drop(injection);
        check(&base.join("journal/1"), FileOp::Write).expect("removed with the injection");
    }

    #[test]
    fn a_counted_rule_fails_that_many_times() {
        let base = Path::new("/fault-test/counted");
        let _injection = inject(base, FileOp::Open, libc::EMFILE, Some(2));
        assert!(check(base, FileOp::Open).is_err());
        assert!(check(base, FileOp::Open).is_err());
        check(base, FileOp::Open).expect("used up");
    }
}
