//! `[connections]`: the bounds every Sluice server (nameserver, broker,
//! store) puts on its clients' connections, streams and in-flight request
//! bytes. One struct, the same section in each service's config.

use crate::ranges::KeyRange;
use serde::{Deserialize, Serialize};

/// The section's name in every service's TOML file.
pub const SECTION: &str = "connections";

/// TCP keepalive times are set in whole seconds (`TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`), at least 1 s and at most 32767 s (Linux refuses
/// more); in milliseconds here like every other duration.
pub const MIN_TCP_KEEPALIVE_MS: u64 = 1_000;
/// See [`MIN_TCP_KEEPALIVE_MS`].
pub const MAX_TCP_KEEPALIVE_MS: u64 = 32_767_000;

/// `[connections]`: limits of the gRPC server's connections.
///
/// Request memory is bounded by the sum of (see ARCHITECTURE.md, Limits):
/// - `max_inflight_request_bytes` (bytes of gRPC messages being received;
///   up to twice that allocated while decode buffers grow),
/// - `max_connections` x the HTTP/2 connection window (16 MiB: bytes
///   received that no handler has taken yet),
/// - `max_connections` x the fixed cost of a connection (about 16 KiB),
/// - `max_concurrent_streams` x the fixed cost of a stream (about 17 KiB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Connections served at once; a connection accepted beyond it is
    /// closed at once (open ones go on being served). Default 4096.
    pub max_connections: u32,
    /// Connections served at once from one client IP address; one
    /// accepted beyond it is closed at once (WARN at most every 10 s).
    /// Range: 1 ..= 4,294,967,295. Default: 1024.
    pub max_connections_per_ip: u32,
    /// Streams (requests) one connection may have open at once, advertised
    /// in HTTP/2 SETTINGS; a client opening more waits for one to end.
    /// Must exceed the long-lived streams a peer keeps on one connection:
    /// a broker's append streams to one store (one per segment it writes
    /// there) and a subscriber's streams to one broker (one per
    /// partition). Default 16384.
    pub max_concurrent_streams_per_connection: u32,
    /// Streams open at once over all connections; a stream opened beyond
    /// it is answered RESOURCE_EXHAUSTED at once, unread. Each open stream
    /// costs about 17 KiB (measured), so this bounds their memory: about
    /// 1.1 GiB at the default. Default 65536.
    pub max_concurrent_streams: u32,
    /// A connection with no open stream for this long is closed; 0 never
    /// closes idle connections. Default 600000 (10 min).
    pub connection_idle_timeout_ms: u64,
    /// A connection that has not sent the HTTP/2 preface and its first
    /// SETTINGS frame this long after it was accepted is closed.
    /// Default 10000.
    pub handshake_timeout_ms: u64,
    /// Interval of HTTP/2 PINGs the server sends to check the peer is
    /// alive; 0 sends none. Default 60000.
    pub http2_keepalive_interval_ms: u64,
    /// A PING unanswered this long closes the connection. Default 20000.
    pub http2_keepalive_timeout_ms: u64,
    /// TCP keepalive: idle time before the first probe, in whole seconds
    /// (1000 ..= 32767000); 0 turns TCP keepalive off. Default 60000.
    pub tcp_keepalive_ms: u64,
    /// TCP keepalive: interval between probes, in whole seconds
    /// (1000 ..= 32767000). Default 10000.
    pub tcp_keepalive_interval_ms: u64,
    /// TCP keepalive: unanswered probes before the connection is dropped.
    /// Default 3.
    pub tcp_keepalive_retries: u32,
    /// Bytes of request messages received on one connection and not yet
    /// complete (a message's bytes count from its first byte until its
    /// last arrived and it is handed to the handler); a stream whose next
    /// bytes would exceed it fails with RESOURCE_EXHAUSTED. At least
    /// `max_grpc_message_bytes`. Default 64 MiB.
    pub max_inflight_request_bytes_per_connection: u64,
    /// The same bytes over all connections. At least
    /// `max_grpc_message_bytes`. Default 256 MiB.
    pub max_inflight_request_bytes: u64,
    /// TLS handshakes in progress at once (peers not yet authenticated);
    /// a connection accepted beyond it is closed at once, while
    /// handshaken connections go on being served. Each costs rustls's
    /// handshake buffers (at most about 64 KiB, whatever lengths the peer
    /// claims). Only with `[tls]`. Default 1024.
    pub max_tls_handshakes: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            max_concurrent_streams_per_connection: 16_384,
            max_concurrent_streams: 65_536,
            connection_idle_timeout_ms: 600_000,
            handshake_timeout_ms: 10_000,
            http2_keepalive_interval_ms: 60_000,
            http2_keepalive_timeout_ms: 20_000,
            tcp_keepalive_ms: 60_000,
            tcp_keepalive_interval_ms: 10_000,
            tcp_keepalive_retries: 3,
            max_inflight_request_bytes_per_connection: 64 * 1024 * 1024,
            max_inflight_request_bytes: 256 * 1024 * 1024,
            max_tls_handshakes: 1024,
        }
    }
}

impl ConnectionsConfig {
    /// Every numeric key, spelt `[connections] key`.
    pub fn ranges(&self) -> Vec<KeyRange> {
        let key = |name: &str| format!("[{SECTION}] {name}");
        vec![
            KeyRange::count(&key("max_connections"), self.max_connections),
            KeyRange::count(&key("max_connections_per_ip"), self.max_connections_per_ip),
            KeyRange::count(
                &key("max_concurrent_streams_per_connection"),
                self.max_concurrent_streams_per_connection,
            ),
            KeyRange::count(&key("max_concurrent_streams"), self.max_concurrent_streams),
            KeyRange::count(&key("max_tls_handshakes"), self.max_tls_handshakes),
            KeyRange::duration_ms(
                &key("connection_idle_timeout_ms"),
                self.connection_idle_timeout_ms,
            )
            .or_zero("idle connections are never closed"),
            KeyRange::duration_ms(&key("handshake_timeout_ms"), self.handshake_timeout_ms),
            KeyRange::duration_ms(
                &key("http2_keepalive_interval_ms"),
                self.http2_keepalive_interval_ms,
            )
            .or_zero("no HTTP/2 keepalive pings"),
            KeyRange::duration_ms(
                &key("http2_keepalive_timeout_ms"),
                self.http2_keepalive_timeout_ms,
            ),
            KeyRange::new(
                &key("tcp_keepalive_ms"),
                self.tcp_keepalive_ms,
                MIN_TCP_KEEPALIVE_MS,
                MAX_TCP_KEEPALIVE_MS,
            )
            .or_zero("TCP keepalive off"),
            KeyRange::new(
                &key("tcp_keepalive_interval_ms"),
                self.tcp_keepalive_interval_ms,
                MIN_TCP_KEEPALIVE_MS,
                MAX_TCP_KEEPALIVE_MS,
            ),
            KeyRange::new(
                &key("tcp_keepalive_retries"),
                self.tcp_keepalive_retries,
                1,
                // Linux refuses TCP_KEEPCNT above 127.
                127,
            ),
            KeyRange::bytes(
                &key("max_inflight_request_bytes_per_connection"),
                self.max_inflight_request_bytes_per_connection,
            ),
            KeyRange::bytes(
                &key("max_inflight_request_bytes"),
                self.max_inflight_request_bytes,
            ),
        ]
    }

    /// The budgets must each admit one message of the service's largest
    /// size (`max_grpc_message_bytes`), or such messages could never be
    /// received. One message per broken rule.
    pub fn cross_checks(&self, max_grpc_message_bytes: usize) -> Vec<String> {
        let message = max_grpc_message_bytes as u64;
        [
            (
                "max_inflight_request_bytes_per_connection",
                self.max_inflight_request_bytes_per_connection,
            ),
            (
                "max_inflight_request_bytes",
                self.max_inflight_request_bytes,
            ),
        ]
        .into_iter()
        .filter(|(_, budget)| *budget < message)
        .map(|(name, budget)| {
            format!(
                "[{SECTION}] {name} ({budget}) must be at least max_grpc_message_bytes ({message})"
            )
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::out_of_range;

    #[test]
    fn the_defaults_are_within_every_range() {
        let config = ConnectionsConfig::default();
        assert_eq!(out_of_range(&config.ranges()), Vec::<String>::new());
        assert_eq!(
            config.cross_checks(sluice_proto::limits::DEFAULT_MAX_GRPC_MESSAGE_BYTES),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_budget_below_one_message_is_refused() {
        let config = ConnectionsConfig {
            max_inflight_request_bytes_per_connection: 1024,
            ..ConnectionsConfig::default()
        };
        assert_eq!(
            config.cross_checks(2048),
            [
                "[connections] max_inflight_request_bytes_per_connection (1024) must be at least \
              max_grpc_message_bytes (2048)"
            ]
        );
        assert_eq!(config.cross_checks(1024), Vec::<String>::new());
    }

    #[test]
    fn zero_is_refused_where_it_means_nothing() {
        let zeroed = ConnectionsConfig {
            max_connections: 0,
            max_connections_per_ip: 0,
            max_concurrent_streams_per_connection: 0,
            max_concurrent_streams: 0,
            connection_idle_timeout_ms: 0,
            handshake_timeout_ms: 0,
            http2_keepalive_interval_ms: 0,
            http2_keepalive_timeout_ms: 0,
            tcp_keepalive_ms: 0,
            tcp_keepalive_interval_ms: 0,
            tcp_keepalive_retries: 0,
            max_inflight_request_bytes_per_connection: 0,
            max_inflight_request_bytes: 0,
            max_tls_handshakes: 0,
        };
        let refused: Vec<String> = out_of_range(&zeroed.ranges())
            .into_iter()
            .map(|message| message.split(" = ").next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            refused,
            [
                "[connections] max_connections",
                "[connections] max_connections_per_ip",
                "[connections] max_concurrent_streams_per_connection",
                "[connections] max_concurrent_streams",
                "[connections] max_tls_handshakes",
                "[connections] handshake_timeout_ms",
                "[connections] http2_keepalive_timeout_ms",
                "[connections] tcp_keepalive_interval_ms",
                "[connections] tcp_keepalive_retries",
                "[connections] max_inflight_request_bytes_per_connection",
                "[connections] max_inflight_request_bytes",
            ]
        );
    }

    /// Every key at the smallest and largest value it accepts, and just
    /// outside them, set through TOML as a config file would.
    #[test]
    fn every_key_at_its_extremes() {
        use figment::providers::{Format, Serialized, Toml};
        let load = |key: &str, value: u64| -> Vec<String> {
            let figment =
                figment::Figment::from(Serialized::defaults(ConnectionsConfig::default()))
                    .merge(Toml::string(&format!("{key} = {value}")));
            match figment.extract::<ConnectionsConfig>() {
                Ok(config) => out_of_range(&config.ranges()),
                Err(error) => vec![error.to_string()],
            }
        };
        for range in ConnectionsConfig::default().ranges() {
            let key = range.key.trim_start_matches("[connections] ");
            for value in [range.min, range.max] {
                assert_eq!(load(key, value), Vec::<String>::new(), "{key} = {value}");
            }
            assert_ne!(
                load(key, range.max + 1),
                Vec::<String>::new(),
                "{key} above max"
            );
            if range.min > 0 {
                let below = load(key, range.min - 1);
                let zero_allowed = range.min == 1 && range.zero_means.is_some();
                assert_eq!(below.is_empty(), zero_allowed, "{key} below min: {below:?}");
            }
        }
    }
}
