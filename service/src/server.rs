//! The gRPC server every Sluice service runs: HTTP/2 windows and frame size
//! from [`sluice_proto::limits`], a trace span per request continuing the
//! caller's trace, and Nagle off on accepted connections.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// Pause after an accept failed for lack of a resource (file handles,
/// socket buffers, memory), in milliseconds. tonic goes straight back to
/// `accept` after an error, and the listener stays readable while the
/// process is out of file handles, so without the pause a store at its
/// file limit spun a core on failed accepts.
pub const ACCEPT_PAUSE_MS: u64 = 100;

/// A server builder with Sluice's HTTP/2 limits and request tracing; add
/// the services (each with its message size limits) and serve it on
/// [`incoming`].
pub fn grpc_server() -> Server {
    Server::builder()
        .initial_stream_window_size(sluice_proto::limits::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(sluice_proto::limits::HTTP2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(sluice_proto::limits::HTTP2_MAX_FRAME_BYTES)
        .trace_fn(sluice_telemetry::grpc_server_span)
}

/// The connections accepted on `listener`, with Nagle off (pipelined small
/// responses must not wait for delayed ACKs), pausing
/// [`ACCEPT_PAUSE_MS`] after an accept that failed for lack of a resource
/// while connections already open go on being served.
pub fn incoming(listener: tokio::net::TcpListener) -> Incoming {
    Incoming {
        inner: TcpIncoming::from(listener).with_nodelay(Some(true)),
        pause: None,
        refused: 0,
    }
}

/// See [`incoming`].
pub struct Incoming {
    inner: TcpIncoming,
    pause: Option<Pin<Box<Sleep>>>,
    /// Accepts refused for lack of a resource since the last success.
    refused: u64,
}

/// Accept errors that last until a resource is freed (as opposed to one
/// connection's failure, such as a reset before it was accepted).
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Stream for Incoming {
    type Item = std::io::Result<TcpStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Err(error))) if is_resource_exhaustion(error) => {
                if self.refused == 0 {
                    tracing::warn!(%error, pause_ms = ACCEPT_PAUSE_MS, "cannot accept connections; pausing accepts until the resource is freed");
                }
                self.refused += 1;
                self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(
                    ACCEPT_PAUSE_MS,
                ))));
            }
            Poll::Ready(Some(Ok(_))) if self.refused > 0 => {
                tracing::info!(refused = self.refused, "accepting connections again");
                self.refused = 0;
            }
            _ => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lasting_resource_errors_pause_accepts() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EINTR] {
            assert!(!is_resource_exhaustion(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
    }
}
