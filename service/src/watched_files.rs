//! Files looked at for changes, at most every interval: the server's
//! certificate, key and client CA (`tls.rs`) and the client certificate
//! and key a node presents to other services (`client_cert.rs`).
//!
//! Rules:
//! - A look reads each file's size and modification time (`stat`, no
//!   read), so it is cheap enough to do on an accept or a handshake; it
//!   happens at most once per interval, whatever the rate of callers.
//! - A change is reported until the caller accepts it (it loaded): files
//!   that do not load yet (half-written, a key that does not match its
//!   certificate) are tried again at the next look.
//! - A missing file is a stamp of its own (`None`), so deleting and then
//!   restoring a file counts as changes.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Size and modification time of each file, to notice changes.
pub type Stamps = Vec<Option<(u64, SystemTime)>>;

/// Whether a look is due: `interval` has passed since the last one.
pub fn look_due(looked_at: Instant, now: Instant, interval: Duration) -> bool {
    now.saturating_duration_since(looked_at) >= interval
}

#[derive(Debug)]
pub struct WatchedFiles {
    paths: Vec<PathBuf>,
    interval: Duration,
    /// The stamps of the files as last loaded.
    loaded: Stamps,
    looked_at: Instant,
}

impl WatchedFiles {
    /// Stamps `paths` as they are now; call it before loading them, so a
    /// change during the load is seen at the next look.
    pub fn new(paths: Vec<PathBuf>, interval: Duration) -> Self {
        let loaded = stamps(&paths);
        Self {
            paths,
            interval,
            loaded,
            looked_at: Instant::now(),
        }
    }

    /// New stamps if a look is due and a file changed since the last
    /// accepted load; `None` otherwise.
    pub fn changed(&mut self, now: Instant) -> Option<Stamps> {
        if !look_due(self.looked_at, now, self.interval) {
            return None;
        }
        self.look(now)
    }

    /// New stamps if a file changed since the last accepted load, looking
    /// now whether or not a look is due (a caller on its own timer).
    pub fn look(&mut self, now: Instant) -> Option<Stamps> {
        self.looked_at = now;
        let current = stamps(&self.paths);
        (current != self.loaded).then_some(current)
    }

    /// The files with these stamps loaded: no change until they change
    /// again.
    pub fn accept(&mut self, stamps: Stamps) {
        self.loaded = stamps;
    }
}

fn stamps(paths: &[PathBuf]) -> Stamps {
    paths
        .iter()
        .map(|path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.len(), metadata.modified().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_is_due_once_the_interval_passed() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        assert!(!look_due(start, start, interval));
        assert!(!look_due(
            start,
            start + Duration::from_millis(99),
            interval
        ));
        assert!(look_due(start, start + interval, interval));
        // A clock that seems to go back is not a reason to look.
        assert!(!look_due(start + interval, start, interval));
    }

    #[test]
    fn a_change_is_reported_until_accepted_and_only_when_due() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("cert.pem");
        std::fs::write(&path, "one").expect("write");
        let interval = Duration::from_millis(100);
        let mut files = WatchedFiles::new(vec![path.clone()], interval);
        let start = Instant::now();
        assert_eq!(files.changed(start + interval), None, "unchanged");

        std::fs::write(&path, "two, longer").expect("write");
        assert_eq!(
            files.changed(start + interval + Duration::from_millis(1)),
            None,
            "not due yet"
        );
        let later = start + 2 * interval;
        let stamps = files.changed(later).expect("changed");
        // Not accepted (the files did not load): reported again.
        assert_eq!(files.changed(later + interval), Some(stamps.clone()));
        files.accept(stamps);
        assert_eq!(files.changed(later + 2 * interval), None);

        // A caller on its own timer looks whether or not a look is due.
        std::fs::write(&path, "three, longer still").expect("write");
        let at = later + 2 * interval + Duration::from_millis(1);
        assert_eq!(files.changed(at), None, "not due");
        let stamps = files.look(at).expect("looked now");
        files.accept(stamps);
        assert_eq!(files.look(at), None);

        std::fs::remove_file(&path).expect("remove");
        let gone = files.changed(later + 4 * interval).expect("removed");
        assert_eq!(gone, vec![None]);
    }
}
