//! `sluice console`: a web UI on localhost over the SDK's [`Admin`].
//!
//! [`run`] serves the bundled page ([`pages`]), a JSON API over the cluster
//! ([`api`]), a message browser ([`browse`]), a search by key or tag and
//! `why` for a subscription ([`search`]), and actions that change topics,
//! groups and subscriptions ([`actions`]). It has **no authentication of its own**: whoever reaches
//! the listener acts with the console's cluster identity (its TLS client
//! certificate or token). So it binds to loopback by default, refuses
//! requests whose `Host` is not the listener (DNS rebinding), and takes
//! actions only as `application/json` POSTs from its own origin (a
//! cross-site form cannot send that without a CORS preflight, which it
//! never grants).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections, request headers within
//! [`HEADER_READ_TIMEOUT_MS`], a connection at most
//! [`CONNECTION_TIMEOUT_MS`], each request answered within
//! [`REQUEST_TIMEOUT_MS`] (the cluster calls inside it give up then), a
//! request body at most [`MAX_REQUEST_BODY_BYTES`].

pub mod actions;
pub mod api;
pub mod browse;
pub mod guard;
pub mod nodes;
pub mod pages;
pub mod params;
pub mod rates;
pub mod search;
pub mod shape;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use sluice_client::{Admin, ClientConfig, ClientError};
use sluice_telemetry::http1::Http1Limits;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Where `sluice console` listens unless told otherwise (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a request's headers.
pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Longest life of one connection (keep-alive included); browsers reconnect.
pub const CONNECTION_TIMEOUT_MS: u64 = 300_000;
/// Longest time one request may take, cluster calls included.
pub const REQUEST_TIMEOUT_MS: u64 = 15_000;
/// Largest request body accepted (actions' JSON).
pub const MAX_REQUEST_BODY_BYTES: usize = 16 * 1024;

/// What every request handler shares.
pub struct Console {
    pub admin: Admin,
    /// Where the listener is bound: the only `Host` accepted.
    pub local_addr: SocketAddr,
    /// Nodes seen in earlier cluster status answers, to report those gone.
    pub nodes: Mutex<nodes::NodeTracker>,
    /// Earlier samples of topic and group counters, for rates.
    pub rates: Mutex<rates::RateTracker>,
}

/// A response body: the whole answer at once.
pub type Body = Full<Bytes>;

/// Connects to the cluster with `config`, then serves the console on
/// `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: ClientConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ClientError> {
    let local_addr = listener
        .local_addr()
        .map_err(|error| ClientError::InvalidArgument(format!("console listener: {error}")))?;
    let admin = Admin::connect(config).await?;
    let console = Arc::new(Console {
        admin,
        local_addr,
        nodes: Mutex::new(nodes::NodeTracker::default()),
        rates: Mutex::new(rates::RateTracker::default()),
    });
    serve(listener, console, shutdown).await;
    Ok(())
}

async fn serve(
    listener: TcpListener,
    console: Arc<Console>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let limits = Http1Limits {
        max_connections: MAX_CONNECTIONS,
        header_read_timeout_ms: HEADER_READ_TIMEOUT_MS,
        connection_timeout_ms: CONNECTION_TIMEOUT_MS,
    };
    let handler = move |request| {
        let console = console.clone();
        async move { answer(&console, request).await }
    };
    sluice_telemetry::http1::serve(listener, limits, "console", handler, shutdown).await;
}

async fn answer(console: &Console, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let mut response = match guard::check(&request, console.local_addr) {
        Err(refusal) => shape::error_response(StatusCode::FORBIDDEN, &refusal),
        Ok(()) => {
            let work = route(console, request);
            match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), work).await {
                Ok(response) => response,
                Err(_) => shape::error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("the cluster did not answer within {REQUEST_TIMEOUT_MS} ms"),
                ),
            }
        }
    };
    guard::add_security_headers(response.headers_mut());
    response
}

async fn route(console: &Console, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if method == Method::POST {
        let body = match Limited::new(request.into_body(), MAX_REQUEST_BODY_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return shape::error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "request body refused (at most {MAX_REQUEST_BODY_BYTES} bytes): {error}"
                    ),
                )
            }
        };
        return actions::handle(console, &path, &body).await;
    }
    if method != Method::GET {
        return shape::error_response(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    if let Some(response) = pages::asset(&path) {
        return response;
    }
    match path.as_str() {
        "/api/messages" => browse::handle(&console.admin, &query).await,
        "/api/messages/find" => search::find(&console.admin, &query).await,
        "/api/messages/why" => search::why(&console.admin, &query).await,
        _ if path.starts_with("/api/") => api::handle(console, &path).await,
        _ => shape::error_response(StatusCode::NOT_FOUND, "no such page"),
    }
}
