//! The tower layer every request passes: counts the server's and the
//! connection's open streams while the request or its response is alive
//! (answering a stream beyond `max_concurrent_streams` RESOURCE_EXHAUSTED
//! at once, unread; the connection's count drives its idle timeout), and
//! charges the bytes of request messages in progress to the
//! connection's and the server's in-flight budgets, failing the stream
//! with RESOURCE_EXHAUSTED when either is exhausted. Both refusals carry
//! Sluice's THROTTLED code: clients retry them.

use crate::budget::Budget;
use crate::connection::{ConnectionInfo, ConnectionState};
use crate::message_progress::MessageProgress;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use sluice_proto::v1::ErrorCode;
use sluice_proto::SluiceError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tonic::body::Body;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct StreamLimitsLayer {
    global: Arc<Budget>,
    streams: Arc<Budget>,
}

impl StreamLimitsLayer {
    /// `global`: the server's in-flight request bytes; `streams`: its open
    /// streams.
    pub fn new(global: Arc<Budget>, streams: Arc<Budget>) -> Self {
        Self { global, streams }
    }
}

impl<S> Layer<S> for StreamLimitsLayer {
    type Service = StreamLimits<S>;

    fn layer(&self, inner: S) -> StreamLimits<S> {
        StreamLimits {
            inner,
            global: self.global.clone(),
            streams: self.streams.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct StreamLimits<S> {
    inner: S,
    global: Arc<Budget>,
    streams: Arc<Budget>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ResBody> Service<http::Request<Body>> for StreamLimits<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let connection = request.extensions().get::<ConnectionInfo>().cloned();
        if let Some(info) = &connection {
            // What tonic's `Request::remote_addr` looks for.
            request.extensions_mut().insert(info.tcp.clone());
        }
        let state = connection.map(|info| info.state);
        let Some(stream) = OpenStream::new(self.streams.clone(), state.clone()) else {
            log_exhausted(state.as_deref(), "max_concurrent_streams");
            let status = throttled(
                "too many streams open on this server ([connections] max_concurrent_streams); \
                 retry later",
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let stream = Arc::new(stream);
        let request = request.map(|body| {
            Body::new(BudgetedBody {
                inner: body,
                progress: MessageProgress::default(),
                held: 0,
                connection: state,
                global: self.global.clone(),
                failed: false,
                _stream: stream.clone(),
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(StreamBody {
                    inner: body,
                    _stream: stream,
                })
            }))
        })
    }
}

/// One open stream of the server and of its connection, while its request
/// or response lives.
#[derive(Debug)]
struct OpenStream {
    streams: Arc<Budget>,
    connection: Option<Arc<ConnectionState>>,
}

impl OpenStream {
    /// `None` at `max_concurrent_streams`.
    fn new(streams: Arc<Budget>, connection: Option<Arc<ConnectionState>>) -> Option<Self> {
        if !streams.try_reserve(1) {
            return None;
        }
        if let Some(connection) = &connection {
            connection.stream_opened();
        }
        Some(Self {
            streams,
            connection,
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.streams.release(1);
        if let Some(connection) = &self.connection {
            connection.stream_closed();
        }
    }
}

/// RESOURCE_EXHAUSTED carrying Sluice's THROTTLED code, which clients
/// retry (a bare RESOURCE_EXHAUSTED reads as TOO_LARGE, which they do not).
fn throttled(message: &str) -> Status {
    SluiceError::new(ErrorCode::Throttled, message).into()
}

/// Logs a limit reached, once per connection (an attacker's streams would
/// otherwise flood the log).
fn log_exhausted(connection: Option<&ConnectionState>, limit: &'static str) {
    let first_on_connection = connection
        .is_none_or(|connection| !connection.exhaustion_logged.swap(true, Ordering::AcqRel));
    if first_on_connection {
        tracing::warn!(
            limit,
            "limit reached: failing streams with RESOURCE_EXHAUSTED (logged once per connection)"
        );
    }
}

/// A response body keeping its stream counted open.
struct StreamBody<B> {
    inner: B,
    _stream: Arc<OpenStream>,
}

impl<B> HttpBody for StreamBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body charging the bytes of its message in progress.
struct BudgetedBody {
    inner: Body,
    progress: MessageProgress,
    /// Bytes reserved from both budgets.
    held: u64,
    connection: Option<Arc<ConnectionState>>,
    global: Arc<Budget>,
    /// Failed for an exhausted budget: ends without reading more.
    failed: bool,
    _stream: Arc<OpenStream>,
}

impl BudgetedBody {
    /// Brings the reservation to `held` bytes; false if a budget refused.
    fn hold(&mut self, held: u64) -> bool {
        if held <= self.held {
            self.release(self.held - held);
            return true;
        }
        let more = held - self.held;
        if let Some(connection) = &self.connection {
            if !connection.budget.try_reserve(more) {
                log_exhausted(
                    self.connection.as_deref(),
                    "max_inflight_request_bytes_per_connection",
                );
                return false;
            }
        }
        if !self.global.try_reserve(more) {
            if let Some(connection) = &self.connection {
                connection.budget.release(more);
            }
            log_exhausted(self.connection.as_deref(), "max_inflight_request_bytes");
            return false;
        }
        self.held = held;
        true
    }

    fn release(&mut self, bytes: u64) {
        if let Some(connection) = &self.connection {
            connection.budget.release(bytes);
        }
        self.global.release(bytes);
        self.held -= bytes;
    }
}

impl HttpBody for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            let held = self.held;
            self.release(held);
            return Poll::Ready(frame);
        };
        if let Some(data) = frame.data_ref() {
            let held = self.progress.advance(data);
            if !self.hold(held) {
                let held = self.held;
                self.release(held);
                self.failed = true;
                return Poll::Ready(Some(Err(throttled(
                    "in-flight request bytes exhausted on this server ([connections] \
                     max_inflight_request_bytes(_per_connection)); retry later",
                ))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for BudgetedBody {
    fn drop(&mut self) {
        let held = self.held;
        self.release(held);
    }
}
