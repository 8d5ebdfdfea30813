//! The exactly-once copier example (`client/examples/copier.rs`) as a child
//! process of a test: start, `kill -9`, SIGSTOP/SIGCONT, restart with the
//! same transactional id, and its progress lines on stdout
//! (`copier id=… event=committed at_ms=… txn=… records=… total=…`).
//!
//! The example is built by `cargo build --examples` (scripts/test.sh does it
//! with the service binaries); a missing one fails with that instruction.

use crate::cluster::binaries_dir;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of progress kept per copier (all incarnations); beyond it the
/// oldest are dropped (a test reads a few thousand at most).
const MAX_LINES: usize = 200_000;

/// Path of the copier example, failing with instructions when missing.
pub fn copier_binary() -> PathBuf {
    let path = binaries_dir().join("examples").join("copier");
    if !path.exists() {
        panic!(
            "{} is missing: build it with `cargo build -p sluice-client --examples` \
             (scripts/test.sh does this)",
            path.display()
        );
    }
    path
}

/// How to run one copier instance (its flags).
#[derive(Debug, Clone)]
pub struct CopierSpec {
    pub bootstrap: Vec<String>,
    pub input: String,
    pub output: String,
    pub group: String,
    pub transactional_id: String,
    pub commit_every: usize,
    pub commit_interval_ms: u64,
    pub transaction_timeout_ms: u64,
    pub session_timeout_ms: u32,
    /// `--exit-after-commits`: crash right after this many commits.
    pub exit_after_commits: Option<u64>,
}

/// One progress line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Which start of the process printed it (0 for the first).
    pub incarnation: usize,
    pub event: String,
    /// The `txn=` tag of a committed transaction.
    pub txn: Option<String>,
    /// The `records=` count of a committed transaction.
    pub records: u64,
    pub line: String,
}

/// Parses `copier id=… event=E [txn=T] [records=N] …`; `None` for other
/// lines.
pub fn parse_progress(incarnation: usize, line: &str) -> Option<Progress> {
    let mut words = line.split(' ');
    if words.next() != Some("copier") {
        return None;
    }
    let mut event = None;
    let mut txn = None;
    let mut records = 0;
    for word in words {
        match word.split_once('=') {
            Some(("event", value)) => event = Some(value.to_string()),
            Some(("txn", value)) => txn = Some(value.to_string()),
            Some(("records", value)) => records = value.parse().ok()?,
            _ => {}
        }
    }
    Some(Progress {
        incarnation,
        event: event?,
        txn,
        records,
        line: line.to_string(),
    })
}

/// A copier process, restartable under the same transactional id; killed
/// on drop.
pub struct CopierProcess {
    pub spec: CopierSpec,
    child: Option<Child>,
    incarnations: usize,
    progress: Arc<Mutex<Vec<Progress>>>,
    log_path: PathBuf,
}

impl CopierProcess {
    /// Starts the first incarnation; stderr goes to `directory/<name>.log`
    /// (every incarnation appends).
    pub fn start(spec: CopierSpec, directory: &Path, name: &str) -> Self {
        let log_path = directory.join(format!("{name}.log"));
        let mut process = Self {
            spec,
            child: None,
            incarnations: 0,
            progress: Arc::new(Mutex::new(Vec::new())),
            log_path,
        };
        process.restart();
        process
    }

    pub fn id(&self) -> &str {
        &self.spec.transactional_id
    }

    /// Starts a new incarnation (the previous one must be gone).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.id());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the copier log");
        let spec = &self.spec;
        let mut child = Command::new(copier_binary())
            .arg("--bootstrap")
            .arg(spec.bootstrap.join(","))
            .args(["--input", &spec.input, "--output", &spec.output])
            .args(["--group", &spec.group])
            .args(["--transactional-id", &spec.transactional_id])
            .args(["--commit-every", &spec.commit_every.to_string()])
            .args(["--commit-interval-ms", &spec.commit_interval_ms.to_string()])
            .args([
                "--transaction-timeout-ms",
                &spec.transaction_timeout_ms.to_string(),
            ])
            .args(["--session-timeout-ms", &spec.session_timeout_ms.to_string()])
            .args(
                spec.exit_after_commits
                    .map(|commits| ["--exit-after-commits".to_string(), commits.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn copier {}: {error}", spec.transactional_id));
        let stdout = child.stdout.take().expect("piped stdout");
        let progress = self.progress.clone();
        let incarnation = self.incarnations;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(parsed) = parse_progress(incarnation, &line) {
                    let mut progress = progress.lock().unwrap_or_else(|p| p.into_inner());
                    if progress.len() >= MAX_LINES {
                        progress.remove(0);
                    }
                    progress.push(parsed);
                }
            }
        });
        self.incarnations += 1;
        self.child = Some(child);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            let pid = i32::try_from(child.id()).expect("a pid fits in i32");
            // SAFETY: signalling our own child process by its pid.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// The current incarnation's exit status once it exits within
    /// `timeout`, else `None` (it keeps running; drop kills it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the current incarnation still runs (`Some(status)` once it
    /// exited).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Every progress line so far, all incarnations.
    pub fn progress(&self) -> Vec<Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records in transactions this copier reported committed.
    pub fn committed_records(&self) -> u64 {
        self.progress()
            .iter()
            .filter(|progress| progress.event == "committed")
            .map(|progress| progress.records)
            .sum()
    }

    /// The tail of its stderr and progress, for a failure message.
    pub fn describe(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let progress = self.progress();
        let tail: Vec<&str> = progress[progress.len().saturating_sub(10)..]
            .iter()
            .map(|progress| progress.line.as_str())
            .collect();
        format!(
            "copier {}: stderr tail:\n{}\nprogress tail:\n{}",
            self.id(),
            lines[lines.len().saturating_sub(20)..].join("\n"),
            tail.join("\n")
        )
    }
}

impl Drop for CopierProcess {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        let line =
            "copier id=copier-1 event=committed at_ms=1 txn=4294967296.3 records=750 total=1500";
        let parsed = parse_progress(2, line).expect("a progress line");
        assert_eq!(parsed.event, "committed");
        assert_eq!(parsed.txn.as_deref(), Some("4294967296.3"));
        assert_eq!(parsed.records, 750);
        assert_eq!(parsed.incarnation, 2);
        let aborted = parse_progress(0, "copier id=c event=aborted reason=\"x y\"").expect("line");
        assert_eq!((aborted.event.as_str(), aborted.records), ("aborted", 0));
        assert_eq!(parse_progress(0, "something else"), None);
        assert_eq!(parse_progress(0, "copier id=c records=1"), None, "no event");
        assert_eq!(parse_progress(0, "copier event=committed records=x"), None);
    }
}
