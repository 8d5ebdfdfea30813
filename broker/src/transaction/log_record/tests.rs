use super::*;
use rand::{Rng, SeedableRng};
use sluice_proto::batch;

fn meta(state: TxnState) -> TxnMeta {
    TxnMeta {
        producer_id: 42 << 20,
        epoch: 7,
        previous_producer_id: -1,
        previous_epoch: 6,
        state,
        txn_epoch: 6,
        reason: EndReason::Timeout,
        participants: [
            ("orders", 3, ""),
            ("__consumer_offsets", 0, ""),
            ("jobs", 1, "workers"),
        ]
        .into_iter()
        .map(|(topic, partition, subscription)| Participant {
            topic: topic.into(),
            partition,
            subscription: subscription.into(),
        })
        .collect(),
        timeout_ms: 60_000,
        started_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_500,
        principal: "User:copier".into(),
    }
}

fn id() -> TransactionalId {
    TransactionalId::new("copier-7").unwrap()
}

/// The key and value of the single record of an encoded batch.
fn key_value(bytes: &Bytes) -> (Option<Bytes>, Option<Bytes>) {
    let (_, records) = batch::decode(bytes, usize::MAX).unwrap();
    assert_eq!(records.len(), 1);
    (records[0].key.clone(), records[0].value.clone())
}

#[test]
fn every_state_round_trips_through_a_batch() {
    for state in [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::Prepare { commit: true },
        TxnState::Prepare { commit: false },
        TxnState::Complete { commit: true },
        TxnState::Complete { commit: false },
    ] {
        let original = meta(state);
        let (key, value) = key_value(&encode(&id(), Some(&original)));
        let (decoded_id, decoded) = decode(key.as_ref(), value.as_ref()).unwrap();
        assert_eq!(decoded_id, id());
        assert_eq!(decoded, Some(original));
    }
}

#[test]
fn a_tombstone_has_no_value_and_decodes_as_none() {
    let (key, value) = key_value(&encode(&id(), None));
    assert_eq!(value, None);
    assert_eq!(decode(key.as_ref(), None).unwrap(), (id(), None));
}

#[test]
fn bad_keys_are_refused() {
    let value = Bytes::from(to_value(&meta(TxnState::Empty)).encode_to_vec());
    assert_eq!(decode(None, Some(&value)), Err(LogRecordError::MissingKey));
    for key in [
        Bytes::from_static(b""),
        Bytes::from_static(b"\xff\xfe"),
        Bytes::from_static(b"has space"),
        Bytes::from(vec![b'x'; 250]),
    ] {
        assert!(
            matches!(
                decode(Some(&key), Some(&value)),
                Err(LogRecordError::BadKey(_))
            ),
            "{key:?}"
        );
    }
}

type Mutation = Box<dyn Fn(&mut TransactionLogValue)>;

#[test]
fn out_of_range_fields_are_refused_by_name() {
    let good = to_value(&meta(TxnState::Ongoing));
    let cases: Vec<(&str, Mutation)> = vec![
        ("version", Box::new(|value| value.version = 2)),
        ("producer_id", Box::new(|value| value.producer_id = -1)),
        (
            "previous_producer_id",
            Box::new(|value| value.previous_producer_id = -2),
        ),
        (
            "producer_epoch",
            Box::new(|value| value.producer_epoch = -1),
        ),
        (
            "producer_epoch",
            Box::new(|value| value.producer_epoch = i32::from(i16::MAX)),
        ),
        (
            "producer_epoch",
            Box::new(|value| value.producer_epoch = 1 << 20),
        ),
        (
            "previous_epoch",
            Box::new(|value| value.previous_epoch = -2),
        ),
        ("txn_epoch", Box::new(|value| value.txn_epoch = i32::MIN)),
        ("state", Box::new(|value| value.state = 0)),
        ("state", Box::new(|value| value.state = 99)),
        ("reason", Box::new(|value| value.reason = 0)),
        ("timeout_ms", Box::new(|value| value.timeout_ms = 0)),
        (
            "timeout_ms",
            Box::new(|value| value.timeout_ms = MAX_RECORD_TIMEOUT_MS + 1),
        ),
        (
            "principal",
            Box::new(|value| value.principal = "p".repeat(MAX_PRINCIPAL_BYTES + 1)),
        ),
        (
            "participant",
            Box::new(|value| value.participants[0].topic = "bad topic".into()),
        ),
        (
            "participant",
            Box::new(|value| value.participants[0].subscription = "a/b".into()),
        ),
    ];
    for (field, mutate) in cases {
        let mut value = good.clone();
        mutate(&mut value);
        let refused = from_value(&value).unwrap_err();
        let message = refused.to_string();
        let named = message.contains(field) || (field == "version" && message.contains("version"));
        assert!(named, "{field}: {message}");
    }
    let mut many = good;
    many.participants = vec![many.participants[0].clone(); MAX_RECORD_PARTICIPANTS + 1];
    assert!(matches!(
        from_value(&many),
        Err(LogRecordError::OutOfRange {
            field: "participants",
            ..
        })
    ));
}

/// Flipped, truncated and random bytes never panic; whatever decodes is a
/// state within the ranges the state machine keeps.
#[test]
fn corrupt_values_never_panic() {
    let key = Bytes::from_static(b"copier-7");
    let good = to_value(&meta(TxnState::Prepare { commit: true })).encode_to_vec();
    for seed in 0..2_000u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut bytes = good.clone();
        match seed % 3 {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => bytes.truncate(rng.random_range(0..bytes.len())),
            _ => {
                bytes = (0..rng.random_range(0..64))
                    .map(|_| rng.random::<u8>())
                    .collect()
            }
        }
        if let Ok((_, Some(decoded))) = decode(Some(&key), Some(&Bytes::from(bytes))) {
            assert!((0..=MAX_EPOCH).contains(&decoded.epoch), "seed {seed}");
            assert!(decoded.producer_id >= 0, "seed {seed}");
            assert!(decoded.participants.len() <= MAX_RECORD_PARTICIPANTS);
        }
    }
}
