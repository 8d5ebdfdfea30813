//! The `Broker` gRPC service: ordered pipelined produce streams, fetch with
//! long-poll, list offsets, and the group RPCs (delegated to the
//! coordinator).

use crate::backlog;
use crate::decisions::{fetch_decision, whole_batches_within, FetchDecision};
use crate::error::BrokerError;
use crate::partition::{Partition, PartitionStatus, Phase};
use crate::subscription;
use crate::tail_cache::PartitionKey;
use crate::transaction::rpc;
use crate::Shared;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};
use sluice_acl::{Operation, Principal, ResourceType};
use sluice_proto::batch;
use sluice_proto::names::TopicName;
use sluice_proto::v1::broker_server::Broker;
use sluice_proto::v1::{
    AbortTransactionRequest, AbortTransactionResponse, AddTransactionParticipantsRequest,
    AddTransactionParticipantsResponse, DescribeTransactionRequest, DescribeTransactionResponse,
    EndTransactionRequest, EndTransactionResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListTransactionsRequest, ListTransactionsResponse,
};
use sluice_proto::v1::{
    BacklogPolicy, CommitOffsetsRequest, CommitOffsetsResponse, DescribeGroupRequest,
    DescribeGroupResponse, DescribeSubscriptionRequest, DescribeSubscriptionResponse,
    FetchOffsetsRequest, FetchOffsetsResponse, FetchRequest, FetchResponse, FetchedPartition,
    GroupHeartbeatRequest, GroupHeartbeatResponse, IsolationLevel, ListOffsetsRequest,
    ListOffsetsResponse, OffsetSpec, ProduceRequest, ProduceResponse, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use sluice_proto::ErrorCode;
use sluice_service::RequestAuthorizer;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Produce responses buffered towards a slow client before the stream
/// stops being read.
const PRODUCE_RESPONSE_QUEUE: usize = 1024;
/// Most partitions one fetch request may name.
const MAX_FETCH_PARTITIONS: usize = 10_000;

pub struct BrokerService {
    pub shared: Arc<Shared>,
}

type ProduceResponseStream = Pin<Box<dyn Stream<Item = Result<ProduceResponse, Status>> + Send>>;

/// A produce answer in stream order, with the bytes it held and the
/// partition it counted against.
type PendingProduce = BoxFuture<'static, (ProduceResponse, u64, PartitionKey)>;

fn error_response(request_id: u64, error: &BrokerError) -> ProduceResponse {
    ProduceResponse {
        request_id,
        error: error.code() as i32,
        error_message: error.to_string(),
        retry_after_ms: error.retry_after_ms().unwrap_or(0),
        ..Default::default()
    }
}

/// Per stream and partition: the pipeline generation this stream's
/// outstanding requests were submitted under, and how many are outstanding.
#[derive(Default)]
struct StreamPartition {
    generation: u64,
    outstanding: usize,
    /// Set when a request for this partition failed retriably on this
    /// stream: later requests are refused until one carries `resume`.
    poisoned: Option<ErrorCode>,
}

/// Most partitions one produce stream may track at once (each poisoned
/// partition is remembered until the client resumes it).
const MAX_PARTITIONS_PER_PRODUCE_STREAM: usize = 65_536;

fn submit_produce(
    shared: &Arc<Shared>,
    produce: ProduceRequest,
    streams: &mut HashMap<PartitionKey, StreamPartition>,
    principal: &Principal,
) -> PendingProduce {
    let request_id = produce.request_id;
    let size = produce.batch.len() as u64;
    let key = PartitionKey::new(&produce.topic, produce.partition);
    if streams.len() >= MAX_PARTITIONS_PER_PRODUCE_STREAM && !streams.contains_key(&key) {
        let error = BrokerError::Throttled(format!(
            "this produce stream already tracks {MAX_PARTITIONS_PER_PRODUCE_STREAM} partitions; open another stream"
        ));
        return async move { (error_response(request_id, &error), size, key) }.boxed();
    }
    let entry = streams.entry(key.clone()).or_default();
    entry.outstanding += 1;
    if produce.resume {
        entry.poisoned = None;
    }
    if let Some(code) = entry.poisoned {
        let response = ProduceResponse {
            request_id,
            error: code as i32,
            error_message: format!(
                "an earlier request for {}/{} failed on this stream; resend from the first failed request with `resume` set",
                key.topic, key.partition
            ),
            ..Default::default()
        };
        return async move { (response, size, key) }.boxed();
    }
    let first_outstanding = entry.outstanding == 1;
    // Internal topics (consumer offsets) are written only by the
    // coordinator; a client record there could corrupt group state.
    if let Err(error) = TopicName::new(&produce.topic) {
        let error = BrokerError::InvalidArgument(error.to_string());
        return async move { (error_response(request_id, &error), size, key) }.boxed();
    }
    let Some(partition) = shared.partition(&key) else {
        let shared = shared.clone();
        return async move {
            let error = shared.not_served_error(&key.topic, key.partition).await;
            (error_response(request_id, &error), size, key)
        }
        .boxed();
    };
    if let Some(error) = backlog_rejection(shared, &partition) {
        return async move { (error_response(request_id, &error), size, key) }.boxed();
    }
    let max_batch_bytes = partition.max_batch_bytes(shared.config.produce.max_batch_bytes);
    let max_decompressed_bytes =
        usize::try_from(shared.config.produce.max_decompressed_batch_bytes).unwrap_or(usize::MAX);
    // Uncompressed records are walked by `validate_produced`; compressed
    // ones are decompressed and walked here, once, so no batch whose
    // records cannot be decoded takes offsets (issue 11).
    let checked = batch::validate_produced(&produce.batch, max_batch_bytes).and_then(|header| {
        batch::validate_compressed(&produce.batch, &header, max_decompressed_bytes).map(|()| header)
    });
    let header = match checked {
        Ok(header) => header,
        Err(error) => {
            let error = BrokerError::Batch(error);
            return async move { (error_response(request_id, &error), size, key) }.boxed();
        }
    };
    // Before the partition sees the batch: a forged producer id changes
    // no idempotence state (ADR 0015).
    if let Err(error) = shared.producer_ids.check(header.producer_id, principal) {
        return async move { (error_response(request_id, &error), size, key) }.boxed();
    }
    if let Err(error) = check_transactional(shared, &header, &produce.transactional_id) {
        return async move { (error_response(request_id, &error), size, key) }.boxed();
    }
    let current = partition.status().generation;
    if first_outstanding {
        entry.generation = current;
    }
    // An earlier request of this stream is still pending under an older
    // generation: it failed (or will), so this one must not overtake it.
    let records = u64::from(header.record_count);
    let started = std::time::Instant::now();
    let submitted = partition.submit_produced(
        produce.batch,
        header,
        entry.generation,
        produce.transactional_id,
    );
    async move {
        let outcome = match submitted {
            Ok(receiver) => receiver.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable("append pipeline stopped".into()))
            }),
            Err(error) => Err(error),
        };
        if outcome.is_ok() {
            partition.series.count_produced(size, records, started);
        }
        let response = match outcome {
            Ok(outcome) => ProduceResponse {
                request_id,
                error: ErrorCode::None as i32,
                error_message: String::new(),
                base_offset: outcome.base_offset,
                append_time_ms: outcome.append_time_ms,
                epoch: outcome.epoch,
                ..Default::default()
            },
            Err(error) => error_response(request_id, &error),
        };
        (response, size, key)
    }
    .boxed()
}

/// A transactional batch (ADR 0016) needs transactions on and a valid
/// transactional id; a plain batch may not carry an id.
fn check_transactional(
    shared: &Shared,
    header: &batch::BatchHeader,
    transactional_id: &str,
) -> Result<(), BrokerError> {
    if !header.transactional {
        if !transactional_id.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "a transactional_id came with a batch without the transactional attribute".into(),
            ));
        }
        return Ok(());
    }
    if !shared.config.transactions.enabled {
        return Err(BrokerError::InvalidArgument(
            "transactional produce is not enabled on this broker ([transactions] enabled = false)"
                .into(),
        ));
    }
    let length = transactional_id.len();
    if length == 0 || length > sluice_proto::limits::MAX_NAME_BYTES {
        return Err(BrokerError::InvalidArgument(format!(
            "a transactional batch needs a transactional_id of 1..={} bytes; got {length}",
            sluice_proto::limits::MAX_NAME_BYTES
        )));
    }
    Ok(())
}

fn backlog_quota_error(message: String) -> BrokerError {
    BrokerError::Relayed(sluice_proto::SluiceError::new(
        ErrorCode::BacklogQuotaExceeded,
        message,
    ))
}

/// REJECT (ADR 0012): the partition's backlog is at its quota.
fn backlog_rejection(shared: &Shared, partition: &Partition) -> Option<BrokerError> {
    let pressure = shared.backlog.pressure(&partition.key);
    pressure.limits_with(BacklogPolicy::Reject).then(|| {
        backlog_quota_error(format!(
            "{} is at its backlog quota ({} messages, about {} bytes not acknowledged by its slowest subscription); policy REJECT",
            partition.key, pressure.reported.backlog_messages, pressure.reported.backlog_bytes
        ))
    })
}

/// Most produce requests one stream may have held by the HOLD policy; beyond
/// it the stream is not read until some are released or time out.
const MAX_HELD_REQUESTS_PER_STREAM: usize = 10_000;

/// A partition's requests held by the HOLD policy (ADR 0012), in arrival
/// order, each until the partition's backlog drops below its limit or its
/// own hold timeout passes. Later requests for the partition queue behind
/// (so none overtakes another); other partitions of the stream go on.
struct HeldPartition {
    /// Each request with when it started waiting.
    queue: VecDeque<(ProduceRequest, Instant)>,
    timeout: Duration,
    pressure: watch::Receiver<backlog::PartitionPressure>,
}

/// HOLD: whether `produce` must wait for its partition's backlog; the hold
/// timeout and the partition's pressure to wait on.
fn hold_for(
    shared: &Shared,
    key: &PartitionKey,
) -> Option<(Duration, watch::Receiver<backlog::PartitionPressure>)> {
    let partition = shared.partition(key)?;
    if !holds(&shared.backlog.pressure(key)) {
        return None;
    }
    let quota = backlog::Quota::of(&partition.config());
    Some((
        Duration::from_millis(quota.hold_timeout_ms),
        shared.backlog.watch(&partition),
    ))
}

/// HOLD applies: the partition is at a limit whose policy holds producers.
fn holds(pressure: &backlog::PartitionPressure) -> bool {
    pressure.limits_with(BacklogPolicy::Hold)
}

/// The next held partition whose hold ends: `true` when its backlog
/// dropped below the limit (or its pressure channel closed: the partition
/// left, and submitting finds out), `false` when its first request's time
/// is up.
async fn next_hold_event(held: &mut HashMap<PartitionKey, HeldPartition>) -> (PartitionKey, bool) {
    if held.is_empty() {
        return std::future::pending().await;
    }
    let waits = held.iter_mut().map(|(key, partition)| {
        let deadline = partition
            .queue
            .front()
            .map_or_else(Instant::now, |(_, started)| *started + partition.timeout);
        let pressure = &mut partition.pressure;
        Box::pin(async move {
            tokio::select! {
                result = pressure.wait_for(|pressure| !holds(pressure)) => {
                    let _ = result;
                    (key.clone(), true)
                }
                _ = tokio::time::sleep_until(deadline) => (key.clone(), false),
            }
        })
    });
    futures::future::select_all(waits).await.0
}

/// Answers a held request with `error` in stream order.
fn refuse_held(
    pending: &mut FuturesOrdered<PendingProduce>,
    streams: &mut HashMap<PartitionKey, StreamPartition>,
    produce: ProduceRequest,
    error: &BrokerError,
) {
    let response = error_response(produce.request_id, error);
    let size = produce.batch.len() as u64;
    let key = PartitionKey::new(&produce.topic, produce.partition);
    let entry = streams.entry(key.clone()).or_default();
    entry.outstanding += 1;
    // Poisoned now, not when this answer leaves the ordered queue (behind
    // the answers of earlier requests still being appended): a later
    // request of the partition arriving meanwhile, admitted by a quota
    // that refilled, must not be appended before this one is resent.
    if error.code().is_retriable() {
        entry.poisoned = Some(error.code());
    }
    pending.push_back(async move { (response, size, key) }.boxed());
}

/// Adds the partition's latest backlog pressure to a produce answer.
fn with_pressure(
    shared: &Shared,
    key: &PartitionKey,
    mut response: ProduceResponse,
) -> ProduceResponse {
    shared
        .backlog
        .pressure(key)
        .reported
        .write_to(&mut response);
    response
}

async fn produce_loop(
    shared: Arc<Shared>,
    mut inbound: Streaming<ProduceRequest>,
    responses: mpsc::Sender<Result<ProduceResponse, Status>>,
    authorizer: RequestAuthorizer,
) {
    let max_in_flight_bytes = shared
        .config
        .produce
        .max_in_flight_bytes_per_connection
        .max(1);
    let mut pending: FuturesOrdered<PendingProduce> = FuturesOrdered::new();
    let mut in_flight_bytes: u64 = 0;
    let mut streams: HashMap<PartitionKey, StreamPartition> = HashMap::new();
    let mut inbound_open = true;
    let mut shutdown = shared.shutdown.clone();
    let mut held: HashMap<PartitionKey, HeldPartition> = HashMap::new();
    let mut held_requests = 0usize;
    // Why the client's side of the stream failed, answered once every
    // accepted request got its answer.
    let mut ended_with: Option<Status> = None;
    loop {
        if !inbound_open && pending.is_empty() && held.is_empty() {
            if let Some(status) = ended_with.take() {
                let _ = responses.send(Err(status)).await;
            }
            break;
        }
        tokio::select! {
            (key, released) = next_hold_event(&mut held), if !held.is_empty() => {
                if released {
                    if let Some(partition) = held.remove(&key) {
                        held_requests -= partition.queue.len();
                        for (produce, _) in partition.queue {
                            pending.push_back(submit_produce(&shared, produce, &mut streams, &authorizer.principal));
                        }
                    }
                } else if let Some(partition) = held.get_mut(&key) {
                    let now = Instant::now();
                    while partition
                        .queue
                        .front()
                        .is_some_and(|(_, started)| *started + partition.timeout <= now)
                    {
                        let Some((produce, started)) = partition.queue.pop_front() else {
                            break;
                        };
                        held_requests -= 1;
                        let error = backlog_quota_error(format!(
                            "{}/{} stayed at its backlog quota for {} ms (policy HOLD)",
                            produce.topic,
                            produce.partition,
                            started.elapsed().as_millis()
                        ));
                        refuse_held(&mut pending, &mut streams, produce, &error);
                    }
                    if partition.queue.is_empty() {
                        held.remove(&key);
                    }
                }
            }
            Some((response, size, key)) = pending.next(), if !pending.is_empty() => {
                let response = with_pressure(&shared, &key, response);
                in_flight_bytes = in_flight_bytes.saturating_sub(size);
                if let Some(entry) = streams.get_mut(&key) {
                    entry.outstanding = entry.outstanding.saturating_sub(1);
                    let code = ErrorCode::try_from(response.error).unwrap_or(ErrorCode::Internal);
                    if code != ErrorCode::None && code.is_retriable() {
                        entry.poisoned = Some(code);
                    }
                    if entry.outstanding == 0 && entry.poisoned.is_none() {
                        streams.remove(&key);
                    }
                }
                if responses.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            message = inbound.message(), if inbound_open
                && held_requests < MAX_HELD_REQUESTS_PER_STREAM
                && in_flight_bytes < max_in_flight_bytes => {
                match message {
                    Ok(Some(produce)) => {
                        in_flight_bytes += produce.batch.len() as u64;
                        if let Err(refused) = authorizer.check(Operation::Write, ResourceType::Topic, &produce.topic) {
                            refuse_held(&mut pending, &mut streams, produce, &BrokerError::Relayed(refused));
                            continue;
                        }
                        let bytes = produce.batch.len() as u64;
                        if let Some(throttled) = crate::quota_charge::produce_refusal(&shared.quotas, authorizer.principal.as_str(), bytes) {
                            refuse_held(&mut pending, &mut streams, produce, &throttled);
                            continue;
                        }
                        shared
                            .produced_bytes
                            .fetch_add(produce.batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        // HOLD: behind a held request of its partition, or
                        // held itself while the partition is at its limit.
                        let key = PartitionKey::new(&produce.topic, produce.partition);
                        if let Some(partition) = held.get_mut(&key) {
                            partition.queue.push_back((produce, Instant::now()));
                            held_requests += 1;
                            continue;
                        }
                        if let Some((timeout, pressure)) = hold_for(&shared, &key) {
                            let queue = VecDeque::from([(produce, Instant::now())]);
                            held.insert(key, HeldPartition { queue, timeout, pressure });
                            held_requests += 1;
                            continue;
                        }
                        pending.push_back(submit_produce(&shared, produce, &mut streams, &authorizer.principal));
                    }
                    Ok(None) => inbound_open = false,
                    Err(status) => {
                        tracing::debug!(%status, "produce stream ended with an error");
                        inbound_open = false;
                        ended_with = inbound_failure(&shared, &status);
                    }
                }
            }
            _ = crate::wait_until_set(&mut shutdown), if inbound_open || !held.is_empty() => {
                // Stop taking requests but deliver the answers of those
                // already accepted: the pipelines run until the server is done.
                inbound_open = false;
                for (_, partition) in held.drain() {
                    for (produce, _) in partition.queue {
                        refuse_held(&mut pending, &mut streams, produce, &BrokerError::ShuttingDown);
                    }
                }
                held_requests = 0;
            }
        }
    }
}

/// The status a produce stream ends with after its inbound side failed:
/// a refusal carrying a Sluice code (the server's `[connections]` limits
/// answer THROTTLED, which the client retries) is relayed as it is; a
/// request over the gRPC message limit (tonic refuses to decode it and the
/// stream cannot go on) is TOO_LARGE naming the limit; anything else (the
/// client went away) needs no answer.
fn inbound_failure(shared: &Shared, status: &Status) -> Option<Status> {
    if status
        .metadata()
        .get(sluice_proto::error::ERROR_CODE_METADATA_KEY)
        .is_some()
    {
        return Some(status.clone());
    }
    if !matches!(
        status.code(),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    ) {
        return None;
    }
    let limit = shared.config.server.max_grpc_message_bytes;
    let error = BrokerError::Relayed(sluice_proto::SluiceError::new(
        ErrorCode::TooLarge,
        format!(
            "a produce request exceeds the broker's gRPC message limit of {limit} bytes \
             ([server] max_grpc_message_bytes); keep batches within the topic's max_batch_bytes \
             ({}); the stream ends here and its later requests were not read",
            status.message()
        ),
    ));
    Some(error.into())
}

impl BrokerService {
    async fn fetch_once(
        &self,
        request: &FetchRequest,
        total_max_bytes: usize,
    ) -> (FetchResponse, usize, bool) {
        let mut response = FetchResponse::default();
        let mut used_bytes = 0usize;
        let mut any_error = false;
        let read_committed = request.isolation == IsolationLevel::ReadCommitted as i32;
        for wanted in &request.partitions {
            let mut fetched = FetchedPartition {
                topic: wanted.topic.clone(),
                partition: wanted.partition,
                ..Default::default()
            };
            let result = self
                .fetch_partition(
                    FetchAt {
                        offset: wanted.offset,
                        topic: &wanted.topic,
                        partition: wanted.partition,
                        max_bytes: wanted.max_bytes,
                        read_committed,
                    },
                    total_max_bytes,
                    used_bytes,
                    &mut fetched,
                )
                .await;
            if let Err(error) = result {
                any_error = true;
                fetched.error = error.code() as i32;
                fetched.error_message = error.to_string();
                fetched.lost_end_offset = error.lost_end_offset().unwrap_or(0);
            }
            used_bytes += fetched.batches.len();
            response.partitions.push(fetched);
        }
        (response, used_bytes, any_error)
    }

    async fn fetch_partition(
        &self,
        at: FetchAt<'_>,
        total_max_bytes: usize,
        used_bytes: usize,
        fetched: &mut FetchedPartition,
    ) -> Result<(), BrokerError> {
        let FetchAt {
            offset,
            topic,
            partition: partition_index,
            max_bytes: partition_max_bytes,
            read_committed,
        } = at;
        let partition = self.served(topic, partition_index).await?;
        let status = loaded_status(&partition)?;
        fetched.high_watermark = status.high_watermark;
        fetched.log_start_offset = status.log_start_offset;
        fetched.last_stable_offset = status.last_stable_offset;
        // Read-committed reads stop at the last stable offset, which is
        // unknown (nothing served) until the transaction state is rebuilt.
        let stable_end = match (read_committed, status.last_stable_offset) {
            (false, _) => None,
            (true, Some(lso)) => Some(lso.max(status.log_start_offset)),
            (true, None) => {
                return Err(BrokerError::Recovering {
                    topic: topic.to_string(),
                    partition: partition_index,
                })
            }
        };
        match fetch_decision(offset, status.log_start_offset, status.high_watermark) {
            FetchDecision::OutOfRange => Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start_offset: status.log_start_offset,
                high_watermark: status.high_watermark,
            }),
            FetchDecision::NothingYet => Ok(()),
            FetchDecision::Read => {
                let remaining = total_max_bytes.saturating_sub(used_bytes);
                let partition_limit = if partition_max_bytes == 0 {
                    remaining
                } else {
                    (partition_max_bytes as usize).min(remaining)
                };
                if partition_limit == 0 && used_bytes > 0 {
                    return Ok(());
                }
                if stable_end.is_some_and(|end| offset >= end) {
                    return Ok(());
                }
                let started = Instant::now();
                let batches = partition
                    .read_for_fetch(offset, partition_limit.max(1))
                    .await?;
                // Only the first data of the response may exceed the limits
                // (one whole batch always goes out).
                let batches = if used_bytes == 0 {
                    batches
                } else {
                    whole_batches_within(batches, partition_limit, false)
                };
                match stable_end {
                    None => fetched.batches = batches,
                    Some(end) => {
                        let filtered = crate::read_committed::filter(&batches, end, |from, to| {
                            partition.aborted_in(from, to)
                        });
                        fetched.batches = filtered.bytes;
                        fetched.next_offset = filtered.next_offset;
                    }
                }
                self.shared
                    .metrics
                    .fetch_latency
                    .observe_duration(started.elapsed());
                partition.series.count_fetched(&fetched.batches);
                Ok(())
            }
        }
    }

    /// The partition if served here, else the right error.
    async fn served(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        TopicName::any(topic).map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
        match self.shared.partition(&PartitionKey::new(topic, partition)) {
            Some(partition) => Ok(partition),
            None => Err(self.shared.not_served_error(topic, partition).await),
        }
    }
}

/// A read-committed answer dropped everything it read of a partition
/// (markers, aborted batches) but moved its `next_offset`: answered at
/// once, so the reader moves on instead of waiting out the long poll.
fn skipped_ahead(request: &FetchRequest, response: &FetchResponse) -> bool {
    request
        .partitions
        .iter()
        .zip(&response.partitions)
        .any(|(wanted, fetched)| {
            fetched.batches.is_empty()
                && fetched
                    .next_offset
                    .is_some_and(|next_offset| next_offset > wanted.offset)
        })
}

/// One partition of a fetch.
struct FetchAt<'a> {
    offset: u64,
    topic: &'a str,
    partition: u32,
    max_bytes: u32,
    read_committed: bool,
}

fn loaded_status(partition: &Partition) -> Result<PartitionStatus, BrokerError> {
    let status = partition.status();
    if status.phase == Phase::Stopped {
        return Err(BrokerError::NotOwner {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        });
    }
    if let (false, Some(reason)) = (status.loaded, &status.offline) {
        return Err(BrokerError::PartitionOffline(reason.clone()));
    }
    if !status.loaded {
        return Err(BrokerError::Recovering {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        });
    }
    Ok(status)
}

/// Internal groups (subscription cursors, `__…`) are joined and written
/// by the partitions' owners only: an ACL on every group does not open
/// them.
fn check_internal_group(authorizer: &RequestAuthorizer, group: &str) -> Result<(), BrokerError> {
    if !group.starts_with("__") {
        return Ok(());
    }
    authorizer
        .check(
            Operation::ClusterAction,
            ResourceType::Cluster,
            sluice_acl::CLUSTER_RESOURCE_NAME,
        )
        .map_err(BrokerError::Relayed)
}

/// [`RequestAuthorizer::checked`] with the broker's error.
fn checked<T>(
    request: Request<T>,
    operation: Operation,
    resource_type: ResourceType,
    names: impl FnOnce(&T) -> Vec<String>,
) -> Result<T, BrokerError> {
    RequestAuthorizer::checked(request, operation, resource_type, names)
        .map_err(BrokerError::Relayed)
}

#[tonic::async_trait]
impl Broker for BrokerService {
    type ProduceStream = ProduceResponseStream;

    async fn produce(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(PRODUCE_RESPONSE_QUEUE);
        tokio::spawn(produce_loop(
            self.shared.clone(),
            inbound,
            sender,
            authorizer,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        for wanted in &request.partitions {
            authorizer
                .check(Operation::Read, ResourceType::Topic, &wanted.topic)
                .map_err(BrokerError::Relayed)?;
        }
        if request.partitions.len() > MAX_FETCH_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "a fetch may name at most {MAX_FETCH_PARTITIONS} partitions"
            ))
            .into());
        }
        let config = &self.shared.config;
        let wait =
            Duration::from_millis(u64::from(request.max_wait_ms).min(config.fetch.max_wait_ms));
        let deadline = Instant::now() + wait;
        let configured_max = usize::try_from(config.fetch.max_bytes).unwrap_or(usize::MAX);
        let total_max_bytes = if request.max_bytes == 0 {
            configured_max
        } else {
            (request.max_bytes as usize).min(configured_max)
        };
        let min_bytes = (request.min_bytes as usize).max(1);
        let mut shutdown = self.shared.shutdown.clone();
        let principal = authorizer.principal.as_str();
        let quotas = &self.shared.quotas;
        let throttle_ms = crate::quota_charge::fetch_wait_ms(quotas, principal);
        if throttle_ms > 0 {
            let (hold, throttle_time_ms) =
                crate::quota_charge::fetch_hold(throttle_ms, wait.as_millis() as u64);
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = crate::wait_until_set(&mut shutdown) => {}
            }
            return Ok(Response::new(FetchResponse {
                throttle_time_ms,
                ..Default::default()
            }));
        }
        loop {
            // Subscribe before reading so a wake-up between read and wait
            // is not lost.
            let mut watchers: Vec<watch::Receiver<PartitionStatus>> = request
                .partitions
                .iter()
                .filter_map(|wanted| {
                    self.shared
                        .partition(&PartitionKey::new(&wanted.topic, wanted.partition))
                })
                .map(|partition| partition.subscribe())
                .collect();
            for watcher in &mut watchers {
                watcher.borrow_and_update();
            }
            let (response, used_bytes, any_error) =
                self.fetch_once(&request, total_max_bytes).await;
            if used_bytes >= min_bytes
                || any_error
                || skipped_ahead(&request, &response)
                || watchers.is_empty()
                || Instant::now() >= deadline
            {
                crate::quota_charge::charge_fetch(quotas, principal, used_bytes);
                return Ok(Response::new(response));
            }
            let changed = futures::future::select_all(
                watchers
                    .iter_mut()
                    .map(|watcher| Box::pin(watcher.changed())),
            );
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = crate::wait_until_set(&mut shutdown) => {
                    crate::quota_charge::charge_fetch(quotas, principal, used_bytes);
                    return Ok(Response::new(response));
                }
            }
        }
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        authorizer
            .check(Operation::Describe, ResourceType::Topic, &request.topic)
            .map_err(BrokerError::Relayed)?;
        let spec = OffsetSpec::try_from(request.spec)
            .ok()
            .filter(|spec| *spec != OffsetSpec::Unspecified)
            .ok_or_else(|| {
                BrokerError::InvalidArgument(format!(
                    "unknown offset spec {}; give OFFSET_SPEC_EARLIEST (1), OFFSET_SPEC_LATEST (2) \
                     or OFFSET_SPEC_TIMESTAMP (3)",
                    request.spec
                ))
            })?;
        let partition = self.served(&request.topic, request.partition).await?;
        let status = loaded_status(&partition)?;
        let read_committed = request.isolation == IsolationLevel::ReadCommitted as i32;
        let latest = match (read_committed, status.last_stable_offset) {
            (false, _) => status.high_watermark,
            (true, Some(lso)) => lso.max(status.log_start_offset),
            (true, None) => {
                return Err(BrokerError::Recovering {
                    topic: request.topic.clone(),
                    partition: request.partition,
                }
                .into())
            }
        };
        let offset = match spec {
            OffsetSpec::Earliest => status.log_start_offset,
            OffsetSpec::Latest | OffsetSpec::Unspecified => latest,
            OffsetSpec::Timestamp => {
                partition
                    .offset_for_timestamp(&status, request.timestamp_ms)
                    .await?
            }
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            log_start_offset: status.log_start_offset,
            high_watermark: status.high_watermark,
            last_stable_offset: status.last_stable_offset,
        }))
    }

    async fn group_heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        let shared = &self.shared;
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = checked(request, Operation::Read, ResourceType::Group, |r| {
            vec![r.group.clone()]
        })?;
        check_internal_group(&authorizer, &request.group)?;
        Ok(Response::new(
            shared
                .coordinator
                .heartbeat(shared, request, &authorizer.principal)
                .await?,
        ))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let shared = &self.shared;
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        authorizer
            .check(Operation::Read, ResourceType::Group, &request.group)
            .map_err(BrokerError::Relayed)?;
        check_internal_group(&authorizer, &request.group)?;
        for offset in &request.offsets {
            authorizer
                .check(Operation::Read, ResourceType::Topic, &offset.topic)
                .map_err(BrokerError::Relayed)?;
        }
        Ok(Response::new(
            shared
                .coordinator
                .commit(shared, request, &authorizer.principal)
                .await?,
        ))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let shared = &self.shared;
        let request = checked(request, Operation::Describe, ResourceType::Group, |r| {
            vec![r.group.clone()]
        })?;
        Ok(Response::new(
            shared.coordinator.fetch_offsets(shared, request)?,
        ))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let shared = &self.shared;
        let request = checked(request, Operation::Describe, ResourceType::Group, |r| {
            vec![r.group.clone()]
        })?;
        Ok(Response::new(
            shared.coordinator.describe(shared, request).await?,
        ))
    }

    async fn delete_group(
        &self,
        request: Request<sluice_proto::v1::DeleteGroupRequest>,
    ) -> Result<Response<sluice_proto::v1::DeleteGroupResponse>, Status> {
        let shared = &self.shared;
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        authorizer
            .check(Operation::Delete, ResourceType::Group, &request.group)
            .map_err(BrokerError::Relayed)?;
        check_internal_group(&authorizer, &request.group)?;
        shared
            .coordinator
            .delete_group(shared, &request.group)
            .await?;
        Ok(Response::new(sluice_proto::v1::DeleteGroupResponse {}))
    }

    async fn get_message(
        &self,
        request: Request<sluice_proto::v1::GetMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::GetMessageResponse>, Status> {
        Ok(Response::new(
            crate::lookup::get_message(
                &self.shared,
                checked(request, Operation::Read, ResourceType::Topic, |r| {
                    vec![r.topic.clone()]
                })?,
            )
            .await?,
        ))
    }

    async fn find_messages(
        &self,
        request: Request<sluice_proto::v1::FindMessagesRequest>,
    ) -> Result<Response<sluice_proto::v1::FindMessagesResponse>, Status> {
        Ok(Response::new(
            crate::lookup::find_messages(
                &self.shared,
                checked(request, Operation::Read, ResourceType::Topic, |r| {
                    vec![r.topic.clone()]
                })?,
            )
            .await?,
        ))
    }

    async fn explain_message(
        &self,
        request: Request<sluice_proto::v1::ExplainMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::ExplainMessageResponse>, Status> {
        Ok(Response::new(
            crate::lookup::explain_message(
                &self.shared,
                checked(request, Operation::Describe, ResourceType::Topic, |r| {
                    vec![r.topic.clone()]
                })?,
            )
            .await?,
        ))
    }

    async fn describe_subscription(
        &self,
        request: Request<DescribeSubscriptionRequest>,
    ) -> Result<Response<DescribeSubscriptionResponse>, Status> {
        Ok(Response::new(
            backlog::describe(
                &self.shared,
                checked(
                    request,
                    Operation::Describe,
                    ResourceType::Subscription,
                    |r| vec![format!("{}/{}", r.topic, r.name)],
                )?,
            )
            .await?,
        ))
    }

    async fn reset_subscription_cursor(
        &self,
        request: Request<sluice_proto::v1::ResetSubscriptionCursorRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        let request = checked(request, Operation::Alter, ResourceType::Subscription, |r| {
            vec![format!("{}/{}", r.topic, r.name)]
        })?;
        Ok(Response::new(
            crate::subscription_skip::reset_cursor(&self.shared, request).await?,
        ))
    }

    async fn skip_subscription(
        &self,
        request: Request<sluice_proto::v1::SkipSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        let request = checked(request, Operation::Alter, ResourceType::Subscription, |r| {
            vec![format!("{}/{}", r.topic, r.name)]
        })?;
        Ok(Response::new(
            crate::subscription_skip::skip(&self.shared, request).await?,
        ))
    }

    type SubscribeStream = subscription::SubscribeResponseStream;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<sluice_proto::v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        Ok(Response::new(subscription::serve(
            self.shared.clone(),
            request.into_inner(),
            authorizer,
        )))
    }

    async fn write_txn_markers(
        &self,
        request: Request<WriteTxnMarkersRequest>,
    ) -> Result<Response<WriteTxnMarkersResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        authorizer
            .check(
                Operation::ClusterAction,
                ResourceType::Cluster,
                sluice_acl::CLUSTER_RESOURCE_NAME,
            )
            .map_err(BrokerError::Relayed)?;
        let request = request.into_inner();
        Ok(Response::new(
            crate::txn_markers::write(&self.shared, request).await?,
        ))
    }

    async fn init_producer_id(
        &self,
        request: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::init_producer_id(&self.shared, request, &authorizer).await?,
        ))
    }

    async fn add_transaction_participants(
        &self,
        request: Request<AddTransactionParticipantsRequest>,
    ) -> Result<Response<AddTransactionParticipantsResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::add_participants(&self.shared, request, &authorizer).await?,
        ))
    }

    async fn end_transaction(
        &self,
        request: Request<EndTransactionRequest>,
    ) -> Result<Response<EndTransactionResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::end_transaction(&self.shared, request, &authorizer).await?,
        ))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(rpc::list(
            &self.shared,
            request,
            &authorizer,
        )?))
    }

    async fn describe_transaction(
        &self,
        request: Request<DescribeTransactionRequest>,
    ) -> Result<Response<DescribeTransactionResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(rpc::describe(
            &self.shared,
            request,
            &authorizer,
        )?))
    }

    async fn abort_transaction(
        &self,
        request: Request<AbortTransactionRequest>,
    ) -> Result<Response<AbortTransactionResponse>, Status> {
        let authorizer = RequestAuthorizer::of(request.extensions());
        let request = request.into_inner();
        Ok(Response::new(
            rpc::abort(&self.shared, request, &authorizer).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::FetchPartition;

    /// A request refused at intake (a produce quota) poisons its partition
    /// on the stream at once: a later request arriving before the refusal's
    /// answer leaves the ordered queue (behind an append still in progress)
    /// is refused too, never appended ahead of the resend. Found by
    /// `quotas.rs` failing with OUT_OF_ORDER_SEQUENCE on a loaded machine.
    #[test]
    fn a_refusal_at_intake_poisons_the_partition_at_once() {
        let mut pending = FuturesOrdered::new();
        let mut streams = HashMap::new();
        let request = |request_id| ProduceRequest {
            request_id,
            topic: "orders".to_string(),
            partition: 0,
            ..Default::default()
        };
        let throttled = BrokerError::Throttled("over the produce quota".to_string());
        refuse_held(&mut pending, &mut streams, request(1), &throttled);
        let entry = &streams[&PartitionKey::new("orders", 0)];
        assert_eq!(entry.poisoned, Some(ErrorCode::Throttled));
        assert_eq!(entry.outstanding, 1);
        // Not retriable: the request fails for good and poisons nothing.
        let refused = BrokerError::InvalidArgument("not allowed".to_string());
        refuse_held(&mut pending, &mut streams, request(2), &refused);
        let mut other = HashMap::new();
        refuse_held(&mut pending, &mut other, request(3), &refused);
        assert_eq!(other[&PartitionKey::new("orders", 0)].poisoned, None);
    }

    #[test]
    fn an_answer_that_dropped_everything_but_moved_on_is_not_held() {
        let request = FetchRequest {
            partitions: vec![
                FetchPartition {
                    offset: 5,
                    ..Default::default()
                },
                FetchPartition {
                    offset: 7,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let answer = |next: [Option<u64>; 2], data: bool| FetchResponse {
            partitions: next
                .iter()
                .map(|&next_offset| FetchedPartition {
                    next_offset,
                    batches: if data {
                        bytes::Bytes::from_static(b"x")
                    } else {
                        bytes::Bytes::new()
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert!(!skipped_ahead(&request, &answer([None, None], false)));
        assert!(!skipped_ahead(&request, &answer([Some(5), Some(7)], false)));
        assert!(skipped_ahead(&request, &answer([None, Some(9)], false)));
        // Data goes out through min_bytes anyway.
        assert!(!skipped_ahead(&request, &answer([Some(6), Some(8)], true)));
    }
}
