//! A real `etcd` for tests: spawned on free loopback ports in a temporary
//! directory, killed and cleaned up on drop. [`Etcd`] is one member;
//! [`EtcdCluster`] is a static N-member cluster whose members can be
//! killed and restarted one by one.
//!
//! If the binary is missing the test fails and says how to install it; it
//! never skips.
//!
//! With [`EtcdTls`] a cluster serves clients over TLS only (`https://`
//! client URLs) and requires client certificates of the CA
//! (`--client-cert-auth`); health is then read over plain HTTP on a
//! metrics port of its own. Peers speak plaintext on loopback.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a freshly spawned etcd gets to accept connections.
const STARTUP_TIMEOUT_MS: u64 = 20_000;

/// A running single-member etcd.
pub struct Etcd {
    child: Child,
    client_url: String,
    _data_dir: tempfile::TempDir,
}

pub use sluice_proto::test_util::free_port;

/// The etcd binary: `SLUICE_TEST_ETCD` or `etcd` on PATH.
pub fn etcd_binary() -> PathBuf {
    let binary = std::env::var_os("SLUICE_TEST_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"));
    match Command::new(&binary).arg("--version").output() {
        Ok(output) if output.status.success() => binary,
        _ => panic!(
            "etcd is required by this test but `{}` could not be run. Install it \
             (Debian/Ubuntu: `apt-get install etcd-server`) or set SLUICE_TEST_ETCD to its path.",
            binary.display()
        ),
    }
}

impl Etcd {
    /// Starts etcd and waits until it answers on its client port.
    pub fn start() -> Self {
        let binary = etcd_binary();
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let data_dir = tempfile::tempdir().expect("create a temp dir for etcd");
            let client_port = free_port();
            let peer_port = free_port();
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let log =
                std::fs::File::create(data_dir.path().join("etcd.log")).expect("create etcd log");
            let mut child = Command::new(&binary)
                .arg("--name")
                .arg("test")
                .arg("--data-dir")
                .arg(data_dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(&peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_url)
                .arg("--initial-cluster")
                .arg(format!("test={peer_url}"))
                // Tests write little; keep etcd light on a 2-core machine.
                .arg("--quota-backend-bytes")
                .arg("1073741824")
                .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|error| panic!("failed to spawn {}: {error}", binary.display()));
            let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "etcd exited with {status}: {}",
                        std::fs::read_to_string(data_dir.path().join("etcd.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", client_port)).is_ok() {
                    return Self {
                        child,
                        client_url,
                        _data_dir: data_dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!(
                        "etcd did not listen on {client_url} within {STARTUP_TIMEOUT_MS} ms"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start etcd: {last_error}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The certificate files of an etcd serving TLS to its clients.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA whose certificates clients must present (`--trusted-ca-file`).
    pub ca_file: PathBuf,
    /// etcd's certificate, naming 127.0.0.1 (`--cert-file`).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (and metrics) port, with TLS.
    metrics_port: u16,
    tls: bool,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The port answering plain-HTTP `/health`.
    fn health_port(&self) -> u16 {
        if self.tls {
            self.metrics_port
        } else {
            self.client_port
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A running etcd cluster of N members on loopback, each with its own data
/// directory and log, all killed and deleted on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<EtcdTls>,
    initial_cluster: String,
    cluster_token: String,
    directory: tempfile::TempDir,
}

/// Whether etcd reports itself healthy (it has a leader and serves reads),
/// through its plain-HTTP `/health` endpoint at `port`.
fn is_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(2_000)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(2_000)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

impl EtcdCluster {
    /// Starts `size` members with a static `--initial-cluster` and waits
    /// until every one of them reports healthy.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, None)
    }

    /// [`EtcdCluster::start`], serving clients over mutual TLS with `tls`
    /// when given.
    pub fn start_with(size: usize, tls: Option<EtcdTls>) -> Self {
        assert!(size >= 1, "an etcd cluster needs at least one member");
        let binary = etcd_binary();
        let mut last_error = String::new();
        for attempt in 0..5 {
            let directory = tempfile::tempdir().expect("create a temp dir for etcd");
            let members: Vec<Member> = (0..size)
                .map(|index| Member {
                    name: format!("etcd-{}", index + 1),
                    client_port: free_port(),
                    peer_port: free_port(),
                    metrics_port: free_port(),
                    tls: tls.is_some(),
                    child: None,
                })
                .collect();
            let initial_cluster = members
                .iter()
                .map(|member| format!("{}={}", member.name, member.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            let mut cluster = Self {
                members,
                tls: tls.clone(),
                initial_cluster,
                cluster_token: format!("sluice-test-{}-{attempt}", std::process::id()),
                directory,
            };
            for index in 0..size {
                cluster.spawn(&binary, index);
            }
            match cluster.wait_healthy((0..size).collect()) {
                Ok(()) => return cluster,
                // Most likely a port taken between choosing and binding it.
                Err(error) => last_error = error,
            }
        }
        panic!("could not start a {size}-member etcd cluster: {last_error}");
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.directory
            .path()
            .join(format!("{}.log", self.members[index].name))
    }

    fn spawn(&mut self, binary: &std::path::Path, index: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("open etcd member log");
        let data_dir = self
            .directory
            .path()
            .join(format!("{}.data", self.members[index].name));
        let member = &self.members[index];
        let mut command = Command::new(binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file)
                .arg("--client-cert-auth")
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", member.metrics_port));
        }
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(member.client_url())
            .arg("--advertise-client-urls")
            .arg(member.client_url())
            .arg("--listen-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.cluster_token)
            // Ignored on restart: the data directory already knows the cluster.
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--quota-backend-bytes")
            .arg("1073741824")
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to spawn {}: {error}", binary.display()));
        self.members[index].child = Some(child);
    }

    fn wait_healthy(&mut self, indexes: Vec<usize>) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
        for index in indexes {
            loop {
                let member = &mut self.members[index];
                if let Some(child) = member.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let log = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
                        self.kill_all();
                        return Err(format!(
                            "{} exited with {status}: {log}",
                            self.members[index].name
                        ));
                    }
                }
                if is_healthy(self.members[index].health_port()) {
                    break;
                }
                if Instant::now() > deadline {
                    let name = self.members[index].name.clone();
                    self.kill_all();
                    return Err(format!("{name} not healthy within {STARTUP_TIMEOUT_MS} ms"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn kill_all(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }

    /// Number of members (running or not).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The certificate files, when the cluster serves TLS.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Every member's client URL, for clients that fail over between them.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URL of one member.
    pub fn client_url(&self, member: usize) -> String {
        self.members[member].client_url()
    }

    /// `kill -9` of one member.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its ports and data directory and
    /// waits until it is healthy (caught up with the others).
    pub fn restart(&mut self, member: usize) {
        assert!(
            self.members[member].child.is_none(),
            "{} is still running",
            self.members[member].name
        );
        let binary = etcd_binary();
        self.spawn(&binary, member);
        if let Err(error) = self.wait_healthy(vec![member]) {
            panic!("etcd member did not come back: {error}");
        }
    }

    pub fn is_running(&mut self, member: usize) -> bool {
        match self.members[member].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last lines of every member's log (for failure reports).
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for index in 0..self.members.len() {
            let text = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "----- {} -----\n{}\n",
                self.members[index].name,
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
