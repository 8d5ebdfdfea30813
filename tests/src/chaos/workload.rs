//! The workload of a chaos run, written with the SDK: producers sending
//! unique values and logging every attempt's outcome, group members
//! consuming (and auto-committing) while faults happen, an observer
//! recording the group's committed offsets at the coordinator, and the
//! final drain of every partition from offset 0.

use super::checker::ReadRecord;
use super::history::{value_of, History, Outcome};
use sluice_client::{
    Admin, ClientConfig, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, Record,
    StartOffset,
};
use sluice_proto::ErrorCode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};

/// Pause before retrying to create a client after a failure, in
/// milliseconds.
const RECONNECT_BACKOFF_MS: u64 = 500;

/// How long a group member waits for a record before checking whether to
/// stop, in milliseconds.
const MEMBER_POLL_MS: u64 = 200;

/// What the workload does.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub topic: String,
    pub producers: u32,
    /// Distinct keys per producer; keys hash over the partitions.
    pub keys_per_producer: u64,
    /// Pause between two sends of one producer, in milliseconds.
    pub produce_interval_ms: u64,
    /// Producer delivery timeout, in milliseconds: the longest a write
    /// stays open before it ends as unknown.
    pub delivery_timeout_ms: u64,
    pub group: String,
    pub group_members: u32,
    /// Each member leaves and rejoins after about this long (forcing
    /// rebalances during faults), in milliseconds; 0 keeps members.
    pub member_churn_ms: u64,
    pub auto_commit_interval_ms: u64,
    pub session_timeout_ms: u32,
    /// Interval between observations of the group's committed offsets, in
    /// milliseconds.
    pub observe_interval_ms: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            topic: "chaos".to_string(),
            producers: 3,
            keys_per_producer: 16,
            produce_interval_ms: 3,
            delivery_timeout_ms: 20_000,
            group: "chaos-group".to_string(),
            group_members: 2,
            member_churn_ms: 9_000,
            auto_commit_interval_ms: 200,
            session_timeout_ms: 6_000,
            observe_interval_ms: 250,
        }
    }
}

/// Outcome of a record whose `enqueue` failed: it was never put in a batch,
/// so it was definitely not written.
pub fn classify_enqueue_error(error: &ClientError) -> Outcome {
    Outcome::Fail {
        error: format!("not enqueued: {error}"),
    }
}

/// Outcome of a record whose delivery failed. Only a validation error is a
/// definite failure: the broker checks a batch before writing it, and the
/// same batch fails the same check on every attempt, so no earlier attempt
/// can have been written. Everything else (timeouts, unavailable, not owner
/// after a resend, a broken connection, the producer closing) may follow an
/// attempt that was written: unknown.
pub fn classify_delivery_error(error: &ClientError) -> Outcome {
    match error {
        ClientError::Server(server)
            if matches!(
                server.code,
                ErrorCode::TooLarge | ErrorCode::CorruptBatch | ErrorCode::InvalidArgument
            ) =>
        {
            Outcome::Fail {
                error: error.to_string(),
            }
        }
        _ => Outcome::Info {
            error: error.to_string(),
        },
    }
}

/// The running workload.
pub struct Workload {
    history: History,
    producers_stop: Arc<AtomicBool>,
    consumers_stop: Arc<AtomicBool>,
    producers: Vec<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
    config: WorkloadConfig,
    client: ClientConfig,
}

impl Workload {
    /// Starts producers, group members and the commit observer.
    pub fn start(client: ClientConfig, config: WorkloadConfig, history: History) -> Self {
        let producers_stop = Arc::new(AtomicBool::new(false));
        let consumers_stop = Arc::new(AtomicBool::new(false));
        let producers = (0..config.producers)
            .map(|index| {
                tokio::spawn(produce(
                    index,
                    client.clone(),
                    config.clone(),
                    history.clone(),
                    producers_stop.clone(),
                ))
            })
            .collect();
        let mut consumers: Vec<JoinHandle<()>> = (0..config.group_members)
            .map(|index| {
                tokio::spawn(consume(
                    index,
                    client.clone(),
                    config.clone(),
                    history.clone(),
                    consumers_stop.clone(),
                ))
            })
            .collect();
        if config.group_members > 0 {
            consumers.push(tokio::spawn(observe_commits(
                client.clone(),
                config.clone(),
                history.clone(),
                consumers_stop.clone(),
            )));
        }
        Self {
            history,
            producers_stop,
            consumers_stop,
            producers,
            consumers,
            config,
            client,
        }
    }

    /// Stops sending and waits until every sent record has an outcome
    /// (bounded by the delivery timeout).
    pub async fn stop_producers(&mut self) {
        self.producers_stop.store(true, Ordering::SeqCst);
        for task in self.producers.drain(..) {
            if let Err(error) = task.await {
                tracing::error!(%error, "producer task failed");
            }
        }
    }

    /// Stops the group members (they commit and leave) and takes a last
    /// observation of the committed offsets.
    pub async fn stop_consumers(&mut self) {
        self.consumers_stop.store(true, Ordering::SeqCst);
        for task in self.consumers.drain(..) {
            if let Err(error) = task.await {
                tracing::error!(%error, "consumer task failed");
            }
        }
        if self.config.group_members == 0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if observe_once(&self.client, &self.config, &self.history).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
        }
        tracing::warn!("no final observation of the group's committed offsets");
    }
}

async fn produce(
    index: u32,
    client: ClientConfig,
    config: WorkloadConfig,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let producer_config = ProducerConfig {
        client,
        linger_ms: 2,
        delivery_timeout_ms: config.delivery_timeout_ms,
        ..ProducerConfig::default()
    };
    let producer = loop {
        match Producer::new(producer_config.clone()).await {
            Ok(producer) => break producer,
            Err(error) => {
                tracing::warn!(producer = index, %error, "cannot create producer; retrying");
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
            }
        }
    };
    let mut pending = JoinSet::new();
    let mut ticker =
        tokio::time::interval(Duration::from_millis(config.produce_interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        let id = history.invoke(index, sequence);
        let key = format!(
            "p{index}-key-{}",
            sequence % config.keys_per_producer.max(1)
        );
        let record = Record::new(config.topic.clone(), value_of(index, sequence)).with_key(key);
        match producer.enqueue(record).await {
            Ok(delivery) => {
                let history = history.clone();
                pending.spawn(async move {
                    let outcome = match delivery.await {
                        Ok(metadata) => Outcome::Ok {
                            partition: metadata.partition,
                            offset: metadata.offset,
                        },
                        Err(error) => classify_delivery_error(&error),
                    };
                    history.complete(id, outcome);
                });
            }
            Err(error) => history.complete(id, classify_enqueue_error(&error)),
        }
        sequence += 1;
        while pending.try_join_next().is_some() {}
    }
    while pending.join_next().await.is_some() {}
    if let Err(error) = producer.close().await {
        tracing::warn!(producer = index, %error, "producer close failed");
    }
}

async fn consume(
    index: u32,
    client: ClientConfig,
    config: WorkloadConfig,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let consumer_config = ConsumerConfig {
        client,
        group: Some(config.group.clone()),
        auto_commit: true,
        auto_commit_interval_ms: config.auto_commit_interval_ms,
        session_timeout_ms: config.session_timeout_ms,
        reset: StartOffset::Earliest,
        ..ConsumerConfig::default()
    };
    // Members churn at different paces so that rebalances do not line up.
    let session = (config.member_churn_ms > 0).then(|| {
        Duration::from_millis(
            config.member_churn_ms + u64::from(index) * config.member_churn_ms / 2,
        )
    });
    while !stop.load(Ordering::SeqCst) {
        let mut consumer =
            match Consumer::subscribe(consumer_config.clone(), &[&config.topic]).await {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(member = index, %error, "cannot join the group; retrying");
                    tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
                    continue;
                }
            };
        let joined = Instant::now();
        while !stop.load(Ordering::SeqCst)
            && session.is_none_or(|session| joined.elapsed() < session)
        {
            match consumer
                .recv_timeout(Duration::from_millis(MEMBER_POLL_MS))
                .await
            {
                Ok(Some(record)) => {
                    let value =
                        String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                            .into_owned();
                    history.delivered(index, record.partition, record.offset, value);
                }
                Ok(None) => {}
                Err(ClientError::Closed) => break,
                Err(error) => {
                    tracing::warn!(member = index, %error, "group member recv failed");
                    tokio::time::sleep(Duration::from_millis(MEMBER_POLL_MS)).await;
                }
            }
        }
        if let Err(error) = consumer.close().await {
            tracing::warn!(member = index, %error, "group member close failed");
        }
    }
}

/// Records the committed offsets the coordinator reports; false when it
/// could not be asked.
async fn observe_once(client: &ClientConfig, config: &WorkloadConfig, history: &History) -> bool {
    let Ok(admin) = Admin::connect(client.clone()).await else {
        return false;
    };
    match admin.describe_group(&config.group).await {
        Ok(description) => {
            for lag in description.lag {
                if lag.topic == config.topic {
                    let committed = u64::try_from(lag.committed_offset).ok();
                    history.commit_observed(lag.partition, committed);
                }
            }
            true
        }
        Err(error) => {
            tracing::debug!(%error, "describe group failed");
            false
        }
    }
}

async fn observe_commits(
    client: ClientConfig,
    config: WorkloadConfig,
    history: History,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        observe_once(&client, &config, &history).await;
        tokio::time::sleep(Duration::from_millis(config.observe_interval_ms)).await;
    }
}

/// What the final drain read.
#[derive(Debug, Default)]
pub struct Drained {
    pub records: BTreeMap<u32, Vec<ReadRecord>>,
    /// End of each partition's log before the drain started.
    pub high_watermarks: BTreeMap<u32, u64>,
    /// Anything that kept the drain from being complete.
    pub problems: Vec<String>,
}

/// Reads every partition from offset 0 up to the end it had when the drain
/// started (waiting at most `idle_timeout` for a next record).
pub async fn drain(
    client: ClientConfig,
    topic: &str,
    partitions: u32,
    idle_timeout: Duration,
) -> Drained {
    let mut drained = Drained::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for partition in 0..partitions {
        loop {
            let answer = match Admin::connect(client.clone()).await {
                Ok(admin) => {
                    admin
                        .list_offsets(topic, partition, sluice_proto::v1::OffsetSpec::Latest, 0)
                        .await
                }
                Err(error) => Err(error),
            };
            match answer {
                Ok(offsets) => {
                    drained
                        .high_watermarks
                        .insert(partition, offsets.high_watermark);
                    break;
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(partition, %error, "list offsets failed; retrying");
                    tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
                }
                Err(error) => {
                    drained
                        .problems
                        .push(format!("partition {partition}: no high watermark: {error}"));
                    break;
                }
            }
        }
    }
    let assignment = (0..partitions)
        .map(|partition| (topic.to_string(), partition, StartOffset::Earliest))
        .collect();
    let mut reader = match Consumer::assign(
        ConsumerConfig {
            client,
            group: None,
            ..ConsumerConfig::default()
        },
        assignment,
    )
    .await
    {
        Ok(reader) => reader,
        Err(error) => {
            drained
                .problems
                .push(format!("cannot start the drain: {error}"));
            return drained;
        }
    };
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let complete = |next: &BTreeMap<u32, u64>, high: &BTreeMap<u32, u64>| {
        high.iter()
            .all(|(partition, end)| *end == 0 || next.get(partition).is_some_and(|at| at >= end))
    };
    let mut last_record = Instant::now();
    while !complete(&next, &drained.high_watermarks) {
        if last_record.elapsed() > idle_timeout {
            drained.problems.push(format!(
                "drain stopped: nothing read for {} ms (read up to {next:?}, ends {:?})",
                idle_timeout.as_millis(),
                drained.high_watermarks
            ));
            break;
        }
        match reader.recv_timeout(Duration::from_secs(1)).await {
            Ok(Some(record)) => {
                last_record = Instant::now();
                let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                    .into_owned();
                let at = next.entry(record.partition).or_default();
                *at = (*at).max(record.offset + 1);
                drained
                    .records
                    .entry(record.partition)
                    .or_default()
                    .push(ReadRecord {
                        offset: record.offset,
                        value,
                    });
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "drain read failed");
                if matches!(error, ClientError::Closed) {
                    drained.problems.push(format!("drain: {error}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(MEMBER_POLL_MS)).await;
            }
        }
    }
    if let Err(error) = reader.close().await {
        tracing::warn!(%error, "closing the drain reader failed");
    }
    drained
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::SluiceError;

    #[test]
    fn only_validation_errors_are_definite_failures() {
        for code in [
            ErrorCode::TooLarge,
            ErrorCode::CorruptBatch,
            ErrorCode::InvalidArgument,
        ] {
            let error = ClientError::Server(SluiceError::new(code, "rejected"));
            assert!(
                matches!(classify_delivery_error(&error), Outcome::Fail { .. }),
                "{code:?}"
            );
        }
        for error in [
            ClientError::Server(SluiceError::new(ErrorCode::NotOwner, "moved")),
            ClientError::Server(SluiceError::new(ErrorCode::Unavailable, "down")),
            ClientError::Server(SluiceError::new(ErrorCode::Fenced, "fenced")),
            ClientError::Server(SluiceError::new(ErrorCode::Internal, "?")),
            ClientError::Timeout {
                what: "delivery".into(),
                timeout_ms: 1,
            },
            ClientError::Transport {
                address: "a".into(),
                message: "reset".into(),
            },
            ClientError::Closed,
            ClientError::InvalidArgument("after a resend".into()),
        ] {
            assert!(
                matches!(classify_delivery_error(&error), Outcome::Info { .. }),
                "{error}"
            );
        }
        assert!(matches!(
            classify_enqueue_error(&ClientError::Closed),
            Outcome::Fail { .. }
        ));
    }
}
