//! [`Subscriber`]: a consumer of a durable subscription (queue semantics:
//! exclusive, failover, shared and key-shared subscriptions with
//! per-message acknowledgements, redelivery and dead letters), pulling
//! with [`Subscriber::recv`] or pushing to a handler with
//! [`Subscriber::listen`].
//!
//! One `Subscribe` stream per partition of the topic runs to the
//! partition's owner (`partition.rs`); deliveries of all partitions are
//! merged into one queue bounded by credit (`credit.rs`); acknowledgements
//! are batched per partition (`acks.rs`); broken streams are reopened
//! (`reconnect.rs`).

mod acks;
mod credit;
mod listener;
mod partition;
mod reconnect;
mod transactional;

pub use listener::{ListenerConfig, ListenerHandle, Ordering, MAX_LISTENER_CONCURRENCY};

use crate::cluster::{instant_after, Cluster};
use crate::{ClientConfig, ClientError};
use bytes::Bytes;
use futures::Stream;
use partition::{Command, PartitionShared};
use sluice_proto::v1::{self, InitialPosition, SelectorKind, SubscriptionType};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify, Semaphore};

/// Largest accepted `receiver_queue_size`, in messages.
pub const MAX_RECEIVER_QUEUE_SIZE: u32 = 100_000;
/// Errors kept for `recv` to report; older ones are dropped (and were
/// logged when they happened).
const MAX_QUEUED_ERRORS: usize = 64;
/// Commands (acknowledgements, negative acknowledgements) queued for one
/// partition's stream task; `ack` waits when it is full.
const COMMAND_QUEUE_CAPACITY: usize = 1024;

/// Subscriber settings.
///
/// ```
/// use sluice_client::{SubscriberConfig, SubscriptionType};
/// let config = SubscriberConfig {
///     subscription_type: SubscriptionType::KeyShared,
///     ..SubscriberConfig::new("orders", "billing")
/// };
/// assert_eq!(config.receiver_queue_size, 1000);
/// assert!(config.create_if_missing);
/// ```
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Bootstrap nameservers, TLS and credentials, timeouts.
    pub client: ClientConfig,
    /// The topic the subscription reads.
    pub topic: String,
    /// The subscription's name (same rules as topic names).
    pub subscription: String,
    /// Create the subscription with the settings below if it does not
    /// exist (idempotent; an existing one with other settings fails with
    /// SUBSCRIPTION_CONFLICT). Default: true. When false the subscription
    /// must exist and the settings below are ignored.
    pub create_if_missing: bool,
    /// How the subscription's consumers share messages. Default: shared.
    pub subscription_type: SubscriptionType,
    /// Default: every message.
    pub selector_kind: SelectorKind,
    /// `tagA || tagB` for tag selectors, a SQL-92 condition over headers
    /// for SQL ones; empty for [`SelectorKind::All`].
    pub selector: String,
    /// Where a new subscription starts. Default: latest.
    pub initial_position: InitialPosition,
    /// A message not acknowledged within this time is delivered again, in
    /// milliseconds; 0 means the server default (30000).
    pub ack_timeout_ms: u64,
    /// Deliveries after which a message goes to the dead-letter topic
    /// instead; 0 means never. Default: 0.
    pub max_deliveries: u32,
    /// Dead-letter topic; `None` means `<topic>-<subscription>-DLQ`.
    pub dead_letter_topic: Option<String>,
    /// First delay before a negatively acknowledged message is delivered
    /// again, in milliseconds, doubling with each redelivery; 0 means the
    /// server default (1000).
    pub redelivery_backoff_initial_ms: u64,
    /// Largest such delay, in milliseconds; 0 means the server default
    /// (60000).
    pub redelivery_backoff_max_ms: u64,
    /// This consumer's name (diagnostics; orders failover standbys).
    /// Default: empty, meaning `<client.client_id>-<8 random hex digits>`.
    pub consumer_name: String,
    /// Failover: the connected consumer with the lowest priority (then
    /// name) is active. Default: 0.
    pub priority: u32,
    /// Messages buffered ahead of the application, across all partitions
    /// (each partition's stream gets an equal share, at least one): the
    /// broker delivers only as many as granted, and more are granted as
    /// the application takes them (half a share at a time). Bounds memory
    /// to about this many messages. Default: 1000; at most
    /// [`MAX_RECEIVER_QUEUE_SIZE`].
    pub receiver_queue_size: u32,
    /// How long acknowledgements are collected before they are sent in one
    /// request per partition, in milliseconds (0: sent at once). Default: 1.
    pub ack_flush_interval_ms: u64,
    /// Acknowledgements sent or queued and not yet answered by a receipt;
    /// `ack` waits for room above it. Default: 10000.
    pub max_pending_acks: usize,
    /// First pause before reopening a broken stream, in milliseconds,
    /// doubling with each failed attempt. Default: 100.
    pub reconnect_backoff_initial_ms: u64,
    /// Largest such pause, in milliseconds. Default: 5000.
    pub reconnect_backoff_max_ms: u64,
    /// How long `connect` waits for every partition's stream to open, in
    /// milliseconds; partitions still retrying then (owner moving) keep
    /// retrying in the background. Default: 10000.
    pub open_timeout_ms: u64,
}

impl SubscriberConfig {
    /// Defaults for `subscription` of `topic`.
    pub fn new(topic: impl Into<String>, subscription: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            subscription: subscription.into(),
            ..Self::default()
        }
    }

    /// The subscription these settings create.
    fn to_subscription(&self) -> v1::Subscription {
        v1::Subscription {
            topic: self.topic.clone(),
            name: self.subscription.clone(),
            r#type: self.subscription_type as i32,
            selector_kind: self.selector_kind as i32,
            selector: self.selector.clone(),
            initial_position: self.initial_position as i32,
            ack_timeout_ms: self.ack_timeout_ms,
            redelivery_backoff_initial_ms: self.redelivery_backoff_initial_ms,
            redelivery_backoff_max_ms: self.redelivery_backoff_max_ms,
            max_deliveries: self.max_deliveries,
            dead_letter_topic: self.dead_letter_topic.clone().unwrap_or_default(),
            created_at_ms: 0,
            // Backlog quotas are the operator's (ADR 0012): left to the
            // stored subscription.
            ..v1::Subscription::default()
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        sluice_proto::names::TopicName::new(&self.topic).map_err(|error| {
            ClientError::InvalidArgument(format!("topic name '{}': {error}", self.topic))
        })?;
        sluice_proto::names::SubscriptionName::new(&self.subscription).map_err(|error| {
            ClientError::InvalidArgument(format!(
                "subscription name '{}': {error}",
                self.subscription
            ))
        })?;
        if self.receiver_queue_size == 0 || self.receiver_queue_size > MAX_RECEIVER_QUEUE_SIZE {
            return Err(ClientError::InvalidArgument(format!(
                "receiver_queue_size must be between 1 and {MAX_RECEIVER_QUEUE_SIZE} messages, not {}",
                self.receiver_queue_size
            )));
        }
        if self.max_pending_acks == 0 {
            return Err(ClientError::InvalidArgument(
                "max_pending_acks must be at least 1".into(),
            ));
        }
        if self.consumer_name.len() > sluice_proto::limits::MAX_NAME_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "consumer_name is {} bytes; at most {}",
                self.consumer_name.len(),
                sluice_proto::limits::MAX_NAME_BYTES
            )));
        }
        Ok(())
    }
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            topic: String::new(),
            subscription: String::new(),
            create_if_missing: true,
            subscription_type: SubscriptionType::Shared,
            selector_kind: SelectorKind::All,
            selector: String::new(),
            initial_position: InitialPosition::Latest,
            ack_timeout_ms: 0,
            max_deliveries: 0,
            dead_letter_topic: None,
            redelivery_backoff_initial_ms: 0,
            redelivery_backoff_max_ms: 0,
            consumer_name: String::new(),
            priority: 0,
            receiver_queue_size: 1000,
            ack_flush_interval_ms: 1,
            max_pending_acks: 10_000,
            reconnect_backoff_initial_ms: 100,
            reconnect_backoff_max_ms: 5_000,
            open_timeout_ms: 10_000,
        }
    }
}

/// Identifies a message: its topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// The message's topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}/{}@{}",
            self.topic, self.partition, self.offset
        )
    }
}

/// A delivered message. Acknowledge it with [`Subscriber::ack`] (or let a
/// listener do it); a message never acknowledged is delivered again after
/// the subscription's ack timeout, or at once when its stream closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was read from.
    pub topic: String,
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The record's timestamp as its producer gave or stamped it, in
    /// milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The record's key, if it has one.
    pub key: Option<Bytes>,
    /// The record's value; `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Application headers, in the order the producer gave them.
    pub headers: Vec<(String, Bytes)>,
    /// The record's tags (what selectors match).
    pub tags: Vec<String>,
    /// 1 on the first delivery, then one more for each redelivery.
    pub delivery_count: u32,
    /// The stream session it came on: an acknowledgement after that
    /// session ended is refused locally (DELIVERY_EXPIRED).
    pub(crate) session: u64,
}

/// What acknowledging a message needs (kept by the listener instead of
/// a copy of the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckToken {
    pub partition: u32,
    pub offset: u64,
    pub session: u64,
}

impl Message {
    pub(crate) fn ack_token(&self) -> AckToken {
        AckToken {
            partition: self.partition,
            offset: self.offset,
            session: self.session,
        }
    }

    /// The message's id (topic, partition, offset), e.g. for
    /// `Admin::explain_message`.
    pub fn id(&self) -> MessageId {
        MessageId {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Messages and errors waiting for `recv`.
#[derive(Default)]
pub(crate) struct Incoming {
    messages: VecDeque<Message>,
    errors: VecDeque<ClientError>,
}

/// State shared by the subscriber and its partition tasks.
pub(crate) struct Shared {
    pub config: SubscriberConfig,
    pub cluster: Arc<Cluster>,
    incoming: Mutex<Incoming>,
    incoming_changed: Notify,
    pub partitions: Vec<PartitionShared>,
    pub closed: AtomicBool,
    /// One permit per acknowledgement not yet answered.
    pub ack_slots: Arc<Semaphore>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data under short, non-awaiting locks.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Adds delivered messages for `recv`.
    pub fn push_messages(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        lock(&self.incoming).messages.extend(messages);
        self.incoming_changed.notify_waiters();
    }

    /// Reports an error through `recv`.
    pub fn push_error(&self, error: ClientError) {
        let mut incoming = lock(&self.incoming);
        if incoming.errors.len() >= MAX_QUEUED_ERRORS {
            incoming.errors.pop_front();
        }
        incoming.errors.push_back(error);
        drop(incoming);
        self.incoming_changed.notify_waiters();
    }

    /// Drops the buffered messages of `partition` (its stream ended, so the
    /// broker redelivers them); returns how many.
    pub fn discard_partition(&self, partition: u32) -> usize {
        let mut incoming = lock(&self.incoming);
        let before = incoming.messages.len();
        incoming
            .messages
            .retain(|message| message.partition != partition);
        before - incoming.messages.len()
    }

    fn wake_receivers(&self) {
        self.incoming_changed.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The application took `message`: return its permit.
    fn taken(&self, message: &Message) {
        if let Some(partition) = self.partitions.get(message.partition as usize) {
            partition.taken(message.session, 1);
        }
    }

    async fn recv(&self) -> Result<Message, ClientError> {
        loop {
            let notified = self.incoming_changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut incoming = lock(&self.incoming);
                if let Some(error) = incoming.errors.pop_front() {
                    return Err(error);
                }
                if let Some(message) = incoming.messages.pop_front() {
                    drop(incoming);
                    self.taken(&message);
                    return Ok(message);
                }
            }
            if self.is_closed() {
                return Err(ClientError::Closed);
            }
            for partition in &self.partitions {
                partition.grant_taken();
            }
            notified.await;
        }
    }
}

/// A consumer of one subscription of a topic, on every partition.
///
/// Each partition has its own stream to its owning broker; deliveries are
/// merged into one queue of at most about `receiver_queue_size` messages.
/// Acknowledge each message with [`Subscriber::ack`] (waits until the
/// acknowledgement is durable) or [`Subscriber::ack_nowait`], or give it
/// back with [`Subscriber::nack`]. Cheap to share (`&self` methods;
/// wrap it in an `Arc` to use it from several tasks).
///
/// ```no_run
/// use sluice_client::{Subscriber, SubscriberConfig};
///
/// # async fn example() -> Result<(), sluice_client::ClientError> {
/// let subscriber = Subscriber::connect(SubscriberConfig::new("orders", "billing")).await?;
/// loop {
///     let message = subscriber.recv().await?;
///     println!("{} (delivery {})", message.id(), message.delivery_count);
///     subscriber.ack(&message).await?;
/// #   break;
/// }
/// subscriber.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct Subscriber {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Subscriber {
    /// Creates the subscription if asked (and missing), then opens one
    /// stream per partition and waits (up to `open_timeout_ms`) for them
    /// to open. Fails with the broker's error when a partition refuses the
    /// consumer for a reason retrying cannot cure: UNKNOWN_SUBSCRIPTION,
    /// CONSUMER_BUSY (exclusive subscription taken), INVALID_ARGUMENT.
    pub async fn connect(config: SubscriberConfig) -> Result<Subscriber, ClientError> {
        config.validate()?;
        let cluster = Cluster::connect(config.client.clone()).await?;
        cluster.start_route_watch();
        if config.create_if_missing {
            create_subscription(&cluster, &config).await?;
        }
        Self::connect_on(cluster, config).await
    }

    pub(crate) async fn connect_on(
        cluster: Arc<Cluster>,
        mut config: SubscriberConfig,
    ) -> Result<Subscriber, ClientError> {
        config.validate()?;
        if config.consumer_name.is_empty() {
            config.consumer_name =
                format!("{}-{:08x}", config.client.client_id, rand::random::<u32>());
        }
        let routes = cluster.topic_routes(&config.topic).await?;
        let partition_count = routes.partitions.len();
        if partition_count == 0 {
            return Err(ClientError::Server(SluiceError::new(
                ErrorCode::UnknownTopic,
                format!("topic '{}' has no partitions", config.topic),
            )));
        }
        let queue_size =
            credit::per_partition_queue_size(config.receiver_queue_size, partition_count);
        let mut receivers = Vec::with_capacity(partition_count);
        let mut partitions = Vec::with_capacity(partition_count);
        for index in 0..partition_count {
            let (sender, receiver) = tokio::sync::mpsc::channel(COMMAND_QUEUE_CAPACITY);
            partitions.push(PartitionShared::new(index as u32, queue_size, sender));
            receivers.push(receiver);
        }
        let shared = Arc::new(Shared {
            ack_slots: Arc::new(Semaphore::new(config.max_pending_acks)),
            config,
            cluster,
            incoming: Mutex::new(Incoming::default()),
            incoming_changed: Notify::new(),
            partitions,
            closed: AtomicBool::new(false),
        });
        let mut opened = Vec::with_capacity(partition_count);
        let mut tasks = Vec::with_capacity(partition_count);
        for (index, commands) in receivers.into_iter().enumerate() {
            let (first_open, first_open_result) = oneshot::channel();
            opened.push(first_open_result);
            tasks.push(tokio::spawn(partition::run(
                shared.clone(),
                index as u32,
                commands,
                first_open,
            )));
        }
        let subscriber = Subscriber { shared, tasks };
        let deadline = instant_after(
            Instant::now(),
            Duration::from_millis(subscriber.shared.config.open_timeout_ms),
        );
        for (index, first_open) in opened.into_iter().enumerate() {
            match tokio::time::timeout_at(deadline.into(), first_open).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    subscriber.stop();
                    return Err(error);
                }
                Ok(Err(_)) => {
                    subscriber.stop();
                    return Err(ClientError::Closed);
                }
                Err(_) => {
                    tracing::warn!(
                        topic = %subscriber.shared.config.topic, partition = index,
                        "subscription stream not open yet; it keeps retrying in the background"
                    );
                }
            }
        }
        Ok(subscriber)
    }

    /// The next message of any partition. Errors: a partition's stream
    /// failing in a way retrying cannot cure (the subscription was deleted,
    /// an exclusive partition was taken by another consumer) and messages
    /// that do not decode are reported once each, and the subscriber keeps
    /// going, so calling `recv` again is fine; [`ClientError::Closed`]
    /// after [`Subscriber::close`].
    pub async fn recv(&self) -> Result<Message, ClientError> {
        self.shared.recv().await
    }

    /// Like [`Subscriber::recv`], giving up after `timeout` with `Ok(None)`.
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>, ClientError> {
        match tokio::time::timeout(timeout, self.shared.recv()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The messages as a stream (ends after [`ClientError::Closed`] would
    /// be returned; other errors are items).
    pub fn stream(&self) -> impl Stream<Item = Result<Message, ClientError>> + '_ {
        futures::stream::unfold(self, |subscriber| async move {
            match subscriber.recv().await {
                Err(ClientError::Closed) => None,
                item => Some((item, subscriber)),
            }
        })
    }

    /// Acknowledges `message` and waits until the acknowledgement is
    /// durable: from then on it is never delivered again on this
    /// subscription. Fails with DELIVERY_EXPIRED (see
    /// [`ClientError::code`]) when the delivery ended first (ack timeout,
    /// negative acknowledgement, stream closed): the message was or will
    /// be delivered again, maybe to another consumer. UNKNOWN_MESSAGE when
    /// the broker never delivered it to this consumer.
    pub async fn ack(&self, message: &Message) -> Result<(), ClientError> {
        self.ack_nowait(message).await?.await
    }

    /// Queues an acknowledgement (waiting only for room under
    /// `max_pending_acks`) and returns a future of its receipt, which may
    /// be dropped if the outcome does not matter.
    pub async fn ack_nowait(&self, message: &Message) -> Result<AckFuture, ClientError> {
        self.queue_ack(message, false).await
    }

    /// Acknowledges `message` and everything delivered to this consumer
    /// before it on its partition. Exclusive and failover subscriptions
    /// only (elsewhere earlier messages belong to other consumers).
    pub async fn ack_cumulative(&self, message: &Message) -> Result<(), ClientError> {
        let partition = self.partition(message)?;
        let subscription_type = partition
            .subscription()
            .and_then(|subscription| SubscriptionType::try_from(subscription.r#type).ok())
            .unwrap_or(self.shared.config.subscription_type);
        if !matches!(
            subscription_type,
            SubscriptionType::Exclusive | SubscriptionType::Failover
        ) {
            return Err(ClientError::InvalidArgument(format!(
                "ack_cumulative needs an exclusive or failover subscription; '{}' is {}: acknowledge each message with ack",
                self.shared.config.subscription,
                subscription_type.as_str_name()
            )));
        }
        self.queue_ack(message, true).await?.await
    }

    async fn queue_ack(
        &self,
        message: &Message,
        cumulative: bool,
    ) -> Result<AckFuture, ClientError> {
        self.partition(message)?;
        self.queue_ack_token(message.ack_token(), cumulative).await
    }

    pub(crate) async fn queue_ack_token(
        &self,
        token: AckToken,
        cumulative: bool,
    ) -> Result<AckFuture, ClientError> {
        let partition = self.partition_at(token.partition)?;
        let slot = self
            .shared
            .ack_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let (reply, receipt) = oneshot::channel();
        partition
            .send(Command::Ack {
                offset: token.offset,
                session: token.session,
                cumulative,
                reply,
                slot,
            })
            .await?;
        Ok(AckFuture {
            receipt,
            timeout_ms: self.shared.config.client.request_timeout_ms,
        })
    }

    pub(crate) async fn nack_token(
        &self,
        token: AckToken,
        delay: Duration,
    ) -> Result<(), ClientError> {
        self.partition_at(token.partition)?
            .send(Command::Nack {
                offset: token.offset,
                session: token.session,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            })
            .await
    }

    /// Gives `message` back: it is delivered again after the
    /// subscription's redelivery backoff (counting as a delivery towards
    /// `max_deliveries`).
    pub async fn nack(&self, message: &Message) -> Result<(), ClientError> {
        self.nack_with_delay(message, Duration::ZERO).await
    }

    /// Gives `message` back to be delivered again after `delay` (zero: the
    /// subscription's backoff).
    pub async fn nack_with_delay(
        &self,
        message: &Message,
        delay: Duration,
    ) -> Result<(), ClientError> {
        self.partition(message)?;
        self.nack_token(message.ack_token(), delay).await
    }

    /// Failover: whether this consumer is the active one of `partition`
    /// (always true for the other types once open); `None` for a partition
    /// the topic does not have.
    pub fn is_active(&self, partition: u32) -> Option<bool> {
        self.shared
            .partitions
            .get(partition as usize)
            .map(PartitionShared::is_active)
    }

    /// The partitions where this consumer is active.
    pub fn active_partitions(&self) -> Vec<u32> {
        self.shared
            .partitions
            .iter()
            .filter(|partition| partition.is_active())
            .map(|partition| partition.index)
            .collect()
    }

    /// The subscription as the broker described it when the first
    /// partition's stream opened.
    pub fn subscription(&self) -> Option<v1::Subscription> {
        self.shared
            .partitions
            .iter()
            .find_map(PartitionShared::subscription)
    }

    /// The topic this subscriber reads.
    pub fn topic(&self) -> &str {
        &self.shared.config.topic
    }

    /// This consumer's name, as the broker knows it (given, or made from
    /// the client id).
    pub fn consumer_name(&self) -> &str {
        &self.shared.config.consumer_name
    }

    /// Sends pending acknowledgements and waits for their receipts (each
    /// partition up to the request timeout), then closes the streams:
    /// messages delivered and not acknowledged are delivered again.
    pub async fn close(self) -> Result<(), ClientError> {
        let mut closing = Vec::new();
        for partition in &self.shared.partitions {
            let (reply, done) = oneshot::channel();
            if partition.send(Command::Close { reply }).await.is_ok() {
                closing.push(done);
            }
        }
        let timeout =
            Duration::from_millis(self.shared.config.client.request_timeout_ms).saturating_mul(2);
        let all = futures::future::join_all(closing);
        let result = match tokio::time::timeout(timeout, all).await {
            Ok(_) => Ok(()),
            Err(_) => Err(ClientError::Timeout {
                what: "closing the subscription streams".into(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        self.stop();
        result
    }

    fn stop(&self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.wake_receivers();
        for task in &self.tasks {
            task.abort();
        }
    }

    fn partition(&self, message: &Message) -> Result<&PartitionShared, ClientError> {
        if message.topic != self.shared.config.topic {
            return Err(ClientError::InvalidArgument(format!(
                "message {} is not from this subscriber's topic '{}'",
                message.id(),
                self.shared.config.topic
            )));
        }
        self.partition_at(message.partition)
    }

    fn partition_at(&self, partition: u32) -> Result<&PartitionShared, ClientError> {
        self.shared
            .partitions
            .get(partition as usize)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "partition {partition} of '{}' is not read by this subscriber",
                    self.shared.config.topic
                ))
            })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The receipt of a queued acknowledgement (see
/// [`Subscriber::ack_nowait`]); resolves when the broker answered, failing
/// with [`ClientError::Timeout`] after the request timeout.
pub struct AckFuture {
    receipt: oneshot::Receiver<Result<(), ClientError>>,
    timeout_ms: u64,
}

impl std::future::IntoFuture for AckFuture {
    type Output = Result<(), ClientError>;
    type IntoFuture = futures::future::BoxFuture<'static, Result<(), ClientError>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match tokio::time::timeout(Duration::from_millis(self.timeout_ms), self.receipt).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ClientError::Closed),
                Err(_) => Err(ClientError::Timeout {
                    what: "acknowledgement receipt".into(),
                    timeout_ms: self.timeout_ms,
                }),
            }
        })
    }
}

/// Creates the subscription on the nameserver (idempotent with the same
/// settings; "latest" starts at the partitions' ends at its creation).
async fn create_subscription(
    cluster: &Cluster,
    config: &SubscriberConfig,
) -> Result<(), ClientError> {
    crate::subscription_create::create_subscription(cluster, config.to_subscription())
        .await
        .map(|_| ())
}

/// Builds [`Message`]s from a window of a stream's session (test helper
/// for the listener).
#[cfg(test)]
pub(crate) fn test_message(partition: u32, offset: u64, key: Option<&str>) -> Message {
    Message {
        topic: "t".into(),
        partition,
        offset,
        timestamp_ms: 0,
        key: key.map(|key| Bytes::from(key.to_string())),
        value: None,
        headers: Vec::new(),
        tags: Vec::new(),
        delivery_count: 1,
        session: 1,
    }
}

#[cfg(test)]
mod tests;
