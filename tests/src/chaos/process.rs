//! The process backend of the chaos tests: [`ProcessTarget`] applies
//! faults to a process [`Cluster`] (signals, graceful stops, a filled
//! `tmpfs`, idle connections, a flipped byte), and [`NetworkCuts`] cuts a
//! process off the network.
//!
//! The network cut: every service listens on
//! 127.0.0.1, so a network namespace per service would need the harness to
//! spawn services inside namespaces and to translate every loopback
//! address. Instead the cut service is moved into its own cgroup (v2) and
//! an iptables chain of this run drops every packet that process sends
//! (`-m cgroup --path`) and every packet to or from its port. Nothing it
//! sends leaves, nobody reaches it, and its sockets stay open as in a real
//! partition. The chain and cgroups are removed by a drop guard (also on
//! panic); chains left by dead runs are removed when a new one starts.

use super::faults::{FaultTarget, Node, NodeKind, Topology};
use crate::cluster::{Cluster, Service};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Grace period of a graceful restart before SIGKILL, in milliseconds.
const GRACEFUL_STOP_TIMEOUT_MS: u64 = 10_000;

/// Fault backend over a process [`Cluster`].
pub struct ProcessTarget<'a> {
    pub cluster: &'a mut Cluster,
    network: Option<NetworkCuts>,
    /// Filler files on stores' file systems, by store.
    fillers: std::collections::HashMap<Node, PathBuf>,
    /// Idle connections held to stores, by store.
    idle: std::collections::HashMap<Node, Vec<std::net::TcpStream>>,
}

/// Bytes a full store's file system keeps free: less than a record batch
/// plus the journal's next write.
const FULL_DISK_LEFT_BYTES: u64 = 64 * 1024;
/// Idle connections opened at most to exhaust a store's file handles
/// (beyond its file limit, the rest wait in its listen backlog).
const MAX_IDLE_CONNECTIONS: usize = 1024;
/// A connect that takes longer means the store's listen backlog is full.
const IDLE_CONNECT_TIMEOUT_MS: u64 = 200;

impl<'a> ProcessTarget<'a> {
    /// `network_cuts`: set up the iptables/cgroup network cut (fails when
    /// this machine cannot do it; see [`NetworkCuts::new`]).
    pub fn new(cluster: &'a mut Cluster, network_cuts: bool) -> anyhow::Result<Self> {
        let network = if network_cuts {
            Some(NetworkCuts::new()?)
        } else {
            None
        };
        Ok(Self {
            cluster,
            network,
            fillers: std::collections::HashMap::new(),
            idle: std::collections::HashMap::new(),
        })
    }

    fn service(&mut self, node: Node) -> anyhow::Result<&mut Service> {
        let services = match node.kind {
            NodeKind::Nameserver => &mut self.cluster.nameservers,
            NodeKind::Broker => &mut self.cluster.brokers,
            NodeKind::Store => &mut self.cluster.stores,
            NodeKind::Etcd => bail!("{node} is an etcd member, not a Sluice service"),
        };
        services
            .get_mut(node.index)
            .with_context(|| format!("{node} does not exist"))
    }

    fn etcd_member(&self, node: Node) -> anyhow::Result<usize> {
        if node.index >= self.cluster.etcd.size() {
            bail!("{node} does not exist");
        }
        Ok(node.index)
    }

    /// The port the node listens on (an etcd member: its client port).
    fn port(&mut self, node: Node) -> anyhow::Result<u16> {
        if node.kind == NodeKind::Etcd {
            let member = self.etcd_member(node)?;
            let url = self.cluster.etcd.client_url(member);
            return url
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .with_context(|| format!("no port in {url}"));
        }
        Ok(self.service(node)?.port)
    }
}

impl FaultTarget for ProcessTarget<'_> {
    fn topology(&self) -> Topology {
        Topology {
            nameservers: self.cluster.nameservers.len(),
            brokers: self.cluster.brokers.len(),
            stores: self.cluster.stores.len(),
            etcd_members: self.cluster.etcd.size(),
        }
    }

    fn broker_by_id(&self, broker_id: &str) -> Option<Node> {
        self.cluster
            .brokers
            .iter()
            .position(|broker| broker.node_id == broker_id)
            .map(|index| Node {
                kind: NodeKind::Broker,
                index,
            })
    }

    fn is_running(&mut self, node: Node) -> bool {
        if node.kind == NodeKind::Etcd {
            return self
                .etcd_member(node)
                .is_ok_and(|member| self.cluster.etcd.is_running(member));
        }
        self.service(node)
            .map(|service| service.is_running())
            .unwrap_or(false)
    }

    fn kill(&mut self, node: Node) -> anyhow::Result<()> {
        if node.kind == NodeKind::Etcd {
            let member = self.etcd_member(node)?;
            if !self.cluster.etcd.is_running(member) {
                bail!("{node} is not running");
            }
            self.cluster.etcd.kill(member);
            return Ok(());
        }
        let service = self.service(node)?;
        if !service.is_running() {
            bail!("{node} is not running");
        }
        service.kill();
        Ok(())
    }

    fn stop(&mut self, node: Node) -> anyhow::Result<()> {
        let service = self.service(node)?;
        if !service.is_running() {
            bail!("{node} is not running");
        }
        service.stop(Duration::from_millis(GRACEFUL_STOP_TIMEOUT_MS));
        Ok(())
    }

    fn start(&mut self, node: Node) -> anyhow::Result<()> {
        if node.kind == NodeKind::Etcd {
            let member = self.etcd_member(node)?;
            if self.cluster.etcd.is_running(member) {
                bail!("{node} is already running");
            }
            // Waits until the member is healthy again.
            self.cluster.etcd.restart(member);
            return Ok(());
        }
        let service = self.service(node)?;
        if service.is_running() {
            bail!("{node} is already running");
        }
        service.start();
        Ok(())
    }

    fn pause(&mut self, node: Node) -> anyhow::Result<()> {
        let service = self.service(node)?;
        if !service.is_running() {
            bail!("{node} is not running");
        }
        service.pause();
        Ok(())
    }

    fn resume(&mut self, node: Node) -> anyhow::Result<()> {
        self.service(node)?.resume();
        Ok(())
    }

    fn cut(&mut self, node: Node) -> anyhow::Result<()> {
        let port = self.port(node)?;
        let network = self
            .network
            .as_mut()
            .context("network cuts are disabled for this run")?;
        network.cut(&node.to_string(), port)
    }

    fn reconnect(&mut self, node: Node) -> anyhow::Result<()> {
        let network = self
            .network
            .as_mut()
            .context("network cuts are disabled for this run")?;
        network.reconnect(&node.to_string())
    }

    fn fill_disk(&mut self, node: Node) -> anyhow::Result<()> {
        if node.kind != NodeKind::Store {
            bail!("only a store's disk can be filled");
        }
        let filesystem = self.cluster.store_filesystem(node.index).context(
            "the cluster's stores have no small file systems (ClusterSpec::store_filesystem_bytes)",
        )?;
        let filler = filesystem.fill_leaving(FULL_DISK_LEFT_BYTES);
        self.fillers.insert(node, filler);
        Ok(())
    }

    fn free_disk(&mut self, node: Node) -> anyhow::Result<()> {
        let filler = self
            .fillers
            .remove(&node)
            .context("the disk was not filled")?;
        std::fs::remove_file(&filler).with_context(|| format!("remove {}", filler.display()))
    }

    fn kill_and_corrupt(&mut self, node: Node) -> anyhow::Result<()> {
        if node.kind != NodeKind::Store {
            bail!("only a store's data is corrupted");
        }
        self.kill(node)?;
        let segments = self.cluster.store_data_dir(node.index).join("segments");
        let damaged = flip_a_byte_of_the_largest_segment(&segments)?;
        eprintln!("[chaos] flipped a byte of {damaged}");
        Ok(())
    }

    fn exhaust_files(&mut self, node: Node) -> anyhow::Result<()> {
        if node.kind != NodeKind::Store {
            bail!("only a store's file handles are exhausted");
        }
        let port = self.port(node)?;
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let timeout = Duration::from_millis(IDLE_CONNECT_TIMEOUT_MS);
        let mut connections = Vec::new();
        while connections.len() < MAX_IDLE_CONNECTIONS {
            match std::net::TcpStream::connect_timeout(&address, timeout) {
                Ok(stream) => connections.push(stream),
                Err(_) => break,
            }
        }
        self.idle.insert(node, connections);
        Ok(())
    }

    fn release_files(&mut self, node: Node) -> anyhow::Result<()> {
        self.idle
            .remove(&node)
            .map(drop)
            .context("no idle connections were held")
    }
}

/// Flips every bit of the byte in the middle of the largest segment log
/// file in `segments` (a batch's records, most likely, well inside the
/// durable data); returns which file and where.
fn flip_a_byte_of_the_largest_segment(segments: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut largest: Option<(u64, PathBuf)> = None;
    let entries =
        std::fs::read_dir(segments).with_context(|| format!("list {}", segments.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|extension| extension != "log") {
            continue;
        }
        let length = std::fs::metadata(&path)?.len();
        if largest.as_ref().is_none_or(|(size, _)| length > *size) {
            largest = Some((length, path));
        }
    }
    let Some((length, path)) = largest.filter(|(length, _)| *length > 0) else {
        bail!("no segment file with data in {}", segments.display());
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let position = length / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position)?;
    file.write_all_at(&[!byte[0]], position)?;
    file.sync_all()?;
    Ok(format!("{} at byte {position} of {length}", path.display()))
}

/// Runs a command, failing with its output when it does not succeed.
fn run(program: &str, arguments: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(arguments)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The pid of the process listening on 127.0.0.1:`port`.
pub fn listening_pid(port: u16) -> anyhow::Result<u32> {
    let filter = format!("sport = :{port}");
    let output = run("ss", &["-Hltnp", &filter])?;
    // users:(("sluice-broker",pid=1234,fd=9))
    output
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .with_context(|| format!("no process listens on port {port} (ss said {output:?})"))
}

/// Where the cgroup v2 hierarchy is mounted.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let path = fields.next()?;
            let kind = fields.next()?;
            (kind == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .context("no cgroup2 hierarchy is mounted (needed to cut a process off the network)")
}

/// Numbers the [`NetworkCuts`] of this process.
static NEXT_INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One cut node.
struct CutNode {
    name: String,
    port: u16,
    /// The cgroup (relative to the cgroup2 root) the process was moved to.
    cgroup: String,
    pid: u32,
}

/// iptables chain and cgroups of this run's network cuts; everything is
/// removed on drop.
pub struct NetworkCuts {
    chain: String,
    /// Start of this instance's cgroup names.
    prefix: String,
    cgroup_root: PathBuf,
    cut: Vec<CutNode>,
}

impl NetworkCuts {
    /// Checks that iptables with the cgroup match and a writable cgroup v2
    /// hierarchy are available (root is needed), removes chains of earlier
    /// runs whose process is gone, and installs this run's empty chain.
    pub fn new() -> anyhow::Result<Self> {
        let cgroup_root = cgroup2_root()?;
        remove_stale_chains();
        // Unique per instance: tests of one process may run side by side.
        let instance = NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chain = format!("SLUICE_CHAOS_{}_{instance}", std::process::id());
        run("iptables", &["-N", &chain]).context(
            "iptables is needed to cut a process off the network (run as root, or disable the network fault)",
        )?;
        let cuts = Self {
            prefix: format!("sluice-chaos-{}-{instance}", std::process::id()),
            chain,
            cgroup_root,
            cut: Vec::new(),
        };
        run("iptables", &["-I", "OUTPUT", "1", "-j", &cuts.chain])?;
        // Prove the cgroup match and the cgroup hierarchy work now rather
        // than in the middle of a run.
        let probe = format!("{}-probe", cuts.prefix);
        let probe_dir = cuts.cgroup_root.join(&probe);
        std::fs::create_dir(&probe_dir)
            .with_context(|| format!("create cgroup {}", probe_dir.display()))?;
        let matched = run(
            "iptables",
            &[
                "-A",
                &cuts.chain,
                "-m",
                "cgroup",
                "--path",
                &probe,
                "-j",
                "DROP",
            ],
        );
        let _ = run(
            "iptables",
            &[
                "-D",
                &cuts.chain,
                "-m",
                "cgroup",
                "--path",
                &probe,
                "-j",
                "DROP",
            ],
        );
        let _ = std::fs::remove_dir(&probe_dir);
        matched.context("iptables cannot match cgroups (xt_cgroup) on this kernel")?;
        Ok(cuts)
    }

    fn rules(&self, node: &CutNode) -> Vec<Vec<String>> {
        let port = node.port.to_string();
        vec![
            vec!["-m", "cgroup", "--path", &node.cgroup, "-j", "DROP"],
            vec!["-p", "tcp", "--dport", &port, "-j", "DROP"],
            vec!["-p", "tcp", "--sport", &port, "-j", "DROP"],
        ]
        .into_iter()
        .map(|rule| rule.into_iter().map(str::to_string).collect())
        .collect()
    }

    /// Drops everything the process listening on `port` sends and every
    /// packet to or from `port`.
    pub fn cut(&mut self, name: &str, port: u16) -> anyhow::Result<()> {
        let pid = listening_pid(port)?;
        let cgroup = format!("{}-{name}", self.prefix);
        let directory = self.cgroup_root.join(&cgroup);
        if !directory.exists() {
            std::fs::create_dir(&directory)
                .with_context(|| format!("create cgroup {}", directory.display()))?;
        }
        std::fs::write(directory.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move pid {pid} into {}", directory.display()))?;
        let node = CutNode {
            name: name.to_string(),
            port,
            cgroup,
            pid,
        };
        for rule in self.rules(&node) {
            let mut arguments = vec!["-A", self.chain.as_str()];
            arguments.extend(rule.iter().map(String::as_str));
            run("iptables", &arguments)?;
        }
        self.cut.push(node);
        Ok(())
    }

    /// Removes the cut of `name`.
    pub fn reconnect(&mut self, name: &str) -> anyhow::Result<()> {
        let position = self
            .cut
            .iter()
            .position(|node| node.name == name)
            .with_context(|| format!("{name} is not cut off"))?;
        let node = self.cut.remove(position);
        self.undo(&node)
    }

    fn undo(&self, node: &CutNode) -> anyhow::Result<()> {
        let mut first_error = None;
        for rule in self.rules(node) {
            let mut arguments = vec!["-D", self.chain.as_str()];
            arguments.extend(rule.iter().map(String::as_str));
            if let Err(error) = run("iptables", &arguments) {
                first_error.get_or_insert(error);
            }
        }
        let directory = self.cgroup_root.join(&node.cgroup);
        // Back to the root cgroup, where the harness started it.
        if std::path::Path::new(&format!("/proc/{}", node.pid)).exists() {
            let _ = std::fs::write(self.cgroup_root.join("cgroup.procs"), node.pid.to_string());
        }
        if let Err(error) = std::fs::remove_dir(&directory) {
            tracing::warn!(cgroup = %directory.display(), %error, "cannot remove the cut's cgroup");
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for NetworkCuts {
    fn drop(&mut self) {
        for node in std::mem::take(&mut self.cut) {
            if let Err(error) = self.undo(&node) {
                eprintln!("network cut cleanup of {}: {error:#}", node.name);
            }
        }
        let _ = run("iptables", &["-D", "OUTPUT", "-j", &self.chain]);
        let _ = run("iptables", &["-F", &self.chain]);
        if let Err(error) = run("iptables", &["-X", &self.chain]) {
            eprintln!("network cut cleanup: {error:#}");
        }
    }
}

/// Removes `SLUICE_CHAOS_<pid>` chains (and their cgroups) of runs whose
/// process no longer exists (killed before their drop guard ran).
fn remove_stale_chains() {
    let Ok(rules) = run("iptables", &["-S"]) else {
        return;
    };
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain
            .strip_prefix("SLUICE_CHAOS_")
            .and_then(|rest| rest.split('_').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_err() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = run("iptables", &["-D", "OUTPUT", "-j", chain]);
        let _ = run("iptables", &["-F", chain]);
        let _ = run("iptables", &["-X", chain]);
        if let Ok(root) = cgroup2_root() {
            if let Ok(entries) = std::fs::read_dir(&root) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&format!("sluice-chaos-{pid}-")) {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
        }
    }
}
