//! A test cluster built step by step: metadata (a fresh etcd, a restartable
//! etcd or the embedded store), one or more nameservers, heartbeating
//! stores and brokers, and topics; e.g.
//!
//! ```ignore
//! let cluster = Fixture::new().store("store-1").broker("broker-1").topic("orders", 3).build().await;
//! ```
//!
//! Node addresses are made up (nothing listens on them) but fixed per
//! node, so a node registering again keeps its address. With several
//! nameservers each node registers through one and heartbeats through the
//! next, so every test sees sessions shared through the metadata store.

use super::etcd::Etcd;
use super::{register, test_config, Client, Heartbeater, RestartableEtcd, RunningNameServer};
use sluice_nameserver::metadata::{
    EmbeddedMetadataStore, EtcdMetadataStore, EtcdOptions, MetadataStore, DEFAULT_KEY_PREFIX,
};
use sluice_nameserver::{MetadataBackend, NameServerConfig};
use sluice_proto::v1::{CreateTopicRequest, NodeKind, TopicConfig};
use std::collections::HashMap;
use std::sync::Arc;

/// A request for a topic of `partitions` partitions, the rest defaults.
pub fn topic_request(name: &str, partitions: u32) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_string(),
        config: Some(TopicConfig {
            partitions,
            ..TopicConfig::default()
        }),
    }
}

/// A metadata store client on the etcd at `endpoints`.
pub async fn etcd_store(endpoints: Vec<String>) -> Arc<dyn MetadataStore> {
    Arc::new(
        EtcdMetadataStore::connect(EtcdOptions {
            endpoints,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 5_000,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            ..EtcdOptions::default()
        })
        .await
        .expect("connect to the spawned etcd"),
    )
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

enum Backend {
    Etcd,
    RestartableEtcd,
    Embedded,
}

/// A change to every nameserver's config.
type ConfigChange = Box<dyn Fn(&mut NameServerConfig)>;

/// What the cluster is built from; see the module documentation.
pub struct Fixture {
    backend: Backend,
    nameservers: usize,
    configure: Option<ConfigChange>,
    nodes: Vec<(NodeKind, String)>,
    topics: Vec<(String, u32)>,
}

impl Fixture {
    /// One nameserver on a fresh etcd, no nodes, no topics.
    pub fn new() -> Self {
        Self {
            backend: Backend::Etcd,
            nameservers: 1,
            configure: None,
            nodes: Vec::new(),
            topics: Vec::new(),
        }
    }

    /// On an etcd the test can stop and resume ([`Cluster::stop_etcd`]).
    pub fn restartable_etcd() -> Self {
        Self {
            backend: Backend::RestartableEtcd,
            ..Self::new()
        }
    }

    /// On the embedded store in a temporary directory (one nameserver).
    pub fn embedded() -> Self {
        Self {
            backend: Backend::Embedded,
            ..Self::new()
        }
    }

    /// `count` nameservers, `ns-1` … `ns-{count}`, on the same metadata.
    pub fn nameservers(mut self, count: usize) -> Self {
        assert!(count >= 1, "a cluster needs a nameserver");
        self.nameservers = count;
        self
    }

    /// Changes every nameserver's config after [`test_config`].
    pub fn configure(mut self, change: impl Fn(&mut NameServerConfig) + 'static) -> Self {
        self.configure = Some(Box::new(change));
        self
    }

    /// A store that registers and heartbeats.
    pub fn store(mut self, id: &str) -> Self {
        self.nodes.push((NodeKind::Store, id.to_string()));
        self
    }

    /// A broker that registers and heartbeats.
    pub fn broker(mut self, id: &str) -> Self {
        self.nodes.push((NodeKind::Broker, id.to_string()));
        self
    }

    /// A topic created once the nodes are up.
    pub fn topic(mut self, name: &str, partitions: u32) -> Self {
        self.topics.push((name.to_string(), partitions));
        self
    }

    pub async fn build(self) -> Cluster {
        let metadata = match self.backend {
            Backend::Etcd => Metadata::Etcd(Etcd::start()),
            Backend::RestartableEtcd => Metadata::RestartableEtcd(RestartableEtcd::start()),
            Backend::Embedded => {
                assert_eq!(
                    self.nameservers, 1,
                    "the embedded store serves one nameserver"
                );
                let directory = tempfile::tempdir().expect("temp dir");
                let store = EmbeddedMetadataStore::open(directory.path())
                    .await
                    .expect("open embedded store");
                Metadata::Embedded {
                    directory,
                    store: Some(store),
                }
            }
        };
        let mut cluster = Cluster {
            metadata,
            configs: Vec::new(),
            nameservers: Vec::new(),
            clients: Vec::new(),
            addresses: HashMap::new(),
            registrations: HashMap::new(),
            heartbeaters: HashMap::new(),
        };
        for index in 1..=self.nameservers {
            let mut config = cluster.metadata.config(&format!("ns-{index}"));
            if let Some(change) = &self.configure {
                change(&mut config);
            }
            cluster.start_nameserver(config).await;
        }
        for (kind, id) in &self.nodes {
            cluster.start_node(*kind, id).await;
        }
        for (name, partitions) in &self.topics {
            cluster.create_topic(name, *partitions).await;
        }
        cluster
    }
}

enum Metadata {
    Etcd(Etcd),
    RestartableEtcd(RestartableEtcd),
    Embedded {
        directory: tempfile::TempDir,
        /// The store the first nameserver was started with; gone after a
        /// restart, which opens the directory again.
        store: Option<Arc<dyn MetadataStore>>,
    },
}

impl Metadata {
    fn config(&self, node_id: &str) -> NameServerConfig {
        match self {
            Metadata::Etcd(etcd) => test_config(etcd.client_url(), node_id),
            Metadata::RestartableEtcd(etcd) => test_config(&etcd.client_url(), node_id),
            Metadata::Embedded { .. } => {
                let mut config = test_config("http://127.0.0.1:1", node_id);
                config.metadata.backend = MetadataBackend::Embedded;
                config
            }
        }
    }
}

/// A running test cluster; nameservers stop when it is dropped (call
/// [`Cluster::stop`] to wait for a clean stop).
pub struct Cluster {
    metadata: Metadata,
    configs: Vec<NameServerConfig>,
    /// `ns-{index + 1}`; `None` once stopped.
    nameservers: Vec<Option<RunningNameServer>>,
    clients: Vec<Client>,
    /// Every node's made-up address, kept across registrations.
    addresses: HashMap<String, String>,
    /// Registration order of each node, to spread nodes over nameservers.
    registrations: HashMap<String, usize>,
    heartbeaters: HashMap<String, Heartbeater>,
}

impl Cluster {
    async fn start_nameserver(&mut self, config: NameServerConfig) {
        let nameserver = match &self.metadata {
            Metadata::Embedded {
                store: Some(store), ..
            } => RunningNameServer::start_with_store(config.clone(), store.clone()).await,
            _ => RunningNameServer::start(config.clone()).await,
        };
        self.clients.push(nameserver.client().await);
        self.nameservers.push(Some(nameserver));
        self.configs.push(config);
    }

    fn index_of(&self, nameserver: &str) -> usize {
        self.configs
            .iter()
            .position(|config| config.node_id == nameserver)
            .unwrap_or_else(|| panic!("no nameserver {nameserver}"))
    }

    /// A client of the first nameserver.
    pub fn client(&self) -> Client {
        self.clients[0].clone()
    }

    /// A client of nameserver `id` (`ns-1`, `ns-2`, …).
    pub fn client_of(&self, id: &str) -> Client {
        self.clients[self.index_of(id)].clone()
    }

    /// Where node `id` said it listens when it registered.
    pub fn address_of(&self, id: &str) -> &str {
        self.addresses
            .get(id)
            .unwrap_or_else(|| panic!("{id} never registered"))
    }

    /// The made-up address of node `id`, fixed on its first registration.
    fn assign_address(&mut self, kind: NodeKind, id: &str) -> String {
        let count = self.addresses.len();
        self.addresses
            .entry(id.to_string())
            .or_insert_with(|| {
                // Brokers on ports ending in 1, stores in 2: 7401, 7402, 7411, …
                let port = 7400 + 10 * count + if kind == NodeKind::Broker { 1 } else { 2 };
                format!("127.0.0.1:{port}")
            })
            .clone()
    }

    /// Registers node `id` (through one nameserver) without heartbeating;
    /// returns its session.
    pub async fn register(&mut self, kind: NodeKind, id: &str) -> u64 {
        let address = self.assign_address(kind, id);
        let order = self.registrations.len();
        let order = *self.registrations.entry(id.to_string()).or_insert(order);
        let mut client = self.clients[order % self.clients.len()].clone();
        register(&mut client, kind, id, &address).await
    }

    /// Heartbeats `session` of node `id` in the background (through the
    /// nameserver after the one it registered with).
    pub fn heartbeat(&mut self, kind: NodeKind, id: &str, session: u64) -> &Heartbeater {
        let order = self.registrations.get(id).copied().unwrap_or(0);
        let client = self.clients[(order + 1) % self.clients.len()].clone();
        let heartbeater = Heartbeater::start(client, kind, id, session);
        self.heartbeaters.insert(id.to_string(), heartbeater);
        &self.heartbeaters[id]
    }

    /// Registers node `id` and heartbeats its session.
    pub async fn start_node(&mut self, kind: NodeKind, id: &str) -> &Heartbeater {
        let session = self.register(kind, id).await;
        self.heartbeat(kind, id, session)
    }

    pub async fn start_store(&mut self, id: &str) -> &Heartbeater {
        self.start_node(NodeKind::Store, id).await
    }

    pub async fn start_broker(&mut self, id: &str) -> &Heartbeater {
        self.start_node(NodeKind::Broker, id).await
    }

    /// The heartbeating node `id`.
    pub fn node(&self, id: &str) -> &Heartbeater {
        self.heartbeaters
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not heartbeating"))
    }

    /// Node `id` stops heartbeating (like a crash: its lease runs out);
    /// returns the session it had.
    pub fn stop_heartbeating(&mut self, id: &str) -> u64 {
        self.heartbeaters
            .remove(id)
            .unwrap_or_else(|| panic!("{id} is not heartbeating"))
            .session_id
    }

    /// Creates a topic of `partitions` partitions (defaults otherwise).
    pub async fn create_topic(&self, name: &str, partitions: u32) {
        self.client()
            .create_topic(topic_request(name, partitions))
            .await
            .unwrap_or_else(|status| panic!("create topic {name}: {status}"));
    }

    /// A client of the metadata the nameservers use, to look behind them.
    pub async fn metadata_store(&self) -> Arc<dyn MetadataStore> {
        match &self.metadata {
            Metadata::Etcd(etcd) => etcd_store(vec![etcd.client_url().to_string()]).await,
            Metadata::RestartableEtcd(etcd) => etcd_store(vec![etcd.client_url()]).await,
            Metadata::Embedded { store, .. } => store
                .clone()
                .expect("the embedded store is not reopened after a restart"),
        }
    }

    fn restartable_etcd(&mut self) -> &mut RestartableEtcd {
        match &mut self.metadata {
            Metadata::RestartableEtcd(etcd) => etcd,
            _ => panic!("build with Fixture::restartable_etcd() to stop etcd"),
        }
    }

    /// Kills etcd (like a crash).
    pub fn stop_etcd(&mut self) {
        self.restartable_etcd().stop();
    }

    /// Starts etcd again on the same ports and data.
    pub fn resume_etcd(&mut self) {
        self.restartable_etcd().resume();
    }

    /// Stops nameserver `id` and waits for it to finish.
    pub async fn stop_nameserver(&mut self, id: &str) {
        let index = self.index_of(id);
        if let Some(nameserver) = self.nameservers[index].take() {
            nameserver.stop().await;
        }
    }

    /// Embedded store only: stops the nameserver and starts it again on
    /// the same data directory, the way `sluice dev` restarts (the store
    /// opened from its config). Heartbeating nodes stop (their sessions
    /// were leases, which the embedded store does not keep).
    pub async fn restart_on_the_same_directory(&mut self) {
        self.heartbeaters.clear();
        self.stop_nameserver("ns-1").await;
        let Metadata::Embedded { directory, store } = &mut self.metadata else {
            panic!("only the embedded store restarts from its directory");
        };
        // The stopped nameserver's store is dropped before the directory
        // is opened again.
        store.take();
        let data_dir = directory.path().to_path_buf();
        let mut config = self.configs.remove(0);
        config.metadata.data_dir = Some(data_dir);
        self.nameservers.remove(0);
        self.clients.remove(0);
        let restarted = RunningNameServer::start(config.clone()).await;
        self.clients.insert(0, restarted.client().await);
        self.nameservers.insert(0, Some(restarted));
        self.configs.insert(0, config);
    }

    /// Stops every nameserver still running, waiting for each to finish.
    pub async fn stop(mut self) {
        for nameserver in self.nameservers.iter_mut() {
            if let Some(nameserver) = nameserver.take() {
                nameserver.stop().await;
            }
        }
    }
}
