//! Damage to a segment's files found by recovery (issue 11 item 3): a
//! garbage metadata file, a flipped bit in the middle of the log, a log
//! truncated mid-batch. The store never forgets how far a segment reached:
//! its end never moves below the durable end recorded at seal (metadata)
//! or at a checkpoint, the missing offsets become damaged ranges that are
//! never served and refuse writer appends, and a segment whose metadata is
//! unusable is held as damaged rather than forgotten. Each case is checked
//! for a sealed and an unsealed (checkpointed) segment, after open, after
//! the healer's in-process recovery and after another reopen.

use super::tests::{make_batch, options};
use super::writer::record_failure;
use super::*;
use crate::segment::SegmentMeta;
use sluice_proto::test_util::eventually_true;
use sluice_proto::ErrorCode;

const SEGMENT: u64 = 4;
const BASE: u64 = 1000;
const RECORDS: u64 = 4000;
const PER_BATCH: u64 = 10;
const END: u64 = BASE + RECORDS;

/// The batches written, by base offset, with their positions in the file.
struct Written {
    batches: Vec<(u64, u64, Bytes)>,
}

impl Written {
    fn at(&self, base_offset: u64) -> &(u64, u64, Bytes) {
        self.batches
            .iter()
            .find(|(base, _, _)| *base == base_offset)
            .expect("a batch at that offset")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Sealed,
    Checkpointed,
}

fn segments_dir(directory: &Path) -> PathBuf {
    directory.join(SEGMENTS_DIR)
}

/// Writes 4000 records in batches of 10 to a segment based at 1000, seals
/// it or checkpoints it, and drops the storage (the journal holds nothing
/// after the checkpoint, so recovery has only the segment files).
async fn write_segment(directory: &Path, state: State) -> Written {
    let (storage, _) = Storage::open(directory, options()).expect("open");
    storage
        .create_segment(NewSegment {
            segment_id: SEGMENT,
            topic: "orders".to_string(),
            partition: 3,
            base_offset: BASE,
            writer_epoch: 5,
            durability: Durability::Fsync,
        })
        .await
        .expect("create");
    let mut batches = Vec::new();
    let mut position = 0u64;
    for base_offset in (BASE..END).step_by(PER_BATCH as usize) {
        let batch = make_batch(base_offset, PER_BATCH as u32, 1_000 + base_offset as i64);
        storage
            .append(SEGMENT, 5, batch.clone())
            .await
            .expect("append");
        batches.push((base_offset, position, batch.clone()));
        position += batch.len() as u64;
    }
    if state == State::Sealed {
        storage.seal_segment(SEGMENT, 6).await.expect("seal");
    }
    storage.checkpoint().await.expect("checkpoint");
    drop(storage);
    Written { batches }
}

fn log_file(directory: &Path) -> PathBuf {
    segment::log_path(&segments_dir(directory), SEGMENT)
}

fn flip_bit(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[position as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

fn truncate(path: &Path, length: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(length)
        .expect("truncate");
}

fn assert_damaged_error<T: std::fmt::Debug>(result: Result<T, StoreError>, needle: &str) {
    let error = result.expect_err("refused as damaged");
    assert_eq!(error.code(), ErrorCode::StorageCorrupt, "{error}");
    assert!(error.to_string().contains(needle), "{error} lacks {needle}");
}

/// The batch at `base_offset` reads back exactly as written.
fn assert_reads(storage: &Storage, written: &Written, base_offset: u64) {
    let outcome = storage
        .read(SEGMENT, base_offset, 1, 0)
        .unwrap_or_else(|error| panic!("read {base_offset}: {error}"));
    assert_eq!(
        outcome.batches,
        written.at(base_offset).2,
        "at {base_offset}"
    );
}

/// The segment ends at 4000 records with exactly `[start, END)` or
/// `[start, end)` damaged: never served, writer appends refused, reads
/// before (and after) the range work.
async fn assert_damaged_range(storage: &Storage, written: &Written, range: (u64, u64)) {
    let (start, end) = range;
    let status = storage.segment_status(SEGMENT).expect("status");
    assert_eq!(status.end_offset, END, "the end never moves back");
    assert_eq!(status.corrupt_from_offset, Some(start));
    let ranges: Vec<(u64, u64)> = status
        .damaged_ranges
        .iter()
        .map(|range| (range.start_offset, range.end_offset))
        .collect();
    assert_eq!(ranges, vec![(start, end)], "{:?}", status.damaged_ranges);
    assert!(!status.damaged_ranges[0].detail.is_empty());
    assert_reads(storage, written, BASE);
    assert_reads(storage, written, start - PER_BATCH);
    let range_text = format!("[{start}, {end})");
    for offset in [start, end - 1] {
        assert_damaged_error(storage.read(SEGMENT, offset, 0, 0), &range_text);
    }
    if end < END {
        assert_reads(storage, written, end);
        assert_reads(storage, written, END - PER_BATCH);
    }
    // Reading from the start stops before the damage.
    let first = storage.read(SEGMENT, BASE, 0, 0).expect("read");
    assert!(first.batches.len() as u64 <= written.at(start).1);
    if !status.sealed {
        let next = make_batch(END, 1, 1);
        assert_damaged_error(storage.append(SEGMENT, 5, next).await, &range_text);
    }
    assert_eq!(
        storage.segment_status(SEGMENT).expect("status").end_offset,
        END
    );
}

/// Fails the write path so that the healer replaces it over a fresh
/// in-process recovery, and waits until it has.
async fn heal(storage: &Storage) {
    let recoveries = storage
        .journal_stats()
        .write_path_recoveries
        .load(Ordering::SeqCst);
    {
        let path = storage.inner.write_path.read().await;
        let path = path.as_ref().expect("a write path");
        record_failure(&path.failure, "test: fail the write path".to_string());
    }
    eventually_true(
        "the healer recovers the write path",
        Duration::from_secs(20),
        || {
            storage.is_healthy()
                && storage
                    .journal_stats()
                    .write_path_recoveries
                    .load(Ordering::SeqCst)
                    > recoveries
        },
    )
    .await;
}

/// Checks `check` after open, after the healer's recovery, and after a
/// reopen (recovery is idempotent).
async fn check_everywhere<F, Fut>(directory: &Path, check: F)
where
    F: Fn(Storage) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (storage, _) = Storage::open(directory, options()).expect("open");
    check(storage.clone()).await;
    heal(&storage).await;
    check(storage.clone()).await;
    drop(storage);
    let (storage, _) = Storage::open(directory, options()).expect("reopen");
    check(storage).await;
}

async fn flipped_bit_in_the_middle(state: State) {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_segment(directory.path(), state).await;
    let damaged = BASE + 2000;
    let (_, position, _) = written.at(damaged);
    flip_bit(&log_file(directory.path()), position + 80);
    let written = &written;
    check_everywhere(directory.path(), |storage| async move {
        assert_damaged_range(&storage, written, (damaged, damaged + PER_BATCH)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_sealed_segment_is_one_damaged_batch() {
    flipped_bit_in_the_middle(State::Sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_checkpointed_segment_is_one_damaged_batch() {
    flipped_bit_in_the_middle(State::Checkpointed).await;
}

async fn truncated_mid_batch(state: State) {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_segment(directory.path(), state).await;
    let last_whole = BASE + 3380;
    let (_, position, _) = written.at(last_whole);
    truncate(&log_file(directory.path()), position + 40);
    let written = &written;
    check_everywhere(directory.path(), |storage| async move {
        assert_damaged_range(&storage, written, (last_whole, END)).await;
        let status = storage.segment_status(SEGMENT).expect("status");
        assert!(
            status.damaged_ranges[0].detail.contains("truncated"),
            "{:?}",
            status.damaged_ranges
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_segment_truncated_mid_batch_keeps_its_end() {
    truncated_mid_batch(State::Sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_segment_truncated_mid_batch_keeps_its_end() {
    truncated_mid_batch(State::Checkpointed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_segment_seals_at_its_recorded_end() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_segment(directory.path(), State::Checkpointed).await;
    let position = written.at(BASE + 100).1;
    truncate(&log_file(directory.path()), position);
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    let status = storage.seal_segment(SEGMENT, 7).await.expect("seal");
    assert_eq!(status.end_offset, END);
    assert_eq!(
        std::fs::metadata(log_file(directory.path()))
            .expect("stat")
            .len(),
        position,
        "the seal does not extend the damaged file"
    );
    drop(storage);
    let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
    let status = storage.segment_status(SEGMENT).expect("status");
    assert_eq!(
        (status.sealed, status.end_offset, status.corrupt_from_offset),
        (true, END, Some(BASE + 100))
    );
}

async fn one_garbage_meta_copy(state: State, damage: fn(&Path)) {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_segment(directory.path(), state).await;
    let primary = segment::meta_path(&segments_dir(directory.path()), SEGMENT);
    let intact = std::fs::read(&primary).expect("read meta");
    damage(&primary);
    let written = &written;
    let (storage, report) = Storage::open(directory.path(), options()).expect("open");
    assert_eq!(report.restored_metadata.len(), 1, "{report:?}");
    assert!(report.damaged_segments.is_empty(), "{report:?}");
    assert_eq!(
        std::fs::read(&primary).expect("read meta"),
        intact,
        "the bad copy is rewritten"
    );
    drop(storage);
    check_everywhere(directory.path(), |storage| async move {
        let status = storage.segment_status(SEGMENT).expect("status");
        assert_eq!(
            (status.base_offset, status.end_offset, status.sealed),
            (BASE, END, state == State::Sealed)
        );
        assert!(status.damaged_ranges.is_empty());
        assert_reads(&storage, written, BASE);
        assert_reads(&storage, written, END - PER_BATCH);
    })
    .await;
}

fn random_bytes(path: &Path) {
    let bytes: Vec<u8> = (0..300u32)
        .map(|index| (index * 7919 % 251) as u8)
        .collect();
    std::fs::write(path, bytes).expect("write");
}

fn changed_base_offset_digit(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read");
    let changed = text.replace("\"base_offset\": 1000", "\"base_offset\": 1001");
    assert_ne!(changed, text, "the metadata names base offset 1000");
    std::fs::write(path, changed).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_meta_of_a_sealed_segment_is_restored_from_its_copy() {
    one_garbage_meta_copy(State::Sealed, random_bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_meta_of_a_checkpointed_segment_is_restored_from_its_copy() {
    one_garbage_meta_copy(State::Checkpointed, random_bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_digit_in_the_meta_is_detected_and_restored() {
    one_garbage_meta_copy(State::Sealed, changed_base_offset_digit).await;
    one_garbage_meta_copy(State::Checkpointed, changed_base_offset_digit).await;
}

async fn both_meta_copies_garbage(state: State) {
    let directory = tempfile::tempdir().expect("temp dir");
    write_segment(directory.path(), state).await;
    let dir = segments_dir(directory.path());
    random_bytes(&segment::meta_path(&dir, SEGMENT));
    changed_base_offset_digit(&segment::meta_copy_path(&dir, SEGMENT));
    let (storage, report) = Storage::open(directory.path(), options()).expect("open");
    assert_eq!(report.damaged_segments.len(), 1, "{report:?}");
    drop(storage);
    let needle = format!("segment {SEGMENT}");
    check_everywhere(directory.path(), |storage| {
        let needle = needle.clone();
        async move {
            let damaged = storage.damaged_segments();
            assert_eq!(damaged.len(), 1);
            assert_eq!(damaged[0].segment_id, SEGMENT);
            assert!(damaged[0].detail.contains("checksum"), "{damaged:?}");
            assert!(storage.list_segments().is_empty());
            assert_damaged_error(storage.segment_status(SEGMENT), &needle);
            assert_damaged_error(storage.read(SEGMENT, BASE, 0, 0), &needle);
            assert_damaged_error(storage.find_offset(SEGMENT, 0), &needle);
            assert_damaged_error(storage.seal_segment(SEGMENT, 9).await, &needle);
            assert_damaged_error(
                storage.append(SEGMENT, 5, make_batch(BASE, 1, 1)).await,
                &needle,
            );
            for base_offset in [0, BASE] {
                let recreate = NewSegment {
                    segment_id: SEGMENT,
                    topic: "orders".to_string(),
                    partition: 3,
                    base_offset,
                    writer_epoch: 5,
                    durability: Durability::Fsync,
                };
                assert_damaged_error(storage.create_segment(recreate).await, &needle);
            }
        }
    })
    .await;
    // The files are kept for inspection.
    assert!(
        std::fs::metadata(log_file(directory.path()))
            .expect("log kept")
            .len()
            > 0
    );
    assert!(segment::meta_path(&dir, SEGMENT).exists());
    // Deleting it is an explicit decision, and then the id is free.
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    storage.delete_segment(SEGMENT).await.expect("delete");
    assert!(storage.damaged_segments().is_empty());
    assert!(!log_file(directory.path()).exists());
    assert_eq!(
        storage.segment_status(SEGMENT).expect_err("gone").code(),
        ErrorCode::UnknownSegment
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_meta_copies_garbage_hold_a_sealed_segment_as_damaged() {
    both_meta_copies_garbage(State::Sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_meta_copies_garbage_hold_a_checkpointed_segment_as_damaged() {
    both_meta_copies_garbage(State::Checkpointed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_beyond_the_checkpointed_end_is_still_cut() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_segment(directory.path(), State::Checkpointed).await;
    let path = log_file(directory.path());
    let durable_length = std::fs::metadata(&path).expect("stat").len();
    // Half a batch past the checkpointed end: never acknowledged.
    let torn = make_batch(END, PER_BATCH as u32, 1);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&path, bytes).expect("write");
    let (storage, report) = Storage::open(directory.path(), options()).expect("open");
    assert_eq!(
        report.truncated_segment_tails,
        vec![(SEGMENT, (torn.len() / 2) as u64)]
    );
    let status = storage.segment_status(SEGMENT).expect("status");
    assert_eq!((status.end_offset, status.corrupt_from_offset), (END, None));
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        durable_length
    );
    // Writes continue at the end.
    storage
        .append(SEGMENT, 5, make_batch(END, 1, 1))
        .await
        .expect("append");
    assert_reads(&storage, &written, END - PER_BATCH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_lost_beyond_the_checkpoint_is_refilled_from_the_journal() {
    let directory = tempfile::tempdir().expect("temp dir");
    write_segment(directory.path(), State::Checkpointed).await;
    let path = log_file(directory.path());
    let durable_length = std::fs::metadata(&path).expect("stat").len();
    {
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        for base_offset in (END..END + 100).step_by(PER_BATCH as usize) {
            storage
                .append(SEGMENT, 5, make_batch(base_offset, PER_BATCH as u32, 1))
                .await
                .expect("append");
        }
    }
    // The unsynced data never reached the file (journaled only).
    truncate(&path, durable_length + 30);
    let (storage, report) = Storage::open(directory.path(), options()).expect("open");
    let status = storage.segment_status(SEGMENT).expect("status");
    assert_eq!(
        (status.end_offset, status.corrupt_from_offset),
        (END + 100, None),
        "{report:?}"
    );
    assert!(!storage
        .read(SEGMENT, END + 90, 0, 0)
        .expect("read")
        .batches
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_sealed_segment_is_refilled_from_the_journal_when_it_holds_the_data() {
    let directory = tempfile::tempdir().expect("temp dir");
    {
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        storage
            .create_segment(super::tests::new_segment(SEGMENT, 0))
            .await
            .expect("create");
        for base_offset in (0..200).step_by(PER_BATCH as usize) {
            storage
                .append(SEGMENT, 5, make_batch(base_offset, PER_BATCH as u32, 1))
                .await
                .expect("append");
        }
        storage.seal_segment(SEGMENT, 6).await.expect("seal");
        // No checkpoint: the journal holds every batch.
    }
    truncate(&log_file(directory.path()), 100);
    let (storage, report) = Storage::open(directory.path(), options()).expect("open");
    let status = storage.segment_status(SEGMENT).expect("status");
    assert_eq!(
        (status.end_offset, status.corrupt_from_offset),
        (200, None),
        "{report:?}"
    );
    assert!(report.repaired_segments.contains(&SEGMENT), "{report:?}");
    assert!(!storage
        .read(SEGMENT, 190, 0, 0)
        .expect("read")
        .batches
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_file_is_one_damaged_range_up_to_the_recorded_end() {
    for state in [State::Sealed, State::Checkpointed] {
        let directory = tempfile::tempdir().expect("temp dir");
        write_segment(directory.path(), state).await;
        std::fs::remove_file(log_file(directory.path())).expect("remove");
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        let status = storage.segment_status(SEGMENT).expect("status");
        assert_eq!(
            (status.end_offset, status.corrupt_from_offset),
            (END, Some(BASE)),
            "{state:?}"
        );
        assert_damaged_error(storage.read(SEGMENT, BASE, 0, 0), "truncated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_end_of_a_segment_with_unusable_metadata_is_not_forgotten() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_segment(directory.path(), State::Checkpointed).await;
    let dir = segments_dir(directory.path());
    let intact = std::fs::read(segment::meta_path(&dir, SEGMENT)).expect("read");
    random_bytes(&segment::meta_path(&dir, SEGMENT));
    random_bytes(&segment::meta_copy_path(&dir, SEGMENT));
    {
        // Opened (and checkpointed) while the metadata is unusable.
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        assert_eq!(storage.damaged_segments().len(), 1);
        storage.checkpoint().await.expect("checkpoint");
    }
    // An operator restores the metadata; the log lost its tail meanwhile.
    std::fs::write(segment::meta_path(&dir, SEGMENT), &intact).expect("write");
    let last_whole = BASE + 3000;
    truncate(&log_file(directory.path()), written.at(last_whole).1 + 10);
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    assert!(storage.damaged_segments().is_empty());
    assert_damaged_range(&storage, &written, (last_whole, END)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_segment_of_an_older_version_gets_its_end_recorded_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    let written = write_segment(directory.path(), State::Sealed).await;
    let dir = segments_dir(directory.path());
    // Metadata as an older version wrote it: no end, no checksum, one copy.
    let old = SegmentMeta {
        end_offset: None,
        size_bytes: None,
        ..crate::segment_meta::decode_meta(
            SEGMENT,
            &std::fs::read(segment::meta_path(&dir, SEGMENT)).expect("read"),
        )
        .expect("decode")
    };
    std::fs::write(
        segment::meta_path(&dir, SEGMENT),
        serde_json::to_vec(&old).expect("encode"),
    )
    .expect("write");
    std::fs::remove_file(segment::meta_copy_path(&dir, SEGMENT)).expect("remove");
    drop(Storage::open(directory.path(), options()).expect("open"));
    for path in [
        segment::meta_path(&dir, SEGMENT),
        segment::meta_copy_path(&dir, SEGMENT),
    ] {
        let meta = crate::segment_meta::decode_meta(SEGMENT, &std::fs::read(path).expect("read"))
            .expect("decode");
        assert_eq!(meta.end_offset, Some(END));
    }
    let last_whole = BASE + 100;
    truncate(&log_file(directory.path()), written.at(last_whole).1 + 5);
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    assert_damaged_range(&storage, &written, (last_whole, END)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_copied_into_a_sealed_segment_is_covered_by_the_checkpoint() {
    let directory = tempfile::tempdir().expect("temp dir");
    let copied_end = 200;
    let cut_at;
    {
        let (storage, _) = Storage::open(directory.path(), options()).expect("open");
        storage
            .create_segment(super::tests::new_segment(SEGMENT, 0))
            .await
            .expect("create");
        storage
            .append(SEGMENT, 5, make_batch(0, 100, 1))
            .await
            .expect("append");
        storage.seal_segment(SEGMENT, 6).await.expect("seal");
        cut_at = storage.segment_status(SEGMENT).expect("status").size_bytes;
        let copied = make_batch(100, 100, 1);
        let status = storage
            .recovery_append(SEGMENT, 6, copied)
            .await
            .expect("copy");
        assert_eq!(status.end_offset, copied_end);
        storage.checkpoint().await.expect("checkpoint");
    }
    truncate(&log_file(directory.path()), cut_at);
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    let status = storage.segment_status(SEGMENT).expect("status");
    assert_eq!(
        (status.end_offset, status.corrupt_from_offset),
        (copied_end, Some(100))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_segment_whose_metadata_files_are_gone_is_damaged_not_unknown() {
    let directory = tempfile::tempdir().expect("temp dir");
    write_segment(directory.path(), State::Checkpointed).await;
    let dir = segments_dir(directory.path());
    std::fs::remove_file(segment::meta_path(&dir, SEGMENT)).expect("remove");
    std::fs::remove_file(segment::meta_copy_path(&dir, SEGMENT)).expect("remove");
    let needle = format!("segment {SEGMENT}");
    check_everywhere(directory.path(), |storage| {
        let needle = needle.clone();
        async move {
            assert_eq!(storage.damaged_segments().len(), 1);
            assert!(storage.damaged_segments()[0].detail.contains("missing"));
            assert_damaged_error(storage.segment_status(SEGMENT), &needle);
            let recreate = super::tests::new_segment(SEGMENT, 0);
            assert_damaged_error(storage.create_segment(recreate).await, &needle);
        }
    })
    .await;
    assert!(log_file(directory.path()).exists(), "the log is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_metadata_copy_of_an_older_version_is_written_without_alarm() {
    let directory = tempfile::tempdir().expect("temp dir");
    write_segment(directory.path(), State::Checkpointed).await;
    let dir = segments_dir(directory.path());
    std::fs::remove_file(segment::meta_copy_path(&dir, SEGMENT)).expect("remove");
    let (_storage, report) = Storage::open(directory.path(), options()).expect("open");
    assert!(report.is_clean(), "{report:?}");
    assert!(segment::meta_copy_path(&dir, SEGMENT).exists());
}
