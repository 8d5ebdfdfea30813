//! Coordinator membership, commits and cursor fencing, decided on the
//! state directly (no partitions or network).

use super::lag::partition_lag;
use super::*;
use crate::config::GroupsConfig;

fn user(name: &str) -> Principal {
    Principal::user(name).expect("valid")
}

pub(super) fn coordinator() -> Coordinator {
    Coordinator::new(&GroupsConfig {
        min_session_timeout_ms: 1,
        ..GroupsConfig::default()
    })
}

fn counts() -> BTreeMap<String, u32> {
    [("t".to_string(), 4)].into_iter().collect()
}

fn beat(
    coordinator: &Coordinator,
    state: &mut State,
    member_id: &str,
    member_epoch: i64,
    owned: &BTreeSet<TopicPartition>,
) -> Result<GroupHeartbeatResponse, BrokerError> {
    coordinator.apply_heartbeat(
        state,
        &GroupHeartbeatRequest {
            group: "g".into(),
            member_id: member_id.into(),
            member_epoch,
            topics: vec!["t".into()],
            owned: group_topic_partitions(owned),
            session_timeout_ms: 0,
            client_id: "c".into(),
        },
        &counts(),
        &user("alice"),
    )
}

/// A first member of group "g" joins.
pub(super) fn join(coordinator: &Coordinator, state: &mut State) {
    beat(coordinator, state, "", 0, &BTreeSet::new()).expect("join");
}

fn assigned(response: &GroupHeartbeatResponse) -> BTreeSet<TopicPartition> {
    flatten(&response.assignment)
}

#[test]
fn partitions_move_only_after_release() {
    let coordinator = coordinator();
    let mut state = State::default();
    let first = beat(&coordinator, &mut state, "", 0, &BTreeSet::new()).expect("join");
    assert_eq!(first.member_epoch, 1);
    let a = first.member_id.clone();
    let a_owned = assigned(&first);
    assert_eq!(a_owned.len(), 4);
    let a_again = beat(&coordinator, &mut state, &a, 1, &a_owned).expect("heartbeat");
    assert_eq!(a_again.member_epoch, 1, "no change, no new epoch");

    let joined = beat(&coordinator, &mut state, "", 0, &BTreeSet::new()).expect("join b");
    let b = joined.member_id.clone();
    assert!(assigned(&joined).is_empty(), "a still owns everything");

    // a is told to keep only its half, with a new epoch.
    let a_revoked = beat(&coordinator, &mut state, &a, 1, &a_owned).expect("a heartbeat");
    assert_eq!(a_revoked.member_epoch, 2);
    let a_kept = assigned(&a_revoked);
    assert_eq!(a_kept.len(), 2);
    // a has not released yet: b still gets nothing.
    let b_waiting = beat(
        &coordinator,
        &mut state,
        &b,
        joined.member_epoch,
        &BTreeSet::new(),
    )
    .expect("b heartbeat");
    assert!(assigned(&b_waiting).is_empty());
    // a released; now b gets the other half, disjoint from a's.
    beat(&coordinator, &mut state, &a, 2, &a_kept).expect("a released");
    let b_granted = beat(
        &coordinator,
        &mut state,
        &b,
        b_waiting.member_epoch,
        &BTreeSet::new(),
    )
    .expect("b heartbeat");
    let b_owned = assigned(&b_granted);
    assert_eq!(b_owned.len(), 2);
    assert!(b_owned.is_disjoint(&a_kept));
    assert!(b_granted.member_epoch > b_waiting.member_epoch);

    // a leaves: b gets everything once it heartbeats.
    let left = beat(&coordinator, &mut state, &a, -1, &BTreeSet::new()).expect("leave");
    assert_eq!(left.member_epoch, -1);
    let b_all = beat(
        &coordinator,
        &mut state,
        &b,
        b_granted.member_epoch,
        &b_owned,
    )
    .expect("b heartbeat");
    assert_eq!(assigned(&b_all).len(), 4);
}

#[test]
fn stale_and_unknown_members_are_refused() {
    let coordinator = coordinator();
    let mut state = State::default();
    let joined = beat(&coordinator, &mut state, "", 0, &BTreeSet::new()).expect("join");
    let stale = beat(
        &coordinator,
        &mut state,
        &joined.member_id,
        5,
        &BTreeSet::new(),
    );
    assert!(matches!(stale, Err(BrokerError::StaleMemberEpoch { .. })));
    let unknown = beat(&coordinator, &mut state, "ghost", 3, &BTreeSet::new());
    assert!(matches!(unknown, Err(BrokerError::UnknownMember { .. })));
    // Rejoining with a known id and epoch 0 is allowed (coordinator moved).
    let rejoined = beat(&coordinator, &mut state, "returning", 0, &BTreeSet::new())
        .expect("rejoin with an id");
    assert_eq!(rejoined.member_id, "returning");
}

#[test]
fn expired_members_are_evicted_and_their_partitions_reassigned() {
    let coordinator = coordinator();
    let mut state = State::default();
    let join = |state: &mut State, member_id: &str, epoch: i64, timeout: u32| {
        coordinator.apply_heartbeat(
            state,
            &GroupHeartbeatRequest {
                group: "g".into(),
                member_id: member_id.into(),
                member_epoch: epoch,
                topics: vec!["t".into()],
                owned: vec![],
                session_timeout_ms: timeout,
                client_id: String::new(),
            },
            &counts(),
            &user("alice"),
        )
    };
    let short = join(&mut state, "", 0, 1).expect("join short-lived");
    let long = join(&mut state, "", 0, 60_000).expect("join long-lived");
    assert!(!short.member_id.is_empty() && !long.member_id.is_empty());
    *lock(&coordinator.state) = state;
    std::thread::sleep(Duration::from_millis(20));
    coordinator.evict_expired_members();
    let mut state = std::mem::take(&mut *lock(&coordinator.state));
    let members: Vec<String> = state.groups["g"].members.keys().cloned().collect();
    assert_eq!(members, vec![long.member_id.clone()]);
    let after = beat(
        &coordinator,
        &mut state,
        &long.member_id,
        long.member_epoch,
        &BTreeSet::new(),
    )
    .expect("heartbeat");
    assert_eq!(assigned(&after).len(), 4);
}

#[test]
fn a_cursor_from_an_older_owner_epoch_is_refused() {
    use crate::subscription::{AckedRanges, CursorSnapshot};
    let cursor = |epoch: u64, mark: u64| {
        CursorSnapshot {
            epoch,
            subscription_created_at_ms: 1,
            acked: AckedRanges::new(mark),
            delivery_counts: Default::default(),
            parked_keys: Default::default(),
            pending: Vec::new(),
        }
        .encode()
    };
    let offset = |bytes: Vec<u8>| PartitionOffset {
        topic: "t".into(),
        partition: 0,
        cursor: bytes.into(),
        ..PartitionOffset::default()
    };
    let mut state = State::default();
    assert!(check_cursor_epoch(&state, "__sub.s", &offset(cursor(5, 10))).is_ok());
    apply_commits(
        &mut state,
        "__sub.s",
        &[CommittedOffset {
            topic: "t".into(),
            partition: 0,
            offset: 10,
            metadata: String::new(),
            cursor: encode_base64(&cursor(5, 10)),
        }],
    );
    assert!(check_cursor_epoch(&state, "__sub.s", &offset(cursor(5, 12))).is_ok());
    assert!(check_cursor_epoch(&state, "__sub.s", &offset(cursor(6, 12))).is_ok());
    assert!(matches!(
        check_cursor_epoch(&state, "__sub.s", &offset(cursor(4, 20))),
        Err(BrokerError::CursorFenced(_))
    ));
    assert!(matches!(
        check_cursor_epoch(&state, "__sub.s", &offset(vec![1, 2, 3])),
        Err(BrokerError::InvalidArgument(_))
    ));
}

/// The attack of issue 13: a member id seen in `DescribeGroup`, used by
/// another principal to leave, heartbeat or rejoin as that member.
#[test]
fn another_principal_cannot_act_as_a_member() {
    let coordinator = coordinator();
    let mut state = State::default();
    let joined = beat(&coordinator, &mut state, "", 0, &BTreeSet::new()).expect("join");
    let victim = joined.member_id.clone();
    let (prefix, random) = victim.rsplit_once('-').expect("prefix-random");
    assert_eq!((prefix, random.len()), ("c", 32), "{victim}");
    let as_mallory = |state: &mut State, epoch: i64| {
        coordinator.apply_heartbeat(
            state,
            &GroupHeartbeatRequest {
                group: "g".into(),
                member_id: victim.clone(),
                member_epoch: epoch,
                topics: vec!["t".into()],
                owned: vec![],
                session_timeout_ms: 0,
                client_id: "c".into(),
            },
            &counts(),
            &user("mallory"),
        )
    };
    for epoch in [-1, 0, joined.member_epoch] {
        let refused = as_mallory(&mut state, epoch).expect_err("not mallory's member");
        assert!(
            matches!(refused, BrokerError::UnknownMember { .. }),
            "{refused:?}"
        );
    }
    let member = &state.groups["g"].members[&victim];
    assert_eq!(
        flatten(&joined.assignment),
        member.granted,
        "kept its partitions"
    );
    assert_eq!(member.epoch, joined.member_epoch);
    let again = beat(
        &coordinator,
        &mut state,
        &victim,
        joined.member_epoch,
        &assigned(&joined),
    )
    .expect("the member itself goes on");
    assert_eq!(assigned(&again).len(), 4);
}

#[test]
fn lag_of_a_partition_whose_owner_did_not_answer_is_unknown_not_zero() {
    let partition: TopicPartition = ("t".to_string(), 3);
    let known = partition_lag(&partition, Some(40), Some(&Ok(100)), "m".into());
    assert_eq!(
        (known.lag, known.high_watermark, known.lag_unknown),
        (60, 100, false)
    );
    assert_eq!(known.committed_offset, 40);
    let nothing_committed = partition_lag(&partition, None, Some(&Ok(7)), String::new());
    assert_eq!(
        (nothing_committed.lag, nothing_committed.committed_offset),
        (7, -1)
    );
    let refused = partition_lag(
        &partition,
        Some(40),
        Some(&Err("owner http://b2: unavailable".into())),
        "m".into(),
    );
    assert!(refused.lag_unknown);
    assert_eq!(refused.lag, 0);
    assert!(
        refused.lag_unknown_reason.contains("b2"),
        "{}",
        refused.lag_unknown_reason
    );
    let missing = partition_lag(&partition, Some(40), None, "m".into());
    assert!(missing.lag_unknown && !missing.lag_unknown_reason.is_empty());
}
