//! Fast failover with the default session settings (ADR 0014), against
//! real processes and a real etcd: 3 brokers, 3 stores, topic 3/3/2.
//!
//! - SIGSTOP of a partition's owner: another broker owns and serves the
//!   partition within a generous bound; the frozen broker, once resumed,
//!   answers the produce and fetch that waited in its socket buffers with
//!   NOT_OWNER (it fenced itself before anyone could take over), and
//!   registers again with a new session.
//! - kill -9 of the owner: the same bound for every partition it owned.

use sluice_client::Admin;
use sluice_proto::test_util::batch;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::{FetchPartition, FetchRequest, NodeInfo, ProduceRequest};
use sluice_proto::{ErrorCode, SluiceError};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const TOPIC: &str = "failover";
const PARTITIONS: u32 = 3;
/// Generous upper bound on fault-to-serving with the defaults (session
/// timeout 1.5 s + reassignment + takeover): shows the behaviour, not a
/// performance figure (those are in BENCHMARKS.md).
const TAKEOVER_BOUND: Duration = Duration::from_secs(6);

fn spec() -> ClusterSpec {
    ClusterSpec {
        brokers: 3,
        stores: 3,
        // The production session settings (the harness's lease is shorter
        // than production's 5 s backstop, which plays no part here).
        heartbeat_interval_ms: 250,
        session_timeout_ms: 1_500,
        ..ClusterSpec::default()
    }
}

fn url(address: &str) -> String {
    if address.starts_with("http") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// (broker id, address URL) owning each partition; empty when none.
async fn owners(admin: &Admin) -> Vec<(String, String)> {
    let Ok(description) = admin.describe_topic(TOPIC).await else {
        return Vec::new();
    };
    description
        .partitions
        .iter()
        .map(|partition| match &partition.route {
            Some(route) if !route.broker_id.is_empty() => {
                (route.broker_id.clone(), url(&route.broker_address))
            }
            _ => (String::new(), String::new()),
        })
        .collect()
}

fn connect(cluster: &Cluster, address: &str) -> BrokerClient<Channel> {
    BrokerClient::new(cluster.channel(address))
}

/// One produce request on a fresh stream of `client`; the answer's code.
async fn produce_code(mut client: BrokerClient<Channel>, partition: u32, value: &str) -> ErrorCode {
    let request = ProduceRequest {
        request_id: 1,
        topic: TOPIC.to_string(),
        partition,
        batch: batch(&[value]),
        resume: false,
        ..Default::default()
    };
    match client.produce(tokio_stream::iter(vec![request])).await {
        Ok(response) => match response.into_inner().message().await {
            Ok(Some(answer)) => ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal),
            Ok(None) => ErrorCode::Internal,
            Err(status) => SluiceError::from_status(&status).code,
        },
        Err(status) => SluiceError::from_status(&status).code,
    }
}

/// A fetch of the partition from offset 0; the partition's answer code.
async fn fetch_code(mut client: BrokerClient<Channel>, partition: u32) -> ErrorCode {
    let request = FetchRequest {
        partitions: vec![FetchPartition {
            topic: TOPIC.to_string(),
            partition,
            offset: 0,
            max_bytes: 1 << 20,
        }],
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    match client.fetch(request).await {
        Ok(response) => response
            .into_inner()
            .partitions
            .first()
            .map(|answer| ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal))
            .unwrap_or(ErrorCode::Internal),
        Err(status) => SluiceError::from_status(&status).code,
    }
}

/// Waits until every partition in `partitions` is owned by a broker other
/// than `old` that acknowledges a produce; the time it took from `since`.
async fn wait_for_takeover(
    admin: &Admin,
    old: &str,
    partitions: &[u32],
    since: Instant,
    cluster: &Cluster,
) -> Duration {
    let mut pending: Vec<u32> = partitions.to_vec();
    while !pending.is_empty() {
        if since.elapsed() > TAKEOVER_BOUND * 2 {
            cluster.dump_logs();
            panic!(
                "partitions {pending:?} not taken over from {old} within {:?}",
                TAKEOVER_BOUND * 2
            );
        }
        let current = owners(admin).await;
        let mut still = Vec::new();
        for partition in pending {
            let owner = current.get(partition as usize).cloned().unwrap_or_default();
            let served = !owner.0.is_empty()
                && owner.0 != old
                && produce_code(connect(cluster, &owner.1), partition, "after").await
                    == ErrorCode::None;
            if !served {
                still.push(partition);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    since.elapsed()
}

async fn broker_session(admin: &Admin, broker_id: &str) -> Option<u64> {
    let status = admin.cluster_status().await.ok()?;
    status
        .brokers
        .iter()
        .find(|node: &&NodeInfo| node.node_id == broker_id)
        .map(|node| node.session_id)
}

async fn started_cluster() -> (Cluster, Admin) {
    let cluster = Cluster::start(spec()).await;
    cluster.create_topic(TOPIC, PARTITIONS).await;
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    // Data in every partition, so a fetch served would succeed.
    let records = (0..30)
        .map(|index| sluice_client::Record::new(TOPIC, format!("before-{index}")))
        .collect();
    cluster.produce_acknowledged(records).await;
    (cluster, admin)
}

fn index_of(cluster: &Cluster, broker_id: &str) -> usize {
    cluster
        .brokers
        .iter()
        .position(|broker| broker.node_id == broker_id)
        .expect("the owner is one of the cluster's brokers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_owner_is_replaced_and_refuses_once_resumed() {
    let (cluster, admin) = started_cluster().await;
    let before = owners(&admin).await;
    let (victim, victim_address) = before[0].clone();
    let session_before = broker_session(&admin, &victim)
        .await
        .expect("victim registered");
    let owned: Vec<u32> = (0..PARTITIONS)
        .filter(|partition| before[*partition as usize].0 == victim)
        .collect();
    // Connected before the freeze: the requests below wait in the frozen
    // process's socket buffers.
    let to_victim = connect(&cluster, &victim_address);
    assert_eq!(fetch_code(to_victim.clone(), 0).await, ErrorCode::None);

    let broker = &cluster.brokers[index_of(&cluster, &victim)];
    broker.pause();
    let frozen_at = Instant::now();
    // SIGSTOP takes effect asynchronously (on a loaded VM a request sent
    // right after kill() was once answered before the process stopped):
    // send the requests once the process is surely frozen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let buffered_fetch = tokio::spawn(fetch_code(to_victim.clone(), 0));
    let buffered_produce = tokio::spawn(produce_code(to_victim.clone(), 0, "while-frozen"));

    let took = wait_for_takeover(&admin, &victim, &owned, frozen_at, &cluster).await;
    eprintln!("SIGSTOP: partitions {owned:?} served by another broker {took:?} after the freeze");
    assert!(took < TAKEOVER_BOUND, "took {took:?}");

    broker.resume();
    let fetched = tokio::time::timeout(Duration::from_secs(10), buffered_fetch)
        .await
        .expect("the resumed broker answers the buffered fetch")
        .expect("fetch task");
    let produced = tokio::time::timeout(Duration::from_secs(10), buffered_produce)
        .await
        .expect("the resumed broker answers the buffered produce")
        .expect("produce task");
    // "Not as owner": NOT_OWNER, or any other refusal, but never data or
    // an acknowledgement — unless the partition was legitimately handed
    // back to the broker after it registered again (new epoch).
    let now_owner = owners(&admin).await.first().cloned().unwrap_or_default().0;
    eprintln!(
        "buffered fetch: {fetched:?}, buffered produce: {produced:?}, owner now: {now_owner}"
    );
    for (what, code) in [("fetch", fetched), ("produce", produced)] {
        assert!(
            code != ErrorCode::None || now_owner == victim,
            "the resumed broker answered a buffered {what} as owner while {now_owner} owns the partition"
        );
    }
    assert_eq!(fetched, ErrorCode::NotOwner, "buffered fetch");
    assert_eq!(produced, ErrorCode::NotOwner, "buffered produce");

    // It registers again, with a new session.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match broker_session(&admin, &victim).await {
            Some(session) if session != session_before => break,
            _ if Instant::now() > deadline => {
                cluster.dump_logs();
                panic!("{victim} did not register again after SIGCONT");
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_owner_is_replaced_within_the_bound() {
    let (mut cluster, admin) = started_cluster().await;
    let before = owners(&admin).await;
    let victim = before[0].0.clone();
    let owned: Vec<u32> = (0..PARTITIONS)
        .filter(|partition| before[*partition as usize].0 == victim)
        .collect();
    let index = index_of(&cluster, &victim);
    cluster.brokers[index].kill();
    let killed_at = Instant::now();
    let took = wait_for_takeover(&admin, &victim, &owned, killed_at, &cluster).await;
    eprintln!("kill -9: partitions {owned:?} served by another broker {took:?} after the kill");
    assert!(took < TAKEOVER_BOUND, "took {took:?}");
}
