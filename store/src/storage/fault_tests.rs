//! The engine under injected file-system faults (`crate::fault`): a full
//! disk, I/O errors and no file handles left, on the journal, the segment
//! files and the checkpoint. Each test checks what the writer is told
//! (`WritesSuspended`: never visible; `OutcomeUnknown`: visible after the
//! recovery if it reached the disk), that reads go on, that writes resume
//! by themselves once the cause is gone, and that nothing acknowledged is
//! lost, rewound or given a second meaning, also after a reopen.

use super::tests::{make_batch, new_segment, options};
use super::*;
use crate::fault::{self, FileOp};
use sluice_proto::test_util::eventually_true;
use sluice_proto::ErrorCode;
use std::collections::BTreeMap;

const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Every batch of segment `segment_id`, by base offset.
fn read_all(storage: &Storage, segment_id: u64) -> BTreeMap<u64, Bytes> {
    let mut batches = BTreeMap::new();
    let end = storage
        .segment_status(segment_id)
        .expect("status")
        .end_offset;
    let mut offset = storage
        .segment_status(segment_id)
        .expect("status")
        .base_offset;
    while offset < end {
        let outcome = storage.read(segment_id, offset, 0, 0).expect("read");
        for item in BatchIter::new(&outcome.batches) {
            let (position, header, bytes) = item.expect("a whole batch");
            let batch = outcome.batches.slice(position..position + bytes.len());
            offset = header.end_offset();
            batches.insert(header.base_offset, batch);
        }
    }
    batches
}

async fn wait_until_writable(storage: &Storage) {
    eventually_true("the write path recovers", RECOVERY_TIMEOUT, || {
        storage.is_healthy()
    })
    .await;
}

async fn open_with_segment(directory: &Path) -> Storage {
    let (storage, _) = Storage::open(directory, options()).expect("open");
    storage
        .create_segment(new_segment(1, 0))
        .await
        .expect("create");
    storage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_journal_suspends_writes_until_space_returns() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment(directory.path()).await;
    let acknowledged = make_batch(0, 3, 1);
    storage
        .append(1, 5, acknowledged.clone())
        .await
        .expect("append");
    let full = fault::inject(directory.path(), FileOp::Write, libc::ENOSPC, None);
    let failed = storage
        .append(1, 5, make_batch(3, 2, 1))
        .await
        .expect_err("the journal write fails");
    assert_eq!(failed.code(), ErrorCode::OutcomeUnknown, "{failed}");
    // While the disk stays full, writes are refused with the cause and
    // the recovery attempts keep failing; reads go on.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = storage
        .append(1, 5, make_batch(3, 2, 1))
        .await
        .expect_err("suspended");
    assert_eq!(refused.code(), ErrorCode::Unavailable, "{refused}");
    assert!(!storage.is_healthy());
    assert!(storage.write_fault().is_some());
    assert_eq!(read_all(&storage, 1), BTreeMap::from([(0, acknowledged)]));
    drop(full);
    wait_until_writable(&storage).await;
    // Nothing of the failed write reached the journal: the end is where
    // the last acknowledged batch left it, and the log continues there.
    assert_eq!(storage.segment_status(1).expect("status").end_offset, 3);
    storage
        .append(1, 5, make_batch(3, 4, 2))
        .await
        .expect("writes resumed");
    assert_eq!(storage.segment_status(1).expect("status").end_offset, 7);
    assert!(
        storage
            .journal_stats()
            .write_path_recoveries
            .load(Ordering::SeqCst)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_segment_write_is_an_unknown_outcome_that_recovery_makes_visible() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment(directory.path()).await;
    storage
        .append(1, 5, make_batch(0, 3, 1))
        .await
        .expect("append");
    let journaled = make_batch(3, 2, 1);
    let injection = fault::inject(
        &directory.path().join(SEGMENTS_DIR),
        FileOp::Write,
        libc::ENOSPC,
        Some(1),
    );
    let unknown = storage
        .append(1, 5, journaled.clone())
        .await
        .expect_err("the segment write fails");
    assert_eq!(unknown.code(), ErrorCode::OutcomeUnknown, "{unknown}");
    drop(injection);
    wait_until_writable(&storage).await;
    // The batch was in the journal (fsynced): replay applied it, at the
    // offsets it was accepted at.
    let batches = read_all(&storage, 1);
    assert_eq!(batches.get(&3), Some(&journaled));
    storage
        .append(1, 5, make_batch(5, 1, 2))
        .await
        .expect("the log continues after it");
    drop(storage);
    let (reopened, _) = Storage::open(directory.path(), options()).expect("reopen");
    let after = read_all(&reopened, 1);
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), vec![0, 3, 5]);
    assert_eq!(after.get(&3), Some(&journaled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_fsync_leaves_a_consistent_log_that_continues() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment(directory.path()).await;
    storage
        .append(1, 5, make_batch(0, 3, 1))
        .await
        .expect("append");
    let injection = fault::inject(
        &directory.path().join(JOURNAL_DIR),
        FileOp::Sync,
        libc::EIO,
        Some(1),
    );
    let unknown = storage
        .append(1, 5, make_batch(3, 2, 1))
        .await
        .expect_err("the fsync fails");
    assert_eq!(unknown.code(), ErrorCode::OutcomeUnknown, "{unknown}");
    drop(injection);
    wait_until_writable(&storage).await;
    let end = storage.segment_status(1).expect("status").end_offset;
    assert!(end == 3 || end == 5, "end {end}");
    let batches = read_all(&storage, 1);
    assert_eq!(
        batches.keys().last().copied(),
        Some(if end == 5 { 3 } else { 0 })
    );
    storage
        .append(1, 5, make_batch(end, 1, 2))
        .await
        .expect("the log continues at the recovered end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_handles_at_a_checkpoint_skips_it_without_suspending_writes() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment(directory.path()).await;
    storage
        .append(1, 5, make_batch(0, 3, 1))
        .await
        .expect("append");
    let exhausted = fault::inject(
        &directory.path().join(SEGMENTS_DIR),
        FileOp::Open,
        libc::EMFILE,
        None,
    );
    let skipped = storage
        .checkpoint()
        .await
        .expect_err("no handle to fsync the segments directory");
    assert!(matches!(skipped, StoreError::FileLimit { .. }), "{skipped}");
    assert!(
        storage.is_healthy(),
        "a skipped checkpoint suspends nothing"
    );
    storage
        .append(1, 5, make_batch(3, 2, 1))
        .await
        .expect("writes go on");
    drop(exhausted);
    storage
        .checkpoint()
        .await
        .expect("the next checkpoint works");
    drop(storage);
    let (reopened, report) = Storage::open(directory.path(), options()).expect("reopen");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        read_all(&reopened, 1).keys().copied().collect::<Vec<_>>(),
        vec![0, 3]
    );
}

/// A segment file's fsync failing with a file-limit error (no kernel
/// returns that; the point is that the error's kind does not matter)
/// latches like any other failed fsync: the files are no longer marked
/// dirty, so a skipped checkpoint would let a later one cover pages that
/// never reached the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_failed_segment_fsync_suspends_writes_until_recovery() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment(directory.path()).await;
    let first = make_batch(0, 3, 1);
    storage.append(1, 5, first.clone()).await.expect("append");
    let injection = fault::inject(
        &crate::segment::log_path(&directory.path().join(SEGMENTS_DIR), 1),
        FileOp::Sync,
        libc::EMFILE,
        Some(1),
    );
    storage.checkpoint().await.expect_err("the fsync fails");
    drop(injection);
    wait_until_writable(&storage).await;
    assert_eq!(
        storage
            .journal_stats()
            .write_path_recoveries
            .load(Ordering::Relaxed),
        1,
        "a failed segment fsync latches the write path until a recovery"
    );
    let second = make_batch(3, 2, 1);
    storage.append(1, 5, second.clone()).await.expect("append");
    storage.checkpoint().await.expect("checkpoint");
    drop(storage);
    let (reopened, _) = Storage::open(directory.path(), options()).expect("reopen");
    assert_eq!(
        read_all(&reopened, 1),
        BTreeMap::from([(0, first), (3, second)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_segment_fsync_is_never_covered_by_a_later_checkpoint() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment(directory.path()).await;
    let first = make_batch(0, 3, 1);
    storage.append(1, 5, first.clone()).await.expect("append");
    let injection = fault::inject(
        &directory.path().join(SEGMENTS_DIR),
        FileOp::Sync,
        libc::EIO,
        Some(1),
    );
    storage.checkpoint().await.expect_err("the fsync fails");
    drop(injection);
    // The pages may be gone: this write path must not checkpoint again.
    wait_until_writable(&storage).await;
    let second = make_batch(3, 2, 1);
    storage.append(1, 5, second.clone()).await.expect("append");
    storage.checkpoint().await.expect("checkpoint");
    drop(storage);
    let (reopened, _) = Storage::open(directory.path(), options()).expect("reopen");
    assert_eq!(
        read_all(&reopened, 1),
        BTreeMap::from([(0, first), (3, second)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_writes_are_suspended_too_and_resume() {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment(directory.path()).await;
    let full = fault::inject(directory.path(), FileOp::Write, libc::ENOSPC, None);
    storage
        .append(1, 5, make_batch(0, 1, 1))
        .await
        .expect_err("fails");
    for refused in [
        storage
            .create_segment(new_segment(2, 0))
            .await
            .expect_err("create"),
        storage.seal_segment(1, 6).await.expect_err("seal"),
        storage.delete_segment(1).await.expect_err("delete"),
    ] {
        assert_eq!(refused.code(), ErrorCode::Unavailable, "{refused}");
    }
    drop(full);
    wait_until_writable(&storage).await;
    storage
        .create_segment(new_segment(2, 0))
        .await
        .expect("create after recovery");
    storage
        .seal_segment(1, 6)
        .await
        .expect("seal after recovery");
}

/// Writers append to their segments continuously while faults come and
/// go on the journal and the segment files. Afterwards (and after a
/// reopen) every acknowledged batch is there with its bytes at its
/// offsets, no refused (`WritesSuspended`) batch is, and each segment is
/// contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_through_repeated_faults_lose_and_reuse_nothing() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    let segments = 3u64;
    for segment_id in 1..=segments {
        storage
            .create_segment(new_segment(segment_id, 0))
            .await
            .expect("create");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for segment_id in 1..=segments {
        let storage = storage.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            write_until_stopped(&storage, segment_id, &stop).await
        }));
    }
    let faults = [
        (
            directory.path().join(JOURNAL_DIR),
            FileOp::Write,
            libc::ENOSPC,
        ),
        (
            directory.path().join(SEGMENTS_DIR),
            FileOp::Write,
            libc::EIO,
        ),
        (directory.path().join(JOURNAL_DIR), FileOp::Sync, libc::EIO),
    ];
    for (prefix, op, errno) in faults {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let injection = fault::inject(&prefix, op, errno, None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(injection);
        wait_until_writable(&storage).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.push(writer.await.expect("writer"));
    }
    check_outcomes(&storage, &outcomes);
    drop(storage);
    let (reopened, _) = Storage::open(directory.path(), options()).expect("reopen");
    check_outcomes(&reopened, &outcomes);
}

/// What one writer was told: acknowledged batches by base offset, and
/// the batches refused outright.
struct WriterOutcome {
    segment_id: u64,
    acknowledged: BTreeMap<u64, Bytes>,
    refused: Vec<Bytes>,
}

async fn write_until_stopped(
    storage: &Storage,
    segment_id: u64,
    stop: &AtomicBool,
) -> WriterOutcome {
    let mut outcome = WriterOutcome {
        segment_id,
        acknowledged: BTreeMap::new(),
        refused: Vec::new(),
    };
    let mut end = 0u64;
    let mut attempt = 0i64;
    while !stop.load(Ordering::SeqCst) {
        attempt += 1;
        // The timestamp makes every attempt's bytes unique.
        let batch = make_batch(end, 2, attempt);
        match storage.append(segment_id, 5, batch.clone()).await {
            Ok(new_end) => {
                outcome.acknowledged.insert(end, batch);
                end = new_end;
            }
            Err(error) => {
                match error.code() {
                    ErrorCode::Unavailable => outcome.refused.push(batch),
                    ErrorCode::OutcomeUnknown | ErrorCode::InvalidArgument => {}
                    other => panic!("unexpected {other:?}: {error}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let Ok(status) = storage.segment_status(segment_id) {
                    end = status.end_offset;
                }
            }
        }
    }
    outcome
}

fn check_outcomes(storage: &Storage, outcomes: &[WriterOutcome]) {
    for outcome in outcomes {
        let stored = read_all(storage, outcome.segment_id);
        let mut expected_base = 0;
        for (base_offset, batch) in &stored {
            assert_eq!(
                *base_offset, expected_base,
                "segment {} contiguous",
                outcome.segment_id
            );
            expected_base = batch::BatchHeader::parse(batch)
                .expect("header")
                .end_offset();
            assert!(
                !outcome.refused.contains(batch),
                "segment {}: a refused batch at {base_offset} became visible",
                outcome.segment_id
            );
        }
        for (base_offset, batch) in &outcome.acknowledged {
            assert_eq!(
                stored.get(base_offset),
                Some(batch),
                "segment {}: acknowledged batch at {base_offset} lost or replaced",
                outcome.segment_id
            );
        }
        assert!(!outcome.acknowledged.is_empty());
    }
}
