//! The gRPC server every Sluice service runs: HTTP/2 windows and frame size
//! from [`sluice_proto::limits`], the `[connections]` limits (connections,
//! streams per connection, handshake and idle timeouts, keepalive, in-flight
//! request bytes), a trace span per request continuing the caller's trace,
//! and Nagle off on accepted connections.

use crate::audit::AuditLayer;
use crate::authorization::AuthorizationLayer;
use crate::budget::Budget;
use crate::connection::{Connection, CountedPlace};
use crate::connection_counts::ConnectionCounts;
use crate::connection_deadline::Timeouts;
use crate::connections_config::ConnectionsConfig;
use crate::quota::layer::QuotaLayer;
use crate::quota::Quotas;
use crate::server_io::ServerIo;
use crate::stream_limits::StreamLimitsLayer;
use crate::tls::ServerTls;
use futures::stream::FuturesUnordered;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
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

/// The server's `[connections]` limits and the state they share: the
/// connection slots and the server-wide in-flight byte budget. Build one per
/// server, then its [`ServerLimits::grpc_server`] and
/// [`ServerLimits::incoming`].
#[derive(Debug, Clone)]
pub struct ServerLimits {
    config: ConnectionsConfig,
    /// Who may call what (`[auth]`); off unless set.
    authorization: AuthorizationLayer,
    slots: Arc<Semaphore>,
    global: Arc<Budget>,
    streams: Arc<Budget>,
    /// `[quotas]`: none unless set.
    quotas: Quotas,
    /// Connections open per client address (`max_connections_per_ip`).
    per_address: ConnectionCounts<std::net::IpAddr>,
    /// Connections open per principal (`[quotas] connections`).
    per_principal: ConnectionCounts<String>,
}

/// The tonic server [`ServerLimits::grpc_server`] builds.
pub type LimitedServer = Server<
    tower_layer::Stack<
        AuditLayer,
        tower_layer::Stack<
            QuotaLayer,
            tower_layer::Stack<
                AuthorizationLayer,
                tower_layer::Stack<StreamLimitsLayer, tower_layer::Identity>,
            >,
        >,
    >,
>;

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl ServerLimits {
    pub fn new(config: &ConnectionsConfig) -> Self {
        let slots = usize::try_from(config.max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            config: config.clone(),
            authorization: AuthorizationLayer::disabled(),
            slots: Arc::new(Semaphore::new(slots)),
            global: Arc::new(Budget::new(config.max_inflight_request_bytes)),
            streams: Arc::new(Budget::new(u64::from(config.max_concurrent_streams))),
            quotas: Quotas::unlimited(),
            per_address: ConnectionCounts::default(),
            per_principal: ConnectionCounts::default(),
        }
    }

    /// Limit every principal by `quotas` (see `quota/`): requests per
    /// second and connections here, bytes in the broker's handlers.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Authorise every request with `authorization` (see
    /// `authorization.rs`).
    pub fn with_authorization(mut self, authorization: AuthorizationLayer) -> Self {
        self.authorization = authorization;
        self
    }

    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        let slots = usize::try_from(self.config.max_connections).unwrap_or(usize::MAX);
        slots
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.slots.available_permits())
    }

    /// Streams open over all connections.
    pub fn open_streams(&self) -> u64 {
        self.streams.used()
    }

    /// Bytes of request messages in progress over all connections.
    pub fn inflight_request_bytes(&self) -> u64 {
        self.global.used()
    }

    /// A server builder with Sluice's HTTP/2 limits, these limits and
    /// request tracing; add the services (each with its message size
    /// limits) and serve it on [`ServerLimits::incoming`].
    pub fn grpc_server(&self) -> LimitedServer {
        let config = &self.config;
        Server::builder()
            .initial_stream_window_size(sluice_proto::limits::HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(sluice_proto::limits::HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(sluice_proto::limits::HTTP2_MAX_FRAME_BYTES)
            .http2_max_header_list_size(sluice_proto::limits::HTTP2_MAX_HEADER_LIST_BYTES)
            .max_concurrent_streams(config.max_concurrent_streams_per_connection)
            .http2_keepalive_interval(millis(config.http2_keepalive_interval_ms))
            .http2_keepalive_timeout(millis(config.http2_keepalive_timeout_ms))
            .trace_fn(sluice_telemetry::grpc_server_span)
            .layer(StreamLimitsLayer::new(
                self.global.clone(),
                self.streams.clone(),
            ))
            .layer(self.authorization.clone())
            .layer(QuotaLayer::new(self.quotas.clone()))
            .layer(AuditLayer)
    }

    /// [`ServerLimits::incoming`], with TLS when `tls` is enabled.
    pub fn incoming_with_tls(
        &self,
        listener: tokio::net::TcpListener,
        tls: &crate::tls::TlsConfig,
    ) -> Result<Incoming, crate::tls::TlsError> {
        let incoming = self.incoming(listener);
        if !tls.enabled {
            return Ok(incoming);
        }
        Ok(incoming.with_tls(Arc::new(ServerTls::load(tls)?)))
    }

    /// The connections accepted on `listener`, with Nagle off (pipelined
    /// small responses must not wait for delayed ACKs) and TCP keepalive;
    /// a connection beyond `max_connections` is closed at once; accepts
    /// pause [`ACCEPT_PAUSE_MS`] after one failed for lack of a resource
    /// while connections already open go on being served.
    pub fn incoming(&self, listener: tokio::net::TcpListener) -> Incoming {
        let config = &self.config;
        let keepalive = millis(config.tcp_keepalive_ms);
        let inner = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(keepalive)
            .with_keepalive_interval(keepalive.and(millis(config.tcp_keepalive_interval_ms)))
            .with_keepalive_retries(keepalive.map(|_| config.tcp_keepalive_retries));
        Incoming {
            inner,
            limits: self.clone(),
            timeouts: Timeouts {
                handshake: Duration::from_millis(config.handshake_timeout_ms),
                idle: millis(config.connection_idle_timeout_ms),
            },
            pause: None,
            refused: 0,
            over_limit: 0,
            over_handshake_limit: 0,
            over_address_limit: 0,
            address_warned_at: None,
            tls: None,
            reload_tick: None,
            handshakes: FuturesUnordered::new(),
        }
    }
}

/// Shortest time between two WARNs about connections closed at
/// `max_connections_per_ip`, in milliseconds.
pub const ADDRESS_WARN_INTERVAL_MS: u64 = 10_000;

/// `connection` with its place among its principal's connections, or
/// marked over its principal's `[quotas] connections` limit (its requests
/// are then refused and it is closed: see `quota/layer.rs`).
fn count_principal(
    connection: Connection,
    quotas: &Quotas,
    per_principal: &ConnectionCounts<String>,
) -> Connection {
    let principal = connection.info().principal.as_str().to_string();
    let Some(limit) = quotas.limits_of(&principal).connections else {
        return connection;
    };
    match per_principal.try_open(&principal, limit) {
        Some(guard) => connection.holding(CountedPlace::Principal(guard)),
        None => {
            tracing::info!(%principal, limit, "a connection beyond the principal's [quotas] connections limit is refused");
            connection.over_connection_quota(limit)
        }
    }
}

/// See [`ServerLimits::incoming`].
pub struct Incoming {
    inner: TcpIncoming,
    limits: ServerLimits,
    timeouts: Timeouts,
    pause: Option<Pin<Box<Sleep>>>,
    /// Accepts refused for lack of a resource since the last success.
    refused: u64,
    /// Connections closed at `max_connections` since one was last served.
    over_limit: u64,
    /// Connections closed at `max_tls_handshakes` since one was admitted.
    over_handshake_limit: u64,
    /// Connections closed at `max_connections_per_ip` since the last WARN.
    over_address_limit: u64,
    address_warned_at: Option<tokio::time::Instant>,
    /// With TLS: every connection is served only after its TLS handshake.
    tls: Option<Arc<ServerTls>>,
    /// With TLS: looks at the certificate files every
    /// `reload_check_interval_ms`, new connections or not, so that open
    /// connections learn of a rotated client CA (made at the first poll,
    /// inside the runtime).
    reload_tick: Option<tokio::time::Interval>,
    /// TLS handshakes in progress, each holding its connection slot; at
    /// most `max_connections` with the connections being served.
    handshakes: FuturesUnordered<Pin<Box<dyn Future<Output = Option<Connection>> + Send>>>,
}

/// Whether the client's first byte opens a TLS handshake record (0x16),
/// as opposed to plaintext (an HTTP/2 preface starts with `P`). A client
/// that sends nothing by `deadline`, or fails, counts as TLS: the TLS
/// handshake then ends it.
async fn starts_with_tls(stream: &tokio::net::TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == TLS_HANDSHAKE_RECORD,
        _ => true,
    }
}

/// The content type of a TLS handshake record, every TLS client's first
/// byte.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Accept errors that last until a resource is freed (as opposed to one
/// connection's failure, such as a reset before it was accepted).
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Incoming {
    /// Serve TLS only, with `tls`'s certificates (see `tls.rs`): a client
    /// that does not complete a TLS handshake within the handshake timeout
    /// is closed, and only then does the HTTP/2 handshake timeout start.
    pub fn with_tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A connection slot for `stream`, or `None` (and `stream` closed) at
    /// `max_connections`; with TLS the connection comes out of
    /// `handshakes` once its handshake is done.
    fn admit(&mut self, stream: tokio::net::TcpStream) -> Option<Connection> {
        let address = self.address_place(&stream)?;
        let slot = match self.limits.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if self.over_limit == 0 {
                    tracing::warn!(
                        max_connections = self.limits.config.max_connections,
                        "at max_connections: closing new connections until some end"
                    );
                }
                self.over_limit += 1;
                return None;
            }
        };
        if self.over_limit > 0 {
            tracing::info!(closed = self.over_limit, "serving new connections again");
            self.over_limit = 0;
        }
        let budget = self.limits.config.max_inflight_request_bytes_per_connection;
        let timeouts = self.timeouts;
        let quotas = self.limits.quotas.clone();
        let per_principal = self.limits.per_principal.clone();
        if self.tls.is_some() && self.at_handshake_cap() {
            return None;
        }
        let Some(tls) = &self.tls else {
            let connection = Connection::new(ServerIo::Plain(stream), slot, timeouts, budget);
            return Some(count_principal(
                connection.holding(address),
                &quotas,
                &per_principal,
            ));
        };
        let (server_config, generation) = tls.current_with_generation();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        let requires_certificate = tls.requires_client_certificate();
        let trust = tls.client_trust();
        self.handshakes.push(Box::pin(async move {
            let peer = stream.peer_addr().ok();
            let deadline = tokio::time::Instant::now() + timeouts.handshake;
            if !starts_with_tls(&stream, deadline).await {
                crate::plaintext_refusal::refuse(stream, deadline).await;
                tracing::info!(?peer, "a plaintext client on a TLS port was told to use TLS; connection closed");
                return None;
            }
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let missing =
                        requires_certificate && tls.get_ref().1.peer_certificates().is_none();
                    let io = ServerIo::Tls(Box::new(tls));
                    let connection = Connection::new(io, slot, timeouts, budget)
                        .with_missing_client_certificate(missing)
                        .with_trust_watch(trust, generation)
                        .holding(address);
                    Some(count_principal(connection, &quotas, &per_principal))
                }
                Ok(Err(error)) => {
                    tracing::info!(?peer, %error, "TLS handshake failed (a plaintext client, or a certificate this server does not trust?); connection closed");
                    None
                }
                Err(_) => {
                    tracing::info!(?peer, timeout_ms = timeouts.handshake.as_millis() as u64, "TLS handshake not done within the handshake timeout; connection closed");
                    None
                }
            }
        }));
        None
    }

    /// Whether `max_tls_handshakes` are in progress (then the new
    /// connection is closed), logging the first closed and the recovery.
    fn at_handshake_cap(&mut self) -> bool {
        if self.handshakes.len() >= self.limits.config.max_tls_handshakes as usize {
            if self.over_handshake_limit == 0 {
                tracing::warn!(
                    max_tls_handshakes = self.limits.config.max_tls_handshakes,
                    "at max_tls_handshakes: closing new connections until handshakes end"
                );
            }
            self.over_handshake_limit += 1;
            return true;
        }
        if self.over_handshake_limit > 0 {
            tracing::info!(
                closed = self.over_handshake_limit,
                "TLS handshakes below max_tls_handshakes again"
            );
            self.over_handshake_limit = 0;
        }
        false
    }

    /// `stream`'s place among its address's connections, or `None` (and
    /// `stream` closed) at `max_connections_per_ip`, with a WARN at most
    /// every [`ADDRESS_WARN_INTERVAL_MS`].
    fn address_place(&mut self, stream: &tokio::net::TcpStream) -> Option<CountedPlace> {
        let ip = stream
            .peer_addr()
            .map(|address| address.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let limit = u64::from(self.limits.config.max_connections_per_ip);
        if let Some(guard) = self.limits.per_address.try_open(&ip, limit) {
            return Some(CountedPlace::Address(guard));
        }
        self.over_address_limit += 1;
        let now = tokio::time::Instant::now();
        let interval = Duration::from_millis(ADDRESS_WARN_INTERVAL_MS);
        if self
            .address_warned_at
            .is_none_or(|warned| now.duration_since(warned) >= interval)
        {
            tracing::warn!(
                %ip,
                max_connections_per_ip = limit,
                closed = self.over_address_limit,
                "at max_connections_per_ip: closing this address's new connections until some end"
            );
            self.address_warned_at = Some(now);
            self.over_address_limit = 0;
        }
        None
    }

    /// Looks at the TLS files when the reload timer fires (waking this
    /// stream at the next tick).
    fn poll_reload(&mut self, cx: &mut Context<'_>) {
        let Some(tls) = &self.tls else {
            return;
        };
        let tick = self.reload_tick.get_or_insert_with(|| {
            let period = tls.reload_check_interval();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        while tick.poll_tick(cx).is_ready() {
            tls.reload_now();
        }
    }

    fn note_accept_error(&mut self, error: &std::io::Error) {
        if !is_resource_exhaustion(error) {
            return;
        }
        if self.refused == 0 {
            tracing::warn!(%error, pause_ms = ACCEPT_PAUSE_MS, "cannot accept connections; pausing accepts until the resource is freed");
        }
        self.refused += 1;
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(
            ACCEPT_PAUSE_MS,
        ))));
    }
}

impl Stream for Incoming {
    type Item = std::io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_reload(cx);
        loop {
            while let Poll::Ready(Some(handshaken)) = Pin::new(&mut self.handshakes).poll_next(cx) {
                if let Some(connection) = handshaken {
                    return Poll::Ready(Some(Ok(connection)));
                }
            }
            if let Some(pause) = self.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            let stream = match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => stream,
                Poll::Ready(Some(Err(error))) => {
                    self.note_accept_error(&error);
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            if self.refused > 0 {
                tracing::info!(refused = self.refused, "accepting connections again");
                self.refused = 0;
            }
            // Over the limit: dropped (closed) here, and the next accepted;
            // with TLS, polled among the handshakes at the loop's start.
            if let Some(connection) = self.admit(stream) {
                return Poll::Ready(Some(Ok(connection)));
            }
        }
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
