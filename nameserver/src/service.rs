//! The `NameServer` and `AssignmentWatch` gRPC services: each method unpacks its request, calls
//! the handler (`crate::handler`, one file per resource; subscriptions in
//! `crate::subscriptions`) and maps its error to a status.

use crate::handler::{AssignmentStream, NameServerHandler, RouteStream};
use sluice_acl::{Operation, ResourceType};
use sluice_proto::v1::assignment_watch_server::AssignmentWatch;
use sluice_proto::v1::name_server_server::NameServer;
use sluice_proto::v1::{
    AcceptDataLossRequest, AcceptDataLossResponse, AddPartitionsRequest, AllocateProducerIdRequest,
    AllocateProducerIdResponse, AlterTopicRequest, CloseSegmentRequest, ClusterStatusRequest,
    ClusterStatusResponse, CoordinatorKind, CreateAclsRequest, CreateAclsResponse,
    CreateSegmentRequest, CreateSubscriptionRequest, CreateTopicRequest, DeleteAclsRequest,
    DeleteAclsResponse, DeleteSegmentsRequest, DeleteSegmentsResponse, DeleteSubscriptionRequest,
    DeleteSubscriptionResponse, DeleteTopicRequest, DeleteTopicResponse, DeregisterNodeRequest,
    DeregisterNodeResponse, DescribeTopicRequest, DescribeTopicResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GetProducerIdKeyRequest, GetProducerIdKeyResponse, GetRoutesRequest,
    GetRoutesResponse, GetSubscriptionRequest, HeartbeatRequest, HeartbeatResponse,
    ListAclsRequest, ListAclsResponse, ListGroupsRequest, ListGroupsResponse, ListSegmentsRequest,
    ListSegmentsResponse, ListSubscriptionsRequest, ListSubscriptionsResponse, ListTopicsRequest,
    ListTopicsResponse, RegisterGroupRequest, RegisterGroupResponse, RegisterNodeRequest,
    RegisterNodeResponse, SegmentInfo, Subscription, Topic, UpdateSegmentReplicasRequest,
    WatchAssignmentsRequest, WatchRoutesRequest,
};
use sluice_service::RequestAuthorizer;
use tonic::{Request, Response, Status};

type ServiceResult<T> = Result<Response<T>, Status>;

/// [`RequestAuthorizer::checked`] with the refusal as a status.
fn checked<T>(
    request: Request<T>,
    operation: Operation,
    resource_type: ResourceType,
    names: impl FnOnce(&T) -> Vec<String>,
) -> Result<T, Status> {
    RequestAuthorizer::checked(request, operation, resource_type, names).map_err(Status::from)
}

#[tonic::async_trait]
impl NameServer for NameServerHandler {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> ServiceResult<RegisterNodeResponse> {
        let principal = RequestAuthorizer::of(request.extensions()).principal;
        Ok(Response::new(
            self.do_register(request.into_inner(), &principal).await?,
        ))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> ServiceResult<HeartbeatResponse> {
        let principal = RequestAuthorizer::of(request.extensions()).principal;
        Ok(Response::new(
            self.do_heartbeat(request.into_inner(), &principal).await?,
        ))
    }

    async fn deregister_node(
        &self,
        request: Request<DeregisterNodeRequest>,
    ) -> ServiceResult<DeregisterNodeResponse> {
        let principal = RequestAuthorizer::of(request.extensions()).principal;
        self.do_deregister(request.into_inner(), &principal).await?;
        Ok(Response::new(DeregisterNodeResponse {}))
    }

    async fn create_topic(&self, request: Request<CreateTopicRequest>) -> ServiceResult<Topic> {
        let request = checked(request, Operation::Create, ResourceType::Topic, |r| {
            vec![r.name.clone()]
        })?;
        Ok(Response::new(self.do_create_topic(request).await?))
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> ServiceResult<ListTopicsResponse> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let mut topics = self
            .do_list_topics(request.into_inner().include_internal)
            .await?;
        topics.retain(|topic| {
            authorizer.allows(Operation::Describe, ResourceType::Topic, &topic.name)
        });
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> ServiceResult<DescribeTopicResponse> {
        let request = checked(request, Operation::Describe, ResourceType::Topic, |r| {
            vec![r.name.clone()]
        })?;
        Ok(Response::new(self.do_describe_topic(&request.name).await?))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> ServiceResult<DeleteTopicResponse> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = checked(request, Operation::Delete, ResourceType::Topic, |r| {
            vec![r.name.clone()]
        })?;
        let may_delete =
            |topic: &str| authorizer.allows(Operation::Delete, ResourceType::Topic, topic);
        Ok(Response::new(
            self.do_delete_topic_and_dead_letters(&request, may_delete)
                .await?,
        ))
    }

    async fn alter_topic(&self, request: Request<AlterTopicRequest>) -> ServiceResult<Topic> {
        let request = checked(request, Operation::Alter, ResourceType::Topic, |r| {
            vec![r.name.clone()]
        })?;
        Ok(Response::new(self.do_alter_topic(request).await?))
    }

    async fn add_partitions(&self, request: Request<AddPartitionsRequest>) -> ServiceResult<Topic> {
        let request = checked(request, Operation::Alter, ResourceType::Topic, |r| {
            vec![r.name.clone()]
        })?;
        Ok(Response::new(self.do_add_partitions(request).await?))
    }

    async fn get_routes(
        &self,
        request: Request<GetRoutesRequest>,
    ) -> ServiceResult<GetRoutesResponse> {
        let request = checked(request, Operation::Describe, ResourceType::Topic, |r| {
            r.topics.clone()
        })?;
        Ok(Response::new(self.compute_routes(&request.topics).await?))
    }

    type WatchRoutesStream = RouteStream;

    async fn watch_routes(
        &self,
        request: Request<WatchRoutesRequest>,
    ) -> ServiceResult<Self::WatchRoutesStream> {
        let request = checked(request, Operation::Describe, ResourceType::Topic, |r| {
            r.topics.clone()
        })?;
        Ok(Response::new(self.do_watch_routes(request.topics).await?))
    }

    async fn find_coordinator(
        &self,
        request: Request<FindCoordinatorRequest>,
    ) -> ServiceResult<FindCoordinatorResponse> {
        // A transaction coordinator is looked up by whoever may Describe
        // the transactional id (ADR 0016 §1), a group's by its readers.
        let transactional = request.get_ref().kind == CoordinatorKind::Transaction as i32;
        let request = if transactional {
            checked(
                request,
                Operation::Describe,
                ResourceType::TransactionalId,
                |r| vec![r.key.clone()],
            )?
        } else {
            checked(request, Operation::Describe, ResourceType::Group, |r| {
                vec![r.group.clone()]
            })?
        };
        Ok(Response::new(self.do_find_coordinator(&request).await?))
    }

    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> ServiceResult<ListSegmentsResponse> {
        let request = checked(request, Operation::Describe, ResourceType::Topic, |r| {
            vec![r.topic.clone()]
        })?;
        let segments = self
            .do_list_segments(&request.topic, request.partition)
            .await?;
        Ok(Response::new(ListSegmentsResponse { segments }))
    }

    async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> ServiceResult<SegmentInfo> {
        Ok(Response::new(
            self.do_create_segment(request.into_inner()).await?,
        ))
    }

    async fn close_segment(
        &self,
        request: Request<CloseSegmentRequest>,
    ) -> ServiceResult<SegmentInfo> {
        Ok(Response::new(
            self.do_close_segment(request.into_inner()).await?,
        ))
    }

    async fn update_segment_replicas(
        &self,
        request: Request<UpdateSegmentReplicasRequest>,
    ) -> ServiceResult<SegmentInfo> {
        Ok(Response::new(
            self.do_update_segment_replicas(request.into_inner())
                .await?,
        ))
    }

    async fn delete_segments(
        &self,
        request: Request<DeleteSegmentsRequest>,
    ) -> ServiceResult<DeleteSegmentsResponse> {
        self.do_delete_segments(request.into_inner()).await?;
        Ok(Response::new(DeleteSegmentsResponse {}))
    }

    async fn place_compacted_segment(
        &self,
        request: Request<sluice_proto::v1::PlaceCompactedSegmentRequest>,
    ) -> ServiceResult<SegmentInfo> {
        Ok(Response::new(
            self.do_place_compacted_segment(request.into_inner())
                .await?,
        ))
    }

    async fn replace_segments(
        &self,
        request: Request<sluice_proto::v1::ReplaceSegmentsRequest>,
    ) -> ServiceResult<sluice_proto::v1::ReplaceSegmentsResponse> {
        let segments = self.do_replace_segments(request.into_inner()).await?;
        Ok(Response::new(sluice_proto::v1::ReplaceSegmentsResponse {
            segments,
        }))
    }

    async fn list_compactions(
        &self,
        request: Request<sluice_proto::v1::ListCompactionsRequest>,
    ) -> ServiceResult<sluice_proto::v1::ListCompactionsResponse> {
        let records = self.do_list_compactions(request.into_inner()).await?;
        Ok(Response::new(sluice_proto::v1::ListCompactionsResponse {
            records,
        }))
    }

    async fn forget_compactions(
        &self,
        request: Request<sluice_proto::v1::ForgetCompactionsRequest>,
    ) -> ServiceResult<sluice_proto::v1::ForgetCompactionsResponse> {
        self.do_forget_compactions(request.into_inner()).await?;
        Ok(Response::new(
            sluice_proto::v1::ForgetCompactionsResponse {},
        ))
    }

    async fn accept_data_loss(
        &self,
        request: Request<AcceptDataLossRequest>,
    ) -> ServiceResult<AcceptDataLossResponse> {
        let request = checked(request, Operation::Alter, ResourceType::Topic, |r| {
            vec![r.topic.clone()]
        })?;
        let segment_ids = self.do_accept_data_loss(request).await?;
        Ok(Response::new(AcceptDataLossResponse { segment_ids }))
    }

    async fn create_acls(
        &self,
        request: Request<CreateAclsRequest>,
    ) -> ServiceResult<CreateAclsResponse> {
        let created = self.do_create_acls(&request.into_inner().bindings).await?;
        Ok(Response::new(CreateAclsResponse { created }))
    }

    async fn list_acls(
        &self,
        _request: Request<ListAclsRequest>,
    ) -> ServiceResult<ListAclsResponse> {
        let bindings = self.do_list_acls().await?;
        Ok(Response::new(ListAclsResponse { bindings }))
    }

    async fn delete_acls(
        &self,
        request: Request<DeleteAclsRequest>,
    ) -> ServiceResult<DeleteAclsResponse> {
        let deleted = self.do_delete_acls(&request.into_inner().bindings).await?;
        Ok(Response::new(DeleteAclsResponse { deleted }))
    }

    async fn register_group(
        &self,
        request: Request<RegisterGroupRequest>,
    ) -> ServiceResult<RegisterGroupResponse> {
        self.do_register_group(&request.into_inner().group).await?;
        Ok(Response::new(RegisterGroupResponse {}))
    }

    async fn unregister_group(
        &self,
        request: Request<sluice_proto::v1::UnregisterGroupRequest>,
    ) -> ServiceResult<sluice_proto::v1::UnregisterGroupResponse> {
        self.do_unregister_group(&request.into_inner().group)
            .await?;
        Ok(Response::new(sluice_proto::v1::UnregisterGroupResponse {}))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> ServiceResult<ListGroupsResponse> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let mut listing = self.do_list_groups().await?;
        listing.groups.retain(|group| {
            authorizer.allows(Operation::Describe, ResourceType::Group, &group.group)
        });
        Ok(Response::new(listing))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> ServiceResult<ClusterStatusResponse> {
        Ok(Response::new(self.do_cluster_status().await?))
    }

    async fn allocate_producer_id(
        &self,
        request: Request<AllocateProducerIdRequest>,
    ) -> ServiceResult<AllocateProducerIdResponse> {
        let principal = RequestAuthorizer::of(request.extensions()).principal;
        Ok(Response::new(AllocateProducerIdResponse {
            producer_id: self.do_allocate_producer_id(&principal).await?,
        }))
    }

    async fn get_producer_id_key(
        &self,
        _request: Request<GetProducerIdKeyRequest>,
    ) -> ServiceResult<GetProducerIdKeyResponse> {
        Ok(Response::new(GetProducerIdKeyResponse {
            key: self.do_get_producer_id_key().await?.into(),
        }))
    }

    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> ServiceResult<Subscription> {
        let request = checked(
            request,
            Operation::Create,
            ResourceType::Subscription,
            |r| {
                r.subscription
                    .iter()
                    .map(|s| format!("{}/{}", s.topic, s.name))
                    .collect()
            },
        )?;
        Ok(Response::new(
            self.do_create_subscription(request.subscription).await?,
        ))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> ServiceResult<Subscription> {
        let request = checked(
            request,
            Operation::Describe,
            ResourceType::Subscription,
            |r| vec![format!("{}/{}", r.topic, r.name)],
        )?;
        Ok(Response::new(
            self.do_get_subscription(&request.topic, &request.name)
                .await?,
        ))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> ServiceResult<ListSubscriptionsResponse> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let mut subscriptions = self
            .do_list_subscriptions(&request.into_inner().topic)
            .await?;
        subscriptions.retain(|s| {
            let name = format!("{}/{}", s.topic, s.name);
            authorizer.allows(Operation::Describe, ResourceType::Subscription, &name)
        });
        Ok(Response::new(ListSubscriptionsResponse { subscriptions }))
    }

    async fn update_subscription(
        &self,
        request: Request<sluice_proto::v1::UpdateSubscriptionRequest>,
    ) -> ServiceResult<Subscription> {
        let request = checked(request, Operation::Alter, ResourceType::Subscription, |r| {
            vec![format!("{}/{}", r.topic, r.name)]
        })?;
        Ok(Response::new(self.do_update_subscription(request).await?))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> ServiceResult<DeleteSubscriptionResponse> {
        let request = checked(
            request,
            Operation::Delete,
            ResourceType::Subscription,
            |r| vec![format!("{}/{}", r.topic, r.name)],
        )?;
        self.do_delete_subscription(&request.topic, &request.name)
            .await?;
        Ok(Response::new(DeleteSubscriptionResponse {}))
    }
}

/// `AssignmentWatch` (ADR 0014), served next to `NameServer`.
#[tonic::async_trait]
impl AssignmentWatch for NameServerHandler {
    type WatchAssignmentsStream = AssignmentStream;

    async fn watch_assignments(
        &self,
        request: Request<WatchAssignmentsRequest>,
    ) -> ServiceResult<Self::WatchAssignmentsStream> {
        Ok(Response::new(
            self.do_watch_assignments(request.into_inner()).await?,
        ))
    }
}
