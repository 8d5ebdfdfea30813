//! The HTTP endpoint: `GET /metrics` answers the registry in the
//! OpenMetrics text format (Prometheus scrapes it); anything else is 404.
//! Bounded: at most [`MAX_CONNECTIONS`] scrapers at once (more are closed
//! at accept), request headers within [`HEADER_READ_TIMEOUT_MS`], and a
//! connection at most [`CONNECTION_TIMEOUT_MS`].

use super::MetricsRegistry;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrape connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time for a request's headers.
pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Longest life of one connection (keep-alive included).
pub const CONNECTION_TIMEOUT_MS: u64 = 60_000;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `registry` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: MetricsRegistry,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "metrics endpoint: accept failed");
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&registry, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_millis(CONNECTION_TIMEOUT_MS), connection)
                .await;
            drop(permit);
        });
    }
}

fn answer<B>(registry: &MetricsRegistry, request: &Request<B>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = route(registry, request.method(), request.uri().path());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn route(
    registry: &MetricsRegistry,
    method: &Method,
    path: &str,
) -> (StatusCode, &'static str, String) {
    match (method, path) {
        (&Method::GET, "/metrics") => match registry.encode() {
            Ok(text) => (StatusCode::OK, CONTENT_TYPE, text),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot encode metrics: {error}\n"),
            ),
        },
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "Sluice serves its metrics at /metrics\n".to_string(),
        ),
    }
}
