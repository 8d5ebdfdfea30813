//! [`Consumer`]: group (subscribe) or manual (assign) consumption with
//! background fetching, tracked positions and commits.

mod corrupt;
mod data_loss;
#[cfg(test)]
mod data_loss_tests;
mod fetcher;
mod group;
mod isolation;
mod positions;
#[cfg(test)]
mod tests;
mod txn_offsets;

pub use corrupt::CorruptBatchPolicy;
pub use data_loss::DataLossPolicy;
pub(crate) use group::commit_transactional;
pub use isolation::Isolation;
pub use txn_offsets::{GroupMetadata, TopicPartitionOffset};

use crate::cluster::{Cluster, TopicPartition};
use crate::{ClientConfig, ClientError};
use bytes::Bytes;
use fetcher::{FetchShared, Fetched};
use futures::Stream;
use group::{GroupShared, OffsetTarget};
use positions::{accept_offset, AssignmentChange, PositionTracker};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Pause before retrying to start newly assigned partitions after a
/// retriable failure (coordinator moving), in milliseconds.
const ASSIGNMENT_RETRY_BACKOFF_MS: u64 = 100;

/// Where to start reading a partition.
///
/// ```
/// use sluice_client::StartOffset;
/// let from_an_hour_ago = StartOffset::Timestamp(sluice_client::now_unix_ms() - 3_600_000);
/// # let _ = from_an_hour_ago;
/// assert_eq!(StartOffset::default(), StartOffset::Earliest);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartOffset {
    /// The first retained offset.
    #[default]
    Earliest,
    /// The end of the log: only records written from now on.
    Latest,
    /// This exact offset.
    Offset(u64),
    /// The first record with a timestamp at or after this unix ms.
    Timestamp(i64),
}

/// Consumer settings.
///
/// ```
/// use sluice_client::{ConsumerConfig, StartOffset};
/// let config = ConsumerConfig {
///     group: Some("billing".into()),
///     reset: StartOffset::Latest,
///     ..ConsumerConfig::default()
/// };
/// assert!(config.auto_commit);
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Bootstrap nameservers, TLS and credentials, timeouts.
    pub client: ClientConfig,
    /// Consumer group; required by [`Consumer::subscribe`], optional for
    /// [`Consumer::assign`] (then commits go to this group from outside
    /// its membership).
    pub group: Option<String>,
    /// Commit positions automatically (from within `recv`, on release of
    /// a partition and on close). Default: true. When off, call
    /// [`Consumer::commit`] yourself; a partition released by a rebalance
    /// is then not committed, so its next owner resumes from your last
    /// commit.
    pub auto_commit: bool,
    /// Interval between automatic commits, in milliseconds. Default: 1000.
    pub auto_commit_interval_ms: u64,
    /// How long the coordinator waits for a heartbeat before evicting this
    /// member, in milliseconds. Default: 10000.
    pub session_timeout_ms: u32,
    /// Where to start a partition without a committed offset, and after
    /// OFFSET_OUT_OF_RANGE. Default: earliest.
    pub reset: StartOffset,
    /// Upper bound on one fetch response, in bytes. Default: 8 MiB.
    pub fetch_max_bytes: u32,
    /// Upper bound on one partition in a fetch response, in bytes. Default:
    /// 4 MiB (a reader draining a backlog from the stores needs ranges this
    /// large for the broker's read-ahead to keep up; see BENCHMARKS.md).
    pub fetch_partition_max_bytes: u32,
    /// Long-poll wait for new data, in milliseconds. Default: 500.
    pub fetch_max_wait_ms: u32,
    /// Fetched bytes (as sent, i.e. compressed) buffered ahead of the
    /// application; fetching pauses above it (it can be exceeded by one
    /// fetch response). Default: 64 MiB.
    pub max_buffered_bytes: usize,
    /// What to do with a stored batch whose records cannot be decoded:
    /// stop the partition at it with [`ClientError::CorruptBatch`] (its
    /// offsets; seek past it to go on) or skip it. See
    /// [`CorruptBatchPolicy`]. Default: `Fail`.
    pub on_corrupt_batch: CorruptBatchPolicy,
    /// What to do at a range of the log an operator accepted as lost:
    /// skip it (logged, counted in [`Consumer::skipped_lost_offsets`]) or
    /// stop the partition with [`ClientError::DataLost`] (seek past it to
    /// go on). See [`DataLossPolicy`]. Default: `Skip`.
    pub on_data_loss: DataLossPolicy,
    /// Read committed records only, or everything (ADR 0016). See
    /// [`Isolation`]. Default: `ReadCommitted`.
    pub isolation: Isolation,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            group: None,
            auto_commit: true,
            auto_commit_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            reset: StartOffset::Earliest,
            fetch_max_bytes: 8 * 1024 * 1024,
            fetch_partition_max_bytes: 4 * 1024 * 1024,
            fetch_max_wait_ms: 500,
            max_buffered_bytes: 64 * 1024 * 1024,
            on_corrupt_batch: CorruptBatchPolicy::Fail,
            on_data_loss: DataLossPolicy::Skip,
            isolation: Isolation::ReadCommitted,
        }
    }
}

/// A consumed record.
///
/// ```
/// # fn show(record: sluice_client::ConsumerRecord) {
/// println!("{}/{} @ {}: {:?}", record.topic, record.partition, record.offset, record.value);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic it was read from.
    pub topic: String,
    /// The partition of `topic` it was read from.
    pub partition: u32,
    /// Its offset in the partition: unique, never reused.
    pub offset: u64,
    /// The record's timestamp as its producer gave or stamped it, in
    /// milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The record's key, if it has one (`None` is not an empty key).
    pub key: Option<Bytes>,
    /// The record's value; `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Application headers, in the order the producer gave them.
    pub headers: Vec<(String, Bytes)>,
    /// Tags for subscription selectors.
    pub tags: Vec<String>,
}

/// Reads records.
///
/// **Group mode** ([`Consumer::subscribe`]): the group's coordinator spreads
/// partitions over members; a background task heartbeats. A partition
/// taken away is released *inside the next `recv()`*, i.e. after the
/// application finished the record before: buffered records of it are
/// dropped, its position is committed (auto-commit), and only then is it
/// reported as released, so its next owner starts exactly after the last
/// record this member returned. An application that processes each record
/// before calling `recv()` again therefore sees every record of the group
/// once across graceful rebalances. After a crash or eviction, records
/// returned since the last commit are delivered again (at least once).
///
/// **Assign mode** ([`Consumer::assign`]): the listed partitions from the
/// given start, no group membership.
///
/// Within one consumer's ownership of a partition, offsets are delivered in
/// order, none skipped (except by `seek` or the reset after
/// OFFSET_OUT_OF_RANGE, which is logged) and none twice.
///
/// ```no_run
/// use sluice_client::{Consumer, ConsumerConfig};
///
/// # async fn example() -> Result<(), sluice_client::ClientError> {
/// let config = ConsumerConfig { group: Some("billing".into()), ..ConsumerConfig::default() };
/// let mut consumer = Consumer::subscribe(config, &["orders"]).await?;
/// loop {
///     let record = consumer.recv().await?;
///     println!("{}/{} @ {}", record.topic, record.partition, record.offset);
/// #   break;
/// }
/// consumer.close().await?;
/// # Ok(())
/// # }
/// ```
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: Arc<ConsumerConfig>,
    fetch: Arc<FetchShared>,
    fetched: mpsc::UnboundedReceiver<Fetched>,
    /// Records taken from the fetch buffer, not yet returned.
    current: VecDeque<ConsumerRecord>,
    positions: PositionTracker,
    group: Option<Arc<GroupShared>>,
    /// Never signalled in assign mode; lets `recv` select uniformly.
    idle: Arc<Notify>,
    last_auto_commit: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumer {
    /// Joins `config.group` and consumes `topics`.
    pub async fn subscribe(
        config: ConsumerConfig,
        topics: &[&str],
    ) -> Result<Consumer, ClientError> {
        let Some(group_name) = config.group.clone() else {
            return Err(ClientError::InvalidArgument(
                "Consumer::subscribe needs ConsumerConfig.group (use Consumer::assign to read without a group)".into(),
            ));
        };
        sluice_proto::names::GroupName::new(&group_name).map_err(|error| {
            ClientError::InvalidArgument(format!("group name '{group_name}': {error}"))
        })?;
        if topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "subscribe to at least one topic".into(),
            ));
        }
        let cluster = Cluster::connect(config.client.clone()).await?;
        cluster.start_route_watch();
        Self::subscribe_on(cluster, config, group_name, topics, None).await
    }

    async fn subscribe_on(
        cluster: Arc<Cluster>,
        config: ConsumerConfig,
        group_name: String,
        topics: &[&str],
        coordinator: Option<String>,
    ) -> Result<Consumer, ClientError> {
        let mut consumer = Self::start_on(cluster, config);
        for topic in topics {
            // Fail early and clearly on a missing topic.
            consumer.cluster.topic_routes(topic).await?;
        }
        let shared = Arc::new(GroupShared::new(
            group_name,
            topics.iter().map(|topic| topic.to_string()).collect(),
            consumer.config.session_timeout_ms,
        ));
        shared.lock().coordinator = coordinator;
        match group::heartbeat_once(&consumer.cluster, &shared).await {
            Ok(_) => {}
            Err(error) if error.is_retriable() => {
                tracing::warn!(group = %shared.group, %error, "first heartbeat failed; retrying in the background");
            }
            Err(error) => return Err(error),
        }
        consumer.tasks.push(tokio::spawn(group::heartbeat_loop(
            consumer.cluster.clone(),
            shared.clone(),
        )));
        consumer.group = Some(shared);
        Ok(consumer)
    }

    /// Reads the given partitions, each from its start, without joining a
    /// group.
    pub async fn assign(
        config: ConsumerConfig,
        partitions: Vec<(String, u32, StartOffset)>,
    ) -> Result<Consumer, ClientError> {
        let cluster = Cluster::connect(config.client.clone()).await?;
        cluster.start_route_watch();
        Self::assign_on(cluster, config, partitions).await
    }

    async fn assign_on(
        cluster: Arc<Cluster>,
        config: ConsumerConfig,
        partitions: Vec<(String, u32, StartOffset)>,
    ) -> Result<Consumer, ClientError> {
        let consumer = Self::start_on(cluster, config);
        for (topic, partition, start) in partitions {
            let routes = consumer.cluster.topic_routes(&topic).await?;
            if partition as usize >= routes.partitions.len() {
                return Err(ClientError::InvalidArgument(format!(
                    "topic '{topic}' has {} partitions; partition {partition} does not exist",
                    routes.partitions.len()
                )));
            }
            consumer
                .fetch
                .lock()
                .set_start(TopicPartition::new(topic, partition), start);
        }
        consumer.fetch.wake.notify_waiters();
        Ok(consumer)
    }

    fn start_on(cluster: Arc<Cluster>, config: ConsumerConfig) -> Consumer {
        let config = Arc::new(config);
        let fetch = Arc::new(FetchShared::new());
        let (output, fetched) = mpsc::unbounded_channel();
        let manager = tokio::spawn(fetcher::run_manager(
            cluster.clone(),
            config.clone(),
            fetch.clone(),
            output,
        ));
        Consumer {
            cluster,
            config,
            fetch,
            fetched,
            current: VecDeque::new(),
            positions: PositionTracker::default(),
            group: None,
            idle: Arc::new(Notify::new()),
            last_auto_commit: Instant::now(),
            tasks: vec![manager],
        }
    }

    /// The next record. Also where rebalances are applied and automatic
    /// commits happen.
    ///
    /// Errors: a partition whose data cannot be decoded (or that fails
    /// with an error retrying cannot fix, such as a deleted topic) yields
    /// one error here and is paused until [`Consumer::seek`]; the other
    /// partitions keep going, so calling `recv` again is fine. Transient
    /// errors (owner moved, coordinator moved) are retried internally.
    pub async fn recv(&mut self) -> Result<ConsumerRecord, ClientError> {
        loop {
            if self.fetch.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            match self.apply_assignment().await {
                Ok(()) => {}
                Err(error) if error.is_retriable() => {
                    // New partitions wait until their committed offsets can
                    // be read; records of the others keep flowing.
                    tracing::warn!(%error, "cannot start newly assigned partitions yet; retrying");
                    if self.current.is_empty() {
                        tokio::time::sleep(Duration::from_millis(ASSIGNMENT_RETRY_BACKOFF_MS))
                            .await;
                    }
                }
                Err(error) => return Err(error),
            }
            self.maybe_auto_commit().await;
            if let Some(record) = self.next_record() {
                return Ok(record);
            }
            let notify = match &self.group {
                Some(group) => group.clone(),
                None => {
                    let idle = self.idle.clone();
                    tokio::select! {
                        item = self.fetched.recv() => self.take(item)?,
                        _ = idle.notified() => {}
                    }
                    continue;
                }
            };
            let commit_due = self.auto_commit_due_in();
            tokio::select! {
                item = self.fetched.recv() => self.take(item)?,
                _ = notify.assignment_changed.notified() => {}
                _ = tokio::time::sleep(commit_due) => {}
            }
        }
    }

    /// Like [`Consumer::recv`], giving up after `timeout` with `Ok(None)`.
    pub async fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ConsumerRecord>, ClientError> {
        // A buffered record needs no timer: skip arming one (a clock read
        // and timer bookkeeping per record).
        if let Some(record) = self.buffered_record() {
            return Ok(Some(record));
        }
        let mut receive = std::pin::pin!(self.recv());
        if let Poll::Ready(result) = futures::poll!(receive.as_mut()) {
            return result.map(Some);
        }
        match tokio::time::timeout(timeout, receive).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The records as a stream (never ends by itself; errors are items).
    pub fn stream(&mut self) -> impl Stream<Item = Result<ConsumerRecord, ClientError>> + '_ {
        futures::stream::unfold(self, |consumer| async move {
            let item = consumer.recv().await;
            Some((item, consumer))
        })
    }

    /// Commits the position after every record `recv()` has returned.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.config.group.clone() else {
            return Err(ClientError::InvalidArgument(
                "commit needs ConsumerConfig.group: offsets are stored per group".into(),
            ));
        };
        self.commit_positions(&group, None).await
    }

    async fn commit_positions(
        &mut self,
        group: &str,
        only: Option<&BTreeSet<TopicPartition>>,
    ) -> Result<(), ClientError> {
        let offsets = self.positions.uncommitted(only);
        if offsets.is_empty() {
            return Ok(());
        }
        let target = OffsetTarget {
            group,
            member: self.group.as_deref(),
        };
        group::commit(&self.cluster, &target, &offsets).await?;
        self.positions.committed(&offsets);
        Ok(())
    }

    /// Moves the position of an assigned partition; buffered records of it
    /// are dropped.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        to: StartOffset,
    ) -> Result<(), ClientError> {
        let partition = TopicPartition::new(topic, partition);
        {
            let mut state = self.fetch.lock();
            if !state.partitions.contains_key(&partition) {
                return Err(ClientError::InvalidArgument(format!(
                    "cannot seek {partition}: it is not assigned to this consumer"
                )));
            }
            state.set_start(partition.clone(), to);
        }
        self.current.retain(|record| {
            !(record.topic == partition.topic && record.partition == partition.partition)
        });
        match to {
            StartOffset::Offset(offset) => self.positions.set_position(&partition, offset),
            _ => self.positions.clear_position(&partition),
        }
        self.fetch.wake.notify_waiters();
        Ok(())
    }

    /// Corrupt batches skipped so far under [`CorruptBatchPolicy::Skip`]
    /// (each also logged at error level with its offsets).
    pub fn skipped_corrupt_batches(&self) -> u64 {
        self.fetch.skipped_corrupt_batches.load(Ordering::Relaxed)
    }

    /// Offsets skipped so far at ranges accepted as lost, under
    /// [`DataLossPolicy::Skip`] (each range also logged at warn level).
    pub fn skipped_lost_offsets(&self) -> u64 {
        self.fetch.skipped_lost_offsets.load(Ordering::Relaxed)
    }

    /// The offset of the next record [`Consumer::recv`] returns from
    /// `topic`/`partition`: past the last record it returned, or where
    /// fetching started when none was returned since the assignment or the
    /// last seek. `None` while a start (`Earliest`, `Latest`, a timestamp)
    /// is not resolved yet, or when the partition is not assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        let partition = TopicPartition::new(topic, partition);
        let state = self.fetch.lock();
        let fetching = state.partitions.get(&partition)?;
        self.positions.position(&partition).or(fetching.start)
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        let mut partitions: Vec<(String, u32)> = self
            .fetch
            .lock()
            .partitions
            .keys()
            .map(|partition| (partition.topic.clone(), partition.partition))
            .collect();
        partitions.sort();
        partitions
    }

    /// Commits (auto-commit mode), leaves the group and stops background
    /// tasks.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut result = Ok(());
        if self.config.auto_commit {
            if let Some(group) = self.config.group.clone() {
                result = self.commit_positions(&group, None).await;
                if let Err(error) = &result {
                    tracing::warn!(%error, "final commit failed");
                }
            }
        }
        self.stop();
        if let Some(group) = &self.group {
            if let Err(error) = group::leave(&self.cluster, group).await {
                tracing::warn!(group = %group.group, %error, "leaving the group failed; the coordinator will evict this member after the session timeout");
            }
        }
        result
    }

    fn stop(&self) {
        self.fetch.closed.store(true, Ordering::Release);
        self.fetch.wake.notify_waiters();
        if let Some(group) = &self.group {
            group.closed.store(true, Ordering::Release);
            group.heartbeat_now.notify_one();
        }
        for task in &self.tasks {
            task.abort();
        }
    }

    /// A buffered record when `recv` would return it without other work
    /// (assign mode: no rebalance to apply, no automatic commit), taken
    /// without going through `recv`'s future.
    fn buffered_record(&mut self) -> Option<ConsumerRecord> {
        if self.group.is_some()
            || self.config.group.is_some()
            || self.fetch.closed.load(Ordering::Acquire)
        {
            return None;
        }
        self.next_record()
    }

    fn next_record(&mut self) -> Option<ConsumerRecord> {
        let mut record = self.current.pop_front()?;
        // Lend the record's topic to the lookup key instead of copying it:
        // this runs for every record.
        let partition = TopicPartition::new(std::mem::take(&mut record.topic), record.partition);
        self.positions.record_returned(&partition, record.offset);
        record.topic = partition.topic;
        Some(record)
    }

    /// Takes one item from the fetch buffer.
    fn take(&mut self, item: Option<Fetched>) -> Result<(), ClientError> {
        let Some(item) = item else {
            return Err(ClientError::Closed);
        };
        match item {
            Fetched::Records {
                partition,
                generation,
                start,
                records,
                bytes,
            } => {
                self.fetch.release(bytes);
                if !self.is_current(&partition, generation) {
                    return Ok(());
                }
                let mut expected = self.positions.position(&partition);
                let mut records = records;
                records.retain(|record| {
                    let accepted = accept_offset(expected, start, record.offset);
                    if accepted {
                        expected = Some(record.offset + 1);
                    }
                    accepted
                });
                if self.current.is_empty() {
                    // Usual case: take the fetched vector over (O(1))
                    // instead of moving every record into the queue.
                    self.current = VecDeque::from(records);
                } else {
                    self.current.extend(records);
                }
                Ok(())
            }
            Fetched::Error {
                partition,
                generation,
                error,
            } => {
                if self.is_current(&partition, generation) {
                    Err(error)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn is_current(&self, partition: &TopicPartition, generation: u64) -> bool {
        self.fetch
            .lock()
            .partitions
            .get(partition)
            .is_some_and(|position| position.generation == generation)
    }

    fn auto_commit_due_in(&self) -> Duration {
        if !self.config.auto_commit || self.config.group.is_none() {
            return Duration::from_secs(3600);
        }
        Duration::from_millis(self.config.auto_commit_interval_ms)
            .saturating_sub(self.last_auto_commit.elapsed())
    }

    async fn maybe_auto_commit(&mut self) {
        if !self.config.auto_commit || self.auto_commit_due_in() > Duration::ZERO {
            return;
        }
        let Some(group) = self.config.group.clone() else {
            return;
        };
        self.last_auto_commit = Instant::now();
        if let Err(error) = self.commit_positions(&group, None).await {
            tracing::warn!(group, %error, "automatic commit failed; will retry");
        }
    }

    /// Applies the coordinator's latest target: releases revoked partitions
    /// (commit, stop fetching) and starts new ones from their committed
    /// offset or `reset`.
    async fn apply_assignment(&mut self) -> Result<(), ClientError> {
        let Some(group) = self.group.clone() else {
            return Ok(());
        };
        let change = {
            let state = group.lock();
            match &state.target {
                Some(target) => AssignmentChange::between(&state.owned, target),
                None => return Ok(()),
            }
        };
        if change.is_empty() {
            return Ok(());
        }
        if !change.revoked.is_empty() {
            {
                let mut state = self.fetch.lock();
                for partition in &change.revoked {
                    state.partitions.remove(partition);
                }
            }
            self.current.retain(|record| {
                !change
                    .revoked
                    .contains(&TopicPartition::new(record.topic.clone(), record.partition))
            });
            if self.config.auto_commit {
                if let Err(error) = self
                    .commit_positions(&group.group, Some(&change.revoked))
                    .await
                {
                    tracing::warn!(group = %group.group, %error, "commit on release failed; the next owner may see some records again");
                }
            }
            for partition in &change.revoked {
                self.positions.remove(partition);
            }
            tracing::info!(group = %group.group, revoked = ?change.revoked, "released partitions");
            let mut state = group.lock();
            for partition in &change.revoked {
                state.owned.remove(partition);
            }
            drop(state);
            group.heartbeat_now.notify_one();
        }
        if !change.added.is_empty() {
            let target = OffsetTarget {
                group: &group.group,
                member: Some(&group),
            };
            let committed = group::fetch_committed(&self.cluster, &target, &change.added).await?;
            {
                let mut state = self.fetch.lock();
                for partition in &change.added {
                    match committed.get(partition) {
                        Some(offset) => {
                            self.positions.set_committed(partition, *offset);
                            self.positions.set_position(partition, *offset);
                            state.set_start(partition.clone(), StartOffset::Offset(*offset));
                        }
                        None => state.set_start(partition.clone(), self.config.reset),
                    }
                }
            }
            tracing::info!(group = %group.group, added = ?change.added, "started partitions");
            let mut state = group.lock();
            state.owned.extend(change.added.iter().cloned());
            drop(state);
            self.fetch.wake.notify_waiters();
            group.heartbeat_now.notify_one();
        }
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}
