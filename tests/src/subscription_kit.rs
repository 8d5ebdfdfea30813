//! What the subscription process tests share: numbered messages produced
//! and read back, subscriber settings, consumers that acknowledge or
//! "crash", and raw `Subscribe` streams for bad-input tests.

use crate::cluster::Cluster;
use futures::StreamExt;
use sluice_client::{Admin, ClientError, Message, Record, Subscriber, SubscriberConfig};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::subscribe_request::Request as ConsumerRequest;
use sluice_proto::v1::{InitialPosition, SubscribeOpen, SubscribeRequest, SubscriptionType};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Writes `count` messages `0..count` (value = decimal number) with the
/// given key function; returns when all are acknowledged.
pub async fn produce(
    cluster: &Cluster,
    topic: &str,
    count: u64,
    key: impl Fn(u64) -> Option<String>,
    decorate: impl Fn(u64, Record) -> Record,
) {
    let records = (0..count)
        .map(|value| {
            let mut record = Record::new(topic, value.to_string());
            if let Some(key) = key(value) {
                record = record.with_key(key);
            }
            decorate(value, record)
        })
        .collect();
    cluster.produce_acknowledged(records).await;
}

pub fn value_of(message: &Message) -> u64 {
    let value = message.value.as_ref().expect("a value");
    std::str::from_utf8(value)
        .expect("utf-8")
        .parse()
        .expect("a number")
}

pub fn subscriber_config(
    cluster: &Cluster,
    topic: &str,
    subscription: &str,
    kind: SubscriptionType,
) -> SubscriberConfig {
    SubscriberConfig {
        client: cluster.client_config(),
        subscription_type: kind,
        initial_position: InitialPosition::Earliest,
        // Longer than a consumer needs to work through its receiver queue
        // acknowledging one message at a time (each waits for its durable
        // receipt), so only crashes cause redeliveries here.
        ack_timeout_ms: 30_000,
        receiver_queue_size: 100,
        ..SubscriberConfig::new(topic, subscription)
    }
}

/// Receives and acknowledges until `count` distinct values were
/// acknowledged, each receive within 20 s (`what` says what is expected).
pub async fn acknowledge_distinct(
    subscriber: &Subscriber,
    count: usize,
    what: &str,
) -> HashSet<u64> {
    let mut values = HashSet::new();
    while values.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), subscriber.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out: {what} ({} of {count})", values.len()))
            .expect("recv");
        subscriber.ack(&message).await.expect("ack");
        values.insert(value_of(&message));
    }
    values
}

/// Acknowledged values with how often each was acknowledged.
pub type Acked = Arc<Mutex<HashMap<u64, u32>>>;

/// One consumer that acknowledges what it receives until `stop_after`
/// messages, then "crashes": drops the subscriber without acknowledging
/// what it still holds (its streams close; the broker redelivers). With
/// `leave_unacknowledged`, every seventh message is never acknowledged
/// (held when the consumer dies).
pub async fn crashing_worker(
    config: SubscriberConfig,
    acked: Acked,
    stop_after: usize,
    leave_unacknowledged: bool,
) {
    let subscriber = Subscriber::connect(config).await.expect("connect");
    let mut handled = 0usize;
    while handled < stop_after {
        let Ok(Some(message)) = subscriber.recv_timeout(Duration::from_secs(2)).await else {
            break;
        };
        handled += 1;
        if leave_unacknowledged && handled.is_multiple_of(7) {
            continue;
        }
        match subscriber.ack(&message).await {
            Ok(()) => {
                *acked
                    .lock()
                    .expect("lock")
                    .entry(value_of(&message))
                    .or_default() += 1
            }
            Err(ClientError::Server(error)) if error.code == ErrorCode::DeliveryExpired => {}
            Err(error) => panic!("ack failed: {error}"),
        }
    }
    drop(subscriber);
}

/// Opens a raw `Subscribe` stream to the owner of `topic`/0.
pub async fn raw_stream(
    cluster: &Cluster,
    first: SubscribeRequest,
) -> (
    tokio::sync::mpsc::Sender<SubscribeRequest>,
    tonic::Streaming<sluice_proto::v1::SubscribeResponse>,
) {
    let admin = Admin::connect(cluster.client_config())
        .await
        .expect("admin");
    let topic = match &first.request {
        Some(ConsumerRequest::Open(open)) => open.topic.clone(),
        _ => "raw".to_string(),
    };
    let address = admin
        .describe_topic(&topic)
        .await
        .ok()
        .and_then(|description| description.partitions.into_iter().next())
        .and_then(|partition| partition.route)
        .map(|route| route.broker_address)
        .unwrap_or_else(|| cluster.brokers[0].url().replace("http://", ""));
    let mut client = BrokerClient::new(cluster.channel(&address));
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    sender.send(first).await.expect("queue first request");
    let responses = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("stream starts")
        .into_inner();
    (sender, responses)
}

pub fn open_request(topic: &str, subscription: &str, permits: u32) -> SubscribeRequest {
    SubscribeRequest {
        request: Some(ConsumerRequest::Open(SubscribeOpen {
            topic: topic.into(),
            partition: 0,
            subscription: subscription.into(),
            consumer_name: "raw".into(),
            priority: 0,
            permits,
        })),
    }
}

pub async fn stream_error(
    responses: &mut tonic::Streaming<sluice_proto::v1::SubscribeResponse>,
) -> SluiceError {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), responses.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => return SluiceError::from_status(&status),
            None => panic!("the stream ended without an error"),
        }
    }
}
