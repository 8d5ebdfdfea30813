//! Resetting a consumer group's committed offsets (issue 15). The plan is
//! computed here from the group's committed offsets and each partition's
//! bounds (pure [`reset_target`]); the reset itself is one `CommitOffsets`
//! to the group's coordinator from outside the group (empty member id,
//! epoch -1), which the coordinator refuses while the group has members:
//! the coordinator stays the only writer of `__consumer_offsets`, and the
//! "inactive" check is made where the members are. Deleting a group is
//! one `DeleteGroup` to its coordinator, which refuses it the same way.

use super::{Admin, MAX_COORDINATOR_ATTEMPTS};
use crate::ClientError;
use sluice_proto::v1;
use sluice_proto::{ErrorCode, SluiceError};

/// Where [`Admin::reset_group_offsets`] moves each partition of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The first retained offset.
    Earliest,
    /// The high watermark (nothing left to consume).
    Latest,
    /// This offset; refused outside `[log start, high watermark]`.
    Offset(u64),
    /// The first record whose timestamp is at or after this time (unix
    /// ms); the high watermark when there is none.
    Time(i64),
    /// The committed offset moved by this many records, kept within
    /// `[log start, high watermark]`; refused where nothing is committed.
    ShiftBy(i64),
}

/// One partition of an offset reset plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReset {
    /// The partition.
    pub partition: u32,
    /// The group's committed offset before the reset, if any.
    pub current: Option<u64>,
    /// The offset the reset commits.
    pub target: u64,
    /// The partition's first retained offset when planned.
    pub log_start_offset: u64,
    /// The partition's high watermark when planned.
    pub high_watermark: u64,
}

/// What [`Admin::reset_group_offsets`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetResetPlan {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Every partition of the topic, in order.
    pub partitions: Vec<PartitionReset>,
    /// Whether the offsets were committed (false for a dry run).
    pub applied: bool,
}

/// The offset `reset` gives a partition holding `[log_start_offset,
/// high_watermark)` with `current` committed; `at_time` is the owner's
/// answer for [`OffsetReset::Time`]. Pure.
pub fn reset_target(
    reset: OffsetReset,
    current: Option<u64>,
    log_start_offset: u64,
    high_watermark: u64,
    at_time: Option<u64>,
) -> Result<u64, String> {
    let clamp = |offset: u64| offset.clamp(log_start_offset, high_watermark.max(log_start_offset));
    match reset {
        OffsetReset::Earliest => Ok(log_start_offset),
        OffsetReset::Latest => Ok(high_watermark),
        OffsetReset::Offset(offset) if (log_start_offset..=high_watermark).contains(&offset) => {
            Ok(offset)
        }
        OffsetReset::Offset(offset) => Err(format!(
            "offset {offset} is outside the partition's log [{log_start_offset}, \
             {high_watermark}]"
        )),
        OffsetReset::Time(_) => Ok(clamp(at_time.unwrap_or(high_watermark))),
        OffsetReset::ShiftBy(by) => {
            let current = current.ok_or_else(|| {
                "nothing is committed to shift from; use an absolute reset".to_string()
            })?;
            let shifted = if by >= 0 {
                current.saturating_add(by.unsigned_abs())
            } else {
                current.saturating_sub(by.unsigned_abs())
            };
            Ok(clamp(shifted))
        }
    }
}

/// Refuses a plan for a group that still has members, naming them.
fn check_inactive(group: &str, description: &v1::DescribeGroupResponse) -> Result<(), ClientError> {
    if description.members.is_empty() {
        return Ok(());
    }
    let members: Vec<&str> = description
        .members
        .iter()
        .take(5)
        .map(|member| member.member_id.as_str())
        .collect();
    Err(ClientError::Server(SluiceError::new(
        ErrorCode::GroupNotEmpty,
        format!(
            "group {group:?} is active ({} member(s): {}); stop its consumers (and wait for \
             their sessions to end) before changing its offsets",
            description.members.len(),
            members.join(", ")
        ),
    )))
}

impl Admin {
    /// Moves group `group`'s committed offsets on every partition of
    /// `topic` as `reset` says, or with `dry_run` only answers the plan.
    /// Refused while the group has members (its coordinator checks again
    /// when committing); refused as a whole when any partition's target is
    /// impossible (an offset outside its log, a shift with nothing
    /// committed). Partitions holding a subscription cursor are refused:
    /// subscriptions have their own commands.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        reset: OffsetReset,
        dry_run: bool,
    ) -> Result<OffsetResetPlan, ClientError> {
        sluice_proto::names::GroupName::new(group)
            .map_err(|error| ClientError::InvalidArgument(format!("group '{group}': {error}")))?;
        check_inactive(group, &self.describe_group(group).await?)?;
        let plan = self.plan_reset(group, topic, reset).await?;
        if dry_run {
            return Ok(plan);
        }
        let offsets = plan
            .partitions
            .iter()
            .map(|partition| v1::PartitionOffset {
                topic: topic.to_string(),
                partition: partition.partition,
                offset: partition.target,
                ..v1::PartitionOffset::default()
            })
            .collect();
        let request = v1::CommitOffsetsRequest {
            group: group.to_string(),
            member_id: String::new(),
            member_epoch: -1,
            offsets,
            transaction: None,
        };
        match self.commit_from_outside(request).await {
            Err(error) if error.code() == Some(ErrorCode::UnknownMember) => {
                Err(ClientError::Server(SluiceError::new(
                    ErrorCode::GroupNotEmpty,
                    format!(
                        "group {group:?} became active while its offsets were reset; nothing \
                         was changed ({error})"
                    ),
                )))
            }
            Err(error) => Err(error),
            Ok(()) => Ok(OffsetResetPlan {
                applied: true,
                ..plan
            }),
        }
    }

    /// Deletes inactive group `group`: its committed offsets and its
    /// listing. Refused with GROUP_NOT_EMPTY while it has members,
    /// UNKNOWN_GROUP when nothing is known of it, INVALID_ARGUMENT for a
    /// subscription's cursor group.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        sluice_proto::names::GroupName::new(group)
            .map_err(|error| ClientError::InvalidArgument(format!("group '{group}': {error}")))?;
        let request = v1::DeleteGroupRequest {
            group: group.to_string(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let address = self.cluster.find_coordinator(group).await?;
            let mut client = self.cluster.broker(&address)?;
            let call = client.delete_group(request.clone());
            match self.cluster.unary("DeleteGroup", &address, call).await {
                Err(error) if attempt < MAX_COORDINATOR_ATTEMPTS && coordinator_moved(&error) => {
                    tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
                }
                result => return result.map(|_| ()),
            }
        }
    }

    /// The plan: each partition's committed offset, bounds and target.
    async fn plan_reset(
        &self,
        group: &str,
        topic: &str,
        reset: OffsetReset,
    ) -> Result<OffsetResetPlan, ClientError> {
        let count = self.cluster.topic_routes(topic).await?.partitions.len();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let committed = self.fetch_committed(group, topic, count).await?;
        let mut partitions = Vec::new();
        for partition in 0..count {
            let bounds = self
                .list_offsets(topic, partition, v1::OffsetSpec::Latest, 0)
                .await?;
            let at_time = match reset {
                OffsetReset::Time(time_ms) => Some(
                    self.list_offsets(topic, partition, v1::OffsetSpec::Timestamp, time_ms)
                        .await?
                        .offset,
                ),
                _ => None,
            };
            let current = match committed
                .iter()
                .find(|offset| offset.partition == partition)
            {
                Some(offset) if !offset.cursor.is_empty() => {
                    return Err(ClientError::InvalidArgument(format!(
                        "group {group:?} holds a subscription cursor on {topic}/{partition}; \
                         reset subscriptions with the subscription commands"
                    )))
                }
                Some(offset) => Some(offset.offset),
                None => None,
            };
            let target = reset_target(
                reset,
                current,
                bounds.log_start_offset,
                bounds.high_watermark,
                at_time,
            )
            .map_err(|reason| {
                ClientError::InvalidArgument(format!("{topic}/{partition}: {reason}"))
            })?;
            partitions.push(PartitionReset {
                partition,
                current,
                target,
                log_start_offset: bounds.log_start_offset,
                high_watermark: bounds.high_watermark,
            });
        }
        Ok(OffsetResetPlan {
            group: group.to_string(),
            topic: topic.to_string(),
            partitions,
            applied: false,
        })
    }

    /// The group's committed offsets on `topic`'s `count` partitions.
    async fn fetch_committed(
        &self,
        group: &str,
        topic: &str,
        count: u32,
    ) -> Result<Vec<v1::PartitionOffset>, ClientError> {
        let request = v1::FetchOffsetsRequest {
            group: group.to_string(),
            partitions: vec![v1::TopicPartitions {
                topic: topic.to_string(),
                partitions: (0..count).collect(),
            }],
            require_stable: false,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let address = self.cluster.find_coordinator(group).await?;
            let mut client = self.cluster.broker(&address)?;
            let call = client.fetch_offsets(request.clone());
            match self.cluster.unary("FetchOffsets", &address, call).await {
                Err(error) if attempt < MAX_COORDINATOR_ATTEMPTS && coordinator_moved(&error) => {
                    tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
                }
                result => return result.map(|response| response.offsets),
            }
        }
    }

    /// One commit from outside the group, to its coordinator (looked up
    /// again when it moved).
    async fn commit_from_outside(
        &self,
        request: v1::CommitOffsetsRequest,
    ) -> Result<(), ClientError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let address = self.cluster.find_coordinator(&request.group).await?;
            let mut client = self.cluster.broker(&address)?;
            let call = client.commit_offsets(request.clone());
            match self.cluster.unary("CommitOffsets", &address, call).await {
                Err(error) if attempt < MAX_COORDINATOR_ATTEMPTS && coordinator_moved(&error) => {
                    tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
                }
                Err(error) => return Err(error),
                Ok(response) => {
                    if let Some(failed) = response
                        .offsets
                        .iter()
                        .find(|offset| offset.error != ErrorCode::None as i32)
                    {
                        return Err(ClientError::InvalidArgument(format!(
                            "the coordinator refused the offset of {}/{}: {:?}",
                            failed.topic,
                            failed.partition,
                            ErrorCode::try_from(failed.error).unwrap_or(ErrorCode::Internal)
                        )));
                    }
                    return Ok(());
                }
            }
        }
    }
}

fn coordinator_moved(error: &ClientError) -> bool {
    error.code() == Some(ErrorCode::NotCoordinator)
        || matches!(error, ClientError::Transport { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_resets() {
        assert_eq!(
            reset_target(OffsetReset::Earliest, Some(50), 10, 100, None),
            Ok(10)
        );
        assert_eq!(
            reset_target(OffsetReset::Latest, None, 10, 100, None),
            Ok(100)
        );
        assert_eq!(
            reset_target(OffsetReset::Offset(10), None, 10, 100, None),
            Ok(10)
        );
        assert_eq!(
            reset_target(OffsetReset::Offset(100), None, 10, 100, None),
            Ok(100)
        );
        for outside in [0, 9, 101, u64::MAX] {
            let refused = reset_target(OffsetReset::Offset(outside), None, 10, 100, None);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|reason| reason.contains("outside")),
                "{outside}: {refused:?}"
            );
        }
    }

    #[test]
    fn time_resets_take_the_owners_answer_within_the_log() {
        let time = OffsetReset::Time(1_700_000_000_000);
        assert_eq!(reset_target(time, None, 10, 100, Some(42)), Ok(42));
        assert_eq!(
            reset_target(time, None, 10, 100, None),
            Ok(100),
            "no record that new"
        );
        assert_eq!(
            reset_target(time, None, 10, 100, Some(5)),
            Ok(10),
            "deleted since"
        );
        assert_eq!(reset_target(time, None, 10, 100, Some(500)), Ok(100));
    }

    #[test]
    fn shifts_are_clamped_to_the_log() {
        assert_eq!(
            reset_target(OffsetReset::ShiftBy(-5), Some(50), 10, 100, None),
            Ok(45)
        );
        assert_eq!(
            reset_target(OffsetReset::ShiftBy(7), Some(50), 10, 100, None),
            Ok(57)
        );
        assert_eq!(
            reset_target(OffsetReset::ShiftBy(0), Some(50), 10, 100, None),
            Ok(50)
        );
        assert_eq!(
            reset_target(OffsetReset::ShiftBy(-100), Some(50), 10, 100, None),
            Ok(10)
        );
        assert_eq!(
            reset_target(OffsetReset::ShiftBy(i64::MIN), Some(50), 10, 100, None),
            Ok(10)
        );
        assert_eq!(
            reset_target(OffsetReset::ShiftBy(i64::MAX), Some(50), 10, 100, None),
            Ok(100)
        );
        assert_eq!(
            reset_target(
                OffsetReset::ShiftBy(i64::MAX),
                Some(u64::MAX),
                10,
                100,
                None
            ),
            Ok(100)
        );
        assert!(reset_target(OffsetReset::ShiftBy(1), None, 10, 100, None).is_err());
    }

    #[test]
    fn an_active_group_is_refused_naming_its_members() {
        let mut description = v1::DescribeGroupResponse::default();
        assert!(check_inactive("g", &description).is_ok());
        description.members.push(v1::GroupMember {
            member_id: "m-1".into(),
            ..v1::GroupMember::default()
        });
        let refused = check_inactive("g", &description).expect_err("active");
        assert_eq!(refused.code(), Some(ErrorCode::GroupNotEmpty));
        assert!(refused.to_string().contains("m-1"), "{refused}");
        assert!(refused.to_string().contains("active"), "{refused}");
    }
}
