//! What a topic's `cleanup_policy` (ADR 0016 §8) means, in one place for
//! the nameserver, brokers and tools.

use crate::v1::{CleanupPolicy, TopicConfig};

/// The topic's policy; a value no release defines reads as DELETE (the
/// nameserver refuses such values, so only a hand-edited config has one).
pub fn policy(config: &TopicConfig) -> CleanupPolicy {
    CleanupPolicy::try_from(config.cleanup_policy).unwrap_or(CleanupPolicy::Delete)
}

/// The topic is compacted (COMPACT or COMPACT_DELETE): produced records
/// need keys and the compaction task runs for its partitions.
pub fn compacts(config: &TopicConfig) -> bool {
    matches!(
        policy(config),
        CleanupPolicy::Compact | CleanupPolicy::CompactDelete
    )
}

/// Retention (by age and size) deletes the topic's segments: DELETE and
/// COMPACT_DELETE, never COMPACT alone.
pub fn deletes_by_retention(config: &TopicConfig) -> bool {
    policy(config) != CleanupPolicy::Compact
}

/// The name `sluice topic create --cleanup-policy` takes and shows.
pub fn name(policy: CleanupPolicy) -> &'static str {
    match policy {
        CleanupPolicy::Delete => "delete",
        CleanupPolicy::Compact => "compact",
        CleanupPolicy::CompactDelete => "compact,delete",
    }
}

/// Parses `delete`, `compact` or `compact,delete` (either order).
pub fn parse(name: &str) -> Option<CleanupPolicy> {
    match name.trim() {
        "delete" => Some(CleanupPolicy::Delete),
        "compact" => Some(CleanupPolicy::Compact),
        "compact,delete" | "delete,compact" => Some(CleanupPolicy::CompactDelete),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_and_round_trip() {
        let with = |cleanup_policy| TopicConfig {
            cleanup_policy,
            ..TopicConfig::default()
        };
        assert!(!compacts(&with(0)) && deletes_by_retention(&with(0)));
        assert!(compacts(&with(1)) && !deletes_by_retention(&with(1)));
        assert!(compacts(&with(2)) && deletes_by_retention(&with(2)));
        // Unknown values read as DELETE: never compacted, never kept forever.
        assert!(!compacts(&with(99)) && deletes_by_retention(&with(-1)));
        for policy in [
            CleanupPolicy::Delete,
            CleanupPolicy::Compact,
            CleanupPolicy::CompactDelete,
        ] {
            assert_eq!(parse(name(policy)), Some(policy));
        }
        assert_eq!(parse("delete,compact"), Some(CleanupPolicy::CompactDelete));
        assert_eq!(parse("compacted"), None);
        assert_eq!(parse(""), None);
    }
}
