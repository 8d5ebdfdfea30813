//! `sluice subscription` against a real cluster (etcd, nameserver, broker
//! and store processes): create with defaults and a dead-letter topic,
//! idempotent re-creation, a conflict naming the differing field, list,
//! describe, a bad selector shown with its column, delete.

use sluice_tests::cluster::{binary, Cluster, ClusterSpec};
use std::process::{Command, Output};

fn sluice(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(binary("sluice"))
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .args(args)
        .output()
        .expect("run sluice")
}

fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = sluice(cluster, args);
    assert!(
        output.status.success(),
        "`sluice {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Runs a command that must fail; returns its stderr.
fn fails(cluster: &Cluster, args: &[&str]) -> String {
    let output = sluice(cluster, args);
    assert!(
        !output.status.success(),
        "`sluice {}` succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[tokio::test]
async fn subscription_commands_against_a_cluster() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("orders", 2).await;

    let created = ok(
        &cluster,
        &[
            "subscription",
            "create",
            "orders",
            "billing",
            "--type",
            "shared",
        ],
    );
    for expected in [
        "subscription:          billing",
        "type:                  shared",
        "selector:              all",
        "initial position:      latest",
        "ack timeout ms:        30000",
        "redelivery backoff ms: 1000 doubling up to 60000",
        "dead letters:          never",
    ] {
        assert!(created.contains(expected), "{expected:?} not in\n{created}");
    }
    // The same again is accepted; other settings are a conflict that says
    // which.
    assert_eq!(
        ok(
            &cluster,
            &[
                "subscription",
                "create",
                "orders",
                "billing",
                "--type",
                "shared"
            ]
        ),
        created
    );
    let conflict = fails(
        &cluster,
        &[
            "subscription",
            "create",
            "orders",
            "billing",
            "--type",
            "exclusive",
        ],
    );
    assert!(
        conflict.contains(
            "type (stored SUBSCRIPTION_TYPE_SHARED, requested SUBSCRIPTION_TYPE_EXCLUSIVE)"
        ) && conflict.contains("SUBSCRIPTION_CONFLICT"),
        "{conflict}"
    );

    let audit = ok(
        &cluster,
        &[
            "subscription",
            "create",
            "orders",
            "audit",
            "--type",
            "key-shared",
            "--selector-kind",
            "sql",
            "--selector",
            "region = 'eu' AND amount > 100",
            "--initial-position",
            "earliest",
            "--ack-timeout-ms",
            "5000",
            "--max-deliveries",
            "3",
            "--redelivery-backoff-initial-ms",
            "200",
            "--redelivery-backoff-max-ms",
            "400",
        ],
    );
    for expected in [
        "type:                  key-shared",
        "selector:              sql: region = 'eu' AND amount > 100",
        "initial position:      earliest",
        "ack timeout ms:        5000",
        "redelivery backoff ms: 200 doubling up to 400",
        "dead letters:          after 3 deliveries, to orders-audit-DLQ",
    ] {
        assert!(audit.contains(expected), "{expected:?} not in\n{audit}");
    }
    let topics = ok(&cluster, &["topic", "list"]);
    assert!(topics.contains("orders-audit-DLQ"), "{topics}");
    ok(
        &cluster,
        &[
            "subscription",
            "create",
            "orders",
            "tagged",
            "--type",
            "failover",
            "--selector-kind",
            "tag",
            "--selector",
            "red || blue",
            "--max-deliveries",
            "2",
            "--dead-letter-topic",
            "parked",
        ],
    );
    assert!(ok(&cluster, &["topic", "list"]).contains("parked"));

    let listed = ok(&cluster, &["subscription", "list", "orders"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 4, "{listed}");
    assert!(lines[0].starts_with("NAME"), "{listed}");
    assert!(
        lines[1].starts_with("audit") && lines[1].contains("key-shared"),
        "{listed}"
    );
    assert!(
        lines[2].starts_with("billing") && lines[2].contains("shared"),
        "{listed}"
    );
    assert!(
        lines[3].starts_with("tagged") && lines[3].contains("tag: red || blue"),
        "{listed}"
    );
    // The definition as created, then its backlog (ADR 0012).
    let described = ok(&cluster, &["subscription", "describe", "orders", "audit"]);
    assert!(described.starts_with(&audit), "{described}");
    assert!(
        described[audit.len()..].contains("backlog: 0 messages"),
        "{described}"
    );

    // A selector that does not parse: the server's message with the
    // column, and the expression with a caret under it.
    let expression = "amount > 100 AND region = = 'eu'";
    let bad = fails(
        &cluster,
        &[
            "subscription",
            "create",
            "orders",
            "filtered",
            "--type",
            "shared",
            "--selector-kind",
            "sql",
            "--selector",
            expression,
        ],
    );
    assert!(
        bad.contains("at column 26") && bad.contains("INVALID_SELECTOR"),
        "{bad}"
    );
    assert!(
        bad.contains(&format!("  {expression}\n  {}^ column 26", " ".repeat(26))),
        "{bad}"
    );
    // Refusals of the server and of the command line.
    let absurd = fails(
        &cluster,
        &[
            "subscription",
            "create",
            "orders",
            "slow",
            "--type",
            "shared",
            "--ack-timeout-ms",
            "999999999999",
        ],
    );
    assert!(absurd.contains("ack_timeout_ms"), "{absurd}");
    let bad_type = fails(
        &cluster,
        &["subscription", "create", "orders", "x", "--type", "fanout"],
    );
    assert!(bad_type.contains("key-shared"), "{bad_type}");
    let bad_name = fails(
        &cluster,
        &[
            "subscription",
            "create",
            "orders",
            "../x",
            "--type",
            "shared",
        ],
    );
    assert!(bad_name.contains("subscription name"), "{bad_name}");
    let unknown_topic = fails(&cluster, &["subscription", "list", "nope"]);
    assert!(unknown_topic.contains("UNKNOWN_TOPIC"), "{unknown_topic}");

    let deleted = ok(&cluster, &["subscription", "delete", "orders", "billing"]);
    assert!(
        deleted.contains("deleted subscription billing of orders"),
        "{deleted}"
    );
    let gone = fails(&cluster, &["subscription", "describe", "orders", "billing"]);
    assert!(gone.contains("UNKNOWN_SUBSCRIPTION"), "{gone}");
    let again = fails(&cluster, &["subscription", "delete", "orders", "billing"]);
    assert!(again.contains("UNKNOWN_SUBSCRIPTION"), "{again}");
    assert_eq!(
        ok(&cluster, &["subscription", "list", "orders"])
            .lines()
            .count(),
        3
    );
}

/// Issue 11 item 5, as reported: `subscription create t1 q`, then a, b, c
/// produced, then `consume --subscription q` gets all three (the start
/// is where the partition ended at the creation, not when the first
/// consumer came), and `message why` calls an older message BEFORE_START.
#[tokio::test]
async fn a_new_subscription_gets_what_is_produced_after_its_creation() {
    let cluster = Cluster::start(ClusterSpec::default()).await;
    cluster.create_topic("t1", 1).await;
    ok(&cluster, &["produce", "t1", "old"]);

    let created = ok(
        &cluster,
        &["subscription", "create", "t1", "q", "--type", "shared"],
    );
    assert!(
        created.contains("initial position:      latest (from partition:offset 0:1)"),
        "{created}"
    );
    for value in ["a", "b", "c"] {
        ok(&cluster, &["produce", "t1", value]);
    }
    // One partition, delivered in offset order: "old" would come first.
    let consumed = ok(
        &cluster,
        &[
            "consume",
            "t1",
            "--subscription",
            "q",
            "--max-messages",
            "3",
        ],
    );
    assert_eq!(consumed.lines().collect::<Vec<_>>(), ["a", "b", "c"]);
    let why = ok(
        &cluster,
        &["message", "why", "t1", "0", "0", "--subscription", "q"],
    );
    assert!(why.starts_with("BEFORE_START: "), "{why}");
    assert!(why.contains("before subscription \"q\" existed"), "{why}");
}
