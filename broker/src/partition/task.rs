//! The task of one partition: takes it over (fencing and closing what
//! the previous owner left open, opening a new segment), replays the
//! offsets log and rebuilds idempotent producers' state, serves appends
//! through the pipeline, and after a roll goes on with the prepared
//! segment or, after a failure, takes over again with backoff (a new
//! generation: appends queued behind the failure fail).

use super::serve::{serve, ServeEnd};
use super::takeover::{close_rolled_segment, open_segment, OpenSegment};
use super::txn_io::{self, TxnIo};
use super::{AppendJob, Partition, Phase};
use crate::error::BrokerError;
use crate::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Exponential backoff between takeover attempts.
pub(super) struct Backoff {
    current_ms: u64,
    max_ms: u64,
}

impl Backoff {
    const INITIAL_MS: u64 = 50;

    pub fn new(max_ms: u64) -> Self {
        Self {
            current_ms: Self::INITIAL_MS,
            max_ms: max_ms.max(Self::INITIAL_MS),
        }
    }

    pub fn next(&mut self) -> Duration {
        let delay = self.current_ms;
        self.current_ms = (self.current_ms * 2).min(self.max_ms);
        Duration::from_millis(delay)
    }

    fn reset(&mut self) {
        self.current_ms = Self::INITIAL_MS;
    }
}

fn drain_queue(jobs: &mut mpsc::UnboundedReceiver<AppendJob>, error: &BrokerError) {
    while let Ok(job) = jobs.try_recv() {
        job.fail(error.clone());
    }
}

/// What the task carries from one segment to the next.
struct Carried {
    backoff: Backoff,
    /// The internal log was replayed into its coordinator (offsets and
    /// transaction-log partitions only; true from the start for others).
    replayed: bool,
    /// Stores that just failed this partition: kept out of the next ensemble.
    excluded: Vec<String>,
    /// Set while rolling: when appends stopped and when the last completed.
    roll_pause: Option<(Instant, Instant)>,
    /// The next segment when a roll prepared it: served without a takeover.
    next_segment: Option<OpenSegment>,
    /// Transaction verifications in flight and the batches they released
    /// (ADR 0016): they outlive a roll.
    txn: TxnIo,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    partition: Arc<Partition>,
    mut jobs: mpsc::UnboundedReceiver<AppendJob>,
) {
    let mut stopped = partition.stopped.subscribe();
    let mut carried = Carried {
        backoff: Backoff::new(shared.config.replication.takeover_backoff_max_ms),
        replayed: !partition.is_offsets_topic() && !partition.is_transaction_log(),
        excluded: Vec::new(),
        roll_pause: None,
        next_segment: None,
        txn: TxnIo::default(),
    };
    loop {
        if *stopped.borrow() {
            break;
        }
        let segment = match carried.next_segment.take() {
            Some(segment) => {
                log_roll(&partition, &segment, carried.roll_pause.take(), true);
                segment
            }
            None => {
                let taken = tokio::select! {
                    result = take_over(&shared, &partition, &mut carried) => result,
                    _ = crate::wait_until_set(&mut stopped) => break,
                };
                match taken {
                    Ok(segment) => segment,
                    Err(error) => {
                        report_offline(&partition, &error);
                        fail_generation(&partition, &mut jobs, &error);
                        let delay = carried.backoff.next();
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = crate::wait_until_set(&mut stopped) => break,
                        }
                    }
                }
            }
        };
        match serve(&shared, &partition, segment, &mut jobs, &mut carried.txn).await {
            ServeEnd::Stopped => break,
            end => handle_end(&shared, &partition, end, &mut jobs, &mut carried),
        }
    }
    partition
        .status
        .send_modify(|status| status.phase = Phase::Stopped);
    jobs.close();
    drain_queue(&mut jobs, &partition.not_owner());
    carried.txn.fail_all(&partition.not_owner());
    txn_io::reset(&partition, &partition.not_owner());
    tracing::info!(partition = %partition.key, epoch = partition.epoch, "stopped serving");
}

/// Takeover (also after a failure, or a roll whose next segment could not
/// be prepared): fences and closes what is open and opens a new segment,
/// replays the offsets log once, rebuilds the idempotent producers' state
/// (a no-op after a roll); then the partition serves.
async fn take_over(
    shared: &Arc<Shared>,
    partition: &Arc<Partition>,
    carried: &mut Carried,
) -> Result<OpenSegment, BrokerError> {
    // Timed in parts (waiting for a turn; fence, recover, close and open;
    // offsets replay; producer state) so failover costs can be read from
    // the log (ADR 0014).
    let started = Instant::now();
    let _turn = shared.takeovers.turn().await;
    let queued_ms = started.elapsed().as_millis() as u64;
    let segment = open_segment(shared, partition, &mut carried.excluded).await?;
    let segment_ms = (started.elapsed().as_millis() as u64).saturating_sub(queued_ms);
    if !carried.replayed {
        if partition.is_transaction_log() {
            shared.transactions.load_partition(partition).await?;
            // Finishes decided transactions and aborts open ones once the
            // partition serves (ADR 0016 §2.3).
            tokio::spawn(crate::transaction::coordinator::recover(
                shared.clone(),
                partition.clone(),
            ));
        } else {
            shared.coordinator.load_partition(partition).await?;
        }
        carried.replayed = true;
    }
    let replayed_ms = (started.elapsed().as_millis() as u64).saturating_sub(queued_ms);
    super::takeover::rebuild_partition_state(shared, partition).await?;
    let total_ms = started.elapsed().as_millis() as u64;
    let worked_ms = total_ms.saturating_sub(queued_ms);
    log_roll(partition, &segment, carried.roll_pause.take(), false);
    tracing::info!(
        partition = %partition.key,
        epoch = partition.epoch,
        segment = segment.info.segment_id,
        base_offset = segment.info.base_offset,
        segment_ms,
        offsets_replay_ms = replayed_ms.saturating_sub(segment_ms),
        producer_state_ms = worked_ms.saturating_sub(replayed_ms),
        queued_ms,
        total_ms,
        "serving"
    );
    partition.status.send_modify(|status| {
        status.phase = Phase::Serving;
        status.offline = None;
    });
    carried.backoff.reset();
    carried.excluded.clear();
    Ok(segment)
}

/// Logs a failed takeover; one that found the partition damaged on every
/// copy marks it offline (reported to the nameserver, answered to
/// producers) until a takeover succeeds.
fn report_offline(partition: &Partition, error: &BrokerError) {
    let BrokerError::PartitionOffline(reason) = error else {
        tracing::warn!(partition = %partition.key, epoch = partition.epoch, %error, "takeover failed; retrying");
        return;
    };
    let first = partition.status().offline.as_deref() != Some(reason.as_str());
    if first {
        tracing::error!(partition = %partition.key, epoch = partition.epoch, %reason, "partition offline: an operator must decide");
    }
    partition
        .status
        .send_modify(|status| status.offline = Some(reason.clone()));
}

/// After a roll: how long appends paused, and how the next segment came.
fn log_roll(
    partition: &Partition,
    segment: &OpenSegment,
    roll_pause: Option<(Instant, Instant)>,
    prepared: bool,
) {
    let Some((stopped_at, drained_at)) = roll_pause else {
        return;
    };
    let drain_ms = (drained_at - stopped_at).as_secs_f64() * 1000.0;
    let pause_ms = stopped_at.elapsed().as_secs_f64() * 1000.0;
    let segment_id = segment.info.segment_id;
    if prepared {
        tracing::debug!(partition = %partition.key, segment = segment_id, drain_ms, pause_ms, "rolled to a segment prepared in advance");
    } else {
        tracing::info!(partition = %partition.key, segment = segment_id, drain_ms, pause_ms, "rolled through takeover (the next segment could not be prepared)");
    }
}

/// A failed takeover or pipeline: appends queued behind the failure fail,
/// and later ones are not accepted under the same generation.
fn fail_generation(
    partition: &Partition,
    jobs: &mut mpsc::UnboundedReceiver<AppendJob>,
    error: &BrokerError,
) {
    partition.status.send_modify(|status| {
        if status.phase == Phase::Serving {
            status.phase = Phase::Recovering;
            status.generation += 1;
        }
    });
    drain_queue(jobs, error);
}

/// What the pipeline task does after [`serve`] returned anything but
/// `Stopped`: a roll with a prepared segment goes on with it at once and
/// closes the old one in the background; any other roll, or a failure,
/// goes through takeover.
fn handle_end(
    shared: &Arc<Shared>,
    partition: &Arc<Partition>,
    end: ServeEnd,
    jobs: &mut mpsc::UnboundedReceiver<AppendJob>,
    carried: &mut Carried,
) {
    match end {
        ServeEnd::Stopped => {}
        ServeEnd::Roll {
            failed_stores,
            stopped_at,
            drained_at,
            prepared,
        } => {
            carried.roll_pause = Some((stopped_at, drained_at));
            if !failed_stores.is_empty() {
                tracing::warn!(partition = %partition.key, ?failed_stores, "replicas failed; moving to a new ensemble");
            }
            carried.excluded = failed_stores;
            if let Some(prepared) = prepared {
                let (next, rolled, end_offset) = *prepared;
                let mut segments = partition.segments();
                segments.push(next.info.clone());
                partition.set_segments(segments);
                tokio::spawn(close_rolled_segment(
                    shared.clone(),
                    partition.clone(),
                    rolled,
                    end_offset,
                ));
                carried.next_segment = Some(next);
            }
        }
        ServeEnd::Failed {
            error,
            failed_stores,
        } => {
            tracing::warn!(partition = %partition.key, %error, excluded = ?failed_stores, "append pipeline failed; recovering");
            carried.excluded = failed_stores;
            // Unlike a failed takeover, always a new generation: the
            // partition was serving.
            partition.status.send_modify(|status| {
                status.phase = Phase::Recovering;
                status.generation += 1;
            });
            drain_queue(jobs, &error);
            carried.txn.fail_all(&error);
        }
    }
}
