//! `jsonwebtoken`'s cryptography through `ring`, the library rustls and
//! tonic already use here: `jsonwebtoken` 10 leaves the provider to the
//! application (its own are `aws-lc-rs`, a second C crypto library, or the
//! RustCrypto crates, a dozen more), and a provider is two functions that
//! pick `ring`'s verification algorithm for a JWS name.
//!
//! Rules: verification only (a server never signs tokens); every algorithm
//! checks that the key is of its own family, so an RSA, EC or Ed25519
//! public key never serves as an HMAC secret; HMAC comparison is
//! `ring::hmac::verify`, constant-time. Installed once per process by
//! [`install`], before the first token is verified.

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as ring_sig;

/// Makes this the process's provider; one installed before is kept (it
/// is this one: nothing else in Sluice installs one).
pub fn install() {
    let _ = PROVIDER.install_default();
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    jwk_utils: JwkUtils::new_unimplemented(),
};

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

fn family_of(algorithm: Algorithm) -> AlgorithmFamily {
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => AlgorithmFamily::Rsa,
    }
}

/// How one algorithm checks a signature.
enum Check {
    Hmac(ring::hmac::Algorithm),
    Rsa(&'static ring_sig::RsaParameters),
    /// ECDSA and Ed25519: the key is the raw public key bytes.
    Raw(&'static dyn ring_sig::VerificationAlgorithm),
}

fn check_of(algorithm: Algorithm) -> Check {
    match algorithm {
        Algorithm::HS256 => Check::Hmac(ring::hmac::HMAC_SHA256),
        Algorithm::HS384 => Check::Hmac(ring::hmac::HMAC_SHA384),
        Algorithm::HS512 => Check::Hmac(ring::hmac::HMAC_SHA512),
        Algorithm::RS256 => Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Check::Raw(&ring_sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Check::Raw(&ring_sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Check::Raw(&ring_sig::ED25519),
    }
}

struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != family_of(*algorithm) {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key: key.clone(),
    }))
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let refused = |_| signature::Error::new();
        match (check_of(self.algorithm), self.key.kind()) {
            (Check::Hmac(algorithm), DecodingKeyKind::SecretOrDer(secret)) => {
                let key = ring::hmac::Key::new(algorithm, secret);
                ring::hmac::verify(&key, message, signature).map_err(refused)
            }
            (Check::Rsa(parameters), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                ring_sig::RsaPublicKeyComponents { n, e }
                    .verify(parameters, message, signature)
                    .map_err(refused)
            }
            (Check::Rsa(parameters), DecodingKeyKind::SecretOrDer(der)) => {
                ring_sig::UnparsedPublicKey::new(parameters, der)
                    .verify(message, signature)
                    .map_err(refused)
            }
            (Check::Raw(algorithm), DecodingKeyKind::SecretOrDer(public)) => {
                ring_sig::UnparsedPublicKey::new(algorithm, public)
                    .verify(message, signature)
                    .map_err(refused)
            }
            _ => Err(signature::Error::new()),
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_is_never_an_hmac_secret() {
        let ed = DecodingKey::from_ed_der(&[7u8; 32]);
        let rsa = DecodingKey::from_rsa_raw_components(&[1u8; 256], &[1, 0, 1]);
        for key in [&ed, &rsa] {
            for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                assert!(verifier(&algorithm, key).is_err());
            }
        }
        assert!(verifier(&Algorithm::EdDSA, &ed).is_ok());
        assert!(verifier(&Algorithm::ES256, &ed).is_err());
        assert!(verifier(&Algorithm::RS256, &rsa).is_ok());
        let secret = DecodingKey::from_secret(b"secret");
        assert!(verifier(&Algorithm::RS256, &secret).is_err());
    }

    #[test]
    fn hmac_verifies_its_own_tag_only() {
        install();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let tag = ring::hmac::sign(&key, b"message").as_ref().to_vec();
        let verifier =
            verifier(&Algorithm::HS256, &DecodingKey::from_secret(b"secret")).expect("hmac");
        assert!(verifier.verify(b"message", &tag).is_ok());
        assert!(verifier.verify(b"messagf", &tag).is_err());
        assert!(verifier.verify(b"message", &tag[..31].to_vec()).is_err());
    }
}
