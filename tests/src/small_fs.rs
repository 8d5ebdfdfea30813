//! A real, small file system for tests of a full disk: a `tmpfs` of a
//! given size mounted on a temporary directory (needs root or
//! `CAP_SYS_ADMIN`; a test that cannot mount one fails and says so),
//! unmounted on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the pieces [`SmallFilesystem::fill_leaving`] writes, in bytes.
const FILL_CHUNK_BYTES: usize = 256 * 1024;

pub struct SmallFilesystem {
    directory: tempfile::TempDir,
}

impl SmallFilesystem {
    /// Mounts a `tmpfs` of `size_bytes`.
    pub fn mount(size_bytes: u64) -> Self {
        let directory = tempfile::tempdir().expect("temp dir for the mount point");
        let outcome = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(directory.path())
            .output();
        match outcome {
            Ok(output) if output.status.success() => Self { directory },
            Ok(output) => panic!(
                "this test needs a small real file system: mounting a tmpfs failed ({}); \
                 run it as root or with CAP_SYS_ADMIN",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => panic!(
                "this test needs a small real file system: cannot run `mount` ({error}); \
                 install util-linux's mount and run as root"
            ),
        }
    }

    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// Bytes an unprivileged writer can still use.
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes())
            .expect("a path without NUL");
        // SAFETY: statvfs writes into the zeroed struct we own; the path is
        // a valid NUL-terminated string.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        let result = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
        assert_eq!(result, 0, "statvfs {}", self.path().display());
        stats.f_bavail * stats.f_frsize
    }

    /// Writes a filler file until at most `leave_bytes` are free; returns
    /// its path (remove it to free the space).
    pub fn fill_leaving(&self, leave_bytes: u64) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0xA5u8; FILL_CHUNK_BYTES];
        while self.free_bytes() > leave_bytes + FILL_CHUNK_BYTES as u64 {
            file.write_all(&chunk).expect("write the filler");
        }
        file.sync_all().expect("sync the filler");
        path
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        // Lazy: a store killed a moment ago may still be closing files.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}
