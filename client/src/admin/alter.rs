//! Changing what exists (issue 15): topic settings, partition count, and
//! deleting a topic with its dead-letter topics.
//! The methods belong to [`Admin`]; this file keeps them out of
//! `admin.rs`.

use super::Admin;
use crate::ClientError;
use sluice_proto::v1;

/// What [`Admin::add_partitions`] tells the caller besides the new topic:
/// adding partitions changes which partition a key hashes to.
pub const KEY_ORDER_NOTICE: &str = "keys hash to different partitions from now on: records \
     of one key produced before and after this change may be in different partitions, and \
     their relative order is not kept across them";

impl Admin {
    /// Changes settings of topic `name`: each field set in `changes`
    /// replaces the topic's value, the others keep theirs. The ranges are
    /// `create_topic`'s, but 0 is refused where `create_topic` reads it as
    /// "the default" (give `u64::MAX` for "no retention limit"). Brokers
    /// apply the new settings to running partitions (retention at its next
    /// check, segment limits to the open segment, replication to segments
    /// created from then on). Concurrent alters of different settings both
    /// land. Returns the topic as stored. Internal topics are refused.
    ///
    /// ```no_run
    /// use sluice_proto::v1::TopicConfigChanges;
    /// # async fn demo(admin: &sluice_client::Admin) -> Result<(), sluice_client::ClientError> {
    /// let day_ms = 24 * 60 * 60 * 1000;
    /// let topic = admin
    ///     .alter_topic("orders", TopicConfigChanges {
    ///         retention_ms: Some(7 * day_ms),
    ///         ..TopicConfigChanges::default()
    ///     })
    ///     .await?;
    /// println!("{:?}", topic.config);
    /// # Ok(()) }
    /// ```
    pub async fn alter_topic(
        &self,
        name: &str,
        changes: v1::TopicConfigChanges,
    ) -> Result<v1::Topic, ClientError> {
        let request = v1::AlterTopicRequest {
            name: name.to_string(),
            changes: Some(changes),
        };
        self.cluster
            .call_nameserver("AlterTopic", |mut client| {
                let request = request.clone();
                async move { client.alter_topic(request).await }
            })
            .await
    }

    /// Deletes topic `name` and, unless `keep_dead_letters`, the
    /// dead-letter topics its subscriptions name (not one another topic's
    /// subscription names too, nor one the caller may not delete; the
    /// answer lists what was deleted and what was kept, with why).
    /// [`Admin::delete_topic`] is this without keeping them.
    pub async fn delete_topic_with(
        &self,
        name: &str,
        keep_dead_letters: bool,
    ) -> Result<v1::DeleteTopicResponse, ClientError> {
        let request = v1::DeleteTopicRequest {
            name: name.to_string(),
            keep_dead_letters,
        };
        self.cluster
            .call_nameserver("DeleteTopic", |mut client| {
                let request = request.clone();
                async move { client.delete_topic(request).await }
            })
            .await
    }

    /// Changes the delivery settings and backlog quotas of subscription
    /// `name` of `topic`: each field set in `changes` replaces the stored
    /// value. Quotas apply at the backlog monitor's next refresh; delivery
    /// settings when the subscription's dispatcher on a partition next
    /// starts (after its consumers have been gone for `[subscriptions]
    /// idle_stop_ms`, or when the partition moves). Returns the stored
    /// subscription. Needs `Alter` on the subscription.
    pub async fn update_subscription(
        &self,
        topic: &str,
        name: &str,
        changes: v1::SubscriptionChanges,
    ) -> Result<v1::Subscription, ClientError> {
        let request = v1::UpdateSubscriptionRequest {
            topic: topic.to_string(),
            name: name.to_string(),
            changes: Some(changes),
        };
        self.cluster
            .call_nameserver("UpdateSubscription", |mut client| {
                let request = request.clone();
                async move { client.update_subscription(request).await }
            })
            .await
    }

    /// Grows topic `name` to `partitions` partitions in total (more than
    /// now, at most 4096). The new partitions get owners within the
    /// assigner's next round; producers and consumers see them through
    /// their routes. Keys hash to different partitions from then on (see
    /// [`KEY_ORDER_NOTICE`]). Internal topics are refused.
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<v1::Topic, ClientError> {
        let request = v1::AddPartitionsRequest {
            name: name.to_string(),
            partitions,
        };
        self.cluster
            .call_nameserver("AddPartitions", |mut client| {
                let request = request.clone();
                async move { client.add_partitions(request).await }
            })
            .await
    }
}
