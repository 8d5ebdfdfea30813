use super::*;
use crate::batch::{decode, validate};
use crate::test_util::poison::{
    compress, forged_batch, poison_batches, record_with_offset_delta, records_section,
};
use crate::test_util::BatchSpec;
use bytes::Bytes;
use rand::{Rng, SeedableRng};

const COMPRESSED: [Compression; 2] = [Compression::Lz4, Compression::Zstd];
const MIB: usize = 1024 * 1024;

/// The records check of a section of `record_count` records whose
/// timestamps are all the test batches' 1_700_000_000_000.
fn validate_records(records: &[u8], record_count: u32) -> Result<(), BatchError> {
    let header = BatchHeader {
        base_offset: 0,
        batch_length: 0,
        writer_epoch: 0,
        crc: 0,
        compression: Compression::None,
        transactional: false,
        control: false,
        record_count,
        first_timestamp_ms: 1_700_000_000_000,
        max_timestamp_ms: 1_700_000_000_000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
    check_record_sequence(records, &header, false)
}

/// One record encoded by hand with timestamp delta `delta_ms` (offset
/// delta 0, value "v").
fn record_with_timestamp_delta(delta_ms: i64) -> Vec<u8> {
    let mut zigzag = ((delta_ms << 1) ^ (delta_ms >> 63)) as u64;
    let mut body = Vec::new();
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            body.push(byte);
            break;
        }
        body.push(byte | 0x80);
    }
    body.extend_from_slice(&[0, 1, 2, b'v', 0, 0]);
    let mut record = vec![u8::try_from(body.len()).expect("a short record")];
    record.extend_from_slice(&body);
    record
}

/// What the broker's produce path runs.
fn broker_check(batch: &[u8], limit: usize) -> Result<(), BatchError> {
    let header = validate(batch, 16 * MIB)?;
    validate_compressed(batch, &header, limit)
}

#[test]
fn every_poison_batch_passes_the_crc_and_is_refused_by_the_records_check() {
    for compression in COMPRESSED {
        for (kind, batch) in poison_batches(compression, 2 * MIB) {
            let header = validate(&batch, 16 * MIB)
                .unwrap_or_else(|error| panic!("{compression:?} {kind}: header/CRC: {error}"));
            let error = validate_compressed(&batch, &header, MIB)
                .expect_err(&format!("{compression:?} {kind} passed"));
            assert!(
                error.is_undecodable_records(),
                "{compression:?} {kind}: {error}"
            );
            // Consumers see the same batch as undecodable records too.
            let decoded = decode(&batch, 16 * MIB).expect_err(&format!("{kind} decoded"));
            assert!(decoded.is_undecodable_records(), "{kind}: {decoded}");
        }
    }
}

#[test]
fn a_bomb_beyond_the_default_limit_is_refused_as_a_bomb() {
    for compression in COMPRESSED {
        let raw = vec![0u8; MAX_UNCOMPRESSED_RECORDS_BYTES + 1];
        let batch = forged_batch(compression, 1, &compress(compression, &raw));
        assert!(
            batch.len() < 8 * MIB,
            "{compression:?}: {} bytes",
            batch.len()
        );
        assert_eq!(
            broker_check(&batch, usize::MAX),
            Err(BatchError::DecompressionBomb {
                limit_bytes: MAX_UNCOMPRESSED_RECORDS_BYTES
            }),
            "{compression:?}: a limit above the consumers' is capped at theirs"
        );
    }
}

#[test]
fn the_limit_is_inclusive_and_zero_refuses_every_compressed_batch() {
    for compression in COMPRESSED {
        let batch = BatchSpec {
            values: &["one", "two", "three"],
            compression,
            ..BatchSpec::default()
        }
        .build();
        let size = records_section(&["one", "two", "three"]).len();
        assert_eq!(broker_check(&batch, size), Ok(()), "{compression:?}");
        assert_eq!(broker_check(&batch, usize::MAX), Ok(()), "{compression:?}");
        for limit in [size - 1, 1, 0] {
            assert_eq!(
                broker_check(&batch, limit),
                Err(BatchError::DecompressionBomb { limit_bytes: limit }),
                "{compression:?} limit {limit}"
            );
        }
    }
    // Uncompressed batches are walked by `validate`; the limit is moot.
    let plain = BatchSpec {
        values: &["x"],
        ..BatchSpec::default()
    }
    .build();
    assert_eq!(broker_check(&plain, 0), Ok(()));
}

#[test]
fn sound_compressed_batches_of_every_size_pass() {
    let values: Vec<String> = (0..1000).map(|index| format!("value-{index}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    for compression in COMPRESSED {
        for count in [1, 2, 127, 128, 1000] {
            let batch = BatchSpec {
                values: &values[..count],
                compression,
                producer: Some((i64::MAX, i16::MAX, i32::MAX)),
                ..BatchSpec::default()
            }
            .build();
            assert_eq!(
                broker_check(&batch, MIB),
                Ok(()),
                "{compression:?} x{count}"
            );
        }
    }
}

#[test]
fn an_lz4_block_declaring_more_than_lz4_can_expand_is_refused_before_allocating() {
    // 76 bytes claiming 64 MiB: refused by the ratio, not by decompressing.
    let mut block = (MAX_UNCOMPRESSED_RECORDS_BYTES as u32)
        .to_le_bytes()
        .to_vec();
    block.extend_from_slice(&[0u8; 15]);
    let batch = forged_batch(Compression::Lz4, 1_000_000, &block);
    assert_eq!(batch.len(), 76);
    assert!(matches!(
        broker_check(&batch, usize::MAX),
        Err(BatchError::Decompression(message)) if message.contains("declares")
    ));
}

#[test]
fn an_lz4_size_prefix_that_lies_either_way_is_an_error_not_a_panic() {
    let raw = records_section(&["a", "b", "c"]);
    for declared in [0, 1, raw.len() - 1, raw.len() + 1, raw.len() + 1000] {
        let mut block = compress(Compression::Lz4, &raw);
        block[..4].copy_from_slice(&(declared as u32).to_le_bytes());
        let batch = forged_batch(Compression::Lz4, 3, &block);
        let error = broker_check(&batch, MIB).expect_err(&format!("declared {declared}"));
        assert!(error.is_undecodable_records(), "{declared}: {error}");
    }
}

#[test]
fn offset_deltas_must_be_each_records_index() {
    let mut in_order = record_with_offset_delta(0, b"a");
    in_order.extend(record_with_offset_delta(1, b"b"));
    assert_eq!(validate_records(&in_order, 2), Ok(()));
    for (first, second) in [(0, 0), (1, 0), (0, 2), (0, 127), (1, 2)] {
        let mut records = record_with_offset_delta(first, b"a");
        records.extend(record_with_offset_delta(second, b"b"));
        assert!(
            matches!(
                validate_records(&records, 2),
                Err(BatchError::BadOffsetDelta { index: _, delta: _ })
            ),
            "deltas {first}, {second}"
        );
        // An uncompressed batch like it does not decode either.
        let batch = forged_batch(Compression::None, 2, &records);
        assert!(decode(&Bytes::from(batch.to_vec()), MIB).is_err());
    }
}

#[test]
fn fewer_or_more_records_than_declared_are_refused() {
    let three = records_section(&["a", "b", "c"]);
    assert_eq!(validate_records(&three, 3), Ok(()));
    assert!(matches!(
        validate_records(&three, 4),
        Err(BatchError::RecordCountMismatch {
            declared: 4,
            actual: 3
        })
    ));
    assert!(matches!(
        validate_records(&three, u32::MAX),
        Err(BatchError::RecordCountMismatch { .. })
    ));
    assert!(matches!(
        validate_records(&three, 2),
        Err(BatchError::BadRecord { index: 2, .. })
    ));
    assert!(validate_records(&[], 1).is_err());
}

#[test]
fn random_blocks_never_panic_and_never_pass_with_a_lying_count() {
    let mut random = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..5_000 {
        let compression = COMPRESSED[random.random_range(0..2)];
        let length = random.random_range(0..200);
        let mut block: Vec<u8> = (0..length).map(|_| random.random()).collect();
        if random.random_bool(0.5) && block.len() >= 4 {
            // A plausible prefix so decompression gets going.
            let prefix: u32 = match compression {
                Compression::Lz4 => random.random_range(0..4096),
                _ => 0xFD2F_B528,
            };
            block[..4].copy_from_slice(&prefix.to_le_bytes());
        }
        let count = random.random_range(1..=1_000_000);
        let batch = forged_batch(compression, count, &block);
        let _ = broker_check(&batch, MIB);
        let _ = decode(&batch, MIB);
    }
    // Truncations of a sound compressed batch, with their CRC fixed.
    for compression in COMPRESSED {
        let block = compress(compression, &records_section(&["a", "bb", "ccc"]));
        for cut in 0..block.len() {
            let batch = forged_batch(compression, 3, &block[..cut]);
            assert!(
                broker_check(&batch, MIB).is_err(),
                "{compression:?} cut at {cut}"
            );
        }
    }
}

/// A compressed batch's record timestamps are held to the rules of an
/// uncompressed one: in the accepted range, the largest equal to the
/// header's `max_timestamp`.
#[test]
fn compressed_records_with_bad_timestamps_are_refused() {
    for compression in COMPRESSED {
        let sound = compress(compression, &record_with_timestamp_delta(0));
        assert_eq!(
            broker_check(&forged_batch(compression, 1, &sound), MIB),
            Ok(())
        );
        let later = compress(compression, &record_with_timestamp_delta(5));
        assert!(matches!(
            broker_check(&forged_batch(compression, 1, &later), MIB),
            Err(BatchError::MaxTimestampMismatch { .. })
        ));
        let far = compress(compression, &record_with_timestamp_delta(1 << 50));
        assert!(matches!(
            broker_check(&forged_batch(compression, 1, &far), MIB),
            Err(BatchError::BadTimestamp { .. })
        ));
        let before = compress(compression, &record_with_timestamp_delta(-(1 << 50)));
        assert!(matches!(
            broker_check(&forged_batch(compression, 1, &before), MIB),
            Err(BatchError::BadTimestamp { .. })
        ));
    }
}
