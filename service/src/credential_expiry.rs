//! A stream lasts no longer than the token that opened it (the lesson of
//! Kafka's KIP-368: a connection authenticated once must not outlive its
//! credential, or a revoked or expired token keeps producing for as long
//! as its stream stays open).
//!
//! Rules:
//! - The response to a request a token authenticated is wrapped
//!   ([`end_when_expired`]): once the token's `valid_until_ms` passes, the
//!   body ends with the status CREDENTIALS_EXPIRED, a retriable code (the
//!   client opens a new stream with its current token; a request whose
//!   own token has expired is then answered NOT_AUTHENTICATED). What the
//!   handler had not yet sent is dropped, and with it the request stream.
//! - A response that ended before that moment is untouched, so unary
//!   answers are never cut; a wrapped body that has given its own
//!   trailers gives nothing more.
//! - Requests a client certificate authenticated are not wrapped: that
//!   proof lasts as long as the connection.
//! - A token valid for longer than [`MAX_STREAM_CREDENTIAL_WAIT_MS`] ends
//!   its streams after that long (so a timer never lies beyond what
//!   tokio's clock represents).

use bytes::Bytes;
use http_body::Frame;
use sluice_proto::v1::ErrorCode;
use sluice_proto::SluiceError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;

/// Longest a stream opened with a token runs before it is ended, in
/// milliseconds (30 days); a token valid longer is treated as valid this
/// long.
pub const MAX_STREAM_CREDENTIAL_WAIT_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The response, ending when the token that authenticated its request
/// expires at `valid_until_ms` (ms since the epoch).
pub fn end_when_expired(
    response: http::Response<Body>,
    valid_until_ms: u64,
) -> http::Response<Body> {
    let wait_ms = valid_until_ms
        .saturating_sub(now_ms())
        .min(MAX_STREAM_CREDENTIAL_WAIT_MS);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    response.map(|inner| {
        Body::new(ExpiringBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            valid_until_ms,
            ended: false,
        })
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

struct ExpiringBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    valid_until_ms: u64,
    /// The inner body gave its trailers or its end, or this one ended it.
    ended: bool,
}

impl ExpiringBody {
    fn expired_trailers(&self) -> http::HeaderMap {
        let error = SluiceError::new(
            ErrorCode::CredentialsExpired,
            format!(
                "the token this stream was opened with expired (valid until {} ms since the \
                 epoch, the allowed clock skew included); open a new stream with a current token",
                self.valid_until_ms
            ),
        );
        let status: tonic::Status = error.into();
        crate::ending_body::status_trailers(&status)
    }
}

impl http_body::Body for ExpiringBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.ended = true;
            // Drops what the handler still had to send, and so its stream.
            self.inner = Body::empty();
            tracing::info!(target: crate::AUDIT_TARGET, valid_until_ms = self.valid_until_ms, "stream ended: its token expired");
            return Poll::Ready(Some(Ok(Frame::trailers(self.expired_trailers()))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if crate::ending_body::ends_the_body(&polled) {
            self.ended = true;
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
    use http_body_util::BodyExt;

    use crate::ending_body::streaming_response;

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_with_credentials_expired_when_its_token_does() {
        let (sender, response) = streaming_response();
        let mut body = end_when_expired(response, now_ms() + 60_000).into_body();
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .expect("open");
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"first")
        );
        // Nothing more from the handler: the token's expiry ends the body.
        let last = body.frame().await.expect("a frame").expect("trailers");
        let trailers = last.into_trailers().expect("trailers");
        assert_eq!(trailers.get("grpc-status").expect("status"), "16");
        assert_eq!(
            trailers
                .get(sluice_proto::error::ERROR_CODE_METADATA_KEY)
                .expect("code"),
            "ERROR_CODE_CREDENTIALS_EXPIRED"
        );
        assert!(body.frame().await.is_none(), "nothing after the trailers");
        assert!(http_body::Body::is_end_stream(&body));
        // The handler's side sees its stream gone.
        assert!(sender.send(Ok(Frame::data(Bytes::new()))).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_first_keeps_its_own_trailers() {
        let (sender, response) = streaming_response();
        let mut body = end_when_expired(response, now_ms() + 60_000).into_body();
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        sender.send(Ok(Frame::trailers(ok))).await.expect("open");
        drop(sender);
        let last = body.frame().await.expect("a frame").expect("trailers");
        assert_eq!(last.into_trailers().expect("trailers")["grpc-status"], "0");
        tokio::time::sleep(Duration::from_millis(120_000)).await;
        assert!(
            body.frame().await.is_none(),
            "no second status after expiry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_or_far_off_token_is_bounded() {
        let (_sender, response) = streaming_response();
        let mut body = end_when_expired(response, 0).into_body();
        let frame = body.frame().await.expect("a frame").expect("trailers");
        assert!(frame.is_trailers(), "already expired: ends at once");
        let (_sender, response) = streaming_response();
        let started = Instant::now();
        let mut body = end_when_expired(response, u64::MAX).into_body();
        let frame = body.frame().await.expect("a frame").expect("trailers");
        assert!(frame.is_trailers());
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(MAX_STREAM_CREDENTIAL_WAIT_MS)
        );
    }
}
