//! One partition served by this broker: takeover (seal the previous open
//! segment, close it, open a new one), the ordered append pipeline to the
//! segment's stores, segment rolling, and reads for fetch.
//!
//! A single task per partition owns the pipeline, so offsets are assigned
//! in arrival order and acknowledgements go back in that order. After any
//! failure every queued and in-flight append fails and the task re-runs
//! takeover before it accepts again (a new *generation*), so an in-order
//! client retry never reorders.
//!
//! One concern per file:
//! - `mod.rs`: the [`Partition`] handle: status, queueing appends, the
//!   cached segment list, idempotent producers' state;
//! - `reads.rs`: reads for fetch (tail cache, stores, read-ahead) and
//!   offset-for-timestamp lookups;
//! - `task.rs`: the partition's task: takeover, serving, rolls, recovery
//!   after a failure, with backoff;
//! - `takeover.rs`: fencing and recovering open segments (ADR 0008),
//!   creating a segment and opening its append streams, closing a rolled
//!   segment;
//! - `pipeline.rs`: the quorum append pipeline as a pure state machine;
//! - `serve.rs`: the IO loop that feeds the pipeline and carries out its
//!   effects;
//! - `transactions.rs`: the partition's transactions (ADR 0016) as a pure
//!   state machine: open transactions, verification, markers, the last
//!   stable offset and the aborted transactions;
//! - `txn_io.rs`: its IO edge: admitting data and markers into the
//!   pipeline, verifications in flight, rebuilding it from the log.

mod pipeline;
mod reads;
mod serve;
mod takeover;
mod task;
pub mod transactions;
mod txn_io;

use crate::clients::Clients;
use crate::error::BrokerError;
use crate::idempotence::ProducerStates;
use crate::lost_ranges::{lost_range_at, read_end_before_lost, LostRange, LostSkips};
use crate::read_ahead::ReadAhead;
use crate::tail_cache::{PartitionKey, SharedTailCache};
use crate::Shared;
use bytes::Bytes;
use sluice_proto::batch::control::Marker;
use sluice_proto::batch::BatchHeader;
use sluice_proto::names::{CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use sluice_proto::v1::{SegmentInfo, TopicConfig};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use transactions::{AbortedTxn, PartitionTransactions};

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
    /// Why the partition cannot be taken over without an operator (a range
    /// damaged on every copy), while that is so.
    pub offline: Option<String>,
    /// Offsets below it belong to no open transaction (ADR 0016 §3.4):
    /// min(high watermark, first offsets of open transactions). `None`
    /// until the transaction state is rebuilt after a takeover; nothing is
    /// served read-committed before.
    pub last_stable_offset: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct AppendOutcome {
    pub base_offset: u64,
    pub append_time_ms: i64,
    pub epoch: u64,
}

/// What an append carries.
enum JobKind {
    /// A batch from a producer (or the group coordinator); a transactional
    /// one with its transactional id. `coordinator_commit`: a group
    /// coordinator's transactional offset commit (ADR 0016 §5), sequence
    /// −1, which the idempotence check skips (re-applying an offset is
    /// harmless); never set for a producer's batch.
    Data {
        transactional_id: String,
        coordinator_commit: bool,
    },
    /// A transaction marker; its control batch is built when the pipeline
    /// admits it (it records the transaction's first offset here).
    Marker(Marker),
}

/// Runs inside the pipeline, in log order, once an append is durable; gets
/// its base offset.
pub type OnDurable = Box<dyn FnOnce(u64) + Send>;

struct AppendJob {
    kind: JobKind,
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
    /// The topic's config; replaced while serving when the topic is
    /// altered (issue 15), so read it through [`Self::config`].
    config: watch::Sender<TopicConfig>,
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
    producers: Mutex<ProducerStates>,
    /// Transactions of this partition (ADR 0016): changed by the pipeline
    /// task only, read by read-committed fetches (aborted ranges).
    transactions: Mutex<PartitionTransactions<AppendJob>>,
    /// The store read started ahead of a sequential reader's next fetch.
    read_ahead: ReadAhead,
    /// What the broker's own readers stepped over in accepted-lost ranges.
    pub lost_skips: LostSkips,
    /// This topic's produce and fetch counters, looked up once here.
    pub series: crate::metrics::TopicSeries,
    io: PartitionIo,
}

/// What a partition's reads use, handed to it at spawn.
#[derive(Clone)]
pub(crate) struct PartitionIo {
    pub clients: Arc<Clients>,
    pub tail_cache: SharedTailCache,
    /// Bytes all partitions' fetch read-aheads may hold together.
    pub read_ahead_budget: Arc<Semaphore>,
}

impl PartitionIo {
    pub fn of(shared: &Shared) -> Self {
        Self {
            clients: shared.clients.clone(),
            tail_cache: shared.tail_cache.clone(),
            read_ahead_budget: shared.read_ahead_budget.clone(),
        }
    }
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
        let queue_permits = usize::try_from(shared.config.produce.partition_queue_bytes)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        let series = shared.metrics.topic(&key.topic);
        let partition = Arc::new(Partition {
            key,
            epoch,
            config: watch::Sender::new(config),
            status: watch::Sender::new(PartitionStatus {
                phase: Phase::Loading,
                high_watermark: 0,
                log_start_offset: 0,
                generation: 0,
                loaded: false,
                offline: None,
                last_stable_offset: None,
            }),
            jobs,
            queue_bytes: Arc::new(Semaphore::new(queue_permits)),
            queue_limit_permits: u32::try_from(queue_permits).unwrap_or(u32::MAX),
            segments: RwLock::new(Vec::new()),
            stopped: watch::Sender::new(false),
            producers: Mutex::new(ProducerStates::new(
                shared.config.produce.max_producer_states_per_partition,
            )),
            transactions: Mutex::new(PartitionTransactions::new(transactions::Limits {
                max_open: shared.config.produce.max_open_transactions_per_partition,
                max_ended: transactions::MAX_ENDED_PRODUCERS,
                max_aborted: transactions::MAX_ABORTED_TRANSACTIONS,
            })),
            read_ahead: ReadAhead::default(),
            lost_skips: LostSkips::default(),
            series,
            io: PartitionIo::of(&shared),
        });
        tokio::spawn(task::run(shared, partition.clone(), jobs_receiver));
        partition
    }

    /// The topic's current config.
    pub fn config(&self) -> TopicConfig {
        *self.config.borrow()
    }

    /// Changes whenever the topic's config is replaced.
    pub fn watch_config(&self) -> watch::Receiver<TopicConfig> {
        self.config.subscribe()
    }

    /// Replaces the topic's config (the topic was altered); `false` when
    /// it is unchanged. The new settings apply from the next decision
    /// that reads them: retention's next check, the next segment created,
    /// the open segment's roll limits at once (`serve.rs`).
    pub fn set_config(&self, config: TopicConfig) -> bool {
        self.config.send_if_modified(|current| {
            let changed = *current != config;
            *current = config;
            changed
        })
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

    /// Where a read from `offset` must stop (`end`, or the start of the
    /// next accepted-lost range), or [`BrokerError::DataLost`] when
    /// `offset` itself lies in one.
    pub fn read_limit(&self, offset: u64, end: u64) -> Result<u64, BrokerError> {
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(LostRange { start, end }) = lost_range_at(&segments, offset) {
            return Err(BrokerError::DataLost {
                topic: self.key.topic.clone(),
                partition: self.key.partition,
                start,
                end,
            });
        }
        Ok(read_end_before_lost(&segments, offset, end))
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
            self.transactions(|state| state.forget_aborted_before(base));
        }
        self.set_segments(segments);
    }

    /// Swaps compacted segments into the cached list (ADR 0016 §8): the
    /// `replaced` ids go, `installed` (same offsets) come in.
    /// Done under the write lock, so a concurrent change of other segments
    /// (a roll, retention) is not lost.
    pub fn segments_replaced(&self, replaced: &[u64], installed: Vec<SegmentInfo>) {
        let mut segments = self
            .segments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        segments.retain(|segment| !replaced.contains(&segment.segment_id));
        segments.extend(installed);
        segments.sort_by_key(|segment| (segment.base_offset, segment.end_offset));
    }

    pub fn is_offsets_topic(&self) -> bool {
        self.key.topic == CONSUMER_OFFSETS_TOPIC
    }

    /// A partition of the transaction log (ADR 0016 §2.1): replayed into
    /// the transaction coordinator before it serves.
    pub fn is_transaction_log(&self) -> bool {
        self.key.topic == TRANSACTION_STATE_TOPIC
    }

    /// Largest batch accepted for this topic.
    pub fn max_batch_bytes(&self, default_bytes: u32) -> usize {
        match self.config.borrow().max_batch_bytes {
            0 => default_bytes as usize,
            bytes => bytes as usize,
        }
    }

    /// Produced records need keys: the topic is compacted (ADR 0016 §8).
    pub fn keys_required(&self) -> bool {
        sluice_proto::cleanup::compacts(&self.config.borrow())
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
        self.submit_job(
            JobKind::Data {
                transactional_id: String::new(),
                coordinator_commit: false,
            },
            batch,
            header,
            generation,
            on_durable,
        )
    }

    /// [`Partition::submit`] of a producer's batch, with the transactional
    /// id it came with (required for a transactional batch).
    pub fn submit_produced(
        &self,
        batch: Bytes,
        header: BatchHeader,
        generation: u64,
        transactional_id: String,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, BrokerError>>, BrokerError> {
        let kind = JobKind::Data {
            transactional_id,
            coordinator_commit: false,
        };
        self.submit_job(kind, batch, header, generation, None)
    }

    /// [`Partition::submit`] of a group coordinator's transactional offset
    /// commit (ADR 0016 §5): verified with the transaction coordinator
    /// like any transactional batch (the participant is this offsets
    /// partition), not checked for idempotence (its sequence is −1).
    pub fn submit_transactional_commit(
        &self,
        batch: Bytes,
        header: BatchHeader,
        generation: u64,
        transactional_id: String,
        on_durable: OnDurable,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, BrokerError>>, BrokerError> {
        let kind = JobKind::Data {
            transactional_id,
            coordinator_commit: true,
        };
        self.submit_job(kind, batch, header, generation, Some(on_durable))
    }

    /// Queues a transaction marker (ADR 0016 §3.4), answered once durable
    /// or when found already applied; `on_durable` runs in log order once
    /// the marker is appended and durable (not when it was found already
    /// applied: its effect was installed then).
    pub fn submit_marker_then(
        &self,
        marker: Marker,
        on_durable: Option<OnDurable>,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, BrokerError>>, BrokerError> {
        // The header is a placeholder until the pipeline builds the batch.
        let placeholder =
            sluice_proto::batch::control::build_marker(&marker, 0).ok_or_else(|| {
                BrokerError::InvalidArgument(format!(
                    "a marker needs a producer id >= 0 and a transaction epoch in 0..{}",
                    i16::MAX
                ))
            })?;
        let header = BatchHeader::parse(&placeholder).map_err(BrokerError::Batch)?;
        let generation = self.status().generation;
        self.submit_job(
            JobKind::Marker(marker),
            placeholder,
            header,
            generation,
            on_durable,
        )
    }

    fn submit_job(
        &self,
        kind: JobKind,
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
                if let Some(reason) = status.offline {
                    return Err(BrokerError::PartitionOffline(reason));
                }
                return Err(BrokerError::Recovering {
                    topic: self.key.topic.clone(),
                    partition: self.key.partition,
                });
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
                kind,
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
}

impl Partition {
    /// Runs `access` on the idempotent producers' state.
    pub fn producer_states<R>(&self, access: impl FnOnce(&mut ProducerStates) -> R) -> R {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent.
        let mut states = self
            .producers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        access(&mut states)
    }
}

impl Partition {
    /// Runs `access` on the transaction state.
    fn transactions<R>(
        &self,
        access: impl FnOnce(&mut PartitionTransactions<AppendJob>) -> R,
    ) -> R {
        let mut state = self
            .transactions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        access(&mut state)
    }

    /// Aborted transactions whose ranges meet `[from, to)` (read-committed
    /// fetches).
    pub fn aborted_in(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        self.transactions(|state| state.aborted_in(from, to))
    }

    /// Age in milliseconds at `now_ms` of the open transaction holding the
    /// LSO back below `high_watermark` (its first record's timestamp here,
    /// the producer's clock; ADR 0016 §9); `None` when none does.
    pub fn oldest_open_transaction_ms(&self, high_watermark: u64, now_ms: i64) -> Option<u64> {
        let (first_offset, first_timestamp_ms) = self.transactions(|state| state.holding_lso())?;
        (first_offset < high_watermark)
            .then(|| u64::try_from(now_ms.saturating_sub(first_timestamp_ms)).unwrap_or(0))
    }
}

/// Far enough in the future to stand for "never" in a `select!`.
fn never() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(24 * 3600)
}
