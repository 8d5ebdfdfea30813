//! A fake in-process broker for unit tests of the producer and consumer
//! without real servers: ordered produce with injectable failures (that,
//! like the real broker, also fail the partition's requests behind them),
//! fetch from an in-memory log, list offsets, and a scripted group
//! coordinator.

use bytes::Bytes;
use sluice_proto::batch::{assign, BatchIter};
use sluice_proto::v1::broker_server::{Broker, BrokerServer};
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
    /// Produce requests answered with an error.
    pub failed_requests: u64,
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
}

#[derive(Clone, Default)]
pub(crate) struct FakeBroker {
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeBroker {
    pub fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .expect("fake broker state lock (test code)")
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
        let number = state.produce_requests;
        let key = (request.topic.clone(), request.partition);
        let injected = state.fail_produce.get(&number).copied();
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
                if wanted.offset > end {
                    fetched.error = ErrorCode::OffsetOutOfRange as i32;
                } else {
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
                        if !bytes.is_empty()
                            && bytes.len() + batch.len() > wanted.max_bytes as usize
                        {
                            break;
                        }
                        bytes.extend_from_slice(batch);
                    }
                    any |= !bytes.is_empty();
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
        let end = *self
            .lock()
            .next_offset
            .get(&(request.topic, request.partition))
            .unwrap_or(&0);
        let offset = if request.spec == OffsetSpec::Latest as i32 {
            end
        } else {
            0
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            log_start_offset: 0,
            high_watermark: end,
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
}
