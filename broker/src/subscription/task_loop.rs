//! The dispatcher task's life: loading the subscription and cursor, the
//! loop over consumers' commands, new data, timers, cursor commits and
//! dead-letter writes, and stopping (refusing opens that raced in).

use super::cursor_store::{commit_cursor, commit_encoded_cursor, load};
use super::dead_letter::DeadLetters;
use super::dispatcher::{ConsumerId, Dispatcher, Settings};
use super::task::Task;
use super::txn_acks::{answer_markers, MarkerReply};
use super::{
    selector_of, Command, COMMANDS_PER_STEP, CURSOR_COMMIT_BYTES_PER_SECOND, LOAD_TIMEOUT,
    RETRY_BACKOFF,
};
use crate::error::BrokerError;
use crate::partition::{Partition, Phase};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sluice_proto::v1::subscribe_response::Response as ToConsumer;
use sluice_proto::v1::AckReceipt;
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type CommitFuture = BoxFuture<'static, Result<(), BrokerError>>;
/// A cursor commit in flight, with the receipts and marker answers that
/// wait for it to be durable.
type InFlightCommit = (
    CommitFuture,
    Vec<(ConsumerId, AckReceipt)>,
    Vec<MarkerReply>,
);

/// The dispatcher task of one (partition, subscription).
pub(super) async fn run_dispatcher(
    shared: Arc<Shared>,
    key: PartitionKey,
    name: String,
    partition: Arc<Partition>,
    mut commands: mpsc::Receiver<Command>,
    own_sender: mpsc::Sender<Command>,
) {
    // Drop our own handle: the task ends when consumers stop sending and
    // the registry entry is removed.
    let loaded = tokio::time::timeout(LOAD_TIMEOUT, async {
        loop {
            match load(&shared, &key, &name, &partition).await {
                Ok(loaded) => return Ok(loaded),
                Err(error) if error.code().is_retriable() && !*shared.shutdown.borrow() => {
                    tracing::debug!(partition = %key, subscription = %name, %error, "loading the subscription; retrying");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(BrokerError::Unavailable(format!(
            "could not load subscription {name:?} on {key} within {LOAD_TIMEOUT:?}"
        )))
    });
    let mut task = match loaded.and_then(|(subscription, group, snapshot)| {
        selector_of(&subscription).map(|selector| (subscription, group, snapshot, selector))
    }) {
        Ok((subscription, group, snapshot, selector)) => {
            let settings = Settings {
                kind: subscription.r#type(),
                ack_timeout_ms: subscription.ack_timeout_ms.max(1),
                redelivery_backoff_initial_ms: subscription.redelivery_backoff_initial_ms,
                redelivery_backoff_max_ms: subscription
                    .redelivery_backoff_max_ms
                    .max(subscription.redelivery_backoff_initial_ms),
                max_deliveries: subscription.max_deliveries,
                window_messages: shared.config.subscriptions.window_messages.max(1),
                max_delayed_messages: shared.config.subscriptions.max_delayed_messages,
                max_permits_per_consumer: shared.config.subscriptions.max_permits_per_consumer,
                max_unacknowledged_per_consumer: shared
                    .config
                    .subscriptions
                    .max_unacknowledged_per_consumer,
            };
            Task {
                shared: shared.clone(),
                key: key.clone(),
                dispatcher: Dispatcher::new(settings, partition.epoch, snapshot),
                subscription,
                group,
                selector,
                partition: partition.clone(),
                consumers: HashMap::new(),
                batches: BTreeMap::new(),
                batch_bytes: 0,
                delayed_records: HashMap::new(),
                delayed_records_bytes: 0,
                receipts_waiting: Vec::new(),
                verifications: FuturesUnordered::new(),
                markers_waiting: Vec::new(),
            }
        }
        Err(error) => {
            tracing::info!(partition = %key, subscription = %name, %error, "cannot serve the subscription");
            let error = SluiceError::from(error);
            refuse_remaining(&shared, &key, &name, &own_sender, &mut commands, &error).await;
            return;
        }
    };
    serve_dispatcher(&mut task, &mut commands).await;
    tracing::debug!(
        partition = %key,
        subscription = %name,
        consumers = task.dispatcher.consumer_count(),
        unacknowledged = task.dispatcher.unacknowledged(),
        in_flight = task.dispatcher.in_flight(),
        pending_acks = task.dispatcher.pending_acks(),
        mark_delete = task.dispatcher.mark_delete(),
        "subscription dispatcher stops"
    );
    let error = SluiceError::from(BrokerError::NotOwner {
        topic: key.topic.clone(),
        partition: key.partition,
    });
    refuse_remaining(&shared, &key, &name, &own_sender, &mut commands, &error).await;
}

/// Unregisters the dispatcher and answers opens that raced in with `error`
/// (consumers then look again).
async fn refuse_remaining(
    shared: &Shared,
    key: &PartitionKey,
    name: &str,
    own_sender: &mpsc::Sender<Command>,
    commands: &mut mpsc::Receiver<Command>,
    error: &SluiceError,
) {
    shared.subscriptions.remove(key, name, own_sender);
    commands.close();
    while let Some(command) = commands.recv().await {
        match command {
            Command::Open { opened, .. } => {
                let _ = opened.send(Err(BrokerError::Relayed(error.clone())));
            }
            Command::Marker { reply, .. } => {
                let _ = reply.send(Err(BrokerError::Relayed(error.clone())));
            }
            _ => {}
        }
    }
}

/// The dispatcher's loop: consumers' commands, new data, timers, cursor
/// commits and dead-letter writes, until the partition leaves this broker,
/// the broker shuts down, or nobody consumed for `[subscriptions] idle_stop_ms`.
async fn serve_dispatcher(task: &mut Task, commands: &mut mpsc::Receiver<Command>) {
    let flush_interval =
        Duration::from_millis(task.shared.config.subscriptions.ack_flush_interval_ms);
    let idle_stop = Duration::from_millis(task.shared.config.subscriptions.idle_stop_ms);
    let mut status = task.partition.subscribe();
    let mut shutdown = task.shared.shutdown.clone();
    let mut dead_letters: DeadLetters = FuturesUnordered::new();
    let mut dead_letter_retries: Vec<(Instant, u64)> = Vec::new();
    let mut commit: Option<InFlightCommit> = None;
    let mut last_commit = Instant::now();
    let mut commit_gap = flush_interval;
    let mut retry_at: Option<Instant> = None;
    let mut idle_since: Option<Instant> = Some(Instant::now());
    let not_owner = || BrokerError::NotOwner {
        topic: task.key.topic.clone(),
        partition: task.key.partition,
    };
    let not_owner_error = not_owner();
    loop {
        let now = Instant::now();
        if retry_at.is_none_or(|at| at <= now) {
            retry_at = None;
            if let Err(error) = task.scan().await {
                if error.code() == ErrorCode::NotOwner {
                    task.fail_all(error);
                    return;
                }
                tracing::debug!(partition = %task.key, %error, "subscription scan failed; retrying");
                retry_at = Some(now + RETRY_BACKOFF);
            }
        }
        let due: Vec<u64> = dead_letter_retries
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, offset)| *offset)
            .collect();
        dead_letter_retries.retain(|(at, _)| *at > now);
        for offset in due {
            task.dispatcher.dead_letter_failed(offset);
        }
        let actions = task.dispatcher.dispatch(task.now_ms());
        task.execute(actions, &mut dead_letters).await;
        task.prune_batches();
        let wants_commit = task.dispatcher.is_dirty()
            || !task.receipts_waiting.is_empty()
            || !task.markers_waiting.is_empty();
        if commit.is_none() && wants_commit && now >= last_commit + commit_gap {
            let snapshot = task.dispatcher.snapshot();
            let mark_delete = snapshot.acked.mark_delete();
            let encoded = Bytes::from(snapshot.encode());
            // A large cursor (many gaps: delayed messages firing out of
            // order) is committed less often, bounding commit traffic.
            commit_gap = flush_interval.max(Duration::from_secs_f64(
                encoded.len() as f64 / CURSOR_COMMIT_BYTES_PER_SECOND,
            ));
            let receipts = std::mem::take(&mut task.receipts_waiting);
            let markers = std::mem::take(&mut task.markers_waiting);
            let shared = task.shared.clone();
            let group = task.group.clone();
            let key = task.key.clone();
            commit =
                Some((
                    async move {
                        commit_encoded_cursor(&shared, &group, &key, mark_delete, encoded).await
                    }
                    .boxed(),
                    receipts,
                    markers,
                ));
            last_commit = now;
        }
        if task.consumers.is_empty() {
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) >= idle_stop
                && commit.is_none()
                && !task.dispatcher.is_dirty()
                && dead_letters.is_empty()
                && task.verifications.is_empty()
                && task.markers_waiting.is_empty()
            {
                return;
            }
        } else {
            idle_since = None;
        }
        let mut wake = now + idle_stop;
        if let Some(deadline_ms) = task.dispatcher.next_deadline_ms() {
            let now_ms = task.now_ms();
            wake = wake.min(now + Duration::from_millis(deadline_ms.saturating_sub(now_ms)));
        }
        if commit.is_none() && wants_commit {
            wake = wake.min(last_commit + commit_gap);
        }
        if let Some(at) = retry_at {
            wake = wake.min(at);
        }
        if let Some(at) = dead_letter_retries.iter().map(|(at, _)| *at).min() {
            wake = wake.min(at);
        }
        if let Some(since) = idle_since {
            wake = wake.min(since + idle_stop);
        }
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                task.handle(command);
                for _ in 0..COMMANDS_PER_STEP {
                    match commands.try_recv() {
                        Ok(command) => task.handle(command),
                        Err(_) => break,
                    }
                }
            }
            changed = status.changed() => {
                if changed.is_err() || status.borrow().phase == Phase::Stopped {
                    task.fail_all(clone_broker_error(&not_owner_error));
                    return;
                }
            }
            result = async {
                match commit.as_mut() {
                    Some((future, _, _)) => future.await,
                    None => std::future::pending().await,
                }
            }, if commit.is_some() => {
                let (receipts, markers) = commit
                    .take()
                    .map(|(_, receipts, markers)| (receipts, markers))
                    .unwrap_or_default();
                match result {
                    Ok(()) => {
                        task.dispatcher.commit_succeeded();
                        for (consumer, receipt) in receipts {
                            task.send(consumer, ToConsumer::AckReceipt(receipt));
                        }
                        answer_markers(markers, &Ok(()));
                    }
                    Err(error) if error.code() == ErrorCode::NotOwner => {
                        // A newer owner committed this cursor: we are deposed.
                        tracing::info!(partition = %task.key, %error, "cursor commit fenced; stopping the subscription here");
                        answer_markers(markers, &Err(clone_broker_error(&error)));
                        answer_markers(std::mem::take(&mut task.markers_waiting), &Err(clone_broker_error(&error)));
                        task.fail_all(error);
                        return;
                    }
                    Err(error) => {
                        tracing::debug!(partition = %task.key, %error, "cursor commit failed; retrying");
                        let mut receipts = receipts;
                        receipts.append(&mut task.receipts_waiting);
                        task.receipts_waiting = receipts;
                        let mut markers = markers;
                        markers.append(&mut task.markers_waiting);
                        task.markers_waiting = markers;
                        task.dispatcher.commit_failed();
                        last_commit = Instant::now() + RETRY_BACKOFF;
                    }
                }
            }
            Some(verified) = task.verifications.next(), if !task.verifications.is_empty() => {
                task.txn_ack_verified(verified);
            }
            Some((offset, result)) = dead_letters.next(), if !dead_letters.is_empty() => {
                match result {
                    Ok(()) => task.dispatcher.dead_lettered(offset),
                    Err(error) => {
                        tracing::warn!(partition = %task.key, offset, %error, "dead-letter write failed; retrying");
                        dead_letter_retries.push((Instant::now() + RETRY_BACKOFF * 5, offset));
                    }
                }
            }
            _ = crate::wait_until_set(&mut shutdown) => {
                if let Some((future, receipts, markers)) = commit.take() {
                    let outcome = future.await;
                    if outcome.is_ok() {
                        for (consumer, receipt) in receipts {
                            task.send(consumer, ToConsumer::AckReceipt(receipt));
                        }
                    }
                    answer_markers(markers, &outcome);
                }
                if task.dispatcher.is_dirty()
                    || !task.receipts_waiting.is_empty()
                    || !task.markers_waiting.is_empty()
                {
                    let snapshot = task.dispatcher.snapshot();
                    let outcome = commit_cursor(&task.shared, &task.group, &task.key, &snapshot).await;
                    if outcome.is_ok() {
                        for (consumer, receipt) in std::mem::take(&mut task.receipts_waiting) {
                            task.send(consumer, ToConsumer::AckReceipt(receipt));
                        }
                    }
                    answer_markers(std::mem::take(&mut task.markers_waiting), &outcome);
                }
                task.fail_all(BrokerError::ShuttingDown);
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

fn clone_broker_error(error: &BrokerError) -> BrokerError {
    BrokerError::Relayed(SluiceError::new(error.code(), error.to_string()))
}
