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
//! - Who the request comes from is decided first (`authentication.rs`:
//!   the connection's certificate, or with `[auth.jwt]` a bearer token);
//!   a request that proves no acceptable identity (a TLS client without
//!   the certificate the server requires, an invalid token, neither token
//!   nor certificate where tokens are on) is refused every request but
//!   health checks, `UNAUTHENTICATED` with Sluice's `NOT_AUTHENTICATED`
//!   code, audit-logged, whether or not authorisation is on.
//! - Refusals answer `PERMISSION_DENIED` with Sluice's `NOT_AUTHORIZED`
//!   code, and are written to the audit log (target `sluice_audit`).
//!
//! Bindings come from the metadata store (`CreateAcls`, `sluice acl`),
//! reloaded every `[auth] acl_refresh_interval_ms` (`acl_refresh.rs`).
//! Not yet here (issue 13): rules on topics, groups and subscriptions
//! need the resource names inside the request, which handlers check.

use crate::auth_config::AuthConfig;
use crate::authentication::{authenticate, Credentials};
use crate::connection::ConnectionInfo;
use crate::credential_expiry::end_when_expired;
use crate::request_authorizer::RequestAuthorizer;
use crate::revocable_body::end_when_revoked;
use crate::token_auth::TokenAuthenticator;
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
    /// Bearer tokens (`[auth.jwt]`), when on.
    tokens: Option<Arc<TokenAuthenticator>>,
}

impl AuthorizationLayer {
    /// With `[auth.jwt]` on, loads its JWKS file (an error names it).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let super_users = config.super_user_principals()?;
        let tokens = if config.jwt.enabled {
            Some(Arc::new(TokenAuthenticator::load(&config.jwt)?))
        } else {
            None
        };
        Ok(Self {
            tokens,
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
            tokens: None,
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

type Answer<F, E> = futures::future::Either<
    F,
    futures::future::Either<
        std::future::Ready<Result<http::Response<Body>, E>>,
        futures::future::BoxFuture<'static, Result<http::Response<Body>, E>>,
    >,
>;

fn refused<F, E>(status: tonic::Status) -> Answer<F, E> {
    futures::future::Either::Right(futures::future::Either::Left(std::future::ready(Ok(
        status.into_http(),
    ))))
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
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let connection = request.extensions().get::<ConnectionInfo>();
        // A stream on a connection with a client certificate ends if that
        // certificate is revoked (`revocable_body.rs`).
        let revocable = connection
            .filter(|info| info.peer_certificates.is_some())
            .map(|info| info.state.clone());
        let host = connection
            .and_then(|info| info.tcp.remote_addr())
            .map(|address| address.ip().to_string())
            .unwrap_or_default();
        let path = request.uri().path().to_string();
        let credentials = Credentials {
            connection,
            authorization: request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|value| value.as_bytes()),
            health_check: is_health_check(&path),
        };
        let (principal, valid_until_ms) = match authenticate(
            self.layer.tokens.as_deref(),
            self.layer.enabled,
            credentials,
        ) {
            Ok(proved) => (proved.principal, proved.valid_until_ms),
            Err(refusal) => {
                tracing::info!(target: AUDIT_TARGET, %host, method = %path, reason = %refusal.message, "{}", refusal.audit);
                let status: tonic::Status =
                    SluiceError::new(ErrorCode::NotAuthenticated, refusal.message).into();
                return refused(status);
            }
        };
        match decide(&self.layer, &path, &principal, &host) {
            Ok(()) => {
                let authorizer = self.layer.enabled.then(|| self.layer.current());
                request.extensions_mut().insert(RequestAuthorizer::new(
                    principal.clone(),
                    host,
                    authorizer,
                ));
                request.extensions_mut().insert(principal);
                let answer = self.inner.call(request);
                if valid_until_ms.is_none() && revocable.is_none() {
                    return futures::future::Either::Left(answer);
                }
                futures::future::Either::Right(futures::future::Either::Right(Box::pin(
                    async move {
                        let mut response = answer.await?;
                        if let Some(valid_until_ms) = valid_until_ms {
                            response = end_when_expired(response, valid_until_ms);
                        }
                        if let Some(state) = revocable {
                            response = end_when_revoked(response, state);
                        }
                        Ok(response)
                    },
                )))
            }
            Err(reason) => {
                tracing::info!(target: AUDIT_TARGET, principal = %principal, %host, method = %path, %reason, "denied");
                let status: tonic::Status =
                    SluiceError::new(ErrorCode::NotAuthorized, reason).into();
                refused(status)
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

    /// Every store RPC and every registration, session and segment
    /// metadata write is refused to a client that may do anything to every
    /// topic, group and subscription but holds no `ClusterAction` (the
    /// lesson of Kafka CVE-2018-1288), and allowed to the nodes.
    #[test]
    fn every_method_between_services_needs_cluster_action() {
        use sluice_acl::{Host, PatternType, Permission, ResourcePattern, METHOD_RULES};
        let node = Principal::user("sluice-node").expect("valid");
        let client = Principal::user("client").expect("valid");
        let layer = layer(&["User:sluice-node"]);
        let everything_but_the_cluster: Vec<AclBinding> = [
            ResourceType::Topic,
            ResourceType::Group,
            ResourceType::Subscription,
        ]
        .into_iter()
        .map(|resource_type| AclBinding {
            principal: client.clone(),
            host: Host::Any,
            operation: Operation::All,
            permission: Permission::Allow,
            pattern: ResourcePattern::new(resource_type, "*", PatternType::Literal).expect("valid"),
        })
        .collect();
        layer.replace_bindings(everything_but_the_cluster);
        let between_services: Vec<&str> = METHOD_RULES
            .iter()
            .filter(|rule| rule.operation == Operation::ClusterAction)
            .map(|rule| rule.path)
            .collect();
        for must in [
            "/sluice.v1.Store/",
            "/sluice.v1.NameServer/RegisterNode",
            "/sluice.v1.NameServer/Heartbeat",
            "/sluice.v1.NameServer/DeregisterNode",
            "/sluice.v1.NameServer/CreateSegment",
            "/sluice.v1.NameServer/CloseSegment",
            "/sluice.v1.NameServer/DeleteSegments",
            "/sluice.v1.NameServer/GetProducerIdKey",
        ] {
            let covered = METHOD_RULES
                .iter()
                .filter(|rule| rule.path.starts_with(must));
            let mut count = 0;
            for rule in covered {
                assert_eq!(rule.operation, Operation::ClusterAction, "{}", rule.path);
                count += 1;
            }
            assert!(count > 0, "no rule for {must}");
        }
        for path in between_services {
            assert!(decide(&layer, path, &node, "10.0.0.1").is_ok(), "{path}");
            let refused = decide(&layer, path, &client, "10.0.0.1").expect_err(path);
            assert!(refused.contains("ClusterAction"), "{path}: {refused}");
        }
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
