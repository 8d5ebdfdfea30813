//! Authorisation for Sluice (issue 13): who may do what to which resource.
//!
//! The rules, in the order the authoriser applies them (Kafka's
//! `AclAuthorizer` semantics, with authorisation on meaning default-deny):
//!
//! 1. A configured **super user** is allowed everything.
//! 2. An ACL **matches** a request when its principal is the request's
//!    (or the wildcard `User:*`), its host is the request's (or `*`), its
//!    operation is the request's (or `All`), and its resource pattern
//!    covers the resource: a literal pattern equal to the name (or the
//!    literal `*`), or a prefixed pattern the name starts with.
//! 3. **Deny wins:** any matching deny ACL denies, whatever allows.
//! 4. Otherwise a matching allow ACL allows. An allow of `Read`, `Write`,
//!    `Delete` or `Alter` also allows `Describe` of the same resource (one
//!    cannot use a topic without seeing it); a deny denies only its own
//!    operation (or all, for `All`).
//! 5. **No matching ACL: denied.**
//!
//! - `model.rs`: principals, operations, resource types, patterns, bindings
//!   and their limits.
//! - `authorizer.rs`: the index of bindings and the decision, with the
//!   binding that decided it (for the audit log).
//! - `prefix_trie.rs`: every stored prefix of a name in one walk.
//! - `wire.rs`: bindings as they travel and are stored.
//! - `producer_id.rs`: producer ids bound to the principal they were
//!   issued to (a keyed tag in the id's low bits; ADR 0015).
//! - `methods.rs`: every gRPC method's operation and resource; a test fails
//!   when the proto gains a method without an entry.
//!
//! Pure: no IO, no clock. Where bindings are stored (etcd, through the
//! nameserver) and how a request's principal is authenticated live
//! elsewhere.

mod authorizer;
mod methods;
mod model;
mod prefix_trie;
mod producer_id;
mod wire;

pub use authorizer::{Authorizer, Decision, DecisionReason, Request};
pub use methods::{method_rule, MethodRule, ResourceSource, METHOD_RULES};
pub use model::{
    AclBinding, AclError, Host, Operation, PatternType, Permission, Principal, ResourcePattern,
    ResourceType, CLUSTER_RESOURCE_NAME, MAX_NAME_BYTES,
};
pub use producer_id::{
    ProducerIdError, ProducerIdKey, MAX_PRODUCER_ID_COUNTER, PRODUCER_ID_KEY_BYTES,
    PRODUCER_ID_TAG_BITS,
};
pub use wire::{canonical, MAX_BINDINGS, MAX_BINDINGS_PER_REQUEST};
