use super::*;
use crate::batch::{
    assign, decode, validate, validate_produced, Attributes, BatchIter, CONTROL_BIT,
    CRC_COVERS_FROM, TRANSACTIONAL_BIT,
};
use rand::{Rng, SeedableRng};

fn marker(commit: bool, first_offset: Option<u64>) -> Marker {
    Marker {
        producer_id: 42 << 32 | 7,
        txn_epoch: 3,
        commit,
        coordinator_epoch: 11,
        first_offset,
    }
}

/// Rewrites the CRC after a deliberate edit, so only the semantic checks
/// can refuse the batch.
fn reseal(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_COVERS_FROM..]);
    batch[super::super::CRC_AT..super::super::CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn markers_round_trip_through_validate_and_parse() {
    for commit in [false, true] {
        for first_offset in [None, Some(0), Some(1_000), Some(crate::limits::MAX_OFFSET)] {
            let wanted = marker(commit, first_offset);
            let batch = build_marker(&wanted, 1_700_000_000_000).expect("encodable");
            let header = validate(&batch, 1 << 20).expect("a marker is a valid batch");
            assert!(header.control && !header.transactional);
            assert_eq!(header.record_count, 1);
            assert_eq!(header.producer_epoch, wanted.txn_epoch + 1);
            assert_eq!(header.base_sequence, -1);
            assert_eq!(
                parse(&batch, &header).expect("parses"),
                ControlRecord::Marker(wanted)
            );
            let (_, records) = decode(&batch, 1 << 20).expect("decodes");
            assert!(records.is_empty(), "a control batch holds no records");
        }
    }
}

#[test]
fn markers_need_an_encodable_pid_and_epoch() {
    let mut bad = marker(true, None);
    bad.producer_id = -1;
    assert_eq!(build_marker(&bad, 0), None);
    for txn_epoch in [-1, i16::MIN, i16::MAX] {
        let mut bad = marker(true, None);
        bad.txn_epoch = txn_epoch;
        assert_eq!(build_marker(&bad, 0), None, "txn_epoch {txn_epoch}");
    }
    let mut edge = marker(false, Some(5));
    edge.txn_epoch = i16::MAX - 1;
    let batch = build_marker(&edge, 0).expect("the last epoch with a successor");
    let header = validate(&batch, 1 << 20).expect("valid");
    assert_eq!(header.producer_epoch, i16::MAX);
}

#[test]
fn gaps_occupy_their_offsets_and_hold_one_record() {
    for offsets in [1, 2, 1_000, crate::limits::MAX_RECORDS_PER_BATCH] {
        let mut batch = build_gap(offsets, 1_234).expect("in range").to_vec();
        assign(&mut batch, 100, 1);
        let header = validate(&batch, 1 << 20).expect("valid");
        assert_eq!(header.end_offset(), 100 + u64::from(offsets));
        assert_eq!(header.max_timestamp_ms, 1_234);
        assert_eq!(
            parse(&batch, &header).expect("parses"),
            ControlRecord::Gap { offsets }
        );
        let split: Vec<_> = BatchIter::new(&batch).collect();
        assert_eq!(split.len(), 1);
    }
    assert_eq!(build_gap(0, 0), None);
    assert_eq!(build_gap(crate::limits::MAX_RECORDS_PER_BATCH + 1, 0), None);
}

#[test]
fn a_producer_cannot_send_a_control_batch() {
    let batches = [
        build_marker(&marker(true, Some(3)), 1_700_000_000_000).expect("marker"),
        build_marker(&marker(false, None), 1_700_000_000_000).expect("marker"),
        build_gap(10, 1_700_000_000_000).expect("gap"),
    ];
    for batch in batches {
        assert_eq!(
            validate_produced(&batch, 1 << 20),
            Err(BatchError::ControlFromProducer)
        );
    }
}

#[test]
fn attribute_rules() {
    let ok = |bits: u16| Attributes::parse(bits).is_ok();
    assert!(ok(0));
    assert!(ok(TRANSACTIONAL_BIT));
    assert!(ok(TRANSACTIONAL_BIT | 1));
    assert!(ok(TRANSACTIONAL_BIT | 2));
    assert!(ok(CONTROL_BIT));
    assert!(
        !ok(CONTROL_BIT | TRANSACTIONAL_BIT),
        "control is never transactional"
    );
    assert!(!ok(CONTROL_BIT | 1), "control is never compressed");
    assert!(!ok(CONTROL_BIT | 2));
    assert!(!ok(3), "compression 3 is unknown");
    for bit in 5..16 {
        assert!(!ok(1 << bit), "reserved bit {bit} is refused");
        assert!(!ok(1 << bit | TRANSACTIONAL_BIT));
    }
    for bits in 0..=u16::MAX {
        if let Ok(attributes) = Attributes::parse(bits) {
            assert_eq!(attributes.bits(), bits, "parse and bits agree");
        }
    }
}

#[test]
fn transactional_batches_need_a_producer() {
    let build = |producer_id: i64, epoch: i16| {
        let mut builder = BatchBuilder::new(Compression::None)
            .with_producer(producer_id, epoch, 0)
            .transactional();
        builder.push(&RecordData {
            value: Some(Bytes::from_static(b"v")),
            timestamp_ms: Some(1_700_000_000_000),
            ..RecordData::default()
        });
        builder.build()
    };
    let header = validate_produced(&build(9, 0), 1 << 20).expect("valid");
    assert!(header.transactional && !header.control);
    for (producer_id, epoch) in [(-1, 0), (9, -1), (-1, -1)] {
        assert!(
            matches!(
                validate(&build(producer_id, epoch), 1 << 20),
                Err(BatchError::BadControl(_))
            ),
            "pid {producer_id} epoch {epoch}"
        );
    }
}

/// Sets attribute bits on a built batch and reseals it.
fn with_bits(batch: &Bytes, bits: u16) -> Vec<u8> {
    let mut bytes = batch.to_vec();
    bytes[super::super::ATTRIBUTES_AT..super::super::ATTRIBUTES_AT + 2]
        .copy_from_slice(&bits.to_le_bytes());
    reseal(&mut bytes);
    bytes
}

#[test]
fn an_ordinary_batch_with_the_control_bit_forced_is_refused() {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(&RecordData {
        key: Some(Bytes::from_static(&[1, 0, 1, 0])),
        value: Some(Bytes::from_static(b"not a marker")),
        timestamp_ms: Some(1_700_000_000_000),
        ..RecordData::default()
    });
    let forged = with_bits(&builder.build(), CONTROL_BIT);
    assert!(matches!(
        validate(&forged, 1 << 20),
        Err(BatchError::BadControl(_))
    ));
    // Two records under the control bit: a control batch holds one.
    let mut builder = BatchBuilder::new(Compression::None);
    for _ in 0..2 {
        builder.push(&RecordData::default());
    }
    let forged = with_bits(&builder.build(), CONTROL_BIT);
    assert!(validate(&forged, 1 << 20).is_err());
}

#[test]
fn resealed_edits_of_a_marker_are_refused_or_parse_to_what_they_say() {
    let original = build_marker(&marker(true, Some(77)), 1_700_000_000_000).expect("marker");
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    for _ in 0..5_000 {
        let mut bytes = original.to_vec();
        let at = rng.random_range(CRC_COVERS_FROM..bytes.len());
        bytes[at] ^= 1 << rng.random_range(0..8);
        reseal(&mut bytes);
        let Ok(header) = validate(&bytes, 1 << 20) else {
            continue;
        };
        // Whatever still validates must be a coherent control batch or a
        // plain batch; a marker's meaning comes only from its own fields.
        if header.control {
            match parse(&bytes, &header).expect("validate parsed it") {
                ControlRecord::Marker(parsed) => {
                    assert_eq!(
                        i32::from(parsed.txn_epoch) + 1,
                        i32::from(header.producer_epoch)
                    );
                    assert_eq!(header.record_count, 1);
                    assert_eq!(parsed.producer_id, header.producer_id);
                }
                ControlRecord::Gap { offsets } => assert_eq!(offsets, header.record_count),
            }
        }
    }
}

#[test]
fn a_flipped_bit_without_a_reseal_is_a_crc_error() {
    let original = build_marker(&marker(false, Some(1)), 1_700_000_000_000).expect("marker");
    for at in CRC_COVERS_FROM..original.len() {
        for bit in 0..8 {
            let mut bytes = original.to_vec();
            bytes[at] ^= 1 << bit;
            assert!(validate(&bytes, 1 << 20).is_err(), "byte {at} bit {bit}");
        }
    }
}

#[test]
fn random_bytes_behind_the_control_bit_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(61);
    let template = build_gap(3, 0).expect("gap");
    for _ in 0..5_000 {
        let mut bytes = template[..HEADER_BYTES].to_vec();
        let tail: usize = rng.random_range(0..40);
        bytes.extend((0..tail).map(|_| rng.random::<u8>()));
        let length = bytes.len() as u32;
        bytes[8..12].copy_from_slice(&length.to_le_bytes());
        reseal(&mut bytes);
        if let Ok(header) = crate::batch::BatchHeader::parse(&bytes) {
            let _ = parse(&bytes, &header);
        }
        let _ = validate(&bytes, 1 << 20);
    }
}
