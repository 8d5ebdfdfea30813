//! A server's `[auth.jwt]` section: signed tokens (JWT) as a second way for
//! clients to prove who they are, beside client certificates.
//!
//! Rules (checked when the config loads):
//! - With `enabled`, `jwks_file`, `issuer` and `audience` are required and
//!   `[tls] enabled` too: a bearer token must never cross the network in
//!   plaintext.
//! - `algorithms` is an allow-list of JWS names. `none` is never accepted;
//!   HMAC (`HS*`) only verifies against a symmetric (`oct`) key of the
//!   JWKS, never against a public key's bytes (algorithm confusion), and a
//!   JWKS with symmetric keys loads only when some `HS*` is allowed.

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;

/// Least and most time between looks at the JWKS file, in milliseconds.
pub const JWKS_RELOAD_CHECK_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Accept `authorization: Bearer <JWT>` on every request; a valid
    /// token's principal is `User:<principal_claim>`, in place of the
    /// client certificate's. Needs `[tls] enabled`. Default: false.
    pub enabled: bool,
    /// JWKS (JSON Web Key Set) file with the keys tokens are signed with;
    /// every key needs a `kid`. Looked at every
    /// `reload_check_interval_ms`; a changed file that does not load keeps
    /// the keys in use (WARN). Default: none (required when enabled).
    pub jwks_file: PathBuf,
    /// JWS algorithms accepted (`alg` of the token header). `none` is
    /// never accepted; `HS256`/`HS384`/`HS512` only with symmetric keys.
    /// Default: `["RS256", "ES256", "EdDSA"]`.
    pub algorithms: Vec<String>,
    /// The `iss` claim every token must carry. Default: none (required
    /// when enabled).
    pub issuer: String,
    /// A value the `aud` claim of every token must carry. Default: none
    /// (required when enabled).
    pub audience: String,
    /// Clock difference tolerated when checking `exp` and `nbf`, in
    /// milliseconds. Range: 0 ..= 300,000. Default: 30,000.
    pub max_clock_skew_ms: u64,
    /// The claim whose (string) value names the principal:
    /// `User:<value>`. Default: `sub`.
    pub principal_claim: String,
    /// Largest `authorization` metadata value, in bytes; larger is refused
    /// before it is parsed. Range: 256 ..= 16,384. Default: 8192.
    pub max_token_bytes: u64,
    /// Verified tokens remembered (by SHA-256 of the token) until they
    /// expire, so a client's steady stream of requests costs a hash
    /// lookup, not a signature check. Range: 1 ..= 1,048,576. Default:
    /// 10,000.
    pub cache_entries: u64,
    /// How often the JWKS file is looked at for changes, in milliseconds.
    /// Range: 100 ..= 3,600,000. Default: 1000.
    pub reload_check_interval_ms: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            jwks_file: PathBuf::new(),
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            issuer: String::new(),
            audience: String::new(),
            max_clock_skew_ms: 30_000,
            principal_claim: "sub".into(),
            max_token_bytes: 8192,
            cache_entries: 10_000,
            reload_check_interval_ms: 1_000,
        }
    }
}

/// Most keys a JWKS file may hold.
pub const MAX_JWKS_KEYS: usize = 1000;
/// Largest JWKS file read, in bytes.
pub const MAX_JWKS_FILE_BYTES: u64 = 1 << 20;

impl JwtConfig {
    /// The allowed algorithms; an entry that is not a JWS signature
    /// algorithm (`none` included) is an error naming it.
    pub fn allowed_algorithms(&self) -> Result<Vec<Algorithm>, String> {
        self.algorithms
            .iter()
            .map(|name| {
                Algorithm::from_str(name).map_err(|_| {
                    format!(
                        "[auth.jwt] algorithms: '{name}' is not an accepted JWS algorithm \
                         (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, \
                         HS256, HS384, HS512; never none)"
                    )
                })
            })
            .collect()
    }

    /// Every numeric key with its range.
    pub fn ranges(&self) -> Vec<crate::KeyRange> {
        vec![
            crate::KeyRange::new(
                "[auth.jwt] max_clock_skew_ms",
                self.max_clock_skew_ms,
                0,
                300_000,
            ),
            crate::KeyRange::new(
                "[auth.jwt] max_token_bytes",
                self.max_token_bytes,
                256,
                16_384,
            ),
            crate::KeyRange::new("[auth.jwt] cache_entries", self.cache_entries, 1, 1 << 20),
            crate::KeyRange::new(
                "[auth.jwt] reload_check_interval_ms",
                self.reload_check_interval_ms,
                *JWKS_RELOAD_CHECK_INTERVAL_RANGE_MS.start(),
                *JWKS_RELOAD_CHECK_INTERVAL_RANGE_MS.end(),
            ),
        ]
    }

    /// Rules between keys, `[tls] enabled` given.
    pub fn cross_checks(&self, tls_enabled: bool) -> Vec<String> {
        let mut broken = Vec::new();
        if let Err(error) = self.allowed_algorithms() {
            broken.push(error);
        }
        if !self.enabled {
            return broken;
        }
        if self.algorithms.is_empty() {
            broken.push("[auth.jwt] algorithms is empty: no token could be accepted".into());
        }
        for (key, missing) in [
            ("jwks_file", self.jwks_file.as_os_str().is_empty()),
            ("issuer", self.issuer.is_empty()),
            ("audience", self.audience.is_empty()),
            ("principal_claim", self.principal_claim.is_empty()),
        ] {
            if missing {
                broken.push(format!("[auth.jwt] enabled = true needs {key}"));
            }
        }
        if !tls_enabled {
            broken.push(
                "[auth.jwt] enabled = true needs [tls] enabled = true: bearer tokens must not \
                 travel in plaintext"
                    .into(),
            );
        }
        broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> JwtConfig {
        JwtConfig {
            enabled: true,
            jwks_file: "jwks.json".into(),
            issuer: "https://issuer.example".into(),
            audience: "sluice".into(),
            ..JwtConfig::default()
        }
    }

    #[test]
    fn enabled_needs_keys_issuer_audience_and_tls() {
        assert!(on().cross_checks(true).is_empty());
        assert_eq!(on().cross_checks(false).len(), 1);
        let bare = JwtConfig {
            enabled: true,
            ..JwtConfig::default()
        };
        let broken = bare.cross_checks(true);
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert!(JwtConfig::default().cross_checks(false).is_empty());
    }

    #[test]
    fn none_and_unknown_algorithms_are_refused() {
        for name in ["none", "None", "HS1", ""] {
            let config = JwtConfig {
                algorithms: vec![name.into()],
                ..on()
            };
            let broken = config.cross_checks(true);
            assert!(
                broken.iter().any(|b| b.contains("never none")),
                "{name}: {broken:?}"
            );
        }
        assert_eq!(
            on().allowed_algorithms().expect("defaults parse"),
            [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        );
    }
}
