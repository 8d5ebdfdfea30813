//! Consumer-group coordinator for the groups whose `__consumer_offsets`
//! partition is served here: membership (join, heartbeat, leave, session
//! expiry) with the sticky, revoke-before-assign assignment of
//! `assignment`, and committed offsets kept as records in the offsets
//! partition and rebuilt by replaying it on takeover.

use crate::assignment::{balance_backlog, compute_targets, grantable, MemberInput, TopicPartition};
use crate::clients::{nameserver_call, request};
use crate::commit_record::{self, CommitRecord, CommittedOffset};
use crate::error::BrokerError;
use crate::group_lag_age;
use crate::internal_log::LogEntry;
use crate::member_identity::{check_member_principal, new_member_id};
use crate::partition::{Partition, Phase};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use pending::{PendingOffsets, TxnKey};
use sluice_acl::Principal;
use sluice_proto::batch;
use sluice_proto::names::{GroupName, CONSUMER_OFFSETS_TOPIC};
use sluice_proto::partitioning::offsets_partition_for_group;
use sluice_proto::v1::{
    CommitOffsetsRequest, CommitOffsetsResponse, DescribeGroupRequest, DescribeGroupResponse,
    FetchOffsetsRequest, FetchOffsetsResponse, GroupHeartbeatRequest, GroupHeartbeatResponse,
    GroupMember, ListOffsetsRequest, OffsetSpec, PartitionLag, PartitionOffset,
    RegisterGroupRequest, TopicPartitions,
};
use sluice_proto::ErrorCode;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Names the offsets replay in a partition's tally of skipped lost offsets.
const REPLAY_READER: &str = "offsets replay";
/// Most topics one member may subscribe to.
const MAX_TOPICS_PER_MEMBER: usize = 1000;

#[derive(Debug)]
struct Member {
    client_id: String,
    epoch: i64,
    previous_epoch: i64,
    topics: BTreeSet<String>,
    owned: BTreeSet<TopicPartition>,
    target: BTreeSet<TopicPartition>,
    granted: BTreeSet<TopicPartition>,
    last_heartbeat: Instant,
    session_timeout: Duration,
    /// Who joined: only it may heartbeat, leave or commit as this member.
    principal: Principal,
}

#[derive(Debug, Default)]
struct Group {
    members: BTreeMap<String, Member>,
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Offsets partitions replayed and served here.
    loaded: HashSet<u32>,
    /// Partition count of `__consumer_offsets`.
    offsets_partitions: u32,
    groups: HashMap<String, Group>,
    committed: HashMap<String, BTreeMap<TopicPartition, (u64, String)>>,
    /// Transactional offsets waiting for their marker (ADR 0016 §5), by
    /// offsets partition.
    pending: HashMap<u32, PendingOffsets>,
    /// Subscription cursors (base64, as committed) by group and partition.
    cursors: HashMap<String, BTreeMap<TopicPartition, String>>,
    registered: HashSet<String>,
    /// Lag per assigned partition of groups with several members, as last
    /// refreshed ([`Coordinator::refresh_backlog`]): weighs assignment
    /// (ADR 0012).
    backlog: HashMap<String, BTreeMap<TopicPartition, u64>>,
    /// Lag per committed partition of every group, as last refreshed; the
    /// `group_lag` metrics.
    lag: HashMap<String, BTreeMap<TopicPartition, u64>>,
    /// First timestamps at lagging groups' committed offsets, kept until
    /// they commit past them (`group_lag_age.rs`).
    lag_timestamps: group_lag_age::Timestamps,
    /// Lag in seconds per (group, topic), as last refreshed.
    lag_seconds: BTreeMap<(String, String), f64>,
}

/// Every group's committed offsets, as (group, [(partition, offset)]).
type CommittedOffsets = Vec<(String, Vec<(TopicPartition, u64)>)>;
/// The partitions assigned in each group with several members.
type AssignedPartitions = HashMap<String, BTreeSet<TopicPartition>>;

/// Most partitions whose lag one backlog refresh looks up (over all groups).
const MAX_BACKLOG_REFRESH_PARTITIONS: usize = 10_000;

pub struct Coordinator {
    state: Arc<Mutex<State>>,
    default_session_timeout_ms: u64,
    min_session_timeout_ms: u64,
    max_session_timeout_ms: u64,
    heartbeat_interval_ms: u64,
    max_members: usize,
    max_offsets_per_commit: usize,
    max_metadata_bytes: usize,
    max_pending_offsets_per_group: usize,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the maps half-updated in
    // a way later requests could not cope with.
    match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn group_topic_partitions(set: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (topic, partition) in set {
        by_topic.entry(topic).or_default().push(*partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn flatten(list: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    list.iter()
        .flat_map(|entry| {
            entry
                .partitions
                .iter()
                .map(|partition| (entry.topic.clone(), *partition))
        })
        .collect()
}

fn apply_commits(state: &mut State, group: &str, offsets: &[CommittedOffset]) {
    let committed = state.committed.entry(group.to_string()).or_default();
    for offset in offsets {
        committed.insert(
            (offset.topic.clone(), offset.partition),
            (offset.offset, offset.metadata.clone()),
        );
    }
    for offset in offsets.iter().filter(|offset| !offset.cursor.is_empty()) {
        state.cursors.entry(group.to_string()).or_default().insert(
            (offset.topic.clone(), offset.partition),
            offset.cursor.clone(),
        );
    }
}

/// Forgets everything committed for `group` (it was deleted).
fn forget_group(state: &mut State, group: &str) {
    state.committed.remove(group);
    state.cursors.remove(group);
    state.backlog.remove(group);
    state.lag.remove(group);
    state.lag_seconds.retain(|(lagging, _), _| lagging != group);
}

/// The live member a commit names (`None` for a commit from outside the
/// group, allowed only while the group has no members), checked for its
/// principal and its current or previous epoch.
fn member_for_commit<'a>(
    state: &'a State,
    request: &CommitOffsetsRequest,
    principal: &Principal,
) -> Result<Option<&'a Member>, BrokerError> {
    let members = state.groups.get(&request.group).map(|group| &group.members);
    let has_members = members.is_some_and(|members| !members.is_empty());
    if request.member_id.is_empty() {
        if request.member_epoch != -1 || has_members {
            return Err(BrokerError::UnknownMember {
                group: request.group.clone(),
                member_id: String::new(),
            });
        }
        return Ok(None);
    }
    let member = members
        .and_then(|members| members.get(&request.member_id))
        .ok_or_else(|| BrokerError::UnknownMember {
            group: request.group.clone(),
            member_id: request.member_id.clone(),
        })?;
    check_member_principal(
        &request.group,
        &request.member_id,
        &member.principal,
        principal,
    )?;
    if request.member_epoch != member.epoch && request.member_epoch != member.previous_epoch {
        return Err(BrokerError::StaleMemberEpoch {
            member_id: request.member_id.clone(),
            current: member.epoch,
            requested: request.member_epoch,
        });
    }
    Ok(Some(member))
}

/// A plain commit naming a partition with transactional offsets pending is
/// refused (ADR 0016 §5): the marker decides, not a race.
fn check_not_pending(
    state: &State,
    request: &CommitOffsetsRequest,
    offsets_partition: u32,
) -> Result<(), BrokerError> {
    let Some(pending) = state.pending.get(&offsets_partition) else {
        return Ok(());
    };
    for offset in &request.offsets {
        let key = (offset.topic.clone(), offset.partition);
        if let Some((producer_id, epoch)) = pending.holder(&request.group, &key) {
            return Err(BrokerError::ConcurrentTransactions(format!(
                "{}/{} of group {:?} has transactional offsets of producer {producer_id} epoch {epoch} pending; retry after its transaction ends",
                offset.topic, offset.partition, request.group
            )));
        }
    }
    Ok(())
}

/// A request's offsets as the records hold them (cursors in base64).
fn to_committed(offsets: &[PartitionOffset]) -> Vec<CommittedOffset> {
    offsets
        .iter()
        .map(|offset| CommittedOffset {
            topic: offset.topic.clone(),
            partition: offset.partition,
            offset: offset.offset,
            metadata: offset.metadata.clone(),
            cursor: if offset.cursor.is_empty() {
                String::new()
            } else {
                encode_base64(&offset.cursor)
            },
        })
        .collect()
}

/// The answer to a commit whose offsets are all durable.
fn accepted(offsets: Vec<PartitionOffset>) -> CommitOffsetsResponse {
    CommitOffsetsResponse {
        offsets: offsets
            .into_iter()
            .map(|offset| PartitionOffset {
                error: ErrorCode::None as i32,
                ..offset
            })
            .collect(),
    }
}

/// One entry of an offsets partition's replay.
enum Replayed {
    Record {
        group: String,
        record: CommitRecord,
        /// The transaction of a transactional commit.
        txn: Option<TxnKey>,
    },
    Marker {
        txn: TxnKey,
        commit: bool,
    },
}

/// The commit records of a replayed batch, or its marker.
fn replayed_entry(partition: &Partition, entry: LogEntry<'_>) -> Vec<Replayed> {
    match entry {
        LogEntry::Marker(marker) => vec![Replayed::Marker {
            txn: (marker.producer_id, marker.txn_epoch),
            commit: marker.commit,
        }],
        LogEntry::Records { header, records } => {
            let txn = header
                .transactional
                .then_some((header.producer_id, header.producer_epoch));
            records
                .iter()
                .filter_map(|record| {
                    match commit_record::decode(record.key.as_ref(), record.value.as_ref()) {
                        Ok((group, record)) => Some(Replayed::Record { group, record, txn }),
                        Err(error) => {
                            tracing::warn!(partition = %partition.key, offset = record.offset, %error, "skipping undecodable commit record");
                            None
                        }
                    }
                })
                .collect()
        }
    }
}

/// Applies one replayed record: a transactional commit's offsets wait for
/// its marker, others are committed (or forgotten) at once.
fn apply_record(
    state: &mut State,
    pending: &mut PendingOffsets,
    group: &str,
    record: &CommitRecord,
    txn: Option<TxnKey>,
) {
    match (record, txn) {
        (CommitRecord::Offsets(offsets), Some(txn)) => pending.install(group, txn, offsets),
        (CommitRecord::Offsets(offsets), None) => apply_commits(state, group, offsets),
        (CommitRecord::Removed { topic, partition }, _) => {
            let key = (topic.clone(), *partition);
            if let Some(committed) = state.committed.get_mut(group) {
                committed.remove(&key);
            }
            if let Some(cursors) = state.cursors.get_mut(group) {
                cursors.remove(&key);
            }
        }
        (CommitRecord::GroupDeleted, _) => {
            forget_group(state, group);
            pending.forget_group(group);
        }
    }
}

/// Refuses a subscription cursor written under an older ownership epoch
/// than the one held: a deposed partition owner must not roll a cursor
/// back (ADR 0011).
fn check_cursor_epoch(
    state: &State,
    group: &str,
    offset: &PartitionOffset,
) -> Result<(), BrokerError> {
    use crate::subscription::CursorSnapshot;
    let new_epoch = CursorSnapshot::peek_epoch(&offset.cursor)
        .map_err(|error| BrokerError::InvalidArgument(format!("cursor: {error}")))?;
    let held = state
        .cursors
        .get(group)
        .and_then(|cursors| cursors.get(&(offset.topic.clone(), offset.partition)));
    if let Some(held) = held {
        if let Some(held_epoch) = decode_base64(held)
            .ok()
            .and_then(|bytes| CursorSnapshot::peek_epoch(&bytes).ok())
        {
            if new_epoch < held_epoch {
                return Err(BrokerError::CursorFenced(format!(
                    "cursor of {}/{} for {group:?} was written under epoch {held_epoch}; \
                     epoch {new_epoch} is stale",
                    offset.topic, offset.partition
                )));
            }
        }
    }
    Ok(())
}

fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text)
}

impl Coordinator {
    pub fn new(config: &crate::config::GroupsConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            default_session_timeout_ms: config.session_timeout_ms,
            min_session_timeout_ms: config.min_session_timeout_ms,
            max_session_timeout_ms: config
                .max_session_timeout_ms
                .max(config.min_session_timeout_ms),
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            max_members: config.max_members,
            max_offsets_per_commit: config.max_offsets_per_commit,
            max_metadata_bytes: config.max_commit_metadata_bytes,
            max_pending_offsets_per_group: config.max_pending_offsets_per_group,
        }
    }

    /// Replays an offsets partition from its log start to its high
    /// watermark, then starts coordinating its groups. Transactional
    /// commits go to the pending offsets and the markers resolve them, as
    /// live (ADR 0016 §5); what is pending at the end waits for its marker.
    pub async fn load_partition(&self, partition: &Partition) -> Result<(), BrokerError> {
        let partition_count = partition.config().partitions;
        let index = partition.key.partition;
        let mut replayed: Vec<Replayed> = Vec::new();
        crate::internal_log::replay_entries(partition, REPLAY_READER, |entry| {
            replayed.extend(replayed_entry(partition, entry));
        })
        .await?;
        let mut state = lock(&self.state);
        state.offsets_partitions = partition_count;
        let mut pending = PendingOffsets::default();
        for entry in &replayed {
            match entry {
                Replayed::Record { group, record, txn } => {
                    if offsets_partition_for_group(group, partition_count.max(1)) == index {
                        apply_record(&mut state, &mut pending, group, record, *txn);
                    }
                }
                Replayed::Marker { txn, commit } => {
                    for (group, offsets) in pending.resolve(*txn, *commit) {
                        apply_commits(&mut state, &group, &offsets);
                    }
                }
            }
        }
        let still_pending = pending.len();
        state.pending.insert(index, pending);
        state.loaded.insert(index);
        let lost_offsets = partition.lost_skips.skipped_offsets(REPLAY_READER);
        tracing::info!(partition = %partition.key, records = replayed.len(), still_pending, lost_offsets, "offsets partition replayed; coordinating its groups");
        Ok(())
    }

    /// Forgets the groups of an offsets partition no longer served here.
    pub fn unload_partition(&self, offsets_partition: u32) {
        let mut state = lock(&self.state);
        state.loaded.remove(&offsets_partition);
        let partitions = state.offsets_partitions.max(1);
        let belongs =
            |group: &str| offsets_partition_for_group(group, partitions) == offsets_partition;
        state.groups.retain(|group, _| !belongs(group));
        state.pending.remove(&offsets_partition);
        state.committed.retain(|group, _| !belongs(group));
        state.cursors.retain(|group, _| !belongs(group));
        state.registered.retain(|group| !belongs(group));
    }

    /// The served, loaded offsets partition coordinating `group`.
    fn offsets_partition(
        &self,
        shared: &Shared,
        group: &str,
    ) -> Result<Arc<Partition>, BrokerError> {
        let not_coordinator = || BrokerError::NotCoordinator(format!("group {group:?}"));
        let partition_count = {
            let state = lock(&self.state);
            state.offsets_partitions
        };
        if partition_count == 0 {
            return Err(not_coordinator());
        }
        let index = offsets_partition_for_group(group, partition_count);
        let partition = shared
            .partition(&PartitionKey::new(CONSUMER_OFFSETS_TOPIC, index))
            .ok_or_else(not_coordinator)?;
        let loaded = lock(&self.state).loaded.contains(&index);
        if !loaded || partition.status().phase == Phase::Stopped {
            return Err(not_coordinator());
        }
        Ok(partition)
    }

    fn session_timeout(&self, requested_ms: u32) -> Duration {
        let wanted = if requested_ms == 0 {
            self.default_session_timeout_ms
        } else {
            u64::from(requested_ms)
        };
        Duration::from_millis(
            wanted.clamp(self.min_session_timeout_ms, self.max_session_timeout_ms),
        )
    }

    /// Removes members whose session timed out, in every group.
    pub fn evict_expired_members(&self) {
        let mut state = lock(&self.state);
        let now = Instant::now();
        for (name, group) in state.groups.iter_mut() {
            let before = group.members.len();
            group.members.retain(|member_id, member| {
                let alive = now.duration_since(member.last_heartbeat) <= member.session_timeout;
                if !alive {
                    tracing::info!(group = %name, member = %member_id, "session timed out; evicting");
                }
                alive
            });
            if group.members.len() != before {
                group.generation += 1;
            }
        }
    }

    pub async fn heartbeat(
        &self,
        shared: &Shared,
        request: GroupHeartbeatRequest,
        principal: &Principal,
    ) -> Result<GroupHeartbeatResponse, BrokerError> {
        GroupName::new(&request.group)
            .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
        if request.topics.len() > MAX_TOPICS_PER_MEMBER {
            return Err(BrokerError::InvalidArgument(format!(
                "at most {MAX_TOPICS_PER_MEMBER} topics per member"
            )));
        }
        self.offsets_partition(shared, &request.group)?;
        self.evict_expired_members();
        let topics: Vec<String> = {
            let state = lock(&self.state);
            let mut topics: BTreeSet<String> = request.topics.iter().cloned().collect();
            if let Some(group) = state.groups.get(&request.group) {
                for member in group.members.values() {
                    topics.extend(member.topics.iter().cloned());
                }
            }
            topics.into_iter().collect()
        };
        let partition_counts = shared.partition_counts(&topics).await?;
        let (response, register) = {
            let mut state = lock(&self.state);
            let response =
                self.apply_heartbeat(&mut state, &request, &partition_counts, principal)?;
            let register = !state.registered.contains(&request.group);
            (response, register)
        };
        if register {
            let registered = nameserver_call!(
                &shared.clients,
                register_group,
                RegisterGroupRequest {
                    group: request.group.clone(),
                }
            );
            match registered {
                Ok(_) => {
                    lock(&self.state).registered.insert(request.group.clone());
                }
                Err(error) => {
                    tracing::warn!(group = %request.group, %error, "group registration failed; retrying on the next heartbeat")
                }
            }
        }
        Ok(response)
    }

    fn apply_heartbeat(
        &self,
        state: &mut State,
        request: &GroupHeartbeatRequest,
        partition_counts: &BTreeMap<String, u32>,
        principal: &Principal,
    ) -> Result<GroupHeartbeatResponse, BrokerError> {
        let now = Instant::now();
        let session_timeout = self.session_timeout(request.session_timeout_ms);
        let group = state.groups.entry(request.group.clone()).or_default();
        if let Some(member) = group.members.get(&request.member_id) {
            check_member_principal(
                &request.group,
                &request.member_id,
                &member.principal,
                principal,
            )?;
        }
        let owned = flatten(&request.owned);
        if request.member_epoch == -1 {
            if group.members.remove(&request.member_id).is_some() {
                group.generation += 1;
                tracing::info!(group = %request.group, member = %request.member_id, "member left");
            }
            return Ok(GroupHeartbeatResponse {
                member_id: request.member_id.clone(),
                member_epoch: -1,
                heartbeat_interval_ms: self.heartbeat_interval_ms as u32,
                ..Default::default()
            });
        }
        let member_id = if request.member_id.is_empty() {
            if request.member_epoch != 0 {
                return Err(BrokerError::InvalidArgument(
                    "joining needs member epoch 0".into(),
                ));
            }
            new_member_id(&request.client_id)
        } else {
            request.member_id.clone()
        };
        if !group.members.contains_key(&member_id) {
            if request.member_epoch != 0 {
                return Err(BrokerError::UnknownMember {
                    group: request.group.clone(),
                    member_id,
                });
            }
            if group.members.len() >= self.max_members {
                return Err(BrokerError::Throttled(format!(
                    "group {} already has {} members",
                    request.group, self.max_members
                )));
            }
            group.members.insert(
                member_id.clone(),
                Member {
                    client_id: request.client_id.clone(),
                    epoch: 0,
                    previous_epoch: 0,
                    topics: BTreeSet::new(),
                    owned: BTreeSet::new(),
                    target: BTreeSet::new(),
                    granted: BTreeSet::new(),
                    last_heartbeat: now,
                    session_timeout,
                    principal: principal.clone(),
                },
            );
            group.generation += 1;
            tracing::info!(group = %request.group, member = %member_id, "member joined");
        }
        {
            let member = group
                .members
                .get_mut(&member_id)
                .expect("the member was found or inserted above");
            let epoch_ok = request.member_epoch == 0
                || request.member_epoch == member.epoch
                || request.member_epoch == member.previous_epoch;
            if !epoch_ok {
                return Err(BrokerError::StaleMemberEpoch {
                    member_id,
                    current: member.epoch,
                    requested: request.member_epoch,
                });
            }
            if !request.topics.is_empty() || request.member_epoch == 0 {
                let topics: BTreeSet<String> = request.topics.iter().cloned().collect();
                if topics != member.topics {
                    member.topics = topics;
                    group.generation += 1;
                }
            }
            member.owned = owned;
            member.last_heartbeat = now;
            member.session_timeout = session_timeout;
        }
        let inputs: BTreeMap<String, MemberInput> = group
            .members
            .iter()
            .map(|(id, member)| {
                (
                    id.clone(),
                    MemberInput {
                        topics: member.topics.clone(),
                        sticky: member.target.union(&member.owned).cloned().collect(),
                    },
                )
            })
            .collect();
        let mut targets = compute_targets(&inputs, partition_counts);
        if let Some(backlog) = state.backlog.get(&request.group) {
            let swaps = balance_backlog(&mut targets, &inputs, backlog);
            if swaps > 0 {
                tracing::info!(group = %request.group, swaps, "assignment weighed by backlog");
            }
        }
        for (id, target) in targets {
            if let Some(member) = group.members.get_mut(&id) {
                member.target = target;
            }
        }
        let held: BTreeMap<String, BTreeSet<TopicPartition>> = group
            .members
            .iter()
            .map(|(id, member)| {
                (
                    id.clone(),
                    member.owned.union(&member.granted).cloned().collect(),
                )
            })
            .collect();
        let member = group
            .members
            .get_mut(&member_id)
            .expect("the member was found or inserted above");
        let grant = grantable(&member_id, &member.target, &held);
        if grant != member.granted || member.epoch == 0 {
            member.previous_epoch = member.epoch;
            member.epoch += 1;
            member.granted = grant;
            group.generation += 1;
        }
        Ok(GroupHeartbeatResponse {
            error: ErrorCode::None as i32,
            error_message: String::new(),
            member_id,
            member_epoch: member.epoch,
            heartbeat_interval_ms: u32::try_from(self.heartbeat_interval_ms).unwrap_or(u32::MAX),
            assignment: group_topic_partitions(&member.granted),
        })
    }

    /// Re-appends the committed offsets of every group of an offsets
    /// partition, so deleting its old segments (retention) loses no group's
    /// latest commit.
    pub async fn snapshot_partition(&self, partition: &Partition) -> Result<(), BrokerError> {
        let snapshot: Vec<(String, Vec<CommittedOffset>)> = {
            let state = lock(&self.state);
            let partitions = state.offsets_partitions.max(1);
            state
                .committed
                .iter()
                .filter(|(group, _)| {
                    offsets_partition_for_group(group, partitions) == partition.key.partition
                })
                .map(|(group, offsets)| {
                    let offsets = offsets
                        .iter()
                        .map(|((topic, index), (offset, metadata))| CommittedOffset {
                            topic: topic.clone(),
                            partition: *index,
                            offset: *offset,
                            metadata: metadata.clone(),
                            cursor: state
                                .cursors
                                .get(group)
                                .and_then(|cursors| cursors.get(&(topic.clone(), *index)))
                                .cloned()
                                .unwrap_or_default(),
                        })
                        .collect();
                    (group.clone(), offsets)
                })
                .collect()
        };
        let generation = partition.status().generation;
        let mut pending = Vec::with_capacity(snapshot.len());
        for (group, offsets) in snapshot.iter().filter(|(_, offsets)| !offsets.is_empty()) {
            let batch = commit_record::encode(group, offsets)
                .map_err(|error| BrokerError::Internal(error.to_string()))?;
            let header = batch::validate(&batch, usize::MAX).map_err(BrokerError::Batch)?;
            pending.push(partition.submit(batch, header, generation, None)?);
        }
        for receiver in pending {
            receiver
                .await
                .map_err(|_| BrokerError::Unavailable("offsets partition stopped".into()))??;
        }
        Ok(())
    }

    pub async fn commit(
        &self,
        shared: &Shared,
        request: CommitOffsetsRequest,
        principal: &Principal,
    ) -> Result<CommitOffsetsResponse, BrokerError> {
        GroupName::new(&request.group)
            .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
        if request.offsets.len() > self.max_offsets_per_commit {
            return Err(BrokerError::InvalidArgument(format!(
                "at most {} offsets per commit",
                self.max_offsets_per_commit
            )));
        }
        if let Some(offset) = request
            .offsets
            .iter()
            .find(|offset| offset.metadata.len() > self.max_metadata_bytes)
        {
            return Err(BrokerError::InvalidArgument(format!(
                "metadata of {}/{} exceeds {} bytes",
                offset.topic, offset.partition, self.max_metadata_bytes
            )));
        }
        let partition = self.offsets_partition(shared, &request.group)?;
        crate::commit_check::check_commits(shared, &request.offsets).await?;
        self.evict_expired_members();
        if request.transaction.is_some() {
            return self
                .commit_transactional(shared, request, &partition, principal)
                .await;
        }
        {
            let state = lock(&self.state);
            member_for_commit(&state, &request, principal)?;
            check_not_pending(&state, &request, partition.key.partition)?;
        }
        if request.offsets.is_empty() {
            return Ok(CommitOffsetsResponse::default());
        }
        {
            let state = lock(&self.state);
            for offset in request
                .offsets
                .iter()
                .filter(|offset| !offset.cursor.is_empty())
            {
                check_cursor_epoch(&state, &request.group, offset)?;
            }
        }
        let offsets = to_committed(&request.offsets);
        let batch = commit_record::encode(&request.group, &offsets)
            .map_err(|error| BrokerError::Internal(error.to_string()))?;
        let header = batch::validate(&batch, usize::MAX).map_err(BrokerError::Batch)?;
        let state = self.state.clone();
        let group = request.group.clone();
        let apply = Box::new(move |_base_offset: u64| {
            apply_commits(&mut lock(&state), &group, &offsets);
        });
        let generation = partition.status().generation;
        let receiver = partition.submit(batch, header, generation, Some(apply))?;
        receiver
            .await
            .map_err(|_| BrokerError::Unavailable("offsets partition stopped".into()))??;
        Ok(accepted(request.offsets))
    }

    pub fn fetch_offsets(
        &self,
        shared: &Shared,
        request: FetchOffsetsRequest,
    ) -> Result<FetchOffsetsResponse, BrokerError> {
        let partition = self.offsets_partition(shared, &request.group)?;
        let wanted = flatten(&request.partitions);
        let state = lock(&self.state);
        let pending = state.pending.get(&partition.key.partition);
        let is_pending = |key: &TopicPartition| {
            request.require_stable
                && pending.is_some_and(|pending| pending.holder(&request.group, key).is_some())
        };
        let committed = state.committed.get(&request.group);
        let mut offsets: Vec<PartitionOffset> = committed
            .into_iter()
            .flatten()
            .filter(|(key, _)| wanted.is_empty() || wanted.contains(*key))
            .filter(|(key, _)| !is_pending(key))
            .map(|((topic, partition), (offset, metadata))| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                metadata: metadata.clone(),
                error: ErrorCode::None as i32,
                cursor: state
                    .cursors
                    .get(&request.group)
                    .and_then(|cursors| cursors.get(&(topic.clone(), *partition)))
                    .and_then(|text| decode_base64(text).ok())
                    .map(bytes::Bytes::from)
                    .unwrap_or_default(),
            })
            .collect();
        // A pending partition answers UNSTABLE_OFFSET_COMMIT whether or not
        // an older offset is committed: its next owner must wait for the
        // marker, not start from the offset before the transaction.
        if let Some(pending) = pending.filter(|_| request.require_stable) {
            offsets.extend(
                pending
                    .partitions_of(&request.group)
                    .into_iter()
                    .filter(|key| wanted.is_empty() || wanted.contains(key))
                    .map(|(topic, partition)| PartitionOffset {
                        topic,
                        partition,
                        error: ErrorCode::UnstableOffsetCommit as i32,
                        ..Default::default()
                    }),
            );
        }
        Ok(FetchOffsetsResponse { offsets })
    }
}
mod delete;
mod lag;
mod pending;
#[cfg(test)]
mod tests;
mod txn_commit;
