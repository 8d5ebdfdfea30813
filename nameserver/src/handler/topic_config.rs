//! A new topic's config: zero fields filled from the configured defaults,
//! then checked (partition count, quorums, time-to-live, backlog quotas,
//! batch size against the gRPC message limit). Pure.

use super::invalid;
use crate::config::TopicDefaults;
use crate::error::NameServerError;
use sluice_proto::v1::{BacklogPolicy, Durability, TopicConfig};

/// Default warning line of a backlog quota, in percent (ADR 0012).
const DEFAULT_BACKLOG_WARN_RATIO_PERCENT: u32 = 80;
/// Default and largest time a HOLD policy holds a batch (ADR 0012).
const DEFAULT_BACKLOG_HOLD_TIMEOUT_MS: u64 = 30_000;
const MAX_BACKLOG_HOLD_TIMEOUT_MS: u64 = 600_000;

/// Fills zero fields of `given` from `defaults` and checks the result;
/// `max_message_bytes` is the nameserver's gRPC message limit.
pub(super) fn complete_topic_config(
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
    let message_limit = u64::try_from(max_message_bytes).unwrap_or(u64::MAX);
    if u64::from(config.max_batch_bytes) > message_limit {
        return Err(invalid(format!(
            "max_batch_bytes {} exceeds the gRPC message limit {message_limit}",
            config.max_batch_bytes
        )));
    }
    Ok(config)
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
        Err(_) => return Err(invalid(format!("unknown durability {}", given.durability))),
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

/// `ensemble_size >= write_quorum >= ack_quorum >= 1`, and no striping.
fn check_quorums(config: &TopicConfig) -> Result<(), NameServerError> {
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
                "unknown backlog policy {}",
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
                "backlog_hold_timeout_ms must be at most {most}, got {timeout}"
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
}
