//! Deleting a topic's dead-letter topics with it (issue 15). Which ones
//! go is decided by the pure [`plan`]: every dead-letter topic a
//! subscription of the deleted topic names, except one another topic's
//! subscription names too (shared), one the caller may not delete, the
//! topic itself, and all of them when the caller asked to keep them. A
//! dead-letter topic is deleted as a topic (its own subscriptions go with
//! it; its own dead-letter topics are kept: no cascade).

use super::NameServerHandler;
use crate::error::NameServerError;
use crate::keys;
use sluice_proto::v1::{DeleteTopicRequest, DeleteTopicResponse, Subscription};
use std::collections::BTreeSet;

/// What happens to each dead-letter topic of a deleted topic.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DeadLetterPlan {
    pub delete: Vec<String>,
    /// `topic (why)`.
    pub keep: Vec<String>,
}

/// Decides the fate of the dead-letter topics of `topic`'s `own`
/// subscriptions; `others` are every other topic's subscriptions,
/// `may_delete` says whether the caller may delete a topic. Pure.
pub(crate) fn plan(
    topic: &str,
    own: &[Subscription],
    others: &[Subscription],
    keep_all: bool,
    may_delete: impl Fn(&str) -> bool,
) -> DeadLetterPlan {
    let named: BTreeSet<&str> = own
        .iter()
        .map(|subscription| subscription.dead_letter_topic.as_str())
        .filter(|dead_letters| !dead_letters.is_empty() && *dead_letters != topic)
        .collect();
    let mut decided = DeadLetterPlan::default();
    for dead_letters in named {
        let shared = others
            .iter()
            .any(|other| other.topic != topic && other.dead_letter_topic == dead_letters);
        let why = if keep_all {
            Some("asked to keep dead letters")
        } else if shared {
            Some("also the dead-letter topic of another topic's subscription")
        } else if !may_delete(dead_letters) {
            Some("not authorized to delete it")
        } else {
            None
        };
        match why {
            Some(why) => decided.keep.push(format!("{dead_letters} ({why})")),
            None => decided.delete.push(dead_letters.to_string()),
        }
    }
    decided
}

impl NameServerHandler {
    /// The plan for `topic`'s dead-letter topics, read before the topic's
    /// subscription keys are deleted.
    pub(crate) async fn dead_letter_plan(
        &self,
        topic: &str,
        keep_all: bool,
        may_delete: impl Fn(&str) -> bool,
    ) -> Result<DeadLetterPlan, NameServerError> {
        let mut own = Vec::new();
        let mut others = Vec::new();
        for entry in self.store.range(keys::SUBSCRIPTIONS).await? {
            match keys::decode::<Subscription>(&entry.key, &entry.value) {
                Ok(subscription) if subscription.topic == topic => own.push(subscription),
                Ok(subscription) => others.push(subscription),
                Err(error) => tracing::warn!(%error, "skipping undecodable subscription"),
            }
        }
        Ok(plan(topic, &own, &others, keep_all, may_delete))
    }

    /// `DeleteTopic`: the topic, then (unless kept) its dead-letter
    /// topics; `may_delete` is the caller's authorisation for each.
    pub(crate) async fn do_delete_topic_and_dead_letters(
        &self,
        request: &DeleteTopicRequest,
        may_delete: impl Fn(&str) -> bool,
    ) -> Result<DeleteTopicResponse, NameServerError> {
        super::lookup_topic_name(&request.name)?;
        let decided = self
            .dead_letter_plan(&request.name, request.keep_dead_letters, may_delete)
            .await?;
        self.do_delete_topic(&request.name).await?;
        let mut response = DeleteTopicResponse {
            deleted_dead_letter_topics: Vec::new(),
            kept_dead_letter_topics: decided.keep,
        };
        for dead_letters in decided.delete {
            match self.do_delete_topic(&dead_letters).await {
                Ok(()) => response.deleted_dead_letter_topics.push(dead_letters),
                Err(NameServerError::UnknownTopic(_)) => response
                    .kept_dead_letter_topics
                    .push(format!("{dead_letters} (already gone)")),
                Err(error) => {
                    tracing::warn!(topic = %dead_letters, %error, "dead-letter topic not deleted");
                    response
                        .kept_dead_letter_topics
                        .push(format!("{dead_letters} (deletion failed: {error})"));
                }
            }
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(topic: &str, name: &str, dead_letters: &str) -> Subscription {
        Subscription {
            topic: topic.into(),
            name: name.into(),
            dead_letter_topic: dead_letters.into(),
            ..Subscription::default()
        }
    }

    #[test]
    fn own_dead_letter_topics_go_shared_and_forbidden_ones_stay() {
        let own = vec![
            subscription("orders", "a", "orders-a-DLQ"),
            subscription("orders", "b", "errors"),
            subscription("orders", "c", ""),
            subscription("orders", "d", "orders-a-DLQ"),
            subscription("orders", "e", "secret-DLQ"),
        ];
        let others = vec![subscription("payments", "x", "errors")];
        let decided = plan("orders", &own, &others, false, |topic| {
            topic != "secret-DLQ"
        });
        assert_eq!(decided.delete, vec!["orders-a-DLQ".to_string()]);
        assert_eq!(decided.keep.len(), 2, "{decided:?}");
        assert!(decided.keep[0].starts_with("errors (also"), "{decided:?}");
        assert!(
            decided.keep[1].starts_with("secret-DLQ (not authorized"),
            "{decided:?}"
        );
        let kept = plan("orders", &own, &others, true, |_| true);
        assert!(kept.delete.is_empty());
        assert_eq!(kept.keep.len(), 3);
        assert_eq!(
            plan("orders", &[], &others, false, |_| true),
            DeadLetterPlan::default()
        );
    }
}
