//! [`Admin`]: topic, group and cluster administration.

use crate::cluster::Cluster;
use crate::ClientConfig;
use crate::ClientError;
use sluice_proto::v1;
use sluice_proto::ErrorCode;
use std::sync::Arc;

/// Attempts at a group call that keeps meeting NOT_COORDINATOR.
const MAX_COORDINATOR_ATTEMPTS: u32 = 4;

/// Administrative operations. Cheap to share behind an `Arc`; every call
/// goes to whichever nameserver answers (group calls to the coordinator
/// broker).
///
/// ```no_run
/// use sluice_client::{Admin, ClientConfig};
/// use sluice_proto::v1::TopicConfig;
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

    /// Deletes a topic and (eventually) its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = v1::DeleteTopicRequest {
            name: name.to_string(),
        };
        self.cluster
            .call_nameserver("DeleteTopic", |mut client| {
                let request = request.clone();
                async move { client.delete_topic(request).await }
            })
            .await?;
        Ok(())
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

/// `ListOffsets` at the partition's owner, refreshing routes and retrying
/// once when the owner is stale.
pub(crate) async fn list_offsets(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    spec: v1::OffsetSpec,
    timestamp_ms: i64,
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
            };
            cluster
                .unary("ListOffsets", &address, client.list_offsets(request))
                .await
        };
        match result {
            Err(error) if error.needs_route_refresh() && attempt < 3 => {
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
    use crate::testing::FakeNameServer;

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
}
