//! A whole cluster with mutual TLS on every hop and authorisation on
//! (issue 13): certificates from `sluice certs create`, client
//! certificates required by every service, the node and client
//! certificates super users. Brokers reach stores and nameservers, stores
//! reach nameservers, and an SDK client with the client certificate
//! produces and reads back; clients without TLS or without a certificate
//! get an error naming the cause; ACLs take effect on every node. The
//! attacks of issue 13 by a client with a valid certificate of another
//! principal are in `attacks.rs`. `sluice health` works over TLS.

use sluice_client::{Admin, ClientConfig, ClientTls, Producer, ProducerConfig, Record};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{ClusterStatusRequest, SegmentStatusRequest};
use sluice_proto::v1::{FetchPartition, FetchRequest};
use sluice_tests::cluster::{binary, Cluster, ClusterSpec};
use sluice_tests::read_back::read_back;
use sluice_tests::security::{client_of, issue_client, sluice_acl, tls_channel, until};
use tonic::transport::Channel;

const TOPIC: &str = "secured";
const PARTITIONS: u32 = 2;
const RECORDS: u64 = 200;

/// `User:alice` may write one topic: she produces to it (as an idempotent
/// producer: Write on a topic implies it), sees only it in the topic list,
/// and can neither produce to another topic nor read hers.
async fn topic_acls_are_enforced(cluster: &Cluster) {
    cluster.create_topic("other", 1).await;
    let alice = issue_client(cluster, "alice");
    sluice_acl(
        cluster,
        &[
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "Write",
            "--topic",
            TOPIC,
        ],
    );
    let send = async |topic: &str| -> Result<(), sluice_client::ClientError> {
        let producer = Producer::new(ProducerConfig {
            client: alice.clone(),
            ..ProducerConfig::default()
        })
        .await?;
        let sent = producer
            .enqueue(Record::new(topic, "from alice").with_partition(0))
            .await?
            .await
            .map(|_| ());
        let _ = producer.close().await;
        sent
    };
    let took = until("alice may write her topic", async || {
        send(TOPIC).await.is_ok()
    })
    .await;
    eprintln!("topic ACL in force after {} ms", took.as_millis());
    let refused = send("other")
        .await
        .expect_err("alice may not write another topic");
    assert!(
        refused.to_string().contains("User:alice may not"),
        "{refused}"
    );

    let topics = Admin::connect(alice.clone())
        .await
        .expect("connect")
        .list_topics(false)
        .await
        .expect("list topics");
    let names: Vec<&str> = topics.iter().map(|topic| topic.name.as_str()).collect();
    assert_eq!(names, [TOPIC], "alice sees only what she may describe");

    let route = Admin::connect(alice.clone())
        .await
        .expect("connect")
        .describe_topic(TOPIC)
        .await
        .expect("describe");
    let owner = route.partitions[0]
        .route
        .as_ref()
        .map(|route| route.broker_address.clone())
        .expect("partition 0 has an owner");
    let channel = tls_channel(&alice, &owner);
    let refused = BrokerClient::new(channel)
        .fetch(FetchRequest {
            partitions: vec![FetchPartition {
                topic: TOPIC.into(),
                partition: 0,
                offset: 0,
                max_bytes: 1024,
            }],
            ..FetchRequest::default()
        })
        .await
        .expect_err("alice may not read");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

/// ACLs added and removed with `sluice acl` reach the nameserver (from
/// etcd) and the stores (from a nameserver) within about
/// `acl_refresh_interval_ms`; a deny wins over an allow.
async fn acls_take_effect_on_every_node(cluster: &Cluster) {
    let (mut nameserver, mut store) = intruder_clients(cluster);
    let mut status_allowed = async || {
        nameserver
            .cluster_status(ClusterStatusRequest {})
            .await
            .is_ok()
    };
    assert!(!status_allowed().await, "no ACL yet");
    let principal = ["--principal", "User:intruder"];
    let describe = [&principal[..], &["--operation", "Describe", "--cluster"]].concat();
    sluice_acl(cluster, &[&["add"][..], &describe].concat());
    let took = until("the nameserver applies the ACL", &mut status_allowed).await;
    eprintln!("ACL on the nameserver after {} ms", took.as_millis());

    let mut store_allowed = async |allowed: bool| {
        let answer = store
            .get_segment_status(SegmentStatusRequest {
                segment_id: 1 << 40,
            })
            .await;
        let denied =
            matches!(&answer, Err(status) if status.code() == tonic::Code::PermissionDenied);
        denied != allowed
    };
    let action = [
        &principal[..],
        &["--operation", "ClusterAction", "--cluster"],
    ]
    .concat();
    sluice_acl(cluster, &[&["add"][..], &action].concat());
    let took = until("the store applies the ACL", async || {
        store_allowed(true).await
    })
    .await;
    eprintln!("ACL on a store after {} ms", took.as_millis());
    sluice_acl(cluster, &[&["add", "--deny"][..], &action].concat());
    until("a deny wins on the store", async || {
        store_allowed(false).await
    })
    .await;

    sluice_acl(cluster, &[&["remove"][..], &describe].concat());
    until("the nameserver drops the ACL", async || {
        !status_allowed().await
    })
    .await;
}

/// The intruder's clients of the first nameserver and the first store
/// (its certificate issued first).
fn intruder_clients(cluster: &Cluster) -> (NameServerClient<Channel>, StoreClient<Channel>) {
    let intruder = client_of(cluster, "intruder");
    (
        NameServerClient::new(tls_channel(&intruder, &cluster.nameservers[0].url())),
        StoreClient::new(tls_channel(&intruder, &cluster.stores[0].url())),
    )
}

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

    issue_client(&cluster, "intruder");
    acls_take_effect_on_every_node(&cluster).await;

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

    // Last: alice's record is not a number, as read_back expects.
    topic_acls_are_enforced(&cluster).await;
}
