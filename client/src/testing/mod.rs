//! A fake in-process broker for unit tests of the producer and consumer
//! without real servers: ordered produce with injectable failures (that,
//! like the real broker, also fail the partition's requests behind them),
//! fetch from an in-memory log, list offsets, and a scripted group
//! coordinator, and a scripted `Subscribe` (one subscription, shared by
//! every stream: credit, acks with receipts, nacks, redelivery of what a
//! closed stream held, injected refusals and stream breaks); and a fake
//! nameserver (routes, coordinators, topics, subscriptions).
//!
//! `mod.rs` the fakes' state and the broker's helpers; `broker.rs` the
//! fake broker's gRPC service; `nameserver.rs` the fake nameserver.

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

mod broker;
mod nameserver;

pub(crate) use nameserver::FakeNameServer;

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
