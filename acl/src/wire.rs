//! Bindings as they travel and are stored (`sluice_proto::v1::AclBinding`,
//! every part written as text) and back, checked on the way in.

use crate::model::{AclBinding, AclError, ResourcePattern};
use sluice_proto::v1 as proto;

/// Most bindings one create or delete request may carry.
pub const MAX_BINDINGS_PER_REQUEST: usize = 1000;

/// Most bindings a cluster may hold.
pub const MAX_BINDINGS: usize = 100_000;

impl TryFrom<&proto::AclBinding> for AclBinding {
    type Error = AclError;

    fn try_from(wire: &proto::AclBinding) -> Result<Self, AclError> {
        Ok(AclBinding {
            principal: wire.principal.parse()?,
            host: wire.host.parse()?,
            operation: wire.operation.parse()?,
            permission: wire.permission.parse()?,
            pattern: ResourcePattern::new(
                wire.resource_type.parse()?,
                &wire.resource_name,
                wire.pattern_type.parse()?,
            )?,
        })
    }
}

impl From<&AclBinding> for proto::AclBinding {
    fn from(binding: &AclBinding) -> Self {
        proto::AclBinding {
            principal: binding.principal.to_string(),
            host: binding.host.to_string(),
            operation: binding.operation.to_string(),
            permission: binding.permission.to_string(),
            resource_type: binding.pattern.resource_type.to_string(),
            resource_name: binding.pattern.name.clone(),
            pattern_type: binding.pattern.pattern_type.to_string(),
        }
    }
}

/// The stable text of a binding, the same for equal bindings whatever
/// case their parts were written in (a storage key).
pub fn canonical(binding: &AclBinding) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission,
        binding.pattern.resource_type,
        binding.pattern.pattern_type,
        binding.pattern.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> proto::AclBinding {
        proto::AclBinding {
            principal: "User:alice".into(),
            host: "*".into(),
            operation: "read".into(),
            permission: "allow".into(),
            resource_type: "topic".into(),
            resource_name: "orders".into(),
            pattern_type: "prefixed".into(),
        }
    }

    #[test]
    fn bindings_round_trip_and_case_does_not_matter() {
        let binding = AclBinding::try_from(&wire()).expect("valid");
        let back = proto::AclBinding::from(&binding);
        assert_eq!(back.operation, "Read");
        assert_eq!(AclBinding::try_from(&back).expect("valid"), binding);
        let upper = proto::AclBinding {
            operation: "READ".into(),
            ..wire()
        };
        let same = AclBinding::try_from(&upper).expect("valid");
        assert_eq!(canonical(&same), canonical(&binding));
    }

    #[test]
    fn every_bad_part_is_refused_by_name() {
        type Spoil = fn(&mut proto::AclBinding);
        let cases: [(&str, Spoil); 6] = [
            ("principal", |w| w.principal = "alice".into()),
            ("operation", |w| w.operation = "Eat".into()),
            ("permission", |w| w.permission = "Maybe".into()),
            ("resource type", |w| w.resource_type = "Planet".into()),
            ("pattern type", |w| w.pattern_type = "Glob".into()),
            ("resource name", |w| w.resource_name = String::new()),
        ];
        for (what, spoil) in cases {
            let mut bad = wire();
            spoil(&mut bad);
            let error = AclBinding::try_from(&bad).expect_err(what).to_string();
            assert!(error.contains(what), "{what}: {error}");
        }
    }
}
