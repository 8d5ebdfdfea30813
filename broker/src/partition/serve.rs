//! The IO loop of the append pipeline over one open segment: takes queued
//! appends, stamps them, sends them down the replicas' streams, feeds the
//! replicas' answers and the passing time into the pure
//! [`AppendPipeline`](super::pipeline::AppendPipeline), and carries out
//! its effects (answer, fail, create the next segment) until it ends.

use super::pipeline::{AppendPipeline, Effect, End, Entry, Settings};
use super::takeover::{create_and_open, OpenSegment};
use super::txn_io::{self, TxnIo};
use super::{never, AppendJob, AppendOutcome, JobKind, Partition};
use crate::decisions::effective_ack_quorum;
use crate::error::BrokerError;
use crate::idempotence::Verdict;
use crate::Shared;
use bytes::Bytes;
use futures::StreamExt;
use sluice_proto::batch::assign;
use sluice_proto::v1::{AppendRequest, AppendResponse, SegmentInfo, TopicConfig};
use sluice_proto::{ErrorCode, SluiceError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How [`serve`] ended.
pub(super) enum ServeEnd {
    Stopped,
    /// Open a new segment; `failed_stores` dropped out of this one's
    /// ensemble and are avoided in the next.
    Roll {
        failed_stores: Vec<String>,
        /// When the pipeline stopped taking appends to roll, and when the
        /// last of them completed: the roll's pause is measured from the
        /// first.
        stopped_at: Instant,
        drained_at: Instant,
        /// The next segment, created while the last appends drained, and
        /// the one rolled away from with its end; `None` if it could not
        /// be prepared (the roll then goes through takeover).
        prepared: Option<Box<(OpenSegment, SegmentInfo, u64)>>,
    },
    Failed {
        error: BrokerError,
        failed_stores: Vec<String>,
    },
}

/// An append in the pipeline: the queued job and its stamped batch.
struct Appending {
    job: AppendJob,
    bytes: Bytes,
    append_time_ms: i64,
}

/// The next segment being created ahead of a roll; yields the stores that
/// failed with the error.
type PreparingSegment<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<OpenSegment, (BrokerError, Vec<String>)>>
            + Send
            + 'a,
    >,
>;

fn settings(shared: &Shared, partition: &Partition, replicas: usize) -> Settings {
    let config = partition.config();
    Settings {
        ack_quorum: effective_ack_quorum(config.ack_quorum, replicas),
        max_in_flight: shared
            .config
            .produce
            .max_in_flight_appends_per_partition
            .max(1),
        replica_ack_timeout: Duration::from_millis(
            shared.config.replication.replica_ack_timeout_ms.max(1),
        ),
        segment_bytes: config.segment_bytes,
        segment_age: segment_age(&config),
        ensemble_size: (config.ensemble_size as usize).max(1),
        degraded_check_every: Duration::from_millis(
            shared
                .config
                .replication
                .degraded_ensemble_check_interval_ms
                .max(1),
        ),
    }
}

/// How old a segment may grow; `None` = no limit.
fn segment_age(config: &TopicConfig) -> Option<Duration> {
    (config.segment_ms > 0).then(|| Duration::from_millis(config.segment_ms))
}

/// The pipeline over one open segment until it must roll, fails or stops
/// (the rules are in [`super::pipeline`]).
pub(super) async fn serve(
    shared: &Shared,
    partition: &Partition,
    segment: OpenSegment,
    jobs: &mut mpsc::UnboundedReceiver<AppendJob>,
    txn: &mut TxnIo,
) -> ServeEnd {
    let OpenSegment {
        info,
        senders,
        mut responses,
        opened_at,
    } = segment;
    let high_watermark = partition.status().high_watermark;
    if info.base_offset != high_watermark || senders.len() != info.replicas.len() {
        // The nameserver's answer does not fit what was asked for.
        return ServeEnd::Failed {
            error: BrokerError::Internal(format!(
                "segment {} of {} starts at {} with {} streams for {} replicas; the high watermark is {high_watermark}",
                info.segment_id, partition.key, info.base_offset, senders.len(), info.replicas.len()
            )),
            failed_stores: Vec::new(),
        };
    }
    let store_ids = info
        .replicas
        .iter()
        .map(|replica| replica.store_id.clone())
        .collect();
    let settings = settings(shared, partition, info.replicas.len());
    let mut pipeline =
        AppendPipeline::new(settings, store_ids, high_watermark, opened_at.into_std());
    let mut stopped = partition.stopped.subscribe();
    // An altered topic's roll limits apply to the open segment at once.
    let mut config_changes = partition.watch_config();
    config_changes.mark_unchanged();
    let mut preparing: Option<PreparingSegment<'_>> = None;
    let mut prepared: Option<OpenSegment> = None;
    loop {
        carry_out(shared, partition, &mut pipeline, &mut preparing);
        if let Some(end) = pipeline.take_end() {
            return finish(end, info, prepared);
        }
        // Batches a verification released go before anything newly
        // queued (ADR 0016 §3.3).
        if pipeline.accepts_appends() {
            if let Some(job) = txn.take_released() {
                append(shared, partition, &mut pipeline, &info, &senders, txn, job);
                continue;
            }
        }
        let deadline = pipeline.next_deadline().map(Instant::from_std);
        tokio::select! {
            _ = crate::wait_until_set(&mut stopped) => {
                return stop(partition, &mut pipeline);
            }
            job = jobs.recv(), if pipeline.accepts_appends() && !txn.has_released() => {
                let Some(job) = job else {
                    return stop(partition, &mut pipeline);
                };
                append(shared, partition, &mut pipeline, &info, &senders, txn, job);
            }
            answer = txn.next_answer(), if txn.has_verifications() => {
                txn_io::answered(partition, txn, answer);
            }
            // Polled while idle too, so a store that dies between appends
            // is dropped (and the segment rolled) at once.
            response = responses.next() => {
                answered(partition, &mut pipeline, &info, response);
            }
            Ok(()) = config_changes.changed() => {
                let config = *config_changes.borrow_and_update();
                pipeline.set_roll_limits(config.segment_bytes, segment_age(&config), std::time::Instant::now());
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(never)), if deadline.is_some() => {
                pipeline.tick(std::time::Instant::now(), shared.live_stores());
            }
            next = async { preparing.as_mut().expect("polled only while preparing").await }, if preparing.is_some() => {
                preparing = None;
                let now = std::time::Instant::now();
                match next {
                    Ok(segment) => {
                        prepared = Some(segment);
                        pipeline.next_segment_prepared(true, Vec::new(), now);
                    }
                    Err((error, excluded)) => {
                        tracing::warn!(partition = %partition.key, %error, "could not prepare the next segment; rolling through takeover");
                        pipeline.next_segment_prepared(false, excluded, now);
                    }
                }
            }
        }
    }
}

fn stop(partition: &Partition, pipeline: &mut AppendPipeline<Appending>) -> ServeEnd {
    pipeline.stop(partition.not_owner());
    while let Some(effect) = pipeline.next_effect() {
        if let Effect::Fail(appending, error) = effect {
            appending.job.fail(error);
        }
    }
    ServeEnd::Stopped
}

/// Carries out what the pipeline asks for, in order.
fn carry_out<'a>(
    shared: &'a Shared,
    partition: &'a Partition,
    pipeline: &mut AppendPipeline<Appending>,
    preparing: &mut Option<PreparingSegment<'a>>,
) {
    while let Some(effect) = pipeline.next_effect() {
        match effect {
            Effect::Complete(entry) => complete(shared, partition, entry),
            Effect::Fail(appending, error) => appending.job.fail(error),
            Effect::ReplicaDropped { store_id, error } => {
                tracing::warn!(partition = %partition.key, store = %store_id, %error, "replica failed; dropping it");
            }
            Effect::PrepareNextSegment {
                base_offset,
                excluded_stores,
            } => {
                // The next segment starts where the last append accepted
                // into this one ends; it is created and its streams opened
                // while those appends drain.
                let mut excluded = excluded_stores;
                *preparing = Some(Box::pin(async move {
                    create_and_open(shared, partition, base_offset, &mut excluded)
                        .await
                        .map_err(|error| (error, excluded))
                }));
            }
        }
    }
}

fn finish(end: End, info: SegmentInfo, prepared: Option<OpenSegment>) -> ServeEnd {
    match end {
        End::Roll {
            failed_stores,
            stopped_at,
            drained_at,
            next_segment_ready,
            next_offset,
        } => ServeEnd::Roll {
            failed_stores,
            stopped_at: Instant::from_std(stopped_at),
            drained_at: Instant::from_std(drained_at),
            prepared: prepared
                .filter(|_| next_segment_ready)
                .map(|next| Box::new((next, info, next_offset))),
        },
        End::Failed {
            error,
            failed_stores,
        } => ServeEnd::Failed {
            error,
            failed_stores,
        },
    }
}

/// Takes one queued append into the pipeline: refuses it after an earlier
/// failure, admits it by the transaction rules (holding it for a
/// verification, answering an applied marker), answers it from the
/// producer state when it is a resend, else stamps its offset and epoch
/// and sends it to every healthy replica.
fn append(
    shared: &Shared,
    partition: &Partition,
    pipeline: &mut AppendPipeline<Appending>,
    info: &SegmentInfo,
    senders: &[mpsc::Sender<AppendRequest>],
    txn: &mut TxnIo,
    job: AppendJob,
) {
    if job.generation != partition.status().generation {
        job.fail(BrokerError::EarlierRequestFailed {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        });
        return;
    }
    let Some(job) = txn_io::admit(shared, partition, txn, job) else {
        return;
    };
    let base_offset = pipeline.next_offset();
    let mut job = match job.kind {
        // Markers bypass idempotence (their sequence is -1), and so do a
        // group coordinator's transactional offset commits.
        JobKind::Marker(_) => job,
        JobKind::Data {
            coordinator_commit: true,
            ..
        } => {
            txn_io::appending(partition, &job.header, base_offset);
            job
        }
        JobKind::Data { .. } => {
            let Some(job) = deduplicate(partition, job, base_offset) else {
                return;
            };
            txn_io::appending(partition, &job.header, base_offset);
            job
        }
    };
    // Stamped in place when this is the only reference to the batch's
    // memory (the request it came in is gone); copied otherwise, since a
    // shared buffer must not change. (About 4 in 5 batches of a produce
    // stream measured, ADR 0006.)
    let mut bytes = std::mem::take(&mut job.batch)
        .try_into_mut()
        .unwrap_or_else(|shared_batch| bytes::BytesMut::from(&shared_batch[..]));
    // The ownership epoch fits the batch's 32-bit field for any realistic
    // number of reassignments; saturate otherwise.
    assign(
        &mut bytes,
        base_offset,
        u32::try_from(partition.epoch).unwrap_or(u32::MAX),
    );
    let bytes = bytes.freeze();
    let record_count = job.header.record_count;
    let size_bytes = bytes.len() as u64;
    let now = std::time::Instant::now();
    let appending = Appending {
        job,
        bytes: bytes.clone(),
        append_time_ms: sluice_proto::now_unix_ms(),
    };
    let (sequence, replicas) = pipeline.append(appending, record_count, size_bytes, now);
    let request = AppendRequest {
        segment_id: info.segment_id,
        writer_epoch: partition.epoch,
        batch: bytes,
        sequence,
    };
    for index in replicas {
        // The channel holds more than the in-flight bound, so a full one
        // means this replica fell that far behind the others; a closed
        // one, that its stream broke.
        if senders[index].try_send(request.clone()).is_err() {
            pipeline.send_failed(index, now);
        }
    }
}

/// Feeds one replica's answer (or the end of every stream) to the pipeline.
fn answered(
    partition: &Partition,
    pipeline: &mut AppendPipeline<Appending>,
    info: &SegmentInfo,
    response: Option<(usize, Result<AppendResponse, tonic::Status>)>,
) {
    let now = std::time::Instant::now();
    let Some((index, answer)) = response else {
        pipeline.streams_ended(BrokerError::Unavailable(format!(
            "every append stream of {} closed",
            partition.key
        )));
        return;
    };
    let store_id = info
        .replicas
        .get(index)
        .map_or("?", |replica| replica.store_id.as_str());
    match answer {
        Ok(answer) if answer.error == ErrorCode::None as i32 => {
            pipeline.acknowledged(index, answer.sequence, now);
        }
        Ok(answer) => {
            let code = ErrorCode::try_from(answer.error).unwrap_or(ErrorCode::Internal);
            let error = BrokerError::Remote {
                context: format!("store {store_id} Append"),
                error: SluiceError::new(code, answer.error_message),
            };
            pipeline.replica_failed(index, error, now);
        }
        Err(status) => {
            pipeline.replica_failed(index, BrokerError::remote("store Append", &status), now);
        }
    }
}

/// An append is durable: advance the high watermark, cache it, wake
/// fetchers, answer the producer.
fn complete(shared: &Shared, partition: &Partition, done: Entry<Appending>) {
    let Entry {
        job: appending,
        base_offset,
        end_offset,
        ..
    } = done;
    // The pipeline starts at the high watermark and completes in order, so
    // each completion continues exactly where the last one ended: the high
    // watermark never goes back and never skips.
    let high_watermark = partition.status().high_watermark;
    assert_eq!(
        high_watermark, base_offset,
        "{}: an append completing at {base_offset} does not continue the high watermark",
        partition.key
    );
    shared
        .tail_cache
        .insert(&partition.key, base_offset, end_offset, appending.bytes);
    let last_stable_offset =
        txn_io::completed(partition, &appending.job.kind, base_offset, end_offset);
    partition.status.send_modify(|status| {
        status.high_watermark = end_offset;
        status.last_stable_offset = last_stable_offset;
    });
    partition.producer_states(|states| {
        states.appended(&appending.job.header, base_offset, appending.append_time_ms)
    });
    let AppendJob {
        reply, on_durable, ..
    } = appending.job;
    if let Some(on_durable) = on_durable {
        on_durable(base_offset);
    }
    let _ = reply.send(Ok(AppendOutcome {
        base_offset,
        append_time_ms: appending.append_time_ms,
        epoch: partition.epoch,
    }));
}

/// Idempotence (ADR 0010): answers a resent batch from the producer state
/// instead of appending it again, refuses one that does not fit its
/// producer's sequence; returns the job if it is to be appended at
/// `base_offset`.
fn deduplicate(partition: &Partition, job: AppendJob, base_offset: u64) -> Option<AppendJob> {
    match partition.producer_states(|states| states.check(&job.header, base_offset)) {
        Verdict::NotIdempotent | Verdict::Accept => Some(job),
        Verdict::Duplicate(original) => {
            // The producer stream may be gone; nothing to tell then.
            let _ = job.reply.send(Ok(AppendOutcome {
                base_offset: original.base_offset,
                append_time_ms: original.append_time_ms,
                epoch: partition.epoch,
            }));
            None
        }
        Verdict::DuplicateInFlight => {
            let producer_id = job.header.producer_id;
            job.fail(BrokerError::DuplicateInFlight(format!(
                "the original of this batch of producer {producer_id} is still being appended to {}; retry after a backoff",
                partition.key
            )));
            None
        }
        Verdict::OutOfOrder(reason) => {
            job.fail(BrokerError::OutOfOrderSequence(reason));
            None
        }
    }
}
