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

mod cursor;
mod dispatcher;
pub mod start;

pub use cursor::{AckedRanges, CursorSnapshot};
pub use dispatcher::{Counters, Explanation, Handled};

use crate::clients::{nameserver_call, request};
use crate::error::BrokerError;
use crate::partition::{Partition, Phase};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use bytes::Bytes;
use dispatcher::{Action, ConsumerId, Dispatcher, Scanned, Settings};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use sluice_proto::batch::{self, BatchIter, Record};
use sluice_proto::headers;
use sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;
use sluice_proto::names::{GroupName, TopicName};
use sluice_proto::v1::subscribe_request::Request as ConsumerRequest;
use sluice_proto::v1::subscribe_response::Response as ToConsumer;
use sluice_proto::v1::{
    AckReceipt, AckResult, CommitOffsetsRequest, ConsumerStatus, Delivery, FetchOffsetsRequest,
    FindCoordinatorRequest, GetSubscriptionRequest, PartitionOffset, SubscribeOpened,
    SubscribeRequest, SubscribeResponse, Subscription, SubscriptionType, TopicPartitions,
};
use sluice_proto::ErrorCode;
use sluice_selector::{Selector, SelectorKind};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

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
}

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
    let result = forward_requests(consumer, &mut requests, &responses, &dispatcher).await;
    // Whatever ended the stream, the consumer is gone: what it held is
    // delivered again.
    let _ = dispatcher.send(Command::Close { consumer }).await;
    result
}

async fn forward_requests(
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
        let command =
            match request.request {
                Some(ConsumerRequest::Flow(flow)) => Command::Flow {
                    consumer,
                    permits: u64::from(flow.permits),
                },
                Some(ConsumerRequest::Ack(ack)) => {
                    if ack.offsets.len() > MAX_OFFSETS_PER_REQUEST {
                        return Err(too_many_offsets(ack.offsets.len()));
                    }
                    Command::Ack {
                        consumer,
                        request_id: ack.request_id,
                        offsets: ack.offsets,
                        cumulative: ack.cumulative_offset,
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
                Some(ConsumerRequest::Open(_)) => return Err(BrokerError::InvalidArgument(
                    "a subscribe stream is opened once; start a new stream for another partition"
                        .into(),
                )),
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

fn too_many_offsets(count: usize) -> BrokerError {
    BrokerError::InvalidArgument(format!(
        "{count} offsets in one request; at most {MAX_OFFSETS_PER_REQUEST}"
    ))
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

/// A stable 64-bit hash of a record key (FNV-1a): parked keys are
/// persisted by hash, so it must not change between brokers or versions.
fn key_hash(key: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
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

struct ConsumerLink {
    responses: mpsc::Sender<Result<SubscribeResponse, Status>>,
}

/// The dispatcher task's state besides the pure dispatcher.
struct Task {
    shared: Arc<Shared>,
    key: PartitionKey,
    subscription: Subscription,
    group: String,
    selector: Selector,
    partition: Arc<Partition>,
    dispatcher: Dispatcher,
    consumers: HashMap<ConsumerId, ConsumerLink>,
    /// Batches read ahead: base offset → (end offset, bytes).
    batches: BTreeMap<u64, (u64, Bytes)>,
    batch_bytes: u64,
    /// Delayed records kept in memory (single-record batches) by offset.
    delayed_records: HashMap<u64, Bytes>,
    delayed_records_bytes: u64,
    /// Acknowledgements applied but not yet in a started cursor commit.
    receipts_waiting: Vec<(ConsumerId, AckReceipt)>,
}

impl Task {
    /// The dispatcher's clock: Unix milliseconds, because delivery times
    /// and expiry come from producers' wall clocks. A clock stepping back
    /// only delays timeouts and redeliveries.
    fn now_ms(&self) -> u64 {
        u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0)
    }

    fn send(&mut self, consumer: ConsumerId, response: ToConsumer) {
        let Some(link) = self.consumers.get(&consumer) else {
            return;
        };
        let message = SubscribeResponse {
            response: Some(response),
        };
        if link.responses.try_send(Ok(message)).is_err() {
            // Full: the consumer stopped reading beyond its credit; closed:
            // it left. Either way what it holds goes to others.
            tracing::debug!(consumer, partition = %self.key, "consumer not reading; dropping it");
            self.drop_consumer(consumer);
        }
    }

    fn drop_consumer(&mut self, consumer: ConsumerId) {
        self.consumers.remove(&consumer);
        self.dispatcher.remove_consumer(consumer);
        self.receipts_waiting.retain(|(id, _)| *id != consumer);
    }

    fn fail_all(&mut self, error: BrokerError) {
        let status: Status = SluiceError::from(error).into();
        for (_, link) in self.consumers.drain() {
            let _ = link.responses.try_send(Err(status.clone()));
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Open {
                consumer,
                name,
                priority,
                permits,
                responses,
                opened,
            } => {
                if self.consumers.len()
                    >= self.shared.config.subscriptions.max_consumers_per_partition
                {
                    let _ = opened.send(Err(BrokerError::Throttled(format!(
                        "subscription {:?} has {} consumers on {}, the most allowed",
                        self.subscription.name,
                        self.consumers.len(),
                        self.key
                    ))));
                    return;
                }
                if let Err(error) = self
                    .dispatcher
                    .add_consumer(consumer, name, priority, permits)
                {
                    let _ = opened.send(Err(BrokerError::ConsumerBusy(format!(
                        "{error} ({} of subscription {:?})",
                        self.key, self.subscription.name
                    ))));
                    return;
                }
                self.consumers.insert(consumer, ConsumerLink { responses });
                let active = !matches!(self.dispatcher.kind(), SubscriptionType::Failover);
                self.send(
                    consumer,
                    ToConsumer::Opened(SubscribeOpened {
                        subscription: Some(self.subscription.clone()),
                        consumer_id: consumer,
                        active,
                    }),
                );
                let _ = opened.send(Ok(()));
            }
            Command::Flow { consumer, permits } => {
                self.dispatcher.flow(consumer, permits);
            }
            Command::Ack {
                consumer,
                request_id,
                offsets,
                cumulative,
            } => {
                if !self.consumers.contains_key(&consumer) {
                    return;
                }
                let mut receipt = AckReceipt {
                    request_id,
                    acknowledged: Vec::with_capacity(offsets.len()),
                    rejected: Vec::new(),
                };
                for offset in offsets {
                    match self.dispatcher.ack(consumer, offset) {
                        Ok(()) => receipt.acknowledged.push(offset),
                        Err(code) => receipt.rejected.push(AckResult {
                            offset,
                            error: code as i32,
                        }),
                    }
                }
                if let Some(offset) = cumulative {
                    match self.dispatcher.ack_cumulative(consumer, offset) {
                        Ok(()) => receipt.acknowledged.push(offset),
                        Err(code) => receipt.rejected.push(AckResult {
                            offset,
                            error: code as i32,
                        }),
                    }
                }
                for offset in &receipt.acknowledged {
                    self.prune_batch_of(*offset);
                }
                if receipt.acknowledged.is_empty() {
                    // Nothing to make durable: answer now.
                    self.send(consumer, ToConsumer::AckReceipt(receipt));
                } else {
                    self.receipts_waiting.push((consumer, receipt));
                }
            }
            Command::Nack {
                consumer,
                offsets,
                delay_ms,
            } => {
                let now_ms = self.now_ms();
                let delay = (delay_ms > 0).then_some(delay_ms);
                for offset in offsets {
                    // A nack for something not held is moot: it is or will
                    // be delivered again anyway.
                    let _ = self.dispatcher.nack(consumer, offset, delay, now_ms);
                }
            }
            Command::Close { consumer } => self.drop_consumer(consumer),
            Command::Stats { reply } => {
                let _ = reply.send(SubscriptionStats {
                    subscription: self.subscription.name.clone(),
                    mark_delete: self.dispatcher.mark_delete(),
                    read_position: self.dispatcher.read_position(),
                    unacknowledged: self.dispatcher.unacknowledged() as u64,
                    in_flight: self.dispatcher.in_flight() as u64,
                    consumers: u32::try_from(self.consumers.len()).unwrap_or(u32::MAX),
                    counters: self.dispatcher.counters(),
                });
            }
            Command::Explain { offset, reply } => {
                let _ = reply.send(self.dispatcher.explain(offset));
            }
            Command::Evict { offset, reply } => {
                let _ = reply.send(self.dispatcher.evict_before(offset));
            }
        }
    }

    /// Reads ahead while the window has room.
    async fn scan(&mut self) -> Result<(), BrokerError> {
        loop {
            let status = self.partition.status();
            let position = self.dispatcher.read_position();
            if position < status.log_start_offset {
                // Retention removed what the cursor had not reached.
                self.dispatcher.skip_to(status.log_start_offset);
                continue;
            }
            if position >= status.high_watermark
                || self.dispatcher.window_room() == 0
                || self.batch_bytes >= self.shared.config.subscriptions.window_bytes
            {
                return Ok(());
            }
            let bytes = match self.partition.read(position, SCAN_READ_BYTES).await {
                Ok(bytes) => bytes,
                Err(BrokerError::DataLost { start, end, .. }) => {
                    self.skip_lost(position, start, end);
                    continue;
                }
                Err(error) => return Err(error),
            };
            if bytes.is_empty() {
                return Ok(());
            }
            let mut progressed = false;
            for item in BatchIter::new(&bytes) {
                let (start, header, slice) = item.map_err(BrokerError::Batch)?;
                if header.end_offset() <= self.dispatcher.read_position() {
                    continue;
                }
                let batch = bytes.slice(start..start + slice.len());
                let records = match batch::decode(&batch, MAX_UNCOMPRESSED_RECORDS_BYTES) {
                    Ok((_, records)) => records,
                    Err(error) => {
                        // The stores checked its CRC, so this is a poison
                        // batch that bypassed the produce path's check:
                        // nobody can read it. Step over it (counted).
                        tracing::error!(partition = %self.key, base_offset = header.base_offset,
                            end_offset = header.end_offset(), %error,
                            "skipping a batch whose records cannot be decoded in subscription {:?}",
                            self.subscription.name);
                        self.dispatcher.skip_undecodable(header.end_offset());
                        Vec::new()
                    }
                };
                let scanned = self.classify(&records, header.end_offset());
                let now_ms = self.now_ms();
                self.dispatcher.add_scanned(&scanned, now_ms);
                self.dispatcher.skip_to(header.end_offset());
                // Batches holding only delayed messages are read again when
                // those are due, so a million delayed messages do not pin
                // their bytes.
                if self
                    .dispatcher
                    .holds_undelayed_in(header.base_offset, header.end_offset())
                {
                    self.batch_bytes += batch.len() as u64;
                    self.batches
                        .insert(header.base_offset, (header.end_offset(), batch));
                } else {
                    self.keep_delayed_records(records, header.writer_epoch);
                }
                progressed = true;
                if self.dispatcher.window_room() == 0 {
                    break;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Steps the scan at `position` over the accepted-lost `start..end`
    /// (warned once per pass, counted in the subscription's stats).
    fn skip_lost(&mut self, position: u64, start: u64, end: u64) {
        tracing::warn!(partition = %self.key, subscription = %self.subscription.name,
            lost_start = start, lost_end = end, skipped = end.saturating_sub(position),
            "skipping offsets accepted as lost; the subscription resumes after them");
        self.dispatcher.skip_lost(end);
    }

    fn classify(&self, records: &[Record], batch_end: u64) -> Vec<Scanned> {
        let from = self.dispatcher.read_position();
        let now_ms = self.now_ms();
        let topic_ttl_ms = self.partition.config().message_ttl_ms;
        records
            .iter()
            .filter(|record| record.offset >= from)
            .map(|record| {
                let timestamp_ms = u64::try_from(record.timestamp_ms).unwrap_or(0);
                let message_ttl_ms = headers::number(&record.headers, headers::TTL_MS)
                    .map(|ttl| ttl.min(headers::MAX_TTL_MS));
                let ttl_ms = match (topic_ttl_ms, message_ttl_ms) {
                    (0, None) => None,
                    (0, Some(message)) => Some(message),
                    (topic, None) => Some(topic),
                    (topic, Some(message)) => Some(topic.min(message)),
                };
                Scanned {
                    offset: record.offset,
                    key_hash: record.key.as_deref().map(key_hash),
                    selected: self.selector.matches(record),
                    deliver_at_ms: headers::number(&record.headers, headers::DELIVER_AT_MS)
                        .map(|at| at.min(now_ms.saturating_add(headers::MAX_DELAY_MS))),
                    expire_at_ms: ttl_ms.map(|ttl| timestamp_ms.saturating_add(ttl)),
                    ends_batch: record.offset + 1 == batch_end,
                }
            })
            .collect()
    }

    /// Drops read-ahead batches that hold no message still to be delivered
    /// from memory (all acknowledged, or only delayed ones): from the front
    /// on every pass, and all of them when the read-ahead is half full.
    fn prune_batches(&mut self) {
        let sweep_all = self.batch_bytes >= self.shared.config.subscriptions.window_bytes / 2;
        let mut unneeded = Vec::new();
        for (base, (end, _)) in &self.batches {
            if !self.dispatcher.holds_undelayed_in(*base, *end) {
                unneeded.push(*base);
            } else if !sweep_all {
                break;
            }
        }
        for base in unneeded {
            if let Some((_, bytes)) = self.batches.remove(&base) {
                self.batch_bytes -= bytes.len() as u64;
            }
        }
    }

    /// Keeps the delayed records of a batch that is not kept, each as a
    /// single-record batch, while `[subscriptions] delayed_records_bytes`
    /// allows: when they come due they are sent from memory instead of
    /// reading their whole batch back from the stores (which bounded the
    /// firing rate of a million delayed messages).
    fn keep_delayed_records(&mut self, records: Vec<Record>, writer_epoch: u32) {
        let budget = self.shared.config.subscriptions.delayed_records_bytes;
        if self.delayed_records_bytes >= budget {
            // Drop what expired or was evicted while delayed.
            let dispatcher = &self.dispatcher;
            let mut freed = 0u64;
            self.delayed_records.retain(|offset, single| {
                let keep = dispatcher.is_delayed(*offset);
                if !keep {
                    freed += single.len() as u64;
                }
                keep
            });
            self.delayed_records_bytes -= freed;
        }
        for record in records {
            if self.delayed_records_bytes >= budget {
                return;
            }
            if !self.dispatcher.is_delayed(record.offset) {
                continue;
            }
            let offset = record.offset;
            let single = single_record_batch(record, writer_epoch);
            self.delayed_records_bytes += single.len() as u64;
            self.delayed_records.insert(offset, single);
        }
    }

    /// Drops the batch holding `offset` if nothing in it is still to be
    /// delivered (checked on each acknowledgement, so read-back batches of
    /// delayed messages do not pile up behind an old mark-delete offset).
    fn prune_batch_of(&mut self, offset: u64) {
        let Some((base, end)) = self
            .batches
            .range(..=offset)
            .next_back()
            .filter(|(_, (end, _))| offset < *end)
            .map(|(base, (end, _))| (*base, *end))
        else {
            return;
        };
        if !self.dispatcher.holds_undelayed_in(base, end) {
            if let Some((_, bytes)) = self.batches.remove(&base) {
                self.batch_bytes -= bytes.len() as u64;
            }
        }
    }

    /// Reads back the batches of `offsets` that are not in memory (delayed
    /// messages that came due).
    async fn load_batches(&mut self, offsets: &[u64]) {
        for offset in offsets {
            if self.batch_of(*offset).is_some() {
                continue;
            }
            if let Some(single) = self.delayed_records.remove(offset) {
                self.delayed_records_bytes -= single.len() as u64;
                self.batch_bytes += single.len() as u64;
                self.batches.insert(*offset, (*offset + 1, single));
                continue;
            }
            match self.partition.read(*offset, 1).await {
                Ok(bytes) => {
                    if let Some(Ok((start, header, slice))) = BatchIter::new(&bytes).next() {
                        if header.base_offset <= *offset && *offset < header.end_offset() {
                            let batch = bytes.slice(start..start + slice.len());
                            self.batch_bytes += batch.len() as u64;
                            self.batches
                                .insert(header.base_offset, (header.end_offset(), batch));
                        }
                    }
                }
                Err(BrokerError::DataLost { start, end, .. }) => {
                    tracing::warn!(partition = %self.key, subscription = %self.subscription.name,
                        offset, lost_start = start, lost_end = end,
                        "a scanned message lies in a range accepted as lost since; it is not delivered");
                    self.dispatcher.lost_after_scan(*offset);
                }
                Err(error) => {
                    tracing::debug!(partition = %self.key, offset, %error, "cannot read a due message back; it is retried after its ack timeout");
                }
            }
        }
    }

    fn batch_of(&self, offset: u64) -> Option<(u64, Bytes)> {
        self.batches
            .range(..=offset)
            .next_back()
            .filter(|(_, (end, _))| offset < *end)
            .map(|(base, (_, bytes))| (*base, bytes.clone()))
    }

    /// Carries out the dispatcher's decisions; dead letters become futures.
    async fn execute(&mut self, actions: Vec<Action>, dead_letters: &mut DeadLetters) {
        for action in actions {
            match action {
                Action::Deliver { consumer, messages } => {
                    let offsets: Vec<u64> = messages.iter().map(|(offset, _)| *offset).collect();
                    self.load_batches(&offsets).await;
                    self.deliver(consumer, messages);
                }
                Action::Status { consumer, active } => {
                    self.send(consumer, ToConsumer::Status(ConsumerStatus { active }));
                }
                Action::DeadLetter { offset, deliveries } => {
                    self.load_batches(&[offset]).await;
                    let record = self.batch_of(offset).and_then(|(_, batch)| {
                        batch::decode(&batch, MAX_UNCOMPRESSED_RECORDS_BYTES)
                            .ok()
                            .and_then(|(_, records)| {
                                records.into_iter().find(|record| record.offset == offset)
                            })
                    });
                    let Some(record) = record else {
                        tracing::warn!(partition = %self.key, offset, "dead letter's batch is gone; retrying later");
                        self.dispatcher.dead_letter_failed(offset);
                        continue;
                    };
                    dead_letters.push(
                        write_dead_letter(
                            self.shared.clone(),
                            self.key.clone(),
                            self.subscription.clone(),
                            record,
                            deliveries,
                        )
                        .map(move |result| (offset, result))
                        .boxed(),
                    );
                }
            }
        }
    }

    fn deliver(&mut self, consumer: ConsumerId, messages: Vec<(u64, u32)>) {
        let mut current: Option<(u64, Bytes, Delivery)> = None;
        let mut ready: Vec<Delivery> = Vec::new();
        for (offset, count) in messages {
            let same_batch = current
                .as_ref()
                .and_then(|(base, _, _)| self.batches.get(base))
                .is_some_and(|(end, _)| offset < *end)
                && current.as_ref().is_some_and(|(base, _, _)| offset >= *base);
            if !same_batch {
                if let Some((_, _, delivery)) = current.take() {
                    ready.push(delivery);
                }
                let Some((base, bytes)) = self.batch_of(offset) else {
                    // It could not be read back (stores unavailable): the
                    // ack timeout delivers it again.
                    tracing::debug!(partition = %self.key, offset, "no batch for a delivery");
                    continue;
                };
                current = Some((
                    base,
                    bytes.clone(),
                    Delivery {
                        batches: bytes,
                        offsets: Vec::new(),
                        delivery_counts: Vec::new(),
                    },
                ));
            }
            if let Some((_, _, delivery)) = current.as_mut() {
                delivery.offsets.push(offset);
                delivery.delivery_counts.push(count);
            }
        }
        if let Some((_, _, delivery)) = current {
            ready.push(delivery);
        }
        for mut delivery in ready {
            if let Some(sparse) = sparse_batches(&delivery.batches, &delivery.offsets) {
                delivery.batches = sparse;
            }
            self.send(consumer, ToConsumer::Delivery(delivery));
        }
    }
}

use sluice_proto::SluiceError;

/// A delivery listing at most one record in this many of a batch is sparse.
const SPARSE_DELIVERY_RATIO: usize = 8;
/// Batches smaller than this are sent whole however few records are meant.
const SPARSE_DELIVERY_MIN_BATCH_BYTES: usize = 4096;

/// For a delivery that lists only a few records of a large stored batch
/// (delayed messages firing out of order, redeliveries, selective
/// subscriptions), the listed records re-encoded as one single-record batch
/// each, at their own offsets and with a new CRC, instead of the whole
/// stored batch per message; None to send the stored batch as it is.
fn sparse_batches(batch: &Bytes, offsets: &[u64]) -> Option<Bytes> {
    if batch.len() < SPARSE_DELIVERY_MIN_BATCH_BYTES {
        return None;
    }
    let header = batch::BatchHeader::parse(batch).ok()?;
    if offsets.len().saturating_mul(SPARSE_DELIVERY_RATIO) >= header.record_count as usize {
        return None;
    }
    let (_, records) = batch::decode_selected(batch, MAX_UNCOMPRESSED_RECORDS_BYTES, |offset| {
        offsets.binary_search(&offset).is_ok()
    })
    .ok()?;
    let mut out = bytes::BytesMut::new();
    for record in records {
        out.extend_from_slice(&single_record_batch(record, header.writer_epoch));
    }
    Some(out.freeze())
}

/// `record` alone in a batch at its own offset (new CRC, same content).
fn single_record_batch(record: Record, writer_epoch: u32) -> Bytes {
    let mut builder = batch::BatchBuilder::new(batch::Compression::None);
    let offset = record.offset;
    builder.push(&batch::RecordData {
        key: record.key,
        value: record.value,
        headers: record.headers,
        tags: record.tags,
        timestamp_ms: Some(record.timestamp_ms),
    });
    let mut single = bytes::BytesMut::from(&builder.build()[..]);
    batch::assign(&mut single, offset, writer_epoch);
    single.freeze()
}

type DeadLetters = FuturesUnordered<BoxFuture<'static, (u64, Result<(), String>)>>;
type CommitFuture = BoxFuture<'static, Result<(), BrokerError>>;

/// Writes `record` to the subscription's dead-letter topic with its history
/// in headers. Durable (acknowledged by the dead-letter topic's stores)
/// when it returns Ok.
async fn write_dead_letter(
    shared: Arc<Shared>,
    key: PartitionKey,
    subscription: Subscription,
    record: Record,
    deliveries: u32,
) -> Result<(), String> {
    let producer = shared
        .subscriptions
        .dead_letter_producer
        .get_or_try_init(|| async {
            // With [tls], as the broker itself connects: its certificate.
            let tls_config = &shared.config.tls;
            let tls = if tls_config.enabled {
                let ca_file = tls_config.ca_file.clone().unwrap_or_default();
                let identity = Some((&tls_config.cert_file, &tls_config.key_file));
                Some(sluice_client::ClientTls::from_files(ca_file, identity)?)
            } else {
                None
            };
            let config = sluice_client::ProducerConfig {
                client: sluice_client::ClientConfig {
                    bootstrap: shared.config.cluster.nameservers.clone(),
                    client_id: format!("{}-dead-letters", shared.config.cluster.node_id),
                    tls,
                    ..sluice_client::ClientConfig::default()
                },
                ..sluice_client::ProducerConfig::default()
            };
            sluice_client::Producer::new(config).await
        })
        .await
        .map_err(|error| format!("dead-letter producer: {error}"))?;
    let mut letter = sluice_client::Record::new(
        subscription.dead_letter_topic.clone(),
        record.value.unwrap_or_default(),
    )
    .with_timestamp_ms(record.timestamp_ms);
    if let Some(record_key) = record.key {
        letter = letter.with_key(record_key);
    }
    for (name, value) in record.headers {
        letter = letter.with_header(name, value);
    }
    for tag in record.tags {
        letter = letter.with_tag(tag);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis().to_string())
        .unwrap_or_default();
    letter = letter
        .with_header("sluice-dlq-topic", key.topic.clone())
        .with_header("sluice-dlq-partition", key.partition.to_string())
        .with_header("sluice-dlq-offset", record.offset.to_string())
        .with_header("sluice-dlq-subscription", subscription.name.clone())
        .with_header("sluice-dlq-deliveries", deliveries.to_string())
        .with_header("sluice-dlq-time-ms", now_ms);
    producer
        .send(letter)
        .await
        .map(|_| ())
        .map_err(|error| format!("dead letter to {}: {error}", subscription.dead_letter_topic))
}

/// The subscription's settings and its cursor, loading or creating it.
async fn load(
    shared: &Arc<Shared>,
    key: &PartitionKey,
    name: &str,
    partition: &Partition,
) -> Result<(Subscription, String, CursorSnapshot), BrokerError> {
    let subscription = nameserver_call!(
        &shared.clients,
        get_subscription,
        GetSubscriptionRequest {
            topic: key.topic.clone(),
            name: name.to_string(),
        }
    )?;
    let group = cursor_group(name)?;
    // Wait until the partition knows its bounds (takeover finished).
    let mut status = partition.subscribe();
    loop {
        let current = status.borrow_and_update().clone();
        if current.phase == Phase::Stopped {
            return Err(BrokerError::NotOwner {
                topic: key.topic.clone(),
                partition: key.partition,
            });
        }
        if current.loaded {
            break;
        }
        if status.changed().await.is_err() {
            return Err(BrokerError::NotOwner {
                topic: key.topic.clone(),
                partition: key.partition,
            });
        }
    }
    let stored = fetch_cursor(shared, &group, key).await?;
    let restored = stored.and_then(|bytes| match CursorSnapshot::decode(&bytes) {
        Ok(snapshot) if snapshot.subscription_created_at_ms == subscription.created_at_ms => {
            Some(snapshot)
        }
        Ok(_) => None, // An earlier subscription of the same name.
        Err(error) => {
            tracing::error!(partition = %key, subscription = name, %error, "stored cursor is corrupt; starting from the initial position");
            None
        }
    });
    let snapshot = match restored {
        Some(snapshot) => snapshot,
        None => {
            let status = partition.status();
            let start = start::initial_offset(
                &subscription,
                key.partition,
                status.log_start_offset,
                status.high_watermark,
            );
            let snapshot = CursorSnapshot {
                epoch: partition.epoch,
                subscription_created_at_ms: subscription.created_at_ms,
                acked: AckedRanges::new(start),
                delivery_counts: BTreeMap::new(),
                parked_keys: Default::default(),
            };
            // Pinned before anyone consumes, so a subscription created
            // before `start_offsets` existed keeps its "latest" after a
            // failover.
            commit_cursor(shared, &group, key, &snapshot).await?;
            snapshot
        }
    };
    Ok((subscription, group, snapshot))
}

async fn coordinator_client(
    shared: &Shared,
    group: &str,
) -> Result<sluice_proto::v1::broker_client::BrokerClient<tonic::transport::Channel>, BrokerError> {
    let coordinator = nameserver_call!(
        &shared.clients,
        find_coordinator,
        FindCoordinatorRequest {
            group: group.to_string(),
            ..Default::default()
        }
    )?;
    if coordinator.broker_address.is_empty() {
        return Err(BrokerError::Unavailable(format!(
            "no coordinator for {group:?} right now"
        )));
    }
    shared.clients.broker(&coordinator.broker_address)
}

pub(crate) async fn fetch_cursor(
    shared: &Shared,
    group: &str,
    key: &PartitionKey,
) -> Result<Option<Bytes>, BrokerError> {
    let mut client = coordinator_client(shared, group).await?;
    let response = client
        .fetch_offsets(request(
            FetchOffsetsRequest {
                group: group.to_string(),
                partitions: vec![TopicPartitions {
                    topic: key.topic.clone(),
                    partitions: vec![key.partition],
                }],
            },
            shared.clients.nameserver_timeout,
        ))
        .await
        .map_err(|status| BrokerError::remote("coordinator fetch_offsets", &status))?
        .into_inner();
    Ok(response
        .offsets
        .into_iter()
        .find(|offset| offset.topic == key.topic && offset.partition == key.partition)
        .map(|offset| offset.cursor)
        .filter(|cursor| !cursor.is_empty()))
}

pub(crate) async fn commit_cursor(
    shared: &Shared,
    group: &str,
    key: &PartitionKey,
    snapshot: &CursorSnapshot,
) -> Result<(), BrokerError> {
    commit_encoded_cursor(
        shared,
        group,
        key,
        snapshot.acked.mark_delete(),
        Bytes::from(snapshot.encode()),
    )
    .await
}

async fn commit_encoded_cursor(
    shared: &Shared,
    group: &str,
    key: &PartitionKey,
    mark_delete: u64,
    cursor: Bytes,
) -> Result<(), BrokerError> {
    let mut client = coordinator_client(shared, group).await?;
    let response = client
        .commit_offsets(request(
            CommitOffsetsRequest {
                group: group.to_string(),
                member_id: String::new(),
                member_epoch: -1,
                offsets: vec![PartitionOffset {
                    topic: key.topic.clone(),
                    partition: key.partition,
                    offset: mark_delete,
                    metadata: String::new(),
                    error: 0,
                    cursor,
                }],
            },
            shared.clients.nameserver_timeout,
        ))
        .await
        .map_err(|status| BrokerError::remote("coordinator commit_offsets", &status))?
        .into_inner();
    match response.offsets.first().map(|offset| offset.error()) {
        Some(ErrorCode::None) => Ok(()),
        Some(code) => Err(BrokerError::Remote {
            context: "coordinator commit_offsets".into(),
            error: SluiceError::new(code, "cursor commit refused"),
        }),
        None => Err(BrokerError::Internal(
            "coordinator answered a commit without offsets".into(),
        )),
    }
}

/// The dispatcher task of one (partition, subscription).
async fn run_dispatcher(
    shared: Arc<Shared>,
    key: PartitionKey,
    name: String,
    partition: Arc<Partition>,
    mut commands: mpsc::Receiver<Command>,
    own_sender: mpsc::Sender<Command>,
) {
    // Drop our own handle: the task ends when consumers stop sending and
    // the registry entry is removed.
    let loaded = tokio::time::timeout(LOAD_TIMEOUT, async {
        loop {
            match load(&shared, &key, &name, &partition).await {
                Ok(loaded) => return Ok(loaded),
                Err(error) if error.code().is_retriable() && !*shared.shutdown.borrow() => {
                    tracing::debug!(partition = %key, subscription = %name, %error, "loading the subscription; retrying");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(BrokerError::Unavailable(format!(
            "could not load subscription {name:?} on {key} within {LOAD_TIMEOUT:?}"
        )))
    });
    let mut task = match loaded.and_then(|(subscription, group, snapshot)| {
        selector_of(&subscription).map(|selector| (subscription, group, snapshot, selector))
    }) {
        Ok((subscription, group, snapshot, selector)) => {
            let settings = Settings {
                kind: subscription.r#type(),
                ack_timeout_ms: subscription.ack_timeout_ms.max(1),
                redelivery_backoff_initial_ms: subscription.redelivery_backoff_initial_ms,
                redelivery_backoff_max_ms: subscription
                    .redelivery_backoff_max_ms
                    .max(subscription.redelivery_backoff_initial_ms),
                max_deliveries: subscription.max_deliveries,
                window_messages: shared.config.subscriptions.window_messages.max(1),
                max_delayed_messages: shared.config.subscriptions.max_delayed_messages,
                max_permits_per_consumer: shared.config.subscriptions.max_permits_per_consumer,
                max_unacknowledged_per_consumer: shared
                    .config
                    .subscriptions
                    .max_unacknowledged_per_consumer,
            };
            Task {
                shared: shared.clone(),
                key: key.clone(),
                dispatcher: Dispatcher::new(settings, partition.epoch, snapshot),
                subscription,
                group,
                selector,
                partition: partition.clone(),
                consumers: HashMap::new(),
                batches: BTreeMap::new(),
                batch_bytes: 0,
                delayed_records: HashMap::new(),
                delayed_records_bytes: 0,
                receipts_waiting: Vec::new(),
            }
        }
        Err(error) => {
            tracing::info!(partition = %key, subscription = %name, %error, "cannot serve the subscription");
            let error = SluiceError::from(error);
            refuse_remaining(&shared, &key, &name, &own_sender, &mut commands, &error).await;
            return;
        }
    };
    serve_dispatcher(&mut task, &mut commands).await;
    tracing::debug!(
        partition = %key,
        subscription = %name,
        consumers = task.dispatcher.consumer_count(),
        unacknowledged = task.dispatcher.unacknowledged(),
        in_flight = task.dispatcher.in_flight(),
        mark_delete = task.dispatcher.mark_delete(),
        "subscription dispatcher stops"
    );
    let error = SluiceError::from(BrokerError::NotOwner {
        topic: key.topic.clone(),
        partition: key.partition,
    });
    refuse_remaining(&shared, &key, &name, &own_sender, &mut commands, &error).await;
}

/// Unregisters the dispatcher and answers opens that raced in with `error`
/// (consumers then look again).
async fn refuse_remaining(
    shared: &Shared,
    key: &PartitionKey,
    name: &str,
    own_sender: &mpsc::Sender<Command>,
    commands: &mut mpsc::Receiver<Command>,
    error: &SluiceError,
) {
    shared.subscriptions.remove(key, name, own_sender);
    commands.close();
    while let Some(command) = commands.recv().await {
        if let Command::Open { opened, .. } = command {
            let _ = opened.send(Err(BrokerError::Relayed(error.clone())));
        }
    }
}

/// The dispatcher's loop: consumers' commands, new data, timers, cursor
/// commits and dead-letter writes, until the partition leaves this broker,
/// the broker shuts down, or nobody consumed for `[subscriptions] idle_stop_ms`.
async fn serve_dispatcher(task: &mut Task, commands: &mut mpsc::Receiver<Command>) {
    let flush_interval =
        Duration::from_millis(task.shared.config.subscriptions.ack_flush_interval_ms);
    let idle_stop = Duration::from_millis(task.shared.config.subscriptions.idle_stop_ms);
    let mut status = task.partition.subscribe();
    let mut shutdown = task.shared.shutdown.clone();
    let mut dead_letters: DeadLetters = FuturesUnordered::new();
    let mut dead_letter_retries: Vec<(Instant, u64)> = Vec::new();
    let mut commit: Option<(CommitFuture, Vec<(ConsumerId, AckReceipt)>)> = None;
    let mut last_commit = Instant::now();
    let mut commit_gap = flush_interval;
    let mut retry_at: Option<Instant> = None;
    let mut idle_since: Option<Instant> = Some(Instant::now());
    let not_owner = || BrokerError::NotOwner {
        topic: task.key.topic.clone(),
        partition: task.key.partition,
    };
    let not_owner_error = not_owner();
    loop {
        let now = Instant::now();
        if retry_at.is_none_or(|at| at <= now) {
            retry_at = None;
            if let Err(error) = task.scan().await {
                if error.code() == ErrorCode::NotOwner {
                    task.fail_all(error);
                    return;
                }
                tracing::debug!(partition = %task.key, %error, "subscription scan failed; retrying");
                retry_at = Some(now + RETRY_BACKOFF);
            }
        }
        let due: Vec<u64> = dead_letter_retries
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, offset)| *offset)
            .collect();
        dead_letter_retries.retain(|(at, _)| *at > now);
        for offset in due {
            task.dispatcher.dead_letter_failed(offset);
        }
        let actions = task.dispatcher.dispatch(task.now_ms());
        task.execute(actions, &mut dead_letters).await;
        task.prune_batches();
        let wants_commit = task.dispatcher.is_dirty() || !task.receipts_waiting.is_empty();
        if commit.is_none() && wants_commit && now >= last_commit + commit_gap {
            let snapshot = task.dispatcher.snapshot();
            let mark_delete = snapshot.acked.mark_delete();
            let encoded = Bytes::from(snapshot.encode());
            // A large cursor (many gaps: delayed messages firing out of
            // order) is committed less often, bounding commit traffic.
            commit_gap = flush_interval.max(Duration::from_secs_f64(
                encoded.len() as f64 / CURSOR_COMMIT_BYTES_PER_SECOND,
            ));
            let receipts = std::mem::take(&mut task.receipts_waiting);
            let shared = task.shared.clone();
            let group = task.group.clone();
            let key = task.key.clone();
            commit =
                Some((
                    async move {
                        commit_encoded_cursor(&shared, &group, &key, mark_delete, encoded).await
                    }
                    .boxed(),
                    receipts,
                ));
            last_commit = now;
        }
        if task.consumers.is_empty() {
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) >= idle_stop
                && commit.is_none()
                && !task.dispatcher.is_dirty()
                && dead_letters.is_empty()
            {
                return;
            }
        } else {
            idle_since = None;
        }
        let mut wake = now + idle_stop;
        if let Some(deadline_ms) = task.dispatcher.next_deadline_ms() {
            let now_ms = task.now_ms();
            wake = wake.min(now + Duration::from_millis(deadline_ms.saturating_sub(now_ms)));
        }
        if commit.is_none() && wants_commit {
            wake = wake.min(last_commit + commit_gap);
        }
        if let Some(at) = retry_at {
            wake = wake.min(at);
        }
        if let Some(at) = dead_letter_retries.iter().map(|(at, _)| *at).min() {
            wake = wake.min(at);
        }
        if let Some(since) = idle_since {
            wake = wake.min(since + idle_stop);
        }
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                task.handle(command);
                for _ in 0..COMMANDS_PER_STEP {
                    match commands.try_recv() {
                        Ok(command) => task.handle(command),
                        Err(_) => break,
                    }
                }
            }
            changed = status.changed() => {
                if changed.is_err() || status.borrow().phase == Phase::Stopped {
                    task.fail_all(clone_broker_error(&not_owner_error));
                    return;
                }
            }
            result = async {
                match commit.as_mut() {
                    Some((future, _)) => future.await,
                    None => std::future::pending().await,
                }
            }, if commit.is_some() => {
                let receipts = commit.take().map(|(_, receipts)| receipts).unwrap_or_default();
                match result {
                    Ok(()) => {
                        task.dispatcher.commit_succeeded();
                        for (consumer, receipt) in receipts {
                            task.send(consumer, ToConsumer::AckReceipt(receipt));
                        }
                    }
                    Err(error) if error.code() == ErrorCode::NotOwner => {
                        // A newer owner committed this cursor: we are deposed.
                        tracing::info!(partition = %task.key, %error, "cursor commit fenced; stopping the subscription here");
                        task.fail_all(error);
                        return;
                    }
                    Err(error) => {
                        tracing::debug!(partition = %task.key, %error, "cursor commit failed; retrying");
                        let mut receipts = receipts;
                        receipts.append(&mut task.receipts_waiting);
                        task.receipts_waiting = receipts;
                        task.dispatcher.commit_failed();
                        last_commit = Instant::now() + RETRY_BACKOFF;
                    }
                }
            }
            Some((offset, result)) = dead_letters.next(), if !dead_letters.is_empty() => {
                match result {
                    Ok(()) => task.dispatcher.dead_lettered(offset),
                    Err(error) => {
                        tracing::warn!(partition = %task.key, offset, %error, "dead-letter write failed; retrying");
                        dead_letter_retries.push((Instant::now() + RETRY_BACKOFF * 5, offset));
                    }
                }
            }
            _ = crate::wait_until_set(&mut shutdown) => {
                if let Some((future, receipts)) = commit.take() {
                    if future.await.is_ok() {
                        for (consumer, receipt) in receipts {
                            task.send(consumer, ToConsumer::AckReceipt(receipt));
                        }
                    }
                }
                if task.dispatcher.is_dirty() || !task.receipts_waiting.is_empty() {
                    let snapshot = task.dispatcher.snapshot();
                    if commit_cursor(&task.shared, &task.group, &task.key, &snapshot).await.is_ok() {
                        for (consumer, receipt) in std::mem::take(&mut task.receipts_waiting) {
                            task.send(consumer, ToConsumer::AckReceipt(receipt));
                        }
                    }
                }
                task.fail_all(BrokerError::ShuttingDown);
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

fn clone_broker_error(error: &BrokerError) -> BrokerError {
    BrokerError::Relayed(SluiceError::new(error.code(), error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_batch(records: u64, base_offset: u64) -> Bytes {
        let mut builder = batch::BatchBuilder::new(batch::Compression::None);
        for index in 0..records {
            builder.push(&batch::RecordData {
                key: Some(Bytes::from(format!("key-{index}"))),
                value: Some(Bytes::from(vec![b'v'; 100])),
                headers: vec![("h".into(), Bytes::from(index.to_string()))],
                tags: vec!["t".into()],
                timestamp_ms: Some(1_700_000_000_000 + index as i64),
            });
        }
        let mut stored = bytes::BytesMut::from(&builder.build()[..]);
        batch::assign(&mut stored, base_offset, 3);
        stored.freeze()
    }

    #[test]
    fn a_few_records_of_a_large_batch_travel_as_single_record_batches() {
        let stored = stored_batch(100, 1000);
        let (_, originals) = batch::decode(&stored, usize::MAX).expect("decodes");
        let sparse = sparse_batches(&stored, &[1003, 1050]).expect("sparse");
        assert!(sparse.len() < stored.len() / 10);
        let mut seen = Vec::new();
        for item in BatchIter::new(&sparse) {
            let (start, header, slice) = item.expect("well formed");
            let single = sparse.slice(start..start + slice.len());
            let (_, records) = batch::decode(&single, usize::MAX).expect("valid CRC");
            assert_eq!(header.writer_epoch, 3);
            assert_eq!(records.len(), 1);
            seen.push(records[0].clone());
        }
        let expected: Vec<Record> = originals
            .into_iter()
            .filter(|record| record.offset == 1003 || record.offset == 1050)
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn dense_or_small_deliveries_send_the_stored_batch() {
        let stored = stored_batch(100, 0);
        let many: Vec<u64> = (0..20).collect();
        assert!(sparse_batches(&stored, &many).is_none());
        let small = stored_batch(3, 0);
        assert!(sparse_batches(&small, &[1]).is_none());
    }
}
