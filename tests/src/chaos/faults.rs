//! Faults of the chaos tests: a seeded schedule of what to break and when,
//! the [`FaultTarget`] interface a backend implements (processes here; a
//! Docker/compose backend implements the same methods with `docker kill`,
//! `docker pause`, `docker network disconnect`), the [`Nemesis`] that
//! applies a schedule and heals everything afterwards. The process
//! backend over a [`Cluster`](crate::cluster::Cluster) is in `process.rs`
//! (re-exported here).

pub use super::process::{listening_pid, NetworkCuts, ProcessTarget};
use anyhow::bail;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt;

/// Shortest time a fault stays in effect, in milliseconds.
const MIN_FAULT_MS: u64 = 300;

/// Longest time a kill or cut stays in effect, in milliseconds.
const MAX_FAULT_MS: u64 = 4_000;

/// What kind of service a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    Nameserver,
    Broker,
    Store,
    Etcd,
}

/// One node of a cluster: its kind and its index among nodes of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub kind: NodeKind,
    pub index: usize,
}

impl fmt::Display for Node {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            NodeKind::Nameserver => "nameserver",
            NodeKind::Broker => "broker",
            NodeKind::Store => "store",
            NodeKind::Etcd => "etcd",
        };
        write!(formatter, "{name}-{}", self.index + 1)
    }
}

/// How many nodes of each kind a cluster has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub nameservers: usize,
    pub brokers: usize,
    pub stores: usize,
    /// etcd members the backend can kill (0 or 1 means the etcd-member
    /// fault is left out: killing the only member is not a fault the
    /// cluster is expected to ride out).
    pub etcd_members: usize,
}

/// The kinds of fault a schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    KillStore,
    KillPartitionOwner,
    KillActiveNameserver,
    KillEtcdMember,
    PausePartitionOwner,
    CutNode,
    RestartBroker,
    RestartStore,
    FillStoreDisk,
    ExhaustStoreFiles,
    CorruptStoreSegment,
}

impl FaultKind {
    /// Kinds only the process backend can apply (the compose backend's
    /// containers have no shell to fill a disk with, and their file limits
    /// are the engine's).
    pub const PROCESS_ONLY: [FaultKind; 3] = [
        FaultKind::FillStoreDisk,
        FaultKind::ExhaustStoreFiles,
        FaultKind::CorruptStoreSegment,
    ];

    pub const ALL: [FaultKind; 11] = [
        FaultKind::KillStore,
        FaultKind::KillPartitionOwner,
        FaultKind::KillActiveNameserver,
        FaultKind::KillEtcdMember,
        FaultKind::PausePartitionOwner,
        FaultKind::CutNode,
        FaultKind::RestartBroker,
        FaultKind::RestartStore,
        FaultKind::FillStoreDisk,
        FaultKind::ExhaustStoreFiles,
        FaultKind::CorruptStoreSegment,
    ];
}

/// One fault with its target as far as it is known before the run;
/// "the owner of partition P" and "the active nameserver" are resolved when
/// the fault is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` a store, restart it when healed.
    KillStore { store: usize },
    /// `kill -9` the broker owning `partition`, restart it when healed.
    KillPartitionOwner { partition: u32 },
    /// `kill -9` the active nameserver: the elected assigner, or (when
    /// none is known) the first running nameserver in bootstrap order, the
    /// one clients and services talk to. Restart it when healed.
    KillActiveNameserver,
    /// `kill -9` one etcd member, restart it when healed.
    KillEtcdMember { member: usize },
    /// SIGSTOP the owner of `partition` for longer than its lease, SIGCONT
    /// when healed. It must get nothing acknowledged once replaced.
    PausePartitionOwner { partition: u32 },
    /// Cut a node off the network; reconnect it when healed.
    CutNode { node: Node },
    /// SIGTERM (graceful) a broker, start it again when healed.
    RestartBroker { broker: usize },
    /// SIGTERM (graceful) a store, start it again when healed.
    RestartStore { store: usize },
    /// Fill a store's file system (it keeps running: writes fail until the
    /// space is freed), free it when healed.
    FillStoreDisk { store: usize },
    /// Hold idle connections to a store until it is out of file handles,
    /// close them when healed.
    ExhaustStoreFiles { store: usize },
    /// `kill -9` a store and flip one byte in the middle of one of its
    /// segment files; restart it when healed (its recovery finds the
    /// damage; the other copies serve and repair it).
    CorruptStoreSegment { store: usize },
}

impl fmt::Display for Fault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillStore { store } => write!(formatter, "kill -9 store-{}", store + 1),
            Fault::KillPartitionOwner { partition } => {
                write!(formatter, "kill -9 the owner of partition {partition}")
            }
            Fault::KillActiveNameserver => write!(formatter, "kill -9 the active nameserver"),
            Fault::KillEtcdMember { member } => {
                write!(formatter, "kill -9 etcd member {}", member + 1)
            }
            Fault::PausePartitionOwner { partition } => {
                write!(formatter, "SIGSTOP the owner of partition {partition}")
            }
            Fault::CutNode { node } => write!(formatter, "cut {node} off the network"),
            Fault::RestartBroker { broker } => {
                write!(formatter, "graceful restart of broker-{}", broker + 1)
            }
            Fault::RestartStore { store } => {
                write!(formatter, "graceful restart of store-{}", store + 1)
            }
            Fault::FillStoreDisk { store } => {
                write!(formatter, "fill the disk of store-{}", store + 1)
            }
            Fault::ExhaustStoreFiles { store } => {
                write!(formatter, "exhaust the file handles of store-{}", store + 1)
            }
            Fault::CorruptStoreSegment { store } => {
                write!(
                    formatter,
                    "kill -9 store-{} and flip a byte of a segment",
                    store + 1
                )
            }
        }
    }
}

/// A fault at a time, healed after a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledFault {
    /// Milliseconds after the workload started.
    pub at_ms: u64,
    /// How long the fault stays in effect before it is healed.
    pub heal_after_ms: u64,
    pub fault: Fault,
}

impl fmt::Display for ScheduledFault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "at {:>6} ms: {} (healed after {} ms)",
            self.at_ms, self.fault, self.heal_after_ms
        )
    }
}

/// What a schedule is drawn for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    pub seed: u64,
    pub faults: usize,
    /// Time over which the faults are spread, in milliseconds.
    pub duration_ms: u64,
    pub topology: Topology,
    pub partitions: u32,
    /// Registration lease of brokers: a pause lasts longer than this.
    pub lease_ttl_ms: u64,
    /// Kinds to draw from; kinds the topology cannot support (etcd member
    /// with one member, pause when the slots are shorter than a lease) are
    /// dropped.
    pub kinds: Vec<FaultKind>,
    /// Draw start times over the whole duration, so faults can overlap
    /// (a fault on a node that is already faulted is skipped when applied);
    /// otherwise one fault per slot, each healed before the next.
    pub overlapping: bool,
}

/// Kinds a schedule for `config` actually uses.
pub fn usable_kinds(config: &ScheduleConfig) -> Vec<FaultKind> {
    let slot_ms = config.duration_ms / config.faults.max(1) as u64;
    let mut kinds: Vec<FaultKind> = config
        .kinds
        .iter()
        .copied()
        .filter(|kind| match kind {
            FaultKind::KillEtcdMember => config.topology.etcd_members > 1,
            FaultKind::KillStore
            | FaultKind::RestartStore
            | FaultKind::FillStoreDisk
            | FaultKind::ExhaustStoreFiles => config.topology.stores > 0,
            // The damaged copy is served and repaired from the others.
            FaultKind::CorruptStoreSegment => config.topology.stores > 1,
            FaultKind::KillPartitionOwner
            | FaultKind::PausePartitionOwner
            | FaultKind::RestartBroker => config.topology.brokers > 0 && config.partitions > 0,
            FaultKind::KillActiveNameserver => config.topology.nameservers > 0,
            FaultKind::CutNode => true,
        })
        .filter(|kind| {
            // A fault starts within the first fifth of its slot.
            let room_ms = if config.overlapping {
                config.duration_ms
            } else {
                slot_ms * 4 / 5
            };
            *kind != FaultKind::PausePartitionOwner || room_ms > pause_ms(config.lease_ttl_ms, 0)
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// A pause lasts the lease plus at least a second (so the broker is
/// replaced while frozen).
fn pause_ms(lease_ttl_ms: u64, extra_ms: u64) -> u64 {
    lease_ttl_ms + 1_000 + extra_ms
}

/// Draws a schedule: `faults` faults, one per equal slot of the duration
/// (so they never overlap and each heals before the next), the kinds
/// dealt round-robin in a shuffled order so that every usable kind appears
/// once the count allows. The same config gives the same schedule.
pub fn schedule(config: &ScheduleConfig) -> Vec<ScheduledFault> {
    let kinds = usable_kinds(config);
    if kinds.is_empty() || config.faults == 0 {
        return Vec::new();
    }
    let mut random = StdRng::seed_from_u64(config.seed);
    let mut deck: Vec<FaultKind> = Vec::with_capacity(config.faults);
    while deck.len() < config.faults {
        let mut round = kinds.clone();
        round.shuffle(&mut random);
        deck.extend(round);
    }
    deck.truncate(config.faults);
    deck.shuffle(&mut random);
    let slot_ms = config.duration_ms / config.faults as u64;
    let topology = config.topology;
    let mut faults: Vec<ScheduledFault> = deck
        .into_iter()
        .enumerate()
        .map(|(slot, kind)| {
            let (start_ms, room_ms) = if config.overlapping {
                // Anywhere, leaving room for the longest fault to heal
                // within the duration.
                let longest_ms = MAX_FAULT_MS.max(pause_ms(config.lease_ttl_ms, 0));
                let latest_ms = config.duration_ms.saturating_sub(longest_ms);
                let start_ms = random.random_range(0..=latest_ms);
                (start_ms, config.duration_ms - start_ms)
            } else {
                // Start in the first fifth of the slot; heal well before
                // the next slot begins, leaving time to recover.
                let start_ms = slot as u64 * slot_ms + random.random_range(0..=slot_ms / 5);
                (start_ms, (slot as u64 + 1) * slot_ms - start_ms)
            };
            let longest_ms = (room_ms * 3 / 5).clamp(MIN_FAULT_MS, MAX_FAULT_MS);
            let mut heal_after_ms = random.random_range(MIN_FAULT_MS..=longest_ms);
            let fault = match kind {
                FaultKind::KillStore => Fault::KillStore {
                    store: random.random_range(0..topology.stores),
                },
                FaultKind::RestartStore => Fault::RestartStore {
                    store: random.random_range(0..topology.stores),
                },
                FaultKind::FillStoreDisk => Fault::FillStoreDisk {
                    store: random.random_range(0..topology.stores),
                },
                FaultKind::ExhaustStoreFiles => Fault::ExhaustStoreFiles {
                    store: random.random_range(0..topology.stores),
                },
                FaultKind::CorruptStoreSegment => Fault::CorruptStoreSegment {
                    store: random.random_range(0..topology.stores),
                },
                FaultKind::KillPartitionOwner => Fault::KillPartitionOwner {
                    partition: random.random_range(0..config.partitions),
                },
                FaultKind::PausePartitionOwner => {
                    let spare_ms = room_ms.saturating_sub(pause_ms(config.lease_ttl_ms, 0));
                    heal_after_ms = pause_ms(
                        config.lease_ttl_ms,
                        random.random_range(0..=(spare_ms / 3).min(MAX_FAULT_MS)),
                    );
                    Fault::PausePartitionOwner {
                        partition: random.random_range(0..config.partitions),
                    }
                }
                FaultKind::KillActiveNameserver => Fault::KillActiveNameserver,
                FaultKind::KillEtcdMember => Fault::KillEtcdMember {
                    member: random.random_range(0..topology.etcd_members),
                },
                FaultKind::RestartBroker => Fault::RestartBroker {
                    broker: random.random_range(0..topology.brokers),
                },
                FaultKind::CutNode => {
                    let mut nodes = Vec::new();
                    for (kind, count) in [
                        (NodeKind::Broker, topology.brokers),
                        (NodeKind::Store, topology.stores),
                        (NodeKind::Nameserver, topology.nameservers),
                        (
                            NodeKind::Etcd,
                            if topology.etcd_members > 1 {
                                topology.etcd_members
                            } else {
                                0
                            },
                        ),
                    ] {
                        nodes.extend((0..count).map(|index| Node { kind, index }));
                    }
                    let node = nodes[random.random_range(0..nodes.len())];
                    Fault::CutNode { node }
                }
            };
            ScheduledFault {
                at_ms: start_ms,
                heal_after_ms,
                fault,
            }
        })
        .collect();
    faults.sort_by_key(|scheduled| scheduled.at_ms);
    faults
}

/// What a backend must offer to break and heal nodes. Methods are
/// synchronous and return once the action took effect (a killed process
/// is reaped, a paused one is stopped).
pub trait FaultTarget {
    fn topology(&self) -> Topology;
    /// The node running the broker registered as `broker_id`.
    fn broker_by_id(&self, broker_id: &str) -> Option<Node>;
    fn is_running(&mut self, node: Node) -> bool;
    /// Hard kill: no flush, no deregistration.
    fn kill(&mut self, node: Node) -> anyhow::Result<()>;
    /// Graceful stop (SIGTERM, then kill after a grace period).
    fn stop(&mut self, node: Node) -> anyhow::Result<()>;
    fn start(&mut self, node: Node) -> anyhow::Result<()>;
    fn pause(&mut self, node: Node) -> anyhow::Result<()>;
    fn resume(&mut self, node: Node) -> anyhow::Result<()>;
    /// Cut the node off from every other node and from clients.
    fn cut(&mut self, node: Node) -> anyhow::Result<()>;
    fn reconnect(&mut self, node: Node) -> anyhow::Result<()>;
    /// Fill the file system holding the node's data (it keeps running).
    fn fill_disk(&mut self, node: Node) -> anyhow::Result<()> {
        bail!("this backend cannot fill {node}'s disk")
    }
    fn free_disk(&mut self, node: Node) -> anyhow::Result<()> {
        bail!("this backend cannot free {node}'s disk")
    }
    /// Kill the node and damage its stored data while it is down.
    fn kill_and_corrupt(&mut self, node: Node) -> anyhow::Result<()> {
        bail!("this backend cannot corrupt {node}'s data")
    }
    /// Use up the node's file handles with idle connections.
    fn exhaust_files(&mut self, node: Node) -> anyhow::Result<()> {
        bail!("this backend cannot exhaust {node}'s file handles")
    }
    fn release_files(&mut self, node: Node) -> anyhow::Result<()> {
        bail!("this backend cannot release {node}'s file handles")
    }
}

/// The node a Sluice node id names (`broker-2`, `nameserver-1`, ...: the
/// ids both backends give their nodes).
pub fn node_from_id(node_id: &str) -> Option<Node> {
    let (kind, number) = node_id.rsplit_once('-')?;
    let kind = match kind {
        "nameserver" => NodeKind::Nameserver,
        "broker" => NodeKind::Broker,
        "store" => NodeKind::Store,
        "etcd" => NodeKind::Etcd,
        _ => return None,
    };
    let index = number.parse::<usize>().ok()?.checked_sub(1)?;
    Some(Node { kind, index })
}

/// A borrowed target is a target, so a [`Nemesis`] can work on a target
/// its caller keeps.
impl<T: FaultTarget + ?Sized> FaultTarget for &mut T {
    fn topology(&self) -> Topology {
        (**self).topology()
    }
    fn broker_by_id(&self, broker_id: &str) -> Option<Node> {
        (**self).broker_by_id(broker_id)
    }
    fn is_running(&mut self, node: Node) -> bool {
        (**self).is_running(node)
    }
    fn kill(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).kill(node)
    }
    fn stop(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).stop(node)
    }
    fn start(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).start(node)
    }
    fn pause(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).pause(node)
    }
    fn resume(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).resume(node)
    }
    fn cut(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).cut(node)
    }
    fn reconnect(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).reconnect(node)
    }
    fn fill_disk(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).fill_disk(node)
    }
    fn free_disk(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).free_disk(node)
    }
    fn exhaust_files(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).exhaust_files(node)
    }
    fn kill_and_corrupt(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).kill_and_corrupt(node)
    }
    fn release_files(&mut self, node: Node) -> anyhow::Result<()> {
        (**self).release_files(node)
    }
}

/// How an applied fault is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heal {
    Start(Node),
    Resume(Node),
    Reconnect(Node),
    FreeDisk(Node),
    ReleaseFiles(Node),
}

impl Heal {
    /// The node this heal is for.
    pub fn node(&self) -> Node {
        match self {
            Heal::Start(node)
            | Heal::Resume(node)
            | Heal::Reconnect(node)
            | Heal::FreeDisk(node)
            | Heal::ReleaseFiles(node) => *node,
        }
    }
}

impl fmt::Display for Heal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Heal::Start(node) => write!(formatter, "start {node}"),
            Heal::Resume(node) => write!(formatter, "SIGCONT {node}"),
            Heal::Reconnect(node) => write!(formatter, "reconnect {node}"),
            Heal::FreeDisk(node) => write!(formatter, "free the disk of {node}"),
            Heal::ReleaseFiles(node) => write!(formatter, "close the idle connections to {node}"),
        }
    }
}

/// A line of the fault log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultEvent {
    pub at_ms: u64,
    pub text: String,
    /// True when the backend could not do what was asked.
    pub error: bool,
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{:>6} ms  {}{}",
            self.at_ms,
            if self.error { "ERROR " } else { "" },
            self.text
        )
    }
}

/// Applies faults to a target, remembers how to undo each one and heals
/// them; keeps a log of everything it did.
pub struct Nemesis<T: FaultTarget> {
    pub target: T,
    active: Vec<Heal>,
    pub log: Vec<FaultEvent>,
}

impl<T: FaultTarget> Nemesis<T> {
    pub fn new(target: T) -> Self {
        Self {
            target,
            active: Vec::new(),
            log: Vec::new(),
        }
    }

    fn note(&mut self, at_ms: u64, text: String, error: bool) {
        let event = FaultEvent { at_ms, text, error };
        // Printed as it happens so that a run that hangs or panics still
        // shows which faults preceded it.
        eprintln!("[chaos] {event}");
        self.log.push(event);
    }

    /// Applies `fault`. `resolved` is the node the caller looked up just
    /// before for faults that name a role: the broker owning the fault's
    /// partition, the active nameserver (the elected assigner). When it is
    /// unknown a running node of that kind is chosen.
    /// Returns how the fault will be undone, `None` when it was not applied.
    pub fn apply(&mut self, at_ms: u64, fault: &Fault, resolved: Option<Node>) -> Option<Heal> {
        let owner = resolved;
        let topology = self.target.topology();
        let node = match *fault {
            Fault::KillStore { store }
            | Fault::RestartStore { store }
            | Fault::FillStoreDisk { store }
            | Fault::ExhaustStoreFiles { store }
            | Fault::CorruptStoreSegment { store } => Node {
                kind: NodeKind::Store,
                index: store,
            },
            Fault::RestartBroker { broker } => Node {
                kind: NodeKind::Broker,
                index: broker,
            },
            Fault::KillEtcdMember { member } => Node {
                kind: NodeKind::Etcd,
                index: member,
            },
            Fault::CutNode { node } => node,
            Fault::KillActiveNameserver if resolved.is_some() => {
                resolved.expect("matched on is_some just above")
            }
            Fault::KillActiveNameserver => {
                let running = (0..topology.nameservers)
                    .map(|index| Node {
                        kind: NodeKind::Nameserver,
                        index,
                    })
                    .find(|node| self.target.is_running(*node));
                match running {
                    Some(node) => node,
                    None => {
                        self.note(at_ms, format!("{fault}: no nameserver is running"), true);
                        return None;
                    }
                }
            }
            Fault::KillPartitionOwner { .. } | Fault::PausePartitionOwner { .. } => match owner {
                Some(node) => node,
                None => {
                    let fallback = (0..topology.brokers)
                        .map(|index| Node {
                            kind: NodeKind::Broker,
                            index,
                        })
                        .find(|node| self.target.is_running(*node));
                    match fallback {
                        Some(node) => {
                            self.note(
                                at_ms,
                                format!("{fault}: owner unknown right now, using {node}"),
                                false,
                            );
                            node
                        }
                        None => {
                            self.note(at_ms, format!("{fault}: no broker is running"), true);
                            return None;
                        }
                    }
                }
            },
        };
        if self.active.iter().any(|heal| heal.node() == node) {
            self.note(
                at_ms,
                format!("{fault}: {node} is already faulted; skipped"),
                false,
            );
            return None;
        }
        let (result, heal) = match fault {
            Fault::KillStore { .. }
            | Fault::KillPartitionOwner { .. }
            | Fault::KillActiveNameserver
            | Fault::KillEtcdMember { .. } => (self.target.kill(node), Heal::Start(node)),
            Fault::RestartBroker { .. } | Fault::RestartStore { .. } => {
                (self.target.stop(node), Heal::Start(node))
            }
            Fault::PausePartitionOwner { .. } => (self.target.pause(node), Heal::Resume(node)),
            Fault::CutNode { .. } => (self.target.cut(node), Heal::Reconnect(node)),
            Fault::FillStoreDisk { .. } => (self.target.fill_disk(node), Heal::FreeDisk(node)),
            Fault::ExhaustStoreFiles { .. } => {
                (self.target.exhaust_files(node), Heal::ReleaseFiles(node))
            }
            Fault::CorruptStoreSegment { .. } => {
                (self.target.kill_and_corrupt(node), Heal::Start(node))
            }
        };
        match result {
            Ok(()) => {
                self.note(at_ms, format!("{fault}: {node}"), false);
                self.active.push(heal);
                Some(heal)
            }
            Err(error) => {
                self.note(at_ms, format!("{fault}: {node}: {error:#}"), true);
                None
            }
        }
    }

    /// Undoes one fault, if it is still in effect.
    pub fn heal(&mut self, at_ms: u64, heal: Heal) {
        let Some(position) = self.active.iter().position(|active| *active == heal) else {
            return;
        };
        self.active.remove(position);
        self.perform(at_ms, heal);
    }

    fn perform(&mut self, at_ms: u64, heal: Heal) {
        let result = match heal {
            Heal::Start(node) => self.target.start(node),
            Heal::Resume(node) => self.target.resume(node),
            Heal::Reconnect(node) => self.target.reconnect(node),
            Heal::FreeDisk(node) => self.target.free_disk(node),
            Heal::ReleaseFiles(node) => self.target.release_files(node),
        };
        match result {
            Ok(()) => self.note(at_ms, format!("heal: {heal}"), false),
            Err(error) => self.note(at_ms, format!("heal: {heal}: {error:#}"), true),
        }
    }

    /// Undoes every fault still in effect, most recent first.
    pub fn heal_all(&mut self, at_ms: u64) {
        while let Some(heal) = self.active.pop() {
            self.perform(at_ms, heal);
        }
    }

    /// Faults still in effect.
    pub fn active(&self) -> &[Heal] {
        &self.active
    }

    /// Log lines of actions the backend could not perform.
    pub fn errors(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|event| event.error)
            .map(ToString::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn config(seed: u64, faults: usize) -> ScheduleConfig {
        ScheduleConfig {
            seed,
            faults,
            duration_ms: 60_000,
            topology: Topology {
                nameservers: 2,
                brokers: 3,
                stores: 3,
                etcd_members: 1,
            },
            partitions: 6,
            lease_ttl_ms: 3_000,
            kinds: FaultKind::ALL.to_vec(),
            overlapping: false,
        }
    }

    #[test]
    fn overlapping_schedules_are_sorted_and_fit_the_duration() {
        let mut overlapping = config(5, 40);
        overlapping.overlapping = true;
        let faults = schedule(&overlapping);
        assert_eq!(faults.len(), 40);
        assert!(faults.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms));
        assert!(faults
            .iter()
            .all(|scheduled| scheduled.at_ms + scheduled.heal_after_ms <= 60_000));
        // 40 faults in 60 s cannot all be apart: some overlap.
        assert!(faults
            .windows(2)
            .any(|pair| pair[0].at_ms + pair[0].heal_after_ms > pair[1].at_ms));
        assert!(usable_kinds(&overlapping).contains(&FaultKind::PausePartitionOwner));
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        assert_eq!(schedule(&config(7, 10)), schedule(&config(7, 10)));
        assert_ne!(schedule(&config(7, 10)), schedule(&config(8, 10)));
    }

    #[test]
    fn faults_do_not_overlap_and_fit_the_duration() {
        for seed in 0..50 {
            let faults = schedule(&config(seed, 10));
            assert_eq!(faults.len(), 10);
            for pair in faults.windows(2) {
                assert!(
                    pair[0].at_ms + pair[0].heal_after_ms < pair[1].at_ms,
                    "seed {seed}: {} overlaps {}",
                    pair[0],
                    pair[1]
                );
            }
            let last = faults.last().expect("ten faults");
            assert!(
                last.at_ms + last.heal_after_ms <= 60_000,
                "seed {seed}: {last}"
            );
        }
    }

    #[test]
    fn every_usable_kind_appears_and_etcd_needs_members() {
        let faults = schedule(&config(1, 10));
        let kinds: BTreeSet<&str> = faults
            .iter()
            .map(|scheduled| match scheduled.fault {
                Fault::KillStore { .. } => "kill-store",
                Fault::KillPartitionOwner { .. } => "kill-owner",
                Fault::KillActiveNameserver => "kill-nameserver",
                Fault::KillEtcdMember { .. } => "kill-etcd",
                Fault::PausePartitionOwner { .. } => "pause-owner",
                Fault::CutNode { .. } => "cut",
                Fault::RestartBroker { .. } => "restart-broker",
                Fault::RestartStore { .. } => "restart-store",
                Fault::FillStoreDisk { .. } => "fill-disk",
                Fault::ExhaustStoreFiles { .. } => "exhaust-files",
                Fault::CorruptStoreSegment { .. } => "corrupt-segment",
            })
            .collect();
        assert_eq!(kinds.len(), 10, "{kinds:?}");
        assert!(!kinds.contains("kill-etcd"));
        let mut three_members = config(1, 16);
        three_members.topology.etcd_members = 3;
        assert!(schedule(&three_members)
            .iter()
            .any(|scheduled| matches!(scheduled.fault, Fault::KillEtcdMember { .. })));
    }

    #[test]
    fn pauses_outlast_the_lease() {
        for seed in 0..50 {
            for scheduled in schedule(&config(seed, 10)) {
                if matches!(scheduled.fault, Fault::PausePartitionOwner { .. }) {
                    assert!(scheduled.heal_after_ms > 3_000, "{scheduled}");
                }
            }
        }
        // Slots shorter than a lease leave pauses out.
        let mut short = config(3, 40);
        short.duration_ms = 40_000;
        assert!(!usable_kinds(&short).contains(&FaultKind::PausePartitionOwner));
    }

    #[derive(Default)]
    struct FakeTarget {
        running: BTreeSet<Node>,
        paused: BTreeSet<Node>,
        cut: BTreeSet<Node>,
        actions: Vec<String>,
    }

    impl FaultTarget for FakeTarget {
        fn topology(&self) -> Topology {
            Topology {
                nameservers: 2,
                brokers: 2,
                stores: 1,
                etcd_members: 1,
            }
        }
        fn broker_by_id(&self, broker_id: &str) -> Option<Node> {
            broker_id
                .strip_prefix("broker-")
                .and_then(|index| index.parse::<usize>().ok())
                .map(|index| Node {
                    kind: NodeKind::Broker,
                    index: index - 1,
                })
        }
        fn is_running(&mut self, node: Node) -> bool {
            self.running.contains(&node)
        }
        fn kill(&mut self, node: Node) -> anyhow::Result<()> {
            if !self.running.remove(&node) {
                bail!("{node} is not running");
            }
            self.actions.push(format!("kill {node}"));
            Ok(())
        }
        fn stop(&mut self, node: Node) -> anyhow::Result<()> {
            self.kill(node)
        }
        fn start(&mut self, node: Node) -> anyhow::Result<()> {
            self.running.insert(node);
            self.actions.push(format!("start {node}"));
            Ok(())
        }
        fn pause(&mut self, node: Node) -> anyhow::Result<()> {
            self.paused.insert(node);
            self.actions.push(format!("pause {node}"));
            Ok(())
        }
        fn resume(&mut self, node: Node) -> anyhow::Result<()> {
            self.paused.remove(&node);
            self.actions.push(format!("resume {node}"));
            Ok(())
        }
        fn cut(&mut self, node: Node) -> anyhow::Result<()> {
            self.cut.insert(node);
            Ok(())
        }
        fn reconnect(&mut self, node: Node) -> anyhow::Result<()> {
            self.cut.remove(&node);
            Ok(())
        }
    }

    fn everything_running() -> FakeTarget {
        let mut target = FakeTarget::default();
        for (kind, count) in [
            (NodeKind::Nameserver, 2),
            (NodeKind::Broker, 2),
            (NodeKind::Store, 1),
        ] {
            for index in 0..count {
                target.running.insert(Node { kind, index });
            }
        }
        target
    }

    #[test]
    fn nemesis_heals_everything_it_broke() {
        let mut nemesis = Nemesis::new(everything_running());
        let owner = nemesis.target.broker_by_id("broker-2");
        nemesis.apply(0, &Fault::KillPartitionOwner { partition: 0 }, owner);
        nemesis.apply(1, &Fault::KillActiveNameserver, None);
        nemesis.apply(2, &Fault::PausePartitionOwner { partition: 1 }, None);
        nemesis.apply(
            3,
            &Fault::CutNode {
                node: Node {
                    kind: NodeKind::Store,
                    index: 0,
                },
            },
            None,
        );
        assert_eq!(nemesis.active().len(), 4);
        assert_eq!(
            nemesis.target.actions,
            ["kill broker-2", "kill nameserver-1", "pause broker-1"]
        );
        // The killed owner is faulted already: a second fault on it is skipped.
        nemesis.apply(4, &Fault::RestartBroker { broker: 1 }, None);
        assert_eq!(nemesis.active().len(), 4);
        nemesis.heal_all(5);
        assert!(nemesis.active().is_empty());
        assert!(nemesis.target.paused.is_empty());
        assert!(nemesis.target.cut.is_empty());
        assert_eq!(nemesis.target.running.len(), 5);
        assert!(nemesis.errors().is_empty(), "{:?}", nemesis.log);
    }

    #[test]
    fn node_ids_name_nodes() {
        for node in [
            Node {
                kind: NodeKind::Nameserver,
                index: 1,
            },
            Node {
                kind: NodeKind::Etcd,
                index: 0,
            },
        ] {
            assert_eq!(node_from_id(&node.to_string()), Some(node));
        }
        assert_eq!(node_from_id("broker-0"), None);
        assert_eq!(node_from_id("client-1"), None);
        assert_eq!(node_from_id(""), None);
    }

    #[test]
    fn active_nameserver_is_the_one_named() {
        let mut nemesis = Nemesis::new(everything_running());
        let assigner = node_from_id("nameserver-2");
        nemesis.apply(0, &Fault::KillActiveNameserver, assigner);
        assert_eq!(nemesis.target.actions, ["kill nameserver-2"]);
        // Unknown: the first running one.
        nemesis.apply(1, &Fault::KillActiveNameserver, None);
        assert_eq!(
            nemesis.target.actions,
            ["kill nameserver-2", "kill nameserver-1"]
        );
    }

    #[test]
    fn nemesis_logs_what_the_backend_could_not_do() {
        let mut target = everything_running();
        target.running.clear();
        let mut nemesis = Nemesis::new(target);
        nemesis.apply(0, &Fault::KillStore { store: 0 }, None);
        nemesis.apply(1, &Fault::KillActiveNameserver, None);
        assert_eq!(nemesis.errors().len(), 2, "{:?}", nemesis.log);
        assert!(nemesis.active().is_empty());
    }
}
