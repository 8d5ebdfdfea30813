//! Validated names for topics, consumer groups and subscriptions.
//!
//! Names end up in etcd keys and log lines, so the rules are strict: 1 to
//! [`MAX_NAME_BYTES`] bytes of ASCII letters, digits, `.`, `_` and `-`; not
//! `.` or `..`; no `/`, NUL, spaces or other characters. Names starting with
//! `__` are reserved for internal topics.

use crate::limits::MAX_NAME_BYTES;
use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name is {length} bytes long; the limit is {MAX_NAME_BYTES}")]
    TooLong { kind: &'static str, length: usize },
    #[error("{kind} name {name:?} contains {character:?} at byte {position}; allowed are ASCII letters, digits, '.', '_' and '-'")]
    BadCharacter {
        kind: &'static str,
        name: String,
        character: char,
        position: usize,
    },
    #[error("{kind} name {name:?} is not allowed")]
    Reserved { kind: &'static str, name: String },
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            kind,
            length: name.len(),
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved {
            kind,
            name: name.to_string(),
        });
    }
    for (position, character) in name.char_indices() {
        let allowed = character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-');
        if !allowed {
            return Err(NameError::BadCharacter {
                kind,
                name: name.escape_debug().to_string(),
                character,
                position,
            });
        }
    }
    Ok(())
}

/// A topic name that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates a user-supplied topic name. Names starting with `__` are
    /// refused here; see [`TopicName::internal`].
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate("topic", name)?;
        if name.starts_with("__") {
            return Err(NameError::Reserved {
                kind: "topic",
                name: name.to_string(),
            });
        }
        Ok(Self(name.to_string()))
    }

    /// Validates a name that may be internal (`__consumer_offsets`); used
    /// where clients legitimately refer to internal topics (fetch, describe).
    pub fn any(name: &str) -> Result<Self, NameError> {
        validate("topic", name)?;
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_internal(&self) -> bool {
        self.0.starts_with("__")
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A consumer-group name that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate("group", name)?;
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A transactional id (ADR 0016 §1) that passed validation: the rules of
/// a group name (it is an ACL resource name and a log record key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionalId(String);

impl TransactionalId {
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate("transactional id", name)?;
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TransactionalId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A subscription name that passed validation: the same rules as a
/// user-supplied topic name (it ends up in the key
/// `subscriptions/{topic}/{name}` and in the default dead-letter topic's
/// name). Names starting with `__` are reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionName(String);

impl SubscriptionName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate("subscription", name)?;
        if name.starts_with("__") {
            return Err(NameError::Reserved {
                kind: "subscription",
                name: name.to_string(),
            });
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Validates a node id (broker or store): same character rules as topics.
pub fn validate_node_id(node_id: &str) -> Result<(), NameError> {
    validate("node", node_id)
}

/// The internal topic holding consumer-group commits.
pub const CONSUMER_OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The internal topic holding transaction coordinators' state (ADR 0016
/// §2.1).
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "orders",
            "a",
            "Orders.v2_eu-west",
            &"x".repeat(MAX_NAME_BYTES),
        ] {
            assert!(TopicName::new(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        let overlong = "x".repeat(MAX_NAME_BYTES + 1);
        for name in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\0b",
            "with space",
            "é",
            "__internal",
            &overlong,
        ] {
            assert!(TopicName::new(name).is_err(), "{name:?} should be refused");
        }
        assert!(GroupName::new("../etc").is_err());
        for name in [
            "",
            "../x",
            "a/b",
            "__internal",
            &"s".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(
                SubscriptionName::new(name).is_err(),
                "subscription {name:?} should be refused"
            );
        }
        assert!(SubscriptionName::new("billing.v2_eu-west").is_ok());
        let error = SubscriptionName::new("a b").unwrap_err().to_string();
        assert!(error.starts_with("subscription name"), "{error}");
        assert!(TopicName::any(CONSUMER_OFFSETS_TOPIC).is_ok());
        assert!(TopicName::any(TRANSACTION_STATE_TOPIC).is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let error = TopicName::new("a/b").unwrap_err().to_string();
        assert!(error.contains("'/'"), "{error}");
    }
}
