//! Transaction operations (ADR 0016 §9): list the transactions every
//! coordinator holds, describe one, abort an open one, and each
//! partition's last-stable-offset lag.
//!
//! Each broker answers `ListTransactions` for the `__transaction_state`
//! partitions it serves, so a listing asks every owner of those partitions
//! once and merges; `DescribeTransaction` and `AbortTransaction` go to the
//! id's coordinator (found with `FindCoordinator` kind TRANSACTION, looked
//! up again while it moves, within the client's `request_timeout_ms`).

use super::Admin;
use crate::cluster::{normalize_address, Cluster};
use crate::ClientError;
use sluice_proto::names::{TransactionalId, TRANSACTION_STATE_TOPIC};
use sluice_proto::v1::{self, TransactionDescription, TransactionState};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::BTreeMap;

/// Transactions found by [`Admin::list_transactions`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransactionListing {
    /// One entry per transactional id, ordered by id.
    pub transactions: Vec<TransactionDescription>,
    /// Transaction-log partitions whose coordinator did not answer (no
    /// live owner, or the call failed), with the reason: the ids they hold
    /// are missing from `transactions`. Empty when the listing is whole.
    pub unanswered: Vec<UnansweredLogPartition>,
}

/// A `__transaction_state` partition left out of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct UnansweredLogPartition {
    /// The partition of `__transaction_state`.
    pub partition: u32,
    /// Why it is missing.
    pub error: String,
}

/// The last-stable-offset lag of one partition (ADR 0016 §3.4): how far
/// read-committed readers stay behind read-uncommitted ones because a
/// transaction is still open.
#[derive(Debug, Clone, PartialEq)]
pub struct LsoLag {
    /// The partition.
    pub partition: u32,
    /// End of durable data.
    pub high_watermark: u64,
    /// The last stable offset; `None` while the owner is still rebuilding
    /// the partition's transaction state (nothing is served
    /// read-committed then).
    pub last_stable_offset: Option<u64>,
    /// `high_watermark - last_stable_offset` in records (offsets): 0 when
    /// no transaction is open here; `None` with the LSO unknown.
    pub lag_records: Option<u64>,
    /// Age of the open transaction holding the LSO back: now minus the
    /// timestamp of its first record in this partition (the producer's
    /// clock). `None` when no transaction with data is open here or the
    /// owner does not report it.
    pub oldest_open_transaction_ms: Option<u64>,
    /// Why this partition has no figures (its owner did not answer).
    pub error: Option<String>,
}

/// Merges brokers' `ListTransactions` answers: one entry per id (an id
/// reported twice, by the old and the new owner of its log partition
/// during a move, keeps the later state: higher producer id and epoch,
/// then the later update), ordered by id.
pub fn merge_listings(
    answers: impl IntoIterator<Item = Vec<TransactionDescription>>,
) -> Vec<TransactionDescription> {
    let mut by_id: BTreeMap<String, TransactionDescription> = BTreeMap::new();
    for transaction in answers.into_iter().flatten() {
        let newer = |known: &TransactionDescription| {
            (
                transaction.producer_id,
                transaction.producer_epoch,
                transaction.updated_at_ms,
            ) > (known.producer_id, known.producer_epoch, known.updated_at_ms)
        };
        match by_id.get(&transaction.transactional_id) {
            Some(known) if !newer(known) => {}
            _ => {
                by_id.insert(transaction.transactional_id.clone(), transaction);
            }
        }
    }
    by_id.into_values().collect()
}

/// `high_watermark - last_stable_offset`, `None` with the LSO unknown. An
/// LSO above the high watermark (never in a correct broker) counts as 0.
pub fn lso_lag_records(high_watermark: u64, last_stable_offset: Option<u64>) -> Option<u64> {
    last_stable_offset.map(|lso| high_watermark.saturating_sub(lso))
}

fn transactional_id(id: &str) -> Result<TransactionalId, ClientError> {
    TransactionalId::new(id)
        .map_err(|error| ClientError::InvalidArgument(format!("transactional id '{id}': {error}")))
}

/// The clearer error for a call naming an id its coordinator has no state
/// for (never initialised, or expired).
fn unknown_id(id: &str, error: ClientError) -> ClientError {
    match error {
        ClientError::InvalidTransactionState(message)
            if message.contains("no producer") || message.contains("no state") =>
        {
            ClientError::InvalidTransactionState(format!(
                "unknown transactional id '{id}': its coordinator has no state for it \
                 (never initialised by a producer, or expired); see `sluice transaction list`"
            ))
        }
        other => other,
    }
}

impl Admin {
    /// Every transaction the coordinators hold, optionally only those in
    /// `states` (empty: all), merged over every owner of a
    /// `__transaction_state` partition. Brokers list at most
    /// 10,000 each (`ListTransactions`' bound); ids the caller may not
    /// `Describe` are left out by the brokers. A log partition whose owner
    /// cannot answer is named in [`TransactionListing::unanswered`]; when no
    /// owner answers at all the first error is returned (e.g.
    /// "transactions are not enabled"), or `UNAVAILABLE` when no log
    /// partition has an owner.
    pub async fn list_transactions(
        &self,
        states: &[TransactionState],
    ) -> Result<TransactionListing, ClientError> {
        list_transactions(&self.cluster, states).await
    }

    /// One transactional id's state at its coordinator: producer id and
    /// epoch, state, participants, timeout, start and why it ended. An id
    /// the coordinator has no state for is `INVALID_TRANSACTION_STATE`
    /// naming it as unknown.
    pub async fn describe_transaction(
        &self,
        id: &str,
    ) -> Result<TransactionDescription, ClientError> {
        let id = transactional_id(id)?;
        let request = v1::DescribeTransactionRequest {
            transactional_id: id.as_str().to_string(),
        };
        let bound = self.cluster.request_timeout();
        let answer = crate::producer::txn_coordinator::at_coordinator(
            &self.cluster,
            id.as_str(),
            "DescribeTransaction",
            bound,
            |mut client| {
                let request = request.clone();
                async move { client.describe_transaction(request).await }
            },
        )
        .await
        .map_err(|error| unknown_id(id.as_str(), error))?;
        answer.transaction.ok_or_else(|| {
            ClientError::Server(SluiceError::new(
                ErrorCode::Internal,
                format!("DescribeTransaction of '{id}' answered no transaction"),
            ))
        })
    }

    /// Aborts `id`'s open transaction (reason ADMIN; needs `Alter` on the
    /// transactional id): the coordinator records the abort, writes abort
    /// markers to every participant and bumps the epoch, so the producer's
    /// next commit is refused. An abort already under way is OK; an id
    /// without an open transaction (or one already committing) is
    /// `INVALID_TRANSACTION_STATE`.
    pub async fn abort_transaction(&self, id: &str) -> Result<(), ClientError> {
        let id = transactional_id(id)?;
        let request = v1::AbortTransactionRequest {
            transactional_id: id.as_str().to_string(),
        };
        let bound = self.cluster.request_timeout();
        crate::producer::txn_coordinator::at_coordinator(
            &self.cluster,
            id.as_str(),
            "AbortTransaction",
            bound,
            |mut client| {
                let request = request.clone();
                async move { client.abort_transaction(request).await }
            },
        )
        .await
        .map_err(|error| unknown_id(id.as_str(), error))?;
        Ok(())
    }

    /// Each partition's last-stable-offset lag (records, and the age of
    /// the open transaction holding it back) from its owner's
    /// `ListOffsets`, ascending by partition; a partition whose owner
    /// cannot answer carries the error.
    pub async fn lso_lag(&self, topic: &str) -> Result<Vec<LsoLag>, ClientError> {
        super::check_topic(topic)?;
        let routes = self.cluster.topic_routes(topic).await?;
        let partitions = u32::try_from(routes.partitions.len()).unwrap_or(u32::MAX);
        let answers = futures::future::join_all((0..partitions).map(|partition| {
            super::list_offsets(&self.cluster, topic, partition, v1::OffsetSpec::Latest, 0)
        }))
        .await;
        Ok((0..partitions)
            .zip(answers)
            .map(|(partition, answer)| match answer {
                Ok(answer) => LsoLag {
                    partition,
                    high_watermark: answer.high_watermark,
                    last_stable_offset: answer.last_stable_offset,
                    lag_records: lso_lag_records(answer.high_watermark, answer.last_stable_offset),
                    oldest_open_transaction_ms: answer.oldest_open_transaction_ms,
                    error: None,
                },
                Err(error) => LsoLag {
                    partition,
                    high_watermark: 0,
                    last_stable_offset: None,
                    lag_records: None,
                    oldest_open_transaction_ms: None,
                    error: Some(error.to_string()),
                },
            })
            .collect())
    }
}

/// The owners of the `__transaction_state` partitions (address → the
/// partitions it owns) from fresh routes, the partitions without a live
/// owner, and the partition count.
async fn log_partition_owners(
    cluster: &Cluster,
) -> Result<(LogOwners, Vec<UnansweredLogPartition>, usize), ClientError> {
    let topic = TRANSACTION_STATE_TOPIC.to_string();
    // Fresh routes: a broker that stopped serving a log partition no longer
    // lists its ids, so a stale owner would hide them.
    match cluster.refresh_routes(std::slice::from_ref(&topic)).await {
        Err(error) if error.code() == Some(ErrorCode::UnknownTopic) => {
            return Err(no_transaction_log())
        }
        result => result?,
    }
    let routes = match cluster.topic_routes(&topic).await {
        Err(error) if error.code() == Some(ErrorCode::UnknownTopic) => {
            return Err(no_transaction_log())
        }
        routes => routes?,
    };
    let mut owners = LogOwners::new();
    let mut unanswered = Vec::new();
    for (index, route) in routes.partitions.iter().enumerate() {
        let partition = u32::try_from(index).unwrap_or(u32::MAX);
        if route.broker_address.is_empty() {
            unanswered.push(UnansweredLogPartition {
                partition,
                error: "no live owner right now".into(),
            });
        } else {
            let address = normalize_address(&route.broker_address);
            owners.entry(address).or_default().push(partition);
        }
    }
    Ok((owners, unanswered, routes.partitions.len()))
}

/// Broker address → the `__transaction_state` partitions it owns.
type LogOwners = BTreeMap<String, Vec<u32>>;

async fn list_transactions(
    cluster: &Cluster,
    states: &[TransactionState],
) -> Result<TransactionListing, ClientError> {
    let (owners, mut unanswered, log_partitions) = log_partition_owners(cluster).await?;
    let request = v1::ListTransactionsRequest {
        states: states.iter().map(|state| *state as i32).collect(),
    };
    let answers = futures::future::join_all(owners.keys().map(|address| {
        let request = request.clone();
        async move {
            let mut client = cluster.broker(address)?;
            cluster
                .unary(
                    "ListTransactions",
                    address,
                    client.list_transactions(request),
                )
                .await
        }
    }))
    .await;
    let mut lists = Vec::new();
    let mut first_error = None;
    for ((_, partitions), answer) in owners.iter().zip(answers) {
        match answer {
            Ok(answer) => lists.push(answer.transactions),
            Err(error) => {
                unanswered.extend(partitions.iter().map(|&partition| UnansweredLogPartition {
                    partition,
                    error: error.to_string(),
                }));
                first_error.get_or_insert(error);
            }
        }
    }
    if lists.is_empty() {
        // Nobody answered: a listing would look empty while it is not.
        return Err(first_error.unwrap_or_else(|| {
            ClientError::Server(SluiceError::new(
                ErrorCode::Unavailable,
                format!(
                    "none of the {log_partitions} {TRANSACTION_STATE_TOPIC} partitions has a \
                     live owner right now; retry shortly"
                ),
            ))
        }));
    }
    unanswered.sort_by_key(|missing| missing.partition);
    Ok(TransactionListing {
        transactions: merge_listings(lists),
        unanswered,
    })
}

fn no_transaction_log() -> ClientError {
    ClientError::Server(SluiceError::new(
        ErrorCode::UnknownTopic,
        format!(
            "the cluster has no transaction log ({TRANSACTION_STATE_TOPIC}): its nameservers \
             predate transactions (ADR 0016); upgrade them"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(id: &str, producer_id: i64, epoch: i32, updated: u64) -> TransactionDescription {
        TransactionDescription {
            transactional_id: id.into(),
            producer_id,
            producer_epoch: epoch,
            updated_at_ms: updated,
            ..TransactionDescription::default()
        }
    }

    #[test]
    fn listings_merge_to_one_entry_per_id_ordered_by_id() {
        let merged = merge_listings(vec![
            vec![described("b", 1, 0, 10), described("a", 2, 0, 10)],
            vec![],
            vec![described("c", 3, 5, 10)],
        ]);
        let ids: Vec<&str> = merged
            .iter()
            .map(|txn| txn.transactional_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn an_id_reported_by_two_owners_keeps_its_later_state() {
        // The old owner still lists epoch 3; the new owner has epoch 4.
        for answers in [
            vec![
                vec![described("t", 7, 3, 99)],
                vec![described("t", 7, 4, 50)],
            ],
            vec![
                vec![described("t", 7, 4, 50)],
                vec![described("t", 7, 3, 99)],
            ],
        ] {
            let merged = merge_listings(answers);
            assert_eq!(merged.len(), 1);
            assert_eq!(merged[0].producer_epoch, 4);
        }
        // Same producer and epoch: the later update wins.
        let merged = merge_listings(vec![
            vec![described("t", 7, 4, 60)],
            vec![described("t", 7, 4, 70)],
        ]);
        assert_eq!(merged[0].updated_at_ms, 70);
        // A fresh producer id (epoch overflow) outranks the old one's epoch.
        let merged = merge_listings(vec![
            vec![described("t", 7, 32_766, 60)],
            vec![described("t", 8, 0, 70)],
        ]);
        assert_eq!(merged[0].producer_id, 8);
    }

    #[test]
    fn lso_lag_is_the_distance_to_the_high_watermark_and_unknown_without_an_lso() {
        assert_eq!(lso_lag_records(100, Some(100)), Some(0));
        assert_eq!(lso_lag_records(100, Some(40)), Some(60));
        assert_eq!(lso_lag_records(100, None), None);
        assert_eq!(lso_lag_records(0, Some(0)), Some(0));
        assert_eq!(lso_lag_records(u64::MAX, Some(0)), Some(u64::MAX));
        // Never negative, never a panic.
        assert_eq!(lso_lag_records(5, Some(9)), Some(0));
    }

    #[test]
    fn unknown_ids_are_named_and_other_errors_pass_through() {
        let named = unknown_id(
            "copier-7",
            ClientError::InvalidTransactionState(
                "transactional id copier-7 has no state: it was never initialised".into(),
            ),
        );
        let text = named.to_string();
        assert!(
            text.contains("unknown transactional id 'copier-7'"),
            "{text}"
        );
        assert_eq!(named.code(), Some(ErrorCode::InvalidTransactionState));
        let other = unknown_id(
            "copier-7",
            ClientError::InvalidTransactionState("the transaction is already committing".into()),
        );
        assert!(
            matches!(other, ClientError::InvalidTransactionState(ref m) if m.contains("committing"))
        );
        assert!(transactional_id("").is_err());
        assert!(transactional_id(&"x".repeat(250)).is_err());
        assert!(transactional_id("copier-7").is_ok());
    }
}
