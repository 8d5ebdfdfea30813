//! Group member ids that are no credential (issue 13, ADR 0015).
//!
//! `DescribeGroup` shows member ids to anyone who may describe the group,
//! so an id must not let another principal act as its member:
//!
//! - A new member's id is `<client id>-<128 random bits in hex>`: not
//!   guessable, and the client id prefix keeps it readable.
//! - The coordinator remembers the principal that joined; a heartbeat,
//!   leave, rejoin or commit naming that member from another principal is
//!   refused as `UNKNOWN_MEMBER` (and audit-logged). Why not
//!   `NOT_AUTHORIZED`: to that principal the member does not exist; and a
//!   legitimate client meeting it (its id taken by someone else after its
//!   session expired) rejoins with a fresh id, as for any unknown member,
//!   instead of stopping for good.
//! - Member epochs order a member's own heartbeats; with the principal
//!   check they authorise nothing for anyone else.

use crate::error::BrokerError;
use sluice_acl::Principal;

/// Most characters of the client id kept as a member id's prefix.
pub const MAX_MEMBER_ID_PREFIX_CHARS: usize = 64;

/// A fresh member id for a client called `client_id`.
pub fn new_member_id(client_id: &str) -> String {
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    let prefix: String = prefix.chars().take(MAX_MEMBER_ID_PREFIX_CHARS).collect();
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// `Ok` when `caller` is the principal that joined as `member_id`
/// (`owner`); otherwise `UNKNOWN_MEMBER`, audit-logged.
pub fn check_member_principal(
    group: &str,
    member_id: &str,
    owner: &Principal,
    caller: &Principal,
) -> Result<(), BrokerError> {
    if owner == caller {
        return Ok(());
    }
    tracing::info!(target: sluice_service::AUDIT_TARGET, principal = %caller, %group, member = %member_id, owner = %owner, "denied: a member of another principal");
    Err(BrokerError::UnknownMember {
        group: group.to_string(),
        member_id: member_id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::ErrorCode;

    #[test]
    fn ids_keep_the_prefix_and_carry_128_random_bits() {
        let a = new_member_id("orders-app");
        let b = new_member_id("orders-app");
        assert_ne!(a, b);
        let (prefix, random) = a.rsplit_once('-').expect("prefix-random");
        assert_eq!(prefix, "orders-app");
        assert_eq!(random.len(), 32);
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(new_member_id("").starts_with("member-"));
        let long = new_member_id(&"x".repeat(500));
        assert_eq!(long.len(), MAX_MEMBER_ID_PREFIX_CHARS + 1 + 32);
    }

    #[test]
    fn only_the_joining_principal_may_use_a_member() {
        let alice = Principal::user("alice").expect("valid");
        let mallory = Principal::user("mallory").expect("valid");
        assert!(check_member_principal("g", "m-1", &alice, &alice).is_ok());
        let refused = check_member_principal("g", "m-1", &alice, &mallory).expect_err("not hers");
        assert_eq!(refused.code(), ErrorCode::UnknownMember);
    }
}
