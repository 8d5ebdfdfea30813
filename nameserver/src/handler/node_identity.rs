//! A node id is bound to the principal that registered its live session
//! (issue 13, ADR 0015).
//!
//! Registration needs `ClusterAction`, but a cluster may hold several
//! cluster identities (one certificate per node): one of them must not
//! take over, end or keep alive another node's session by reusing its id
//! or the session id `ClusterStatus` shows. The node key records the
//! registering principal; while the key lives (the session), registering
//! the id again, heartbeating it or deregistering it is allowed only to
//! that principal. The same principal registering again (a restarted
//! node) replaces its old session as before. A key written before this
//! rule (no principal) binds nobody.
//!
//! Heartbeats are checked before they renew anything once this nameserver
//! knows the session's principal ([`SessionPrincipals`], learned from the
//! node key at registration or at the first heartbeat it read): a foreign
//! identity's heartbeat can then neither keep a dead node's session alive
//! nor restart its silence clock. The first heartbeat a nameserver sees
//! for a session is checked after the renewal (it needs the key read).

use crate::error::NameServerError;
use sluice_acl::Principal;
use std::collections::HashMap;

/// Most sessions whose principal one nameserver remembers; beyond it the
/// memory starts afresh (heartbeats are then checked after renewal until
/// learned again).
pub(crate) const MAX_REMEMBERED_SESSIONS: usize = 100_000;

/// Session id → the principal that registered it, as this nameserver
/// learned it from the metadata store.
#[derive(Debug, Default)]
pub(crate) struct SessionPrincipals(HashMap<u64, String>);

impl SessionPrincipals {
    pub(crate) fn learn(&mut self, session: u64, principal: &str) {
        if self.0.len() >= MAX_REMEMBERED_SESSIONS && !self.0.contains_key(&session) {
            self.0.clear();
        }
        self.0.insert(session, principal.to_string());
    }

    pub(crate) fn forget(&mut self, session: u64) {
        self.0.remove(&session);
    }

    /// The principal of `session`, if known.
    pub(crate) fn of(&self, session: u64) -> Option<&str> {
        self.0.get(&session).map(String::as_str)
    }
}

/// `Ok` when `caller` may act on the session of `key` registered by
/// `recorded`; otherwise `NOT_AUTHORIZED`, audit-logged.
pub(crate) fn check_node_principal(
    key: &str,
    recorded: &str,
    caller: &Principal,
    action: &str,
) -> Result<(), NameServerError> {
    if recorded.is_empty() || recorded == caller.as_str() {
        return Ok(());
    }
    tracing::info!(target: sluice_service::AUDIT_TARGET, principal = %caller, key, owner = recorded, action, "denied: a node session of another principal");
    Err(NameServerError::NotAuthorized(format!(
        "{caller} may not {action} {key}: its live session was registered by {recorded}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{ErrorCode, SluiceError};

    #[test]
    fn only_the_registering_principal_may_act_on_a_live_session() {
        let node = Principal::user("broker-1").expect("valid");
        let rogue = Principal::user("rogue").expect("valid");
        assert!(
            check_node_principal("nodes/broker/b1", "User:broker-1", &node, "register").is_ok()
        );
        assert!(check_node_principal("nodes/broker/b1", "", &rogue, "register").is_ok());
        let refused =
            check_node_principal("nodes/broker/b1", "User:broker-1", &rogue, "deregister")
                .expect_err("another identity");
        let error = SluiceError::from(refused);
        assert_eq!(error.code, ErrorCode::NotAuthorized);
        assert!(
            error.message.contains("User:rogue may not deregister"),
            "{}",
            error.message
        );
    }

    #[test]
    fn session_principals_are_remembered_within_a_bound() {
        let mut known = SessionPrincipals::default();
        known.learn(7, "User:broker-1");
        assert_eq!(known.of(7), Some("User:broker-1"));
        known.forget(7);
        assert_eq!(known.of(7), None);
        for session in 0..MAX_REMEMBERED_SESSIONS as u64 {
            known.learn(session, "User:n");
        }
        known.learn(u64::MAX, "User:m");
        assert_eq!(known.of(u64::MAX), Some("User:m"));
        assert_eq!(known.of(0), None, "started afresh at the bound");
    }
}
