//! [`Admin`]: topic, subscription, group and cluster administration.

use crate::cluster::Cluster;
use crate::ClientConfig;
use crate::ClientError;
use sluice_proto::v1;
use sluice_proto::ErrorCode;
use std::sync::Arc;

mod alter;
mod group_offsets;
mod messages;
mod subscription_skip;
#[cfg(test)]
mod tests;
mod transactions;
pub use alter::KEY_ORDER_NOTICE;
pub use group_offsets::{reset_target, OffsetReset, OffsetResetPlan, PartitionReset};
pub use messages::{FoundMessages, MessageQuery, MAX_FIND_LIMIT};
pub use subscription_skip::{SubscriptionReset, SubscriptionSkip};
pub use transactions::{
    lso_lag_records, merge_listings, LsoLag, TransactionListing, UnansweredLogPartition,
};

/// Attempts at a group call that keeps meeting NOT_COORDINATOR.
const MAX_COORDINATOR_ATTEMPTS: u32 = 4;

/// Administrative operations. Cheap to share behind an `Arc`; every call
/// goes to whichever nameserver answers (group calls to the coordinator
/// broker).
///
/// ```no_run
/// use sluice_client::{Admin, ClientConfig};
/// use sluice_client::TopicConfig;
///
/// # async fn example() -> Result<(), sluice_client::ClientError> {
/// let admin = Admin::connect(ClientConfig::default()).await?;
/// let topic = admin
///     .create_topic("orders", TopicConfig { partitions: 4, ..TopicConfig::default() })
///     .await?;
/// println!("created {} with {:?}", topic.name, topic.config);
/// for topic in admin.list_topics(false).await? {
///     println!("{}", topic.name);
/// }
/// # Ok(())
/// # }
/// ```
pub struct Admin {
    cluster: Arc<Cluster>,
}

impl Admin {
    /// Connects to the first bootstrap nameserver that answers.
    pub async fn connect(config: ClientConfig) -> Result<Admin, ClientError> {
        Ok(Admin {
            cluster: Cluster::connect(config).await?,
        })
    }

    /// Creates a topic. Zero fields of `config` take the server defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        config: v1::TopicConfig,
    ) -> Result<v1::Topic, ClientError> {
        sluice_proto::names::TopicName::new(name).map_err(|error| {
            ClientError::InvalidArgument(format!("topic name '{name}': {error}"))
        })?;
        let request = v1::CreateTopicRequest {
            name: name.to_string(),
            config: Some(config),
        };
        self.cluster
            .call_nameserver("CreateTopic", |mut client| {
                let request = request.clone();
                async move { client.create_topic(request).await }
            })
            .await
    }

    /// Lists topics; internal ones (consumer offsets) only if asked.
    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<v1::Topic>, ClientError> {
        let request = v1::ListTopicsRequest { include_internal };
        let response = self
            .cluster
            .call_nameserver("ListTopics", |mut client| async move {
                client.list_topics(request).await
            })
            .await?;
        Ok(response.topics)
    }

    /// A topic's configuration, routes and segments.
    /// Waits until every partition of `topic` is served by an owner that
    /// finished taking it over (its last segment is open under the owner's
    /// current epoch), for at most `timeout`. Useful right after creating a
    /// topic or restarting a cluster; producers and consumers also cope on
    /// their own by retrying.
    ///
    /// ```no_run
    /// # async fn demo(admin: &sluice_client::Admin) -> Result<(), sluice_client::ClientError> {
    /// admin.wait_until_writable("orders", std::time::Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_until_writable(
        &self,
        topic: &str,
        timeout: std::time::Duration,
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let description = self.describe_topic(topic).await?;
            if !description.partitions.is_empty()
                && description.partitions.iter().all(partition_writable)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    what: format!("partitions of {topic} to be taken over by a broker"),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A topic's config, partitions with their owners (routes) and
    /// segments, as the nameserver holds them.
    pub async fn describe_topic(
        &self,
        name: &str,
    ) -> Result<v1::DescribeTopicResponse, ClientError> {
        let request = v1::DescribeTopicRequest {
            name: name.to_string(),
        };
        self.cluster
            .call_nameserver("DescribeTopic", |mut client| {
                let request = request.clone();
                async move { client.describe_topic(request).await }
            })
            .await
    }

    /// Deletes a topic and (eventually) its data, and the dead-letter
    /// topics of its subscriptions (see [`Admin::delete_topic_with`]).
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = v1::DeleteTopicRequest {
            name: name.to_string(),
            keep_dead_letters: false,
        };
        self.cluster
            .call_nameserver("DeleteTopic", |mut client| {
                let request = request.clone();
                async move { client.delete_topic(request).await }
            })
            .await?;
        Ok(())
    }

    /// Creates a durable subscription of `subscription.topic` (the topic
    /// must exist). Zero fields take the server defaults (ack timeout
    /// 30 s, redelivery backoff 1 s doubling up to 60 s, dead-letter topic
    /// `<topic>-<name>-DLQ` when `max_deliveries` > 0, created if missing);
    /// the stored subscription, defaults filled, is returned. Creating an
    /// existing subscription with the same settings returns it; other
    /// settings fail with `SUBSCRIPTION_CONFLICT` naming the differences.
    /// A selector that does not parse fails with `INVALID_SELECTOR` and the
    /// column in the message.
    ///
    /// A new subscription starting at "latest" (the default initial
    /// position) without `start_offsets` starts at the end each partition
    /// has when it is created: each owner is asked for its high watermark
    /// first (again while an owner moves, up to the client's
    /// `request_timeout_ms`; after that nothing is created and the call
    /// fails with the retriable `UNAVAILABLE`).
    ///
    /// ```no_run
    /// use sluice_client::proto::Subscription;
    /// use sluice_client::{SelectorKind, SubscriptionType};
    /// # async fn demo(admin: &sluice_client::Admin) -> Result<(), sluice_client::ClientError> {
    /// let created = admin
    ///     .create_subscription(Subscription {
    ///         topic: "orders".to_string(),
    ///         name: "billing".to_string(),
    ///         r#type: SubscriptionType::Shared as i32,
    ///         selector_kind: SelectorKind::Sql as i32,
    ///         selector: "region = 'eu'".to_string(),
    ///         max_deliveries: 5,
    ///         ..Subscription::default()
    ///     })
    ///     .await?;
    /// println!("dead letters go to {}", created.dead_letter_topic);
    /// # Ok(()) }
    /// ```
    pub async fn create_subscription(
        &self,
        subscription: v1::Subscription,
    ) -> Result<v1::Subscription, ClientError> {
        sluice_proto::names::TopicName::new(&subscription.topic).map_err(|error| {
            ClientError::InvalidArgument(format!("topic name '{}': {error}", subscription.topic))
        })?;
        sluice_proto::names::SubscriptionName::new(&subscription.name).map_err(|error| {
            ClientError::InvalidArgument(format!(
                "subscription name '{}': {error}",
                subscription.name
            ))
        })?;
        crate::subscription_create::create_subscription(&self.cluster, subscription).await
    }

    /// One subscription of `topic` (`UNKNOWN_SUBSCRIPTION` if it has none
    /// of that name, `UNKNOWN_TOPIC` if the topic does not exist).
    pub async fn get_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<v1::Subscription, ClientError> {
        let request = v1::GetSubscriptionRequest {
            topic: topic.to_string(),
            name: name.to_string(),
        };
        self.cluster
            .call_nameserver("GetSubscription", |mut client| {
                let request = request.clone();
                async move { client.get_subscription(request).await }
            })
            .await
    }

    /// Every subscription of `topic`, by name.
    pub async fn list_subscriptions(
        &self,
        topic: &str,
    ) -> Result<Vec<v1::Subscription>, ClientError> {
        let request = v1::ListSubscriptionsRequest {
            topic: topic.to_string(),
        };
        let response = self
            .cluster
            .call_nameserver("ListSubscriptions", |mut client| {
                let request = request.clone();
                async move { client.list_subscriptions(request).await }
            })
            .await?;
        Ok(response.subscriptions)
    }

    /// Deletes a subscription's definition; created again under the same
    /// name it starts afresh from its initial position.
    pub async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), ClientError> {
        let request = v1::DeleteSubscriptionRequest {
            topic: topic.to_string(),
            name: name.to_string(),
        };
        self.cluster
            .call_nameserver("DeleteSubscription", |mut client| {
                let request = request.clone();
                async move { client.delete_subscription(request).await }
            })
            .await?;
        Ok(())
    }

    /// Backlog and lag of a subscription (ADR 0012) from every partition's
    /// owner: per partition and in total, with the pressure against the
    /// topic's backlog quotas and the recommended consumer count
    /// ([`crate::lag::recommended_consumers`], aiming to work off the
    /// backlog within [`crate::lag::DEFAULT_TARGET_DRAIN_MS`]).
    pub async fn describe_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<crate::SubscriptionLag, ClientError> {
        let subscription = self.get_subscription(topic, name).await?;
        crate::lag::describe_subscription(&self.cluster, topic, name, subscription.r#type()).await
    }

    /// Every consumer group the cluster knows.
    pub async fn list_groups(&self) -> Result<Vec<v1::GroupListing>, ClientError> {
        let response = self
            .cluster
            .call_nameserver("ListGroups", |mut client| async move {
                client.list_groups(v1::ListGroupsRequest {}).await
            })
            .await?;
        Ok(response.groups)
    }

    /// Members, assignment and lag of a group, from its coordinator (looked
    /// up again when the coordinator moved).
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<v1::DescribeGroupResponse, ClientError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let address = self.cluster.find_coordinator(group).await?;
            let mut client = self.cluster.broker(&address)?;
            let request = v1::DescribeGroupRequest {
                group: group.to_string(),
            };
            match self
                .cluster
                .unary("DescribeGroup", &address, client.describe_group(request))
                .await
            {
                Err(error)
                    if attempt < MAX_COORDINATOR_ATTEMPTS
                        && (error.code() == Some(ErrorCode::NotCoordinator)
                            || matches!(error, ClientError::Transport { .. })) =>
                {
                    tracing::debug!(group, %error, "coordinator moved; looking it up again");
                    tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
                }
                result => return result,
            }
        }
    }

    /// An operator's decision for a partition that is offline because a
    /// range of its open segment is damaged on every copy (`sluice
    /// partition recover`): with `accept_data_loss`, the partition goes on
    /// after the highest offset any copy reports (or `resume_at_offset`,
    /// 0 for none; needed when every copy lost the segment), the damaged
    /// range is skipped for good and readers get an error there. Without
    /// it the nameserver refuses and explains. Closed segments the owner
    /// reports damaged on every copy are marked too (their owner records
    /// the ranges as lost). Answers the segments marked.
    pub async fn accept_data_loss(
        &self,
        topic: &str,
        partition: u32,
        accept_data_loss: bool,
        resume_at_offset: u64,
    ) -> Result<Vec<u64>, ClientError> {
        check_topic(topic)?;
        let request = v1::AcceptDataLossRequest {
            topic: topic.to_string(),
            partition,
            accept_data_loss,
            resume_at_offset,
        };
        let answer = self
            .cluster
            .call_nameserver("AcceptDataLoss", |mut client| {
                let request = request.clone();
                async move { client.accept_data_loss(request).await }
            })
            .await?;
        Ok(answer.segment_ids)
    }

    /// Adds ACL bindings (issue 13); returns how many were new. Needs
    /// `Alter` on the cluster where authorisation is on.
    pub async fn create_acls(&self, bindings: Vec<v1::AclBinding>) -> Result<u32, ClientError> {
        let answer = self
            .cluster
            .call_nameserver("CreateAcls", |mut client| {
                let bindings = bindings.clone();
                async move { client.create_acls(v1::CreateAclsRequest { bindings }).await }
            })
            .await?;
        Ok(answer.created)
    }

    /// Every ACL binding.
    pub async fn list_acls(&self) -> Result<Vec<v1::AclBinding>, ClientError> {
        let answer = self
            .cluster
            .call_nameserver("ListAcls", |mut client| async move {
                client.list_acls(v1::ListAclsRequest {}).await
            })
            .await?;
        Ok(answer.bindings)
    }

    /// Removes exactly these bindings; returns how many existed.
    pub async fn delete_acls(&self, bindings: Vec<v1::AclBinding>) -> Result<u32, ClientError> {
        let answer = self
            .cluster
            .call_nameserver("DeleteAcls", |mut client| {
                let bindings = bindings.clone();
                async move { client.delete_acls(v1::DeleteAclsRequest { bindings }).await }
            })
            .await?;
        Ok(answer.deleted)
    }

    /// Nodes and partition health as seen by a nameserver.
    pub async fn cluster_status(&self) -> Result<v1::ClusterStatusResponse, ClientError> {
        self.cluster
            .call_nameserver("ClusterStatus", |mut client| async move {
                client.cluster_status(v1::ClusterStatusRequest {}).await
            })
            .await
    }

    /// Earliest / latest / by-timestamp offset of a partition, from its
    /// owner (routes refreshed once if the owner moved).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: v1::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<v1::ListOffsetsResponse, ClientError> {
        list_offsets(&self.cluster, topic, partition, spec, timestamp_ms).await
    }
}

fn check_topic(topic: &str) -> Result<(), ClientError> {
    sluice_proto::names::TopicName::any(topic)
        .map(|_| ())
        .map_err(|error| ClientError::InvalidArgument(format!("topic name '{topic}': {error}")))
}

/// Calls the owner of (`topic`, `partition`), refreshing routes and
/// retrying (up to 3 attempts) when the owner moved.
async fn call_owner<T, F, Fut>(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    what: &str,
    call: F,
) -> Result<T, ClientError>
where
    F: Fn(crate::cluster::BrokerGrpc) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let routes = cluster.topic_routes(topic).await?;
        let route = routes.partitions.get(partition as usize).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "topic '{topic}' has {} partitions; partition {partition} does not exist",
                routes.partitions.len()
            ))
        })?;
        let result = if route.broker_address.is_empty() {
            Err(ClientError::Server(sluice_proto::SluiceError::new(
                ErrorCode::Unavailable,
                format!("partition {topic}/{partition} has no live owner right now"),
            )))
        } else {
            let address = crate::cluster::normalize_address(&route.broker_address);
            let client = cluster.broker(&address)?;
            cluster.unary(what, &address, call(client)).await
        };
        match result {
            Err(error) if error.needs_route_refresh() && attempt < 3 => {
                tracing::debug!(topic, partition, %error, what, "refreshing routes");
                tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
                cluster.refresh_routes(&[topic.to_string()]).await?;
            }
            result => return result,
        }
    }
}

/// `ListOffsets` at the partition's owner, refreshing routes and retrying
/// once when the owner is stale.
/// [`list_offsets_isolated`] read-uncommitted: `Latest` is the high
/// watermark.
pub(crate) async fn list_offsets(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    spec: v1::OffsetSpec,
    timestamp_ms: i64,
) -> Result<v1::ListOffsetsResponse, ClientError> {
    let isolation = v1::IsolationLevel::ReadUncommitted;
    list_offsets_isolated(cluster, topic, partition, (spec, timestamp_ms), isolation).await
}

/// ListOffsets at the partition's owner, refreshing routes and retrying
/// (3 attempts) while it moves; `(spec, timestamp_ms)` as in the request.
/// Read-committed, `Latest` is the last stable offset.
pub(crate) async fn list_offsets_isolated(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    (spec, timestamp_ms): (v1::OffsetSpec, i64),
    isolation: v1::IsolationLevel,
) -> Result<v1::ListOffsetsResponse, ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let routes = cluster.topic_routes(topic).await?;
        let route = routes.partitions.get(partition as usize).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "topic '{topic}' has {} partitions; partition {partition} does not exist",
                routes.partitions.len()
            ))
        })?;
        let result = if route.broker_address.is_empty() {
            Err(ClientError::Server(sluice_proto::SluiceError::new(
                ErrorCode::Unavailable,
                format!("partition {topic}/{partition} has no live owner right now"),
            )))
        } else {
            let address = crate::cluster::normalize_address(&route.broker_address);
            let mut client = cluster.broker(&address)?;
            let request = v1::ListOffsetsRequest {
                topic: topic.to_string(),
                partition,
                spec: spec as i32,
                timestamp_ms,
                isolation: isolation as i32,
            };
            cluster
                .unary("ListOffsets", &address, client.list_offsets(request))
                .await
        };
        match result {
            Err(error) if error.retry_soon() && attempt < 3 => {
                tracing::debug!(topic, partition, %error, "refreshing routes for ListOffsets");
                tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
                cluster.refresh_routes(&[topic.to_string()]).await?;
            }
            result => return result,
        }
    }
}

/// An owner is serving the partition: its last segment is open and was
/// opened under the owner's current epoch. (The route appears before the
/// takeover is done, and after a restart the previous owner's open segment
/// is still listed until the new owner seals it.)
fn partition_writable(partition: &v1::PartitionDescription) -> bool {
    let Some(route) = &partition.route else {
        return false;
    };
    !route.broker_id.is_empty()
        && partition.segments.last().is_some_and(|segment| {
            segment.state == v1::SegmentState::Open as i32 && segment.writer_epoch == route.epoch
        })
}
