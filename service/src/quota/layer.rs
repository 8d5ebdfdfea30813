//! The tower layer charging every request to its principal's
//! `requests_per_second`, inside the authorization layer (so the principal
//! is known) and before the request's body is read: a throttled request is
//! answered at once THROTTLED with the wait in `sluice-retry-after-ms`
//! (`sluice_proto::SluiceError::retry_after_ms`), which the SDK honours.
//! A request on a connection beyond its principal's `connections` quota is
//! answered THROTTLED saying so, and the connection is closed once those
//! answers are written. Health checks are never limited.
//!
//! The principal is read from the request's extensions (set by the
//! authorization layer; the connection's principal otherwise).

use super::{QuotaKind, Quotas, Verdict};
use crate::connection::ConnectionInfo;
use sluice_acl::Principal;
use sluice_proto::v1::ErrorCode;
use sluice_proto::SluiceError;
use std::task::{Context, Poll};
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct QuotaLayer {
    quotas: Quotas,
}

impl QuotaLayer {
    pub fn new(quotas: Quotas) -> Self {
        Self { quotas }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = QuotaService<S>;

    fn layer(&self, inner: S) -> QuotaService<S> {
        QuotaService {
            inner,
            quotas: self.quotas.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QuotaService<S> {
    inner: S,
    quotas: Quotas,
}

/// The refusal of a request on a connection beyond its principal's
/// connection quota.
pub fn over_connection_quota(principal: &str, limit: u64) -> SluiceError {
    SluiceError::new(
        ErrorCode::Throttled,
        format!(
            "{principal} already has {limit} connections open to this server, its \
             [quotas] connections limit; this connection is closed: reuse an open one"
        ),
    )
}

/// What to do with a request: `None` to serve it.
fn decide(quotas: &Quotas, request: &http::Request<Body>) -> Option<SluiceError> {
    if request.uri().path().starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    let connection = request.extensions().get::<ConnectionInfo>();
    let principal = request
        .extensions()
        .get::<Principal>()
        .or(connection.map(|info| &info.principal))?;
    if let Some(limit) = connection.and_then(|info| info.over_connection_quota) {
        if let Some(info) = connection {
            info.state.request_close();
        }
        return Some(over_connection_quota(principal.as_str(), limit));
    }
    match quotas.admit(principal.as_str(), QuotaKind::Requests, 1) {
        Verdict::Admit => None,
        Verdict::Throttle { wait_ms } => Some(super::throttled(
            principal.as_str(),
            QuotaKind::Requests,
            wait_ms,
        )),
    }
}

impl<S> Service<http::Request<Body>> for QuotaService<S>
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

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match decide(&self.quotas, &request) {
            None => futures::future::Either::Left(self.inner.call(request)),
            Some(refusal) => {
                tracing::debug!(method = %request.uri().path(), %refusal, "throttled");
                let status: tonic::Status = refusal.into();
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{QuotaLimits, QuotasConfig};

    fn request(path: &str, principal: &str) -> http::Request<Body> {
        let mut request = http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("valid");
        request
            .extensions_mut()
            .insert(Principal::new(principal).expect("valid"));
        request
    }

    #[test]
    fn requests_beyond_the_rate_are_throttled_with_a_wait_and_others_go_on() {
        let quotas = Quotas::new(
            &QuotasConfig {
                default: QuotaLimits {
                    requests_per_second: Some(2),
                    ..QuotaLimits::default()
                },
                ..QuotasConfig::default()
            },
            ["User:node".to_string()],
        );
        let path = "/sluice.v1.Broker/ListOffsets";
        // A burst of 2, and the one that goes into debt.
        for _ in 0..3 {
            assert!(decide(&quotas, &request(path, "User:a")).is_none());
        }
        let refused = decide(&quotas, &request(path, "User:a")).expect("throttled");
        assert_eq!(refused.code, ErrorCode::Throttled);
        let wait = refused.retry_after_ms.expect("a wait");
        assert!((1..=500).contains(&wait), "{wait}");
        assert!(refused.message.contains("User:a"), "{}", refused.message);
        assert!(decide(&quotas, &request(path, "User:b")).is_none());
        for _ in 0..100 {
            assert!(decide(&quotas, &request(path, "User:node")).is_none());
            assert!(decide(&quotas, &request("/grpc.health.v1.Health/Check", "User:a")).is_none());
        }
    }
}
