//! What an ACL binding is made of, how each part is written (`Display` and
//! `FromStr` agree, for the CLI, the stored form and the audit log), and
//! the limits a binding must keep.

use std::fmt;
use std::str::FromStr;

/// Longest principal, host or resource name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// The name of the one cluster resource (Kafka's `kafka-cluster`).
pub const CLUSTER_RESOURCE_NAME: &str = "sluice-cluster";

/// Why a binding or one of its parts was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("{what} '{value}' is not valid: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> AclError {
    let mut value = value.to_string();
    if value.len() > 64 {
        let mut cut = 64;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push('…');
    }
    AclError::Invalid { what, value, why }
}

fn check_name(what: &'static str, value: &str) -> Result<(), AclError> {
    if value.is_empty() {
        return Err(invalid(what, value, "empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(invalid(what, value, "longer than 1024 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(what, value, "contains a control character"));
    }
    Ok(())
}

/// Who is asking: `Type:name`, such as `User:alice` (from a token's
/// subject or a certificate's name). `User:*` in a binding matches every
/// `User:` principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

impl Principal {
    pub fn new(value: &str) -> Result<Self, AclError> {
        check_name("principal", value)?;
        match value.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                Ok(Self(value.to_string()))
            }
            _ => Err(invalid(
                "principal",
                value,
                "must be Type:name, such as User:alice",
            )),
        }
    }

    /// `User:<name>`.
    pub fn user(name: &str) -> Result<Self, AclError> {
        Self::new(&format!("User:{name}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The wildcard of this principal's type (`User:*` for `User:alice`).
    pub fn wildcard_of_type(&self) -> String {
        let kind = self.0.split_once(':').map_or("", |(kind, _)| kind);
        format!("{kind}:*")
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.ends_with(":*")
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Principal {
    type Err = AclError;
    fn from_str(value: &str) -> Result<Self, AclError> {
        Self::new(value)
    }
}

/// Where a request may come from: any host, or one address as the server
/// sees it (an IP address written as `Display` writes it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Any,
    Exact(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Any => f.write_str("*"),
            Host::Exact(host) => f.write_str(host),
        }
    }
}

impl FromStr for Host {
    type Err = AclError;
    fn from_str(value: &str) -> Result<Self, AclError> {
        if value == "*" {
            return Ok(Host::Any);
        }
        check_name("host", value)?;
        Ok(Host::Exact(value.to_string()))
    }
}

/// Generates a fieldless enum with one written name per variant.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL_VALUES: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = AclError;
            fn from_str(value: &str) -> Result<Self, AclError> {
                $name::ALL_VALUES
                    .iter()
                    .copied()
                    .find(|candidate| candidate.as_str().eq_ignore_ascii_case(value))
                    .ok_or_else(|| invalid($what, value, concat!("not one of: ", $($text, " "),+)))
            }
        }
    };
}

named_enum!(
    /// What a request does (Kafka's operations, with the same meanings).
    Operation, "operation" {
        /// Matches every operation (in a binding only).
        All = "All",
        Read = "Read",
        Write = "Write",
        Create = "Create",
        Delete = "Delete",
        Alter = "Alter",
        Describe = "Describe",
        /// What one service does to another: replication, registration,
        /// segment metadata, internal groups.
        ClusterAction = "ClusterAction",
        /// Allocating a producer id for idempotent produce.
        IdempotentWrite = "IdempotentWrite",
    }
);

impl Operation {
    /// Whether an allow binding of `self` allows `requested`: itself,
    /// everything for `All`, and `Describe` for the operations that use a
    /// resource.
    pub fn allows(self, requested: Operation) -> bool {
        self == requested
            || self == Operation::All
            || (requested == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
    }

    /// Whether a deny binding of `self` denies `requested`: itself, or
    /// everything for `All`.
    pub fn denies(self, requested: Operation) -> bool {
        self == requested || self == Operation::All
    }
}

named_enum!(
    /// What kind of thing a binding is about.
    ResourceType, "resource type" {
        Topic = "Topic",
        Group = "Group",
        /// A subscription, named `<topic>/<subscription>`.
        Subscription = "Subscription",
        TransactionalId = "TransactionalId",
        /// The cluster itself, named [`CLUSTER_RESOURCE_NAME`].
        Cluster = "Cluster",
    }
);

named_enum!(
    /// How a binding's resource name is compared.
    PatternType, "pattern type" {
        /// The name itself; the literal `*` matches every name.
        Literal = "Literal",
        /// Every name that starts with it.
        Prefixed = "Prefixed",
    }
);

named_enum!(
    Permission, "permission" {
        Allow = "Allow",
        Deny = "Deny",
    }
);

/// Which resources a binding covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourcePattern {
    pub resource_type: ResourceType,
    pub name: String,
    pub pattern_type: PatternType,
}

impl ResourcePattern {
    pub fn new(
        resource_type: ResourceType,
        name: &str,
        pattern_type: PatternType,
    ) -> Result<Self, AclError> {
        check_name("resource name", name)?;
        if pattern_type == PatternType::Prefixed && name == "*" {
            return Err(invalid(
                "resource name",
                name,
                "a prefixed pattern cannot be '*' (use the literal '*' for every name)",
            ));
        }
        if resource_type == ResourceType::Cluster && name != CLUSTER_RESOURCE_NAME && name != "*" {
            return Err(invalid(
                "resource name",
                name,
                "the cluster resource is named 'sluice-cluster'",
            ));
        }
        Ok(Self {
            resource_type,
            name: name.to_string(),
            pattern_type,
        })
    }

    /// Whether this pattern covers the resource `name` of its type.
    pub fn covers(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.name == name || self.name == "*",
            PatternType::Prefixed => name.starts_with(&self.name),
        }
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.resource_type, self.pattern_type, self.name
        )
    }
}

/// One rule: `principal` is `permission`ed to do `operation` on the
/// resources `pattern` covers, from `host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclBinding {
    pub principal: Principal,
    pub host: Host,
    pub operation: Operation,
    pub permission: Permission,
    pub pattern: ResourcePattern,
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} from {}",
            self.permission, self.principal, self.operation, self.pattern, self.host
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_type_and_name() {
        assert!(Principal::new("User:alice").is_ok());
        assert!(Principal::new("User:*").expect("wildcard").is_wildcard());
        for bad in ["", "alice", ":alice", "User:", "User:a\u{0}b"] {
            assert!(Principal::new(bad).is_err(), "{bad:?}");
        }
        let long = format!("User:{}", "a".repeat(MAX_NAME_BYTES));
        let error = Principal::new(&long).expect_err("too long");
        assert!(
            error.to_string().len() < 200,
            "the error quotes a bounded excerpt"
        );
        assert_eq!(
            Principal::user("bob").expect("valid").wildcard_of_type(),
            "User:*"
        );
    }

    #[test]
    fn written_names_read_back_case_insensitively() {
        for operation in Operation::ALL_VALUES {
            assert_eq!(operation.as_str().parse::<Operation>(), Ok(*operation));
            let lower = operation.as_str().to_lowercase();
            assert_eq!(lower.parse::<Operation>(), Ok(*operation));
        }
        for kind in ResourceType::ALL_VALUES {
            assert_eq!(kind.to_string().parse::<ResourceType>(), Ok(*kind));
        }
        let error = "Eat".parse::<Operation>().expect_err("unknown");
        assert!(error.to_string().contains("ClusterAction"), "{error}");
        assert_eq!("*".parse::<Host>(), Ok(Host::Any));
        assert_eq!(
            "10.0.0.1".parse::<Host>(),
            Ok(Host::Exact("10.0.0.1".into()))
        );
    }

    #[test]
    fn allow_implies_describe_but_deny_only_denies_itself() {
        use Operation::*;
        for using in [Read, Write, Delete, Alter] {
            assert!(using.allows(Describe));
            assert!(!using.denies(Describe));
        }
        assert!(!Create.allows(Describe));
        assert!(!ClusterAction.allows(Describe));
        assert!(!Read.allows(Write));
        for requested in Operation::ALL_VALUES {
            assert!(All.allows(*requested));
            assert!(All.denies(*requested));
        }
    }

    #[test]
    fn patterns_cover_literally_by_wildcard_or_by_prefix() {
        let literal =
            ResourcePattern::new(ResourceType::Topic, "orders", PatternType::Literal).expect("ok");
        assert!(literal.covers("orders"));
        assert!(!literal.covers("orders-eu"));
        let any = ResourcePattern::new(ResourceType::Topic, "*", PatternType::Literal).expect("ok");
        assert!(any.covers("anything"));
        let prefix =
            ResourcePattern::new(ResourceType::Topic, "orders", PatternType::Prefixed).expect("ok");
        assert!(prefix.covers("orders") && prefix.covers("orders-eu"));
        assert!(!prefix.covers("order"));
        assert!(ResourcePattern::new(ResourceType::Topic, "*", PatternType::Prefixed).is_err());
        assert!(ResourcePattern::new(ResourceType::Topic, "", PatternType::Literal).is_err());
        assert!(
            ResourcePattern::new(ResourceType::Cluster, "other", PatternType::Literal).is_err()
        );
        assert!(ResourcePattern::new(
            ResourceType::Cluster,
            CLUSTER_RESOURCE_NAME,
            PatternType::Literal
        )
        .is_ok());
    }
}
