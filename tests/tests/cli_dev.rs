//! The `sluice` binary against `sluice dev`: the newcomer's path from the
//! README. Topic admin, produce from stdin and arguments, consume in a
//! group, group describe, cluster status; then a restart of `sluice dev`
//! keeps the data and the group's committed offsets.

use sluice_tests::cluster::{binary, wait_until_writable};
use sluice_tests::etcd::free_port;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    bootstrap: String,
    /// Where `sluice dev` logs; its tail goes into every failure message.
    log_path: std::path::PathBuf,
}

impl Dev {
    fn start(data_dir: &std::path::Path, ports: (u16, u16, u16)) -> Self {
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("dev log");
        let child = Command::new(binary("sluice"))
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--nameserver-port", &ports.0.to_string()])
            .args(["--broker-port", &ports.1.to_string()])
            .args(["--store-port", &ports.2.to_string()])
            .args(["--metrics-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice dev");
        let dev = Self {
            child,
            bootstrap: format!("127.0.0.1:{}", ports.0),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = dev.sluice(&["cluster", "status"], None);
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            if output.status.success()
                && text.contains("brokers (1)")
                && text.contains("stores (1)")
                && text.contains("offline partitions: 0")
            {
                return dev;
            }
            assert!(
                Instant::now() < deadline,
                "sluice dev not ready: {text} {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                dev.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn sluice(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(binary("sluice"))
            .args(["--bootstrap", &self.bootstrap])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let mut input = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("sluice output")
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.sluice(args, stdin);
        assert!(
            output.status.success(),
            "`sluice {}` failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// The last lines `sluice dev` logged, and whether it is still running.
    fn log_tail(&self) -> String {
        const LINES: usize = 60;
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
        let running = std::path::Path::new(&format!("/proc/{}", self.child.id())).exists();
        format!("sluice dev (running: {running}) logged, last {LINES} lines:\n{tail}")
    }

    /// Waits until the partitions of `topic` were taken over by the
    /// (restarted) broker.
    fn wait_until_writable(&self, topic: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime");
        let client = sluice_client::ClientConfig {
            bootstrap: vec![format!("http://{}", self.bootstrap)],
            ..sluice_client::ClientConfig::default()
        };
        runtime.block_on(wait_until_writable(client, topic));
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("sluice dev did not stop on SIGTERM within 20 s");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn newcomer_round_trip_and_restart() {
    let directory = tempfile::tempdir().expect("temp dir");
    let data_dir = directory.path().join("data");
    let ports = (free_port(), free_port(), free_port());
    let dev = Dev::start(&data_dir, ports);

    dev.ok(&["topic", "create", "greetings", "--partitions", "3"], None);
    let listed = dev.ok(&["topic", "list"], None);
    assert!(listed.contains("greetings"), "{listed}");

    dev.ok(
        &["produce", "greetings", "--key", "k"],
        Some("hello\nbonjour\nhallo\n"),
    );
    dev.ok(
        &[
            "produce",
            "greetings",
            "one more",
            "--header",
            "source=test",
        ],
        None,
    );

    let consumed = dev.ok(
        &[
            "consume",
            "greetings",
            "--group",
            "readers",
            "--from-beginning",
            "--max-messages",
            "4",
        ],
        None,
    );
    let mut lines: Vec<&str> = consumed.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["bonjour", "hallo", "hello", "one more"]);
    // Same key, same partition, in order.
    let keyed = dev.ok(
        &[
            "consume",
            "greetings",
            "--print-key",
            "--idle-timeout-ms",
            "1500",
        ],
        None,
    );
    let order: Vec<&str> = keyed
        .lines()
        .filter(|line| line.starts_with("k\t"))
        .collect();
    assert_eq!(order, vec!["k\thello", "k\tbonjour", "k\thallo"]);

    let described = dev.ok(&["group", "describe", "readers"], None);
    assert!(described.contains("total lag: 0"), "{described}");
    assert!(dev.ok(&["cluster", "status"], None).contains("embedded"));

    // Bad input gets an actionable error, not a dump.
    let bad = dev.sluice(&["topic", "create", "../x"], None);
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.contains("error:") && message.contains("topic"),
        "{message}"
    );
    let unknown = dev.sluice(&["produce", "nope", "x"], None);
    assert!(!unknown.status.success());

    dev.stop();

    // Data and committed offsets survive a restart.
    let dev = Dev::start(&data_dir, ports);
    dev.wait_until_writable("greetings");
    let again = dev.ok(&["consume", "greetings", "--idle-timeout-ms", "1500"], None);
    assert_eq!(again.lines().count(), 4, "{again}");
    dev.ok(&["produce", "greetings", "after restart"], None);
    let resumed = dev.ok(
        &[
            "consume",
            "greetings",
            "--group",
            "readers",
            "--idle-timeout-ms",
            "1500",
        ],
        None,
    );
    assert_eq!(
        resumed.trim(),
        "after restart",
        "the group should resume after its committed offsets"
    );
    dev.stop();

    // No cluster: the error says where it looked and what to do.
    let output = Command::new(binary("sluice"))
        .args([
            "--bootstrap",
            &format!("127.0.0.1:{}", free_port()),
            "topic",
            "list",
        ])
        .output()
        .expect("run sluice");
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("sluice dev"), "{message}");
}
