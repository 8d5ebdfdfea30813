//! What the response bodies that can end a stream early share
//! (`credential_expiry.rs`: the token expired; `revocable_body.rs`: the
//! connection's client certificate is no longer trusted): the trailers
//! that end it with a status, and when the handler's own body has ended.

use bytes::Bytes;
use http_body::Frame;
use std::task::Poll;

/// One polled frame of a response body.
pub(crate) type Polled = Poll<Option<Result<Frame<Bytes>, tonic::Status>>>;

/// gRPC trailers carrying `status`.
pub(crate) fn status_trailers(status: &tonic::Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that is not a valid header could fail; ours are.
        trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
    }
    trailers
}

/// Whether the handler's body ended with this frame (its end, its
/// trailers or an error): nothing is to be added after it.
pub(crate) fn ends_the_body(polled: &Polled) -> bool {
    match polled {
        Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
        Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
        Poll::Pending => false,
    }
}

/// A streaming response whose frames the test sends (for the tests of
/// the bodies that wrap it).
#[cfg(test)]
pub(crate) fn streaming_response() -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, tonic::Status>>,
    http::Response<tonic::body::Body>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let body = tonic::body::Body::new(http_body_util::StreamBody::new(stream));
    (sender, http::Response::new(body))
}
