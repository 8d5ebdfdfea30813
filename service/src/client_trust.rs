//! Whether the client certificate an open connection was accepted with is
//! still trusted (issue 13): after the server's `client_ca_file` changed
//! (the operator's way to revoke a client CA), and when the certificate's
//! `notAfter` passes.
//!
//! Rules:
//! - The server publishes the client-certificate verifier in force
//!   ([`ClientTrust`], with a generation that grows each time the trusted
//!   CAs change) on a watch channel (`tls.rs`); each connection with a
//!   client certificate re-verifies the chain it presented against each
//!   new verifier, at the current time ([`verify_chain`], pure: no IO).
//! - A chain that no longer verifies revokes the connection
//!   (`connection_trust.rs`, `connection.rs`): new requests are refused
//!   NOT_AUTHENTICATED with [`Distrust::message`] and the connection is
//!   closed, open streams and all, shortly after.
//! - The leaf's `notAfter` is looked at once, when the connection opens
//!   ([`not_after`]); the chain is verified again then (a passed
//!   `notAfter` fails verification as expired). An intermediate
//!   certificate that expires before the leaf is caught at the next CA
//!   change, not at its own `notAfter`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;

/// The client-certificate verifier in force.
#[derive(Debug, Clone)]
pub struct ClientTrust {
    /// Grows by one each time the trusted client CAs change.
    pub generation: u64,
    /// `None` without `client_ca_file` (no client certificates asked).
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// Why a connection's client certificate is no longer trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrust {
    /// Its chain does not verify under the verifier in force (its CA was
    /// removed from `client_ca_file`).
    Untrusted(String),
    /// Its `notAfter` passed while the connection was open.
    Expired,
}

impl Distrust {
    /// What a request on the revoked connection is answered.
    pub fn message(&self) -> String {
        match self {
            Distrust::Untrusted(error) => format!(
                "this connection's client certificate is no longer trusted by this server \
                 (client_ca_file changed: {error}); the connection is being closed: connect \
                 with a certificate of a CA the server trusts"
            ),
            Distrust::Expired => "this connection's client certificate expired (its notAfter \
                 passed); the connection is being closed: connect with a current certificate"
                .to_string(),
        }
    }

    /// What the audit log says.
    pub fn audit(&self) -> &'static str {
        match self {
            Distrust::Untrusted(_) => "refused: client certificate no longer trusted",
            Distrust::Expired => "refused: client certificate expired",
        }
    }
}

/// Whether `chain` (the client's certificate first) verifies under
/// `verifier` at `now`.
pub fn verify_chain(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), Distrust> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(Distrust::Untrusted("no certificate".to_string()));
    };
    match verifier.verify_client_cert(leaf, intermediates, now) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
        )) => Err(Distrust::Expired),
        Err(error) => Err(Distrust::Untrusted(error.to_string())),
    }
}

/// The `notAfter` of `chain`'s first certificate; `None` if it does not
/// parse (the handshake verified it, so only a bug gives `None`).
pub fn not_after(chain: &[CertificateDer<'static>]) -> Option<SystemTime> {
    let leaf = chain.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let seconds = certificate.validity().not_after.timestamp();
    let seconds = u64::try_from(seconds).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Longest wait before an expiry is looked at again, in milliseconds (30
/// days, so a timer never lies beyond what tokio's clock represents).
pub const MAX_EXPIRY_WAIT_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// How long to wait from `now` before looking at a certificate valid
/// until `not_after`: one second past it (certificate times are whole
/// seconds and a chain is valid through its `notAfter` second), at most
/// [`MAX_EXPIRY_WAIT_MS`]; zero if that moment has come.
pub fn expiry_wait(not_after: SystemTime, now: SystemTime) -> Duration {
    let at = not_after
        .checked_add(Duration::from_secs(1))
        .unwrap_or(not_after);
    at.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(Duration::from_millis(MAX_EXPIRY_WAIT_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        der: CertificateDer<'static>,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("signed").der().clone();
        Ca { params, key, der }
    }

    fn leaf(ca: &Ca, expired: bool) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["client".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "client");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        params
            .signed_by(&key, &issuer)
            .expect("signed")
            .der()
            .clone()
    }

    fn verifier(cas: &[&Ca]) -> Arc<dyn ClientCertVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots.add(ca.der.clone()).expect("root");
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crate::crypto_provider::provider(),
        )
        .build()
        .expect("verifier")
    }

    #[test]
    fn a_chain_verifies_only_while_its_ca_is_trusted() {
        let (first, second) = (ca("CA 1"), ca("CA 2"));
        let chain = [leaf(&first, false)];
        let now = UnixTime::now();
        assert_eq!(
            verify_chain(&*verifier(&[&first, &second]), &chain, now),
            Ok(())
        );
        assert_eq!(verify_chain(&*verifier(&[&first]), &chain, now), Ok(()));
        let refused = verify_chain(&*verifier(&[&second]), &chain, now).expect_err("CA removed");
        let Distrust::Untrusted(why) = &refused else {
            panic!("{refused:?}");
        };
        assert!(why.contains("UnknownIssuer"), "{why}");
        let message = refused.message();
        assert!(
            message.contains("no longer trusted") && message.contains("client_ca_file"),
            "{message}"
        );
    }

    #[test]
    fn an_expired_chain_and_garbage_do_not_verify() {
        let authority = ca("CA");
        let trusted = verifier(&[&authority]);
        let now = UnixTime::now();
        assert_eq!(
            verify_chain(&*trusted, &[leaf(&authority, true)], now),
            Err(Distrust::Expired)
        );
        assert!(Distrust::Expired.message().contains("expired"));
        assert!(matches!(
            verify_chain(&*trusted, &[], now),
            Err(Distrust::Untrusted(_))
        ));
        let garbage = [CertificateDer::from(vec![1u8, 2, 3])];
        assert!(matches!(
            verify_chain(&*trusted, &garbage, now),
            Err(Distrust::Untrusted(_))
        ));
        // A valid chain at a time past its notAfter.
        let chain = [leaf(&authority, false)];
        let valid_until = not_after(&chain).expect("parses");
        let after = valid_until + Duration::from_secs(2);
        let later = UnixTime::since_unix_epoch(
            after
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970"),
        );
        assert_eq!(
            verify_chain(&*trusted, &chain, later),
            Err(Distrust::Expired)
        );
    }

    #[test]
    fn not_after_is_the_leafs_and_the_wait_is_bounded() {
        let authority = ca("CA");
        let expired = not_after(&[leaf(&authority, true)]).expect("parses");
        assert_eq!(
            expired,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_609_459_200),
            "2021-01-01"
        );
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[CertificateDer::from(vec![1u8])]), None);

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(expiry_wait(now, now), Duration::from_secs(1));
        assert_eq!(
            expiry_wait(now - Duration::from_secs(5), now),
            Duration::ZERO
        );
        assert_eq!(
            expiry_wait(now + Duration::from_secs(10), now),
            Duration::from_secs(11)
        );
        assert_eq!(
            expiry_wait(now + Duration::from_secs(100 * 24 * 3600), now),
            Duration::from_millis(MAX_EXPIRY_WAIT_MS)
        );
    }
}
