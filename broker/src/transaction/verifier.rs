//! The real [`TxnVerifier`] (ADR 0016 §3.3): a partition verifying the
//! first batch of `(pid, e)` asks the coordinator of the batch's
//! transactional id to add the partition to that transaction — in-process
//! when this broker serves the id's log partition, else by
//! `AddTransactionParticipants` to its owner (from the nameserver's
//! routes). The coordinator's refusal is relayed with its code.

use super::state::{Event, Participant};
use crate::error::BrokerError;
use crate::tail_cache::PartitionKey;
use crate::txn_verifier::{TxnVerifier, Verification};
use crate::Shared;
use futures::future::BoxFuture;
use sluice_proto::names::{TransactionalId, TRANSACTION_STATE_TOPIC};
use sluice_proto::partitioning::offsets_partition_for_group;
use sluice_proto::v1::{AddTransactionParticipantsRequest, TransactionParticipant};
use sluice_proto::{ErrorCode, SluiceError};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Verifies through the transaction coordinators.
pub struct CoordinatorVerifier {
    shared: Weak<Shared>,
}

impl CoordinatorVerifier {
    pub fn new(shared: Weak<Shared>) -> Self {
        Self { shared }
    }
}

impl TxnVerifier for CoordinatorVerifier {
    fn verify(&self, verification: Verification) -> BoxFuture<'static, Result<(), BrokerError>> {
        let shared = self.shared.upgrade();
        Box::pin(async move {
            let shared =
                shared.ok_or_else(|| BrokerError::Unavailable("the broker is stopping".into()))?;
            verify(&shared, verification).await
        })
    }
}

async fn verify(shared: &Arc<Shared>, verification: Verification) -> Result<(), BrokerError> {
    let id = TransactionalId::new(&verification.transactional_id)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    let topic = TRANSACTION_STATE_TOPIC.to_string();
    let count = shared
        .partition_counts(std::slice::from_ref(&topic))
        .await?
        .get(&topic)
        .copied()
        .ok_or_else(|| {
            BrokerError::Unavailable(format!("{TRANSACTION_STATE_TOPIC} is not created yet"))
        })?;
    let index = offsets_partition_for_group(id.as_str(), count);
    if shared
        .partition(&PartitionKey::new(TRANSACTION_STATE_TOPIC, index))
        .is_some()
    {
        let event = Event::Add {
            producer_id: verification.producer_id,
            epoch: verification.epoch,
            participants: vec![Participant {
                topic: verification.topic.clone(),
                partition: verification.partition,
                subscription: verification.subscription.clone(),
            }],
        };
        let principal = sluice_service::anonymous();
        shared
            .transactions
            .handle(shared, &id, event, &principal)
            .await?;
        return Ok(());
    }
    let routes = shared.routes(std::slice::from_ref(&topic)).await?;
    let address = routes
        .iter()
        .filter(|route| route.topic == topic)
        .flat_map(|route| route.partitions.iter())
        .find(|partition| partition.partition == index && !partition.broker_address.is_empty())
        .map(|partition| partition.broker_address.clone())
        .ok_or_else(|| BrokerError::NotCoordinator(format!("transactional id {id:?}")))?;
    let request = AddTransactionParticipantsRequest {
        transactional_id: id.to_string(),
        producer_id: verification.producer_id,
        producer_epoch: i32::from(verification.epoch),
        participants: vec![TransactionParticipant {
            topic: verification.topic,
            partition: verification.partition,
            subscription: verification.subscription,
        }],
    };
    let timeout = Duration::from_millis(shared.config.transactions.verification_timeout_ms);
    shared
        .clients
        .broker(&address)?
        .add_transaction_participants(crate::clients::request(request, timeout))
        .await
        .map(|_| ())
        .map_err(|status| {
            let error = SluiceError::from_status(&status);
            if error.code == ErrorCode::None {
                BrokerError::Unavailable(status.message().to_string())
            } else {
                BrokerError::Relayed(error)
            }
        })
}
