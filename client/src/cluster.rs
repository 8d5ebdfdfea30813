//! Connections and cluster metadata shared by every client object: the
//! nameserver list with fail-over, one gRPC channel per broker address, the
//! route cache (kept current by a route watch, with a rate-limited refresh
//! as the fallback; see `route_watch`), and group-coordinator lookup.

use crate::credentials::{RequestInterceptor, TokenSource};
use crate::route_cache::{Applied, RouteCache, Source};
use crate::tls_reload::TlsSource;
use crate::{ClientConfig, ClientError};
use sluice_proto::limits;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::{
    FindCoordinatorRequest, GetRoutesRequest, GetRoutesResponse, PartitionRoute,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Minimum time between two route refreshes of the same topic, in
/// milliseconds; errors from many in-flight requests would otherwise turn
/// into a storm of `GetRoutes` calls.
pub(crate) const ROUTE_REFRESH_MIN_INTERVAL_MS: u64 = 100;

pub(crate) type BrokerGrpc = BrokerClient<InterceptedService<Channel, RequestInterceptor>>;
pub(crate) type NameServerGrpc = NameServerClient<InterceptedService<Channel, RequestInterceptor>>;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.topic, self.partition)
    }
}

/// Routes of one topic as last seen.
#[derive(Debug, Clone)]
pub(crate) struct TopicRoutes {
    /// Indexed by partition number.
    pub partitions: Vec<PartitionRoute>,
}

/// Shared connection state.
pub(crate) struct Cluster {
    pub config: ClientConfig,
    /// Index into `bootstrap` of the nameserver that answered last.
    preferred_nameserver: Mutex<usize>,
    channels: Mutex<HashMap<String, Channel>>,
    routes: Mutex<RouteCache>,
    /// Minimum time between refreshes of one topic.
    route_refresh_min_interval: Duration,
    /// Counts route changes: clients following partition owners (producer
    /// pipelines, fetchers, subscription streams) wait on it.
    route_changes: tokio::sync::watch::Sender<u64>,
    /// The route watch task, once started; ended when the cluster handle is
    /// dropped.
    route_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The token sent with every request (`ClientConfig::credentials`).
    token: Option<Arc<TokenSource>>,
    /// `ClientConfig::tls`, its files looked at again (`tls_reload.rs`).
    tls: Option<TlsSource>,
    /// The TLS generation the cached channels were opened with.
    channels_tls_generation: AtomicU64,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.route_watch).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short, non-awaiting locks leaves
    // plain data behind; keep going with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds `http://` to addresses that have no scheme (brokers register
/// `host:port`).
pub(crate) fn normalize_address(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

impl Cluster {
    /// Connects to the first bootstrap nameserver that accepts a connection.
    pub async fn connect(config: ClientConfig) -> Result<Arc<Cluster>, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument(
                "ClientConfig.bootstrap is empty: give at least one nameserver URL such as http://127.0.0.1:7400"
                    .into(),
            ));
        }
        let token = match &config.credentials {
            None => None,
            Some(credentials) => Some(Arc::new(TokenSource::new(credentials)?)),
        };
        let cluster = Arc::new(Cluster {
            token,
            config: config.clone(),
            preferred_nameserver: Mutex::new(0),
            channels: Mutex::new(HashMap::new()),
            routes: Mutex::new(RouteCache::default()),
            route_refresh_min_interval: Duration::from_millis(ROUTE_REFRESH_MIN_INTERVAL_MS),
            route_changes: tokio::sync::watch::Sender::new(0),
            route_watch: Mutex::new(None),
            tls: config.tls.as_ref().map(TlsSource::new),
            channels_tls_generation: AtomicU64::new(0),
        });
        let mut tried = Vec::new();
        let mut last = String::new();
        for (index, url) in config.bootstrap.iter().enumerate() {
            tried.push(url.clone());
            let endpoint = match cluster.endpoint(url) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    last = error.to_string();
                    continue;
                }
            };
            tracing::debug!(nameserver = %url, tls = config.tls.is_some(), "connecting to a bootstrap nameserver");
            match endpoint.connect().await {
                Ok(channel) => {
                    tracing::debug!(nameserver = %url, "connected");
                    lock(&cluster.channels).insert(normalize_address(url), channel);
                    *lock(&cluster.preferred_nameserver) = index;
                    return Ok(cluster);
                }
                Err(error) => {
                    tracing::warn!(nameserver = %url, %error, "nameserver did not accept a connection");
                    last = format!("{url}: {}", crate::error::error_chain(&error));
                }
            }
        }
        Err(ClientError::NoNameserver { tried, last })
    }

    /// A cluster handle that has not connected anywhere (tests seed routes).
    #[cfg(test)]
    pub fn unconnected(config: ClientConfig) -> Arc<Cluster> {
        Arc::new(Cluster {
            token: None,
            preferred_nameserver: Mutex::new(0),
            channels: Mutex::new(HashMap::new()),
            routes: Mutex::new(RouteCache::default()),
            route_refresh_min_interval: Duration::from_millis(ROUTE_REFRESH_MIN_INTERVAL_MS),
            route_changes: tokio::sync::watch::Sender::new(0),
            route_watch: Mutex::new(None),
            tls: config.tls.as_ref().map(TlsSource::new),
            channels_tls_generation: AtomicU64::new(0),
            config,
        })
    }

    /// Replaces the cached routes of a topic.
    #[cfg(test)]
    pub fn set_routes(&self, topic: &str, addresses: &[&str]) {
        let partitions = addresses
            .iter()
            .enumerate()
            .map(|(partition, address)| PartitionRoute {
                partition: partition as u32,
                broker_id: format!("broker-{address}"),
                broker_address: address.to_string(),
                epoch: 1,
            })
            .collect();
        self.set_partition_routes(topic, partitions);
    }

    /// Replaces the cached routes of a topic, as a route watch would.
    #[cfg(test)]
    pub fn set_partition_routes(&self, topic: &str, partitions: Vec<PartitionRoute>) {
        self.apply_routes(
            GetRoutesResponse {
                topics: vec![sluice_proto::v1::TopicRoute {
                    topic: topic.to_string(),
                    partitions,
                    error: 0,
                }],
            },
            Source::Watch,
        );
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, ClientError> {
        let address = crate::tls::with_scheme(address, self.config.tls.is_some());
        let mut endpoint = Endpoint::from_shared(address.clone()).map_err(|error| {
            ClientError::InvalidArgument(format!("bad server address '{address}': {error}"))
        })?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.current().0.tonic_config())
                .map_err(|error| {
                    ClientError::InvalidArgument(format!("TLS settings for '{address}': {error}"))
                })?;
        }
        Ok(endpoint
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .tcp_nodelay(true)
            .initial_stream_window_size(limits::HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(limits::HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(limits::HTTP2_MAX_FRAME_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true))
    }

    /// The (lazily connected) channel to `address`, one per address;
    /// new ones once the TLS files changed (channels handed out before
    /// keep theirs).
    pub fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let address = normalize_address(address);
        if let Some(tls) = &self.tls {
            let generation = tls.current().1;
            let mut channels = lock(&self.channels);
            if self
                .channels_tls_generation
                .swap(generation, Ordering::AcqRel)
                != generation
            {
                channels.clear();
            }
        }
        if let Some(channel) = lock(&self.channels).get(&address) {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(&address)?.connect_lazy();
        Ok(lock(&self.channels)
            .entry(address)
            .or_insert(channel)
            .clone())
    }

    pub fn broker(&self, address: &str) -> Result<BrokerGrpc, ClientError> {
        let channel = self.channel(address)?;
        Ok(BrokerClient::with_interceptor(channel, self.interceptor())
            .max_decoding_message_size(self.config.max_grpc_message_bytes)
            .max_encoding_message_size(self.config.max_grpc_message_bytes))
    }

    fn nameserver(&self, address: &str) -> Result<NameServerGrpc, ClientError> {
        let channel = self.channel(address)?;
        Ok(
            NameServerClient::with_interceptor(channel, self.interceptor())
                .max_decoding_message_size(self.config.max_grpc_message_bytes)
                .max_encoding_message_size(self.config.max_grpc_message_bytes),
        )
    }

    /// Trace context and the token on every request.
    fn interceptor(&self) -> RequestInterceptor {
        RequestInterceptor {
            token: self.token.clone(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Runs one unary call bounded by the request timeout.
    pub async fn unary<T, Fut>(
        &self,
        what: &str,
        address: &str,
        call: Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.request_timeout(), call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                let error = ClientError::from_status(address, &status);
                // Throttled by a quota: the error is returned after the
                // wait the server named, so every retry loop honours it.
                if let Some(wait_ms) = error.retry_after_ms() {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                }
                Err(error)
            }
            Err(_) => Err(ClientError::Timeout {
                what: format!("{what} at {address}"),
                timeout_ms: self.config.request_timeout_ms,
            }),
        }
    }

    /// Calls a nameserver, starting with the one that answered last and
    /// failing over to the others on transport errors and timeouts.
    pub async fn call_nameserver<T, F, Fut>(&self, what: &str, call: F) -> Result<T, ClientError>
    where
        F: Fn(NameServerGrpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let count = self.config.bootstrap.len();
        let start = *lock(&self.preferred_nameserver);
        let mut tried = Vec::new();
        let mut last = String::new();
        for step in 0..count {
            let index = (start + step) % count;
            let address = &self.config.bootstrap[index];
            tried.push(address.clone());
            let client = match self.nameserver(address) {
                Ok(client) => client,
                Err(error) => {
                    last = error.to_string();
                    continue;
                }
            };
            match self.unary(what, address, call(client)).await {
                Ok(value) => {
                    *lock(&self.preferred_nameserver) = index;
                    return Ok(value);
                }
                Err(ClientError::Server(error))
                    if !matches!(error.code, ErrorCode::Unavailable | ErrorCode::ShuttingDown) =>
                {
                    return Err(ClientError::Server(error));
                }
                Err(error) => {
                    tracing::warn!(nameserver = %address, %error, what, "nameserver call failed; trying the next one");
                    last = error.to_string();
                }
            }
        }
        Err(ClientError::NoNameserver { tried, last })
    }

    /// Routes of `topic`, from the cache or fetched.
    pub async fn topic_routes(&self, topic: &str) -> Result<Arc<TopicRoutes>, ClientError> {
        if let Some(routes) = lock(&self.routes).get(topic) {
            return Ok(routes.clone());
        }
        self.fetch_routes(&[topic.to_string()]).await?;
        lock(&self.routes).get(topic).cloned().ok_or_else(|| {
            ClientError::Server(SluiceError::new(
                ErrorCode::UnknownTopic,
                format!(
                    "topic '{topic}' does not exist (create it with `sluice topic create {topic}`)"
                ),
            ))
        })
    }

    /// The cached route of one partition, if any.
    pub fn cached_route(&self, topic: &str, partition: u32) -> Option<PartitionRoute> {
        lock(&self.routes)
            .get(topic)
            .and_then(|routes| routes.partitions.get(partition as usize).cloned())
    }

    /// The cached broker address of one partition (normalized), if it has
    /// an owner.
    pub fn cached_address(&self, topic: &str, partition: u32) -> Option<String> {
        self.cached_route(topic, partition)
            .filter(|route| !route.broker_address.is_empty())
            .map(|route| normalize_address(&route.broker_address))
    }

    /// Notified on every route change (the value counts them).
    pub fn route_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.route_changes.subscribe()
    }

    /// The topics a route watch covers: the cached ones, at most
    /// `route_watch_max_topics` (in name order).
    pub(crate) fn watched_topics(&self) -> Vec<String> {
        let mut names = lock(&self.routes).topic_names();
        names.truncate(self.config.route_watch_max_topics);
        names
    }

    /// Starts the route watch (once; not for admin clients, which follow
    /// no owners). Without `route_watch_max_topics` routes are refreshed
    /// only after errors.
    pub fn start_route_watch(self: &Arc<Self>) {
        if self.config.route_watch_max_topics == 0 {
            return;
        }
        let mut task = lock(&self.route_watch);
        if task.is_none() {
            *task = Some(tokio::spawn(crate::route_watch::run(
                Arc::downgrade(self),
                self.route_changes(),
            )));
        }
    }

    /// Applies routes from a watch message or a `GetRoutes` answer;
    /// returns the error entries (topics removed from the cache).
    pub(crate) fn apply_routes(
        &self,
        response: GetRoutesResponse,
        source: Source,
    ) -> Vec<(String, i32)> {
        let mut changed = false;
        let mut errors = Vec::new();
        {
            let mut cache = lock(&self.routes);
            for route in response.topics {
                let (topic, error) = (route.topic.clone(), route.error);
                let applied = cache.apply(route, source);
                changed |= applied == Applied::Changed;
                if error != ErrorCode::None as i32 && applied != Applied::Stale {
                    errors.push((topic, error));
                }
            }
        }
        if changed {
            self.route_changes.send_modify(|count| *count += 1);
        }
        errors
    }

    /// The nameserver a new call starts with, and how many there are.
    pub(crate) fn preferred_nameserver(&self) -> (usize, usize) {
        (
            *lock(&self.preferred_nameserver),
            self.config.bootstrap.len(),
        )
    }

    /// A client of bootstrap nameserver `index`, and its address.
    pub(crate) fn nameserver_at(
        &self,
        index: usize,
    ) -> Result<(NameServerGrpc, String), ClientError> {
        let address = self
            .config
            .bootstrap
            .get(index)
            .ok_or_else(|| ClientError::InvalidArgument(format!("no nameserver #{index}")))?;
        Ok((self.nameserver(address)?, address.clone()))
    }

    /// Refreshes `topics` unless each was refreshed within
    /// [`ROUTE_REFRESH_MIN_INTERVAL_MS`].
    pub async fn refresh_routes(&self, topics: &[String]) -> Result<(), ClientError> {
        let due = lock(&self.routes).due(topics, Instant::now(), self.route_refresh_min_interval);
        if due.is_empty() {
            return Ok(());
        }
        self.fetch_routes(&due).await
    }

    async fn fetch_routes(&self, topics: &[String]) -> Result<(), ClientError> {
        let started = lock(&self.routes).begin_fetch(topics, Instant::now());
        let request = GetRoutesRequest {
            topics: topics.to_vec(),
        };
        let response = self
            .call_nameserver("GetRoutes", |mut client| {
                let request = request.clone();
                async move { client.get_routes(request).await }
            })
            .await?;
        let errors = self.apply_routes(response, Source::Fetch { started });
        let first_error = match errors.first() {
            Some((topic, code)) if topics.len() == 1 => {
                ClientError::from_code(*code, format!("topic '{topic}'"))
            }
            _ => None,
        };
        match first_error {
            Some(ClientError::Server(error)) if error.code == ErrorCode::UnknownTopic => {
                Err(ClientError::Server(SluiceError::new(
                    ErrorCode::UnknownTopic,
                    format!(
                        "{} does not exist (create it with `sluice topic create`)",
                        error.message
                    ),
                )))
            }
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The address of the coordinator of `group`.
    pub async fn find_coordinator(&self, group: &str) -> Result<String, ClientError> {
        let request = FindCoordinatorRequest {
            group: group.to_string(),
            ..Default::default()
        };
        let response = self
            .call_nameserver("FindCoordinator", |mut client| {
                let request = request.clone();
                async move { client.find_coordinator(request).await }
            })
            .await?;
        if response.broker_address.is_empty() {
            return Err(ClientError::Server(SluiceError::new(
                ErrorCode::Unavailable,
                format!(
                    "group '{group}' has no coordinator right now (offsets partition {} has no live owner); retry shortly",
                    response.offsets_partition
                ),
            )));
        }
        Ok(normalize_address(&response.broker_address))
    }

    /// The address of the transaction coordinator of `transactional_id`
    /// (ADR 0016 §2.1).
    pub async fn find_transaction_coordinator(
        &self,
        transactional_id: &str,
    ) -> Result<String, ClientError> {
        let request = FindCoordinatorRequest {
            kind: sluice_proto::v1::CoordinatorKind::Transaction as i32,
            key: transactional_id.to_string(),
            ..Default::default()
        };
        let response = self
            .call_nameserver("FindCoordinator", |mut client| {
                let request = request.clone();
                async move { client.find_coordinator(request).await }
            })
            .await?;
        if response.broker_address.is_empty() {
            return Err(ClientError::Server(SluiceError::new(
                ErrorCode::Unavailable,
                format!(
                    "transactional id '{transactional_id}' has no coordinator right now (transaction log partition {} has no live owner); retry shortly",
                    response.offsets_partition
                ),
            )));
        }
        Ok(normalize_address(&response.broker_address))
    }
}

/// `start + duration`, saturating far in the future instead of panicking
/// on absurd configured durations.
pub(crate) fn instant_after(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(start)
}

/// How long to sleep after a fetch answered `throttle_time_ms` (over the
/// principal's fetch quota, the broker read nothing and held the answer
/// for part of the wait): the rest, bounded so a broken server cannot
/// stall a consumer for long. A throttled consumer neither spins nor
/// loses data.
pub(crate) fn throttle_wait(throttle_time_ms: u64) -> Duration {
    Duration::from_millis(throttle_time_ms.min(sluice_proto::error::MAX_RETRY_AFTER_MS))
}

/// Exponential backoff: `base_ms * 2^attempt`, capped at `max_ms`.
pub(crate) fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(30)).unwrap_or(u64::MAX);
    Duration::from_millis(base_ms.saturating_mul(factor).min(max_ms.max(base_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_wait_is_as_told_and_bounded() {
        assert_eq!(throttle_wait(0), Duration::ZERO);
        assert_eq!(throttle_wait(1500), Duration::from_millis(1500));
        assert_eq!(
            throttle_wait(u64::MAX),
            Duration::from_millis(sluice_proto::error::MAX_RETRY_AFTER_MS)
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0, 100, 1000), Duration::from_millis(100));
        assert_eq!(backoff(1, 100, 1000), Duration::from_millis(200));
        assert_eq!(backoff(3, 100, 1000), Duration::from_millis(800));
        assert_eq!(backoff(4, 100, 1000), Duration::from_millis(1000));
        assert_eq!(backoff(200, 100, 1000), Duration::from_millis(1000));
    }

    async fn dead_address() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let address = format!("http://{}", listener.local_addr().expect("bound address"));
        drop(listener);
        address
    }

    #[tokio::test]
    async fn no_nameserver_lists_every_address_tried() {
        let first = dead_address().await;
        let second = dead_address().await;
        let config = ClientConfig {
            bootstrap: vec![first.clone(), second.clone()],
            connect_timeout_ms: 500,
            ..ClientConfig::default()
        };
        match Cluster::connect(config).await {
            Err(ClientError::NoNameserver { tried, .. }) => assert_eq!(tried, vec![first, second]),
            Err(other) => panic!("expected NoNameserver, got {other}"),
            Ok(_) => panic!("nothing listens there"),
        }
        let error = Cluster::connect(ClientConfig {
            bootstrap: Vec::new(),
            ..ClientConfig::default()
        })
        .await
        .err()
        .expect("empty bootstrap is refused");
        assert!(matches!(error, ClientError::InvalidArgument(_)));
    }

    #[tokio::test]
    async fn nameserver_calls_fail_over_and_report_what_was_tried() {
        let cluster = Cluster::unconnected(ClientConfig {
            bootstrap: vec![dead_address().await, dead_address().await],
            connect_timeout_ms: 500,
            ..ClientConfig::default()
        });
        let error = cluster
            .topic_routes("orders")
            .await
            .expect_err("no nameserver answers");
        match error {
            ClientError::NoNameserver { tried, .. } => assert_eq!(tried.len(), 2),
            other => panic!("expected NoNameserver, got {other}"),
        }
    }

    #[tokio::test]
    async fn route_refresh_is_rate_limited() {
        let mut cluster = Cluster::unconnected(ClientConfig {
            bootstrap: vec![dead_address().await],
            connect_timeout_ms: 500,
            ..ClientConfig::default()
        });
        Arc::get_mut(&mut cluster)
            .expect("sole owner")
            .route_refresh_min_interval = Duration::from_secs(3600);
        // The first refresh tries (and fails); an immediate second one is
        // skipped without calling anyone.
        assert!(cluster.refresh_routes(&["t".to_string()]).await.is_err());
        assert!(cluster.refresh_routes(&["t".to_string()]).await.is_ok());
    }

    /// Waits up to 10 s for `condition`.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_route_watch_follows_owner_changes_fails_over_and_grows_with_the_topics() {
        use crate::testing::FakeNameServer;
        let nameserver = FakeNameServer::default();
        {
            let mut state = nameserver.lock();
            state.routes.insert("t".into(), vec!["http://a:1".into()]);
            state.routes.insert("u".into(), vec!["http://a:1".into()]);
        }
        let live = nameserver.start().await;
        let cluster = Cluster::unconnected(ClientConfig {
            // The first nameserver is down: the watch goes on to the next.
            bootstrap: vec![dead_address().await, live],
            connect_timeout_ms: 500,
            ..ClientConfig::default()
        });
        cluster.start_route_watch();
        let mut changes = cluster.route_changes();
        cluster.topic_routes("t").await.expect("routes of t");
        eventually("a watch on t", || nameserver.lock().watch_calls >= 1).await;
        // An owner change reaches the cache without any request failing.
        nameserver.move_topic("t", "http://b:2");
        eventually("the move to b", || {
            cluster.cached_address("t", 0).as_deref() == Some("http://b:2")
        })
        .await;
        assert!(
            changes.has_changed().expect("sender alive"),
            "users are told"
        );
        changes.mark_unchanged();
        // A topic used later joins the watch (one reopening).
        let watches = nameserver.lock().watch_calls;
        cluster.topic_routes("u").await.expect("routes of u");
        eventually("the watch reopened with u", || {
            nameserver.lock().watch_calls > watches
        })
        .await;
        nameserver.move_topic("u", "http://c:3");
        eventually("the move of u", || {
            cluster.cached_address("u", 0).as_deref() == Some("http://c:3")
        })
        .await;
        eventually("the previous watch closed", || {
            nameserver.lock().open_watches == 1
        })
        .await;
        // Dropping the handle ends the watch: its stream closes.
        drop(cluster);
        eventually("the watch closed", || nameserver.lock().open_watches == 0).await;
    }

    #[tokio::test]
    async fn no_route_watch_when_turned_off() {
        use crate::testing::FakeNameServer;
        let nameserver = FakeNameServer::default();
        nameserver
            .lock()
            .routes
            .insert("t".into(), vec!["http://a:1".into()]);
        let cluster = Cluster::unconnected(ClientConfig {
            bootstrap: vec![nameserver.start().await],
            route_watch_max_topics: 0,
            ..ClientConfig::default()
        });
        cluster.start_route_watch();
        cluster.topic_routes("t").await.expect("routes of t");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(nameserver.lock().watch_calls, 0);
        assert_eq!(cluster.watched_topics(), Vec::<String>::new());
    }

    #[test]
    fn instant_after_saturates() {
        let now = Instant::now();
        assert_eq!(
            instant_after(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        assert!(instant_after(now, Duration::MAX) > now);
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(normalize_address("127.0.0.1:7401"), "http://127.0.0.1:7401");
        assert_eq!(normalize_address("http://a:1"), "http://a:1");
    }
}
