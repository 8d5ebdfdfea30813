//! The keys tokens are verified with: a JWKS (JSON Web Key Set, RFC 7517)
//! parsed into keys by `kid`, each with the algorithms it may verify.
//!
//! Rules:
//! - Every key needs a unique `kid`; a key for encryption (`use: enc`), of
//!   an unsupported type or curve, or that does not decode is skipped and
//!   named in [`KeySet::skipped`]. A set with no usable key does not load.
//! - A key verifies only its own family's algorithms, narrowed by the
//!   curve (P-256: ES256, P-384: ES384, Ed25519: EdDSA) and by its `alg`
//!   when it has one, and always by the configured allow-list. So a public
//!   key never verifies an `HS*` token (algorithm confusion: HMAC keyed
//!   with the public key's bytes).
//! - Symmetric (`oct`) keys load only when some `HS*` algorithm is
//!   allowed: a secret in the file is otherwise a mistake.

use crate::jwt_config::{MAX_JWKS_FILE_BYTES, MAX_JWKS_KEYS};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::collections::HashMap;
use std::str::FromStr;

/// One key of the set.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key: DecodingKey,
    /// The algorithms this key may verify (never empty).
    pub algorithms: Vec<Algorithm>,
}

/// The usable keys of a JWKS, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
    /// Keys left out, each with why (for the log).
    pub skipped: Vec<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses `json` with `allowed` algorithms; an error says why no key
    /// can be used.
    pub fn parse(json: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
        if json.len() as u64 > MAX_JWKS_FILE_BYTES {
            return Err(format!(
                "the JWKS is {} bytes; at most {MAX_JWKS_FILE_BYTES}",
                json.len()
            ));
        }
        #[derive(serde::Deserialize)]
        struct Wire {
            keys: Vec<serde_json::Value>,
        }
        let wire: Wire = serde_json::from_slice(json)
            .map_err(|error| format!("not a JWKS ({{\"keys\": [...]}}): {error}"))?;
        if wire.keys.len() > MAX_JWKS_KEYS {
            return Err(format!(
                "the JWKS has {} keys; at most {MAX_JWKS_KEYS}",
                wire.keys.len()
            ));
        }
        let mut set = KeySet::default();
        for (index, value) in wire.keys.into_iter().enumerate() {
            match parse_key(value, allowed) {
                Ok((kid, key)) => {
                    if set.keys.insert(kid.clone(), key).is_some() {
                        return Err(format!("the JWKS has kid '{kid}' more than once"));
                    }
                }
                Err(why) => set.skipped.push(format!("key {index}: {why}")),
            }
        }
        if set.keys.is_empty() {
            return Err(format!(
                "the JWKS has no usable key (skipped: {})",
                set.skipped.join("; ")
            ));
        }
        Ok(set)
    }
}

fn parse_key(
    value: serde_json::Value,
    allowed: &[Algorithm],
) -> Result<(String, VerifyingKey), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|error| format!("not a JWK: {error}"))?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|kid| !kid.is_empty())
        .ok_or("has no kid")?;
    let named = |why: &str| format!("kid '{kid}' {why}");
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err(named("is for encryption (use: enc)"));
    }
    let family_algorithms: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err(named("is on an unsupported curve")),
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err(named("is on an unsupported curve")),
        },
        AlgorithmParameters::OctetKey(_) => {
            if !allowed
                .iter()
                .any(|alg| alg.family() == AlgorithmFamily::Hmac)
            {
                return Err(named(
                    "is a symmetric (oct) key, and no HS* algorithm is allowed",
                ));
            }
            AlgorithmFamily::Hmac.algorithms()
        }
    };
    let own = match &jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(
            Algorithm::from_str(&alg.to_string())
                .map_err(|_| named(&format!("has alg {alg}, not a signature algorithm")))?,
        ),
    };
    let algorithms: Vec<Algorithm> = family_algorithms
        .iter()
        .copied()
        .filter(|alg| allowed.contains(alg) && own.is_none_or(|own| own == *alg))
        .collect();
    if algorithms.is_empty() {
        return Err(named("verifies none of the allowed algorithms"));
    }
    let key =
        DecodingKey::from_jwk(&jwk).map_err(|error| named(&format!("does not decode: {error}")))?;
    Ok((kid, VerifyingKey { key, algorithms }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALL: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ];

    fn ed(kid: &str) -> serde_json::Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
    }

    #[test]
    fn keys_are_found_by_kid_with_their_algorithms() {
        let jwks = json!({"keys": [
            ed("a"),
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird", "kid": "w"},
        ]});
        let set = KeySet::parse(jwks.to_string().as_bytes(), ALL).expect("loads");
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("a").expect("a").algorithms, [Algorithm::EdDSA]);
        assert_eq!(set.get("s").expect("s").algorithms, [Algorithm::HS256]);
        assert_eq!(set.skipped.len(), 3, "{:?}", set.skipped);
    }

    #[test]
    fn symmetric_keys_need_an_allowed_hmac_algorithm() {
        let jwks = json!({"keys": [ed("a"), {"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]});
        let set = KeySet::parse(jwks.to_string().as_bytes(), &[Algorithm::EdDSA]).expect("loads");
        assert!(set.get("s").is_none());
        assert!(set.skipped[0].contains("symmetric"), "{:?}", set.skipped);
    }

    #[test]
    fn unusable_sets_do_not_load() {
        for bad in [
            json!({"keys": []}).to_string(),
            json!({"keys": [ed("a"), ed("a")]}).to_string(),
            json!({"keys": [ed("a")]}).to_string()[..10].to_string(),
            "{}".to_string(),
        ] {
            assert!(KeySet::parse(bad.as_bytes(), ALL).is_err(), "{bad}");
        }
        let only_rsa_allowed = KeySet::parse(
            json!({"keys": [ed("a")]}).to_string().as_bytes(),
            &[Algorithm::RS256],
        );
        assert!(only_rsa_allowed.is_err());
        let huge = vec![b' '; MAX_JWKS_FILE_BYTES as usize + 1];
        assert!(KeySet::parse(&huge, ALL).unwrap_err().contains("bytes"));
    }
}
