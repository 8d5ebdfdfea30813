//! The decision: given the bindings and super users, is this request
//! allowed, and which binding decided it. The rules are in the crate doc.
//!
//! Lookup cost does not grow with the number of bindings: bindings are
//! indexed by resource type, then by literal name (a hash lookup) or by
//! prefix (one walk of a byte trie over the name), then by
//! principal (the principal itself and its type's wildcard). Only bindings
//! that can match are compared. Measured in `benches/authorize.rs`.

use crate::model::{AclBinding, Host, Operation, PatternType, Permission, Principal, ResourceType};
use crate::prefix_trie::PrefixTrie;
use std::collections::{BTreeSet, HashMap, HashSet};

/// One request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub principal: &'a Principal,
    /// The peer's address as the server sees it.
    pub host: &'a str,
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub resource_name: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason<'a> {
    SuperUser,
    AllowedBy(&'a AclBinding),
    DeniedBy(&'a AclBinding),
    /// Default deny: no binding matched.
    NoMatchingAcl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    pub reason: DecisionReason<'a>,
}

/// Bindings of one resource name or prefix, by principal.
#[derive(Debug, Default)]
struct ByPrincipal {
    /// Principal (as written) → indexes into `Authorizer::bindings`.
    exact: HashMap<String, Vec<usize>>,
    /// Principal type (`User`) → bindings of its wildcard (`User:*`).
    wildcard: HashMap<String, Vec<usize>>,
}

impl ByPrincipal {
    fn insert(&mut self, principal: &Principal, index: usize) {
        let written = principal.as_str();
        if principal.is_wildcard() {
            let kind = written.trim_end_matches(":*").to_string();
            self.wildcard.entry(kind).or_default().push(index);
        } else {
            self.exact
                .entry(written.to_string())
                .or_default()
                .push(index);
        }
    }

    fn candidates<'s>(&'s self, principal: &Principal) -> impl Iterator<Item = usize> + 's {
        let written = principal.as_str();
        let kind = written.split_once(':').map_or("", |(kind, _)| kind);
        let exact = self.exact.get(written).into_iter().flatten();
        let wildcard = self.wildcard.get(kind).into_iter().flatten();
        exact.chain(wildcard).copied()
    }
}

/// Bindings of one resource type.
#[derive(Debug, Default)]
struct ByResource {
    literal: HashMap<String, ByPrincipal>,
    prefixed: PrefixTrie<ByPrincipal>,
}

impl ByResource {
    /// The bindings, by principal, of every pattern that covers `name`.
    fn patterns_covering<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s ByPrincipal> {
        let literal = self.literal.get(name).into_iter();
        let wildcard = if name == "*" {
            None
        } else {
            self.literal.get("*")
        };
        literal
            .chain(wildcard)
            .chain(self.prefixed.prefixes_of(name))
    }
}

/// Decides requests against a fixed set of bindings; build a new one when
/// the bindings change.
#[derive(Debug, Default)]
pub struct Authorizer {
    bindings: Vec<AclBinding>,
    super_users: HashSet<Principal>,
    by_type: HashMap<ResourceType, ByResource>,
}

impl Authorizer {
    /// Duplicated bindings count once.
    pub fn new(
        bindings: impl IntoIterator<Item = AclBinding>,
        super_users: impl IntoIterator<Item = Principal>,
    ) -> Self {
        let bindings: Vec<AclBinding> = bindings
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut by_type: HashMap<ResourceType, ByResource> = HashMap::new();
        for (index, binding) in bindings.iter().enumerate() {
            let resource = by_type.entry(binding.pattern.resource_type).or_default();
            let name = &binding.pattern.name;
            let principals = match binding.pattern.pattern_type {
                PatternType::Literal => resource.literal.entry(name.clone()).or_default(),
                PatternType::Prefixed => resource.prefixed.entry(name),
            };
            principals.insert(&binding.principal, index);
        }
        Self {
            bindings,
            super_users: super_users.into_iter().collect(),
            by_type,
        }
    }

    pub fn bindings(&self) -> &[AclBinding] {
        &self.bindings
    }

    /// Whether some binding allows `request.operation` on some resource
    /// of `request.resource_type` (its name is ignored): Kafka's rule that
    /// `Write` on any topic lets a producer be idempotent. A linear scan,
    /// for rare requests only.
    pub fn allows_some(&self, request: &Request<'_>) -> bool {
        if self.super_users.contains(request.principal) {
            return true;
        }
        let wildcard = request.principal.wildcard_of_type();
        self.bindings.iter().any(|binding| {
            binding.permission == Permission::Allow
                && (binding.principal == *request.principal
                    || binding.principal.as_str() == wildcard)
                && host_matches(&binding.host, request.host)
                && binding.pattern.resource_type == request.resource_type
                && binding.operation.allows(request.operation)
        })
    }

    pub fn authorize(&self, request: &Request<'_>) -> Decision<'_> {
        if self.super_users.contains(request.principal) {
            return Decision {
                allowed: true,
                reason: DecisionReason::SuperUser,
            };
        }
        let Some(resource) = self.by_type.get(&request.resource_type) else {
            return denied_by_default();
        };
        let mut allowed_by = None;
        for principals in resource.patterns_covering(request.resource_name) {
            for index in principals.candidates(request.principal) {
                let binding = &self.bindings[index];
                if !host_matches(&binding.host, request.host) {
                    continue;
                }
                match binding.permission {
                    Permission::Deny if binding.operation.denies(request.operation) => {
                        return Decision {
                            allowed: false,
                            reason: DecisionReason::DeniedBy(binding),
                        };
                    }
                    Permission::Allow if binding.operation.allows(request.operation) => {
                        allowed_by.get_or_insert(binding);
                    }
                    _ => {}
                }
            }
        }
        match allowed_by {
            Some(binding) => Decision {
                allowed: true,
                reason: DecisionReason::AllowedBy(binding),
            },
            None => denied_by_default(),
        }
    }
}

fn denied_by_default() -> Decision<'static> {
    Decision {
        allowed: false,
        reason: DecisionReason::NoMatchingAcl,
    }
}

fn host_matches(binding: &Host, host: &str) -> bool {
    match binding {
        Host::Any => true,
        Host::Exact(exact) => exact == host,
    }
}

#[cfg(test)]
mod tests;
