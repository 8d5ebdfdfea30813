use super::*;

const TIMEOUT: Duration = Duration::from_millis(1_500);
const KEY: &str = "nodes/broker/b1";

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

/// The node key as etcd holds it: which session, at which mod revision
/// (None: deleted), and the store's revision counter.
struct Key {
    holder: Option<(u64, i64)>,
    revision: i64,
}

impl Key {
    fn registered(session: u64) -> Self {
        Self {
            holder: Some((session, 1)),
            revision: 1,
        }
    }

    /// A write conditional on the key's mod revision; the new revision.
    fn write_if(&mut self, seen: i64) -> Option<i64> {
        let (session, revision) = self.holder?;
        if revision != seen {
            return None;
        }
        self.revision += 1;
        self.holder = Some((session, self.revision));
        Some(self.revision)
    }

    /// The expiry's conditional delete; whether it applied.
    fn delete_if(&mut self, expiry: &Expiry) -> bool {
        match self.holder {
            Some((session, revision))
                if session == expiry.session && revision == expiry.revision =>
            {
                self.revision += 1;
                self.holder = None;
                true
            }
            _ => false,
        }
    }

    fn revision(&self) -> i64 {
        self.holder.map(|(_, revision)| revision).unwrap_or(0)
    }
}

/// A heartbeat through `monitor` as the IO edge does it: read the key,
/// ask the monitor, claim if told to. True if answered "renewed".
fn heartbeat(monitor: &mut SessionMonitor, key: &mut Key, session: u64, now: Instant) -> bool {
    let Some((holder, seen)) = key.holder else {
        monitor.forget(KEY, session);
        return false;
    };
    if holder != session {
        return false;
    }
    match monitor.heartbeat(KEY, session, seen, now) {
        HeartbeatVerdict::Renewed => true,
        HeartbeatVerdict::Expired => false,
        HeartbeatVerdict::Claim => match key.write_if(seen) {
            Some(revision) => {
                monitor.wrote(KEY, session, revision, now);
                true
            }
            None => false,
        },
    }
}

/// The expiry loop's pass: end every due session it may end.
fn expire(monitor: &mut SessionMonitor, key: &mut Key, now: Instant) -> Vec<bool> {
    monitor
        .due(now)
        .iter()
        .map(|expiry| {
            let deleted = key.delete_if(expiry);
            monitor.finished(expiry);
            deleted
        })
        .collect()
}

#[test]
fn a_session_is_due_exactly_when_silent_for_the_timeout() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    monitor.wrote(KEY, 7, 1, base);
    assert_eq!(
        monitor.heartbeat(KEY, 7, 1, at(base, 1_000)),
        HeartbeatVerdict::Renewed
    );
    assert!(monitor.due(at(base, 2_499)).is_empty());
    assert_eq!(
        monitor.due(at(base, 2_500)),
        vec![Expiry {
            key: KEY.into(),
            session: 7,
            revision: 1
        }]
    );
}

#[test]
fn heartbeats_keep_a_session_alive_indefinitely() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    let mut key = Key::registered(7);
    monitor.wrote(KEY, 7, 1, base);
    for step in 1..100 {
        let now = at(base, step * 250);
        assert!(heartbeat(&mut monitor, &mut key, 7, now));
        assert!(expire(&mut monitor, &mut key, now).is_empty());
    }
    assert_eq!(
        key.revision(),
        1,
        "no write while the same nameserver renews"
    );
}

#[test]
fn an_untracked_session_is_claimed_once_then_renewed() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    assert_eq!(monitor.heartbeat(KEY, 7, 1, base), HeartbeatVerdict::Claim);
    monitor.wrote(KEY, 7, 2, base);
    assert_eq!(
        monitor.heartbeat(KEY, 7, 2, base),
        HeartbeatVerdict::Renewed
    );
    // Another session on the same key (the node registered again).
    assert_eq!(monitor.heartbeat(KEY, 8, 3, base), HeartbeatVerdict::Claim);
}

#[test]
fn no_heartbeat_is_renewed_once_the_session_is_being_ended() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    monitor.wrote(KEY, 7, 1, base);
    let due = monitor.due(at(base, 1_500));
    assert_eq!(due.len(), 1);
    assert_eq!(
        monitor.heartbeat(KEY, 7, 1, at(base, 1_501)),
        HeartbeatVerdict::Expired
    );
    // The IO failed (metadata unavailable): picked again, still refused.
    assert_eq!(monitor.due(at(base, 1_600)), due);
    assert_eq!(
        monitor.heartbeat(KEY, 7, 1, at(base, 1_601)),
        HeartbeatVerdict::Expired
    );
    monitor.finished(&due[0]);
    assert!(monitor.is_empty());
}

#[test]
fn a_node_that_moved_to_another_nameserver_is_not_ended_by_the_old_one() {
    let base = Instant::now();
    let (mut first, mut second) = (SessionMonitor::new(TIMEOUT), SessionMonitor::new(TIMEOUT));
    let mut key = Key::registered(7);
    first.wrote(KEY, 7, 1, base);
    // The node switches to the second nameserver at once and stays there.
    for step in 1..=20 {
        let now = at(base, step * 250);
        assert!(heartbeat(&mut second, &mut key, 7, now), "step {step}");
        // The first one gives up at its timeout: its delete's compare fails.
        let ended = expire(&mut first, &mut key, now);
        let expected: Vec<bool> = if step == 6 { vec![false] } else { vec![] };
        assert_eq!(ended, expected, "step {step}");
        assert!(expire(&mut second, &mut key, now).is_empty());
    }
    assert!(first.is_empty(), "the first nameserver forgot the session");
    assert!(key.holder.is_some());
}

#[test]
fn back_and_forth_between_nameservers_every_heartbeat_claims() {
    let base = Instant::now();
    let (mut first, mut second) = (SessionMonitor::new(TIMEOUT), SessionMonitor::new(TIMEOUT));
    let mut key = Key::registered(7);
    first.wrote(KEY, 7, 1, base);
    for step in 1..=40 {
        let now = at(base, step * 250);
        let monitor = if step % 3 == 0 {
            &mut first
        } else {
            &mut second
        };
        assert!(heartbeat(monitor, &mut key, 7, now), "step {step}");
        for monitor in [&mut first, &mut second] {
            assert!(
                expire(monitor, &mut key, now)
                    .iter()
                    .all(|deleted| !deleted),
                "step {step}: a live session was ended"
            );
        }
    }
    // The node dies: exactly the nameserver holding the last write ends it.
    let now = at(base, 40 * 250 + 1_500);
    let ended: Vec<bool> = [&mut first, &mut second]
        .into_iter()
        .flat_map(|monitor| expire(monitor, &mut key, now))
        .collect();
    assert_eq!(ended.iter().filter(|deleted| **deleted).count(), 1);
    assert!(key.holder.is_none());
}

#[test]
fn an_ending_and_a_claim_racing_for_the_same_revision_one_wins() {
    let base = Instant::now();
    // Ending first: the claim's compare fails and the node is told expired.
    let (mut first, mut second) = (SessionMonitor::new(TIMEOUT), SessionMonitor::new(TIMEOUT));
    let mut key = Key::registered(7);
    first.wrote(KEY, 7, 1, base);
    let now = at(base, 1_500);
    let due = first.due(now);
    assert_eq!(second.heartbeat(KEY, 7, 1, now), HeartbeatVerdict::Claim);
    assert!(key.delete_if(&due[0]));
    first.finished(&due[0]);
    assert_eq!(key.write_if(1), None, "the claim must fail");
    second.forget(KEY, 7);
    assert!(first.is_empty() && second.is_empty());

    // Claim first: the ending's compare fails; the claimer keeps it.
    let (mut first, mut second) = (SessionMonitor::new(TIMEOUT), SessionMonitor::new(TIMEOUT));
    let mut key = Key::registered(7);
    first.wrote(KEY, 7, 1, base);
    let due = first.due(now);
    assert_eq!(second.heartbeat(KEY, 7, 1, now), HeartbeatVerdict::Claim);
    let claimed = key.write_if(1).expect("the claim applies");
    second.wrote(KEY, 7, claimed, now);
    assert!(!key.delete_if(&due[0]), "the ending must fail");
    first.finished(&due[0]);
    assert!(first.is_empty());
    assert_eq!(second.len(), 1);
    assert!(expire(&mut second, &mut key, at(now, 1_499)).is_empty());
    assert_eq!(expire(&mut second, &mut key, at(now, 1_500)), vec![true]);
}

#[test]
fn while_ending_even_a_heartbeat_that_read_a_newer_revision_is_refused() {
    // Someone else wrote the key (revision 5) while this nameserver was
    // ending the session at revision 1: its delete will fail, but the
    // heartbeat here is refused all the same (the node registers again;
    // a rare race, and never an answer "renewed" for an ending session).
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    monitor.wrote(KEY, 7, 1, base);
    let due = monitor.due(at(base, 1_500));
    assert_eq!(
        monitor.heartbeat(KEY, 7, 5, at(base, 1_500)),
        HeartbeatVerdict::Expired
    );
    monitor.finished(&due[0]);
    assert!(monitor.is_empty());
    // The next heartbeat claims afresh.
    assert_eq!(
        monitor.heartbeat(KEY, 7, 5, at(base, 1_600)),
        HeartbeatVerdict::Claim
    );
}

#[test]
fn a_load_update_moves_the_revision_this_nameserver_holds() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    let mut key = Key::registered(7);
    monitor.wrote(KEY, 7, 1, base);
    let written = key.write_if(1).expect("load update");
    monitor.wrote(KEY, 7, written, at(base, 100));
    assert!(heartbeat(&mut monitor, &mut key, 7, at(base, 200)));
    assert_eq!(key.revision(), written, "renewed without a claim");
    assert_eq!(expire(&mut monitor, &mut key, at(base, 1_700)), vec![true]);
}

#[test]
fn a_new_session_of_the_same_node_is_not_forgotten_with_the_old() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    monitor.wrote(KEY, 7, 1, base);
    let due = monitor.due(at(base, 1_500));
    monitor.wrote(KEY, 8, 9, at(base, 1_500));
    monitor.finished(&due[0]);
    monitor.forget(KEY, 7);
    assert_eq!(monitor.len(), 1);
    assert_eq!(
        monitor.heartbeat(KEY, 8, 9, at(base, 1_600)),
        HeartbeatVerdict::Renewed
    );
}

#[test]
fn heartbeats_that_reach_it_during_a_metadata_outage_keep_the_session() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    monitor.wrote(KEY, 7, 1, base);
    monitor.heard(KEY, 7, at(base, 1_000));
    assert!(monitor.due(at(base, 2_499)).is_empty());
    // Another session, or one being ended, is not kept alive.
    monitor.heard(KEY, 8, at(base, 2_400));
    assert_eq!(monitor.due(at(base, 2_500)).len(), 1);
    monitor.heard(KEY, 7, at(base, 2_600));
    assert_eq!(
        monitor.heartbeat(KEY, 7, 1, at(base, 2_600)),
        HeartbeatVerdict::Expired
    );
}

#[test]
fn a_metadata_outage_gives_every_session_a_new_timeout() {
    let base = Instant::now();
    let mut monitor = SessionMonitor::new(TIMEOUT);
    monitor.wrote(KEY, 7, 1, base);
    monitor.wrote("nodes/store/s1", 9, 2, at(base, 1_000));
    assert_eq!(monitor.due(at(base, 1_500)).len(), 1);
    // Ending failed: the store is unavailable.
    monitor.paused(at(base, 2_000));
    assert_eq!(
        monitor.heartbeat(KEY, 7, 1, at(base, 2_100)),
        HeartbeatVerdict::Renewed
    );
    assert!(monitor.due(at(base, 3_499)).is_empty());
    assert_eq!(
        monitor.due(at(base, 3_500)).len(),
        1,
        "only the store is silent"
    );
}
