//! The message indexes against a real storage engine: lookups by key,
//! tag and time, caps, damage, files and their validation.

use super::*;
use crate::storage::{NewSegment, StorageOptions};
use bytes::Bytes;
use sluice_proto::batch::{self, BatchBuilder, Compression, RecordData};
use sluice_proto::v1::Durability;

/// One batch of `(key, tag, timestamp)` records at `base_offset`.
fn batch_of(base_offset: u64, records: &[(&str, &str, i64)], compression: Compression) -> Bytes {
    let mut builder = BatchBuilder::new(compression);
    for (key, tag, timestamp_ms) in records {
        builder.push(&RecordData {
            key: Some(Bytes::from(key.to_string())),
            value: Some(Bytes::from(vec![b'v'; 64])),
            headers: Vec::new(),
            tags: vec![tag.to_string()],
            timestamp_ms: Some(*timestamp_ms),
        });
    }
    let mut bytes = builder.build().to_vec();
    batch::assign(&mut bytes, base_offset, 1);
    Bytes::from(bytes)
}

async fn storage_with_segment(directory: &std::path::Path) -> Storage {
    let (storage, _) = Storage::open(directory, StorageOptions::default()).expect("open");
    storage
        .create_segment(NewSegment {
            segment_id: 7,
            topic: "orders".to_string(),
            partition: 0,
            base_offset: 100,
            writer_epoch: 1,
            durability: Durability::Fsync,
        })
        .await
        .expect("create");
    storage
}

/// Appends 20 batches of 3 records: keys `k{batch % 5}`, tag `even` or
/// `odd` by batch, timestamps 1000 + 10 * batch (+ record), every fifth
/// batch lz4-compressed. Returns the segment end.
async fn fill(storage: &Storage) -> u64 {
    let mut offset = 100;
    for index in 0..20u64 {
        let key = format!("k{}", index % 5);
        let tag = if index % 2 == 0 { "even" } else { "odd" };
        let time = 1000 + 10 * index as i64;
        let compression = if index % 5 == 4 {
            Compression::Lz4
        } else {
            Compression::None
        };
        let records = [
            (key.as_str(), tag, time),
            (key.as_str(), tag, time + 1),
            ("shared", tag, time + 2),
        ];
        storage
            .append(7, 1, batch_of(offset, &records, compression))
            .await
            .expect("append");
        offset += 3;
    }
    offset
}

fn by_key(key: &str) -> FindInSegmentRequest {
    FindInSegmentRequest {
        segment_id: 7,
        key: Some(Bytes::from(key.to_string())),
        ..FindInSegmentRequest::default()
    }
}

/// Batch base offsets whose batch index `i` satisfies `keep`.
fn expected(keep: impl Fn(u64) -> bool) -> Vec<u64> {
    (0..20u64)
        .filter(|index| keep(*index))
        .map(|index| 100 + 3 * index)
        .collect()
}

#[tokio::test]
async fn index_finds_batches_by_key_tag_and_time_including_compressed_ones() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = storage_with_segment(directory.path()).await;
    let end = fill(&storage).await;
    let indexes = MessageIndexes::new(MessageIndexLimits::default());
    let found = indexes.find(&storage, &by_key("k4")).expect("find");
    assert_eq!(found.batch_offsets, expected(|index| index % 5 == 4));
    assert_eq!(found.indexed_end_offset, end);
    assert_eq!(found.segment_end_offset, end);
    assert!(found.unindexed_reason.is_empty());
    assert!(found.next_offset.is_none());
    let odd = indexes
        .find(
            &storage,
            &FindInSegmentRequest {
                segment_id: 7,
                tag: Some("odd".to_string()),
                ..FindInSegmentRequest::default()
            },
        )
        .expect("find");
    assert_eq!(odd.batch_offsets, expected(|index| index % 2 == 1));
    // Time only: batches 3..=5 hold timestamps 1030..=1052.
    let timed = indexes
        .find(
            &storage,
            &FindInSegmentRequest {
                segment_id: 7,
                from_time_ms: Some(1032),
                to_time_ms: Some(1050),
                ..FindInSegmentRequest::default()
            },
        )
        .expect("find");
    assert_eq!(
        timed.batch_offsets,
        expected(|index| (3..=5).contains(&index))
    );
    // Key and time together, and a key nobody has.
    let both = indexes
        .find(
            &storage,
            &FindInSegmentRequest {
                from_time_ms: Some(1100),
                ..by_key("k0")
            },
        )
        .expect("find");
    assert_eq!(
        both.batch_offsets,
        expected(|index| index % 5 == 0 && index >= 10)
    );
    assert!(indexes
        .find(&storage, &by_key("nobody"))
        .expect("find")
        .batch_offsets
        .is_empty());
    // A key never matches a tag of the same text.
    assert!(indexes
        .find(&storage, &by_key("odd"))
        .expect("find")
        .batch_offsets
        .is_empty());
}

#[tokio::test]
async fn answers_are_paged_and_later_appends_are_indexed_on_the_next_lookup() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = storage_with_segment(directory.path()).await;
    let end = fill(&storage).await;
    let indexes = MessageIndexes::new(MessageIndexLimits::default());
    let first = indexes
        .find(
            &storage,
            &FindInSegmentRequest {
                max_batches: 3,
                ..by_key("shared")
            },
        )
        .expect("find");
    assert_eq!(first.batch_offsets, vec![100, 103, 106]);
    assert_eq!(first.next_offset, Some(109));
    let rest = indexes
        .find(
            &storage,
            &FindInSegmentRequest {
                from_offset: 109,
                end_offset: 115,
                ..by_key("shared")
            },
        )
        .expect("find");
    assert_eq!(rest.batch_offsets, vec![109, 112]);
    storage
        .append(
            7,
            1,
            batch_of(end, &[("late", "new", 5000)], Compression::Zstd),
        )
        .await
        .expect("append");
    let late = indexes.find(&storage, &by_key("late")).expect("find");
    assert_eq!(late.batch_offsets, vec![end]);
    assert_eq!(late.indexed_end_offset, end + 1);
}

#[tokio::test]
async fn index_is_rebuilt_after_a_restart_and_after_its_segment_changed() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = storage_with_segment(directory.path()).await;
    let end = fill(&storage).await;
    let indexes = MessageIndexes::new(MessageIndexLimits::default());
    let before = indexes.find(&storage, &by_key("k2")).expect("find");
    storage.close().await.expect("close");
    drop(storage);
    // A restart: recovery rescans the segment, the index is rebuilt on
    // the next lookup and agrees.
    let (reopened, report) =
        Storage::open(directory.path(), StorageOptions::default()).expect("reopen");
    assert!(report.is_clean(), "{report:?}");
    let rebuilt = MessageIndexes::new(MessageIndexLimits::default());
    assert_eq!(
        rebuilt.find(&reopened, &by_key("k2")).expect("find"),
        before
    );
    // The segment is deleted and created again shorter under the same
    // id (a repair's recopy): the old index does not fit and is not
    // trusted.
    reopened.delete_segment(7).await.expect("delete");
    assert!(indexes.find(&reopened, &by_key("k2")).is_err());
    reopened
        .create_segment(NewSegment {
            segment_id: 7,
            topic: "orders".to_string(),
            partition: 0,
            base_offset: 100,
            writer_epoch: 1,
            durability: Durability::Fsync,
        })
        .await
        .expect("create again");
    reopened
        .append(7, 1, batch_of(100, &[("k2", "x", 1)], Compression::None))
        .await
        .expect("append");
    let stale = MessageIndexes::new(MessageIndexLimits::default());
    assert_eq!(
        stale
            .find(&reopened, &by_key("k2"))
            .expect("find")
            .batch_offsets,
        vec![100]
    );
    // Now an index of the long segment meets the short one.
    let long_index = MessageIndexes::new(MessageIndexLimits::default());
    {
        let index = long_index.index_of(7, 100);
        let mut guard = index.lock().expect("lock");
        guard.indexed_end = end;
    }
    let found = long_index.find(&reopened, &by_key("k2")).expect("find");
    assert_eq!(found.batch_offsets, vec![100]);
    assert_eq!(found.indexed_end_offset, 101);
}

#[tokio::test]
async fn caps_stop_the_index_and_say_where() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = storage_with_segment(directory.path()).await;
    let end = fill(&storage).await;
    for (limits, reason) in [
        (
            MessageIndexLimits {
                max_batches_per_segment: 4,
                ..MessageIndexLimits::default()
            },
            "batches",
        ),
        (
            MessageIndexLimits {
                // "shared", "even", "odd", k0..k2 fit; k3 does not.
                max_terms_per_segment: 6,
                ..MessageIndexLimits::default()
            },
            "distinct keys and tags",
        ),
        (
            MessageIndexLimits {
                max_postings_per_segment: 10,
                ..MessageIndexLimits::default()
            },
            "pairs",
        ),
    ] {
        let indexes = MessageIndexes::new(limits);
        let found = indexes.find(&storage, &by_key("shared")).expect("find");
        assert!(found.indexed_end_offset < end, "{reason}");
        assert!(
            found.unindexed_reason.contains(reason),
            "{}",
            found.unindexed_reason
        );
        assert!(
            found
                .unindexed_reason
                .contains(&format!("from offset {}", found.indexed_end_offset)),
            "{}",
            found.unindexed_reason
        );
        // What is indexed is answered; nothing beyond the index end.
        assert!(!found.batch_offsets.is_empty());
        assert!(found
            .batch_offsets
            .iter()
            .all(|offset| *offset < found.indexed_end_offset));
    }
    // Candidates per answer are capped whatever the request asks.
    let capped = MessageIndexes::new(MessageIndexLimits {
        max_candidate_batches: 2,
        ..MessageIndexLimits::default()
    });
    let found = capped
        .find(
            &storage,
            &FindInSegmentRequest {
                max_batches: 1000,
                ..by_key("shared")
            },
        )
        .expect("find");
    assert_eq!(found.batch_offsets, vec![100, 103]);
    assert_eq!(found.next_offset, Some(106));
}

#[tokio::test]
async fn least_recently_used_segments_are_dropped_beyond_the_cap() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = storage_with_segment(directory.path()).await;
    fill(&storage).await;
    for segment_id in [8, 9] {
        storage
            .create_segment(NewSegment {
                segment_id,
                topic: "orders".to_string(),
                partition: 1,
                base_offset: 0,
                writer_epoch: 1,
                durability: Durability::Fsync,
            })
            .await
            .expect("create");
    }
    let indexes = MessageIndexes::new(MessageIndexLimits {
        max_indexed_segments: 2,
        ..MessageIndexLimits::default()
    });
    for segment_id in [7, 8, 9, 7] {
        indexes
            .find(
                &storage,
                &FindInSegmentRequest {
                    segment_id,
                    ..by_key("k1")
                },
            )
            .expect("find");
        assert!(indexes.indexed_segments() <= 2);
    }
    assert_eq!(
        indexes
            .find(&storage, &by_key("k1"))
            .expect("find")
            .batch_offsets,
        expected(|index| index % 5 == 1)
    );
}

#[tokio::test]
async fn damaged_segments_are_indexed_up_to_the_damage_and_bad_requests_refused() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = storage_with_segment(directory.path()).await;
    let end = fill(&storage).await;
    storage.close().await.expect("close");
    drop(storage);
    // Flip a byte inside the 6th batch of the segment file (the journal
    // was checkpointed away, so recovery cannot repair it).
    let log = directory
        .path()
        .join("segments")
        .join(format!("{:020}.log", 7));
    let mut bytes = std::fs::read(&log).expect("read log");
    let mut position = 0usize;
    for _ in 0..5 {
        let header = batch::BatchHeader::parse(&bytes[position..]).expect("header");
        position += header.batch_length as usize;
    }
    bytes[position + 70] ^= 0xff;
    std::fs::write(&log, &bytes).expect("write log");
    let (storage, report) =
        Storage::open(directory.path(), StorageOptions::default()).expect("reopen");
    assert_eq!(report.corrupt_segments, vec![(7, 115)]);
    let indexes = MessageIndexes::new(MessageIndexLimits::default());
    let found = indexes.find(&storage, &by_key("k0")).expect("find");
    assert_eq!(found.batch_offsets, vec![100]);
    assert_eq!(found.indexed_end_offset, 115);
    assert_eq!(found.segment_end_offset, end);
    assert!(
        found.unindexed_reason.contains("damaged"),
        "{}",
        found.unindexed_reason
    );
    for bad in [
        FindInSegmentRequest {
            tag: Some("odd".to_string()),
            ..by_key("k0")
        },
        FindInSegmentRequest {
            from_time_ms: Some(10),
            to_time_ms: Some(5),
            ..by_key("k0")
        },
    ] {
        assert!(matches!(
            indexes.find(&storage, &bad),
            Err(StoreError::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        indexes.find(
            &storage,
            &FindInSegmentRequest {
                segment_id: 12345,
                ..by_key("k0")
            }
        ),
        Err(StoreError::UnknownSegment { .. })
    ));
}

fn index_file(directory: &std::path::Path, segment_id: u64) -> std::path::PathBuf {
    directory.join(format!("{segment_id:020}.index"))
}

#[tokio::test]
async fn sealed_segment_indexes_are_written_and_used_after_a_restart() {
    let directory = tempfile::tempdir().expect("temp dir");
    let index_directory = directory.path().join("message-index");
    let storage = storage_with_segment(directory.path()).await;
    fill(&storage).await;
    let indexes =
        MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone());
    // Open segments are not written: they still grow.
    let open = indexes.find(&storage, &by_key("k2")).expect("find");
    assert!(!index_file(&index_directory, 7).exists());
    storage.seal_segment(7, 1).await.expect("seal");
    assert_eq!(indexes.find(&storage, &by_key("k2")).expect("find"), open);
    assert!(index_file(&index_directory, 7).exists());
    assert_eq!(indexes.stats().files_written.load(Ordering::Relaxed), 1);
    assert_eq!(indexes.stats().batches_indexed.load(Ordering::Relaxed), 20);
    storage.close().await.expect("close");
    drop(storage);
    let (storage, _) = Storage::open(directory.path(), StorageOptions::default()).expect("reopen");
    let restarted =
        MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone());
    assert_eq!(restarted.remove_orphans(&storage), 0);
    for (key, request) in [("k2", by_key("k2")), ("shared", by_key("shared"))] {
        let fresh = MessageIndexes::new(MessageIndexLimits::default());
        assert_eq!(
            restarted.find(&storage, &request).expect("find"),
            fresh.find(&storage, &request).expect("find"),
            "{key}"
        );
    }
    assert_eq!(
        restarted.stats().loaded_from_files.load(Ordering::Relaxed),
        1
    );
    assert_eq!(restarted.stats().batches_indexed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn damaged_stale_and_orphaned_index_files_are_never_trusted() {
    let directory = tempfile::tempdir().expect("temp dir");
    let index_directory = directory.path().join("message-index");
    let storage = storage_with_segment(directory.path()).await;
    fill(&storage).await;
    storage.seal_segment(7, 1).await.expect("seal");
    let expected = MessageIndexes::new(MessageIndexLimits::default())
        .find(&storage, &by_key("k3"))
        .expect("find");
    MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone())
        .find(&storage, &by_key("k3"))
        .expect("write the file");
    let path = index_file(&index_directory, 7);
    let good = std::fs::read(&path).expect("read index file");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    // A file of another segment under this one's name: its CRC is
    // right, what it describes is not.
    let mut other = SegmentIndex::new(100);
    other.indexed_end = 100;
    let mut status = storage.segment_status(7).expect("status");
    status.end_offset = 100;
    let stale = other.encode(7, &status);
    for (what, contents) in [
        ("flipped byte", flipped),
        ("truncated", good[..good.len() - 9].to_vec()),
        ("describes another state of the segment", stale),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&path, &contents).expect("write index file");
        let indexes =
            MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone());
        assert_eq!(
            indexes.find(&storage, &by_key("k3")).expect("find"),
            expected,
            "{what}"
        );
        assert_eq!(
            indexes.stats().files_refused.load(Ordering::Relaxed),
            1,
            "{what}"
        );
        assert_eq!(
            indexes.stats().batches_indexed.load(Ordering::Relaxed),
            20,
            "{what}: rebuilt from the segment"
        );
        assert_eq!(
            std::fs::read(&path).expect("rewritten"),
            good,
            "{what}: rewritten"
        );
    }
    // Caps lower than what a file holds: rebuilt within the new caps.
    let capped = MessageIndexes::with_directory(
        MessageIndexLimits {
            max_batches_per_segment: 2,
            ..MessageIndexLimits::default()
        },
        index_directory.clone(),
    );
    let found = capped.find(&storage, &by_key("k3")).expect("find");
    assert_eq!(found.indexed_end_offset, 106);
    assert_eq!(capped.stats().files_refused.load(Ordering::Relaxed), 1);
    // Files of segments the store does not hold, and anything else in
    // the directory, are removed.
    std::fs::write(index_file(&index_directory, 999), b"old").expect("write orphan");
    std::fs::write(index_directory.join("notes.txt"), b"x").expect("write junk");
    let indexes =
        MessageIndexes::with_directory(MessageIndexLimits::default(), index_directory.clone());
    assert_eq!(indexes.remove_orphans(&storage), 2);
    assert!(path.exists());
    assert!(!index_file(&index_directory, 999).exists());
    // A deleted segment's file goes with its first lookup.
    storage.delete_segment(7).await.expect("delete");
    assert!(indexes.find(&storage, &by_key("k3")).is_err());
    assert!(!path.exists());
}
