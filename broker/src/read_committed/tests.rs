use super::*;
use rand::{Rng, SeedableRng};
use sluice_proto::batch::control::{build_marker, Marker};
use sluice_proto::batch::{assign, BatchBuilder, BatchHeader, Compression, RecordData};

/// A stored batch at `base_offset` of `records` records; transactional for
/// `Some(pid)`.
fn data(base_offset: u64, records: u32, producer: Option<i64>) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None);
    if let Some(producer_id) = producer {
        builder = builder.with_producer(producer_id, 0, 0).transactional();
    }
    for _ in 0..records {
        builder.push(&RecordData {
            value: Some(Bytes::from_static(b"v")),
            timestamp_ms: Some(1_000),
            ..RecordData::default()
        });
    }
    let mut bytes = builder.build().to_vec();
    assign(&mut bytes, base_offset, 1);
    bytes
}

fn marker_at(base_offset: u64, producer_id: i64, commit: bool) -> Vec<u8> {
    let marker = Marker {
        producer_id,
        txn_epoch: 0,
        commit,
        coordinator_epoch: 1,
        first_offset: None,
    };
    let mut bytes = build_marker(&marker, 1_000).expect("marker").to_vec();
    assign(&mut bytes, base_offset, 1);
    bytes
}

fn offsets(bytes: &[u8]) -> Vec<u64> {
    BatchIter::new(bytes)
        .map(|item| item.expect("whole batches").1.base_offset)
        .collect()
}

#[test]
fn nothing_dropped_is_the_same_memory() {
    let mut log = data(0, 2, None);
    log.extend(data(2, 3, None));
    let batches = Bytes::from(log);
    let filtered = filter(&batches, 5, |_, _| panic!("no transactional batch"));
    assert_eq!(filtered.bytes.as_ptr(), batches.as_ptr());
    assert_eq!(filtered.bytes.len(), batches.len());
    assert_eq!(filtered.next_offset, Some(5));
    assert_eq!(filtered.skipped_batches, 0);
}

#[test]
fn the_lso_cuts_whole_batches() {
    let mut log = data(0, 2, None);
    log.extend(data(2, 3, Some(1)));
    let batches = Bytes::from(log);
    for (lso, kept, next) in [
        (0, vec![], None),
        (2, vec![0], Some(2)),
        (4, vec![0], Some(2)),
        (5, vec![0, 2], Some(5)),
    ] {
        let filtered = filter(&batches, lso, |_, _| Vec::new());
        assert_eq!(offsets(&filtered.bytes), kept, "lso {lso}");
        assert_eq!(filtered.next_offset, next, "lso {lso}");
    }
}

#[test]
fn markers_and_aborted_batches_are_dropped_and_next_offset_passes_them() {
    let mut log = data(0, 1, Some(7)); // aborted
    log.extend(data(1, 1, Some(8))); // committed
    log.extend(marker_at(2, 7, false));
    log.extend(marker_at(3, 8, true));
    let batches = Bytes::from(log);
    let aborted = vec![AbortedTxn {
        producer_id: 7,
        first_offset: 0,
        marker_offset: 2,
    }];
    let filtered = filter(&batches, 4, |_, _| aborted.clone());
    assert_eq!(offsets(&filtered.bytes), vec![1]);
    assert_eq!(filtered.next_offset, Some(4));
    assert_eq!(filtered.skipped_batches, 3);
    // Only dropped batches: nothing to send, the reader still moves on.
    let only_markers = Bytes::from(marker_at(9, 1, true));
    let filtered = filter(&only_markers, 10, |_, _| Vec::new());
    assert!(filtered.bytes.is_empty());
    assert_eq!(filtered.next_offset, Some(10));
}

#[test]
fn garbage_after_good_batches_ends_the_answer() {
    let mut log = data(0, 1, None);
    log.extend_from_slice(&[0xff; 70]);
    let batches = Bytes::from(log);
    let filtered = filter(&batches, 100, |_, _| Vec::new());
    assert_eq!(offsets(&filtered.bytes), vec![0]);
    assert_eq!(filtered.next_offset, Some(1));
}

/// Random logs against a model: kept = below the LSO, not control, not a
/// transactional batch inside one of its producer's aborted ranges.
#[test]
fn random_logs_match_the_model() {
    for seed in 0..500u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut log = Vec::new();
        let mut headers: Vec<BatchHeader> = Vec::new();
        let mut aborted = Vec::new();
        let mut offset = 0u64;
        for _ in 0..rng.random_range(0..30) {
            let bytes = match rng.random_range(0..4) {
                0 => data(offset, rng.random_range(1..4), None),
                1 | 2 => data(offset, rng.random_range(1..4), Some(rng.random_range(0..3))),
                _ => marker_at(offset, rng.random_range(0..3), rng.random_bool(0.5)),
            };
            let header = BatchHeader::parse(&bytes).expect("header");
            if header.control && rng.random_bool(0.5) {
                let first_offset = rng.random_range(0..=offset);
                aborted.push(AbortedTxn {
                    producer_id: header.producer_id,
                    first_offset,
                    marker_offset: offset,
                });
            }
            offset = header.end_offset();
            headers.push(header);
            log.extend(bytes);
        }
        let lso = rng.random_range(0..=offset);
        let batches = Bytes::from(log);
        let mut calls = 0;
        let filtered = filter(&batches, lso, |_, _| {
            calls += 1;
            aborted.clone()
        });
        let below: Vec<&BatchHeader> = headers.iter().filter(|h| h.end_offset() <= lso).collect();
        let expected: Vec<u64> = below
            .iter()
            .filter(|h| {
                let in_abort = aborted.iter().any(|a| {
                    a.producer_id == h.producer_id
                        && a.first_offset <= h.base_offset
                        && h.base_offset <= a.marker_offset
                });
                let dropped = h.control || (h.transactional && in_abort);
                !dropped
            })
            .map(|h| h.base_offset)
            .collect();
        assert_eq!(offsets(&filtered.bytes), expected, "seed {seed}");
        assert_eq!(
            filtered.next_offset,
            below.last().map(|h| h.end_offset()),
            "seed {seed}"
        );
        assert_eq!(
            filtered.skipped_batches as usize,
            below.len() - expected.len(),
            "seed {seed}"
        );
        assert!(calls <= 1);
        if !below.iter().any(|h| h.transactional) {
            assert_eq!(
                calls, 0,
                "seed {seed}: no lookup without transactional batches"
            );
        }
    }
}
