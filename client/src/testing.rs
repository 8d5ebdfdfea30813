//! A fake in-process broker for unit tests of the producer and consumer
//! without real servers: ordered produce with injectable failures (that,
//! like the real broker, also fail the partition's requests behind them),
//! fetch from an in-memory log, list offsets, and a scripted group
//! coordinator, and a scripted `Subscribe` (one subscription, shared by
//! every stream: credit, acks with receipts, nacks, redelivery of what a
//! closed stream held, injected refusals and stream breaks).

use bytes::Bytes;
use sluice_proto::batch::{assign, BatchIter};
use sluice_proto::v1::broker_server::{Broker, BrokerServer};
use sluice_proto::v1::name_server_server;
use sluice_proto::v1::*;
use sluice_proto::ErrorCode;
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// (member id, member epoch, owned partitions) of one heartbeat.
pub(crate) type HeartbeatSeen = (String, i64, BTreeSet<(String, u32)>);

#[derive(Default)]
pub(crate) struct FakeState {
    /// Appended batches per partition (base offsets assigned).
    pub logs: HashMap<(String, u32), Vec<Bytes>>,
    pub next_offset: HashMap<(String, u32), u64>,
    /// A last stable offset below the end per partition (an open
    /// transaction): read-committed `Latest` answers it.
    pub last_stable: HashMap<(String, u32), u64>,
    /// A range accepted as lost per partition: fetches inside it answer
    /// DATA_LOST with its end, fetches before it stop at its start.
    pub lost: HashMap<(String, u32), (u64, u64)>,
    /// Produce requests seen so far (all partitions), to script failures.
    pub produce_requests: u64,
    /// Fail the produce request with this 1-based number with this code.
    pub fail_produce: HashMap<u64, ErrorCode>,
    /// After an injected failure, fail every request of the partition
    /// until one says `resume` (the real broker's contract: what a client
    /// pipelined before it noticed the failure cannot overtake the retry).
    pub poison_after_failure: bool,
    poisoned: BTreeSet<(String, u32)>,
    /// `resume` flags seen, per request number.
    pub resumed_requests: Vec<u64>,
    /// From this produce request number on, answer NOT_OWNER to every
    /// produce and fetch (the partition moved away).
    pub not_owner_from: Option<u64>,
    /// Produce requests answered with an error.
    pub failed_requests: u64,
    /// The batch of every produce request, in arrival order.
    pub sent_batches: Vec<Bytes>,
    /// Group: the assignment every heartbeat answers with.
    pub group_target: BTreeSet<(String, u32)>,
    /// Owned sets reported by heartbeats, in order.
    pub heartbeats_owned: Vec<BTreeSet<(String, u32)>>,
    /// Commits received, in order.
    pub commits: Vec<(String, u32, u64)>,
    pub committed: HashMap<(String, u32), u64>,
    pub left: bool,
    /// Errors the next heartbeats answer with, first first.
    pub fail_heartbeats: Vec<ErrorCode>,
    /// (member id, member epoch, owned) of every heartbeat received.
    pub heartbeat_members: Vec<HeartbeatSeen>,
    /// Group calls in arrival order, e.g. `commit t/0 12`, `heartbeat t/1`.
    pub group_events: Vec<String>,
    /// The fake subscription behind `Subscribe`.
    pub subscription: FakeSubscription,
}

/// One delivered, unacknowledged message of the fake subscription.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FakeDelivered {
    pub stream: u64,
    pub count: u32,
}

/// State of the fake broker's one subscription (any name), shared by
/// every `Subscribe` stream like a shared subscription.
#[derive(Default)]
pub(crate) struct FakeSubscription {
    /// The type `opened` reports.
    pub subscription_type: SubscriptionType,
    /// Whether `opened` says the consumer is active.
    pub active: bool,
    /// Codes the next opens are refused with, first first.
    pub refuse_opens: std::collections::VecDeque<ErrorCode>,
    /// Streams opened so far (stream ids are 1, 2, ...).
    pub opens: u64,
    /// Next offset never delivered, per partition.
    pub cursor: HashMap<(String, u32), u64>,
    /// Delivered and not acknowledged, per partition.
    pub delivered: HashMap<(String, u32), std::collections::BTreeMap<u64, FakeDelivered>>,
    /// To deliver again, with their previous delivery count.
    pub redeliver: HashMap<(String, u32), std::collections::BTreeMap<u64, u32>>,
    /// Durably acknowledged (topic, partition, offset).
    pub acked: BTreeSet<(String, u32, u64)>,
    /// Acknowledgements of these offsets are refused with the code.
    pub reject_acks: HashMap<u64, ErrorCode>,
    /// Receipts are not sent while set.
    pub hold_receipts: bool,
    /// Streams with an id up to this end with the code at their next tick.
    pub break_streams: Option<(u64, ErrorCode)>,
    /// Sent as a `status` by every open stream at its next tick, then cleared.
    pub push_status: Option<bool>,
    /// Messages delivered so far (first deliveries and redeliveries).
    pub deliveries: u64,
    /// Requests in arrival order: `open t/0 permits=10`, `flow 5`,
    /// `ack 3,4`, `cumulative 7`, `nack 5 delay=0`.
    pub events: Vec<String>,
}

#[derive(Clone, Default)]
pub(crate) struct FakeBroker {
    pub state: Arc<Mutex<FakeState>>,
    /// This server answers NOT_OWNER to fetches (another server sharing
    /// `state` owns the partitions now).
    pub refuse_fetch: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes of batches this server returned from fetches.
    pub fetched_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// While set, this server takes produce and fetch requests and
    /// answers them only once thawed (SIGSTOP, then SIGCONT).
    pub frozen: Arc<std::sync::atomic::AtomicBool>,
    /// Produce requests taken off streams (answered or not yet).
    pub taken: Arc<std::sync::atomic::AtomicU64>,
}

impl FakeBroker {
    pub fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .expect("fake broker state lock (test code)")
    }

    /// Returns once the server is not frozen.
    pub async fn wait_while_frozen(&self) {
        while self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Serves on a free local port; returns the address.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port for the fake broker");
        let address = listener.local_addr().expect("bound address");
        let service = BrokerServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        format!("http://{address}")
    }

    /// Values of every record appended to a partition, in log order.
    pub fn values(&self, topic: &str, partition: u32) -> Vec<(u64, String)> {
        let state = self.lock();
        let mut values = Vec::new();
        for batch in state
            .logs
            .get(&(topic.to_string(), partition))
            .into_iter()
            .flatten()
        {
            let (_, records) =
                sluice_proto::batch::decode(batch, 1 << 24).expect("fake log holds valid batches");
            for record in records {
                let value = record
                    .value
                    .map(|value| String::from_utf8_lossy(&value).into_owned());
                values.push((record.offset, value.unwrap_or_default()));
            }
        }
        values
    }

    fn produce_one(&self, request: ProduceRequest) -> ProduceResponse {
        let mut state = self.lock();
        state.produce_requests += 1;
        state.sent_batches.push(request.batch.clone());
        let number = state.produce_requests;
        let key = (request.topic.clone(), request.partition);
        let injected = state.fail_produce.get(&number).copied().or_else(|| {
            state
                .not_owner_from
                .filter(|from| number >= *from)
                .map(|_| ErrorCode::NotOwner)
        });
        if request.resume {
            state.resumed_requests.push(number);
            state.poisoned.remove(&key);
        }
        let error = if let Some(code) = injected {
            if state.poison_after_failure {
                state.poisoned.insert(key.clone());
            }
            Some(code)
        } else if state.poisoned.contains(&key) {
            Some(ErrorCode::NotOwner)
        } else {
            None
        };
        if let Some(code) = error {
            state.failed_requests += 1;
            return ProduceResponse {
                request_id: request.request_id,
                error: code as i32,
                error_message: format!("injected failure of request {number}"),
                ..ProduceResponse::default()
            };
        }
        let header = match sluice_proto::batch::validate(&request.batch, 1 << 24) {
            Ok(header) => header,
            Err(error) => {
                return ProduceResponse {
                    request_id: request.request_id,
                    error: ErrorCode::CorruptBatch as i32,
                    error_message: error.to_string(),
                    ..ProduceResponse::default()
                }
            }
        };
        let base_offset = *state.next_offset.get(&key).unwrap_or(&0);
        let mut batch = request.batch.to_vec();
        assign(&mut batch, base_offset, 1);
        state
            .next_offset
            .insert(key.clone(), base_offset + u64::from(header.record_count));
        state.logs.entry(key).or_default().push(Bytes::from(batch));
        ProduceResponse {
            request_id: request.request_id,
            error: 0,
            error_message: String::new(),
            base_offset,
            append_time_ms: sluice_proto::now_unix_ms(),
            epoch: 1,
            ..Default::default()
        }
    }

    fn tp_set(list: &[TopicPartitions]) -> BTreeSet<(String, u32)> {
        list.iter()
            .flat_map(|entry| {
                entry
                    .partitions
                    .iter()
                    .map(|partition| (entry.topic.clone(), *partition))
            })
            .collect()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProduceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Broker for FakeBroker {
    type ProduceStream = ResponseStream;

    async fn produce(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(1024);
        let broker = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                broker
                    .taken
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Taken and left until thawed, then answered (SIGCONT).
                broker.wait_while_frozen().await;
                let response = broker.produce_one(request);
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        self.wait_while_frozen().await;
        let request = request.into_inner();
        let mut answer = FetchResponse::default();
        let mut any = false;
        {
            let state = self.lock();
            for wanted in &request.partitions {
                let key = (wanted.topic.clone(), wanted.partition);
                let end = *state.next_offset.get(&key).unwrap_or(&0);
                let mut fetched = FetchedPartition {
                    topic: wanted.topic.clone(),
                    partition: wanted.partition,
                    high_watermark: end,
                    ..FetchedPartition::default()
                };
                if self.refuse_fetch.load(std::sync::atomic::Ordering::SeqCst) {
                    fetched.error = ErrorCode::NotOwner as i32;
                } else if wanted.offset > end {
                    fetched.error = ErrorCode::OffsetOutOfRange as i32;
                } else if let Some((start, lost_end)) =
                    state.lost.get(&key).filter(|(start, lost_end)| {
                        *start <= wanted.offset && wanted.offset < *lost_end
                    })
                {
                    fetched.error = ErrorCode::DataLost as i32;
                    fetched.error_message = format!("offsets {start}..{lost_end} were lost");
                    fetched.lost_end_offset = *lost_end;
                } else {
                    let stop = state
                        .lost
                        .get(&key)
                        .map(|(start, _)| *start)
                        .filter(|start| *start > wanted.offset)
                        .unwrap_or(u64::MAX);
                    let mut bytes = Vec::new();
                    for batch in state.logs.get(&key).into_iter().flatten() {
                        let header = BatchIter::new(batch)
                            .next()
                            .expect("one batch")
                            .expect("valid batch")
                            .1;
                        if header.end_offset() <= wanted.offset {
                            continue;
                        }
                        if header.end_offset() > stop {
                            break;
                        }
                        if !bytes.is_empty()
                            && bytes.len() + batch.len() > wanted.max_bytes as usize
                        {
                            break;
                        }
                        bytes.extend_from_slice(batch);
                    }
                    any |= !bytes.is_empty();
                    self.fetched_bytes
                        .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::SeqCst);
                    fetched.batches = Bytes::from(bytes);
                }
                answer.partitions.push(fetched);
            }
        }
        if !any {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Response::new(answer))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let request = request.into_inner();
        let key = (request.topic, request.partition);
        let state = self.lock();
        let end = *state.next_offset.get(&key).unwrap_or(&0);
        let stable = *state.last_stable.get(&key).unwrap_or(&end);
        drop(state);
        let committed = request.isolation == IsolationLevel::ReadCommitted as i32;
        let offset = match OffsetSpec::try_from(request.spec) {
            Ok(OffsetSpec::Latest) if committed => stable,
            Ok(OffsetSpec::Latest) => end,
            _ => 0,
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            log_start_offset: 0,
            high_watermark: end,
            ..Default::default()
        }))
    }

    async fn group_heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        if request.member_epoch == -1 {
            state.left = true;
        }
        let owned = Self::tp_set(&request.owned);
        let described: Vec<String> = owned
            .iter()
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect();
        state
            .group_events
            .push(format!("heartbeat {}", described.join(",")));
        state.heartbeats_owned.push(owned.clone());
        state
            .heartbeat_members
            .push((request.member_id.clone(), request.member_epoch, owned));
        if !state.fail_heartbeats.is_empty() {
            let code = state.fail_heartbeats.remove(0);
            return Ok(Response::new(GroupHeartbeatResponse {
                error: code as i32,
                error_message: "injected heartbeat failure".into(),
                ..GroupHeartbeatResponse::default()
            }));
        }
        let mut by_topic: HashMap<String, Vec<u32>> = HashMap::new();
        for (topic, partition) in &state.group_target {
            by_topic.entry(topic.clone()).or_default().push(*partition);
        }
        Ok(Response::new(GroupHeartbeatResponse {
            member_id: "member-1".into(),
            member_epoch: request.member_epoch.max(0) + 1,
            heartbeat_interval_ms: 20,
            assignment: by_topic
                .into_iter()
                .map(|(topic, partitions)| TopicPartitions { topic, partitions })
                .collect(),
            ..GroupHeartbeatResponse::default()
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        for offset in &request.offsets {
            state
                .commits
                .push((offset.topic.clone(), offset.partition, offset.offset));
            state.group_events.push(format!(
                "commit {}/{} {}",
                offset.topic, offset.partition, offset.offset
            ));
            state
                .committed
                .insert((offset.topic.clone(), offset.partition), offset.offset);
        }
        Ok(Response::new(CommitOffsetsResponse {
            offsets: request.offsets,
        }))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let request = request.into_inner();
        let state = self.lock();
        let offsets = Self::tp_set(&request.partitions)
            .into_iter()
            .filter_map(|(topic, partition)| {
                state
                    .committed
                    .get(&(topic.clone(), partition))
                    .map(|offset| PartitionOffset {
                        topic,
                        partition,
                        offset: *offset,
                        ..PartitionOffset::default()
                    })
            })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn describe_group(
        &self,
        _request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn reset_subscription_cursor(
        &self,
        _request: Request<sluice_proto::v1::ResetSubscriptionCursorRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn skip_subscription(
        &self,
        _request: Request<sluice_proto::v1::SkipSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn delete_group(
        &self,
        _request: Request<sluice_proto::v1::DeleteGroupRequest>,
    ) -> Result<Response<sluice_proto::v1::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn get_message(
        &self,
        _request: Request<sluice_proto::v1::GetMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::GetMessageResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn find_messages(
        &self,
        _request: Request<sluice_proto::v1::FindMessagesRequest>,
    ) -> Result<Response<sluice_proto::v1::FindMessagesResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn explain_message(
        &self,
        _request: Request<sluice_proto::v1::ExplainMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::ExplainMessageResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn describe_subscription(
        &self,
        _request: Request<sluice_proto::v1::DescribeSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::DescribeSubscriptionResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn write_txn_markers(
        &self,
        _request: Request<WriteTxnMarkersRequest>,
    ) -> Result<Response<WriteTxnMarkersResponse>, Status> {
        Err(Status::unimplemented("brokers only"))
    }

    // The fake coordinates no transactions (the SDK's transactional
    // producer is ADR 0016 stage 3).
    async fn init_producer_id(
        &self,
        _request: Request<sluice_proto::v1::InitProducerIdRequest>,
    ) -> Result<Response<sluice_proto::v1::InitProducerIdResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn add_transaction_participants(
        &self,
        _request: Request<sluice_proto::v1::AddTransactionParticipantsRequest>,
    ) -> Result<Response<sluice_proto::v1::AddTransactionParticipantsResponse>, Status> {
        Err(Status::unimplemented("brokers only"))
    }

    async fn end_transaction(
        &self,
        _request: Request<sluice_proto::v1::EndTransactionRequest>,
    ) -> Result<Response<sluice_proto::v1::EndTransactionResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn list_transactions(
        &self,
        _request: Request<sluice_proto::v1::ListTransactionsRequest>,
    ) -> Result<Response<sluice_proto::v1::ListTransactionsResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn describe_transaction(
        &self,
        _request: Request<sluice_proto::v1::DescribeTransactionRequest>,
    ) -> Result<Response<sluice_proto::v1::DescribeTransactionResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn abort_transaction(
        &self,
        _request: Request<sluice_proto::v1::AbortTransactionRequest>,
    ) -> Result<Response<sluice_proto::v1::AbortTransactionResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<sluice_proto::v1::SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<sluice_proto::v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use sluice_proto::v1::subscribe_request::Request as Incoming;
        use sluice_proto::v1::subscribe_response::Response as Outgoing;
        let mut inbound = request.into_inner();
        let Some(Incoming::Open(open)) = inbound.message().await?.and_then(|first| first.request)
        else {
            return Err(Status::invalid_argument("open first"));
        };
        let key = (open.topic.clone(), open.partition);
        let (stream, opened) = {
            let mut state = self.lock();
            let sub = &mut state.subscription;
            sub.events.push(format!(
                "open {}/{} permits={}",
                open.topic, open.partition, open.permits
            ));
            sub.opens += 1;
            if let Some(code) = sub.refuse_opens.pop_front() {
                return Err(sluice_proto::SluiceError::new(code, "injected refusal").into());
            }
            let opened = SubscribeOpened {
                subscription: Some(Subscription {
                    topic: open.topic.clone(),
                    name: open.subscription.clone(),
                    r#type: sub.subscription_type as i32,
                    ..Subscription::default()
                }),
                consumer_id: sub.opens,
                active: sub.active,
            };
            (sub.opens, opened)
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let respond = |response| SubscribeResponse {
            response: Some(response),
        };
        let _ = sender.send(Ok(respond(Outgoing::Opened(opened)))).await;
        let broker = self.clone();
        tokio::spawn(async move {
            let mut permits = u64::from(open.permits);
            loop {
                tokio::select! {
                    request = inbound.message() => {
                        let Ok(Some(request)) = request else { break };
                        let receipt = broker.on_subscribe_request(&key, stream, &mut permits, request);
                        if let Some(receipt) = receipt {
                            if sender.send(Ok(respond(Outgoing::AckReceipt(receipt)))).await.is_err() {
                                break;
                            }
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {
                        if broker.frozen.load(std::sync::atomic::Ordering::SeqCst) {
                            // Silent while frozen; a stream the client
                            // drops still ends (the kernel keeps talking).
                            continue;
                        }
                        let (broken, status, delivery) = broker.subscribe_tick(&key, stream, &mut permits);
                        if let Some(code) = broken {
                            broker.end_stream(stream);
                            let _ = sender.send(Err(sluice_proto::SluiceError::new(code, "injected break").into())).await;
                            return;
                        }
                        if let Some(active) = status {
                            let _ = sender.send(Ok(respond(Outgoing::Status(ConsumerStatus { active })))).await;
                        }
                        if let Some(delivery) = delivery {
                            if sender.send(Ok(respond(Outgoing::Delivery(delivery)))).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            broker.end_stream(stream);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

impl FakeBroker {
    /// Applies one request of a `Subscribe` stream; returns the receipt to send.
    fn on_subscribe_request(
        &self,
        key: &(String, u32),
        stream: u64,
        permits: &mut u64,
        request: SubscribeRequest,
    ) -> Option<AckReceipt> {
        use sluice_proto::v1::subscribe_request::Request as Incoming;
        let mut state = self.lock();
        let sub = &mut state.subscription;
        match request.request? {
            Incoming::Open(_) => None,
            Incoming::Flow(flow) => {
                sub.events.push(format!("flow {}", flow.permits));
                *permits += u64::from(flow.permits);
                None
            }
            Incoming::Nack(nack) => {
                let listed: Vec<String> = nack.offsets.iter().map(u64::to_string).collect();
                sub.events
                    .push(format!("nack {} delay={}", listed.join(","), nack.delay_ms));
                for offset in nack.offsets {
                    let delivered = sub.delivered.entry(key.clone()).or_default();
                    if delivered
                        .get(&offset)
                        .is_some_and(|entry| entry.stream == stream)
                    {
                        if let Some(entry) = delivered.remove(&offset) {
                            sub.redeliver
                                .entry(key.clone())
                                .or_default()
                                .insert(offset, entry.count);
                        }
                    }
                }
                None
            }
            Incoming::Ack(ack) => {
                let listed: Vec<String> = ack.offsets.iter().map(u64::to_string).collect();
                sub.events.push(format!("ack {}", listed.join(",")));
                let mut receipt = AckReceipt {
                    request_id: ack.request_id,
                    ..AckReceipt::default()
                };
                if let Some(cumulative) = ack.cumulative_offset {
                    sub.events.push(format!("cumulative {cumulative}"));
                    let delivered = sub.delivered.entry(key.clone()).or_default();
                    let covered: Vec<u64> = delivered
                        .range(..=cumulative)
                        .filter(|(_, entry)| entry.stream == stream)
                        .map(|(offset, _)| *offset)
                        .collect();
                    for offset in covered {
                        delivered.remove(&offset);
                        sub.acked.insert((key.0.clone(), key.1, offset));
                    }
                }
                for offset in ack.offsets {
                    let delivered = sub.delivered.entry(key.clone()).or_default();
                    let error = if let Some(code) = sub.reject_acks.get(&offset) {
                        Some(*code)
                    } else if delivered
                        .get(&offset)
                        .is_some_and(|entry| entry.stream == stream)
                    {
                        delivered.remove(&offset);
                        sub.acked.insert((key.0.clone(), key.1, offset));
                        None
                    } else if sub.acked.contains(&(key.0.clone(), key.1, offset)) {
                        None
                    } else {
                        Some(ErrorCode::DeliveryExpired)
                    };
                    match error {
                        None => receipt.acknowledged.push(offset),
                        Some(code) => receipt.rejected.push(AckResult {
                            offset,
                            error: code as i32,
                        }),
                    }
                }
                (!sub.hold_receipts).then_some(receipt)
            }
        }
    }

    /// One tick of a `Subscribe` stream: whether to break it, a status to
    /// push, and what to deliver within its permits.
    fn subscribe_tick(
        &self,
        key: &(String, u32),
        stream: u64,
        permits: &mut u64,
    ) -> (Option<ErrorCode>, Option<bool>, Option<Delivery>) {
        let mut state = self.lock();
        let state = &mut *state;
        let sub = &mut state.subscription;
        if let Some((up_to, code)) = sub.break_streams {
            if stream <= up_to {
                return (Some(code), None, None);
            }
        }
        let status = sub.push_status.take();
        let end = *state.next_offset.get(key).unwrap_or(&0);
        let mut chosen: Vec<(u64, u32)> = Vec::new();
        let redeliver = sub.redeliver.entry(key.clone()).or_default();
        while (chosen.len() as u64) < *permits {
            let Some((offset, count)) = redeliver.pop_first() else {
                break;
            };
            chosen.push((offset, count + 1));
        }
        let cursor = sub.cursor.entry(key.clone()).or_insert(0);
        while (chosen.len() as u64) < *permits && *cursor < end {
            chosen.push((*cursor, 1));
            *cursor += 1;
        }
        if chosen.is_empty() {
            return (None, status, None);
        }
        chosen.sort_unstable();
        *permits -= chosen.len() as u64;
        sub.deliveries += chosen.len() as u64;
        let delivered = sub.delivered.entry(key.clone()).or_default();
        for (offset, count) in &chosen {
            delivered.insert(
                *offset,
                FakeDelivered {
                    stream,
                    count: *count,
                },
            );
        }
        let mut batches = Vec::new();
        for batch in state.logs.get(key).into_iter().flatten() {
            let header = BatchIter::new(batch)
                .next()
                .expect("one batch")
                .expect("valid batch")
                .1;
            if chosen
                .iter()
                .any(|(offset, _)| *offset >= header.base_offset && *offset < header.end_offset())
            {
                batches.extend_from_slice(batch);
            }
        }
        let delivery = Delivery {
            batches: Bytes::from(batches),
            offsets: chosen.iter().map(|(offset, _)| *offset).collect(),
            delivery_counts: chosen.iter().map(|(_, count)| *count).collect(),
        };
        (None, status, Some(delivery))
    }

    /// A stream ended: what it held unacknowledged is delivered again.
    fn end_stream(&self, stream: u64) {
        let mut state = self.lock();
        let sub = &mut state.subscription;
        for (key, delivered) in sub.delivered.iter_mut() {
            let held: Vec<u64> = delivered
                .iter()
                .filter(|(_, entry)| entry.stream == stream)
                .map(|(offset, _)| *offset)
                .collect();
            for offset in held {
                if let Some(entry) = delivered.remove(&offset) {
                    sub.redeliver
                        .entry(key.clone())
                        .or_default()
                        .insert(offset, entry.count);
                }
            }
        }
    }
}

/// A fake nameserver answering `GetRoutes`, `FindCoordinator` and a few
/// admin calls from in-memory state; the rest is unimplemented.
#[derive(Clone, Default)]
pub(crate) struct FakeNameServer {
    pub state: Arc<Mutex<FakeNameServerState>>,
}

#[derive(Default)]
pub(crate) struct FakeNameServerState {
    /// Broker address of each partition, per topic.
    pub routes: HashMap<String, Vec<String>>,
    /// Ownership epoch of every route (0 is answered as 1); bump it when
    /// moving partitions, as a takeover does.
    pub epoch: u64,
    /// `WatchRoutes` calls so far.
    pub watch_calls: u64,
    /// `WatchRoutes` streams open now.
    pub open_watches: u64,
    pub coordinator: String,
    pub get_routes_calls: u64,
    pub created: Vec<String>,
    /// Producer ids handed out so far.
    pub allocated_producer_ids: u64,
    /// Subscriptions by (topic, name), as created (no defaults filled).
    pub subscriptions: std::collections::BTreeMap<(String, String), Subscription>,
}

impl FakeNameServer {
    pub fn lock(&self) -> MutexGuard<'_, FakeNameServerState> {
        self.state
            .lock()
            .expect("fake nameserver state lock (test code)")
    }

    /// Routes of `topics` as `GetRoutes` and `WatchRoutes` answer them.
    fn routes_of(&self, topics: &[String]) -> GetRoutesResponse {
        let state = self.lock();
        let topics = topics
            .iter()
            .map(|topic| match state.routes.get(topic) {
                Some(addresses) => TopicRoute {
                    topic: topic.clone(),
                    partitions: addresses
                        .iter()
                        .enumerate()
                        .map(|(partition, address)| PartitionRoute {
                            partition: partition as u32,
                            broker_id: format!("broker-{address}"),
                            broker_address: address.clone(),
                            epoch: state.epoch.max(1),
                        })
                        .collect(),
                    error: 0,
                },
                None => TopicRoute {
                    topic: topic.clone(),
                    partitions: Vec::new(),
                    error: ErrorCode::UnknownTopic as i32,
                },
            })
            .collect();
        GetRoutesResponse { topics }
    }

    /// Moves every partition of `topic` to `address` at a new epoch.
    pub fn move_topic(&self, topic: &str, address: &str) {
        let mut state = self.lock();
        state.epoch = state.epoch.max(1) + 1;
        let partitions = state.routes.get(topic).map_or(1, Vec::len);
        state
            .routes
            .insert(topic.to_string(), vec![address.to_string(); partitions]);
    }

    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port for the fake nameserver");
        let address = listener.local_addr().expect("bound address");
        let service = name_server_server::NameServerServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        format!("http://{address}")
    }
}

type RoutesStream = Pin<Box<dyn Stream<Item = Result<GetRoutesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl name_server_server::NameServer for FakeNameServer {
    type WatchRoutesStream = RoutesStream;

    async fn register_node(
        &self,
        _request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        Err(Status::unimplemented("register_node is not faked"))
    }

    async fn heartbeat(
        &self,
        _request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("heartbeat is not faked"))
    }

    async fn deregister_node(
        &self,
        _request: Request<DeregisterNodeRequest>,
    ) -> Result<Response<DeregisterNodeResponse>, Status> {
        Err(Status::unimplemented("deregister_node is not faked"))
    }

    async fn describe_topic(
        &self,
        _request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        Err(Status::unimplemented("describe_topic is not faked"))
    }

    async fn delete_topic(
        &self,
        _request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("delete_topic is not faked"))
    }

    async fn unregister_group(
        &self,
        _request: Request<sluice_proto::v1::UnregisterGroupRequest>,
    ) -> Result<Response<sluice_proto::v1::UnregisterGroupResponse>, Status> {
        Err(Status::unimplemented("unregister_group is not faked"))
    }

    async fn update_subscription(
        &self,
        _request: Request<sluice_proto::v1::UpdateSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::Subscription>, Status> {
        Err(Status::unimplemented("update_subscription is not faked"))
    }

    async fn alter_topic(
        &self,
        _request: Request<sluice_proto::v1::AlterTopicRequest>,
    ) -> Result<Response<sluice_proto::v1::Topic>, Status> {
        Err(Status::unimplemented("alter_topic is not faked"))
    }

    async fn add_partitions(
        &self,
        _request: Request<sluice_proto::v1::AddPartitionsRequest>,
    ) -> Result<Response<sluice_proto::v1::Topic>, Status> {
        Err(Status::unimplemented("add_partitions is not faked"))
    }

    async fn watch_routes(
        &self,
        request: Request<WatchRoutesRequest>,
    ) -> Result<Response<RoutesStream>, Status> {
        // Like the real nameserver: the current routes, then every change
        // (polled every 10 ms).
        let topics = request.into_inner().topics;
        {
            let mut state = self.lock();
            state.watch_calls += 1;
            state.open_watches += 1;
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let server = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let routes = server.routes_of(&topics);
                if last.as_ref() != Some(&routes) {
                    last = Some(routes.clone());
                    if sender.send(Ok(routes)).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = sender.closed() => break,
                }
            }
            server.lock().open_watches -= 1;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn list_segments(
        &self,
        _request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        Err(Status::unimplemented("list_segments is not faked"))
    }

    async fn create_segment(
        &self,
        _request: Request<CreateSegmentRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented("create_segment is not faked"))
    }

    async fn close_segment(
        &self,
        _request: Request<CloseSegmentRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented("close_segment is not faked"))
    }

    async fn update_segment_replicas(
        &self,
        _request: Request<UpdateSegmentReplicasRequest>,
    ) -> Result<Response<SegmentInfo>, Status> {
        Err(Status::unimplemented(
            "update_segment_replicas is not faked",
        ))
    }

    async fn delete_segments(
        &self,
        _request: Request<DeleteSegmentsRequest>,
    ) -> Result<Response<DeleteSegmentsResponse>, Status> {
        Err(Status::unimplemented("delete_segments is not faked"))
    }

    async fn accept_data_loss(
        &self,
        _request: Request<sluice_proto::v1::AcceptDataLossRequest>,
    ) -> Result<Response<sluice_proto::v1::AcceptDataLossResponse>, Status> {
        Err(Status::unimplemented("accept_data_loss is not faked"))
    }

    async fn register_group(
        &self,
        _request: Request<RegisterGroupRequest>,
    ) -> Result<Response<RegisterGroupResponse>, Status> {
        Err(Status::unimplemented("register_group is not faked"))
    }

    async fn list_groups(
        &self,
        _request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Err(Status::unimplemented("list_groups is not faked"))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("cluster_status is not faked"))
    }

    async fn allocate_producer_id(
        &self,
        _request: Request<AllocateProducerIdRequest>,
    ) -> Result<Response<AllocateProducerIdResponse>, Status> {
        let mut state = self.lock();
        state.allocated_producer_ids += 1;
        Ok(Response::new(AllocateProducerIdResponse {
            producer_id: 1000 + state.allocated_producer_ids,
        }))
    }

    async fn get_producer_id_key(
        &self,
        _request: Request<sluice_proto::v1::GetProducerIdKeyRequest>,
    ) -> Result<Response<sluice_proto::v1::GetProducerIdKeyResponse>, Status> {
        Err(Status::unimplemented("get_producer_id_key is not faked"))
    }

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<Topic>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        if state.routes.contains_key(&request.name) {
            return Err(
                sluice_proto::SluiceError::new(ErrorCode::TopicAlreadyExists, "exists").into(),
            );
        }
        state.created.push(request.name.clone());
        Ok(Response::new(Topic {
            name: request.name,
            config: request.config,
            ..Topic::default()
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let state = self.lock();
        let mut names: Vec<&String> = state.routes.keys().collect();
        names.sort();
        Ok(Response::new(ListTopicsResponse {
            topics: names
                .into_iter()
                .map(|name| Topic {
                    name: name.clone(),
                    ..Topic::default()
                })
                .collect(),
        }))
    }

    async fn get_routes(
        &self,
        request: Request<GetRoutesRequest>,
    ) -> Result<Response<GetRoutesResponse>, Status> {
        let request = request.into_inner();
        self.lock().get_routes_calls += 1;
        Ok(Response::new(self.routes_of(&request.topics)))
    }

    async fn find_coordinator(
        &self,
        _request: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        let state = self.lock();
        Ok(Response::new(FindCoordinatorResponse {
            broker_id: "coordinator".into(),
            broker_address: state.coordinator.clone(),
            offsets_partition: 0,
        }))
    }

    /// Stores the subscription as given; the same settings again return
    /// it, other settings are a SUBSCRIPTION_CONFLICT (no defaults, no
    /// topic check, no validation: the real nameserver's are tested there).
    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let subscription = request
            .into_inner()
            .subscription
            .ok_or_else(|| Status::invalid_argument("no subscription"))?;
        let key = (subscription.topic.clone(), subscription.name.clone());
        let mut state = self.lock();
        if let Some(stored) = state.subscriptions.get(&key) {
            // Neither is a setting (as at the real nameserver).
            let same = Subscription {
                created_at_ms: stored.created_at_ms,
                start_offsets: stored.start_offsets.clone(),
                ..subscription
            };
            if &same == stored {
                return Ok(Response::new(stored.clone()));
            }
            return Err(sluice_proto::SluiceError::new(
                ErrorCode::SubscriptionConflict,
                "exists with other settings",
            )
            .into());
        }
        let stored = Subscription {
            created_at_ms: 1,
            ..subscription
        };
        state.subscriptions.insert(key, stored.clone());
        Ok(Response::new(stored))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let request = request.into_inner();
        self.lock()
            .subscriptions
            .get(&(request.topic, request.name))
            .cloned()
            .map(Response::new)
            .ok_or_else(|| {
                sluice_proto::SluiceError::new(ErrorCode::UnknownSubscription, "no such").into()
            })
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        let topic = request.into_inner().topic;
        let subscriptions = self
            .lock()
            .subscriptions
            .values()
            .filter(|subscription| subscription.topic == topic)
            .cloned()
            .collect();
        Ok(Response::new(ListSubscriptionsResponse { subscriptions }))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<DeleteSubscriptionResponse>, Status> {
        let request = request.into_inner();
        match self
            .lock()
            .subscriptions
            .remove(&(request.topic, request.name))
        {
            Some(_) => Ok(Response::new(DeleteSubscriptionResponse {})),
            None => Err(
                sluice_proto::SluiceError::new(ErrorCode::UnknownSubscription, "no such").into(),
            ),
        }
    }

    async fn create_acls(
        &self,
        _request: Request<sluice_proto::v1::CreateAclsRequest>,
    ) -> Result<Response<sluice_proto::v1::CreateAclsResponse>, Status> {
        Err(Status::unimplemented("the fake nameserver keeps no ACLs"))
    }

    async fn list_acls(
        &self,
        _request: Request<sluice_proto::v1::ListAclsRequest>,
    ) -> Result<Response<sluice_proto::v1::ListAclsResponse>, Status> {
        Err(Status::unimplemented("the fake nameserver keeps no ACLs"))
    }

    async fn delete_acls(
        &self,
        _request: Request<sluice_proto::v1::DeleteAclsRequest>,
    ) -> Result<Response<sluice_proto::v1::DeleteAclsResponse>, Status> {
        Err(Status::unimplemented("the fake nameserver keeps no ACLs"))
    }
}
