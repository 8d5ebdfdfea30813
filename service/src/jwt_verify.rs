//! Whether a bearer token proves a principal: a pure function of the
//! token, the keys, the policy (`[auth.jwt]`) and the time.
//!
//! Order of the checks, each refusal naming what failed (never the token):
//! 1. size (`max_token_bytes`), before anything is parsed;
//! 2. the header's `alg` is in the allow-list (`none` never is) and its
//!    `kid` names a key of the JWKS that may verify that algorithm (a
//!    public key never verifies `HS*`: algorithm confusion);
//! 3. the signature (`jsonwebtoken` with the `ring` provider), then `iss`
//!    and `aud`, which must be present;
//! 4. `exp` (required) and `nbf` (optional) as JSON numbers, with
//!    `max_clock_skew_ms` each way: valid while
//!    `nbf - skew <= now < exp + skew`. Checked here rather than by
//!    `jsonwebtoken`, whose clock cannot be given and whose leeway is in
//!    whole seconds; a claim of the wrong type is refused, not ignored
//!    (CVE-2026-25537);
//! 5. the principal claim is a non-empty string other than `*`:
//!    `User:<value>`.

use crate::jwks::KeySet;
use crate::jwt_config::JwtConfig;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use sluice_acl::Principal;
use std::str::FromStr;

/// What tokens must satisfy, from `[auth.jwt]`.
#[derive(Debug, Clone)]
pub struct JwtPolicy {
    pub allowed: Vec<Algorithm>,
    pub issuer: String,
    pub audience: String,
    pub max_clock_skew_ms: u64,
    pub principal_claim: String,
    pub max_token_bytes: usize,
}

impl JwtPolicy {
    pub fn from_config(config: &JwtConfig) -> Result<Self, String> {
        Ok(Self {
            allowed: config.allowed_algorithms()?,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_clock_skew_ms: config.max_clock_skew_ms,
            principal_claim: config.principal_claim.clone(),
            max_token_bytes: usize::try_from(config.max_token_bytes).unwrap_or(usize::MAX),
        })
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is {bytes} bytes; at most {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("the authorization metadata is not 'Bearer <token>'")]
    NotBearer,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's algorithm '{0}' is not allowed")]
    DisallowedAlgorithm(String),
    #[error("the token has no kid (key id) in its header")]
    NoKid,
    #[error("the token's kid '{0}' is not a known key")]
    UnknownKid(String),
    #[error("key '{kid}' does not verify {alg} tokens")]
    KeyAlgorithmMismatch { kid: String, alg: String },
    #[error("the token's signature is invalid (tampered, or signed with another key)")]
    BadSignature,
    #[error("the token expired {ago_ms} ms ago (beyond the allowed clock skew)")]
    Expired { ago_ms: u64 },
    #[error("the token is not valid for another {in_ms} ms (nbf)")]
    NotYetValid { in_ms: u64 },
    #[error("the token is for another audience (aud)")]
    WrongAudience,
    #[error("the token is from another issuer (iss)")]
    WrongIssuer,
    #[error("the token has no '{0}' claim")]
    MissingClaim(String),
    #[error("the token's '{0}' claim is not valid")]
    BadClaim(String),
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub principal: Principal,
    /// Until when (ms since the epoch) the token is accepted: `exp` plus
    /// the clock skew.
    pub valid_until_ms: u64,
}

/// Longest kid quoted in a refusal, in bytes.
const MAX_QUOTED_KID_BYTES: usize = 64;

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

/// See the module documentation.
pub fn verify(
    token: &str,
    keys: &KeySet,
    policy: &JwtPolicy,
    now_ms: u64,
) -> Result<Verified, TokenError> {
    if token.len() > policy.max_token_bytes {
        return Err(TokenError::TooLarge {
            bytes: token.len(),
            max: policy.max_token_bytes,
        });
    }
    crate::jwt_ring::install();
    let header = raw_header(token)?;
    let algorithm = Algorithm::from_str(&header.alg)
        .ok()
        .filter(|alg| policy.allowed.contains(alg))
        .ok_or_else(|| TokenError::DisallowedAlgorithm(quoted(&header.alg)))?;
    let kid = header.kid.ok_or(TokenError::NoKid)?;
    let key = keys
        .get(&kid)
        .ok_or_else(|| TokenError::UnknownKid(quoted(&kid)))?;
    if !key.algorithms.contains(&algorithm) {
        return Err(TokenError::KeyAlgorithmMismatch {
            kid: quoted(&kid),
            alg: header.alg,
        });
    }
    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["iss", "aud"]);
    validation.set_issuer(&[&policy.issuer]);
    validation.set_audience(&[&policy.audience]);
    let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key.key,
        &validation,
    )
    .map_err(|error| decode_error(error.into_kind()))?
    .claims;
    let valid_until_ms = check_times(&claims, policy.max_clock_skew_ms, now_ms)?;
    let principal = principal(&claims, &policy.principal_claim)?;
    Ok(Verified {
        principal,
        valid_until_ms,
    })
}

/// The token of an `authorization` metadata value: `Bearer <token>`
/// (scheme case-insensitive), refused unread beyond `max_bytes`.
pub fn bearer_token(value: &[u8], max_bytes: usize) -> Result<&str, TokenError> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() > max_bytes + SCHEME.len() {
        return Err(TokenError::TooLarge {
            bytes: value.len().saturating_sub(SCHEME.len()),
            max: max_bytes,
        });
    }
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Err(TokenError::NotBearer);
    }
    let token = std::str::from_utf8(&value[SCHEME.len()..]).map_err(|_| TokenError::NotBearer)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::NotBearer);
    }
    Ok(token)
}

fn quoted(value: &str) -> String {
    let mut end = value.len().min(MAX_QUOTED_KID_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

fn raw_header(token: &str) -> Result<RawHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not three base64url parts separated by '.'".into(),
        ));
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("the header is not base64url".into()))?;
    serde_json::from_slice(&json)
        .map_err(|_| TokenError::Malformed("the header is not a JSON object with alg".into()))
}

fn decode_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim),
        ErrorKind::InvalidClaimFormat(claim) => TokenError::BadClaim(claim),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
            TokenError::Malformed("the key does not fit the algorithm".into())
        }
        ErrorKind::Base64(_) => TokenError::Malformed("a part is not base64url".into()),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            TokenError::Malformed("the claims are not a JSON object".into())
        }
        _ => TokenError::Malformed("not a valid JWS".into()),
    }
}

/// A NumericDate claim in milliseconds; `None` when absent.
fn time_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => {
            let seconds = value
                .as_f64()
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
                .ok_or_else(|| TokenError::BadClaim(name.to_string()))?;
            // Saturates at u64::MAX for absurd dates.
            Ok(Some((seconds * 1000.0) as u64))
        }
    }
}

/// `exp + skew` when the token is valid at `now_ms`.
fn check_times(
    claims: &serde_json::Map<String, serde_json::Value>,
    skew_ms: u64,
    now_ms: u64,
) -> Result<u64, TokenError> {
    let exp_ms = time_claim(claims, "exp")?.ok_or(TokenError::MissingClaim("exp".into()))?;
    let valid_until_ms = exp_ms.saturating_add(skew_ms);
    if now_ms >= valid_until_ms {
        return Err(TokenError::Expired {
            ago_ms: now_ms - exp_ms,
        });
    }
    if let Some(nbf_ms) = time_claim(claims, "nbf")? {
        let valid_from_ms = nbf_ms.saturating_sub(skew_ms);
        if now_ms < valid_from_ms {
            return Err(TokenError::NotYetValid {
                in_ms: nbf_ms - now_ms,
            });
        }
    }
    Ok(valid_until_ms)
}

fn principal(
    claims: &serde_json::Map<String, serde_json::Value>,
    claim: &str,
) -> Result<Principal, TokenError> {
    let value = claims
        .get(claim)
        .ok_or_else(|| TokenError::MissingClaim(claim.to_string()))?;
    value
        .as_str()
        .filter(|name| !name.is_empty() && *name != "*")
        .and_then(|name| Principal::user(name).ok())
        .ok_or_else(|| TokenError::BadClaim(claim.to_string()))
}

#[cfg(test)]
#[path = "jwt_verify_tests.rs"]
mod tests;
