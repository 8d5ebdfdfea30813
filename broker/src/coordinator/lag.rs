//! Group lag: refreshed for the metrics and for weighing assignments by
//! lag (ADR 0012), and `DescribeGroup` with each partition's lag against
//! its owner's high watermark (unknown, never 0, when the owner could not
//! be asked).

use super::*;

impl Coordinator {
    /// Refreshes the lag of every group's committed partitions (committed
    /// offset against the high watermark, at most
    /// `MAX_BACKLOG_REFRESH_PARTITIONS` partitions): the `group_lag`
    /// metrics read all of it; heartbeats weigh assignment by the lag of
    /// the partitions assigned in groups with more than one member
    /// (ADR 0012). Partitions without a committed offset weigh nothing.
    pub async fn refresh_backlog(&self, shared: &Shared) {
        let (committed, assigned): (CommittedOffsets, AssignedPartitions) = {
            let state = lock(&self.state);
            let committed = state
                .committed
                .iter()
                .map(|(group, offsets)| {
                    let offsets = offsets
                        .iter()
                        .map(|(partition, (offset, _))| (partition.clone(), *offset))
                        .collect();
                    (group.clone(), offsets)
                })
                .collect();
            let assigned = state
                .groups
                .iter()
                .filter(|(_, group)| group.members.len() > 1)
                .map(|(name, group)| {
                    let partitions = group
                        .members
                        .values()
                        .flat_map(|member| member.target.iter().cloned())
                        .collect();
                    (name.clone(), partitions)
                })
                .collect();
            (committed, assigned)
        };
        let partitions: BTreeSet<TopicPartition> = committed
            .iter()
            .flat_map(|(_, offsets)| offsets.iter().map(|(partition, _)| partition.clone()))
            .take(MAX_BACKLOG_REFRESH_PARTITIONS)
            .collect();
        let high_watermarks = if partitions.is_empty() {
            HashMap::new()
        } else {
            high_watermarks(shared, &partitions).await
        };
        let lagging: group_lag_age::Lagging = committed
            .into_iter()
            .map(|(group, offsets)| {
                let lag = offsets
                    .into_iter()
                    .filter_map(|(partition, committed)| {
                        high_watermarks
                            .get(&partition)
                            .and_then(|end| end.as_ref().ok())
                            .map(|end| (partition, committed, end.saturating_sub(committed)))
                    })
                    .collect();
                (group, lag)
            })
            .collect();
        let previous = lock(&self.state).lag_timestamps.clone();
        let timestamps = group_lag_age::timestamps(shared, &lagging, &previous).await;
        let now_ms = sluice_proto::now_unix_ms();
        let lag_seconds = group_lag_age::ages(&lagging, &timestamps, now_ms);
        let lag: HashMap<String, BTreeMap<TopicPartition, u64>> = lagging
            .into_iter()
            .map(|(group, partitions)| {
                let lag = partitions
                    .into_iter()
                    .map(|(partition, _, lag)| (partition, lag))
                    .collect();
                (group, lag)
            })
            .collect();
        let mut state = lock(&self.state);
        state.lag_timestamps = timestamps;
        state.lag_seconds = lag_seconds;
        state.backlog = lag
            .iter()
            .filter_map(|(group, lag)| {
                let assigned = assigned.get(group)?;
                let lag = lag
                    .iter()
                    .filter(|(partition, _)| assigned.contains(*partition))
                    .map(|(partition, lag)| (partition.clone(), *lag))
                    .collect();
                Some((group.clone(), lag))
            })
            .collect();
        state.lag = lag;
    }

    /// Lag in seconds per (group, topic) as of the last
    /// [`Self::refresh_backlog`] (see `group_lag_age.rs`); for metrics.
    pub fn lag_seconds_by_group_and_topic(&self) -> Vec<((String, String), f64)> {
        lock(&self.state)
            .lag_seconds
            .iter()
            .map(|(key, age)| (key.clone(), *age))
            .collect()
    }

    /// Lag in records per (group, topic), summed over the partitions whose
    /// end the last [`Self::refresh_backlog`] could read; for metrics.
    pub fn lag_by_group_and_topic(&self) -> Vec<((String, String), u64)> {
        let state = lock(&self.state);
        let mut summed: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (group, partitions) in &state.lag {
            for ((topic, _), lag) in partitions {
                let entry = summed.entry((group.clone(), topic.clone())).or_insert(0);
                *entry = entry.saturating_add(*lag);
            }
        }
        summed.into_iter().collect()
    }

    pub async fn describe(
        &self,
        shared: &Shared,
        request: DescribeGroupRequest,
    ) -> Result<DescribeGroupResponse, BrokerError> {
        self.offsets_partition(shared, &request.group)?;
        self.evict_expired_members();
        let now = Instant::now();
        let (mut response, owners, committed) = {
            let state = lock(&self.state);
            let mut response = DescribeGroupResponse {
                group: request.group.clone(),
                state: "Empty".into(),
                ..Default::default()
            };
            let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
            let mut topics: BTreeSet<String> = BTreeSet::new();
            if let Some(group) = state.groups.get(&request.group) {
                response.generation = group.generation;
                if !group.members.is_empty() {
                    let stable = group.members.values().all(|member| {
                        member.granted == member.target && member.owned == member.target
                    });
                    response.state = if stable { "Stable" } else { "Reconciling" }.into();
                }
                for (id, member) in &group.members {
                    topics.extend(member.topics.iter().cloned());
                    for partition in &member.granted {
                        owners.insert(partition.clone(), id.clone());
                    }
                    response.members.push(GroupMember {
                        member_id: id.clone(),
                        client_id: member.client_id.clone(),
                        member_epoch: member.epoch,
                        assignment: group_topic_partitions(&member.granted),
                        last_heartbeat_ms_ago: i64::try_from(
                            now.duration_since(member.last_heartbeat).as_millis(),
                        )
                        .unwrap_or(i64::MAX),
                    });
                }
            }
            response.topics = topics.into_iter().collect();
            let committed = state
                .committed
                .get(&request.group)
                .cloned()
                .unwrap_or_default();
            (response, owners, committed)
        };
        let mut partitions: BTreeSet<TopicPartition> = committed.keys().cloned().collect();
        partitions.extend(owners.keys().cloned());
        let high_watermarks = high_watermarks(shared, &partitions).await;
        for partition in partitions {
            let committed_offset = committed.get(&partition).map(|(offset, _)| *offset);
            let member_id = owners.get(&partition).cloned().unwrap_or_default();
            response.lag.push(partition_lag(
                &partition,
                committed_offset,
                high_watermarks.get(&partition),
                member_id,
            ));
        }
        Ok(response)
    }
}

/// One partition's lag. Without a high watermark (its owner could not be
/// asked) the lag is unknown, not 0 (issue 15: a lag of 120,046 was shown
/// where about 360,000 records were unconsumed).
pub(super) fn partition_lag(
    partition: &TopicPartition,
    committed_offset: Option<u64>,
    high_watermark: Option<&Result<u64, String>>,
    member_id: String,
) -> PartitionLag {
    let mut lag = PartitionLag {
        topic: partition.0.clone(),
        partition: partition.1,
        committed_offset: committed_offset
            .map(|offset| i64::try_from(offset).unwrap_or(i64::MAX))
            .unwrap_or(-1),
        member_id,
        ..PartitionLag::default()
    };
    match high_watermark {
        Some(Ok(high_watermark)) => {
            lag.high_watermark = *high_watermark;
            lag.lag = high_watermark.saturating_sub(committed_offset.unwrap_or(0));
        }
        Some(Err(reason)) => {
            lag.lag_unknown = true;
            lag.lag_unknown_reason = reason.clone();
        }
        None => {
            lag.lag_unknown = true;
            lag.lag_unknown_reason = "no high watermark".into();
        }
    }
    lag
}

/// High watermarks of `partitions`: local ones from their status, others
/// from their owners' `ListOffsets`; why, for those that could not be had.
async fn high_watermarks(
    shared: &Shared,
    partitions: &BTreeSet<TopicPartition>,
) -> HashMap<TopicPartition, Result<u64, String>> {
    let mut result = HashMap::new();
    let mut remote: Vec<&TopicPartition> = Vec::new();
    for partition in partitions {
        match shared.partition(&PartitionKey::new(&partition.0, partition.1)) {
            Some(local) if local.status().loaded => {
                result.insert(partition.clone(), Ok(local.status().high_watermark));
            }
            _ => remote.push(partition),
        }
    }
    if remote.is_empty() {
        return result;
    }
    let topics: Vec<String> = remote
        .iter()
        .map(|partition| partition.0.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let routes = match shared.routes(&topics).await {
        Ok(routes) => routes,
        Err(error) => {
            tracing::warn!(%error, "describe group: routes unavailable; lag incomplete");
            for partition in remote {
                result.insert(
                    partition.clone(),
                    Err(format!("routes unavailable: {error}")),
                );
            }
            return result;
        }
    };
    for partition in remote {
        let address = routes
            .iter()
            .find(|route| route.topic == partition.0)
            .and_then(|route| {
                route
                    .partitions
                    .iter()
                    .find(|entry| entry.partition == partition.1)
            })
            .map(|entry| entry.broker_address.clone())
            .filter(|address| !address.is_empty());
        let Some(address) = address else {
            result.insert(partition.clone(), Err("the partition has no owner".into()));
            continue;
        };
        let answer = match shared.clients.broker(&address) {
            Ok(mut broker) => broker
                .list_offsets(request(
                    ListOffsetsRequest {
                        topic: partition.0.clone(),
                        partition: partition.1,
                        spec: OffsetSpec::Latest as i32,
                        timestamp_ms: 0,
                        isolation: sluice_proto::v1::IsolationLevel::ReadUncommitted as i32,
                    },
                    shared.clients.store_timeout,
                ))
                .await
                .map(|response| response.into_inner().high_watermark)
                .map_err(|status| status.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match answer {
            Ok(high_watermark) => {
                result.insert(partition.clone(), Ok(high_watermark));
            }
            Err(error) => {
                tracing::warn!(topic = %partition.0, partition = partition.1, %error, "describe group: high watermark unavailable");
                result.insert(partition.clone(), Err(format!("owner {address}: {error}")));
            }
        }
    }
    result
}
