//! The tower layer that authorises every request by its gRPC method
//! (`sluice_acl::METHOD_RULES`), before the request body is read:
//!
//! - Every request carries its connection's [`Principal`] in its
//!   extensions (for handlers and the audit log).
//! - With `[auth] enabled`: a method without a rule is refused; a method
//!   whose rule acts on the cluster (every store RPC, registration,
//!   heartbeats, segment metadata writes, producer ids, cluster status)
//!   needs that operation on the cluster resource, from a super user or an
//!   ACL; gRPC health checks are open (container probes).
//! - A TLS client without the certificate the server requires is refused
//!   every request but health checks, `UNAUTHENTICATED` with Sluice's
//!   `NOT_AUTHENTICATED` code, whether or not authorisation is on.
//! - Refusals answer `PERMISSION_DENIED` with Sluice's `NOT_AUTHORIZED`
//!   code, and are written to the audit log (target `sluice_audit`).
//!
//! Bindings come from the metadata store (`CreateAcls`, `sluice acl`),
//! reloaded every `[auth] acl_refresh_interval_ms` (`acl_refresh.rs`).
//! Not yet here (issue 13): rules on topics, groups and subscriptions
//! need the resource names inside the request, which handlers check.

use crate::auth_config::AuthConfig;
use crate::connection::ConnectionInfo;
use crate::request_authorizer::RequestAuthorizer;
use sluice_acl::{
    method_rule, AclBinding, Authorizer, DecisionReason, Operation, Principal, Request,
    ResourceSource, ResourceType, CLUSTER_RESOURCE_NAME,
};
use sluice_proto::v1::ErrorCode;
use sluice_proto::SluiceError;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

/// Target of audit log events.
pub const AUDIT_TARGET: &str = "sluice_audit";

/// What the layer decides with.
#[derive(Debug, Clone)]
pub struct AuthorizationLayer {
    enabled: bool,
    super_users: Arc<Vec<Principal>>,
    /// Replaced whole when the ACLs change (`acl_refresh.rs`).
    authorizer: Arc<RwLock<Arc<Authorizer>>>,
}

impl AuthorizationLayer {
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let super_users = config.super_user_principals()?;
        Ok(Self {
            enabled: config.enabled,
            authorizer: Arc::new(RwLock::new(Arc::new(Authorizer::new(
                [],
                super_users.clone(),
            )))),
            super_users: Arc::new(super_users),
        })
    }

    /// No authorisation (principals are still attached).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            super_users: Arc::new(Vec::new()),
            authorizer: Arc::new(RwLock::new(Arc::new(Authorizer::default()))),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Decides with `bindings` (and the super users) from now on.
    pub fn replace_bindings(&self, bindings: Vec<AclBinding>) {
        let authorizer = Arc::new(Authorizer::new(bindings, self.super_users.iter().cloned()));
        *self.authorizer.write().unwrap_or_else(|e| e.into_inner()) = authorizer;
    }

    /// The bindings decided with now.
    pub fn bindings(&self) -> Vec<AclBinding> {
        self.current().bindings().to_vec()
    }

    fn current(&self) -> Arc<Authorizer> {
        self.authorizer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl<S> Layer<S> for AuthorizationLayer {
    type Service = Authorization<S>;

    fn layer(&self, inner: S) -> Authorization<S> {
        Authorization {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authorization<S> {
    inner: S,
    layer: AuthorizationLayer,
}

fn is_health_check(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// The decision for `path` by `principal` from `host`: `Ok` or the refusal.
fn decide(
    layer: &AuthorizationLayer,
    path: &str,
    principal: &Principal,
    host: &str,
) -> Result<(), String> {
    if !layer.enabled || is_health_check(path) {
        return Ok(());
    }
    let Some(rule) = method_rule(path) else {
        return Err(format!("{path} has no authorization rule"));
    };
    if rule.resource != ResourceSource::Cluster {
        return Ok(());
    }
    let request = Request {
        principal,
        host,
        operation: rule.operation,
        resource_type: ResourceType::Cluster,
        resource_name: CLUSTER_RESOURCE_NAME,
    };
    let authorizer = layer.current();
    let decision = authorizer.authorize(&request);
    if decision.allowed {
        return Ok(());
    }
    // Kafka's rule: a principal that may write some topic may be an
    // idempotent producer.
    let writes_some_topic = Request {
        operation: Operation::Write,
        resource_type: ResourceType::Topic,
        resource_name: "",
        ..request
    };
    if rule.operation == Operation::IdempotentWrite && authorizer.allows_some(&writes_some_topic) {
        return Ok(());
    }
    let why = match decision.reason {
        DecisionReason::DeniedBy(binding) => format!("denied by the ACL '{binding}'"),
        _ => "no ACL allows it".to_string(),
    };
    Err(format!(
        "{principal} may not {} on the cluster ({path}): {why}",
        rule.operation
    ))
}

impl<S> Service<http::Request<Body>> for Authorization<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let connection = request.extensions().get::<ConnectionInfo>();
        let principal = connection
            .map(|info| info.principal.clone())
            .unwrap_or_else(crate::principal::anonymous);
        let host = connection
            .and_then(|info| info.tcp.remote_addr())
            .map(|address| address.ip().to_string())
            .unwrap_or_default();
        let path = request.uri().path().to_string();
        let missing_certificate = connection.is_some_and(|info| info.missing_client_certificate);
        if missing_certificate && !is_health_check(&path) {
            tracing::info!(target: AUDIT_TARGET, %host, method = %path, "refused: no client certificate");
            let status: tonic::Status = SluiceError::new(
                ErrorCode::NotAuthenticated,
                "this server requires a client certificate (mutual TLS): connect with one its \
                 client CA signed (SDK: ClientTls identity; CLI: --tls-cert and --tls-key)",
            )
            .into();
            return futures::future::Either::Right(std::future::ready(Ok(status.into_http())));
        }
        match decide(&self.layer, &path, &principal, &host) {
            Ok(()) => {
                let authorizer = self.layer.enabled.then(|| self.layer.current());
                request.extensions_mut().insert(RequestAuthorizer::new(
                    principal.clone(),
                    host,
                    authorizer,
                ));
                request.extensions_mut().insert(principal);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(reason) => {
                tracing::info!(target: AUDIT_TARGET, principal = %principal, %host, method = %path, %reason, "denied");
                let status: tonic::Status =
                    SluiceError::new(ErrorCode::NotAuthorized, reason).into();
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(super_users: &[&str]) -> AuthorizationLayer {
        AuthorizationLayer::new(&AuthConfig {
            enabled: true,
            super_users: super_users.iter().map(|s| s.to_string()).collect(),
            ..AuthConfig::default()
        })
        .expect("valid")
    }

    #[test]
    fn cluster_methods_need_a_super_user_or_an_acl() {
        let node = Principal::user("sluice-node").expect("valid");
        let intruder = Principal::user("intruder").expect("valid");
        let layer = layer(&["User:sluice-node"]);
        for path in [
            "/sluice.v1.Store/DeleteSegment",
            "/sluice.v1.Store/Append",
            "/sluice.v1.NameServer/RegisterNode",
            "/sluice.v1.NameServer/DeregisterNode",
            "/sluice.v1.NameServer/CloseSegment",
        ] {
            assert!(decide(&layer, path, &node, "10.0.0.1").is_ok(), "{path}");
            let refused = decide(&layer, path, &intruder, "10.0.0.1").expect_err(path);
            assert!(refused.contains("User:intruder"), "{refused}");
        }
        let anonymous = crate::principal::anonymous();
        assert!(decide(&layer, "/sluice.v1.Store/Read", &anonymous, "").is_err());
    }

    #[test]
    fn unknown_methods_are_refused_and_health_checks_are_open() {
        let intruder = Principal::user("intruder").expect("valid");
        let layer = layer(&[]);
        assert!(decide(&layer, "/sluice.v1.Store/Nope", &intruder, "").is_err());
        assert!(decide(&layer, "/grpc.health.v1.Health/Check", &intruder, "").is_ok());
        assert!(decide(
            &AuthorizationLayer::disabled(),
            "/sluice.v1.Store/Nope",
            &intruder,
            ""
        )
        .is_ok());
    }
}
