use super::*;

const MS: Duration = Duration::from_millis(1);

fn settings() -> Settings {
    Settings {
        ack_quorum: 2,
        max_in_flight: 4,
        replica_ack_timeout: 100 * MS,
        segment_bytes: 0,
        segment_age: None,
        ensemble_size: 3,
        degraded_check_every: 1_000 * MS,
    }
}

fn stores(count: usize) -> Vec<String> {
    (0..count).map(|index| format!("s{index}")).collect()
}

fn pipeline(settings: Settings, replicas: usize, now: Instant) -> AppendPipeline<&'static str> {
    AppendPipeline::new(settings, stores(replicas), 100, now)
}

/// Drains the effects: (completed jobs with their offsets, failed jobs,
/// dropped stores, next-segment requests).
#[derive(Debug, Default, PartialEq)]
struct Seen {
    completed: Vec<(&'static str, u64, u64)>,
    failed: Vec<&'static str>,
    dropped: Vec<String>,
    prepare: Vec<(u64, Vec<String>)>,
}

fn drain(pipeline: &mut AppendPipeline<&'static str>) -> Seen {
    let mut seen = Seen::default();
    while let Some(effect) = pipeline.next_effect() {
        match effect {
            Effect::Complete(entry) => {
                seen.completed
                    .push((entry.job, entry.base_offset, entry.end_offset))
            }
            Effect::Fail(job, _) => seen.failed.push(job),
            Effect::ReplicaDropped { store_id, .. } => seen.dropped.push(store_id),
            Effect::PrepareNextSegment {
                base_offset,
                excluded_stores,
            } => seen.prepare.push((base_offset, excluded_stores)),
        }
    }
    seen
}

#[test]
fn appends_take_contiguous_offsets_and_go_to_every_healthy_replica() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    assert_eq!(pipeline.append("a", 3, 10, now), (1, vec![0, 1, 2]));
    assert_eq!(pipeline.next_offset(), 103);
    assert_eq!(pipeline.append("b", 1, 10, now), (2, vec![0, 1, 2]));
    assert_eq!(pipeline.next_offset(), 104);
}

#[test]
fn an_append_completes_in_order_once_the_ack_quorum_has_it() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 2, 10, now);
    pipeline.append("b", 2, 10, now);
    // One replica acknowledged both: not durable yet.
    pipeline.acknowledged(0, 2, now);
    assert_eq!(drain(&mut pipeline), Seen::default());
    // A second replica acknowledged only the first.
    pipeline.acknowledged(1, 1, now);
    assert_eq!(drain(&mut pipeline).completed, vec![("a", 100, 102)]);
    pipeline.acknowledged(2, 2, now);
    assert_eq!(drain(&mut pipeline).completed, vec![("b", 102, 104)]);
    assert_eq!(pipeline.in_flight(), 0);
}

#[test]
fn a_later_append_never_completes_before_an_earlier_one() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 10, now);
    pipeline.append("b", 1, 10, now);
    pipeline.append("c", 1, 10, now);
    // Cumulative acknowledgements of 3 by two replicas complete all three,
    // in order.
    pipeline.acknowledged(1, 3, now);
    pipeline.acknowledged(2, 3, now);
    let completed: Vec<_> = drain(&mut pipeline).completed.iter().map(|c| c.0).collect();
    assert_eq!(completed, vec!["a", "b", "c"]);
}

#[test]
fn at_most_max_in_flight_appends_are_accepted() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    for job in ["a", "b", "c", "d"] {
        assert!(pipeline.accepts_appends());
        pipeline.append(job, 1, 1, now);
    }
    assert!(!pipeline.accepts_appends());
    pipeline.acknowledged(0, 1, now);
    pipeline.acknowledged(1, 1, now);
    assert!(pipeline.accepts_appends());
}

#[test]
fn an_out_of_order_acknowledgement_drops_the_replica() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 1, now);
    pipeline.acknowledged(0, 1, now);
    // Again the same sequence, then one never sent.
    pipeline.acknowledged(0, 1, now);
    pipeline.acknowledged(1, 7, now);
    let seen = drain(&mut pipeline);
    assert_eq!(seen.dropped, vec!["s0", "s1"]);
    // Two of three dropped with a quorum of two: the append fails.
    assert_eq!(seen.failed, vec!["a"]);
    assert!(
        matches!(pipeline.take_end(), Some(End::Failed { failed_stores, .. }) if failed_stores == ["s0", "s1"])
    );
}

#[test]
fn an_acknowledgement_given_before_a_replica_failed_still_counts() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 1, now);
    pipeline.acknowledged(0, 1, now);
    pipeline.replica_failed(0, BrokerError::Unavailable("gone".into()), now);
    assert!(drain(&mut pipeline).completed.is_empty());
    pipeline.acknowledged(1, 1, now);
    assert_eq!(drain(&mut pipeline).completed, vec![("a", 100, 101)]);
}

#[test]
fn acknowledgements_of_a_dropped_replica_are_ignored() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 1, now);
    pipeline.replica_failed(0, BrokerError::Unavailable("gone".into()), now);
    pipeline.acknowledged(0, 1, now);
    pipeline.acknowledged(1, 1, now);
    assert!(
        drain(&mut pipeline).completed.is_empty(),
        "one live ack of a quorum of two"
    );
    pipeline.acknowledged(2, 1, now);
    assert_eq!(drain(&mut pipeline).completed.len(), 1);
}

#[test]
fn a_replica_that_does_not_acknowledge_in_time_is_dropped_and_the_segment_rolls() {
    let start = Instant::now();
    let mut pipeline = pipeline(settings(), 3, start);
    pipeline.append("a", 5, 1, start);
    pipeline.acknowledged(0, 1, start + 10 * MS);
    pipeline.acknowledged(1, 1, start + 10 * MS);
    assert_eq!(drain(&mut pipeline).completed.len(), 1);
    // Replica 2 still owes the acknowledgement.
    assert_eq!(pipeline.next_deadline(), Some(start + 100 * MS));
    pipeline.tick(start + 99 * MS, 3);
    assert!(drain(&mut pipeline).dropped.is_empty());
    pipeline.tick(start + 100 * MS, 3);
    let seen = drain(&mut pipeline);
    assert_eq!(seen.dropped, vec!["s2"]);
    assert_eq!(seen.prepare, vec![(105, vec!["s2".to_string()])]);
    assert!(!pipeline.accepts_appends(), "rolling");
    // Nothing in flight: the roll ends once the next segment is ready.
    assert!(!pipeline.is_ended());
    pipeline.next_segment_prepared(true, Vec::new(), start + 120 * MS);
    match pipeline.take_end() {
        Some(End::Roll {
            failed_stores,
            next_segment_ready,
            next_offset,
            stopped_at,
            drained_at,
        }) => {
            assert_eq!(failed_stores, vec!["s2"]);
            assert!(next_segment_ready);
            assert_eq!(next_offset, 105);
            assert_eq!(stopped_at, start + 100 * MS);
            assert_eq!(drained_at, start + 100 * MS);
        }
        other => panic!("expected a roll, got {other:?}"),
    }
}

#[test]
fn losing_the_quorum_fails_everything_in_flight() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 1, now);
    pipeline.append("b", 1, 1, now);
    pipeline.acknowledged(0, 1, now);
    pipeline.acknowledged(1, 1, now);
    pipeline.replica_failed(1, BrokerError::Unavailable("x".into()), now);
    let seen = drain(&mut pipeline);
    assert_eq!(
        seen.completed,
        vec![("a", 100, 101)],
        "durable before the failure"
    );
    assert!(!pipeline.is_ended(), "two healthy replicas remain: a roll");
    pipeline.replica_failed(2, BrokerError::Unavailable("y".into()), now);
    let seen = drain(&mut pipeline);
    assert_eq!(seen.failed, vec!["b"]);
    assert!(matches!(pipeline.take_end(), Some(End::Failed { .. })));
    // After the end, further events change nothing.
    pipeline.acknowledged(0, 2, now);
    pipeline.tick(now + 10_000 * MS, 3);
    assert_eq!(drain(&mut pipeline), Seen::default());
}

#[test]
fn a_send_a_replica_cannot_take_drops_it() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    let (_, replicas) = pipeline.append("a", 1, 1, now);
    assert_eq!(replicas, vec![0, 1, 2]);
    pipeline.send_failed(1, now);
    let seen = drain(&mut pipeline);
    assert_eq!(seen.dropped, vec!["s1"]);
    // Rolling: no new appends; the one in flight completes on the others.
    assert!(!pipeline.accepts_appends());
    pipeline.acknowledged(0, 1, now);
    pipeline.acknowledged(2, 1, now);
    assert_eq!(drain(&mut pipeline).completed.len(), 1);
}

#[test]
fn a_full_segment_rolls_after_its_appends_drain() {
    let now = Instant::now();
    let mut pipeline = pipeline(
        Settings {
            segment_bytes: 100,
            ..settings()
        },
        3,
        now,
    );
    pipeline.append("a", 1, 60, now);
    assert!(drain(&mut pipeline).prepare.is_empty());
    pipeline.append("b", 2, 60, now);
    assert_eq!(drain(&mut pipeline).prepare, vec![(103, Vec::new())]);
    assert!(!pipeline.accepts_appends());
    // Prepared before the appends drained: the roll waits for them.
    pipeline.next_segment_prepared(true, Vec::new(), now);
    assert!(!pipeline.is_ended());
    pipeline.acknowledged(0, 2, now + MS);
    pipeline.acknowledged(1, 2, now + 2 * MS);
    assert_eq!(drain(&mut pipeline).completed.len(), 2);
    match pipeline.take_end() {
        Some(End::Roll {
            drained_at,
            next_segment_ready: true,
            next_offset: 103,
            ..
        }) => assert_eq!(drained_at, now + 2 * MS),
        other => panic!("expected a roll, got {other:?}"),
    }
}

#[test]
fn a_roll_whose_next_segment_failed_excludes_the_stores_it_failed_on() {
    let now = Instant::now();
    let mut pipeline = pipeline(
        Settings {
            segment_bytes: 1,
            ..settings()
        },
        3,
        now,
    );
    pipeline.append("a", 1, 1, now);
    pipeline.acknowledged(0, 1, now);
    pipeline.acknowledged(1, 1, now);
    pipeline.next_segment_prepared(false, vec!["s9".into()], now);
    match pipeline.take_end() {
        Some(End::Roll {
            failed_stores,
            next_segment_ready: false,
            ..
        }) => assert_eq!(failed_stores, vec!["s9"]),
        other => panic!("expected a roll through takeover, got {other:?}"),
    }
}

#[test]
fn an_old_segment_rolls_only_once_it_holds_data() {
    let start = Instant::now();
    let mut pipeline = pipeline(
        Settings {
            segment_age: Some(1_000 * MS),
            ..settings()
        },
        3,
        start,
    );
    assert_eq!(pipeline.next_deadline(), None, "empty: no age roll armed");
    pipeline.tick(start + 5_000 * MS, 3);
    assert!(drain(&mut pipeline).prepare.is_empty());
    pipeline.append("a", 1, 1, start + 5_000 * MS);
    pipeline.acknowledged(0, 1, start + 5_001 * MS);
    pipeline.acknowledged(1, 1, start + 5_001 * MS);
    pipeline.acknowledged(2, 1, start + 5_001 * MS);
    assert_eq!(pipeline.next_deadline(), Some(start + 1_000 * MS));
    pipeline.tick(start + 5_002 * MS, 3);
    assert_eq!(drain(&mut pipeline).prepare.len(), 1);
}

/// segment_ms and the broker's timeouts at u64::MAX milliseconds: far
/// beyond any run (never, where the clock cannot even represent it), not a
/// panic; 1 ms rolls at once.
#[test]
fn durations_at_their_extremes_never_overflow_the_clock() {
    let start = Instant::now();
    let forever = Duration::from_millis(u64::MAX);
    let mut pipeline = pipeline(
        Settings {
            segment_age: Some(forever),
            replica_ack_timeout: forever,
            degraded_check_every: forever,
            ..settings()
        },
        2,
        start,
    );
    pipeline.append("a", 1, 1, start);
    let year = Duration::from_secs(365 * 24 * 3600);
    assert!(
        pipeline
            .next_deadline()
            .is_none_or(|deadline| deadline > start + year),
        "nothing is due in any foreseeable time"
    );
    pipeline.tick(start + 1_000_000 * MS, 3);
    let seen = drain(&mut pipeline);
    assert!(
        seen.prepare.is_empty() && seen.dropped.is_empty(),
        "{seen:?}"
    );

    let mut pipeline = pipeline_with_age(MS, start);
    pipeline.append("a", 1, 1, start);
    pipeline.tick(start + 2 * MS, 3);
    assert_eq!(drain(&mut pipeline).prepare.len(), 1, "1 ms: rolls at once");
}

fn pipeline_with_age(age: Duration, start: Instant) -> AppendPipeline<&'static str> {
    pipeline(
        Settings {
            segment_age: Some(age),
            ..settings()
        },
        3,
        start,
    )
}

#[test]
fn a_degraded_ensemble_rolls_once_enough_stores_are_live() {
    let start = Instant::now();
    let mut pipeline = pipeline(settings(), 2, start);
    assert_eq!(pipeline.next_deadline(), Some(start + 1_000 * MS));
    pipeline.tick(start + 1_000 * MS, 2);
    assert!(drain(&mut pipeline).prepare.is_empty());
    assert_eq!(pipeline.next_deadline(), Some(start + 2_000 * MS));
    pipeline.tick(start + 2_000 * MS, 3);
    assert_eq!(drain(&mut pipeline).prepare, vec![(100, Vec::new())]);
    // Nothing in flight: ends as soon as the next segment is there.
    pipeline.next_segment_prepared(true, Vec::new(), start + 2_001 * MS);
    assert!(matches!(
        pipeline.take_end(),
        Some(End::Roll {
            next_offset: 100,
            ..
        })
    ));
}

#[test]
fn a_full_ensemble_never_runs_the_degraded_check() {
    let start = Instant::now();
    let pipeline = pipeline(settings(), 3, start);
    assert_eq!(pipeline.next_deadline(), None);
}

#[test]
fn a_single_replica_with_quorum_one_completes_on_its_own_ack() {
    let now = Instant::now();
    let mut pipeline = pipeline(
        Settings {
            ack_quorum: 1,
            ensemble_size: 1,
            ..settings()
        },
        1,
        now,
    );
    pipeline.append("a", 1, 1, now);
    pipeline.acknowledged(0, 1, now);
    assert_eq!(drain(&mut pipeline).completed.len(), 1);
    pipeline.append("b", 1, 1, now);
    pipeline.replica_failed(0, BrokerError::Unavailable("x".into()), now);
    assert_eq!(drain(&mut pipeline).failed, vec!["b"]);
    assert!(matches!(pipeline.take_end(), Some(End::Failed { .. })));
}

#[test]
fn a_quorum_larger_than_the_ensemble_is_the_ensemble() {
    let now = Instant::now();
    let mut pipeline = pipeline(
        Settings {
            ack_quorum: 9,
            ..settings()
        },
        2,
        now,
    );
    pipeline.append("a", 1, 1, now);
    pipeline.acknowledged(0, 1, now);
    assert!(drain(&mut pipeline).completed.is_empty());
    pipeline.acknowledged(1, 1, now);
    assert_eq!(drain(&mut pipeline).completed.len(), 1);
}

#[test]
fn stopping_fails_what_is_in_flight() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 1, now);
    pipeline.append("b", 1, 1, now);
    pipeline.stop(BrokerError::Unavailable("stopped".into()));
    assert_eq!(drain(&mut pipeline).failed, vec!["a", "b"]);
}

#[test]
fn every_stream_ending_fails_the_pipeline() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 1, now);
    pipeline.streams_ended(BrokerError::Unavailable("closed".into()));
    assert_eq!(drain(&mut pipeline).failed, vec!["a"]);
    assert!(matches!(pipeline.take_end(), Some(End::Failed { .. })));
}

/// Random interleavings of appends, acknowledgements, failures, time and
/// roll preparation against a model of the replicas: completions are in
/// order, contiguous, each acknowledged by a quorum first; every append
/// ends exactly once; nothing completes after the pipeline failed.
#[test]
fn randomized_runs_complete_in_order_only_what_a_quorum_acknowledged() {
    use rand::{Rng, SeedableRng};
    for seed in 0..200u64 {
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let replicas = random.random_range(1..=4usize);
        let quorum = random.random_range(1..=replicas);
        let settings = Settings {
            ack_quorum: quorum,
            max_in_flight: random.random_range(1..=5),
            segment_bytes: random.random_range(0..200),
            ..settings()
        };
        let start = Instant::now();
        let mut now = start;
        let mut pipeline: AppendPipeline<u64> =
            AppendPipeline::new(settings, stores(replicas), 0, start);
        // What each replica was sent (sequences) and acknowledged so far.
        let mut sent: Vec<Vec<u64>> = vec![Vec::new(); replicas];
        let mut acked = vec![0u64; replicas];
        let mut ended_jobs: Vec<Option<&str>> = Vec::new();
        let mut next_complete_offset = 0u64;
        let mut failed_end = false;
        let mut preparing = false;
        for _ in 0..300 {
            match random.random_range(0..10) {
                0..=3 if pipeline.accepts_appends() => {
                    let job = ended_jobs.len() as u64;
                    ended_jobs.push(None);
                    let count = random.random_range(1..4);
                    let (sequence, to) = pipeline.append(job, count, 30, now);
                    assert_eq!(sequence, job + 1);
                    for replica in to {
                        if random.random_range(0..30) == 0 {
                            pipeline.send_failed(replica, now);
                        } else {
                            sent[replica].push(sequence);
                        }
                    }
                }
                4..=7 => {
                    let replica = random.random_range(0..replicas);
                    let received = sent[replica]
                        .iter()
                        .filter(|s| **s > acked[replica])
                        .count();
                    if received > 0 {
                        let upto = sent[replica]
                            .iter()
                            .copied()
                            .filter(|s| *s > acked[replica])
                            .nth(random.random_range(0..received))
                            .unwrap_or(0);
                        acked[replica] = upto;
                        pipeline.acknowledged(replica, upto, now);
                    }
                }
                8 if random.random_range(0..8) == 0 => {
                    let replica = random.random_range(0..replicas);
                    pipeline.replica_failed(replica, BrokerError::Unavailable("x".into()), now);
                }
                _ => {
                    now += Duration::from_millis(random.random_range(0..60));
                    pipeline.tick(now, replicas);
                    if preparing && random.random_bool(0.5) {
                        preparing = false;
                        pipeline.next_segment_prepared(random.random_bool(0.8), Vec::new(), now);
                    }
                }
            }
            while let Some(effect) = pipeline.next_effect() {
                match effect {
                    Effect::Complete(entry) => {
                        assert!(!failed_end, "seed {seed}: completion after failure");
                        assert_eq!(entry.base_offset, next_complete_offset, "seed {seed}");
                        next_complete_offset = entry.end_offset;
                        let acknowledgements =
                            acked.iter().filter(|upto| **upto >= entry.sequence).count();
                        assert!(
                            acknowledgements >= quorum,
                            "seed {seed}: completed without quorum"
                        );
                        let slot = &mut ended_jobs[entry.job as usize];
                        assert!(slot.is_none(), "seed {seed}: job ended twice");
                        *slot = Some("completed");
                    }
                    Effect::Fail(job, _) => {
                        let slot = &mut ended_jobs[job as usize];
                        assert!(slot.is_none(), "seed {seed}: job ended twice");
                        *slot = Some("failed");
                    }
                    Effect::PrepareNextSegment { base_offset, .. } => {
                        assert!(!preparing, "seed {seed}: prepared twice");
                        assert_eq!(base_offset, pipeline.next_offset());
                        preparing = true;
                    }
                    Effect::ReplicaDropped { .. } => {}
                }
            }
            match pipeline.take_end() {
                Some(End::Failed { .. }) => failed_end = true,
                Some(End::Roll { next_offset, .. }) => {
                    assert_eq!(
                        next_offset, next_complete_offset,
                        "seed {seed}: rolled with appends in flight"
                    );
                    assert_eq!(pipeline.in_flight(), 0);
                    break;
                }
                None => {}
            }
            if failed_end {
                break;
            }
        }
        pipeline.stop(BrokerError::Unavailable("stopped".into()));
        while let Some(effect) = pipeline.next_effect() {
            if let Effect::Fail(job, _) = effect {
                assert!(
                    ended_jobs[job as usize].is_none(),
                    "seed {seed}: job ended twice"
                );
                ended_jobs[job as usize] = Some("failed");
            }
        }
        assert!(
            ended_jobs.iter().all(Option::is_some),
            "seed {seed}: a job never ended"
        );
    }
}

/// The codes of the failures among the effects.
fn failure_codes(pipeline: &mut AppendPipeline<&'static str>) -> Vec<sluice_proto::ErrorCode> {
    let mut codes = Vec::new();
    while let Some(effect) = pipeline.next_effect() {
        if let Effect::Fail(_, error) = effect {
            codes.push(error.code());
        }
    }
    codes
}

/// An append that was sent but not made durable by a quorum may still
/// become part of the log through recovery: its producer must hear
/// "outcome unknown", never a plain failure, whatever ended the pipeline.
#[test]
fn appends_failed_in_flight_answer_outcome_unknown() {
    use sluice_proto::ErrorCode::OutcomeUnknown;
    let now = Instant::now();
    let mut failed = pipeline(settings(), 3, now);
    failed.append("a", 1, 1, now);
    failed.acknowledged(0, 1, now);
    failed.replica_failed(1, BrokerError::Unavailable("x".into()), now);
    failed.replica_failed(2, BrokerError::Unavailable("y".into()), now);
    assert_eq!(failure_codes(&mut failed), vec![OutcomeUnknown]);

    let mut stopped = pipeline(settings(), 3, now);
    stopped.append("a", 1, 1, now);
    stopped.append("b", 1, 1, now);
    stopped.stop(BrokerError::NotOwner {
        topic: "t".into(),
        partition: 0,
    });
    assert_eq!(
        failure_codes(&mut stopped),
        vec![OutcomeUnknown, OutcomeUnknown]
    );

    let mut ended = pipeline(settings(), 3, now);
    ended.append("a", 1, 1, now);
    ended.streams_ended(BrokerError::Unavailable("closed".into()));
    assert_eq!(failure_codes(&mut ended), vec![OutcomeUnknown]);
}

#[test]
fn an_altered_segment_size_rolls_a_segment_already_past_it() {
    let now = Instant::now();
    let mut pipeline = pipeline(settings(), 3, now);
    pipeline.append("a", 1, 50, now);
    pipeline.set_roll_limits(100, None, now);
    assert!(drain(&mut pipeline).prepare.is_empty(), "50 bytes < 100");
    pipeline.set_roll_limits(40, None, now);
    assert_eq!(drain(&mut pipeline).prepare, vec![(101, Vec::new())]);
    assert!(!pipeline.accepts_appends(), "rolling");
}

#[test]
fn an_altered_segment_age_counts_from_the_segment_opening() {
    let start = Instant::now();
    let mut pipeline = pipeline(settings(), 3, start);
    pipeline.append("a", 1, 1, start);
    for replica in 0..3 {
        pipeline.acknowledged(replica, 1, start);
    }
    drain(&mut pipeline);
    assert_eq!(pipeline.next_deadline(), None, "no age limit yet");
    pipeline.set_roll_limits(0, Some(10 * MS), start + 5 * MS);
    assert_eq!(pipeline.next_deadline(), Some(start + 10 * MS));
    pipeline.tick(start + 10 * MS, 3);
    assert_eq!(drain(&mut pipeline).prepare, vec![(101, Vec::new())]);
    // Lifting the limit again on a new pipeline leaves it without a roll.
    let mut unlimited = pipeline_with_age(10 * MS, start);
    unlimited.append("b", 1, 1, start);
    unlimited.set_roll_limits(0, None, start);
    unlimited.tick(start + 20 * MS, 3);
    assert!(drain(&mut unlimited).prepare.is_empty());
}
