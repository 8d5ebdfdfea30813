//! Tests of the engine as a whole, through the [`Storage`] API, and the
//! helpers the stages' own tests share.

use super::*;
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
use sluice_proto::ErrorCode;
use std::time::Instant;

pub(super) fn make_batch(base_offset: u64, records: u32, timestamp_ms: i64) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for index in 0..records {
        builder.push(&RecordData {
            key: None,
            value: Some(Bytes::from(format!("value-{base_offset}-{index}"))),
            headers: Vec::new(),
            tags: Vec::new(),
            timestamp_ms: Some(timestamp_ms),
        });
    }
    let mut bytes = builder.build().to_vec();
    batch::assign(&mut bytes, base_offset, 1);
    Bytes::from(bytes)
}

pub(super) fn new_segment(segment_id: u64, base_offset: u64) -> NewSegment {
    NewSegment {
        segment_id,
        topic: "orders".to_string(),
        partition: 3,
        base_offset,
        writer_epoch: 5,
        durability: Durability::Fsync,
    }
}

pub(super) fn options() -> StorageOptions {
    StorageOptions {
        index_interval_bytes: 512,
        checkpoint_interval_ms: 3_600_000,
        ..StorageOptions::default()
    }
}

/// A storage opened with `options` in a new temporary directory (kept
/// alive by the returned guard), holding segment 1 at base offset 0 as
/// [`new_segment`] describes it.
pub(super) async fn storage_with_segment_one(
    options: StorageOptions,
) -> (tempfile::TempDir, Storage) {
    let directory = tempfile::tempdir().expect("temp dir");
    let storage = open_with_segment_one(directory.path(), options).await;
    (directory, storage)
}

/// A storage opened with `options` in `directory`, with segment 1 created
/// (idempotent if it is there already).
pub(super) async fn open_with_segment_one(directory: &Path, options: StorageOptions) -> Storage {
    let (storage, _) = Storage::open(directory, options).expect("open");
    storage
        .create_segment(new_segment(1, 0))
        .await
        .expect("create");
    storage
}

#[tokio::test]
async fn segment_files_grow_in_preallocated_chunks_released_at_seal() {
    use std::os::unix::fs::MetadataExt;
    let directory = tempfile::tempdir().expect("temp dir");
    let chunk_bytes = 4 * 1024 * 1024;
    let (storage, _) = Storage::open(
        directory.path(),
        StorageOptions {
            segment_preallocate_bytes: chunk_bytes,
            ..options()
        },
    )
    .expect("open");
    storage
        .create_segment(new_segment(1, 0))
        .await
        .expect("create");
    let mut data_bytes = 0u64;
    for offset in 0..10 {
        let batch = make_batch(offset, 1, 1000);
        data_bytes += batch.len() as u64;
        storage.append(1, 5, batch).await.expect("append");
    }
    let path = segment::log_path(&directory.path().join(SEGMENTS_DIR), 1);
    let stat = std::fs::metadata(&path).expect("stat");
    assert_eq!(stat.len(), data_bytes, "the file length is the data length");
    assert!(
        stat.blocks() * 512 >= chunk_bytes,
        "segment blocks must be preallocated with fallocate: {} bytes allocated; does the temp dir's file system support fallocate?",
        stat.blocks() * 512
    );
    // Reserved blocks outlive the process; the next one releases them
    // at the seal although it reserved nothing itself.
    drop(storage);
    let (storage, report) = Storage::open(
        directory.path(),
        StorageOptions {
            segment_preallocate_bytes: chunk_bytes,
            ..options()
        },
    )
    .expect("reopen");
    assert!(report.is_clean(), "{report:?}");
    storage.seal_segment(1, 5).await.expect("seal");
    let stat = std::fs::metadata(&path).expect("stat");
    assert_eq!(stat.len(), data_bytes);
    assert!(
        stat.blocks() * 512 < chunk_bytes,
        "sealing releases the unused preallocation: {} bytes allocated",
        stat.blocks() * 512
    );
    let read = storage.read(1, 0, 0, 0).expect("read");
    assert_eq!(read.segment_end_offset, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_appends_are_readable_when_acknowledged_and_survive_checkpoints_and_a_crash() {
    let directory = tempfile::tempdir().expect("temp dir");
    // Small journal files: many rolls and checkpoints while groups are
    // between the writer and the applier.
    let busy = StorageOptions {
        journal_file_max_bytes: 16 * 1024,
        apply_queue_max_groups: 2,
        ..options()
    };
    let segments = 4u64;
    let appends_per_segment = 150u64;
    {
        let (storage, _) = Storage::open(directory.path(), busy.clone()).expect("open");
        for segment_id in 0..segments {
            storage
                .create_segment(new_segment(segment_id, 0))
                .await
                .expect("create");
        }
        let checkpointer = {
            let storage = storage.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    storage.checkpoint().await.expect("checkpoint");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for segment_id in 0..segments {
            let storage = storage.clone();
            tasks.push(tokio::spawn(async move {
                let (sender, mut receiver) = mpsc::channel(32);
                let reader_storage = storage.clone();
                let waiter = tokio::spawn(async move {
                    while let Some((offset, batch, pending)) = receiver.recv().await {
                        let pending: PendingAppend = pending;
                        let batch: Bytes = batch;
                        assert_eq!(pending.wait().await.expect("durable"), offset + 1);
                        // Acknowledged means applied: a read sees it.
                        let read = reader_storage
                            .read(segment_id, offset, 0, offset + 1)
                            .expect("read after acknowledgement");
                        assert_eq!(read.batches, batch);
                    }
                });
                for offset in 0..appends_per_segment {
                    let batch = make_batch(offset, 1, 1000);
                    let pending = storage
                        .submit_append(segment_id, 5, batch.clone())
                        .await
                        .expect("submit");
                    sender
                        .send((offset, batch, pending))
                        .await
                        .expect("waiter alive");
                }
                drop(sender);
                waiter.await.expect("waiter");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        checkpointer.await.expect("checkpointer");
        let stats = storage.journal_stats();
        assert!(stats.checkpoints.load(Ordering::SeqCst) >= 20);
        // Dropped without close: a crash.
    }
    let (storage, report) = Storage::open(directory.path(), busy).expect("reopen");
    assert!(report.is_clean(), "{report:?}");
    for segment_id in 0..segments {
        assert_eq!(
            storage
                .segment_status(segment_id)
                .expect("status")
                .end_offset,
            appends_per_segment
        );
        for offset in 0..appends_per_segment {
            let read = storage
                .read(segment_id, offset, 0, offset + 1)
                .expect("read");
            assert_eq!(read.batches, make_batch(offset, 1, 1000));
        }
    }
}

#[test]
fn a_directory_is_used_by_one_storage_at_a_time() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    let Err(error) = Storage::open(directory.path(), options()) else {
        panic!("a second storage opened the same directory");
    };
    assert!(error.to_string().contains("locked"), "{error}");
    drop(storage);
    Storage::open(directory.path(), options()).expect("open after the first closed");
}

#[tokio::test]
async fn append_validation_errors() {
    let directory = tempfile::tempdir().expect("temp dir");
    let options = StorageOptions {
        max_batch_bytes: 4096,
        ..options()
    };
    let (storage, _) = Storage::open(directory.path(), options).expect("open");
    storage
        .create_segment(new_segment(1, 0))
        .await
        .expect("create");
    storage
        .append(1, 5, make_batch(0, 2, 1))
        .await
        .expect("append");

    let wrong_offset = storage
        .append(1, 5, make_batch(5, 1, 1))
        .await
        .expect_err("gap");
    assert_eq!(wrong_offset.code(), ErrorCode::InvalidArgument);
    assert!(wrong_offset.to_string().contains("end 2"), "{wrong_offset}");

    let mut corrupt = make_batch(2, 1, 1).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let bad_crc = storage
        .append(1, 5, Bytes::from(corrupt))
        .await
        .expect_err("crc");
    assert_eq!(bad_crc.code(), ErrorCode::CorruptBatch);

    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(&RecordData {
        key: None,
        value: Some(Bytes::from(vec![0u8; 8192])),
        headers: Vec::new(),
        tags: Vec::new(),
        timestamp_ms: Some(1),
    });
    let mut large = builder.build().to_vec();
    batch::assign(&mut large, 2, 1);
    let too_large = storage
        .append(1, 5, Bytes::from(large))
        .await
        .expect_err("size");
    assert_eq!(too_large.code(), ErrorCode::TooLarge);

    let unknown = storage
        .append(9, 5, make_batch(0, 1, 1))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), ErrorCode::UnknownSegment);

    let fenced = storage
        .append(1, 4, make_batch(2, 1, 1))
        .await
        .expect_err("fenced");
    assert_eq!(fenced.code(), ErrorCode::Fenced);
    // None of the refusals moved the end.
    assert_eq!(
        storage
            .append(1, 5, make_batch(2, 1, 1))
            .await
            .expect("append"),
        3
    );
}

/// Offsets at the edge of the range (the overflow a client could once
/// cause by creating a segment near `u64::MAX`): the base offset of a
/// segment and of a batch is at most `MAX_OFFSET`, so no end overflows.
#[tokio::test]
async fn offsets_beyond_the_offset_range_are_refused_and_ends_never_overflow() {
    use sluice_proto::limits::MAX_OFFSET;
    let directory = tempfile::tempdir().expect("temp dir");
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    for base_offset in [MAX_OFFSET + 1, u64::MAX] {
        let refused = storage
            .create_segment(new_segment(1, base_offset))
            .await
            .expect_err("beyond the offset range");
        assert_eq!(refused.code(), ErrorCode::InvalidArgument, "{refused}");
    }
    // The last valid base offset: a batch there ends past it, and the
    // next one would start beyond the range, which parsing refuses.
    storage
        .create_segment(new_segment(2, MAX_OFFSET))
        .await
        .expect("the largest offset is a valid base");
    storage
        .append(2, 5, make_batch(MAX_OFFSET, 3, 1))
        .await
        .expect("append at the largest offset");
    let mut beyond = make_batch(0, 1, 1).to_vec();
    sluice_proto::batch::assign(&mut beyond, MAX_OFFSET + 3, 5);
    let refused = storage
        .append(2, 5, Bytes::from(beyond))
        .await
        .expect_err("a batch beyond the offset range");
    assert_eq!(refused.code(), ErrorCode::CorruptBatch, "{refused}");
    assert!(
        storage.is_healthy(),
        "refusing bad input does not latch the store"
    );
}

#[tokio::test]
async fn seal_fences_and_is_idempotent_and_durable() {
    let directory = tempfile::tempdir().expect("temp dir");
    {
        let storage = open_with_segment_one(directory.path(), options()).await;
        // Creating again with the same identity is fine; otherwise not.
        storage
            .create_segment(new_segment(1, 0))
            .await
            .expect("idempotent");
        let conflict = storage
            .create_segment(new_segment(1, 10))
            .await
            .expect_err("conflict");
        assert_eq!(conflict.code(), ErrorCode::Conflict);
        storage
            .append(1, 5, make_batch(0, 4, 50))
            .await
            .expect("append");
        let status = storage.seal_segment(1, 9).await.expect("seal");
        assert!(status.sealed);
        assert_eq!(status.end_offset, 4);
        assert_eq!(status.writer_epoch, 9);
        assert_eq!(status.max_timestamp_ms, 50);
        let again = storage.seal_segment(1, 3).await.expect("seal again");
        assert_eq!(again, status);
        let sealed = storage
            .append(1, 9, make_batch(4, 1, 1))
            .await
            .expect_err("sealed");
        assert_eq!(sealed.code(), ErrorCode::SegmentSealed);
        // Dropped without close: the seal must already be durable.
    }
    let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
    let status = storage.segment_status(1).expect("status");
    assert!(status.sealed);
    assert_eq!(status.writer_epoch, 9);
    assert_eq!(status.end_offset, 4);
}

#[tokio::test]
async fn recovery_append_fills_a_sealed_copy_for_the_fencing_owner_only() {
    let directory = tempfile::tempdir().expect("temp dir");
    let tail = [make_batch(2, 2, 20), make_batch(4, 3, 30)].concat();
    {
        let storage = open_with_segment_one(directory.path(), options()).await;
        storage
            .append(1, 5, make_batch(0, 2, 10))
            .await
            .expect("append");
        storage.seal_segment(1, 7).await.expect("seal");
        // The previous owner's epoch is below the fence: refused.
        let stale = storage
            .recovery_append(1, 6, Bytes::from(tail.clone()))
            .await
            .expect_err("stale owner");
        assert_eq!(stale.code(), ErrorCode::Fenced);
        // The fencing owner copies the batches the copy lacks, starting
        // with one it already holds (skipped).
        let batches = [make_batch(0, 2, 10).to_vec(), tail.clone()].concat();
        let status = storage
            .recovery_append(1, 7, Bytes::from(batches.clone()))
            .await
            .expect("copy");
        assert_eq!(status.end_offset, 7);
        assert!(status.sealed, "still sealed: the writer stays fenced");
        // Copying again changes nothing.
        let again = storage
            .recovery_append(1, 7, Bytes::from(batches))
            .await
            .expect("copy again");
        assert_eq!(again.end_offset, 7);
        // A gap is refused.
        let gap = storage
            .recovery_append(1, 7, make_batch(9, 1, 1))
            .await
            .expect_err("gap");
        assert_eq!(gap.code(), ErrorCode::InvalidArgument);
        // The writer is still refused.
        let writer = storage
            .append(1, 5, make_batch(7, 1, 1))
            .await
            .expect_err("sealed");
        assert_eq!(writer.code(), ErrorCode::SegmentSealed);
    }
    // Copies are durable and replay after a restart.
    let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
    let status = storage.segment_status(1).expect("status");
    assert_eq!(status.end_offset, 7);
    assert!(status.sealed);
    let read = storage.read(1, 4, 0, 0).expect("read");
    assert_eq!(read.batches.len(), make_batch(4, 3, 30).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_racing_seal_is_either_included_or_refused() {
    let (_directory, storage) = storage_with_segment_one(options()).await;
    let appender = {
        let storage = storage.clone();
        tokio::spawn(async move {
            let mut acknowledged_end = 0;
            for offset in 0..200 {
                match storage.append(1, 5, make_batch(offset, 1, 1)).await {
                    Ok(end) => acknowledged_end = end,
                    Err(error) => {
                        assert_eq!(error.code(), ErrorCode::SegmentSealed);
                        break;
                    }
                }
            }
            acknowledged_end
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let status = storage.seal_segment(1, 6).await.expect("seal");
    let acknowledged_end = appender.await.expect("task");
    assert_eq!(status.end_offset, acknowledged_end);
}

#[tokio::test]
async fn delete_removes_durably() {
    let directory = tempfile::tempdir().expect("temp dir");
    {
        let storage = open_with_segment_one(directory.path(), options()).await;
        storage
            .create_segment(new_segment(2, 0))
            .await
            .expect("create");
        storage
            .append(1, 5, make_batch(0, 1, 1))
            .await
            .expect("append");
        storage.delete_segment(1).await.expect("delete");
        assert_eq!(storage.list_segments().len(), 1);
    }
    let (storage, _) = Storage::open(directory.path(), options()).expect("reopen");
    let listed: Vec<u64> = storage
        .list_segments()
        .iter()
        .map(|s| s.segment_id)
        .collect();
    assert_eq!(listed, vec![2]);
}

/// Obsolete journal files come back as the next ones, not zeroed (ADR
/// 0017); after a crash, recovery finds exactly the records written since,
/// never the stale ones they still hold (here: records of a segment that
/// was deleted, behind the few new records of a reused file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_journal_files_replay_only_their_new_records_after_a_crash() {
    let directory = tempfile::tempdir().expect("temp dir");
    let journal_dir = directory.path().join(JOURNAL_DIR);
    let small_journal = StorageOptions {
        journal_file_max_bytes: 32 * 1024,
        ..options()
    };
    let count_ready_spares = || {
        std::fs::read_dir(&journal_dir)
            .expect("list")
            .filter(|entry| {
                let name = entry.as_ref().expect("entry").file_name();
                let name = name.to_str().expect("utf-8").to_string();
                name.starts_with("spare-") && name.ends_with(".ready")
            })
            .count()
    };
    let mut end_offset = 0u64;
    {
        let (storage, _) = Storage::open(directory.path(), small_journal.clone()).expect("open");
        storage
            .create_segment(new_segment(1, 0))
            .await
            .expect("create");
        for index in 0..30 {
            storage
                .append(1, 5, make_batch(index * 200, 200, 1))
                .await
                .expect("append");
        }
        storage.delete_segment(1).await.expect("delete");
        storage.checkpoint().await.expect("checkpoint");
        let deadline = Instant::now() + Duration::from_secs(10);
        while count_ready_spares() < crate::journal_spares::MAX_SPARES {
            assert!(Instant::now() < deadline, "no spares kept");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        storage
            .create_segment(new_segment(2, 0))
            .await
            .expect("create");
        // Until a roll took a spare, then two small records at the
        // start of that reused file, before the crash.
        while count_ready_spares() == crate::journal_spares::MAX_SPARES {
            assert!(end_offset < 200 * 100, "no roll reused a spare");
            storage
                .append(2, 5, make_batch(end_offset, 200, 3))
                .await
                .expect("append");
            end_offset += 200;
        }
        for _ in 0..2 {
            storage
                .append(2, 5, make_batch(end_offset, 1, 3))
                .await
                .expect("append");
            end_offset += 1;
        }
        // Dropped without close: like a crash, the journal holds it all.
    }
    let newest = crate::journal::list_journal_files(&journal_dir)
        .expect("list")
        .pop()
        .expect("a journal file");
    let bytes = std::fs::read(crate::journal::journal_file_path(&journal_dir, newest))
        .expect("read the reused file");
    let first = crate::journal::decode_any_record(&bytes).expect("a first record");
    let accept = crate::journal::Accept::Stamped(first.stamp.expect("version 2"));
    let mut records_end = 0;
    while let Ok(record) = crate::journal::decode_record(&bytes[records_end..], accept) {
        records_end += record.encoded_bytes;
    }
    assert!(
        !crate::journal::is_zero_fill(&bytes[records_end..]),
        "the reused file still holds what its earlier use wrote"
    );
    let (storage, report) = Storage::open(directory.path(), small_journal).expect("reopen");
    assert!(report.is_clean(), "{report:?}");
    assert!(
        storage.segment_status(1).is_err(),
        "the deleted segment stays deleted"
    );
    assert_eq!(
        storage.segment_status(2).expect("status").end_offset,
        end_offset
    );
    let last = storage
        .read(2, end_offset - 1, 0, end_offset)
        .expect("read");
    assert_eq!(last.batches, make_batch(end_offset - 1, 1, 3));
}

/// Creates of different segments do not wait for each other (a broker
/// taking over 1,000 partitions creates 1,000 segments at once); creates
/// and deletes of one segment id still go one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_of_different_segments_do_not_wait_for_each_other() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (storage, _) = Storage::open(directory.path(), options()).expect("open");
    let stripes = ADMIN_LOCK_STRIPES as u64;
    // As if a create of segment 1 were in progress.
    let held = storage.admin_lock(1).lock().await;
    tokio::time::timeout(
        Duration::from_secs(10),
        storage.create_segment(new_segment(2, 0)),
    )
    .await
    .expect("segment 2 was created while segment 1's create was in progress")
    .expect("create 2");
    // Segment 1 + stripes shares segment 1's lock: it waits.
    let same_stripe = storage.create_segment(new_segment(1 + stripes, 0));
    tokio::pin!(same_stripe);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut same_stripe)
            .await
            .is_err(),
        "a create went ahead of another of its stripe"
    );
    drop(held);
    same_stripe
        .await
        .expect("create after the lock is released");
    // Concurrent creates of one id agree: the first one's partition wins,
    // the same create again is a no-op, another partition a conflict.
    let partitions: Vec<u32> = (0..8).map(|index| index % 2).collect();
    let racing = futures::future::join_all(partitions.iter().map(|partition| {
        let mut new = new_segment(3, 0);
        new.partition = *partition;
        storage.create_segment(new)
    }))
    .await;
    let created = storage.segment(3).expect("segment 3").partition;
    for (partition, result) in partitions.into_iter().zip(racing) {
        if partition == created {
            result.expect("the same create again is a no-op");
        } else {
            let error = result.expect_err("another partition under the same id");
            assert_eq!(error.code(), ErrorCode::Conflict, "{error}");
        }
    }
}
