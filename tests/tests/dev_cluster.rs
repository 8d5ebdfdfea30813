//! `sluice dev` as a long-running process: it keeps serving when the reader
//! of its stdout and stderr goes away (no death by SIGPIPE, no panic on
//! EPIPE), stops cleanly on SIGTERM, and keeps thousands of topics across
//! a restart (the embedded metadata store).

use sluice_client::Admin;
use sluice_proto::v1::TopicConfig;
use sluice_tests::dev::{data_dir, DevProcess};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// Topics the restart test creates.
const TOPICS: u32 = 2_000;
/// Creations in flight at once in the restart test.
const CONCURRENCY: usize = 16;

/// Lines of the banner, at most (it ends with "Press ctrl-c").
const BANNER_MAX_LINES: usize = 20;

/// Reads the whole banner, so the process certainly wrote to the pipe
/// before its reader goes away, and checks it says the cluster is
/// plaintext on loopback without authentication (issue 13).
fn read_banner(stdout: std::process::ChildStdout) {
    let mut reader = BufReader::new(stdout);
    let mut banner = String::new();
    for _ in 0..BANNER_MAX_LINES {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read the banner") == 0 {
            break;
        }
        banner.push_str(&line);
        if line.contains("Press ctrl-c") {
            break;
        }
    }
    for wanted in [
        "Sluice dev cluster running",
        "plaintext on loopback",
        "no authentication",
        "Press ctrl-c",
    ] {
        assert!(
            banner.contains(wanted),
            "the banner lacks {wanted:?}: {banner:?}"
        );
    }
}

/// A topic, records in, the same records out, with the CLI.
fn round_trip(dev: &mut DevProcess, topic: &str) {
    dev.ok(&["topic", "create", topic, "--partitions", "2"]);
    dev.ok(&["produce", topic, "one", "two", "three"]);
    let consumed = dev.ok(&[
        "consume",
        topic,
        "--group",
        "readers",
        "--from-beginning",
        "--max-messages",
        "3",
    ]);
    let mut lines: Vec<&str> = consumed.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["one", "three", "two"]);
}

#[test]
fn dev_keeps_serving_after_its_output_pipes_close_and_exits_zero_on_sigterm() {
    let root = tempfile::tempdir().expect("temp dir");
    // `info` makes every service log on every request: writes to the
    // closed stderr happen all through the round trip.
    let mut dev = DevProcess::spawn(
        &data_dir(root.path()),
        DevProcess::free_ports(),
        "info",
        Stdio::piped(),
        Stdio::piped(),
    );
    let (stdout, stderr) = dev.take_pipes();
    read_banner(stdout.expect("stdout is piped"));
    drop(stderr);
    dev.wait_ready();
    round_trip(&mut dev, "after-the-pipes");
    assert!(dev.is_running());
    let status = dev.terminate();
    assert_eq!(status.code(), Some(0), "sluice dev ended with {status:?}");
}

#[test]
fn dev_with_a_closed_stdout_logs_no_pipe_error() {
    let root = tempfile::tempdir().expect("temp dir");
    let log_path = root.path().join("dev.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut dev = DevProcess::spawn(
        &data_dir(root.path()),
        DevProcess::free_ports(),
        "info",
        Stdio::piped(),
        Stdio::from(log),
    );
    // Closed at once: the banner goes to a pipe without a reader.
    let (stdout, _) = dev.take_pipes();
    drop(stdout);
    dev.wait_ready();
    round_trip(&mut dev, "closed-stdout");
    let status = dev.terminate();
    let logged = std::fs::read_to_string(&log_path).expect("read the log");
    assert_eq!(status.code(), Some(0), "{status:?}; logged:\n{logged}");
    assert!(logged.contains("SIGTERM: stopping"), "{logged}");
    for warning in ["Broken pipe", "EPIPE", "panicked", "Unable to write"] {
        assert!(
            !logged.contains(warning),
            "`{warning}` in the log:\n{logged}"
        );
    }
}

async fn create_topics(dev: &DevProcess, count: u32) -> BTreeSet<String> {
    use futures::StreamExt;
    let admin = Admin::connect(dev.client_config()).await.expect("connect");
    let names: Vec<String> = (0..count)
        .map(|index| format!("scale-{index:05}"))
        .collect();
    let admin = &admin;
    futures::stream::iter(names.clone())
        .map(|name| async move {
            let config = TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            };
            admin
                .create_topic(&name, config)
                .await
                .unwrap_or_else(|error| panic!("create {name}: {error}"));
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    names.into_iter().collect()
}

async fn listed_topics(dev: &DevProcess) -> BTreeSet<String> {
    let admin = Admin::connect(dev.client_config()).await.expect("connect");
    admin
        .list_topics(false)
        .await
        .expect("list topics")
        .into_iter()
        .map(|topic| topic.name)
        .collect()
}

#[test]
fn two_thousand_topics_survive_a_restart_of_dev() {
    let root = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ports = DevProcess::free_ports();
    let mut dev = DevProcess::spawn(
        &data_dir(root.path()),
        ports,
        "warn",
        Stdio::null(),
        Stdio::inherit(),
    );
    dev.wait_ready();
    let created = runtime.block_on(create_topics(&dev, TOPICS));
    assert_eq!(runtime.block_on(listed_topics(&dev)), created);
    let status = dev.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");

    let mut dev = DevProcess::spawn(
        &data_dir(root.path()),
        ports,
        "warn",
        Stdio::null(),
        Stdio::inherit(),
    );
    // Taking over 2,000 partitions takes the broker a while; the metadata
    // is what this test is about.
    dev.wait_serving();
    assert_eq!(runtime.block_on(listed_topics(&dev)), created);
    let status = dev.ok(&["cluster", "status"]);
    assert!(status.contains("metadata backend: embedded"), "{status}");
    // The topics and the internal __consumer_offsets and
    // __transaction_state (8 partitions each), with their partitions.
    assert!(
        status.contains(&format!(
            "topics: {}  partitions: {}",
            TOPICS + 2,
            TOPICS + 16
        )),
        "{status}"
    );
    let status = dev.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
}
