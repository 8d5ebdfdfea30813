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

/// A topic's backlog quotas, defaults filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// 0: no quota of that kind.
    pub bytes: u64,
    pub messages: u64,
    pub age_ms: u64,
    pub warn_ratio_percent: u32,
    pub policy: BacklogPolicy,
    pub hold_timeout_ms: u64,
}

impl Quota {
    pub fn of(config: &TopicConfig) -> Self {
        Self {
            bytes: config.backlog_quota_bytes,
            messages: config.backlog_quota_messages,
            age_ms: config.backlog_quota_age_ms,
            warn_ratio_percent: match config.backlog_warn_ratio_percent {
                0 => DEFAULT_WARN_RATIO_PERCENT,
                ratio => ratio.min(100),
            },
            policy: match config.backlog_policy() {
                BacklogPolicy::Unspecified => BacklogPolicy::Hold,
                policy => policy,
            },
            hold_timeout_ms: match config.backlog_hold_timeout_ms {
                0 => DEFAULT_HOLD_TIMEOUT_MS,
                timeout => timeout,
            },
        }
    }

    /// The quota of `subscription`: its own non-zero quotas and its policy
    /// (unless UNSPECIFIED) replace the topic's.
    pub fn for_subscription(&self, subscription: &Subscription) -> Self {
        let own = |value: u64, topic: u64| if value > 0 { value } else { topic };
        Self {
            bytes: own(subscription.backlog_quota_bytes, self.bytes),
            messages: own(subscription.backlog_quota_messages, self.messages),
            age_ms: own(subscription.backlog_quota_age_ms, self.age_ms),
            policy: match subscription.backlog_policy() {
                BacklogPolicy::Unspecified => self.policy,
                policy => policy,
            },
            ..*self
        }
    }

    pub fn any(&self) -> bool {
        self.bytes > 0 || self.messages > 0 || self.age_ms > 0
    }

    /// The warning line of a quota of `limit` (at most `limit`).
    fn warn_line(&self, limit: u64) -> u64 {
        (u128::from(limit) * u128::from(self.warn_ratio_percent) / 100) as u64
    }

    /// What eviction leaves of a quota of `limit`: its warning line, and
    /// below the limit itself (so the level leaves LIMIT).
    fn keep_line(&self, limit: u64) -> u64 {
        self.warn_line(limit).min(limit.saturating_sub(1))
    }
}

/// How one backlog stands against the quota: the level and which quota
/// decided it (the worst one).
pub fn level_of(
    quota: &Quota,
    messages: u64,
    bytes: u64,
    age_ms: u64,
) -> (PressureLevel, Option<&'static str>) {
    let mut worst = (PressureLevel::Ok, None);
    for (limit, value, name) in [
        (quota.messages, messages, "messages"),
        (quota.bytes, bytes, "bytes"),
        (quota.age_ms, age_ms, "age"),
    ] {
        if limit == 0 {
            continue;
        }
        let level = if value >= limit {
            PressureLevel::Limit
        } else if value >= quota.warn_line(limit) {
            PressureLevel::Warn
        } else {
            PressureLevel::Ok
        };
        if level > worst.0 {
            worst = (level, Some(name));
        }
    }
    worst
}

/// Messages at or above the mark-delete offset and below
/// `high_watermark` that are not acknowledged.
pub fn backlog_of_cursor(acked: &AckedRanges, high_watermark: u64) -> u64 {
    let mark = acked.mark_delete();
    if high_watermark <= mark {
        return 0;
    }
    let acknowledged: u64 = acked
        .ranges()
        .map(|(start, end)| end.min(high_watermark).saturating_sub(start))
        .sum();
    (high_watermark - mark).saturating_sub(acknowledged)
}

/// Time to work through `backlog` messages at `rate_per_sec`; None when
/// nothing drains.
pub fn estimated_drain_ms(backlog: u64, rate_per_sec: f64) -> Option<u64> {
    if backlog == 0 {
        return Some(0);
    }
    if rate_per_sec <= 0.0 || !rate_per_sec.is_finite() {
        return None;
    }
    let milliseconds = backlog as f64 / rate_per_sec * 1000.0;
    Some(if milliseconds >= u64::MAX as f64 {
        u64::MAX
    } else {
        milliseconds.ceil() as u64
    })
}

/// Samples of (time ms, handled messages, high watermark) over a sliding
/// window; rates are the change between its oldest and newest sample.
#[derive(Debug, Default, Clone)]
pub struct RateWindow {
    samples: VecDeque<(u64, u64, u64)>,
}

impl RateWindow {
    pub fn push(&mut self, at_ms: u64, handled: u64, high_watermark: u64, window_ms: u64) {
        if let Some(&(last_at, last_handled, _)) = self.samples.back() {
            if at_ms < last_at || handled < last_handled {
                // A clock step or a cursor moving back (a subscription
                // recreated, a takeover restoring an older commit): start over.
                self.samples.clear();
            }
        }
        self.samples.push_back((at_ms, handled, high_watermark));
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(first_at, _, _)| at_ms.saturating_sub(*first_at) > window_ms)
        {
            self.samples.pop_front();
        }
    }

    /// (drain, incoming) in messages per second; None until two samples
    /// at different times.
    pub fn rates(&self) -> Option<(f64, f64)> {
        let (first_at, first_handled, first_high) = *self.samples.front()?;
        let (last_at, last_handled, last_high) = *self.samples.back()?;
        if last_at <= first_at {
            return None;
        }
        let seconds = (last_at - first_at) as f64 / 1000.0;
        Some((
            last_handled.saturating_sub(first_handled) as f64 / seconds,
            last_high.saturating_sub(first_high) as f64 / seconds,
        ))
    }
}

/// The partition's pressure: what produce answers report, and at LIMIT
/// what producers are subject to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPressure {
    pub reported: Pressure,
    /// At LIMIT: what producers are subject to (REJECT if a subscription at
    /// its limit rejects, else HOLD if one holds); EVICT or UNSPECIFIED
    /// leave producers alone.
    pub policy: BacklogPolicy,
}

impl Default for PartitionPressure {
    fn default() -> Self {
        Self {
            reported: Pressure::default(),
            policy: BacklogPolicy::Unspecified,
        }
    }
}

impl PartitionPressure {
    /// At a limit whose policy is `policy`.
    pub fn limits_with(&self, policy: BacklogPolicy) -> bool {
        self.reported.level == PressureLevel::Limit && self.policy == policy
    }
}

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

/// EVICT: moves the subscription's cursor past its oldest messages until
/// every quota at its limit is back at its keep line.
async fn evict(
    shared: &Shared,
    partition: &Partition,
    state: &PartitionState,
    subscription: &Subscription,
    measurement: &Measurement,
    quota: &Quota,
) -> Result<(), BrokerError> {
    let high_watermark = measurement.high_watermark;
    let mut target = measurement.mark_delete;
    if quota.messages > 0 && measurement.backlog_messages >= quota.messages {
        target = target.max(high_watermark.saturating_sub(quota.keep_line(quota.messages)));
    }
    if quota.bytes > 0 && measurement.backlog_bytes >= quota.bytes {
        let per_message =
            measurement.backlog_bytes as f64 / measurement.backlog_messages.max(1) as f64;
        let keep = (quota.keep_line(quota.bytes) as f64 / per_message.max(1.0)).floor() as u64;
        target = target.max(high_watermark.saturating_sub(keep));
    }
    if quota.age_ms > 0 && measurement.oldest_age_ms >= quota.age_ms {
        let cutoff = sluice_proto::now_unix_ms()
            .saturating_sub(i64::try_from(quota.keep_line(quota.age_ms)).unwrap_or(i64::MAX));
        let first_young = partition
            .offset_for_timestamp(&partition.status(), cutoff)
            .await?;
        target = target.max(first_young);
    }
    let target = target.min(high_watermark);
    if target <= measurement.mark_delete {
        return Ok(());
    }
    let evicted = match shared
        .subscriptions
        .evict_before(&partition.key, &subscription.name, target)
        .await
    {
        Some(evicted) => evicted,
        None => evict_committed(shared, partition, subscription, target).await?,
    };
    tracing::info!(partition = %partition.key, subscription = %subscription.name, evicted, up_to = target, "backlog quota: evicted the oldest unacknowledged messages");
    if let Some(entry) = state.lock().get_mut(&subscription.name) {
        entry.evicted = entry.evicted.saturating_add(evicted);
        entry.latest.evicted = entry.evicted;
    }
    Ok(())
}

/// EVICT without a running dispatcher: rewrites the committed cursor.
/// (A dispatcher starting meanwhile may commit its older cursor over it;
/// the next check then evicts again.)
pub(crate) async fn evict_committed(
    shared: &Shared,
    partition: &Partition,
    subscription: &Subscription,
    target: u64,
) -> Result<u64, BrokerError> {
    let status = partition.status();
    let mut snapshot = match committed_cursor(shared, partition, subscription).await? {
        Some(snapshot) => snapshot,
        None => CursorSnapshot {
            epoch: partition.epoch,
            subscription_created_at_ms: subscription.created_at_ms,
            acked: AckedRanges::new(status.log_start_offset),
            delivery_counts: BTreeMap::new(),
            parked_keys: Default::default(),
        },
    };
    if snapshot.epoch > partition.epoch {
        return Err(BrokerError::NotOwner {
            topic: partition.key.topic.clone(),
            partition: partition.key.partition,
        });
    }
    let before = backlog_of_cursor(&snapshot.acked, status.high_watermark);
    snapshot.epoch = partition.epoch;
    let mark = snapshot.acked.mark_delete();
    snapshot.acked.insert_range(mark, target);
    snapshot.delivery_counts = snapshot.delivery_counts.split_off(&target);
    let after = backlog_of_cursor(&snapshot.acked, status.high_watermark);
    let group = subscription::cursor_group(&subscription.name)?;
    subscription::commit_cursor(shared, &group, &partition.key, &snapshot).await?;
    Ok(before.saturating_sub(after))
}

fn milli(rate_per_sec: f64) -> u64 {
    if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
        (rate_per_sec * 1000.0).round() as u64
    } else {
        0
    }
}

/// `DescribeSubscription`: the subscription on the partitions served here
/// (measured now when the monitor has not yet).
pub async fn describe(
    shared: &Shared,
    request: DescribeSubscriptionRequest,
) -> Result<DescribeSubscriptionResponse, BrokerError> {
    sluice_proto::names::TopicName::any(&request.topic)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    if request.partitions.len() > MAX_DESCRIBE_PARTITIONS {
        return Err(BrokerError::InvalidArgument(format!(
            "at most {MAX_DESCRIBE_PARTITIONS} partitions per request"
        )));
    }
    let subscriptions = shared
        .backlog
        .subscriptions_of(shared, &request.topic, true)
        .await?;
    if !subscriptions
        .iter()
        .any(|subscription| subscription.name == request.name)
    {
        return Err(BrokerError::Relayed(sluice_proto::SluiceError::new(
            ErrorCode::UnknownSubscription,
            format!(
                "no subscription {:?} on topic {:?}",
                request.name, request.topic
            ),
        )));
    }
    let mut partitions: Vec<Arc<Partition>> = shared
        .partitions()
        .into_iter()
        .filter(|partition| partition.key.topic == request.topic)
        .filter(|partition| {
            request.partitions.is_empty() || request.partitions.contains(&partition.key.partition)
        })
        .collect();
    partitions.sort_by_key(|partition| partition.key.partition);
    let mut answered = Vec::new();
    for wanted in &request.partitions {
        if !partitions
            .iter()
            .any(|partition| partition.key.partition == *wanted)
        {
            let error = shared.not_served_error(&request.topic, *wanted).await;
            answered.push(SubscriptionPartitionLag {
                partition: *wanted,
                error: error.code() as i32,
                error_message: error.to_string(),
                ..Default::default()
            });
        }
    }
    for partition in partitions {
        answered.push(describe_partition(shared, &partition, &request.name).await);
    }
    answered.sort_by_key(|lag| lag.partition);
    Ok(DescribeSubscriptionResponse {
        topic: request.topic,
        name: request.name,
        partitions: answered,
    })
}

async fn describe_partition(
    shared: &Shared,
    partition: &Arc<Partition>,
    name: &str,
) -> SubscriptionPartitionLag {
    let index = partition.key.partition;
    if !is_monitored(partition) {
        return SubscriptionPartitionLag {
            partition: index,
            error: ErrorCode::Unavailable as i32,
            error_message: format!("{} is not serving yet", partition.key),
            ..Default::default()
        };
    }
    let state = shared.backlog.state_of(partition);
    let known = state.lock().contains_key(name);
    if !known {
        if let Err(error) = check(shared, partition, true).await {
            return SubscriptionPartitionLag {
                partition: index,
                error: error.code() as i32,
                error_message: error.to_string(),
                ..Default::default()
            };
        }
    }
    let Some(measurement) = state.lock().get(name).map(|entry| entry.latest.clone()) else {
        return SubscriptionPartitionLag {
            partition: index,
            error: ErrorCode::Unavailable as i32,
            error_message: format!(
                "the backlog of {name:?} on {} is not measured yet",
                partition.key
            ),
            ..Default::default()
        };
    };
    // The dispatcher's live numbers are fresher than the last check's.
    let stats = shared
        .subscriptions
        .stats(&partition.key)
        .await
        .into_iter()
        .find(|stats| stats.subscription == name)
        .or(measurement.stats.clone());
    let consumers = stats.as_ref().map_or(0, |stats| stats.consumers);
    let (level, reason) = measurement.level.unwrap_or((PressureLevel::Ok, None));
    SubscriptionPartitionLag {
        partition: index,
        error: ErrorCode::None as i32,
        error_message: String::new(),
        mark_delete: measurement.mark_delete,
        high_watermark: measurement.high_watermark,
        backlog_messages: measurement.backlog_messages,
        backlog_bytes: measurement.backlog_bytes,
        oldest_unacknowledged_age_ms: measurement.oldest_age_ms,
        drain_rate_milli_per_sec: milli(measurement.drain_per_sec),
        incoming_rate_milli_per_sec: milli(measurement.incoming_per_sec),
        estimated_drain_ms: signed_drain_ms(measurement.estimated_drain_ms),
        consumers,
        in_flight: stats.as_ref().map_or(0, |stats| stats.in_flight),
        redelivered: stats.as_ref().map_or(0, |stats| stats.counters.redelivered),
        dead_lettered: stats
            .as_ref()
            .map_or(0, |stats| stats.counters.dead_lettered),
        evicted: measurement.evicted,
        pressure: level as i32,
        pressure_reason: reason.unwrap_or_default().to_string(),
        per_consumer_rate_milli_per_sec: if consumers > 0 {
            milli(measurement.drain_per_sec / f64::from(consumers))
        } else {
            0
        },
        measured_at_ms: measurement.measured_at_ms,
        lost_offsets: stats
            .as_ref()
            .map_or(0, |stats| stats.counters.lost_offsets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(messages: u64, bytes: u64, age_ms: u64) -> Quota {
        Quota {
            bytes,
            messages,
            age_ms,
            warn_ratio_percent: 80,
            policy: BacklogPolicy::Reject,
            hold_timeout_ms: 1000,
        }
    }

    #[test]
    fn levels_follow_the_warning_line_and_the_quota() {
        let quota = quota(100, 0, 0);
        assert_eq!(level_of(&quota, 0, 0, 0), (PressureLevel::Ok, None));
        assert_eq!(level_of(&quota, 79, 0, 0), (PressureLevel::Ok, None));
        assert_eq!(
            level_of(&quota, 80, 0, 0),
            (PressureLevel::Warn, Some("messages"))
        );
        assert_eq!(
            level_of(&quota, 100, 0, 0),
            (PressureLevel::Limit, Some("messages"))
        );
        // Kinds without a quota never count, however large.
        assert_eq!(
            level_of(&quota, 10, u64::MAX, u64::MAX).0,
            PressureLevel::Ok
        );
    }

    #[test]
    fn the_worst_quota_decides() {
        let quota = quota(100, 1000, 60_000);
        assert_eq!(
            level_of(&quota, 85, 2000, 1000),
            (PressureLevel::Limit, Some("bytes"))
        );
        assert_eq!(
            level_of(&quota, 10, 10, 59_000),
            (PressureLevel::Warn, Some("age"))
        );
    }

    #[test]
    fn defaults_fill_a_bare_topic_config() {
        let quota = Quota::of(&TopicConfig {
            backlog_quota_messages: 5,
            ..TopicConfig::default()
        });
        assert_eq!(quota.warn_ratio_percent, 80);
        assert_eq!(quota.policy, BacklogPolicy::Hold);
        assert_eq!(quota.hold_timeout_ms, DEFAULT_HOLD_TIMEOUT_MS);
        assert!(quota.any());
        assert!(!Quota::of(&TopicConfig::default()).any());
    }

    #[test]
    fn a_subscriptions_own_quotas_replace_the_topics() {
        let topic = quota(100, 1000, 0);
        let own = topic.for_subscription(&Subscription {
            backlog_quota_messages: 10,
            backlog_policy: BacklogPolicy::Evict as i32,
            ..Subscription::default()
        });
        assert_eq!((own.messages, own.bytes, own.age_ms), (10, 1000, 0));
        assert_eq!(own.policy, BacklogPolicy::Evict);
        assert_eq!(own.warn_ratio_percent, 80);
        let inherited = topic.for_subscription(&Subscription::default());
        assert_eq!(inherited, topic);
    }

    #[test]
    fn eviction_keeps_below_the_limit_even_at_a_full_warning_ratio() {
        let mut full = quota(100, 0, 0);
        full.warn_ratio_percent = 100;
        assert_eq!(full.keep_line(100), 99);
        assert_eq!(quota(100, 0, 0).keep_line(100), 80);
    }

    #[test]
    fn backlog_skips_acknowledged_ranges_and_ends_at_the_high_watermark() {
        let mut acked = AckedRanges::new(10);
        acked.insert_range(15, 20);
        acked.insert_range(30, 40);
        // [10, 35): 25 offsets, of which 15..20 and 30..35 acknowledged.
        assert_eq!(backlog_of_cursor(&acked, 35), 15);
        assert_eq!(backlog_of_cursor(&acked, 50), 50 - 10 - 5 - 10);
        assert_eq!(backlog_of_cursor(&acked, 5), 0);
    }

    #[test]
    fn drain_estimate_is_backlog_over_rate_and_unknown_without_progress() {
        assert_eq!(estimated_drain_ms(0, 0.0), Some(0));
        assert_eq!(estimated_drain_ms(100, 0.0), None);
        assert_eq!(estimated_drain_ms(100, 50.0), Some(2000));
        assert_eq!(estimated_drain_ms(1, 3.0), Some(334));
    }

    #[test]
    fn rates_come_from_the_window_edges() {
        let mut window = RateWindow::default();
        assert_eq!(window.rates(), None);
        window.push(1000, 0, 100, 10_000);
        assert_eq!(window.rates(), None);
        window.push(2000, 50, 300, 10_000);
        assert_eq!(window.rates(), Some((50.0, 200.0)));
        // Samples older than the window are dropped.
        window.push(20_000, 50, 300, 10_000);
        assert_eq!(window.rates(), None);
        window.push(22_000, 150, 300, 10_000);
        assert_eq!(window.rates(), Some((50.0, 0.0)));
        // A cursor moving back starts afresh instead of a negative rate.
        window.push(23_000, 10, 300, 10_000);
        assert_eq!(window.rates(), None);
    }
}
