//! Nameserver and etcd failover against real binaries: a 3-member etcd
//! cluster, two nameservers, two brokers and one store.
//!
//! - `kill -9` of the active nameserver (the elected assigner): the other
//!   takes the role; then `kill -9` of a broker: its partitions move to the
//!   other broker, which only the new assigner can have done; producing
//!   and consuming keep working. The handover times are printed.
//! - `kill -9` of one etcd member at a time while producing, consuming and
//!   administering topics: the client sees no error.
//!
//! `SLUICE_TEST_COPY_LOGS=DIR` copies the services' logs there when
//! producing stalls (the cluster's own directory is deleted on drop).

use sluice_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, Record, StartOffset,
};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on every "eventually" in these tests (not a timing
/// assertion: a failure to converge at all).
const EVENTUALLY_TIMEOUT_MS: u64 = 60_000;
const PARTITIONS: u32 = 4;

fn spec() -> ClusterSpec {
    ClusterSpec {
        nameservers: 2,
        brokers: 2,
        stores: 1,
        etcd_members: 3,
        ..ClusterSpec::default()
    }
}

fn client_of(urls: Vec<String>) -> ClientConfig {
    ClientConfig {
        bootstrap: urls,
        ..ClientConfig::default()
    }
}

/// The active assigner as reported through the given nameservers.
async fn active_assigner(client: &ClientConfig) -> Option<String> {
    let admin = Admin::connect(client.clone()).await.ok()?;
    let status = admin.cluster_status().await.ok()?;
    (!status.active_assigner.is_empty()).then_some(status.active_assigner)
}

async fn wait_for_assigner(cluster: &Cluster, client: &ClientConfig, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_millis(EVENTUALLY_TIMEOUT_MS);
    loop {
        if let Some(active) = active_assigner(client).await {
            if Some(active.as_str()) != not {
                return active;
            }
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("no nameserver other than {not:?} became the assigner");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn index_of(cluster: &Cluster, node_id: &str) -> usize {
    cluster
        .nameservers
        .iter()
        .position(|service| service.node_id == node_id)
        .unwrap_or_else(|| panic!("{node_id} is not one of the cluster's nameservers"))
}

/// Owner broker id of every partition of `topic` (empty: none live).
async fn owners(client: &ClientConfig, topic: &str) -> Option<Vec<String>> {
    let admin = Admin::connect(client.clone()).await.ok()?;
    let description = admin.describe_topic(topic).await.ok()?;
    Some(sluice_tests::cluster::partition_owners(&description))
}

/// Sends `count` records tagged with `label` and returns how many failed.
async fn produce(client: &ClientConfig, topic: &str, label: &str, count: u64) -> u64 {
    let producer = Producer::new(ProducerConfig {
        client: client.clone(),
        linger_ms: 2,
        delivery_timeout_ms: 60_000,
        ..ProducerConfig::default()
    })
    .await
    .expect("producer");
    let mut deliveries = Vec::new();
    for index in 0..count {
        let record = Record::new(topic, format!("{label}-{index}")).with_key(index.to_string());
        deliveries.push(producer.enqueue(record).await.expect("enqueue"));
    }
    let mut failed = 0;
    for delivery in deliveries {
        if let Err(error) = delivery.await {
            eprintln!("delivery failed: {error}");
            failed += 1;
        }
    }
    producer.close().await.expect("close producer");
    failed
}

/// Reads every partition of `topic` from the start; returns the values.
async fn consume_all(client: &ClientConfig, topic: &str) -> Vec<String> {
    let assignment = (0..PARTITIONS)
        .map(|partition| (topic.to_string(), partition, StartOffset::Earliest))
        .collect();
    let mut consumer = Consumer::assign(
        ConsumerConfig {
            client: client.clone(),
            group: None,
            ..ConsumerConfig::default()
        },
        assignment,
    )
    .await
    .expect("consumer");
    let mut values = Vec::new();
    while let Some(record) = consumer
        .recv_timeout(Duration::from_secs(5))
        .await
        .expect("consume")
    {
        let value = record.value.expect("every record has a value");
        values.push(String::from_utf8(value.to_vec()).expect("utf-8 value"));
    }
    consumer.close().await.expect("close consumer");
    values
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_active_nameserver_hands_over_assignment() {
    let mut cluster = Cluster::start(spec()).await;
    let client = cluster.client_config();
    let topic = "handover";
    cluster.create_topic(topic, PARTITIONS).await;
    assert_eq!(produce(&client, topic, "before", 200).await, 0);

    // Kill -9 the assigner three times (restarting it each time so there
    // is always a second nameserver) and time each handover, measured from
    // the kill to the survivor reporting itself as the assigner.
    let mut handovers = Vec::new();
    let mut active = wait_for_assigner(&cluster, &client, None).await;
    for round in 0..3 {
        let victim = index_of(&cluster, &active);
        let survivor_urls: Vec<String> = cluster
            .nameservers
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != victim)
            .map(|(_, service)| service.url())
            .collect();
        let survivor_client = client_of(survivor_urls);
        let killed_at = Instant::now();
        cluster.nameservers[victim].kill();
        let next = wait_for_assigner(&cluster, &survivor_client, Some(&active)).await;
        let took = killed_at.elapsed();
        eprintln!(
            "handover {round}: {active} -> {next} in {} ms",
            took.as_millis()
        );
        handovers.push(took);
        cluster.nameservers[victim].start();
        active = next;
    }
    eprintln!(
        "assigner handover after kill -9: median {} ms of {:?}",
        median(&mut handovers).as_millis(),
        handovers
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>()
    );

    // The restarted nameserver stays a follower while the assigner lives.
    let active_index = index_of(&cluster, &active);
    let assigner_log_before = std::fs::read_to_string(cluster.nameservers[active_index].log_path())
        .expect("read the assigner's log")
        .matches("partition assigned")
        .count();

    // Kill -9 a broker that owns partitions of the topic: only the current
    // assigner can give them to the other broker.
    let before = owners(&client, topic).await.expect("owners");
    let victim_broker = before
        .iter()
        .find(|owner| !owner.is_empty())
        .cloned()
        .expect("the topic has owners");
    let broker_index = cluster
        .brokers
        .iter()
        .position(|service| service.node_id == victim_broker)
        .expect("owner is one of the brokers");
    let other_broker = cluster.brokers[1 - broker_index].node_id.clone();
    cluster.brokers[broker_index].kill();
    let deadline = Instant::now() + Duration::from_millis(EVENTUALLY_TIMEOUT_MS);
    loop {
        if let Some(now) = owners(&client, topic).await {
            if now.iter().all(|owner| *owner == other_broker) {
                break;
            }
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("partitions of {victim_broker} were not reassigned to {other_broker}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let assigner_log = std::fs::read_to_string(cluster.nameservers[active_index].log_path())
        .expect("read the assigner's log");
    assert!(
        assigner_log.matches("partition assigned").count() > assigner_log_before,
        "the reassignment was not made by the active assigner {active}"
    );
    for (index, service) in cluster.nameservers.iter().enumerate() {
        if index == active_index {
            continue;
        }
        let log = std::fs::read_to_string(service.log_path()).expect("read a follower's log");
        let last_start = log.rfind("nameserver serving").unwrap_or(0);
        assert!(
            !log[last_start..].contains("partition assigned"),
            "follower {} assigned partitions",
            service.node_id
        );
    }

    // Producing and consuming still work, and nothing acknowledged is lost.
    sluice_tests::cluster::wait_until_writable(client.clone(), topic).await;
    assert_eq!(produce(&client, topic, "after", 200).await, 0);
    let values: HashSet<String> = consume_all(&client, topic).await.into_iter().collect();
    for label in ["before", "after"] {
        for index in 0..200 {
            let value = format!("{label}-{index}");
            assert!(
                values.contains(&value),
                "{value} was acknowledged but is missing"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_one_etcd_member_is_invisible_to_clients() {
    // Production lease timings: when the member that dies is etcd's raft
    // leader, etcd answers nothing until it elected a new one (1 to 3 s on
    // a loaded test machine), so a broker lease must outlast that, as the
    // default 10 s does. The tests' usual 3 s lease does not.
    // A session ends when its nameserver cannot renew it, which needs
    // etcd's leader too (ADR 0014), so the session timeout must outlast
    // the election here; the 1.5 s default does not on a loaded machine.
    let mut cluster = Cluster::start(ClusterSpec {
        lease_ttl_ms: 10_000,
        heartbeat_interval_ms: 1_000,
        session_timeout_ms: 4_000,
        ..spec()
    })
    .await;
    let client = cluster.client_config();
    let topic = "steady";
    cluster.create_topic(topic, PARTITIONS).await;

    // A producer sending continuously and an admin creating, describing and
    // listing topics continuously; every error either sees is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let producer_task = {
        let client = client.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            let producer = Producer::new(ProducerConfig {
                client,
                linger_ms: 2,
                delivery_timeout_ms: 60_000,
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let record =
                    Record::new(topic, format!("steady-{sent}")).with_key(sent.to_string());
                match producer.send(record).await {
                    Ok(_) => {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(error) => errors
                        .lock()
                        .expect("errors lock")
                        .push(format!("produce: {error}")),
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            producer.close().await.expect("close producer");
            sent
        })
    };
    let admin_task = {
        let client = client.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let admin = Admin::connect(client).await.expect("admin");
            let mut round = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("admin-{round}");
                let config = sluice_proto::v1::TopicConfig {
                    partitions: 1,
                    ..Default::default()
                };
                let record = |what: &str, result: Result<(), sluice_client::ClientError>| {
                    if let Err(error) = result {
                        errors
                            .lock()
                            .expect("errors lock")
                            .push(format!("{what} {name}: {error}"));
                    }
                };
                record(
                    "create",
                    admin.create_topic(&name, config).await.map(|_| ()),
                );
                record("describe", admin.describe_topic(&name).await.map(|_| ()));
                record("list", admin.list_topics(false).await.map(|_| ()));
                record("status", admin.cluster_status().await.map(|_| ()));
                round += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            round
        })
    };

    let directory = cluster.directory().to_path_buf();
    let wait_for_progress = |from: u64| {
        let acknowledged = acknowledged.clone();
        let directory = directory.clone();
        async move {
            let deadline = Instant::now() + Duration::from_millis(EVENTUALLY_TIMEOUT_MS);
            while acknowledged.load(Ordering::SeqCst) < from + 100 {
                if Instant::now() > deadline {
                    if let Some(copy_to) = std::env::var_os("SLUICE_TEST_COPY_LOGS") {
                        let _ = std::process::Command::new("cp")
                            .arg("-r")
                            .arg(&directory)
                            .arg(&copy_to)
                            .status();
                    }
                    panic!("producing stalled");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for_progress(0).await;
    // Each member in turn, so the raft leader is among those killed.
    for member in 0..cluster.etcd.size() {
        cluster.etcd.kill(member);
        eprintln!("killed etcd member {member}");
        wait_for_progress(acknowledged.load(Ordering::SeqCst)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        wait_for_progress(acknowledged.load(Ordering::SeqCst)).await;
        cluster.etcd.restart(member);
    }
    stop.store(true, Ordering::SeqCst);
    let sent = producer_task.await.expect("producer task");
    let admin_rounds = admin_task.await.expect("admin task");
    let errors = errors.lock().expect("errors lock").clone();
    eprintln!(
        "sent {sent}, acknowledged {}, {admin_rounds} admin rounds, {} errors",
        acknowledged.load(Ordering::SeqCst),
        errors.len()
    );
    if !errors.is_empty() {
        cluster.dump_logs();
    }
    assert!(errors.is_empty(), "errors visible to clients: {errors:#?}");

    let values: HashSet<String> = consume_all(&client, topic).await.into_iter().collect();
    for index in 0..sent {
        let value = format!("steady-{index}");
        assert!(
            values.contains(&value),
            "{value} was acknowledged but is missing"
        );
    }
    // The assigner kept its role or handed it over; either way one is active.
    assert!(active_assigner(&client).await.is_some());
}
