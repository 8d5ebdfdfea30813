//! `sluice dev` as a child process, with its stdout and stderr wherever a
//! test wants them (a pipe it closes, a file), for tests of the dev
//! cluster itself: output pipes going away, SIGTERM, restarts on the same
//! data directory.

use crate::cluster::binary;
use crate::etcd::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long `sluice dev` gets to serve (a broker and a store registered,
/// every partition online).
const READY_TIMEOUT_MS: u64 = 60_000;
/// How long `sluice dev` gets to exit after SIGTERM.
const STOP_TIMEOUT_MS: u64 = 20_000;

/// A running `sluice dev`; killed on drop if still running.
pub struct DevProcess {
    child: Child,
    bootstrap: String,
    ports: (u16, u16, u16),
    metrics_port: u16,
}

impl DevProcess {
    /// Fresh loopback ports for the nameserver, broker and store.
    pub fn free_ports() -> (u16, u16, u16) {
        (free_port(), free_port(), free_port())
    }

    /// Starts `sluice dev` on `data_dir` with the given output and log
    /// filter; does not wait for it to serve (see [`Self::wait_ready`]).
    pub fn spawn(
        data_dir: &Path,
        ports: (u16, u16, u16),
        log_filter: &str,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Self {
        let metrics_port = free_port();
        let child = Command::new(binary("sluice"))
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--nameserver-port", &ports.0.to_string()])
            .args(["--broker-port", &ports.1.to_string()])
            .args(["--store-port", &ports.2.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(["--log-filter", log_filter])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice dev");
        Self {
            child,
            bootstrap: format!("127.0.0.1:{}", ports.0),
            ports,
            metrics_port,
        }
    }

    /// The stdout and stderr pipes, when spawned with `Stdio::piped()`.
    pub fn take_pipes(
        &mut self,
    ) -> (
        Option<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ) {
        (self.child.stdout.take(), self.child.stderr.take())
    }

    pub fn ports(&self) -> (u16, u16, u16) {
        self.ports
    }

    /// `host:port` of its metrics endpoint (`--metrics-port`).
    pub fn metrics_address(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// The nameserver address for `--bootstrap` and the SDK.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn client_config(&self) -> sluice_client::ClientConfig {
        sluice_client::ClientConfig {
            bootstrap: vec![format!("http://{}", self.bootstrap)],
            ..sluice_client::ClientConfig::default()
        }
    }

    /// Runs the `sluice` CLI against this cluster.
    pub fn sluice(&self, args: &[&str]) -> Output {
        Command::new(binary("sluice"))
            .args(["--bootstrap", &self.bootstrap])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sluice")
    }

    /// Runs the CLI and returns its stdout, failing the test on an error.
    pub fn ok(&mut self, args: &[&str]) -> String {
        let output = self.sluice(args);
        assert!(
            output.status.success(),
            "`sluice {}` failed ({:?}, dev running: {}): {}",
            args.join(" "),
            output.status,
            self.is_running(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `sluice cluster status` shows one broker, one store and
    /// no offline partition.
    pub fn wait_ready(&mut self) {
        self.wait_status(&["brokers (1)", "stores (1)", "offline partitions: 0"]);
    }

    /// Waits until `sluice cluster status` shows one broker and one store
    /// (partitions may still be being taken over).
    pub fn wait_serving(&mut self) {
        self.wait_status(&["brokers (1)", "stores (1)"]);
    }

    fn wait_status(&mut self, wanted: &[&str]) {
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        loop {
            let output = self.sluice(&["cluster", "status"]);
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            if output.status.success() && wanted.iter().all(|part| text.contains(part)) {
                return;
            }
            assert!(
                self.is_running(),
                "sluice dev exited while starting: {:?}",
                self.child.try_wait()
            );
            assert!(
                Instant::now() < deadline,
                "sluice dev not serving within {READY_TIMEOUT_MS} ms: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGTERM and waits for the exit; fails the test if it takes
    /// longer than [`STOP_TIMEOUT_MS`].
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sluice dev did not stop on SIGTERM within {STOP_TIMEOUT_MS} ms");
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data directory path inside `root` (created by `sluice dev`).
pub fn data_dir(root: &Path) -> PathBuf {
    root.join("data")
}
