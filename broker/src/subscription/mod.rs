//! Subscriptions with queue semantics (ADR 0011): one dispatcher task per
//! (partition, subscription) served here, the consumers' `Subscribe`
//! streams, and the durable cursor of acknowledged messages.
//!
//! The task owns a pure [`dispatcher::Dispatcher`] and does its IO: it
//! scans the partition's log (decoding records to apply the selector and
//! hash keys), sends deliveries as the stored batches plus the offsets meant
//! for the consumer, commits the cursor to the subscription's coordinator
//! (the owner of its `__consumer_offsets` partition, as for groups) before
//! answering acknowledgements, and writes dead letters with the SDK's
//! producer. Everything is bounded: the window of held messages and bytes,
//! each consumer's credit and response queue, the command queue.
//!
//! One file per concern:
//! - `mod.rs`: the [`Registry`] of running dispatchers (start, stop, stats,
//!   eviction, explain), the commands a dispatcher takes, the limits, the
//!   cursor group's name and the subscription's selector;
//! - `consumer_stream.rs`: one consumer's `Subscribe` stream ([`serve`]):
//!   the open, its checks, and forwarding requests to the dispatcher;
//! - `task.rs`: the dispatcher task's state besides the pure dispatcher and
//!   its IO (scanning the log, read-ahead batches, delayed records,
//!   carrying out deliveries and dead letters);
//! - `task_loop.rs`: the dispatcher task's life: loading, its loop of
//!   commands, timers, cursor commits and dead-letter writes, and stopping;
//! - `cursor_store.rs`: loading the subscription and its cursor, and
//!   fetching and committing cursors at the coordinator;
//! - `dead_letter.rs`: writing a dead letter with the SDK's producer;
//! - `sparse_delivery.rs`: a few records of a large batch sent as
//!   single-record batches;
//! - `txn_acks.rs`: transactional acknowledgements (ADR 0016 §6): their
//!   verification with the transaction's coordinator and the transaction
//!   markers handed to the dispatcher;
//! - `dispatcher.rs` the pure state machine, `cursor.rs` acknowledged
//!   ranges and the persisted cursor, `start.rs` where reading starts.

mod consumer_stream;
mod cursor;
mod cursor_store;
mod dead_letter;
mod dispatcher;
mod sparse_delivery;
pub mod start;
mod task;
mod task_loop;
mod txn_acks;

pub use consumer_stream::serve;
pub use cursor::{AckedRanges, CursorSnapshot};
pub(crate) use cursor_store::{commit_cursor, fetch_cursor};
pub use dispatcher::{Counters, Explanation, Handled, TxnAck};

use crate::error::BrokerError;
use crate::partition::Partition;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use dispatcher::ConsumerId;
use futures::Stream;
use sluice_proto::batch::control::Marker;
use sluice_proto::v1::{SubscribeResponse, Subscription};
use sluice_selector::{Selector, SelectorKind};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use task_loop::run_dispatcher;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub type SubscribeResponseStream =
    Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// Longest a consumer may take to send `open` after starting the stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a dispatcher tries to load its subscription and cursor.
const LOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Commands queued to one dispatcher; a consumer whose command does not
/// fit waits (its own stream stalls, nobody else's).
const COMMAND_QUEUE: usize = 4096;
/// Commands handled before the dispatcher decides deliveries again.
const COMMANDS_PER_STEP: usize = 512;
/// Responses queued to one consumer beyond its credit (receipts, status).
/// A consumer that lets more pile up is not reading and is disconnected.
const RESPONSE_QUEUE_SLACK: usize = 1024;
/// Most offsets in one ack or nack request.
pub const MAX_OFFSETS_PER_REQUEST: usize = 10_000;
/// Bytes read from the log per scan step.
const SCAN_READ_BYTES: usize = 1024 * 1024;
/// Pause before retrying a failed cursor commit or log read.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Longest a single nack delay may be (a day); longer requests are capped.
const MAX_NACK_DELAY_MS: u64 = 86_400_000;
/// Cursor bytes committed per second at most, per dispatcher: a cursor of
/// N bytes is committed at most every N / this seconds (and at most every
/// `[subscriptions] ack_flush_interval_ms`).
const CURSOR_COMMIT_BYTES_PER_SECOND: f64 = 4.0 * 1024.0 * 1024.0;
/// Group-name prefix under which subscription cursors are committed.
const CURSOR_GROUP_PREFIX: &str = "__sub.";

/// The dispatchers running on this broker.
#[derive(Default)]
pub struct Registry {
    dispatchers: Mutex<HashMap<(PartitionKey, String), mpsc::Sender<Command>>>,
    next_consumer_id: AtomicU64,
    dead_letter_producer: tokio::sync::OnceCell<sluice_client::Producer>,
}

impl Registry {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(PartitionKey, String), mpsc::Sender<Command>>> {
        self.dispatchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The running dispatcher of (`key`, `subscription`), started if needed.
    fn dispatcher(
        &self,
        shared: &Arc<Shared>,
        key: &PartitionKey,
        subscription: &str,
        partition: Arc<Partition>,
    ) -> mpsc::Sender<Command> {
        let mut dispatchers = self.lock();
        let map_key = (key.clone(), subscription.to_string());
        if let Some(sender) = dispatchers.get(&map_key) {
            if !sender.is_closed() {
                return sender.clone();
            }
        }
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE);
        dispatchers.insert(map_key, sender.clone());
        tokio::spawn(run_dispatcher(
            shared.clone(),
            key.clone(),
            subscription.to_string(),
            partition,
            receiver,
            sender.clone(),
        ));
        sender
    }

    /// Runs `change` while no dispatcher of (`key`, `subscription`) runs
    /// here and none can start (issue 15: a cursor reset); consumers
    /// opening meanwhile queue for the dispatcher started after it, which
    /// loads the cursor `change` committed. `None` (nothing done) while a
    /// dispatcher runs: it stops `[subscriptions] idle_stop_ms` after its
    /// last consumer closed.
    pub(crate) async fn without_dispatcher<T>(
        &self,
        shared: &Arc<Shared>,
        key: &PartitionKey,
        subscription: &str,
        partition: Arc<Partition>,
        change: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE);
        {
            let mut dispatchers = self.lock();
            let map_key = (key.clone(), subscription.to_string());
            if dispatchers
                .get(&map_key)
                .is_some_and(|running| !running.is_closed())
            {
                return None;
            }
            dispatchers.insert(map_key, sender.clone());
        }
        let result = change.await;
        tokio::spawn(run_dispatcher(
            shared.clone(),
            key.clone(),
            subscription.to_string(),
            partition,
            receiver,
            sender,
        ));
        Some(result)
    }

    fn remove(&self, key: &PartitionKey, subscription: &str, sender: &mpsc::Sender<Command>) {
        let mut dispatchers = self.lock();
        let map_key = (key.clone(), subscription.to_string());
        if dispatchers
            .get(&map_key)
            .is_some_and(|current| current.same_channel(sender))
        {
            dispatchers.remove(&map_key);
        }
    }

    fn senders_of(&self, key: &PartitionKey) -> Vec<(String, mpsc::Sender<Command>)> {
        self.lock()
            .iter()
            .filter(|((partition, _), _)| partition == key)
            .map(|((_, subscription), sender)| (subscription.clone(), sender.clone()))
            .collect()
    }

    /// Statistics of every subscription with a running dispatcher on
    /// partition `key` (those without consumers for a while have none; read
    /// their cursor from the coordinator instead).
    pub async fn stats(&self, key: &PartitionKey) -> Vec<SubscriptionStats> {
        let mut all = Vec::new();
        for (_, sender) in self.senders_of(key) {
            let (reply, answer) = oneshot::channel();
            if sender.send(Command::Stats { reply }).await.is_ok() {
                if let Ok(stats) = answer.await {
                    all.push(stats);
                }
            }
        }
        all
    }

    /// Backlog eviction (ADR 0012): makes the running dispatcher of
    /// (`key`, `subscription`) skip every message below `offset` (it then
    /// commits its cursor). Returns how many unacknowledged messages it
    /// skipped, or None when no dispatcher runs here (change the committed
    /// cursor instead).
    pub async fn evict_before(
        &self,
        key: &PartitionKey,
        subscription: &str,
        offset: u64,
    ) -> Option<u64> {
        let sender = self
            .senders_of(key)
            .into_iter()
            .find(|(name, _)| name == subscription)?
            .1;
        let (reply, answer) = oneshot::channel();
        sender.send(Command::Evict { offset, reply }).await.ok()?;
        answer.await.ok()
    }

    /// The marker of a transaction in which `subscription` acknowledged
    /// messages of partition `key` (ADR 0016 §6): its dispatcher (started
    /// here if none runs) resolves them; answered once the resolution is
    /// durable in the cursor.
    pub(crate) async fn resolve_transaction(
        &self,
        shared: &Arc<Shared>,
        key: &PartitionKey,
        subscription: &str,
        marker: Marker,
    ) -> Result<(), BrokerError> {
        sluice_proto::names::GroupName::new(subscription).map_err(|error| {
            BrokerError::InvalidArgument(error.to_string().replace("group", "subscription"))
        })?;
        cursor_group(subscription)?;
        let Some(partition) = shared.partition(key) else {
            return Err(shared.not_served_error(&key.topic, key.partition).await);
        };
        let not_owner = || BrokerError::NotOwner {
            topic: key.topic.clone(),
            partition: key.partition,
        };
        let sender = self.dispatcher(shared, key, subscription, partition);
        let (reply, answer) = oneshot::channel();
        sender
            .send(Command::Marker { marker, reply })
            .await
            .map_err(|_| not_owner())?;
        answer.await.map_err(|_| not_owner())?
    }

    /// Where message `offset` of partition `key` stands in `subscription`,
    /// if its dispatcher runs here.
    pub async fn explain(
        &self,
        key: &PartitionKey,
        subscription: &str,
        offset: u64,
    ) -> Option<Explanation> {
        let sender = self
            .senders_of(key)
            .into_iter()
            .find(|(name, _)| name == subscription)?
            .1;
        let (reply, answer) = oneshot::channel();
        sender.send(Command::Explain { offset, reply }).await.ok()?;
        answer.await.ok()
    }
}

/// One subscription's state on one partition, from its running dispatcher.
#[derive(Debug, Clone)]
pub struct SubscriptionStats {
    pub subscription: String,
    /// Every offset below is acknowledged (or filtered, expired,
    /// dead-lettered).
    pub mark_delete: u64,
    /// Next offset the dispatcher reads.
    pub read_position: u64,
    /// Read and not yet acknowledged (delivered, waiting, delayed).
    pub unacknowledged: u64,
    pub in_flight: u64,
    pub consumers: u32,
    pub counters: Counters,
}

enum Command {
    Open {
        consumer: ConsumerId,
        name: String,
        priority: u32,
        permits: u64,
        responses: mpsc::Sender<Result<SubscribeResponse, Status>>,
        opened: oneshot::Sender<Result<(), BrokerError>>,
    },
    Flow {
        consumer: ConsumerId,
        permits: u64,
    },
    Ack {
        consumer: ConsumerId,
        request_id: u64,
        offsets: Vec<u64>,
        cumulative: Option<u64>,
    },
    Nack {
        consumer: ConsumerId,
        offsets: Vec<u64>,
        delay_ms: u64,
    },
    Close {
        consumer: ConsumerId,
    },
    Stats {
        reply: oneshot::Sender<SubscriptionStats>,
    },
    Explain {
        offset: u64,
        reply: oneshot::Sender<Explanation>,
    },
    /// Backlog eviction (ADR 0012): skip everything below `offset`.
    Evict {
        offset: u64,
        reply: oneshot::Sender<u64>,
    },
    /// Acknowledgements inside a transaction (checked, then verified with
    /// the transaction's coordinator).
    TxnAck {
        consumer: ConsumerId,
        request_id: u64,
        offsets: Vec<u64>,
        transaction: TxnAck,
    },
    /// The marker of a transaction this subscription may take part in;
    /// answered once its resolution is durable.
    Marker {
        marker: Marker,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
}

/// The coordinator group under which a subscription's cursors are kept.
pub(crate) fn cursor_group(subscription: &str) -> Result<String, BrokerError> {
    let group = format!("{CURSOR_GROUP_PREFIX}{subscription}");
    if group.len() > sluice_proto::limits::MAX_NAME_BYTES {
        return Err(BrokerError::InvalidArgument(format!(
            "subscription name {subscription:?} is too long: at most {} bytes",
            sluice_proto::limits::MAX_NAME_BYTES - CURSOR_GROUP_PREFIX.len()
        )));
    }
    Ok(group)
}

pub(crate) fn selector_of(subscription: &Subscription) -> Result<Selector, BrokerError> {
    let kind = match subscription.selector_kind() {
        sluice_proto::v1::SelectorKind::All => SelectorKind::All,
        sluice_proto::v1::SelectorKind::Tag => SelectorKind::Tag,
        sluice_proto::v1::SelectorKind::Sql => SelectorKind::Sql,
    };
    if kind == SelectorKind::All {
        return Ok(Selector::all());
    }
    Selector::parse(kind, &subscription.selector).map_err(|error| {
        BrokerError::InvalidSelector(format!(
            "selector of subscription {:?}: {error}",
            subscription.name
        ))
    })
}
