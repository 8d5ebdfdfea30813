//! The push API: [`Subscriber::listen`] calls an async handler for each
//! message with bounded concurrency and optional ordering per key or per
//! partition, acknowledges on `Ok` and gives the message back on `Err`
//! (or a panic).
//!
//! Messages that must wait for an earlier one of the same key (or
//! partition) are parked; at most `receiver_queue_size` are parked, and
//! above that the listener stops taking messages (so the broker's credit
//! stops too), which bounds memory.

use super::{AckToken, Message, Subscriber};
use crate::ClientError;
use bytes::Bytes;
use futures::FutureExt;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

/// Largest accepted `concurrency`.
pub const MAX_LISTENER_CONCURRENCY: usize = 100_000;

/// Which messages a listener handles one at a time, in delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Any message may run alongside any other.
    #[default]
    None,
    /// Messages with the same key one at a time, in delivery order;
    /// messages without a key in any order.
    PerKey,
    /// Messages of the same partition one at a time, in delivery order.
    PerPartition,
}

/// Listener settings.
///
/// ```
/// use sluice_client::{ListenerConfig, Ordering};
/// let config = ListenerConfig { concurrency: 64, ordering: Ordering::PerKey, ..ListenerConfig::default() };
/// assert_eq!(config.shutdown_timeout_ms, 30_000);
/// ```
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Handlers running at once. Default: 16; at most
    /// [`MAX_LISTENER_CONCURRENCY`].
    pub concurrency: usize,
    /// Default: [`Ordering::None`].
    pub ordering: Ordering,
    /// How long [`ListenerHandle::shutdown`] waits for running handlers
    /// before abandoning them (their messages are then delivered again),
    /// in milliseconds. Default: 30000.
    pub shutdown_timeout_ms: u64,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            ordering: Ordering::None,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// What messages of one lane share: one runs at a time, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Key(Bytes),
    Partition(u32),
}

pub(crate) fn lane_of(message: &Message, ordering: Ordering) -> Option<Lane> {
    match ordering {
        Ordering::None => None,
        Ordering::PerKey => message.key.clone().map(Lane::Key),
        Ordering::PerPartition => Some(Lane::Partition(message.partition)),
    }
}

/// Which lanes have a message running, and the messages waiting behind
/// it. Pure.
pub(crate) struct LaneScheduler<T> {
    /// A lane is present while one of its messages runs.
    busy: HashMap<Lane, VecDeque<T>>,
    parked: usize,
}

impl<T> Default for LaneScheduler<T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
            parked: 0,
        }
    }
}

impl<T> LaneScheduler<T> {
    /// Returns the item when it may run now (no lane, or its lane was
    /// idle and is now busy); otherwise parks it behind its lane.
    pub fn offer(&mut self, lane: Option<Lane>, item: T) -> Option<T> {
        let Some(lane) = lane else {
            return Some(item);
        };
        match self.busy.get_mut(&lane) {
            Some(waiting) => {
                waiting.push_back(item);
                self.parked += 1;
                None
            }
            None => {
                self.busy.insert(lane, VecDeque::new());
                Some(item)
            }
        }
    }

    /// The running item of `lane` finished: the next one of the lane to
    /// run (the lane stays busy), or `None` and the lane is idle.
    pub fn finished(&mut self, lane: &Lane) -> Option<T> {
        let waiting = self.busy.get_mut(lane)?;
        match waiting.pop_front() {
            Some(item) => {
                self.parked -= 1;
                Some(item)
            }
            None => {
                self.busy.remove(lane);
                None
            }
        }
    }

    pub fn parked(&self) -> usize {
        self.parked
    }
}

struct Counters {
    handled: AtomicU64,
    failed: AtomicU64,
}

/// A running listener; see [`Subscriber::listen`]. Dropping it stops the
/// listener the way [`ListenerHandle::shutdown`] does, without waiting.
pub struct ListenerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
    counters: Arc<Counters>,
}

impl ListenerHandle {
    /// Stops taking messages, waits for running handlers (up to
    /// `shutdown_timeout_ms`), then closes the subscriber, which sends
    /// the pending acknowledgements and waits for their receipts.
    /// Messages taken but not handled are delivered again.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "the listener task failed");
                Err(ClientError::Closed)
            }
        }
    }

    /// Messages whose handler returned `Ok` so far.
    pub fn handled(&self) -> u64 {
        self.counters
            .handled
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Messages whose handler returned `Err` or panicked so far.
    pub fn failed(&self) -> u64 {
        self.counters
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the listener stopped (after `shutdown`, or because the
    /// subscriber was closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

struct Listener<F> {
    subscriber: Subscriber,
    handler: F,
    scheduler: Mutex<LaneScheduler<Message>>,
    /// Signalled when a parked message leaves the scheduler.
    room: Notify,
    counters: Arc<Counters>,
}

impl<F> Listener<F> {
    fn scheduler(&self) -> MutexGuard<'_, LaneScheduler<Message>> {
        // Plain data under short, non-awaiting locks.
        self.scheduler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Subscriber {
    /// Hands every message to `handler`, at most `config.concurrency` at
    /// once and in the order `config.ordering` asks; acknowledges a message
    /// when its handler returns `Ok`, gives it back
    /// ([`Subscriber::nack`]) when it returns `Err` or panics (the error
    /// is logged). Acknowledgements are not awaited by the handler's
    /// slot: their failures (DELIVERY_EXPIRED after an ack timeout) are
    /// logged.
    ///
    /// ```no_run
    /// use sluice_client::{ListenerConfig, Ordering, Subscriber, SubscriberConfig};
    ///
    /// # async fn example() -> Result<(), sluice_client::ClientError> {
    /// let subscriber = Subscriber::connect(SubscriberConfig::new("orders", "billing")).await?;
    /// let config = ListenerConfig { concurrency: 32, ordering: Ordering::PerKey, ..ListenerConfig::default() };
    /// let listener = subscriber.listen(config, |message| async move {
    ///     println!("{}", message.id());
    ///     Ok::<(), std::io::Error>(())
    /// })?;
    /// // ... until it is time to stop:
    /// listener.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen<F, Fut, E>(
        self,
        config: ListenerConfig,
        handler: F,
    ) -> Result<ListenerHandle, ClientError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        if config.concurrency == 0 || config.concurrency > MAX_LISTENER_CONCURRENCY {
            return Err(ClientError::InvalidArgument(format!(
                "listener concurrency must be between 1 and {MAX_LISTENER_CONCURRENCY}, not {}",
                config.concurrency
            )));
        }
        let counters = Arc::new(Counters {
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let listener = Arc::new(Listener {
            subscriber: self,
            handler,
            scheduler: Mutex::new(LaneScheduler::default()),
            room: Notify::new(),
            counters: counters.clone(),
        });
        let task = tokio::spawn(dispatch(listener, config, stopped));
        Ok(ListenerHandle {
            stop,
            task,
            counters,
        })
    }
}

async fn dispatch<F, Fut, E>(
    listener: Arc<Listener<F>>,
    config: ListenerConfig,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ClientError>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let max_parked = listener.subscriber.shared.config.receiver_queue_size as usize;
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut running = JoinSet::new();
    'taking: loop {
        let parked = listener.scheduler().parked();
        let message = tokio::select! {
            // A dropped handle (sender gone) stops the listener too.
            _ = stopped.wait_for(|stop| *stop) => break,
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "a listener task failed");
                }
                continue;
            }
            _ = listener.room.notified() => continue,
            message = listener.subscriber.recv(), if parked < max_parked => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(ClientError::Closed) => break,
            Err(error) => {
                tracing::warn!(%error, "subscriber error; the listener keeps going");
                continue;
            }
        };
        let lane = lane_of(&message, config.ordering);
        let Some(message) = listener.scheduler().offer(lane.clone(), message) else {
            continue;
        };
        let slot = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break 'taking,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break 'taking,
            },
        };
        let listener = listener.clone();
        running.spawn(async move {
            let _slot = slot;
            let mut message = message;
            loop {
                handle(&listener, message).await;
                let Some(lane) = &lane else { return };
                let next = listener.scheduler().finished(lane);
                match next {
                    Some(next) => {
                        listener.room.notify_one();
                        message = next;
                    }
                    None => return,
                }
            }
        });
    }
    let timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let drained = tokio::time::timeout(timeout, async {
        while let Some(joined) = running.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "a listener task failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout_ms = config.shutdown_timeout_ms,
            still_running = running.len(),
            "handlers still running at shutdown are abandoned; their messages will be delivered again"
        );
        running.shutdown().await;
    }
    match Arc::try_unwrap(listener) {
        Ok(listener) => listener.subscriber.close().await,
        Err(_) => {
            // Only the tasks awaited above hold it; cannot happen.
            tracing::error!("listener still referenced after its tasks ended; not closing");
            Err(ClientError::Closed)
        }
    }
}

async fn handle<F, Fut, E>(listener: &Listener<F>, message: Message)
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let token: AckToken = message.ack_token();
    let offset = message.offset;
    let partition = message.partition;
    let outcome = AssertUnwindSafe((listener.handler)(message))
        .catch_unwind()
        .await;
    let subscriber = &listener.subscriber;
    let failure = match outcome {
        Ok(Ok(())) => {
            listener
                .counters
                .handled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match subscriber.queue_ack_token(token, false).await {
                Ok(receipt) => {
                    tokio::spawn(async move {
                        if let Err(error) = receipt.await {
                            tracing::warn!(partition, offset, %error, "acknowledgement failed; the message may be delivered again");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(partition, offset, %error, "cannot acknowledge; the message will be delivered again");
                }
            }
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "the handler panicked".to_string(),
    };
    listener
        .counters
        .failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(partition, offset, error = %failure, "handler failed; message given back for redelivery");
    if let Err(error) = subscriber.nack_token(token, Duration::ZERO).await {
        tracing::warn!(partition, offset, %error, "cannot give the message back; it is delivered again after the ack timeout");
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_message;
    use super::*;

    #[test]
    fn lanes_follow_the_ordering() {
        let keyed = test_message(3, 1, Some("k"));
        let keyless = test_message(3, 2, None);
        assert_eq!(lane_of(&keyed, Ordering::None), None);
        assert_eq!(
            lane_of(&keyed, Ordering::PerKey),
            Some(Lane::Key(Bytes::from("k")))
        );
        assert_eq!(lane_of(&keyless, Ordering::PerKey), None);
        assert_eq!(
            lane_of(&keyless, Ordering::PerPartition),
            Some(Lane::Partition(3))
        );
    }

    /// Per key: a key's messages run one at a time in delivery order,
    /// other keys and keyless messages are not held up.
    #[test]
    fn per_key_order_is_kept() {
        let mut scheduler = LaneScheduler::default();
        let a = || Some(Lane::Key(Bytes::from("a")));
        let b = || Some(Lane::Key(Bytes::from("b")));
        assert_eq!(scheduler.offer(a(), 1), Some(1));
        assert_eq!(scheduler.offer(a(), 2), None);
        assert_eq!(scheduler.offer(b(), 3), Some(3));
        assert_eq!(scheduler.offer(None, 4), Some(4));
        assert_eq!(scheduler.offer(a(), 5), None);
        assert_eq!(scheduler.parked(), 2);
        let lane_a = Lane::Key(Bytes::from("a"));
        assert_eq!(scheduler.finished(&lane_a), Some(2));
        // 2 is running: a new message of `a` still waits.
        assert_eq!(scheduler.offer(a(), 6), None);
        assert_eq!(scheduler.finished(&lane_a), Some(5));
        assert_eq!(scheduler.finished(&lane_a), Some(6));
        assert_eq!(scheduler.finished(&lane_a), None);
        assert_eq!(scheduler.parked(), 0);
        // The lane is idle again.
        assert_eq!(scheduler.offer(a(), 7), Some(7));
        assert_eq!(scheduler.finished(&Lane::Key(Bytes::from("b"))), None);
    }
}
