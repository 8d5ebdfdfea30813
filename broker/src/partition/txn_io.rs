//! The IO edge of a partition's transactions (ADR 0016 §3.2–3.6): admits
//! data and markers into the append pipeline by the rules of the pure
//! [`PartitionTransactions`](super::transactions::PartitionTransactions),
//! runs the verifications with the transaction coordinator (through
//! `Shared::txn_verifier`) and releases the batches held behind them,
//! installs durable markers and the last stable offset, and rebuilds the
//! state from the log after a takeover.
//!
//! Released batches go into the pipeline before any newly queued append
//! (a producer's later batch must not overtake its held ones), and
//! verifications and released batches outlive a roll: [`TxnIo`] belongs
//! to the partition task, not to one segment's serve loop.

use super::transactions::{DataVerdict, MarkerVerdict, Refusal};
use super::{AppendJob, AppendOutcome, JobKind, Partition};
use crate::error::BrokerError;
use crate::txn_verifier::Verification;
use crate::Shared;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use sluice_proto::batch::control::{self, ControlRecord};
use sluice_proto::batch::{BatchHeader, BatchIter};
use sluice_proto::ErrorCode;
use std::collections::VecDeque;
use std::time::Duration;

/// A verification's outcome: producer id, epoch, the coordinator's answer.
type Answer = (i64, i16, Result<(), Refusal>);

/// Verifications in flight and batches they released, owned by the
/// partition task.
#[derive(Default)]
pub(super) struct TxnIo {
    verifications: FuturesUnordered<BoxFuture<'static, Answer>>,
    released: VecDeque<AppendJob>,
}

impl TxnIo {
    pub fn has_verifications(&self) -> bool {
        !self.verifications.is_empty()
    }

    /// The next verification answer; pends while there is none.
    pub async fn next_answer(&mut self) -> Answer {
        match self.verifications.next().await {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    pub fn has_released(&self) -> bool {
        !self.released.is_empty()
    }

    pub fn take_released(&mut self) -> Option<AppendJob> {
        self.released.pop_front()
    }

    /// The pipeline ended (failure or stop): released batches fail, and
    /// answers still to come are dropped (the state is reset and its held
    /// batches failed by the rebuild or the stop).
    pub fn fail_all(&mut self, error: &BrokerError) {
        self.verifications = FuturesUnordered::new();
        for job in self.released.drain(..) {
            job.fail(error.clone());
        }
    }
}

/// The broker error a refusal travels as.
pub(super) fn refusal_error(refusal: Refusal) -> BrokerError {
    match refusal {
        Refusal::Abortable(reason) => BrokerError::TransactionAbortable(reason),
        Refusal::Concurrent(reason) => BrokerError::ConcurrentTransactions(reason),
        Refusal::InvalidState(reason) | Refusal::Hanging(reason) => {
            BrokerError::InvalidTransactionState(reason)
        }
        Refusal::Throttled(reason) => BrokerError::Throttled(reason),
        Refusal::Fenced(reason) => BrokerError::ProducerFenced(reason),
    }
}

/// A coordinator's (or the timeout's) error as a refusal.
fn refusal_of(error: BrokerError) -> Refusal {
    let reason = error.to_string();
    match error.code() {
        ErrorCode::TransactionAbortable => Refusal::Abortable(reason),
        ErrorCode::InvalidTransactionState => Refusal::InvalidState(reason),
        ErrorCode::Throttled => Refusal::Throttled(reason),
        ErrorCode::ProducerFenced => Refusal::Fenced(reason),
        _ => Refusal::Concurrent(format!("verification failed: {reason}")),
    }
}

/// Admits an append: returns it if it goes into the pipeline now (a
/// marker with its control batch built), else answers, holds or refuses
/// it.
pub(super) fn admit(
    shared: &Shared,
    partition: &Partition,
    io: &mut TxnIo,
    job: AppendJob,
) -> Option<AppendJob> {
    match &job.kind {
        JobKind::Marker(_) => admit_marker(partition, job),
        JobKind::Data { .. } => admit_data(shared, partition, io, job),
    }
}

fn admit_data(
    shared: &Shared,
    partition: &Partition,
    io: &mut TxnIo,
    job: AppendJob,
) -> Option<AppendJob> {
    match partition.transactions(|state| state.check_data(&job.header)) {
        DataVerdict::Append => Some(job),
        DataVerdict::Refuse(refusal) => {
            job.fail(refusal_error(refusal));
            None
        }
        DataVerdict::Hold => {
            let (producer_id, epoch) = (job.header.producer_id, job.header.producer_epoch);
            partition.transactions(|state| state.hold(producer_id, epoch, job));
            None
        }
        DataVerdict::Verify { producer_id, epoch } => {
            let transactional_id = match &job.kind {
                JobKind::Data {
                    transactional_id, ..
                } => transactional_id.clone(),
                JobKind::Marker(_) => String::new(),
            };
            let verification = Verification {
                transactional_id,
                producer_id,
                epoch,
                topic: partition.key.topic.clone(),
                partition: partition.key.partition,
                subscription: String::new(),
            };
            let timeout = Duration::from_millis(shared.config.transactions.verification_timeout_ms);
            let pending = shared.txn_verifier.verify(verification);
            io.verifications.push(Box::pin(async move {
                let answer = match tokio::time::timeout(timeout, pending).await {
                    Ok(answer) => answer.map_err(refusal_of),
                    Err(_) => Err(Refusal::Concurrent(format!(
                        "the transaction coordinator did not verify producer {producer_id} epoch {epoch} within {}ms ([transactions] verification_timeout_ms); retry",
                        timeout.as_millis()
                    ))),
                };
                (producer_id, epoch, answer)
            }));
            partition.transactions(|state| state.hold(producer_id, epoch, job));
            None
        }
    }
}

fn admit_marker(partition: &Partition, mut job: AppendJob) -> Option<AppendJob> {
    let JobKind::Marker(marker) = job.kind else {
        return Some(job);
    };
    let (verdict, fenced) = partition.transactions(|state| state.check_marker(&marker));
    for held in fenced {
        held.fail(BrokerError::TransactionAbortable(format!(
            "producer {} epoch {}: the transaction ended before its verification was answered",
            marker.producer_id, marker.txn_epoch
        )));
    }
    match verdict {
        MarkerVerdict::AlreadyApplied => {
            // Nothing appended: its marker is durable here already
            // (WriteTxnMarkers only reports success).
            let _ = job.reply.send(Ok(AppendOutcome {
                base_offset: 0,
                append_time_ms: 0,
                epoch: partition.epoch,
            }));
            None
        }
        MarkerVerdict::Refuse(refusal) => {
            job.fail(refusal_error(refusal));
            None
        }
        MarkerVerdict::Append { first_offset } => {
            let marker = control::Marker {
                first_offset,
                ..marker
            };
            let built = control::build_marker(&marker, sluice_proto::now_unix_ms());
            let parsed = built
                .as_ref()
                .and_then(|bytes| BatchHeader::parse(bytes).ok());
            match (built, parsed) {
                (Some(bytes), Some(header)) => {
                    job.batch = bytes;
                    job.header = header;
                    job.kind = JobKind::Marker(marker);
                    Some(job)
                }
                _ => {
                    job.fail(BrokerError::Internal(format!(
                        "could not build the marker of producer {} epoch {}",
                        marker.producer_id, marker.txn_epoch
                    )));
                    None
                }
            }
        }
    }
}

/// A verification answer: its held batches are released (to go into the
/// pipeline before anything newly queued) or refused.
pub(super) fn answered(partition: &Partition, io: &mut TxnIo, answer: Answer) {
    let (producer_id, epoch, answer) = answer;
    let (jobs, outcome) =
        partition.transactions(|state| state.verified(producer_id, epoch, answer));
    match outcome {
        Ok(()) => {
            // Its idempotence state must outlive the transaction (§3.2).
            partition.producer_states(|states| states.protect(producer_id, true));
            io.released.extend(jobs);
        }
        Err(refusal) => {
            let error = refusal_error(refusal);
            for job in jobs {
                job.fail(error.clone());
            }
        }
    }
}

/// An append is durable at `base_offset..end_offset`: a marker ends its
/// transaction. Returns the last stable offset with the new high
/// watermark.
pub(super) fn completed(
    partition: &Partition,
    kind: &JobKind,
    base_offset: u64,
    end_offset: u64,
) -> Option<u64> {
    let (lso, ended) = partition.transactions(|state| {
        let ended = match kind {
            JobKind::Marker(marker) => {
                state.marker_durable(marker, base_offset);
                (!state.is_open(marker.producer_id)).then_some(marker.producer_id)
            }
            JobKind::Data { .. } => None,
        };
        (state.last_stable_offset(end_offset), ended)
    });
    if let Some(producer_id) = ended {
        partition.producer_states(|states| states.protect(producer_id, false));
    }
    lso
}

/// A data batch entered the pipeline at `base_offset`.
pub(super) fn appending(partition: &Partition, header: &BatchHeader, base_offset: u64) {
    if header.transactional {
        partition.transactions(|state| state.data_appending(header, base_offset));
    }
}

/// Forgets the transaction state before a rebuild; batches held for a
/// verification fail with `error`.
pub(super) fn reset(partition: &Partition, error: &BrokerError) {
    let held = partition.transactions(|state| state.reset());
    for job in held {
        job.fail(error.clone());
    }
    partition
        .status
        .send_modify(|status| status.last_stable_offset = None);
}

/// Replays batches read from the log (whole batches, in order, those
/// ending at or before `from_offset` skipped) into the transaction state.
pub(super) fn apply_log(partition: &Partition, batches: &[u8], from_offset: u64) {
    partition.transactions(|state| {
        for (_, header, batch) in BatchIter::new(batches).map_while(Result::ok) {
            if header.end_offset() <= from_offset {
                continue;
            }
            let marker = match header.control {
                true => match control::parse(batch, &header) {
                    Ok(ControlRecord::Marker(marker)) => Some(marker),
                    // A gap or an unparsable control batch ends nothing.
                    _ => continue,
                },
                false => None,
            };
            state.apply_log(&header, marker.as_ref());
        }
    });
}

/// The replay reached the high watermark: publish the last stable offset.
pub(super) fn finish_rebuild(partition: &Partition) -> (Option<u64>, usize) {
    let high_watermark = partition.status().high_watermark;
    let (lso, open) = partition.transactions(|state| {
        state.finish_rebuild();
        (
            state.last_stable_offset(high_watermark),
            state.open_producers(),
        )
    });
    let open_count = open.len();
    partition.producer_states(|states| states.set_protected(open));
    partition
        .status
        .send_modify(|status| status.last_stable_offset = lso);
    (lso, open_count)
}

/// Whether the transaction state must be replayed now, and from where: the
/// first rebuild reads what the producer state reads (a broker with
/// transactions off accepted none, so only older data matters, and the
/// stage-1 reach of that is the idempotence window); with transactions
/// on, every takeover replays from the log start (stage 1: segments do
/// not record `first_unstable_offset` yet, ADR 0016 §3.5).
pub(super) fn rebuild_start(
    shared: &Shared,
    partition: &Partition,
    window_start: u64,
) -> Option<u64> {
    let loaded = partition.transactions(|state| state.is_loaded());
    let log_start = partition.status().log_start_offset;
    if shared.config.transactions.enabled {
        Some(log_start)
    } else if loaded {
        None
    } else {
        Some(window_start.max(log_start))
    }
}
