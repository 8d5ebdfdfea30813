//! A server's `[auth]` section: whether every request is authorised, who
//! may do everything, and bearer tokens (`[auth.jwt]`, `jwt_config.rs`).

use crate::jwt_config::JwtConfig;
use crate::tls::TlsConfig;
use serde::{Deserialize, Serialize};
use sluice_acl::Principal;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Authorise every request: a principal may do only what a super user
    /// may, or what an ACL allows (default-deny). Needs `[tls]` with
    /// `client_ca_file` or `[auth.jwt]`, which are how principals are
    /// known. Default: false.
    pub enabled: bool,
    /// Principals allowed everything, such as the services' own
    /// certificate (`User:sluice-node` from `sluice certs create`).
    /// Default: none.
    pub super_users: Vec<String>,
    /// How often the ACLs are read again (from the metadata store on a
    /// nameserver, from a nameserver elsewhere): a change takes effect
    /// on every node within about this long, in milliseconds. Range:
    /// 100 ..= 60,000. Default: 500.
    pub acl_refresh_interval_ms: u64,
    /// Bearer tokens (JWT) as client identities (`[auth.jwt]`).
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            super_users: Vec::new(),
            acl_refresh_interval_ms: 500,
            jwt: JwtConfig::default(),
        }
    }
}

/// Most super users a config may name.
pub const MAX_SUPER_USERS: usize = 1024;

impl AuthConfig {
    /// The super users as principals; an entry that is not `Type:name` is
    /// an error naming it.
    pub fn super_user_principals(&self) -> Result<Vec<Principal>, String> {
        self.super_users
            .iter()
            .map(|written| {
                Principal::new(written).map_err(|error| format!("[auth] super_users: {error}"))
            })
            .collect()
    }

    /// Every numeric key with its range.
    pub fn ranges(&self) -> Vec<crate::KeyRange> {
        let mut ranges = vec![crate::KeyRange::new(
            "[auth] acl_refresh_interval_ms",
            self.acl_refresh_interval_ms,
            100,
            60_000,
        )];
        ranges.extend(self.jwt.ranges());
        ranges
    }

    /// Rules between keys, `[tls]` included.
    pub fn cross_checks(&self, tls: &TlsConfig) -> Vec<String> {
        let mut broken = Vec::new();
        if let Err(error) = self.super_user_principals() {
            broken.push(error);
        }
        if self.super_users.len() > MAX_SUPER_USERS {
            broken.push(format!(
                "[auth] super_users names {} principals; at most {MAX_SUPER_USERS}",
                self.super_users.len()
            ));
        }
        let identities = tls.client_ca_file.is_some() || self.jwt.enabled;
        if self.enabled && !(tls.enabled && identities) {
            broken.push(
                "[auth] enabled = true needs [tls] enabled = true with client_ca_file or \
                 [auth.jwt] enabled: principals come from client certificates or tokens"
                    .to_string(),
            );
        }
        broken.extend(self.jwt.cross_checks(tls.enabled));
        broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorisation_needs_client_certificates_and_valid_super_users() {
        let on = AuthConfig {
            enabled: true,
            super_users: vec!["User:sluice-node".into()],
            ..AuthConfig::default()
        };
        assert_eq!(on.cross_checks(&TlsConfig::default()).len(), 1);
        let tls = TlsConfig {
            enabled: true,
            client_ca_file: Some("ca.pem".into()),
            ..TlsConfig::default()
        };
        assert!(on.cross_checks(&tls).is_empty());
        let bad = AuthConfig {
            super_users: vec!["sluice-node".into()],
            ..on
        };
        let broken = bad.cross_checks(&tls);
        assert!(broken[0].contains("sluice-node"), "{broken:?}");
    }

    #[test]
    fn tokens_are_enough_over_tls_without_client_certificates() {
        let tls_only = TlsConfig {
            enabled: true,
            cert_file: "server.pem".into(),
            key_file: "server.key".into(),
            ..TlsConfig::default()
        };
        let mut on = AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        };
        assert_eq!(
            on.cross_checks(&tls_only).len(),
            1,
            "no way to know principals"
        );
        on.jwt = JwtConfig {
            enabled: true,
            jwks_file: "jwks.json".into(),
            issuer: "https://issuer.example".into(),
            audience: "sluice".into(),
            ..JwtConfig::default()
        };
        assert_eq!(on.cross_checks(&tls_only), Vec::<String>::new());
        let broken = on.cross_checks(&TlsConfig::default());
        assert!(broken.iter().any(|b| b.contains("plaintext")), "{broken:?}");
    }
}
