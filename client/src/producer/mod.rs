//! [`Producer`]: batching, pipelined, ordered produce with bounded memory.
//!
//! Records are placed on a partition (explicit, by key, or sticky), gather
//! in per-partition batches, and travel over one `Broker.Produce` stream
//! per broker. `enqueue` appends the record to its partition's open batch
//! itself, under one short lock shared with the dispatcher task, and gets
//! back a future on that batch's shared completion: a record costs no
//! channel message and no allocation of its own. The dispatcher owns all
//! send state (pipelines, streams, retries) and takes closed batches, in
//! closing order, from the shared state when woken.

mod accumulator;
mod batching;
mod completion;
mod dispatcher;
mod memory_budget;
mod partitioner;
mod pipeline;
mod pressure;
mod transaction;
mod transactional;
pub(crate) mod txn_coordinator;
mod txn_offsets;

use crate::cluster::{Cluster, TopicPartition};
use crate::{ClientConfig, ClientError};
use accumulator::{Accumulator, BatchLimits};
use batching::{lock, BatchAttachment, Batching};
use bytes::Bytes;
use completion::{BatchCompletion, Completer};
use dispatcher::{Command, Dispatcher};
use memory_budget::MemoryBudget;
use partitioner::{choose_partition, StickyPartitioner};
use pressure::PressureTracker;
pub use pressure::{Pressure, PressureEvent, PressureLevel, PressureListener, PressureMetrics};
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
use sluice_proto::SluiceError;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use transaction::Transaction;

/// Room left in a gRPC message for the produce request around its batch
/// (request id, topic name, framing), in bytes.
const PRODUCE_ENVELOPE_BYTES: usize = 64 * 1024;

/// A record to produce.
///
/// ```
/// use sluice_client::Record;
///
/// let record = Record::new("orders", "order #1 paid")
///     .with_key("customer-17")
///     .with_header("source", "web")
///     .with_tag("payments");
/// assert_eq!(record.topic, "orders");
/// assert_eq!(record.partition, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The topic to write to.
    pub topic: String,
    /// Explicit partition; otherwise chosen by key hash, or sticky for
    /// unkeyed records.
    pub partition: Option<u32>,
    /// The key: records with one key go to one partition, in order.
    pub key: Option<Bytes>,
    /// The value; `None` writes a tombstone.
    pub value: Option<Bytes>,
    /// Application headers, kept in this order.
    pub headers: Vec<(String, Bytes)>,
    /// Tags that subscription selectors match (`tagA || tagB`).
    pub tags: Vec<String>,
    /// Unix ms; the producer stamps the enqueue time when `None`.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// A tombstone for `key` (ADR 0016 §8): a keyed record with a *null*
    /// value, which a compacted topic's compaction keeps for the topic's
    /// `delete_retention_ms` and then removes together with every earlier
    /// record of the key. An empty value (`Record::new(topic, "")`) is an
    /// ordinary live record, not a tombstone.
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            ..Self::default()
        }
    }

    /// Whether this record deletes its key in a compacted topic: keyed,
    /// with a null value.
    pub fn is_tombstone(&self) -> bool {
        self.key.is_some() && self.value.is_none()
    }

    /// This record with `key`.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// This record with one more header (names may repeat).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// This record with one more tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// This record for `partition` explicitly (no key hash, no sticky
    /// choice).
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// This record with its own timestamp, in milliseconds since the Unix
    /// epoch (instead of the enqueue time).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Subscriptions deliver the message `delay` from now (milliseconds to
    /// days; at most [`sluice_proto::headers::MAX_DELAY_MS`]). Stream
    /// consumers (`Consumer`) see it at once. Sets the
    /// `sluice-deliver-at-ms` header.
    pub fn with_delay(self, delay: std::time::Duration) -> Self {
        let now_ms = u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.with_deliver_at_ms(now_ms.saturating_add(delay_ms))
    }

    /// Subscriptions deliver the message at this time (Unix milliseconds).
    pub fn with_deliver_at_ms(self, deliver_at_ms: u64) -> Self {
        self.with_header(
            sluice_proto::headers::DELIVER_AT_MS,
            deliver_at_ms.to_string(),
        )
    }

    /// The message expires `ttl` after its timestamp: subscriptions never
    /// deliver it afterwards (a topic's `message_ttl_ms` can shorten it).
    pub fn with_ttl(self, ttl: std::time::Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.with_header(sluice_proto::headers::TTL_MS, ttl_ms.to_string())
    }

    /// Refuses delivery times and TTLs that are malformed or absurd.
    fn check_timing_headers(&self) -> Result<(), ClientError> {
        use sluice_proto::headers::{DELIVER_AT_MS, MAX_DELAY_MS, MAX_TTL_MS, TTL_MS};
        for (name, value) in &self.headers {
            if name != DELIVER_AT_MS && name != TTL_MS {
                continue;
            }
            let number: u64 = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| {
                    ClientError::InvalidArgument(format!(
                        "header {name} must be a non-negative whole number of milliseconds"
                    ))
                })?;
            if name == DELIVER_AT_MS {
                let now_ms = u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0);
                if number > now_ms.saturating_add(MAX_DELAY_MS) {
                    return Err(ClientError::InvalidArgument(format!(
                        "delivery time {number} is more than {} days ahead; the longest delay is {MAX_DELAY_MS} ms",
                        MAX_DELAY_MS / 86_400_000
                    )));
                }
            } else if number == 0 || number > MAX_TTL_MS {
                return Err(ClientError::InvalidArgument(format!(
                    "time-to-live of {number} ms is outside 1 ms to {MAX_TTL_MS} ms"
                )));
            }
        }
        Ok(())
    }
}

/// Where an acknowledged record was written.
///
/// ```
/// # use sluice_client::RecordMetadata;
/// # fn show(metadata: RecordMetadata) {
/// println!("{}/{} @ {}", metadata.topic, metadata.partition, metadata.offset);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The record's topic.
    pub topic: String,
    /// The partition it was written to.
    pub partition: u32,
    /// The offset it was given: its durable, never reused position.
    pub offset: u64,
    /// The record's timestamp (given or stamped at enqueue), unix ms.
    pub timestamp_ms: i64,
    /// The partition's backlog pressure as of this acknowledgement (ADR 0012).
    pub pressure: Pressure,
}

/// Producer settings.
///
/// ```
/// use sluice_client::{ClientConfig, ProducerConfig};
/// use sluice_client::Compression;
///
/// let config = ProducerConfig {
///     client: ClientConfig::default(),
///     linger_ms: 20,
///     compression: Compression::Zstd,
///     ..ProducerConfig::default()
/// };
/// assert_eq!(config.max_in_flight_per_partition, 8);
/// ```
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Bootstrap nameservers, TLS and credentials, timeouts.
    pub client: ClientConfig,
    /// How long a batch waits for more records before it is sent, in
    /// milliseconds. Default: 5.
    pub linger_ms: u64,
    /// A batch is sent once it holds this many bytes (uncompressed). A
    /// single larger record travels alone. Default: 1 MiB.
    pub batch_max_bytes: usize,
    /// A batch is sent once it holds this many records. Default: 10000.
    pub batch_max_records: usize,
    /// Batches of one partition sent and not yet acknowledged. Default: 8.
    pub max_in_flight_per_partition: usize,
    /// Bytes of records buffered (waiting or in flight); `send`/`enqueue`
    /// wait for room beyond it. Default: 64 MiB.
    pub memory_limit_bytes: usize,
    /// Compression of batches. Default: none.
    pub compression: Compression,
    /// Upper bound on the time from enqueue to acknowledgement (waiting for
    /// memory included), in milliseconds; then the record fails with
    /// [`ClientError::Timeout`]. Default: 30000.
    pub delivery_timeout_ms: u64,
    /// First backoff after a failed send, in milliseconds; doubles per
    /// consecutive failure. Default: 100.
    pub retry_backoff_ms: u64,
    /// Largest backoff between retries, in milliseconds. Default: 1000.
    pub retry_backoff_max_ms: u64,
    /// Idempotent produce (ADR 0010): the producer gets a cluster-unique id
    /// when it is built and numbers each partition's records, so brokers
    /// recognise a resent batch (after a lost answer, a broken connection,
    /// a broker or store failover) and answer it with its original offset
    /// instead of writing it twice. Requires `max_in_flight_per_partition`
    /// of at most
    /// [`MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER`](sluice_proto::limits::MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER)
    /// (16). A resend is recognised when its original is among the last
    /// broker `[produce] producer_state_rebuild_bytes` of the partition's log, which
    /// `delivery_timeout_ms` keeps true unless the partition takes in more
    /// than that within the timeout. Default: true.
    pub idempotence: bool,
    /// Called when a partition's backlog pressure level (ADR 0012)
    /// changes, as seen in produce acknowledgements. Default: none.
    pub on_pressure: Option<PressureListener>,
    /// Makes the producer transactional (ADR 0016; brokers need
    /// `[transactions] enabled = true`): `Producer::new` calls
    /// `InitProducerId`, which fences every older instance with the same
    /// id; records are sent only between `begin_transaction` and
    /// `commit_transaction`/`abort_transaction`. 1 to 249 bytes of letters,
    /// digits, `.`, `_`, `-`. Requires `idempotence`. Default: none.
    pub transactional_id: Option<String>,
    /// How long a transaction may stay open before the coordinator aborts
    /// it, in milliseconds; at most the brokers' `[transactions]
    /// max_timeout_ms` and at least `delivery_timeout_ms`. Default: 60000.
    pub transaction_timeout_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            linger_ms: 5,
            batch_max_bytes: 1024 * 1024,
            batch_max_records: 10_000,
            max_in_flight_per_partition: 8,
            memory_limit_bytes: 64 * 1024 * 1024,
            compression: Compression::None,
            delivery_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
            idempotence: true,
            on_pressure: None,
            transactional_id: None,
            transaction_timeout_ms: 60_000,
        }
    }
}

/// Resolves to the outcome of one enqueued record.
///
/// ```no_run
/// # async fn example(producer: sluice_client::Producer) -> Result<(), sluice_client::ClientError> {
/// use sluice_client::Record;
/// let delivery = producer.enqueue(Record::new("events", "hello")).await?;
/// let metadata = delivery.await?;
/// println!("written at offset {}", metadata.offset);
/// # Ok(()) }
/// ```
pub struct DeliveryFuture {
    /// Shared by every record of the batch this record went into.
    batch: Arc<BatchCompletion>,
    /// The record's position in its batch: its offset is the batch's base
    /// offset plus this.
    index: u32,
    timestamp_ms: i64,
    /// Where this future's waker sits in the batch's waiter list.
    waker_slot: Option<usize>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.batch
            .poll_record(this.index, this.timestamp_ms, &mut this.waker_slot, context)
    }
}

/// Produces records to Sluice.
///
/// A batch whose outcome is unknown (the connection broke after sending, a
/// timeout, a broker or store failed) is resent. With `idempotence` (the
/// default) the broker recognises the resend and answers it with the
/// original's offset, so each record is written once; without it a resend
/// can write a batch twice (at least once). Order within a partition is
/// kept across retries (in-order resend after draining, see the module
/// docs).
///
/// Memory is bounded by `memory_limit_bytes`: `send` and `enqueue` wait
/// (backpressure) until acknowledged or failed batches free room, up to
/// `delivery_timeout_ms`.
///
/// ```no_run
/// use sluice_client::{Producer, ProducerConfig, Record};
///
/// # async fn example() -> Result<(), sluice_client::ClientError> {
/// let producer = Producer::new(ProducerConfig::default()).await?;
/// let metadata = producer.send(Record::new("orders", "paid").with_key("customer-17")).await?;
/// println!("{}/{} @ {}", metadata.topic, metadata.partition, metadata.offset);
///
/// // Pipelined: enqueue many, await the acknowledgements later.
/// let mut deliveries = Vec::new();
/// for index in 0..1000 {
///     deliveries.push(producer.enqueue(Record::new("orders", format!("event {index}"))).await?);
/// }
/// for delivery in deliveries {
///     delivery.await?;
/// }
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct Producer {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    memory: MemoryBudget,
    sticky: Mutex<StickyPartitioner>,
    /// Open batches, shared with the dispatcher: records are appended
    /// here by `enqueue` itself, so the dispatcher sees one closed batch
    /// instead of one message per record.
    batching: Arc<Mutex<Batching>>,
    /// Wakes the dispatcher when a batch closed or opened (new linger
    /// deadline).
    wake: Arc<Notify>,
    commands: mpsc::UnboundedSender<Command>,
    dispatcher: tokio::task::JoinHandle<()>,
    pressure: Arc<PressureTracker>,
    /// Signalled when a subscription acknowledgement that joined the
    /// transaction got its receipt (commit waits for all of them).
    txn_acks_done: Arc<Notify>,
}

impl Producer {
    /// The latest backlog pressure of a partition, from its last
    /// acknowledgement (None before the first).
    pub fn pressure(&self, topic: &str, partition: u32) -> Option<Pressure> {
        self.pressure.latest(&TopicPartition::new(topic, partition))
    }

    /// Counters and gauges of backlog pressure over all partitions (for an
    /// application's metrics; the SDK exports none itself).
    pub fn pressure_metrics(&self) -> PressureMetrics {
        self.pressure.metrics()
    }

    /// Connects to the cluster, gets a producer id from the nameservers
    /// when `idempotence` is on, and starts the dispatcher task.
    pub async fn new(config: ProducerConfig) -> Result<Producer, ClientError> {
        if config.memory_limit_bytes == 0
            || config.batch_max_bytes == 0
            || config.batch_max_records == 0
        {
            return Err(ClientError::InvalidArgument(
                "memory_limit_bytes, batch_max_bytes and batch_max_records must be above zero"
                    .into(),
            ));
        }
        if config.batch_max_bytes + PRODUCE_ENVELOPE_BYTES > config.client.max_grpc_message_bytes {
            return Err(ClientError::InvalidArgument(format!(
                "batch_max_bytes ({}) must leave {PRODUCE_ENVELOPE_BYTES} bytes of room under client.max_grpc_message_bytes ({})",
                config.batch_max_bytes, config.client.max_grpc_message_bytes
            )));
        }
        let limit = sluice_proto::limits::MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER;
        if config.idempotence && config.max_in_flight_per_partition > limit {
            return Err(ClientError::InvalidArgument(format!(
                "an idempotent producer may keep at most {limit} batches in flight per partition (brokers remember that many to recognise resends); lower max_in_flight_per_partition ({}) or set idempotence to false",
                config.max_in_flight_per_partition
            )));
        }
        if let Some(id) = &config.transactional_id {
            check_transactional(&config, id)?;
        }
        let cluster = Cluster::connect(config.client.clone()).await?;
        cluster.start_route_watch();
        if let Some(id) = config.transactional_id.clone() {
            let bound = Duration::from_millis(config.delivery_timeout_ms);
            let (producer_id, epoch) =
                txn_coordinator::init(&cluster, &id, config.transaction_timeout_ms, bound).await?;
            let timeout = Duration::from_millis(config.transaction_timeout_ms);
            let producer = Self::with_identity(cluster, config, Some(producer_id));
            {
                let mut batching = lock(&producer.batching);
                batching.accumulator.set_transactional(producer_id, epoch);
                batching.transaction = Some(Transaction::new(producer_id, epoch, timeout));
            }
            return Ok(producer);
        }
        let producer_id = if config.idempotence {
            Some(allocate_producer_id(&cluster).await?)
        } else {
            None
        };
        Ok(Self::with_identity(cluster, config, producer_id))
    }

    /// A producer whose batches carry no producer id (tests).
    #[cfg(test)]
    pub(crate) fn with_cluster(cluster: Arc<Cluster>, config: ProducerConfig) -> Producer {
        Self::with_identity(cluster, config, None)
    }

    /// A producer that stamps its batches with `producer_id` (idempotent)
    /// or with none.
    pub(crate) fn with_identity(
        cluster: Arc<Cluster>,
        config: ProducerConfig,
        producer_id: Option<i64>,
    ) -> Producer {
        let (commands, receiver) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_bytes: config.batch_max_bytes,
            max_records: config.batch_max_records,
            linger: Duration::from_millis(config.linger_ms),
            compression: config.compression,
        };
        let accumulator = match producer_id {
            Some(producer_id) => Accumulator::new(limits).idempotent(producer_id),
            None => Accumulator::new(limits),
        };
        let batching = Arc::new(Mutex::new(Batching {
            accumulator,
            ready: VecDeque::new(),
            transaction: None,
        }));
        let wake = Arc::new(Notify::new());
        let pressure = Arc::new(PressureTracker::default());
        let mut dispatcher = Dispatcher::new(
            cluster.clone(),
            config.clone(),
            batching.clone(),
            wake.clone(),
        );
        dispatcher.pressure = pressure.clone();
        let dispatcher = tokio::spawn(dispatcher.run(receiver));
        Producer {
            cluster,
            memory: MemoryBudget::new(config.memory_limit_bytes),
            sticky: Mutex::new(StickyPartitioner::new(rand::random::<u32>())),
            batching,
            wake,
            config,
            commands,
            dispatcher,
            pressure,
            txn_acks_done: Arc::new(Notify::new()),
        }
    }

    /// Enqueues and waits for the acknowledgement.
    pub async fn send(&self, record: Record) -> Result<RecordMetadata, ClientError> {
        self.enqueue(record).await?.await
    }

    /// Enqueues a record, waiting only for memory (backpressure). The
    /// returned future resolves when the record is acknowledged or failed;
    /// it may be awaited after the producer is gone.
    pub async fn enqueue(&self, record: Record) -> Result<DeliveryFuture, ClientError> {
        if record.topic.is_empty() {
            return Err(ClientError::InvalidArgument("record has no topic".into()));
        }
        record.check_timing_headers()?;
        if self.commands.is_closed() {
            return Err(ClientError::Closed);
        }
        // Refused early (before waiting for memory); checked again when
        // the record is appended.
        if let Some(transaction) = &mut lock(&self.batching).transaction {
            transaction.check_enqueue(Instant::now())?;
        }
        let timestamp_ms = record
            .timestamp_ms
            .unwrap_or_else(sluice_proto::now_unix_ms);
        let data = RecordData {
            key: record.key,
            value: record.value,
            headers: record.headers,
            tags: record.tags,
            timestamp_ms: Some(timestamp_ms),
        };
        let record_bytes = BatchBuilder::record_size(&data);
        let largest_record_bytes = self
            .config
            .client
            .max_grpc_message_bytes
            .saturating_sub(PRODUCE_ENVELOPE_BYTES + sluice_proto::batch::HEADER_BYTES);
        if record_bytes > largest_record_bytes {
            return Err(ClientError::InvalidArgument(format!(
                "record of {record_bytes} bytes cannot be sent: the largest is {largest_record_bytes} (client.max_grpc_message_bytes)"
            )));
        }
        // Usually there is room and the record's delivery clock starts when
        // its batch opens (a moment ago at most); only a record that waits
        // for memory needs its own start time.
        let (permit, waited_since) = match self.memory.try_acquire(record_bytes)? {
            Some(permit) => (permit, None),
            None => {
                let enqueued_at = Instant::now();
                let permit = self
                    .memory
                    .acquire(
                        record_bytes,
                        Duration::from_millis(self.config.delivery_timeout_ms),
                    )
                    .await?;
                (permit, Some(enqueued_at))
            }
        };
        let routes = self.cluster.topic_routes(&record.topic).await?;
        let partitions = routes.partitions.len() as u32;
        let partition = choose_partition(record.partition, data.key.as_deref(), partitions, || {
            self.sticky
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .choose(
                    &record.topic,
                    partitions,
                    record_bytes,
                    self.config.batch_max_bytes,
                )
        })
        .map_err(|message| {
            ClientError::InvalidArgument(format!("topic '{}': {message}", record.topic))
        })?;
        let (delivery, wake) = {
            let mut batching = lock(&self.batching);
            let Batching {
                accumulator,
                ready,
                transaction,
            } = &mut *batching;
            if let Some(transaction) = transaction {
                transaction.check_enqueue(Instant::now())?;
            }
            let had_ready = !ready.is_empty();
            let appended = accumulator.append(
                TopicPartition::new(record.topic, partition),
                &data,
                Instant::now,
                |partition| BatchAttachment {
                    completer: Completer::new(BatchCompletion::new(partition.clone())),
                    memory: None,
                    earliest_enqueued_at: None,
                },
                |batch, index| {
                    batch.add(permit, waited_since);
                    DeliveryFuture {
                        batch: batch.completer.shared().clone(),
                        index,
                        timestamp_ms,
                        waker_slot: None,
                    }
                },
                ready,
            );
            // The dispatcher needs a nudge only for news: the first ready
            // batch (later ones are taken together with it) or a new
            // linger deadline.
            let wake = appended.opened || (!had_ready && !ready.is_empty());
            (appended.value, wake)
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(delivery)
    }

    /// Sends every buffered record now (ignoring `linger_ms`) and waits
    /// until no record is outstanding: every record enqueued before the
    /// call, and any enqueued concurrently, is acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .map_err(|_| ClientError::Closed)?;
        wait.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes, then stops the dispatcher.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        drop(self.commands);
        self.dispatcher.await.map_err(|error| {
            tracing::error!(%error, "producer dispatcher task failed");
            ClientError::Closed
        })
    }
}

/// The settings a transactional producer needs (ADR 0016 §7).
fn check_transactional(config: &ProducerConfig, id: &str) -> Result<(), ClientError> {
    sluice_proto::names::TransactionalId::new(id)
        .map_err(|error| ClientError::InvalidArgument(format!("transactional_id: {error}")))?;
    if !config.idempotence {
        return Err(ClientError::InvalidArgument(
            "a transactional producer is idempotent: set idempotence to true".into(),
        ));
    }
    if config.transaction_timeout_ms == 0 {
        return Err(ClientError::InvalidArgument(
            "transaction_timeout_ms must be above zero".into(),
        ));
    }
    if config.delivery_timeout_ms > config.transaction_timeout_ms {
        return Err(ClientError::InvalidArgument(format!(
            "delivery_timeout_ms ({}) must not exceed transaction_timeout_ms ({}): a record could be retried after its transaction was aborted",
            config.delivery_timeout_ms, config.transaction_timeout_ms
        )));
    }
    Ok(())
}

/// A new producer id from the nameservers (ADR 0010).
async fn allocate_producer_id(cluster: &Cluster) -> Result<i64, ClientError> {
    /// Attempts while the answer is retriable (the nameservers' counter is
    /// contended, a nameserver is restarting).
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    let response = loop {
        let result = cluster
            .call_nameserver("AllocateProducerId", |mut client| async move {
                client
                    .allocate_producer_id(sluice_proto::v1::AllocateProducerIdRequest {})
                    .await
            })
            .await;
        match result {
            Err(error) if error.is_retriable() && attempt + 1 < ATTEMPTS => {
                tracing::debug!(%error, attempt, "producer id allocation failed; retrying");
                tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1_000)).await;
                attempt += 1;
            }
            result => break result?,
        }
    };
    i64::try_from(response.producer_id).map_err(|_| {
        ClientError::Server(SluiceError::new(
            sluice_proto::ErrorCode::Internal,
            format!(
                "the nameserver allocated producer id {}, beyond the batch format's range",
                response.producer_id
            ),
        ))
    })
}

#[cfg(test)]
mod tests;
