//! The fake nameserver: routes (movable), coordinators, topics and
//! subscriptions in memory; the rest answers UNIMPLEMENTED.

use super::*;

/// A fake nameserver answering `GetRoutes`, `FindCoordinator` and a few
/// admin calls from in-memory state; the rest is unimplemented.
#[derive(Clone, Default)]
pub(crate) struct FakeNameServer {
    pub state: Arc<Mutex<FakeNameServerState>>,
}

#[derive(Default)]
pub(crate) struct FakeNameServerState {
    /// Broker address of each partition, per topic.
    pub routes: HashMap<String, Vec<String>>,
    /// Ownership epoch of every route (0 is answered as 1); bump it when
    /// moving partitions, as a takeover does.
    pub epoch: u64,
    /// `WatchRoutes` calls so far.
    pub watch_calls: u64,
    /// `WatchRoutes` streams open now.
    pub open_watches: u64,
    pub coordinator: String,
    pub get_routes_calls: u64,
    pub created: Vec<String>,
    /// Producer ids handed out so far.
    pub allocated_producer_ids: u64,
    /// Subscriptions by (topic, name), as created (no defaults filled).
    pub subscriptions: std::collections::BTreeMap<(String, String), Subscription>,
}

impl FakeNameServer {
    pub fn lock(&self) -> MutexGuard<'_, FakeNameServerState> {
        self.state
            .lock()
            .expect("fake nameserver state lock (test code)")
    }

    /// Routes of `topics` as `GetRoutes` and `WatchRoutes` answer them.
    fn routes_of(&self, topics: &[String]) -> GetRoutesResponse {
        let state = self.lock();
        let topics = topics
            .iter()
            .map(|topic| match state.routes.get(topic) {
                Some(addresses) => TopicRoute {
                    topic: topic.clone(),
                    partitions: addresses
                        .iter()
                        .enumerate()
                        .map(|(partition, address)| PartitionRoute {
                            partition: partition as u32,
                            broker_id: format!("broker-{address}"),
                            broker_address: address.clone(),
                            epoch: state.epoch.max(1),
                        })
                        .collect(),
                    error: 0,
                },
                None => TopicRoute {
                    topic: topic.clone(),
                    partitions: Vec::new(),
                    error: ErrorCode::UnknownTopic as i32,
                },
            })
            .collect();
        GetRoutesResponse { topics }
    }

    /// Moves every partition of `topic` to `address` at a new epoch.
    pub fn move_topic(&self, topic: &str, address: &str) {
        let mut state = self.lock();
        state.epoch = state.epoch.max(1) + 1;
        let partitions = state.routes.get(topic).map_or(1, Vec::len);
        state
            .routes
            .insert(topic.to_string(), vec![address.to_string(); partitions]);
    }

    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port for the fake nameserver");
        let address = listener.local_addr().expect("bound address");
        let service = name_server_server::NameServerServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        format!("http://{address}")
    }
}

type RoutesStream = Pin<Box<dyn Stream<Item = Result<GetRoutesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl name_server_server::NameServer for FakeNameServer {
    type WatchRoutesStream = RoutesStream;

    async fn register_node(
        &self,
        _request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        Err(Status::unimplemented("register_node is not faked"))
    }

    async fn heartbeat(
        &self,
        _request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("heartbeat is not faked"))
    }

    async fn deregister_node(
        &self,
        _request: Request<DeregisterNodeRequest>,
    ) -> Result<Response<DeregisterNodeResponse>, Status> {
        Err(Status::unimplemented("deregister_node is not faked"))
    }

    async fn describe_topic(
        &self,
        _request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        Err(Status::unimplemented("describe_topic is not faked"))
    }

    async fn delete_topic(
        &self,
        _request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("delete_topic is not faked"))
    }

    async fn unregister_group(
        &self,
        _request: Request<sluice_proto::v1::UnregisterGroupRequest>,
    ) -> Result<Response<sluice_proto::v1::UnregisterGroupResponse>, Status> {
        Err(Status::unimplemented("unregister_group is not faked"))
    }

    async fn update_subscription(
        &self,
        _request: Request<sluice_proto::v1::UpdateSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::Subscription>, Status> {
        Err(Status::unimplemented("update_subscription is not faked"))
    }

    async fn alter_topic(
        &self,
        _request: Request<sluice_proto::v1::AlterTopicRequest>,
    ) -> Result<Response<sluice_proto::v1::Topic>, Status> {
        Err(Status::unimplemented("alter_topic is not faked"))
    }

    async fn add_partitions(
        &self,
        _request: Request<sluice_proto::v1::AddPartitionsRequest>,
    ) -> Result<Response<sluice_proto::v1::Topic>, Status> {
        Err(Status::unimplemented("add_partitions is not faked"))
    }

    async fn watch_routes(
        &self,
        request: Request<WatchRoutesRequest>,
    ) -> Result<Response<RoutesStream>, Status> {
        // Like the real nameserver: the current routes, then every change
        // (polled every 10 ms).
        let topics = request.into_inner().topics;
        {
            let mut state = self.lock();
            state.watch_calls += 1;
            state.open_watches += 1;
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let server = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let routes = server.routes_of(&topics);
                if last.as_ref() != Some(&routes) {
                    last = Some(routes.clone());
                    if sender.send(Ok(routes)).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = sender.closed() => break,
                }
            }
            server.lock().open_watches -= 1;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        Err(Status::unimplemented("list_segments is not faked"))
    }

    async fn create_segment(
        &self,
        _request: Request<CreateSegmentRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented("create_segment is not faked"))
    }

    async fn close_segment(
        &self,
        _request: Request<CloseSegmentRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented("close_segment is not faked"))
    }

    async fn update_segment_replicas(
        &self,
        _request: Request<UpdateSegmentReplicasRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented(
            "update_segment_replicas is not faked",
        ))
    }

    async fn delete_segments(
        &self,
        _request: Request<DeleteSegmentsRequest>,
    ) -> Result<Response<DeleteSegmentsResponse>, Status> {
        Err(Status::unimplemented("delete_segments is not faked"))
    }

    async fn place_compacted_segment(
        &self,
        _request: Request<sluice_proto::v1::PlaceCompactedSegmentRequest>,
    ) -> Result<Response<sluice_proto::v1::SegmentInfo>, Status> {
        Err(Status::unimplemented("compaction is not faked"))
    }

    async fn replace_segments(
        &self,
        _request: Request<sluice_proto::v1::ReplaceSegmentsRequest>,
    ) -> Result<Response<sluice_proto::v1::ReplaceSegmentsResponse>, Status> {
        Err(Status::unimplemented("compaction is not faked"))
    }

    async fn list_compactions(
        &self,
        _request: Request<sluice_proto::v1::ListCompactionsRequest>,
    ) -> Result<Response<sluice_proto::v1::ListCompactionsResponse>, Status> {
        Err(Status::unimplemented("compaction is not faked"))
    }

    async fn forget_compactions(
        &self,
        _request: Request<sluice_proto::v1::ForgetCompactionsRequest>,
    ) -> Result<Response<sluice_proto::v1::ForgetCompactionsResponse>, Status> {
        Err(Status::unimplemented("compaction is not faked"))
    }

    async fn accept_data_loss(
        &self,
        _request: Request<sluice_proto::v1::AcceptDataLossRequest>,
    ) -> Result<Response<sluice_proto::v1::AcceptDataLossResponse>, Status> {
        Err(Status::unimplemented("accept_data_loss is not faked"))
    }

    async fn register_group(
        &self,
        _request: Request<RegisterGroupRequest>,
    ) -> Result<Response<RegisterGroupResponse>, Status> {
        Err(Status::unimplemented("register_group is not faked"))
    }

    async fn list_groups(
        &self,
        _request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Err(Status::unimplemented("list_groups is not faked"))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("cluster_status is not faked"))
    }

    async fn allocate_producer_id(
        &self,
        _request: Request<AllocateProducerIdRequest>,
    ) -> Result<Response<AllocateProducerIdResponse>, Status> {
        let mut state = self.lock();
        state.allocated_producer_ids += 1;
        Ok(Response::new(AllocateProducerIdResponse {
            producer_id: 1000 + state.allocated_producer_ids,
        }))
    }

    async fn get_producer_id_key(
        &self,
        _request: Request<sluice_proto::v1::GetProducerIdKeyRequest>,
    ) -> Result<Response<sluice_proto::v1::GetProducerIdKeyResponse>, Status> {
        Err(Status::unimplemented("get_producer_id_key is not faked"))
    }

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<Topic>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        if state.routes.contains_key(&request.name) {
            return Err(
                sluice_proto::SluiceError::new(ErrorCode::TopicAlreadyExists, "exists").into(),
            );
        }
        state.created.push(request.name.clone());
        Ok(Response::new(Topic {
            name: request.name,
            config: request.config,
            ..Topic::default()
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let state = self.lock();
        let mut names: Vec<&String> = state.routes.keys().collect();
        names.sort();
        Ok(Response::new(ListTopicsResponse {
            topics: names
                .into_iter()
                .map(|name| Topic {
                    name: name.clone(),
                    ..Topic::default()
                })
                .collect(),
        }))
    }

    async fn get_routes(
        &self,
        request: Request<GetRoutesRequest>,
    ) -> Result<Response<GetRoutesResponse>, Status> {
        let request = request.into_inner();
        self.lock().get_routes_calls += 1;
        Ok(Response::new(self.routes_of(&request.topics)))
    }

    async fn find_coordinator(
        &self,
        _request: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        let state = self.lock();
        Ok(Response::new(FindCoordinatorResponse {
            broker_id: "coordinator".into(),
            broker_address: state.coordinator.clone(),
            offsets_partition: 0,
        }))
    }

    /// Stores the subscription as given; the same settings again return
    /// it, other settings are a SUBSCRIPTION_CONFLICT (no defaults, no
    /// topic check, no validation: the real nameserver's are tested there).
    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let subscription = request
            .into_inner()
            .subscription
            .ok_or_else(|| Status::invalid_argument("no subscription"))?;
        let key = (subscription.topic.clone(), subscription.name.clone());
        let mut state = self.lock();
        if let Some(stored) = state.subscriptions.get(&key) {
            // Neither is a setting (as at the real nameserver).
            let same = Subscription {
                created_at_ms: stored.created_at_ms,
                start_offsets: stored.start_offsets.clone(),
                ..subscription
            };
            if &same == stored {
                return Ok(Response::new(stored.clone()));
            }
            return Err(sluice_proto::SluiceError::new(
                ErrorCode::SubscriptionConflict,
                "exists with other settings",
            )
            .into());
        }
        let stored = Subscription {
            created_at_ms: 1,
            ..subscription
        };
        state.subscriptions.insert(key, stored.clone());
        Ok(Response::new(stored))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let request = request.into_inner();
        self.lock()
            .subscriptions
            .get(&(request.topic, request.name))
            .cloned()
            .map(Response::new)
            .ok_or_else(|| {
                sluice_proto::SluiceError::new(ErrorCode::UnknownSubscription, "no such").into()
            })
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        let topic = request.into_inner().topic;
        let subscriptions = self
            .lock()
            .subscriptions
            .values()
            .filter(|subscription| subscription.topic == topic)
            .cloned()
            .collect();
        Ok(Response::new(ListSubscriptionsResponse { subscriptions }))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<DeleteSubscriptionResponse>, Status> {
        let request = request.into_inner();
        match self
            .lock()
            .subscriptions
            .remove(&(request.topic, request.name))
        {
            Some(_) => Ok(Response::new(DeleteSubscriptionResponse {})),
            None => Err(
                sluice_proto::SluiceError::new(ErrorCode::UnknownSubscription, "no such").into(),
            ),
        }
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
