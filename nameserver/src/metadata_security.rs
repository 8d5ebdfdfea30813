//! The rules of `[metadata]`'s TLS and authentication keys, checked when
//! the config loads (pure: no file is read here; `metadata/etcd_credentials.rs`
//! reads them when the store connects).
//!
//! Rules:
//! - Every endpoint uses the same scheme: all `https://` or all plaintext
//!   (`http://`, or no scheme, which etcd's client reads as `http://`).
//! - `https://` endpoints need `tls_ca_file` (the CA that signed etcd's
//!   certificate; no system roots).
//! - Any `tls_*` file with plaintext endpoints is refused: there is no
//!   silent plaintext.
//! - `tls_cert_file` and `tls_key_file` go together.
//! - `user` and `password_file` go together, and need `https://`
//!   endpoints (a password never travels in plaintext); `user` is not
//!   empty.
//! - All of these apply to `backend = "etcd"` only.

use crate::config::{MetadataBackend, MetadataConfig};
use sluice_service::{KeyRange, RELOAD_CHECK_INTERVAL_RANGE_MS};

/// Largest `password_file` read, in bytes: a password is a line.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4_096;
/// Largest PEM file (`tls_ca_file`, `tls_cert_file`, `tls_key_file`) read,
/// in bytes.
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// How an endpoint's scheme reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    /// `http://` or no scheme.
    Plaintext,
}

pub fn scheme(endpoint: &str) -> Scheme {
    if endpoint.to_ascii_lowercase().starts_with("https://") {
        Scheme::Https
    } else {
        Scheme::Plaintext
    }
}

/// Whether any TLS file is set.
pub fn tls_files_set(metadata: &MetadataConfig) -> bool {
    metadata.tls_ca_file.is_some()
        || metadata.tls_cert_file.is_some()
        || metadata.tls_key_file.is_some()
}

fn security_set(metadata: &MetadataConfig) -> bool {
    tls_files_set(metadata) || metadata.user.is_some() || metadata.password_file.is_some()
}

pub fn ranges(metadata: &MetadataConfig) -> Vec<KeyRange> {
    vec![KeyRange::new(
        "[metadata] tls_reload_check_interval_ms",
        metadata.tls_reload_check_interval_ms,
        *RELOAD_CHECK_INTERVAL_RANGE_MS.start(),
        *RELOAD_CHECK_INTERVAL_RANGE_MS.end(),
    )]
}

/// Every broken rule, each a sentence naming the keys.
pub fn checks(metadata: &MetadataConfig) -> Vec<String> {
    if metadata.backend != MetadataBackend::Etcd {
        return if security_set(metadata) {
            vec![
                "[metadata] tls_ca_file, tls_cert_file, tls_key_file, user and password_file \
                 apply to backend = \"etcd\" only"
                    .to_string(),
            ]
        } else {
            Vec::new()
        };
    }
    let mut broken = scheme_checks(metadata);
    if metadata.tls_cert_file.is_some() != metadata.tls_key_file.is_some() {
        broken.push(
            "[metadata] tls_cert_file and tls_key_file go together: set both (the client \
             certificate etcd's --client-cert-auth asks for) or neither"
                .to_string(),
        );
    }
    broken.extend(user_checks(metadata));
    broken
}

fn scheme_checks(metadata: &MetadataConfig) -> Vec<String> {
    let (https, plaintext): (Vec<&String>, Vec<&String>) = metadata
        .endpoints
        .iter()
        .partition(|endpoint| scheme(endpoint) == Scheme::Https);
    let mut broken = Vec::new();
    if !https.is_empty() && !plaintext.is_empty() {
        broken.push(format!(
            "[metadata] endpoints mix https:// ({}) and plaintext ({}) URLs: use https:// for \
             every etcd member",
            https.len(),
            quoted(&plaintext)
        ));
    }
    if !https.is_empty() && metadata.tls_ca_file.is_none() {
        broken.push(
            "[metadata] endpoints are https:// but tls_ca_file is not set: name the PEM CA \
             that signed etcd's certificate"
                .to_string(),
        );
    }
    if https.is_empty() && !plaintext.is_empty() && tls_files_set(metadata) {
        broken.push(format!(
            "[metadata] tls_* files are set but the endpoints are plaintext ({}): write them \
             as https:// (the etcd client never falls back to plaintext)",
            quoted(&plaintext)
        ));
    }
    broken
}

fn user_checks(metadata: &MetadataConfig) -> Vec<String> {
    let mut broken = Vec::new();
    match (&metadata.user, &metadata.password_file) {
        (Some(user), Some(_)) => {
            if user.trim().is_empty() {
                broken.push("[metadata] user is empty".to_string());
            }
            if metadata
                .endpoints
                .iter()
                .any(|endpoint| scheme(endpoint) == Scheme::Plaintext)
            {
                broken.push(
                    "[metadata] user needs https:// endpoints: etcd's password would travel \
                     in plaintext"
                        .to_string(),
                );
            }
        }
        (None, None) => {}
        _ => broken.push(
            "[metadata] user and password_file go together: set both (etcd's own \
             authentication) or neither"
                .to_string(),
        ),
    }
    broken
}

fn quoted(endpoints: &[&String]) -> String {
    endpoints
        .iter()
        .map(|endpoint| format!("{endpoint:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tls(endpoints: &[&str]) -> MetadataConfig {
        MetadataConfig {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            tls_ca_file: Some(PathBuf::from("/tls/ca.pem")),
            tls_cert_file: Some(PathBuf::from("/tls/node.pem")),
            tls_key_file: Some(PathBuf::from("/tls/node.key")),
            ..MetadataConfig::default()
        }
    }

    fn refused(config: &MetadataConfig, words: &[&str]) {
        let broken = checks(config);
        assert_eq!(broken.len(), 1, "{broken:?}");
        for word in words {
            assert!(broken[0].contains(word), "{word:?} not in {broken:?}");
        }
    }

    #[test]
    fn accepted_shapes() {
        assert_eq!(checks(&MetadataConfig::default()), Vec::<String>::new());
        let mutual = tls(&["https://etcd-1:2379", "HTTPS://etcd-2:2379"]);
        assert_eq!(checks(&mutual), Vec::<String>::new());
        let server_only = MetadataConfig {
            tls_cert_file: None,
            tls_key_file: None,
            user: Some("sluice".into()),
            password_file: Some("/run/secrets/etcd".into()),
            ..mutual
        };
        assert_eq!(checks(&server_only), Vec::<String>::new());
    }

    #[test]
    fn https_needs_a_ca() {
        let config = MetadataConfig {
            tls_ca_file: None,
            ..tls(&["https://127.0.0.1:2379"])
        };
        refused(&config, &["https://", "tls_ca_file"]);
    }

    #[test]
    fn tls_files_with_plaintext_endpoints_are_refused() {
        refused(
            &tls(&["http://127.0.0.1:2379"]),
            &["plaintext", "http://127.0.0.1:2379"],
        );
        // No scheme reads as plaintext.
        refused(&tls(&["127.0.0.1:2379"]), &["plaintext", "127.0.0.1:2379"]);
        // A CA alone too.
        let ca_only = MetadataConfig {
            tls_cert_file: None,
            tls_key_file: None,
            ..tls(&["http://127.0.0.1:2379"])
        };
        refused(&ca_only, &["tls_*"]);
    }

    #[test]
    fn mixed_schemes_are_refused() {
        let config = tls(&["https://etcd-1:2379", "http://etcd-2:2379"]);
        refused(&config, &["mix", "http://etcd-2:2379"]);
    }

    #[test]
    fn certificate_and_key_go_together() {
        let config = MetadataConfig {
            tls_key_file: None,
            ..tls(&["https://etcd-1:2379"])
        };
        refused(&config, &["tls_cert_file", "tls_key_file"]);
        let config = MetadataConfig {
            tls_cert_file: None,
            ..tls(&["https://etcd-1:2379"])
        };
        refused(&config, &["tls_cert_file", "tls_key_file"]);
    }

    #[test]
    fn user_rules() {
        let config = MetadataConfig {
            user: Some("sluice".into()),
            ..tls(&["https://etcd-1:2379"])
        };
        refused(&config, &["user", "password_file"]);
        let config = MetadataConfig {
            password_file: Some("/p".into()),
            ..tls(&["https://etcd-1:2379"])
        };
        refused(&config, &["user", "password_file"]);
        let config = MetadataConfig {
            user: Some(" ".into()),
            password_file: Some("/p".into()),
            ..tls(&["https://etcd-1:2379"])
        };
        refused(&config, &["user is empty"]);
        let plaintext = MetadataConfig {
            user: Some("sluice".into()),
            password_file: Some("/p".into()),
            ..MetadataConfig::default()
        };
        refused(&plaintext, &["user", "https://", "plaintext"]);
    }

    #[test]
    fn security_keys_are_for_etcd_only() {
        let config = MetadataConfig {
            backend: MetadataBackend::Embedded,
            data_dir: Some("/tmp/x".into()),
            ..tls(&["https://etcd-1:2379"])
        };
        refused(&config, &["backend = \"etcd\""]);
        let plain_embedded = MetadataConfig {
            backend: MetadataBackend::Embedded,
            ..MetadataConfig::default()
        };
        assert_eq!(checks(&plain_embedded), Vec::<String>::new());
    }
}
