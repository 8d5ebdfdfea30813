//! Test support (feature `test-util`): signing keys and tokens made with
//! `ring` directly, independent of the verifying code, so the tests of
//! `jwt_verify.rs` and the process tests check one against the other.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, KeyPair};
use serde_json::{json, Value};

/// A 2048-bit RSA key (PKCS#8 DER) for tests: `ring` cannot make one.
const RSA_TEST_KEY: &[u8] = include_bytes!("../testdata/jwt_rsa_2048.pk8");

enum Key {
    Ed(ring_sig::Ed25519KeyPair),
    Ec(ring_sig::EcdsaKeyPair),
    Rsa(ring_sig::RsaKeyPair),
    Hmac(Vec<u8>),
}

/// A key that signs test tokens, with its `kid`.
pub struct TestSigner {
    pub kid: String,
    key: Key,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestSigner {
    /// A new Ed25519 key (`EdDSA`).
    pub fn ed25519(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = ring_sig::Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 key");
        let pair = ring_sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed25519 key");
        Self::with(kid, Key::Ed(pair))
    }

    /// A new P-256 key (`ES256`).
    pub fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let alg = &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring_sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("p-256 key");
        let pair = ring_sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
        Self::with(kid, Key::Ec(pair))
    }

    /// The fixed test RSA key (`RS256`).
    pub fn rs256(kid: &str) -> Self {
        let pair = ring_sig::RsaKeyPair::from_pkcs8(RSA_TEST_KEY).expect("test RSA key");
        Self::with(kid, Key::Rsa(pair))
    }

    /// An HMAC secret (`HS256`).
    pub fn hs256(kid: &str, secret: &[u8]) -> Self {
        Self::with(kid, Key::Hmac(secret.to_vec()))
    }

    fn with(kid: &str, key: Key) -> Self {
        Self {
            kid: kid.to_string(),
            key,
        }
    }

    /// The JWS name of the algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Ed(_) => "EdDSA",
            Key::Ec(_) => "ES256",
            Key::Rsa(_) => "RS256",
            Key::Hmac(_) => "HS256",
        }
    }

    /// The public key's bytes as an attacker would find them (the raw key;
    /// for RSA the PKCS#1 DER).
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.key {
            Key::Ed(pair) => pair.public_key().as_ref().to_vec(),
            Key::Ec(pair) => pair.public_key().as_ref().to_vec(),
            Key::Rsa(pair) => pair.public_key().as_ref().to_vec(),
            Key::Hmac(secret) => secret.clone(),
        }
    }

    /// The JWK of the verifying key.
    pub fn jwk(&self) -> Value {
        let kid = &self.kid;
        match &self.key {
            Key::Ed(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())})
            }
            Key::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Key::Rsa(pair) => {
                let public = ring_sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let n = without_leading_zeros(&public.n);
                let e = without_leading_zeros(&public.e);
                json!({"kty": "RSA", "kid": kid, "n": b64(n), "e": b64(e)})
            }
            Key::Hmac(secret) => json!({"kty": "oct", "kid": kid, "k": b64(secret)}),
        }
    }

    /// A token of `claims` with header `{"alg", "kid", "typ": "JWT"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"});
        self.sign_with_header(&header, claims)
    }

    /// A token of `header` and `claims`, signed with this key whatever
    /// the header says.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match &self.key {
            Key::Ed(pair) => pair.sign(message.as_bytes()).as_ref().to_vec(),
            Key::Ec(pair) => pair
                .sign(&rng, message.as_bytes())
                .expect("ecdsa")
                .as_ref()
                .to_vec(),
            Key::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring_sig::RSA_PKCS1_SHA256,
                    &rng,
                    message.as_bytes(),
                    &mut signature,
                )
                .expect("rsa");
                signature
            }
            Key::Hmac(secret) => hs256(secret, message.as_bytes()),
        };
        format!("{message}.{}", b64(&signature))
    }
}

fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    &bytes[first..]
}

/// HMAC-SHA256 of `message` keyed with `secret`.
pub fn hs256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, message).as_ref().to_vec()
}

/// A token signed `HS256` with `secret` (e.g. a public key's bytes).
pub fn hs256_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    TestSigner::hs256("", secret).sign_with_header(header, claims)
}

/// An unsigned token (`alg: none`).
pub fn unsigned_token(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A JWKS of `signers`' verifying keys.
pub fn jwks(signers: &[&TestSigner]) -> String {
    let keys: Vec<Value> = signers.iter().map(|signer| signer.jwk()).collect();
    json!({ "keys": keys }).to_string()
}
