//! Transactional offset commits (ADR 0016 §5, KIP-447): a transactional
//! producer's `send_offsets_to_transaction` commits a group's offsets
//! into its open transaction. The commit is checked like a member's plain
//! commit plus: every partition must be in the member's current granted
//! set (a consumer that lost a partition cannot commit it, even with its
//! previous epoch), and no other transaction's offsets may be pending for
//! it. It is appended to the group's `__consumer_offsets` partition as a
//! transactional batch, which that partition verifies with the
//! transaction coordinator like any participant (§3.3); once durable the
//! offsets are pending, and the transaction's marker on that partition
//! commits or drops them ([`Coordinator::marker_hook`]).

use super::pending::{PendingRefusal, TxnKey};
use super::{accepted, lock, member_for_commit, to_committed, Coordinator, State};
use crate::assignment::TopicPartition;
use crate::commit_record;
use crate::error::BrokerError;
use crate::partition::{OnDurable, Partition};
use crate::transaction::context::checked_context;
use crate::Shared;
use sluice_acl::Principal;
use sluice_proto::batch::{self, control::Marker};
use sluice_proto::names::TransactionalId;
use sluice_proto::v1::{CommitOffsetsRequest, CommitOffsetsResponse, TransactionContext};

/// The transaction of a commit, checked (see [`checked_context`]), with
/// its key among the pending offsets.
pub(crate) fn checked_context_key(
    context: &TransactionContext,
) -> Result<(TransactionalId, TxnKey), BrokerError> {
    let (id, producer_id, epoch) = checked_context(context)?;
    Ok((id, (producer_id, epoch)))
}

impl Coordinator {
    /// Appends a transactional commit (validated as a plain one up to the
    /// member check by [`Coordinator::commit`]); answers once it is
    /// durable and its offsets are pending.
    pub(super) async fn commit_transactional(
        &self,
        shared: &Shared,
        request: CommitOffsetsRequest,
        partition: &Partition,
        principal: &Principal,
    ) -> Result<CommitOffsetsResponse, BrokerError> {
        if !shared.config.transactions.enabled {
            return Err(BrokerError::InvalidArgument(
                "transactional offset commits need transactions ([transactions] enabled = false on this broker)".into(),
            ));
        }
        let context = request.transaction.clone().unwrap_or_default();
        let (id, txn) = checked_context_key(&context)?;
        if request.offsets.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "a transactional commit needs at least one offset".into(),
            ));
        }
        if request
            .offsets
            .iter()
            .any(|offset| !offset.cursor.is_empty())
        {
            return Err(BrokerError::InvalidArgument(
                "subscription cursors cannot be committed in a transaction".into(),
            ));
        }
        let partitions: Vec<TopicPartition> = request
            .offsets
            .iter()
            .map(|offset| (offset.topic.clone(), offset.partition))
            .collect();
        {
            let state = lock(&self.state);
            self.check_transactional(&state, &request, principal, txn, &partitions)?;
        }
        let offsets = to_committed(&request.offsets);
        let batch = commit_record::encode_transactional(&request.group, &offsets, txn.0, txn.1)
            .map_err(|error| BrokerError::Internal(error.to_string()))?;
        let header = batch::validate(&batch, usize::MAX).map_err(BrokerError::Batch)?;
        let state = self.state.clone();
        let group = request.group.clone();
        let index = partition.key.partition;
        let install: OnDurable = Box::new(move |_base_offset: u64| {
            lock(&state)
                .pending
                .entry(index)
                .or_default()
                .install(&group, txn, &offsets);
        });
        let generation = partition.status().generation;
        let receiver = partition.submit_transactional_commit(
            batch,
            header,
            generation,
            id.as_str().to_string(),
            install,
        )?;
        receiver
            .await
            .map_err(|_| BrokerError::Unavailable("offsets partition stopped".into()))??;
        Ok(accepted(request.offsets))
    }

    /// The member check of a transactional commit: a live member (no
    /// commit from outside the group), its principal, its current or
    /// previous epoch, every partition in its current granted set; then
    /// the pending rules.
    fn check_transactional(
        &self,
        state: &State,
        request: &CommitOffsetsRequest,
        principal: &Principal,
        txn: TxnKey,
        partitions: &[TopicPartition],
    ) -> Result<(), BrokerError> {
        let Some(member) = member_for_commit(state, request, principal)? else {
            return Err(BrokerError::InvalidArgument(
                "a transactional commit needs the member id and epoch of a live member (Consumer::group_metadata)".into(),
            ));
        };
        if let Some((topic, index)) = partitions
            .iter()
            .find(|partition| !member.granted.contains(*partition))
        {
            return Err(BrokerError::NotGranted(format!(
                "{topic}/{index} is not assigned to member {:?} of group {:?} at epoch {}: a consumer that lost a partition cannot commit it in a transaction; abort the transaction",
                request.member_id, request.group, member.epoch
            )));
        }
        let pending = state
            .pending
            .get(&self.partition_index(state, &request.group));
        let refusal = match pending {
            Some(pending) => pending.check(
                &request.group,
                txn,
                partitions,
                self.max_pending_offsets_per_group,
            ),
            None if partitions.len() > self.max_pending_offsets_per_group => {
                Err(PendingRefusal::TooMany {
                    pending: partitions.len(),
                    limit: self.max_pending_offsets_per_group,
                })
            }
            None => Ok(()),
        };
        refusal.map_err(|refusal| match refusal {
            PendingRefusal::Concurrent {
                topic,
                partition,
                holder: (producer_id, epoch),
            } => BrokerError::ConcurrentTransactions(format!(
                "{topic}/{partition} of group {:?} has offsets of producer {producer_id} epoch {epoch} pending; retry after its transaction ends",
                request.group
            )),
            PendingRefusal::TooMany { pending, limit } => BrokerError::Throttled(format!(
                "group {:?} would have {pending} partitions with transactional offsets pending; at most {limit} ([groups] max_pending_offsets_per_group)",
                request.group
            )),
        })
    }

    fn partition_index(&self, state: &State, group: &str) -> u32 {
        sluice_proto::partitioning::offsets_partition_for_group(
            group,
            state.offsets_partitions.max(1),
        )
    }

    /// What a durable marker of `marker` on offsets partition `index`
    /// does, in log order: a commit moves its transaction's pending offsets
    /// into the committed ones, an abort drops them.
    pub fn marker_hook(&self, index: u32, marker: &Marker) -> OnDurable {
        let state = self.state.clone();
        let txn = (marker.producer_id, marker.txn_epoch);
        let commit = marker.commit;
        Box::new(move |_base_offset: u64| {
            let mut state = lock(&state);
            let resolved = match state.pending.get_mut(&index) {
                Some(pending) => pending.resolve(txn, commit),
                None => return,
            };
            for (group, offsets) in resolved {
                super::apply_commits(&mut state, &group, &offsets);
            }
        })
    }
}
