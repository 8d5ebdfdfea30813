//! The coordinator RPCs (ADR 0016 §2): requests checked (transactional id,
//! epochs, participants), authorised (`Write` on the id to use it,
//! `Describe` to look, `Alter` to abort, `ClusterAction` for brokers
//! adding participants), turned into [`Event`]s for the coordinator.

use super::coordinator::now_ms;
use super::log_record::{self, participant_from_proto, participant_to_proto};
use super::state::{EndReason, Event, Reply, TxnMeta};
use crate::error::BrokerError;
use crate::Shared;
use sluice_acl::{Operation, ResourceType};
use sluice_proto::names::TransactionalId;
use sluice_proto::v1::{
    AbortTransactionRequest, AbortTransactionResponse, AddTransactionParticipantsRequest,
    AddTransactionParticipantsResponse, DescribeTransactionRequest, DescribeTransactionResponse,
    EndTransactionRequest, EndTransactionResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListTransactionsRequest, ListTransactionsResponse, TransactionDescription,
};
use sluice_service::RequestAuthorizer;
use std::sync::Arc;

/// Most transactions one `ListTransactions` answer holds.
pub const MAX_LISTED: usize = 10_000;

fn enabled(shared: &Shared) -> Result<(), BrokerError> {
    if shared.config.transactions.enabled {
        Ok(())
    } else {
        Err(BrokerError::InvalidArgument(
            "transactions are not enabled on this broker ([transactions] enabled = false)".into(),
        ))
    }
}

fn transactional_id(name: &str) -> Result<TransactionalId, BrokerError> {
    TransactionalId::new(name).map_err(|error| BrokerError::InvalidArgument(error.to_string()))
}

fn epoch(value: i32) -> Result<i16, BrokerError> {
    i16::try_from(value)
        .ok()
        .filter(|epoch| (0..=super::state::MAX_EPOCH).contains(epoch))
        .ok_or_else(|| {
            BrokerError::InvalidArgument(format!(
                "producer_epoch {value} is outside 0..={}",
                super::state::MAX_EPOCH
            ))
        })
}

fn producer(reply: Reply) -> Result<(i64, i32), BrokerError> {
    match reply {
        Reply::Producer { producer_id, epoch } => Ok((producer_id, i32::from(epoch))),
        other => Err(BrokerError::Internal(format!(
            "the coordinator answered {other:?} where a producer was due"
        ))),
    }
}

fn authorize(
    authorizer: &RequestAuthorizer,
    operation: Operation,
    id: &TransactionalId,
) -> Result<(), BrokerError> {
    authorizer
        .check(operation, ResourceType::TransactionalId, id.as_str())
        .map_err(BrokerError::Relayed)
}

pub async fn init_producer_id(
    shared: &Arc<Shared>,
    request: InitProducerIdRequest,
    authorizer: &RequestAuthorizer,
) -> Result<InitProducerIdResponse, BrokerError> {
    enabled(shared)?;
    let id = transactional_id(&request.transactional_id)?;
    authorize(authorizer, Operation::Write, &id)?;
    let event = Event::Init {
        timeout_ms: request.transaction_timeout_ms,
        principal: authorizer.principal.as_str().to_string(),
        fresh_producer_id: None,
    };
    let reply = shared
        .transactions
        .handle(shared, &id, event, &authorizer.principal)
        .await?;
    let (producer_id, producer_epoch) = producer(reply)?;
    Ok(InitProducerIdResponse {
        producer_id,
        producer_epoch,
    })
}

pub async fn add_participants(
    shared: &Arc<Shared>,
    request: AddTransactionParticipantsRequest,
    authorizer: &RequestAuthorizer,
) -> Result<AddTransactionParticipantsResponse, BrokerError> {
    enabled(shared)?;
    authorizer
        .check(
            Operation::ClusterAction,
            ResourceType::Cluster,
            sluice_acl::CLUSTER_RESOURCE_NAME,
        )
        .map_err(BrokerError::Relayed)?;
    let id = transactional_id(&request.transactional_id)?;
    let limit = shared.config.transactions.max_participants_per_transaction;
    if request.participants.is_empty() || request.participants.len() > limit {
        return Err(BrokerError::InvalidArgument(format!(
            "AddTransactionParticipants names {} participants; give 1..={limit}",
            request.participants.len()
        )));
    }
    let participants = request
        .participants
        .iter()
        .map(|participant| {
            participant_from_proto(participant)
                .map_err(|error| BrokerError::InvalidArgument(error.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let event = Event::Add {
        producer_id: request.producer_id,
        epoch: epoch(request.producer_epoch)?,
        participants,
    };
    shared
        .transactions
        .handle(shared, &id, event, &authorizer.principal)
        .await?;
    Ok(AddTransactionParticipantsResponse {})
}

pub async fn end_transaction(
    shared: &Arc<Shared>,
    request: EndTransactionRequest,
    authorizer: &RequestAuthorizer,
) -> Result<EndTransactionResponse, BrokerError> {
    enabled(shared)?;
    let id = transactional_id(&request.transactional_id)?;
    authorize(authorizer, Operation::Write, &id)?;
    let event = Event::End {
        producer_id: request.producer_id,
        epoch: epoch(request.producer_epoch)?,
        commit: request.commit,
        fresh_producer_id: None,
    };
    let reply = shared
        .transactions
        .handle(shared, &id, event, &authorizer.principal)
        .await?;
    let (producer_id, producer_epoch) = producer(reply)?;
    Ok(EndTransactionResponse {
        producer_id,
        producer_epoch,
    })
}

fn description(shared: &Shared, id: &str, meta: &TxnMeta) -> TransactionDescription {
    let state = log_record::to_value(meta);
    TransactionDescription {
        transactional_id: id.to_string(),
        producer_id: meta.producer_id,
        producer_epoch: i32::from(meta.epoch),
        state: state.state,
        reason: state.reason,
        participants: meta.participants.iter().map(participant_to_proto).collect(),
        timeout_ms: meta.timeout_ms,
        started_at_ms: meta.started_at_ms,
        updated_at_ms: meta.updated_at_ms,
        log_partition: shared.transactions.index_of(id).unwrap_or_default(),
    }
}

pub fn list(
    shared: &Shared,
    request: ListTransactionsRequest,
    authorizer: &RequestAuthorizer,
) -> Result<ListTransactionsResponse, BrokerError> {
    enabled(shared)?;
    let wanted: Vec<i32> = request.states;
    let transactions = shared
        .transactions
        .list()
        .into_iter()
        .filter(|(id, _)| authorizer.allows(Operation::Describe, ResourceType::TransactionalId, id))
        .map(|(id, meta)| description(shared, &id, &meta))
        .filter(|described| wanted.is_empty() || wanted.contains(&described.state))
        .take(MAX_LISTED)
        .collect();
    Ok(ListTransactionsResponse { transactions })
}

pub fn describe(
    shared: &Shared,
    request: DescribeTransactionRequest,
    authorizer: &RequestAuthorizer,
) -> Result<DescribeTransactionResponse, BrokerError> {
    enabled(shared)?;
    let id = transactional_id(&request.transactional_id)?;
    authorize(authorizer, Operation::Describe, &id)?;
    let meta = shared.transactions.look_up(shared, &id)?;
    Ok(DescribeTransactionResponse {
        transaction: Some(description(shared, id.as_str(), &meta)),
    })
}

pub async fn abort(
    shared: &Arc<Shared>,
    request: AbortTransactionRequest,
    authorizer: &RequestAuthorizer,
) -> Result<AbortTransactionResponse, BrokerError> {
    enabled(shared)?;
    let id = transactional_id(&request.transactional_id)?;
    authorize(authorizer, Operation::Alter, &id)?;
    let event = Event::Abort {
        reason: EndReason::Admin,
        fresh_producer_id: None,
    };
    // A fresh producer id (epoch overflow) stays bound to the id's owner.
    let owner = shared
        .transactions
        .describe(id.as_str())
        .and_then(|meta| meta.principal.parse().ok())
        .unwrap_or_else(|| authorizer.principal.clone());
    shared
        .transactions
        .handle(shared, &id, event, &owner)
        .await?;
    tracing::info!(target: sluice_service::AUDIT_TARGET, principal = %authorizer.principal, transactional_id = %id, at_ms = now_ms(), "aborted a transaction");
    Ok(AbortTransactionResponse {})
}
