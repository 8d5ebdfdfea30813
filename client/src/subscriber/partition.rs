//! One partition's `Subscribe` stream: opens it at the partition's owner,
//! grants credit as the application takes messages, batches
//! acknowledgements and negative acknowledgements, answers callers from
//! receipts, follows failover status, and reopens the stream after
//! failures (the messages it buffered are dropped: the broker delivers
//! them again).

use super::acks::{delivery_expired, AckTracker, MAX_ACK_OFFSETS_PER_REQUEST};
use super::credit::CreditWindow;
use super::reconnect::ReconnectState;
use super::{Message, Shared};
use crate::cluster::{instant_after, normalize_address};
use crate::ClientError;
use sluice_proto::batch::{decode_selected, BatchIter};
use sluice_proto::v1::subscribe_request::Request as Outgoing;
use sluice_proto::v1::subscribe_response::Response as Incoming;
use sluice_proto::v1::{
    Delivery, SubscribeFlow, SubscribeNack, SubscribeOpen, SubscribeRequest, SubscribeResponse,
    Subscription, TransactionContext,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};

/// Requests queued towards the broker on one stream (credit, acks,
/// nacks); the task waits when the broker does not read them.
const OUTGOING_REQUESTS_CAPACITY: usize = 64;
/// Distinct negative acknowledgements collected for one flush; more are
/// flushed at once.
const MAX_NACK_OFFSETS_PER_FLUSH: usize = MAX_ACK_OFFSETS_PER_REQUEST;

/// What callers ask a partition's task.
pub(crate) enum Command {
    Ack {
        offset: u64,
        session: u64,
        cumulative: bool,
        reply: oneshot::Sender<Result<(), ClientError>>,
        /// Held until the caller is answered (`max_pending_acks`).
        slot: OwnedSemaphorePermit,
    },
    Nack {
        offset: u64,
        session: u64,
        delay_ms: u64,
    },
    /// An acknowledgement inside a producer's transaction (ADR 0016 §6).
    TxnAck {
        offset: u64,
        session: u64,
        transaction: TransactionContext,
        reply: oneshot::Sender<Result<(), ClientError>>,
        slot: OwnedSemaphorePermit,
    },
    /// Flush acknowledgements, wait for their receipts and end.
    Close { reply: oneshot::Sender<()> },
}

type Waiter = (
    oneshot::Sender<Result<(), ClientError>>,
    OwnedSemaphorePermit,
);

fn answer(waiter: Waiter, result: Result<(), ClientError>) {
    // The caller may have stopped waiting; its slot is freed either way.
    let _ = waiter.0.send(result);
}

struct PartitionState {
    /// Numbers this partition's streams: messages carry it so that
    /// acknowledgements and credit of an ended stream are recognised.
    session: u64,
    credit: CreditWindow,
    /// Permits to grant with the next `flow`.
    permits_due: u32,
    subscription: Option<Subscription>,
}

/// The part of a partition's state shared with the application side.
pub(crate) struct PartitionShared {
    pub index: u32,
    queue_size: u32,
    state: Mutex<PartitionState>,
    /// Signalled when permits are due.
    wake: Notify,
    commands: mpsc::Sender<Command>,
    active: AtomicBool,
}

impl PartitionShared {
    pub fn new(index: u32, queue_size: u32, commands: mpsc::Sender<Command>) -> Self {
        Self {
            index,
            queue_size,
            state: Mutex::new(PartitionState {
                session: 0,
                credit: CreditWindow::new(queue_size),
                permits_due: 0,
                subscription: None,
            }),
            wake: Notify::new(),
            commands,
            active: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PartitionState> {
        // Plain data under short, non-awaiting locks.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `count` messages of `session` left the buffer.
    pub fn taken(&self, session: u64, count: u32) {
        let mut state = self.lock();
        if state.session != session {
            return;
        }
        if let Some(grant) = state.credit.taken(count) {
            state.permits_due = state.permits_due.saturating_add(grant);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// The application waits on an empty queue: grant whatever was taken.
    pub fn grant_taken(&self) {
        let mut state = self.lock();
        if let Some(grant) = state.credit.take_all() {
            state.permits_due = state.permits_due.saturating_add(grant);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Starts a new stream: a new session number and a full window.
    fn begin_session(&self) -> (u64, u32) {
        let mut state = self.lock();
        state.session += 1;
        state.credit = CreditWindow::new(self.queue_size);
        state.permits_due = 0;
        (state.session, state.credit.initial_permits())
    }

    fn take_permits_due(&self) -> u32 {
        std::mem::take(&mut self.lock().permits_due)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn subscription(&self) -> Option<Subscription> {
        self.lock().subscription.clone()
    }

    pub async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)
    }
}

enum SessionEnd {
    /// Closed on request (or the subscriber went away).
    Closed,
    Failed(ClientError),
    /// The route names another owner: reopen there at once, without
    /// waiting for the old owner (which may be frozen) to end the stream.
    Moved {
        from: String,
        to: String,
    },
}

/// Runs the partition's streams until the subscriber closes.
/// `first_open` is answered when the first stream opens, or fails in a
/// way retrying cannot cure (then the task ends).
pub(crate) async fn run(
    shared: Arc<Shared>,
    index: u32,
    mut commands: mpsc::Receiver<Command>,
    first_open: oneshot::Sender<Result<(), ClientError>>,
) {
    let Some(partition) = shared.partitions.get(index as usize) else {
        tracing::error!(
            index,
            "subscription task for a partition that does not exist"
        );
        return;
    };
    let topic = shared.config.topic.clone();
    let mut reconnect = ReconnectState::new(
        shared.config.reconnect_backoff_initial_ms,
        shared.config.reconnect_backoff_max_ms,
    );
    let mut first_open = Some(first_open);
    loop {
        let (session, permits) = partition.begin_session();
        let mut stream = Session {
            shared: &shared,
            partition,
            session,
            acks: AckTracker::default(),
            nacks: BTreeMap::new(),
            nack_count: 0,
        };
        let end = stream
            .run(permits, &mut commands, &mut first_open, &mut reconnect)
            .await;
        partition.active.store(false, Ordering::Release);
        let discarded = shared.discard_partition(index);
        let error = match end {
            SessionEnd::Closed => return,
            SessionEnd::Failed(error) => error,
            SessionEnd::Moved { from, to } => {
                tracing::info!(%topic, partition = index, %from, %to, discarded, "partition moved; reopening the subscription stream at its new owner");
                reconnect.moved();
                continue;
            }
        };
        if !ReconnectState::is_retriable(&error) {
            if let Some(first_open) = first_open.take() {
                let _ = first_open.send(Err(error));
                return;
            }
        }
        let reaction = reconnect.failed(&error);
        tracing::warn!(
            %topic, partition = index, %error, discarded, delay_ms = reaction.delay.as_millis() as u64,
            "subscription stream ended; reopening"
        );
        if reaction.surface {
            shared.push_error(error);
        }
        if reaction.refresh_routes {
            if let Err(error) = shared
                .cluster
                .refresh_routes(std::slice::from_ref(&topic))
                .await
            {
                tracing::warn!(%topic, %error, "cannot refresh routes");
            }
        }
        let resume = tokio::time::Instant::from_std(instant_after(Instant::now(), reaction.delay));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(resume) => break,
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Close { reply }) => {
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => refuse_ended(command),
                },
            }
        }
    }
}

/// Resolves, with the new owner's address, once the route of partition
/// `index` names an owner other than `address`; pending forever if route
/// changes can no longer be seen.
async fn moved_from(
    route_changes: &mut tokio::sync::watch::Receiver<u64>,
    shared: &Shared,
    index: u32,
    address: &str,
) -> String {
    loop {
        if route_changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(owner) = shared.cluster.cached_address(&shared.config.topic, index) {
            if owner != address {
                return owner;
            }
        }
    }
}

/// Answers a command for a stream that has ended.
fn refuse_ended(command: Command) {
    match command {
        Command::Ack {
            offset,
            reply,
            slot,
            ..
        } => answer(
            (reply, slot),
            Err(delivery_expired(offset, "its subscription stream ended")),
        ),
        Command::TxnAck {
            offset,
            reply,
            slot,
            ..
        } => answer(
            (reply, slot),
            Err(delivery_expired(offset, "its subscription stream ended")),
        ),
        Command::Nack { offset, .. } => {
            // The broker redelivers it anyway: the stream ended.
            tracing::debug!(offset, "negative acknowledgement after its stream ended");
        }
        Command::Close { reply } => {
            let _ = reply.send(());
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    partition: &'a PartitionShared,
    session: u64,
    acks: AckTracker<Waiter>,
    /// Negative acknowledgements to send, by delay in milliseconds.
    nacks: BTreeMap<u64, Vec<u64>>,
    nack_count: usize,
}

impl Session<'_> {
    fn request_timeout(&self) -> Duration {
        self.shared.cluster.request_timeout()
    }

    fn timeout_error(&self, what: &str) -> ClientError {
        ClientError::Timeout {
            what: format!(
                "{what} ({}/{})",
                self.shared.config.topic, self.partition.index
            ),
            timeout_ms: self.shared.cluster.config.request_timeout_ms,
        }
    }

    async fn owner_address(&self) -> Result<String, ClientError> {
        let topic = &self.shared.config.topic;
        let cluster = &self.shared.cluster;
        if cluster.cached_route(topic, self.partition.index).is_none() {
            cluster.refresh_routes(std::slice::from_ref(topic)).await?;
        }
        match cluster.cached_route(topic, self.partition.index) {
            Some(route) if !route.broker_address.is_empty() => {
                Ok(normalize_address(&route.broker_address))
            }
            _ => Err(ClientError::Server(SluiceError::new(
                ErrorCode::Unavailable,
                format!(
                    "partition {topic}/{} has no owner right now",
                    self.partition.index
                ),
            ))),
        }
    }

    async fn run(
        &mut self,
        permits: u32,
        commands: &mut mpsc::Receiver<Command>,
        first_open: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
        reconnect: &mut ReconnectState,
    ) -> SessionEnd {
        let mut route_changes = self.shared.cluster.route_changes();
        let address = match self.owner_address().await {
            Ok(address) => address,
            Err(error) => return SessionEnd::Failed(error),
        };
        let opened = tokio::select! {
            opened = self.open(&address, permits) => opened,
            to = moved_from(&mut route_changes, self.shared, self.partition.index, &address) => {
                return SessionEnd::Moved { from: address, to };
            }
        };
        let (requests, mut responses) = match opened {
            Ok(opened) => opened,
            Err(error) => return SessionEnd::Failed(error),
        };
        reconnect.opened();
        if let Some(first_open) = first_open.take() {
            let _ = first_open.send(Ok(()));
        }
        let partition = self.partition;
        let flush_interval = Duration::from_millis(self.shared.config.ack_flush_interval_ms);
        let mut flush_at: Option<tokio::time::Instant> = None;
        // Set once closing: who to tell, and until when receipts are awaited.
        let mut closing: Option<(Option<oneshot::Sender<()>>, tokio::time::Instant)> = None;
        let end = loop {
            if closing.is_some() && self.acks.is_idle() && self.nacks.is_empty() {
                break SessionEnd::Closed;
            }
            // Credit is also picked up here, not only on a wake-up, so a
            // grant can never be left behind.
            let permits = partition.take_permits_due();
            if permits > 0 {
                let flow = Outgoing::Flow(SubscribeFlow { permits });
                if let Err(error) = self.send(&requests, flow).await {
                    break SessionEnd::Failed(error);
                }
            }
            let close_deadline = closing.as_ref().map(|(_, deadline)| *deadline);
            tokio::select! {
                response = responses.message() => match response {
                    Ok(Some(response)) => {
                        if let Err(error) = self.on_response(response, &mut flush_at) {
                            break SessionEnd::Failed(error);
                        }
                    }
                    Ok(None) => break SessionEnd::Failed(ClientError::Server(SluiceError::new(
                        ErrorCode::Unavailable,
                        format!("{address} ended the subscription stream"),
                    ))),
                    Err(status) => break SessionEnd::Failed(ClientError::from_status(&address, &status)),
                },
                command = commands.recv(), if closing.is_none() => {
                    let deadline = tokio::time::Instant::from_std(instant_after(Instant::now(), self.request_timeout()));
                    match command {
                        None => closing = Some((None, deadline)),
                        Some(Command::Close { reply }) => closing = Some((Some(reply), deadline)),
                        Some(command) => {
                            self.on_command(command);
                            if flush_at.is_none() {
                                flush_at = Some(tokio::time::Instant::now() + flush_interval);
                            }
                        }
                    }
                    if closing.is_some() || self.nack_count >= MAX_NACK_OFFSETS_PER_FLUSH {
                        flush_at = Some(tokio::time::Instant::now());
                    }
                },
                _ = partition.wake.notified() => {
                    let permits = partition.take_permits_due();
                    if permits > 0 {
                        let flow = Outgoing::Flow(SubscribeFlow { permits });
                        if let Err(error) = self.send(&requests, flow).await {
                            break SessionEnd::Failed(error);
                        }
                    }
                },
                _ = sleep_until_some(flush_at) => {
                    flush_at = None;
                    if let Err(error) = self.flush(&requests).await {
                        break SessionEnd::Failed(error);
                    }
                },
                to = moved_from(&mut route_changes, self.shared, partition.index, &address), if closing.is_none() => {
                    break SessionEnd::Moved { from: address.clone(), to };
                },
                _ = sleep_until_some(close_deadline) => {
                    tracing::warn!(
                        topic = %self.shared.config.topic, partition = self.partition.index,
                        "closing without every acknowledgement receipt"
                    );
                    break SessionEnd::Closed;
                },
            }
        };
        let why = match &end {
            SessionEnd::Closed => "the subscriber closed before the broker's receipt",
            SessionEnd::Failed(_) | SessionEnd::Moved { .. } => {
                "the subscription stream ended before the broker's receipt"
            }
        };
        for (waiter, result) in self.acks.fail_all(|offset| delivery_expired(offset, why)) {
            answer(waiter, result);
        }
        if let Some((Some(reply), _)) = closing {
            let _ = reply.send(());
        }
        end
    }

    /// Opens the stream at `address` and waits for `opened`.
    async fn open(
        &self,
        address: &str,
        permits: u32,
    ) -> Result<
        (
            mpsc::Sender<SubscribeRequest>,
            tonic::Streaming<SubscribeResponse>,
        ),
        ClientError,
    > {
        let address = address.to_string();
        let config = &self.shared.config;
        let (requests, outgoing) = mpsc::channel(OUTGOING_REQUESTS_CAPACITY);
        let open = SubscribeRequest {
            request: Some(Outgoing::Open(SubscribeOpen {
                topic: config.topic.clone(),
                partition: self.partition.index,
                subscription: config.subscription.clone(),
                consumer_name: config.consumer_name.clone(),
                priority: config.priority,
                permits,
            })),
        };
        requests.try_send(open).map_err(|_| ClientError::Closed)?;
        let mut client = self.shared.cluster.broker(&address)?;
        let call = client.subscribe(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        let mut responses = match tokio::time::timeout(self.request_timeout(), call).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(ClientError::from_status(&address, &status)),
            Err(_) => return Err(self.timeout_error("opening the subscription stream")),
        };
        let first = match tokio::time::timeout(self.request_timeout(), responses.message()).await {
            Ok(Ok(first)) => first,
            Ok(Err(status)) => return Err(ClientError::from_status(&address, &status)),
            Err(_) => return Err(self.timeout_error("waiting for the subscription to open")),
        };
        let opened = match first.and_then(|response| response.response) {
            Some(Incoming::Opened(opened)) => opened,
            Some(_) => {
                return Err(ClientError::Server(SluiceError::new(
                    ErrorCode::Internal,
                    format!("{address} answered a subscription stream without `opened` first"),
                )))
            }
            None => {
                return Err(ClientError::Server(SluiceError::new(
                    ErrorCode::Unavailable,
                    format!("{address} ended the subscription stream before opening it"),
                )))
            }
        };
        tracing::info!(
            topic = %config.topic, partition = self.partition.index, %address,
            consumer_id = opened.consumer_id, active = opened.active,
            "subscription stream open"
        );
        self.partition.lock().subscription = opened.subscription;
        self.partition
            .active
            .store(opened.active, Ordering::Release);
        Ok((requests, responses))
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Ack {
                offset,
                session,
                cumulative,
                reply,
                slot,
            } => {
                if session != self.session {
                    answer(
                        (reply, slot),
                        Err(delivery_expired(offset, "its subscription stream ended")),
                    );
                } else if cumulative {
                    self.acks.add_cumulative(offset, (reply, slot));
                } else {
                    self.acks.add(offset, (reply, slot));
                }
            }
            Command::TxnAck {
                offset,
                session,
                transaction,
                reply,
                slot,
            } => {
                if session == self.session {
                    self.acks
                        .add_transactional(offset, transaction, (reply, slot));
                } else {
                    answer(
                        (reply, slot),
                        Err(delivery_expired(offset, "its subscription stream ended")),
                    );
                }
            }
            Command::Nack {
                offset,
                session,
                delay_ms,
            } => {
                if session == self.session {
                    self.nacks.entry(delay_ms).or_default().push(offset);
                    self.nack_count += 1;
                }
            }
            Command::Close { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn on_response(
        &mut self,
        response: SubscribeResponse,
        flush_at: &mut Option<tokio::time::Instant>,
    ) -> Result<(), ClientError> {
        match response.response {
            Some(Incoming::Delivery(delivery)) => {
                let decoded = decode_delivery(
                    &self.shared.config.topic,
                    self.partition.index,
                    self.session,
                    &delivery,
                    self.shared.cluster.config.max_grpc_message_bytes,
                );
                self.shared.push_messages(decoded.messages);
                if !decoded.unreadable.is_empty() {
                    // Give them back (they count as deliveries, so a
                    // message that never decodes ends in the dead-letter
                    // topic) and return their permits.
                    let count = decoded.unreadable.len();
                    self.nack_count += count;
                    self.nacks.entry(0).or_default().extend(decoded.unreadable);
                    self.partition
                        .taken(self.session, u32::try_from(count).unwrap_or(u32::MAX));
                    *flush_at = Some(tokio::time::Instant::now());
                }
                if let Some(error) = decoded.error {
                    tracing::error!(
                        topic = %self.shared.config.topic, partition = self.partition.index, %error,
                        "delivered messages do not decode; given back"
                    );
                    self.shared.push_error(error);
                }
            }
            Some(Incoming::AckReceipt(receipt)) => {
                for (waiter, result) in self.acks.on_receipt(&receipt) {
                    answer(waiter, result);
                }
            }
            Some(Incoming::Status(status)) => {
                tracing::info!(
                    topic = %self.shared.config.topic, partition = self.partition.index,
                    active = status.active, "failover status changed"
                );
                self.partition
                    .active
                    .store(status.active, Ordering::Release);
            }
            Some(Incoming::Opened(_)) | None => {
                tracing::warn!("unexpected message on an open subscription stream; ignored");
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        requests: &mpsc::Sender<SubscribeRequest>,
        request: Outgoing,
    ) -> Result<(), ClientError> {
        let request = SubscribeRequest {
            request: Some(request),
        };
        match tokio::time::timeout(self.request_timeout(), requests.send(request)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientError::Server(SluiceError::new(
                ErrorCode::Unavailable,
                "the subscription stream closed",
            ))),
            Err(_) => Err(self.timeout_error("sending on the subscription stream")),
        }
    }

    /// Sends the collected acknowledgements and negative acknowledgements.
    async fn flush(
        &mut self,
        requests: &mpsc::Sender<SubscribeRequest>,
    ) -> Result<(), ClientError> {
        while let Some(ack) = self.acks.take_request(MAX_ACK_OFFSETS_PER_REQUEST) {
            self.send(requests, Outgoing::Ack(ack)).await?;
        }
        while let Some(ack) = self
            .acks
            .take_transactional_request(MAX_ACK_OFFSETS_PER_REQUEST)
        {
            self.send(requests, Outgoing::Ack(ack)).await?;
        }
        let nacks = std::mem::take(&mut self.nacks);
        self.nack_count = 0;
        for (delay_ms, mut offsets) in nacks {
            offsets.sort_unstable();
            offsets.dedup();
            for chunk in offsets.chunks(MAX_ACK_OFFSETS_PER_REQUEST) {
                let nack = SubscribeNack {
                    offsets: chunk.to_vec(),
                    delay_ms,
                };
                self.send(requests, Outgoing::Nack(nack)).await?;
            }
        }
        Ok(())
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The messages of one delivery.
#[derive(Debug, Default)]
pub(crate) struct DecodedDelivery {
    pub messages: Vec<Message>,
    /// Listed offsets that could not be read (corrupt batch, missing from
    /// the batches).
    pub unreadable: Vec<u64>,
    pub error: Option<ClientError>,
}

/// Picks the listed offsets out of a delivery's batches. Records of other
/// offsets are for other consumers (or filtered) and skipped.
pub(crate) fn decode_delivery(
    topic: &str,
    partition: u32,
    session: u64,
    delivery: &Delivery,
    max_batch_bytes: usize,
) -> DecodedDelivery {
    let wanted = &delivery.offsets;
    if delivery.delivery_counts.len() != wanted.len() {
        tracing::warn!(
            topic,
            partition,
            offsets = wanted.len(),
            counts = delivery.delivery_counts.len(),
            "delivery counts do not match offsets; missing counts taken as 1"
        );
    }
    let mut decoded = DecodedDelivery::default();
    let mut next = 0usize;
    let fail = |decoded: &mut DecodedDelivery, message: String| {
        if decoded.error.is_none() {
            decoded.error = Some(ClientError::Decode(format!(
                "{topic}/{partition}: {message}"
            )));
        }
    };
    for item in BatchIter::new(&delivery.batches) {
        let (_, header, batch) = match item {
            Ok(item) => item,
            Err(error) => {
                fail(&mut decoded, format!("malformed batch: {error}"));
                break;
            }
        };
        let batch = delivery.batches.slice_ref(batch);
        let records = match decode_selected(&batch, max_batch_bytes, |offset| {
            wanted.binary_search(&offset).is_ok()
        }) {
            Ok((_, records)) => records,
            Err(error) => {
                if !error.is_undecodable_records() {
                    fail(
                        &mut decoded,
                        format!("batch at offset {}: {error}", header.base_offset),
                    );
                } else if decoded.error.is_none() {
                    decoded.error = Some(ClientError::CorruptBatch {
                        topic: topic.to_string(),
                        partition,
                        base_offset: header.base_offset,
                        end_offset: header.end_offset(),
                        reason: error.to_string(),
                    });
                }
                while next < wanted.len() && wanted[next] < header.end_offset() {
                    decoded.unreadable.push(wanted[next]);
                    next += 1;
                }
                continue;
            }
        };
        for record in records {
            while next < wanted.len() && wanted[next] < record.offset {
                decoded.unreadable.push(wanted[next]);
                next += 1;
            }
            if next < wanted.len() && wanted[next] == record.offset {
                decoded.messages.push(Message {
                    topic: topic.to_string(),
                    partition,
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                    tags: record.tags,
                    delivery_count: delivery.delivery_counts.get(next).copied().unwrap_or(1),
                    session,
                });
                next += 1;
            }
        }
    }
    if next < wanted.len() {
        fail(
            &mut decoded,
            format!(
                "{} delivered offset(s) missing from the batches, first {}",
                wanted.len() - next,
                wanted[next]
            ),
        );
        decoded.unreadable.extend_from_slice(&wanted[next..]);
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_proto::test_util::BatchSpec;

    fn batch(base_offset: u64, values: &[&str]) -> Vec<u8> {
        BatchSpec {
            values,
            timestamp_ms: Some(7),
            ..BatchSpec::default()
        }
        .stored_at(base_offset)
    }

    fn values(decoded: &DecodedDelivery) -> Vec<(u64, String, u32)> {
        decoded
            .messages
            .iter()
            .map(|message| {
                let value = message.value.clone().unwrap_or_default();
                (
                    message.offset,
                    String::from_utf8_lossy(&value).into_owned(),
                    message.delivery_count,
                )
            })
            .collect()
    }

    #[test]
    fn only_listed_offsets_are_delivered() {
        let mut bytes = batch(10, &["a", "b", "c"]);
        bytes.extend(batch(13, &["d", "e"]));
        let delivery = Delivery {
            batches: Bytes::from(bytes),
            offsets: vec![11, 13, 14],
            delivery_counts: vec![1, 3, 1],
        };
        let decoded = decode_delivery("t", 2, 5, &delivery, 1 << 20);
        assert_eq!(
            values(&decoded),
            vec![
                (11, "b".to_string(), 1),
                (13, "d".to_string(), 3),
                (14, "e".to_string(), 1)
            ]
        );
        assert!(decoded.unreadable.is_empty());
        assert!(decoded.error.is_none());
        assert!(decoded
            .messages
            .iter()
            .all(|message| message.session == 5 && message.partition == 2));
    }

    #[test]
    fn corrupt_batches_and_missing_offsets_are_reported() {
        let mut corrupt = batch(0, &["a", "b"]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let mut bytes = corrupt;
        bytes.extend(batch(2, &["c"]));
        let delivery = Delivery {
            batches: Bytes::from(bytes),
            offsets: vec![1, 2, 9],
            delivery_counts: vec![1, 1],
        };
        let decoded = decode_delivery("t", 0, 1, &delivery, 1 << 20);
        assert_eq!(values(&decoded), vec![(2, "c".to_string(), 1)]);
        assert_eq!(decoded.unreadable, vec![1, 9]);
        assert!(matches!(decoded.error, Some(ClientError::Decode(_))));
    }

    #[test]
    fn a_poison_batch_is_reported_with_its_offsets_and_its_messages_given_back() {
        use sluice_proto::batch::{assign, Compression};
        use sluice_proto::test_util::poison::poison_batches;
        for compression in [Compression::Lz4, Compression::Zstd] {
            for (kind, poison) in poison_batches(compression, 1 << 20) {
                let mut poison = poison.to_vec();
                assign(&mut poison, 3, 1);
                let end = sluice_proto::batch::BatchHeader::parse(&poison)
                    .expect("sound header")
                    .end_offset();
                let mut bytes = batch(0, &["a", "b", "c"]);
                bytes.extend(poison);
                bytes.extend(batch(end, &["after"]));
                let delivery = Delivery {
                    batches: Bytes::from(bytes),
                    offsets: vec![2, 3, end],
                    delivery_counts: vec![1, 1, 1],
                };
                let decoded = decode_delivery("t", 4, 1, &delivery, 1 << 20);
                assert_eq!(
                    values(&decoded),
                    vec![(2, "c".to_string(), 1), (end, "after".to_string(), 1)],
                    "{compression:?} {kind}"
                );
                assert_eq!(decoded.unreadable, vec![3], "{compression:?} {kind}");
                match decoded.error {
                    Some(ClientError::CorruptBatch {
                        topic,
                        partition: 4,
                        base_offset: 3,
                        end_offset,
                        ..
                    }) if topic == "t" && end_offset == end => {}
                    other => panic!("{compression:?} {kind}: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn credit_of_an_ended_session_is_ignored() {
        let (sender, _receiver) = mpsc::channel(1);
        let partition = PartitionShared::new(0, 4, sender);
        let (first, permits) = partition.begin_session();
        assert_eq!(permits, 4);
        partition.taken(first, 2);
        assert_eq!(partition.take_permits_due(), 2);
        let (second, _) = partition.begin_session();
        partition.taken(first, 2);
        assert_eq!(partition.take_permits_due(), 0, "an old session's credit");
        partition.taken(second, 1);
        assert_eq!(partition.take_permits_due(), 0, "below half the queue");
        partition.taken(second, 1);
        assert_eq!(partition.take_permits_due(), 2);
    }
}
