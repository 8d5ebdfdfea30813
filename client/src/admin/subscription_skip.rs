//! Moving a subscription's cursor (issue 15): skip the next N offsets on
//! every partition or clear the backlog (`SkipSubscription`, never back),
//! or set it to an offset or a time (`ResetSubscriptionCursor`, a rewind
//! too, refused while the subscription is consumed). Each partition's
//! owner does it.

use super::Admin;
use crate::ClientError;
use sluice_proto::v1;

/// How far [`Admin::skip_subscription`] moves the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionSkip {
    /// This many offsets past each partition's mark-delete position (kept
    /// within its high watermark).
    Messages(u64),
    /// Everything up to each partition's high watermark: the backlog is
    /// cleared.
    All,
}

/// Where [`Admin::reset_subscription_cursor`] sets the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionReset {
    /// This offset on every partition (refused outside a partition's log).
    Offset(u64),
    /// The first record at or after this time (unix ms) on each partition.
    Time(i64),
}

/// One partition's request.
enum CursorMove {
    Skip(v1::SkipSubscriptionRequest),
    Reset(v1::ResetSubscriptionCursorRequest),
}

impl Admin {
    /// Sets the cursor of subscription `name` of `topic` on every
    /// partition, in partition order: what lies below is acknowledged, and
    /// everything from there is delivered (again, when it rewinds). Refused
    /// on a partition where the subscription is being consumed (close its
    /// consumers; the broker's dispatcher stops `[subscriptions]
    /// idle_stop_ms` later); partitions before a refused one stay reset.
    /// Needs `Alter` on the subscription.
    pub async fn reset_subscription_cursor(
        &self,
        topic: &str,
        name: &str,
        reset: SubscriptionReset,
    ) -> Result<Vec<(u32, v1::SkipSubscriptionResponse)>, ClientError> {
        let count = self.cluster.topic_routes(topic).await?.partitions.len();
        let mut answers = Vec::with_capacity(count);
        for partition in 0..u32::try_from(count).unwrap_or(u32::MAX) {
            let request = v1::ResetSubscriptionCursorRequest {
                topic: topic.to_string(),
                name: name.to_string(),
                partition,
                offset: match reset {
                    SubscriptionReset::Offset(offset) => offset,
                    SubscriptionReset::Time(_) => 0,
                },
                timestamp_ms: match reset {
                    SubscriptionReset::Offset(_) => None,
                    SubscriptionReset::Time(time_ms) => Some(time_ms),
                },
            };
            let answer = self
                .move_on_owner(topic, partition, CursorMove::Reset(request))
                .await?;
            answers.push((partition, answer));
        }
        Ok(answers)
    }

    /// Skips messages of subscription `name` of `topic` on every
    /// partition, in partition order; answers each partition's result
    /// (skipped count, new mark-delete position, high watermark). Messages
    /// produced after the call are delivered as usual. Needs `Alter` on
    /// the subscription. A partition without a live owner fails the call;
    /// the partitions before it stay skipped (a retry skips again from
    /// their new position, so retry a clear rather than a count).
    pub async fn skip_subscription(
        &self,
        topic: &str,
        name: &str,
        skip: SubscriptionSkip,
    ) -> Result<Vec<(u32, v1::SkipSubscriptionResponse)>, ClientError> {
        let count = self.cluster.topic_routes(topic).await?.partitions.len();
        let mut answers = Vec::with_capacity(count);
        for partition in 0..u32::try_from(count).unwrap_or(u32::MAX) {
            let request = v1::SkipSubscriptionRequest {
                topic: topic.to_string(),
                name: name.to_string(),
                partition,
                count: match skip {
                    SubscriptionSkip::Messages(count) => count,
                    SubscriptionSkip::All => 0,
                },
                clear: skip == SubscriptionSkip::All,
            };
            let answer = self
                .move_on_owner(topic, partition, CursorMove::Skip(request))
                .await?;
            answers.push((partition, answer));
        }
        Ok(answers)
    }

    /// One cursor move at the partition's owner, routes refreshed and
    /// retried while the partition has no owner or the broker asked is not
    /// it (NOT_OWNER: it did not act); any other failure is returned, so a
    /// count is never skipped twice by a retry here.
    async fn move_on_owner(
        &self,
        topic: &str,
        partition: u32,
        request: CursorMove,
    ) -> Result<v1::SkipSubscriptionResponse, ClientError> {
        let topic = topic.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let routes = self.cluster.topic_routes(&topic).await?;
            let address = routes
                .partitions
                .get(partition as usize)
                .map(|route| route.broker_address.clone())
                .unwrap_or_default();
            if address.is_empty() {
                if attempt >= 5 {
                    return Err(ClientError::Server(sluice_proto::SluiceError::new(
                        sluice_proto::ErrorCode::Unavailable,
                        format!("partition {topic}/{partition} has no live owner right now"),
                    )));
                }
            } else {
                let address = crate::cluster::normalize_address(&address);
                let mut client = self.cluster.broker(&address)?;
                let answer = match &request {
                    CursorMove::Skip(skip) => {
                        let call = client.skip_subscription(skip.clone());
                        self.cluster.unary("SkipSubscription", &address, call).await
                    }
                    CursorMove::Reset(reset) => {
                        let call = client.reset_subscription_cursor(reset.clone());
                        self.cluster
                            .unary("ResetSubscriptionCursor", &address, call)
                            .await
                    }
                };
                match answer {
                    Err(error)
                        if attempt < 5
                            && error.code() == Some(sluice_proto::ErrorCode::NotOwner) => {}
                    result => return result,
                }
            }
            tokio::time::sleep(crate::cluster::backoff(attempt, 50, 1000)).await;
            self.cluster
                .refresh_routes(std::slice::from_ref(&topic))
                .await?;
        }
    }
}
