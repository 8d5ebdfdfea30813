//! One consumer's `Subscribe` stream: the open and its checks, then its
//! requests forwarded to the dispatcher as commands.

use super::dispatcher::ConsumerId;
use super::dispatcher::TxnAck;
use super::{
    cursor_group, Command, SubscribeResponseStream, MAX_NACK_DELAY_MS, MAX_OFFSETS_PER_REQUEST,
    OPEN_TIMEOUT, RESPONSE_QUEUE_SLACK,
};
use crate::error::BrokerError;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use sluice_proto::names::{GroupName, TopicName};
use sluice_proto::v1::subscribe_request::Request as ConsumerRequest;
use sluice_proto::v1::{SubscribeRequest, SubscribeResponse, TransactionContext};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Serves one consumer's `Subscribe` stream.
pub fn serve(
    shared: Arc<Shared>,
    requests: Streaming<SubscribeRequest>,
    authorizer: sluice_service::RequestAuthorizer,
) -> SubscribeResponseStream {
    let capacity = usize::try_from(shared.config.subscriptions.max_permits_per_consumer)
        .unwrap_or(usize::MAX)
        .saturating_add(RESPONSE_QUEUE_SLACK);
    let (responses, receiver) = mpsc::channel(capacity);
    tokio::spawn(async move {
        if let Err(error) = run_consumer(shared, requests, responses.clone(), authorizer).await {
            tracing::debug!(%error, "subscribe stream ends with an error");
            let _ = responses.send(Err(error.into())).await;
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

async fn run_consumer(
    shared: Arc<Shared>,
    mut requests: Streaming<SubscribeRequest>,
    responses: mpsc::Sender<Result<SubscribeResponse, Status>>,
    authorizer: sluice_service::RequestAuthorizer,
) -> Result<(), BrokerError> {
    let first = tokio::time::timeout(OPEN_TIMEOUT, requests.message())
        .await
        .map_err(|_| BrokerError::Timeout("waiting for the subscribe stream's open".into()))?
        .map_err(|status| BrokerError::InvalidArgument(format!("subscribe stream: {status}")))?;
    let Some(SubscribeRequest {
        request: Some(ConsumerRequest::Open(open)),
    }) = first
    else {
        return Err(BrokerError::InvalidArgument(
            "the first message of a subscribe stream must be `open`".into(),
        ));
    };
    let topic = TopicName::any(&open.topic)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    GroupName::new(&open.subscription).map_err(|error| {
        BrokerError::InvalidArgument(error.to_string().replace("group", "subscription"))
    })?;
    cursor_group(&open.subscription)?;
    if open.consumer_name.len() > sluice_proto::limits::MAX_NAME_BYTES {
        return Err(BrokerError::InvalidArgument(format!(
            "consumer name is {} bytes; at most {}",
            open.consumer_name.len(),
            sluice_proto::limits::MAX_NAME_BYTES
        )));
    }
    authorizer
        .check(
            sluice_acl::Operation::Read,
            sluice_acl::ResourceType::Subscription,
            &format!("{}/{}", open.topic, open.subscription),
        )
        .map_err(BrokerError::Relayed)?;
    let key = PartitionKey::new(topic.as_str(), open.partition);
    let Some(partition) = shared.partition(&key) else {
        return Err(shared
            .not_served_error(topic.as_str(), open.partition)
            .await);
    };
    let consumer = shared
        .subscriptions
        .next_consumer_id
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    let dispatcher =
        shared
            .subscriptions
            .dispatcher(&shared, &key, &open.subscription, partition.clone());
    let not_owner = || BrokerError::NotOwner {
        topic: key.topic.clone(),
        partition: key.partition,
    };
    let (opened_sender, opened) = oneshot::channel();
    dispatcher
        .send(Command::Open {
            consumer,
            name: open.consumer_name.clone(),
            priority: open.priority,
            permits: u64::from(open.permits),
            responses: responses.clone(),
            opened: opened_sender,
        })
        .await
        .map_err(|_| not_owner())?;
    opened.await.map_err(|_| not_owner())??;
    let result = forward_requests(
        &shared,
        &authorizer,
        consumer,
        &mut requests,
        &responses,
        &dispatcher,
    )
    .await;
    // Whatever ended the stream, the consumer is gone: what it held is
    // delivered again.
    let _ = dispatcher.send(Command::Close { consumer }).await;
    result
}

async fn forward_requests(
    shared: &Shared,
    authorizer: &sluice_service::RequestAuthorizer,
    consumer: ConsumerId,
    requests: &mut Streaming<SubscribeRequest>,
    responses: &mpsc::Sender<Result<SubscribeResponse, Status>>,
    dispatcher: &mpsc::Sender<Command>,
) -> Result<(), BrokerError> {
    loop {
        let message = tokio::select! {
            message = requests.message() => message,
            _ = responses.closed() => return Ok(()),
            _ = dispatcher.closed() => return Ok(()),
        };
        let request = match message {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(status) => {
                tracing::debug!(%status, consumer, "subscribe stream broke");
                return Ok(());
            }
        };
        let command = match request.request {
            Some(ConsumerRequest::Flow(flow)) => Command::Flow {
                consumer,
                permits: u64::from(flow.permits),
            },
            Some(ConsumerRequest::Ack(ack)) => {
                if ack.offsets.len() > MAX_OFFSETS_PER_REQUEST {
                    return Err(too_many_offsets(ack.offsets.len()));
                }
                if let Some(context) = &ack.transaction {
                    if ack.cumulative_offset.is_some() {
                        return Err(BrokerError::InvalidArgument(
                                "a transactional acknowledgement names individual offsets; cumulative_offset is not allowed with a transaction".into(),
                            ));
                    }
                    let transaction = transaction_of(shared, authorizer, context)?;
                    Command::TxnAck {
                        consumer,
                        request_id: ack.request_id,
                        offsets: ack.offsets,
                        transaction,
                    }
                } else {
                    Command::Ack {
                        consumer,
                        request_id: ack.request_id,
                        offsets: ack.offsets,
                        cumulative: ack.cumulative_offset,
                    }
                }
            }
            Some(ConsumerRequest::Nack(nack)) => {
                if nack.offsets.len() > MAX_OFFSETS_PER_REQUEST {
                    return Err(too_many_offsets(nack.offsets.len()));
                }
                Command::Nack {
                    consumer,
                    offsets: nack.offsets,
                    delay_ms: nack.delay_ms.min(MAX_NACK_DELAY_MS),
                }
            }
            Some(ConsumerRequest::Open(_)) => {
                return Err(BrokerError::InvalidArgument(
                    "a subscribe stream is opened once; start a new stream for another partition"
                        .into(),
                ))
            }
            None => {
                return Err(BrokerError::InvalidArgument(
                    "empty subscribe request".into(),
                ))
            }
        };
        if dispatcher.send(command).await.is_err() {
            return Ok(());
        }
    }
}

/// The transaction an acknowledgement joins, once its fields are valid,
/// transactions are on, the principal may write the transactional id and
/// the producer id was issued to it (ADR 0015); the coordinator checks the
/// rest (the id's producer id and epoch) when it adds the participant.
fn transaction_of(
    shared: &Shared,
    authorizer: &sluice_service::RequestAuthorizer,
    context: &TransactionContext,
) -> Result<TxnAck, BrokerError> {
    if !shared.config.transactions.enabled {
        return Err(BrokerError::InvalidArgument(
            "transactional acknowledgements need transactions enabled on this broker ([transactions] enabled = false)".into(),
        ));
    }
    let (id, _, epoch) = crate::transaction::context::checked_context(context)?;
    authorizer
        .check(
            sluice_acl::Operation::Write,
            sluice_acl::ResourceType::TransactionalId,
            id.as_str(),
        )
        .map_err(BrokerError::Relayed)?;
    shared
        .producer_ids
        .check(context.producer_id, &authorizer.principal)?;
    Ok(TxnAck {
        transactional_id: id.to_string(),
        producer_id: context.producer_id,
        epoch,
    })
}

fn too_many_offsets(count: usize) -> BrokerError {
    BrokerError::InvalidArgument(format!(
        "{count} offsets in one request; at most {MAX_OFFSETS_PER_REQUEST}"
    ))
}
