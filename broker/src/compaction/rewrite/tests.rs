use super::*;
use rand::{Rng, SeedableRng};
use sluice_proto::batch::control::Marker;
use sluice_proto::batch::Compression;
use std::collections::HashMap;

/// A record's nullable key and value.
type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// One record of the model log: its offset, key, value (None =
/// tombstone) and whether it is committed.
#[derive(Debug, Clone)]
struct Written {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    committed: bool,
}

/// A log of batches at consecutive offsets, with what it holds.
#[derive(Default)]
struct Log {
    bytes: Vec<u8>,
    next: u64,
    written: Vec<Written>,
    aborted: Aborted,
}

impl Log {
    fn data(
        &mut self,
        records: &[KeyValue<'_>],
        compression: Compression,
        txn: Option<(i64, bool)>,
    ) {
        let mut builder = BatchBuilder::new(compression);
        if let Some((producer_id, _)) = txn {
            builder = builder.with_producer(producer_id, 3, 0).transactional();
        }
        let base = self.next;
        for (index, (key, value)) in records.iter().enumerate() {
            builder.push(&RecordData {
                key: key.map(Bytes::copy_from_slice),
                value: value.map(Bytes::copy_from_slice),
                timestamp_ms: Some(1_000 + (base + index as u64) as i64),
                ..RecordData::default()
            });
            self.written.push(Written {
                offset: base + index as u64,
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                committed: txn.is_none_or(|(_, commit)| commit),
            });
        }
        self.append(builder.build());
        if let Some((producer_id, commit)) = txn {
            let marker = control::build_marker(
                &Marker {
                    producer_id,
                    txn_epoch: 3,
                    commit,
                    coordinator_epoch: 1,
                    first_offset: Some(base),
                },
                5_000,
            )
            .expect("valid marker");
            if !commit {
                self.aborted.0.push(AbortedRange {
                    producer_id,
                    first_offset: base,
                    marker_offset: self.next,
                });
            }
            self.append(marker);
        }
    }

    fn append(&mut self, batch: Bytes) {
        let mut batch = batch.to_vec();
        batch::assign(&mut batch, self.next, 1);
        let header = BatchHeader::parse(&batch).expect("valid");
        self.next = header.end_offset();
        self.bytes.extend_from_slice(&batch);
    }
}

fn rewrite_all(
    log: &Log,
    map: &KeyMap,
    expired: bool,
) -> Result<(Vec<Bytes>, RewriteStats), RewriteError> {
    let mut rewriter = Rewriter::new(map, &log.aborted, 0, log.next, expired, 9);
    let mut output = rewriter.push(&log.bytes)?;
    let (tail, stats) = rewriter.finish()?;
    output.extend(tail);
    Ok((output, stats))
}

fn mapped(log: &Log) -> KeyMap {
    let mut map = KeyMap::new(1 << 20);
    map_chunk(&mut map, &log.bytes, &log.aborted).expect("fits");
    map
}

/// Checks the output covers `[0, end)` contiguously with valid batches
/// and returns the records it holds.
fn records_of(output: &[Bytes], end: u64) -> Vec<sluice_proto::batch::Record> {
    let mut next = 0;
    let mut records = Vec::new();
    for batch in output {
        let (header, decoded) =
            batch::decode(batch, usize::MAX).expect("every output batch is valid");
        assert_eq!(header.base_offset, next, "no hole, no overlap");
        assert!(
            !header.transactional,
            "committed data is no longer transactional"
        );
        if header.control {
            let parsed = control::parse(batch, &header).expect("valid control");
            assert!(
                matches!(parsed, control::ControlRecord::Gap { .. }),
                "only GAP control batches remain"
            );
        }
        next = header.end_offset();
        records.extend(decoded);
    }
    assert_eq!(next, end, "the output covers the whole input");
    records
}

#[test]
fn latest_values_stay_and_superseded_aborted_and_control_records_go() {
    let mut log = Log::default();
    log.data(
        &[
            (Some(b"a"), Some(b"1")),
            (Some(b"b"), Some(b"1")),
            (Some(b"a"), Some(b"2")),
        ],
        Compression::None,
        None,
    );
    log.data(
        &[(Some(b"c"), Some(b"aborted"))],
        Compression::Lz4,
        Some((7, false)),
    );
    log.data(
        &[(Some(b"b"), Some(b"2")), (Some(b"d"), None)],
        Compression::Zstd,
        Some((8, true)),
    );
    log.data(
        &[(Some(b"e"), Some(b"")), (None, Some(b"keyless"))],
        Compression::None,
        None,
    );
    let map = mapped(&log);
    assert_eq!(map.latest(b"c"), None, "aborted records are not mapped");
    let (output, stats) = rewrite_all(&log, &map, false).expect("rewrites");
    let records = records_of(&output, log.next);
    let kept: Vec<(u64, KeyValue<'_>)> = records
        .iter()
        .map(|record| {
            (
                record.offset,
                (record.key.as_deref(), record.value.as_deref()),
            )
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            (2, (Some(&b"a"[..]), Some(&b"2"[..]))),
            (5, (Some(&b"b"[..]), Some(&b"2"[..]))),
            (6, (Some(&b"d"[..]), None)),
            (8, (Some(&b"e"[..]), Some(&b""[..]))),
            (9, (None, Some(&b"keyless"[..]))),
        ]
    );
    assert_eq!(stats.kept_records, 5);
    assert_eq!(stats.removed_offsets, log.next - 5);
    // Past the horizon the tombstone goes too, nothing else.
    let (output, _) = rewrite_all(&log, &map, true).expect("rewrites");
    let records = records_of(&output, log.next);
    assert!(records
        .iter()
        .all(|record| record.key.as_deref() != Some(&b"d"[..])));
    assert_eq!(records.len(), 4);
}

#[test]
fn a_batch_kept_whole_goes_out_byte_for_byte() {
    let mut log = Log::default();
    log.data(
        &[(Some(b"a"), Some(b"1")), (Some(b"b"), Some(b"1"))],
        Compression::Lz4,
        None,
    );
    let map = mapped(&log);
    let (output, stats) = rewrite_all(&log, &map, false).expect("rewrites");
    assert_eq!(output.len(), 1);
    assert_eq!(&output[0][..], &log.bytes[..]);
    assert_eq!(stats.removed_offsets, 0);
}

#[test]
fn an_all_removed_segment_becomes_gaps_split_at_the_batch_limit() {
    let mut log = Log::default();
    log.data(&[(Some(b"a"), Some(b"1"))], Compression::None, None);
    // A marker-only log part and an earlier GAP of the maximum size.
    log.append(control::build_gap(MAX_RECORDS_PER_BATCH, 3).expect("valid"));
    log.data(&[(Some(b"a"), Some(b"2"))], Compression::None, None);
    let map = mapped(&log);
    let (output, _) = rewrite_all(&log, &map, false).expect("rewrites");
    let records = records_of(&output, log.next);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset, u64::from(MAX_RECORDS_PER_BATCH) + 1);
    // 1 + MAX removed offsets: two GAP batches, then the kept record.
    assert_eq!(output.len(), 3);
}

#[test]
fn corrupt_or_misplaced_input_stops_the_pass() {
    let mut log = Log::default();
    log.data(&[(Some(b"a"), Some(b"1"))], Compression::None, None);
    let map = mapped(&log);
    let aborted = Aborted::default();
    // A flipped byte inside the CRC's cover.
    let mut flipped = log.bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    let mut rewriter = Rewriter::new(&map, &aborted, 0, log.next, false, 1);
    assert!(matches!(
        rewriter.push(&flipped),
        Err(RewriteError::Corrupt { .. })
    ));
    assert!(map_chunk(&mut KeyMap::new(1 << 20), &flipped, &aborted).is_err());
    // Truncated.
    let mut rewriter = Rewriter::new(&map, &aborted, 0, log.next, false, 1);
    assert!(matches!(
        rewriter.push(&log.bytes[..10]),
        Err(RewriteError::Corrupt { .. })
    ));
    // Not where the segment starts.
    let mut rewriter = Rewriter::new(&map, &aborted, 5, 6, false, 1);
    assert_eq!(
        rewriter.push(&log.bytes),
        Err(RewriteError::NotContiguous {
            expected: 5,
            found: 0
        })
    );
    // Past the segment's end.
    let mut rewriter = Rewriter::new(&map, &aborted, 0, 0, false, 1);
    assert!(matches!(
        rewriter.push(&log.bytes),
        Err(RewriteError::Corrupt { .. })
    ));
    // Short of the segment's end.
    let mut rewriter = Rewriter::new(&map, &aborted, 0, 2, false, 1);
    rewriter.push(&log.bytes).expect("a valid batch");
    assert!(matches!(
        rewriter.finish(),
        Err(RewriteError::Incomplete { reached: 1, end: 2 })
    ));
    // An empty segment rewrites to nothing.
    let rewriter = Rewriter::new(&map, &aborted, 4, 4, false, 1);
    assert_eq!(rewriter.finish().map(|(output, _)| output.len()), Ok(0));
}

#[test]
fn huge_keys_and_a_full_map() {
    let huge = vec![b'k'; 1 << 20];
    let mut log = Log::default();
    log.data(
        &[
            (Some(&huge), Some(b"1")),
            (Some(b"x"), Some(b"1")),
            (Some(&huge), Some(b"2")),
        ],
        Compression::Zstd,
        None,
    );
    let map = mapped(&log);
    let (output, _) = rewrite_all(&log, &map, false).expect("rewrites");
    let records = records_of(&output, log.next);
    assert_eq!(
        records
            .iter()
            .map(|record| record.offset)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    // A map of one key refuses the second new key.
    let mut small = KeyMap::new(1);
    assert!(matches!(
        map_chunk(&mut small, &log.bytes, &log.aborted),
        Err(MapError::Full(_))
    ));
}

#[test]
fn tombstone_horizon() {
    assert!(
        !tombstones_expired(0, 1, i64::MAX),
        "never compacted: not yet"
    );
    assert!(!tombstones_expired(1_000, 1, 1_000));
    assert!(tombstones_expired(1_000, 1, 1_001));
    assert!(
        !tombstones_expired(1_000, u64::MAX, i64::MAX),
        "u64::MAX keeps them forever"
    );
    assert!(!tombstones_expired(u64::MAX, u64::MAX, i64::MAX));
    assert!(
        !tombstones_expired(1_000, 0, 1_000 + 86_399_999),
        "0 reads as one day"
    );
    assert!(tombstones_expired(1_000, 0, 1_000 + 86_400_000));
    assert!(!tombstones_expired(1_000, 5, -1), "a clock before 1970");
}

/// Random logs of few keys with tombstones, committed and aborted
/// transactions, in several segments and chunkings: every key's latest
/// committed record stays (unless a tombstone past its horizon), no
/// aborted or superseded record does, offsets and order never change.
#[test]
fn randomised_logs_keep_exactly_the_latest_committed_records() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for round in 0..200 {
        let mut log = Log::default();
        let keys = rng.random_range(1..6u8);
        for _ in 0..rng.random_range(1..12) {
            let count = rng.random_range(1..6);
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..count)
                .map(|_| {
                    let key = vec![b'a' + rng.random_range(0..keys)];
                    let value = if rng.random_bool(0.2) {
                        None
                    } else {
                        Some(vec![rng.random::<u8>()])
                    };
                    (key, value)
                })
                .collect();
            let borrowed: Vec<KeyValue<'_>> = records
                .iter()
                .map(|(key, value)| (Some(key.as_slice()), value.as_deref()))
                .collect();
            let compression =
                [Compression::None, Compression::Lz4, Compression::Zstd][rng.random_range(0..3)];
            let txn = match rng.random_range(0..4) {
                0 => Some((rng.random_range(0..3), true)),
                1 => Some((rng.random_range(0..3), false)),
                _ => None,
            };
            log.data(&borrowed, compression, txn);
        }
        let expired = rng.random_bool(0.5);
        let map = mapped(&log);
        // Feed in random chunk boundaries (whole batches).
        let mut rewriter = Rewriter::new(&map, &log.aborted, 0, log.next, expired, 2);
        let mut output = Vec::new();
        let mut batches: Vec<&[u8]> = BatchIter::new(&log.bytes)
            .map(|item| item.expect("valid").2)
            .collect();
        while !batches.is_empty() {
            let take = rng.random_range(1..=batches.len());
            let chunk: Vec<u8> = batches.drain(..take).flatten().copied().collect();
            output.extend(rewriter.push(&chunk).expect("rewrites"));
        }
        let (tail, _) = rewriter.finish().expect("complete");
        output.extend(tail);
        let records = records_of(&output, log.next);
        let mut latest: HashMap<Vec<u8>, &Written> = HashMap::new();
        for written in log.written.iter().filter(|written| written.committed) {
            latest.insert(written.key.clone().expect("keyed"), written);
        }
        let mut expected: Vec<&Written> = latest
            .values()
            .copied()
            .filter(|written| !(expired && written.value.is_none()))
            .collect();
        expected.sort_by_key(|written| written.offset);
        let got: Vec<(u64, Vec<u8>, Option<Vec<u8>>)> = records
            .iter()
            .map(|record| {
                (
                    record.offset,
                    record.key.as_ref().expect("keyed").to_vec(),
                    record.value.as_ref().map(|value| value.to_vec()),
                )
            })
            .collect();
        let want: Vec<(u64, Vec<u8>, Option<Vec<u8>>)> = expected
            .iter()
            .map(|written| {
                (
                    written.offset,
                    written.key.clone().expect("keyed"),
                    written.value.clone(),
                )
            })
            .collect();
        assert_eq!(got, want, "round {round}");
    }
}
