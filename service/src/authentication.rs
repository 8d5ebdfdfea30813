//! Who a request comes from, decided by the authorization layer before the
//! body is read.
//!
//! Rules:
//! - A connection whose client certificate is no longer trusted (revoked:
//!   its CA was removed from `client_ca_file`, or it expired while open;
//!   `connection_trust.rs`) has every request refused, health checks
//!   included, saying so; it is being closed.
//! - Health checks are open: principal of the connection, nothing checked.
//! - With `[auth.jwt]` on, a request carrying `authorization` metadata is
//!   authenticated by its token: a valid token's principal replaces the
//!   connection's (a client certificate proves the connection, a token the
//!   user: services use certificates, people and applications tokens); an
//!   invalid one is refused, saying why, even if the connection has a
//!   certificate. Without `[auth.jwt]` the metadata is ignored.
//! - A TLS client without the certificate the server requires (and
//!   without a valid token) is refused.
//! - With `[auth] enabled` and `[auth.jwt]` on, a request with neither a
//!   token nor a client certificate is refused: anonymous is not a user.
//! - What a token proves holds until the token expires (`exp` plus the
//!   allowed clock skew): [`Authenticated::valid_until_ms`]; the layer ends
//!   a stream opened with it then (`credential_expiry.rs`). A certificate's
//!   proof lasts as long as its connection.

use crate::connection::ConnectionInfo;
use crate::token_auth::TokenAuthenticator;
use sluice_acl::Principal;

/// Why a request was not authenticated: the answer to the client, and
/// what the audit log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthenticated {
    pub message: String,
    pub audit: &'static str,
}

/// What the decision needs from the request.
pub struct Credentials<'a> {
    pub connection: Option<&'a ConnectionInfo>,
    /// The `authorization` metadata value, if any.
    pub authorization: Option<&'a [u8]>,
    pub health_check: bool,
}

/// Who the request comes from, and until when a token says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub principal: Principal,
    /// Set when a token proved the principal: until when (ms since the
    /// epoch) it does.
    pub valid_until_ms: Option<u64>,
}

pub fn authenticate(
    tokens: Option<&TokenAuthenticator>,
    auth_enabled: bool,
    credentials: Credentials<'_>,
) -> Result<Authenticated, Unauthenticated> {
    let connection_principal = || Authenticated {
        principal: credentials
            .connection
            .map(|info| info.principal.clone())
            .unwrap_or_else(crate::principal::anonymous),
        valid_until_ms: None,
    };
    if let Some(distrust) = credentials.connection.and_then(|info| info.state.revoked()) {
        return Err(Unauthenticated {
            message: distrust.message(),
            audit: distrust.audit(),
        });
    }
    if credentials.health_check {
        return Ok(connection_principal());
    }
    if let (Some(tokens), Some(value)) = (tokens, credentials.authorization) {
        return tokens
            .authenticate(value)
            .map(|verified| Authenticated {
                principal: verified.principal,
                valid_until_ms: Some(verified.valid_until_ms),
            })
            .map_err(|error| Unauthenticated {
                message: format!("token refused: {error}"),
                audit: "refused: invalid token",
            });
    }
    let has_certificate = credentials
        .connection
        .is_some_and(|info| info.peer_certificates.is_some());
    let missing_certificate = credentials
        .connection
        .is_some_and(|info| info.missing_client_certificate);
    let hint = if tokens.is_some() {
        " or send a token (SDK: ClientConfig credentials; CLI: --token-file)"
    } else {
        ""
    };
    if missing_certificate {
        return Err(Unauthenticated {
            message: format!(
                "this server requires a client certificate (mutual TLS): connect with one its \
                 client CA signed (SDK: ClientTls identity; CLI: --tls-cert and --tls-key){hint}"
            ),
            audit: "refused: no client certificate",
        });
    }
    if tokens.is_some() && auth_enabled && !has_certificate {
        return Err(Unauthenticated {
            message: format!("this server requires a client certificate{hint}"),
            audit: "refused: no token and no client certificate",
        });
    }
    Ok(connection_principal())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ConnectionState;
    use crate::jwt_config::JwtConfig;
    use crate::jwt_mint::{jwks, TestSigner};
    use serde_json::json;
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tonic::transport::server::TcpConnectInfo;

    fn connection(principal: &str, certificate: bool, missing: bool) -> ConnectionInfo {
        ConnectionInfo {
            tcp: TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
            state: Arc::new(ConnectionState::new(1024, tokio::time::Instant::now())),
            peer_certificates: certificate
                .then(|| Arc::from(vec![CertificateDer::from(vec![1u8])].into_boxed_slice())),
            principal: Principal::new(principal).expect("valid"),
            missing_client_certificate: missing,
            over_connection_quota: None,
        }
    }

    fn tokens(dir: &std::path::Path, signer: &TestSigner) -> TokenAuthenticator {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks(&[signer])).expect("write");
        TokenAuthenticator::load(&JwtConfig {
            enabled: true,
            jwks_file: path,
            issuer: "iss".into(),
            audience: "aud".into(),
            ..JwtConfig::default()
        })
        .expect("loads")
    }

    fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn bearer(signer: &TestSigner, audience: &str) -> Vec<u8> {
        let exp = now_s() + 600;
        let claims = json!({"sub": "alice", "iss": "iss", "aud": audience, "exp": exp});
        format!("Bearer {}", signer.sign(&claims)).into_bytes()
    }

    fn request<'a>(
        connection: Option<&'a ConnectionInfo>,
        authorization: Option<&'a [u8]>,
    ) -> Credentials<'a> {
        Credentials {
            connection,
            authorization,
            health_check: false,
        }
    }

    #[test]
    fn a_valid_token_names_the_user_and_an_invalid_one_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let signer = TestSigner::ed25519("k");
        let tokens = tokens(dir.path(), &signer);
        let good = bearer(&signer, "aud");
        let service = connection("User:sluice-node", true, false);
        let no_certificate = connection(crate::principal::ANONYMOUS, false, true);
        for info in [&service, &no_certificate] {
            let proved = authenticate(Some(&tokens), true, request(Some(info), Some(&good)))
                .expect("token accepted");
            assert_eq!(proved.principal.as_str(), "User:alice");
            let valid_until_ms = proved.valid_until_ms.expect("a token's proof ends");
            let exp_ms = (now_s() + 600) * 1000;
            assert!(
                (exp_ms - 5_000..=exp_ms + 60_000).contains(&valid_until_ms),
                "exp plus the skew: {valid_until_ms} against {exp_ms}"
            );
        }
        let wrong = bearer(&signer, "elsewhere");
        let refused = authenticate(Some(&tokens), false, request(Some(&service), Some(&wrong)))
            .expect_err("refused even with a certificate and authorisation off");
        assert!(refused.message.contains("audience"), "{refused:?}");
        let health = Credentials {
            health_check: true,
            ..request(Some(&no_certificate), Some(&wrong))
        };
        assert!(
            authenticate(Some(&tokens), true, health).is_ok(),
            "health checks are open"
        );
    }

    #[test]
    fn without_a_token_the_certificate_decides() {
        let dir = tempfile::tempdir().expect("dir");
        let signer = TestSigner::ed25519("k");
        let tokens = tokens(dir.path(), &signer);
        let service = connection("User:sluice-node", true, false);
        let proved =
            authenticate(Some(&tokens), true, request(Some(&service), None)).expect("certificate");
        assert_eq!(proved.principal.as_str(), "User:sluice-node");
        assert_eq!(
            proved.valid_until_ms, None,
            "a certificate lasts its connection"
        );
        let bare = connection(crate::principal::ANONYMOUS, false, false);
        let refused = authenticate(Some(&tokens), true, request(Some(&bare), None))
            .expect_err("neither token nor certificate");
        assert!(refused.message.contains("token"), "{refused:?}");
        assert!(authenticate(Some(&tokens), false, request(Some(&bare), None)).is_ok());
        let missing = connection(crate::principal::ANONYMOUS, false, true);
        let refused = authenticate(None, false, request(Some(&missing), None))
            .expect_err("the server requires a certificate");
        assert!(
            refused.message.contains("client certificate"),
            "{refused:?}"
        );
        // Without [auth.jwt] a token is ignored, never trusted.
        let ignored =
            authenticate(None, true, request(Some(&bare), Some(b"Bearer x.y.z"))).expect("ignored");
        assert_eq!(ignored.principal.as_str(), crate::principal::ANONYMOUS);
    }
}
