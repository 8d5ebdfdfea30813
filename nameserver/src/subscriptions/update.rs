//! `UpdateSubscription` (issue 15): new delivery settings and backlog
//! quotas for an existing subscription, validated by CreateSubscription's
//! rules (the pure [`updated`]) and written with a compare-and-swap on the
//! subscription key, applied again on a concurrent change. The backlog
//! monitor reads quotas on its next refresh; a dispatcher reads the
//! delivery settings when it starts (after its consumers have been gone
//! for `[subscriptions] idle_stop_ms`, or on an ownership move).

use super::{complete_subscription, lookup_names};
use crate::error::NameServerError;
use crate::handler::{invalid, NameServerHandler};
use crate::keys;
use crate::metadata::{Compare, Put, Transaction};
use sluice_proto::v1::{Subscription, SubscriptionChanges, UpdateSubscriptionRequest};

/// Attempts of one update against concurrent changes of the same
/// subscription before it answers CONFLICT.
const MAX_UPDATE_ATTEMPTS: u32 = 8;

/// `stored` with `changes` applied and checked. Pure.
pub(crate) fn updated(
    stored: &Subscription,
    changes: &SubscriptionChanges,
) -> Result<Subscription, NameServerError> {
    if *changes == SubscriptionChanges::default() {
        return Err(invalid("no setting to change was given"));
    }
    for (name, value) in [
        ("ack_timeout_ms", changes.ack_timeout_ms),
        (
            "redelivery_backoff_initial_ms",
            changes.redelivery_backoff_initial_ms,
        ),
        (
            "redelivery_backoff_max_ms",
            changes.redelivery_backoff_max_ms,
        ),
    ] {
        if value == Some(0) {
            return Err(invalid(format!(
                "{name} 0 is not a value an update can set (in CreateSubscription it means the \
                 default)"
            )));
        }
    }
    let mut merged = stored.clone();
    merged.ack_timeout_ms = changes.ack_timeout_ms.unwrap_or(merged.ack_timeout_ms);
    merged.redelivery_backoff_initial_ms = changes
        .redelivery_backoff_initial_ms
        .unwrap_or(merged.redelivery_backoff_initial_ms);
    merged.redelivery_backoff_max_ms = changes
        .redelivery_backoff_max_ms
        .unwrap_or(merged.redelivery_backoff_max_ms);
    if let Some(max_deliveries) = changes.max_deliveries {
        if max_deliveries > 0 && stored.dead_letter_topic.is_empty() {
            return Err(invalid(
                "max_deliveries above 0 needs a dead-letter topic, and this subscription was \
                 created without one; delete and create it again with max_deliveries",
            ));
        }
        merged.max_deliveries = max_deliveries;
    }
    merged.backlog_quota_bytes = changes
        .backlog_quota_bytes
        .unwrap_or(merged.backlog_quota_bytes);
    merged.backlog_quota_messages = changes
        .backlog_quota_messages
        .unwrap_or(merged.backlog_quota_messages);
    merged.backlog_quota_age_ms = changes
        .backlog_quota_age_ms
        .unwrap_or(merged.backlog_quota_age_ms);
    merged.backlog_policy = changes.backlog_policy.unwrap_or(merged.backlog_policy);
    let checked = complete_subscription(merged.clone())?;
    // What the checks fill in is not the update's to change.
    Ok(Subscription {
        created_at_ms: stored.created_at_ms,
        dead_letter_topic: stored.dead_letter_topic.clone(),
        start_offsets: stored.start_offsets.clone(),
        ..checked
    })
}

impl NameServerHandler {
    /// `UpdateSubscription`: the stored subscription with the changes.
    pub(crate) async fn do_update_subscription(
        &self,
        request: UpdateSubscriptionRequest,
    ) -> Result<Subscription, NameServerError> {
        lookup_names(&request.topic, &request.name)?;
        let changes = request.changes.unwrap_or_default();
        let key = keys::subscription(&request.topic, &request.name);
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let entry = self.store.get(&key).await?.ok_or_else(|| {
                NameServerError::UnknownSubscription {
                    topic: request.topic.clone(),
                    name: request.name.clone(),
                }
            })?;
            let stored: Subscription = keys::decode(&key, &entry.value)?;
            let subscription = updated(&stored, &changes)?;
            if subscription == stored {
                return Ok(stored);
            }
            let transaction = Transaction {
                compares: vec![Compare::ModRevisionEquals(key.clone(), entry.mod_revision)],
                puts: vec![Put::new(key.clone(), keys::encode(&subscription))],
                deletes: Vec::new(),
            };
            if self.store.commit(transaction).await? {
                tracing::info!(topic = %request.topic, subscription = %request.name, ?changes, "subscription updated");
                return Ok(subscription);
            }
        }
        Err(NameServerError::Conflict(format!(
            "subscription {} of {} kept changing during the update; retry",
            request.name, request.topic
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::SubscriptionType;

    fn stored() -> Subscription {
        let mut subscription = complete_subscription(Subscription {
            topic: "orders".into(),
            name: "billing".into(),
            r#type: SubscriptionType::Shared as i32,
            max_deliveries: 3,
            ..Subscription::default()
        })
        .expect("valid");
        subscription.created_at_ms = 42;
        subscription
    }

    #[test]
    fn only_the_given_settings_change() {
        let changes = SubscriptionChanges {
            ack_timeout_ms: Some(5_000),
            max_deliveries: Some(0),
            backlog_quota_messages: Some(10),
            ..SubscriptionChanges::default()
        };
        let after = updated(&stored(), &changes).expect("valid");
        assert_eq!(
            after,
            Subscription {
                ack_timeout_ms: 5_000,
                max_deliveries: 0,
                backlog_quota_messages: 10,
                ..stored()
            }
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let refused = |changes: SubscriptionChanges, named: &str| match updated(&stored(), &changes)
        {
            Err(NameServerError::InvalidArgument(message)) => {
                assert!(message.contains(named), "{message}")
            }
            other => panic!("{changes:?}: expected INVALID_ARGUMENT, got {other:?}"),
        };
        let none = SubscriptionChanges::default;
        refused(none(), "no setting");
        refused(
            SubscriptionChanges {
                ack_timeout_ms: Some(0),
                ..none()
            },
            "ack_timeout_ms",
        );
        refused(
            SubscriptionChanges {
                ack_timeout_ms: Some(999),
                ..none()
            },
            "ack_timeout_ms",
        );
        refused(
            SubscriptionChanges {
                ack_timeout_ms: Some(u64::MAX),
                ..none()
            },
            "ack_timeout_ms",
        );
        refused(
            SubscriptionChanges {
                redelivery_backoff_initial_ms: Some(120_000),
                ..none()
            },
            "redelivery_backoff_initial_ms",
        );
        refused(
            SubscriptionChanges {
                max_deliveries: Some(u32::MAX),
                ..none()
            },
            "max_deliveries",
        );
        refused(
            SubscriptionChanges {
                backlog_policy: Some(99),
                ..none()
            },
            "backlog policy",
        );
        let without_dead_letters = Subscription {
            max_deliveries: 0,
            dead_letter_topic: String::new(),
            ..stored()
        };
        assert!(updated(
            &without_dead_letters,
            &SubscriptionChanges {
                max_deliveries: Some(1),
                ..none()
            }
        )
        .is_err());
    }
}
