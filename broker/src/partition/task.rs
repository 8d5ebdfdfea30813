//! The task of one partition: takes it over (fencing and closing what
//! the previous owner left open, opening a new segment), replays the
//! offsets log and rebuilds idempotent producers' state, serves appends
//! through the pipeline, and after a roll goes on with the prepared
//! segment or, after a failure, takes over again with backoff (a new
//! generation: appends queued behind the failure fail).

use super::serve::{serve, ServeEnd};
use super::takeover::{close_rolled_segment, open_segment, OpenSegment};
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

pub(super) async fn run(
    shared: Arc<Shared>,
    partition: Arc<Partition>,
    mut jobs: mpsc::UnboundedReceiver<AppendJob>,
) {
    let mut stopped = partition.stopped.subscribe();
    let mut backoff = Backoff::new(shared.config.replication.takeover_backoff_max_ms);
    let mut replayed = !partition.is_offsets_topic();
    // Stores that just failed this partition: kept out of the next ensemble.
    let mut excluded: Vec<String> = Vec::new();
    // Set while rolling: when appends stopped and when the last completed.
    let mut roll_pause: Option<(Instant, Instant)> = None;
    // The next segment when a roll prepared it: served without a takeover.
    let mut next_segment: Option<OpenSegment> = None;
    loop {
        if *stopped.borrow() {
            break;
        }
        if let Some(segment) = next_segment.take() {
            if let Some((stopped_at, drained_at)) = roll_pause.take() {
                tracing::debug!(
                    partition = %partition.key,
                    segment = segment.info.segment_id,
                    drain_ms = (drained_at - stopped_at).as_secs_f64() * 1000.0,
                    pause_ms = stopped_at.elapsed().as_secs_f64() * 1000.0,
                    "rolled to a segment prepared in advance"
                );
            }
            match serve(&shared, &partition, segment, &mut jobs).await {
                ServeEnd::Stopped => break,
                end => {
                    handle_end(
                        &shared,
                        &partition,
                        end,
                        &mut jobs,
                        &mut excluded,
                        &mut roll_pause,
                        &mut next_segment,
                    );
                    continue;
                }
            }
        }
        let opened = tokio::select! {
            result = open_segment(&shared, &partition, &mut excluded) => result,
            _ = crate::wait_until_set(&mut stopped) => break,
        };
        let mut outcome = opened;
        if outcome.is_ok() && !replayed {
            let loaded = tokio::select! {
                result = shared.coordinator.load_partition(&partition) => result,
                _ = crate::wait_until_set(&mut stopped) => break,
            };
            match loaded {
                Ok(()) => replayed = true,
                Err(error) => outcome = Err(error),
            }
        }
        if outcome.is_ok() {
            // After a takeover or a failure (a no-op after a roll).
            let rebuilt = tokio::select! {
                result = super::takeover::rebuild_producer_states(&shared, &partition) => result,
                _ = crate::wait_until_set(&mut stopped) => break,
            };
            if let Err(error) = rebuilt {
                outcome = Err(error);
            }
        }
        let segment = match outcome {
            Ok(segment) => segment,
            Err(error) => {
                tracing::warn!(partition = %partition.key, epoch = partition.epoch, %error, "takeover failed; retrying");
                // A failed roll: appends queued behind it fail, so later
                // ones must not be accepted under the same generation.
                partition.status.send_modify(|status| {
                    if status.phase == Phase::Serving {
                        status.phase = Phase::Recovering;
                        status.generation += 1;
                    }
                });
                drain_queue(&mut jobs, &error);
                let delay = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = crate::wait_until_set(&mut stopped) => break,
                }
            }
        };
        if let Some((stopped_at, drained_at)) = roll_pause.take() {
            tracing::info!(
                partition = %partition.key,
                segment = segment.info.segment_id,
                drain_ms = (drained_at - stopped_at).as_secs_f64() * 1000.0,
                pause_ms = stopped_at.elapsed().as_secs_f64() * 1000.0,
                "rolled through takeover (the next segment could not be prepared)"
            );
        }
        tracing::info!(partition = %partition.key, epoch = partition.epoch, segment = segment.info.segment_id, base_offset = segment.info.base_offset, "serving");
        partition
            .status
            .send_modify(|status| status.phase = Phase::Serving);
        backoff.reset();
        excluded.clear();
        match serve(&shared, &partition, segment, &mut jobs).await {
            ServeEnd::Stopped => break,
            end => handle_end(
                &shared,
                &partition,
                end,
                &mut jobs,
                &mut excluded,
                &mut roll_pause,
                &mut next_segment,
            ),
        }
    }
    partition
        .status
        .send_modify(|status| status.phase = Phase::Stopped);
    jobs.close();
    drain_queue(&mut jobs, &partition.not_owner());
    tracing::info!(partition = %partition.key, epoch = partition.epoch, "stopped serving");
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
    excluded: &mut Vec<String>,
    roll_pause: &mut Option<(Instant, Instant)>,
    next_segment: &mut Option<OpenSegment>,
) {
    match end {
        ServeEnd::Stopped => {}
        ServeEnd::Roll {
            failed_stores,
            stopped_at,
            drained_at,
            prepared,
        } => {
            *roll_pause = Some((stopped_at, drained_at));
            if !failed_stores.is_empty() {
                tracing::warn!(partition = %partition.key, ?failed_stores, "replicas failed; moving to a new ensemble");
            }
            *excluded = failed_stores;
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
                *next_segment = Some(next);
            }
        }
        ServeEnd::Failed {
            error,
            failed_stores,
        } => {
            *excluded = failed_stores;
            tracing::warn!(partition = %partition.key, %error, ?excluded, "append pipeline failed; recovering");
            partition.status.send_modify(|status| {
                status.phase = Phase::Recovering;
                status.generation += 1;
            });
            drain_queue(jobs, &error);
        }
    }
}
