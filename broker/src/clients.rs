//! gRPC clients to nameservers, stores and other brokers: one channel per
//! address (reused), explicit message limits, per-request timeouts and
//! trace-context injection.

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use sluice_proto::limits;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::store_client::StoreClient;
use sluice_service::PeerTls;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Most distinct peer addresses kept connected; beyond it the pool is reset
/// (channels reconnect lazily), so a churning cluster cannot grow it forever.
const MAX_CACHED_CHANNELS: usize = 1024;

/// How long a store that failed a request is tried after the others when
/// reading: a frozen store would otherwise cost every read a full timeout.
const STORE_SUSPECT_MS: u64 = 10_000;

pub struct Clients {
    /// Plaintext, or TLS to every peer (`[tls]`).
    peer_tls: PeerTls,
    channels: Mutex<HashMap<String, Channel>>,
    /// Store address -> when it last failed a request (bounded like the
    /// channel pool).
    suspect_stores: Mutex<HashMap<String, Instant>>,
    nameservers: Vec<String>,
    current_nameserver: AtomicUsize,
    max_message_bytes: usize,
    connect_timeout: Duration,
    pub store_timeout: Duration,
    pub nameserver_timeout: Duration,
}

/// Builds a request carrying the current trace context and a deadline.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    sluice_telemetry::inject_context(request.metadata_mut());
    request
}

/// A request without a deadline (long-lived streams), with trace context.
pub fn stream_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    sluice_telemetry::inject_context(request.metadata_mut());
    request
}

impl Clients {
    pub fn new(config: &BrokerConfig, peer_tls: PeerTls) -> Self {
        Self {
            peer_tls,
            channels: Mutex::new(HashMap::new()),
            suspect_stores: Mutex::new(HashMap::new()),
            nameservers: config.cluster.nameservers.clone(),
            current_nameserver: AtomicUsize::new(0),
            max_message_bytes: config.server.max_grpc_message_bytes,
            connect_timeout: Duration::from_millis(config.server.connect_timeout_ms),
            store_timeout: Duration::from_millis(config.replication.store_request_timeout_ms),
            nameserver_timeout: Duration::from_millis(config.cluster.nameserver_request_timeout_ms),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, BrokerError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| BrokerError::Internal("channel pool lock poisoned".into()))?;
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_CACHED_CHANNELS {
            channels.clear();
        }
        let connect_timeout = self.connect_timeout;
        let endpoint = self
            .peer_tls
            .endpoint(address)
            .map_err(BrokerError::InvalidArgument)?
            .configure(|endpoint| {
                endpoint
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .initial_stream_window_size(limits::HTTP2_STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(limits::HTTP2_CONNECTION_WINDOW_BYTES)
                    .max_frame_size(limits::HTTP2_MAX_FRAME_BYTES)
            });
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// The channel to the nameserver currently preferred.
    pub fn nameserver_channel(&self) -> Result<Channel, BrokerError> {
        if self.nameservers.is_empty() {
            return Err(BrokerError::Unavailable("no nameservers configured".into()));
        }
        let index = self.current_nameserver.load(Ordering::Relaxed) % self.nameservers.len();
        self.channel(&self.nameservers[index])
    }

    /// The nameserver currently preferred.
    pub fn nameserver(&self) -> Result<NameServerClient<Channel>, BrokerError> {
        let channel = self.nameserver_channel()?;
        Ok(NameServerClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// Moves on to the next nameserver after a failure that may be the
    /// nameserver's own (unavailable, timeout).
    pub fn nameserver_failed(&self, status: &tonic::Status) {
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ) {
            self.next_nameserver();
        }
    }

    /// Prefers the next configured nameserver from now on.
    pub fn next_nameserver(&self) {
        self.current_nameserver.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers that a store failed a request, so reads try it last for a
    /// while.
    pub fn store_failed(&self, address: &str) {
        let mut suspects = self
            .suspect_stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if suspects.len() >= MAX_CACHED_CHANNELS {
            suspects.clear();
        }
        suspects.insert(address.to_string(), Instant::now());
    }

    /// Indexes of `addresses` in the order reads should try them: stores
    /// that failed recently last, otherwise as given.
    pub fn read_order<'a>(&self, addresses: impl Iterator<Item = &'a str>) -> Vec<usize> {
        let suspects = self
            .suspect_stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = Duration::from_millis(STORE_SUSPECT_MS);
        let mut order: Vec<(bool, usize)> = addresses
            .enumerate()
            .map(|(index, address)| {
                let suspect = suspects
                    .get(address)
                    .is_some_and(|failed_at| failed_at.elapsed() < window);
                (suspect, index)
            })
            .collect();
        order.sort();
        order.into_iter().map(|(_, index)| index).collect()
    }

    pub fn store(&self, address: &str) -> Result<StoreClient<Channel>, BrokerError> {
        Ok(StoreClient::new(self.channel(address)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn broker(&self, address: &str) -> Result<BrokerClient<Channel>, BrokerError> {
        Ok(BrokerClient::new(self.channel(address)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }
}

/// Calls the preferred nameserver with `$method($message)`, rotating to
/// the next one on transport failures. Evaluates to `Result<Response, BrokerError>`.
macro_rules! nameserver_call {
    ($clients:expr, $method:ident, $message:expr) => {{
        let clients: &$crate::clients::Clients = $clients;
        match clients.nameserver() {
            Err(error) => Err(error),
            Ok(mut client) => match client
                .$method($crate::clients::request(
                    $message,
                    clients.nameserver_timeout,
                ))
                .await
            {
                Ok(response) => Ok(response.into_inner()),
                Err(status) => {
                    clients.nameserver_failed(&status);
                    Err($crate::error::BrokerError::remote(
                        concat!("nameserver ", stringify!($method)),
                        &status,
                    ))
                }
            },
        }
    }};
}
pub(crate) use nameserver_call;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_try_recently_failed_stores_last() {
        let clients = Clients::new(&BrokerConfig::default(), PeerTls::plaintext());
        let stores = ["a:1", "b:1", "c:1"];
        assert_eq!(clients.read_order(stores.iter().copied()), [0, 1, 2]);
        clients.store_failed("a:1");
        assert_eq!(clients.read_order(stores.iter().copied()), [1, 2, 0]);
        clients.store_failed("c:1");
        assert_eq!(clients.read_order(stores.iter().copied()), [1, 0, 2]);
    }
}
