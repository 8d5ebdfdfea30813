//! Background fetching: one task per broker address fetches the assigned
//! partitions that broker owns (long poll) and hands the fetched batches
//! to a decoder task, which decodes them and hands records to the consumer
//! through a buffer bounded by `max_buffered_bytes`. Fetch and decode are
//! pipelined: the next offset is read from the batch headers, so the next
//! fetch is in flight while the previous response is decoded.

use super::data_loss::{data_loss_action, DataLossAction};
use super::{ConsumerConfig, ConsumerRecord, CorruptBatchPolicy, Isolation, StartOffset};
use crate::cluster::{backoff, normalize_address, Cluster, TopicPartition};
use crate::ClientError;
use bytes::Bytes;
use sluice_proto::batch::{decode, BatchIter};
use sluice_proto::v1::{FetchPartition, FetchRequest, FetchedPartition, OffsetSpec};
use sluice_proto::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// How often the manager re-checks routes and fetcher tasks, in milliseconds.
const MANAGER_INTERVAL_MS: u64 = 100;
/// Pause after a failed fetch before trying again, in milliseconds.
const FETCH_RETRY_BACKOFF_MS: u64 = 100;
const FETCH_RETRY_BACKOFF_MAX_MS: u64 = 2_000;

/// Fetch position of one assigned partition.
#[derive(Debug, Clone)]
pub(crate) struct FetchPosition {
    /// Next offset to fetch.
    pub offset: u64,
    /// Set while the start still has to be resolved with `ListOffsets`.
    pub unresolved: Option<StartOffset>,
    /// Where this generation started fetching, once known.
    pub start: Option<u64>,
    /// Changes on every seek/assignment; fetched data of an older
    /// generation is dropped.
    pub generation: u64,
    /// Stopped after an error retrying cannot fix (until the next seek).
    pub paused: bool,
}

#[derive(Debug, Default)]
pub(crate) struct FetchState {
    pub partitions: HashMap<TopicPartition, FetchPosition>,
    /// Bytes fetched and not yet taken by the consumer.
    pub buffered_bytes: usize,
    next_generation: u64,
}

impl FetchState {
    /// Starts (or restarts) fetching `partition` from `start`.
    pub fn set_start(&mut self, partition: TopicPartition, start: StartOffset) {
        self.next_generation += 1;
        let (offset, unresolved) = match start {
            StartOffset::Offset(offset) => (offset, None),
            other => (0, Some(other)),
        };
        self.partitions.insert(
            partition,
            FetchPosition {
                offset,
                start: unresolved.is_none().then_some(offset),
                unresolved,
                generation: self.next_generation,
                paused: false,
            },
        );
    }
}

/// What fetchers hand to the consumer.
pub(crate) enum Fetched {
    Records {
        partition: TopicPartition,
        generation: u64,
        /// The offset the fetch asked for; earlier records are skipped.
        start: u64,
        records: Vec<ConsumerRecord>,
        bytes: usize,
    },
    Error {
        partition: TopicPartition,
        generation: u64,
        error: ClientError,
    },
}

pub(crate) struct FetchShared {
    pub state: Mutex<FetchState>,
    /// Signalled when buffer room or partitions change.
    pub wake: Notify,
    pub closed: AtomicBool,
    /// Corrupt batches skipped under [`CorruptBatchPolicy::Skip`].
    pub skipped_corrupt_batches: AtomicU64,
    /// Offsets of accepted-lost ranges skipped under
    /// [`super::DataLossPolicy::Skip`].
    pub skipped_lost_offsets: AtomicU64,
}

impl FetchShared {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(FetchState::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            skipped_corrupt_batches: AtomicU64::new(0),
            skipped_lost_offsets: AtomicU64::new(0),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, FetchState> {
        // Plain data; a panic elsewhere does not make it unusable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The consumer took `bytes` out of the buffer.
    pub fn release(&self, bytes: usize) {
        let mut state = self.lock();
        state.buffered_bytes = state.buffered_bytes.saturating_sub(bytes);
        drop(state);
        self.wake.notify_waiters();
    }
}

/// Keeps one fetcher task per broker that owns an assigned partition.
pub(crate) async fn run_manager(
    cluster: Arc<Cluster>,
    config: Arc<ConsumerConfig>,
    shared: Arc<FetchShared>,
    output: mpsc::UnboundedSender<Fetched>,
) {
    let mut fetchers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut route_changes = cluster.route_changes();
    while !shared.closed.load(Ordering::Acquire) {
        let partitions: Vec<TopicPartition> = shared.lock().partitions.keys().cloned().collect();
        let mut addresses = HashSet::new();
        let mut unrouted = HashSet::new();
        for partition in &partitions {
            match cluster.cached_route(&partition.topic, partition.partition) {
                Some(route) if !route.broker_address.is_empty() => {
                    addresses.insert(normalize_address(&route.broker_address));
                }
                _ => {
                    unrouted.insert(partition.topic.clone());
                }
            }
        }
        if !unrouted.is_empty() {
            let topics: Vec<String> = unrouted.into_iter().collect();
            if let Err(error) = cluster.refresh_routes(&topics).await {
                tracing::warn!(?topics, %error, "cannot get routes for assigned partitions");
            }
        }
        fetchers.retain(|_, task| !task.is_finished());
        for address in addresses {
            fetchers.entry(address.clone()).or_insert_with(|| {
                tokio::spawn(run_fetcher(
                    cluster.clone(),
                    config.clone(),
                    shared.clone(),
                    output.clone(),
                    address,
                ))
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(MANAGER_INTERVAL_MS)) => {}
            _ = shared.wake.notified() => {}
            // A partition moved: start fetching from its new owner now.
            _ = route_changes.changed() => {}
        }
    }
    for (_, task) in fetchers {
        task.abort();
    }
}

fn routed_to(cluster: &Cluster, partition: &TopicPartition, address: &str) -> bool {
    cluster
        .cached_route(&partition.topic, partition.partition)
        .is_some_and(|route| {
            !route.broker_address.is_empty() && normalize_address(&route.broker_address) == address
        })
}

/// Fetches from one broker until it owns none of the assigned partitions.
async fn run_fetcher(
    cluster: Arc<Cluster>,
    config: Arc<ConsumerConfig>,
    shared: Arc<FetchShared>,
    output: mpsc::UnboundedSender<Fetched>,
    address: String,
) {
    let mut failures = 0u32;
    let mut round = 0usize;
    // Ends when this task drops its sender, after decoding what was queued.
    let (decoder, decoder_input) = mpsc::unbounded_channel();
    tokio::spawn(run_decoder(
        config.clone(),
        shared.clone(),
        output,
        decoder_input,
    ));
    let output = decoder;
    while !shared.closed.load(Ordering::Acquire) {
        let room = config
            .max_buffered_bytes
            .saturating_sub(shared.lock().buffered_bytes);
        if room == 0 {
            // Buffer full: stop fetching until the application catches up.
            let _ = tokio::time::timeout(
                Duration::from_millis(MANAGER_INTERVAL_MS),
                shared.wake.notified(),
            )
            .await;
            continue;
        }
        let (to_resolve, to_fetch) = {
            let state = shared.lock();
            let mut to_resolve = Vec::new();
            let mut to_fetch = Vec::new();
            for (partition, position) in &state.partitions {
                if position.paused || !routed_to(&cluster, partition, &address) {
                    continue;
                }
                match position.unresolved {
                    Some(start) => to_resolve.push((partition.clone(), start, position.generation)),
                    None => {
                        to_fetch.push((partition.clone(), position.offset, position.generation))
                    }
                }
            }
            (to_resolve, to_fetch)
        };
        if to_resolve.is_empty() && to_fetch.is_empty() {
            return;
        }
        let mut to_fetch = to_fetch;
        if !to_fetch.is_empty() {
            // Filled in request order: rotating keeps a busy partition from starving others.
            to_fetch.sort_by(|left, right| left.0.cmp(&right.0));
            let shift = round % to_fetch.len();
            to_fetch.rotate_left(shift);
            round = round.wrapping_add(1);
        }
        let mut failed = false;
        for (partition, start, generation) in to_resolve {
            match resolve_start(&cluster, &partition, start, config.isolation).await {
                Ok(offset) => {
                    let mut state = shared.lock();
                    if let Some(position) = state.partitions.get_mut(&partition) {
                        if position.generation == generation {
                            tracing::debug!(%partition, offset, ?start, "start position resolved");
                            position.offset = offset;
                            position.start = Some(offset);
                            position.unresolved = None;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%partition, %error, "cannot resolve start offset");
                    failed = true;
                    if error.needs_route_refresh() {
                        let _ = cluster
                            .refresh_routes(std::slice::from_ref(&partition.topic))
                            .await;
                    }
                }
            }
        }
        if !to_fetch.is_empty() {
            let max_bytes = config
                .fetch_max_bytes
                .min(u32::try_from(room).unwrap_or(u32::MAX))
                .max(1);
            let request = FetchRequest {
                partitions: to_fetch
                    .iter()
                    .map(|(partition, offset, _)| FetchPartition {
                        topic: partition.topic.clone(),
                        partition: partition.partition,
                        offset: *offset,
                        max_bytes: config.fetch_partition_max_bytes,
                    })
                    .collect(),
                max_wait_ms: config.fetch_max_wait_ms,
                min_bytes: 1,
                max_bytes,
                isolation: config.isolation.level() as i32,
            };
            let moved_away = || {
                to_fetch
                    .iter()
                    .all(|(partition, _, _)| !routed_to(&cluster, partition, &address))
            };
            let result = match cluster.broker(&address) {
                Ok(mut client) => {
                    let fetch = cluster.unary("Fetch", &address, client.fetch(request));
                    match until_moved_away(fetch, cluster.route_changes(), moved_away).await {
                        Some(result) => result,
                        // Every partition asked for has a new owner (its own
                        // fetcher reads there): this long or stuck fetch is dropped.
                        None => continue,
                    }
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(response) => {
                    tokio::time::sleep(crate::cluster::throttle_wait(response.throttle_time_ms))
                        .await;
                    let requested: HashMap<TopicPartition, (u64, u64)> = to_fetch
                        .into_iter()
                        .map(|(partition, offset, generation)| (partition, (offset, generation)))
                        .collect();
                    let mut refresh = HashSet::new();
                    for fetched in response.partitions {
                        let partition =
                            TopicPartition::new(fetched.topic.clone(), fetched.partition);
                        let Some(&(offset, generation)) = requested.get(&partition) else {
                            continue;
                        };
                        match handle_partition(
                            &config, &shared, &output, &partition, offset, generation, fetched,
                        ) {
                            Handled::Ok => {}
                            Handled::Refresh => {
                                refresh.insert(partition.topic.clone());
                                failed = true;
                            }
                        }
                    }
                    if !refresh.is_empty() {
                        let topics: Vec<String> = refresh.into_iter().collect();
                        let _ = cluster.refresh_routes(&topics).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(address, %error, "fetch failed");
                    failed = true;
                    if error.needs_route_refresh() {
                        let topics: Vec<String> = requested_topics(&shared);
                        let _ = cluster.refresh_routes(&topics).await;
                    }
                }
            }
        }
        if failed {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff(
                failures - 1,
                FETCH_RETRY_BACKOFF_MS,
                FETCH_RETRY_BACKOFF_MAX_MS,
            ))
            .await;
        } else {
            failures = 0;
        }
    }
}

/// Runs `call` unless, at a route change, `moved_away` says it is no
/// longer worth waiting for (then `None`).
async fn until_moved_away<T>(
    call: impl std::future::Future<Output = T>,
    mut route_changes: tokio::sync::watch::Receiver<u64>,
    moved_away: impl Fn() -> bool,
) -> Option<T> {
    tokio::pin!(call);
    loop {
        tokio::select! {
            result = &mut call => return Some(result),
            changed = route_changes.changed() => {
                if changed.is_err() {
                    return Some(call.await);
                }
                if moved_away() {
                    return None;
                }
            }
        }
    }
}

fn requested_topics(shared: &FetchShared) -> Vec<String> {
    let state = shared.lock();
    let topics: HashSet<String> = state
        .partitions
        .keys()
        .map(|partition| partition.topic.clone())
        .collect();
    topics.into_iter().collect()
}

/// The offset `start` names. `Latest` is the last stable offset for a
/// read-committed consumer (ADR 0016 §4): starting at the high watermark
/// would skip the records of a transaction open below it once it commits.
async fn resolve_start(
    cluster: &Cluster,
    partition: &TopicPartition,
    start: StartOffset,
    isolation: Isolation,
) -> Result<u64, ClientError> {
    let (spec, timestamp_ms) = match start {
        StartOffset::Offset(offset) => return Ok(offset),
        StartOffset::Earliest => (OffsetSpec::Earliest, 0),
        StartOffset::Latest => (OffsetSpec::Latest, 0),
        StartOffset::Timestamp(timestamp_ms) => (OffsetSpec::Timestamp, timestamp_ms),
    };
    let response = crate::admin::list_offsets_isolated(
        cluster,
        &partition.topic,
        partition.partition,
        (spec, timestamp_ms),
        isolation.level(),
    )
    .await?;
    Ok(response.offset)
}

enum Handled {
    Ok,
    Refresh,
}

/// What a fetcher hands its decoder, in fetch order (so an error never
/// overtakes records fetched before it).
pub(crate) enum DecoderInput {
    /// Batches of one partition fetched at `start`; the fetch position was
    /// already moved past them (read from their headers).
    Decode {
        partition: TopicPartition,
        generation: u64,
        start: u64,
        batches: Bytes,
    },
    /// Passed to the consumer as it is.
    Forward(Fetched),
}

/// Decodes fetched batches off the fetch loop and hands records (and
/// errors) to the consumer in the order they were fetched.
async fn run_decoder(
    config: Arc<ConsumerConfig>,
    shared: Arc<FetchShared>,
    output: mpsc::UnboundedSender<Fetched>,
    mut input: mpsc::UnboundedReceiver<DecoderInput>,
) {
    while let Some(item) = input.recv().await {
        let fetched = match item {
            DecoderInput::Forward(fetched) => vec![fetched],
            DecoderInput::Decode {
                partition,
                generation,
                start,
                batches,
            } => {
                if stopped_before(&shared, &partition, generation, start) {
                    // Fetched ahead of a batch the partition stopped at.
                    shared.release(batches.len());
                    continue;
                }
                let decoded = decode_batches_with_gaps(
                    &partition,
                    &batches,
                    start,
                    config.client.max_grpc_message_bytes,
                    config.on_corrupt_batch,
                    config.isolation.allows_gaps(),
                );
                decoded_items(
                    &shared,
                    partition,
                    generation,
                    start,
                    batches.len(),
                    decoded,
                )
            }
        };
        for fetched in fetched {
            if output.send(fetched).is_err() {
                return;
            }
        }
    }
}

/// Whether `partition` stopped (paused by an error of this generation)
/// at or before `start`: then data fetched from `start` comes after the
/// error and must not reach the application.
fn stopped_before(
    shared: &FetchShared,
    partition: &TopicPartition,
    generation: u64,
    start: u64,
) -> bool {
    shared
        .lock()
        .partitions
        .get(partition)
        .is_some_and(|position| {
            position.generation == generation && position.paused && position.offset <= start
        })
}

/// Stops `partition` at `offset` after an error in data fetched from
/// there (unless a seek changed its generation meanwhile).
fn stop_at(shared: &FetchShared, partition: &TopicPartition, generation: u64, offset: u64) {
    let mut state = shared.lock();
    if let Some(position) = state.partitions.get_mut(partition) {
        if position.generation == generation {
            position.paused = true;
            position.offset = offset;
        }
    }
    drop(state);
    shared.wake.notify_waiters();
}

/// What the consumer gets for one decoded range: its records, then the
/// error that stopped the partition, if any. Logs and counts the corrupt
/// batches skipped.
fn decoded_items(
    shared: &FetchShared,
    partition: TopicPartition,
    generation: u64,
    start: u64,
    bytes: usize,
    decoded: Result<DecodedRange, ClientError>,
) -> Vec<Fetched> {
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            tracing::error!(%partition, offset = start, %error, "fetched data does not decode; partition paused until seek");
            shared.release(bytes);
            stop_at(shared, &partition, generation, start);
            return vec![Fetched::Error {
                partition,
                generation,
                error,
            }];
        }
    };
    for skipped in &decoded.skipped {
        shared
            .skipped_corrupt_batches
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(%partition, error = %skipped, "skipping a batch that cannot be decoded (on_corrupt_batch = Skip)");
    }
    let mut items = vec![Fetched::Records {
        partition: partition.clone(),
        generation,
        start,
        records: decoded.records,
        bytes,
    }];
    if let Some(error) = decoded.stopped_at {
        tracing::error!(%partition, %error, "a batch cannot be decoded; partition stopped at it until seek (on_corrupt_batch = Fail)");
        stop_at(shared, &partition, generation, decoded.next_offset);
        items.push(Fetched::Error {
            partition,
            generation,
            error,
        });
    }
    items
}

/// Applies one partition of a fetch response: moves its position past the
/// fetched batches and queues them for decoding.
fn handle_partition(
    config: &ConsumerConfig,
    shared: &FetchShared,
    output: &mpsc::UnboundedSender<DecoderInput>,
    partition: &TopicPartition,
    offset: u64,
    generation: u64,
    fetched: FetchedPartition,
) -> Handled {
    if let Some(error) = ClientError::from_code(
        fetched.error,
        format!(
            "fetch of {partition} at offset {offset}: {}",
            fetched.error_message
        ),
    ) {
        let mut state = shared.lock();
        let Some(position) = state.partitions.get_mut(partition) else {
            return Handled::Ok;
        };
        if position.generation != generation || position.offset != offset {
            return Handled::Ok;
        }
        if error.code() == Some(ErrorCode::OffsetOutOfRange) {
            tracing::warn!(
                %partition, offset, log_start = fetched.log_start_offset, high_watermark = fetched.high_watermark,
                reset = ?config.reset, "offset out of range; applying the reset policy"
            );
            position.unresolved = Some(config.reset);
            position.start = None;
            return Handled::Ok;
        }
        let error = if error.code() == Some(ErrorCode::DataLost) {
            let Some(error) = on_data_lost(config, shared, partition, position, &fetched) else {
                return Handled::Ok;
            };
            error
        } else {
            error
        };
        if error.is_retriable() || error.needs_route_refresh() {
            tracing::debug!(%partition, %error, "retriable fetch error");
            return Handled::Refresh;
        }
        tracing::error!(%partition, %error, "fetch failed; partition paused until seek");
        position.paused = true;
        let _ = output.send(DecoderInput::Forward(Fetched::Error {
            partition: partition.clone(),
            generation,
            error,
        }));
        return Handled::Ok;
    }
    let bytes = fetched.batches.len();
    let gaps = config.isolation.allows_gaps();
    // A read-committed answer may leave out offsets (markers, aborted
    // batches), even all it read: the broker's next_offset says where the
    // next fetch starts.
    let scanned = scan_with_gaps(partition, &fetched.batches, offset, gaps).map(|scanned| {
        match fetched.next_offset.filter(|_| gaps) {
            Some(next_offset) => scanned.max(next_offset),
            None => scanned,
        }
    });
    let mut state = shared.lock();
    let Some(position) = state.partitions.get_mut(partition) else {
        return Handled::Ok;
    };
    // A seek or a second fetcher (after a route change) got there first.
    if position.generation != generation || position.offset != offset {
        return Handled::Ok;
    }
    match scanned {
        Ok(next_offset) => {
            if next_offset <= offset {
                return Handled::Ok;
            }
            position.offset = next_offset;
            if fetched.batches.is_empty() {
                return Handled::Ok;
            }
            state.buffered_bytes += bytes;
            let _ = output.send(DecoderInput::Decode {
                partition: partition.clone(),
                generation,
                start: offset,
                batches: fetched.batches,
            });
        }
        Err(error) => {
            tracing::error!(%partition, offset, %error, "fetched data does not decode; partition paused until seek");
            position.paused = true;
            let _ = output.send(DecoderInput::Forward(Fetched::Error {
                partition: partition.clone(),
                generation,
                error,
            }));
        }
    }
    Handled::Ok
}

/// A fetch at `position` answered DATA_LOST: under
/// [`super::DataLossPolicy::Skip`] moves the position to where readable data
/// resumes (logged, counted) and gives None; under `Fail` the error that
/// stops the partition.
fn on_data_lost(
    config: &ConsumerConfig,
    shared: &FetchShared,
    partition: &TopicPartition,
    position: &mut FetchPosition,
    fetched: &FetchedPartition,
) -> Option<ClientError> {
    let offset = position.offset;
    match data_loss_action(config.on_data_loss, offset, fetched.lost_end_offset) {
        DataLossAction::Skip { to, skipped } => {
            tracing::warn!(%partition, offset, resumes_at = to, skipped, message = %fetched.error_message,
                "skipping offsets accepted as lost (on_data_loss = Skip)");
            position.offset = to;
            shared
                .skipped_lost_offsets
                .fetch_add(skipped, Ordering::Relaxed);
            None
        }
        DataLossAction::Fail { end_offset } => Some(ClientError::DataLost {
            topic: partition.topic.clone(),
            partition: partition.partition,
            start_offset: offset,
            end_offset,
        }),
    }
}

/// The offset after the last of the concatenated `batches` fetched at
/// `offset`, from their headers alone (framing checked, CRCs not: the
/// decoder checks them); stops at a hole like [`decode_batches`], so both
/// agree on where the fetched data ends.
#[cfg(test)]
pub(crate) fn next_offset_after(
    partition: &TopicPartition,
    batches: &Bytes,
    offset: u64,
) -> Result<u64, ClientError> {
    scan_with_gaps(partition, batches, offset, false)
}

/// [`next_offset_after`]; with `gaps` (a read-committed answer, whose
/// batches may leave out offsets) it reads past holes.
fn scan_with_gaps(
    partition: &TopicPartition,
    batches: &Bytes,
    offset: u64,
    gaps: bool,
) -> Result<u64, ClientError> {
    let mut next_offset = offset;
    for item in BatchIter::new(batches) {
        let (_, header, _) = item.map_err(|error| {
            ClientError::Decode(format!(
                "{partition} at offset {offset}: malformed batch: {error}"
            ))
        })?;
        if header.base_offset > next_offset && !gaps {
            break;
        }
        next_offset = next_offset.max(header.end_offset());
    }
    Ok(next_offset)
}

/// What decoding one fetched range gave.
#[derive(Debug)]
pub(crate) struct DecodedRange {
    /// Records at or after the fetch offset, in offset order.
    pub records: Vec<ConsumerRecord>,
    /// Offset after the last batch decoded or skipped; under
    /// [`CorruptBatchPolicy::Fail`], where the corrupt batch starts.
    pub next_offset: u64,
    /// Corrupt batches skipped ([`CorruptBatchPolicy::Skip`]), each as
    /// [`ClientError::CorruptBatch`].
    pub skipped: Vec<ClientError>,
    /// The corrupt batch decoding stopped at ([`CorruptBatchPolicy::Fail`]).
    pub stopped_at: Option<ClientError>,
}

/// Decodes concatenated batches into records at or after `offset`. A batch
/// whose header or CRC is bad fails the whole range (it may be damage in
/// transit; the partition is paused); a sound batch whose records cannot
/// be decoded is a corrupt batch, handled as `policy` says.
#[cfg(test)]
pub(crate) fn decode_batches(
    partition: &TopicPartition,
    batches: &Bytes,
    offset: u64,
    max_batch_bytes: usize,
    policy: CorruptBatchPolicy,
) -> Result<DecodedRange, ClientError> {
    decode_batches_with_gaps(partition, batches, offset, max_batch_bytes, policy, false)
}

/// [`decode_batches`]; with `gaps` (a read-committed answer, whose batches
/// may leave out offsets: markers, aborted transactions) a hole is not
/// an error.
pub(crate) fn decode_batches_with_gaps(
    partition: &TopicPartition,
    batches: &Bytes,
    offset: u64,
    max_batch_bytes: usize,
    policy: CorruptBatchPolicy,
    gaps: bool,
) -> Result<DecodedRange, ClientError> {
    let mut decoded = DecodedRange {
        records: Vec::new(),
        next_offset: offset,
        skipped: Vec::new(),
        stopped_at: None,
    };
    for item in BatchIter::new(batches) {
        let (_, header, batch) = item.map_err(|error| {
            ClientError::Decode(format!(
                "{partition} at offset {offset}: malformed batch: {error}"
            ))
        })?;
        if header.base_offset > decoded.next_offset && !gaps {
            // Batches of a partition are contiguous; a hole means the
            // response is wrong. Keep what precedes it and fetch again from
            // the hole rather than skip offsets.
            tracing::warn!(
                %partition, expected = decoded.next_offset, found = header.base_offset,
                "fetched batches are not contiguous; refetching from the gap"
            );
            break;
        }
        let batch = batches.slice_ref(batch);
        let records = match decode(&batch, max_batch_bytes) {
            Ok((_, records)) => records,
            Err(error) if error.is_undecodable_records() => {
                let corrupt = ClientError::CorruptBatch {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    base_offset: header.base_offset,
                    end_offset: header.end_offset(),
                    reason: error.to_string(),
                };
                if policy == CorruptBatchPolicy::Fail {
                    decoded.stopped_at = Some(corrupt);
                    return Ok(decoded);
                }
                decoded.skipped.push(corrupt);
                Vec::new()
            }
            Err(error) => {
                return Err(ClientError::Decode(format!(
                    "{partition} at offset {offset}: {error}"
                )))
            }
        };
        decoded.next_offset = decoded.next_offset.max(header.end_offset());
        decoded.records.reserve(records.len());
        for record in records {
            if record.offset < offset {
                continue;
            }
            decoded.records.push(ConsumerRecord {
                topic: partition.topic.clone(),
                partition: partition.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record.headers,
                tags: record.tags,
            });
        }
    }
    Ok(decoded)
}

#[cfg(test)]
#[path = "fetcher_tests.rs"]
mod tests;
