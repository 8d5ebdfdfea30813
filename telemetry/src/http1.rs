//! A small bounded HTTP/1 server: the accept loop shared by the metrics
//! endpoint and `sluice console`. Bounded: at most
//! [`Http1Limits::max_connections`] connections at once (more are closed at
//! accept), request headers within `header_read_timeout_ms`, and a
//! connection at most `connection_timeout_ms` (keep-alive included). An
//! accept error (EMFILE and the like) pauses the loop for
//! [`ACCEPT_ERROR_PAUSE_MS`] instead of spinning.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Pause after a failed accept.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// The bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Http1Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time for a request's headers.
    pub header_read_timeout_ms: u64,
    /// Longest life of one connection.
    pub connection_timeout_ms: u64,
}

/// Serves `handler` on `listener` until `shutdown` completes; `name` labels
/// the log lines.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Http1Limits,
    name: &'static str,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, server = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let timeout = Duration::from_millis(limits.connection_timeout_ms);
            let _ = tokio::time::timeout(timeout, connection).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Http1Limits = Http1Limits {
        max_connections: 2,
        header_read_timeout_ms: 5_000,
        connection_timeout_ms: 10_000,
    };

    async fn server() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = |request: Request<Incoming>| async move {
            Response::new(Full::new(Bytes::from(format!(
                "path {}",
                request.uri().path()
            ))))
        };
        tokio::spawn(serve(listener, LIMITS, "test", handler, async move {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    async fn get(stream: &mut tokio::net::TcpStream) -> String {
        let request = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        stream.write_all(request).await.expect("write");
        let mut answer = String::new();
        let read = stream.read_to_string(&mut answer);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("answered in time")
            .expect("read");
        answer
    }

    #[tokio::test]
    async fn answers_through_the_handler() {
        let (address, _stop) = server().await;
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let answer = get(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("path /x"), "{answer}");
    }

    #[tokio::test]
    async fn a_connection_past_the_limit_is_closed_and_the_others_served() {
        let (address, _stop) = server().await;
        let mut held = Vec::new();
        for _ in 0..LIMITS.max_connections {
            held.push(
                tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect"),
            );
        }
        // Let the server accept the held ones before the extra one.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the extra connection must be closed at once, got {read:?}"
        );
        let answer = get(&mut held[0]).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
