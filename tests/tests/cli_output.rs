//! The CLI for people and scripts (issue 15): `--output json` on every
//! listing and description, human durations and sizes, `cluster status`
//! naming a killed broker as down, the `sluice dev` data-directory lock,
//! a quiet SIGTERM without colour codes, the error a wrong address gets,
//! and shell completion. Real `sluice dev` and real clusters.

use serde_json::Value;
use sluice_tests::cluster::{binary, Cluster, ClusterSpec};
use sluice_tests::dev::{data_dir, DevProcess};
use sluice_tests::etcd::free_port;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest any one wait below takes.
const WAIT_MS: u64 = 30_000;

fn json_of(dev: &mut DevProcess, args: &[&str]) -> Value {
    let mut with_json = vec!["--output", "json"];
    with_json.extend_from_slice(args);
    let text = dev.ok(&with_json);
    serde_json::from_str(&text).unwrap_or_else(|error| {
        panic!(
            "`sluice {}` printed no JSON ({error}):\n{text}",
            args.join(" ")
        )
    })
}

/// An RFC 3339 UTC time as the CLI prints it: `2026-12-07T22:54:30.294Z`.
fn assert_rfc3339(value: &Value, what: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"));
    let bytes = text.as_bytes();
    assert!(
        text.len() == 24
            && bytes[4] == b'-'
            && bytes[10] == b'T'
            && bytes[19] == b'.'
            && text.ends_with('Z')
            && text[..4].parse::<u32>().is_ok_and(|year| year >= 2024),
        "{what} is not RFC 3339: {text}"
    );
}

fn start_dev(root: &std::path::Path) -> DevProcess {
    let mut dev = DevProcess::spawn(
        &data_dir(root),
        DevProcess::free_ports(),
        "warn",
        Stdio::null(),
        Stdio::null(),
    );
    dev.wait_ready();
    dev
}

#[test]
fn every_listing_and_description_prints_one_json_document() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut dev = start_dev(root.path());
    dev.ok(&[
        "topic",
        "create",
        "orders",
        "--partitions",
        "2",
        "--retention",
        "7d",
        "--segment-size",
        "64MiB",
        "--retention-bytes",
        "1GiB",
        "--ttl",
        "90s",
        "--max-batch-bytes",
        "2MiB",
    ]);
    dev.ok(&["produce", "orders", "--key", "k", "a", "b", "c"]);
    dev.ok(&[
        "consume",
        "orders",
        "--group",
        "readers",
        "--from-beginning",
        "--max-messages",
        "2",
    ]);
    dev.ok(&[
        "subscription",
        "create",
        "orders",
        "billing",
        "--type",
        "shared",
    ]);

    let topics = json_of(&mut dev, &["topic", "list"]);
    let orders = topics["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|topic| topic["name"] == "orders"))
        .unwrap_or_else(|| panic!("no orders in {topics}"))
        .clone();
    // Human input, raw numbers out.
    assert_eq!(orders["config"]["retention_ms"], 7 * 86_400_000u64);
    assert_eq!(orders["config"]["segment_bytes"], 64u64 << 20);
    assert_eq!(orders["config"]["retention_bytes"], 1u64 << 30);
    assert_eq!(orders["config"]["message_ttl_ms"], 90_000);
    assert_eq!(orders["config"]["partitions"], 2);
    assert_eq!(orders["config"]["durability"], "fsync");
    assert_rfc3339(&orders["created_at"], "created_at");

    let described = json_of(&mut dev, &["topic", "describe", "orders"]);
    let partitions = described["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 2, "{described}");
    for partition in partitions {
        assert_eq!(partition["owner"], "dev-broker", "{partition}");
        assert_eq!(partition["state"], "online", "{partition}");
        assert!(
            partition["segments"][0]["base_offset"].is_u64(),
            "{partition}"
        );
    }

    let groups = json_of(&mut dev, &["group", "list"]);
    assert!(
        groups["groups"]
            .as_array()
            .is_some_and(|groups| groups.iter().any(|g| g["group"] == "readers")),
        "{groups}"
    );
    let group = json_of(&mut dev, &["group", "describe", "readers"]);
    // 3 records on one partition (one key); some consumed and committed.
    assert_eq!(group["partitions_with_unknown_lag"], 0, "{group}");
    let rows = group["partitions"].as_array().expect("lag rows");
    let mut total = 0;
    for row in rows {
        let high_watermark = row["high_watermark"]
            .as_u64()
            .expect("a number, not unknown");
        let committed = row["committed_offset"].as_u64().unwrap_or(0);
        assert_eq!(
            row["lag"].as_u64(),
            Some(high_watermark - committed),
            "{row}"
        );
        assert!(row["lag_unknown_reason"].is_null(), "{row}");
        total += high_watermark - committed;
    }
    assert_eq!(group["total_lag"].as_u64(), Some(total), "{group}");
    assert!(
        rows.iter()
            .any(|row| row["high_watermark"] == 3 && row["committed_offset"].as_u64() >= Some(2)),
        "{group}"
    );

    let subscriptions = json_of(&mut dev, &["subscription", "list", "orders"]);
    assert_eq!(
        subscriptions["subscriptions"][0]["name"], "billing",
        "{subscriptions}"
    );
    assert_eq!(
        subscriptions["subscriptions"][0]["type"], "shared",
        "{subscriptions}"
    );
    let subscription = json_of(&mut dev, &["subscription", "describe", "orders", "billing"]);
    assert_rfc3339(&subscription["created_at"], "subscription created_at");
    assert!(
        subscription["backlog"]["backlog_messages"].is_u64(),
        "{subscription}"
    );

    let status = json_of(&mut dev, &["cluster", "status"]);
    assert_eq!(status["metadata_backend"], "embedded", "{status}");
    assert_eq!(status["brokers"][0]["node_id"], "dev-broker", "{status}");
    assert_eq!(status["brokers"][0]["status"], "up", "{status}");
    assert!(
        status["brokers"][0]["lease_remaining_ms"].is_i64(),
        "{status}"
    );
    assert_eq!(status["down_nodes"], Value::Array(Vec::new()), "{status}");
    assert_rfc3339(&status["read_at"], "read_at");

    let acls = json_of(&mut dev, &["acl", "list"]);
    assert!(acls["bindings"].is_array(), "{acls}");

    // Tables show the same in human form.
    let table = dev.ok(&["topic", "describe", "orders"]);
    assert!(
        table.contains("retention:    1w, 1 GiB/partition"),
        "{table}"
    );
    assert!(table.contains("segment size: 64 MiB"), "{table}");
    assert!(table.contains("message ttl:  1m 30s"), "{table}");
    assert!(table.contains("max batch:    2 MiB"), "{table}");
    assert!(table.contains("segment age:  "), "{table}");

    // A bad human value is refused before anything is sent.
    let bad = dev.sluice(&["topic", "create", "x", "--retention", "7 parsecs"]);
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.contains("retention") && message.contains("unit"),
        "{message}"
    );
    assert!(
        dev.ok(&["topic", "list"]).contains("orders"),
        "the cluster keeps serving"
    );
}

fn status_json(cluster: &Cluster) -> Option<Value> {
    let output = cluster
        .cli()
        .args(["cluster", "status", "--output", "json"])
        .output()
        .expect("run sluice");
    serde_json::from_slice(&output.stdout).ok()
}

fn down_ids(status: &Value) -> Vec<String> {
    status["down_nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|node| node["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_names_a_killed_broker_as_down_until_it_returns() {
    let mut cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        ..ClusterSpec::default()
    })
    .await;
    cluster.wait_ready().await;
    let victim = cluster.brokers[1].node_id.clone();
    cluster.brokers[1].kill();

    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    let status = loop {
        if let Some(status) = status_json(&cluster) {
            if down_ids(&status).contains(&victim) {
                break status;
            }
        }
        assert!(Instant::now() < deadline, "{victim} never listed as down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let down = status["down_nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["node_id"] == victim.as_str()))
        .expect("down entry")
        .clone();
    assert_eq!(down["kind"], "broker", "{down}");
    assert_eq!(down["status"], "down", "{down}");
    assert!(
        down["down_for_ms"].is_i64() || down["down_for_ms"].is_u64(),
        "{down}"
    );
    assert!(
        down["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("no heartbeat")),
        "{down}"
    );
    assert_rfc3339(&down["down_since"], "down_since");
    let live: Vec<&str> = status["brokers"]
        .as_array()
        .expect("brokers")
        .iter()
        .filter_map(|broker| broker["node_id"].as_str())
        .collect();
    assert!(
        !live.contains(&victim.as_str()),
        "a down broker is not also live: {status}"
    );

    let table = cluster
        .cli()
        .args(["cluster", "status"])
        .output()
        .expect("run sluice");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("down (1)") && text.contains(&victim),
        "{text}"
    );

    // Back: no longer down.
    cluster.brokers[1].start();
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        if let Some(status) = status_json(&cluster) {
            if !down_ids(&status).contains(&victim)
                && status["brokers"]
                    .as_array()
                    .is_some_and(|brokers| brokers.len() == 2)
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{victim} still listed as down after it returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_second_sluice_dev_on_a_data_directory_in_use_refuses_at_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut first = start_dev(root.path());
    let started = Instant::now();
    let second = Command::new(binary("sluice"))
        .args(["dev", "--data-dir"])
        .arg(data_dir(root.path()))
        .args(["--nameserver-port", &free_port().to_string()])
        .args(["--broker-port", &free_port().to_string()])
        .args(["--store-port", &free_port().to_string()])
        .args(["--metrics-port", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run a second sluice dev");
    let took = started.elapsed();
    assert!(!second.status.success(), "the second instance must fail");
    assert!(took < Duration::from_secs(5), "refusing took {took:?}");
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.is_empty(),
        "no banner from the refused instance: {stdout}"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another `sluice dev`"),
        "{stderr}"
    );
    // The first keeps serving.
    assert!(first.is_running());
    first.ok(&["topic", "create", "still-here"]);
    assert!(first.ok(&["topic", "list"]).contains("still-here"));
}

#[test]
fn a_clean_sigterm_prints_no_warnings_and_logs_have_no_colour_codes() {
    let root = tempfile::tempdir().expect("tempdir");
    let log_path = root.path().join("dev.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut dev = DevProcess::spawn(
        &data_dir(root.path()),
        DevProcess::free_ports(),
        "info",
        Stdio::null(),
        Stdio::from(log),
    );
    dev.wait_ready();
    dev.ok(&["topic", "create", "t", "--partitions", "2"]);
    dev.ok(&["produce", "t", "a", "b"]);
    dev.ok(&[
        "consume",
        "t",
        "--group",
        "g",
        "--from-beginning",
        "--max-messages",
        "2",
    ]);
    assert!(dev.terminate().success(), "a clean stop exits 0");
    let text = std::fs::read_to_string(&log_path).expect("read log");
    assert!(text.contains(" INFO "), "info logs were written: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
    let stop = text
        .find("SIGTERM: stopping")
        .expect("the stop is announced");
    let after: Vec<&str> = text[stop..]
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect();
    assert!(
        after.is_empty(),
        "a clean stop warned:\n{}",
        after.join("\n")
    );
}

fn sluice_at(bootstrap: &str, extra: &[&str]) -> Output {
    Command::new(binary("sluice"))
        .args(["--bootstrap", bootstrap, "--request-timeout-ms", "3000"])
        .args(extra)
        .args(["topic", "list"])
        .stdin(Stdio::null())
        .output()
        .expect("run sluice")
}

fn failure_text(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn a_wrong_address_gets_an_error_naming_the_cause() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut dev = start_dev(root.path());
    // An HTTP server: the metrics endpoint.
    let http = failure_text(&sluice_at(&dev.metrics_address(), &[]));
    assert!(http.contains("an HTTP/1 server answers there"), "{http}");
    // https:// without a CA: refused before connecting.
    let https_bare = failure_text(&sluice_at(&format!("https://{}", dev.bootstrap()), &[]));
    assert!(https_bare.contains("no --tls-ca"), "{https_bare}");
    // https:// with a CA, to the plaintext nameserver.
    let certs = root.path().join("certs");
    let made = Command::new(binary("sluice"))
        .args(["certs", "create", "--out-dir"])
        .arg(&certs)
        .output()
        .expect("sluice certs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ca = certs.join("ca.pem");
    let https = failure_text(&sluice_at(
        &format!("https://{}", dev.bootstrap()),
        &["--tls-ca", ca.to_str().expect("utf-8 path")],
    ));
    assert!(
        https.contains("the server speaks plaintext (no TLS)"),
        "{https}"
    );
    // Nothing listening.
    let refused = failure_text(&sluice_at(&format!("127.0.0.1:{}", free_port()), &[]));
    assert!(
        refused.contains("connection refused: nothing listens"),
        "{refused}"
    );
    // A name that does not resolve (.invalid never does, RFC 6761).
    let dns = failure_text(&sluice_at("no-such-host.invalid:7400", &[]));
    assert!(
        dns.contains("cannot resolve host \"no-such-host.invalid\""),
        "{dns}"
    );
    // -v turns on the client's debug log.
    assert!(
        !refused.contains("DEBUG") && !refused.contains("WARN"),
        "quiet without -v: {refused}"
    );
    let verbose = failure_text(&sluice_at(&format!("127.0.0.1:{}", free_port()), &["-v"]));
    assert!(verbose.contains("DEBUG sluice_client"), "{verbose}");
    assert!(
        verbose.contains("connecting to a bootstrap nameserver"),
        "{verbose}"
    );
    let logged = Command::new(binary("sluice"))
        .env("RUST_LOG", "sluice_client=debug")
        .args(["--bootstrap", dev.bootstrap(), "topic", "list"])
        .output()
        .expect("run sluice");
    assert!(logged.status.success());
    let logged = String::from_utf8_lossy(&logged.stderr);
    assert!(
        logged.contains("DEBUG sluice_client") && logged.contains("connected"),
        "{logged}"
    );
    assert!(
        !verbose.contains('\u{1b}'),
        "no colour codes on a pipe: {verbose}"
    );
    assert!(
        dev.ok(&["topic", "list"]).contains("TOPIC"),
        "dev keeps serving"
    );
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _sluice"),
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
    ] {
        let output = Command::new(binary("sluice"))
            .args(["completion", shell])
            .output()
            .expect("run sluice completion");
        assert!(
            output.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for word in ["subscription", "completion", "json"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let bad = Command::new(binary("sluice"))
        .args(["completion", "powershell-9"])
        .output()
        .expect("run sluice completion");
    assert!(!bad.status.success());
}

/// The broker coordinating `group` (its id), asked of the nameserver.
async fn coordinator_of(cluster: &Cluster, group: &str) -> String {
    use sluice_proto::v1::name_server_client::NameServerClient;
    use sluice_proto::v1::FindCoordinatorRequest;
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let mut nameserver = NameServerClient::new(cluster.channel(&cluster.bootstrap()[0]));
        let answer = nameserver
            .find_coordinator(FindCoordinatorRequest {
                group: group.to_string(),
                ..FindCoordinatorRequest::default()
            })
            .await;
        match answer {
            Ok(answer) if !answer.get_ref().broker_id.is_empty() => {
                return answer.into_inner().broker_id
            }
            other => assert!(Instant::now() < deadline, "no coordinator: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cli_ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = cluster.cli().args(args).output().expect("run sluice");
    assert!(
        output.status.success(),
        "`sluice {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lag_is_unknown_not_zero_where_the_partition_owner_is_down() {
    // Long sessions: the dead broker keeps its partitions for the test.
    let mut cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        session_timeout_ms: 20_000,
        lease_ttl_ms: 40_000,
        ..ClusterSpec::default()
    })
    .await;
    cluster.wait_ready().await;
    cluster.create_topic("lagged", 4).await;
    sluice_tests::cluster::wait_until_writable(cluster.client_config(), "lagged").await;
    for partition in 0..4 {
        let partition = partition.to_string();
        cli_ok(
            &cluster,
            &[
                "produce",
                "lagged",
                "--partition",
                &partition,
                "a",
                "b",
                "c",
            ],
        );
    }
    cli_ok(
        &cluster,
        &[
            "consume",
            "lagged",
            "--group",
            "g",
            "--from-beginning",
            "--max-messages",
            "12",
        ],
    );
    // Committed on every partition (a group lists its committed ones),
    // then one more record each.
    for partition in 0..4 {
        let partition = partition.to_string();
        cli_ok(
            &cluster,
            &["produce", "lagged", "--partition", &partition, "d"],
        );
    }
    let coordinator = coordinator_of(&cluster, "g").await;
    let admin = sluice_client::Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let owners = sluice_tests::cluster::partition_owners(
        &admin.describe_topic("lagged").await.expect("describe"),
    );
    let victim_index = cluster
        .brokers
        .iter()
        .position(|broker| broker.node_id != coordinator)
        .expect("a broker that does not coordinate the group");
    let victim = cluster.brokers[victim_index].node_id.clone();
    let victims: Vec<u64> = (0..4u64)
        .filter(|partition| owners[*partition as usize] == victim)
        .collect();
    assert!(!victims.is_empty(), "{victim} owns none of {owners:?}");
    let before: Value =
        serde_json::from_str(&cli_ok(&cluster, &["-o", "json", "group", "describe", "g"]))
            .expect("JSON");
    assert_eq!(before["partitions_with_unknown_lag"], 0, "{before}");
    assert_eq!(
        before["total_lag"], 4,
        "one unconsumed record each: {before}"
    );

    cluster.brokers[victim_index].kill();
    let after: Value =
        serde_json::from_str(&cli_ok(&cluster, &["-o", "json", "group", "describe", "g"]))
            .expect("JSON");
    let rows = after["partitions"].as_array().expect("rows");
    for row in rows {
        let partition = row["partition"].as_u64().expect("partition");
        if victims.contains(&partition) {
            assert!(
                row["lag"].is_null(),
                "lag of {partition} must be unknown: {after}"
            );
            assert!(row["lag_unknown_reason"]
                .as_str()
                .is_some_and(|why| !why.is_empty()));
        } else {
            assert!(row["lag"].is_u64(), "lag of {partition} is known: {after}");
        }
    }
    assert_eq!(
        after["partitions_with_unknown_lag"].as_u64(),
        Some(victims.len() as u64),
        "{after}"
    );
    let table = cli_ok(&cluster, &["group", "describe", "g"]);
    assert!(table.contains("unknown"), "{table}");
    assert!(table.contains("total lag: at least"), "{table}");
}
