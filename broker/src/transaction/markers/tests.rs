use super::*;
use crate::transaction::state::{EndReason, TxnState};
use sluice_proto::v1::PartitionRoute;

fn participant(topic: &str, partition: u32) -> Participant {
    Participant {
        topic: topic.into(),
        partition,
        subscription: String::new(),
    }
}

fn route(topic: &str, owners: &[(u32, &str)]) -> TopicRoute {
    TopicRoute {
        topic: topic.into(),
        partitions: owners
            .iter()
            .map(|(partition, broker)| PartitionRoute {
                partition: *partition,
                broker_id: broker.to_string(),
                broker_address: if broker.is_empty() {
                    String::new()
                } else {
                    format!("{broker}:1")
                },
                epoch: 1,
            })
            .collect(),
        error: ErrorCode::None as i32,
    }
}

#[test]
fn participants_go_to_their_owner_this_broker_locally_and_gone_ones_are_done() {
    let pending: BTreeSet<_> = [
        participant("a", 0),
        participant("a", 1),
        participant("a", 2),
        participant("a", 9),
        participant("b", 0),
        participant("deleted", 0),
        participant("unrouted", 0),
    ]
    .into_iter()
    .collect();
    let mut deleted = route("deleted", &[]);
    deleted.error = ErrorCode::UnknownTopic as i32;
    let routes = vec![
        route("a", &[(0, "me"), (1, "other"), (2, "")]),
        route("b", &[(0, "other")]),
        deleted,
    ];
    let routing = pending_by_owner(&pending, &routes, "me");
    assert_eq!(routing.by_owner[""], vec![participant("a", 0)]);
    assert_eq!(
        routing.by_owner["other:1"],
        vec![participant("a", 1), participant("b", 0)]
    );
    assert_eq!(
        routing.gone,
        vec![participant("a", 9), participant("deleted", 0)]
    );
    assert_eq!(
        routing.ownerless,
        vec![participant("a", 2), participant("unrouted", 0)]
    );
}

#[test]
fn requests_carry_the_ended_epoch_and_at_most_the_limit_each() {
    let meta = TxnMeta {
        producer_id: 5,
        epoch: 4,
        previous_producer_id: -1,
        previous_epoch: 3,
        state: TxnState::Prepare { commit: true },
        txn_epoch: 3,
        reason: EndReason::Client,
        participants: BTreeSet::new(),
        timeout_ms: 1,
        started_at_ms: 0,
        updated_at_ms: 0,
        principal: String::new(),
    };
    let many: Vec<_> = (0..MAX_MARKERS_PER_REQUEST as u32 + 1)
        .map(|partition| participant("t", partition))
        .collect();
    let id = TransactionalId::new("x").unwrap();
    let requests = requests(&id, &meta, &many);
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].participants[0].partitions.len(),
        MAX_MARKERS_PER_REQUEST
    );
    assert_eq!(
        (
            requests[1].producer_id,
            requests[1].txn_epoch,
            requests[1].commit
        ),
        (5, 3, true)
    );
}
