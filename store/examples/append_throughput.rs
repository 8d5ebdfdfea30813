//! Append throughput of the storage engine, without gRPC: opens a
//! `Storage` in a temporary directory and pipelines appends of 100-record
//! × 1 KiB batches (fsync durability, many in flight) into 1 and into 16
//! segments, printing MB/s for each.
//!
//! Run: `cargo run --release -p sluice-store --example append_throughput
//! [MiB per run, default 1024] [directory, default the system temp dir]`.

use bytes::Bytes;
use sluice_proto::batch::{self, BatchBuilder, Compression, RecordData};
use sluice_proto::v1::Durability;
use sluice_store::storage::{NewSegment, Storage, StorageOptions};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Records per batch and bytes per record value, like
/// `sluice bench produce --size 1024 --batch 100`.
const RECORDS_PER_BATCH: usize = 100;
const RECORD_VALUE_BYTES: usize = 1024;
/// Appends submitted but not yet acknowledged, per segment.
const IN_FLIGHT_PER_SEGMENT_MAX: usize = 256;
/// Appends in flight over all segments (the broker keeps a similar window).
const IN_FLIGHT_TOTAL_MAX: usize = 512;

fn template_batch() -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for index in 0..RECORDS_PER_BATCH {
        builder.push(&RecordData {
            key: None,
            value: Some(Bytes::from(vec![
                b'a' + (index % 26) as u8;
                RECORD_VALUE_BYTES
            ])),
            headers: Vec::new(),
            tags: Vec::new(),
            timestamp_ms: Some(1_700_000_000_000),
        });
    }
    builder.build()
}

async fn run_once(parent: &std::path::Path, segments: u64, total_bytes: u64) -> (f64, u64, u64) {
    // Start from a quiet disk: the previous run's dirty pages would
    // otherwise be written back during this one.
    // SAFETY: sync(2) takes no arguments and touches no memory of ours.
    unsafe { libc::sync() };
    let directory = tempfile::tempdir_in(parent).expect("create a temp dir for the benchmark");
    let (storage, _) =
        Storage::open(directory.path(), StorageOptions::default()).expect("open the storage");
    for segment_id in 0..segments {
        storage
            .create_segment(NewSegment {
                segment_id,
                topic: "bench".to_string(),
                partition: segment_id as u32,
                base_offset: 0,
                writer_epoch: 1,
                durability: Durability::Fsync,
            })
            .await
            .expect("create segment");
    }
    let template = template_batch();
    let batch_bytes = template.len() as u64;
    let batches_per_segment = (total_bytes / batch_bytes / segments).max(1);
    let per_segment_window =
        (IN_FLIGHT_TOTAL_MAX / segments as usize).clamp(1, IN_FLIGHT_PER_SEGMENT_MAX);
    let fsyncs_before = storage.journal_stats().fsyncs.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for segment_id in 0..segments {
        let storage = storage.clone();
        let template = template.clone();
        tasks.push(tokio::spawn(async move {
            let (sender, mut receiver) = tokio::sync::mpsc::channel(per_segment_window);
            let waiter = tokio::spawn(async move {
                while let Some(pending) = receiver.recv().await {
                    let pending: sluice_store::storage::PendingAppend = pending;
                    pending.wait().await.expect("append is durable");
                }
            });
            let mut offset = 0u64;
            for _ in 0..batches_per_segment {
                let mut bytes = template.to_vec();
                batch::assign(&mut bytes, offset, 1);
                offset += RECORDS_PER_BATCH as u64;
                let pending = storage
                    .submit_append(segment_id, 1, Bytes::from(bytes))
                    .await
                    .expect("submit append");
                if sender.send(pending).await.is_err() {
                    break;
                }
            }
            drop(sender);
            waiter.await.expect("waiter task");
        }));
    }
    for task in tasks {
        task.await.expect("append task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let written = batches_per_segment * segments * batch_bytes;
    let fsyncs = storage.journal_stats().fsyncs.load(Ordering::Relaxed) - fsyncs_before;
    storage.close().await.expect("close");
    drop(storage);
    (
        written as f64 / elapsed / 1_000_000.0,
        fsyncs,
        batches_per_segment * segments,
    )
}

#[tokio::main]
async fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let mebibytes: u64 = arguments
        .get(1)
        .map(|value| value.parse().expect("first argument: MiB per run"))
        .unwrap_or(1024);
    let parent = arguments
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // A short unreported run first, so the first measured run does not pay
    // for the process's heap and the runtime warming up.
    run_once(&parent, 1, 128 * 1024 * 1024).await;
    for segments in [1u64, 16] {
        let (megabytes_per_second, fsyncs, appends) =
            run_once(&parent, segments, mebibytes * 1024 * 1024).await;
        println!(
            "segments={segments:>2} throughput={megabytes_per_second:>7.1} MB/s appends={appends} fsyncs={fsyncs}"
        );
    }
}
