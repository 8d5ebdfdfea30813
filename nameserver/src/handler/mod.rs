//! The nameserver's request handling, one file per resource: `nodes`
//! (registration, heartbeats, load), `topics`, `topic_config` (filling and
//! checking a topic's config), `segments`, `compactions` (compaction's segment swaps, ADR 0016 §8), `routes` (routes, route
//! watches, coordinator lookup), `groups`, `producer_ids` (ids bound to principals, ADR 0015),
//! `data_loss` (an operator's acceptance of data loss) and `status`; subscriptions are in `crate::subscriptions`. Everything is
//! answered from the metadata store, so any nameserver can answer any
//! request. This file holds the shared state and the reads several
//! resources use; `crate::service` maps the gRPC trait onto it.

mod acls;
pub(crate) use acls::read_acls;
mod assignment_watch;
mod compactions;
mod data_loss;
mod dead_letter_cleanup;
mod down_nodes;
mod groups;
mod node_identity;
mod nodes;
mod producer_ids;
mod routes;
mod segment_ids;
mod segments;
mod sessions;
mod status;
mod topic_alter;
mod topic_config;
mod topics;

pub(crate) use assignment_watch::AssignmentStream;
pub(crate) use routes::RouteStream;
pub(crate) use topic_config::complete_topic_config;

use crate::assignment;
use crate::assignment_index::AssignmentIndex;
use crate::config::NameServerConfig;
use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner};
use crate::metadata::{LeaseId, MetadataStore};
use crate::session_monitor::SessionMonitor;
use sluice_proto::names::TopicName;
use sluice_proto::v1::{NodeInfo, NodeKind, Topic};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{watch, Notify, Semaphore};

/// Shared state of one nameserver; implements the gRPC service.
pub struct NameServerHandler {
    pub(crate) config: NameServerConfig,
    pub(crate) store: Arc<dyn MetadataStore>,
    /// When each node's load was last written, so heartbeats do not write
    /// etcd every time. One entry per registered node key.
    load_written_at: std::sync::Mutex<HashMap<String, Instant>>,
    watch_permits: Arc<Semaphore>,
    assignment_watch_permits: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
    /// Wakes the reconciler early (after a topic is created, or when a
    /// broker's session ends).
    pub(crate) reconcile_now: Notify,
    /// The sessions whose heartbeats come here (ADR 0014).
    sessions: std::sync::Mutex<SessionMonitor>,
    /// Every broker session's assignments, reloaded when the metadata
    /// watch reports a change of topics or owners; `None` until loaded.
    pub(crate) assignment_index: watch::Sender<Option<Arc<AssignmentIndex>>>,
    /// Subscription creations of one topic run one at a time on this
    /// nameserver (a topic hashes to one of these), so they do not race
    /// each other for the topic's subscription guard; nameservers still
    /// race, and the guard's compare-and-set decides.
    pub(crate) subscription_creation: Vec<tokio::sync::Mutex<()>>,
    /// The producer-id key, read from (or first written to) the metadata
    /// store once.
    producer_id_key: tokio::sync::OnceCell<producer_ids::ProducerIdSecret>,
    /// Which principal registered each node session (issue 13).
    session_principals: std::sync::Mutex<node_identity::SessionPrincipals>,
    /// `CreateSegment`s waiting for a segment id: one counter increment
    /// serves all of them.
    segment_ids: segment_ids::SegmentIdQueue,
}

/// Stripes of [`NameServerHandler::subscription_creation`].
const SUBSCRIPTION_CREATION_STRIPES: usize = 64;

pub(crate) fn invalid(message: impl Into<String>) -> NameServerError {
    NameServerError::InvalidArgument(message.into())
}

/// Checks a topic name given for a lookup (internal names allowed).
fn lookup_topic_name(name: &str) -> Result<TopicName, NameServerError> {
    TopicName::any(name).map_err(|error| invalid(error.to_string()))
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0)
}

fn lease_of(session_id: u64) -> LeaseId {
    LeaseId::try_from(session_id).unwrap_or(LeaseId::MAX)
}

/// What is live among brokers: id → (session, address).
type LiveBrokers = HashMap<String, (u64, String)>;

impl NameServerHandler {
    pub(crate) fn new(
        config: NameServerConfig,
        store: Arc<dyn MetadataStore>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let permits = usize::try_from(config.max_route_watches).unwrap_or(usize::MAX);
        let assignment_permits =
            usize::try_from(config.max_assignment_watches).unwrap_or(usize::MAX);
        Self {
            sessions: std::sync::Mutex::new(SessionMonitor::new(std::time::Duration::from_millis(
                config.session_timeout_ms,
            ))),
            config,
            store,
            load_written_at: std::sync::Mutex::new(HashMap::new()),
            watch_permits: Arc::new(Semaphore::new(permits)),
            assignment_watch_permits: Arc::new(Semaphore::new(assignment_permits)),
            stopping,
            reconcile_now: Notify::new(),
            assignment_index: watch::Sender::new(None),
            subscription_creation: (0..SUBSCRIPTION_CREATION_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            producer_id_key: tokio::sync::OnceCell::new(),
            session_principals: std::sync::Mutex::default(),
            segment_ids: segment_ids::SegmentIdQueue::default(),
        }
    }

    /// The topic record and its revision, or `UnknownTopic`.
    async fn get_topic(&self, name: &str) -> Result<(Topic, i64), NameServerError> {
        let key = keys::topic(name);
        let entry = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| NameServerError::UnknownTopic(name.to_string()))?;
        Ok((keys::decode(&key, &entry.value)?, entry.mod_revision))
    }

    /// Every decodable topic record with its revision.
    async fn all_topics(&self) -> Result<Vec<(Topic, i64)>, NameServerError> {
        let mut topics = Vec::new();
        for entry in self.store.range(keys::TOPICS).await? {
            match keys::decode::<Topic>(&entry.key, &entry.value) {
                Ok(topic) => topics.push((topic, entry.mod_revision)),
                Err(error) => tracing::warn!(%error, "skipping undecodable topic"),
            }
        }
        Ok(topics)
    }

    async fn live_brokers(&self) -> Result<LiveBrokers, NameServerError> {
        Ok(assignment::live_brokers(self.store.as_ref())
            .await?
            .into_iter()
            .map(|(info, _)| (info.node_id, (info.session_id, info.address)))
            .collect())
    }

    async fn live_stores(&self) -> Result<Vec<NodeInfo>, NameServerError> {
        let mut stores = Vec::new();
        for entry in self
            .store
            .range(&keys::nodes_of_kind(NodeKind::Store))
            .await?
        {
            match keys::decode::<NodeInfo>(&entry.key, &entry.value) {
                Ok(info) => stores.push(info),
                Err(error) => tracing::warn!(%error, "skipping undecodable store registration"),
            }
        }
        Ok(stores)
    }

    /// The partition owner records under `prefix` (all of them under
    /// [`keys::PARTITIONS`]), keyed by (topic, partition).
    async fn owners(&self, prefix: &str) -> Result<OwnerMap, NameServerError> {
        let mut owners = HashMap::new();
        for entry in self.store.range(prefix).await? {
            let Some(parsed) = keys::parse_partition(&entry.key) else {
                tracing::warn!(key = entry.key, "ignoring malformed partition key");
                continue;
            };
            if let Ok(owner) = keys::decode::<PartitionOwner>(&entry.key, &entry.value) {
                owners.insert(parsed, owner);
            }
        }
        Ok(owners)
    }
}

/// Partition owner records keyed by (topic, partition).
pub(crate) type OwnerMap = HashMap<(String, u32), PartitionOwner>;

/// First cap of the jittered pause between attempts of a contended
/// counter increment; it doubles per attempt up to [`CAS_BACKOFF_MAX_MS`].
const CAS_BACKOFF_BASE_MS: u64 = 4;
/// Largest pause between attempts of a contended counter increment.
const CAS_BACKOFF_MAX_MS: u64 = 250;

/// Before attempt `attempt` (from 0) of a compare-and-set on a key many
/// callers race for (the id counters): nothing before the first, then a
/// pause with exponential backoff and full jitter. With a fixed short
/// pause, eight concurrent allocators on a loaded machine used up every
/// attempt.
pub(crate) async fn pause_before_cas_retry(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let cap_ms = (CAS_BACKOFF_BASE_MS << attempt.min(8)).min(CAS_BACKOFF_MAX_MS);
    let pause_ms = rand::random_range(0..=cap_ms);
    tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
}
