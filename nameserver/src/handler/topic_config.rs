//! A new topic's config: zero fields filled from the configured defaults,
//! then checked (partition count, quorums, time-to-live, backlog quotas,
//! batch size against the gRPC message limit). Pure.

use super::invalid;
use crate::config::TopicDefaults;
use crate::error::NameServerError;
use sluice_proto::limits::{
    largest_max_batch_bytes, MAX_ENSEMBLE_SIZE, MIN_MAX_BATCH_BYTES, PRODUCE_ENVELOPE_BYTES,
};
use sluice_proto::v1::{BacklogPolicy, CleanupPolicy, Durability, TopicConfig};

/// Default warning line of a backlog quota, in percent (ADR 0012).
const DEFAULT_BACKLOG_WARN_RATIO_PERCENT: u32 = 80;
/// Default and largest time a HOLD policy holds a batch (ADR 0012).
const DEFAULT_BACKLOG_HOLD_TIMEOUT_MS: u64 = 30_000;
const MAX_BACKLOG_HOLD_TIMEOUT_MS: u64 = 600_000;
/// Default time a tombstone stays readable after compaction reached it
/// (ADR 0016 §8): one day.
pub(crate) const DEFAULT_DELETE_RETENTION_MS: u64 = 86_400_000;
/// Default share of the cleanable log that must be dirty before a pass.
pub(crate) const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO_PERCENT: u32 = 50;

/// Fills zero fields of `given` from `defaults` and checks the result;
/// `max_message_bytes` is the nameserver's gRPC message limit.
pub(crate) fn complete_topic_config(
    given: Option<TopicConfig>,
    defaults: &TopicDefaults,
    max_message_bytes: usize,
) -> Result<TopicConfig, NameServerError> {
    let given = given.unwrap_or_default();
    if given.partitions == 0 || given.partitions > sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC {
        return Err(invalid(format!(
            "partitions must be between 1 and {}, got {}",
            sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC,
            given.partitions
        )));
    }
    let mut config = defaults.topic_config(given.partitions);
    fill_nonzero_fields(&given, &mut config)?;
    if given.message_ttl_ms > sluice_proto::headers::MAX_TTL_MS {
        return Err(invalid(format!(
            "message_ttl_ms {} exceeds the longest time-to-live, {} ms",
            given.message_ttl_ms,
            sluice_proto::headers::MAX_TTL_MS
        )));
    }
    config.message_ttl_ms = given.message_ttl_ms;
    config.retention_ignores_subscriptions = given.retention_ignores_subscriptions;
    check_quorums(&config)?;
    complete_backlog_quota(&given, &mut config)?;
    complete_compaction(&given, &mut config)?;
    check_max_batch_bytes(config.max_batch_bytes, max_message_bytes)?;
    Ok(config)
}

/// Copies the compaction settings (ADR 0016 §8) from `given`, filling
/// defaults (`delete_retention_ms` 0 = one day, the dirty ratio 0 = 50 %)
/// and refusing an unknown policy or a ratio above 100.
fn complete_compaction(
    given: &TopicConfig,
    config: &mut TopicConfig,
) -> Result<(), NameServerError> {
    config.cleanup_policy = given.cleanup_policy;
    config.delete_retention_ms = match given.delete_retention_ms {
        0 => DEFAULT_DELETE_RETENTION_MS,
        given => given,
    };
    config.min_compaction_lag_ms = given.min_compaction_lag_ms;
    config.min_cleanable_dirty_ratio_percent = match given.min_cleanable_dirty_ratio_percent {
        0 => DEFAULT_MIN_CLEANABLE_DIRTY_RATIO_PERCENT,
        ratio => ratio,
    };
    check_compaction(config)
}

/// The compaction settings of a complete config: a known policy, a
/// dirty ratio in 1 ..= 100 and a tombstone retention of at least 1 ms.
pub(super) fn check_compaction(config: &TopicConfig) -> Result<(), NameServerError> {
    if CleanupPolicy::try_from(config.cleanup_policy).is_err() {
        return Err(invalid(format!(
            "unknown cleanup_policy {}; give CLEANUP_POLICY_DELETE (0), \
             CLEANUP_POLICY_COMPACT (1) or CLEANUP_POLICY_COMPACT_DELETE (2)",
            config.cleanup_policy
        )));
    }
    if !(1..=100).contains(&config.min_cleanable_dirty_ratio_percent) {
        return Err(invalid(format!(
            "min_cleanable_dirty_ratio_percent must be between 1 and 100 (0 means \
             {DEFAULT_MIN_CLEANABLE_DIRTY_RATIO_PERCENT}), got {}",
            config.min_cleanable_dirty_ratio_percent
        )));
    }
    if config.delete_retention_ms == 0 {
        return Err(invalid(
            "delete_retention_ms must be at least 1 (u64::MAX keeps tombstones forever), got 0",
        ));
    }
    Ok(())
}

/// A batch limit between [`MIN_MAX_BATCH_BYTES`] and what a produce
/// request under the gRPC message limit can carry (the limit less the
/// request envelope): a larger one would let producers build batches the
/// broker cannot even decode.
pub(super) fn check_max_batch_bytes(
    max_batch_bytes: u32,
    max_message_bytes: usize,
) -> Result<(), NameServerError> {
    let largest = largest_max_batch_bytes(max_message_bytes);
    if !(MIN_MAX_BATCH_BYTES..=largest).contains(&max_batch_bytes) {
        return Err(invalid(format!(
            "max_batch_bytes must be between {MIN_MAX_BATCH_BYTES} and {largest} bytes \
             (the gRPC message limit {max_message_bytes} less {PRODUCE_ENVELOPE_BYTES} for \
             the request envelope; 0 means the nameserver's default), got {max_batch_bytes}"
        )));
    }
    Ok(())
}

/// Copies every field `given` sets (non-zero) over the defaults in `config`.
fn fill_nonzero_fields(
    given: &TopicConfig,
    config: &mut TopicConfig,
) -> Result<(), NameServerError> {
    if given.retention_ms != 0 {
        config.retention_ms = given.retention_ms;
    }
    if given.retention_bytes != 0 {
        config.retention_bytes = given.retention_bytes;
    }
    match Durability::try_from(given.durability) {
        Ok(Durability::Unspecified) => {}
        Ok(durability) => config.durability = durability as i32,
        Err(_) => {
            return Err(invalid(format!(
                "unknown durability {}; give DURABILITY_FSYNC (1), DURABILITY_PERIODIC (2) or 0 \
                 for the nameserver's default",
                given.durability
            )))
        }
    }
    if given.segment_bytes != 0 {
        config.segment_bytes = given.segment_bytes;
    }
    if given.segment_ms != 0 {
        config.segment_ms = given.segment_ms;
    }
    if given.ensemble_size != 0 {
        config.ensemble_size = given.ensemble_size;
    }
    if given.write_quorum != 0 {
        config.write_quorum = given.write_quorum;
    }
    if given.ack_quorum != 0 {
        config.ack_quorum = given.ack_quorum;
    }
    if given.max_batch_bytes != 0 {
        config.max_batch_bytes = given.max_batch_bytes;
    }
    Ok(())
}

/// `MAX_ENSEMBLE_SIZE >= ensemble_size >= write_quorum >= ack_quorum >= 1`,
/// and no striping.
pub(super) fn check_quorums(config: &TopicConfig) -> Result<(), NameServerError> {
    if config.ensemble_size > MAX_ENSEMBLE_SIZE {
        return Err(invalid(format!(
            "ensemble_size must be between 1 and {MAX_ENSEMBLE_SIZE}, got {}",
            config.ensemble_size
        )));
    }
    if !(config.ensemble_size >= config.write_quorum
        && config.write_quorum >= config.ack_quorum
        && config.ack_quorum >= 1)
    {
        return Err(invalid(format!(
            "need ensemble_size >= write_quorum >= ack_quorum >= 1, got {}/{}/{}",
            config.ensemble_size, config.write_quorum, config.ack_quorum
        )));
    }
    // Every replica holds the whole segment (no striping), which keeps
    // each copy a prefix of the writer's log: what recovery relies on.
    if config.write_quorum != config.ensemble_size {
        return Err(invalid(format!(
            "write_quorum {} below ensemble_size {} (striping entries over the ensemble) \
             is not supported yet; use write_quorum = ensemble_size",
            config.write_quorum, config.ensemble_size
        )));
    }
    Ok(())
}

/// Checks the backlog quota settings of a complete config (an altered
/// one): the same ranges as [`complete_backlog_quota`].
pub(super) fn check_backlog_quota(config: &TopicConfig) -> Result<(), NameServerError> {
    let mut checked = *config;
    complete_backlog_quota(config, &mut checked)
}

/// Copies the backlog quota settings (ADR 0012) from `given`, filling
/// defaults and refusing impossible values.
fn complete_backlog_quota(
    given: &TopicConfig,
    config: &mut TopicConfig,
) -> Result<(), NameServerError> {
    config.backlog_quota_bytes = given.backlog_quota_bytes;
    config.backlog_quota_messages = given.backlog_quota_messages;
    config.backlog_quota_age_ms = given.backlog_quota_age_ms;
    config.backlog_warn_ratio_percent = match given.backlog_warn_ratio_percent {
        0 => DEFAULT_BACKLOG_WARN_RATIO_PERCENT,
        ratio @ 1..=100 => ratio,
        ratio => {
            return Err(invalid(format!(
                "backlog_warn_ratio_percent must be between 1 and 100, got {ratio}"
            )))
        }
    };
    config.backlog_policy = match BacklogPolicy::try_from(given.backlog_policy) {
        Ok(BacklogPolicy::Unspecified) => BacklogPolicy::Hold as i32,
        Ok(policy) => policy as i32,
        Err(_) => {
            return Err(invalid(format!(
                "unknown backlog_policy {}; give BACKLOG_POLICY_HOLD (1), \
                 BACKLOG_POLICY_REJECT (2), BACKLOG_POLICY_EVICT (3) or 0 for HOLD",
                given.backlog_policy
            )))
        }
    };
    config.backlog_hold_timeout_ms = match given.backlog_hold_timeout_ms {
        0 => DEFAULT_BACKLOG_HOLD_TIMEOUT_MS,
        timeout @ 1..=MAX_BACKLOG_HOLD_TIMEOUT_MS => timeout,
        timeout => {
            let most = MAX_BACKLOG_HOLD_TIMEOUT_MS;
            return Err(invalid(format!(
                "backlog_hold_timeout_ms must be between 1 and {most} (0 means \
                 {DEFAULT_BACKLOG_HOLD_TIMEOUT_MS}), got {timeout}"
            )));
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_quotas_get_defaults_and_impossible_values_are_refused() {
        let mut config = TopicConfig::default();
        let given = TopicConfig {
            backlog_quota_messages: 1000,
            ..TopicConfig::default()
        };
        complete_backlog_quota(&given, &mut config).expect("valid");
        assert_eq!(config.backlog_quota_messages, 1000);
        assert_eq!(config.backlog_warn_ratio_percent, 80);
        assert_eq!(config.backlog_policy, BacklogPolicy::Hold as i32);
        assert_eq!(config.backlog_hold_timeout_ms, 30_000);
        for bad in [
            TopicConfig {
                backlog_warn_ratio_percent: 101,
                ..TopicConfig::default()
            },
            TopicConfig {
                backlog_policy: 99,
                ..TopicConfig::default()
            },
            TopicConfig {
                backlog_hold_timeout_ms: 600_001,
                ..TopicConfig::default()
            },
        ] {
            let refused = complete_backlog_quota(&bad, &mut config);
            assert!(
                matches!(refused, Err(NameServerError::InvalidArgument(_))),
                "{bad:?} gave {refused:?}"
            );
        }
    }

    /// One row per numeric setting at 0, 1 and its maximum (plus the first
    /// value past an upper bound): `Ok(expected stored value)` or the
    /// field the INVALID_ARGUMENT message must name.
    #[test]
    fn every_numeric_topic_setting_at_its_extremes() {
        type Set = fn(&mut TopicConfig, u64);
        type Get = fn(&TopicConfig) -> u64;
        let defaults = TopicDefaults::default();
        let grpc_limit = sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES;
        let largest_batch = u64::from(sluice_proto::limits::largest_max_batch_bytes(grpc_limit));
        let ttl = sluice_proto::headers::MAX_TTL_MS;
        /// (field, setter, getter, [(value, stored value or field named)])
        type Field<'a> = (&'a str, Set, Get, Vec<(u64, Result<u64, &'a str>)>);
        let fields: Vec<Field> = vec![
            (
                "partitions",
                |c, v| c.partitions = v as u32,
                |c| c.partitions.into(),
                vec![
                    (0, Err("partitions")),
                    (1, Ok(1)),
                    (4096, Ok(4096)),
                    (4097, Err("partitions")),
                    (u32::MAX.into(), Err("partitions")),
                ],
            ),
            (
                "retention_ms",
                |c, v| c.retention_ms = v,
                |c| c.retention_ms,
                vec![
                    (0, Ok(defaults.retention_ms)),
                    (1, Ok(1)),
                    (u64::MAX, Ok(u64::MAX)),
                ],
            ),
            (
                "retention_bytes",
                |c, v| c.retention_bytes = v,
                |c| c.retention_bytes,
                vec![
                    (0, Ok(defaults.retention_bytes)),
                    (1, Ok(1)),
                    (u64::MAX, Ok(u64::MAX)),
                ],
            ),
            (
                "durability",
                |c, v| c.durability = v as i32,
                |c| c.durability as u64,
                vec![(99, Err("durability"))],
            ),
            (
                "segment_bytes",
                |c, v| c.segment_bytes = v,
                |c| c.segment_bytes,
                vec![
                    (0, Ok(defaults.segment_bytes)),
                    (1, Ok(1)),
                    (u64::MAX, Ok(u64::MAX)),
                ],
            ),
            (
                "segment_ms",
                |c, v| c.segment_ms = v,
                |c| c.segment_ms,
                vec![
                    (0, Ok(defaults.segment_ms)),
                    (1, Ok(1)),
                    (u64::MAX, Ok(u64::MAX)),
                ],
            ),
            (
                "replication",
                replication,
                |c| c.ensemble_size.into(),
                vec![
                    (1, Ok(1)),
                    (
                        sluice_proto::limits::MAX_ENSEMBLE_SIZE.into(),
                        Ok(sluice_proto::limits::MAX_ENSEMBLE_SIZE.into()),
                    ),
                    (
                        u64::from(sluice_proto::limits::MAX_ENSEMBLE_SIZE) + 1,
                        Err("ensemble_size"),
                    ),
                    (u32::MAX.into(), Err("ensemble_size")),
                ],
            ),
            (
                "ack_quorum",
                |c, v| c.ack_quorum = v as u32,
                |c| c.ack_quorum.into(),
                vec![(u32::MAX.into(), Err("ack_quorum"))],
            ),
            (
                "max_batch_bytes",
                |c, v| c.max_batch_bytes = v as u32,
                |c| c.max_batch_bytes.into(),
                vec![
                    (0, Ok(defaults.max_batch_bytes.into())),
                    (1, Err("max_batch_bytes")),
                    (
                        sluice_proto::limits::MIN_MAX_BATCH_BYTES.into(),
                        Ok(sluice_proto::limits::MIN_MAX_BATCH_BYTES.into()),
                    ),
                    (largest_batch, Ok(largest_batch)),
                    (largest_batch + 1, Err("max_batch_bytes")),
                    (grpc_limit as u64, Err("max_batch_bytes")),
                    (u32::MAX.into(), Err("max_batch_bytes")),
                ],
            ),
            (
                "message_ttl_ms",
                |c, v| c.message_ttl_ms = v,
                |c| c.message_ttl_ms,
                vec![
                    (0, Ok(0)),
                    (1, Ok(1)),
                    (ttl, Ok(ttl)),
                    (u64::MAX, Err("message_ttl_ms")),
                ],
            ),
            (
                "backlog_quota_bytes",
                |c, v| c.backlog_quota_bytes = v,
                |c| c.backlog_quota_bytes,
                vec![(0, Ok(0)), (1, Ok(1)), (u64::MAX, Ok(u64::MAX))],
            ),
            (
                "backlog_quota_messages",
                |c, v| c.backlog_quota_messages = v,
                |c| c.backlog_quota_messages,
                vec![(0, Ok(0)), (1, Ok(1)), (u64::MAX, Ok(u64::MAX))],
            ),
            (
                "backlog_quota_age_ms",
                |c, v| c.backlog_quota_age_ms = v,
                |c| c.backlog_quota_age_ms,
                vec![(0, Ok(0)), (1, Ok(1)), (u64::MAX, Ok(u64::MAX))],
            ),
            (
                "backlog_warn_ratio_percent",
                |c, v| c.backlog_warn_ratio_percent = v as u32,
                |c| c.backlog_warn_ratio_percent.into(),
                vec![
                    (0, Ok(80)),
                    (1, Ok(1)),
                    (100, Ok(100)),
                    (u32::MAX.into(), Err("backlog_warn_ratio_percent")),
                ],
            ),
            (
                "backlog_policy",
                |c, v| c.backlog_policy = v as i32,
                |c| c.backlog_policy as u64,
                vec![
                    (99, Err("backlog_policy")),
                    (u64::MAX, Err("backlog_policy")),
                ],
            ),
            (
                "backlog_hold_timeout_ms",
                |c, v| c.backlog_hold_timeout_ms = v,
                |c| c.backlog_hold_timeout_ms,
                vec![
                    (0, Ok(30_000)),
                    (1, Ok(1)),
                    (600_000, Ok(600_000)),
                    (u64::MAX, Err("backlog_hold_timeout_ms")),
                ],
            ),
            (
                "cleanup_policy",
                |c, v| c.cleanup_policy = v as i32,
                |c| c.cleanup_policy as u64,
                vec![
                    (0, Ok(0)),
                    (1, Ok(1)),
                    (2, Ok(2)),
                    (3, Err("cleanup_policy")),
                    (u64::MAX, Err("cleanup_policy")),
                ],
            ),
            (
                "delete_retention_ms",
                |c, v| c.delete_retention_ms = v,
                |c| c.delete_retention_ms,
                vec![
                    (0, Ok(DEFAULT_DELETE_RETENTION_MS)),
                    (1, Ok(1)),
                    (u64::MAX, Ok(u64::MAX)),
                ],
            ),
            (
                "min_compaction_lag_ms",
                |c, v| c.min_compaction_lag_ms = v,
                |c| c.min_compaction_lag_ms,
                vec![(0, Ok(0)), (1, Ok(1)), (u64::MAX, Ok(u64::MAX))],
            ),
            (
                "min_cleanable_dirty_ratio_percent",
                |c, v| c.min_cleanable_dirty_ratio_percent = v as u32,
                |c| c.min_cleanable_dirty_ratio_percent.into(),
                vec![
                    (0, Ok(50)),
                    (1, Ok(1)),
                    (100, Ok(100)),
                    (101, Err("min_cleanable_dirty_ratio_percent")),
                    (u32::MAX.into(), Err("min_cleanable_dirty_ratio_percent")),
                ],
            ),
        ];
        for (field, set, get, cases) in fields {
            for (value, expected) in cases {
                let mut given = TopicConfig {
                    partitions: 1,
                    ..TopicConfig::default()
                };
                set(&mut given, value);
                let result = complete_topic_config(Some(given), &defaults, grpc_limit);
                match (result, expected) {
                    (Ok(config), Ok(stored)) => {
                        assert_eq!(get(&config), stored, "{field} = {value}")
                    }
                    (Err(NameServerError::InvalidArgument(message)), Err(named)) => assert!(
                        message.contains(named),
                        "{field} = {value}: message {message:?} does not name {named}"
                    ),
                    (result, expected) => {
                        panic!("{field} = {value}: got {result:?}, expected {expected:?}")
                    }
                }
            }
        }
    }

    /// Sets the whole replication (ensemble, write and ack quorum) to `value`.
    fn replication(config: &mut TopicConfig, value: u64) {
        let value = value as u32;
        config.ensemble_size = value;
        config.write_quorum = value;
        config.ack_quorum = value;
    }
}
