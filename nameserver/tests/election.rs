//! The assigner election against real metadata stores: a deposed leader's
//! fenced writes are refused, the reconciler writes nothing with a stale
//! token, and the etcd client keeps working when one member of a 3-member
//! etcd cluster dies.

mod common;

use common::etcd::{Etcd, EtcdCluster};
use common::{etcd_store, Fixture};
use sluice_nameserver::assignment;
use sluice_nameserver::election::{self, CampaignOutcome, Candidate, ElectionToken};
use sluice_nameserver::keys::{self, PartitionOwner};
use sluice_nameserver::metadata::{
    Compare, EmbeddedMetadataStore, MetadataStore, Put, Transaction,
};
use sluice_proto::v1::{NodeInfo, NodeKind, Topic, TopicConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE_TTL: Duration = Duration::from_millis(3_000);
const LIMITS: assignment::RoundLimits = assignment::RoundLimits {
    max_moves: 4,
    max_transaction_operations: 128,
};

fn candidate(id: &str) -> Candidate {
    Candidate {
        node_id: id.to_string(),
        address: format!("{id}:7400"),
    }
}

async fn win(store: &dyn MetadataStore, id: &str) -> ElectionToken {
    match election::campaign(store, &candidate(id), LEASE_TTL)
        .await
        .expect("campaign")
    {
        CampaignOutcome::Won { token, .. } => token,
        CampaignOutcome::Lost { holder } => panic!("{id} lost the election to {holder:?}"),
    }
}

/// A write shaped like the reconciler's: the owner key, fenced.
fn fenced_owner_write(token: ElectionToken, broker: &str, epoch: u64) -> Transaction {
    Transaction {
        compares: vec![token.fence()],
        puts: vec![Put::new(
            keys::partition("t", 0),
            keys::encode(&PartitionOwner {
                broker_id: broker.to_string(),
                broker_session: 1,
                epoch,
            }),
        )],
        deletes: Vec::new(),
    }
}

async fn deposed_leader_cannot_write(store: Arc<dyn MetadataStore>) {
    let first = win(store.as_ref(), "ns-1").await;
    // While ns-1 holds the key nobody else wins.
    match election::campaign(store.as_ref(), &candidate("ns-2"), LEASE_TTL)
        .await
        .expect("campaign")
    {
        CampaignOutcome::Lost { holder } => assert_eq!(holder.as_deref(), Some("ns-1")),
        CampaignOutcome::Won { .. } => panic!("two leaders at once"),
    }
    assert_eq!(
        election::active_assigner(store.as_ref())
            .await
            .expect("read"),
        Some("ns-1".to_string())
    );
    assert!(store
        .commit(fenced_owner_write(first, "a", 1))
        .await
        .expect("commit"));

    // ns-1's lease ends (as if it was paused past its TTL) and ns-2 wins.
    store.revoke(first.lease).await.expect("revoke");
    let second = win(store.as_ref(), "ns-2").await;
    assert_ne!(first.create_revision, second.create_revision);

    // ns-1 wakes up still believing it leads: its write is refused.
    assert!(!store
        .commit(fenced_owner_write(first, "stale", 2))
        .await
        .expect("commit"));
    assert!(store
        .commit(fenced_owner_write(second, "b", 2))
        .await
        .expect("commit"));
    let owner: PartitionOwner = keys::decode(
        "owner",
        &store
            .get(&keys::partition("t", 0))
            .await
            .expect("get")
            .expect("owner written")
            .value,
    )
    .expect("decodes");
    assert_eq!(owner.broker_id, "b");

    // The same holds when the key is simply gone (expired, nobody re-won).
    store.revoke(second.lease).await.expect("revoke");
    assert!(!store
        .commit(fenced_owner_write(second, "late", 3))
        .await
        .expect("commit"));
}

async fn stale_reconciler_writes_nothing(store: Arc<dyn MetadataStore>) {
    let topic = Topic {
        name: "orders".to_string(),
        config: Some(TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        }),
        created_at_ms: 0,
        internal: false,
    };
    store
        .put(&keys::topic("orders"), keys::encode(&topic), None)
        .await
        .expect("topic");
    let broker_lease = store.grant(30_000).await.expect("broker lease");
    let broker = NodeInfo {
        kind: NodeKind::Broker as i32,
        node_id: "broker-1".to_string(),
        address: "127.0.0.1:7401".to_string(),
        session_id: broker_lease as u64,
        ..NodeInfo::default()
    };
    store
        .put(
            &keys::node(NodeKind::Broker, "broker-1"),
            keys::encode(&broker),
            Some(broker_lease),
        )
        .await
        .expect("broker");

    let stale = win(store.as_ref(), "ns-1").await;
    store.revoke(stale.lease).await.expect("revoke");
    let current = win(store.as_ref(), "ns-2").await;

    let applied = assignment::reconcile_once(store.as_ref(), LIMITS, &stale.fence())
        .await
        .expect("round");
    assert_eq!(applied, 0, "a deposed assigner assigned partitions");
    assert!(store
        .range(&keys::partitions_of("orders"))
        .await
        .expect("range")
        .is_empty());

    let applied = assignment::reconcile_once(store.as_ref(), LIMITS, &current.fence())
        .await
        .expect("round");
    assert_eq!(applied, 2);
    // A second round has nothing to do.
    let applied = assignment::reconcile_once(store.as_ref(), LIMITS, &current.fence())
        .await
        .expect("round");
    assert_eq!(applied, 0);
}

#[tokio::test]
async fn etcd_deposed_leader_cannot_write() {
    let etcd = Etcd::start();
    deposed_leader_cannot_write(etcd_store(vec![etcd.client_url().to_string()]).await).await;
}

#[tokio::test]
async fn embedded_deposed_leader_cannot_write() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open");
    deposed_leader_cannot_write(store).await;
}

#[tokio::test]
async fn etcd_stale_reconciler_writes_nothing() {
    let etcd = Etcd::start();
    stale_reconciler_writes_nothing(etcd_store(vec![etcd.client_url().to_string()]).await).await;
}

#[tokio::test]
async fn embedded_stale_reconciler_writes_nothing() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open");
    stale_reconciler_writes_nothing(store).await;
}

#[tokio::test]
async fn a_create_revision_compare_needs_the_same_incarnation() {
    let etcd = Etcd::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let embedded: Arc<dyn MetadataStore> = EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open");
    for store in [
        etcd_store(vec![etcd.client_url().to_string()]).await,
        embedded,
    ] {
        let created = store
            .put("fence/k", b"1".to_vec(), None)
            .await
            .expect("put");
        let guarded = |revision: i64| Transaction {
            compares: vec![Compare::CreateRevisionEquals("fence/k".into(), revision)],
            puts: vec![Put::new("fence/out", b"x".to_vec())],
            deletes: Vec::new(),
        };
        // Later writes keep the create revision.
        store
            .put("fence/k", b"2".to_vec(), None)
            .await
            .expect("put");
        assert!(store.commit(guarded(created)).await.expect("commit"));
        assert!(!store.commit(guarded(created + 100)).await.expect("commit"));
        // Deleted and re-created: a new incarnation.
        store.delete("fence/k").await.expect("delete");
        assert!(!store.commit(guarded(created)).await.expect("commit"));
        store
            .put("fence/k", b"3".to_vec(), None)
            .await
            .expect("put");
        assert!(!store.commit(guarded(created)).await.expect("commit"));
        assert!(!store.commit(guarded(0)).await.expect("commit"));
    }
}

/// Runs every kind of call the nameserver makes, `rounds` times, and
/// returns the errors seen.
async fn exercise(store: &dyn MetadataStore, tag: &str, lease: i64, rounds: u32) -> Vec<String> {
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    for round in 0..rounds {
        let started = Instant::now();
        let key = format!("failover/{tag}/{round}");
        if let Err(error) = store.put(&key, b"v".to_vec(), None).await {
            errors.push(format!("put: {error}"));
        }
        match store.get(&key).await {
            Ok(Some(_)) => {}
            Ok(None) => errors.push(format!("get {key}: missing")),
            Err(error) => errors.push(format!("get: {error}")),
        }
        let transaction = Transaction {
            compares: vec![Compare::Absent(format!("failover/txn/{tag}/{round}"))],
            puts: vec![Put::new(
                format!("failover/txn/{tag}/{round}"),
                b"t".to_vec(),
            )],
            deletes: Vec::new(),
        };
        let txn_key = format!("failover/txn/{tag}/{round}");
        match store.commit(transaction.clone()).await {
            Ok(true) => {}
            Ok(false) => errors.push(format!("txn {round}: compare failed")),
            // A transaction cut off with its member has an unknown outcome
            // (never repeated blindly: ADR 0009); callers read back, as the
            // nameserver does. Either it was applied, or a retry applies it.
            Err(first) => match store.get(&txn_key).await {
                Ok(Some(entry)) if entry.value == b"t" => {}
                Ok(_) => match store.commit(transaction).await {
                    Ok(true) => {}
                    Ok(false) => errors.push(format!("txn {round}: compare failed on retry")),
                    Err(error) => errors.push(format!("txn: {first}; retry: {error}")),
                },
                Err(error) => errors.push(format!("txn: {first}; read back: {error}")),
            },
        }
        if let Err(error) = store.keep_alive(lease).await {
            errors.push(format!("keep-alive: {error}"));
        }
        if let Err(error) = store.range("failover/").await {
            errors.push(format!("range: {error}"));
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{tag}: slowest round {} ms", slowest.as_millis());
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_fails_over_when_a_member_dies() {
    let mut cluster = EtcdCluster::start(3);
    let store = etcd_store(cluster.client_urls()).await;
    let lease = store.grant(10_000).await.expect("grant");
    let before = exercise(store.as_ref(), "before", lease, 20).await;
    assert!(before.is_empty(), "errors with all members up: {before:?}");

    // Each member in turn (so the raft leader is among them), with the
    // client in the middle of its work when the member dies.
    for member in 0..cluster.size() {
        let killer = {
            let started = Instant::now();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                started.elapsed()
            }
        };
        let tag = format!("during-{member}");
        let (errors, _) = tokio::join!(exercise(store.as_ref(), &tag, lease, 30), async {
            killer.await;
            cluster.kill(member);
        });
        assert!(
            errors.is_empty(),
            "errors while etcd member {member} died: {errors:?}\n{}",
            cluster.log_tails(20)
        );
        let after = exercise(store.as_ref(), &format!("after-{member}"), lease, 10).await;
        assert!(
            after.is_empty(),
            "errors after etcd member {member} died: {after:?}"
        );
        cluster.restart(member);
    }
}

async fn active_via(client: &mut common::Client) -> Option<String> {
    let status = client
        .cluster_status(sluice_proto::v1::ClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    (!status.active_assigner.is_empty()).then_some(status.active_assigner)
}

#[tokio::test]
async fn one_nameserver_assigns_and_a_stopped_one_hands_over() {
    let mut cluster = Fixture::new().nameservers(2).build().await;
    let one = cluster.client_of("ns-1");
    let mut two = cluster.client_of("ns-2");
    let active = common::eventually("an assigner is elected", || {
        let mut one = one.clone();
        async move { active_via(&mut one).await }
    })
    .await;
    // Both nameservers report the same assigner.
    assert_eq!(active_via(&mut two).await.as_deref(), Some(active.as_str()));

    // Stopping the assigner revokes its lease: the other takes over.
    cluster.stop_nameserver(&active).await;
    let survivor = if active == "ns-1" { "ns-2" } else { "ns-1" };
    let mut survivor_client = cluster.client_of(survivor);
    let next = common::eventually("the survivor becomes the assigner", || {
        let mut client = survivor_client.clone();
        let active = active.clone();
        async move { active_via(&mut client).await.filter(|next| *next != active) }
    })
    .await;
    assert_ne!(next, active);
    assert_eq!(
        active_via(&mut survivor_client).await.as_deref(),
        Some(next.as_str())
    );
    cluster.stop().await;
}
