//! Moving a subscription's cursor forward (issue 15): skip the next N
//! offsets on every partition, or clear the backlog. Each partition's
//! owner does it (`SkipSubscription`); the cursor never moves back.

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

impl Admin {
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
            answers.push((partition, self.skip_on_owner(request).await?));
        }
        Ok(answers)
    }

    /// One `SkipSubscription` at the partition's owner, routes refreshed
    /// and retried while the partition has no owner or the broker asked is
    /// not it (NOT_OWNER: it did not act); any other failure is returned,
    /// so a count is never skipped twice by a retry here.
    async fn skip_on_owner(
        &self,
        request: v1::SkipSubscriptionRequest,
    ) -> Result<v1::SkipSubscriptionResponse, ClientError> {
        let topic = request.topic.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let routes = self.cluster.topic_routes(&topic).await?;
            let address = routes
                .partitions
                .get(request.partition as usize)
                .map(|route| route.broker_address.clone())
                .unwrap_or_default();
            if address.is_empty() {
                if attempt >= 5 {
                    return Err(ClientError::Server(sluice_proto::SluiceError::new(
                        sluice_proto::ErrorCode::Unavailable,
                        format!(
                            "partition {topic}/{} has no live owner right now",
                            request.partition
                        ),
                    )));
                }
            } else {
                let address = crate::cluster::normalize_address(&address);
                let mut client = self.cluster.broker(&address)?;
                let call = client.skip_subscription(request.clone());
                match self.cluster.unary("SkipSubscription", &address, call).await {
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
