//! Criterion benchmarks of `Selector::matches`, the per-message cost a
//! broker pays when it filters for a subscription: no selector, a tag
//! selector and a two-term SQL selector, against a typical record (3
//! headers, 2 tags).
//!
//! `cargo bench -p sluice-selector --bench selector`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_proto::batch::Record;
use sluice_selector::{Selector, SelectorKind};
use std::hint::black_box;

fn typical_record() -> Record {
    Record {
        offset: 42,
        timestamp_ms: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"order-12345")),
        value: Some(Bytes::from(vec![b'x'; 1024])),
        headers: vec![
            (
                "trace-id".to_string(),
                Bytes::from_static(b"4bf92f3577b34da6"),
            ),
            ("region".to_string(), Bytes::from_static(b"eu")),
            ("amount".to_string(), Bytes::from_static(b"250")),
        ],
        tags: vec!["order".to_string(), "paid".to_string()],
    }
}

fn matches(criterion: &mut Criterion) {
    let record = typical_record();
    let selectors = [
        ("none", Selector::all()),
        (
            "tag",
            Selector::parse(SelectorKind::Tag, "refund || paid || shipped")
                .expect("the benchmark's tag selector is valid"),
        ),
        (
            "sql",
            Selector::parse(SelectorKind::Sql, "region = 'eu' AND amount > 100")
                .expect("the benchmark's SQL selector is valid"),
        ),
    ];
    let mut group = criterion.benchmark_group("selector_matches");
    group.throughput(Throughput::Elements(1));
    for (name, selector) in &selectors {
        assert!(selector.matches(&record), "{name} should select the record");
        group.bench_function(*name, |bencher| {
            bencher.iter(|| black_box(selector).matches(black_box(&record)))
        });
    }
    group.finish();
}

fn parse(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("selector_parse");
    group.bench_function("sql", |bencher| {
        bencher.iter(|| {
            Selector::parse(
                SelectorKind::Sql,
                black_box("region = 'eu' AND amount > 100"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, matches, parse);
criterion_main!(benches);
