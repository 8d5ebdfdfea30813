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
use crate::decisions::{
    effective_ack_quorum, fence_quorum, prefix_within_high_watermark, recovered_copy,
    segment_for_offset, whole_batches_within, FencedCopy,
};
use crate::error::BrokerError;
use crate::read_ahead::ReadAhead;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use bytes::Bytes;
use futures::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures::StreamExt;
use sluice_proto::batch::{assign, BatchHeader};
use sluice_proto::names::CONSUMER_OFFSETS_TOPIC;
use sluice_proto::v1::{
    AppendRequest, AppendResponse, CloseSegmentRequest, CreateSegmentRequest,
    DeleteSegmentsRequest, Durability, FindOffsetRequest, ListSegmentsRequest, ReadRequest,
    SealSegmentRequest, SegmentInfo, SegmentState, StoreCreateSegmentRequest, TopicConfig,
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
    /// Idempotent producers' latest batches (ADR 0010); used by the
    /// pipeline task only.
    producers: std::sync::Mutex<crate::idempotence::ProducerStates>,
    /// The store read started ahead of a sequential reader's next fetch.
    read_ahead: ReadAhead,
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
            producers: std::sync::Mutex::new(crate::idempotence::ProducerStates::new(
                shared.config.max_producer_states_per_partition,
            )),
            read_ahead: ReadAhead::default(),
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

    /// Replaces one segment's cached metadata (after repair changed its
    /// replicas).
    pub fn segment_updated(&self, updated: SegmentInfo) {
        let mut segments = self.segments();
        if let Some(segment) = segments
            .iter_mut()
            .find(|segment| segment.segment_id == updated.segment_id)
        {
            *segment = updated;
            self.set_segments(segments);
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
        self.read_from(shared, None, offset, max_bytes).await
    }

    /// [`Partition::read`] for fetches: once this partition's reads from
    /// the stores are sequential, the store read of the range after the
    /// answer is started before returning it (see [`crate::read_ahead`]).
    pub async fn read_for_fetch(
        &self,
        shared: &Arc<Shared>,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Bytes, BrokerError> {
        self.read_from(shared, Some(shared), offset, max_bytes)
            .await
    }

    /// [`Partition::read`], reading ahead when `read_ahead` is given (the
    /// shared state a read-ahead task keeps).
    async fn read_from(
        &self,
        shared: &Shared,
        read_ahead: Option<&Arc<Shared>>,
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
        let Some((segment, end_offset)) = readable_segment(&segments, offset, high_watermark)
        else {
            return Ok(Bytes::new());
        };
        let (pending, sequential) = match read_ahead {
            Some(_) => self.read_ahead.take(offset, segment.segment_id),
            None => (None, false),
        };
        let ahead = match pending {
            // A failed or empty read-ahead is retried directly, with the
            // replica order and error handling of a direct read.
            Some(pending) => pending.wait().await.ok().filter(|bytes| !bytes.is_empty()),
            None => None,
        };
        let batches = match ahead {
            Some(batches) => whole_batches_within(batches, max_bytes, true),
            None => read_segment(shared, &self.key, segment, offset, end_offset, max_bytes).await?,
        };
        let prefix = prefix_within_high_watermark(&batches, high_watermark);
        if let (Some(shared), Some(next_offset)) = (read_ahead, prefix.end_offset) {
            self.read_ahead.read_ended(next_offset);
            if sequential {
                self.start_read_ahead(shared, &segments, next_offset, high_watermark, max_bytes);
            }
        }
        Ok(batches.slice(..prefix.length))
    }

    /// Starts the store read of `offset` for the next fetch, if there is
    /// durable data there and budget for `max_bytes` more.
    fn start_read_ahead(
        &self,
        shared: &Arc<Shared>,
        segments: &[SegmentInfo],
        offset: u64,
        high_watermark: u64,
        max_bytes: usize,
    ) {
        let Some((segment, end_offset)) = readable_segment(segments, offset, high_watermark) else {
            return;
        };
        let Ok(permits) = u32::try_from(max_bytes) else {
            return;
        };
        let Ok(budget) = shared
            .read_ahead_budget
            .clone()
            .try_acquire_many_owned(permits)
        else {
            return;
        };
        let segment = segment.clone();
        let segment_id = segment.segment_id;
        let task_shared = shared.clone();
        let key = self.key.clone();
        let task = tokio::spawn(async move {
            read_segment(&task_shared, &key, &segment, offset, end_offset, max_bytes).await
        });
        self.read_ahead.keep(offset, segment_id, task, budget);
    }
}

/// The segment holding `offset` and where reading it must stop: its end,
/// or the high watermark while it is open. None when nothing durable is
/// there.
fn readable_segment(
    segments: &[SegmentInfo],
    offset: u64,
    high_watermark: u64,
) -> Option<(&SegmentInfo, u64)> {
    let segment = segment_for_offset(segments, offset)?;
    let end_offset = if segment.state() == SegmentState::Open {
        high_watermark
    } else {
        segment.end_offset.min(high_watermark)
    };
    (offset < end_offset).then_some((segment, end_offset))
}

impl Partition {
    /// First offset whose record timestamp is at least `timestamp_ms`, as
    /// of `status`: the first segment whose max timestamp reaches it
    /// (closed ones from metadata, the open one by asking its store), then
    /// that store's time index; the high watermark when none. Used by
    /// ListOffsets and by the backlog quota's age eviction.
    pub async fn offset_for_timestamp(
        &self,
        shared: &Shared,
        status: &PartitionStatus,
        timestamp_ms: i64,
    ) -> Result<u64, BrokerError> {
        for segment in self.segments() {
            let open = segment.state() == SegmentState::Open;
            if !open
                && (segment.max_timestamp_ms < timestamp_ms
                    || segment.end_offset <= segment.base_offset)
            {
                continue;
            }
            let Some(replica) = segment.replicas.first() else {
                continue;
            };
            let mut store = shared.clients.store(&replica.address)?;
            let found = store
                .find_offset(request(
                    FindOffsetRequest {
                        segment_id: segment.segment_id,
                        timestamp_ms,
                    },
                    shared.clients.store_timeout,
                ))
                .await
                .map_err(|status| BrokerError::remote("store FindOffset", &status))?
                .into_inner()
                .offset;
            if let Some(offset) = found {
                if offset < status.high_watermark {
                    return Ok(offset.max(status.log_start_offset));
                }
            }
        }
        Ok(status.high_watermark)
    }
}

/// Whole batches of `segment` from `offset` (below `end_offset`, at most
/// `max_bytes` unless one batch is larger) from the first replica that has
/// them, trying recently failed stores last. A replica whose copy ends
/// before `offset` (it missed the tail and awaits repair) is skipped.
pub(crate) async fn read_segment(
    shared: &Shared,
    key: &PartitionKey,
    segment: &SegmentInfo,
    offset: u64,
    end_offset: u64,
    max_bytes: usize,
) -> Result<Bytes, BrokerError> {
    let mut last_error = BrokerError::Unavailable(format!(
        "segment {} of {key} has no replicas",
        segment.segment_id
    ));
    let order = shared.clients.read_order(
        segment
            .replicas
            .iter()
            .map(|replica| replica.address.as_str()),
    );
    for replica in order.iter().map(|index| &segment.replicas[*index]) {
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
                if !batches.is_empty() {
                    return Ok(batches);
                }
                last_error = BrokerError::Unavailable(format!(
                    "no replica of segment {} of {key} holds offset {offset} yet",
                    segment.segment_id
                ));
            }
            Err(status) => {
                shared.clients.store_failed(&replica.address);
                tracing::warn!(partition = %key, store = %replica.store_id, %status, "store read failed");
                last_error = BrokerError::remote("store Read", &status);
            }
        }
    }
    Err(last_error)
}

enum ServeEnd {
    Stopped,
    /// Open a new segment; `failed_stores` dropped out of this one's
    /// ensemble and are avoided in the next.
    Roll {
        failed_stores: Vec<String>,
        /// When the pipeline stopped taking appends to roll, and when the
        /// last of them completed: the roll's pause is measured from the
        /// first.
        stopped_at: Instant,
        drained_at: Instant,
        /// The next segment, created while the last appends drained, and
        /// the one rolled away from with its end; `None` if it could not
        /// be prepared (the roll then goes through takeover).
        prepared: Option<Box<(OpenSegment, SegmentInfo, u64)>>,
    },
    Failed {
        error: BrokerError,
        failed_stores: Vec<String>,
    },
}

/// The next segment being created ahead of a roll; yields the stores that
/// failed with the error.
type PreparingSegment<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<OpenSegment, (BrokerError, Vec<String>)>>
            + Send
            + 'a,
    >,
>;

type ReplicaResponses =
    SelectAll<BoxStream<'static, (usize, Result<AppendResponse, tonic::Status>)>>;

/// The open segment being appended to, with one ordered stream per replica.
struct OpenSegment {
    info: SegmentInfo,
    replicas: Vec<ReplicaStream>,
    responses: ReplicaResponses,
    opened_at: Instant,
}

/// One replica of the open segment: its ordered append stream and how far
/// it has acknowledged (stores answer in order, so one number says it).
struct ReplicaStream {
    store_id: String,
    sender: mpsc::Sender<AppendRequest>,
    acknowledged_sequence: u64,
    /// Broke, refused an append, or fell behind: no longer written to, and
    /// avoided in the next ensemble.
    failed: bool,
}

impl OpenSegment {
    fn healthy_replicas(&self) -> usize {
        self.replicas
            .iter()
            .filter(|replica| !replica.failed)
            .count()
    }

    /// Replicas (failed or not) that acknowledged `sequence`: an entry
    /// acknowledged by a replica that failed later is still durable there.
    fn acknowledgements(&self, sequence: u64) -> usize {
        self.replicas
            .iter()
            .filter(|replica| replica.acknowledged_sequence >= sequence)
            .count()
    }

    fn failed_stores(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|replica| replica.failed)
            .map(|replica| replica.store_id.clone())
            .collect()
    }

    /// The oldest append some healthy replica has not acknowledged yet.
    fn slowest_acknowledged(&self) -> u64 {
        self.replicas
            .iter()
            .filter(|replica| !replica.failed)
            .map(|replica| replica.acknowledged_sequence)
            .min()
            .unwrap_or(u64::MAX)
    }
}

struct InFlight {
    job: AppendJob,
    sequence: u64,
    base_offset: u64,
    end_offset: u64,
    bytes: Bytes,
    append_time_ms: i64,
}

/// Attempts to seal and close a segment rolled away from before leaving it
/// to the next takeover (which fences and closes any open segment).
const ROLLED_SEGMENT_CLOSE_ATTEMPTS_MAX: u32 = 10;

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
    // Stores that just failed this partition: kept out of the next ensemble.
    let mut excluded: Vec<String> = Vec::new();
    // Set while rolling: when appends stopped and when the last completed.
    let mut roll_pause: Option<(Instant, Instant)> = None;
    // The next segment when a roll prepared it: served without a takeover.
    let mut next_segment: Option<OpenSegment> = None;
    loop {
        if *stopped.borrow() {
            break;
        }
        if let Some(segment) = next_segment.take() {
            if let Some((stopped_at, drained_at)) = roll_pause.take() {
                tracing::debug!(
                    partition = %partition.key,
                    segment = segment.info.segment_id,
                    drain_ms = (drained_at - stopped_at).as_secs_f64() * 1000.0,
                    pause_ms = stopped_at.elapsed().as_secs_f64() * 1000.0,
                    "rolled to a segment prepared in advance"
                );
            }
            match serve(&shared, &partition, segment, &mut jobs).await {
                ServeEnd::Stopped => break,
                end => {
                    handle_end(
                        &shared,
                        &partition,
                        end,
                        &mut jobs,
                        &mut excluded,
                        &mut roll_pause,
                        &mut next_segment,
                    );
                    continue;
                }
            }
        }
        let opened = tokio::select! {
            result = open_segment(&shared, &partition, &mut excluded) => result,
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
        if outcome.is_ok() {
            // After a takeover or a failure (a no-op after a roll).
            let rebuilt = tokio::select! {
                result = crate::idempotence::rebuild(&shared, &partition) => result,
                _ = crate::wait_until_set(&mut stopped) => break,
            };
            if let Err(error) = rebuilt {
                outcome = Err(error);
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
        if let Some((stopped_at, drained_at)) = roll_pause.take() {
            tracing::info!(
                partition = %partition.key,
                segment = segment.info.segment_id,
                drain_ms = (drained_at - stopped_at).as_secs_f64() * 1000.0,
                pause_ms = stopped_at.elapsed().as_secs_f64() * 1000.0,
                "rolled through takeover (the next segment could not be prepared)"
            );
        }
        tracing::info!(partition = %partition.key, epoch = partition.epoch, segment = segment.info.segment_id, base_offset = segment.info.base_offset, "serving");
        partition
            .status
            .send_modify(|status| status.phase = Phase::Serving);
        backoff.reset();
        excluded.clear();
        match serve(&shared, &partition, segment, &mut jobs).await {
            ServeEnd::Stopped => break,
            end => handle_end(
                &shared,
                &partition,
                end,
                &mut jobs,
                &mut excluded,
                &mut roll_pause,
                &mut next_segment,
            ),
        }
    }
    partition
        .status
        .send_modify(|status| status.phase = Phase::Stopped);
    jobs.close();
    drain_queue(&mut jobs, &partition.not_owner());
    tracing::info!(partition = %partition.key, epoch = partition.epoch, "stopped serving");
}

/// What the pipeline task does after [`serve`] returned anything but
/// `Stopped`: a roll with a prepared segment goes on with it at once and
/// closes the old one in the background; any other roll, or a failure,
/// goes through takeover.
fn handle_end(
    shared: &Arc<Shared>,
    partition: &Arc<Partition>,
    end: ServeEnd,
    jobs: &mut mpsc::UnboundedReceiver<AppendJob>,
    excluded: &mut Vec<String>,
    roll_pause: &mut Option<(Instant, Instant)>,
    next_segment: &mut Option<OpenSegment>,
) {
    match end {
        ServeEnd::Stopped => {}
        ServeEnd::Roll {
            failed_stores,
            stopped_at,
            drained_at,
            prepared,
        } => {
            *roll_pause = Some((stopped_at, drained_at));
            if !failed_stores.is_empty() {
                tracing::warn!(partition = %partition.key, ?failed_stores, "replicas failed; moving to a new ensemble");
            }
            *excluded = failed_stores;
            if let Some(prepared) = prepared {
                let (next, rolled, end_offset) = *prepared;
                let mut segments = partition.segments();
                segments.push(next.info.clone());
                partition.set_segments(segments);
                tokio::spawn(close_rolled_segment(
                    shared.clone(),
                    partition.clone(),
                    rolled,
                    end_offset,
                ));
                *next_segment = Some(next);
            }
        }
        ServeEnd::Failed {
            error,
            failed_stores,
        } => {
            *excluded = failed_stores;
            tracing::warn!(partition = %partition.key, %error, ?excluded, "append pipeline failed; recovering");
            partition.status.send_modify(|status| {
                status.phase = Phase::Recovering;
                status.generation += 1;
            });
            drain_queue(jobs, &error);
        }
    }
}

fn durability(config: &TopicConfig) -> i32 {
    match config.durability() {
        Durability::Unspecified => Durability::Fsync as i32,
        other => other as i32,
    }
}

/// What fencing and recovering an open segment established.
struct RecoveredSegment {
    end_offset: u64,
    size_bytes: u64,
    max_timestamp_ms: i64,
}

/// Fences an open segment and recovers its end (ADR 0008): seals it on its
/// replicas in parallel, waits for a fence quorum (and briefly for the
/// rest), takes the longest fenced copy as the segment's content, and
/// copies the missing tail to every other fenced replica so the recovered
/// entries are on as many copies as answered. Replicas that did not answer
/// are left to repair.
async fn fence_and_recover(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
) -> Result<RecoveredSegment, BrokerError> {
    let epoch = partition.epoch;
    let replicas = &segment.replicas;
    if replicas.is_empty() {
        return Ok(RecoveredSegment {
            end_offset: segment.base_offset,
            size_bytes: 0,
            max_timestamp_ms: segment.max_timestamp_ms,
        });
    }
    let ack_quorum = effective_ack_quorum(partition.config.ack_quorum, replicas.len());
    let quorum = fence_quorum(replicas.len(), ack_quorum);
    let mut seals = FuturesUnordered::new();
    for (index, replica) in replicas.iter().enumerate() {
        let seal = SealSegmentRequest {
            segment_id: segment.segment_id,
            writer_epoch: epoch,
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
            base_offset: segment.base_offset,
            durability: durability(&partition.config),
        };
        let store = shared.clients.store(&replica.address);
        let timeout = shared.clients.store_timeout;
        seals.push(async move {
            let answer = match store {
                Ok(mut store) => store
                    .seal_segment(request(seal, timeout))
                    .await
                    .map(|response| response.into_inner())
                    .map_err(|status| BrokerError::remote("store SealSegment", &status)),
                Err(error) => Err(error),
            };
            (index, answer)
        });
    }
    let mut fenced: Vec<FencedCopy> = Vec::new();
    let mut last_error: Option<BrokerError> = None;
    let grace = Duration::from_millis(shared.config.fence_grace_ms);
    let mut grace_deadline: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            next = seals.next() => next,
            _ = tokio::time::sleep_until(grace_deadline.unwrap_or_else(never)), if grace_deadline.is_some() => None,
        };
        let Some((index, answer)) = next else { break };
        match answer {
            Ok(status) => {
                let usable_end = status
                    .corrupt_from_offset
                    .map_or(status.end_offset, |corrupt| corrupt.min(status.end_offset))
                    .max(segment.base_offset);
                if status.corrupt_from_offset.is_some() {
                    tracing::warn!(partition = %partition.key, segment = segment.segment_id, store = %replicas[index].store_id, usable_end, "fenced copy is damaged; using it only up to the damage");
                }
                fenced.push(FencedCopy {
                    replica: index,
                    end_offset: usable_end,
                    size_bytes: status.size_bytes,
                    max_timestamp_ms: status.max_timestamp_ms,
                });
                if fenced.len() >= quorum && grace_deadline.is_none() {
                    grace_deadline = Some(Instant::now() + grace);
                }
            }
            Err(error) => {
                tracing::warn!(partition = %partition.key, segment = segment.segment_id, store = %replicas[index].store_id, %error, "cannot fence a replica");
                last_error = Some(error);
            }
        }
    }
    let Some(longest) = recovered_copy(&fenced, quorum) else {
        return Err(BrokerError::Unavailable(format!(
            "fenced {} of the {} replicas of segment {} of {}, need {quorum}{}",
            fenced.len(),
            replicas.len(),
            segment.segment_id,
            partition.key,
            last_error
                .map(|error| format!(" (last error: {error})"))
                .unwrap_or_default()
        )));
    };
    for copy in &fenced {
        if copy.end_offset < longest.end_offset {
            copy_tail(shared, partition, segment, &longest, copy).await?;
        }
    }
    Ok(RecoveredSegment {
        end_offset: longest.end_offset,
        size_bytes: longest.size_bytes,
        max_timestamp_ms: longest.max_timestamp_ms,
    })
}

/// Copies `[to.end_offset, from.end_offset)` of a fenced segment from one
/// replica to another.
async fn copy_tail(
    shared: &Shared,
    partition: &Partition,
    segment: &SegmentInfo,
    from: &FencedCopy,
    to: &FencedCopy,
) -> Result<(), BrokerError> {
    let source = &segment.replicas[from.replica];
    let target = &segment.replicas[to.replica];
    crate::repair::copy_range(
        shared,
        partition,
        segment.segment_id,
        source,
        target,
        to.end_offset,
        from.end_offset,
    )
    .await?;
    tracing::info!(partition = %partition.key, segment = segment.segment_id, from = %source.store_id, to = %target.store_id, start = to.end_offset, end = from.end_offset, "re-replicated the tail of a fenced segment");
    Ok(())
}

/// Takeover (and recovery, and a roll whose next segment could not be
/// prepared): fence and close whatever segment is open, then create a new
/// segment at the recovered end on a new ensemble (avoiding `excluded`
/// stores, which just failed) and open the append streams. A store that
/// fails while the segment is being opened is added to `excluded` for the
/// next attempt.
///
/// A segment created ahead of a roll (see [`serve`]) holds nothing until
/// every append to its predecessor reached the ack quorum, so if it starts
/// beyond where its predecessor was recovered to, the owner stopped before
/// using it: it is empty and is deleted rather than closed, which would
/// leave a hole in the offsets.
async fn open_segment(
    shared: &Shared,
    partition: &Partition,
    excluded: &mut Vec<String>,
) -> Result<OpenSegment, BrokerError> {
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
    let mut unused: Vec<u64> = Vec::new();
    let mut previous_end: Option<u64> = None;
    for segment in segments.iter_mut() {
        if segment.state() != SegmentState::Open {
            previous_end = Some(segment.end_offset);
            continue;
        }
        let recovered = fence_and_recover(shared, partition, segment).await?;
        if previous_end.is_some_and(|end| segment.base_offset > end) {
            if recovered.end_offset == segment.base_offset {
                unused.push(segment.segment_id);
                continue;
            }
            // Cannot happen (see above); closing it keeps what is there.
            tracing::error!(partition = %key, segment = segment.segment_id, base_offset = segment.base_offset, previous_end, "open segment with data starts beyond its predecessor's end");
        }
        *segment = nameserver_call!(
            clients,
            close_segment,
            CloseSegmentRequest {
                topic: key.topic.clone(),
                partition: key.partition,
                epoch,
                segment_id: segment.segment_id,
                end_offset: recovered.end_offset,
                size_bytes: recovered.size_bytes,
                max_timestamp_ms: recovered.max_timestamp_ms,
            }
        )?;
        previous_end = Some(segment.end_offset);
    }
    if !unused.is_empty() {
        nameserver_call!(
            clients,
            delete_segments,
            DeleteSegmentsRequest {
                topic: key.topic.clone(),
                partition: key.partition,
                epoch,
                segment_ids: unused.clone(),
            }
        )?;
        tracing::info!(partition = %key, segments = ?unused, "deleted segments created ahead of a roll that never happened");
        segments.retain(|segment| !unused.contains(&segment.segment_id));
    }
    let high_watermark = segments
        .last()
        .map(|segment| segment.end_offset)
        .unwrap_or(0);
    let log_start_offset = segments
        .first()
        .map(|segment| segment.base_offset)
        .unwrap_or(high_watermark);
    let opened = create_and_open(shared, partition, high_watermark, excluded).await?;
    segments.push(opened.info.clone());
    partition.set_segments(segments);
    partition.status.send_modify(|status| {
        status.high_watermark = high_watermark;
        status.log_start_offset = log_start_offset;
        status.loaded = true;
    });
    Ok(opened)
}

/// Creates a segment at `base_offset` (in metadata, then on each replica)
/// on an ensemble avoiding `excluded`, and opens its append streams. A
/// store that fails here is added to `excluded`.
async fn create_and_open(
    shared: &Shared,
    partition: &Partition,
    base_offset: u64,
    excluded: &mut Vec<String>,
) -> Result<OpenSegment, BrokerError> {
    let key = &partition.key;
    let created = nameserver_call!(
        &shared.clients,
        create_segment,
        CreateSegmentRequest {
            topic: key.topic.clone(),
            partition: key.partition,
            epoch: partition.epoch,
            base_offset,
            exclude_store_ids: excluded.clone(),
        }
    )?;
    if created.replicas.is_empty() {
        return Err(BrokerError::Unavailable(format!(
            "segment {} of {key} has no replicas",
            created.segment_id
        )));
    }
    let capacity = shared.config.max_in_flight_appends_per_partition.max(1) + 1;
    // Created on every replica at once: each creation waits for a journal
    // fsync on its store.
    let opened = futures::future::join_all(created.replicas.iter().map(|replica| {
        open_append_stream(shared, partition, &created, &replica.address, capacity)
    }))
    .await;
    let mut replicas = Vec::with_capacity(created.replicas.len());
    let mut responses: ReplicaResponses = SelectAll::new();
    let mut failure = None;
    for (index, (replica, opened)) in created.replicas.iter().zip(opened).enumerate() {
        let (sender, stream) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                if !excluded.contains(&replica.store_id) {
                    excluded.push(replica.store_id.clone());
                }
                failure = Some(error);
                continue;
            }
        };
        replicas.push(ReplicaStream {
            store_id: replica.store_id.clone(),
            sender,
            acknowledged_sequence: 0,
            failed: false,
        });
        // A stream that ends fails its replica at once rather than after
        // the acknowledgement timeout.
        let ended = futures::stream::once(async move {
            (
                index,
                Err(tonic::Status::unavailable(
                    "the store ended the append stream",
                )),
            )
        });
        responses.push(stream.map(move |item| (index, item)).chain(ended).boxed());
    }
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(OpenSegment {
        info: created,
        replicas,
        responses,
        opened_at: Instant::now(),
    })
}

/// Seals and closes a segment the pipeline rolled away from, after every
/// append to it reached the ack quorum (so it ends at `end_offset`), while
/// the next segment already takes appends. Retried with backoff until it
/// succeeds or the partition stops; if it never does, the next takeover
/// fences and closes it like any open segment.
async fn close_rolled_segment(
    shared: Arc<Shared>,
    partition: Arc<Partition>,
    segment: SegmentInfo,
    end_offset: u64,
) {
    let mut stopped = partition.stopped.subscribe();
    let mut backoff = Backoff::new(shared.config.takeover_backoff_max_ms);
    let key = &partition.key;
    for attempt_number in 1..=ROLLED_SEGMENT_CLOSE_ATTEMPTS_MAX {
        let attempt = async {
            let recovered = fence_and_recover(&shared, &partition, &segment).await?;
            if recovered.end_offset != end_offset {
                tracing::error!(partition = %key, segment = segment.segment_id, end_offset, recovered = recovered.end_offset, "a rolled segment's copies do not end where its appends did");
            }
            nameserver_call!(
                &shared.clients,
                close_segment,
                CloseSegmentRequest {
                    topic: key.topic.clone(),
                    partition: key.partition,
                    epoch: partition.epoch,
                    segment_id: segment.segment_id,
                    end_offset: recovered.end_offset,
                    size_bytes: recovered.size_bytes,
                    max_timestamp_ms: recovered.max_timestamp_ms,
                }
            )
        };
        let result = tokio::select! {
            result = attempt => result,
            _ = crate::wait_until_set(&mut stopped) => return,
        };
        match result {
            Ok(closed) => {
                partition.segment_updated(closed);
                return;
            }
            Err(error) => {
                tracing::warn!(partition = %key, segment = segment.segment_id, attempt_number, %error, "closing a rolled segment failed");
                let delay = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = crate::wait_until_set(&mut stopped) => return,
                }
            }
        }
    }
    tracing::warn!(partition = %key, segment = segment.segment_id, "giving up closing a rolled segment; the next takeover closes it");
}

/// Creates the new segment on one store and opens its ordered append stream.
async fn open_append_stream(
    shared: &Shared,
    partition: &Partition,
    created: &SegmentInfo,
    address: &str,
    capacity: usize,
) -> Result<
    (
        mpsc::Sender<AppendRequest>,
        tonic::Streaming<AppendResponse>,
    ),
    BrokerError,
> {
    let clients = &shared.clients;
    let mut store = clients.store(address)?;
    let create = StoreCreateSegmentRequest {
        segment_id: created.segment_id,
        topic: partition.key.topic.clone(),
        partition: partition.key.partition,
        base_offset: created.base_offset,
        writer_epoch: partition.epoch,
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
    .map_err(|_| BrokerError::Timeout(format!("opening the append stream to {address}")))?
    .map_err(|status| BrokerError::remote("store Append", &status))?
    .into_inner();
    Ok((sender, stream))
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
///
/// Each append goes to every healthy replica (write quorum = ensemble) and
/// completes, in order, once `ack_quorum` replicas acknowledged it. A
/// replica that breaks, refuses an append, falls more than the stream
/// capacity behind, or leaves an append unacknowledged for
/// `replica_ack_timeout_ms` is dropped: while `ack_quorum` healthy replicas
/// remain, the pipeline stops taking new appends, lets those in flight
/// complete, and rolls to a new segment on a new ensemble; otherwise it
/// fails (and recovery fences the segment).
async fn serve(
    shared: &Shared,
    partition: &Partition,
    mut segment: OpenSegment,
    jobs: &mut mpsc::UnboundedReceiver<AppendJob>,
) -> ServeEnd {
    let config = &partition.config;
    let ack_quorum = effective_ack_quorum(config.ack_quorum, segment.replicas.len());
    let max_in_flight = shared.config.max_in_flight_appends_per_partition.max(1);
    let replica_ack_timeout = Duration::from_millis(shared.config.replica_ack_timeout_ms.max(1));
    let mut stopped = partition.stopped.subscribe();
    let mut next_offset = partition.status().high_watermark;
    let mut sequence: u64 = 0;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    // Send times of appends some healthy replica has not acknowledged yet.
    let mut unacknowledged: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut size_bytes: u64 = 0;
    let mut rolling = false;
    let mut rolling_since: Option<Instant> = None;
    let mut drained_at: Option<Instant> = None;
    let mut preparing: Option<PreparingSegment<'_>> = None;
    let mut prepared: Option<Result<OpenSegment, (BrokerError, Vec<String>)>> = None;
    let roll_at = (config.segment_ms > 0)
        .then(|| segment.opened_at + Duration::from_millis(config.segment_ms));
    let ensemble_size = (config.ensemble_size as usize).max(1);
    let degraded_check_every =
        Duration::from_millis(shared.config.degraded_ensemble_check_interval_ms.max(1));
    let mut degraded_check_at =
        (segment.replicas.len() < ensemble_size).then(|| segment.opened_at + degraded_check_every);
    loop {
        if rolling && rolling_since.is_none() {
            rolling_since = Some(Instant::now());
            // The next segment starts where the last append accepted into
            // this one ends; create it and open its streams while those
            // appends drain. Nothing is sent to it before they all reached
            // the ack quorum (see `open_segment`).
            let mut excluded = segment.failed_stores();
            let base_offset = next_offset;
            preparing = Some(Box::pin(async move {
                create_and_open(shared, partition, base_offset, &mut excluded)
                    .await
                    .map_err(|error| (error, excluded))
            }));
        }
        if rolling && in_flight.is_empty() {
            if drained_at.is_none() {
                drained_at = Some(Instant::now());
            }
            if prepared.is_some() || preparing.is_none() {
                let mut failed_stores = segment.failed_stores();
                let prepared = match prepared {
                    Some(Ok(next)) => Some(Box::new((next, segment.info.clone(), next_offset))),
                    Some(Err((error, excluded))) => {
                        tracing::warn!(partition = %partition.key, %error, "could not prepare the next segment; rolling through takeover");
                        for store in excluded {
                            if !failed_stores.contains(&store) {
                                failed_stores.push(store);
                            }
                        }
                        None
                    }
                    None => None,
                };
                return ServeEnd::Roll {
                    failed_stores,
                    stopped_at: rolling_since.unwrap_or_else(Instant::now),
                    drained_at: drained_at.unwrap_or_else(Instant::now),
                    prepared,
                };
            }
        }
        let slowest = segment.slowest_acknowledged();
        while unacknowledged
            .front()
            .is_some_and(|(sequence, _)| *sequence <= slowest)
        {
            unacknowledged.pop_front();
        }
        let replica_deadline = unacknowledged
            .front()
            .map(|(_, sent_at)| *sent_at + replica_ack_timeout);
        let time_roll_armed = roll_at.is_some() && !rolling && size_bytes > 0;
        // A replica dropped below: decide whether the rest can go on.
        let mut dropped: Option<BrokerError> = None;
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
                let Some(job) = deduplicate(partition, job, next_offset) else {
                    continue;
                };
                let mut job = job;
                // Stamped in place when this is the only reference to the
                // batch's memory (the request it came in is gone); copied
                // otherwise, since a shared buffer must not change.
                // (About 4 in 5 batches of a produce stream measured, ADR 0006.)
                let mut bytes = std::mem::take(&mut job.batch)
                    .try_into_mut()
                    .unwrap_or_else(|shared_batch| bytes::BytesMut::from(&shared_batch[..]));
                // The ownership epoch fits the batch's 32-bit field for any
                // realistic number of reassignments; saturate otherwise.
                assign(&mut bytes, next_offset, u32::try_from(partition.epoch).unwrap_or(u32::MAX));
                let bytes = bytes.freeze();
                sequence += 1;
                let append = AppendRequest {
                    segment_id: segment.info.segment_id,
                    writer_epoch: partition.epoch,
                    batch: bytes.clone(),
                    sequence,
                };
                let now = Instant::now();
                for replica in segment.replicas.iter_mut().filter(|replica| !replica.failed) {
                    // The channel holds more than the in-flight bound, so a
                    // full one means this replica fell that far behind the
                    // others; a closed one, that its stream broke.
                    if replica.sender.try_send(append.clone()).is_err() {
                        tracing::warn!(partition = %partition.key, store = %replica.store_id, "replica fell behind or its stream closed; dropping it");
                        replica.failed = true;
                        dropped = Some(BrokerError::Unavailable(format!(
                            "store {} fell behind or closed the append stream of {}",
                            replica.store_id, partition.key
                        )));
                    }
                }
                unacknowledged.push_back((sequence, now));
                let end_offset = next_offset + u64::from(job.header.record_count);
                size_bytes += bytes.len() as u64;
                in_flight.push_back(InFlight {
                    job,
                    sequence,
                    base_offset: next_offset,
                    end_offset,
                    bytes,
                    append_time_ms: sluice_proto::now_unix_ms(),
                });
                next_offset = end_offset;
                if config.segment_bytes > 0 && size_bytes >= config.segment_bytes {
                    rolling = true;
                }
            }
            // Polled while idle too, so a store that dies between appends
            // is dropped (and the segment rolled) at once.
            response = segment.responses.next() => {
                let Some((index, answer)) = response else {
                    let error = BrokerError::Unavailable(format!("every append stream of {} closed", partition.key));
                    fail_all(&mut in_flight, &error);
                    return ServeEnd::Failed { error, failed_stores: segment.failed_stores() };
                };
                let store_id = segment.replicas[index].store_id.clone();
                let failure = match answer {
                    Ok(answer) if answer.error == ErrorCode::None as i32 => {
                        let replica = &mut segment.replicas[index];
                        if answer.sequence <= replica.acknowledged_sequence || answer.sequence > sequence {
                            Some(BrokerError::Internal(format!(
                                "store {store_id} acknowledged sequence {} out of order for {} (had {}, sent {sequence})",
                                answer.sequence, partition.key, replica.acknowledged_sequence
                            )))
                        } else {
                            if !replica.failed {
                                replica.acknowledged_sequence = answer.sequence;
                            }
                            while in_flight.front().is_some_and(|entry| segment.acknowledgements(entry.sequence) >= ack_quorum) {
                                if let Some(done) = in_flight.pop_front() {
                                    complete(shared, partition, done);
                                }
                            }
                            None
                        }
                    }
                    Ok(answer) => {
                        let code = ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal);
                        Some(BrokerError::Remote {
                            context: format!("store {store_id} Append"),
                            error: SluiceError::new(code, answer.error_message),
                        })
                    }
                    Err(status) => Some(BrokerError::remote("store Append", &status)),
                };
                if let Some(error) = failure {
                    let replica = &mut segment.replicas[index];
                    if !replica.failed {
                        tracing::warn!(partition = %partition.key, store = %store_id, %error, "replica failed; dropping it");
                        replica.failed = true;
                        dropped = Some(error);
                    }
                }
            }
            _ = tokio::time::sleep_until(replica_deadline.unwrap_or_else(never)), if replica_deadline.is_some() => {
                let overdue = unacknowledged.front().map_or(0, |(sequence, _)| *sequence);
                for replica in segment.replicas.iter_mut().filter(|replica| !replica.failed && replica.acknowledged_sequence < overdue) {
                    tracing::warn!(partition = %partition.key, store = %replica.store_id, timeout_ms = shared.config.replica_ack_timeout_ms, "replica did not acknowledge in time; dropping it");
                    replica.failed = true;
                    dropped = Some(BrokerError::Timeout(format!(
                        "store {} did not acknowledge an append of {} within {} ms",
                        replica.store_id, partition.key, shared.config.replica_ack_timeout_ms
                    )));
                }
            }
            next = async { preparing.as_mut().expect("polled only while preparing").await }, if preparing.is_some() && prepared.is_none() => {
                prepared = Some(next);
            }
            _ = tokio::time::sleep_until(roll_at.unwrap_or_else(never)), if time_roll_armed => {
                rolling = true;
            }
            _ = tokio::time::sleep_until(degraded_check_at.unwrap_or_else(never)), if degraded_check_at.is_some() && !rolling => {
                if shared.live_stores() >= ensemble_size {
                    tracing::info!(partition = %partition.key, replicas = segment.replicas.len(), ensemble_size, "enough stores are live again; rolling to a full ensemble");
                    rolling = true;
                } else {
                    degraded_check_at = Some(Instant::now() + degraded_check_every);
                }
            }
        }
        if let Some(error) = dropped {
            if segment.healthy_replicas() < ack_quorum {
                // In-flight appends that already reached the ack quorum
                // were completed above; the rest cannot be.
                fail_all(&mut in_flight, &error);
                return ServeEnd::Failed {
                    error,
                    failed_stores: segment.failed_stores(),
                };
            }
            rolling = true;
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
    partition.producer_states(|states| {
        states.appended(&done.job.header, done.base_offset, done.append_time_ms)
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

impl Partition {
    /// Runs `access` on the idempotent producers' state.
    pub fn producer_states<R>(
        &self,
        access: impl FnOnce(&mut crate::idempotence::ProducerStates) -> R,
    ) -> R {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent.
        let mut states = self
            .producers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        access(&mut states)
    }
}

/// Idempotence (ADR 0010): answers a resent batch from the producer state
/// instead of appending it again, refuses one that does not fit its
/// producer's sequence; returns the job if it is to be appended at
/// `base_offset`.
fn deduplicate(partition: &Partition, job: AppendJob, base_offset: u64) -> Option<AppendJob> {
    use crate::idempotence::Verdict;
    match partition.producer_states(|states| states.check(&job.header, base_offset)) {
        Verdict::NotIdempotent | Verdict::Accept => Some(job),
        Verdict::Duplicate(original) => {
            // The producer stream may be gone; nothing to tell then.
            let _ = job.reply.send(Ok(AppendOutcome {
                base_offset: original.base_offset,
                append_time_ms: original.append_time_ms,
                epoch: partition.epoch,
            }));
            None
        }
        Verdict::DuplicateInFlight => {
            let producer_id = job.header.producer_id;
            job.fail(BrokerError::DuplicateInFlight(format!(
                "the original of this batch of producer {producer_id} is still being appended to {}; retry after a backoff",
                partition.key
            )));
            None
        }
        Verdict::OutOfOrder(reason) => {
            job.fail(BrokerError::OutOfOrderSequence(reason));
            None
        }
    }
}
