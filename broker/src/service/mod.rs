//! The `Broker` gRPC service: ordered pipelined produce streams, fetch with
//! long-poll, list offsets, and the group RPCs (delegated to the
//! coordinator).
//!
//! One file per concern: `mod.rs` the [`Broker`] trait (unpack, authorize,
//! call the handler, map the error; fetch's long-poll and list offsets);
//! `produce.rs` produce streams (the per-stream ordering guard, backlog
//! holds, the transactional check, how a stream ends when its inbound side
//! fails); `fetch.rs` one pass over a fetch's partitions and the partition
//! lookups `list_offsets` shares.

use crate::backlog;
use crate::error::BrokerError;
use crate::partition::PartitionStatus;
use crate::subscription;
use crate::tail_cache::PartitionKey;
use crate::transaction::rpc;
use crate::Shared;
use sluice_acl::{Operation, ResourceType};
use sluice_proto::v1::broker_server::Broker;
use sluice_proto::v1::{
    AbortTransactionRequest, AbortTransactionResponse, AddTransactionParticipantsRequest,
    AddTransactionParticipantsResponse, DescribeTransactionRequest, DescribeTransactionResponse,
    EndTransactionRequest, EndTransactionResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListTransactionsRequest, ListTransactionsResponse,
};
use sluice_proto::v1::{
    CommitOffsetsRequest, CommitOffsetsResponse, DescribeGroupRequest, DescribeGroupResponse,
    DescribeSubscriptionRequest, DescribeSubscriptionResponse, FetchOffsetsRequest,
    FetchOffsetsResponse, FetchRequest, FetchResponse, GroupHeartbeatRequest,
    GroupHeartbeatResponse, IsolationLevel, ListOffsetsRequest, ListOffsetsResponse, OffsetSpec,
    ProduceRequest, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use sluice_service::RequestAuthorizer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

mod fetch;
mod produce;
#[cfg(test)]
mod tests;

use fetch::{loaded_status, skipped_ahead};
use produce::{produce_loop, ProduceResponseStream};

/// Produce responses buffered towards a slow client before the stream
/// stops being read.
const PRODUCE_RESPONSE_QUEUE: usize = 1024;
/// Most partitions one fetch request may name.
const MAX_FETCH_PARTITIONS: usize = 10_000;

pub struct BrokerService {
    pub shared: Arc<Shared>,
}

/// Internal groups (subscription cursors, `__…`) are joined and written
/// by the partitions' owners only: an ACL on every group does not open
/// them.
fn check_internal_group(authorizer: &RequestAuthorizer, group: &str) -> Result<(), BrokerError> {
    if !group.starts_with("__") {
        return Ok(());
    }
    authorizer
        .check(
            Operation::ClusterAction,
            ResourceType::Cluster,
            sluice_acl::CLUSTER_RESOURCE_NAME,
        )
        .map_err(BrokerError::Relayed)
}

/// [`RequestAuthorizer::checked`] with the broker's error.
fn checked<T>(
    request: Request<T>,
    operation: Operation,
    resource_type: ResourceType,
    names: impl FnOnce(&T) -> Vec<String>,
) -> Result<T, BrokerError> {
    RequestAuthorizer::checked(request, operation, resource_type, names)
        .map_err(BrokerError::Relayed)
}

#[tonic::async_trait]
impl Broker for BrokerService {
    type ProduceStream = ProduceResponseStream;

    async fn produce(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(PRODUCE_RESPONSE_QUEUE);
        tokio::spawn(produce_loop(
            self.shared.clone(),
            inbound,
            sender,
            authorizer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        for wanted in &request.partitions {
            authorizer
                .check(Operation::Read, ResourceType::Topic, &wanted.topic)
                .map_err(BrokerError::Relayed)?;
        }
        if request.partitions.len() > MAX_FETCH_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "a fetch may name at most {MAX_FETCH_PARTITIONS} partitions"
            ))
            .into());
        }
        let config = &self.shared.config;
        let wait =
            Duration::from_millis(u64::from(request.max_wait_ms).min(config.fetch.max_wait_ms));
        let deadline = Instant::now() + wait;
        let configured_max = usize::try_from(config.fetch.max_bytes).unwrap_or(usize::MAX);
        let total_max_bytes = if request.max_bytes == 0 {
            configured_max
        } else {
            (request.max_bytes as usize).min(configured_max)
        };
        let min_bytes = (request.min_bytes as usize).max(1);
        let mut shutdown = self.shared.shutdown.clone();
        let principal = authorizer.principal.as_str();
        let quotas = &self.shared.quotas;
        let throttle_ms = crate::quota_charge::fetch_wait_ms(quotas, principal);
        if throttle_ms > 0 {
            let (hold, throttle_time_ms) =
                crate::quota_charge::fetch_hold(throttle_ms, wait.as_millis() as u64);
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = crate::wait_until_set(&mut shutdown) => {}
            }
            return Ok(Response::new(FetchResponse {
                throttle_time_ms,
                ..Default::default()
            }));
        }
        loop {
            // Subscribe before reading so a wake-up between read and wait
            // is not lost.
            let mut watchers: Vec<watch::Receiver<PartitionStatus>> = request
                .partitions
                .iter()
                .filter_map(|wanted| {
                    self.shared
                        .partition(&PartitionKey::new(&wanted.topic, wanted.partition))
                })
                .map(|partition| partition.subscribe())
                .collect();
            for watcher in &mut watchers {
                watcher.borrow_and_update();
            }
            let (response, used_bytes, any_error) =
                self.fetch_once(&request, total_max_bytes).await;
            if used_bytes >= min_bytes
                || any_error
                || skipped_ahead(&request, &response)
                || watchers.is_empty()
                || Instant::now() >= deadline
            {
                crate::quota_charge::charge_fetch(quotas, principal, used_bytes);
                return Ok(Response::new(response));
            }
            let changed = futures::future::select_all(
                watchers
                    .iter_mut()
                    .map(|watcher| Box::pin(watcher.changed())),
            );
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = crate::wait_until_set(&mut shutdown) => {
                    crate::quota_charge::charge_fetch(quotas, principal, used_bytes);
                    return Ok(Response::new(response));
                }
            }
        }
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        authorizer
            .check(Operation::Describe, ResourceType::Topic, &request.topic)
            .map_err(BrokerError::Relayed)?;
        let spec = OffsetSpec::try_from(request.spec)
            .ok()
            .filter(|spec| *spec != OffsetSpec::Unspecified)
            .ok_or_else(|| {
                BrokerError::InvalidArgument(format!(
                    "unknown offset spec {}; give OFFSET_SPEC_EARLIEST (1), OFFSET_SPEC_LATEST (2) \
                     or OFFSET_SPEC_TIMESTAMP (3)",
                    request.spec
                ))
            })?;
        let partition = self.served(&request.topic, request.partition).await?;
        let status = loaded_status(&partition)?;
        let read_committed = request.isolation == IsolationLevel::ReadCommitted as i32;
        let latest = match (read_committed, status.last_stable_offset) {
            (false, _) => status.high_watermark,
            (true, Some(lso)) => lso.max(status.log_start_offset),
            (true, None) => {
                return Err(BrokerError::Recovering {
                    topic: request.topic.clone(),
                    partition: request.partition,
                }
                .into())
            }
        };
        let offset = match spec {
            OffsetSpec::Earliest => status.log_start_offset,
            OffsetSpec::Latest | OffsetSpec::Unspecified => latest,
            OffsetSpec::Timestamp => {
                partition
                    .offset_for_timestamp(&status, request.timestamp_ms)
                    .await?
            }
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            log_start_offset: status.log_start_offset,
            high_watermark: status.high_watermark,
            last_stable_offset: status.last_stable_offset,
        }))
    }

    async fn group_heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        let shared = &self.shared;
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = checked(request, Operation::Read, ResourceType::Group, |r| {
            vec![r.group.clone()]
        })?;
        check_internal_group(&authorizer, &request.group)?;
        Ok(Response::new(
            shared
                .coordinator
                .heartbeat(shared, request, &authorizer.principal)
                .await?,
        ))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let shared = &self.shared;
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        authorizer
            .check(Operation::Read, ResourceType::Group, &request.group)
            .map_err(BrokerError::Relayed)?;
        check_internal_group(&authorizer, &request.group)?;
        for offset in &request.offsets {
            authorizer
                .check(Operation::Read, ResourceType::Topic, &offset.topic)
                .map_err(BrokerError::Relayed)?;
        }
        if let Some(transaction) = &request.transaction {
            // As for a transactional produce (ADR 0016 §1, 0015): Write on
            // the transactional id, and a producer id issued to the caller.
            authorizer
                .check(
                    Operation::Write,
                    ResourceType::TransactionalId,
                    &transaction.transactional_id,
                )
                .map_err(BrokerError::Relayed)?;
            shared
                .producer_ids
                .check(transaction.producer_id, &authorizer.principal)?;
        }
        Ok(Response::new(
            shared
                .coordinator
                .commit(shared, request, &authorizer.principal)
                .await?,
        ))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let shared = &self.shared;
        let request = checked(request, Operation::Describe, ResourceType::Group, |r| {
            vec![r.group.clone()]
        })?;
        Ok(Response::new(
            shared.coordinator.fetch_offsets(shared, request)?,
        ))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let shared = &self.shared;
        let request = checked(request, Operation::Describe, ResourceType::Group, |r| {
            vec![r.group.clone()]
        })?;
        Ok(Response::new(
            shared.coordinator.describe(shared, request).await?,
        ))
    }

    async fn delete_group(
        &self,
        request: Request<sluice_proto::v1::DeleteGroupRequest>,
    ) -> Result<Response<sluice_proto::v1::DeleteGroupResponse>, Status> {
        let shared = &self.shared;
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        authorizer
            .check(Operation::Delete, ResourceType::Group, &request.group)
            .map_err(BrokerError::Relayed)?;
        check_internal_group(&authorizer, &request.group)?;
        shared
            .coordinator
            .delete_group(shared, &request.group)
            .await?;
        Ok(Response::new(sluice_proto::v1::DeleteGroupResponse {}))
    }

    async fn get_message(
        &self,
        request: Request<sluice_proto::v1::GetMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::GetMessageResponse>, Status> {
        Ok(Response::new(
            crate::lookup::get_message(
                &self.shared,
                checked(request, Operation::Read, ResourceType::Topic, |r| {
                    vec![r.topic.clone()]
                })?,
            )
            .await?,
        ))
    }

    async fn find_messages(
        &self,
        request: Request<sluice_proto::v1::FindMessagesRequest>,
    ) -> Result<Response<sluice_proto::v1::FindMessagesResponse>, Status> {
        Ok(Response::new(
            crate::lookup::find_messages(
                &self.shared,
                checked(request, Operation::Read, ResourceType::Topic, |r| {
                    vec![r.topic.clone()]
                })?,
            )
            .await?,
        ))
    }

    async fn explain_message(
        &self,
        request: Request<sluice_proto::v1::ExplainMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::ExplainMessageResponse>, Status> {
        Ok(Response::new(
            crate::lookup::explain_message(
                &self.shared,
                checked(request, Operation::Describe, ResourceType::Topic, |r| {
                    vec![r.topic.clone()]
                })?,
            )
            .await?,
        ))
    }

    async fn describe_subscription(
        &self,
        request: Request<DescribeSubscriptionRequest>,
    ) -> Result<Response<DescribeSubscriptionResponse>, Status> {
        Ok(Response::new(
            backlog::describe(
                &self.shared,
                checked(
                    request,
                    Operation::Describe,
                    ResourceType::Subscription,
                    |r| vec![format!("{}/{}", r.topic, r.name)],
                )?,
            )
            .await?,
        ))
    }

    async fn reset_subscription_cursor(
        &self,
        request: Request<sluice_proto::v1::ResetSubscriptionCursorRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        let request = checked(request, Operation::Alter, ResourceType::Subscription, |r| {
            vec![format!("{}/{}", r.topic, r.name)]
        })?;
        Ok(Response::new(
            crate::subscription_skip::reset_cursor(&self.shared, request).await?,
        ))
    }

    async fn skip_subscription(
        &self,
        request: Request<sluice_proto::v1::SkipSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        let request = checked(request, Operation::Alter, ResourceType::Subscription, |r| {
            vec![format!("{}/{}", r.topic, r.name)]
        })?;
        Ok(Response::new(
            crate::subscription_skip::skip(&self.shared, request).await?,
        ))
    }

    type SubscribeStream = subscription::SubscribeResponseStream;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<sluice_proto::v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        Ok(Response::new(subscription::serve(
            self.shared.clone(),
            request.into_inner(),
            authorizer,
        )))
    }

    async fn write_txn_markers(
        &self,
        request: Request<WriteTxnMarkersRequest>,
    ) -> Result<Response<WriteTxnMarkersResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        authorizer
            .check(
                Operation::ClusterAction,
                ResourceType::Cluster,
                sluice_acl::CLUSTER_RESOURCE_NAME,
            )
            .map_err(BrokerError::Relayed)?;
        let request = request.into_inner();
        Ok(Response::new(
            crate::txn_markers::write(&self.shared, request).await?,
        ))
    }

    async fn init_producer_id(
        &self,
        request: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::init_producer_id(&self.shared, request, &authorizer).await?,
        ))
    }

    async fn add_transaction_participants(
        &self,
        request: Request<AddTransactionParticipantsRequest>,
    ) -> Result<Response<AddTransactionParticipantsResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::add_participants(&self.shared, request, &authorizer).await?,
        ))
    }

    async fn end_transaction(
        &self,
        request: Request<EndTransactionRequest>,
    ) -> Result<Response<EndTransactionResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::end_transaction(&self.shared, request, &authorizer).await?,
        ))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(rpc::list(
            &self.shared,
            request,
            &authorizer,
        )?))
    }

    async fn describe_transaction(
        &self,
        request: Request<DescribeTransactionRequest>,
    ) -> Result<Response<DescribeTransactionResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(rpc::describe(
            &self.shared,
            request,
            &authorizer,
        )?))
    }

    async fn abort_transaction(
        &self,
        request: Request<AbortTransactionRequest>,
    ) -> Result<Response<AbortTransactionResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::abort(&self.shared, request, &authorizer).await?,
        ))
    }
}
