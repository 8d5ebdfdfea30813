//! Cost of TLS record encryption (issue 13, `crypto_provider.rs`): one
//! 16 KiB record (TLS's largest) sealed in place with AES-128-GCM,
//! AES-256-GCM and ChaCha20-Poly1305, by ring and by aws-lc-rs — the two
//! providers rustls offers. Throughput is per core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const RECORD_BYTES: usize = 16 * 1024;

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

fn bench_ring(c: &mut Criterion, name: &str, algorithm: &'static ring::aead::Algorithm) {
    let key_bytes = vec![1u8; algorithm.key_len()];
    let unbound = ring::aead::UnboundKey::new(algorithm, &key_bytes).expect("key length");
    let key = ring::aead::LessSafeKey::new(unbound);
    let mut record = vec![7u8; RECORD_BYTES];
    let mut counter = 0u64;
    let mut group = c.benchmark_group("seal 16 KiB");
    group.throughput(Throughput::Bytes(RECORD_BYTES as u64));
    group.bench_function(format!("ring {name}"), |b| {
        b.iter(|| {
            counter += 1;
            let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes(counter));
            black_box(
                key.seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut record)
                    .expect("seal"),
            )
        })
    });
    group.finish();
}

fn bench_aws_lc(c: &mut Criterion, name: &str, algorithm: &'static aws_lc_rs::aead::Algorithm) {
    let key_bytes = vec![1u8; algorithm.key_len()];
    let unbound = aws_lc_rs::aead::UnboundKey::new(algorithm, &key_bytes).expect("key length");
    let key = aws_lc_rs::aead::LessSafeKey::new(unbound);
    let mut record = vec![7u8; RECORD_BYTES];
    let mut counter = 0u64;
    let mut group = c.benchmark_group("seal 16 KiB");
    group.throughput(Throughput::Bytes(RECORD_BYTES as u64));
    group.bench_function(format!("aws-lc-rs {name}"), |b| {
        b.iter(|| {
            counter += 1;
            let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce_bytes(counter));
            black_box(
                key.seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), &mut record)
                    .expect("seal"),
            )
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    bench_ring(c, "AES-128-GCM", &ring::aead::AES_128_GCM);
    bench_aws_lc(c, "AES-128-GCM", &aws_lc_rs::aead::AES_128_GCM);
    bench_ring(c, "AES-256-GCM", &ring::aead::AES_256_GCM);
    bench_aws_lc(c, "AES-256-GCM", &aws_lc_rs::aead::AES_256_GCM);
    bench_ring(c, "ChaCha20-Poly1305", &ring::aead::CHACHA20_POLY1305);
    bench_aws_lc(c, "ChaCha20-Poly1305", &aws_lc_rs::aead::CHACHA20_POLY1305);
}

criterion_group!(benches, bench);
criterion_main!(benches);
