//! The audit log of admin actions (target `sluice_audit`): every request
//! whose method changes what the cluster holds or allows — the rules in
//! `sluice_acl::METHOD_RULES` with `Create`, `Delete` or `Alter` (topics,
//! subscriptions, ACLs, accepting data loss) — is logged once it has been
//! answered, with its principal, host, method and outcome (the gRPC status
//! code, and Sluice's code when it failed). Denials are logged where they
//! are decided (`authorization.rs`, `request_authorizer.rs`), so together
//! the log holds every admin action and every refusal.
//!
//! The layer runs inside the authorisation layer: it sees only requests
//! that passed it, with their principal in the extensions. The names of
//! the resources acted on are in the request bodies, which the handlers
//! log as they act (e.g. "topic created").

use crate::authorization::AUDIT_TARGET;
use sluice_acl::{method_rule, Operation, Principal};
use sluice_proto::error::ERROR_CODE_METADATA_KEY;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Whether a method's rule makes it an admin action.
pub fn is_admin_method(path: &str) -> bool {
    method_rule(path).is_some_and(|rule| {
        matches!(
            rule.operation,
            Operation::Create | Operation::Delete | Operation::Alter
        )
    })
}

/// What an answered admin request's headers say happened: `"OK"` (a
/// successful unary answer carries its status in the trailers), or the
/// gRPC code and Sluice's code of a refusal.
pub fn outcome_of(headers: &http::HeaderMap) -> String {
    let Some(status) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) else {
        return "OK".to_string();
    };
    let code = status
        .parse::<i32>()
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Unknown);
    if code == tonic::Code::Ok {
        return "OK".to_string();
    }
    match headers
        .get(ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
    {
        Some(sluice_code) => format!("{code:?} ({sluice_code})"),
        None => format!("{code:?}"),
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLayer;

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Audit<S> {
        Audit { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Audit<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Audit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, BoxFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_string();
        if !is_admin_method(&path) {
            return futures::future::Either::Left(self.inner.call(request));
        }
        let principal = request
            .extensions()
            .get::<Principal>()
            .map(|principal| principal.to_string())
            .unwrap_or_else(|| crate::principal::ANONYMOUS.to_string());
        let host = request
            .extensions()
            .get::<crate::connection::ConnectionInfo>()
            .and_then(|info| info.tcp.remote_addr())
            .map(|address| address.ip().to_string())
            .unwrap_or_default();
        let response = self.inner.call(request);
        futures::future::Either::Right(Box::pin(async move {
            let response = response.await;
            let outcome = match &response {
                Ok(response) => outcome_of(response.headers()),
                Err(_) => "failed in transport".to_string(),
            };
            tracing::info!(target: AUDIT_TARGET, %principal, %host, method = %path, %outcome, "admin action");
            response
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_methods_are_the_ones_that_change_what_the_cluster_holds_or_allows() {
        for path in [
            "/sluice.v1.NameServer/CreateTopic",
            "/sluice.v1.NameServer/DeleteTopic",
            "/sluice.v1.NameServer/CreateSubscription",
            "/sluice.v1.NameServer/DeleteSubscription",
            "/sluice.v1.NameServer/CreateAcls",
            "/sluice.v1.NameServer/DeleteAcls",
            "/sluice.v1.NameServer/AcceptDataLoss",
        ] {
            assert!(is_admin_method(path), "{path}");
        }
        for path in [
            "/sluice.v1.Broker/Produce",
            "/sluice.v1.Broker/Fetch",
            "/sluice.v1.Store/Append",
            "/sluice.v1.NameServer/ListAcls",
            "/sluice.v1.NameServer/Nope",
        ] {
            assert!(!is_admin_method(path), "{path}");
        }
    }

    #[test]
    fn outcomes_name_the_refusal() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(outcome_of(&headers), "OK");
        headers.insert("grpc-status", "0".parse().expect("valid"));
        assert_eq!(outcome_of(&headers), "OK");
        headers.insert("grpc-status", "7".parse().expect("valid"));
        assert_eq!(outcome_of(&headers), "PermissionDenied");
        headers.insert(
            ERROR_CODE_METADATA_KEY,
            "ERROR_CODE_NOT_AUTHORIZED".parse().expect("valid"),
        );
        assert_eq!(
            outcome_of(&headers),
            "PermissionDenied (ERROR_CODE_NOT_AUTHORIZED)"
        );
        headers.insert("grpc-status", "garbage".parse().expect("valid"));
        assert!(outcome_of(&headers).starts_with("Unknown"));
    }

    /// Answers every request NOT_FOUND, as a handler would.
    struct NotFound;

    impl Service<http::Request<()>> for NotFound {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(());
            response
                .headers_mut()
                .insert("grpc-status", "5".parse().expect("valid"));
            std::future::ready(Ok(response))
        }
    }

    /// The log lines written while `run` runs.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_admin_request_is_logged_with_its_principal_and_outcome() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut audit = AuditLayer.layer(NotFound);
        for path in [
            "/sluice.v1.NameServer/DeleteTopic",
            "/sluice.v1.Broker/Fetch",
        ] {
            let mut request = http::Request::new(());
            *request.uri_mut() = path.parse().expect("valid");
            request
                .extensions_mut()
                .insert(Principal::user("alice").expect("valid"));
            audit.call(request).await.expect("answered");
        }
        let log =
            String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "only the admin action is logged: {log}");
        for part in [
            "sluice_audit",
            "admin action",
            "principal=User:alice",
            "DeleteTopic",
            "outcome=NotFound",
        ] {
            assert!(lines[0].contains(part), "{part} missing in {log}");
        }
    }
}
