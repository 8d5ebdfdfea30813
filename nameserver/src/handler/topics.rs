//! Topics: create (also the internal offsets topic), describe, list and
//! delete, with the clean-up of keys an earlier topic of the same name
//! left behind.

use super::topic_config::complete_topic_config;
use super::{invalid, lookup_topic_name, now_ms, NameServerHandler};
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::{Compare, MetadataError, Put, Transaction};
use crate::placement;
use sluice_proto::names::{TopicName, CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use sluice_proto::v1::{
    CreateTopicRequest, DescribeTopicResponse, PartitionDescription, SegmentInfo, Topic,
};
use std::collections::BTreeMap;

impl NameServerHandler {
    pub(crate) async fn do_create_topic(
        &self,
        request: CreateTopicRequest,
    ) -> Result<Topic, NameServerError> {
        let name = TopicName::new(&request.name).map_err(|error| invalid(error.to_string()))?;
        let config = complete_topic_config(
            request.config,
            &self.config.topic_defaults,
            self.config.max_grpc_message_bytes,
        )?;
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
            keys::compactions_of_topic(name),
            keys::subscriptions_of(name),
            keys::subscription_guard_of(name),
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

    /// Creates `__consumer_offsets` and `__transaction_state` when missing.
    pub(crate) async fn ensure_offsets_topic(&self) -> Result<(), NameServerError> {
        self.ensure_internal_topic(CONSUMER_OFFSETS_TOPIC, self.config.offsets_partitions)
            .await?;
        self.ensure_internal_topic(
            TRANSACTION_STATE_TOPIC,
            self.config.transaction_log_partitions,
        )
        .await
    }

    async fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<(), NameServerError> {
        if self.store.get(&keys::topic(name)).await?.is_some() {
            return Ok(());
        }
        let topic = Topic {
            name: name.to_string(),
            config: Some(self.config.topic_defaults.topic_config(partitions.max(1))),
            created_at_ms: now_ms(),
            internal: true,
        };
        if self.write_new_topic(&topic).await? {
            tracing::info!(partitions, "created {name}");
        }
        Ok(())
    }

    /// Every topic, the internal ones only when asked for.
    pub(crate) async fn do_list_topics(
        &self,
        include_internal: bool,
    ) -> Result<Vec<Topic>, NameServerError> {
        Ok(self
            .all_topics()
            .await?
            .into_iter()
            .map(|(topic, _)| topic)
            .filter(|topic| include_internal || !topic.internal)
            .collect())
    }

    /// The topic with each partition's route and segments.
    pub(crate) async fn do_describe_topic(
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

    /// Deletes the topic key (internal topics refused), then its owner,
    /// segment and subscription keys.
    pub(crate) async fn do_delete_topic(&self, name: &str) -> Result<(), NameServerError> {
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
}
