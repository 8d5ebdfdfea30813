//! Connection settings shared by [`crate::Admin`], [`crate::Producer`] and
//! [`crate::Consumer`].

/// How to reach a Sluice cluster.
///
/// ```
/// use sluice_client::ClientConfig;
///
/// let config = ClientConfig {
///     bootstrap: vec!["http://10.0.0.1:7400".into(), "http://10.0.0.2:7400".into()],
///     client_id: "billing-service".into(),
///     ..ClientConfig::default()
/// };
/// assert_eq!(config.request_timeout_ms, 30_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Nameserver URLs tried in order until one answers. Any nameserver can
    /// answer any request. Default: `["http://127.0.0.1:7400"]`.
    pub bootstrap: Vec<String>,
    /// Name reported to servers (group membership, logs). Default: `sluice-client`.
    pub client_id: String,
    /// Upper bound on one unary request (and on the wait for a produce
    /// acknowledgement before the stream is considered broken), in
    /// milliseconds. Default: 30000.
    pub request_timeout_ms: u64,
    /// Upper bound on establishing a TCP/HTTP2 connection, in milliseconds.
    /// Default: 5000.
    pub connect_timeout_ms: u64,
    /// Largest gRPC message encoded or decoded, in bytes. Default:
    /// `sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES` (16 MiB).
    pub max_grpc_message_bytes: usize,
    /// Most topics one route watch covers. Producers, consumers and
    /// subscribers keep one `WatchRoutes` stream open to a nameserver for
    /// the topics they use, so they follow partition owners as they change
    /// (instead of after a request fails or times out); topics beyond this
    /// many are refreshed only after errors. 0 turns the watch off.
    /// Default: 1024.
    pub route_watch_max_topics: usize,
    /// TLS to every server (the CA to trust, and a certificate for mutual
    /// TLS); `None` is plaintext. Default: `None`.
    pub tls: Option<crate::ClientTls>,
    /// A bearer token (JWT), or a file holding one that is read again when
    /// it changes, sent with every request (`authorization: Bearer ...`);
    /// servers with `[auth.jwt]` take the token's principal. Use with
    /// `tls`: a token must not travel in plaintext. Default: `None`.
    pub credentials: Option<crate::Credentials>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            bootstrap: vec!["http://127.0.0.1:7400".to_string()],
            client_id: "sluice-client".to_string(),
            request_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            max_grpc_message_bytes: sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES,
            route_watch_max_topics: 1024,
            tls: None,
            credentials: None,
        }
    }
}
