use super::*;
use sluice_nameserver::session_monitor::SessionMonitor;

fn terms() -> SessionTerms {
    SessionTerms::new(1_500, 5_000, 20)
}

#[test]
fn the_margin_is_a_share_of_the_timeout_within_bounds() {
    assert_eq!(terms().margin, Duration::from_millis(300));
    assert_eq!(
        SessionTerms::new(1_500, 5_000, 1).margin,
        Duration::from_millis(150)
    );
    assert_eq!(
        SessionTerms::new(1_500, 5_000, 90).margin,
        Duration::from_millis(750)
    );
    // An older nameserver announces no session timeout: the lease counts.
    assert_eq!(
        SessionTerms::new(0, 5_000, 20).timeout,
        Duration::from_millis(5_000)
    );
}

#[test]
fn serving_ends_a_margin_before_the_timeout_after_sending() {
    let sent = Instant::now();
    assert_eq!(
        terms().serving_until(sent),
        sent + Duration::from_millis(1_200)
    );
}

#[test]
fn an_attempt_gives_up_at_a_quarter_of_the_timeout_or_at_the_fence() {
    let sent = Instant::now();
    let terms = terms();
    let far = sent + Duration::from_secs(10);
    assert_eq!(
        terms.attempt_deadline(sent, Some(far)),
        sent + Duration::from_millis(375)
    );
    let near = sent + Duration::from_millis(100);
    assert_eq!(terms.attempt_deadline(sent, Some(near)), near);
    // Not serving (or the fence passed): heartbeats go on, bounded.
    assert_eq!(
        terms.attempt_deadline(sent, None),
        sent + Duration::from_millis(375)
    );
    assert_eq!(
        terms.attempt_deadline(sent, Some(sent - Duration::from_millis(1))),
        sent + Duration::from_millis(375)
    );
}

#[test]
fn the_serving_lease_is_checked_against_the_time_given() {
    let lease = ServingLease::default();
    let now = Instant::now();
    assert!(!lease.is_serving_at(now), "not serving before a heartbeat");
    lease.serve_until(now + Duration::from_millis(500));
    assert!(lease.is_serving_at(now + Duration::from_millis(499)));
    assert!(!lease.is_serving_at(now + Duration::from_millis(500)));
    lease.stop();
    assert!(!lease.is_serving_at(now));
}

/// Real time runs in steps of 1 ms. The broker's clock runs at
/// `broker_rate`, the nameserver's at `nameserver_rate` (1.0 = exact). The
/// heartbeat sent at real 0 reaches the nameserver `delay_ms` later, then
/// the broker falls silent. The broker must stop serving strictly before
/// the nameserver's monitor reports the session due.
fn fence_precedes_the_end(broker_rate: f64, nameserver_rate: f64, delay_ms: u64) {
    let broker_origin = Instant::now();
    let nameserver_origin = tokio::time::Instant::now();
    let broker_clock =
        |real_ms: u64| broker_origin + Duration::from_secs_f64(real_ms as f64 * broker_rate / 1e3);
    let nameserver_clock = |real_ms: u64| {
        nameserver_origin + Duration::from_secs_f64(real_ms as f64 * nameserver_rate / 1e3)
    };
    let terms = terms();
    let lease = ServingLease::default();
    lease.serve_until(terms.serving_until(broker_clock(0)));
    let mut monitor = SessionMonitor::new(terms.timeout);
    monitor.wrote("nodes/broker/b1", 7, 1, nameserver_clock(delay_ms));
    let mut fenced_at = None;
    for real_ms in 0..10_000 {
        if fenced_at.is_none() && !lease.is_serving_at(broker_clock(real_ms)) {
            fenced_at = Some(real_ms);
        }
        if real_ms >= delay_ms && !monitor.due(nameserver_clock(real_ms)).is_empty() {
            let fenced_at = fenced_at.unwrap_or_else(|| {
                panic!("rates {broker_rate}/{nameserver_rate}, delay {delay_ms}: still serving when the session ended at {real_ms} ms")
            });
            assert!(
                fenced_at < real_ms,
                "fenced at {fenced_at} ms, ended at {real_ms} ms"
            );
            return;
        }
    }
    panic!("the session never ended");
}

#[test]
fn the_broker_fences_itself_before_the_nameserver_ends_its_session() {
    for broker_rate in [0.9, 1.0, 1.1] {
        for nameserver_rate in [0.9, 1.0, 1.1] {
            for delay_ms in [0, 1, 100, 1_000] {
                fence_precedes_the_end(broker_rate, nameserver_rate, delay_ms);
            }
        }
    }
}
