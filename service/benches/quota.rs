//! Cost of a quota decision on the produce path (issue 13): one token
//! bucket alone, and the table with 100,000 tracked principals (the
//! lookup, the bucket, and the lock of the shared handle).

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_service::quota::bucket::Bucket;
use sluice_service::{QuotaKind, QuotaLimits, QuotaTable, Quotas, QuotasConfig};
use std::hint::black_box;
use std::time::Duration;

fn config() -> QuotasConfig {
    QuotasConfig {
        default: QuotaLimits {
            produce_bytes_per_second: Some(1 << 40),
            ..QuotaLimits::default()
        },
        ..QuotasConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut bucket = Bucket::new(1 << 40, 1000, Duration::ZERO);
    let mut now = Duration::ZERO;
    c.bench_function("bucket admit", |b| {
        b.iter(|| {
            now += Duration::from_nanos(100);
            black_box(bucket.admit(black_box(65_536), now, 30_000))
        })
    });
    let names: Vec<String> = (0..100_000).map(|i| format!("User:app-{i}")).collect();
    let mut table = QuotaTable::new(&config(), []);
    for name in &names {
        table.admit(name, QuotaKind::ProduceBytes, 1, Duration::ZERO);
    }
    let mut index = 0;
    let mut now = Duration::ZERO;
    c.bench_function("table admit, 100k principals", |b| {
        b.iter(|| {
            index = (index + 7919) % names.len();
            now += Duration::from_nanos(100);
            black_box(table.admit(&names[index], QuotaKind::ProduceBytes, 65_536, now))
        })
    });
    let quotas = Quotas::new(&config(), []);
    c.bench_function("shared handle admit (lock, clock), one principal", |b| {
        b.iter(|| black_box(quotas.admit("User:app-1", QuotaKind::ProduceBytes, 65_536)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
