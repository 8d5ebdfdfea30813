//! Group membership: the background `GroupHeartbeat` loop and offset
//! commit/fetch at the coordinator.

use crate::cluster::{backoff, Cluster, TopicPartition};
use crate::ClientError;
use sluice_proto::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, GroupHeartbeatRequest, PartitionOffset,
    TopicPartitions,
};
use sluice_proto::ErrorCode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Attempts of one commit/fetch-offsets call while the coordinator moves.
const MAX_COORDINATOR_ATTEMPTS: u32 = 4;
/// Retries of a fetch of committed offsets while a partition's offsets are
/// pending in a transaction (50 ms doubling to 1 s: about 16 s in all).
const MAX_UNSTABLE_ATTEMPTS: u32 = 20;
/// Backoff between failed heartbeats, in milliseconds (first and largest).
const HEARTBEAT_RETRY_BACKOFF_MS: u64 = 100;
const HEARTBEAT_RETRY_BACKOFF_MAX_MS: u64 = 2_000;
/// Used until the coordinator says otherwise, in milliseconds.
const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub(crate) struct GroupState {
    pub member_id: String,
    pub member_epoch: i64,
    /// What this member owns (fetches); reported in every heartbeat.
    pub owned: BTreeSet<TopicPartition>,
    /// The coordinator's latest target assignment.
    pub target: Option<BTreeSet<TopicPartition>>,
    pub coordinator: Option<String>,
    pub heartbeat_interval_ms: u64,
    /// Set when no heartbeat succeeded for a whole session timeout: the
    /// coordinator has evicted this member and may have given its
    /// partitions to others, so they are released without claiming them on
    /// rejoin.
    pub session_lost: bool,
}

/// State shared between the consumer and its heartbeat task.
pub(crate) struct GroupShared {
    pub group: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: u32,
    pub state: Mutex<GroupState>,
    /// Signalled when the target assignment changed.
    pub assignment_changed: Notify,
    /// Signalled when the owned set changed, to report it promptly.
    pub heartbeat_now: Notify,
    pub closed: AtomicBool,
}

impl GroupShared {
    pub fn new(group: String, topics: Vec<String>, session_timeout_ms: u32) -> Self {
        Self {
            group,
            topics,
            session_timeout_ms,
            state: Mutex::new(GroupState {
                heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
                ..GroupState::default()
            }),
            assignment_changed: Notify::new(),
            heartbeat_now: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Plain data; a panic elsewhere does not make it unusable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) fn to_topic_partitions(partitions: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for partition in partitions {
        by_topic
            .entry(partition.topic.as_str())
            .or_default()
            .push(partition.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

pub(crate) fn from_topic_partitions(list: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    list.iter()
        .flat_map(|entry| {
            entry
                .partitions
                .iter()
                .map(|partition| TopicPartition::new(entry.topic.clone(), *partition))
        })
        .collect()
}

async fn coordinator(cluster: &Cluster, shared: &GroupShared) -> Result<String, ClientError> {
    if let Some(address) = shared.lock().coordinator.clone() {
        return Ok(address);
    }
    let address = cluster.find_coordinator(&shared.group).await?;
    shared.lock().coordinator = Some(address.clone());
    Ok(address)
}

fn coordinator_lost(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::NotCoordinator | ErrorCode::Unavailable | ErrorCode::ShuttingDown)
    ) || matches!(
        error,
        ClientError::Transport { .. } | ClientError::Timeout { .. }
    )
}

/// One heartbeat (join when the member id is empty). Applies the answer to
/// the shared state; returns whether the target changed.
pub(crate) async fn heartbeat_once(
    cluster: &Cluster,
    shared: &GroupShared,
) -> Result<bool, ClientError> {
    let address = coordinator(cluster, shared).await?;
    let request = {
        let state = shared.lock();
        GroupHeartbeatRequest {
            group: shared.group.clone(),
            member_id: state.member_id.clone(),
            member_epoch: state.member_epoch,
            topics: shared.topics.clone(),
            owned: if state.session_lost {
                Vec::new()
            } else {
                to_topic_partitions(&state.owned)
            },
            session_timeout_ms: shared.session_timeout_ms,
            client_id: cluster.config.client_id.clone(),
        }
    };
    let mut client = cluster.broker(&address)?;
    let result = cluster
        .unary("GroupHeartbeat", &address, client.group_heartbeat(request))
        .await
        .and_then(|response| {
            match ClientError::from_code(
                response.error,
                format!("group '{}': {}", shared.group, response.error_message),
            ) {
                Some(error) => Err(error),
                None => Ok(response),
            }
        });
    let mut state = shared.lock();
    match result {
        Ok(response) => {
            state.member_id = response.member_id;
            state.member_epoch = response.member_epoch;
            if response.heartbeat_interval_ms > 0 {
                state.heartbeat_interval_ms = u64::from(response.heartbeat_interval_ms);
            }
            let target = from_topic_partitions(&response.assignment);
            let changed = state.target.as_ref() != Some(&target);
            state.target = Some(target);
            Ok(changed)
        }
        Err(error) => {
            if coordinator_lost(&error) {
                state.coordinator = None;
            }
            if matches!(
                error.code(),
                Some(ErrorCode::UnknownMember | ErrorCode::StaleMemberEpoch)
            ) {
                tracing::info!(group = %shared.group, %error, "fenced by the coordinator; rejoining with what it still owns");
                state.member_id.clear();
                state.member_epoch = 0;
            }
            Err(error)
        }
    }
}

/// Marks the session lost: every partition is to be released (without
/// claiming it again on rejoin) and the member rejoins under a new id.
/// Returns false when there was nothing to release.
pub(crate) fn lose_session(state: &mut GroupState) -> bool {
    let holds_something = !state.owned.is_empty()
        || state
            .target
            .as_ref()
            .is_some_and(|target| !target.is_empty());
    state.target = Some(BTreeSet::new());
    state.member_id.clear();
    state.member_epoch = 0;
    state.session_lost = true;
    holds_something
}

/// Heartbeats until the consumer closes.
pub(crate) async fn heartbeat_loop(cluster: Arc<Cluster>, shared: Arc<GroupShared>) {
    let mut failures = 0u32;
    let session_timeout = Duration::from_millis(u64::from(shared.session_timeout_ms));
    // Counted from when the last successful heartbeat was *sent*, which is
    // no later than when the coordinator received it: this member gives up
    // its partitions before the coordinator can hand them to someone else.
    let mut last_success_sent = std::time::Instant::now();
    while !shared.closed.load(Ordering::Acquire) {
        let releasing = {
            let state = shared.lock();
            state.session_lost && !state.owned.is_empty()
        };
        if releasing {
            // Rejoin only once the application's next recv() has released
            // the lost partitions, so a stale position is never resumed.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(HEARTBEAT_RETRY_BACKOFF_MS)) => {}
                _ = shared.heartbeat_now.notified() => {}
            }
            continue;
        }
        let sent_at = std::time::Instant::now();
        let wait = match heartbeat_once(&cluster, &shared).await {
            Ok(changed) => {
                last_success_sent = sent_at;
                {
                    let mut state = shared.lock();
                    if state.session_lost && state.owned.is_empty() {
                        state.session_lost = false;
                    }
                }
                failures = 0;
                if changed {
                    shared.assignment_changed.notify_one();
                }
                Duration::from_millis(shared.lock().heartbeat_interval_ms)
            }
            Err(error) => {
                let rejoin = matches!(
                    error.code(),
                    Some(ErrorCode::UnknownMember | ErrorCode::StaleMemberEpoch)
                );
                if !rejoin {
                    tracing::warn!(group = %shared.group, %error, "group heartbeat failed");
                }
                if last_success_sent.elapsed() >= session_timeout
                    && lose_session(&mut shared.lock())
                {
                    tracing::warn!(
                        group = %shared.group,
                        session_timeout_ms = shared.session_timeout_ms,
                        "no successful heartbeat for a whole session; releasing every partition"
                    );
                    shared.assignment_changed.notify_one();
                }
                failures = failures.saturating_add(1);
                backoff(
                    failures - 1,
                    HEARTBEAT_RETRY_BACKOFF_MS,
                    HEARTBEAT_RETRY_BACKOFF_MAX_MS,
                )
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.heartbeat_now.notified() => {}
        }
    }
}

/// Leaves the group (epoch -1); best effort.
pub(crate) async fn leave(cluster: &Cluster, shared: &GroupShared) -> Result<(), ClientError> {
    let address = coordinator(cluster, shared).await?;
    let request = {
        let state = shared.lock();
        if state.member_id.is_empty() {
            return Ok(());
        }
        GroupHeartbeatRequest {
            group: shared.group.clone(),
            member_id: state.member_id.clone(),
            member_epoch: -1,
            topics: shared.topics.clone(),
            owned: Vec::new(),
            session_timeout_ms: shared.session_timeout_ms,
            client_id: cluster.config.client_id.clone(),
        }
    };
    let mut client = cluster.broker(&address)?;
    cluster
        .unary(
            "GroupHeartbeat (leave)",
            &address,
            client.group_heartbeat(request),
        )
        .await?;
    Ok(())
}

/// Where offset calls go: the live member's coordinator, or a coordinator
/// looked up for an out-of-group commit (assign mode).
pub(crate) struct OffsetTarget<'a> {
    pub group: &'a str,
    pub member: Option<&'a GroupShared>,
}

async fn offsets_coordinator(
    cluster: &Cluster,
    target: &OffsetTarget<'_>,
) -> Result<String, ClientError> {
    match target.member {
        Some(shared) => coordinator(cluster, shared).await,
        None => cluster.find_coordinator(target.group).await,
    }
}

fn forget_coordinator(target: &OffsetTarget<'_>) {
    if let Some(shared) = target.member {
        shared.lock().coordinator = None;
    }
}

/// Commits `offsets` (next offsets to consume).
pub(crate) async fn commit(
    cluster: &Cluster,
    target: &OffsetTarget<'_>,
    offsets: &[(TopicPartition, u64)],
) -> Result<(), ClientError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (member_id, member_epoch) = match target.member {
            Some(shared) => {
                let state = shared.lock();
                (state.member_id.clone(), state.member_epoch)
            }
            None => (String::new(), -1),
        };
        let request = CommitOffsetsRequest {
            group: target.group.to_string(),
            member_id,
            member_epoch,
            offsets: offsets
                .iter()
                .map(|(partition, offset)| PartitionOffset {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    offset: *offset,
                    metadata: String::new(),
                    error: 0,
                    ..Default::default()
                })
                .collect(),
            transaction: None,
        };
        let result = async {
            let address = offsets_coordinator(cluster, target).await?;
            let mut client = cluster.broker(&address)?;
            let response = cluster
                .unary("CommitOffsets", &address, client.commit_offsets(request))
                .await?;
            for offset in response.offsets {
                if let Some(error) = ClientError::from_code(
                    offset.error,
                    format!(
                        "commit of {}/{} at {} for group '{}'",
                        offset.topic, offset.partition, offset.offset, target.group
                    ),
                ) {
                    return Err(error);
                }
            }
            Ok(())
        }
        .await;
        match result {
            Err(error) if coordinator_lost(&error) && attempt < MAX_COORDINATOR_ATTEMPTS => {
                forget_coordinator(target);
                tokio::time::sleep(backoff(attempt - 1, 50, 1_000)).await;
            }
            Err(error)
                if error.code() == Some(ErrorCode::StaleMemberEpoch)
                    && attempt < MAX_COORDINATOR_ATTEMPTS =>
            {
                // The epoch moved on (rebalance in progress): heartbeat now
                // to learn the new one, then commit again.
                if let Some(shared) = target.member {
                    shared.heartbeat_now.notify_one();
                }
                tokio::time::sleep(backoff(attempt - 1, 50, 1_000)).await;
            }
            result => return result,
        }
    }
}

/// Commits `offsets` of `group` into the transaction `context` (ADR 0016
/// §5) at the group's coordinator, found by name; retried while the
/// coordinator moves or another transaction's offsets are pending
/// (`CONCURRENT_TRANSACTIONS`), until `deadline`.
pub(crate) async fn commit_transactional(
    cluster: &Cluster,
    group: &crate::GroupMetadata,
    offsets: &[crate::TopicPartitionOffset],
    context: sluice_proto::v1::TransactionContext,
    deadline: tokio::time::Instant,
) -> Result<(), ClientError> {
    let request = CommitOffsetsRequest {
        group: group.group.clone(),
        member_id: group.member_id.clone(),
        member_epoch: group.member_epoch,
        offsets: offsets
            .iter()
            .map(|offset| PartitionOffset {
                topic: offset.topic.clone(),
                partition: offset.partition,
                offset: offset.offset,
                ..Default::default()
            })
            .collect(),
        transaction: Some(context),
    };
    let mut attempt = 0;
    loop {
        let result = async {
            let address = cluster.find_coordinator(&group.group).await?;
            let mut client = cluster.broker(&address)?;
            let response = cluster
                .unary(
                    "CommitOffsets",
                    &address,
                    client.commit_offsets(request.clone()),
                )
                .await?;
            for offset in response.offsets {
                let context = format!(
                    "transactional commit of {}/{} at {} for group '{}'",
                    offset.topic, offset.partition, offset.offset, group.group
                );
                if let Some(error) = ClientError::from_code(offset.error, context) {
                    return Err(error);
                }
            }
            Ok(())
        }
        .await;
        let retry = match &result {
            Err(error) => {
                coordinator_lost(error)
                    || matches!(
                        error.code(),
                        Some(ErrorCode::ConcurrentTransactions | ErrorCode::Throttled)
                    )
            }
            Ok(()) => false,
        };
        let pause = backoff(attempt, 50, 1_000);
        if !retry || tokio::time::Instant::now() + pause >= deadline {
            return result;
        }
        tracing::debug!(group = %group.group, attempt, "transactional offset commit retried");
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// Committed offsets of `partitions`; absent ones have none. Asks for
/// stable offsets (ADR 0016 §5): a partition whose offsets a transaction
/// committed and whose marker has not arrived answers
/// `UNSTABLE_OFFSET_COMMIT`, retried here up to
/// [`MAX_UNSTABLE_ATTEMPTS`] times with a backoff, then returned
/// (retriable), so a partition's next owner starts where the previous
/// owner's transaction ends.
pub(crate) async fn fetch_committed(
    cluster: &Cluster,
    target: &OffsetTarget<'_>,
    partitions: &BTreeSet<TopicPartition>,
) -> Result<BTreeMap<TopicPartition, u64>, ClientError> {
    let mut attempt = 0;
    let mut unstable_attempt = 0;
    loop {
        attempt += 1;
        let request = FetchOffsetsRequest {
            group: target.group.to_string(),
            partitions: to_topic_partitions(partitions),
            require_stable: true,
        };
        let result = async {
            let address = offsets_coordinator(cluster, target).await?;
            let mut client = cluster.broker(&address)?;
            cluster
                .unary("FetchOffsets", &address, client.fetch_offsets(request))
                .await
        }
        .await;
        match result {
            Ok(response) => match stable_offsets(response.offsets, partitions) {
                Ok(committed) => return Ok(committed),
                Err(error) if unstable_attempt < MAX_UNSTABLE_ATTEMPTS => {
                    tracing::debug!(group = target.group, %error, "committed offsets not stable yet; retrying");
                    tokio::time::sleep(backoff(unstable_attempt, 50, 1_000)).await;
                    unstable_attempt += 1;
                }
                Err(error) => return Err(error),
            },
            Err(error) if coordinator_lost(&error) && attempt < MAX_COORDINATOR_ATTEMPTS => {
                forget_coordinator(target);
                tokio::time::sleep(backoff(attempt - 1, 50, 1_000)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The committed offsets of an answer, or the error of the first
/// partition that is not stable. Pure.
pub(crate) fn stable_offsets(
    offsets: Vec<PartitionOffset>,
    partitions: &BTreeSet<TopicPartition>,
) -> Result<BTreeMap<TopicPartition, u64>, ClientError> {
    let mut committed = BTreeMap::new();
    for offset in offsets {
        let partition = TopicPartition::new(offset.topic, offset.partition);
        if !partitions.contains(&partition) {
            continue;
        }
        if offset.error == ErrorCode::UnstableOffsetCommit as i32 {
            return Err(ClientError::Server(sluice_proto::SluiceError::new(
                ErrorCode::UnstableOffsetCommit,
                format!("{partition}: a transaction committed offsets and its marker has not arrived yet"),
            )));
        }
        if offset.error == 0 {
            committed.insert(partition, offset.offset);
        }
    }
    Ok(committed)
}

#[cfg(test)]
mod session_tests {
    use super::*;

    #[test]
    fn losing_the_session_releases_everything_and_rejoins_fresh() {
        let mut state = GroupState {
            member_id: "m-1".into(),
            member_epoch: 7,
            owned: [TopicPartition::new("t".to_string(), 0)]
                .into_iter()
                .collect(),
            target: Some(
                [TopicPartition::new("t".to_string(), 0)]
                    .into_iter()
                    .collect(),
            ),
            ..GroupState::default()
        };
        assert!(lose_session(&mut state));
        assert_eq!(state.target, Some(BTreeSet::new()));
        assert!(state.member_id.is_empty());
        assert_eq!(state.member_epoch, 0);
        assert!(state.session_lost);
        let mut idle = GroupState::default();
        assert!(!lose_session(&mut idle));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_partitions_round_trip() {
        let set: BTreeSet<_> = [
            TopicPartition::new("a", 1),
            TopicPartition::new("b", 0),
            TopicPartition::new("a", 0),
        ]
        .into_iter()
        .collect();
        let list = to_topic_partitions(&set);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].topic, "a");
        assert_eq!(list[0].partitions, vec![0, 1]);
        assert_eq!(from_topic_partitions(&list), set);
    }

    #[test]
    fn an_unstable_partition_fails_the_fetch_and_others_are_taken() {
        let wanted: BTreeSet<_> = [TopicPartition::new("a", 0), TopicPartition::new("a", 1)]
            .into_iter()
            .collect();
        let entry = |partition: u32, offset: u64, error: ErrorCode| PartitionOffset {
            topic: "a".into(),
            partition,
            offset,
            error: error as i32,
            ..Default::default()
        };
        let stable = stable_offsets(
            vec![entry(0, 5, ErrorCode::None), entry(7, 1, ErrorCode::None)],
            &wanted,
        )
        .expect("stable");
        assert_eq!(
            stable.into_iter().collect::<Vec<_>>(),
            vec![(TopicPartition::new("a", 0), 5)]
        );
        let unstable = stable_offsets(
            vec![
                entry(0, 5, ErrorCode::None),
                entry(1, 0, ErrorCode::UnstableOffsetCommit),
            ],
            &wanted,
        )
        .expect_err("unstable");
        assert_eq!(unstable.code(), Some(ErrorCode::UnstableOffsetCommit));
        assert!(unstable.is_retriable());
        // A partition not asked for does not matter.
        assert!(
            stable_offsets(vec![entry(9, 0, ErrorCode::UnstableOffsetCommit)], &wanted).is_ok()
        );
    }
}
