//! `AllocateProducerId`: ids are unique across nameservers sharing one etcd
//! (concurrent callers included), and never reused after a restart of the
//! embedded (dev) metadata store.

mod common;

use common::Fixture;
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
    let cluster = Fixture::new().nameservers(2).build().await;
    let mut tasks = Vec::new();
    for index in 0..8 {
        let mut client = if index % 2 == 0 {
            cluster.client_of("ns-1")
        } else {
            cluster.client_of("ns-2")
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
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_store_never_reuses_an_id_after_a_restart() {
    let mut cluster = Fixture::embedded().build().await;
    let mut client = cluster.client();
    let before = [allocate(&mut client).await, allocate(&mut client).await];
    assert_ne!(before[0], before[1]);

    cluster.restart_on_the_same_directory().await;
    let after = allocate(&mut cluster.client()).await;
    assert!(
        !before.contains(&after),
        "id {after} reused after a restart ({before:?})"
    );
    cluster.stop().await;
}
