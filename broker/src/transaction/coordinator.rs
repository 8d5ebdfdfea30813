//! The transaction coordinator's IO edge (ADR 0016 §2): the transactional
//! ids whose `__transaction_state` partition this broker serves, their
//! durable state, and the events applied to them through the pure
//! [`state::transition`].
//!
//! - **Location**: `T` lives in partition `murmur2(T) % N` of the
//!   transaction log, as a group lives in `__consumer_offsets`
//!   (`FindCoordinator` with kind TRANSACTION); a request for an id whose
//!   partition is not served and loaded here is `NOT_COORDINATOR`.
//! - **Durability first**: a plan's record is appended through the
//!   partition's pipeline and installed in memory by its `OnDurable`, so
//!   memory never runs ahead of the log; the answer follows.
//! - **One event per id at a time** (an async lock per id); an event that
//!   must wait for the previous transaction's markers releases the lock and
//!   retries for at most `[transactions] end_wait_ms`, then answers
//!   `CONCURRENT_TRANSACTIONS`.
//! - **Takeover**: [`TxnCoordinator::load_partition`] replays the log
//!   (last record per id wins, tombstones forget); once the partition
//!   serves, [`recover`] re-sends every Prepare's markers and aborts every
//!   Ongoing transaction (reason TAKEOVER).
//! - **Expiry**: [`run_expiry`] aborts Ongoing transactions past their
//!   timeout every `[transactions] timeout_check_interval_ms`.

use super::log_record;
use super::markers;
use super::state::{self, EndReason, Event, Limits, Reply, TxnError, TxnMeta, TxnState};
use crate::clients::nameserver_call;
use crate::config::TransactionsConfig;
use crate::error::BrokerError;
use crate::partition::{Partition, Phase};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use sluice_acl::Principal;
use sluice_proto::batch;
use sluice_proto::names::{TransactionalId, TRANSACTION_STATE_TOPIC};
use sluice_proto::partitioning::offsets_partition_for_group;
use sluice_proto::v1::AllocateProducerIdRequest;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Names the transaction-log replay in a partition's tally of lost ranges.
const REPLAY_READER: &str = "transaction log replay";
/// Pause between two tries of an event waiting for markers, in ms.
const WAIT_POLL_MS: u64 = 20;

/// Wall-clock milliseconds since the epoch (timeouts survive a takeover
/// by another broker, so they are wall-clock, not monotonic).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[derive(Debug, Default)]
struct Loaded {
    /// Partition count of `__transaction_state`.
    log_partitions: u32,
    /// Log partitions replayed and served here.
    loaded: HashSet<u32>,
    /// The durable state of every id of the loaded partitions.
    ids: HashMap<String, TxnMeta>,
}

/// How one try of an event ended.
enum Attempt {
    Done(Reply),
    NeedsProducerId,
    Wait(String),
}

pub struct TxnCoordinator {
    loaded: Arc<Mutex<Loaded>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    limits: Limits,
    end_wait: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The broker error a refusal travels as.
pub fn refusal(error: TxnError) -> BrokerError {
    match error {
        TxnError::ProducerFenced(reason) => BrokerError::ProducerFenced(reason),
        TxnError::Abortable(reason) => BrokerError::TransactionAbortable(reason),
        TxnError::InvalidState(reason) => BrokerError::InvalidTransactionState(reason),
        TxnError::Concurrent(reason) => BrokerError::ConcurrentTransactions(reason),
        TxnError::InvalidArgument(reason) => BrokerError::InvalidArgument(reason),
        TxnError::NeedsProducerId => {
            BrokerError::Internal("a producer id was needed and not allocated".into())
        }
    }
}

fn with_fresh(event: &mut Event, fresh: i64) {
    match event {
        Event::Init {
            fresh_producer_id, ..
        }
        | Event::End {
            fresh_producer_id, ..
        }
        | Event::Abort {
            fresh_producer_id, ..
        }
        | Event::Expire { fresh_producer_id } => *fresh_producer_id = Some(fresh),
        Event::Add { .. } | Event::MarkersWritten { .. } => {}
    }
}

impl TxnCoordinator {
    pub fn new(config: &TransactionsConfig) -> Self {
        Self {
            loaded: Arc::new(Mutex::new(Loaded::default())),
            locks: Mutex::new(HashMap::new()),
            limits: Limits {
                max_timeout_ms: config.max_timeout_ms,
                max_participants: config.max_participants_per_transaction,
            },
            end_wait: Duration::from_millis(config.end_wait_ms),
        }
    }

    /// Replays a transaction-log partition; [`recover`] finishes its
    /// transactions once it serves.
    pub async fn load_partition(&self, partition: &Partition) -> Result<(), BrokerError> {
        let count = partition.config().partitions.max(1);
        let index = partition.key.partition;
        let mut ids: HashMap<String, TxnMeta> = HashMap::new();
        let records = crate::internal_log::replay(partition, REPLAY_READER, |offset, key, value| {
            match log_record::decode(key, value) {
                Ok((id, meta)) if offsets_partition_for_group(id.as_str(), count) == index => {
                    match meta {
                        Some(meta) => ids.insert(id.as_str().to_string(), meta),
                        None => ids.remove(id.as_str()),
                    };
                }
                Ok(_) => {
                    tracing::warn!(partition = %partition.key, offset, "skipping a transaction log record of another partition")
                }
                Err(error) => {
                    tracing::warn!(partition = %partition.key, offset, %error, "skipping an undecodable transaction log record")
                }
            }
        })
        .await?;
        let mut loaded = lock(&self.loaded);
        loaded.log_partitions = count;
        loaded
            .ids
            .retain(|id, _| offsets_partition_for_group(id, count) != index);
        let open = ids
            .values()
            .filter(|meta| !matches!(meta.state, TxnState::Empty | TxnState::Complete { .. }))
            .count();
        let ids_count = ids.len();
        loaded.ids.extend(ids);
        loaded.loaded.insert(index);
        tracing::info!(partition = %partition.key, records, ids = ids_count, open, "transaction log replayed; coordinating its transactional ids");
        Ok(())
    }

    /// Forgets the ids of a log partition no longer served here.
    pub fn unload_partition(&self, index: u32) {
        let mut loaded = lock(&self.loaded);
        loaded.loaded.remove(&index);
        let count = loaded.log_partitions.max(1);
        loaded
            .ids
            .retain(|id, _| offsets_partition_for_group(id, count) != index);
    }

    /// The served, loaded log partition of `id`.
    fn log_partition(
        &self,
        shared: &Shared,
        id: &TransactionalId,
    ) -> Result<Arc<Partition>, BrokerError> {
        let not_coordinator = || BrokerError::NotCoordinator(format!("transactional id {id:?}"));
        let (index, loaded) = {
            let loaded = lock(&self.loaded);
            if loaded.log_partitions == 0 {
                return Err(not_coordinator());
            }
            let index = offsets_partition_for_group(id.as_str(), loaded.log_partitions);
            (index, loaded.loaded.contains(&index))
        };
        let partition = shared
            .partition(&PartitionKey::new(TRANSACTION_STATE_TOPIC, index))
            .ok_or_else(not_coordinator)?;
        if !loaded || partition.status().phase != Phase::Serving {
            return Err(not_coordinator());
        }
        Ok(partition)
    }

    /// The durable state of `id`, when coordinated here.
    pub fn describe(&self, id: &str) -> Option<TxnMeta> {
        lock(&self.loaded).ids.get(id).cloned()
    }

    /// `id`'s state for a look from outside: `NOT_COORDINATOR` when its log
    /// partition is not served here, `INVALID_TRANSACTION_STATE` when it is
    /// and the id has no state.
    pub fn look_up(&self, shared: &Shared, id: &TransactionalId) -> Result<TxnMeta, BrokerError> {
        self.log_partition(shared, id)?;
        self.describe(id.as_str()).ok_or_else(|| {
            BrokerError::InvalidTransactionState(format!(
                "transactional id {id} has no state: it was never initialised (InitProducerId)"
            ))
        })
    }

    /// Every id coordinated here with its state.
    pub fn list(&self) -> Vec<(String, TxnMeta)> {
        let loaded = lock(&self.loaded);
        let mut all: Vec<_> = loaded
            .ids
            .iter()
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The log partition index of `id`, if the partition count is known.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        let loaded = lock(&self.loaded);
        (loaded.log_partitions > 0).then(|| offsets_partition_for_group(id, loaded.log_partitions))
    }

    fn id_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.locks);
        // Forget the locks nobody holds or waits for.
        if locks.len() > 1024 {
            locks.retain(|_, held| Arc::strong_count(held) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
    }

    /// Applies `event` to `id`, waiting (at most `end_wait_ms`) behind a
    /// completing transaction; `principal` is who a fresh producer id is
    /// bound to.
    pub async fn handle(
        &self,
        shared: &Arc<Shared>,
        id: &TransactionalId,
        mut event: Event,
        principal: &Principal,
    ) -> Result<Reply, BrokerError> {
        let deadline = Instant::now() + self.end_wait;
        loop {
            match self.attempt(shared, id, &event).await? {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::NeedsProducerId => {
                    let fresh = allocate_producer_id(shared, principal).await?;
                    with_fresh(&mut event, fresh);
                }
                Attempt::Wait(reason) => {
                    if Instant::now() >= deadline {
                        return Err(BrokerError::ConcurrentTransactions(format!(
                            "{reason} (waited {} ms, [transactions] end_wait_ms)",
                            self.end_wait.as_millis()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(WAIT_POLL_MS)).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        shared: &Arc<Shared>,
        id: &TransactionalId,
        event: &Event,
    ) -> Result<Attempt, BrokerError> {
        let id_lock = self.id_lock(id.as_str());
        let _turn = id_lock.lock().await;
        let partition = self.log_partition(shared, id)?;
        let meta = self.describe(id.as_str());
        let plan = match state::transition(meta.as_ref(), event, &self.limits, now_ms()) {
            Ok(plan) => plan,
            Err(TxnError::NeedsProducerId) => return Ok(Attempt::NeedsProducerId),
            Err(TxnError::Concurrent(reason)) => return Ok(Attempt::Wait(reason)),
            Err(error) => return Err(refusal(error)),
        };
        if let Some(record) = &plan.record {
            self.append(&partition, id, record).await?;
            tracing::debug!(transactional_id = %id, event = ?event, state = ?record.state, producer_id = record.producer_id, epoch = record.epoch, "transaction record durable");
            if plan.write_markers {
                tokio::spawn(markers::deliver(shared.clone(), id.clone(), record.clone()));
            }
        }
        if plan.retry_after_complete {
            return Ok(Attempt::Wait(format!(
                "aborting the open transaction of {id} before fencing its producer"
            )));
        }
        Ok(Attempt::Done(plan.reply))
    }

    /// Appends `meta` as `id`'s record; installed in memory once durable.
    async fn append(
        &self,
        partition: &Partition,
        id: &TransactionalId,
        meta: &TxnMeta,
    ) -> Result<(), BrokerError> {
        let bytes = log_record::encode(id, Some(meta));
        let header = batch::validate(&bytes, usize::MAX).map_err(BrokerError::Batch)?;
        let loaded = self.loaded.clone();
        let (key, value) = (id.as_str().to_string(), meta.clone());
        let install = Box::new(move |_base_offset: u64| {
            lock(&loaded).ids.insert(key, value);
        });
        let generation = partition.status().generation;
        let receiver = partition.submit(bytes, header, generation, Some(install))?;
        receiver
            .await
            .map_err(|_| BrokerError::Unavailable("transaction log partition stopped".into()))??;
        Ok(())
    }

    /// Whether `id` still waits for the markers of `txn_epoch` here.
    pub fn awaits_markers(&self, id: &str, txn_epoch: i16) -> bool {
        let loaded = lock(&self.loaded);
        let count = loaded.log_partitions.max(1);
        loaded
            .loaded
            .contains(&offsets_partition_for_group(id, count))
            && loaded.ids.get(id).is_some_and(|meta| {
                matches!(meta.state, TxnState::Prepare { .. }) && meta.txn_epoch == txn_epoch
            })
    }

    /// Ids of log partition `index` (or of every loaded one) in `states`.
    fn ids_in(&self, index: Option<u32>, wanted: impl Fn(&TxnMeta) -> bool) -> Vec<IdState> {
        let loaded = lock(&self.loaded);
        let count = loaded.log_partitions.max(1);
        loaded
            .ids
            .iter()
            .filter(|(id, meta)| {
                wanted(meta)
                    && index.is_none_or(|index| offsets_partition_for_group(id, count) == index)
            })
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect()
    }
}

/// A transactional id and its state.
type IdState = (String, TxnMeta);

/// A fresh producer id bound to `principal` (ADR 0016 §1): a counter from
/// the nameserver, tagged with the cluster's producer-id key.
async fn allocate_producer_id(shared: &Shared, principal: &Principal) -> Result<i64, BrokerError> {
    let allocated = nameserver_call!(
        &shared.clients,
        allocate_producer_id,
        AllocateProducerIdRequest {}
    )?;
    let counter = allocated.producer_id >> sluice_acl::PRODUCER_ID_TAG_BITS;
    shared.producer_ids.issue(counter, principal)
}

/// The principal recorded for an id, for a producer id a takeover or
/// timeout needs (epoch overflow).
fn recorded_principal(meta: &TxnMeta) -> Principal {
    meta.principal
        .parse()
        .unwrap_or_else(|_| sluice_service::anonymous())
}

/// Once log partition `partition` serves: re-sends the markers of every
/// decided transaction and aborts every open one (ADR 0016 §2.3).
pub async fn recover(shared: Arc<Shared>, partition: Arc<Partition>) {
    let mut status = partition.subscribe();
    if status
        .wait_for(|status| matches!(status.phase, Phase::Serving | Phase::Stopped))
        .await
        .is_err()
    {
        return;
    }
    let index = partition.key.partition;
    let coordinator = &shared.transactions;
    for (id, meta) in coordinator.ids_in(Some(index), |meta| {
        matches!(meta.state, TxnState::Prepare { .. })
    }) {
        if let Ok(id) = TransactionalId::new(&id) {
            tokio::spawn(markers::deliver(shared.clone(), id, meta));
        }
    }
    let open = coordinator.ids_in(Some(index), |meta| meta.state == TxnState::Ongoing);
    for (id, meta) in open {
        abort_one(&shared, &id, &meta, EndReason::Takeover).await;
    }
}

async fn abort_one(shared: &Arc<Shared>, id: &str, meta: &TxnMeta, reason: EndReason) {
    let Ok(id) = TransactionalId::new(id) else {
        return;
    };
    let event = match reason {
        EndReason::Timeout => Event::Expire {
            fresh_producer_id: None,
        },
        reason => Event::Abort {
            reason,
            fresh_producer_id: None,
        },
    };
    let principal = recorded_principal(meta);
    match shared
        .transactions
        .handle(shared, &id, event, &principal)
        .await
    {
        Ok(_) => {
            tracing::info!(transactional_id = %id, producer_id = meta.producer_id, epoch = meta.epoch, reason = reason.describe(), "aborted an open transaction")
        }
        Err(error) => {
            tracing::warn!(transactional_id = %id, %error, "could not abort an open transaction; will retry")
        }
    }
}

/// Aborts open transactions past their timeout, every
/// `[transactions] timeout_check_interval_ms`, until `stop`.
pub async fn run_expiry(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval =
        Duration::from_millis(shared.config.transactions.timeout_check_interval_ms.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::wait_until_set(&mut stop) => return,
        }
        let now = now_ms();
        let expired = shared.transactions.ids_in(None, |meta| {
            meta.state == TxnState::Ongoing
                && now >= meta.started_at_ms.saturating_add(meta.timeout_ms)
        });
        for (id, meta) in expired {
            abort_one(&shared, &id, &meta, EndReason::Timeout).await;
        }
    }
}
