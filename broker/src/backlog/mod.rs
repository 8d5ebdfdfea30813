//! The backlog monitor (ADR 0012): every `[backlog] check_interval_ms` it
//! measures each served partition's subscriptions (messages and estimated
//! bytes not yet acknowledged, age of the oldest one, drain and incoming
//! rates), derives the partition's pressure level against the topic's
//! backlog quotas, and applies the EVICT policy. The produce path reads the
//! latest [`PartitionPressure`] of a partition without IO ([`Monitor::pressure`]) and
//! HOLD waits on its changes ([`Monitor::watch`]); `DescribeSubscription`
//! answers from the measurements ([`describe`]).
//!
//! Where the numbers come from:
//! - the cursor: the running dispatcher's statistics (`Registry::stats`),
//!   else the cursor committed to the subscription's coordinator; a
//!   subscription never consumed on the partition has none (its backlog
//!   is the whole log for an EARLIEST subscription, nothing for LATEST,
//!   whose position is pinned at the first consumer);
//! - backlog messages: high watermark − mark-delete − acknowledged ranges
//!   above it (for a running dispatcher: held unacknowledged + unread);
//! - backlog bytes: messages × bytes per offset of the closed segments
//!   (size / offsets), else of the batch read at the mark-delete offset;
//! - oldest age: now − first timestamp of the batch holding the
//!   mark-delete offset (read once per mark-delete value, then cached);
//! - rates: handled messages (high watermark − backlog − evicted) and the
//!   high watermark sampled every check, over `[backlog] rate_window_ms`.
//!
//! One file per concern: `mod.rs` the monitor (state per partition and
//! subscription, the check loop, measuring a subscription); `levels.rs`
//! the pure rules (quotas, levels, backlog of a cursor, drain estimates,
//! rate windows); `evict.rs` the EVICT policy (moving a cursor past the
//! oldest messages); `describe.rs` `DescribeSubscription`.

use crate::clients::nameserver_call;
use crate::error::BrokerError;
use crate::lost_ranges::LostRange;
use crate::partition::{Partition, Phase};
use crate::subscription::{self, AckedRanges, CursorSnapshot, SubscriptionStats};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use futures::StreamExt;
use sluice_proto::pressure::signed_drain_ms;
use sluice_proto::v1::{
    BacklogPolicy, DescribeSubscriptionRequest, DescribeSubscriptionResponse,
    ListSubscriptionsRequest, PressureLevel, SegmentState, Subscription, SubscriptionPartitionLag,
    TopicConfig,
};
use sluice_proto::{ErrorCode, Pressure};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod describe;
mod evict;
mod levels;

pub use describe::describe;
use evict::evict;
pub(crate) use evict::evict_committed;
pub use levels::{
    backlog_of_cursor, estimated_drain_ms, level_of, PartitionPressure, Quota, RateWindow,
};

/// Partitions measured at once (each check may ask a coordinator and read
/// one batch per subscription).
const MAX_CONCURRENT_CHECKS: usize = 16;
/// Longest one partition's check may take; a slow coordinator or store
/// must not stall the others' next round.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the consumer groups coordinated here get their partitions'
/// lag refreshed for backlog-weighted assignment.
const GROUP_BACKLOG_REFRESH: Duration = Duration::from_secs(10);
/// Most rate samples kept per subscription and partition.
const MAX_SAMPLES: usize = 1000;
/// Most topics whose subscription lists are cached.
const MAX_CACHED_TOPICS: usize = 10_000;
/// Default warning line when the topic says 0 (the nameserver fills it).
const DEFAULT_WARN_RATIO_PERCENT: u32 = 80;
/// Default HOLD time when the topic says 0 (the nameserver fills it).
const DEFAULT_HOLD_TIMEOUT_MS: u64 = 30_000;
/// Bytes read at the mark-delete offset to learn its timestamp.
const OLDEST_READ_BYTES: usize = 64 * 1024;
/// Most accepted-lost ranges the oldest-offset read steps over in one
/// measurement (each needs a read; the rest wait for the next pass).
const MAX_LOST_RANGES_STEPPED: usize = 8;
/// Names the oldest-offset read in a partition's tally of skipped lost offsets.
const OLDEST_READER: &str = "backlog oldest read";
/// Most partitions one DescribeSubscription may name.
const MAX_DESCRIBE_PARTITIONS: usize = sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC as usize;

/// One subscription on one partition, as last measured.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    pub mark_delete: u64,
    pub high_watermark: u64,
    pub backlog_messages: u64,
    pub backlog_bytes: u64,
    pub oldest_age_ms: u64,
    pub drain_per_sec: f64,
    pub incoming_per_sec: f64,
    pub estimated_drain_ms: Option<u64>,
    pub stats: Option<SubscriptionStats>,
    pub level: Option<(PressureLevel, Option<&'static str>)>,
    pub evicted: u64,
    pub measured_at_ms: u64,
}

/// One subscription on one partition, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSample {
    pub topic: String,
    pub subscription: String,
    pub backlog_messages: u64,
    pub oldest_age_ms: u64,
    pub in_flight: u64,
    /// Since this broker's dispatcher for the partition started.
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// `PressureLevel`: 0 OK, 1 WARN, 2 LIMIT.
    pub level: i32,
}

#[derive(Default)]
struct SubscriptionState {
    created_at_ms: u64,
    rates: RateWindow,
    /// (mark-delete, first timestamp of its batch, bytes per offset there).
    oldest: Option<(u64, i64, Option<f64>)>,
    evicted: u64,
    latest: Measurement,
}

struct PartitionState {
    epoch: u64,
    pressure: watch::Sender<PartitionPressure>,
    subscriptions: Mutex<BTreeMap<String, SubscriptionState>>,
    /// One check at a time per partition: the monitor's and a describe's
    /// would otherwise both evict the same messages and count them twice.
    checking: tokio::sync::Mutex<()>,
}

/// The monitor's state for every partition served here.
#[derive(Default)]
pub struct Monitor {
    partitions: RwLock<HashMap<PartitionKey, Arc<PartitionState>>>,
    /// Topic → its subscriptions and when they were listed.
    subscriptions: Mutex<HashMap<String, (Vec<Subscription>, Instant)>>,
}

impl Monitor {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PartitionKey, Arc<PartitionState>>> {
        self.partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PartitionKey, Arc<PartitionState>>> {
        self.partitions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The latest pressure of a partition (OK when never measured). No IO.
    pub fn pressure(&self, key: &PartitionKey) -> PartitionPressure {
        self.read()
            .get(key)
            .map(|state| *state.pressure.borrow())
            .unwrap_or_default()
    }

    /// The lowest mark-delete offset of the partition's subscriptions as
    /// last measured, for retention: `Some(u64::MAX)` when the topic has no
    /// subscription, `None` while one of them has not been measured under
    /// this ownership `epoch` or the list cannot be had (retention then
    /// waits rather than delete what a subscription may still need). The
    /// list is asked afresh: a subscription created a moment ago counts.
    pub async fn slowest_mark_delete(
        &self,
        shared: &Shared,
        key: &PartitionKey,
        epoch: u64,
    ) -> Option<u64> {
        let listed = match self.subscriptions_of(shared, &key.topic, true).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::debug!(partition = %key, %error, "retention: cannot list subscriptions; keeping segments");
                return None;
            }
        };
        if listed.is_empty() {
            return Some(u64::MAX);
        }
        let state = self.read().get(key).cloned()?;
        if state.epoch != epoch {
            return None;
        }
        let measured = state.lock();
        let mut floor = u64::MAX;
        for subscription in &listed {
            let measurement = measured.get(&subscription.name)?;
            if measurement.latest.measured_at_ms == 0
                || measurement.created_at_ms != subscription.created_at_ms
            {
                return None;
            }
            floor = floor.min(measurement.latest.mark_delete);
        }
        Some(floor)
    }

    /// Every subscription's latest measurement on every partition
    /// measured here, for the metrics (read at scrape time).
    pub fn samples(&self) -> Vec<SubscriptionSample> {
        let partitions: Vec<(PartitionKey, Arc<PartitionState>)> = self
            .read()
            .iter()
            .map(|(key, state)| (key.clone(), state.clone()))
            .collect();
        let mut samples = Vec::new();
        for (key, state) in partitions {
            for (name, measured) in state.lock().iter() {
                let latest = &measured.latest;
                if latest.measured_at_ms == 0 {
                    continue;
                }
                let counters = latest.stats.as_ref().map(|stats| &stats.counters);
                samples.push(SubscriptionSample {
                    topic: key.topic.clone(),
                    subscription: name.clone(),
                    backlog_messages: latest.backlog_messages,
                    oldest_age_ms: latest.oldest_age_ms,
                    in_flight: latest.stats.as_ref().map_or(0, |stats| stats.in_flight),
                    redelivered: counters.map_or(0, |counters| counters.redelivered),
                    dead_lettered: counters.map_or(0, |counters| counters.dead_lettered),
                    level: latest.level.map_or(0, |(level, _)| level as i32),
                });
            }
        }
        samples
    }

    /// Changes of a partition's pressure, for HOLD.
    pub fn watch(&self, partition: &Partition) -> watch::Receiver<PartitionPressure> {
        self.state_of(partition).pressure.subscribe()
    }

    fn state_of(&self, partition: &Partition) -> Arc<PartitionState> {
        if let Some(state) = self.read().get(&partition.key) {
            if state.epoch == partition.epoch {
                return state.clone();
            }
        }
        let mut partitions = self.write();
        let state = partitions
            .entry(partition.key.clone())
            .or_insert_with(|| Arc::new(PartitionState::new(partition.epoch)));
        if state.epoch != partition.epoch {
            *state = Arc::new(PartitionState::new(partition.epoch));
        }
        state.clone()
    }

    /// Forgets partitions no longer served here.
    fn retain(&self, served: &HashSet<PartitionKey>) {
        self.write().retain(|key, _| served.contains(key));
    }

    pub(crate) async fn subscriptions_of(
        &self,
        shared: &Shared,
        topic: &str,
        refresh: bool,
    ) -> Result<Vec<Subscription>, BrokerError> {
        let max_age = Duration::from_millis(shared.config.backlog.subscriptions_refresh_ms);
        if !refresh {
            let cache = self
                .subscriptions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((subscriptions, at)) = cache.get(topic) {
                if at.elapsed() < max_age {
                    return Ok(subscriptions.clone());
                }
            }
        }
        let listed = nameserver_call!(
            &shared.clients,
            list_subscriptions,
            ListSubscriptionsRequest {
                topic: topic.to_string(),
            }
        )?
        .subscriptions;
        let mut cache = self
            .subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_CACHED_TOPICS && !cache.contains_key(topic) {
            cache.clear();
        }
        cache.insert(topic.to_string(), (listed.clone(), Instant::now()));
        Ok(listed)
    }
}

impl PartitionState {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            pressure: watch::channel(PartitionPressure::default()).0,
            subscriptions: Mutex::new(BTreeMap::new()),
            checking: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SubscriptionState>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The monitor task.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(shared.config.backlog.check_interval_ms.max(1));
    let mut groups_refreshed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::wait_until_set(&mut shutdown) => return,
        }
        let partitions: Vec<Arc<Partition>> = shared
            .partitions()
            .into_iter()
            .filter(|partition| is_monitored(partition))
            .collect();
        let served: HashSet<PartitionKey> = partitions
            .iter()
            .map(|partition| partition.key.clone())
            .collect();
        shared.backlog.retain(&served);
        futures::stream::iter(partitions)
            .for_each_concurrent(MAX_CONCURRENT_CHECKS, |partition| {
                let shared = shared.clone();
                async move {
                    match tokio::time::timeout(CHECK_TIMEOUT, check(&shared, &partition, false))
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::debug!(partition = %partition.key, %error, "backlog check failed")
                        }
                        Err(_) => {
                            tracing::debug!(partition = %partition.key, "backlog check timed out")
                        }
                    }
                }
            })
            .await;
        if groups_refreshed.elapsed() >= GROUP_BACKLOG_REFRESH {
            groups_refreshed = Instant::now();
            if tokio::time::timeout(CHECK_TIMEOUT, shared.coordinator.refresh_backlog(&shared))
                .await
                .is_err()
            {
                tracing::debug!("consumer group backlog refresh timed out");
            }
        }
    }
}

fn is_monitored(partition: &Partition) -> bool {
    let status = partition.status();
    status.phase == Phase::Serving && status.loaded && !partition.key.topic.starts_with("__")
}

/// Measures one partition's subscriptions, publishes its pressure and
/// applies EVICT.
async fn check(
    shared: &Shared,
    partition: &Arc<Partition>,
    refresh_subscriptions: bool,
) -> Result<(), BrokerError> {
    let state = shared.backlog.state_of(partition);
    let _checking = state.checking.lock().await;
    let subscriptions = shared
        .backlog
        .subscriptions_of(shared, &partition.key.topic, refresh_subscriptions)
        .await?;
    let topic_quota = Quota::of(&partition.config());
    let running: HashMap<String, SubscriptionStats> = shared
        .subscriptions
        .stats(&partition.key)
        .await
        .into_iter()
        .map(|stats| (stats.subscription.clone(), stats))
        .collect();
    let bytes_per_offset = closed_segments_bytes_per_offset(partition);
    let mut measured: Vec<(Subscription, Measurement, Quota)> = Vec::new();
    for subscription in subscriptions {
        let stats = running.get(&subscription.name).cloned();
        let quota = topic_quota.for_subscription(&subscription);
        match measure(
            shared,
            partition,
            &state,
            &subscription,
            stats,
            bytes_per_offset,
            &quota,
        )
        .await
        {
            Ok(measurement) => measured.push((subscription, measurement, quota)),
            Err(error) => {
                tracing::debug!(partition = %partition.key, subscription = %subscription.name, %error, "cannot measure the backlog")
            }
        }
    }
    {
        let names: HashSet<&str> = measured
            .iter()
            .map(|(subscription, _, _)| subscription.name.as_str())
            .collect();
        state.lock().retain(|name, _| names.contains(name.as_str()));
    }
    let at_limit = |measurement: &Measurement| {
        measurement.level.map(|(level, _)| level) == Some(PressureLevel::Limit)
    };
    let limiting: Vec<BacklogPolicy> = measured
        .iter()
        .filter(|(_, measurement, _)| at_limit(measurement))
        .map(|(_, _, quota)| quota.policy)
        .collect();
    let policy = [
        BacklogPolicy::Reject,
        BacklogPolicy::Hold,
        BacklogPolicy::Evict,
    ]
    .into_iter()
    .find(|policy| limiting.contains(policy))
    .unwrap_or(BacklogPolicy::Unspecified);
    let slowest = measured
        .iter()
        .map(|(_, measurement, _)| measurement)
        .max_by_key(|measurement| {
            (
                measurement.level.map(|(level, _)| level),
                measurement.backlog_messages,
            )
        });
    let pressure = slowest
        .map(|measurement| PartitionPressure {
            reported: Pressure {
                level: measurement
                    .level
                    .map(|(level, _)| level)
                    .unwrap_or(PressureLevel::Ok),
                backlog_messages: measurement.backlog_messages,
                backlog_bytes: measurement.backlog_bytes,
                estimated_drain_ms: measurement.estimated_drain_ms,
            },
            policy,
        })
        .unwrap_or_default();
    let mut previous_level = PressureLevel::Ok;
    state.pressure.send_if_modified(|current| {
        previous_level = current.reported.level;
        let changed = *current != pressure;
        *current = pressure;
        changed
    });
    if previous_level != pressure.reported.level {
        // The operator's alert: a quota's warning line or limit crossed
        // (either way), once per change.
        let reason = slowest
            .and_then(|measurement| measurement.level)
            .and_then(|(_, reason)| reason)
            .unwrap_or("-");
        tracing::warn!(
            partition = %partition.key,
            from = previous_level.as_str_name(),
            to = pressure.reported.level.as_str_name(),
            quota = reason,
            backlog_messages = pressure.reported.backlog_messages,
            backlog_bytes = pressure.reported.backlog_bytes,
            policy = pressure.policy.as_str_name(),
            "backlog pressure level changed"
        );
    }
    for (subscription, measurement, quota) in &measured {
        if quota.policy == BacklogPolicy::Evict && at_limit(measurement) {
            if let Err(error) =
                evict(shared, partition, &state, subscription, measurement, quota).await
            {
                tracing::warn!(partition = %partition.key, subscription = %subscription.name, %error, "backlog eviction failed; retrying next check");
            }
        }
    }
    Ok(())
}

/// Where a subscription's cursor stands on a partition.
struct CursorPosition {
    mark_delete: u64,
    backlog: u64,
}

async fn cursor_position(
    shared: &Shared,
    partition: &Partition,
    subscription: &Subscription,
    stats: Option<&SubscriptionStats>,
    high_watermark: u64,
    log_start_offset: u64,
) -> Result<CursorPosition, BrokerError> {
    if let Some(stats) = stats {
        return Ok(CursorPosition {
            mark_delete: stats.mark_delete,
            backlog: stats
                .unacknowledged
                .saturating_add(high_watermark.saturating_sub(stats.read_position)),
        });
    }
    Ok(
        match committed_cursor(shared, partition, subscription).await? {
            Some(snapshot) => {
                let mut acked = snapshot.acked;
                // Retention removed what lies below the log start: it no longer
                // counts (the dispatcher skips it when it runs).
                if acked.mark_delete() < log_start_offset {
                    acked.insert_range(acked.mark_delete(), log_start_offset);
                }
                CursorPosition {
                    mark_delete: acked.mark_delete(),
                    backlog: backlog_of_cursor(&acked, high_watermark),
                }
            }
            None => {
                // Where the first consumer will start.
                let start = subscription::start::initial_offset(
                    subscription,
                    partition.key.partition,
                    log_start_offset,
                    high_watermark,
                );
                CursorPosition {
                    mark_delete: start,
                    backlog: high_watermark.saturating_sub(start),
                }
            }
        },
    )
}

/// The cursor committed for this subscription (None when never consumed,
/// or committed by an earlier subscription of the same name).
pub(crate) async fn committed_cursor(
    shared: &Shared,
    partition: &Partition,
    subscription: &Subscription,
) -> Result<Option<CursorSnapshot>, BrokerError> {
    let group = subscription::cursor_group(&subscription.name)?;
    let Some(bytes) = subscription::fetch_cursor(shared, &group, &partition.key).await? else {
        return Ok(None);
    };
    match CursorSnapshot::decode(&bytes) {
        Ok(snapshot) if snapshot.subscription_created_at_ms == subscription.created_at_ms => {
            Ok(Some(snapshot))
        }
        Ok(_) => Ok(None),
        Err(error) => Err(BrokerError::Internal(format!(
            "stored cursor of {:?} on {} is corrupt: {error}",
            subscription.name, partition.key
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    shared: &Shared,
    partition: &Partition,
    state: &PartitionState,
    subscription: &Subscription,
    stats: Option<SubscriptionStats>,
    bytes_per_offset: Option<f64>,
    quota: &Quota,
) -> Result<Measurement, BrokerError> {
    let status = partition.status();
    let position = cursor_position(
        shared,
        partition,
        subscription,
        stats.as_ref(),
        status.high_watermark,
        status.log_start_offset,
    )
    .await?;
    let now_ms = u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0);
    let cached_oldest = {
        let mut subscriptions = state.lock();
        let entry = subscriptions.entry(subscription.name.clone()).or_default();
        if entry.created_at_ms != subscription.created_at_ms {
            *entry = SubscriptionState {
                created_at_ms: subscription.created_at_ms,
                ..SubscriptionState::default()
            };
        }
        entry
            .oldest
            .filter(|(mark, _, _)| *mark == position.mark_delete)
    };
    let oldest = if position.backlog == 0 || position.mark_delete >= status.high_watermark {
        None
    } else if let Some(cached) = cached_oldest {
        Some(cached)
    } else {
        let sample = first_batch_at(partition, position.mark_delete).await;
        sample.map(|(timestamp_ms, ratio)| (position.mark_delete, timestamp_ms, ratio))
    };
    let oldest_age_ms = oldest
        .map(|(_, timestamp_ms, _)| now_ms.saturating_sub(u64::try_from(timestamp_ms).unwrap_or(0)))
        .unwrap_or(0);
    let per_offset = bytes_per_offset.or(oldest.and_then(|(_, _, ratio)| ratio));
    let backlog_bytes = per_offset
        .map(|ratio| (position.backlog as f64 * ratio).round() as u64)
        .unwrap_or(0);
    let mut subscriptions = state.lock();
    let entry = subscriptions.entry(subscription.name.clone()).or_default();
    entry.oldest = oldest.or(entry.oldest);
    let handled = status
        .high_watermark
        .saturating_sub(position.backlog)
        .saturating_sub(entry.evicted);
    entry.rates.push(
        now_ms,
        handled,
        status.high_watermark,
        shared.config.backlog.rate_window_ms,
    );
    let (drain_per_sec, incoming_per_sec) = entry.rates.rates().unwrap_or((0.0, 0.0));
    let level = quota
        .any()
        .then(|| level_of(quota, position.backlog, backlog_bytes, oldest_age_ms));
    entry.latest = Measurement {
        mark_delete: position.mark_delete,
        high_watermark: status.high_watermark,
        backlog_messages: position.backlog,
        backlog_bytes,
        oldest_age_ms,
        drain_per_sec,
        incoming_per_sec,
        estimated_drain_ms: estimated_drain_ms(position.backlog, drain_per_sec),
        stats,
        level,
        evicted: entry.evicted,
        measured_at_ms: now_ms,
    };
    Ok(entry.latest.clone())
}

/// Bytes per offset over the closed segments (their sizes and offset
/// ranges are final); None before the first segment closes.
fn closed_segments_bytes_per_offset(partition: &Partition) -> Option<f64> {
    let (bytes, offsets) = partition
        .segments()
        .iter()
        .filter(|segment| segment.state() == SegmentState::Closed)
        .filter(|segment| segment.end_offset > segment.base_offset)
        .fold((0u64, 0u64), |(bytes, offsets), segment| {
            (
                bytes.saturating_add(segment.size_bytes),
                offsets.saturating_add(segment.end_offset - segment.base_offset),
            )
        });
    (offsets > 0 && bytes > 0).then(|| bytes as f64 / offsets as f64)
}

/// The first timestamp of the batch holding `offset`, and that batch's
/// bytes per offset.
/// An offset in a range accepted as lost is read after the range (the
/// oldest message anyone can still read), stepping over at most
/// [`MAX_LOST_RANGES_STEPPED`] ranges.
pub(crate) async fn first_batch_at(
    partition: &Partition,
    offset: u64,
) -> Option<(i64, Option<f64>)> {
    let mut offset = offset;
    let mut stepped = 0;
    let bytes = loop {
        match partition.read(offset, OLDEST_READ_BYTES).await {
            Ok(bytes) => break bytes,
            Err(BrokerError::DataLost { start, end, .. }) if stepped < MAX_LOST_RANGES_STEPPED => {
                let range = LostRange { start, end };
                if partition.lost_skips.skipped(OLDEST_READER, range) {
                    tracing::warn!(partition = %partition.key, lost = %range, "the oldest unacknowledged offset lies in a range accepted as lost; measuring from its end");
                }
                offset = offset.max(end);
                stepped += 1;
            }
            Err(error) => {
                tracing::debug!(partition = %partition.key, offset, %error, "cannot read the oldest unacknowledged batch");
                return None;
            }
        }
    };
    let header = sluice_proto::batch::BatchIter::new(&bytes)
        .filter_map(Result::ok)
        .map(|(_, header, _)| header)
        .find(|header| header.end_offset() > offset)?;
    let offsets = header.end_offset().saturating_sub(header.base_offset);
    let ratio = (offsets > 0).then(|| f64::from(header.batch_length) / offsets as f64);
    Some((header.first_timestamp_ms, ratio))
}
