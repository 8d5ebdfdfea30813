//! One accepted connection as the gRPC server reads and writes it: the TCP
//! stream, its slot among `max_connections` (freed when the server drops
//! it), its HTTP/2 handshake progress, and the handshake and idle
//! timeouts, which end it by reading end-of-file (the server then closes
//! it; no stream is lost, as an idle connection has none).

use crate::budget::Budget;
use crate::connection_deadline::{verdict, CloseReason, ConnectionActivity, Timeouts, Verdict};
use crate::handshake::{Handshake, HandshakeProgress};
use crate::server_io::ServerIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What the connection's streams share with it.
#[derive(Debug)]
pub struct ConnectionState {
    open_streams: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Bytes of request messages in progress on this connection.
    pub budget: Budget,
    /// Whether an exhausted budget was logged for this connection.
    pub exhaustion_logged: AtomicBool,
}

impl ConnectionState {
    pub fn new(budget_bytes: u64, now: Instant) -> Self {
        Self {
            open_streams: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            budget: Budget::new(budget_bytes),
            exhaustion_logged: AtomicBool::new(false),
        }
    }

    pub fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Ordering::AcqRel);
    }

    pub fn stream_closed(&self) {
        // Under the lock, so the idle timer never sees no stream open with
        // an idle-since before the last one closed.
        let mut idle_since = self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.open_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *idle_since = Instant::now();
        }
    }

    fn streams_and_idle_since(&self) -> (usize, Instant) {
        let idle_since = self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        (self.open_streams.load(Ordering::Acquire), *idle_since)
    }
}

/// Put into every request's extensions by tonic ([`Connected`]).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    pub state: Arc<ConnectionState>,
    /// The client's certificate chain (mutual TLS), its own first.
    pub peer_certificates: Option<Arc<[CertificateDer<'static>]>>,
    /// Who the connection's requests come from (see `principal.rs`).
    pub principal: sluice_acl::Principal,
    /// The server wants a client certificate and this client gave none:
    /// every request but health checks is refused.
    pub missing_client_certificate: bool,
}

/// See the module documentation.
pub struct Connection {
    stream: ServerIo,
    info: ConnectionInfo,
    handshake: HandshakeProgress,
    timeouts: Timeouts,
    accepted_at: Instant,
    timer: Pin<Box<Sleep>>,
    closed: Option<CloseReason>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    pub fn new(
        stream: ServerIo,
        slot: OwnedSemaphorePermit,
        timeouts: Timeouts,
        budget_bytes: u64,
    ) -> Self {
        let now = Instant::now();
        let tcp = stream.tcp_info();
        let peer_certificates = stream.peer_certificates();
        let principal = crate::principal::principal_of(peer_certificates.as_deref());
        Self {
            stream,
            info: ConnectionInfo {
                tcp,
                state: Arc::new(ConnectionState::new(budget_bytes, now)),
                peer_certificates,
                principal,
                missing_client_certificate: false,
            },
            handshake: HandshakeProgress::default(),
            timeouts,
            accepted_at: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.handshake)),
            closed: None,
            _slot: slot,
        }
    }

    /// Marks a TLS client that gave no certificate where one is required.
    pub fn with_missing_client_certificate(mut self, missing: bool) -> Self {
        self.info.missing_client_certificate = missing;
        self
    }

    /// Whether the connection is to be closed now; otherwise arms the
    /// timer (waking this task when it is next to be looked at).
    fn close_reason(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        loop {
            let (open_streams, idle_since) = self.info.state.streams_and_idle_since();
            let activity = ConnectionActivity {
                accepted_at: self.accepted_at,
                handshake: self.handshake.state(),
                open_streams,
                idle_since,
            };
            match verdict(self.timeouts, activity, Instant::now()) {
                Verdict::Close(reason) => return Some(reason),
                Verdict::KeepUntil(None) => return None,
                Verdict::KeepUntil(Some(deadline)) => {
                    if self.timer.deadline() != deadline {
                        self.timer.as_mut().reset(deadline);
                    }
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return None;
                    }
                }
            }
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed.is_some() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        // Bytes already sent are read first: a request racing the idle
        // timeout is served, not lost.
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.handshake.state() == Handshake::InProgress {
                    this.handshake.advance(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match this.close_reason(cx) {
                None => Poll::Pending,
                Some(reason) => {
                    tracing::debug!(?reason, peer = ?this.info.tcp.remote_addr(), "closing connection");
                    this.closed = Some(reason);
                    // End of file: the server ends the connection.
                    Poll::Ready(Ok(()))
                }
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
