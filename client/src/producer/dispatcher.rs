//! The producer's dispatcher task: takes closed batches in closing order,
//! runs each partition's [`Pipeline`], one `Broker.Produce` stream per
//! broker, retries, timeouts and route changes.

use super::accumulator::ClosedBatch;
use super::batching::{lock, BatchAttachment, Batching};
use super::completion::Completer;
use super::pipeline::{Answer, Effect, Moved, Owner, Pipeline};
use super::pressure::{Pressure, PressureTracker};
use super::ProducerConfig;
use crate::cluster::{normalize_address, Cluster, TopicPartition};
use crate::fast_hash::{FastHashMap, FastHashSet};
use crate::ClientError;
use bytes::Bytes;
use sluice_proto::v1::{ProduceRequest, ProduceResponse};
use sluice_proto::SluiceError;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// How often the dispatcher checks timeouts when nothing else wakes it, in
/// milliseconds.
const MAINTENANCE_INTERVAL_MS: u64 = 50;

/// Commands or stream events handled per dispatcher round before batches
/// are sent; bounds the latency a burst adds to other work.
const MAX_COMMANDS_PER_ROUND: usize = 1024;

pub(super) enum Command {
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

pub(super) struct Dispatcher {
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
    pub(super) pressure: Arc<PressureTracker>,
    /// Route changes seen by the cluster handle (route watch, refreshes).
    route_changes: tokio::sync::watch::Receiver<u64>,
    /// A route changed since the pipelines last looked.
    routes_changed: bool,
}

impl Dispatcher {
    pub(super) fn new(
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

    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
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
            let Batching {
                accumulator, ready, ..
            } = &mut *batching;
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
                fail_batch(&self.batching, batch, error);
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
        let error = ClientError::from_code_with_wait(
            response.error,
            format!("{partition} at {address}: {}", response.error_message),
            response.retry_after_ms,
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
            Some(error) => match error.retry_after_ms() {
                Some(wait_ms) => Answer::Throttled(Duration::from_millis(wait_ms)),
                None if error.is_retriable() => Answer::Retriable,
                None => Answer::Fatal,
            },
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
                fail_batch(&self.batching, batch, error);
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
                    transactional_id: self.config.transactional_id.clone().unwrap_or_default(),
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

/// Fails a batch's records; a transactional producer's open transaction
/// can then no longer commit (or is fenced).
fn fail_batch(batching: &Mutex<Batching>, batch: ReadyBatch, error: ClientError) {
    if let Some(transaction) = &mut lock(batching).transaction {
        transaction.on_failure(&error);
    }
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
