//! The `NameServer` gRPC service: registration, topics, segments, routes,
//! groups, subscriptions (their logic in `subscriptions.rs`) and cluster status, all answered from the metadata store so any
//! nameserver can answer any request.

use crate::assignment;
use crate::config::NameServerConfig;
use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner, SegmentIdCounter};
use crate::metadata::{Compare, KeyValue, LeaseId, MetadataError, MetadataStore, Put, Transaction};
use crate::placement::{self, EnsembleShape};
use sluice_proto::names::{self, GroupName, TopicName, CONSUMER_OFFSETS_TOPIC};
use sluice_proto::v1::name_server_server::NameServer;
use sluice_proto::v1::{
    CloseSegmentRequest, ClusterStatusRequest, ClusterStatusResponse, CreateSegmentRequest,
    CreateSubscriptionRequest, CreateTopicRequest, DeleteSegmentsRequest, DeleteSegmentsResponse,
    DeleteSubscriptionRequest, DeleteSubscriptionResponse, DeleteTopicRequest, DeleteTopicResponse,
    DeregisterNodeRequest, DeregisterNodeResponse, DescribeTopicRequest, DescribeTopicResponse,
    Durability, ErrorCode, FindCoordinatorRequest, FindCoordinatorResponse, GetRoutesRequest,
    GetRoutesResponse, GetSubscriptionRequest, GroupListing, HeartbeatRequest, HeartbeatResponse,
    ListGroupsRequest, ListGroupsResponse, ListSegmentsRequest, ListSegmentsResponse,
    ListSubscriptionsRequest, ListSubscriptionsResponse, ListTopicsRequest, ListTopicsResponse,
    NodeInfo, NodeKind, PartitionAssignment, PartitionDescription, PartitionRoute,
    RegisterGroupRequest, RegisterGroupResponse, RegisterNodeRequest, RegisterNodeResponse,
    SegmentInfo, SegmentReplica, SegmentState, Subscription, Topic, TopicConfig, TopicRoute,
    UpdateSegmentReplicasRequest, WatchRoutesRequest,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Longest accepted node address (`host:port`).
const MAX_ADDRESS_BYTES: usize = 255;
/// Messages buffered per `WatchRoutes` stream before the sender waits.
const WATCH_ROUTES_CHANNEL_CAPACITY: usize = 4;

/// Shared state of one nameserver; implements the gRPC service.
pub struct NameServerHandler {
    pub(crate) config: NameServerConfig,
    pub(crate) store: Arc<dyn MetadataStore>,
    /// When each node's load was last written, so heartbeats do not write
    /// etcd every time. One entry per registered node key.
    load_written_at: std::sync::Mutex<HashMap<String, Instant>>,
    watch_permits: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
    /// Wakes the reconciler early (after a topic is created).
    pub(crate) reconcile_now: Notify,
}

type ServiceResult<T> = Result<Response<T>, Status>;

pub(crate) fn invalid(message: impl Into<String>) -> NameServerError {
    NameServerError::InvalidArgument(message.into())
}

fn node_kind(value: i32) -> Result<NodeKind, NameServerError> {
    match NodeKind::try_from(value) {
        Ok(kind @ (NodeKind::Broker | NodeKind::Store)) => Ok(kind),
        _ => Err(invalid(format!("node kind {value} is not BROKER or STORE"))),
    }
}

fn validate_address(address: &str) -> Result<(), NameServerError> {
    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid(format!(
            "address must be 1 to {MAX_ADDRESS_BYTES} bytes of host:port"
        )));
    }
    let without_scheme = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let valid = without_scheme.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|port| port != 0)
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
            })
    });
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("address {address:?} is not host:port")))
    }
}

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
        Self {
            config,
            store,
            load_written_at: std::sync::Mutex::new(HashMap::new()),
            watch_permits: Arc::new(Semaphore::new(permits)),
            stopping,
            reconcile_now: Notify::new(),
        }
    }

    async fn get_topic(&self, name: &str) -> Result<(Topic, i64), NameServerError> {
        let key = keys::topic(name);
        let entry = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| NameServerError::UnknownTopic(name.to_string()))?;
        Ok((keys::decode(&key, &entry.value)?, entry.mod_revision))
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

    /// Every partition owner record, keyed by (topic, partition).
    async fn owners(&self) -> Result<HashMap<(String, u32), PartitionOwner>, NameServerError> {
        let mut owners = HashMap::new();
        for entry in self.store.range(keys::PARTITIONS).await? {
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

    fn route(
        partition: u32,
        owner: Option<&PartitionOwner>,
        brokers: &LiveBrokers,
    ) -> PartitionRoute {
        let mut route = PartitionRoute {
            partition,
            ..PartitionRoute::default()
        };
        if let Some(owner) = owner {
            route.epoch = owner.epoch;
            if let Some((session, address)) = brokers.get(&owner.broker_id) {
                if *session == owner.broker_session {
                    route.broker_id = owner.broker_id.clone();
                    route.broker_address = address.clone();
                }
            }
        }
        route
    }

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

    pub(crate) async fn compute_routes(
        &self,
        names: &[String],
    ) -> Result<GetRoutesResponse, NameServerError> {
        let topics: BTreeMap<String, Topic> = self
            .all_topics()
            .await?
            .into_iter()
            .map(|(topic, _)| (topic.name.clone(), topic))
            .collect();
        let owners = self.owners().await?;
        let brokers = self.live_brokers().await?;
        let wanted: Vec<String> = if names.is_empty() {
            topics
                .values()
                .filter(|topic| !topic.internal)
                .map(|topic| topic.name.clone())
                .collect()
        } else {
            names.to_vec()
        };
        let mut response = GetRoutesResponse::default();
        for name in wanted {
            let Some(topic) = topics.get(&name) else {
                let error = if lookup_topic_name(&name).is_err() {
                    ErrorCode::InvalidArgument
                } else {
                    ErrorCode::UnknownTopic
                };
                response.topics.push(TopicRoute {
                    topic: name,
                    partitions: Vec::new(),
                    error: error as i32,
                });
                continue;
            };
            let partitions = topic.config.as_ref().map_or(0, |config| config.partitions);
            let routes = (0..partitions)
                .map(|partition| {
                    Self::route(partition, owners.get(&(name.clone(), partition)), &brokers)
                })
                .collect();
            response.topics.push(TopicRoute {
                topic: name,
                partitions: routes,
                error: ErrorCode::None as i32,
            });
        }
        Ok(response)
    }

    /// Fills zero fields from the configured defaults and checks the result.
    fn complete_topic_config(
        &self,
        given: Option<TopicConfig>,
    ) -> Result<TopicConfig, NameServerError> {
        let given = given.unwrap_or_default();
        let defaults = &self.config.topic_defaults;
        if given.partitions == 0
            || given.partitions > sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC
        {
            return Err(invalid(format!(
                "partitions must be between 1 and {}, got {}",
                sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC,
                given.partitions
            )));
        }
        let mut config = defaults.topic_config(given.partitions);
        if given.retention_ms != 0 {
            config.retention_ms = given.retention_ms;
        }
        if given.retention_bytes != 0 {
            config.retention_bytes = given.retention_bytes;
        }
        match Durability::try_from(given.durability) {
            Ok(Durability::Unspecified) => {}
            Ok(durability) => config.durability = durability as i32,
            Err(_) => return Err(invalid(format!("unknown durability {}", given.durability))),
        }
        if given.segment_bytes != 0 {
            config.segment_bytes = given.segment_bytes;
        }
        if given.segment_ms != 0 {
            config.segment_ms = given.segment_ms;
        }
        if given.ensemble_size != 0 {
            config.ensemble_size = given.ensemble_size;
        }
        if given.write_quorum != 0 {
            config.write_quorum = given.write_quorum;
        }
        if given.ack_quorum != 0 {
            config.ack_quorum = given.ack_quorum;
        }
        if given.max_batch_bytes != 0 {
            config.max_batch_bytes = given.max_batch_bytes;
        }
        if given.message_ttl_ms > sluice_proto::headers::MAX_TTL_MS {
            return Err(invalid(format!(
                "message_ttl_ms {} exceeds the longest time-to-live, {} ms",
                given.message_ttl_ms,
                sluice_proto::headers::MAX_TTL_MS
            )));
        }
        config.message_ttl_ms = given.message_ttl_ms;
        config.retention_ignores_subscriptions = given.retention_ignores_subscriptions;
        if !(config.ensemble_size >= config.write_quorum
            && config.write_quorum >= config.ack_quorum
            && config.ack_quorum >= 1)
        {
            return Err(invalid(format!(
                "need ensemble_size >= write_quorum >= ack_quorum >= 1, got {}/{}/{}",
                config.ensemble_size, config.write_quorum, config.ack_quorum
            )));
        }
        // Every replica holds the whole segment (no striping), which keeps
        // each copy a prefix of the writer's log: what recovery relies on.
        if config.write_quorum != config.ensemble_size {
            return Err(invalid(format!(
                "write_quorum {} below ensemble_size {} (striping entries over the ensemble) \
                 is not supported yet; use write_quorum = ensemble_size",
                config.write_quorum, config.ensemble_size
            )));
        }
        complete_backlog_quota(&given, &mut config)?;
        let message_limit = u64::try_from(self.config.max_grpc_message_bytes).unwrap_or(u64::MAX);
        if u64::from(config.max_batch_bytes) > message_limit {
            return Err(invalid(format!(
                "max_batch_bytes {} exceeds the gRPC message limit {message_limit}",
                config.max_batch_bytes
            )));
        }
        Ok(config)
    }

    /// Writes the topic key; `Ok(false)` when the topic already exists.
    /// Owner keys are written only by the elected assigner's reconciler
    /// (fenced by its election), never here.
    async fn write_new_topic(&self, topic: &Topic) -> Result<bool, NameServerError> {
        let topic_key = keys::topic(&topic.name);
        if self.store.get(&topic_key).await?.is_some() {
            return Ok(false);
        }
        // Leftovers of an earlier topic of this name (a delete that failed
        // half-way) must not leak into the new one. The clean-up is
        // conditional on the topic still being absent: an unconditional
        // one racing with a concurrent creation on another nameserver could
        // delete the new topic's fresh owner keys, and the reconciler would
        // then hand out the same epoch a second time.
        if !self.delete_leftovers(&topic.name).await? {
            return Ok(false);
        }
        let transaction = Transaction {
            compares: vec![Compare::Absent(topic_key.clone())],
            puts: vec![Put::new(topic_key.clone(), keys::encode(topic))],
            deletes: Vec::new(),
        };
        match self.store.commit(transaction).await {
            Ok(created) => Ok(created),
            // Outcome unknown (etcd lost its leader while the request was in
            // flight): the topic is ours if the stored record is exactly the
            // one we wrote, so a retry does not turn into "already exists".
            Err(MetadataError::Unavailable(reason)) => match self.store.get(&topic_key).await? {
                Some(entry) => Ok(entry.value == keys::encode(topic)),
                None => Err(MetadataError::Unavailable(reason).into()),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes the owner, segment and subscription keys of topic `name`, in transactions
    /// of at most `max_transaction_operations` keys, each only while the
    /// topic key is absent. `Ok(false)` when the topic exists (again), so
    /// its keys are not leftovers.
    async fn delete_leftovers(&self, name: &str) -> Result<bool, NameServerError> {
        let topic_key = keys::topic(name);
        let chunk = usize::try_from(self.config.max_transaction_operations)
            .unwrap_or(usize::MAX)
            .max(1);
        for prefix in [
            keys::partitions_of(name),
            keys::segments_of_topic(name),
            keys::subscriptions_of(name),
        ] {
            let leftovers: Vec<String> = self
                .store
                .range(&prefix)
                .await?
                .into_iter()
                .map(|entry| entry.key)
                .collect();
            for keys in leftovers.chunks(chunk) {
                let transaction = Transaction {
                    compares: vec![Compare::Absent(topic_key.clone())],
                    puts: Vec::new(),
                    deletes: keys.to_vec(),
                };
                if !self.store.commit(transaction).await? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Creates `__consumer_offsets` when missing.
    pub(crate) async fn ensure_offsets_topic(&self) -> Result<(), NameServerError> {
        if self
            .store
            .get(&keys::topic(CONSUMER_OFFSETS_TOPIC))
            .await?
            .is_some()
        {
            return Ok(());
        }
        let topic = Topic {
            name: CONSUMER_OFFSETS_TOPIC.to_string(),
            config: Some(
                self.config
                    .topic_defaults
                    .topic_config(self.config.offsets_partitions.max(1)),
            ),
            created_at_ms: now_ms(),
            internal: true,
        };
        if self.write_new_topic(&topic).await? {
            tracing::info!(
                partitions = self.config.offsets_partitions,
                "created {CONSUMER_OFFSETS_TOPIC}"
            );
        }
        Ok(())
    }

    /// Reads the partition owner and checks the caller's epoch is current;
    /// returns the compare that pins that ownership in a transaction.
    async fn check_epoch(
        &self,
        topic: &str,
        partition: u32,
        epoch: u64,
    ) -> Result<(Topic, Compare), NameServerError> {
        lookup_topic_name(topic)?;
        let (topic_record, _) = self.get_topic(topic).await?;
        let partitions = topic_record.config.as_ref().map_or(0, |c| c.partitions);
        if partition >= partitions {
            return Err(NameServerError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            });
        }
        let key = keys::partition(topic, partition);
        let entry = self.store.get(&key).await?;
        let (current, compare) = match entry {
            Some(entry) => (
                keys::decode::<PartitionOwner>(&key, &entry.value)?.epoch,
                Compare::ModRevisionEquals(key, entry.mod_revision),
            ),
            None => (0, Compare::Absent(key)),
        };
        if current == 0 || current != epoch {
            return Err(NameServerError::Fenced {
                topic: topic.to_string(),
                partition,
                given: epoch,
                current,
            });
        }
        Ok((topic_record, compare))
    }

    /// After a failed ownership-pinned transaction: fenced if the epoch
    /// moved, otherwise a plain conflict.
    async fn explain_failed_commit(
        &self,
        topic: &str,
        partition: u32,
        epoch: u64,
    ) -> NameServerError {
        match self.check_epoch(topic, partition, epoch).await {
            Err(error) => error,
            Ok(_) => NameServerError::Conflict(format!(
                "metadata of {topic}/{partition} changed concurrently; retry"
            )),
        }
    }

    async fn allocate_segment_id(&self) -> Result<u64, NameServerError> {
        for _ in 0..self.config.max_cas_retries.max(1) {
            let entry = self.store.get(keys::SEGMENT_ID_COUNTER).await?;
            let (next, compare) = match entry {
                Some(entry) => (
                    keys::decode::<SegmentIdCounter>(keys::SEGMENT_ID_COUNTER, &entry.value)?
                        .next_segment_id
                        .max(1),
                    Compare::ModRevisionEquals(
                        keys::SEGMENT_ID_COUNTER.to_string(),
                        entry.mod_revision,
                    ),
                ),
                None => (1, Compare::Absent(keys::SEGMENT_ID_COUNTER.to_string())),
            };
            let following = SegmentIdCounter {
                next_segment_id: next + 1,
            };
            let transaction = Transaction {
                compares: vec![compare],
                puts: vec![Put::new(keys::SEGMENT_ID_COUNTER, keys::encode(&following))],
                deletes: Vec::new(),
            };
            if self.store.commit(transaction).await? {
                return Ok(next);
            }
        }
        Err(NameServerError::Conflict(format!(
            "segment id counter contended for {} attempts",
            self.config.max_cas_retries
        )))
    }

    fn should_write_load(&self, key: &str) -> bool {
        let interval = Duration::from_millis(self.config.load_update_interval_ms);
        let Ok(mut written) = self.load_written_at.lock() else {
            return false;
        };
        let now = Instant::now();
        match written.get(key) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                written.insert(key.to_string(), now);
                true
            }
        }
    }

    fn forget_load(&self, key: &str) {
        if let Ok(mut written) = self.load_written_at.lock() {
            written.remove(key);
        }
    }

    async fn do_register(
        &self,
        request: RegisterNodeRequest,
    ) -> Result<RegisterNodeResponse, NameServerError> {
        let kind = node_kind(request.kind)?;
        names::validate_node_id(&request.node_id).map_err(|error| invalid(error.to_string()))?;
        validate_address(&request.address)?;
        if request.rack.len() > sluice_proto::limits::MAX_NAME_BYTES {
            return Err(invalid("rack name too long"));
        }
        let lease = self.store.grant(self.config.lease_ttl_ms).await?;
        let key = keys::node(kind, &request.node_id);
        let previous = self.store.get(&key).await?;
        let info = NodeInfo {
            kind: kind as i32,
            node_id: request.node_id.clone(),
            address: request.address.clone(),
            session_id: lease as u64,
            load: request.load,
            lease_remaining_ms: 0,
            rack: request.rack,
        };
        self.store
            .put(&key, keys::encode(&info), Some(lease))
            .await?;
        if let Some(previous) = previous {
            if let Ok(old) = keys::decode::<NodeInfo>(&key, &previous.value) {
                if lease_of(old.session_id) != lease {
                    if let Err(error) = self.store.revoke(lease_of(old.session_id)).await {
                        tracing::warn!(%error, key, "could not revoke the previous session");
                    }
                }
            }
        }
        self.forget_load(&key);
        tracing::info!(key, session = lease, address = %request.address, "node registered");
        Ok(RegisterNodeResponse {
            session_id: lease as u64,
            lease_ttl_ms: self.config.lease_ttl_ms,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        })
    }

    async fn do_heartbeat(
        &self,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, NameServerError> {
        let kind = node_kind(request.kind)?;
        names::validate_node_id(&request.node_id).map_err(|error| invalid(error.to_string()))?;
        let session = request.session_id;
        match self.store.keep_alive(lease_of(session)).await {
            Ok(_) => {}
            Err(MetadataError::LeaseExpired(_)) => {
                return Err(NameServerError::SessionExpired(session))
            }
            Err(error) => return Err(error.into()),
        }
        let key = keys::node(kind, &request.node_id);
        let Some(entry) = self.store.get(&key).await? else {
            return Err(NameServerError::SessionExpired(session));
        };
        let mut info: NodeInfo = keys::decode(&key, &entry.value)?;
        if info.session_id != session {
            return Err(NameServerError::SessionExpired(session));
        }
        if let Some(load) = request.load {
            if info.load.as_ref() != Some(&load) && self.should_write_load(&key) {
                info.load = Some(load);
                let transaction = Transaction {
                    compares: vec![Compare::ModRevisionEquals(key.clone(), entry.mod_revision)],
                    puts: vec![Put {
                        key: key.clone(),
                        value: keys::encode(&info),
                        lease: Some(lease_of(session)),
                    }],
                    deletes: Vec::new(),
                };
                // Losing this race only delays a load report.
                if let Err(error) = self.store.commit(transaction).await {
                    tracing::debug!(%error, key, "load update failed");
                }
            }
        }
        let mut response = HeartbeatResponse::default();
        if kind == NodeKind::Broker {
            response.live_stores =
                u32::try_from(self.live_stores().await?.len()).unwrap_or(u32::MAX);
            let topics: HashMap<String, Topic> = self
                .all_topics()
                .await?
                .into_iter()
                .map(|(topic, _)| (topic.name.clone(), topic))
                .collect();
            let mut owned: Vec<((String, u32), PartitionOwner)> = self
                .owners()
                .await?
                .into_iter()
                .filter(|(_, owner)| {
                    owner.broker_id == request.node_id && owner.broker_session == session
                })
                .collect();
            owned.sort_by(|a, b| a.0.cmp(&b.0));
            for ((topic, partition), owner) in owned {
                let Some(record) = topics.get(&topic) else {
                    continue;
                };
                response.assignments.push(PartitionAssignment {
                    topic,
                    partition,
                    epoch: owner.epoch,
                    config: record.config,
                });
            }
        }
        Ok(response)
    }

    async fn do_deregister(&self, request: DeregisterNodeRequest) -> Result<(), NameServerError> {
        let kind = node_kind(request.kind)?;
        names::validate_node_id(&request.node_id).map_err(|error| invalid(error.to_string()))?;
        let key = keys::node(kind, &request.node_id);
        // Only the session that holds the key may end it.
        if let Some(entry) = self.store.get(&key).await? {
            let info: NodeInfo = keys::decode(&key, &entry.value)?;
            if info.session_id == request.session_id {
                self.store.revoke(lease_of(request.session_id)).await?;
                self.forget_load(&key);
                tracing::info!(key, "node deregistered");
            }
        }
        Ok(())
    }

    pub(crate) async fn do_create_topic(
        &self,
        request: CreateTopicRequest,
    ) -> Result<Topic, NameServerError> {
        let name = TopicName::new(&request.name).map_err(|error| invalid(error.to_string()))?;
        let config = self.complete_topic_config(request.config)?;
        placement::check_ensemble_fits(config.ensemble_size, self.live_stores().await?.len())?;
        let topic = Topic {
            name: name.as_str().to_string(),
            config: Some(config),
            created_at_ms: now_ms(),
            internal: false,
        };
        if !self.write_new_topic(&topic).await? {
            return Err(NameServerError::TopicAlreadyExists(topic.name));
        }
        tracing::info!(topic = %topic.name, "topic created");
        self.reconcile_now.notify_one();
        Ok(topic)
    }

    async fn segments_of(&self, prefix: &str) -> Result<Vec<SegmentInfo>, NameServerError> {
        let mut segments = Vec::new();
        for KeyValue { key, value, .. } in self.store.range(prefix).await? {
            match keys::decode::<SegmentInfo>(&key, &value) {
                Ok(segment) => segments.push(segment),
                Err(error) => tracing::warn!(%error, "skipping undecodable segment"),
            }
        }
        segments
            .sort_by_key(|segment| (segment.partition, segment.base_offset, segment.segment_id));
        Ok(segments)
    }

    async fn do_describe_topic(
        &self,
        name: &str,
    ) -> Result<DescribeTopicResponse, NameServerError> {
        lookup_topic_name(name)?;
        let (topic, _) = self.get_topic(name).await?;
        let routes = self.compute_routes(&[name.to_string()]).await?;
        let segments = self.segments_of(&keys::segments_of_topic(name)).await?;
        let mut by_partition: BTreeMap<u32, Vec<SegmentInfo>> = BTreeMap::new();
        for segment in segments {
            by_partition
                .entry(segment.partition)
                .or_default()
                .push(segment);
        }
        let partitions = routes
            .topics
            .into_iter()
            .flat_map(|route| route.partitions)
            .map(|route| PartitionDescription {
                segments: by_partition.remove(&route.partition).unwrap_or_default(),
                route: Some(route),
            })
            .collect();
        Ok(DescribeTopicResponse {
            topic: Some(topic),
            partitions,
        })
    }

    async fn do_delete_topic(&self, name: &str) -> Result<(), NameServerError> {
        lookup_topic_name(name)?;
        let (topic, revision) = self.get_topic(name).await?;
        if topic.internal || name.starts_with("__") {
            return Err(NameServerError::Refused(format!(
                "{name} is an internal topic and cannot be deleted"
            )));
        }
        let key = keys::topic(name);
        let transaction = Transaction {
            compares: vec![Compare::ModRevisionEquals(key.clone(), revision)],
            puts: Vec::new(),
            deletes: vec![key],
        };
        if !self.store.commit(transaction).await? {
            return Err(NameServerError::Conflict(format!(
                "topic {name} changed while being deleted; retry"
            )));
        }
        // Conditional like the clean-up before a creation: if the topic is
        // created again meanwhile, its keys are kept.
        if !self.delete_leftovers(name).await? {
            tracing::info!(topic = name, "topic re-created while its keys were deleted");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    async fn do_create_segment(
        &self,
        request: CreateSegmentRequest,
    ) -> Result<SegmentInfo, NameServerError> {
        let (topic, ownership) = self
            .check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        let stores = placement::choose_ensemble(
            self.live_stores().await?,
            &request.exclude_store_ids,
            EnsembleShape::of(topic.config.as_ref()),
        )?;
        let segment_id = self.allocate_segment_id().await?;
        let segment = SegmentInfo {
            segment_id,
            topic: request.topic.clone(),
            partition: request.partition,
            state: SegmentState::Open as i32,
            base_offset: request.base_offset,
            end_offset: request.base_offset,
            size_bytes: 0,
            max_timestamp_ms: 0,
            replicas: stores
                .into_iter()
                .map(|store| SegmentReplica {
                    store_id: store.node_id,
                    address: store.address,
                })
                .collect(),
            writer_epoch: request.epoch,
            created_at_ms: now_ms(),
        };
        let key = keys::segment(&request.topic, request.partition, segment_id);
        let transaction = Transaction {
            compares: vec![ownership, Compare::Absent(key.clone())],
            puts: vec![Put::new(key, keys::encode(&segment))],
            deletes: Vec::new(),
        };
        if !self.store.commit(transaction).await? {
            return Err(self
                .explain_failed_commit(&request.topic, request.partition, request.epoch)
                .await);
        }
        tracing::info!(
            topic = %request.topic,
            partition = request.partition,
            segment_id,
            base_offset = request.base_offset,
            "segment created"
        );
        Ok(segment)
    }

    async fn do_close_segment(
        &self,
        request: CloseSegmentRequest,
    ) -> Result<SegmentInfo, NameServerError> {
        let (_, ownership) = self
            .check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        let key = keys::segment(&request.topic, request.partition, request.segment_id);
        let unknown = || NameServerError::UnknownSegment {
            topic: request.topic.clone(),
            partition: request.partition,
            segment_id: request.segment_id,
        };
        let entry = self.store.get(&key).await?.ok_or_else(unknown)?;
        let mut segment: SegmentInfo = keys::decode(&key, &entry.value)?;
        if request.end_offset < segment.base_offset {
            return Err(invalid(format!(
                "end offset {} is before the segment's base offset {}",
                request.end_offset, segment.base_offset
            )));
        }
        if segment.state == SegmentState::Closed as i32 {
            if segment.end_offset == request.end_offset {
                return Ok(segment);
            }
            return Err(NameServerError::Conflict(format!(
                "segment {} is already closed at {}",
                request.segment_id, segment.end_offset
            )));
        }
        segment.state = SegmentState::Closed as i32;
        segment.end_offset = request.end_offset;
        segment.size_bytes = request.size_bytes;
        segment.max_timestamp_ms = request.max_timestamp_ms;
        let transaction = Transaction {
            compares: vec![
                ownership,
                Compare::ModRevisionEquals(key.clone(), entry.mod_revision),
            ],
            puts: vec![Put::new(key, keys::encode(&segment))],
            deletes: Vec::new(),
        };
        if !self.store.commit(transaction).await? {
            return Err(self
                .explain_failed_commit(&request.topic, request.partition, request.epoch)
                .await);
        }
        Ok(segment)
    }

    async fn do_update_segment_replicas(
        &self,
        request: UpdateSegmentReplicasRequest,
    ) -> Result<SegmentInfo, NameServerError> {
        let (_, ownership) = self
            .check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        if request.replicas.is_empty() {
            return Err(invalid("a segment needs at least one replica".to_string()));
        }
        let mut seen = HashSet::new();
        for replica in &request.replicas {
            names::validate_node_id(&replica.store_id)
                .map_err(|error| invalid(error.to_string()))?;
            if !seen.insert(replica.store_id.as_str()) {
                return Err(invalid(format!(
                    "store {} listed twice as a replica",
                    replica.store_id
                )));
            }
        }
        let key = keys::segment(&request.topic, request.partition, request.segment_id);
        let entry = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| NameServerError::UnknownSegment {
                topic: request.topic.clone(),
                partition: request.partition,
                segment_id: request.segment_id,
            })?;
        let mut segment: SegmentInfo = keys::decode(&key, &entry.value)?;
        if segment.state != SegmentState::Closed as i32 {
            return Err(NameServerError::Conflict(format!(
                "segment {} is open; only closed segments are repaired",
                request.segment_id
            )));
        }
        segment.replicas = request.replicas;
        let transaction = Transaction {
            compares: vec![
                ownership,
                Compare::ModRevisionEquals(key.clone(), entry.mod_revision),
            ],
            puts: vec![Put::new(key, keys::encode(&segment))],
            deletes: Vec::new(),
        };
        if !self.store.commit(transaction).await? {
            return Err(self
                .explain_failed_commit(&request.topic, request.partition, request.epoch)
                .await);
        }
        tracing::info!(topic = %request.topic, partition = request.partition, segment_id = request.segment_id, replicas = ?segment.replicas.iter().map(|replica| &replica.store_id).collect::<Vec<_>>(), "segment replicas updated by repair");
        Ok(segment)
    }

    async fn do_delete_segments(
        &self,
        request: DeleteSegmentsRequest,
    ) -> Result<(), NameServerError> {
        let limit = self.config.max_segments_per_delete;
        if request.segment_ids.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(invalid(format!(
                "{} segments in one request; the limit is {limit}",
                request.segment_ids.len()
            )));
        }
        let (_, ownership) = self
            .check_epoch(&request.topic, request.partition, request.epoch)
            .await?;
        let transaction = Transaction {
            compares: vec![ownership],
            puts: Vec::new(),
            deletes: request
                .segment_ids
                .iter()
                .map(|id| keys::segment(&request.topic, request.partition, *id))
                .collect(),
        };
        if !self.store.commit(transaction).await? {
            return Err(self
                .explain_failed_commit(&request.topic, request.partition, request.epoch)
                .await);
        }
        Ok(())
    }

    async fn do_find_coordinator(
        &self,
        group: &str,
    ) -> Result<FindCoordinatorResponse, NameServerError> {
        GroupName::new(group).map_err(|error| invalid(error.to_string()))?;
        let (topic, _) =
            self.get_topic(CONSUMER_OFFSETS_TOPIC)
                .await
                .map_err(|error| match error {
                    NameServerError::UnknownTopic(_) => {
                        NameServerError::Metadata(MetadataError::Unavailable(format!(
                            "{CONSUMER_OFFSETS_TOPIC} is not created yet"
                        )))
                    }
                    other => other,
                })?;
        let partitions = topic.config.as_ref().map_or(0, |config| config.partitions);
        if partitions == 0 {
            return Err(NameServerError::CorruptValue {
                key: keys::topic(CONSUMER_OFFSETS_TOPIC),
                reason: "zero partitions".to_string(),
            });
        }
        let partition = sluice_proto::partitioning::offsets_partition_for_group(group, partitions);
        let key = keys::partition(CONSUMER_OFFSETS_TOPIC, partition);
        let owner = match self.store.get(&key).await? {
            Some(entry) => Some(keys::decode::<PartitionOwner>(&key, &entry.value)?),
            None => None,
        };
        let brokers = self.live_brokers().await?;
        let route = Self::route(partition, owner.as_ref(), &brokers);
        Ok(FindCoordinatorResponse {
            broker_id: route.broker_id,
            broker_address: route.broker_address,
            offsets_partition: partition,
        })
    }

    async fn do_register_group(&self, group: &str) -> Result<(), NameServerError> {
        GroupName::new(group).map_err(|error| invalid(error.to_string()))?;
        let key = keys::group(group);
        let listing = GroupListing {
            group: group.to_string(),
            created_at_ms: now_ms(),
        };
        // Absent compare: registering twice keeps the first creation time.
        self.store
            .commit(Transaction {
                compares: vec![Compare::Absent(key.clone())],
                puts: vec![Put::new(key, keys::encode(&listing))],
                deletes: Vec::new(),
            })
            .await?;
        Ok(())
    }

    async fn do_list_groups(&self) -> Result<ListGroupsResponse, NameServerError> {
        let mut groups = Vec::new();
        for entry in self.store.range(keys::GROUPS).await? {
            match keys::decode::<GroupListing>(&entry.key, &entry.value) {
                Ok(listing) => groups.push(listing),
                Err(error) => tracing::warn!(%error, "skipping undecodable group"),
            }
        }
        Ok(ListGroupsResponse { groups })
    }

    async fn nodes_with_ttl(&self, kind: NodeKind) -> Result<Vec<NodeInfo>, NameServerError> {
        let mut nodes = Vec::new();
        for entry in self.store.range(&keys::nodes_of_kind(kind)).await? {
            let Ok(mut info) = keys::decode::<NodeInfo>(&entry.key, &entry.value) else {
                continue;
            };
            info.lease_remaining_ms =
                match self.store.time_to_live(lease_of(info.session_id)).await? {
                    Some(remaining) => i64::try_from(remaining).unwrap_or(i64::MAX),
                    None => -1,
                };
            nodes.push(info);
        }
        Ok(nodes)
    }

    async fn do_cluster_status(&self) -> Result<ClusterStatusResponse, NameServerError> {
        let nameservers = self.nodes_with_ttl(NodeKind::Nameserver).await?;
        let brokers = self.nodes_with_ttl(NodeKind::Broker).await?;
        let stores = self.nodes_with_ttl(NodeKind::Store).await?;
        let topics = self.all_topics().await?;
        let mut partitions = 0u32;
        let mut offline = 0u32;
        let all_names: Vec<String> = topics.iter().map(|(topic, _)| topic.name.clone()).collect();
        let all_routes = if all_names.is_empty() {
            GetRoutesResponse::default()
        } else {
            self.compute_routes(&all_names).await?
        };
        for topic in &all_routes.topics {
            for route in &topic.partitions {
                partitions += 1;
                if route.broker_id.is_empty() {
                    offline += 1;
                }
            }
        }
        let live_stores: HashSet<&str> =
            stores.iter().map(|store| store.node_id.as_str()).collect();
        let mut segment_count = 0u32;
        let mut under_replicated = 0u32;
        for (topic, _) in &topics {
            let ensemble_size = topic
                .config
                .as_ref()
                .map_or(1, |config| config.ensemble_size.max(1))
                as usize;
            for segment in self
                .segments_of(&keys::segments_of_topic(&topic.name))
                .await?
            {
                segment_count = segment_count.saturating_add(1);
                let usable = segment
                    .replicas
                    .iter()
                    .filter(|replica| live_stores.contains(replica.store_id.as_str()))
                    .count();
                if usable < ensemble_size {
                    under_replicated = under_replicated.saturating_add(1);
                }
            }
        }
        Ok(ClusterStatusResponse {
            under_replicated_segments: under_replicated,
            segments: segment_count,
            nameservers,
            brokers,
            stores,
            topics: u32::try_from(topics.len()).unwrap_or(u32::MAX),
            partitions,
            offline_partitions: offline,
            metadata_backend: self.store.backend_name().to_string(),
            active_assigner: crate::election::active_assigner(self.store.as_ref())
                .await?
                .unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl NameServer for NameServerHandler {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> ServiceResult<RegisterNodeResponse> {
        Ok(Response::new(self.do_register(request.into_inner()).await?))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> ServiceResult<HeartbeatResponse> {
        Ok(Response::new(
            self.do_heartbeat(request.into_inner()).await?,
        ))
    }

    async fn deregister_node(
        &self,
        request: Request<DeregisterNodeRequest>,
    ) -> ServiceResult<DeregisterNodeResponse> {
        self.do_deregister(request.into_inner()).await?;
        Ok(Response::new(DeregisterNodeResponse {}))
    }

    async fn create_topic(&self, request: Request<CreateTopicRequest>) -> ServiceResult<Topic> {
        Ok(Response::new(
            self.do_create_topic(request.into_inner()).await?,
        ))
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> ServiceResult<ListTopicsResponse> {
        let include_internal = request.into_inner().include_internal;
        let topics = self
            .all_topics()
            .await?
            .into_iter()
            .map(|(topic, _)| topic)
            .filter(|topic| include_internal || !topic.internal)
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> ServiceResult<DescribeTopicResponse> {
        Ok(Response::new(
            self.do_describe_topic(&request.into_inner().name).await?,
        ))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> ServiceResult<DeleteTopicResponse> {
        self.do_delete_topic(&request.into_inner().name).await?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn get_routes(
        &self,
        request: Request<GetRoutesRequest>,
    ) -> ServiceResult<GetRoutesResponse> {
        Ok(Response::new(
            self.compute_routes(&request.into_inner().topics).await?,
        ))
    }

    type WatchRoutesStream = ReceiverStream<Result<GetRoutesResponse, Status>>;

    async fn watch_routes(
        &self,
        request: Request<WatchRoutesRequest>,
    ) -> ServiceResult<Self::WatchRoutesStream> {
        let permit = self
            .watch_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| NameServerError::Throttled {
                what: "route watches",
                limit: self.config.max_route_watches,
            })?;
        let topics = request.into_inner().topics;
        let first = self.compute_routes(&topics).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_ROUTES_CHANNEL_CAPACITY);
        let handler = WatchContext {
            store: self.store.clone(),
            config: self.config.clone(),
            stopping: self.stopping.clone(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            handler.run(topics, first, sender).await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn find_coordinator(
        &self,
        request: Request<FindCoordinatorRequest>,
    ) -> ServiceResult<FindCoordinatorResponse> {
        Ok(Response::new(
            self.do_find_coordinator(&request.into_inner().group)
                .await?,
        ))
    }

    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> ServiceResult<ListSegmentsResponse> {
        let request = request.into_inner();
        lookup_topic_name(&request.topic)?;
        self.get_topic(&request.topic).await?;
        let segments = self
            .segments_of(&keys::segments_of(&request.topic, request.partition))
            .await?;
        Ok(Response::new(ListSegmentsResponse { segments }))
    }

    async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> ServiceResult<SegmentInfo> {
        Ok(Response::new(
            self.do_create_segment(request.into_inner()).await?,
        ))
    }

    async fn close_segment(
        &self,
        request: Request<CloseSegmentRequest>,
    ) -> ServiceResult<SegmentInfo> {
        Ok(Response::new(
            self.do_close_segment(request.into_inner()).await?,
        ))
    }

    async fn update_segment_replicas(
        &self,
        request: Request<UpdateSegmentReplicasRequest>,
    ) -> ServiceResult<SegmentInfo> {
        Ok(Response::new(
            self.do_update_segment_replicas(request.into_inner())
                .await?,
        ))
    }

    async fn delete_segments(
        &self,
        request: Request<DeleteSegmentsRequest>,
    ) -> ServiceResult<DeleteSegmentsResponse> {
        self.do_delete_segments(request.into_inner()).await?;
        Ok(Response::new(DeleteSegmentsResponse {}))
    }

    async fn register_group(
        &self,
        request: Request<RegisterGroupRequest>,
    ) -> ServiceResult<RegisterGroupResponse> {
        self.do_register_group(&request.into_inner().group).await?;
        Ok(Response::new(RegisterGroupResponse {}))
    }

    async fn list_groups(
        &self,
        _request: Request<ListGroupsRequest>,
    ) -> ServiceResult<ListGroupsResponse> {
        Ok(Response::new(self.do_list_groups().await?))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> ServiceResult<ClusterStatusResponse> {
        Ok(Response::new(self.do_cluster_status().await?))
    }

    async fn allocate_producer_id(
        &self,
        _request: Request<sluice_proto::v1::AllocateProducerIdRequest>,
    ) -> ServiceResult<sluice_proto::v1::AllocateProducerIdResponse> {
        Ok(Response::new(
            sluice_proto::v1::AllocateProducerIdResponse {
                producer_id: self.do_allocate_producer_id().await?,
            },
        ))
    }

    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> ServiceResult<Subscription> {
        Ok(Response::new(
            self.do_create_subscription(request.into_inner().subscription)
                .await?,
        ))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> ServiceResult<Subscription> {
        let request = request.into_inner();
        Ok(Response::new(
            self.do_get_subscription(&request.topic, &request.name)
                .await?,
        ))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> ServiceResult<ListSubscriptionsResponse> {
        let subscriptions = self
            .do_list_subscriptions(&request.into_inner().topic)
            .await?;
        Ok(Response::new(ListSubscriptionsResponse { subscriptions }))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> ServiceResult<DeleteSubscriptionResponse> {
        let request = request.into_inner();
        self.do_delete_subscription(&request.topic, &request.name)
            .await?;
        Ok(Response::new(DeleteSubscriptionResponse {}))
    }
}

impl NameServerHandler {
    /// Hands out the next producer id: a compare-and-set increment of
    /// `counters/producer_id`, so concurrent nameservers never give out the
    /// same id and an id is never reused (a restarted producer gets a new
    /// one, and brokers never confuse its sequences with the old ones).
    async fn do_allocate_producer_id(&self) -> Result<u64, NameServerError> {
        let key = keys::PRODUCER_ID_COUNTER;
        for attempt in 0..self.config.max_cas_retries.max(1) {
            if attempt > 0 {
                // Producers starting together all race for this one key;
                // a short random pause spreads the retries out.
                let pause_ms = rand::random_range(0..=u64::from(attempt).min(20) * 2);
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            let entry = self.store.get(key).await?;
            let (next, compare) = match entry {
                Some(entry) => (
                    keys::decode::<keys::ProducerIdCounter>(key, &entry.value)?.next_producer_id,
                    Compare::ModRevisionEquals(key.to_string(), entry.mod_revision),
                ),
                None => (0, Compare::Absent(key.to_string())),
            };
            // Record batches carry the id as a signed 64-bit field.
            if next >= i64::MAX as u64 {
                return Err(NameServerError::Refused(
                    "producer ids are exhausted".to_string(),
                ));
            }
            let following = keys::ProducerIdCounter {
                next_producer_id: next + 1,
            };
            let transaction = Transaction {
                compares: vec![compare],
                puts: vec![Put::new(key, keys::encode(&following))],
                deletes: Vec::new(),
            };
            if self.store.commit(transaction).await? {
                return Ok(next);
            }
        }
        Err(NameServerError::Conflict(format!(
            "producer id counter contended for {} attempts",
            self.config.max_cas_retries
        )))
    }
}

/// What a `WatchRoutes` task needs; it re-reads routes through a
/// short-lived handler so it shares no locks with the service.
struct WatchContext {
    store: Arc<dyn MetadataStore>,
    config: NameServerConfig,
    stopping: watch::Receiver<bool>,
}

impl WatchContext {
    async fn run(
        mut self,
        topics: Vec<String>,
        first: GetRoutesResponse,
        sender: tokio::sync::mpsc::Sender<Result<GetRoutesResponse, Status>>,
    ) {
        let interval = Duration::from_millis(self.config.watch_routes_interval_ms.max(10));
        let reader = NameServerHandler::new(
            self.config.clone(),
            self.store.clone(),
            self.stopping.clone(),
        );
        let mut last = first.clone();
        if sender.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.stopping.wait_for(|stopping| *stopping) => return,
                _ = sender.closed() => return,
            }
            match reader.compute_routes(&topics).await {
                Ok(routes) if routes != last => {
                    last = routes.clone();
                    if sender.send(Ok(routes)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // A metadata hiccup ends nothing: the next poll may succeed.
                Err(error) => tracing::debug!(%error, "route watch poll failed"),
            }
        }
    }
}

/// Default warning line of a backlog quota, in percent (ADR 0012).
const DEFAULT_BACKLOG_WARN_RATIO_PERCENT: u32 = 80;
/// Default and largest time a HOLD policy holds a batch (ADR 0012).
const DEFAULT_BACKLOG_HOLD_TIMEOUT_MS: u64 = 30_000;
const MAX_BACKLOG_HOLD_TIMEOUT_MS: u64 = 600_000;

/// Copies the backlog quota settings (ADR 0012) from `given`, filling
/// defaults and refusing impossible values.
fn complete_backlog_quota(
    given: &TopicConfig,
    config: &mut TopicConfig,
) -> Result<(), NameServerError> {
    config.backlog_quota_bytes = given.backlog_quota_bytes;
    config.backlog_quota_messages = given.backlog_quota_messages;
    config.backlog_quota_age_ms = given.backlog_quota_age_ms;
    config.backlog_warn_ratio_percent = match given.backlog_warn_ratio_percent {
        0 => DEFAULT_BACKLOG_WARN_RATIO_PERCENT,
        ratio @ 1..=100 => ratio,
        ratio => {
            return Err(invalid(format!(
                "backlog_warn_ratio_percent must be between 1 and 100, got {ratio}"
            )))
        }
    };
    config.backlog_policy = match sluice_proto::v1::BacklogPolicy::try_from(given.backlog_policy) {
        Ok(sluice_proto::v1::BacklogPolicy::Unspecified) => {
            sluice_proto::v1::BacklogPolicy::Hold as i32
        }
        Ok(policy) => policy as i32,
        Err(_) => {
            return Err(invalid(format!(
                "unknown backlog policy {}",
                given.backlog_policy
            )))
        }
    };
    config.backlog_hold_timeout_ms = match given.backlog_hold_timeout_ms {
        0 => DEFAULT_BACKLOG_HOLD_TIMEOUT_MS,
        timeout @ 1..=MAX_BACKLOG_HOLD_TIMEOUT_MS => timeout,
        timeout => {
            let most = MAX_BACKLOG_HOLD_TIMEOUT_MS;
            return Err(invalid(format!(
                "backlog_hold_timeout_ms must be at most {most}, got {timeout}"
            )));
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_quotas_get_defaults_and_impossible_values_are_refused() {
        let mut config = TopicConfig::default();
        let given = TopicConfig {
            backlog_quota_messages: 1000,
            ..TopicConfig::default()
        };
        complete_backlog_quota(&given, &mut config).expect("valid");
        assert_eq!(config.backlog_quota_messages, 1000);
        assert_eq!(config.backlog_warn_ratio_percent, 80);
        assert_eq!(
            config.backlog_policy,
            sluice_proto::v1::BacklogPolicy::Hold as i32
        );
        assert_eq!(config.backlog_hold_timeout_ms, 30_000);
        for bad in [
            TopicConfig {
                backlog_warn_ratio_percent: 101,
                ..TopicConfig::default()
            },
            TopicConfig {
                backlog_policy: 99,
                ..TopicConfig::default()
            },
            TopicConfig {
                backlog_hold_timeout_ms: 600_001,
                ..TopicConfig::default()
            },
        ] {
            let refused = complete_backlog_quota(&bad, &mut config);
            assert!(
                matches!(refused, Err(NameServerError::InvalidArgument(_))),
                "{bad:?} gave {refused:?}"
            );
        }
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        for good in [
            "127.0.0.1:7401",
            "broker-1.internal:80",
            "http://h:1",
            "[::1]:7401",
        ] {
            assert!(validate_address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:99999",
            "a b:1",
            "h/x:1",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
    }
}
