//! The reconciler's batched owner writes against real metadata stores: a
//! deposed assigner's batch is refused whole, a batch that lost a race on
//! one owner key keeps the winner's record and still writes the others,
//! and batches of exactly etcd's `--max-txn-ops` are accepted by etcd.

mod common;

use async_trait::async_trait;
use common::etcd::Etcd;
use common::etcd_store;
use sluice_nameserver::assignment::{self, RoundLimits};
use sluice_nameserver::election::{self, CampaignOutcome, Candidate, ElectionToken};
use sluice_nameserver::keys::{self, PartitionOwner};
use sluice_nameserver::metadata::{
    Compare, EmbeddedMetadataStore, KeyValue, LeaseId, MetadataError, MetadataStore, Put,
    Transaction, WatchEvents,
};
use sluice_proto::v1::{NodeInfo, NodeKind, Topic, TopicConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// etcd's default `--max-txn-ops`.
const ETCD_MAX_TXN_OPS: usize = 128;

async fn win(store: &dyn MetadataStore, id: &str) -> ElectionToken {
    let candidate = Candidate {
        node_id: id.to_string(),
        address: format!("{id}:7400"),
    };
    match election::campaign(store, &candidate, Duration::from_millis(3_000))
        .await
        .expect("campaign")
    {
        CampaignOutcome::Won { token, .. } => token,
        CampaignOutcome::Lost { holder } => panic!("{id} lost the election to {holder:?}"),
    }
}

/// A topic of `partitions` partitions and one live broker.
async fn topic_and_broker(store: &dyn MetadataStore, partitions: u32) {
    let topic = Topic {
        name: "orders".to_string(),
        config: Some(TopicConfig {
            partitions,
            ..TopicConfig::default()
        }),
        created_at_ms: 0,
        internal: false,
    };
    store
        .put(&keys::topic("orders"), keys::encode(&topic), None)
        .await
        .expect("topic");
    let lease = store.grant(30_000).await.expect("broker lease");
    let broker = NodeInfo {
        kind: NodeKind::Broker as i32,
        node_id: "broker-1".to_string(),
        address: "127.0.0.1:7401".to_string(),
        session_id: lease as u64,
        ..NodeInfo::default()
    };
    store
        .put(
            &keys::node(NodeKind::Broker, "broker-1"),
            keys::encode(&broker),
            Some(lease),
        )
        .await
        .expect("broker");
}

async fn owners(store: &dyn MetadataStore) -> Vec<(String, PartitionOwner)> {
    store
        .range(&keys::partitions_of("orders"))
        .await
        .expect("range")
        .into_iter()
        .map(|entry| {
            let owner = keys::decode(&entry.key, &entry.value).expect("owner decodes");
            (entry.key, owner)
        })
        .collect()
}

fn limits(max_transaction_operations: usize) -> RoundLimits {
    RoundLimits {
        max_moves: 4,
        max_transaction_operations,
    }
}

/// Passes every call through to `inner`, counting the transactions that
/// carry puts; before the first one that writes owner keys, writes `race`
/// first (a racing assigner's or an operator's write).
struct Observed {
    inner: Arc<dyn MetadataStore>,
    writes: AtomicUsize,
    race: Mutex<Option<(String, Vec<u8>)>>,
}

impl Observed {
    fn new(inner: Arc<dyn MetadataStore>) -> Self {
        Self {
            inner,
            writes: AtomicUsize::new(0),
            race: Mutex::new(None),
        }
    }

    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl MetadataStore for Observed {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetadataError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, MetadataError> {
        self.inner.range(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, MetadataError> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool, MetadataError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, MetadataError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn commit_at(&self, transaction: Transaction) -> Result<Option<i64>, MetadataError> {
        if !transaction.puts.is_empty() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        let writes_owners = transaction
            .puts
            .iter()
            .any(|put| put.key.starts_with(keys::PARTITIONS));
        let race = if writes_owners {
            self.race.lock().expect("race lock").take()
        } else {
            None
        };
        if let Some((key, value)) = race {
            self.inner.put(&key, value, None).await?;
        }
        self.inner.commit_at(transaction).await
    }
    async fn watch_prefix(&self, prefix: &str) -> Result<WatchEvents, MetadataError> {
        self.inner.watch_prefix(prefix).await
    }
    async fn grant(&self, ttl_ms: u64) -> Result<LeaseId, MetadataError> {
        self.inner.grant(ttl_ms).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<u64, MetadataError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), MetadataError> {
        self.inner.revoke(lease).await
    }
    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<u64>, MetadataError> {
        self.inner.time_to_live(lease).await
    }
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}

/// 20 partitions in transactions of at most 8 operations (3 batches): the
/// deposed assigner writes none of them, the current one writes all of
/// them in 3 transactions.
async fn stale_batches_are_refused(store: Arc<dyn MetadataStore>) {
    topic_and_broker(store.as_ref(), 20).await;
    let stale = win(store.as_ref(), "ns-1").await;
    store.revoke(stale.lease).await.expect("revoke");
    let current = win(store.as_ref(), "ns-2").await;
    let counting = Observed::new(store.clone());

    let applied = assignment::reconcile_once(&counting, limits(8), &stale.fence())
        .await
        .expect("round");
    assert_eq!(applied, 0, "a deposed assigner assigned partitions");
    assert!(owners(store.as_ref()).await.is_empty());
    // The first batch is refused, the fence check then stops the round.
    assert_eq!(counting.writes(), 1);

    let applied = assignment::reconcile_once(&counting, limits(8), &current.fence())
        .await
        .expect("round");
    assert_eq!(applied, 20);
    // 6 changes per transaction (fence + topic + 6 owners = 8): 6 + 6 + 6 + 2.
    assert_eq!(counting.writes(), 1 + 4);
    let written = owners(store.as_ref()).await;
    assert_eq!(written.len(), 20);
    assert!(written
        .iter()
        .all(|(_, owner)| owner.broker_id == "broker-1"));
    let applied = assignment::reconcile_once(&counting, limits(8), &current.fence())
        .await
        .expect("round");
    assert_eq!(applied, 0);
}

/// Partition 0's owner is written by someone else between the round's
/// read and its batch: the batch is refused (partition 0's compare fails),
/// the round writes the other partitions one at a time, and partition 0
/// keeps the racer's record.
async fn a_lost_race_keeps_the_winner(store: Arc<dyn MetadataStore>) {
    topic_and_broker(store.as_ref(), 5).await;
    let current = win(store.as_ref(), "ns-1").await;
    let racing = Observed::new(store.clone());
    let racer = PartitionOwner {
        broker_id: "racer".to_string(),
        broker_session: 1,
        epoch: 1_000_000,
    };
    *racing.race.lock().expect("race lock") =
        Some((keys::partition("orders", 0), keys::encode(&racer)));
    let applied = assignment::reconcile_once(&racing, limits(128), &current.fence())
        .await
        .expect("round");
    assert_eq!(
        applied, 4,
        "partition 0 was overwritten or others were not written"
    );
    let written = owners(store.as_ref()).await;
    assert_eq!(written.len(), 5);
    for (key, owner) in written {
        let expected = if key == keys::partition("orders", 0) {
            "racer"
        } else {
            "broker-1"
        };
        assert_eq!(owner.broker_id, expected, "{key}");
    }
}

#[tokio::test]
async fn etcd_a_deposed_assigners_batches_are_refused() {
    let etcd = Etcd::start();
    stale_batches_are_refused(etcd_store(vec![etcd.client_url().to_string()]).await).await;
}

#[tokio::test]
async fn embedded_a_deposed_assigners_batches_are_refused() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open");
    stale_batches_are_refused(store).await;
}

#[tokio::test]
async fn etcd_a_batch_that_lost_a_race_keeps_the_winner() {
    let etcd = Etcd::start();
    a_lost_race_keeps_the_winner(etcd_store(vec![etcd.client_url().to_string()]).await).await;
}

#[tokio::test]
async fn embedded_a_batch_that_lost_a_race_keeps_the_winner() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open");
    a_lost_race_keeps_the_winner(store).await;
}

/// etcd (default `--max-txn-ops` 128) takes transactions of exactly 128
/// compares and refuses 129: the reconciler's default limit fits, and
/// 1,000 partitions are written in ⌈1000 / 126⌉ = 8 transactions.
#[tokio::test]
async fn etcd_batches_of_its_max_txn_ops_are_accepted() {
    let etcd = Etcd::start();
    let store = etcd_store(vec![etcd.client_url().to_string()]).await;
    let compares = |count: usize| Transaction {
        compares: (0..count)
            .map(|index| Compare::Absent(format!("limit/{index}")))
            .collect(),
        puts: vec![Put::new("limit/out", b"x".to_vec())],
        deletes: Vec::new(),
    };
    assert!(store
        .commit(compares(ETCD_MAX_TXN_OPS))
        .await
        .expect("128 compares"));
    assert!(
        store.commit(compares(ETCD_MAX_TXN_OPS + 1)).await.is_err(),
        "etcd took more compares than --max-txn-ops"
    );

    topic_and_broker(store.as_ref(), 1000).await;
    let current = win(store.as_ref(), "ns-1").await;
    let counting = Observed::new(store.clone());
    let applied = assignment::reconcile_once(&counting, limits(ETCD_MAX_TXN_OPS), &current.fence())
        .await
        .expect("round");
    assert_eq!(applied, 1000);
    assert_eq!(counting.writes(), 8);
    assert_eq!(owners(store.as_ref()).await.len(), 1000);
}
