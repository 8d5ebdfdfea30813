//! A whole cluster with mutual TLS on every hop (issue 13): certificates
//! from `sluice certs create`, client certificates required by every
//! service. Brokers reach stores and nameservers, stores reach nameservers,
//! and an SDK client with the client certificate produces and reads back;
//! clients without TLS or without a certificate get an error and the
//! cluster keeps serving the others. `sluice health` works over TLS.

use sluice_client::{Admin, ClientConfig, ClientTls, Record};
use sluice_tests::cluster::{binary, Cluster, ClusterSpec};
use sluice_tests::read_back::read_back;

const TOPIC: &str = "secured";
const PARTITIONS: u32 = 2;
const RECORDS: u64 = 200;

/// Connects and asks for the topics (a TLS 1.3 client learns that its
/// certificate was refused, or a plaintext one that the port wants TLS, at
/// its first request).
async fn list_topics(config: ClientConfig) -> Result<(), sluice_client::ClientError> {
    Admin::connect(config).await?.list_topics(false).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_runs_mutual_tls() {
    let cluster = Cluster::start(ClusterSpec {
        brokers: 1,
        stores: 2,
        tls: true,
        ..ClusterSpec::default()
    })
    .await;
    cluster.create_topic(TOPIC, PARTITIONS).await;
    let records = (0..RECORDS)
        .map(|value| Record::new(TOPIC, value.to_string()).with_partition((value % 2) as u32))
        .collect();
    let acknowledged = cluster.produce_acknowledged(records).await;
    assert_eq!(acknowledged.len() as u64, RECORDS);

    let plaintext = ClientConfig {
        tls: None,
        connect_timeout_ms: 2_000,
        ..cluster.client_config()
    };
    let refused = list_topics(plaintext)
        .await
        .expect_err("a plaintext client is refused");
    assert!(
        refused.to_string().contains("accepts TLS only"),
        "a plaintext client is told to use TLS: {refused}"
    );

    let dir = cluster.tls_dir();
    let without_certificate = ClientConfig {
        tls: Some(ClientTls::from_files(dir.join("ca.pem"), None::<(&str, &str)>).expect("ca")),
        connect_timeout_ms: 2_000,
        ..cluster.client_config()
    };
    let refused = list_topics(without_certificate)
        .await
        .expect_err("a client without a certificate is refused");
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "the error names the certificate: {refused}"
    );
    list_topics(cluster.client_config())
        .await
        .expect("while the others are served");

    let read = read_back(cluster.client_config(), TOPIC, PARTITIONS).await;
    assert_eq!(
        read.at.len() as u64,
        RECORDS,
        "every acknowledged record reads back"
    );
    for metadata in &acknowledged {
        let value = read.at.get(&(metadata.partition, metadata.offset));
        assert!(
            value.is_some(),
            "offset {} of partition {}",
            metadata.offset,
            metadata.partition
        );
    }
    assert!(
        read.occurrences.values().all(|count| *count == 1),
        "no duplicates"
    );

    let health = |with_tls: bool| {
        let mut command = std::process::Command::new(binary("sluice"));
        command.args([
            "health",
            "--address",
            &cluster.brokers[0].url(),
            "--timeout-ms",
            "3000",
        ]);
        if with_tls {
            command
                .arg("--tls-ca")
                .arg(dir.join("ca.pem"))
                .arg("--tls-cert")
                .arg(dir.join("client.pem"))
                .arg("--tls-key")
                .arg(dir.join("client.key"));
        }
        command.output().expect("run sluice health")
    };
    let served = health(true);
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    assert!(
        !health(false).status.success(),
        "plaintext health check refused"
    );
}
