//! The HTTP endpoint: `GET /metrics` answers the registry in the
//! OpenMetrics text format (Prometheus scrapes it); anything else is 404.
//! Bounded: at most [`MAX_CONNECTIONS`] scrapers at once (more are closed
//! at accept), request headers within [`HEADER_READ_TIMEOUT_MS`], and a
//! connection at most [`CONNECTION_TIMEOUT_MS`].

use super::MetricsRegistry;
use crate::http1::Http1Limits;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::future::Future;
use tokio::net::TcpListener;

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
    let limits = Http1Limits {
        max_connections: MAX_CONNECTIONS,
        header_read_timeout_ms: HEADER_READ_TIMEOUT_MS,
        connection_timeout_ms: CONNECTION_TIMEOUT_MS,
    };
    let handler = move |request: Request<hyper::body::Incoming>| {
        let answer = answer(&registry, &request);
        async move { answer }
    };
    crate::http1::serve(listener, limits, "metrics endpoint", handler, shutdown).await;
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
