//! Produce and fetch bytes per second per principal (`[quotas]`, see
//! `sluice_service::quota`), charged where records move:
//!
//! - Produce: each batch is checked before anything is appended; while
//!   its principal is in debt the batch is refused THROTTLED with the wait
//!   in `ProduceResponse.retry_after_ms` (nothing appended: the SDK resends
//!   it after the wait, with `resume`, in order); otherwise it is charged
//!   its size and goes on.
//! - Fetch: checked before anything is read; while in debt the broker
//!   holds an empty answer for the wait (at most the fetch's own long-poll
//!   wait, so a client that ignores the wait cannot spin) and reports what
//!   is left of it in `FetchResponse.throttle_time_ms`, which the SDK's
//!   consumer sleeps before it fetches again. No data is read, so none is
//!   dropped. A fetch that read is charged its bytes afterwards (Kafka's
//!   model: admitted while not in debt, charged after).

use crate::error::BrokerError;
use sluice_service::quota::{throttled, Verdict};
use sluice_service::{QuotaKind, Quotas};
use std::time::Duration;

/// A produced batch of `bytes` by `principal`: `None` (charged) to go on,
/// or the refusal.
pub fn produce_refusal(quotas: &Quotas, principal: &str, bytes: u64) -> Option<BrokerError> {
    match quotas.admit(principal, QuotaKind::ProduceBytes, bytes) {
        Verdict::Admit => None,
        Verdict::Throttle { wait_ms } => Some(BrokerError::Relayed(throttled(
            principal,
            QuotaKind::ProduceBytes,
            wait_ms,
        ))),
    }
}

/// A fetch throttled for `wait_ms`, with a long-poll wait of
/// `max_wait_ms`: how long the broker holds the empty answer, and the
/// `throttle_time_ms` it reports (the rest of the wait).
pub fn fetch_hold(wait_ms: u64, max_wait_ms: u64) -> (Duration, u64) {
    let held = wait_ms.min(max_wait_ms);
    (Duration::from_millis(held), wait_ms - held)
}

/// How long `principal` must wait before its next fetch reads anything
/// (0: go ahead).
pub fn fetch_wait_ms(quotas: &Quotas, principal: &str) -> u64 {
    quotas.check(principal, QuotaKind::FetchBytes).wait_ms()
}

/// Charges a fetch's `bytes` to `principal`.
pub fn charge_fetch(quotas: &Quotas, principal: &str, bytes: usize) {
    if bytes > 0 {
        quotas.charge(principal, QuotaKind::FetchBytes, bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_service::{QuotaLimits, QuotasConfig};

    fn quotas() -> Quotas {
        let config = QuotasConfig {
            default: QuotaLimits {
                produce_bytes_per_second: Some(1000),
                fetch_bytes_per_second: Some(1000),
                ..QuotaLimits::default()
            },
            ..QuotasConfig::default()
        };
        Quotas::new(&config, ["User:node".to_string()])
    }

    #[test]
    fn a_batch_in_debt_is_refused_with_its_wait_and_nothing_charged() {
        let quotas = quotas();
        assert!(produce_refusal(&quotas, "User:a", 3000).is_none());
        let refused = produce_refusal(&quotas, "User:a", 10).expect("in debt");
        assert_eq!(refused.code(), sluice_proto::ErrorCode::Throttled);
        let wait = refused.retry_after_ms().expect("a wait");
        assert!((1500..=2000).contains(&wait), "{wait}");
        assert!(refused.code().is_retriable());
        let status: tonic::Status = refused.into();
        assert_eq!(
            sluice_proto::SluiceError::from_status(&status).retry_after_ms,
            Some(wait)
        );
        assert!(produce_refusal(&quotas, "User:node", u64::MAX).is_none());
        assert!(produce_refusal(&quotas, "User:node", 1).is_none());
    }

    #[test]
    fn a_fetch_in_debt_waits_and_the_rest_is_told() {
        let quotas = quotas();
        assert_eq!(fetch_wait_ms(&quotas, "User:a"), 0);
        charge_fetch(&quotas, "User:a", 3000);
        let wait = fetch_wait_ms(&quotas, "User:a");
        assert!((1500..=2000).contains(&wait), "{wait}");
        assert_eq!(fetch_hold(2000, 500), (Duration::from_millis(500), 1500));
        assert_eq!(fetch_hold(200, 500), (Duration::from_millis(200), 0));
        assert_eq!(fetch_hold(200, 0), (Duration::ZERO, 200));
    }
}
