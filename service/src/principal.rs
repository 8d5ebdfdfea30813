//! Who a connection's requests come from: with mutual TLS, `User:<CN>` of
//! the client certificate's subject; otherwise (or without a common name)
//! `User:ANONYMOUS`. Worked out once per connection.

use sluice_acl::Principal;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The principal of requests that prove no identity.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

pub fn anonymous() -> Principal {
    Principal::new(ANONYMOUS).unwrap_or_else(|_| unreachable!("a valid constant"))
}

/// The principal of a client that presented `chain` (its own certificate
/// first).
pub fn principal_of(chain: Option<&[CertificateDer<'static>]>) -> Principal {
    chain
        .and_then(|chain| chain.first())
        .and_then(|leaf| common_name(leaf.as_ref()))
        .and_then(|name| Principal::user(&name).ok())
        .unwrap_or_else(anonymous)
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_certificate_or_garbage_is_anonymous() {
        assert_eq!(principal_of(None).as_str(), ANONYMOUS);
        let garbage = [CertificateDer::from(vec![1u8, 2, 3])];
        assert_eq!(principal_of(Some(&garbage)).as_str(), ANONYMOUS);
        assert_eq!(principal_of(Some(&[])).as_str(), ANONYMOUS);
    }
}
