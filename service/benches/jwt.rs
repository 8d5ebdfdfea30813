//! Cost of token authentication per request: a signature check (first
//! request with a token, or with the cache off) against a cached token
//! (every later request: SHA-256 of the token and an LRU lookup).
//!
//! `cargo bench -p sluice-service --features test-util --bench jwt`

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use sluice_service::jwt_mint::{jwks, TestSigner};
use sluice_service::{verify_token, JwtConfig, JwtPolicy, KeySet, TokenAuthenticator};
use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

fn authenticator(
    dir: &std::path::Path,
    signer: &TestSigner,
    cache_entries: u64,
) -> TokenAuthenticator {
    let path = dir.join(format!("jwks-{}-{cache_entries}.json", signer.kid));
    std::fs::write(&path, jwks(&[signer])).expect("write jwks");
    TokenAuthenticator::load(&JwtConfig {
        enabled: true,
        jwks_file: path,
        issuer: "bench".into(),
        audience: "sluice".into(),
        cache_entries,
        ..JwtConfig::default()
    })
    .expect("loads")
}

fn bearer(signer: &TestSigner) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({"sub": "bench-user", "iss": "bench", "aud": "sluice", "exp": now + 3600});
    format!("Bearer {}", signer.sign(&claims)).into_bytes()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    for signer in [
        TestSigner::rs256("rsa"),
        TestSigner::es256("ec"),
        TestSigner::ed25519("ed"),
    ] {
        let token = bearer(&signer);
        let config = JwtConfig {
            enabled: true,
            issuer: "bench".into(),
            audience: "sluice".into(),
            ..JwtConfig::default()
        };
        let policy = JwtPolicy::from_config(&config).expect("policy");
        let keys = KeySet::parse(jwks(&[&signer]).as_bytes(), &policy.allowed).expect("keys");
        let raw = std::str::from_utf8(&token[7..]).expect("utf-8").to_string();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        c.bench_function(&format!("jwt verify {}", signer.alg()), |b| {
            b.iter(|| {
                black_box(verify_token(black_box(&raw), &keys, &policy, now_ms).expect("valid"))
            })
        });
        let cached = authenticator(dir.path(), &signer, 10_000);
        cached.authenticate(&token).expect("valid");
        c.bench_function(&format!("jwt cached {}", signer.alg()), |b| {
            b.iter(|| black_box(cached.authenticate(black_box(&token)).expect("valid")))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
