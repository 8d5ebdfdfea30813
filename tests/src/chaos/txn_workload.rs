//! The transactional workload of a chaos run (ADR 0016 §12), on its own
//! topic: transactional producers each writing transactions of a few
//! unique values over every partition, committing most and aborting every
//! `abort_every`-th on purpose, recording how each ended; a read-committed
//! reader running throughout; and the final read-committed drain.

use super::txn_history::{txn_value, TxnHistory, TxnId, TxnOutcome};
use sluice_client::{
    ClientConfig, ClientError, Consumer, ConsumerConfig, Isolation, Producer, ProducerConfig,
    Record, StartOffset,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Pause before creating a client again after a failure, in milliseconds.
const RECONNECT_BACKOFF_MS: u64 = 500;
/// How long the reader waits for a record before checking whether to
/// stop, in milliseconds.
const READER_POLL_MS: u64 = 200;
/// Longest the final drain runs, in milliseconds.
const DRAIN_MAX_MS: u64 = 60_000;
/// Quiet time that ends the drain once it read as many values as the
/// committed transactions wrote, in milliseconds.
const DRAIN_QUIET_AFTER_EXPECTED_MS: u64 = 1_000;

/// What the transactional workload does.
#[derive(Debug, Clone)]
pub struct TxnWorkloadConfig {
    pub topic: String,
    pub partitions: u32,
    pub producers: u32,
    /// Values per transaction (spread round-robin over the partitions).
    pub values_per_transaction: u32,
    /// Every this many transactions one is aborted on purpose (0: none).
    pub abort_every: u64,
    /// Pause between two transactions of one producer, in milliseconds.
    pub transaction_interval_ms: u64,
    /// Producer delivery timeout, in milliseconds.
    pub delivery_timeout_ms: u64,
    /// Producer transaction timeout, in milliseconds (at most the brokers'
    /// `[transactions] max_timeout_ms`).
    pub transaction_timeout_ms: u64,
}

impl Default for TxnWorkloadConfig {
    fn default() -> Self {
        Self {
            topic: "chaos-txn".to_string(),
            partitions: 3,
            producers: 2,
            values_per_transaction: 6,
            abort_every: 4,
            transaction_interval_ms: 50,
            delivery_timeout_ms: 20_000,
            transaction_timeout_ms: 30_000,
        }
    }
}

/// The running transactional workload.
pub struct TxnWorkload {
    producers_stop: Arc<AtomicBool>,
    reader_stop: Arc<AtomicBool>,
    producers: Vec<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl TxnWorkload {
    pub fn start(client: ClientConfig, config: TxnWorkloadConfig, history: TxnHistory) -> Self {
        let producers_stop = Arc::new(AtomicBool::new(false));
        let reader_stop = Arc::new(AtomicBool::new(false));
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
        let reader = tokio::spawn(read(client, config, history, reader_stop.clone()));
        Self {
            producers_stop,
            reader_stop,
            producers,
            reader: Some(reader),
        }
    }

    /// Stops the producers (each ends its transaction first) and then the
    /// reader.
    pub async fn stop(&mut self) {
        self.producers_stop.store(true, Ordering::SeqCst);
        for task in self.producers.drain(..) {
            if let Err(error) = task.await {
                tracing::error!(%error, "transactional producer task failed");
            }
        }
        self.reader_stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            if let Err(error) = reader.await {
                tracing::error!(%error, "read-committed reader task failed");
            }
        }
    }
}

fn producer_config(client: ClientConfig, config: &TxnWorkloadConfig, index: u32) -> ProducerConfig {
    ProducerConfig {
        client,
        linger_ms: 2,
        delivery_timeout_ms: config.delivery_timeout_ms,
        transactional_id: Some(format!("chaos-txn-{index}")),
        transaction_timeout_ms: config.transaction_timeout_ms,
        ..ProducerConfig::default()
    }
}

/// A producer of this workload, created again (fencing the old instance)
/// until it works or the run stops.
async fn connect(
    client: &ClientConfig,
    config: &TxnWorkloadConfig,
    index: u32,
    stop: &AtomicBool,
) -> Option<Producer> {
    loop {
        match Producer::new(producer_config(client.clone(), config, index)).await {
            Ok(producer) => return Some(producer),
            Err(error) => {
                tracing::warn!(producer = index, %error, "cannot create the transactional producer; retrying");
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
            }
        }
    }
}

async fn produce(
    index: u32,
    client: ClientConfig,
    config: TxnWorkloadConfig,
    history: TxnHistory,
    stop: Arc<AtomicBool>,
) {
    let mut producer = connect(&client, &config, index, &stop).await;
    let mut transaction = 0u64;
    while let Some(current) = producer.take() {
        if stop.load(Ordering::SeqCst) {
            let _ = current.close().await;
            return;
        }
        let txn = history.begin(index, transaction);
        let abort =
            config.abort_every > 0 && transaction % config.abort_every == config.abort_every - 1;
        let outcome = run_transaction(
            &current,
            &config,
            &history,
            txn,
            (index, transaction),
            abort,
        )
        .await;
        history.ended(txn, outcome);
        transaction += 1;
        producer = match outcome {
            TxnOutcome::Committed | TxnOutcome::Aborted => Some(current),
            // The instance is in an unknown or fenced state: a new one
            // fences it and aborts whatever it left open.
            TxnOutcome::Unknown | TxnOutcome::Open => {
                let _ = current.close().await;
                connect(&client, &config, index, &stop).await
            }
        };
        tokio::time::sleep(Duration::from_millis(config.transaction_interval_ms)).await;
    }
}

/// One transaction: begin, send, then commit or abort. `Open` when it
/// could not be ended (the producer is then replaced).
async fn run_transaction(
    producer: &Producer,
    config: &TxnWorkloadConfig,
    history: &TxnHistory,
    txn: TxnId,
    (index, transaction): (u32, u64),
    abort: bool,
) -> TxnOutcome {
    if let Err(error) = producer.begin_transaction() {
        tracing::warn!(producer = index, %error, "begin refused");
        return TxnOutcome::Open;
    }
    let mut sent_all = true;
    for i in 0..config.values_per_transaction {
        let value = txn_value(index, transaction, i);
        history.wrote(txn, value.clone());
        let record =
            Record::new(config.topic.clone(), value).with_partition(i % config.partitions.max(1));
        if let Err(error) = producer.enqueue(record).await {
            tracing::warn!(producer = index, %error, "enqueue refused; aborting");
            sent_all = false;
            break;
        }
    }
    if abort || !sent_all {
        return match producer.abort_transaction().await {
            Ok(()) => TxnOutcome::Aborted,
            // Commit was never called: it cannot commit, and the next
            // instance's InitProducerId aborts it.
            Err(error) => {
                tracing::warn!(producer = index, %error, "abort failed");
                TxnOutcome::Open
            }
        };
    }
    history.commit_called(txn);
    match producer.commit_transaction().await {
        Ok(()) => TxnOutcome::Committed,
        Err(ClientError::TransactionAbortable { reason }) => {
            tracing::warn!(producer = index, %reason, "commit refused as abortable");
            match producer.abort_transaction().await {
                Ok(()) => TxnOutcome::Aborted,
                Err(_) => TxnOutcome::Unknown,
            }
        }
        Err(error) => {
            tracing::warn!(producer = index, %error, "commit failed; outcome unknown");
            TxnOutcome::Unknown
        }
    }
}

fn reader_config(client: ClientConfig) -> ConsumerConfig {
    ConsumerConfig {
        client,
        group: None,
        isolation: Isolation::ReadCommitted,
        reset: StartOffset::Earliest,
        ..ConsumerConfig::default()
    }
}

fn assignment(config: &TxnWorkloadConfig) -> Vec<(String, u32, StartOffset)> {
    (0..config.partitions)
        .map(|partition| (config.topic.clone(), partition, StartOffset::Earliest))
        .collect()
}

/// Reads read-committed from the start of every partition until stopped,
/// recording each value with its time; after a failure it starts again
/// from the start (a re-read is not an anomaly: positions repeat).
async fn read(
    client: ClientConfig,
    config: TxnWorkloadConfig,
    history: TxnHistory,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut reader =
            match Consumer::assign(reader_config(client.clone()), assignment(&config)).await {
                Ok(reader) => reader,
                Err(error) => {
                    tracing::warn!(%error, "cannot start the read-committed reader; retrying");
                    tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
                    continue;
                }
            };
        while !stop.load(Ordering::SeqCst) {
            match reader
                .recv_timeout(Duration::from_millis(READER_POLL_MS))
                .await
            {
                Ok(Some(record)) => {
                    let value =
                        String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                            .into_owned();
                    history.read(record.partition, record.offset, value);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "read-committed reader failed; starting again");
                    break;
                }
            }
        }
        let _ = reader.close().await;
    }
}

/// The final read-committed drain: every value of every partition from
/// the start, once nothing new arrived for `idle` (for
/// [`DRAIN_QUIET_AFTER_EXPECTED_MS`] once `expected` values were read;
/// bounded by [`DRAIN_MAX_MS`]). Problems (a reader that cannot start or
/// fails) are returned beside the values.
pub async fn drain_committed(
    client: ClientConfig,
    config: &TxnWorkloadConfig,
    (expected, idle): (usize, Duration),
) -> (Vec<String>, Vec<String>) {
    let mut values = Vec::new();
    let mut problems = Vec::new();
    let mut reader = match Consumer::assign(reader_config(client), assignment(config)).await {
        Ok(reader) => reader,
        Err(error) => {
            problems.push(format!("cannot start the transactional drain: {error}"));
            return (values, problems);
        }
    };
    let deadline = Instant::now() + Duration::from_millis(DRAIN_MAX_MS);
    let mut last = Instant::now();
    // Once the committed values are all in, a short quiet time suffices
    // (the rest of the log is already there to read).
    let quiet = |read: usize| {
        if read >= expected {
            idle.min(Duration::from_millis(DRAIN_QUIET_AFTER_EXPECTED_MS))
        } else {
            idle
        }
    };
    while last.elapsed() < quiet(values.len()) {
        if Instant::now() >= deadline {
            problems.push(format!(
                "the transactional drain ran past {DRAIN_MAX_MS} ms"
            ));
            break;
        }
        match reader
            .recv_timeout(Duration::from_millis(READER_POLL_MS))
            .await
        {
            Ok(Some(record)) => {
                last = Instant::now();
                values.push(
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                        .into_owned(),
                );
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "transactional drain read failed");
                tokio::time::sleep(Duration::from_millis(READER_POLL_MS)).await;
            }
        }
    }
    let _ = reader.close().await;
    (values, problems)
}

/// Waits until no transaction holds any partition's LSO back (every
/// transaction the producers left open is ended by its coordinator within
/// its timeout), at most `bound`; a problem otherwise.
pub async fn wait_stable(
    client: ClientConfig,
    config: &TxnWorkloadConfig,
    bound: Duration,
) -> Option<String> {
    let deadline = Instant::now() + bound;
    let mut last = String::from("not asked yet");
    while Instant::now() < deadline {
        match sluice_client::Admin::connect(client.clone()).await {
            Ok(admin) => match admin.lso_lag(&config.topic).await {
                Ok(lags) if lags.iter().all(|lag| lag.lag_records == Some(0)) => return None,
                Ok(lags) => last = format!("{lags:?}"),
                Err(error) => last = error.to_string(),
            },
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
    }
    Some(format!(
        "{}: the LSO did not reach the high watermark within {} ms: {last}",
        config.topic,
        bound.as_millis()
    ))
}
