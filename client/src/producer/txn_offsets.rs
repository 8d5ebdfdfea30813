//! `send_offsets_to_transaction` (ADR 0016 §5, KIP-447): a consumer's
//! positions committed in the producer's open transaction, so consuming
//! the inputs and writing the outputs commit or abort together.

use super::Producer;
use crate::{ClientError, GroupMetadata, TopicPartitionOffset};
use sluice_proto::v1::TransactionContext;
use std::time::{Duration, Instant};

impl Producer {
    /// Commits `offsets` (next offsets to read) of the consumer group
    /// `group` in the open transaction: they become the group's committed
    /// offsets when the transaction commits, and are dropped if it aborts.
    /// Call it after the transaction's records were enqueued and before
    /// `commit_transaction`, with the consumer's
    /// [`group_metadata`](crate::Consumer::group_metadata) and
    /// [`uncommitted_offsets`](crate::Consumer::uncommitted_offsets); after
    /// the commit call [`mark_committed`](crate::Consumer::mark_committed),
    /// after an abort [`rewind_to_committed`](crate::Consumer::rewind_to_committed).
    ///
    /// Refused with [`ClientError::InvalidTransactionState`] outside a
    /// transaction. It is part of the commit: if it fails the transaction
    /// becomes abortable (`commit_transaction` answers
    /// [`ClientError::TransactionAbortable`]); a member that lost one of
    /// the partitions (rebalance) is refused, so only the current owner of
    /// a partition commits it. Retries (coordinator moving, another
    /// transaction's offsets pending) are bounded by `delivery_timeout_ms`.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &[TopicPartitionOffset],
        group: &GroupMetadata,
    ) -> Result<(), ClientError> {
        let transactional_id = self.transactional_id()?.to_string();
        sluice_proto::names::GroupName::new(&group.group).map_err(|error| {
            ClientError::InvalidArgument(format!("group name '{}': {error}", group.group))
        })?;
        if offsets.is_empty() {
            // Nothing joins the transaction; it still must be open.
            return self.with_transaction(|transaction| transaction.check_open(Instant::now()));
        }
        let (producer_id, epoch) = self.with_transaction(|transaction| {
            transaction.check_enqueue(Instant::now())?;
            Ok(transaction.identity())
        })?;
        let context = TransactionContext {
            transactional_id,
            producer_id,
            producer_epoch: i32::from(epoch),
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.delivery_timeout_ms);
        let committed =
            crate::consumer::commit_transactional(&self.cluster, group, offsets, context, deadline)
                .await;
        if let Err(error) = &committed {
            self.with_transaction(|transaction| {
                transaction.on_offsets_failure(error);
                Ok(())
            })?;
        }
        committed
    }
}
