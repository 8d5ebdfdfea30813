//! One behaviour suite for every `MetadataStore`: run against a real etcd
//! (spawned per test) and against the embedded store.

use sluice_nameserver::metadata::{
    Compare, EmbeddedMetadataStore, EtcdMetadataStore, EtcdOptions, MetadataError, MetadataStore,
    Put, Transaction, DEFAULT_KEY_PREFIX,
};
mod common;

use common::etcd::Etcd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound on waiting for a lease to expire in tests (etcd checks
/// expiry about every 500 ms; leases are at least 2 s there).
const LEASE_EXPIRY_WAIT_MS: u64 = 20_000;

async fn etcd_store(etcd: &Etcd) -> Arc<dyn MetadataStore> {
    common::etcd_store(vec![etcd.client_url().to_string()]).await
}

async fn embedded_store(directory: &tempfile::TempDir) -> Arc<dyn MetadataStore> {
    EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open embedded store")
}

async fn compare_and_set(store: Arc<dyn MetadataStore>) {
    let first = store.put("cas/a", b"1".to_vec(), None).await.expect("put");
    let entry = store.get("cas/a").await.expect("get").expect("present");
    assert_eq!(entry.value, b"1");
    assert_eq!(entry.mod_revision, first);
    assert_eq!(entry.create_revision, first);

    // Stale revision: nothing is written, not even the other put.
    let stale = Transaction {
        compares: vec![Compare::ModRevisionEquals("cas/a".into(), first - 1)],
        puts: vec![
            Put::new("cas/a", b"2".to_vec()),
            Put::new("cas/b", b"x".to_vec()),
        ],
        deletes: vec![],
    };
    assert!(!store.commit(stale).await.expect("commit"));
    assert_eq!(
        store
            .get("cas/a")
            .await
            .expect("get")
            .expect("present")
            .value,
        b"1"
    );
    assert!(store.get("cas/b").await.expect("get").is_none());

    // Current revision: applied, create revision kept.
    let current = Transaction {
        compares: vec![Compare::ModRevisionEquals("cas/a".into(), first)],
        puts: vec![Put::new("cas/a", b"2".to_vec())],
        deletes: vec![],
    };
    assert!(store.commit(current.clone()).await.expect("commit"));
    let entry = store.get("cas/a").await.expect("get").expect("present");
    assert_eq!(entry.value, b"2");
    assert!(entry.mod_revision > first);
    assert_eq!(entry.create_revision, first);
    // The same CAS again loses: the revision moved.
    assert!(!store.commit(current).await.expect("commit"));

    // Absent.
    let create = Transaction {
        compares: vec![Compare::Absent("cas/c".into())],
        puts: vec![Put::new("cas/c", b"c".to_vec())],
        deletes: vec![],
    };
    assert!(store.commit(create.clone()).await.expect("commit"));
    assert!(!store.commit(create).await.expect("commit"));

    // ValueEquals, with a delete; a missing key never equals anything.
    let missing = Transaction {
        compares: vec![Compare::ValueEquals("cas/missing".into(), Vec::new())],
        puts: vec![Put::new("cas/d", b"d".to_vec())],
        deletes: vec![],
    };
    assert!(!store.commit(missing).await.expect("commit"));
    let wrong_value = Transaction {
        compares: vec![Compare::ValueEquals("cas/c".into(), b"nope".to_vec())],
        puts: vec![],
        deletes: vec!["cas/a".into()],
    };
    assert!(!store.commit(wrong_value).await.expect("commit"));
    assert!(store.get("cas/a").await.expect("get").is_some());
    let right_value = Transaction {
        compares: vec![
            Compare::ValueEquals("cas/c".into(), b"c".to_vec()),
            Compare::Absent("cas/d".into()),
        ],
        puts: vec![Put::new("cas/d", b"d".to_vec())],
        deletes: vec!["cas/a".into()],
    };
    assert!(store.commit(right_value).await.expect("commit"));
    assert!(store.get("cas/a").await.expect("get").is_none());
    assert_eq!(
        store
            .get("cas/d")
            .await
            .expect("get")
            .expect("present")
            .value,
        b"d"
    );

    assert!(store.delete("cas/d").await.expect("delete"));
    assert!(!store.delete("cas/d").await.expect("delete"));
}

async fn prefix_range(store: Arc<dyn MetadataStore>) {
    for key in ["range/a/2", "range/a/1", "range/ab/1", "range/b"] {
        store
            .put(key, key.as_bytes().to_vec(), None)
            .await
            .expect("put");
    }
    let keys: Vec<String> = store
        .range("range/a/")
        .await
        .expect("range")
        .into_iter()
        .map(|entry| entry.key)
        .collect();
    assert_eq!(keys, vec!["range/a/1".to_string(), "range/a/2".to_string()]);
    assert_eq!(store.range("range/").await.expect("range").len(), 4);
    assert!(store.range("nothing/").await.expect("range").is_empty());
    assert_eq!(store.delete_prefix("range/a/").await.expect("delete"), 2);
    let left: Vec<String> = store
        .range("range/")
        .await
        .expect("range")
        .into_iter()
        .map(|entry| entry.key)
        .collect();
    assert_eq!(left, vec!["range/ab/1".to_string(), "range/b".to_string()]);
}

async fn wait_until_gone(store: &dyn MetadataStore, key: &str) {
    let deadline = Instant::now() + Duration::from_millis(LEASE_EXPIRY_WAIT_MS);
    while store.get(key).await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "leased key {key} still present after {LEASE_EXPIRY_WAIT_MS} ms"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leases(store: Arc<dyn MetadataStore>) {
    let lease = store.grant(2_000).await.expect("grant");
    store
        .put("lease/node", b"n".to_vec(), Some(lease))
        .await
        .expect("put under lease");
    store
        .put("lease/plain", b"p".to_vec(), None)
        .await
        .expect("put");
    let remaining = store
        .time_to_live(lease)
        .await
        .expect("ttl")
        .expect("lease live");
    assert!(remaining > 0 && remaining <= 2_000, "{remaining}");
    let renewed = store.keep_alive(lease).await.expect("keep alive");
    assert!(renewed > 0);

    // Not renewed any more: it expires and takes its key with it.
    wait_until_gone(store.as_ref(), "lease/node").await;
    let after_expiry = store.keep_alive(lease).await;
    assert!(
        matches!(after_expiry, Err(MetadataError::LeaseExpired(_))),
        "{after_expiry:?}"
    );
    assert_eq!(store.time_to_live(lease).await.expect("ttl"), None);
    assert!(store.get("lease/plain").await.expect("get").is_some());
    // Writing under a dead lease fails.
    assert!(store
        .put("lease/late", b"x".to_vec(), Some(lease))
        .await
        .is_err());
    let under_dead_lease = Transaction {
        compares: vec![],
        puts: vec![Put {
            key: "lease/late".into(),
            value: b"x".to_vec(),
            lease: Some(lease),
        }],
        deletes: vec![],
    };
    assert!(store.commit(under_dead_lease).await.is_err());
    assert!(store.get("lease/late").await.expect("get").is_none());

    // Revoke removes the keys at once; revoking again is fine.
    let second = store.grant(60_000).await.expect("grant");
    store
        .put("lease/second", b"s".to_vec(), Some(second))
        .await
        .expect("put");
    store.revoke(second).await.expect("revoke");
    assert!(store.get("lease/second").await.expect("get").is_none());
    store.revoke(second).await.expect("revoke twice");
    assert!(matches!(
        store.keep_alive(second).await,
        Err(MetadataError::LeaseExpired(_))
    ));
}

async fn kept_alive_lease_survives(store: Arc<dyn MetadataStore>) {
    let lease = store.grant(2_000).await.expect("grant");
    store
        .put("alive/node", b"n".to_vec(), Some(lease))
        .await
        .expect("put");
    // Renew for longer than the TTL.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.keep_alive(lease).await.expect("keep alive");
    }
    assert!(store.get("alive/node").await.expect("get").is_some());
}

#[tokio::test]
async fn etcd_compare_and_set() {
    let etcd = Etcd::start();
    compare_and_set(etcd_store(&etcd).await).await;
}

#[tokio::test]
async fn embedded_compare_and_set() {
    let directory = tempfile::tempdir().expect("temp dir");
    compare_and_set(embedded_store(&directory).await).await;
}

#[tokio::test]
async fn etcd_prefix_range() {
    let etcd = Etcd::start();
    prefix_range(etcd_store(&etcd).await).await;
}

#[tokio::test]
async fn embedded_prefix_range() {
    let directory = tempfile::tempdir().expect("temp dir");
    prefix_range(embedded_store(&directory).await).await;
}

#[tokio::test]
async fn etcd_leases() {
    let etcd = Etcd::start();
    leases(etcd_store(&etcd).await).await;
}

#[tokio::test]
async fn embedded_leases() {
    let directory = tempfile::tempdir().expect("temp dir");
    leases(embedded_store(&directory).await).await;
}

#[tokio::test]
async fn etcd_kept_alive_lease_survives() {
    let etcd = Etcd::start();
    kept_alive_lease_survives(etcd_store(&etcd).await).await;
}

#[tokio::test]
async fn embedded_kept_alive_lease_survives() {
    let directory = tempfile::tempdir().expect("temp dir");
    kept_alive_lease_survives(embedded_store(&directory).await).await;
}

#[tokio::test]
async fn etcd_keys_live_under_the_sluice_prefix() {
    let etcd = Etcd::start();
    let store = etcd_store(&etcd).await;
    store
        .put("topics/x", b"v".to_vec(), None)
        .await
        .expect("put");
    let mut raw = etcd_client::Client::connect([etcd.client_url()], None)
        .await
        .expect("raw etcd client");
    let response = raw.get("/sluice/v1/topics/x", None).await.expect("raw get");
    assert_eq!(response.kvs().len(), 1);
    assert_eq!(response.kvs()[0].value(), b"v");
}

#[tokio::test]
async fn etcd_down_is_unavailable_not_a_hang() {
    let etcd = Etcd::start();
    let store = EtcdMetadataStore::connect(EtcdOptions {
        endpoints: vec![etcd.client_url().to_string()],
        connect_timeout_ms: 1_000,
        request_timeout_ms: 1_000,
        key_prefix: DEFAULT_KEY_PREFIX.to_string(),
        ..EtcdOptions::default()
    })
    .await
    .expect("connect");
    drop(etcd);
    match store.get("anything").await {
        Err(MetadataError::Unavailable(_)) => {}
        other => panic!("expected Unavailable with etcd gone, got {other:?}"),
    }
}

#[tokio::test]
async fn embedded_store_persists_unleased_keys_across_reopen() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (revision, lease_key_revision) = {
        let store = embedded_store(&directory).await;
        let revision = store.put("keep/a", b"a".to_vec(), None).await.expect("put");
        store
            .put("keep/gone", b"g".to_vec(), None)
            .await
            .expect("put");
        store.delete("keep/gone").await.expect("delete");
        let lease = store.grant(60_000).await.expect("grant");
        let lease_key_revision = store
            .put("keep/leased", b"l".to_vec(), Some(lease))
            .await
            .expect("put");
        (revision, lease_key_revision)
    };
    let store = embedded_store(&directory).await;
    let entry = store
        .get("keep/a")
        .await
        .expect("get")
        .expect("survived reopen");
    assert_eq!(entry.value, b"a");
    assert_eq!(entry.mod_revision, revision);
    assert!(store.get("keep/gone").await.expect("get").is_none());
    assert!(store.get("keep/leased").await.expect("get").is_none());
    // Revisions keep growing after a reopen, so CAS on old revisions fails.
    let next = store.put("keep/b", b"b".to_vec(), None).await.expect("put");
    assert!(next > lease_key_revision.min(revision));
    assert!(next > revision);
}

#[tokio::test]
async fn embedded_store_reports_a_corrupt_file() {
    let directory = tempfile::tempdir().expect("temp dir");
    std::fs::write(directory.path().join("metadata.json"), b"{not json").expect("write");
    match EmbeddedMetadataStore::open(directory.path()).await {
        Err(MetadataError::Corrupt(message)) => {
            assert!(message.contains("metadata.json"), "{message}")
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a corrupt file must not open"),
    }
}

async fn expect_corrupt(directory: &std::path::Path, file: &str) {
    match EmbeddedMetadataStore::open(directory).await {
        Err(MetadataError::Corrupt(message)) => {
            assert!(message.contains(file), "{message}")
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a damaged {file} must not open"),
    }
}

#[tokio::test]
async fn embedded_store_reports_a_garbage_database_file() {
    let directory = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        directory.path().join("metadata.redb"),
        vec![0xab_u8; 64 * 1024],
    )
    .expect("write");
    expect_corrupt(directory.path(), "metadata.redb").await;
}

#[tokio::test]
async fn embedded_store_reports_a_truncated_database_file() {
    let directory = tempfile::tempdir().expect("temp dir");
    {
        let store = embedded_store(&directory).await;
        for index in 0..200 {
            store
                .put(&format!("many/{index:04}"), vec![7; 512], None)
                .await
                .expect("put");
        }
    }
    let path = directory.path().join("metadata.redb");
    let length = std::fs::metadata(&path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for truncation");
    file.set_len(length / 3).expect("truncate");
    drop(file);
    expect_corrupt(directory.path(), "metadata.redb").await;
}

#[tokio::test]
async fn embedded_store_migrates_the_json_file_of_an_earlier_version() {
    let directory = tempfile::tempdir().expect("temp dir");
    let legacy = r#"{"version":1,"revision":41,"next_lease_id":3,"entries":[
        {"key":"topics/old","value":[104,105],"mod_revision":40,"create_revision":12}]}"#;
    std::fs::write(directory.path().join("metadata.json"), legacy).expect("write");
    {
        let store = embedded_store(&directory).await;
        let entry = store
            .get("topics/old")
            .await
            .expect("get")
            .expect("migrated");
        assert_eq!(entry.value, b"hi");
        assert_eq!((entry.create_revision, entry.mod_revision), (12, 40));
        let next = store
            .put("topics/new", b"n".to_vec(), None)
            .await
            .expect("put");
        assert!(
            next > 41,
            "revisions continue after the migrated ones: {next}"
        );
    }
    assert!(!directory.path().join("metadata.json").exists());
    assert!(directory.path().join("metadata.json.migrated").exists());
    // Reopened from the database alone.
    let store = embedded_store(&directory).await;
    assert_eq!(store.range("topics/").await.expect("range").len(), 2);
}

#[tokio::test]
async fn embedded_store_keeps_thousands_of_keys_and_deletes_across_reopen() {
    let directory = tempfile::tempdir().expect("temp dir");
    {
        let store = embedded_store(&directory).await;
        for index in 0..3_000 {
            store
                .put(
                    &format!("bulk/{index:05}"),
                    index.to_string().into_bytes(),
                    None,
                )
                .await
                .expect("put");
        }
        assert_eq!(store.delete_prefix("bulk/000").await.expect("delete"), 100);
    }
    let store = embedded_store(&directory).await;
    let left = store.range("bulk/").await.expect("range");
    assert_eq!(left.len(), 2_900);
    assert_eq!(left[0].key, "bulk/00100");
    assert_eq!(left[0].value, b"100");
}
