//! Creating a subscription, for [`crate::Admin::create_subscription`] and
//! the subscriber's create-if-missing (issue 11): a subscription starting
//! at "latest" records where each partition ends when it is created, so
//! its first consumer, whenever it comes, misses nothing produced after
//! the creation.
//!
//! The nameserver never calls brokers, so the SDK asks each partition's
//! owner for its high watermark (`ListOffsets`) just before creating and
//! sends them as `start_offsets`. Ends read before the creation are at
//! most the ends at the creation: a few messages produced in between may
//! be delivered, none produced after it is skipped. A partition whose
//! owner is moving or offline is asked again until the client's
//! `request_timeout_ms` runs out; then nothing is created and the call
//! fails with UNAVAILABLE (retriable).

use crate::admin::list_offsets;
use crate::cluster::{backoff, Cluster};
use crate::error::ClientError;
use futures::{StreamExt, TryStreamExt};
use sluice_proto::v1::{self, InitialPosition, OffsetSpec};
use sluice_proto::{ErrorCode, SluiceError};
use std::time::Duration;
use tokio::time::Instant;

/// Partitions whose high watermark is asked at the same time.
pub const MAX_CONCURRENT_END_LOOKUPS: usize = 16;
/// First and largest pause between two attempts to read a partition's
/// end while its owner moves, in milliseconds.
const RETRY_BACKOFF_INITIAL_MS: u64 = 50;
const RETRY_BACKOFF_MAX_MS: u64 = 1_000;

/// True when a creation request needs the partitions' ends: "latest"
/// without `start_offsets` given.
pub(crate) fn needs_start_offsets(subscription: &v1::Subscription) -> bool {
    subscription.initial_position() == InitialPosition::Latest
        && subscription.start_offsets.is_empty()
}

/// What to do after reading a partition's end failed on `attempt` (from
/// 1): wait this long and ask again, or give up (None) when the error is
/// not retriable or the wait would end past `remaining`.
pub(crate) fn retry_after(
    error: &ClientError,
    attempt: u32,
    remaining: Duration,
) -> Option<Duration> {
    if !error.is_retriable() {
        return None;
    }
    let pause = backoff(attempt, RETRY_BACKOFF_INITIAL_MS, RETRY_BACKOFF_MAX_MS);
    (pause < remaining).then_some(pause)
}

/// Creates `subscription` on the nameserver, resolving its start offsets
/// first when it starts at "latest" and does not exist yet (an existing
/// one is only compared, so consumers of it do not wait for partitions
/// whose owner is moving).
pub(crate) async fn create_subscription(
    cluster: &Cluster,
    mut subscription: v1::Subscription,
) -> Result<v1::Subscription, ClientError> {
    if needs_start_offsets(&subscription)
        && !exists(cluster, &subscription.topic, &subscription.name).await?
    {
        let deadline =
            Instant::now() + Duration::from_millis(cluster.config.request_timeout_ms.max(1));
        subscription.start_offsets = partition_ends(cluster, &subscription, deadline).await?;
    }
    let request = v1::CreateSubscriptionRequest {
        subscription: Some(subscription),
    };
    cluster
        .call_nameserver("CreateSubscription", |mut client| {
            let request = request.clone();
            async move { client.create_subscription(request).await }
        })
        .await
}

async fn exists(cluster: &Cluster, topic: &str, name: &str) -> Result<bool, ClientError> {
    let request = v1::GetSubscriptionRequest {
        topic: topic.to_string(),
        name: name.to_string(),
    };
    let answer = cluster
        .call_nameserver("GetSubscription", |mut client| {
            let request = request.clone();
            async move { client.get_subscription(request).await }
        })
        .await;
    match answer {
        Ok(_) => Ok(true),
        Err(error) if error.code() == Some(ErrorCode::UnknownSubscription) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Every partition's high watermark, in partition order.
async fn partition_ends(
    cluster: &Cluster,
    subscription: &v1::Subscription,
    deadline: Instant,
) -> Result<Vec<u64>, ClientError> {
    let topic = subscription.topic.as_str();
    let partitions = u32::try_from(cluster.topic_routes(topic).await?.partitions.len())
        .unwrap_or(u32::MAX)
        .min(sluice_proto::limits::MAX_PARTITIONS_PER_TOPIC);
    futures::stream::iter(0..partitions)
        .map(|partition| partition_end(cluster, subscription, partition, deadline))
        .buffered(MAX_CONCURRENT_END_LOOKUPS)
        .try_collect()
        .await
}

/// One partition's high watermark from its owner, asked again (routes
/// refreshed) while the owner moves, until `deadline`.
async fn partition_end(
    cluster: &Cluster,
    subscription: &v1::Subscription,
    partition: u32,
    deadline: Instant,
) -> Result<u64, ClientError> {
    let topic = subscription.topic.as_str();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match list_offsets(cluster, topic, partition, OffsetSpec::Latest, 0).await {
            Ok(answer) => return Ok(answer.high_watermark),
            Err(error) => error,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Some(pause) = retry_after(&error, attempt, remaining) else {
            return Err(not_created(subscription, partition, error));
        };
        tracing::debug!(topic, partition, %error, "reading the partition's end again");
        tokio::time::sleep(pause).await;
        // Stale routes are what a moving owner leaves: ask afresh.
        let _ = cluster.refresh_routes(&[topic.to_string()]).await;
    }
}

/// The error of a creation given up on because `partition`'s end could not
/// be read: retriable ones become UNAVAILABLE saying nothing was created.
fn not_created(subscription: &v1::Subscription, partition: u32, error: ClientError) -> ClientError {
    if !error.is_retriable() {
        return error;
    }
    ClientError::Server(SluiceError::new(
        ErrorCode::Unavailable,
        format!(
            "subscription {:?} of {:?} was not created: it starts at the end of each partition, \
             and the end of partition {partition} could not be read ({error}); retry when the \
             partition has an owner again",
            subscription.name, subscription.topic
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> ClientError {
        ClientError::Server(SluiceError::new(code, "test"))
    }

    #[test]
    fn only_latest_without_offsets_needs_them() {
        let latest = v1::Subscription::default();
        assert!(needs_start_offsets(&latest));
        assert!(!needs_start_offsets(&v1::Subscription {
            start_offsets: vec![0],
            ..latest.clone()
        }));
        assert!(!needs_start_offsets(&v1::Subscription {
            initial_position: InitialPosition::Earliest as i32,
            ..latest
        }));
    }

    #[test]
    fn a_moving_owner_is_asked_again_until_the_deadline() {
        let long = Duration::from_secs(30);
        for code in [
            ErrorCode::NotOwner,
            ErrorCode::Unavailable,
            ErrorCode::ShuttingDown,
        ] {
            assert!(retry_after(&server(code), 1, long).is_some(), "{code:?}");
        }
        // Backoff grows and caps.
        assert!(
            retry_after(&server(ErrorCode::NotOwner), 1, long)
                < retry_after(&server(ErrorCode::NotOwner), 3, long)
        );
        assert_eq!(
            retry_after(&server(ErrorCode::NotOwner), u32::MAX, long),
            Some(Duration::from_millis(RETRY_BACKOFF_MAX_MS))
        );
        // Out of time.
        assert_eq!(
            retry_after(&server(ErrorCode::NotOwner), 1, Duration::ZERO),
            None
        );
        assert_eq!(
            retry_after(&server(ErrorCode::NotOwner), 30, Duration::from_millis(999)),
            None
        );
    }

    #[test]
    fn errors_retrying_cannot_cure_are_given_up_at_once() {
        let long = Duration::from_secs(30);
        assert_eq!(retry_after(&server(ErrorCode::UnknownTopic), 1, long), None);
        assert_eq!(
            retry_after(&ClientError::InvalidArgument("x".into()), 1, long),
            None
        );
    }

    #[test]
    fn a_creation_given_up_says_nothing_was_created_and_is_retriable() {
        let subscription = v1::Subscription {
            topic: "t1".into(),
            name: "q".into(),
            ..v1::Subscription::default()
        };
        let error = not_created(&subscription, 3, server(ErrorCode::NotOwner));
        assert_eq!(error.code(), Some(ErrorCode::Unavailable));
        assert!(error.is_retriable());
        let text = error.to_string();
        assert!(text.contains("was not created"), "{text}");
        assert!(text.contains("partition 3"), "{text}");
        let unknown = not_created(&subscription, 0, server(ErrorCode::UnknownTopic));
        assert_eq!(unknown.code(), Some(ErrorCode::UnknownTopic));
    }
}
