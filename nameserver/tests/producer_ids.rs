//! `AllocateProducerId`: ids are unique across nameservers sharing one etcd
//! (concurrent callers included), and never reused after a restart of the
//! embedded (dev) metadata store.

mod common;

use common::etcd::Etcd;
use common::{test_config, RunningNameServer};
use sluice_nameserver::metadata::EmbeddedMetadataStore;
use sluice_proto::v1::AllocateProducerIdRequest;
use std::collections::HashSet;

async fn allocate(client: &mut common::Client) -> u64 {
    client
        .allocate_producer_id(AllocateProducerIdRequest {})
        .await
        .expect("allocate a producer id")
        .into_inner()
        .producer_id
}

#[tokio::test]
async fn ids_are_unique_across_concurrent_nameservers() {
    let etcd = Etcd::start();
    let first = RunningNameServer::start(test_config(etcd.client_url(), "ns-1")).await;
    let second = RunningNameServer::start(test_config(etcd.client_url(), "ns-2")).await;
    let mut tasks = Vec::new();
    for index in 0..8 {
        let mut client = if index % 2 == 0 {
            first.client().await
        } else {
            second.client().await
        };
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..10 {
                ids.push(allocate(&mut client).await);
            }
            ids
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.expect("allocating task") {
            assert!(seen.insert(id), "producer id {id} handed out twice");
            assert!(id < i64::MAX as u64, "fits the batch header's signed field");
        }
    }
    assert_eq!(seen.len(), 80);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn embedded_store_never_reuses_an_id_after_a_restart() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut config = test_config("http://127.0.0.1:1", "ns-dev");
    config.metadata.backend = sluice_nameserver::MetadataBackend::Embedded;
    let store = EmbeddedMetadataStore::open(directory.path())
        .await
        .expect("open embedded store");
    let nameserver = RunningNameServer::start_with_store(config.clone(), store).await;
    let mut client = nameserver.client().await;
    let before = [allocate(&mut client).await, allocate(&mut client).await];
    assert_ne!(before[0], before[1]);
    nameserver.stop().await;

    config.metadata.data_dir = Some(directory.path().to_path_buf());
    let restarted = RunningNameServer::start(config).await;
    let mut client = restarted.client().await;
    let after = allocate(&mut client).await;
    assert!(
        !before.contains(&after),
        "id {after} reused after a restart ({before:?})"
    );
    restarted.stop().await;
}
