use super::*;
use crate::config::TopicDefaults;
use crate::handler::complete_topic_config;

const GRPC_LIMIT: usize = sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES;

/// A stored config as CreateTopic leaves it.
fn stored() -> TopicConfig {
    let given = TopicConfig {
        partitions: 3,
        message_ttl_ms: 60_000,
        backlog_quota_messages: 500,
        ..TopicConfig::default()
    };
    complete_topic_config(Some(given), &TopicDefaults::default(), GRPC_LIMIT).expect("valid")
}

fn refused_naming(changes: TopicConfigChanges, named: &str) {
    match altered_config(&stored(), &changes, GRPC_LIMIT) {
        Err(NameServerError::InvalidArgument(message)) => assert!(
            message.contains(named),
            "{changes:?}: message {message:?} does not name {named}"
        ),
        other => panic!("{changes:?}: expected INVALID_ARGUMENT naming {named}, got {other:?}"),
    }
}

#[test]
fn only_the_given_fields_change() {
    let current = stored();
    let changes = TopicConfigChanges {
        retention_ms: Some(1),
        backlog_quota_messages: Some(0),
        durability: Some(Durability::Periodic as i32),
        ..TopicConfigChanges::default()
    };
    let altered = altered_config(&current, &changes, GRPC_LIMIT).expect("valid");
    let expected = TopicConfig {
        retention_ms: 1,
        backlog_quota_messages: 0,
        durability: Durability::Periodic as i32,
        ..current
    };
    assert_eq!(altered, expected);
}

#[test]
fn extremes_of_each_field() {
    let max = u64::MAX;
    let ok = |changes: TopicConfigChanges| altered_config(&stored(), &changes, GRPC_LIMIT);
    let altered = ok(TopicConfigChanges {
        retention_ms: Some(max),
        retention_bytes: Some(max),
        segment_bytes: Some(1),
        segment_ms: Some(max),
        message_ttl_ms: Some(0),
        backlog_quota_bytes: Some(max),
        backlog_warn_ratio_percent: Some(100),
        backlog_hold_timeout_ms: Some(600_000),
        ..TopicConfigChanges::default()
    })
    .expect("every value in range");
    assert_eq!(
        (
            altered.retention_ms,
            altered.segment_bytes,
            altered.message_ttl_ms
        ),
        (max, 1, 0)
    );
    let zero = TopicConfigChanges::default;
    refused_naming(
        TopicConfigChanges {
            retention_ms: Some(0),
            ..zero()
        },
        "retention_ms",
    );
    refused_naming(
        TopicConfigChanges {
            retention_bytes: Some(0),
            ..zero()
        },
        "retention_bytes",
    );
    refused_naming(
        TopicConfigChanges {
            segment_bytes: Some(0),
            ..zero()
        },
        "segment_bytes",
    );
    refused_naming(
        TopicConfigChanges {
            segment_ms: Some(0),
            ..zero()
        },
        "segment_ms",
    );
    refused_naming(
        TopicConfigChanges {
            durability: Some(0),
            ..zero()
        },
        "durability",
    );
    refused_naming(
        TopicConfigChanges {
            durability: Some(99),
            ..zero()
        },
        "durability",
    );
    refused_naming(
        TopicConfigChanges {
            max_batch_bytes: Some(0),
            ..zero()
        },
        "max_batch_bytes",
    );
    refused_naming(
        TopicConfigChanges {
            max_batch_bytes: Some(u32::MAX),
            ..zero()
        },
        "max_batch_bytes",
    );
    refused_naming(
        TopicConfigChanges {
            message_ttl_ms: Some(max),
            ..zero()
        },
        "message_ttl_ms",
    );
    refused_naming(
        TopicConfigChanges {
            backlog_warn_ratio_percent: Some(0),
            ..zero()
        },
        "backlog_warn_ratio_percent",
    );
    refused_naming(
        TopicConfigChanges {
            backlog_warn_ratio_percent: Some(101),
            ..zero()
        },
        "backlog_warn_ratio_percent",
    );
    refused_naming(
        TopicConfigChanges {
            backlog_policy: Some(0),
            ..zero()
        },
        "backlog_policy",
    );
    refused_naming(
        TopicConfigChanges {
            backlog_policy: Some(99),
            ..zero()
        },
        "backlog_policy",
    );
    refused_naming(
        TopicConfigChanges {
            backlog_hold_timeout_ms: Some(0),
            ..zero()
        },
        "backlog_hold_timeout_ms",
    );
    refused_naming(
        TopicConfigChanges {
            backlog_hold_timeout_ms: Some(max),
            ..zero()
        },
        "backlog_hold_timeout_ms",
    );
    refused_naming(zero(), "no setting");
}

#[test]
fn replication_changes_keep_the_quorum_rules() {
    let current = stored();
    let grown = altered_config(
        &current,
        &TopicConfigChanges {
            ensemble_size: Some(3),
            ack_quorum: Some(2),
            ..TopicConfigChanges::default()
        },
        GRPC_LIMIT,
    )
    .expect("3/3/2 is valid");
    assert_eq!(
        (grown.ensemble_size, grown.write_quorum, grown.ack_quorum),
        (3, 3, 2)
    );
    let zero = TopicConfigChanges::default;
    refused_naming(
        TopicConfigChanges {
            ensemble_size: Some(0),
            ..zero()
        },
        "ensemble_size",
    );
    refused_naming(
        TopicConfigChanges {
            ensemble_size: Some(17),
            ..zero()
        },
        "ensemble_size",
    );
    refused_naming(
        TopicConfigChanges {
            ack_quorum: Some(0),
            ..zero()
        },
        "ack_quorum",
    );
    refused_naming(
        TopicConfigChanges {
            ack_quorum: Some(u32::MAX),
            ..zero()
        },
        "ensemble_size >= write_quorum >= ack_quorum",
    );
    refused_naming(
        TopicConfigChanges {
            ensemble_size: Some(3),
            write_quorum: Some(2),
            ..zero()
        },
        "striping",
    );
}

#[test]
fn partitions_only_grow_up_to_the_limit() {
    let current = stored();
    assert_eq!(grown_config(&current, 4).expect("grows").partitions, 4);
    assert_eq!(
        grown_config(&current, MAX_PARTITIONS_PER_TOPIC)
            .expect("the limit itself")
            .partitions,
        MAX_PARTITIONS_PER_TOPIC
    );
    for refused in [0, 1, 3, MAX_PARTITIONS_PER_TOPIC + 1, u32::MAX] {
        let result = grown_config(&current, refused);
        assert!(
            matches!(result, Err(NameServerError::InvalidArgument(_))),
            "{refused} partitions gave {result:?}"
        );
    }
    let grown = grown_config(&current, 8).expect("grows");
    assert_eq!(
        TopicConfig {
            partitions: 3,
            ..grown
        },
        current,
        "nothing but the count changes"
    );
}

#[test]
fn compaction_settings_at_their_extremes() {
    let ok = |changes: TopicConfigChanges| altered_config(&stored(), &changes, GRPC_LIMIT);
    let altered = ok(TopicConfigChanges {
        cleanup_policy: Some(sluice_proto::v1::CleanupPolicy::CompactDelete as i32),
        delete_retention_ms: Some(1),
        min_compaction_lag_ms: Some(0),
        min_cleanable_dirty_ratio_percent: Some(100),
        ..TopicConfigChanges::default()
    })
    .expect("every value in range");
    assert_eq!(
        (
            altered.cleanup_policy,
            altered.delete_retention_ms,
            altered.min_compaction_lag_ms,
            altered.min_cleanable_dirty_ratio_percent
        ),
        (2, 1, 0, 100)
    );
    let altered = ok(TopicConfigChanges {
        delete_retention_ms: Some(u64::MAX),
        min_compaction_lag_ms: Some(u64::MAX),
        min_cleanable_dirty_ratio_percent: Some(1),
        ..TopicConfigChanges::default()
    })
    .expect("every value in range");
    assert_eq!(altered.delete_retention_ms, u64::MAX);
    assert_eq!(altered.min_cleanable_dirty_ratio_percent, 1);
    // A topic stored before these settings existed (zeros) can still be
    // altered: its zeros read as the defaults.
    let old = TopicConfig {
        delete_retention_ms: 0,
        min_cleanable_dirty_ratio_percent: 0,
        ..stored()
    };
    let altered = altered_config(
        &old,
        &TopicConfigChanges {
            retention_ms: Some(5),
            ..TopicConfigChanges::default()
        },
        GRPC_LIMIT,
    )
    .expect("an old topic alters");
    assert_eq!(altered.delete_retention_ms, 86_400_000);
    assert_eq!(altered.min_cleanable_dirty_ratio_percent, 50);
    let zero = TopicConfigChanges::default;
    for (changes, named) in [
        (
            TopicConfigChanges {
                cleanup_policy: Some(3),
                ..zero()
            },
            "cleanup_policy",
        ),
        (
            TopicConfigChanges {
                cleanup_policy: Some(-1),
                ..zero()
            },
            "cleanup_policy",
        ),
        (
            TopicConfigChanges {
                delete_retention_ms: Some(0),
                ..zero()
            },
            "delete_retention_ms",
        ),
        (
            TopicConfigChanges {
                min_cleanable_dirty_ratio_percent: Some(0),
                ..zero()
            },
            "min_cleanable_dirty_ratio_percent",
        ),
        (
            TopicConfigChanges {
                min_cleanable_dirty_ratio_percent: Some(101),
                ..zero()
            },
            "min_cleanable_dirty_ratio_percent",
        ),
    ] {
        refused_naming(changes, named);
    }
}
