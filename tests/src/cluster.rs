//! A Sluice cluster of real processes: etcd (one member or several),
//! nameservers, brokers and stores, each the real binary with its own TOML
//! config, log file and loopback port, so tests can `kill -9`, stop and
//! restart them.
//!
//! The service binaries come from the same `target/` directory as the test
//! executable; the README's test command builds them first (`cargo build
//! --bins`). A missing binary fails the test with that instruction.

use crate::etcd::{free_port, EtcdCluster, EtcdTls};
use crate::small_fs::SmallFilesystem;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster gets to register every node.
const READY_TIMEOUT_MS: u64 = 60_000;

/// The kinds of Sluice service processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Nameserver,
    Broker,
    Store,
}

impl ServiceKind {
    fn binary_name(self) -> &'static str {
        match self {
            ServiceKind::Nameserver => "sluice-nameserver",
            ServiceKind::Broker => "sluice-broker",
            ServiceKind::Store => "sluice-store",
        }
    }
}

/// Directory holding the workspace's binaries (`target/debug` or
/// `target/release`), derived from the running test executable.
pub fn binaries_dir() -> PathBuf {
    let executable = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test-binary>
    let deps = executable
        .parent()
        .expect("test binary lives in a directory");
    let profile = if deps.ends_with("deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    profile.to_path_buf()
}

/// Path of a workspace binary, failing with instructions when it is
/// missing.
pub fn binary(name: &str) -> PathBuf {
    let path = binaries_dir().join(name);
    if !path.exists() {
        panic!(
            "{} is missing: build the service binaries first with `cargo build --bins` \
             (the README's test command does this)",
            path.display()
        );
    }
    path
}

/// Runs `sluice certs create` into `directory` (certificates for
/// `localhost` and `127.0.0.1`).
pub fn create_certificates(directory: &Path) {
    let output = std::process::Command::new(binary("sluice"))
        .args(["certs", "create", "--out-dir"])
        .arg(directory)
        .output()
        .expect("run sluice certs create");
    assert!(
        output.status.success(),
        "sluice certs create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The certificate nameservers present to a TLS etcd, in
/// [`Cluster::tls_dir`]: a copy of the node certificate.
pub const ETCD_CLIENT_CERT: &str = "etcd-client.pem";
/// Its key.
pub const ETCD_CLIENT_KEY: &str = "etcd-client.key";

/// etcd serving TLS with the node certificate of `sluice certs create`
/// (it names 127.0.0.1) and requiring client certificates of its CA.
pub fn etcd_tls(tls_dir: &Path) -> EtcdTls {
    EtcdTls {
        ca_file: tls_dir.join("ca.pem"),
        cert_file: tls_dir.join("node.pem"),
        key_file: tls_dir.join("node.key"),
    }
}

/// One service process.
pub struct Service {
    pub kind: ServiceKind,
    pub node_id: String,
    pub port: u16,
    /// Its Prometheus endpoint's port (`[metrics] listen_address`); 0
    /// unless [`ClusterSpec::metrics`].
    pub metrics_port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// `RLIMIT_NOFILE` (soft and hard) the process starts with, if set.
    file_limit: Option<u64>,
}

impl Service {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT` of its metrics endpoint.
    pub fn metrics_address(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// Starts (or restarts) the process.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.node_id);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open service log");
        let mut command = Command::new(binary(self.kind.binary_name()));
        if let Some(limit) = self.file_limit {
            limit_open_files(&mut command, limit);
        }
        let child = command
            .arg("--config")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", self.node_id));
        self.child = Some(child);
    }

    /// `kill -9`: no chance to flush or deregister.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit (SIGKILL after `timeout`).
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`Service::pause`].
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    let result = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(result, 0, "kill({}, {signal}) failed", child.id());
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `command` with at most `limit` open files: soft and hard limit,
/// so raising the soft limit to the hard one cannot escape it.
fn limit_open_files(command: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: only setrlimit, async-signal-safe, runs in the forked child.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// `base` with `extra`'s keys added, section by section; `extra` wins.
fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(section)), toml::Value::Table(more)) => {
                    merge(section, more)
                }
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut table: toml::Table = base.parse().expect("the harness's own TOML parses");
    let extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|error| panic!("ClusterSpec's extra service config is not TOML: {error}"));
    merge(&mut table, extra);
    toml::to_string(&table).expect("a TOML table serializes")
}

/// Set (to anything), every cluster runs with [`ClusterSpec::tls`] unless
/// its test says otherwise: how `scripts/test.sh` runs part of the process
/// suite a second time with mutual TLS and authorisation on.
pub const TLS_VARIABLE: &str = "SLUICE_TEST_TLS";

/// Shape of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nameservers: usize,
    pub brokers: usize,
    pub stores: usize,
    /// etcd lease behind brokers' and stores' sessions, in milliseconds:
    /// the backstop when no nameserver watches a session. At least twice
    /// `session_timeout_ms`. Default 3000.
    pub lease_ttl_ms: u64,
    /// Default 250, as in production.
    pub heartbeat_interval_ms: u64,
    /// The nameservers' `session_timeout_ms`: a broker or store silent for
    /// this long loses its session (ADR 0014). Default 1500, as in
    /// production.
    pub session_timeout_ms: u64,
    /// Leave the nameserver's lease, heartbeat, session and reconcile
    /// settings at the service defaults (ignoring the three fields above),
    /// as an operator's cluster runs: for measuring failover as users get
    /// it. Default false.
    pub default_timings: bool,
    pub offsets_partitions: u32,
    /// Partitions of `__transaction_state` (ADR 0016); small, since every
    /// cluster creates it.
    pub transaction_log_partitions: u32,
    /// Members of the etcd cluster; every nameserver is given all of their
    /// client URLs. Default 1.
    pub etcd_members: usize,
    /// Extra TOML merged into every broker's config, in its sections (e.g.
    /// `[replication]\nrepair_interval_ms = 1000`); its keys win over the
    /// harness's own (`[server] listen_address`, `[cluster] node_id` and
    /// `nameservers`). Default empty.
    pub broker_config: String,
    /// Extra TOML merged into every store's config (flat keys, e.g.
    /// `data_dir = "/mnt/small"`); its keys win over the harness's own.
    /// Default empty.
    pub store_config: String,
    /// Stores start with this `RLIMIT_NOFILE` (soft and hard). Default
    /// `None`: inherited.
    pub store_file_limit: Option<u64>,
    /// Give each store its own `tmpfs` of this many bytes as its data
    /// directory ([`SmallFilesystem`]; needs root), so a test can fill
    /// one store's disk. Default `None`: the cluster's temp directory.
    pub store_filesystem_bytes: Option<u64>,
    /// Run every hop with mutual TLS and authorisation: `sluice certs
    /// create` makes a CA and certificates in the cluster's directory,
    /// etcd serves `https://` with the node certificate and requires
    /// client certificates (`--client-cert-auth`; nameservers present a
    /// copy of the node certificate, [`ETCD_CLIENT_CERT`], through
    /// `[metadata] tls_*`), every service gets
    /// `[tls]` (client certificates required) and `[auth]` (the node and
    /// client certificates are super users), and
    /// [`Cluster::client_config`] connects with the client certificate.
    /// Default: whether [`TLS_VARIABLE`] is set.
    pub tls: bool,
    /// Extra TOML merged into every nameserver's and broker's config
    /// after the harness's own and the [`ClusterSpec::tls`] sections (e.g.
    /// `[auth.jwt]` with a test's JWKS file). Default empty.
    pub auth_config: String,
    /// Give every service a Prometheus endpoint on a free port
    /// ([`Service::metrics_address`]). Default off: each port is picked
    /// free and bound later by the service, and another process can take
    /// it in between (a broker once failed to start so), so only the tests
    /// that scrape ask for them.
    pub metrics: bool,
}

impl ClusterSpec {
    /// Default ensemble of the cluster's topics: the production default of
    /// 3 where there are enough stores, else every store.
    pub fn ensemble_size(&self) -> usize {
        self.stores.clamp(1, 3)
    }

    /// Default ack quorum: 2 of 3 (a majority), 1 of 1.
    pub fn ack_quorum(&self) -> usize {
        self.ensemble_size() / 2 + 1
    }
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            nameservers: 1,
            brokers: 1,
            stores: 1,
            lease_ttl_ms: 3000,
            heartbeat_interval_ms: 250,
            session_timeout_ms: 1500,
            default_timings: false,
            offsets_partitions: 4,
            transaction_log_partitions: 2,
            etcd_members: 1,
            broker_config: String::new(),
            store_config: String::new(),
            store_file_limit: None,
            store_filesystem_bytes: None,
            tls: std::env::var_os(TLS_VARIABLE).is_some(),
            auth_config: String::new(),
            metrics: false,
        }
    }
}

/// A running cluster; everything is killed and deleted on drop.
pub struct Cluster {
    pub etcd: EtcdCluster,
    pub nameservers: Vec<Service>,
    pub brokers: Vec<Service>,
    pub stores: Vec<Service>,
    pub spec: ClusterSpec,
    /// Each store's own file system (with `store_filesystem_bytes`);
    /// after the services, so they are gone before it is unmounted.
    store_filesystems: Vec<SmallFilesystem>,
    directory: tempfile::TempDir,
}

impl Cluster {
    /// Starts etcd and every service, and waits until all brokers and stores
    /// are registered.
    pub async fn start(spec: ClusterSpec) -> Self {
        let directory = tempfile::tempdir().expect("create cluster temp dir");
        let etcd_tls = spec.tls.then(|| {
            let tls_dir = directory.path().join("tls");
            create_certificates(&tls_dir);
            // The nameservers' own copy, so a test can rotate it alone.
            for (from, to) in [
                ("node.pem", ETCD_CLIENT_CERT),
                ("node.key", ETCD_CLIENT_KEY),
            ] {
                fs::copy(tls_dir.join(from), tls_dir.join(to)).expect("copy the node certificate");
            }
            etcd_tls(&tls_dir)
        });
        let etcd = EtcdCluster::start_with(spec.etcd_members, etcd_tls);
        let mut cluster = Self {
            etcd,
            nameservers: Vec::new(),
            brokers: Vec::new(),
            stores: Vec::new(),
            spec: spec.clone(),
            store_filesystems: Vec::new(),
            directory,
        };
        if let Some(bytes) = spec.store_filesystem_bytes {
            cluster.store_filesystems = (0..spec.stores)
                .map(|_| SmallFilesystem::mount(bytes))
                .collect();
        }
        for index in 0..spec.nameservers {
            let service = cluster.make_service(ServiceKind::Nameserver, index);
            cluster.nameservers.push(service);
        }
        for index in 0..spec.stores {
            let service = cluster.make_service(ServiceKind::Store, index);
            cluster.stores.push(service);
        }
        for index in 0..spec.brokers {
            let service = cluster.make_service(ServiceKind::Broker, index);
            cluster.brokers.push(service);
        }
        for service in cluster
            .nameservers
            .iter_mut()
            .chain(cluster.stores.iter_mut())
            .chain(cluster.brokers.iter_mut())
        {
            service.start();
        }
        cluster.wait_ready().await;
        cluster
    }

    fn make_service(&self, kind: ServiceKind, index: usize) -> Service {
        let port = free_port();
        let (prefix, body) = match kind {
            ServiceKind::Nameserver => {
                let node_id = format!("nameserver-{}", index + 1);
                let timings = if self.spec.default_timings {
                    String::new()
                } else {
                    format!(
                        "lease_ttl_ms = {}\nheartbeat_interval_ms = {}\nsession_timeout_ms = {}\n\
                         reconcile_interval_ms = 300\n",
                        self.spec.lease_ttl_ms,
                        self.spec.heartbeat_interval_ms,
                        self.spec.session_timeout_ms
                    )
                };
                let body = format!(
                    "node_id = \"{node_id}\"\nlisten_address = \"127.0.0.1:{port}\"\n{timings}\
                     offsets_partitions = {offsets}\ntransaction_log_partitions = {transaction_log}\n\
                     [metadata]\nbackend = \"etcd\"\nendpoints = [{etcd}]\n{etcd_tls}\
                     [topic_defaults]\nensemble_size = {ensemble}\nwrite_quorum = {ensemble}\nack_quorum = {ack}\n",
                    offsets = self.spec.offsets_partitions,
                    transaction_log = self.spec.transaction_log_partitions,
                    etcd = self
                        .etcd
                        .client_urls()
                        .iter()
                        .map(|url| format!("\"{url}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    etcd_tls = self.metadata_tls_keys(),
                    ensemble = self.spec.ensemble_size(),
                    ack = self.spec.ack_quorum(),
                );
                (node_id, body)
            }
            ServiceKind::Store | ServiceKind::Broker => {
                let name = if kind == ServiceKind::Store {
                    "store"
                } else {
                    "broker"
                };
                let node_id = format!("{name}-{}", index + 1);
                let nameservers: Vec<String> = self
                    .nameservers
                    .iter()
                    .map(|nameserver| format!("\"{}\"", nameserver.url()))
                    .collect();
                let body = if kind == ServiceKind::Store {
                    let data = self.store_data_dir(index);
                    let own = format!(
                        "node_id = \"{node_id}\"\nlisten_address = \"127.0.0.1:{port}\"\nnameservers = [{}]\n\
                         data_dir = \"{}\"\n",
                        nameservers.join(", "),
                        data.display()
                    );
                    merge_toml(&own, &self.spec.store_config)
                } else {
                    let own = format!(
                        "[server]\nlisten_address = \"127.0.0.1:{port}\"\n\
                         [cluster]\nnode_id = \"{node_id}\"\nnameservers = [{}]\n",
                        nameservers.join(", ")
                    );
                    merge_toml(&own, &self.spec.broker_config)
                };
                (node_id, body)
            }
        };
        let metrics_port = if self.spec.metrics { free_port() } else { 0 };
        let body = if self.spec.metrics {
            merge_toml(
                &body,
                &format!("[metrics]\nlisten_address = \"127.0.0.1:{metrics_port}\"\n"),
            )
        } else {
            body
        };
        let body = if self.spec.tls {
            merge_toml(&body, &self.tls_section())
        } else {
            body
        };
        let body = if kind == ServiceKind::Store {
            body
        } else {
            merge_toml(&body, &self.spec.auth_config)
        };
        let config_path = self.directory.path().join(format!("{prefix}.toml"));
        fs::write(&config_path, body).expect("write service config");
        Service {
            kind,
            node_id: prefix.clone(),
            port,
            metrics_port,
            config_path,
            log_path: self.directory.path().join(format!("{prefix}.log")),
            child: None,
            file_limit: match kind {
                ServiceKind::Store => self.spec.store_file_limit,
                _ => None,
            },
        }
    }

    /// `ClusterStatus` as the cluster's client sees it; panics if the
    /// nameserver does not answer.
    pub async fn status(&self) -> sluice_proto::v1::ClusterStatusResponse {
        sluice_client::Admin::connect(self.client_config())
            .await
            .expect("admin")
            .cluster_status()
            .await
            .expect("cluster status")
    }

    /// Creates a topic with default settings and waits until every
    /// partition was taken over by a broker.
    pub async fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with(
            name,
            sluice_proto::v1::TopicConfig {
                partitions,
                ..sluice_proto::v1::TopicConfig::default()
            },
        )
        .await;
    }

    /// Creates a topic with `config` and waits until every partition was
    /// taken over by a broker.
    pub async fn create_topic_with(&self, name: &str, config: sluice_proto::v1::TopicConfig) {
        let admin = sluice_client::Admin::connect(self.client_config())
            .await
            .expect("admin client");
        admin
            .create_topic(name, config)
            .await
            .expect("create topic");
        wait_until_writable(self.client_config(), name).await;
    }

    /// An `Admin` on this cluster (with its TLS settings).
    pub async fn admin(&self) -> sluice_client::Admin {
        sluice_client::Admin::connect(self.client_config())
            .await
            .expect("connect an Admin to the cluster")
    }

    /// A producer with the SDK's default settings against this cluster.
    pub async fn producer(&self) -> sluice_client::Producer {
        sluice_client::Producer::new(sluice_client::ProducerConfig {
            client: self.client_config(),
            ..sluice_client::ProducerConfig::default()
        })
        .await
        .expect("producer")
    }

    /// Writes `records` with a default producer, pipelined, and waits until
    /// every one is acknowledged; their metadata in the same order.
    pub async fn produce_acknowledged(
        &self,
        records: Vec<sluice_client::Record>,
    ) -> Vec<sluice_client::RecordMetadata> {
        let producer = self.producer().await;
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            pending.push(producer.enqueue(record).await.expect("enqueue"));
        }
        let mut acknowledged = Vec::with_capacity(pending.len());
        for delivery in pending {
            acknowledged.push(delivery.await.expect("acknowledged"));
        }
        producer.close().await.expect("close producer");
        acknowledged
    }

    /// Nameserver URLs for clients.
    pub fn bootstrap(&self) -> Vec<String> {
        self.nameservers.iter().map(Service::url).collect()
    }

    pub fn client_config(&self) -> sluice_client::ClientConfig {
        let tls = self.spec.tls.then(|| {
            let dir = self.tls_dir();
            sluice_client::ClientTls::from_files(
                dir.join("ca.pem"),
                Some((dir.join("client.pem"), dir.join("client.key"))),
            )
            .expect("the harness's certificates are readable")
        });
        sluice_client::ClientConfig {
            bootstrap: self.bootstrap(),
            tls,
            ..sluice_client::ClientConfig::default()
        }
    }

    /// The `sluice` CLI with `--bootstrap` set to this cluster and, when
    /// it runs TLS, the client certificate.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(binary("sluice"));
        command.arg("--bootstrap").arg(self.bootstrap().join(","));
        if self.spec.tls {
            let dir = self.tls_dir();
            command
                .arg("--tls-ca")
                .arg(dir.join("ca.pem"))
                .arg("--tls-cert")
                .arg(dir.join("client.pem"))
                .arg("--tls-key")
                .arg(dir.join("client.key"));
        }
        command
    }

    /// The `sluice` CLI with `--bootstrap` set to this cluster, TLS
    /// trusting the cluster's CA without a client certificate, and
    /// `--token-file token_file` (clusters with `[auth.jwt]`).
    pub fn cli_with_token(&self, token_file: &Path) -> Command {
        let mut command = Command::new(binary("sluice"));
        command
            .arg("--bootstrap")
            .arg(self.bootstrap().join(","))
            .arg("--tls-ca")
            .arg(self.tls_dir().join("ca.pem"))
            .arg("--token-file")
            .arg(token_file);
        command
    }

    /// A channel to the service at `address` as this cluster's clients
    /// connect: TLS with the client certificate when the cluster runs
    /// TLS. Connects at first use.
    pub fn channel(&self, address: &str) -> tonic::transport::Channel {
        let config = self.client_config();
        let url = sluice_client::with_scheme(address, config.tls.is_some());
        let mut endpoint = tonic::transport::Endpoint::from_shared(url).expect("a service address");
        if let Some(tls) = &config.tls {
            endpoint = endpoint
                .tls_config(tls.tonic_config())
                .expect("the harness's TLS settings");
        }
        endpoint.connect_lazy()
    }

    /// Where `sluice certs create` put the cluster's CA and certificates
    /// (with [`ClusterSpec::tls`]).
    pub fn tls_dir(&self) -> PathBuf {
        self.directory.path().join("tls")
    }

    /// The nameservers' `[metadata]` keys for the cluster's etcd: mutual TLS
    /// with the node certificate when etcd serves TLS, none otherwise.
    pub fn metadata_tls_keys(&self) -> String {
        match self.etcd.tls() {
            Some(tls) => format!(
                "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
                 tls_reload_check_interval_ms = 200\n",
                tls.ca_file.display(),
                self.tls_dir().join(ETCD_CLIENT_CERT).display(),
                self.tls_dir().join(ETCD_CLIENT_KEY).display()
            ),
            None => String::new(),
        }
    }

    /// The `[tls]` and `[auth]` sections every service gets with
    /// [`ClusterSpec::tls`].
    fn tls_section(&self) -> String {
        let dir = self.tls_dir();
        let file = |name: &str| dir.join(name).display().to_string();
        format!(
            "[tls]\nenabled = true\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
             client_ca_file = \"{}\"\nreload_check_interval_ms = 200\n\
             [auth]\nenabled = true\nsuper_users = [\"User:sluice-node\", \"User:sluice-client\"]\n",
            file("node.pem"),
            file("node.key"),
            file("ca.pem"),
            file("ca.pem")
        )
    }

    /// Waits until the nameserver sees every running broker and store.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        let want_brokers = self
            .brokers
            .iter_mut()
            .map(Service::is_running)
            .filter(|running| *running)
            .count();
        let want_stores = self
            .stores
            .iter_mut()
            .map(Service::is_running)
            .filter(|running| *running)
            .count();
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match sluice_client::Admin::connect(self.client_config()).await {
                Ok(admin) => match admin.cluster_status().await {
                    Ok(status)
                        if status.brokers.len() >= want_brokers
                            && status.stores.len() >= want_stores =>
                    {
                        return
                    }
                    Ok(status) => {
                        last = format!(
                            "{} broker(s), {} store(s) registered",
                            status.brokers.len(),
                            status.stores.len()
                        )
                    }
                    Err(error) => last = error.to_string(),
                },
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.dump_logs();
        panic!("cluster not ready within {READY_TIMEOUT_MS} ms: {last}");
    }

    /// Where store `index` keeps its data.
    pub fn store_data_dir(&self, index: usize) -> PathBuf {
        match self.store_filesystems.get(index) {
            Some(filesystem) => filesystem.path().join("data"),
            None => self
                .directory
                .path()
                .join(format!("store-{}", index + 1))
                .join("data"),
        }
    }

    /// Store `index`'s own file system, with `store_filesystem_bytes`.
    pub fn store_filesystem(&self, index: usize) -> Option<&SmallFilesystem> {
        self.store_filesystems.get(index)
    }

    /// Directory holding every service's config, log and data.
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// Prints the tail of every service log (called on failure).
    pub fn dump_logs(&self) {
        for service in self
            .nameservers
            .iter()
            .chain(&self.stores)
            .chain(&self.brokers)
        {
            let text = fs::read_to_string(&service.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {} ({}) -----\n{}",
                service.node_id,
                service.log_path.display(),
                tail.join("\n")
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Waits until every partition of `topic` was taken over by its owner
/// (see `Admin::wait_until_writable`).
pub async fn wait_until_writable(client: sluice_client::ClientConfig, topic: &str) {
    let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match sluice_client::Admin::connect(client.clone()).await {
            Ok(admin) => match admin
                .wait_until_writable(topic, Duration::from_millis(READY_TIMEOUT_MS))
                .await
            {
                Ok(()) => return,
                Err(error) => last = error.to_string(),
            },
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{topic} not writable within {READY_TIMEOUT_MS} ms: {last}");
}

/// The broker owning each partition of a described topic, by partition
/// number (empty while a partition has no serving owner).
pub fn partition_owners(description: &sluice_proto::v1::DescribeTopicResponse) -> Vec<String> {
    description
        .partitions
        .iter()
        .map(|partition| {
            partition
                .route
                .as_ref()
                .map(|route| route.broker_id.clone())
                .unwrap_or_default()
        })
        .collect()
}
