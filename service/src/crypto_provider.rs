//! The one rustls crypto provider of every Sluice TLS connection a service
//! makes or accepts: its server side (`tls.rs`) and its connections to
//! other services (`peer_tls.rs`). The SDK's and the CLI's connections go
//! through tonic, which picks the provider of the `tls-*` feature the
//! workspace's `Cargo.toml` enables — the same one, named there next to
//! tokio-rustls's feature.
//!
//! Choices (measured in BENCHMARKS.md, "TLS against plaintext"):
//! - aws-lc-rs, not ring: on this machine kind (AVX-512 with VAES) its
//!   AES-GCM seals 16 KiB records about twice as fast (AES-128-GCM 0.075
//!   against ring's 0.13–0.15 CPU-s per GB), and its default key exchange
//!   includes the post-quantum hybrid X25519MLKEM768.
//! - AES-128-GCM first: TLS 1.3's mandatory suite, four fewer AES rounds
//!   than AES-256-GCM per block; what Go's crypto/tls and BoringSSL prefer
//!   with AES hardware. Servers pick by their own order
//!   (`ignore_client_order` in `tls.rs`), so SDK clients whose tonic
//!   default lists AES-256 first still get it.

use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::CipherSuite;

pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider();
    // A stable sort: the AES-128-GCM suites first, the rest as rustls
    // orders them.
    provider
        .cipher_suites
        .sort_by_key(|suite| u8::from(!prefers(suite.suite())));
    Arc::new(provider)
}

fn prefers(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_comes_first_and_nothing_is_dropped() {
        let ours = provider();
        let theirs = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(
            ours.cipher_suites[0].suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(ours.cipher_suites.len(), theirs.cipher_suites.len());
        for suite in &theirs.cipher_suites {
            assert!(ours.cipher_suites.contains(suite), "{:?}", suite.suite());
        }
    }
}
