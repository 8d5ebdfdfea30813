//! The attacks of issue 13, each tried against a cluster with mutual TLS
//! and authorisation on (`ClusterSpec::tls`), by principals a real
//! attacker could have: `User:mallory` with `Write` and `Read` on the topic
//! and `Read` on every group, and for the node-identity attacks
//! `User:rogue-node`, a second cluster identity with `ClusterAction`.
//!
//! Every attack asserts the refusal (its gRPC and Sluice codes) and that
//! the data or state it aimed at is intact; at the end every acknowledged
//! record reads back and the legitimate clients were served throughout.
//! One cluster runs them in sequence (a cluster per attack would run nine
//! clusters at once on a small machine).
//!
//! On a cluster without the protections of issue 13 each attack succeeds
//! (they were found that way): the store and metadata RPCs took effect, the
//! pre-written producer id made the victim's record a "duplicate" that was
//! never stored, and the leave removed the victim's membership.

use futures::StreamExt;
use sluice_client::{Admin, ClientConfig, Producer, ProducerConfig, Record};
use sluice_proto::batch::{BatchBuilder, BatchHeader, Compression, RecordData};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{
    AllocateProducerIdRequest, AppendRequest, CloseSegmentRequest, CommitOffsetsRequest,
    DeleteSegmentsRequest, DeregisterNodeRequest, DescribeGroupRequest, FetchOffsetsRequest,
    FetchPartition, FetchRequest, GetProducerIdKeyRequest, GetRoutesRequest, GroupHeartbeatRequest,
    GroupHeartbeatResponse, ListSegmentsRequest, NodeInfo, NodeKind, NodeLoad, PartitionOffset,
    ProduceRequest, RegisterNodeRequest, SegmentInfo, StoreDeleteSegmentRequest, Subscription,
    SubscriptionType, TopicPartitions,
};
use sluice_proto::{ErrorCode, SluiceError};
use sluice_tests::cluster::{Cluster, ClusterSpec};
use sluice_tests::read_back::read_back;
use sluice_tests::security::{allow, issue_client, tls_channel, until};
use std::collections::BTreeSet;
use tonic::transport::Channel;

const TOPIC: &str = "ledger";
const GROUP: &str = "payments";
const SUBSCRIPTION: &str = "audit";
const RECORDS: u64 = 10;

/// Asserts `status` is a refusal with `code` (`PERMISSION_DENIED` /
/// `NOT_AUTHORIZED` unless told otherwise).
fn assert_refused(what: &str, status: &tonic::Status, code: ErrorCode) {
    let error = SluiceError::from_status(status);
    assert_eq!(error.code, code, "{what}: {status:?}");
    if code == ErrorCode::NotAuthorized {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{what}");
    }
}

/// The principals and what they can reach.
struct Actors {
    victim: ClientConfig,
    mallory: ClientConfig,
    rogue_node: ClientConfig,
    broker: String,
}

impl Actors {
    fn nameserver(&self, config: &ClientConfig, cluster: &Cluster) -> NameServerClient<Channel> {
        NameServerClient::new(tls_channel(config, &cluster.nameservers[0].url()))
    }

    fn broker(&self, config: &ClientConfig) -> BrokerClient<Channel> {
        BrokerClient::new(tls_channel(config, &self.broker))
    }
}

async fn setup(cluster: &Cluster) -> Actors {
    cluster.create_topic(TOPIC, 1).await;
    let victim = issue_client(cluster, "victim");
    let mallory = issue_client(cluster, "mallory");
    let rogue_node = issue_client(cluster, "rogue-node");
    for principal in ["User:victim", "User:mallory"] {
        allow(cluster, principal, "Write", &["--topic", TOPIC]);
        allow(cluster, principal, "Read", &["--topic", TOPIC]);
    }
    allow(cluster, "User:victim", "Read", &["--group", GROUP]);
    allow(cluster, "User:mallory", "Read", &["--group", "*"]);
    allow(cluster, "User:rogue-node", "ClusterAction", &["--cluster"]);
    let broker = cluster.brokers[0].url();
    let actors = Actors {
        victim,
        mallory,
        rogue_node,
        broker,
    };
    // The broker refreshes its ACLs on its own schedule and may pick up
    // only some of the bindings above at first: wait for both of
    // mallory's (the topic and every group), or the attacks below would be
    // refused for a missing ACL rather than by the rule they test.
    let mut mallory_broker = actors.broker(&actors.mallory);
    until("mallory's ACLs are in force", async || {
        let group_read = mallory_broker
            .fetch_offsets(FetchOffsetsRequest {
                group: "any-group".into(),
                partitions: Vec::new(),
                require_stable: false,
            })
            .await
            .is_ok();
        group_read && fetch(&mut mallory_broker, 0).await.is_ok()
    })
    .await;
    actors
}

async fn fetch(broker: &mut BrokerClient<Channel>, offset: u64) -> Result<Vec<u8>, tonic::Status> {
    let answer = broker
        .fetch(FetchRequest {
            partitions: vec![FetchPartition {
                topic: TOPIC.into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
            }],
            ..FetchRequest::default()
        })
        .await?
        .into_inner();
    let partition = answer.partitions.into_iter().next().expect("one partition");
    assert_eq!(
        partition.error,
        ErrorCode::None as i32,
        "{}",
        partition.error_message
    );
    Ok(partition.batches.to_vec())
}

/// The partition's segments, as mallory can list them.
async fn segments(nameserver: &mut NameServerClient<Channel>) -> Vec<SegmentInfo> {
    nameserver
        .list_segments(ListSegmentsRequest {
            topic: TOPIC.into(),
            partition: 0,
        })
        .await
        .expect("mallory may describe the topic")
        .into_inner()
        .segments
}

fn summary(segments: &[SegmentInfo]) -> Vec<(u64, i32, u64)> {
    segments
        .iter()
        .map(|segment| (segment.segment_id, segment.state, segment.base_offset))
        .collect()
}

/// Store.DeleteSegment on a live segment, and Store.Append with the writer
/// epoch ListSegments shows.
async fn store_rpcs_are_refused(cluster: &Cluster, actors: &Actors) {
    let mut nameserver = actors.nameserver(&actors.mallory, cluster);
    let live = segments(&mut nameserver).await;
    assert!(!live.is_empty(), "the topic has segments");
    for store in &cluster.stores {
        let mut store = StoreClient::new(tls_channel(&actors.mallory, &store.url()));
        for segment in &live {
            let refused = store
                .delete_segment(StoreDeleteSegmentRequest {
                    segment_id: segment.segment_id,
                })
                .await
                .expect_err("mallory cannot delete a live segment");
            assert_refused("Store.DeleteSegment", &refused, ErrorCode::NotAuthorized);
            let mut builder = BatchBuilder::new(Compression::None);
            builder.push(&RecordData {
                value: Some("9999".into()),
                ..RecordData::default()
            });
            let append = AppendRequest {
                segment_id: segment.segment_id,
                writer_epoch: segment.writer_epoch,
                batch: builder.build(),
                sequence: 0,
            };
            let refused = match store.append(futures::stream::iter([append])).await {
                Err(status) => status,
                Ok(answers) => match answers.into_inner().next().await {
                    Some(Err(status)) => status,
                    other => panic!("a forged append was answered {other:?}"),
                },
            };
            assert_refused("Store.Append", &refused, ErrorCode::NotAuthorized);
        }
    }
    assert_eq!(
        summary(&segments(&mut nameserver).await),
        summary(&live),
        "segments unchanged"
    );
}

/// Nameserver CloseSegment and DeleteSegments with the epoch GetRoutes
/// shows.
async fn segment_metadata_writes_are_refused(cluster: &Cluster, actors: &Actors) {
    let mut nameserver = actors.nameserver(&actors.mallory, cluster);
    let routes = nameserver
        .get_routes(GetRoutesRequest {
            topics: vec![TOPIC.into()],
        })
        .await
        .expect("mallory may describe the topic")
        .into_inner();
    let epoch = routes.topics[0].partitions[0].epoch;
    let live = segments(&mut nameserver).await;
    let open = live.last().expect("an open segment");
    let refused = nameserver
        .close_segment(CloseSegmentRequest {
            topic: TOPIC.into(),
            partition: 0,
            epoch,
            segment_id: open.segment_id,
            end_offset: open.base_offset,
            ..CloseSegmentRequest::default()
        })
        .await
        .expect_err("mallory cannot close a segment");
    assert_refused("CloseSegment", &refused, ErrorCode::NotAuthorized);
    let refused = nameserver
        .delete_segments(DeleteSegmentsRequest {
            topic: TOPIC.into(),
            partition: 0,
            epoch,
            segment_ids: live.iter().map(|segment| segment.segment_id).collect(),
        })
        .await
        .expect_err("mallory cannot delete segments");
    assert_refused("DeleteSegments", &refused, ErrorCode::NotAuthorized);
    assert_eq!(
        summary(&segments(&mut nameserver).await),
        summary(&live),
        "segments unchanged"
    );
}

async fn node(cluster: &Cluster, kind: NodeKind, node_id: &str) -> Option<NodeInfo> {
    let status = cluster.status().await;
    let nodes = if kind == NodeKind::Broker {
        status.brokers
    } else {
        status.stores
    };
    nodes.into_iter().find(|node| node.node_id == node_id)
}

fn registration(kind: NodeKind, node_id: &str) -> RegisterNodeRequest {
    RegisterNodeRequest {
        kind: kind as i32,
        node_id: node_id.into(),
        address: "127.0.0.1:1".into(),
        load: Some(NodeLoad {
            disk_total_bytes: 1 << 40,
            disk_free_bytes: 1 << 40,
            healthy: true,
            ..NodeLoad::default()
        }),
        ..RegisterNodeRequest::default()
    }
}

/// A fake store with 1 TiB free and a fake broker register.
async fn fake_nodes_are_refused(cluster: &Cluster, actors: &Actors) {
    let mut nameserver = actors.nameserver(&actors.mallory, cluster);
    for (kind, node_id) in [
        (NodeKind::Store, "fake-store"),
        (NodeKind::Broker, "fake-broker"),
    ] {
        let refused = nameserver
            .register_node(registration(kind, node_id))
            .await
            .expect_err("mallory cannot register a node");
        assert_refused("RegisterNode", &refused, ErrorCode::NotAuthorized);
        assert!(node(cluster, kind, node_id).await.is_none(), "{node_id}");
    }
    let refused = nameserver
        .get_producer_id_key(GetProducerIdKeyRequest {})
        .await
        .expect_err("the producer-id key is for brokers only");
    assert_refused("GetProducerIdKey", &refused, ErrorCode::NotAuthorized);
}

/// RegisterNode reusing a live broker's id and DeregisterNode with the
/// session id ClusterStatus shows, by mallory and by a second cluster
/// identity.
async fn a_live_node_id_cannot_be_taken(cluster: &Cluster, actors: &Actors) {
    let broker_id = cluster.brokers[0].node_id.clone();
    let before = node(cluster, NodeKind::Broker, &broker_id)
        .await
        .expect("the broker is registered");
    assert_eq!(before.principal, "User:sluice-node");
    for attacker in [&actors.mallory, &actors.rogue_node] {
        let mut nameserver = actors.nameserver(attacker, cluster);
        let refused = nameserver
            .register_node(registration(NodeKind::Broker, &broker_id))
            .await
            .expect_err("a live node id cannot be registered again");
        assert_refused(
            "RegisterNode of a live id",
            &refused,
            ErrorCode::NotAuthorized,
        );
        let refused = nameserver
            .deregister_node(DeregisterNodeRequest {
                kind: NodeKind::Broker as i32,
                node_id: broker_id.clone(),
                session_id: before.session_id,
            })
            .await
            .expect_err("another identity cannot end the session");
        assert_refused("DeregisterNode", &refused, ErrorCode::NotAuthorized);
    }
    let after = node(cluster, NodeKind::Broker, &broker_id)
        .await
        .expect("still registered");
    assert_eq!(
        (after.session_id, after.address),
        (before.session_id, before.address),
        "the broker keeps its session and address"
    );
}

/// CommitOffsets to a subscription's cursor group with a cursor at
/// u64::MAX.
async fn internal_groups_are_refused(cluster: &Cluster, actors: &Actors) {
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("connect");
    admin
        .create_subscription(Subscription {
            topic: TOPIC.into(),
            name: SUBSCRIPTION.into(),
            r#type: SubscriptionType::Shared as i32,
            ..Subscription::default()
        })
        .await
        .expect("create the subscription");
    let group = format!("__sub.{SUBSCRIPTION}");
    let mut cursor = vec![0xff; 16];
    cursor.extend_from_slice(&u64::MAX.to_le_bytes());
    let refused = actors
        .broker(&actors.mallory)
        .commit_offsets(CommitOffsetsRequest {
            group: group.clone(),
            member_id: String::new(),
            member_epoch: -1,
            offsets: vec![PartitionOffset {
                topic: TOPIC.into(),
                partition: 0,
                offset: u64::MAX,
                cursor: cursor.into(),
                ..PartitionOffset::default()
            }],
            transaction: None,
        })
        .await
        .expect_err("mallory cannot commit a cursor");
    assert_refused(
        "CommitOffsets to a cursor group",
        &refused,
        ErrorCode::NotAuthorized,
    );
    assert!(refused.message().contains("ClusterAction"), "{refused:?}");
    let committed = BrokerClient::new(cluster.channel(&actors.broker))
        .fetch_offsets(FetchOffsetsRequest {
            group,
            partitions: Vec::new(),
            require_stable: false,
        })
        .await
        .expect("fetch the cursor group's offsets")
        .into_inner();
    assert!(
        committed
            .offsets
            .iter()
            .all(|offset| offset.offset != u64::MAX),
        "{committed:?}"
    );
}

/// A produce request of one record with `producer_id` at `sequence`.
fn forged_produce(producer_id: i64, epoch: i16, sequence: i32) -> ProduceRequest {
    let mut builder =
        BatchBuilder::new(Compression::None).with_producer(producer_id, epoch, sequence);
    builder.push(&RecordData {
        value: Some("6666".into()),
        ..RecordData::default()
    });
    ProduceRequest {
        request_id: 1,
        topic: TOPIC.into(),
        partition: 0,
        batch: builder.build(),
        resume: false,
        ..Default::default()
    }
}

/// Mallory's answer to producing `request`: the Sluice code.
async fn produce_as(actors: &Actors, request: ProduceRequest) -> ErrorCode {
    let mut broker = actors.broker(&actors.mallory);
    let answers = broker
        .produce(futures::stream::iter([request]))
        .await
        .expect("the produce stream opens");
    let answer = answers
        .into_inner()
        .next()
        .await
        .expect("an answer")
        .expect("an answer, not a stream error");
    ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal)
}

/// The producer-id pre-write: mallory writes the id after its own at
/// sequence 0 (ids used to be handed out in sequence), then the victim's
/// actual id (read from the victim's batch) at its next sequence. Both
/// are refused; the victim's records are stored. Returns the victim's
/// acknowledged (offset, value)s.
async fn producer_ids_cannot_be_borrowed(cluster: &Cluster, actors: &Actors) -> Vec<(u64, u64)> {
    let mut nameserver = actors.nameserver(&actors.mallory, cluster);
    let own = nameserver
        .allocate_producer_id(AllocateProducerIdRequest {})
        .await
        .expect("mallory may allocate a producer id")
        .into_inner()
        .producer_id as i64;
    for next in [own + 1, own + (1 << 32)] {
        let answer = produce_as(actors, forged_produce(next, 0, 0)).await;
        assert_eq!(answer, ErrorCode::NotAuthorized, "pre-writing id {next}");
    }
    let producer = Producer::new(ProducerConfig {
        client: actors.victim.clone(),
        ..ProducerConfig::default()
    })
    .await
    .expect("the victim's producer");
    let send = async |value: u64| {
        producer
            .enqueue(Record::new(TOPIC, value.to_string()).with_partition(0))
            .await
            .expect("enqueue")
            .await
            .expect("the victim's record is acknowledged")
            .offset
    };
    let first = send(1001).await;
    let batches = fetch(&mut actors.broker(&actors.mallory), first)
        .await
        .expect("mallory may read the topic");
    let header = BatchHeader::parse(&batches).expect("the victim's batch");
    assert!(
        header.producer_id >= 0,
        "the victim is an idempotent producer"
    );
    for sequence in [header.base_sequence + 1, 0] {
        let forged = forged_produce(header.producer_id, header.producer_epoch, sequence);
        let answer = produce_as(actors, forged).await;
        assert_eq!(
            answer,
            ErrorCode::NotAuthorized,
            "the victim's id at {sequence}"
        );
    }
    let second = send(1002).await;
    assert!(
        second > first,
        "the victim's second record is stored, not a duplicate"
    );
    let _ = producer.close().await;
    vec![(first, 1001), (second, 1002)]
}

async fn heartbeat(
    broker: &mut BrokerClient<Channel>,
    member_id: &str,
    member_epoch: i64,
    owned: Vec<TopicPartitions>,
) -> Result<GroupHeartbeatResponse, tonic::Status> {
    let request = GroupHeartbeatRequest {
        group: GROUP.into(),
        member_id: member_id.into(),
        member_epoch,
        topics: vec![TOPIC.into()],
        owned,
        session_timeout_ms: 30_000,
        client_id: "victim-app".into(),
    };
    Ok(broker.group_heartbeat(request).await?.into_inner())
}

/// A GroupHeartbeat with epoch −1 (and 0, and the member's own epoch) for
/// the member id DescribeGroup shows, and a commit as that member.
async fn members_cannot_be_impersonated(actors: &Actors) {
    let mut victim = actors.broker(&actors.victim);
    let mut joined = heartbeat(&mut victim, "", 0, Vec::new())
        .await
        .expect("join");
    while joined.assignment.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (id, epoch) = (joined.member_id.clone(), joined.member_epoch);
        joined = heartbeat(&mut victim, &id, epoch, Vec::new())
            .await
            .expect("heartbeat");
    }
    let (member_id, epoch, owned) = (
        joined.member_id.clone(),
        joined.member_epoch,
        joined.assignment.clone(),
    );
    let mut mallory = actors.broker(&actors.mallory);
    let described = mallory
        .describe_group(DescribeGroupRequest {
            group: GROUP.into(),
        })
        .await
        .expect("mallory may describe the group")
        .into_inner();
    let seen: Vec<String> = described
        .members
        .iter()
        .map(|m| m.member_id.clone())
        .collect();
    assert_eq!(
        seen,
        std::slice::from_ref(&member_id),
        "mallory sees the member id"
    );
    for attempt in [-1, 0, epoch] {
        let refused = heartbeat(&mut mallory, &member_id, attempt, Vec::new())
            .await
            .expect_err("mallory cannot act as the victim's member");
        assert_refused(
            "GroupHeartbeat as another member",
            &refused,
            ErrorCode::UnknownMember,
        );
    }
    let refused = mallory
        .commit_offsets(CommitOffsetsRequest {
            group: GROUP.into(),
            member_id: member_id.clone(),
            member_epoch: epoch,
            offsets: vec![PartitionOffset {
                topic: TOPIC.into(),
                partition: 0,
                offset: 5,
                ..PartitionOffset::default()
            }],
            transaction: None,
        })
        .await
        .expect_err("mallory cannot commit as the victim's member");
    assert_refused(
        "CommitOffsets as another member",
        &refused,
        ErrorCode::UnknownMember,
    );
    let kept = heartbeat(&mut victim, &member_id, epoch, owned.clone())
        .await
        .expect("the victim's member goes on");
    let partitions = |list: &[TopicPartitions]| -> BTreeSet<(String, u32)> {
        list.iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
            .collect()
    };
    assert_eq!(
        partitions(&kept.assignment),
        partitions(&owned),
        "keeps its partitions"
    );
    assert_eq!(kept.member_epoch, epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attacks_of_issue_13_are_refused() {
    let cluster = Cluster::start(ClusterSpec {
        brokers: 1,
        stores: 2,
        tls: true,
        ..ClusterSpec::default()
    })
    .await;
    let actors = setup(&cluster).await;
    let records = (0..RECORDS)
        .map(|value| Record::new(TOPIC, value.to_string()).with_partition(0))
        .collect();
    let acknowledged = cluster.produce_acknowledged(records).await;
    assert_eq!(acknowledged.len() as u64, RECORDS);
    store_rpcs_are_refused(&cluster, &actors).await;
    segment_metadata_writes_are_refused(&cluster, &actors).await;
    fake_nodes_are_refused(&cluster, &actors).await;
    a_live_node_id_cannot_be_taken(&cluster, &actors).await;
    internal_groups_are_refused(&cluster, &actors).await;
    let victims = producer_ids_cannot_be_borrowed(&cluster, &actors).await;
    members_cannot_be_impersonated(&actors).await;

    let read = read_back(cluster.client_config(), TOPIC, 1).await;
    for metadata in &acknowledged {
        assert!(
            read.at.contains_key(&(0, metadata.offset)),
            "offset {}",
            metadata.offset
        );
    }
    for (offset, value) in &victims {
        assert_eq!(
            read.at.get(&(0, *offset)),
            Some(value),
            "the victim's record"
        );
    }
    let mut values: Vec<u64> = read.at.values().copied().collect();
    values.sort_unstable();
    let expected: Vec<u64> = (0..RECORDS).chain([1001, 1002]).collect();
    assert_eq!(
        values, expected,
        "every acknowledged record, nothing forged"
    );
}
