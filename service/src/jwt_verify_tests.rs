//! Tests of `jwt_verify.rs`: tokens made with `jwt_mint` (ring directly),
//! as an attacker would shape them.

use super::*;
use crate::jwt_mint::{hs256_token, jwks, unsigned_token, TestSigner};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "sluice";
/// "Now" in the tests, ms since the epoch.
const NOW_MS: u64 = 1_800_000_000_000;
const NOW_S: u64 = NOW_MS / 1000;

fn policy() -> JwtPolicy {
    JwtPolicy::from_config(&JwtConfig {
        enabled: true,
        jwks_file: "unused".into(),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        ..JwtConfig::default()
    })
    .expect("valid")
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW_S + 600, "iat": NOW_S})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("object").remove(key);
    claims
}

struct Keys {
    rsa: TestSigner,
    ec: TestSigner,
    ed: TestSigner,
    set: KeySet,
}

fn keys() -> Keys {
    let (rsa, ec, ed) = (
        TestSigner::rs256("rsa"),
        TestSigner::es256("ec"),
        TestSigner::ed25519("ed"),
    );
    let set = KeySet::parse(jwks(&[&rsa, &ec, &ed]).as_bytes(), &policy().allowed).expect("jwks");
    Keys { rsa, ec, ed, set }
}

fn check(keys: &Keys, token: &str) -> Result<Verified, TokenError> {
    verify(token, &keys.set, &policy(), NOW_MS)
}

#[test]
fn valid_tokens_of_each_default_algorithm_prove_their_subject() {
    let keys = keys();
    for signer in [&keys.rsa, &keys.ec, &keys.ed] {
        let verified = check(&keys, &signer.sign(&claims()))
            .unwrap_or_else(|error| panic!("{}: {error}", signer.alg()));
        assert_eq!(verified.principal.as_str(), "User:alice");
        assert_eq!(verified.valid_until_ms, (NOW_S + 600) * 1000 + 30_000);
    }
    let audiences = with(claims(), "aud", json!(["other", AUDIENCE]));
    assert!(check(&keys, &keys.ed.sign(&audiences)).is_ok());
}

#[test]
fn tampered_tokens_are_refused() {
    let keys = keys();
    let token = keys.rsa.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    // Another payload under the original signature.
    let forged = keys.rsa.sign(&with(claims(), "sub", json!("admin")));
    let forged_payload = forged.split('.').nth(1).expect("payload");
    let swapped = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(check(&keys, &swapped), Err(TokenError::BadSignature));
    // A flipped signature character.
    let mut signature = parts[2].to_string();
    let middle = signature.len() / 2;
    let flipped = if &signature[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    signature.replace_range(middle..=middle, flipped);
    let flipped = format!("{}.{}.{}", parts[0], parts[1], signature);
    assert_eq!(check(&keys, &flipped), Err(TokenError::BadSignature));
    // Signed by another key that claims a known kid.
    let impostor = TestSigner::ed25519("ed");
    assert_eq!(
        check(&keys, &impostor.sign(&claims())),
        Err(TokenError::BadSignature)
    );
    for garbage in ["", "a.b", "a.b.c.d", "!!.b.c", "e30.e30.e30"] {
        assert!(
            matches!(check(&keys, garbage), Err(TokenError::Malformed(_))),
            "{garbage}"
        );
    }
}

#[test]
fn wrong_audience_issuer_or_missing_claims_are_refused() {
    let keys = keys();
    let sign = |claims: Value| keys.ed.sign(&claims);
    let cases = [
        (
            with(claims(), "aud", json!("other")),
            TokenError::WrongAudience,
        ),
        (
            with(claims(), "aud", json!(["a", "b"])),
            TokenError::WrongAudience,
        ),
        (
            with(claims(), "iss", json!("https://evil.test")),
            TokenError::WrongIssuer,
        ),
        (
            without(claims(), "aud"),
            TokenError::MissingClaim("aud".into()),
        ),
        (
            without(claims(), "iss"),
            TokenError::MissingClaim("iss".into()),
        ),
        (
            without(claims(), "exp"),
            TokenError::MissingClaim("exp".into()),
        ),
        (
            without(claims(), "sub"),
            TokenError::MissingClaim("sub".into()),
        ),
        (
            with(claims(), "sub", json!("*")),
            TokenError::BadClaim("sub".into()),
        ),
        (
            with(claims(), "sub", json!(42)),
            TokenError::BadClaim("sub".into()),
        ),
        // CVE-2026-25537: a time claim of the wrong type is not "absent".
        (
            with(claims(), "exp", json!("9999999999")),
            TokenError::BadClaim("exp".into()),
        ),
        (
            with(claims(), "nbf", json!("9999999999")),
            TokenError::BadClaim("nbf".into()),
        ),
        (
            with(claims(), "exp", json!(-1)),
            TokenError::BadClaim("exp".into()),
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(
            check(&keys, &sign(claims.clone())),
            Err(expected),
            "{claims}"
        );
    }
}

#[test]
fn disallowed_algorithms_unknown_kids_and_none_are_refused() {
    let keys = keys();
    let no_kid = keys
        .ed
        .sign_with_header(&json!({"alg": "EdDSA", "typ": "JWT"}), &claims());
    assert_eq!(check(&keys, &no_kid), Err(TokenError::NoKid));
    let stranger = TestSigner::ed25519("stranger");
    assert_eq!(
        check(&keys, &stranger.sign(&claims())),
        Err(TokenError::UnknownKid("stranger".into()))
    );
    let none = unsigned_token(&claims());
    assert_eq!(
        check(&keys, &none),
        Err(TokenError::DisallowedAlgorithm("none".into()))
    );
    let strict = JwtPolicy {
        allowed: vec![Algorithm::EdDSA],
        ..policy()
    };
    let rsa = keys.rsa.sign(&claims());
    assert_eq!(
        verify(&rsa, &keys.set, &strict, NOW_MS),
        Err(TokenError::DisallowedAlgorithm("RS256".into()))
    );
    // An EC key's token claiming EdDSA.
    let confused = keys
        .ec
        .sign_with_header(&json!({"alg": "EdDSA", "kid": "ec"}), &claims());
    assert!(matches!(
        check(&keys, &confused),
        Err(TokenError::KeyAlgorithmMismatch { .. })
    ));
}

#[test]
fn hs256_signed_with_a_public_key_is_refused() {
    let keys = keys();
    for signer in [&keys.rsa, &keys.ec, &keys.ed] {
        let header = json!({"alg": "HS256", "kid": signer.kid, "typ": "JWT"});
        let jwk = signer.jwk().to_string();
        for secret in [signer.public_key_bytes(), jwk.into_bytes()] {
            let token = hs256_token(&secret, &header, &claims());
            assert_eq!(
                check(&keys, &token),
                Err(TokenError::DisallowedAlgorithm("HS256".into()))
            );
            // Even with HS256 allowed, a public key never verifies it.
            let hmac_allowed = JwtPolicy {
                allowed: vec![
                    Algorithm::HS256,
                    Algorithm::RS256,
                    Algorithm::ES256,
                    Algorithm::EdDSA,
                ],
                ..policy()
            };
            assert!(matches!(
                verify(&token, &keys.set, &hmac_allowed, NOW_MS),
                Err(TokenError::KeyAlgorithmMismatch { .. })
            ));
        }
    }
}

#[test]
fn a_configured_hmac_key_verifies_hs256() {
    let hmac_allowed = JwtPolicy {
        allowed: vec![Algorithm::HS256],
        ..policy()
    };
    let secret = TestSigner::hs256("shared", b"a long shared secret of 32 bytes");
    let set = KeySet::parse(jwks(&[&secret]).as_bytes(), &hmac_allowed.allowed).expect("jwks");
    let token = secret.sign(&claims());
    assert!(verify(&token, &set, &hmac_allowed, NOW_MS).is_ok());
    let wrong = TestSigner::hs256("shared", b"another secret").sign(&claims());
    assert_eq!(
        verify(&wrong, &set, &hmac_allowed, NOW_MS),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let keys = keys();
    let padding = "x".repeat(10_000);
    let big = keys.ed.sign(&with(claims(), "pad", json!(padding)));
    assert!(matches!(
        check(&keys, &big),
        Err(TokenError::TooLarge { max: 8192, .. })
    ));
    // Not even valid base64: refused for its size all the same.
    let junk = "!".repeat(8193);
    assert!(matches!(
        check(&keys, &junk),
        Err(TokenError::TooLarge { .. })
    ));
    let header = format!("Bearer {junk}");
    assert!(matches!(
        bearer_token(header.as_bytes(), 8192),
        Err(TokenError::TooLarge { .. })
    ));
}

fn at_skew(
    skew_ms: u64,
    exp_s: u64,
    nbf_s: Option<u64>,
    now_ms: u64,
) -> Result<Verified, TokenError> {
    let keys = keys();
    let mut claims = with(claims(), "exp", json!(exp_s));
    if let Some(nbf) = nbf_s {
        claims = with(claims, "nbf", json!(nbf));
    }
    let policy = JwtPolicy {
        max_clock_skew_ms: skew_ms,
        ..policy()
    };
    verify(&keys.ed.sign(&claims), &keys.set, &policy, now_ms)
}

#[test]
fn clock_skew_edges_at_zero_and_at_the_maximum() {
    let exp_s = NOW_S;
    let exp_ms = exp_s * 1000;
    // Skew 0: valid strictly before exp, and from nbf on.
    assert!(at_skew(0, exp_s, None, exp_ms - 1).is_ok());
    assert_eq!(
        at_skew(0, exp_s, None, exp_ms),
        Err(TokenError::Expired { ago_ms: 0 })
    );
    let nbf_s = NOW_S - 60;
    let nbf_ms = nbf_s * 1000;
    assert!(at_skew(0, exp_s, Some(nbf_s), nbf_ms).is_ok());
    assert_eq!(
        at_skew(0, exp_s, Some(nbf_s), nbf_ms - 1),
        Err(TokenError::NotYetValid { in_ms: 1 })
    );
    // The largest skew, 300 s, each way.
    let max = 300_000;
    assert!(at_skew(max, exp_s, None, exp_ms + max - 1).is_ok());
    assert_eq!(
        at_skew(max, exp_s, None, exp_ms + max),
        Err(TokenError::Expired { ago_ms: max })
    );
    let late_nbf_s = NOW_S + 600;
    let late_nbf_ms = late_nbf_s * 1000;
    let far_exp_s = NOW_S + 3600;
    assert!(at_skew(max, far_exp_s, Some(late_nbf_s), late_nbf_ms - max).is_ok());
    assert_eq!(
        at_skew(max, far_exp_s, Some(late_nbf_s), late_nbf_ms - max - 1),
        Err(TokenError::NotYetValid { in_ms: max + 1 })
    );
}

#[test]
fn bearer_metadata_is_parsed_strictly() {
    assert_eq!(bearer_token(b"Bearer abc.def.ghi", 8192), Ok("abc.def.ghi"));
    assert_eq!(bearer_token(b"bearer abc", 8192), Ok("abc"));
    for bad in [
        &b"Basic dXNlcjpwYXNz"[..],
        b"Bearer ",
        b"Bearer",
        b"",
        b"Bearer \xff\xfe",
    ] {
        assert_eq!(
            bearer_token(bad, 8192),
            Err(TokenError::NotBearer),
            "{bad:?}"
        );
    }
}

#[test]
fn refusals_never_quote_the_token() {
    let keys = keys();
    let token = keys.ed.sign(&with(claims(), "aud", json!("other")));
    let signature = token.rsplit('.').next().expect("signature");
    let message = check(&keys, &token).expect_err("refused").to_string();
    assert!(!message.contains(signature), "{message}");
    let long_kid = "k".repeat(500);
    let stranger = TestSigner::ed25519(&long_kid).sign(&claims());
    let message = check(&keys, &stranger).expect_err("refused").to_string();
    assert!(message.len() < 200, "{message}");
}
