//! The physical floor under Sluice's acknowledgement latency: the latency
//! distribution of `write` + `fdatasync` on this machine's disk, with no
//! Sluice code involved. Three patterns, each a sequence of sync writes
//! one after the other (no concurrency):
//!
//! - `append`: appends to a file that grows (like a new journal file: each
//!   fdatasync also commits the filesystem's block allocation),
//! - `overwrite`: rewrites a file whose blocks are already allocated and
//!   written (like a recycled, preallocated journal),
//! - `append-4k`: small appends (the cost of an fsync with little data),
//! - `preallocated`: writes into a file preallocated with `fallocate`, as
//!   the store's journal is (the blocks are allocated but unwritten, so
//!   each fdatasync also commits their conversion to written).
//!
//! Run: `cargo run --release -p sluice-store --example fsync_latency
//! [directory, default the system temp dir] [writes per pattern, default
//! 2000] [bytes per write, default 102400]`. Prints p50/p90/p99/p99.9/max
//! in microseconds per pattern.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default bytes written before each fdatasync: one batch of 100 × 1 KiB
/// records plus framing.
const DEFAULT_WRITE_BYTES: usize = 100 * 1024;
/// Default number of write + fdatasync pairs per pattern.
const DEFAULT_WRITES: usize = 2000;

fn main() -> std::io::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let directory = arguments
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let writes = arguments
        .get(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_WRITES);
    let write_bytes = arguments
        .get(2)
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_WRITE_BYTES);
    let path = directory.join(format!("fsync-latency-{}", std::process::id()));
    let result = run(&path, writes, write_bytes);
    if let Err(error) = std::fs::remove_file(&path) {
        eprintln!("could not remove {}: {error}", path.display());
    }
    result
}

fn run(path: &Path, writes: usize, write_bytes: usize) -> std::io::Result<()> {
    let buffer = vec![b'x'; write_bytes];
    println!(
        "{writes} × (write {write_bytes} bytes + fdatasync) per pattern, file {}",
        path.display()
    );

    let mut file = create(path)?;
    let append = measure(writes, || {
        file.write_all(&buffer)?;
        file.sync_data()
    })?;
    report("append", &append);

    // The file now holds `writes` blocks already allocated and on disk.
    file.seek(SeekFrom::Start(0))?;
    let overwrite = measure(writes, || {
        file.write_all(&buffer)?;
        file.sync_data()
    })?;
    report("overwrite", &overwrite);

    let mut file = create(path)?;
    let small = vec![b'y'; 4096];
    let append_small = measure(writes, || {
        file.write_all(&small)?;
        file.sync_data()
    })?;
    report("append-4k", &append_small);

    let mut file = create(path)?;
    let total_bytes = (writes * write_bytes) as u64;
    let preallocated = sluice_store::segment::preallocate(&file, 0, total_bytes, false);
    if !preallocated {
        eprintln!("fallocate is not supported here; `preallocated` is a plain append");
    }
    file.sync_all()?;
    let into_preallocated = measure(writes, || {
        file.write_all(&buffer)?;
        file.sync_data()
    })?;
    report("preallocated", &into_preallocated);
    Ok(())
}

fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
}

fn measure(
    writes: usize,
    mut operation: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(writes);
    for _ in 0..writes {
        let started = Instant::now();
        operation()?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

fn report(pattern: &str, sorted: &[Duration]) {
    let at = |quantile: f64| {
        let index = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index].as_micros()
    };
    println!(
        "{pattern:>12}: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}
