use super::*;
use rand::{Rng, SeedableRng};

/// An uncompressed batch whose records (empty key and value) carry
/// exactly the given (timestamp delta, offset delta) pairs, with the
/// header's first and max timestamps as given.
fn crafted(first_timestamp_ms: i64, max_timestamp_ms: i64, records: &[(i64, u64)]) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for &(timestamp_delta, offset_delta) in records {
        let mut body = BytesMut::new();
        put_zigzag(&mut body, timestamp_delta);
        put_varint(&mut body, offset_delta);
        put_zigzag(&mut body, -1);
        put_zigzag(&mut body, -1);
        put_varint(&mut body, 0);
        put_varint(&mut body, 0);
        put_varint(&mut builder.buffer, body.len() as u64);
        builder.buffer.put_slice(&body);
        builder.record_count += 1;
    }
    builder.first_timestamp_ms = first_timestamp_ms;
    builder.max_timestamp_ms = max_timestamp_ms;
    builder.build()
}

#[test]
fn produced_batches_need_ordered_offset_deltas_and_sane_timestamps() {
    let max = MAX_TIMESTAMP_MS;
    let ordered = [(0, 0), (1, 1), (2, 2)];
    /// (first timestamp, max timestamp, (timestamp delta, offset delta)
    /// of each record, accepted)
    type Case = (i64, i64, Vec<(i64, u64)>, bool);
    let cases: Vec<Case> = vec![
        (1_000, 1_002, ordered.to_vec(), true),
        (0, 0, vec![(0, 0)], true),
        (max, max, vec![(0, 0)], true),
        (1_000, 1_000, vec![(0, 0), (-1, 1)], true),
        (1_000, 1_002, vec![(0, 0), (2, 2), (1, 1)], false),
        (1_000, 1_002, vec![(0, 1), (1, 2), (2, 3)], false),
        (1_000, 1_000, vec![(0, 0), (0, 0)], false),
        (1_000, 1_000, vec![(0, 0), (0, u64::MAX)], false),
        (i64::MIN, i64::MIN, vec![(0, 0)], false),
        (i64::MAX, i64::MAX, vec![(0, 0)], false),
        (-1, -1, vec![(0, 0)], false),
        (max, max, vec![(0, 0), (1, 1)], false),
        (1_000, 1_000, vec![(0, 0), (i64::MAX, 1)], false),
        (1_000, 1_000, vec![(0, 0), (i64::MIN, 1)], false),
        (1_000, 5_000, ordered.to_vec(), false),
        (1_000, 999, vec![(-1, 0)], false),
    ];
    for (first, max_timestamp, records, accepted) in cases {
        let batch = crafted(first, max_timestamp, &records);
        validate(&batch, 1 << 20).expect("framing and CRC are valid");
        let result = validate_produced(&batch, 1 << 20);
        assert_eq!(
            result.is_ok(),
            accepted,
            "first {first}, max {max_timestamp}, records {records:?}: {result:?}"
        );
    }
}

#[test]
fn a_builder_batch_with_an_extreme_timestamp_is_refused() {
    for timestamp_ms in [i64::MIN, -1, MAX_TIMESTAMP_MS + 1, i64::MAX] {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(&RecordData {
            timestamp_ms: Some(timestamp_ms),
            ..RecordData::default()
        });
        let refused = validate_produced(&builder.build(), 1 << 20);
        assert!(
            matches!(refused, Err(BatchError::BadTimestamp { .. })),
            "{timestamp_ms}: {refused:?}"
        );
    }
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        validate_produced(&sample(100, compression), 1 << 20).expect("SDK batches pass");
    }
}

fn sample(count: usize, compression: Compression) -> Bytes {
    let mut builder = BatchBuilder::new(compression);
    for index in 0..count {
        builder.push(&RecordData {
            key: if index % 3 == 0 {
                None
            } else {
                Some(Bytes::from(format!("key-{index}")))
            },
            value: Some(Bytes::from(vec![index as u8; index % 50])),
            headers: vec![("h".to_string(), Bytes::from_static(b"v"))],
            tags: if index % 2 == 0 {
                vec!["tagA".into()]
            } else {
                vec![]
            },
            timestamp_ms: Some(1_700_000_000_000 + index as i64),
        });
    }
    builder.build()
}

#[test]
fn a_base_offset_beyond_the_offset_range_is_refused_so_ends_never_overflow() {
    let mut bytes = BatchBuilder::new(Compression::None);
    bytes.push(&RecordData {
        value: Some(Bytes::from_static(b"v")),
        ..RecordData::default()
    });
    let mut batch = bytes.build().to_vec();
    assign(&mut batch, MAX_OFFSET, 1);
    let header = BatchHeader::parse(&batch).expect("the largest offset is valid");
    assert_eq!(header.end_offset(), MAX_OFFSET + 1);
    for beyond in [MAX_OFFSET + 1, u64::MAX] {
        assign(&mut batch, beyond, 1);
        assert!(matches!(
            BatchHeader::parse(&batch),
            Err(BatchError::BadBaseOffset(offset)) if offset == beyond
        ));
    }
}

#[test]
fn selected_decoding_builds_only_the_wanted_records() {
    for compression in [Compression::None, Compression::Lz4] {
        let mut batch = BytesMut::from(&sample(100, compression)[..]);
        assign(&mut batch, 500, 1);
        let batch = batch.freeze();
        let (_, all) = decode(&batch, 1 << 20).expect("decodes");
        let (_, some) =
            decode_selected(&batch, 1 << 20, |offset| offset % 10 == 3).expect("decodes selected");
        assert_eq!(some.len(), 10);
        let expected: Vec<&Record> = all.iter().filter(|r| r.offset % 10 == 3).collect();
        assert_eq!(some.iter().collect::<Vec<_>>(), expected);
        // The CRC still covers the skipped records.
        let mut damaged = BytesMut::from(&batch[..]);
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        assert!(decode_selected(&damaged.freeze(), 1 << 20, |_| false).is_err());
    }
}

#[test]
fn round_trip_every_compression() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let mut batch = BytesMut::from(&sample(100, compression)[..]);
        assign(&mut batch, 1000, 7);
        let batch = batch.freeze();
        let (header, records) = decode(&batch, 1 << 20).expect("decodes");
        assert_eq!(header.compression, compression);
        assert_eq!(header.base_offset, 1000);
        assert_eq!(header.writer_epoch, 7);
        assert_eq!(header.record_count, 100);
        assert_eq!(header.max_timestamp_ms, 1_700_000_000_099);
        assert_eq!(records.len(), 100);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.offset, 1000 + index as u64);
            assert_eq!(record.timestamp_ms, 1_700_000_000_000 + index as i64);
            assert_eq!(
                record.value.as_deref(),
                Some(&vec![index as u8; index % 50][..])
            );
            assert_eq!(record.key.is_none(), index % 3 == 0);
            assert_eq!(
                record.headers,
                vec![("h".to_string(), Bytes::from_static(b"v"))]
            );
            assert_eq!(record.tags.len(), usize::from(index % 2 == 0));
        }
    }
}

#[test]
fn size_estimate_matches_encoding() {
    let record = RecordData {
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from(vec![0u8; 1024])),
        ..Default::default()
    };
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(&RecordData {
        timestamp_ms: Some(5),
        ..record.clone()
    });
    assert_eq!(
        builder.size_bytes(),
        HEADER_BYTES + BatchBuilder::record_size(&record)
    );
}

#[test]
fn every_flipped_bit_is_caught() {
    let batch = sample(5, Compression::None);
    for byte in CRC_COVERS_FROM..batch.len() {
        for bit in 0..8 {
            let mut corrupt = batch.to_vec();
            corrupt[byte] ^= 1 << bit;
            assert!(
                validate(&corrupt, 1 << 20).is_err(),
                "flip at {byte}:{bit} passed"
            );
        }
    }
}

#[test]
fn truncation_and_length_lies_are_errors() {
    let batch = sample(5, Compression::Lz4);
    for length in 0..batch.len() {
        assert!(validate(&batch[..length], 1 << 20).is_err());
    }
    let mut lying = batch.to_vec();
    lying[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        validate(&lying, 1 << 20),
        Err(BatchError::BadLength { .. })
    ));
    assert!(matches!(
        validate(&batch, 10),
        Err(BatchError::TooLarge { .. })
    ));
}

#[test]
fn random_bytes_never_panic() {
    let mut random = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..20_000 {
        let length = random.random_range(0..300);
        let mut bytes: Vec<u8> = (0..length).map(|_| random.random()).collect();
        if bytes.len() >= HEADER_BYTES && random.random_bool(0.5) {
            // Make the header plausible so the record parser runs too.
            bytes[MAGIC_AT] = MAGIC;
            bytes[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4]
                .copy_from_slice(&(length as u32).to_le_bytes());
            bytes[ATTRIBUTES_AT] = random.random_range(0..3);
            bytes[ATTRIBUTES_AT + 1] = 0;
            let crc = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
            bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        }
        let _ = decode(&Bytes::from(bytes), 1 << 20);
    }
}

#[test]
fn compression_bomb_is_refused() {
    let mut bomb = BatchBuilder::new(Compression::None);
    bomb.push(&RecordData {
        value: Some(Bytes::from_static(b"x")),
        ..Default::default()
    });
    let plain = bomb.build();
    // Claim an lz4 block that decompresses to 1 GiB.
    let mut forged = plain[..HEADER_BYTES].to_vec();
    forged[ATTRIBUTES_AT] = 1;
    forged.extend_from_slice(&(1u32 << 30).to_le_bytes());
    forged.extend_from_slice(&[0u8; 16]);
    let length = forged.len() as u32;
    forged[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&length.to_le_bytes());
    let crc = crc32c::crc32c(&forged[CRC_COVERS_FROM..]);
    forged[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        decode(&Bytes::from(forged), 1 << 20).unwrap_err(),
        BatchError::DecompressionBomb {
            limit_bytes: MAX_UNCOMPRESSED_RECORDS_BYTES
        }
    );
}

#[test]
fn iterator_splits_concatenated_batches() {
    let first = sample(3, Compression::None);
    let second = sample(4, Compression::Zstd);
    let mut joined = first.to_vec();
    joined.extend_from_slice(&second);
    let parts: Vec<_> = BatchIter::new(&joined)
        .collect::<Result<_, _>>()
        .expect("splits");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].0, first.len());
    assert_eq!(parts[1].1.record_count, 4);
    let truncated: Vec<_> = BatchIter::new(&joined[..joined.len() - 1]).collect();
    assert!(truncated[1].is_err());
}

#[test]
fn compacted_topics_refuse_keyless_records_in_every_compression() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let keyed = |keys: &[Option<&'static str>], value: Option<&'static str>| {
            let mut builder = BatchBuilder::new(compression);
            for key in keys {
                builder.push(&RecordData {
                    key: key.map(|key| Bytes::from_static(key.as_bytes())),
                    value: value.map(|value| Bytes::from_static(value.as_bytes())),
                    timestamp_ms: Some(1_000),
                    ..RecordData::default()
                });
            }
            builder.build()
        };
        let check = |batch: &Bytes, keys_required: bool| {
            validate_produced_keyed(batch, 1 << 20, keys_required).and_then(|header| {
                validate_compressed_keyed(batch, &header, 1 << 20, keys_required)
            })
        };
        // A tombstone (null value) and an empty key are keyed records.
        let all_keyed = keyed(&[Some("a"), Some("")], None);
        check(&all_keyed, true).expect("keyed records and tombstones pass");
        // The last record alone without a key is enough to refuse.
        let last_keyless = keyed(&[Some("a"), Some("b"), None], Some("v"));
        assert_eq!(
            check(&last_keyless, true),
            Err(BatchError::KeylessRecord { index: 2 }),
            "{compression:?}"
        );
        check(&last_keyless, false).expect("other topics take keyless records");
        let one_keyless = keyed(&[None], Some("v"));
        assert!(matches!(
            check(&one_keyless, true),
            Err(BatchError::KeylessRecord { index: 0 })
        ));
    }
}
