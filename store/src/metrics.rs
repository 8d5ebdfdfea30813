//! The store's Prometheus series (`sluice_store_…`): journal fsync
//! latency and group-commit size (recorded by the journal writer with
//! atomics), and totals, disk space and open files read when scraped.

use crate::storage::Storage;
use sluice_telemetry::metrics::{CounterFn, GaugeFn, MetricsRegistry};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Registers every store series over `storage` and the file system of
/// `data_dir`.
pub fn register(registry: &MetricsRegistry, storage: &Storage, data_dir: PathBuf) {
    let stats = storage.journal_stats();
    registry.register(
        "sluice_store_journal_fsync_latency_seconds",
        "Journal fsync (fdatasync) latency",
        stats.fsync_latency.clone(),
    );
    registry.register(
        "sluice_store_group_commit_appends",
        "Appends written per journal group commit",
        stats.group_commit_appends.clone(),
    );
    type Total = fn(&Storage) -> u64;
    let totals: [(&str, &str, Total); 5] = [
        (
            "sluice_store_journal_appends",
            "Appends written to the journal",
            |storage| storage.journal_stats().appends.load(Ordering::Relaxed),
        ),
        ("sluice_store_journal_fsyncs", "Journal fsyncs", |storage| {
            storage.journal_stats().fsyncs.load(Ordering::Relaxed)
        }),
        (
            "sluice_store_group_commits",
            "Journal group commits",
            |storage| storage.journal_stats().groups.load(Ordering::Relaxed),
        ),
        (
            "sluice_store_write_path_recoveries",
            "Write paths replaced after an I/O failure",
            |storage| {
                storage
                    .journal_stats()
                    .write_path_recoveries
                    .load(Ordering::Relaxed)
            },
        ),
        (
            "sluice_store_refused_segment_file_opens",
            "Segment file opens refused by the open-file limit",
            |storage| storage.file_budget().refused_opens,
        ),
    ];
    for (name, help, read) in totals {
        let storage = storage.clone();
        registry.register(name, help, CounterFn::new(move || read(&storage)));
    }
    type Level = fn(&Storage) -> f64;
    let levels: [(&str, &str, Level); 4] = [
        (
            "sluice_store_open_segment_files",
            "Segment files open now",
            |storage| storage.file_budget().open_segment_files as f64,
        ),
        (
            "sluice_store_max_open_segment_files",
            "The budget of open segment files (max_open_segment_files resolved)",
            |storage| storage.file_budget().max_open_segment_files as f64,
        ),
        ("sluice_store_segments", "Segments held", |storage| {
            storage.segment_count() as f64
        }),
        (
            "sluice_store_write_path_healthy",
            "1 while the write path accepts writes, 0 after an I/O failure until it is replaced",
            |storage| {
                if storage.write_fault().is_none() {
                    1.0
                } else {
                    0.0
                }
            },
        ),
    ];
    for (name, help, read) in levels {
        let storage = storage.clone();
        registry.register(name, help, GaugeFn::new(move || read(&storage)));
    }
    let directory = data_dir.clone();
    registry.register(
        "sluice_store_disk_free_bytes",
        "Bytes available to the store on its data directory's file system",
        GaugeFn::new(move || {
            crate::registration::disk_space(&directory).map_or(-1.0, |(_, free)| free as f64)
        }),
    );
    registry.register(
        "sluice_store_disk_total_bytes",
        "Size of the data directory's file system",
        GaugeFn::new(move || {
            crate::registration::disk_space(&data_dir).map_or(-1.0, |(total, _)| total as f64)
        }),
    );
}
