use super::*;

fn offset(
    topic: &str,
    partition: u32,
    offset: u64,
    metadata: &str,
    cursor: &str,
) -> CommittedOffset {
    CommittedOffset {
        topic: topic.into(),
        partition,
        offset,
        metadata: metadata.into(),
        cursor: cursor.into(),
    }
}

/// Every record of a batch, decoded.
fn decode_batch(batch: &Bytes) -> Vec<(String, CommitRecord)> {
    let (_, records) = sluice_proto::batch::decode(batch, usize::MAX).expect("a valid batch");
    records
        .iter()
        .map(|record| decode(record.key.as_ref(), record.value.as_ref()).expect("decodes"))
        .collect()
}

#[test]
fn a_commit_is_one_batch_of_one_version_2_record_per_partition() {
    let offsets = vec![
        offset("orders", 3, 42, "m", ""),
        offset("orders", 0, 0, "", "AQID"),
        offset("audit", u32::MAX, u64::MAX, "", ""),
    ];
    let batch = encode("billing", &offsets).expect("encodes");
    let header = sluice_proto::batch::validate(&batch, usize::MAX).expect("valid");
    assert!(!header.transactional && header.producer_id < 0);
    let decoded = decode_batch(&batch);
    assert_eq!(decoded.len(), 3);
    for ((group, record), expected) in decoded.into_iter().zip(offsets) {
        assert_eq!(group, "billing");
        assert_eq!(record, CommitRecord::Offsets(vec![expected]));
    }
}

#[test]
fn version_2_keys_are_per_group_topic_and_partition() {
    let key = key_v2("g", "t", 7);
    assert_eq!(&key[..], &[2, b'g', 0, b't', 0, 0, 0, 7]);
    assert_ne!(key_v2("g", "t", 7), key_v2("g", "t", 8));
    assert_ne!(key_v2("g", "t", 7), key_v2("g2", "t", 7));
    assert_ne!(key_v2("g", "t", 7), key_v2("g", "t2", 7));
}

#[test]
fn a_transactional_commit_carries_its_producer_and_the_transactional_bit() {
    let offsets = vec![offset("orders", 1, 9, "", "")];
    let batch = encode_transactional("g", &offsets, 77, 3).expect("encodes");
    let header = sluice_proto::batch::validate(&batch, usize::MAX).expect("valid");
    assert!(header.transactional && !header.control);
    assert_eq!((header.producer_id, header.producer_epoch), (77, 3));
    assert_eq!(header.base_sequence, -1);
    assert_eq!(
        decode_batch(&batch),
        vec![("g".to_string(), CommitRecord::Offsets(offsets))]
    );
}

#[test]
fn an_empty_commit_is_refused_not_written() {
    assert!(matches!(encode("g", &[]), Err(CommitRecordError::Empty)));
    assert!(matches!(
        encode_transactional("g", &[], 1, 0),
        Err(CommitRecordError::Empty)
    ));
}

#[test]
fn a_version_2_tombstone_removes_one_partition() {
    let key = key_v2("g", "orders", 5);
    assert_eq!(
        decode(Some(&key), None).expect("decodes"),
        (
            "g".to_string(),
            CommitRecord::Removed {
                topic: "orders".into(),
                partition: 5
            }
        )
    );
}

#[test]
fn version_1_records_are_still_read() {
    let v1 = encode_v1(
        "billing",
        &RecordV1 {
            offsets: vec![
                offset("orders", 3, 42, "m", ""),
                offset("orders", 0, 1, "", "AQID"),
            ],
            deleted: false,
        },
    )
    .expect("encodes");
    let decoded = decode_batch(&v1);
    assert_eq!(decoded.len(), 1);
    assert_eq!(
        decoded[0],
        (
            "billing".to_string(),
            CommitRecord::Offsets(vec![
                offset("orders", 3, 42, "m", ""),
                offset("orders", 0, 1, "", "AQID")
            ])
        )
    );
    // A commit written before `deleted` existed.
    let key = Bytes::from_static(b"g");
    let old = Bytes::from_static(br#"{"offsets":[{"topic":"t","partition":1,"offset":5}]}"#);
    assert_eq!(
        decode(Some(&key), Some(&old)).expect("decodes").1,
        CommitRecord::Offsets(vec![offset("t", 1, 5, "", "")])
    );
}

#[test]
fn a_deletion_round_trips() {
    let batch = encode_deletion("billing").expect("encodes");
    assert_eq!(
        decode_batch(&batch),
        vec![("billing".to_string(), CommitRecord::GroupDeleted)]
    );
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    let value = Bytes::from_static(b"not json");
    let v1_key = Bytes::from_static(b"g");
    assert!(decode(Some(&v1_key), Some(&value)).is_err());
    assert!(decode(None, Some(&value)).is_err());
    assert!(matches!(
        decode(Some(&v1_key), None),
        Err(CommitRecordError::MissingValue)
    ));
    let good_value = Bytes::from_static(br#"{"offset":1}"#);
    let bad_keys: [&[u8]; 8] = [
        &[2],                            // prefix only
        &[2, b'g'],                      // no separator
        &[2, 0, b't', 0, 0, 0, 1],       // empty group
        &[2, b'g', 0, 0, 0, 0, 1],       // empty topic
        &[2, b'g', 0, b't', 0, 1],       // partition cut short
        &[2, 0xff, 0, b't', 0, 0, 0, 1], // group not UTF-8
        &[2, b'g', 0, 0xfe, 0, 0, 0, 1], // topic not UTF-8
        &[0xff, 0xfe],                   // version 1 key not UTF-8
    ];
    for key in bad_keys {
        let key = Bytes::copy_from_slice(key);
        assert!(
            decode(Some(&key), Some(&good_value)).is_err(),
            "key {key:?} must be refused"
        );
    }
    let key = key_v2("g", "t", 1);
    for value in [
        &b"{}"[..],
        b"{\"offset\":-1}",
        b"[]",
        b"",
        b"{\"offset\":\"1\"}",
    ] {
        let value = Bytes::copy_from_slice(value);
        assert!(
            decode(Some(&key), Some(&value)).is_err(),
            "value {value:?} must be refused"
        );
    }
}
