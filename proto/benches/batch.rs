//! Criterion benchmarks of the record-batch codec on the hot paths: what a
//! producer pays to build a batch, what a broker pays to validate and stamp
//! it, and what a consumer pays to decode it.
//!
//! `cargo bench -p sluice-proto --bench batch`

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_proto::batch::{
    assign, decode, validate_compressed, validate_produced, BatchBuilder, Compression, RecordData,
};
use sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;
use std::hint::black_box;

const RECORDS: usize = 100;
const VALUE_BYTES: usize = 1024;

fn build(compression: Compression) -> Bytes {
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    let mut builder = BatchBuilder::new(compression);
    for index in 0..RECORDS {
        builder.push(&RecordData {
            key: Some(Bytes::from(format!("key-{index}"))),
            value: Some(value.clone()),
            timestamp_ms: Some(1_700_000_000_000),
            ..RecordData::default()
        });
    }
    builder.build()
}

fn codec(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("batch_100x1KiB");
    group.throughput(Throughput::Bytes((RECORDS * VALUE_BYTES) as u64));
    for (name, compression) in [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        group.bench_function(format!("build/{name}"), |bencher| {
            bencher.iter(|| black_box(build(compression)))
        });
        let batch = build(compression);
        group.bench_function(format!("decode/{name}"), |bencher| {
            bencher.iter(|| black_box(decode(&batch, 64 << 20).expect("valid batch")))
        });
    }
    // What the broker's produce path does to each batch: header, CRC and
    // records (compressed ones decompressed once), then the offsets.
    for (name, compression) in [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let batch = build(compression);
        group.bench_function(format!("broker_validate_and_assign/{name}"), |bencher| {
            bencher.iter(|| {
                let header = validate_produced(&batch, 64 << 20).expect("valid batch");
                validate_compressed(&batch, &header, MAX_UNCOMPRESSED_RECORDS_BYTES)
                    .expect("valid records");
                let mut copy = BytesMut::from(&batch[..]);
                assign(&mut copy, 42, 1);
                black_box(copy.freeze())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
