//! Registration with a fake nameserver: the store registers (after trying
//! an unreachable nameserver first), heartbeats with its load, registers
//! again when told its session expired, and deregisters at shutdown.

mod common;

use sluice_proto::v1::name_server_server::{NameServer, NameServerServer};
use sluice_proto::v1::*;
use sluice_proto::{ErrorCode, SluiceError};
use sluice_store::StoreConfig;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Seen {
    registrations: Vec<RegisterNodeRequest>,
    heartbeats: Vec<HeartbeatRequest>,
    deregistrations: Vec<DeregisterNodeRequest>,
}

#[derive(Clone, Default)]
struct FakeNameServer {
    seen: Arc<Mutex<Seen>>,
}

type RouteStream = tokio_stream::wrappers::ReceiverStream<Result<GetRoutesResponse, Status>>;

const UNFAKED_SUBSCRIPTIONS: &str = "subscriptions are not faked: the store never calls them";

#[tonic::async_trait]
impl NameServer for FakeNameServer {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        let mut seen = self.seen.lock().expect("lock");
        seen.registrations.push(request.into_inner());
        Ok(Response::new(RegisterNodeResponse {
            session_id: seen.registrations.len() as u64,
            lease_ttl_ms: 1000,
            heartbeat_interval_ms: 30,
            session_timeout_ms: 1000,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut seen = self.seen.lock().expect("lock");
        let session_id = request.session_id;
        seen.heartbeats.push(request);
        let heartbeats_of_first_session = seen
            .heartbeats
            .iter()
            .filter(|heartbeat| heartbeat.session_id == 1)
            .count();
        // The first session expires after its second heartbeat.
        if session_id == 1 && heartbeats_of_first_session >= 2 {
            return Err(SluiceError::new(ErrorCode::SessionExpired, "lease expired").into());
        }
        Ok(Response::new(HeartbeatResponse {
            assignments: Vec::new(),
            live_stores: 0,
        }))
    }

    async fn deregister_node(
        &self,
        request: Request<DeregisterNodeRequest>,
    ) -> Result<Response<DeregisterNodeResponse>, Status> {
        self.seen
            .lock()
            .expect("lock")
            .deregistrations
            .push(request.into_inner());
        Ok(Response::new(DeregisterNodeResponse {}))
    }

    type WatchRoutesStream = RouteStream;

    async fn create_topic(
        &self,
        _request: Request<CreateTopicRequest>,
    ) -> Result<Response<Topic>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn describe_topic(
        &self,
        _request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn delete_topic(
        &self,
        _request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn unregister_group(
        &self,
        _request: Request<sluice_proto::v1::UnregisterGroupRequest>,
    ) -> Result<Response<sluice_proto::v1::UnregisterGroupResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn update_subscription(
        &self,
        _request: Request<sluice_proto::v1::UpdateSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::Subscription>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn alter_topic(
        &self,
        _request: Request<sluice_proto::v1::AlterTopicRequest>,
    ) -> Result<Response<sluice_proto::v1::Topic>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn add_partitions(
        &self,
        _request: Request<sluice_proto::v1::AddPartitionsRequest>,
    ) -> Result<Response<sluice_proto::v1::Topic>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn get_routes(
        &self,
        _request: Request<GetRoutesRequest>,
    ) -> Result<Response<GetRoutesResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn watch_routes(
        &self,
        _request: Request<WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn find_coordinator(
        &self,
        _request: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn create_segment(
        &self,
        _request: Request<CreateSegmentRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn close_segment(
        &self,
        _request: Request<CloseSegmentRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn update_segment_replicas(
        &self,
        _request: Request<sluice_proto::v1::UpdateSegmentReplicasRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn delete_segments(
        &self,
        _request: Request<DeleteSegmentsRequest>,
    ) -> Result<Response<DeleteSegmentsResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn place_compacted_segment(
        &self,
        _request: Request<sluice_proto::v1::PlaceCompactedSegmentRequest>,
    ) -> Result<Response<sluice_proto::v1::SegmentInfo>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }

    async fn replace_segments(
        &self,
        _request: Request<sluice_proto::v1::ReplaceSegmentsRequest>,
    ) -> Result<Response<sluice_proto::v1::ReplaceSegmentsResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }

    async fn list_compactions(
        &self,
        _request: Request<sluice_proto::v1::ListCompactionsRequest>,
    ) -> Result<Response<sluice_proto::v1::ListCompactionsResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }

    async fn forget_compactions(
        &self,
        _request: Request<sluice_proto::v1::ForgetCompactionsRequest>,
    ) -> Result<Response<sluice_proto::v1::ForgetCompactionsResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }

    async fn accept_data_loss(
        &self,
        _request: Request<sluice_proto::v1::AcceptDataLossRequest>,
    ) -> Result<Response<sluice_proto::v1::AcceptDataLossResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn register_group(
        &self,
        _request: Request<RegisterGroupRequest>,
    ) -> Result<Response<RegisterGroupResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn list_groups(
        &self,
        _request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }
    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }

    async fn allocate_producer_id(
        &self,
        _request: Request<sluice_proto::v1::AllocateProducerIdRequest>,
    ) -> Result<Response<sluice_proto::v1::AllocateProducerIdResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }

    async fn get_producer_id_key(
        &self,
        _request: Request<sluice_proto::v1::GetProducerIdKeyRequest>,
    ) -> Result<Response<sluice_proto::v1::GetProducerIdKeyResponse>, Status> {
        Err(Status::unimplemented("fake nameserver"))
    }

    async fn create_subscription(
        &self,
        _request: Request<sluice_proto::v1::CreateSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::Subscription>, Status> {
        Err(Status::unimplemented(UNFAKED_SUBSCRIPTIONS))
    }

    async fn get_subscription(
        &self,
        _request: Request<sluice_proto::v1::GetSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::Subscription>, Status> {
        Err(Status::unimplemented(UNFAKED_SUBSCRIPTIONS))
    }

    async fn list_subscriptions(
        &self,
        _request: Request<sluice_proto::v1::ListSubscriptionsRequest>,
    ) -> Result<Response<sluice_proto::v1::ListSubscriptionsResponse>, Status> {
        Err(Status::unimplemented(UNFAKED_SUBSCRIPTIONS))
    }

    async fn delete_subscription(
        &self,
        _request: Request<sluice_proto::v1::DeleteSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::DeleteSubscriptionResponse>, Status> {
        Err(Status::unimplemented(UNFAKED_SUBSCRIPTIONS))
    }

    async fn create_acls(
        &self,
        _request: Request<sluice_proto::v1::CreateAclsRequest>,
    ) -> Result<Response<sluice_proto::v1::CreateAclsResponse>, Status> {
        Err(Status::unimplemented("the fake nameserver keeps no ACLs"))
    }

    async fn list_acls(
        &self,
        _request: Request<sluice_proto::v1::ListAclsRequest>,
    ) -> Result<Response<sluice_proto::v1::ListAclsResponse>, Status> {
        Err(Status::unimplemented("the fake nameserver keeps no ACLs"))
    }

    async fn delete_acls(
        &self,
        _request: Request<sluice_proto::v1::DeleteAclsRequest>,
    ) -> Result<Response<sluice_proto::v1::DeleteAclsResponse>, Status> {
        Err(Status::unimplemented("the fake nameserver keeps no ACLs"))
    }
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    sluice_proto::test_util::eventually_true(what, Duration::from_secs(20), condition).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_reregisters_and_deregisters() {
    let fake = FakeNameServer::default();
    let nameserver_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let nameserver_address = nameserver_listener.local_addr().expect("address");
    let (nameserver_stop, nameserver_stopped) = tokio::sync::oneshot::channel::<()>();
    let nameserver = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NameServerServer::new(fake.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(nameserver_listener),
                async move {
                    let _ = nameserver_stopped.await;
                },
            ),
    );

    let directory = tempfile::tempdir().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let store_address = listener.local_addr().expect("address").to_string();
    let config = StoreConfig {
        node_id: "store-test".to_string(),
        rack: "rack-a".to_string(),
        data_dir: directory.path().to_path_buf(),
        nameservers: vec![
            format!("http://127.0.0.1:{}", common::free_port()),
            format!("http://{nameserver_address}"),
        ],
        register_retry_initial_backoff_ms: 20,
        register_retry_max_backoff_ms: 100,
        ..StoreConfig::default()
    };
    let (store_stop, store_stopped) = tokio::sync::oneshot::channel::<()>();
    let store = tokio::spawn(sluice_store::run(config, listener, async move {
        let _ = store_stopped.await;
    }));

    let seen = fake.seen.clone();
    wait_for("re-registration after SESSION_EXPIRED", || {
        let seen = seen.lock().expect("lock");
        seen.registrations.len() >= 2
            && seen
                .heartbeats
                .iter()
                .any(|heartbeat| heartbeat.session_id == 2)
    })
    .await;
    {
        let seen = seen.lock().expect("lock");
        let first = &seen.registrations[0];
        assert_eq!(first.kind, NodeKind::Store as i32);
        assert_eq!(first.node_id, "store-test");
        assert_eq!(first.address, store_address);
        assert_eq!(first.rack, "rack-a");
        let load = first.load.clone().expect("load reported");
        assert!(load.disk_total_bytes > 0, "statvfs total: {load:?}");
        assert!(load.disk_free_bytes <= load.disk_total_bytes);
        assert!(load.healthy);
        assert!(seen
            .heartbeats
            .iter()
            .all(|heartbeat| heartbeat.load.is_some()));
    }
    // The store serves while registered.
    let mut client = common::connect_store(&store_address).await;
    client
        .list_segments(StoreListSegmentsRequest {})
        .await
        .expect("store serves");

    let _ = store_stop.send(());
    store
        .await
        .expect("store task")
        .expect("store stopped cleanly");
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.deregistrations.len(), 1, "deregistered at shutdown");
        let last_session = seen.registrations.len() as u64;
        assert_eq!(seen.deregistrations[0].session_id, last_session);
        assert_eq!(seen.deregistrations[0].node_id, "store-test");
    }
    let _ = nameserver_stop.send(());
    nameserver
        .await
        .expect("nameserver task")
        .expect("nameserver stopped");
}
