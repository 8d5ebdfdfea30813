//! A server's `[auth]` section: whether every request is authorised, and
//! who may do everything.

use crate::tls::TlsConfig;
use serde::{Deserialize, Serialize};
use sluice_acl::Principal;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Authorise every request: a principal may do only what a super user
    /// may, or what an ACL allows (default-deny). Needs `[tls]` with
    /// `client_ca_file`, which is how principals are known. Default: false.
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
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            super_users: Vec::new(),
            acl_refresh_interval_ms: 500,
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
        vec![crate::KeyRange::new(
            "[auth] acl_refresh_interval_ms",
            self.acl_refresh_interval_ms,
            100,
            60_000,
        )]
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
        if self.enabled && !(tls.enabled && tls.client_ca_file.is_some()) {
            broken.push(
                "[auth] enabled = true needs [tls] enabled = true with client_ca_file: \
                 principals come from client certificates"
                    .to_string(),
            );
        }
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
}
