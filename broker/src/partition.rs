//! One partition served by this broker: takeover (seal the previous open
//! segment, close it, open a new one), the ordered append pipeline to the
//! segment's stores, segment rolling, and reads for fetch.
//!
//! A single task per partition owns the pipeline, so offsets are assigned
//! in arrival order and acknowledgements go back in that order. After any
//! failure every queued and in-flight append fails and the task re-runs
//! takeover before it accepts again (a new *generation*), so an in-order
//! client retry never reorders.

use crate::clients::{nameserver_call, request, stream_request};
use crate::decisions::{prefix_within_high_watermark, segment_for_offset};
use crate::error::BrokerError;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use bytes::Bytes;
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use sluice_proto::batch::{assign, BatchHeader};
use sluice_proto::names::CONSUMER_OFFSETS_TOPIC;
use sluice_proto::v1::{
    AppendRequest, AppendResponse, CloseSegmentRequest, CreateSegmentRequest, Durability,
    ListSegmentsRequest, ReadRequest, SealSegmentRequest, SegmentInfo, SegmentState,
    StoreCreateSegmentRequest, TopicConfig,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// Where the partition is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking over (and, for offsets partitions, replaying).
    Loading,
    Serving,
    /// Re-running takeover after a failure or while rolling is impossible.
    Recovering,
    Stopped,
}

#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub phase: Phase,
    /// End of durable data: nothing at or beyond it is served.
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// Bumped after each pipeline failure; appends submitted under an older
    /// generation fail.
    pub generation: u64,
    /// True once high watermark and log start are known from a takeover.
    pub loaded: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct AppendOutcome {
    pub base_offset: u64,
    pub append_time_ms: i64,
    pub epoch: u64,
}

/// Runs inside the pipeline, in log order, once an append is durable; gets
/// its base offset.
pub type OnDurable = Box<dyn FnOnce(u64) + Send>;

struct AppendJob {
    batch: Bytes,
    header: BatchHeader,
    generation: u64,
    reply: oneshot::Sender<Result<AppendOutcome, BrokerError>>,
    on_durable: Option<OnDurable>,
    _queued_bytes: OwnedSemaphorePermit,
}

impl AppendJob {
    fn fail(self, error: BrokerError) {
        // The producer stream may be gone; nothing to tell then.
        let _ = self.reply.send(Err(error));
    }
}

pub struct Partition {
    pub key: PartitionKey,
    pub epoch: u64,
    pub config: TopicConfig,
    status: watch::Sender<PartitionStatus>,
    jobs: mpsc::UnboundedSender<AppendJob>,
    queue_bytes: Arc<Semaphore>,
    /// Total permits of `queue_bytes`: a batch larger than the whole queue
    /// takes all of it rather than waiting forever.
    queue_limit_permits: u32,
    segments: RwLock<Vec<SegmentInfo>>,
    stopped: watch::Sender<bool>,
}

impl Partition {
    /// Creates the partition and starts its takeover and pipeline task.
    pub fn spawn(
        shared: Arc<Shared>,
        key: PartitionKey,
        epoch: u64,
        config: TopicConfig,
    ) -> Arc<Partition> {
        let (jobs, jobs_receiver) = mpsc::unbounded_channel();
        let queue_permits = usize::try_from(shared.config.partition_queue_bytes)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        let partition = Arc::new(Partition {
            key,
            epoch,
            config,
            status: watch::Sender::new(PartitionStatus {
                phase: Phase::Loading,
                high_watermark: 0,
                log_start_offset: 0,
                generation: 0,
                loaded: false,
            }),
            jobs,
            queue_bytes: Arc::new(Semaphore::new(queue_permits)),
            queue_limit_permits: u32::try_from(queue_permits).unwrap_or(u32::MAX),
            segments: RwLock::new(Vec::new()),
            stopped: watch::Sender::new(false),
        });
        tokio::spawn(run(shared, partition.clone(), jobs_receiver));
        partition
    }

    pub fn status(&self) -> PartitionStatus {
        self.status.borrow().clone()
    }

    /// Changes whenever the high watermark or phase changes (long-poll).
    pub fn subscribe(&self) -> watch::Receiver<PartitionStatus> {
        self.status.subscribe()
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        match self.segments.read() {
            Ok(segments) => segments.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_segments(&self, segments: Vec<SegmentInfo>) {
        match self.segments.write() {
            Ok(mut guard) => *guard = segments,
            Err(poisoned) => *poisoned.into_inner() = segments,
        }
    }

    /// Drops deleted segments from the cached list and advances the log start.
    pub fn segments_deleted(&self, deleted: &[u64]) {
        let mut segments = self.segments();
        segments.retain(|segment| !deleted.contains(&segment.segment_id));
        if let Some(first) = segments.first() {
            let base = first.base_offset;
            self.status.send_modify(|status| {
                status.log_start_offset = status.log_start_offset.max(base);
            });
        }
        self.set_segments(segments);
    }

    pub fn is_offsets_topic(&self) -> bool {
        self.key.topic == CONSUMER_OFFSETS_TOPIC
    }

    /// Largest batch accepted for this topic.
    pub fn max_batch_bytes(&self, default_bytes: u32) -> usize {
        if self.config.max_batch_bytes == 0 {
            default_bytes as usize
        } else {
            self.config.max_batch_bytes as usize
        }
    }

    /// Stops serving: pending appends fail with NOT_OWNER.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
        self.status
            .send_modify(|status| status.phase = Phase::Stopped);
    }

    fn not_owner(&self) -> BrokerError {
        BrokerError::NotOwner {
            topic: self.key.topic.clone(),
            partition: self.key.partition,
        }
    }

    /// Queues a validated batch. `generation` is the one the caller saw when
    /// it first sent to this partition; a newer one means an earlier append
    /// failed. The receiver answers once the batch is durable (or failed).
    pub fn submit(
        &self,
        batch: Bytes,
        header: BatchHeader,
        generation: u64,
        on_durable: Option<OnDurable>,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, BrokerError>>, BrokerError> {
        let status = self.status();
        match status.phase {
            Phase::Serving => {}
            Phase::Stopped => return Err(self.not_owner()),
            Phase::Loading | Phase::Recovering => {
                return Err(BrokerError::Recovering {
                    topic: self.key.topic.clone(),
                    partition: self.key.partition,
                })
            }
        }
        if generation != status.generation {
            return Err(BrokerError::EarlierRequestFailed {
                topic: self.key.topic.clone(),
                partition: self.key.partition,
            });
        }
        let permits = u32::try_from(batch.len())
            .unwrap_or(u32::MAX)
            .min(self.queue_limit_permits);
        let permit = self
            .queue_bytes
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| {
                BrokerError::Throttled(format!(
                    "append queue of {} is full; retry after a backoff",
                    self.key
                ))
            })?;
        let (reply, receiver) = oneshot::channel();
        self.jobs
            .send(AppendJob {
                batch,
                header,
                generation,
                reply,
                on_durable,
                _queued_bytes: permit,
            })
            .map_err(|_| self.not_owner())?;
        Ok(receiver)
    }

    /// Whole batches from `offset` (the first contains it), at most
    /// `max_bytes` unless one batch is larger, never beyond the high
    /// watermark: from the tail cache if it covers `offset`, else from the
    /// store of the segment holding it.
    pub async fn read(
        &self,
        shared: &Shared,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Bytes, BrokerError> {
        let high_watermark = self.status().high_watermark;
        if offset >= high_watermark {
            return Ok(Bytes::new());
        }
        if let Some(cached) = shared.tail_cache_read(&self.key, offset, max_bytes) {
            return Ok(cached);
        }
        let segments = self.segments();
        let Some(segment) = segment_for_offset(&segments, offset) else {
            return Ok(Bytes::new());
        };
        let end_offset = if segment.state() == SegmentState::Open {
            high_watermark
        } else {
            segment.end_offset.min(high_watermark)
        };
        if offset >= end_offset {
            return Ok(Bytes::new());
        }
        let mut last_error = BrokerError::Unavailable(format!(
            "segment {} of {} has no replicas",
            segment.segment_id, self.key
        ));
        for replica in &segment.replicas {
            let mut store = shared.clients.store(&replica.address)?;
            let read = ReadRequest {
                segment_id: segment.segment_id,
                offset,
                max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
                end_offset,
            };
            match store
                .read(request(read, shared.clients.store_timeout))
                .await
            {
                Ok(response) => {
                    let batches = response.into_inner().batches;
                    let keep = prefix_within_high_watermark(&batches, high_watermark);
                    return Ok(batches.slice(..keep));
                }
                Err(status) => {
                    tracing::warn!(partition = %self.key, store = %replica.store_id, %status, "store read failed");
                    last_error = BrokerError::remote("store Read", &status);
                }
            }
        }
        Err(last_error)
    }
}

enum ServeEnd {
    Stopped,
    Roll,
    Failed(BrokerError),
}

type ReplicaResponses =
    SelectAll<BoxStream<'static, (usize, Result<AppendResponse, tonic::Status>)>>;

/// The open segment being appended to, with one ordered stream per replica.
struct OpenSegment {
    info: SegmentInfo,
    senders: Vec<mpsc::Sender<AppendRequest>>,
    responses: ReplicaResponses,
    opened_at: Instant,
}

struct InFlight {
    job: AppendJob,
    sequence: u64,
    base_offset: u64,
    end_offset: u64,
    bytes: Bytes,
    acknowledgements: usize,
    sent_at: Instant,
    append_time_ms: i64,
}

/// Exponential backoff between takeover attempts.
struct Backoff {
    current_ms: u64,
    max_ms: u64,
}

impl Backoff {
    const INITIAL_MS: u64 = 50;

    fn new(max_ms: u64) -> Self {
        Self {
            current_ms: Self::INITIAL_MS,
            max_ms: max_ms.max(Self::INITIAL_MS),
        }
    }

    fn next(&mut self) -> Duration {
        let delay = self.current_ms;
        self.current_ms = (self.current_ms * 2).min(self.max_ms);
        Duration::from_millis(delay)
    }

    fn reset(&mut self) {
        self.current_ms = Self::INITIAL_MS;
    }
}

fn drain_queue(jobs: &mut mpsc::UnboundedReceiver<AppendJob>, error: &BrokerError) {
    while let Ok(job) = jobs.try_recv() {
        job.fail(error.clone());
    }
}

async fn run(
    shared: Arc<Shared>,
    partition: Arc<Partition>,
    mut jobs: mpsc::UnboundedReceiver<AppendJob>,
) {
    let mut stopped = partition.stopped.subscribe();
    let mut backoff = Backoff::new(shared.config.takeover_backoff_max_ms);
    let mut replayed = !partition.is_offsets_topic();
    loop {
        if *stopped.borrow() {
            break;
        }
        let opened = tokio::select! {
            result = open_segment(&shared, &partition) => result,
            _ = crate::wait_until_set(&mut stopped) => break,
        };
        let mut outcome = opened;
        if outcome.is_ok() && !replayed {
            let loaded = tokio::select! {
                result = shared.coordinator.load_partition(&shared, &partition) => result,
                _ = crate::wait_until_set(&mut stopped) => break,
            };
            match loaded {
                Ok(()) => replayed = true,
                Err(error) => outcome = Err(error),
            }
        }
        let segment = match outcome {
            Ok(segment) => segment,
            Err(error) => {
                tracing::warn!(partition = %partition.key, epoch = partition.epoch, %error, "takeover failed; retrying");
                // A failed roll: appends queued behind it fail, so later
                // ones must not be accepted under the same generation.
                partition.status.send_modify(|status| {
                    if status.phase == Phase::Serving {
                        status.phase = Phase::Recovering;
                        status.generation += 1;
                    }
                });
                drain_queue(&mut jobs, &error);
                let delay = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = crate::wait_until_set(&mut stopped) => break,
                }
            }
        };
        tracing::info!(partition = %partition.key, epoch = partition.epoch, segment = segment.info.segment_id, base_offset = segment.info.base_offset, "serving");
        partition
            .status
            .send_modify(|status| status.phase = Phase::Serving);
        backoff.reset();
        match serve(&shared, &partition, segment, &mut jobs).await {
            ServeEnd::Stopped => break,
            ServeEnd::Roll => continue,
            ServeEnd::Failed(error) => {
                tracing::warn!(partition = %partition.key, %error, "append pipeline failed; recovering");
                partition.status.send_modify(|status| {
                    status.phase = Phase::Recovering;
                    status.generation += 1;
                });
                drain_queue(&mut jobs, &error);
            }
        }
    }
    partition
        .status
        .send_modify(|status| status.phase = Phase::Stopped);
    jobs.close();
    drain_queue(&mut jobs, &partition.not_owner());
    tracing::info!(partition = %partition.key, epoch = partition.epoch, "stopped serving");
}

fn durability(config: &TopicConfig) -> i32 {
    match config.durability() {
        Durability::Unspecified => Durability::Fsync as i32,
        other => other as i32,
    }
}

/// Seals an open segment on its replicas and returns (end offset, size,
/// max timestamp). A replica that never created it (the previous owner died
/// between metadata and store) counts as empty.
async fn seal_replicas(
    shared: &Shared,
    segment: &SegmentInfo,
    epoch: u64,
) -> Result<(u64, u64, i64), BrokerError> {
    let mut sealed: Option<(u64, u64, i64)> = None;
    for replica in &segment.replicas {
        let mut store = shared.clients.store(&replica.address)?;
        let seal = SealSegmentRequest {
            segment_id: segment.segment_id,
            writer_epoch: epoch,
        };
        let answer = match store
            .seal_segment(request(seal, shared.clients.store_timeout))
            .await
        {
            Ok(response) => {
                let status = response.into_inner();
                (
                    status.end_offset.max(segment.base_offset),
                    status.size_bytes,
                    status.max_timestamp_ms,
                )
            }
            Err(status) if SluiceError::from_status(&status).code == ErrorCode::UnknownSegment => {
                (segment.base_offset, 0, segment.max_timestamp_ms)
            }
            Err(status) => return Err(BrokerError::remote("store SealSegment", &status)),
        };
        // Acknowledged data reached every replica of the write quorum, so
        // the longest sealed replica holds all of it.
        sealed = Some(match sealed {
            Some(previous) if previous.0 >= answer.0 => previous,
            _ => answer,
        });
    }
    Ok(sealed.unwrap_or((segment.base_offset, 0, segment.max_timestamp_ms)))
}

/// Takeover (and recovery, and roll): close whatever segment is open at
/// the stores' end, then create a new segment at the high watermark on its
/// replicas and open the append streams.
async fn open_segment(shared: &Shared, partition: &Partition) -> Result<OpenSegment, BrokerError> {
    let key = &partition.key;
    let epoch = partition.epoch;
    let clients = &shared.clients;
    let mut segments = nameserver_call!(
        clients,
        list_segments,
        ListSegmentsRequest {
            topic: key.topic.clone(),
            partition: key.partition,
        }
    )?
    .segments;
    segments.sort_by_key(|segment| (segment.base_offset, segment.segment_id));
    for segment in segments.iter_mut() {
        if segment.state() != SegmentState::Open {
            continue;
        }
        let (end_offset, size_bytes, max_timestamp_ms) =
            seal_replicas(shared, segment, epoch).await?;
        *segment = nameserver_call!(
            clients,
            close_segment,
            CloseSegmentRequest {
                topic: key.topic.clone(),
                partition: key.partition,
                epoch,
                segment_id: segment.segment_id,
                end_offset,
                size_bytes,
                max_timestamp_ms,
            }
        )?;
    }
    let high_watermark = segments
        .last()
        .map(|segment| segment.end_offset)
        .unwrap_or(0);
    let log_start_offset = segments
        .first()
        .map(|segment| segment.base_offset)
        .unwrap_or(high_watermark);
    let created = nameserver_call!(
        clients,
        create_segment,
        CreateSegmentRequest {
            topic: key.topic.clone(),
            partition: key.partition,
            epoch,
            base_offset: high_watermark,
        }
    )?;
    if created.replicas.is_empty() {
        return Err(BrokerError::Unavailable(format!(
            "segment {} of {key} has no replicas",
            created.segment_id
        )));
    }
    let capacity = shared.config.max_in_flight_appends_per_partition.max(1) + 1;
    let mut senders = Vec::with_capacity(created.replicas.len());
    let mut responses: ReplicaResponses = SelectAll::new();
    for (index, replica) in created.replicas.iter().enumerate() {
        let mut store = clients.store(&replica.address)?;
        let create = StoreCreateSegmentRequest {
            segment_id: created.segment_id,
            topic: key.topic.clone(),
            partition: key.partition,
            base_offset: created.base_offset,
            writer_epoch: epoch,
            durability: durability(&partition.config),
        };
        store
            .create_segment(request(create, clients.store_timeout))
            .await
            .map_err(|status| BrokerError::remote("store CreateSegment", &status))?;
        let (sender, receiver) = mpsc::channel(capacity);
        let stream = tokio::time::timeout(
            clients.store_timeout,
            store.append(stream_request(ReceiverStream::new(receiver))),
        )
        .await
        .map_err(|_| {
            BrokerError::Timeout(format!("opening the append stream to {}", replica.address))
        })?
        .map_err(|status| BrokerError::remote("store Append", &status))?
        .into_inner();
        senders.push(sender);
        responses.push(stream.map(move |item| (index, item)).boxed());
    }
    segments.push(created.clone());
    partition.set_segments(segments);
    partition.status.send_modify(|status| {
        status.high_watermark = high_watermark;
        status.log_start_offset = log_start_offset;
        status.loaded = true;
    });
    Ok(OpenSegment {
        info: created,
        senders,
        responses,
        opened_at: Instant::now(),
    })
}

fn fail_all(in_flight: &mut VecDeque<InFlight>, error: &BrokerError) {
    for entry in in_flight.drain(..) {
        entry.job.fail(error.clone());
    }
}

/// Far enough in the future to stand for "never" in a `select!`.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(24 * 3600)
}

/// The pipeline over one open segment until it must roll, fails or stops.
async fn serve(
    shared: &Shared,
    partition: &Partition,
    mut segment: OpenSegment,
    jobs: &mut mpsc::UnboundedReceiver<AppendJob>,
) -> ServeEnd {
    let config = &partition.config;
    let replica_count = segment.senders.len();
    let ack_quorum = (config.ack_quorum as usize).clamp(1, replica_count);
    let max_in_flight = shared.config.max_in_flight_appends_per_partition.max(1);
    let ack_timeout = shared.clients.store_timeout;
    let mut stopped = partition.stopped.subscribe();
    let mut next_offset = partition.status().high_watermark;
    let mut sequence: u64 = 0;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut size_bytes: u64 = 0;
    let mut rolling = false;
    let roll_at = (config.segment_ms > 0)
        .then(|| segment.opened_at + Duration::from_millis(config.segment_ms));
    loop {
        if rolling && in_flight.is_empty() {
            return ServeEnd::Roll;
        }
        let ack_deadline = in_flight.front().map(|entry| entry.sent_at + ack_timeout);
        let time_roll_armed = roll_at.is_some() && !rolling && size_bytes > 0;
        tokio::select! {
            _ = crate::wait_until_set(&mut stopped) => {
                fail_all(&mut in_flight, &partition.not_owner());
                return ServeEnd::Stopped;
            }
            job = jobs.recv(), if !rolling && in_flight.len() < max_in_flight => {
                let Some(job) = job else {
                    fail_all(&mut in_flight, &partition.not_owner());
                    return ServeEnd::Stopped;
                };
                if job.generation != partition.status().generation {
                    job.fail(BrokerError::EarlierRequestFailed {
                        topic: partition.key.topic.clone(),
                        partition: partition.key.partition,
                    });
                    continue;
                }
                let mut bytes = job.batch.to_vec();
                // The ownership epoch fits the batch's 32-bit field for any
                // realistic number of reassignments; saturate otherwise.
                assign(&mut bytes, next_offset, u32::try_from(partition.epoch).unwrap_or(u32::MAX));
                let bytes = Bytes::from(bytes);
                sequence += 1;
                let append = AppendRequest {
                    segment_id: segment.info.segment_id,
                    writer_epoch: partition.epoch,
                    batch: bytes.clone(),
                    sequence,
                };
                // Capacity exceeds the in-flight bound, so a full channel
                // cannot happen; a closed one means the stream broke.
                if segment.senders.iter().any(|sender| sender.try_send(append.clone()).is_err()) {
                    let error = BrokerError::Unavailable(format!("append stream of {} closed", partition.key));
                    job.fail(error.clone());
                    fail_all(&mut in_flight, &error);
                    return ServeEnd::Failed(error);
                }
                let end_offset = next_offset + u64::from(job.header.record_count);
                size_bytes += bytes.len() as u64;
                in_flight.push_back(InFlight {
                    job,
                    sequence,
                    base_offset: next_offset,
                    end_offset,
                    bytes,
                    acknowledgements: 0,
                    sent_at: Instant::now(),
                    append_time_ms: sluice_proto::now_unix_ms(),
                });
                next_offset = end_offset;
                if config.segment_bytes > 0 && size_bytes >= config.segment_bytes {
                    rolling = true;
                }
            }
            response = segment.responses.next(), if !in_flight.is_empty() => {
                let error = match response {
                    Some((_, Ok(answer))) if answer.error == ErrorCode::None as i32 => {
                        let front_sequence = in_flight.front().map(|entry| entry.sequence).unwrap_or(0);
                        let entry = answer
                            .sequence
                            .checked_sub(front_sequence)
                            .and_then(|index| usize::try_from(index).ok())
                            .and_then(|index| in_flight.get_mut(index));
                        match entry {
                            Some(entry) => {
                                entry.acknowledgements += 1;
                                while in_flight.front().is_some_and(|entry| entry.acknowledgements >= ack_quorum) {
                                    if let Some(done) = in_flight.pop_front() {
                                        complete(shared, partition, done);
                                    }
                                }
                                None
                            }
                            None => Some(BrokerError::Internal(format!(
                                "store acknowledged unknown sequence {} for {}", answer.sequence, partition.key
                            ))),
                        }
                    }
                    Some((_, Ok(answer))) => {
                        let code = ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal);
                        Some(BrokerError::Remote {
                            context: "store Append".into(),
                            error: SluiceError::new(code, answer.error_message),
                        })
                    }
                    Some((_, Err(status))) => Some(BrokerError::remote("store Append", &status)),
                    None => Some(BrokerError::Unavailable(format!("store closed the append stream of {}", partition.key))),
                };
                if let Some(error) = error {
                    fail_all(&mut in_flight, &error);
                    return ServeEnd::Failed(error);
                }
            }
            _ = tokio::time::sleep_until(ack_deadline.unwrap_or_else(never)), if ack_deadline.is_some() => {
                let error = BrokerError::Timeout(format!("append to {}", partition.key));
                fail_all(&mut in_flight, &error);
                return ServeEnd::Failed(error);
            }
            _ = tokio::time::sleep_until(roll_at.unwrap_or_else(never)), if time_roll_armed => {
                rolling = true;
            }
        }
    }
}

/// An append is durable: advance the high watermark, cache it, wake
/// fetchers, answer the producer.
fn complete(shared: &Shared, partition: &Partition, done: InFlight) {
    shared.tail_cache_insert(
        &partition.key,
        done.base_offset,
        done.end_offset,
        done.bytes,
    );
    partition.status.send_modify(|status| {
        status.high_watermark = status.high_watermark.max(done.end_offset);
    });
    let AppendJob {
        reply, on_durable, ..
    } = done.job;
    if let Some(on_durable) = on_durable {
        on_durable(done.base_offset);
    }
    let _ = reply.send(Ok(AppendOutcome {
        base_offset: done.base_offset,
        append_time_ms: done.append_time_ms,
        epoch: partition.epoch,
    }));
}
