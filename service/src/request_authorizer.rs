//! What a handler asks of authorisation: "may this request's principal do
//! this to the resource named inside it?" The authorisation layer puts a
//! [`RequestAuthorizer`] in every request's extensions (with the ACLs in
//! force when the request arrived); handlers of methods whose rule names a
//! topic, group or subscription call [`RequestAuthorizer::check`] with the
//! names the request carries.

use sluice_acl::{Authorizer, DecisionReason, Operation, Principal, Request, ResourceType};
use sluice_proto::v1::ErrorCode;
use sluice_proto::SluiceError;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct RequestAuthorizer {
    pub principal: Principal,
    host: String,
    /// `None` when authorisation is off: everything is allowed.
    authorizer: Option<Arc<Authorizer>>,
}

impl RequestAuthorizer {
    pub(crate) fn new(
        principal: Principal,
        host: String,
        authorizer: Option<Arc<Authorizer>>,
    ) -> Self {
        Self {
            principal,
            host,
            authorizer,
        }
    }

    /// The request's authoriser; a request that did not pass the layer
    /// (a handler called in-process) is allowed everything.
    pub fn of(extensions: &tonic::Extensions) -> Self {
        extensions.get::<Self>().cloned().unwrap_or_else(|| Self {
            principal: crate::principal::anonymous(),
            host: String::new(),
            authorizer: None,
        })
    }

    /// The request's message once its principal may do `operation` on
    /// every resource `names` gives.
    pub fn checked<T>(
        request: tonic::Request<T>,
        operation: Operation,
        resource_type: ResourceType,
        names: impl FnOnce(&T) -> Vec<String>,
    ) -> Result<T, SluiceError> {
        let authorizer = Self::of(request.extensions());
        let message = request.into_inner();
        for name in names(&message) {
            authorizer.check(operation, resource_type, &name)?;
        }
        Ok(message)
    }

    /// Whether `operation` on the `resource_type` named `name` is allowed.
    pub fn allows(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        self.decide(operation, resource_type, name).is_ok()
    }

    /// `NOT_AUTHORIZED` naming the principal, operation and resource
    /// unless allowed (audit-logged).
    pub fn check(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), SluiceError> {
        self.decide(operation, resource_type, name).map_err(|why| {
            tracing::info!(target: crate::AUDIT_TARGET, principal = %self.principal, host = %self.host, %operation, %resource_type, resource = name, %why, "denied");
            SluiceError::new(
                ErrorCode::NotAuthorized,
                format!(
                    "{} may not {operation} {resource_type} '{name}': {why}",
                    self.principal
                ),
            )
        })
    }

    fn decide(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), String> {
        let Some(authorizer) = &self.authorizer else {
            return Ok(());
        };
        let decision = authorizer.authorize(&Request {
            principal: &self.principal,
            host: &self.host,
            operation,
            resource_type,
            resource_name: name,
        });
        match decision.reason {
            _ if decision.allowed => Ok(()),
            DecisionReason::DeniedBy(binding) => Err(format!("denied by the ACL '{binding}'")),
            _ => Err("no ACL allows it".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_acl::{AclBinding, Host, PatternType, Permission, ResourcePattern};

    #[test]
    fn off_allows_everything_and_on_names_the_refusal() {
        let alice = Principal::user("alice").expect("valid");
        let off = RequestAuthorizer::of(&tonic::Extensions::default());
        assert!(off
            .check(Operation::Write, ResourceType::Topic, "orders")
            .is_ok());
        let binding = AclBinding {
            principal: alice.clone(),
            host: Host::Any,
            operation: Operation::Write,
            permission: Permission::Allow,
            pattern: ResourcePattern::new(ResourceType::Topic, "orders", PatternType::Literal)
                .expect("valid"),
        };
        let on = RequestAuthorizer::new(
            alice,
            "10.0.0.1".into(),
            Some(Arc::new(Authorizer::new([binding], []))),
        );
        assert!(on
            .check(Operation::Write, ResourceType::Topic, "orders")
            .is_ok());
        assert!(on.allows(Operation::Describe, ResourceType::Topic, "orders"));
        let refused = on
            .check(Operation::Read, ResourceType::Topic, "orders")
            .expect_err("no ACL");
        assert_eq!(refused.code, ErrorCode::NotAuthorized);
        assert!(
            refused
                .message
                .contains("User:alice may not Read Topic 'orders'"),
            "{}",
            refused.message
        );
    }
}
