//! Engine-level crash tests: write acknowledged entries, damage the files
//! the way crashes and bad disks do, reopen, and check that every
//! acknowledged entry is readable with identical bytes or the damage is
//! reported, that nothing corrupt is ever served and nothing panics.

mod common;

use bytes::Bytes;
use common::{make_batch, read_all};
use rand::{Rng, SeedableRng};
use sluice_proto::v1::Durability;
use sluice_proto::ErrorCode;
use sluice_store::journal;
use sluice_store::storage::{NewSegment, Storage, StorageOptions};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SEGMENTS: [u64; 2] = [11, 12];
const BATCHES_PER_SEGMENT: u64 = 60;

fn options() -> StorageOptions {
    StorageOptions {
        index_interval_bytes: 1024,
        // Checkpoints only when a test asks for one.
        checkpoint_interval_ms: 3_600_000,
        // Journal files are preallocated to this size; 1 MiB holds all
        // the test writes in one file while keeping damage-and-reopen
        // rounds cheap.
        journal_file_max_bytes: 1024 * 1024,
        ..StorageOptions::default()
    }
}

type Written = BTreeMap<u64, BTreeMap<u64, Bytes>>;

/// Writes acknowledged batches to two segments and drops the storage
/// without closing it (like a crash). With `checkpoint_after`, a checkpoint
/// runs after that many batches per segment.
fn write_entries(directory: &Path, checkpoint_after: Option<u64>) -> Written {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (storage, report) = Storage::open(directory, options()).expect("open");
        assert!(report.is_clean());
        let mut written = Written::new();
        for segment_id in SEGMENTS {
            storage
                .create_segment(NewSegment {
                    segment_id,
                    topic: "events".to_string(),
                    partition: segment_id as u32,
                    base_offset: 1000,
                    writer_epoch: 1,
                    durability: Durability::Fsync,
                })
                .await
                .expect("create");
        }
        for index in 0..BATCHES_PER_SEGMENT {
            for segment_id in SEGMENTS {
                let base_offset = 1000 + index * 3;
                let batch = make_batch(base_offset, 3, index + segment_id);
                let end = storage
                    .append(segment_id, 1, batch.clone())
                    .await
                    .expect("append acknowledged");
                assert_eq!(end, base_offset + 3);
                written
                    .entry(segment_id)
                    .or_default()
                    .insert(base_offset, batch);
            }
            if checkpoint_after == Some(index + 1) {
                storage.checkpoint().await.expect("checkpoint");
            }
        }
        written
    })
}

fn log_path(directory: &Path, segment_id: u64) -> PathBuf {
    directory
        .join("segments")
        .join(format!("{segment_id:020}.log"))
}

fn meta_path(directory: &Path, segment_id: u64) -> PathBuf {
    directory
        .join("segments")
        .join(format!("{segment_id:020}.meta"))
}

fn meta_copy_path(directory: &Path, segment_id: u64) -> PathBuf {
    directory
        .join("segments")
        .join(format!("{segment_id:020}.meta.copy"))
}

fn latest_journal(directory: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory.join("journal"))
        .expect("journal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "journal")
        })
        .collect();
    files.sort();
    files.pop().expect("a journal file exists")
}

/// End of the records of a journal file: journal files are preallocated,
/// so what follows the last record is zero fill up to the file length.
fn journal_data_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("read journal");
    let Ok(first) = journal::decode_any_record(&bytes) else {
        return 0;
    };
    let accept = journal::Accept::Stamped(first.stamp.expect("version 2 records"));
    let mut position = 0;
    while let Ok(record) = journal::decode_record(&bytes[position..], accept) {
        position += record.encoded_bytes;
    }
    position as u64
}

/// Writes `bytes` at the end of the journal's records, where a write cut
/// short by a crash leaves them (inside the preallocated zero fill).
fn write_at_journal_end(path: &Path, bytes: &[u8]) {
    let end = journal_data_end(path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.write_all_at(bytes, end).expect("write");
}

fn flip_byte(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[position as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

fn append_garbage(path: &Path, garbage: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    file.write_all(garbage).expect("append");
}

/// Position of the batch with `base_offset` in the log of `written`.
fn position_of(written: &BTreeMap<u64, Bytes>, base_offset: u64) -> u64 {
    written
        .range(..base_offset)
        .map(|(_, bytes)| bytes.len() as u64)
        .sum()
}

/// Every acknowledged batch is readable with identical bytes.
fn assert_everything_readable(storage: &Storage, written: &Written) {
    for (segment_id, batches) in written {
        let contents = read_all(storage, *segment_id, 1000);
        assert!(
            contents.stopped_by.is_none(),
            "segment {segment_id}: {:?}",
            contents.stopped_by
        );
        assert_eq!(contents.end_offset, 1000 + BATCHES_PER_SEGMENT * 3);
        assert_eq!(contents.batches.len(), batches.len());
        for (offset, bytes) in batches {
            assert_eq!(
                contents.batches.get(offset).map(Vec::as_slice),
                Some(bytes.as_ref()),
                "segment {segment_id} offset {offset}"
            );
        }
    }
}

fn reopen(directory: &Path) -> (Storage, sluice_store::RecoveryReport) {
    Storage::open(directory, options()).expect("reopen after damage must not fail")
}

#[test]
fn crash_without_damage_keeps_everything() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let (storage, report) = reopen(directory.path());
    assert!(report.is_clean(), "{report:?}");
    assert_everything_readable(&storage, &written);
}

#[test]
fn truncated_segment_tail_is_cut_and_refilled_from_the_journal() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let path = log_path(directory.path(), 11);
    let length = std::fs::metadata(&path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(length - 100).expect("truncate");
    drop(file);
    let (storage, report) = reopen(directory.path());
    assert_eq!(report.truncated_segment_tails.len(), 1, "{report:?}");
    assert!(report.journal_batches_reappended >= 1);
    assert_everything_readable(&storage, &written);
}

#[test]
fn torn_journal_tail_is_truncated() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let journal = latest_journal(directory.path());
    // Half a record: a plausible length header and some payload.
    let mut torn = Vec::new();
    torn.extend_from_slice(&500u32.to_le_bytes());
    torn.extend_from_slice(&[7u8; 40]);
    write_at_journal_end(&journal, &torn);
    let (storage, report) = reopen(directory.path());
    assert_eq!(
        report.journal_torn_tail_bytes,
        torn.len() as u64,
        "{report:?}"
    );
    assert_everything_readable(&storage, &written);
    drop(storage);
    // The second recovery finds a clean journal.
    let (storage, report) = reopen(directory.path());
    assert!(report.is_clean(), "{report:?}");
    assert_everything_readable(&storage, &written);
}

#[test]
fn preallocated_journal_zero_fill_is_the_end_not_a_torn_tail() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let journal = latest_journal(directory.path());
    let data_end = journal_data_end(&journal);
    let length = std::fs::metadata(&journal).expect("stat").len();
    assert!(data_end > 0, "the journal holds the records");
    assert!(
        length >= options().journal_file_max_bytes && length > data_end,
        "journal files must be preallocated (fallocate) to journal_file_max_bytes: length {length}, records end at {data_end}; does the temp dir's file system support fallocate?"
    );
    for segment_id in SEGMENTS {
        let batches = &written[&segment_id];
        assert_eq!(
            std::fs::metadata(log_path(directory.path(), segment_id))
                .expect("stat")
                .len(),
            position_of(batches, u64::MAX),
            "segment preallocation keeps the file length at the data length"
        );
    }
    let (storage, report) = reopen(directory.path());
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.journal_torn_tail_bytes, 0, "{report:?}");
    assert!(report.journal_records_replayed >= 2 * BATCHES_PER_SEGMENT);
    assert_everything_readable(&storage, &written);
}

#[test]
fn zeros_inside_the_journal_before_valid_records_are_damage_not_the_end() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let journal = latest_journal(directory.path());
    let data_end = journal_data_end(&journal);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .expect("open");
    // A lost page in the middle: later records must still be replayed.
    file.write_all_at(&[0u8; 600], data_end / 2)
        .expect("zero a range");
    drop(file);
    let (storage, report) = reopen(directory.path());
    assert_eq!(report.journal_corruptions.len(), 1, "{report:?}");
    assert_eq!(report.journal_torn_tail_bytes, 0, "{report:?}");
    assert_everything_readable(&storage, &written);
}

#[test]
fn zeroed_segment_tail_is_end_of_data_and_refilled_from_the_journal() {
    // After a crash, a file's length (or its preallocated blocks) can be on
    // disk while the data written there is not: the tail reads as zeros.
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let path = log_path(directory.path(), 11);
    let lost_from = position_of(&written[&11], 1000 + (BATCHES_PER_SEGMENT - 2) * 3);
    let length = std::fs::metadata(&path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.write_all_at(&vec![0u8; (length - lost_from) as usize], lost_from)
        .expect("zero the tail");
    file.set_len(length + 1024 * 1024)
        .expect("extend with zeros");
    drop(file);
    let (storage, report) = reopen(directory.path());
    assert!(report.is_clean(), "a zero tail is not damage: {report:?}");
    assert!(report.journal_batches_reappended >= 2, "{report:?}");
    assert_everything_readable(&storage, &written);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), length);
}

#[test]
fn garbage_appended_to_a_segment_file_is_truncated() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    append_garbage(&log_path(directory.path(), 12), &[0xAB; 333]);
    let (storage, report) = reopen(directory.path());
    assert_eq!(report.truncated_segment_tails, vec![(12, 333)]);
    assert_everything_readable(&storage, &written);
}

#[test]
fn flipped_bit_in_the_middle_is_repaired_from_the_journal() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let position = position_of(&written[&11], 1000 + 30 * 3) + 80;
    flip_byte(&log_path(directory.path(), 11), position);
    let (storage, report) = reopen(directory.path());
    assert_eq!(report.repaired_segments, vec![11], "{report:?}");
    assert!(report.corrupt_segments.is_empty());
    assert_everything_readable(&storage, &written);
    assert_eq!(
        storage
            .segment_status(11)
            .expect("status")
            .corrupt_from_offset,
        None
    );
}

#[test]
fn flipped_bit_in_the_tail_is_cut_and_refilled_from_the_journal() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let path = log_path(directory.path(), 12);
    let length = std::fs::metadata(&path).expect("stat").len();
    flip_byte(&path, length - 5);
    let (storage, report) = reopen(directory.path());
    assert_eq!(report.truncated_segment_tails.len(), 1, "{report:?}");
    assert_everything_readable(&storage, &written);
}

#[test]
fn garbage_meta_file_is_reported_and_restored_from_its_copy() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    std::fs::write(meta_path(directory.path(), 11), b"\x00\xffnot json{{{").expect("write");
    let (storage, report) = reopen(directory.path());
    assert_eq!(report.restored_metadata.len(), 1, "{report:?}");
    assert_everything_readable(&storage, &written);
}

#[test]
fn both_meta_copies_garbage_before_checkpoint_are_restored_from_the_journal() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    std::fs::write(meta_path(directory.path(), 11), b"\x00\xffnot json{{{").expect("write");
    std::fs::write(meta_copy_path(directory.path(), 11), b"garbage").expect("write");
    let (storage, report) = reopen(directory.path());
    // The journal still holds the create record, so the segment is back.
    assert!(report.damaged_segments.is_empty(), "{report:?}");
    assert_everything_readable(&storage, &written);
}

#[test]
fn both_meta_copies_garbage_after_checkpoint_hold_only_that_segment_as_damaged() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), Some(BATCHES_PER_SEGMENT));
    std::fs::write(meta_path(directory.path(), 11), b"garbage").expect("write");
    std::fs::write(meta_copy_path(directory.path(), 11), b"").expect("write");
    let (storage, report) = reopen(directory.path());
    assert_eq!(report.damaged_segments.len(), 1, "{report:?}");
    let error = storage.segment_status(11).expect_err("segment damaged");
    assert_eq!(error.code(), ErrorCode::StorageCorrupt);
    let mut rest = written.clone();
    rest.remove(&11);
    assert_everything_readable(&storage, &rest);
}

#[test]
fn middle_corruption_without_journal_copy_is_reported_and_never_served() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), Some(BATCHES_PER_SEGMENT));
    let damaged_offset = 1000 + 20 * 3;
    let position = position_of(&written[&11], damaged_offset) + 90;
    flip_byte(&log_path(directory.path(), 11), position);
    let (storage, report) = reopen(directory.path());
    assert_eq!(
        report.corrupt_segments,
        vec![(11, damaged_offset)],
        "{report:?}"
    );
    let status = storage.segment_status(11).expect("status");
    assert_eq!(status.corrupt_from_offset, Some(damaged_offset));
    assert_eq!(status.end_offset, 1000 + BATCHES_PER_SEGMENT * 3);
    // Reading from the start stops before the damage.
    let contents = read_all(&storage, 11, 1000);
    let error = contents.stopped_by.expect("damage stops the read");
    assert_eq!(error.code(), ErrorCode::StorageCorrupt);
    assert_eq!(
        contents.batches.keys().last().copied(),
        Some(damaged_offset - 3)
    );
    for offset in [damaged_offset, damaged_offset + 2] {
        let error = storage.read(11, offset, 0, 0).expect_err("damaged");
        assert_eq!(error.code(), ErrorCode::StorageCorrupt);
    }
    // Everything after the damage is still served, identical.
    let after = read_all(&storage, 11, damaged_offset + 3);
    assert!(after.stopped_by.is_none());
    for (offset, bytes) in &after.batches {
        assert_eq!(written[&11][offset].as_ref(), bytes.as_slice());
    }
    assert_eq!(after.batches.len() as u64, BATCHES_PER_SEGMENT - 21);
    let mut rest = written.clone();
    rest.remove(&11);
    assert_everything_readable(&storage, &rest);
}

#[test]
fn damage_after_open_is_caught_by_the_read_crc_check() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_entries(directory.path(), None);
    let (storage, _) = reopen(directory.path());
    let damaged_offset = 1000 + 10 * 3;
    let position = position_of(&written[&12], damaged_offset) + 70;
    flip_byte(&log_path(directory.path(), 12), position);
    let error = storage.read(12, damaged_offset, 0, 0).expect_err("corrupt");
    assert_eq!(error.code(), ErrorCode::StorageCorrupt);
    assert!(error.to_string().contains(&damaged_offset.to_string()));
    let contents = read_all(&storage, 12, 1000);
    assert_eq!(contents.batches.len(), 10);
}

#[test]
fn random_damage_never_panics_and_never_serves_wrong_bytes() {
    for seed in 0..24u64 {
        let directory = tempfile::tempdir().expect("temp dir");
        let checkpoint = if seed % 2 == 0 { Some(30) } else { None };
        let written = write_entries(directory.path(), checkpoint);
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let mut targets = vec![
            log_path(directory.path(), 11),
            log_path(directory.path(), 12),
            latest_journal(directory.path()),
        ];
        if seed % 3 == 0 {
            targets.push(meta_path(directory.path(), 12));
            targets.push(directory.path().join("checkpoint"));
        }
        let journal = latest_journal(directory.path());
        for target in &targets {
            // Damage lands where the data is, not in the preallocated zero
            // fill of the journal (damage there is covered separately).
            let data_end = if *target == journal {
                journal_data_end(target) as usize
            } else {
                usize::MAX
            };
            let mut bytes = std::fs::read(target).expect("read");
            let damageable = data_end.saturating_add(64).min(bytes.len());
            if damageable == 0 {
                continue;
            }
            for _ in 0..random.random_range(1..6) {
                let at = random.random_range(0..damageable);
                let run = random.random_range(1..64).min(bytes.len() - at);
                for byte in &mut bytes[at..at + run] {
                    *byte = random.random();
                }
            }
            if random.random_bool(0.5) {
                let keep = random.random_range(0..damageable);
                bytes.truncate(keep);
            }
            std::fs::write(target, bytes).expect("write");
        }
        let (storage, report) = reopen(directory.path());
        for (segment_id, batches) in &written {
            let Ok(status) = storage.segment_status(*segment_id) else {
                continue;
            };
            let mut offset = status.base_offset;
            while offset < status.end_offset {
                match storage.read(*segment_id, offset, 0, 0) {
                    Ok(outcome) => {
                        let served = common::split_batches(
                            &outcome.batches,
                            sluice_proto::batch::BatchHeader::parse(&outcome.batches)
                                .expect("header")
                                .base_offset,
                        );
                        for (base, bytes) in &served {
                            // Bytes 12..16 (the writer epoch) are set by the
                            // broker outside the batch CRC and carry no
                            // redundancy the store could check; everything
                            // else must be identical.
                            let masked = |bytes: &[u8]| {
                                let mut copy = bytes.to_vec();
                                copy[12..16].fill(0);
                                copy
                            };
                            assert_eq!(
                                batches.get(base).map(|b| masked(b)),
                                Some(masked(bytes)),
                                "seed {seed}: segment {segment_id} served wrong bytes at {base} ({report:?})"
                            );
                            offset = offset.max(base + 3);
                        }
                    }
                    Err(error) => {
                        assert!(
                            matches!(
                                error.code(),
                                ErrorCode::StorageCorrupt | ErrorCode::OffsetOutOfRange
                            ),
                            "seed {seed}: unexpected {error}"
                        );
                        offset += 3;
                    }
                }
            }
        }
    }
}
