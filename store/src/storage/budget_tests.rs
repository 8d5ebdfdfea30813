//! Engine tests of the budget of open segment files: more segments than
//! the budget are written, read, recovered and deleted, and the files the
//! process really holds open (`/proc/self/fd`) stay within the budget.

use super::tests::{make_batch, new_segment, options, storage_with_segment_one};
use super::*;
use sluice_proto::ErrorCode;

const BUDGET: u64 = 4;
const SEGMENTS: u64 = 3 * BUDGET;

fn budgeted() -> StorageOptions {
    StorageOptions {
        max_open_segment_files: BUDGET,
        ..options()
    }
}

/// Segment log files under `directory` this process has open now.
fn open_segment_fds(directory: &Path) -> usize {
    let segments = directory.join(SEGMENTS_DIR);
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| {
            target.starts_with(&segments) && target.extension().is_some_and(|ext| ext == "log")
        })
        .count()
}

/// Creates `SEGMENTS` segments and appends `batches` one-record batches to
/// each, round robin; every segment `id` holds offsets `id*1000..`.
async fn fill(storage: &Storage, batches: u64) {
    for segment_id in 0..SEGMENTS {
        storage
            .create_segment(new_segment(segment_id, segment_id * 1000))
            .await
            .expect("create");
    }
    for index in 0..batches {
        for segment_id in 0..SEGMENTS {
            let offset = segment_id * 1000 + index;
            storage
                .append(segment_id, 5, make_batch(offset, 1, 1000 + index as i64))
                .await
                .expect("append");
        }
    }
}

fn assert_reads_back(storage: &Storage, directory: &Path, batches: u64) {
    for round in 0..3 {
        for segment_id in 0..SEGMENTS {
            let base = segment_id * 1000;
            let read = storage.read(segment_id, base, 0, 0).expect("read");
            let expected: Vec<u8> = (0..batches)
                .flat_map(|index| make_batch(base + index, 1, 1000 + index as i64).to_vec())
                .collect();
            assert_eq!(read.batches.to_vec(), expected, "segment {segment_id}");
            let found = storage.find_offset(segment_id, 1001).expect("find");
            assert_eq!(found, Some(base + 1));
            // Counted before the status, which closes unused files too.
            let fds = open_segment_fds(directory) as u64;
            assert!(
                fds <= BUDGET,
                "round {round}, segment {segment_id}: {fds} open"
            );
            let status = storage.file_budget();
            assert!(status.open_segment_files <= BUDGET, "{status:?}");
        }
    }
}

#[tokio::test]
async fn reads_of_more_sealed_segments_than_the_budget_stay_within_it() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (storage, _) = Storage::open(directory.path(), budgeted()).expect("open");
    fill(&storage, 5).await;
    for segment_id in 0..SEGMENTS {
        storage.seal_segment(segment_id, 5).await.expect("seal");
    }
    storage.checkpoint().await.expect("checkpoint");
    assert_reads_back(&storage, directory.path(), 5);
    let status = storage.file_budget();
    assert_eq!(status.max_open_segment_files, BUDGET);
    assert_eq!(status.refused_opens, 0);
}

#[tokio::test]
async fn writers_beyond_the_budget_are_fsynced_early_so_their_files_close() {
    let directory = tempfile::tempdir().expect("temp dir");
    // No periodic checkpoint during the test: only the budget starts one.
    let (storage, _) = Storage::open(directory.path(), budgeted()).expect("open");
    fill(&storage, 3).await;
    sluice_proto::test_util::eventually_true(
        "the files kept for unsynced writes to be fsynced and closed",
        Duration::from_secs(10),
        || storage.file_budget().open_segment_files <= BUDGET,
    )
    .await;
    assert!(open_segment_fds(directory.path()) as u64 <= BUDGET);
    // Appends go on after the files were closed, and read back.
    for segment_id in 0..SEGMENTS {
        let offset = segment_id * 1000 + 3;
        storage
            .append(segment_id, 5, make_batch(offset, 1, 1003))
            .await
            .expect("append after close");
    }
    storage.checkpoint().await.expect("checkpoint");
    assert_reads_back(&storage, directory.path(), 4);
}

#[tokio::test]
async fn recovery_of_more_segments_than_the_budget_replays_within_it() {
    let directory = tempfile::tempdir().expect("temp dir");
    {
        // Room for every file: no checkpoint is started by the budget.
        let roomy = StorageOptions {
            max_open_segment_files: SEGMENTS,
            ..options()
        };
        let (storage, _) = Storage::open(directory.path(), roomy).expect("open");
        fill(&storage, 4).await;
        // Dropped without a checkpoint: the journal alone holds the data
        // for recovery to replay.
    }
    // As if the segment files had lost the unsynced writes.
    let segments = directory.path().join(SEGMENTS_DIR);
    for segment_id in 0..SEGMENTS {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(segment::log_path(&segments, segment_id))
            .expect("open");
        file.set_len(0).expect("truncate");
    }
    // Reopened with a smaller budget than the segments replay writes to.
    let (storage, report) = Storage::open(directory.path(), budgeted()).expect("reopen");
    assert!(
        report.journal_batches_reappended >= SEGMENTS * 4,
        "{report:?}"
    );
    assert!(open_segment_fds(directory.path()) as u64 <= BUDGET);
    assert!(storage.file_budget().open_segment_files <= BUDGET);
    assert_reads_back(&storage, directory.path(), 4);
}

#[tokio::test]
async fn a_deleted_and_recreated_segment_never_uses_the_old_file() {
    let (directory, storage) = storage_with_segment_one(budgeted()).await;
    storage
        .append(1, 5, make_batch(0, 2, 1))
        .await
        .expect("append");
    storage.read(1, 0, 0, 0).expect("read");
    storage.delete_segment(1).await.expect("delete");
    assert_eq!(
        storage.read(1, 0, 0, 0).expect_err("deleted").code(),
        ErrorCode::UnknownSegment
    );
    storage
        .create_segment(new_segment(1, 10))
        .await
        .expect("create again");
    storage
        .append(1, 5, make_batch(10, 1, 1))
        .await
        .expect("append");
    storage.checkpoint().await.expect("checkpoint");
    let read = storage.read(1, 10, 0, 0).expect("read");
    assert_eq!(read.batches, make_batch(10, 1, 1));
    let on_disk = std::fs::read(segment::log_path(&directory.path().join(SEGMENTS_DIR), 1))
        .expect("read the file");
    assert_eq!(on_disk, make_batch(10, 1, 1).to_vec());
}
