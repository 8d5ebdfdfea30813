//! Produce streams: the per-stream ordering guard (a partition poisoned by a
//! retriable failure refuses later requests until one carries `resume`),
//! backlog holds and refusals, the transactional check, and the status a
//! stream ends with when its inbound side fails.

use crate::backlog;
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};
use sluice_acl::{Operation, Principal, ResourceType};
use sluice_proto::batch;
use sluice_proto::names::TopicName;
use sluice_proto::v1::{BacklogPolicy, ProduceRequest, ProduceResponse};
use sluice_proto::ErrorCode;
use sluice_service::RequestAuthorizer;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Status, Streaming};

pub(super) type ProduceResponseStream =
    Pin<Box<dyn Stream<Item = Result<ProduceResponse, Status>> + Send>>;

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
pub(super) struct StreamPartition {
    generation: u64,
    pub(super) outstanding: usize,
    /// Set when a request for this partition failed retriably on this
    /// stream: later requests are refused until one carries `resume`.
    pub(super) poisoned: Option<ErrorCode>,
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
    // A compacted topic's records need keys (ADR 0016 §8), checked in
    // the same walk.
    let keys_required = partition.keys_required();
    let checked = batch::validate_produced_keyed(&produce.batch, max_batch_bytes, keys_required)
        .and_then(|header| {
            batch::validate_compressed_keyed(
                &produce.batch,
                &header,
                max_decompressed_bytes,
                keys_required,
            )
            .map(|()| header)
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
pub(super) fn refuse_held(
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

pub(super) async fn produce_loop(
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
