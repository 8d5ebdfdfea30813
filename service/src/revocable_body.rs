//! A stream on a connection with a client certificate ends when that
//! certificate is revoked (issue 13: a client whose CA was removed from
//! `client_ca_file`, or whose certificate expired, keeps no stream).
//!
//! Rules:
//! - The response to a request on a connection that presented a client
//!   certificate is wrapped ([`end_when_revoked`]): once the connection is
//!   revoked (`connection_trust.rs`), the body ends with the status
//!   NOT_AUTHENTICATED saying why, what the handler had not yet sent is
//!   dropped, and with it the request stream. The connection itself is
//!   closed shortly after (`connection.rs`).
//! - A response that ended before is untouched; a wrapped body that has
//!   given its own trailers gives nothing more.
//! - Cost while not revoked: one atomic load per frame, and a wake-up
//!   registration each time the handler has nothing to send.

use crate::connection::ConnectionState;
use bytes::Bytes;
use http_body::Frame;
use sluice_proto::v1::ErrorCode;
use sluice_proto::SluiceError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::futures::OwnedNotified;
use tonic::body::Body;

/// The response, ending when its connection is revoked.
pub fn end_when_revoked(
    response: http::Response<Body>,
    state: Arc<ConnectionState>,
) -> http::Response<Body> {
    response.map(|inner| {
        Body::new(RevocableBody {
            inner,
            state,
            revocation: None,
            ended: false,
        })
    })
}

struct RevocableBody {
    inner: Body,
    state: Arc<ConnectionState>,
    /// Made the first time the handler has nothing to send.
    revocation: Option<Pin<Box<OwnedNotified>>>,
    ended: bool,
}

impl RevocableBody {
    fn end(&mut self) -> Option<Result<Frame<Bytes>, tonic::Status>> {
        let distrust = self.state.revoked()?;
        self.ended = true;
        // Drops what the handler still had to send, and so its stream.
        self.inner = Body::empty();
        tracing::info!(target: crate::AUDIT_TARGET, reason = ?distrust, "stream ended: its connection's client certificate is no longer trusted");
        let status: tonic::Status =
            SluiceError::new(ErrorCode::NotAuthenticated, distrust.message()).into();
        let trailers = crate::ending_body::status_trailers(&status);
        Some(Ok(Frame::trailers(trailers)))
    }
}

impl http_body::Body for RevocableBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(trailers) = self.end() {
            return Poll::Ready(Some(trailers));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {
                let this = &mut *self;
                let revocation = this
                    .revocation
                    .get_or_insert_with(|| Box::pin(this.state.revocation()));
                // Made before this look: a revocation in between wakes it.
                let woken = revocation.as_mut().poll(cx).is_ready();
                if woken || this.state.revoked().is_some() {
                    if let Some(trailers) = this.end() {
                        return Poll::Ready(Some(trailers));
                    }
                }
                return Poll::Pending;
            }
            polled if crate::ending_body::ends_the_body(polled) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_trust::Distrust;
    use http_body_util::BodyExt;

    use crate::ending_body::streaming_response;

    fn state() -> Arc<ConnectionState> {
        Arc::new(ConnectionState::new(1024, tokio::time::Instant::now()))
    }

    #[tokio::test]
    async fn a_waiting_stream_ends_not_authenticated_when_its_connection_is_revoked() {
        let (sender, response) = streaming_response();
        let state = state();
        let mut body = end_when_revoked(response, state.clone()).into_body();
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .expect("open");
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "first");
        // The handler has nothing to send: the body waits, and is woken by
        // the revocation.
        let revoker = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            revoker.revoke(Distrust::Untrusted("UnknownIssuer".into()));
        });
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("woken by the revocation")
            .expect("a frame")
            .expect("trailers");
        let trailers = ended.into_trailers().expect("trailers");
        let status = tonic::Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("no longer trusted"), "{status:?}");
        assert!(body.frame().await.is_none(), "nothing after the end");
        assert!(sender.is_closed(), "the handler's stream is dropped");
    }

    #[tokio::test]
    async fn a_response_that_ended_before_is_untouched() {
        let (sender, response) = streaming_response();
        let state = state();
        let mut body = end_when_revoked(response, state.clone()).into_body();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        sender
            .send(Ok(Frame::trailers(trailers)))
            .await
            .expect("open");
        let own = body.frame().await.expect("a frame").expect("trailers");
        assert_eq!(
            own.trailers_ref().and_then(|t| t.get("grpc-status")),
            Some(&http::HeaderValue::from_static("0"))
        );
        state.revoke(Distrust::Expired);
        assert!(body.frame().await.is_none(), "ended with its own trailers");

        // Revoked before the first frame: the stream ends at once.
        let (_sender, response) = streaming_response();
        let mut body = end_when_revoked(response, state).into_body();
        let ended = body.frame().await.expect("a frame").expect("trailers");
        let status = tonic::Status::from_header_map(ended.trailers_ref().expect("trailers"))
            .expect("a status");
        assert!(status.message().contains("expired"), "{status:?}");
    }
}
