//! Changing an existing topic (issue 15): `AlterTopic` (settings) and
//! `AddPartitions` (a larger partition count). The new config is computed
//! by the pure [`altered_config`] / [`grown_config`] and written with a
//! compare-and-swap on the topic key's revision; a concurrent change makes
//! the CAS fail, and the change is applied again to what is stored now, so
//! two alters of different fields both land. Brokers learn the new config
//! through their assignments (the assignment index is rebuilt on a topic
//! change and the assignment watch wakes each owner), routes show the new
//! partitions, and the assigner gives them owners.

use super::topic_config::{
    check_backlog_quota, check_compaction, check_max_batch_bytes, check_quorums,
    DEFAULT_DELETE_RETENTION_MS, DEFAULT_MIN_CLEANABLE_DIRTY_RATIO_PERCENT,
};
use super::{invalid, lookup_topic_name, NameServerHandler};
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::{Compare, Put, Transaction};
use crate::placement;
use sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC;
use sluice_proto::v1::{
    AddPartitionsRequest, AlterTopicRequest, BacklogPolicy, Durability, Topic, TopicConfig,
    TopicConfigChanges,
};

/// Attempts of one alter against concurrent changes of the same topic
/// before it answers CONFLICT.
const MAX_ALTER_ATTEMPTS: u32 = 8;

/// `current` with `changes` applied, checked with CreateTopic's rules
/// (`max_message_bytes` is the nameserver's gRPC message limit). A field
/// whose 0 means "the default" in CreateTopic refuses 0 here. Pure.
pub(crate) fn altered_config(
    current: &TopicConfig,
    changes: &TopicConfigChanges,
    max_message_bytes: usize,
) -> Result<TopicConfig, NameServerError> {
    if *changes == TopicConfigChanges::default() {
        return Err(invalid("no setting to change was given"));
    }
    let mut config = *current;
    set_nonzero(
        &mut config.retention_ms,
        changes.retention_ms,
        "retention_ms",
    )?;
    set_nonzero(
        &mut config.retention_bytes,
        changes.retention_bytes,
        "retention_bytes",
    )?;
    set_nonzero(
        &mut config.segment_bytes,
        changes.segment_bytes,
        "segment_bytes",
    )?;
    set_nonzero(&mut config.segment_ms, changes.segment_ms, "segment_ms")?;
    if let Some(durability) = changes.durability {
        config.durability = match Durability::try_from(durability) {
            Ok(Durability::Fsync) | Ok(Durability::Periodic) => durability,
            _ => {
                return Err(invalid(format!(
                    "unknown durability {durability}; give DURABILITY_FSYNC (1) or \
                     DURABILITY_PERIODIC (2)"
                )))
            }
        };
    }
    alter_replication(&mut config, changes)?;
    if let Some(max_batch_bytes) = changes.max_batch_bytes {
        check_max_batch_bytes(max_batch_bytes, max_message_bytes)?;
        config.max_batch_bytes = max_batch_bytes;
    }
    if let Some(ttl) = changes.message_ttl_ms {
        if ttl > sluice_proto::headers::MAX_TTL_MS {
            return Err(invalid(format!(
                "message_ttl_ms {ttl} exceeds the longest time-to-live, {} ms (0 = none)",
                sluice_proto::headers::MAX_TTL_MS
            )));
        }
        config.message_ttl_ms = ttl;
    }
    if let Some(ignores) = changes.retention_ignores_subscriptions {
        config.retention_ignores_subscriptions = ignores;
    }
    alter_backlog_quota(&mut config, changes)?;
    alter_compaction(&mut config, changes)?;
    Ok(config)
}

/// The compaction settings (ADR 0016 §8): a policy, a tombstone retention
/// of at least 1 ms, any lag, a dirty ratio in 1 ..= 100. Owners apply a
/// changed policy as soon as their assignment brings the new config.
fn alter_compaction(
    config: &mut TopicConfig,
    changes: &TopicConfigChanges,
) -> Result<(), NameServerError> {
    // Topics created before these settings existed store 0 for both.
    if config.delete_retention_ms == 0 {
        config.delete_retention_ms = DEFAULT_DELETE_RETENTION_MS;
    }
    if config.min_cleanable_dirty_ratio_percent == 0 {
        config.min_cleanable_dirty_ratio_percent = DEFAULT_MIN_CLEANABLE_DIRTY_RATIO_PERCENT;
    }
    if let Some(policy) = changes.cleanup_policy {
        config.cleanup_policy = policy;
    }
    if let Some(retention) = changes.delete_retention_ms {
        config.delete_retention_ms = retention;
    }
    if let Some(lag) = changes.min_compaction_lag_ms {
        config.min_compaction_lag_ms = lag;
    }
    if let Some(ratio) = changes.min_cleanable_dirty_ratio_percent {
        config.min_cleanable_dirty_ratio_percent = ratio;
    }
    check_compaction(config)
}

/// Replaces `field` with `given` when given; 0 is refused (CreateTopic
/// reads it as "the default", which an alter cannot mean).
fn set_nonzero(field: &mut u64, given: Option<u64>, name: &str) -> Result<(), NameServerError> {
    match given {
        None => Ok(()),
        Some(0) => Err(invalid(format!(
            "{name} 0 is not a value an alter can set (in CreateTopic it means the \
             nameserver's default); give 1 ..= {} ({} = no limit)",
            u64::MAX,
            u64::MAX
        ))),
        Some(value) => {
            *field = value;
            Ok(())
        }
    }
}

/// The replication of new segments. A new ensemble size without a write
/// quorum sets the write quorum to it (no striping).
fn alter_replication(
    config: &mut TopicConfig,
    changes: &TopicConfigChanges,
) -> Result<(), NameServerError> {
    for (name, value) in [
        ("ensemble_size", changes.ensemble_size),
        ("write_quorum", changes.write_quorum),
        ("ack_quorum", changes.ack_quorum),
    ] {
        if value == Some(0) {
            return Err(invalid(format!("{name} must be at least 1, got 0")));
        }
    }
    if let Some(ensemble_size) = changes.ensemble_size {
        config.ensemble_size = ensemble_size;
        config.write_quorum = changes.write_quorum.unwrap_or(ensemble_size);
    } else if let Some(write_quorum) = changes.write_quorum {
        config.write_quorum = write_quorum;
    }
    if let Some(ack_quorum) = changes.ack_quorum {
        config.ack_quorum = ack_quorum;
    }
    check_quorums(config)
}

/// The backlog quota settings (ADR 0012): quotas take 0 as "none"; the
/// warn ratio, policy and hold timeout must name a value.
fn alter_backlog_quota(
    config: &mut TopicConfig,
    changes: &TopicConfigChanges,
) -> Result<(), NameServerError> {
    if let Some(bytes) = changes.backlog_quota_bytes {
        config.backlog_quota_bytes = bytes;
    }
    if let Some(messages) = changes.backlog_quota_messages {
        config.backlog_quota_messages = messages;
    }
    if let Some(age_ms) = changes.backlog_quota_age_ms {
        config.backlog_quota_age_ms = age_ms;
    }
    if let Some(ratio) = changes.backlog_warn_ratio_percent {
        if ratio == 0 {
            return Err(invalid(
                "backlog_warn_ratio_percent must be between 1 and 100, got 0",
            ));
        }
        config.backlog_warn_ratio_percent = ratio;
    }
    if let Some(policy) = changes.backlog_policy {
        if policy == BacklogPolicy::Unspecified as i32 {
            return Err(invalid(
                "backlog_policy must be BACKLOG_POLICY_HOLD (1), BACKLOG_POLICY_REJECT (2) or \
                 BACKLOG_POLICY_EVICT (3), got 0",
            ));
        }
        config.backlog_policy = policy;
    }
    if let Some(timeout) = changes.backlog_hold_timeout_ms {
        if timeout == 0 {
            return Err(invalid(
                "backlog_hold_timeout_ms must be between 1 and 600000, got 0",
            ));
        }
        config.backlog_hold_timeout_ms = timeout;
    }
    check_backlog_quota(config)
}

/// `current` grown to `partitions`: more than now, at most
/// [`MAX_PARTITIONS_PER_TOPIC`]. Pure.
pub(crate) fn grown_config(
    current: &TopicConfig,
    partitions: u32,
) -> Result<TopicConfig, NameServerError> {
    if partitions <= current.partitions {
        return Err(invalid(format!(
            "partitions can only grow: the topic has {} and {partitions} was asked for \
             (give the new total, larger than now; removing partitions is not supported)",
            current.partitions
        )));
    }
    if partitions > MAX_PARTITIONS_PER_TOPIC {
        return Err(invalid(format!(
            "partitions must be at most {MAX_PARTITIONS_PER_TOPIC}, got {partitions}"
        )));
    }
    Ok(TopicConfig {
        partitions,
        ..*current
    })
}

impl NameServerHandler {
    /// `AlterTopic`: the given settings replace the stored ones.
    pub(crate) async fn do_alter_topic(
        &self,
        request: AlterTopicRequest,
    ) -> Result<Topic, NameServerError> {
        let changes = request.changes.unwrap_or_default();
        let live_stores = match changes.ensemble_size {
            Some(_) => self.live_stores().await?.len(),
            None => 0,
        };
        let max_message_bytes = self.config.max_grpc_message_bytes;
        let topic = self
            .change_topic(&request.name, |current| {
                let config = altered_config(current, &changes, max_message_bytes)?;
                if changes.ensemble_size.is_some() {
                    // As in CreateTopic: no new segment could be placed otherwise.
                    placement::check_ensemble_fits(config.ensemble_size, live_stores)?;
                }
                Ok(config)
            })
            .await?;
        tracing::info!(topic = %topic.name, ?changes, "topic altered");
        Ok(topic)
    }

    /// `AddPartitions`: the topic grows to `partitions`; the assigner gives
    /// the new partitions owners.
    pub(crate) async fn do_add_partitions(
        &self,
        request: AddPartitionsRequest,
    ) -> Result<Topic, NameServerError> {
        let partitions = request.partitions;
        let topic = self
            .change_topic(&request.name, |current| grown_config(current, partitions))
            .await?;
        tracing::info!(topic = %topic.name, partitions, "partitions added");
        self.reconcile_now.notify_one();
        Ok(topic)
    }

    /// Reads topic `name`, computes its new config with `change` and
    /// writes it if the topic key has not changed since the read; on a
    /// concurrent change, again on what is stored then. Internal topics
    /// are refused.
    async fn change_topic(
        &self,
        name: &str,
        change: impl Fn(&TopicConfig) -> Result<TopicConfig, NameServerError>,
    ) -> Result<Topic, NameServerError> {
        lookup_topic_name(name)?;
        for _ in 0..MAX_ALTER_ATTEMPTS {
            let (mut topic, revision) = self.get_topic(name).await?;
            if topic.internal || name.starts_with("__") {
                return Err(NameServerError::Refused(format!(
                    "{name} is an internal topic and cannot be altered"
                )));
            }
            let current = topic.config.unwrap_or_default();
            let config = change(&current)?;
            if config == current {
                return Ok(topic);
            }
            topic.config = Some(config);
            let key = keys::topic(name);
            let transaction = Transaction {
                compares: vec![Compare::ModRevisionEquals(key.clone(), revision)],
                puts: vec![Put::new(key, keys::encode(&topic))],
                deletes: Vec::new(),
            };
            if self.store.commit(transaction).await? {
                return Ok(topic);
            }
            tracing::debug!(
                topic = name,
                "topic changed during an alter; applying again"
            );
        }
        Err(NameServerError::Conflict(format!(
            "topic {name} kept changing during the alter ({MAX_ALTER_ATTEMPTS} attempts); retry"
        )))
    }
}

#[cfg(test)]
#[path = "topic_alter_tests.rs"]
mod tests;
