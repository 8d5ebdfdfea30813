//! Docker Compose backend of the chaos faults: the cluster of
//! `compose.yaml` (3 etcd members, 2 nameservers, 3 stores, 3 brokers) in
//! containers, started with compose and broken with the docker CLI by
//! container id: `docker kill -s KILL`, `docker stop`, `docker pause` (the
//! freezer: SIGSTOP for a whole container) and `docker network disconnect`
//! (a real network cut), healed with `start`, `unpause` and `network
//! connect`.
//!
//! The stack runs under its own project name with every published port
//! chosen free on this host, so it does not collide with a `docker compose
//! up` someone else runs; it is taken down (with its volumes) on drop.
//!
//! The stack runs mutual TLS and authorisation: its one-shot `certs`
//! service makes a CA and an admin certificate (principal `User:admin`, a
//! super user); `up` copies them out of that container (`docker cp`) and
//! every client of the run uses them.

use super::faults::{FaultTarget, Node, NodeKind, Topology};
use crate::etcd::free_port;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the stack gets to register every broker and store, in
/// milliseconds.
const READY_TIMEOUT_MS: u64 = 180_000;

/// Grace period of `docker-compose stop`, in seconds.
const STOP_TIMEOUT_S: u64 = 10;

/// Where the `certs` service of `compose.yaml` writes the certificates.
const CERTS_DIRECTORY: &str = "/etc/sluice/tls";

/// The one-shot service that makes the certificates (never faulted).
const CERTS_SERVICE: &str = "certs";

/// The published-port variables of `compose.yaml`.
const PORT_VARIABLES: [&str; 5] = [
    "SLUICE_COMPOSE_NAMESERVER_1_PORT",
    "SLUICE_COMPOSE_NAMESERVER_2_PORT",
    "SLUICE_COMPOSE_BROKER_1_PORT",
    "SLUICE_COMPOSE_BROKER_2_PORT",
    "SLUICE_COMPOSE_BROKER_3_PORT",
];

/// A compose stack under test.
pub struct ComposeTarget {
    file: PathBuf,
    project: String,
    /// (variable, port) for every published port.
    ports: Vec<(String, u16)>,
    services: Vec<String>,
    /// service -> container id (ids survive stop, start, kill and pause).
    containers: std::collections::BTreeMap<String, String>,
    /// The CA and the admin certificate, read from the copies in
    /// `certificates`.
    tls: Option<sluice_client::ClientTls>,
    /// The files copied out of the `certs` container.
    certificates: tempfile::TempDir,
    /// Leave the stack running on drop (for inspection).
    pub keep: bool,
}

/// The compose command: `docker-compose` (v1) or `docker compose` (v2).
fn compose_program() -> (String, Vec<String>) {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if v2 {
        ("docker".to_string(), vec!["compose".to_string()])
    } else {
        ("docker-compose".to_string(), Vec::new())
    }
}

fn run(
    program: &str,
    arguments: &[String],
    environment: &[(String, u16)],
) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command.args(arguments);
    for (variable, port) in environment {
        command.env(variable, port.to_string());
    }
    let output = command
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

impl ComposeTarget {
    /// Starts the stack of `file` as project `project` and waits until every
    /// broker and store is registered.
    pub async fn up(file: PathBuf, project: &str) -> anyhow::Result<Self> {
        let ports = PORT_VARIABLES
            .iter()
            .map(|variable| (variable.to_string(), free_port()))
            .collect();
        let mut target = Self {
            file,
            project: project.to_string(),
            ports,
            services: Vec::new(),
            containers: std::collections::BTreeMap::new(),
            tls: None,
            certificates: tempfile::tempdir().context("a directory for the certificates")?,
            keep: false,
        };
        target.services = target
            .compose(&["config", "--services"])?
            .lines()
            .map(str::to_string)
            .filter(|service| service != "cli" && service != CERTS_SERVICE)
            .collect();
        let mut arguments = vec!["up", "-d"];
        let services = target.services.clone();
        arguments.extend(services.iter().map(String::as_str));
        target.compose(&arguments)?;
        target.tls = Some(target.copy_certificates()?);
        // The plain docker CLI is much faster than compose's: faults go
        // through it, by container id.
        let label = format!("label=com.docker.compose.project={}", target.project);
        let listing = target.docker(&[
            "ps",
            "-a",
            "--filter",
            &label,
            "--format",
            "{{.ID}} {{.Label \"com.docker.compose.service\"}}",
        ])?;
        for line in listing.lines() {
            if let Some((id, service)) = line.split_once(' ') {
                target
                    .containers
                    .insert(service.trim().to_string(), id.trim().to_string());
            }
        }
        target.wait_ready().await?;
        Ok(target)
    }

    /// Copies the certificates out of the (exited) `certs` container and
    /// reads the CA and the admin certificate (`client.pem`).
    fn copy_certificates(&self) -> anyhow::Result<sluice_client::ClientTls> {
        let id = self.compose(&["ps", "-a", "-q", CERTS_SERVICE])?;
        let id = id.trim();
        if id.is_empty() {
            bail!(
                "{} has no {CERTS_SERVICE} container: compose.yaml's TLS setup is missing",
                self.file.display()
            );
        }
        let directory = self.certificates.path().join("tls");
        let source = format!("{id}:{CERTS_DIRECTORY}");
        self.docker(&["cp", &source, &directory.display().to_string()])?;
        sluice_client::ClientTls::from_files(
            directory.join("ca.pem"),
            Some((directory.join("client.pem"), directory.join("client.key"))),
        )
        .with_context(|| format!("the certificates copied from {source}"))
    }

    fn compose(&self, arguments: &[&str]) -> anyhow::Result<String> {
        let (program, mut full) = compose_program();
        full.extend([
            "-f".to_string(),
            self.file.display().to_string(),
            "-p".to_string(),
            self.project.clone(),
        ]);
        full.extend(arguments.iter().map(|argument| argument.to_string()));
        run(&program, &full, &self.ports)
    }

    fn docker(&self, arguments: &[&str]) -> anyhow::Result<String> {
        let arguments: Vec<String> = arguments
            .iter()
            .map(|argument| argument.to_string())
            .collect();
        run("docker", &arguments, &[])
    }

    fn port(&self, variable: &str) -> u16 {
        self.ports
            .iter()
            .find(|(name, _)| name == variable)
            .map(|(_, port)| *port)
            .expect("every port variable was given a port in `up`")
    }

    /// Client settings for the stack's published nameservers: mutual TLS
    /// as `User:admin`.
    pub fn client_config(&self) -> sluice_client::ClientConfig {
        let tls = self.tls.is_some();
        sluice_client::ClientConfig {
            bootstrap: vec![
                sluice_client::with_scheme(
                    &format!("127.0.0.1:{}", self.port(PORT_VARIABLES[0])),
                    tls,
                ),
                sluice_client::with_scheme(
                    &format!("127.0.0.1:{}", self.port(PORT_VARIABLES[1])),
                    tls,
                ),
            ],
            tls: self.tls.clone(),
            ..sluice_client::ClientConfig::default()
        }
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let topology = self.topology();
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match sluice_client::Admin::connect(self.client_config()).await {
                Ok(admin) => match admin.cluster_status().await {
                    Ok(status)
                        if status.brokers.len() >= topology.brokers
                            && status.stores.len() >= topology.stores =>
                    {
                        return Ok(())
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
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("compose stack not ready within {READY_TIMEOUT_MS} ms: {last}")
    }

    /// The last lines of every service's log.
    pub fn logs(&self, lines: usize) -> String {
        let tail = lines.to_string();
        self.compose(&["logs", "--no-color", "--tail", &tail])
            .unwrap_or_else(|error| format!("cannot read the compose logs: {error:#}"))
    }

    fn service(&self, node: Node) -> anyhow::Result<String> {
        let name = node.to_string();
        if !self.services.contains(&name) {
            bail!("{name} is not a service of {}", self.file.display());
        }
        Ok(name)
    }

    fn container(&self, node: Node) -> anyhow::Result<String> {
        let service = self.service(node)?;
        self.containers
            .get(&service)
            .cloned()
            .with_context(|| format!("{service} has no container"))
    }

    fn network(&self) -> String {
        // compose.yaml's one network, `sluice`, prefixed with the project.
        format!("{}_sluice", self.project)
    }
}

impl FaultTarget for ComposeTarget {
    fn topology(&self) -> Topology {
        let count = |prefix: &str| {
            self.services
                .iter()
                .filter(|service| {
                    service
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.parse::<usize>().is_ok())
                })
                .count()
        };
        Topology {
            nameservers: count("nameserver-"),
            brokers: count("broker-"),
            stores: count("store-"),
            etcd_members: count("etcd-"),
        }
    }

    fn broker_by_id(&self, broker_id: &str) -> Option<Node> {
        let index: usize = broker_id.strip_prefix("broker-")?.parse().ok()?;
        let node = Node {
            kind: NodeKind::Broker,
            index: index.checked_sub(1)?,
        };
        self.service(node).ok().map(|_| node)
    }

    fn is_running(&mut self, node: Node) -> bool {
        self.container(node)
            .and_then(|id| self.docker(&["inspect", "-f", "{{.State.Running}}", &id]))
            .is_ok_and(|state| state.trim() == "true")
    }

    fn kill(&mut self, node: Node) -> anyhow::Result<()> {
        // `docker kill` counts as stopped by hand: the restart policy does
        // not bring it back before the heal does.
        let id = self.container(node)?;
        self.docker(&["kill", "-s", "KILL", &id]).map(|_| ())
    }

    fn stop(&mut self, node: Node) -> anyhow::Result<()> {
        let id = self.container(node)?;
        let timeout = STOP_TIMEOUT_S.to_string();
        self.docker(&["stop", "-t", &timeout, &id]).map(|_| ())
    }

    fn start(&mut self, node: Node) -> anyhow::Result<()> {
        let id = self.container(node)?;
        self.docker(&["start", &id]).map(|_| ())
    }

    fn pause(&mut self, node: Node) -> anyhow::Result<()> {
        let id = self.container(node)?;
        self.docker(&["pause", &id]).map(|_| ())
    }

    fn resume(&mut self, node: Node) -> anyhow::Result<()> {
        let id = self.container(node)?;
        self.docker(&["unpause", &id]).map(|_| ())
    }

    fn cut(&mut self, node: Node) -> anyhow::Result<()> {
        let id = self.container(node)?;
        let network = self.network();
        self.docker(&["network", "disconnect", "-f", &network, &id])
            .map(|_| ())
    }

    fn reconnect(&mut self, node: Node) -> anyhow::Result<()> {
        let id = self.container(node)?;
        let service = self.service(node)?;
        let network = self.network();
        // The alias makes the service name resolve to it again.
        self.docker(&["network", "connect", "--alias", &service, &network, &id])
            .map(|_| ())
    }
}

impl Drop for ComposeTarget {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "leaving compose project {} running (docker-compose -p {} down -v removes it)",
                self.project, self.project
            );
            return;
        }
        if let Err(error) = self.compose(&["down", "-v", "-t", "5"]) {
            eprintln!("taking compose project {} down: {error:#}", self.project);
        }
    }
}
