//! One accepted connection as the gRPC server reads and writes it: the TCP
//! stream, its slot among `max_connections` (freed when the server drops
//! it), its HTTP/2 handshake progress, and the handshake and idle
//! timeouts, which end it by reading end-of-file (the server then closes
//! it; no stream is lost, as an idle connection has none).
//!
//! A connection with a client certificate also watches that certificate
//! (`connection_trust.rs`): once its chain no longer verifies (its CA was
//! removed from `client_ca_file`, or it expired) the connection is
//! revoked: new requests are refused NOT_AUTHENTICATED saying why
//! (`authentication.rs`), open streams end with the same answer
//! (`revocable_body.rs`), and [`REVOKED_CLOSE_GRACE_MS`] later the
//! connection ends, whatever is still open (a revoked client keeps no
//! stream).

use crate::budget::Budget;
use crate::client_trust::ClientTrust;
use crate::connection_counts::ConnectionGuard;
use crate::connection_deadline::{verdict, CloseReason, ConnectionActivity, Timeouts, Verdict};
use crate::connection_trust::TrustWatch;
use crate::handshake::{Handshake, HandshakeProgress};
use crate::server_io::ServerIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Request bytes in progress allowed on a connection whose peer did not
/// authenticate (a TLS client without the certificate the server
/// requires): enough for health checks, nothing size-dependent (the
/// lesson of Kafka CVE-2022-34917).
pub const UNAUTHENTICATED_INFLIGHT_REQUEST_BYTES: u64 = 64 * 1024;

/// How long a connection asked to close stays open after its last stream
/// ended, so that the answers written last reach the client.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a revoked connection (its client certificate no longer
/// trusted) stays open after the revocation was noticed, in milliseconds,
/// so that refusals of requests already sent are written out; then it is
/// closed whatever streams are open.
pub const REVOKED_CLOSE_GRACE_MS: u64 = 1_000;

/// What the connection's streams share with it.
#[derive(Debug)]
pub struct ConnectionState {
    open_streams: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Bytes of request messages in progress on this connection.
    pub budget: Budget,
    /// Whether an exhausted budget was logged for this connection.
    pub exhaustion_logged: AtomicBool,
    /// Close the connection once no stream is open (it was over its
    /// principal's connection quota and was told so).
    close_requested: AtomicBool,
    /// Set once the client certificate is no longer trusted.
    revoked: OnceLock<crate::client_trust::Distrust>,
    /// Wakes the streams open at the revocation (`revocable_body.rs`).
    revocation: Arc<tokio::sync::Notify>,
}

impl ConnectionState {
    pub fn new(budget_bytes: u64, now: Instant) -> Self {
        Self {
            open_streams: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            budget: Budget::new(budget_bytes),
            exhaustion_logged: AtomicBool::new(false),
            close_requested: AtomicBool::new(false),
            revoked: OnceLock::new(),
            revocation: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Revokes the connection: its requests are refused, and its open
    /// streams woken to end (`revocable_body.rs`).
    pub(crate) fn revoke(&self, distrust: crate::client_trust::Distrust) {
        let _ = self.revoked.set(distrust);
        self.revocation.notify_waiters();
    }

    /// Completes once the connection is revoked after this call (check
    /// [`ConnectionState::revoked`] after making it).
    pub fn revocation(&self) -> tokio::sync::futures::OwnedNotified {
        self.revocation.clone().notified_owned()
    }

    /// Why the connection's client certificate is no longer trusted, once
    /// it is not: every request on it is then refused.
    pub fn revoked(&self) -> Option<&crate::client_trust::Distrust> {
        self.revoked.get()
    }

    /// Asks for the connection to be closed once its open streams ended.
    pub fn request_close(&self) {
        self.close_requested.store(true, Ordering::Release);
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
    /// The principal already had this many connections open, its
    /// `[quotas] connections` limit: every request is answered THROTTLED
    /// and the connection closed.
    pub over_connection_quota: Option<u64>,
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
    /// Watches the client certificate (TLS with a client certificate).
    trust: Option<TrustWatch>,
    /// When a revoked connection is closed.
    revoked_close_at: Option<Instant>,
    _slot: OwnedSemaphorePermit,
    /// Its place among its client address's and its principal's
    /// connections.
    _counted: Vec<CountedPlace>,
}

/// A connection's place in a [`ConnectionCounts`](crate::connection_counts::ConnectionCounts).
#[derive(Debug)]
pub enum CountedPlace {
    Address(ConnectionGuard<std::net::IpAddr>),
    Principal(ConnectionGuard<String>),
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
                over_connection_quota: None,
            },
            handshake: HandshakeProgress::default(),
            timeouts,
            accepted_at: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.handshake)),
            closed: None,
            trust: None,
            revoked_close_at: None,
            _slot: slot,
            _counted: Vec::new(),
        }
    }

    /// Keeps `place` until the connection ends.
    pub fn holding(mut self, place: CountedPlace) -> Self {
        self._counted.push(place);
        self
    }

    /// Marks a connection beyond its principal's `limit` of connections.
    pub fn over_connection_quota(mut self, limit: u64) -> Self {
        self.info.over_connection_quota = Some(limit);
        self
    }

    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Marks a TLS client that gave no certificate where one is required:
    /// it may only make health checks, so its request bytes in progress
    /// get [`UNAUTHENTICATED_INFLIGHT_REQUEST_BYTES`] instead of the
    /// configured budget.
    pub fn with_missing_client_certificate(mut self, missing: bool) -> Self {
        self.info.missing_client_certificate = missing;
        if missing {
            self.info.state = Arc::new(ConnectionState::new(
                UNAUTHENTICATED_INFLIGHT_REQUEST_BYTES,
                self.accepted_at,
            ));
        }
        self
    }

    /// Verifies the client certificate again whenever `trust` publishes a
    /// new verifier (the handshake used generation `generation`) and when
    /// it expires; without a client certificate, nothing to watch.
    pub fn with_trust_watch(
        mut self,
        trust: tokio::sync::watch::Receiver<Arc<ClientTrust>>,
        generation: u64,
    ) -> Self {
        if let Some(chain) = self.info.peer_certificates.clone() {
            self.trust = Some(TrustWatch::new(chain, trust, generation));
        }
        self
    }

    /// When a revoked connection is to be closed; polls the certificate
    /// watch (registering this task's waker) until it is revoked.
    fn revoked_close_at(&mut self, cx: &mut Context<'_>) -> Option<Instant> {
        if self.revoked_close_at.is_some() {
            return self.revoked_close_at;
        }
        let Poll::Ready(distrust) = self.trust.as_mut()?.poll_distrust(cx) else {
            return None;
        };
        tracing::info!(target: crate::AUDIT_TARGET, principal = %self.info.principal, peer = ?self.info.tcp.remote_addr(), reason = ?distrust, grace_ms = REVOKED_CLOSE_GRACE_MS, "connection revoked: its client certificate is no longer trusted; refusing its requests and closing it");
        self.info.state.revoke(distrust);
        self.trust = None;
        let at = Instant::now() + std::time::Duration::from_millis(REVOKED_CLOSE_GRACE_MS);
        self.revoked_close_at = Some(at);
        Some(at)
    }

    /// Whether the connection is to be closed now; otherwise arms the
    /// timer (waking this task when it is next to be looked at).
    fn close_reason(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        if let Some(at) = self.revoked_close_at(cx) {
            if Instant::now() >= at {
                return Some(CloseReason::Revoked);
            }
            self.timer.as_mut().reset(at);
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            return Some(CloseReason::Revoked);
        }
        loop {
            let (open_streams, idle_since) = self.info.state.streams_and_idle_since();
            if self.info.state.close_requested.load(Ordering::Acquire) {
                // Closed once no stream was open for a grace period: the
                // refusals are written out first (an end of file read at
                // once could cut them off).
                let now = Instant::now();
                let at = if open_streams == 0 {
                    idle_since + CLOSE_GRACE
                } else {
                    now + CLOSE_GRACE
                };
                if open_streams == 0 && now >= at {
                    return Some(CloseReason::OverQuota);
                }
                self.timer.as_mut().reset(at);
                if self.timer.as_mut().poll(cx).is_pending() {
                    return None;
                }
                continue;
            }
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
        // A busy connection may seldom wait for bytes: its revocation
        // deadline is looked at before each read too.
        if this.revoked_close_at.is_some_and(|at| Instant::now() >= at) {
            tracing::debug!(peer = ?this.info.tcp.remote_addr(), "closing a revoked connection");
            this.closed = Some(CloseReason::Revoked);
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
