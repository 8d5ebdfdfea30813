//! What recording the produce path's metrics costs (issue 15: "recording a
//! metric on the produce path costs no measurable throughput").
//!
//! Per acknowledged produce request the broker runs
//! `TopicSeries::count_produced`: two counter adds and one latency
//! observation of `started.elapsed()`. `produce_request` runs exactly those
//! calls; `produce_request_two_threads` runs them on two threads into the
//! same series at once (the cache line bouncing between cores that many
//! connections to one hot topic cause). The other benches split the cost.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_telemetry::metrics::{AtomicHistogram, Counter};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Bytes and records of a typical request: batch 100 of 1 KiB records.
const REQUEST_BYTES: u64 = 102_400;
const REQUEST_RECORDS: u64 = 100;

struct Series {
    bytes_in: Counter,
    records_in: Counter,
    produce_latency: AtomicHistogram,
}

impl Series {
    fn new() -> Self {
        Self {
            bytes_in: Counter::default(),
            records_in: Counter::default(),
            produce_latency: AtomicHistogram::latency_seconds(),
        }
    }

    /// The calls of `TopicSeries::count_produced`.
    fn count_produced(&self, bytes: u64, records: u64, started: Instant) {
        self.bytes_in.inc_by(bytes);
        self.records_in.inc_by(records);
        self.produce_latency.observe_duration(started.elapsed());
    }
}

fn parts(c: &mut Criterion) {
    let series = Series::new();
    c.bench_function("counter_inc_by", |b| {
        b.iter(|| series.bytes_in.inc_by(black_box(REQUEST_BYTES)))
    });
    c.bench_function("histogram_observe_duration", |b| {
        b.iter(|| {
            series
                .produce_latency
                .observe_duration(black_box(Duration::from_micros(2_700)))
        })
    });
    let started = Instant::now();
    c.bench_function("instant_elapsed", |b| {
        b.iter(|| black_box(started).elapsed())
    });
}

fn produce_request(c: &mut Criterion) {
    let series = Series::new();
    let started = Instant::now();
    c.bench_function("produce_request", |b| {
        b.iter(|| {
            series.count_produced(
                black_box(REQUEST_BYTES),
                black_box(REQUEST_RECORDS),
                black_box(started),
            )
        })
    });
    c.bench_function("produce_request_two_threads", |b| {
        b.iter_custom(|iterations| {
            let barrier = Barrier::new(2);
            let started = Instant::now();
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            let begun = Instant::now();
                            for _ in 0..iterations {
                                series.count_produced(
                                    black_box(REQUEST_BYTES),
                                    black_box(REQUEST_RECORDS),
                                    black_box(started),
                                );
                            }
                            begun.elapsed()
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|thread| thread.join().expect("recording thread"))
                    .max()
                    .unwrap_or_default()
            })
        })
    });
}

criterion_group!(benches, parts, produce_request);
criterion_main!(benches);
