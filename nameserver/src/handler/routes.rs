//! Routes: which live broker serves each partition (at which epoch),
//! polled by `GetRoutes`, streamed on change by `WatchRoutes`, and the
//! coordinator lookup (the broker owning a group's offsets partition).

use super::{invalid, lookup_topic_name, LiveBrokers, NameServerHandler, OwnerMap};
use crate::assignment_index::AssignmentIndex;
use crate::config::NameServerConfig;
use crate::error::NameServerError;
use crate::keys::{self, PartitionOwner};
use crate::metadata::{MetadataError, MetadataStore};
use sluice_proto::names::{
    GroupName, TransactionalId, CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC,
};
use sluice_proto::v1::{
    CoordinatorKind, ErrorCode, FindCoordinatorRequest, FindCoordinatorResponse, GetRoutesResponse,
    PartitionRoute, Topic, TopicRoute,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Most topics whose routes are read key by key rather than with one scan
/// of every topic and owner record.
const TARGETED_ROUTE_READS_MAX_TOPICS: usize = 8;

/// Messages buffered per `WatchRoutes` stream before the sender waits.
const WATCH_ROUTES_CHANNEL_CAPACITY: usize = 4;

/// The stream a `WatchRoutes` call answers with.
pub(crate) type RouteStream = ReceiverStream<Result<GetRoutesResponse, Status>>;

/// The route of `partition`: its epoch, and its broker only while that
/// broker is live in the session the owner record names.
fn route(partition: u32, owner: Option<&PartitionOwner>, brokers: &LiveBrokers) -> PartitionRoute {
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

impl NameServerHandler {
    /// Routes of `names` (every non-internal topic when empty); a name that
    /// is unknown or invalid gets an error entry instead of partitions.
    /// A few names are read key by key (a route watch polls its topics
    /// every `watch_routes_interval_ms`; with 10,000 topics a full scan per
    /// poll reads every topic and owner record); more are read in one scan.
    pub(crate) async fn compute_routes(
        &self,
        names: &[String],
    ) -> Result<GetRoutesResponse, NameServerError> {
        if !names.is_empty() && names.len() <= TARGETED_ROUTE_READS_MAX_TOPICS {
            let (topics, owners) = self.read_named_topics(names).await?;
            return self.routes_from(&topics, owners, names).await;
        }
        let topics: BTreeMap<String, Topic> = self
            .all_topics()
            .await?
            .into_iter()
            .map(|(topic, _)| (topic.name.clone(), topic))
            .collect();
        let owners = self.owners(keys::PARTITIONS).await?;
        self.routes_from(&topics, owners, names).await
    }

    /// The records of the topics `names` that exist, and their owners.
    async fn read_named_topics(
        &self,
        names: &[String],
    ) -> Result<(BTreeMap<String, Topic>, OwnerMap), NameServerError> {
        let mut topics = BTreeMap::new();
        let mut owners = OwnerMap::new();
        for name in names {
            if lookup_topic_name(name).is_err() || topics.contains_key(name) {
                continue;
            }
            let key = keys::topic(name);
            let Some(entry) = self.store.get(&key).await? else {
                continue;
            };
            match keys::decode::<Topic>(&key, &entry.value) {
                Ok(topic) => {
                    topics.insert(name.clone(), topic);
                    owners.extend(self.owners(&keys::partitions_of(name)).await?);
                }
                Err(error) => tracing::warn!(%error, "skipping undecodable topic"),
            }
        }
        Ok((topics, owners))
    }

    /// Routes of `names` (every non-internal topic of `topics` when empty)
    /// from records already read.
    pub(crate) async fn routes_from(
        &self,
        topics: &BTreeMap<String, Topic>,
        owners: OwnerMap,
        names: &[String],
    ) -> Result<GetRoutesResponse, NameServerError> {
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
        let wanted_count = wanted.len();
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
                .map(|partition| route(partition, owners.get(&(name.clone(), partition)), &brokers))
                .collect();
            response.topics.push(TopicRoute {
                topic: name,
                partitions: routes,
                error: ErrorCode::None as i32,
            });
        }
        // One entry per wanted name (unknown ones with their error).
        debug_assert_eq!(response.topics.len(), wanted_count);
        Ok(response)
    }

    /// Starts a route watch on `topics`: the current routes first, then
    /// every change: re-read when the metadata watch reports an owner or
    /// topic change, and polled every `watch_routes_interval_ms` as the
    /// backstop (a broker's address or liveness). At most
    /// `max_route_watches` at once.
    pub(crate) async fn do_watch_routes(
        &self,
        topics: Vec<String>,
    ) -> Result<RouteStream, NameServerError> {
        let permit = self
            .watch_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| NameServerError::Throttled {
                what: "route watches",
                limit: self.config.max_route_watches,
            })?;
        let first = self.compute_routes(&topics).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_ROUTES_CHANNEL_CAPACITY);
        let watcher = WatchContext {
            store: self.store.clone(),
            config: self.config.clone(),
            stopping: self.stopping.clone(),
            assignments: self.assignment_index.subscribe(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            watcher.run(topics, first, sender).await;
        });
        Ok(ReceiverStream::new(receiver))
    }

    /// The broker coordinating `group`: the owner of its offsets partition
    /// (empty while that partition is offline).
    pub(crate) async fn do_find_coordinator(
        &self,
        request: &FindCoordinatorRequest,
    ) -> Result<FindCoordinatorResponse, NameServerError> {
        let (topic_name, key) = match CoordinatorKind::try_from(request.kind) {
            Ok(CoordinatorKind::Group) => {
                GroupName::new(&request.group).map_err(|error| invalid(error.to_string()))?;
                (CONSUMER_OFFSETS_TOPIC, request.group.as_str())
            }
            Ok(CoordinatorKind::Transaction) => {
                TransactionalId::new(&request.key).map_err(|error| invalid(error.to_string()))?;
                (TRANSACTION_STATE_TOPIC, request.key.as_str())
            }
            Err(_) => {
                return Err(invalid(format!(
                    "unknown coordinator kind {}",
                    request.kind
                )))
            }
        };
        let (topic, _) = self
            .get_topic(topic_name)
            .await
            .map_err(|error| match error {
                NameServerError::UnknownTopic(_) => NameServerError::Metadata(
                    MetadataError::Unavailable(format!("{topic_name} is not created yet")),
                ),
                other => other,
            })?;
        let partitions = topic.config.as_ref().map_or(0, |config| config.partitions);
        if partitions == 0 {
            return Err(NameServerError::CorruptValue {
                key: keys::topic(topic_name),
                reason: "zero partitions".to_string(),
            });
        }
        let partition = sluice_proto::partitioning::offsets_partition_for_group(key, partitions);
        let owner_key = keys::partition(topic_name, partition);
        let owner = match self.store.get(&owner_key).await? {
            Some(entry) => Some(keys::decode::<PartitionOwner>(&owner_key, &entry.value)?),
            None => None,
        };
        let brokers = self.live_brokers().await?;
        let route = route(partition, owner.as_ref(), &brokers);
        Ok(FindCoordinatorResponse {
            broker_id: route.broker_id,
            broker_address: route.broker_address,
            offsets_partition: partition,
        })
    }
}

/// What a `WatchRoutes` task needs; it re-reads routes through a
/// short-lived handler so it shares no locks with the service.
struct WatchContext {
    store: Arc<dyn MetadataStore>,
    config: NameServerConfig,
    stopping: watch::Receiver<bool>,
    /// Changes when the metadata watch saw owners or topics change
    /// (ADR 0014): routes are re-read at once, not at the next poll.
    assignments: watch::Receiver<Option<Arc<AssignmentIndex>>>,
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
            let stop = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                changed = self.assignments.changed() => changed.is_err(),
                _ = self.stopping.wait_for(|stopping| *stopping) => true,
                _ = sender.closed() => true,
            };
            if stop {
                return;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(broker: &str, session: u64, epoch: u64) -> PartitionOwner {
        PartitionOwner {
            broker_id: broker.to_string(),
            broker_session: session,
            epoch,
        }
    }

    #[test]
    fn a_route_names_its_broker_only_while_the_owning_session_is_live() {
        let brokers: LiveBrokers = [("b1".to_string(), (7, "h:1".to_string()))]
            .into_iter()
            .collect();
        let live = route(3, Some(&owner("b1", 7, 4)), &brokers);
        assert_eq!(
            (
                live.partition,
                live.epoch,
                live.broker_id.as_str(),
                live.broker_address.as_str()
            ),
            (3, 4, "b1", "h:1")
        );
        // The broker restarted (new session) or is gone: offline, epoch kept.
        for stale in [owner("b1", 6, 4), owner("b2", 7, 4)] {
            let offline = route(3, Some(&stale), &brokers);
            assert_eq!(offline.epoch, 4);
            assert!(offline.broker_id.is_empty() && offline.broker_address.is_empty());
        }
        // Never assigned: offline at epoch 0.
        assert_eq!(route(3, None, &brokers).epoch, 0);
    }
}
