//! `sluice dev`'s hold on its data directory: an exclusive `flock` on
//! `DATA_DIR/sluice-dev.lock`, taken before anything else happens (no
//! banner, no listener, no file of the cluster touched) and held for the
//! process's life (the kernel drops it when the process ends, even on a
//! crash, so a stale lock file never blocks a restart).

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "sluice-dev.lock";

/// Held while the process uses the directory.
#[derive(Debug)]
pub struct DevLock {
    _file: File,
}

/// Locks `data_dir` (creating it when missing), or says at once that
/// another `sluice dev` uses it.
pub fn lock(data_dir: &Path) -> Result<DevLock> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns (the `File`
    // lives in the returned guard); no memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            bail!(
                "the data directory {} is in use by another `sluice dev` (it holds {}); stop it, \
                 or give this one another --data-dir",
                data_dir.display(),
                path.display()
            );
        }
        return Err(error).with_context(|| format!("cannot lock {}", path.display()));
    }
    Ok(DevLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let first = lock(&data).expect("first lock");
        let refused = lock(&data).expect_err("second lock must be refused");
        let text = format!("{refused:#}");
        assert!(text.contains("in use by another `sluice dev`"), "{text}");
        assert!(text.contains(&data.display().to_string()), "{text}");
        drop(first);
        lock(&data).expect("free again once the holder is gone");
    }
}
