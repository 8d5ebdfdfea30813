//! Record headers with a meaning to Sluice itself (reserved prefix
//! `sluice-`): delivery time and time-to-live set by producers, and the
//! history a dead letter carries. Producers set them through the SDK
//! (`Record::with_delay`, `with_deliver_at_ms`, `with_ttl`); brokers read
//! them when dispatching to subscriptions (ADR 0011).

/// Unix milliseconds before which a subscription does not deliver the
/// message (decimal ASCII).
pub const DELIVER_AT_MS: &str = "sluice-deliver-at-ms";
/// Milliseconds after the record's timestamp at which the message expires:
/// it is then never delivered, and counted as expired (decimal ASCII).
pub const TTL_MS: &str = "sluice-ttl-ms";

/// Longest delay a producer may ask for: 90 days. A broker treats a
/// delivery time further ahead as this far ahead.
pub const MAX_DELAY_MS: u64 = 90 * 24 * 60 * 60 * 1000;
/// Longest time-to-live, per message or per topic: 365 days.
pub const MAX_TTL_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Dead letters: where the message came from and how often it was
/// delivered before it was given up on.
pub const DEAD_LETTER_TOPIC: &str = "sluice-dlq-topic";
pub const DEAD_LETTER_PARTITION: &str = "sluice-dlq-partition";
pub const DEAD_LETTER_OFFSET: &str = "sluice-dlq-offset";
pub const DEAD_LETTER_SUBSCRIPTION: &str = "sluice-dlq-subscription";
pub const DEAD_LETTER_DELIVERIES: &str = "sluice-dlq-deliveries";
pub const DEAD_LETTER_TIME_MS: &str = "sluice-dlq-time-ms";

/// The value of header `name` as an unsigned decimal number, if present
/// and well formed (the first occurrence counts).
pub fn number(headers: &[(String, bytes::Bytes)], name: &str) -> Option<u64> {
    headers
        .iter()
        .find(|(header, _)| header == name)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .and_then(|text| text.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn numbers_are_read_from_the_first_well_formed_header() {
        let headers = vec![
            ("other".to_string(), Bytes::from_static(b"1")),
            (
                DELIVER_AT_MS.to_string(),
                Bytes::from_static(b"1700000000000"),
            ),
            (DELIVER_AT_MS.to_string(), Bytes::from_static(b"5")),
        ];
        assert_eq!(number(&headers, DELIVER_AT_MS), Some(1_700_000_000_000));
        assert_eq!(number(&headers, TTL_MS), None);
        let garbage = vec![(TTL_MS.to_string(), Bytes::from_static(b"-3x"))];
        assert_eq!(number(&garbage, TTL_MS), None);
    }
}
