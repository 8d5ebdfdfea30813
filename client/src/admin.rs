//! [`Admin`]: topic, subscription, group and cluster administration.

use crate::cluster::Cluster;
use crate::ClientConfig;
use crate::ClientError;
use crate::ConsumerRecord;
use sluice_proto::v1;
use sluice_proto::ErrorCode;
use std::sync::Arc;

mod alter;
mod group_offsets;
mod subscription_skip;
pub use alter::KEY_ORDER_NOTICE;
pub use group_offsets::{reset_target, OffsetReset, OffsetResetPlan, PartitionReset};
pub use subscription_skip::{SubscriptionReset, SubscriptionSkip};

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

    /// One message by id (topic, partition, offset), from the partition's
    /// owner (ADR 0013). Fails with OFFSET_OUT_OF_RANGE when the offset is
    /// beyond the log or was deleted by retention.
    ///
    /// ```no_run
    /// # async fn demo(admin: &sluice_client::Admin) -> Result<(), sluice_client::ClientError> {
    /// let record = admin.get_message("orders", 0, 42).await?;
    /// println!("{:?}", record.value);
    /// # Ok(()) }
    /// ```
    pub async fn get_message(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<ConsumerRecord, ClientError> {
        check_topic(topic)?;
        let request = v1::GetMessageRequest {
            topic: topic.to_string(),
            partition,
            offset,
        };
        let response = call_owner(
            &self.cluster,
            topic,
            partition,
            "GetMessage",
            |mut client| {
                let request = request.clone();
                async move { client.get_message(request).await }
            },
        )
        .await?;
        records_at(topic, partition, &response.batch, &[offset])?
            .pop()
            .ok_or_else(|| {
                ClientError::Server(sluice_proto::SluiceError::new(
                    ErrorCode::Internal,
                    format!(
                        "the broker's answer does not hold {topic}/{partition} offset {offset}"
                    ),
                ))
            })
    }

    /// Messages by key, tag and/or time range (ADR 0013): every partition
    /// asked (or those listed), in parallel, each answer bounded by the
    /// brokers' `[lookup] max_results` and scan limits; merged by timestamp and
    /// cut to `query.limit`. [`FoundMessages::continue_from`] says where a
    /// partition's search stopped early.
    ///
    /// ```no_run
    /// # async fn demo(admin: &sluice_client::Admin) -> Result<(), sluice_client::ClientError> {
    /// use sluice_client::MessageQuery;
    /// let found = admin
    ///     .find_messages(MessageQuery::new("orders").key("customer-7").limit(20))
    ///     .await?;
    /// for record in &found.records {
    ///     println!("{}/{}: {:?}", record.partition, record.offset, record.value);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn find_messages(&self, query: MessageQuery) -> Result<FoundMessages, ClientError> {
        use futures::StreamExt;
        check_topic(&query.topic)?;
        if query.key.is_none()
            && query.tag.is_none()
            && query.from_time_ms.is_none()
            && query.to_time_ms.is_none()
        {
            return Err(ClientError::InvalidArgument(
                "give a key, a tag or a time range to find messages by".into(),
            ));
        }
        if query.limit == 0 || query.limit > MAX_FIND_LIMIT {
            return Err(ClientError::InvalidArgument(format!(
                "limit must be 1 to {MAX_FIND_LIMIT}, not {}",
                query.limit
            )));
        }
        let partitions = match &query.partitions {
            // A continuation searches only the partitions that stopped early.
            _ if !query.from_offsets.is_empty() => query
                .from_offsets
                .iter()
                .map(|(partition, _)| *partition)
                .collect(),
            Some(partitions) => partitions.clone(),
            None => {
                let routes = self.cluster.topic_routes(&query.topic).await?;
                (0..routes.partitions.len() as u32).collect()
            }
        };
        let cluster = &self.cluster;
        let query = &query;
        let mut answers =
            futures::stream::iter(partitions.into_iter().map(|partition| async move {
                let request = v1::FindMessagesRequest {
                    topic: query.topic.clone(),
                    partition,
                    key: query.key.clone(),
                    tag: query.tag.clone(),
                    from_time_ms: query.from_time_ms,
                    to_time_ms: query.to_time_ms,
                    limit: query.limit,
                    from_offset: query
                        .from_offsets
                        .iter()
                        .find(|(wanted, _)| *wanted == partition)
                        .map_or(0, |(_, offset)| *offset),
                };
                let answer = call_owner(
                    cluster,
                    &query.topic,
                    partition,
                    "FindMessages",
                    |mut client| {
                        let request = request.clone();
                        async move { client.find_messages(request).await }
                    },
                )
                .await;
                (partition, answer)
            }))
            .buffer_unordered(MAX_PARALLEL_PARTITION_CALLS);
        let mut found = FoundMessages::default();
        while let Some((partition, answer)) = answers.next().await {
            let answer = answer?;
            let records = records_at(&query.topic, partition, &answer.batches, &answer.offsets)?;
            found.records.extend(records);
            found.notes.extend(
                answer
                    .notes
                    .into_iter()
                    .map(|note| format!("partition {partition}: {note}")),
            );
            if let Some(next) = answer.next_offset {
                found.continue_from.push((partition, next));
            }
        }
        found
            .records
            .sort_by_key(|record| (record.timestamp_ms, record.partition, record.offset));
        if found.records.len() > query.limit as usize {
            // A partition whose matches were cut continues at its first
            // dropped offset; its later matches that were kept are dropped
            // too (timestamps need not grow with offsets), so continuing
            // never returns a message twice.
            let mut resume: std::collections::BTreeMap<u32, u64> =
                found.continue_from.iter().copied().collect();
            for dropped in &found.records[query.limit as usize..] {
                let offset = resume.entry(dropped.partition).or_insert(dropped.offset);
                *offset = (*offset).min(dropped.offset);
            }
            found.records.truncate(query.limit as usize);
            found.records.retain(|record| {
                resume
                    .get(&record.partition)
                    .is_none_or(|first_dropped| record.offset < *first_dropped)
            });
            found.continue_from = resume.into_iter().collect();
        }
        found.continue_from.sort_unstable();
        Ok(found)
    }

    /// Why message (topic, partition, offset) was or was not delivered to
    /// `subscription` (ADR 0013): not found, pending, ready, in flight,
    /// waiting for redelivery, delayed, being dead-lettered, acknowledged,
    /// filtered, expired or dead-lettered, with a sentence for people.
    ///
    /// ```no_run
    /// # async fn demo(admin: &sluice_client::Admin) -> Result<(), sluice_client::ClientError> {
    /// let why = admin.explain_message("orders", 0, 42, "billing").await?;
    /// println!("{:?}: {}", why.state(), why.explanation);
    /// # Ok(()) }
    /// ```
    pub async fn explain_message(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        subscription: &str,
    ) -> Result<v1::ExplainMessageResponse, ClientError> {
        check_topic(topic)?;
        sluice_proto::names::SubscriptionName::new(subscription).map_err(|error| {
            ClientError::InvalidArgument(format!("subscription name '{subscription}': {error}"))
        })?;
        let request = v1::ExplainMessageRequest {
            topic: topic.to_string(),
            partition,
            offset,
            subscription: subscription.to_string(),
        };
        call_owner(
            &self.cluster,
            topic,
            partition,
            "ExplainMessage",
            |mut client| {
                let request = request.clone();
                async move { client.explain_message(request).await }
            },
        )
        .await
    }
}

/// Most matches one [`Admin::find_messages`] may ask for.
pub const MAX_FIND_LIMIT: u32 = 100_000;
/// Partitions asked at once by [`Admin::find_messages`].
const MAX_PARALLEL_PARTITION_CALLS: usize = 16;

/// What [`Admin::find_messages`] looks for: every filter given must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageQuery {
    /// The topic searched.
    pub topic: String,
    /// `None`: every partition.
    pub partitions: Option<Vec<u32>>,
    /// Only records with this key.
    pub key: Option<bytes::Bytes>,
    /// Only records with this tag.
    pub tag: Option<String>,
    /// Inclusive lower bound on record timestamps, unix milliseconds.
    pub from_time_ms: Option<i64>,
    /// Inclusive upper bound on record timestamps, unix milliseconds.
    pub to_time_ms: Option<i64>,
    /// Most messages returned. Default 100.
    pub limit: u32,
    /// A continuation: [`FoundMessages::continue_from`] of the previous
    /// answer. When not empty only these partitions are searched, each from
    /// its offset.
    pub from_offsets: Vec<(u32, u64)>,
}

impl MessageQuery {
    /// A query of every partition of `topic`, up to 100 messages; add
    /// filters with the builder methods.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            partitions: None,
            key: None,
            tag: None,
            from_time_ms: None,
            to_time_ms: None,
            limit: 100,
            from_offsets: Vec::new(),
        }
    }

    /// Only records with `key`.
    pub fn key(mut self, key: impl Into<bytes::Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Only records with `tag`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Records with `from_ms <= timestamp <= to_ms`.
    pub fn time_range(mut self, from_ms: Option<i64>, to_ms: Option<i64>) -> Self {
        self.from_time_ms = from_ms;
        self.to_time_ms = to_ms;
        self
    }

    /// Only these partitions.
    pub fn partitions(mut self, partitions: Vec<u32>) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// At most `limit` messages (up to [`MAX_FIND_LIMIT`]).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
}

/// The answer of [`Admin::find_messages`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoundMessages {
    /// By timestamp, then partition and offset.
    pub records: Vec<ConsumerRecord>,
    /// Partitions whose search stopped before the end of their log (a
    /// limit or a broker bound), with the offset to continue from
    /// ([`MessageQuery::from_offsets`]). Empty when the search is complete.
    pub continue_from: Vec<(u32, u64)>,
    /// What the brokers said about how they searched (unindexed ranges
    /// scanned, unreadable segments skipped).
    pub notes: Vec<String>,
}

fn check_topic(topic: &str) -> Result<(), ClientError> {
    sluice_proto::names::TopicName::any(topic)
        .map(|_| ())
        .map_err(|error| ClientError::InvalidArgument(format!("topic name '{topic}': {error}")))
}

/// The records at `offsets` in `batches` (whole batches as stored).
fn records_at(
    topic: &str,
    partition: u32,
    batches: &bytes::Bytes,
    offsets: &[u64],
) -> Result<Vec<ConsumerRecord>, ClientError> {
    let corrupt = |detail: String| {
        ClientError::Server(sluice_proto::SluiceError::new(
            ErrorCode::CorruptBatch,
            format!("{topic}/{partition}: {detail}"),
        ))
    };
    let mut records = Vec::with_capacity(offsets.len());
    for item in sluice_proto::batch::BatchIter::new(batches) {
        let (start, _, slice) = item.map_err(|error| corrupt(error.to_string()))?;
        let batch = batches.slice(start..start + slice.len());
        let (_, decoded) = sluice_proto::batch::decode(
            &batch,
            sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES,
        )
        .map_err(|error| corrupt(error.to_string()))?;
        for record in decoded {
            if offsets.binary_search(&record.offset).is_ok() {
                records.push(ConsumerRecord {
                    topic: topic.to_string(),
                    partition,
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                    tags: record.tags,
                });
            }
        }
    }
    Ok(records)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeBroker, FakeNameServer};

    #[tokio::test]
    async fn admin_fails_over_to_a_live_nameserver() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dead_address = format!("http://{}", dead.local_addr().expect("address"));
        drop(dead);
        let nameserver = FakeNameServer::default();
        let live_address = nameserver.start().await;
        let admin = Admin::connect(ClientConfig {
            bootstrap: vec![dead_address, live_address],
            connect_timeout_ms: 500,
            ..ClientConfig::default()
        })
        .await
        .expect("the second nameserver answers");
        let topic = admin
            .create_topic(
                "orders",
                v1::TopicConfig {
                    partitions: 2,
                    ..v1::TopicConfig::default()
                },
            )
            .await
            .expect("created");
        assert_eq!(topic.name, "orders");
        assert_eq!(nameserver.lock().created, vec!["orders".to_string()]);
        nameserver
            .lock()
            .routes
            .insert("orders".into(), vec!["a:1".into(), "b:2".into()]);
        let error = admin
            .create_topic("orders", v1::TopicConfig::default())
            .await
            .expect_err("exists");
        assert_eq!(error.code(), Some(ErrorCode::TopicAlreadyExists));
        let names: Vec<String> = admin
            .list_topics(false)
            .await
            .expect("listed")
            .into_iter()
            .map(|topic| topic.name)
            .collect();
        assert_eq!(names, vec!["orders".to_string()]);
        assert!(matches!(
            admin
                .create_topic("bad name!", v1::TopicConfig::default())
                .await,
            Err(ClientError::InvalidArgument(_))
        ));
    }

    /// A partition without an owner: a new "latest" subscription is not
    /// created (its start there is unknown), an existing one is returned
    /// without asking the owners.
    #[tokio::test]
    async fn a_latest_subscription_needs_every_partition_end_only_when_new() {
        let broker = FakeBroker::default();
        let broker_address = broker.start().await;
        let nameserver = FakeNameServer::default();
        nameserver
            .lock()
            .routes
            .insert("orders".into(), vec![broker_address, String::new()]);
        let existing = v1::Subscription {
            topic: "orders".to_string(),
            name: "existing".to_string(),
            ..v1::Subscription::default()
        };
        let stored = v1::Subscription {
            start_offsets: vec![3, 4],
            created_at_ms: 1,
            ..existing.clone()
        };
        nameserver.lock().subscriptions.insert(
            ("orders".to_string(), "existing".to_string()),
            stored.clone(),
        );
        let address = nameserver.start().await;
        let admin = Admin::connect(ClientConfig {
            bootstrap: vec![address],
            request_timeout_ms: 200,
            ..ClientConfig::default()
        })
        .await
        .expect("connect");
        let error = admin
            .create_subscription(v1::Subscription {
                name: "new".to_string(),
                ..existing.clone()
            })
            .await
            .expect_err("partition 1 has no owner");
        assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
        assert!(error.to_string().contains("partition 1"), "{error}");
        assert!(!nameserver
            .lock()
            .subscriptions
            .contains_key(&("orders".to_string(), "new".to_string())));
        assert_eq!(
            admin.create_subscription(existing).await.expect("existing"),
            stored
        );
    }

    #[tokio::test]
    async fn subscriptions_are_created_listed_and_deleted() {
        let broker = FakeBroker::default();
        let broker_address = broker.start().await;
        broker.lock().next_offset.insert(("orders".into(), 0), 5);
        broker.lock().next_offset.insert(("orders".into(), 1), 7);
        let nameserver = FakeNameServer::default();
        nameserver.lock().routes.insert(
            "orders".into(),
            vec![broker_address.clone(), broker_address.clone()],
        );
        let address = nameserver.start().await;
        let admin = Admin::connect(ClientConfig {
            bootstrap: vec![address],
            ..ClientConfig::default()
        })
        .await
        .expect("connect");
        let billing = v1::Subscription {
            topic: "orders".to_string(),
            name: "billing".to_string(),
            r#type: v1::SubscriptionType::Shared as i32,
            ..v1::Subscription::default()
        };
        let created = admin
            .create_subscription(billing.clone())
            .await
            .expect("created");
        assert_eq!(created.name, "billing");
        // "latest": where each partition ended when it was created.
        assert_eq!(created.start_offsets, [5, 7]);
        // The same settings return the stored record, whatever the ends
        // are now.
        broker.lock().next_offset.insert(("orders".into(), 0), 9);
        assert_eq!(
            admin
                .create_subscription(billing.clone())
                .await
                .expect("same settings"),
            created
        );
        let conflict = admin
            .create_subscription(v1::Subscription {
                r#type: v1::SubscriptionType::Exclusive as i32,
                ..billing.clone()
            })
            .await
            .expect_err("other settings");
        assert_eq!(conflict.code(), Some(ErrorCode::SubscriptionConflict));
        assert_eq!(
            admin
                .get_subscription("orders", "billing")
                .await
                .expect("get"),
            created
        );
        let names: Vec<String> = admin
            .list_subscriptions("orders")
            .await
            .expect("list")
            .into_iter()
            .map(|subscription| subscription.name)
            .collect();
        assert_eq!(names, ["billing"]);
        admin
            .delete_subscription("orders", "billing")
            .await
            .expect("delete");
        let missing = admin
            .get_subscription("orders", "billing")
            .await
            .expect_err("deleted");
        assert_eq!(missing.code(), Some(ErrorCode::UnknownSubscription));
        // Bad names are refused before any request.
        for (topic, name) in [("orders", "../x"), ("", "billing")] {
            let error = admin
                .create_subscription(v1::Subscription {
                    topic: topic.to_string(),
                    name: name.to_string(),
                    ..billing.clone()
                })
                .await
                .expect_err("bad name");
            assert!(matches!(error, ClientError::InvalidArgument(_)), "{error}");
        }
    }
}
