//! ADR 0016 stage 7 at process level: `sluice transaction list | describe
//! | abort`, the LSO lag in `sluice topic describe`, and `sluice bench
//! produce --transactional`, against real etcd, stores and brokers run
//! with `[transactions] enabled = true`.
//!
//! - An open transaction shows in `transaction list` (JSON and table, the
//!   `--state` filter applied) and `describe` (state, producer, the
//!   partitions it wrote); `topic describe` shows its partitions' LSO lag
//!   in records and the open transaction's age.
//! - `transaction abort` ends it: the coordinator records an ADMIN abort,
//!   the producer's commit is refused, the LSO lag returns to 0 and a
//!   read-committed consumer reads only a later committed transaction,
//!   never a record of the aborted one.
//! - An unknown id: describe and abort fail with a non-zero exit naming
//!   it; a malformed id is refused before anything is sent.
//! - A short transactional bench prints commit latency and commits.
//! - On a cluster with transactions off, `transaction list` says so.

use serde_json::Value;
use sluice_client::{
    Consumer, ConsumerConfig, Isolation, Producer, ProducerConfig, Record, StartOffset,
};
use sluice_tests::cluster::{wait_until_writable, Cluster, ClusterSpec};
use std::process::Output;
use std::time::{Duration, Instant};

const TOPIC: &str = "cli-tx";
/// Bound on every wait for the cluster to converge (not a timing claim).
const EVENTUALLY: Duration = Duration::from_secs(40);

fn run(cluster: &Cluster, args: &[&str]) -> Output {
    cluster.cli().args(args).output().expect("run sluice")
}

/// Runs the CLI, expecting success; its stdout.
fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = run(cluster, args);
    assert!(
        output.status.success(),
        "`sluice {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let text = ok(cluster, &full);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// Runs the CLI, expecting a failure; its stderr.
fn fails(cluster: &Cluster, args: &[&str]) -> String {
    let output = run(cluster, args);
    assert!(
        !output.status.success(),
        "`sluice {}` succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `check` on the CLI's JSON until it holds or [`EVENTUALLY`].
fn eventually(
    cluster: &Cluster,
    args: &[&str],
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let value = json(cluster, args);
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {value:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn listed<'a>(listing: &'a Value, id: &str) -> Option<&'a Value> {
    listing["transactions"]
        .as_array()
        .and_then(|all| all.iter().find(|txn| txn["transactional_id"] == id))
}

/// `(lso_lag, oldest_open_transaction_ms)` of each partition of TOPIC.
fn lso_lags(described: &Value) -> Vec<(Value, Value)> {
    described["partitions"]
        .as_array()
        .map(|partitions| {
            partitions
                .iter()
                .map(|partition| {
                    (
                        partition["lso_lag"].clone(),
                        partition["oldest_open_transaction_ms"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn producer(cluster: &Cluster, id: &str) -> Producer {
    Producer::new(ProducerConfig {
        client: cluster.client_config(),
        transactional_id: Some(id.into()),
        transaction_timeout_ms: 60_000,
        delivery_timeout_ms: 20_000,
        ..ProducerConfig::default()
    })
    .await
    .expect("transactional producer")
}

/// Sends `values` to `partition` inside the producer's open transaction
/// and waits for their acknowledgements.
async fn send(producer: &Producer, partition: u32, values: &[&str]) {
    for value in values {
        let record = Record::new(TOPIC, value.to_string()).with_partition(partition);
        producer.send(record).await.expect("acknowledged");
    }
}

/// Every value a read-committed reader gets from both partitions once
/// `at_least` arrived and 2 s passed without more.
async fn read_committed(cluster: &Cluster, at_least: usize) -> Vec<String> {
    let assignment = (0..2)
        .map(|partition| (TOPIC.to_string(), partition, StartOffset::Earliest))
        .collect();
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: cluster.client_config(),
            group: None,
            isolation: Isolation::ReadCommitted,
            ..ConsumerConfig::default()
        },
        assignment,
    )
    .await
    .expect("consumer");
    let deadline = Instant::now() + EVENTUALLY;
    let mut values = Vec::new();
    loop {
        let wait = if values.len() >= at_least {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        match consumer.recv_timeout(wait).await.expect("read") {
            Some(record) => values
                .push(String::from_utf8(record.value.expect("a value").to_vec()).expect("utf-8")),
            None if values.len() >= at_least => break,
            None => assert!(Instant::now() < deadline, "only {values:?} arrived"),
        }
    }
    consumer.close().await.expect("close");
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_describe_abort_lso_lag_and_bench() {
    let cluster = Cluster::start(ClusterSpec {
        brokers: 2,
        broker_config: "[transactions]\nenabled = true\nmax_timeout_ms = 60000\n".into(),
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, 2).await;
    wait_until_writable(cluster.client_config(), TOPIC).await;

    // Before any transaction: no lag anywhere.
    let described = eventually(
        &cluster,
        &["topic", "describe", TOPIC],
        "no LSO lag",
        |value| lso_lags(value) == vec![(Value::from(0), Value::Null); 2],
    );
    assert_eq!(described["partitions"][0]["last_stable_offset"], 0);

    // An open transaction: 3 records on partition 0, 2 on partition 1.
    let open = producer(&cluster, "cli-open").await;
    let identity = open.transactional_identity().expect("transactional");
    open.begin_transaction().expect("begin");
    send(&open, 0, &["aborted-0", "aborted-1", "aborted-2"]).await;
    send(&open, 1, &["aborted-3", "aborted-4"]).await;
    listed_while_open(&cluster, identity);
    described_while_open(&cluster, identity.0);
    lso_lag_while_open(&cluster);
    aborted_by_the_operator(&cluster, &open, identity.1).await;
    only_committed_records_are_read(&cluster).await;
    unknown_ids_are_named(&cluster);
    a_short_transactional_bench(&cluster);
}

/// `transaction list` shows the open transaction, in JSON and as a table,
/// and `--state` filters.
fn listed_while_open(cluster: &Cluster, (producer_id, epoch): (i64, i16)) {
    let listing = json(cluster, &["transaction", "list"]);
    let entry = listed(&listing, "cli-open").unwrap_or_else(|| panic!("not listed: {listing:#}"));
    assert_eq!(entry["state"], "ongoing", "{entry}");
    assert_eq!(entry["producer_id"], producer_id, "{entry}");
    assert_eq!(entry["producer_epoch"], i32::from(epoch), "{entry}");
    assert_eq!(listing["unanswered_log_partitions"], Value::Array(vec![]));
    let ongoing = json(
        cluster,
        &["transaction", "list", "--state", "ongoing,prepare-abort"],
    );
    assert!(listed(&ongoing, "cli-open").is_some(), "{ongoing:#}");
    let committed = json(
        cluster,
        &["transaction", "list", "--state", "complete-commit"],
    );
    assert!(
        listed(&committed, "cli-open").is_none(),
        "filtered out: {committed:#}"
    );
    let table = ok(cluster, &["transaction", "list"]);
    assert!(
        table.contains("TRANSACTIONAL-ID") && table.contains("cli-open"),
        "{table}"
    );
}

/// `transaction describe` shows its state, producer and participants.
fn described_while_open(cluster: &Cluster, producer_id: i64) {
    let described = json(cluster, &["transaction", "describe", "cli-open"]);
    assert_eq!(described["state"], "ongoing", "{described}");
    assert_eq!(described["producer_id"], producer_id, "{described}");
    let mut participants: Vec<(String, u64)> = described["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().unwrap_or_default().to_string(),
                p["partition"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    participants.sort();
    assert_eq!(
        participants,
        vec![(TOPIC.to_string(), 0), (TOPIC.to_string(), 1)]
    );
    assert!(described["open_for_ms"].is_u64(), "{described}");
    let text = ok(cluster, &["transaction", "describe", "cli-open"]);
    assert!(
        text.contains("state:            ongoing") && text.contains(&format!("{TOPIC}/1")),
        "{text}"
    );
}

/// The open transaction holds each partition's LSO at its first offset.
fn lso_lag_while_open(cluster: &Cluster) {
    let described = json(cluster, &["topic", "describe", TOPIC]);
    let lags = lso_lags(&described);
    assert_eq!(lags[0].0, 3, "{described:#}");
    assert_eq!(lags[1].0, 2, "{described:#}");
    for (_, age) in &lags {
        let age = age
            .as_u64()
            .unwrap_or_else(|| panic!("an age: {described:#}"));
        assert!(
            age < 600_000,
            "the transaction began in this test: {age} ms"
        );
    }
    let table = ok(cluster, &["topic", "describe", TOPIC]);
    assert!(
        table.contains("LSO-LAG") && table.contains("OPEN-TXN"),
        "{table}"
    );
}

/// `transaction abort` ends it for good: ADMIN reason, a new epoch, the
/// producer's commit refused, the LSO caught up, a second abort refused.
async fn aborted_by_the_operator(cluster: &Cluster, open: &Producer, epoch: i16) {
    ok(cluster, &["transaction", "abort", "cli-open"]);
    let ended = eventually(
        cluster,
        &["transaction", "describe", "cli-open"],
        "abort completes",
        |value| value["state"] == "complete_abort",
    );
    assert_eq!(ended["end_reason"], "admin", "{ended}");
    assert!(
        ended["producer_epoch"].as_i64() > Some(i64::from(epoch)),
        "the epoch moved: {ended}"
    );
    assert!(
        open.commit_transaction().await.is_err(),
        "the aborted transaction cannot commit"
    );
    eventually(
        cluster,
        &["topic", "describe", TOPIC],
        "the LSO catches up",
        |value| lso_lags(value) == vec![(Value::from(0), Value::Null); 2],
    );
    // Aborting again: nothing is open.
    let again = fails(cluster, &["transaction", "abort", "cli-open"]);
    assert!(again.contains("no open transaction"), "{again}");
}

/// A later committed transaction is all a read-committed reader sees.
async fn only_committed_records_are_read(cluster: &Cluster) {
    let done = producer(cluster, "cli-done").await;
    done.begin_transaction().expect("begin");
    send(&done, 0, &["committed-0"]).await;
    send(&done, 1, &["committed-1"]).await;
    done.commit_transaction().await.expect("commit");
    let mut seen = read_committed(cluster, 2).await;
    seen.sort();
    assert_eq!(seen, ["committed-0", "committed-1"], "no aborted record");
    done.close().await.expect("close");
}

/// Unknown and malformed ids fail with a non-zero exit naming them.
fn unknown_ids_are_named(cluster: &Cluster) {
    for action in ["describe", "abort"] {
        let error = fails(cluster, &["transaction", action, "no-such-id"]);
        assert!(
            error.contains("unknown transactional id 'no-such-id'"),
            "{action}: {error}"
        );
    }
    let error = fails(cluster, &["transaction", "describe", &"x".repeat(250)]);
    assert!(error.contains("transactional id"), "{error}");
}

/// A short transactional bench prints commit latency and commits.
fn a_short_transactional_bench(cluster: &Cluster) {
    let bench = ok(
        cluster,
        &[
            "bench",
            "produce",
            "--topic",
            "cli-bench",
            "--partitions",
            "2",
            "--messages",
            "2000",
            "--size",
            "100",
            "--transactional",
            "--transaction-interval-ms",
            "50",
        ],
    );
    eprintln!("{bench}");
    assert!(bench.contains("commit latency ms: p50"), "{bench}");
    let committed: u64 = bench
        .lines()
        .find_map(|line| line.trim().strip_prefix("transactions: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("a commit count: {bench}"));
    assert!(committed >= 1, "{bench}");
    assert!(bench.contains("2000 messages"), "{bench}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_off_is_said_plainly() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    // Until the transaction log's partitions have owners the answer is
    // UNAVAILABLE; then the brokers say why they refuse.
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let error = fails(&cluster, &["transaction", "list"]);
        if error.contains("not enabled") {
            assert!(error.contains("enabled = true"), "a hint: {error}");
            break;
        }
        assert!(
            error.contains("live owner") && Instant::now() < deadline,
            "{error}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let error = fails(
        &cluster,
        &["bench", "produce", "--transaction-interval-ms", "50"],
    );
    assert!(
        error.contains("--transactional"),
        "the interval needs the mode: {error}"
    );
}
