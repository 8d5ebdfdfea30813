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
mod completion;
mod partitioner;
mod pipeline;
mod pressure;

use crate::cluster::{normalize_address, Cluster, TopicPartition};
use crate::fast_hash::{FastHashMap, FastHashSet};
use crate::{ClientConfig, ClientError};
use accumulator::{Accumulator, BatchLimits, ClosedBatch};
use bytes::Bytes;
use completion::{BatchCompletion, Completer};
use partitioner::{choose_partition, StickyPartitioner};
use pipeline::{Answer, Effect, Moved, Owner, Pipeline};
use pressure::PressureTracker;
pub use pressure::{Pressure, PressureEvent, PressureLevel, PressureListener, PressureMetrics};
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
use sluice_proto::v1::{ProduceRequest, ProduceResponse};
use sluice_proto::SluiceError;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// How often the dispatcher checks timeouts when nothing else wakes it, in
/// milliseconds.
const MAINTENANCE_INTERVAL_MS: u64 = 50;

/// Room left in a gRPC message for the produce request around its batch
/// (request id, topic name, framing), in bytes.
const PRODUCE_ENVELOPE_BYTES: usize = 64 * 1024;

/// Commands or stream events handled per dispatcher round before batches
/// are sent; bounds the latency a burst adds to other work.
const MAX_COMMANDS_PER_ROUND: usize = 1024;

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
    pub topic: String,
    /// Explicit partition; otherwise chosen by key hash, or sticky for
    /// unkeyed records.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
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

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

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
    pub topic: String,
    pub partition: u32,
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
/// use sluice_proto::batch::Compression;
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
        let cluster = Cluster::connect(config.client.clone()).await?;
        cluster.start_route_watch();
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
            let Batching { accumulator, ready } = &mut *batching;
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

/// The producer's memory limit: each record holds its size in permits
/// from enqueue until its batch is acknowledged or failed.
struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    limit_bytes: usize,
}

impl MemoryBudget {
    fn new(limit_bytes: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit_bytes.min(Semaphore::MAX_PERMITS))),
            limit_bytes,
        }
    }

    /// Takes `bytes` of room if there is some right now.
    fn try_acquire(&self, bytes: usize) -> Result<Option<OwnedSemaphorePermit>, ClientError> {
        let Some(permits) = u32::try_from(bytes)
            .ok()
            .filter(|_| bytes <= self.limit_bytes)
        else {
            // `acquire` reports the error.
            return Ok(None);
        };
        match self.semaphore.clone().try_acquire_many_owned(permits) {
            Ok(permit) => Ok(Some(permit)),
            Err(tokio::sync::TryAcquireError::NoPermits) => Ok(None),
            Err(tokio::sync::TryAcquireError::Closed) => Err(ClientError::Closed),
        }
    }

    /// Waits up to `timeout` for `bytes` of room.
    async fn acquire(
        &self,
        bytes: usize,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, ClientError> {
        let too_large = || {
            ClientError::InvalidArgument(format!(
                "record of {bytes} bytes is larger than the producer's memory_limit_bytes ({})",
                self.limit_bytes
            ))
        };
        if bytes > self.limit_bytes {
            return Err(too_large());
        }
        let permits = u32::try_from(bytes).map_err(|_| too_large())?;
        match tokio::time::timeout(timeout, self.semaphore.clone().acquire_many_owned(permits)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout {
                what: format!(
                    "waiting for producer memory (memory_limit_bytes = {}; is the cluster accepting writes?)",
                    self.limit_bytes
                ),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    #[cfg(test)]
    fn available_bytes(&self) -> usize {
        self.semaphore.available_permits()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds
    // a consistent state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Batching state shared by `enqueue` (appends) and the dispatcher
/// (lingers, flushes, takes closed batches). Closed batches wait in
/// `ready`, in closing order, so batches of one partition reach the
/// pipeline in the order their records were enqueued.
struct Batching {
    accumulator: Accumulator<BatchAttachment>,
    ready: VecDeque<ClosedBatch<BatchAttachment>>,
}

/// What a batch carries for its records besides their bytes.
struct BatchAttachment {
    /// Fails the records with `Closed` if the batch is dropped unsent
    /// (the dispatcher is gone).
    completer: Completer,
    /// The records' memory, merged into one permit; released when the
    /// batch is acknowledged or failed.
    memory: Option<OwnedSemaphorePermit>,
    /// Earliest start of a record that waited for memory (the delivery
    /// timeout counts that wait).
    earliest_enqueued_at: Option<Instant>,
}

impl BatchAttachment {
    fn add(&mut self, permit: OwnedSemaphorePermit, waited_since: Option<Instant>) {
        match &mut self.memory {
            Some(memory) => memory.merge(permit),
            None => self.memory = Some(permit),
        }
        if let Some(since) = waited_since {
            self.earliest_enqueued_at = Some(
                self.earliest_enqueued_at
                    .map_or(since, |earliest| earliest.min(since)),
            );
        }
    }
}

enum Command {
    Flush(oneshot::Sender<()>),
}

enum StreamEvent {
    Answer {
        address: String,
        generation: u64,
        response: ProduceResponse,
    },
    Broken {
        address: String,
        generation: u64,
        error: ClientError,
    },
    RoutesRefreshed,
}

/// A batch ready to be sent.
struct ReadyBatch {
    data: Bytes,
    records: u32,
    completer: Completer,
    /// Released after the completion, when the batch is dropped.
    _memory: Option<OwnedSemaphorePermit>,
    created_at: Instant,
}

impl ReadyBatch {
    fn from_closed(closed: ClosedBatch<BatchAttachment>) -> (TopicPartition, ReadyBatch) {
        let attachment = closed.attachment;
        let created_at = attachment
            .earliest_enqueued_at
            .map_or(closed.created_at, |earliest| {
                earliest.min(closed.created_at)
            });
        (
            closed.partition,
            ReadyBatch {
                data: closed.data,
                records: closed.records,
                completer: attachment.completer,
                _memory: attachment.memory,
                created_at,
            },
        )
    }
}

struct PartitionSender {
    /// Also knows the broker the in-flight batches went to: nothing is
    /// sent elsewhere until they answered or the route says the partition
    /// moved (then they are resent, in order, to the new owner).
    pipeline: Pipeline<ReadyBatch>,
    /// A request failed: the broker refuses this partition's requests on
    /// the stream until one says `resume`, which the first one sent after
    /// the failed round does.
    needs_resume: bool,
    /// Error of the last failed answer, used for batches that time out.
    last_error: Option<ClientError>,
}

struct ProduceStream {
    generation: u64,
    requests: mpsc::UnboundedSender<ProduceRequest>,
    /// request id -> (partition, sent at).
    in_flight: FastHashMap<u64, (TopicPartition, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

struct Dispatcher {
    cluster: Arc<Cluster>,
    config: ProducerConfig,
    batching: Arc<Mutex<Batching>>,
    wake: Arc<Notify>,
    /// Closed batches taken from `batching` this round.
    taken: VecDeque<ClosedBatch<BatchAttachment>>,
    partitions: FastHashMap<TopicPartition, PartitionSender>,
    streams: FastHashMap<String, ProduceStream>,
    next_request_id: u64,
    next_generation: u64,
    events: mpsc::UnboundedSender<StreamEvent>,
    event_receiver: Option<mpsc::UnboundedReceiver<StreamEvent>>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    refreshing: bool,
    pressure: Arc<PressureTracker>,
    /// Route changes seen by the cluster handle (route watch, refreshes).
    route_changes: tokio::sync::watch::Receiver<u64>,
    /// A route changed since the pipelines last looked.
    routes_changed: bool,
}

impl Dispatcher {
    fn new(
        cluster: Arc<Cluster>,
        config: ProducerConfig,
        batching: Arc<Mutex<Batching>>,
        wake: Arc<Notify>,
    ) -> Self {
        let (events, event_receiver) = mpsc::unbounded_channel();
        let route_changes = cluster.route_changes();
        Self {
            route_changes,
            routes_changed: false,
            cluster,
            batching,
            wake,
            taken: VecDeque::new(),
            config,
            partitions: FastHashMap::default(),
            streams: FastHashMap::default(),
            next_request_id: 1,
            next_generation: 1,
            events,
            event_receiver: Some(event_receiver),
            flush_waiters: Vec::new(),
            refreshing: false,
            pressure: Arc::new(PressureTracker::default()),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let Some(mut events) = self.event_receiver.take() else {
            return;
        };
        let mut accepting = true;
        let notify = self.wake.clone();
        loop {
            let wake = self.next_wakeup();
            tokio::select! {
                () = notify.notified() => {}
                command = commands.recv(), if accepting => match command {
                    Some(command) => {
                        self.on_command(command);
                        // Take what else is waiting before the per-round
                        // work below, which walks every partition.
                        for _ in 0..MAX_COMMANDS_PER_ROUND {
                            match commands.try_recv() {
                                Ok(command) => self.on_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // The producer was dropped or closed: deliver what is
                        // buffered, then stop.
                        accepting = false;
                        self.close_all_batches();
                    }
                },
                Some(event) = events.recv() => {
                    self.on_event(event);
                    for _ in 0..MAX_COMMANDS_PER_ROUND {
                        match events.try_recv() {
                            Ok(event) => self.on_event(event),
                            Err(_) => break,
                        }
                    }
                }
                changed = self.route_changes.changed() => {
                    // The sender lives in the cluster handle this task holds.
                    self.routes_changed = changed.is_ok();
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            if std::mem::take(&mut self.routes_changed) {
                self.follow_routes();
            }
            self.take_ready_batches(now, !(self.flush_waiters.is_empty() && accepting));
            self.expire_deliveries(now);
            self.expire_stalled_streams(now);
            self.pump(now);
            if self.is_idle() {
                for waiter in self.flush_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                if !accepting {
                    break;
                }
            }
        }
        for (_, stream) in self.streams.drain() {
            stream.task.abort();
        }
    }

    fn next_wakeup(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_millis(MAINTENANCE_INTERVAL_MS);
        if let Some(deadline) = lock(&self.batching).accumulator.next_deadline() {
            wake = wake.min(deadline);
        }
        for sender in self.partitions.values() {
            if let Some(until) = sender.pipeline.backoff_until() {
                wake = wake.min(until);
            }
        }
        wake
    }

    fn is_idle(&self) -> bool {
        let batching = lock(&self.batching);
        batching.accumulator.is_empty()
            && batching.ready.is_empty()
            && self
                .partitions
                .values()
                .all(|sender| sender.pipeline.is_idle())
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Flush(waiter) => {
                self.flush_waiters.push(waiter);
                self.close_all_batches();
            }
        }
    }

    fn close_all_batches(&mut self) {
        self.take_ready_batches(Instant::now(), true);
    }

    /// Moves closed batches (and lingered ones, or with `all` every open
    /// one) from the shared batching state into the pipelines.
    fn take_ready_batches(&mut self, now: Instant, all: bool) {
        {
            let mut batching = lock(&self.batching);
            let Batching { accumulator, ready } = &mut *batching;
            if all {
                accumulator.drain(ready);
            } else {
                accumulator.expire(now, ready);
            }
            std::mem::swap(ready, &mut self.taken);
        }
        while let Some(closed) = self.taken.pop_front() {
            self.enqueue_batch(closed);
        }
    }

    fn enqueue_batch(&mut self, closed: ClosedBatch<BatchAttachment>) {
        let (partition, batch) = ReadyBatch::from_closed(closed);
        let config = &self.config;
        self.partitions
            .entry(partition)
            .or_insert_with(|| PartitionSender {
                pipeline: Pipeline::new(
                    config.max_in_flight_per_partition,
                    Duration::from_millis(config.retry_backoff_ms),
                    Duration::from_millis(config.retry_backoff_max_ms),
                ),
                needs_resume: false,
                last_error: None,
            })
            .pipeline
            .push(batch);
    }

    /// Fails queued batches older than the delivery timeout.
    fn expire_deliveries(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.config.delivery_timeout_ms);
        for (partition, sender) in &mut self.partitions {
            let expired = sender
                .pipeline
                .take_expired(|batch| now.duration_since(batch.created_at) >= timeout);
            for batch in expired {
                let last = sender
                    .last_error
                    .as_ref()
                    .map(|error| format!("; last error: {error}"))
                    .unwrap_or_default();
                tracing::warn!(%partition, records = batch.records, "produce delivery timed out{last}");
                let error = ClientError::Timeout {
                    what: format!(
                        "delivery of {} record(s) to {partition}{last}",
                        batch.records
                    ),
                    timeout_ms: self.config.delivery_timeout_ms,
                };
                fail_batch(batch, error);
            }
        }
    }

    /// Breaks streams with a request unanswered for longer than the request
    /// timeout, so their batches are retried (or time out).
    fn expire_stalled_streams(&mut self, now: Instant) {
        let timeout = self.cluster.request_timeout();
        let stalled: Vec<(String, u64)> = self
            .streams
            .iter()
            .filter(|(_, stream)| {
                stream
                    .in_flight
                    .values()
                    .any(|(_, sent_at)| now.duration_since(*sent_at) >= timeout)
            })
            .map(|(address, stream)| (address.clone(), stream.generation))
            .collect();
        for (address, generation) in stalled {
            let error = ClientError::Timeout {
                what: format!("produce acknowledgement from {address}"),
                timeout_ms: self.config.client.request_timeout_ms,
            };
            self.on_stream_broken(&address, generation, error);
        }
    }

    fn on_event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Answer {
                address,
                generation,
                response,
            } => self.on_answer(&address, generation, response),
            StreamEvent::Broken {
                address,
                generation,
                error,
            } => self.on_stream_broken(&address, generation, error),
            StreamEvent::RoutesRefreshed => self.refreshing = false,
        }
    }

    fn on_answer(&mut self, address: &str, generation: u64, response: ProduceResponse) {
        let Some(stream) = self.streams.get_mut(address) else {
            return;
        };
        if stream.generation != generation {
            return;
        }
        let Some((partition, _)) = stream.in_flight.remove(&response.request_id) else {
            // Abandoned when its partition moved (resent to the new owner).
            tracing::debug!(
                address,
                request_id = response.request_id,
                "produce answer for an abandoned or unknown request"
            );
            return;
        };
        let error = ClientError::from_code(
            response.error,
            format!("{partition} at {address}: {}", response.error_message),
        );
        // Other errors come from brokers that did not look at the
        // partition's backlog (not the owner, shutting down).
        let measured = [
            sluice_proto::ErrorCode::None as i32,
            sluice_proto::ErrorCode::BacklogQuotaExceeded as i32,
        ];
        if measured.contains(&response.error) {
            self.pressure.observe(
                &partition,
                Pressure::of(&response),
                self.config.on_pressure.as_ref(),
            );
        }
        self.apply_answer(&partition, response.request_id, error, Some(&response));
    }

    fn apply_answer(
        &mut self,
        partition: &TopicPartition,
        request_id: u64,
        error: Option<ClientError>,
        response: Option<&ProduceResponse>,
    ) {
        let Some(sender) = self.partitions.get_mut(partition) else {
            return;
        };
        let answer = match &error {
            None => Answer::Success,
            Some(error) if error.is_retriable() => Answer::Retriable,
            Some(_) => Answer::Fatal,
        };
        let effect = sender
            .pipeline
            .on_answer(request_id, answer, Instant::now());
        if matches!(effect, Effect::Unknown) {
            // An attempt abandoned when the partition moved: its batch was
            // resent to the new owner, whose answer counts.
            tracing::debug!(%partition, request_id, "answer to an abandoned attempt ignored");
            return;
        }
        let needs_refresh = error.as_ref().is_some_and(ClientError::needs_route_refresh);
        if let Some(error) = &error {
            tracing::debug!(%partition, %error, "produce request failed");
            sender.last_error = Some(error.clone());
            sender.needs_resume = true;
        }
        match effect {
            Effect::Delivered(batch) => {
                let base_offset = response.map(|response| response.base_offset).unwrap_or(0);
                let pressure = response.map(Pressure::of).unwrap_or_default();
                batch.completer.deliver(base_offset, pressure);
            }
            Effect::Failed(batch) => {
                let error = error.unwrap_or_else(|| {
                    ClientError::Server(SluiceError::new(
                        sluice_proto::ErrorCode::Internal,
                        "produce failed",
                    ))
                });
                tracing::warn!(%partition, %error, records = batch.records, "produce failed; not retriable");
                fail_batch(batch, error);
            }
            Effect::Pending | Effect::Unknown => {}
        }
        if needs_refresh {
            self.refresh_routes(vec![partition.topic.clone()]);
        }
    }

    fn on_stream_broken(&mut self, address: &str, generation: u64, error: ClientError) {
        let Some(stream) = self.streams.get(address) else {
            return;
        };
        if stream.generation != generation {
            return;
        }
        let Some(stream) = self.streams.remove(address) else {
            return;
        };
        stream.task.abort();
        tracing::warn!(address, %error, in_flight = stream.in_flight.len(), "produce stream broken; retrying its batches");
        let mut in_flight: Vec<(u64, TopicPartition)> = stream
            .in_flight
            .into_iter()
            .map(|(request_id, (partition, _))| (request_id, partition))
            .collect();
        in_flight.sort();
        for (request_id, partition) in in_flight {
            self.apply_answer(&partition, request_id, Some(error.clone()), None);
        }
    }

    fn refresh_routes(&mut self, topics: Vec<String>) {
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        let cluster = self.cluster.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Err(error) = cluster.refresh_routes(&topics).await {
                tracing::warn!(?topics, %error, "route refresh failed");
            }
            let _ = events.send(StreamEvent::RoutesRefreshed);
        });
    }

    /// Lets every pipeline that has sent something see its partition's
    /// current route: those whose owner changed abandon their in-flight
    /// attempts (forgotten by the old owner's stream too) and resend.
    fn follow_routes(&mut self) {
        for (partition, sender) in &mut self.partitions {
            let Some(old) = sender.pipeline.sent_to().map(|owner| owner.address.clone()) else {
                continue;
            };
            let Some(route) = self
                .cluster
                .cached_route(&partition.topic, partition.partition)
            else {
                continue;
            };
            let route = Owner {
                address: if route.broker_address.is_empty() {
                    String::new()
                } else {
                    normalize_address(&route.broker_address)
                },
                epoch: route.epoch,
            };
            let Moved::Yes { abandoned } = sender.pipeline.on_route(&route) else {
                continue;
            };
            if abandoned.is_empty() {
                tracing::debug!(%partition, from = %old, to = %route.address, epoch = route.epoch, "partition moved");
            } else {
                tracing::info!(%partition, from = %old, to = %route.address, epoch = route.epoch, resent = abandoned.len(), moves = sender.pipeline.moves(), "partition moved; resending its in-flight batches to the new owner");
            }
            // The new owner's stream may hold this partition poisoned from
            // an earlier stay there.
            sender.needs_resume = true;
            if let Some(stream) = self.streams.get_mut(&old) {
                for request_id in abandoned {
                    stream.in_flight.remove(&request_id);
                }
            }
        }
    }

    /// Sends whatever the pipelines allow.
    fn pump(&mut self, now: Instant) {
        let mut missing_routes = FastHashSet::default();
        let partitions: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for partition in partitions {
            while let Some(sender) = self.partitions.get_mut(&partition) {
                if !sender.pipeline.can_send(now) {
                    break;
                }
                let owner = match self
                    .cluster
                    .cached_route(&partition.topic, partition.partition)
                {
                    Some(route) if !route.broker_address.is_empty() => Owner {
                        address: normalize_address(&route.broker_address),
                        epoch: route.epoch,
                    },
                    _ => {
                        missing_routes.insert(partition.topic.clone());
                        break;
                    }
                };
                if !sender.pipeline.may_send_to(&owner.address) {
                    // Routes moved without a newer epoch: wait for the old
                    // owner's answers rather than risk a reorder.
                    break;
                }
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                let Some(batch) = sender.pipeline.send_next(request_id, &owner) else {
                    break;
                };
                let request = ProduceRequest {
                    request_id,
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    batch: batch.data.clone(),
                    resume: std::mem::take(&mut sender.needs_resume),
                };
                let address = owner.address;
                let stream = match self.stream(&address) {
                    Ok(stream) => stream,
                    Err(error) => {
                        self.apply_answer(&partition, request_id, Some(error), None);
                        break;
                    }
                };
                stream
                    .in_flight
                    .insert(request_id, (partition.clone(), now));
                if stream.requests.send(request).is_err() {
                    let generation = stream.generation;
                    self.on_stream_broken(
                        &address,
                        generation,
                        ClientError::Transport {
                            address: address.clone(),
                            message: "produce stream closed".into(),
                        },
                    );
                    break;
                }
            }
        }
        if !missing_routes.is_empty() {
            self.refresh_routes(missing_routes.into_iter().collect());
        }
    }

    fn stream(&mut self, address: &str) -> Result<&mut ProduceStream, ClientError> {
        if !self.streams.contains_key(address) {
            let client = self.cluster.broker(address)?;
            let generation = self.next_generation;
            self.next_generation += 1;
            let (requests, outbound) = mpsc::unbounded_channel();
            let task = tokio::spawn(run_stream(
                client,
                address.to_string(),
                generation,
                outbound,
                self.events.clone(),
            ));
            self.streams.insert(
                address.to_string(),
                ProduceStream {
                    generation,
                    requests,
                    in_flight: FastHashMap::default(),
                    task,
                },
            );
        }
        self.streams.get_mut(address).ok_or(ClientError::Closed)
    }
}

fn fail_batch(batch: ReadyBatch, error: ClientError) {
    batch.completer.fail(error);
}

/// Runs one `Broker.Produce` stream, forwarding every answer.
async fn run_stream(
    mut client: crate::cluster::BrokerGrpc,
    address: String,
    generation: u64,
    outbound: mpsc::UnboundedReceiver<ProduceRequest>,
    events: mpsc::UnboundedSender<StreamEvent>,
) {
    let error = match client.produce(UnboundedReceiverStream::new(outbound)).await {
        Ok(response) => {
            let mut inbound = response.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(response)) => {
                        if events
                            .send(StreamEvent::Answer {
                                address: address.clone(),
                                generation,
                                response,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => {
                        break ClientError::Transport {
                            address: address.clone(),
                            message: "the broker closed the produce stream".into(),
                        }
                    }
                    Err(status) => break ClientError::from_status(&address, &status),
                }
            }
        }
        Err(status) => ClientError::from_status(&address, &status),
    };
    let _ = events.send(StreamEvent::Broken {
        address,
        generation,
        error,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::FakeBroker;
    use sluice_proto::ErrorCode;
    use std::collections::HashMap;

    fn test_client_config() -> ClientConfig {
        ClientConfig {
            // Nothing listens there: route refreshes fail fast and the
            // seeded routes stay.
            bootstrap: vec!["http://127.0.0.1:1".into()],
            connect_timeout_ms: 200,
            request_timeout_ms: 5_000,
            ..ClientConfig::default()
        }
    }

    fn fast_config() -> ProducerConfig {
        ProducerConfig {
            client: test_client_config(),
            linger_ms: 1,
            batch_max_records: 7,
            max_in_flight_per_partition: 4,
            retry_backoff_ms: 1,
            retry_backoff_max_ms: 5,
            ..ProducerConfig::default()
        }
    }

    #[tokio::test]
    async fn memory_budget_blocks_and_releases() {
        let budget = MemoryBudget::new(100);
        let first = budget
            .acquire(60, Duration::from_secs(60))
            .await
            .expect("room for 60 of 100");
        let semaphore = budget.semaphore.clone();
        let waiter =
            tokio::spawn(async move { semaphore.acquire_many_owned(50).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "60 + 50 > 100 must wait");
        drop(first);
        waiter.await.expect("task").expect("semaphore open");
        assert_eq!(budget.available_bytes(), 100);
        assert!(matches!(
            budget.acquire(101, Duration::from_secs(1)).await,
            Err(ClientError::InvalidArgument(_))
        ));
        let _all = budget
            .acquire(100, Duration::from_secs(1))
            .await
            .expect("whole budget");
        assert!(matches!(
            budget.acquire(1, Duration::from_millis(10)).await,
            Err(ClientError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn undeliverable_records_time_out_and_free_their_memory() {
        // A port nobody listens on.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", dead.local_addr().expect("address"));
        drop(dead);
        let cluster = Cluster::unconnected(test_client_config());
        cluster.set_routes("t", &[&address]);
        let config = ProducerConfig {
            delivery_timeout_ms: 300,
            memory_limit_bytes: 10_000,
            ..fast_config()
        };
        let producer = Producer::with_cluster(cluster, config);
        let delivery = producer
            .enqueue(Record::new("t", "lost"))
            .await
            .expect("enqueued");
        assert!(producer.memory.available_bytes() < 10_000);
        match delivery.await {
            Err(ClientError::Timeout { what, .. }) => assert!(what.contains("t/0"), "{what}"),
            other => panic!("expected a delivery timeout, got {other:?}"),
        }
        producer
            .flush()
            .await
            .expect("flush completes once nothing is outstanding");
        assert_eq!(producer.memory.available_bytes(), 10_000);
        producer.close().await.expect("close");
    }

    #[tokio::test]
    async fn retries_keep_order_without_loss_or_duplicates() {
        let broker = FakeBroker::default();
        {
            let mut state = broker.lock();
            state.fail_produce.insert(3, ErrorCode::NotOwner);
            state.fail_produce.insert(10, ErrorCode::Unavailable);
            state.fail_produce.insert(25, ErrorCode::NotOwner);
            state.poison_after_failure = true;
        }
        let address = broker.start().await;
        let cluster = Cluster::unconnected(test_client_config());
        cluster.set_routes("t", &[&address, &address]);
        let producer = Producer::with_cluster(cluster, fast_config());
        let mut deliveries = Vec::new();
        for index in 0..400u32 {
            let partition = index % 2;
            let record = Record::new("t", format!("{partition}-{index}")).with_partition(partition);
            deliveries.push((
                partition,
                index,
                producer.enqueue(record).await.expect("enqueued"),
            ));
        }
        let mut acknowledged: HashMap<u32, Vec<(u64, String)>> = HashMap::new();
        for (partition, index, delivery) in deliveries {
            let metadata = delivery
                .await
                .expect("every record is delivered after retries");
            assert_eq!(metadata.partition, partition);
            acknowledged
                .entry(partition)
                .or_default()
                .push((metadata.offset, format!("{partition}-{index}")));
        }
        producer.close().await.expect("close");
        assert!(
            !broker.lock().resumed_requests.is_empty(),
            "retries after a failure carry `resume`"
        );
        let failed = broker.lock().failed_requests;
        assert!(
            failed >= 6,
            "injected failures and the ones behind them happened ({failed})"
        );
        for partition in 0..2 {
            let log = broker.values("t", partition);
            let expected = acknowledged
                .remove(&partition)
                .expect("records for the partition");
            assert_eq!(
                log, expected,
                "partition {partition}: log order equals send order, offsets match"
            );
        }
    }

    #[tokio::test]
    async fn records_of_a_batch_resolve_together_and_free_memory() {
        let broker = FakeBroker::default();
        let address = broker.start().await;
        let cluster = Cluster::unconnected(test_client_config());
        cluster.set_routes("t", &[&address]);
        let config = ProducerConfig {
            memory_limit_bytes: 1_000_000,
            ..fast_config()
        };
        let producer = Producer::with_cluster(cluster, config);
        let mut deliveries = Vec::new();
        for index in 0..30 {
            deliveries.push(
                producer
                    .enqueue(Record::new("t", format!("{index}")).with_timestamp_ms(index))
                    .await
                    .expect("enqueued"),
            );
        }
        assert!(producer.memory.available_bytes() < 1_000_000);
        // Awaited out of order: each future still gets its own record.
        let last = deliveries.pop().expect("30 deliveries");
        let last = last.await.expect("delivered");
        assert_eq!((last.offset, last.timestamp_ms), (29, 29));
        for (index, delivery) in deliveries.into_iter().enumerate() {
            let metadata = delivery.await.expect("delivered");
            assert_eq!(metadata.topic, "t");
            assert_eq!(metadata.offset, index as u64, "offset = batch base + index");
            assert_eq!(metadata.timestamp_ms, index as i64);
        }
        producer.flush().await.expect("flush");
        assert_eq!(producer.memory.available_bytes(), 1_000_000);
        assert!(
            broker.lock().produce_requests >= 5,
            "30 records in batches of at most 7"
        );
        producer.close().await.expect("close");
        let values: Vec<String> = broker.values("t", 0).into_iter().map(|(_, v)| v).collect();
        let expected: Vec<String> = (0..30).map(|index| index.to_string()).collect();
        assert_eq!(values, expected);
    }

    #[tokio::test]
    async fn deliveries_fail_with_closed_when_the_dispatcher_is_gone() {
        let cluster = Cluster::unconnected(test_client_config());
        cluster.set_routes("t", &["http://127.0.0.1:1"]);
        let config = ProducerConfig {
            linger_ms: 60_000,
            ..fast_config()
        };
        let producer = Producer::with_cluster(cluster, config);
        let delivery = producer
            .enqueue(Record::new("t", "x"))
            .await
            .expect("enqueued");
        producer.dispatcher.abort();
        // The open batch is only dropped with the producer's shared state.
        drop(producer);
        let outcome = tokio::time::timeout(Duration::from_secs(10), delivery)
            .await
            .expect("the delivery resolves instead of waiting forever");
        assert!(matches!(outcome, Err(ClientError::Closed)), "{outcome:?}");
    }

    #[tokio::test]
    async fn non_retriable_error_fails_only_its_batch() {
        let broker = FakeBroker::default();
        {
            let mut state = broker.lock();
            state.fail_produce.insert(2, ErrorCode::TooLarge);
            state.poison_after_failure = true;
        }
        let address = broker.start().await;
        let cluster = Cluster::unconnected(test_client_config());
        cluster.set_routes("t", &[&address]);
        let config = ProducerConfig {
            batch_max_records: 1,
            max_in_flight_per_partition: 1,
            ..fast_config()
        };
        let producer = Producer::with_cluster(cluster, config);
        let mut outcomes = Vec::new();
        for index in 0..5 {
            outcomes.push(
                producer
                    .enqueue(Record::new("t", format!("{index}")))
                    .await
                    .expect("enqueued"),
            );
        }
        let mut results = Vec::new();
        for outcome in outcomes {
            results.push(outcome.await);
        }
        producer.close().await.expect("close");
        assert!(results[0].is_ok());
        assert_eq!(
            results[1].as_ref().err().and_then(ClientError::code),
            Some(ErrorCode::TooLarge)
        );
        assert!(results[2..].iter().all(Result::is_ok), "{results:?}");
        let values: Vec<String> = broker
            .values("t", 0)
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        assert_eq!(values, vec!["0", "2", "3", "4"]);
    }

    #[tokio::test]
    async fn unknown_partition_is_refused_at_enqueue() {
        let cluster = Cluster::unconnected(test_client_config());
        cluster.set_routes("t", &["http://127.0.0.1:1"]);
        let producer = Producer::with_cluster(cluster, fast_config());
        let result = producer
            .enqueue(Record::new("t", "x").with_partition(3))
            .await;
        assert!(matches!(result, Err(ClientError::InvalidArgument(_))));
        producer.close().await.expect("close");
    }

    #[test]
    fn record_builders() {
        let record = Record::new("t", "v")
            .with_key("k")
            .with_partition(2)
            .with_timestamp_ms(5);
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.partition, Some(2));
        assert_eq!(record.timestamp_ms, Some(5));
    }

    #[tokio::test]
    async fn idempotent_producer_numbers_records_and_resends_batches_unchanged() {
        use crate::testing::FakeNameServer;
        use sluice_proto::batch::BatchHeader;
        let broker = FakeBroker::default();
        {
            let mut state = broker.lock();
            state.fail_produce.insert(2, ErrorCode::Unavailable);
            state.fail_produce.insert(9, ErrorCode::NotOwner);
            state.poison_after_failure = true;
        }
        let address = broker.start().await;
        let nameserver = FakeNameServer::default();
        nameserver
            .lock()
            .routes
            .insert("t".into(), vec![address.clone(), address]);
        let nameserver_address = nameserver.start().await;
        let config = ProducerConfig {
            client: ClientConfig {
                bootstrap: vec![nameserver_address],
                ..test_client_config()
            },
            ..fast_config()
        };
        assert!(config.idempotence, "on by default");
        let producer = Producer::new(config).await.expect("producer");
        let mut deliveries = Vec::new();
        for index in 0..120u32 {
            let record = Record::new("t", format!("{index}")).with_partition(index % 2);
            deliveries.push(producer.enqueue(record).await.expect("enqueued"));
        }
        for delivery in deliveries {
            delivery.await.expect("delivered after retries");
        }
        producer.close().await.expect("close");
        assert_eq!(nameserver.lock().allocated_producer_ids, 1);
        let state = broker.lock();
        assert!(state.failed_requests >= 2, "failures were injected");
        for partition in 0..2u32 {
            let log = &state.logs[&("t".to_string(), partition)];
            let mut next_sequence = 0;
            for batch in log {
                let header = BatchHeader::parse(batch).expect("valid header");
                assert_eq!((header.producer_id, header.producer_epoch), (1001, 0));
                assert_eq!(
                    header.base_sequence, next_sequence,
                    "partition {partition}: sequences count records in order"
                );
                next_sequence += header.record_count as i32;
            }
            assert_eq!(next_sequence, 60);
        }
        // Every request, retries included, carried a batch identical to
        // one in the log (same sequence, same CRC): resends are unchanged.
        let logged: std::collections::HashSet<(i32, u32)> = state
            .logs
            .values()
            .flatten()
            .map(|batch| {
                let header = BatchHeader::parse(batch).expect("valid header");
                (header.base_sequence, header.crc)
            })
            .collect();
        for sent in &state.sent_batches {
            let header = BatchHeader::parse(sent).expect("valid header");
            assert!(logged.contains(&(header.base_sequence, header.crc)));
        }
        assert!(state.sent_batches.len() > logged.len(), "some were resent");
    }

    #[tokio::test]
    async fn idempotence_limits_batches_in_flight() {
        let config = ProducerConfig {
            max_in_flight_per_partition:
                sluice_proto::limits::MAX_IN_FLIGHT_BATCHES_PER_IDEMPOTENT_PRODUCER + 1,
            ..fast_config()
        };
        match Producer::new(config.clone()).await {
            Err(ClientError::InvalidArgument(message)) => {
                assert!(message.contains("idempotence"), "{message}")
            }
            other => panic!("expected InvalidArgument, got {:?}", other.err()),
        }
        // Without idempotence the limit does not apply (connecting then
        // fails: nothing listens at the bootstrap address).
        let plain = ProducerConfig {
            idempotence: false,
            ..config
        };
        assert!(!matches!(
            Producer::new(plain).await,
            Err(ClientError::InvalidArgument(_))
        ));
    }

    /// Enqueues `values` and returns their deliveries.
    async fn enqueue_values(
        producer: &Producer,
        values: std::ops::Range<u32>,
    ) -> Vec<DeliveryFuture> {
        let mut deliveries = Vec::new();
        for index in values {
            deliveries.push(
                producer
                    .enqueue(Record::new("t", format!("{index}")))
                    .await
                    .expect("enqueued"),
            );
        }
        deliveries
    }

    fn logged_values(broker: &FakeBroker) -> Vec<String> {
        broker
            .values("t", 0)
            .into_iter()
            .map(|(_, value)| value)
            .collect()
    }

    /// An old and a new owner of topic t (one partition) and a fake
    /// nameserver routing to the old one; returns them with the new
    /// owner's and the nameserver's addresses.
    async fn two_owners() -> (
        FakeBroker,
        FakeBroker,
        String,
        crate::testing::FakeNameServer,
        String,
    ) {
        let old_owner = FakeBroker::default();
        let new_owner = FakeBroker::default();
        let old_address = old_owner.start().await;
        let new_address = new_owner.start().await;
        let nameserver = crate::testing::FakeNameServer::default();
        nameserver
            .lock()
            .routes
            .insert("t".into(), vec![old_address]);
        let nameserver_address = nameserver.start().await;
        (
            old_owner,
            new_owner,
            new_address,
            nameserver,
            nameserver_address,
        )
    }

    #[tokio::test]
    async fn resends_to_the_new_owner_without_waiting_for_a_frozen_old_one() {
        let (old_owner, new_owner, new_address, nameserver, nameserver_address) =
            two_owners().await;
        let config = ProducerConfig {
            client: ClientConfig {
                bootstrap: vec![nameserver_address],
                // Far beyond the bound below: waiting for the frozen owner
                // would fail the test.
                request_timeout_ms: 120_000,
                ..test_client_config()
            },
            delivery_timeout_ms: 120_000,
            batch_max_records: 5,
            ..fast_config()
        };
        let producer = Producer::new(config).await.expect("producer");
        for delivery in enqueue_values(&producer, 0..20).await {
            delivery.await.expect("delivered before the freeze");
        }
        // The owner freezes with batches in flight.
        old_owner
            .frozen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let taken = || old_owner.taken.load(std::sync::atomic::Ordering::SeqCst);
        let before = taken();
        let deliveries = enqueue_values(&producer, 20..60).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while taken() == before {
            assert!(Instant::now() < deadline, "batches reach the frozen owner");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another broker takes the partition over (a higher epoch).
        nameserver.move_topic("t", &new_address);
        let all = async {
            let mut offsets = Vec::new();
            for delivery in deliveries {
                offsets.push(delivery.await.expect("delivered by the new owner").offset);
            }
            offsets
        };
        let offsets = tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("acknowledged again within 10 s while the old owner stays frozen");
        assert_eq!(
            offsets,
            (0..40).collect::<Vec<u64>>(),
            "offsets are the new owner's"
        );
        let resent: Vec<String> = (20..60).map(|index| index.to_string()).collect();
        assert_eq!(logged_values(&new_owner), resent, "in order, once each");
        // The old owner thaws and answers its abandoned attempts late
        // (successfully: this fake has no fencing): they change nothing.
        old_owner
            .frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for delivery in enqueue_values(&producer, 60..70).await {
            delivery.await.expect("delivered after the thaw");
        }
        producer.flush().await.expect("flush");
        let mut expected = resent;
        expected.extend((60..70).map(|index| index.to_string()));
        assert_eq!(logged_values(&new_owner), expected);
        let old_log = logged_values(&old_owner);
        assert!(
            old_log
                .iter()
                .all(|value| value.parse::<u32>().is_ok_and(|value| value < 60)),
            "nothing went to the old owner after the move: {old_log:?}"
        );
        producer.close().await.expect("close");
    }

    #[tokio::test]
    async fn follows_a_partition_to_its_new_owner_in_order() {
        let (old_owner, new_owner, new_address, nameserver, nameserver_address) =
            two_owners().await;
        let config = ProducerConfig {
            client: ClientConfig {
                bootstrap: vec![nameserver_address],
                ..test_client_config()
            },
            batch_max_records: 5,
            ..fast_config()
        };
        let producer = Producer::new(config)
            .await
            .expect("connected to the fake nameserver");
        let send_range = |range: std::ops::Range<u32>| {
            let producer = &producer;
            async move {
                let mut deliveries = Vec::new();
                for index in range {
                    deliveries.push(
                        producer
                            .enqueue(Record::new("t", format!("{index}")))
                            .await
                            .expect("enqueued"),
                    );
                }
                for delivery in deliveries {
                    delivery.await.expect("delivered");
                }
            }
        };
        send_range(0..20).await;
        // The partition moves: the old owner refuses from its next-but-one
        // request on, the nameserver points at the new owner.
        {
            let mut state = old_owner.lock();
            state.not_owner_from = Some(state.produce_requests + 2);
        }
        nameserver
            .lock()
            .routes
            .insert("t".into(), vec![new_address]);
        send_range(20..100).await;
        producer.close().await.expect("close");
        let mut values: Vec<String> = old_owner
            .values("t", 0)
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        let moved: Vec<String> = new_owner
            .values("t", 0)
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        assert!(!moved.is_empty(), "records went to the new owner");
        values.extend(moved);
        let expected: Vec<String> = (0..100).map(|index| index.to_string()).collect();
        assert_eq!(
            values, expected,
            "old owner's log then new owner's log is the send order"
        );
        let state = nameserver.lock();
        assert!(
            state.get_routes_calls >= 2 || state.watch_calls >= 1,
            "routes were refreshed (after the refusal, or by the route watch)"
        );
    }

    #[test]
    fn delays_and_ttls_are_checked_before_sending() {
        use std::time::Duration;
        let ok = Record::new("t", "v")
            .with_delay(Duration::from_secs(3600))
            .with_ttl(Duration::from_secs(60));
        assert!(ok.check_timing_headers().is_ok());
        let too_far = Record::new("t", "v").with_delay(Duration::from_secs(200 * 86_400));
        assert!(matches!(
            too_far.check_timing_headers(),
            Err(ClientError::InvalidArgument(message)) if message.contains("days ahead")
        ));
        let zero_ttl = Record::new("t", "v").with_ttl(Duration::ZERO);
        assert!(zero_ttl.check_timing_headers().is_err());
        let garbage =
            Record::new("t", "v").with_header(sluice_proto::headers::DELIVER_AT_MS, "soon");
        assert!(garbage.check_timing_headers().is_err());
    }
}
