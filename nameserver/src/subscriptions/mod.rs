//! Subscription definitions (ADR 0011): validation, defaults and the
//! `CreateSubscription` / `GetSubscription` / `ListSubscriptions` /
//! `DeleteSubscription` operations on `subscriptions/{topic}/{name}`.
//!
//! The nameserver only keeps the definitions; the brokers owning a topic's
//! partitions keep the subscriptions' cursors and ask `GetSubscription`
//! when a consumer opens a stream.

use crate::error::NameServerError;
use crate::handler::{invalid, now_ms, NameServerHandler};
use crate::keys;
use crate::metadata::{Compare, MetadataError, Put, Transaction};
use crate::subscription_start::{check_start_offsets, closed_ends};
use sluice_proto::names::{SubscriptionName, TopicName};
use sluice_proto::v1::{
    CreateTopicRequest, InitialPosition, SelectorKind, Subscription, SubscriptionType, Topic,
    TopicConfig,
};

/// Ack timeout used when a subscription is created with 0, in milliseconds.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
/// Shortest accepted ack timeout (below it redeliveries would race ordinary
/// processing and network delays), in milliseconds.
pub const MIN_ACK_TIMEOUT_MS: u64 = 1_000;
/// Longest accepted ack timeout (one day), in milliseconds.
pub const MAX_ACK_TIMEOUT_MS: u64 = 86_400_000;
/// First redelivery delay after a negative acknowledgement when created
/// with 0, in milliseconds.
pub const DEFAULT_REDELIVERY_BACKOFF_INITIAL_MS: u64 = 1_000;
/// Largest redelivery delay when created with 0, in milliseconds.
pub const DEFAULT_REDELIVERY_BACKOFF_MAX_MS: u64 = 60_000;
/// Largest accepted redelivery delay (one day), in milliseconds.
pub const MAX_REDELIVERY_BACKOFF_MS: u64 = 86_400_000;
/// Largest accepted `max_deliveries` (deliveries of one message before it is
/// dead-lettered); beyond it a poison message would cycle practically
/// forever.
pub const LARGEST_MAX_DELIVERIES: u32 = 1_000;
/// Longest accepted selector expression, in bytes: the selector crate's.
pub const MAX_SELECTOR_BYTES: usize = sluice_selector::MAX_SELECTOR_BYTES;
/// Suffix of the default dead-letter topic `<topic>-<name>-DLQ`.
pub const DEAD_LETTER_TOPIC_SUFFIX: &str = "-DLQ";
/// Partitions of a dead-letter topic the nameserver creates.
pub const DEAD_LETTER_TOPIC_PARTITIONS: u32 = 1;

/// Longest part of a selector quoted back in an error message, in
/// characters: messages travel in a gRPC header, and the caller has the
/// whole expression anyway.
const MAX_QUOTED_SELECTOR_CHARS: usize = 100;

/// `text` for an error message: debug-quoted, cut after
/// [`MAX_QUOTED_SELECTOR_CHARS`] characters.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_SELECTOR_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &text[..cut], text.len()),
    }
}

const ALLOWED_TYPES: &str = "SUBSCRIPTION_TYPE_EXCLUSIVE (1), SUBSCRIPTION_TYPE_FAILOVER (2), \
     SUBSCRIPTION_TYPE_SHARED (3) or SUBSCRIPTION_TYPE_KEY_SHARED (4)";

fn validate_type(value: i32) -> Result<SubscriptionType, NameServerError> {
    match SubscriptionType::try_from(value) {
        Ok(SubscriptionType::Unspecified) => Err(invalid(format!(
            "subscription type 0 (SUBSCRIPTION_TYPE_UNSPECIFIED) is not allowed; give {ALLOWED_TYPES}"
        ))),
        Ok(subscription_type) => Ok(subscription_type),
        Err(_) => Err(invalid(format!(
            "unknown subscription type {value}; give {ALLOWED_TYPES}"
        ))),
    }
}

/// Checks the selector parses as its kind. `SELECTOR_KIND_ALL` takes no
/// expression at all (not even the selector crate's `*`), so a stored
/// "every message" subscription has one spelling and compares equal.
fn validate_selector(kind_value: i32, expression: &str) -> Result<(), NameServerError> {
    let kind = match SelectorKind::try_from(kind_value) {
        Ok(SelectorKind::All) => {
            if expression.is_empty() {
                return Ok(());
            }
            return Err(invalid(format!(
                "selector kind SELECTOR_KIND_ALL takes no selector, got {}; \
                 leave it empty or use SELECTOR_KIND_TAG / SELECTOR_KIND_SQL",
                quoted(expression)
            )));
        }
        Ok(SelectorKind::Tag) => sluice_selector::SelectorKind::Tag,
        Ok(SelectorKind::Sql) => sluice_selector::SelectorKind::Sql,
        Err(_) => {
            return Err(invalid(format!(
                "unknown selector kind {kind_value}; give SELECTOR_KIND_ALL (0), \
                 SELECTOR_KIND_TAG (1) or SELECTOR_KIND_SQL (2)"
            )))
        }
    };
    if expression.len() > MAX_SELECTOR_BYTES {
        return Err(invalid(format!(
            "selector is {} bytes; the limit is {MAX_SELECTOR_BYTES}",
            expression.len()
        )));
    }
    sluice_selector::Selector::parse(kind, expression).map_err(|error| {
        NameServerError::InvalidSelector {
            expression: quoted(expression),
            reason: error.to_string(),
        }
    })?;
    Ok(())
}

/// Validates a requested subscription and fills its defaults: what is
/// stored (apart from `created_at_ms`, set when it is written). Pure, so
/// the same request always completes to the same record and an identical
/// re-creation compares equal.
pub fn complete_subscription(given: Subscription) -> Result<Subscription, NameServerError> {
    let topic = TopicName::new(&given.topic).map_err(|error| invalid(error.to_string()))?;
    let name = SubscriptionName::new(&given.name).map_err(|error| invalid(error.to_string()))?;
    let subscription_type = validate_type(given.r#type)?;
    validate_selector(given.selector_kind, &given.selector)?;
    let initial_position = InitialPosition::try_from(given.initial_position).map_err(|_| {
        invalid(format!(
            "unknown initial position {}; give INITIAL_POSITION_LATEST (0) or \
             INITIAL_POSITION_EARLIEST (1)",
            given.initial_position
        ))
    })?;

    let ack_timeout_ms = match given.ack_timeout_ms {
        0 => DEFAULT_ACK_TIMEOUT_MS,
        given => given,
    };
    if !(MIN_ACK_TIMEOUT_MS..=MAX_ACK_TIMEOUT_MS).contains(&ack_timeout_ms) {
        return Err(invalid(format!(
            "ack_timeout_ms {ack_timeout_ms} is outside [{MIN_ACK_TIMEOUT_MS}, {MAX_ACK_TIMEOUT_MS}] \
             (0 means {DEFAULT_ACK_TIMEOUT_MS})"
        )));
    }
    let backoff_initial_ms = match given.redelivery_backoff_initial_ms {
        0 => DEFAULT_REDELIVERY_BACKOFF_INITIAL_MS,
        given => given,
    };
    let backoff_max_ms = match given.redelivery_backoff_max_ms {
        0 => DEFAULT_REDELIVERY_BACKOFF_MAX_MS,
        given => given,
    };
    if backoff_max_ms > MAX_REDELIVERY_BACKOFF_MS {
        return Err(invalid(format!(
            "redelivery_backoff_max_ms {backoff_max_ms} exceeds the limit {MAX_REDELIVERY_BACKOFF_MS}"
        )));
    }
    if backoff_initial_ms > backoff_max_ms {
        return Err(invalid(format!(
            "redelivery_backoff_initial_ms {backoff_initial_ms} exceeds redelivery_backoff_max_ms \
             {backoff_max_ms} (0 means {DEFAULT_REDELIVERY_BACKOFF_INITIAL_MS} and \
             {DEFAULT_REDELIVERY_BACKOFF_MAX_MS})"
        )));
    }
    if given.max_deliveries > LARGEST_MAX_DELIVERIES {
        return Err(invalid(format!(
            "max_deliveries {} exceeds the limit {LARGEST_MAX_DELIVERIES} (0 means never \
             dead-letter)",
            given.max_deliveries
        )));
    }

    // Without max_deliveries nothing is ever dead-lettered, so no default
    // name is made up (a long topic and subscription name must not fail
    // for a topic that is never used).
    let dead_letter_topic = if !given.dead_letter_topic.is_empty() {
        TopicName::new(&given.dead_letter_topic)
            .map_err(|error| invalid(format!("dead_letter_topic: {error}")))?;
        given.dead_letter_topic.clone()
    } else if given.max_deliveries > 0 {
        let default = format!(
            "{}-{}{DEAD_LETTER_TOPIC_SUFFIX}",
            topic.as_str(),
            name.as_str()
        );
        TopicName::new(&default).map_err(|error| {
            invalid(format!(
                "the default dead-letter topic {default:?} is not a valid topic name ({error}); \
                 give dead_letter_topic explicitly"
            ))
        })?;
        default
    } else {
        String::new()
    };
    if dead_letter_topic == topic.as_str() {
        return Err(invalid(format!(
            "dead_letter_topic must differ from the subscribed topic {:?}",
            topic.as_str()
        )));
    }

    Ok(Subscription {
        topic: topic.as_str().to_string(),
        name: name.as_str().to_string(),
        r#type: subscription_type as i32,
        selector_kind: given.selector_kind,
        selector: given.selector,
        initial_position: initial_position as i32,
        ack_timeout_ms,
        redelivery_backoff_initial_ms: backoff_initial_ms,
        redelivery_backoff_max_ms: backoff_max_ms,
        max_deliveries: given.max_deliveries,
        dead_letter_topic,
        created_at_ms: 0,
        backlog_quota_bytes: given.backlog_quota_bytes,
        backlog_quota_messages: given.backlog_quota_messages,
        backlog_quota_age_ms: given.backlog_quota_age_ms,
        backlog_policy: validate_backlog_policy(given.backlog_policy)?,
        // Checked against the topic's partitions when it is created.
        start_offsets: given.start_offsets,
    })
}

/// A subscription's own backlog policy (ADR 0012); UNSPECIFIED keeps the
/// topic's.
fn validate_backlog_policy(value: i32) -> Result<i32, NameServerError> {
    sluice_proto::v1::BacklogPolicy::try_from(value)
        .map(|policy| policy as i32)
        .map_err(|_| {
            invalid(format!(
                "unknown backlog policy {value}; give BACKLOG_POLICY_HOLD (1), \
                 BACKLOG_POLICY_REJECT (2), BACKLOG_POLICY_EVICT (3) or 0 for the topic's"
            ))
        })
}

fn type_name(value: i32) -> String {
    SubscriptionType::try_from(value)
        .map(|value| value.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn selector_kind_name(value: i32) -> String {
    SelectorKind::try_from(value)
        .map(|value| value.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

fn initial_position_name(value: i32) -> String {
    InitialPosition::try_from(value)
        .map(|value| value.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string())
}

/// The settings in which `stored` and `requested` differ, as
/// `field (stored X, requested Y)`; empty when they are the same.
/// `created_at_ms` and `start_offsets` are not settings (each creator
/// resolves the latter at its own moment).
pub fn differences(stored: &Subscription, requested: &Subscription) -> Vec<String> {
    let mut differences = Vec::new();
    let mut compare = |field: &str, stored: String, requested: String| {
        if stored != requested {
            differences.push(format!("{field} (stored {stored}, requested {requested})"));
        }
    };
    compare(
        "type",
        type_name(stored.r#type),
        type_name(requested.r#type),
    );
    compare(
        "selector_kind",
        selector_kind_name(stored.selector_kind),
        selector_kind_name(requested.selector_kind),
    );
    compare(
        "selector",
        quoted(&stored.selector),
        quoted(&requested.selector),
    );
    compare(
        "initial_position",
        initial_position_name(stored.initial_position),
        initial_position_name(requested.initial_position),
    );
    compare(
        "ack_timeout_ms",
        stored.ack_timeout_ms.to_string(),
        requested.ack_timeout_ms.to_string(),
    );
    compare(
        "redelivery_backoff_initial_ms",
        stored.redelivery_backoff_initial_ms.to_string(),
        requested.redelivery_backoff_initial_ms.to_string(),
    );
    compare(
        "redelivery_backoff_max_ms",
        stored.redelivery_backoff_max_ms.to_string(),
        requested.redelivery_backoff_max_ms.to_string(),
    );
    compare(
        "max_deliveries",
        stored.max_deliveries.to_string(),
        requested.max_deliveries.to_string(),
    );
    compare(
        "dead_letter_topic",
        format!("{:?}", stored.dead_letter_topic),
        format!("{:?}", requested.dead_letter_topic),
    );
    // Backlog quotas are the operator's, not the consumers': a request
    // that leaves them 0 (as consumers creating on subscribe do) accepts
    // whatever is stored.
    for (field, stored, requested) in [
        (
            "backlog_quota_bytes",
            stored.backlog_quota_bytes,
            requested.backlog_quota_bytes,
        ),
        (
            "backlog_quota_messages",
            stored.backlog_quota_messages,
            requested.backlog_quota_messages,
        ),
        (
            "backlog_quota_age_ms",
            stored.backlog_quota_age_ms,
            requested.backlog_quota_age_ms,
        ),
        (
            "backlog_policy",
            u64::try_from(stored.backlog_policy).unwrap_or(0),
            u64::try_from(requested.backlog_policy).unwrap_or(0),
        ),
    ] {
        if requested != 0 {
            compare(field, stored.to_string(), requested.to_string());
        }
    }
    differences
}

/// The stored subscription if it has `requested`'s settings, otherwise
/// `SUBSCRIPTION_CONFLICT` naming the differences.
fn same_or_conflict(
    stored: Subscription,
    requested: &Subscription,
) -> Result<Subscription, NameServerError> {
    let differences = differences(&stored, requested);
    if differences.is_empty() {
        return Ok(stored);
    }
    Err(NameServerError::SubscriptionConflict {
        topic: requested.topic.clone(),
        name: requested.name.clone(),
        differences: differences.join(", "),
    })
}

/// Which of `stripes` serialization locks guards creations on `topic`.
fn stripe_of(topic: &str, stripes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut hasher);
    usize::try_from(hasher.finish() % stripes.max(1) as u64).unwrap_or(0)
}

pub(super) fn lookup_names(topic: &str, name: &str) -> Result<(), NameServerError> {
    TopicName::any(topic).map_err(|error| invalid(error.to_string()))?;
    SubscriptionName::new(name).map_err(|error| invalid(error.to_string()))?;
    Ok(())
}

impl NameServerHandler {
    /// The topic's key and create revision (its incarnation), or
    /// UNKNOWN_TOPIC.
    async fn topic_incarnation(&self, topic: &str) -> Result<(String, i64), NameServerError> {
        let (key, revision, _) = self.topic_record(topic).await?;
        Ok((key, revision))
    }

    /// The topic's key, create revision and record, or UNKNOWN_TOPIC.
    async fn topic_record(&self, topic: &str) -> Result<(String, i64, Topic), NameServerError> {
        let key = keys::topic(topic);
        match self.store.get(&key).await? {
            Some(entry) => {
                let record = keys::decode(&key, &entry.value)?;
                Ok((key, entry.create_revision, record))
            }
            None => Err(NameServerError::UnknownTopic(topic.to_string())),
        }
    }

    /// The `start_offsets` to record (the request's were checked with
    /// `check_start_offsets`): none for EARLIEST, the requested ones for
    /// LATEST, or the partitions' closed ends (a lower bound of the log's
    /// end, see `subscription_start`) when the request has none.
    async fn start_offsets(
        &self,
        requested: &Subscription,
        partitions: u32,
    ) -> Result<Vec<u64>, NameServerError> {
        if requested.initial_position() != InitialPosition::Latest
            || !requested.start_offsets.is_empty()
        {
            return Ok(requested.start_offsets.clone());
        }
        let segments = self
            .segments_of(&keys::segments_of_topic(&requested.topic))
            .await?;
        Ok(closed_ends(&segments, partitions))
    }

    async fn read_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Option<Subscription>, NameServerError> {
        let key = keys::subscription(topic, name);
        match self.store.get(&key).await? {
            Some(entry) => Ok(Some(keys::decode(&key, &entry.value)?)),
            None => Ok(None),
        }
    }

    /// Creates the dead-letter topic through the ordinary topic creation
    /// (defaults, store check, reconcile) unless it exists; a concurrent
    /// creation of the same topic is success.
    async fn ensure_dead_letter_topic(&self, name: &str) -> Result<(), NameServerError> {
        if self.store.get(&keys::topic(name)).await?.is_some() {
            return Ok(());
        }
        let request = CreateTopicRequest {
            name: name.to_string(),
            config: Some(TopicConfig {
                partitions: DEAD_LETTER_TOPIC_PARTITIONS,
                ..TopicConfig::default()
            }),
        };
        match self.do_create_topic(request).await {
            Ok(_) => {
                tracing::info!(topic = name, "dead-letter topic created");
                Ok(())
            }
            Err(NameServerError::TopicAlreadyExists(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub(crate) async fn do_create_subscription(
        &self,
        given: Option<Subscription>,
    ) -> Result<Subscription, NameServerError> {
        let given = given.ok_or_else(|| invalid("CreateSubscription needs a subscription"))?;
        let requested = complete_subscription(given)?;
        // One creation per topic at a time here; other nameservers are
        // kept out by the guard's compare-and-set.
        let stripe = stripe_of(&requested.topic, self.subscription_creation.len());
        let _serialized = self.subscription_creation[stripe].lock().await;
        let attempts = self.config.max_cas_retries.max(1);
        for attempt in 0..attempts {
            crate::handler::pause_before_cas_retry(attempt).await;
            if let Some(outcome) = self.try_create_subscription(&requested).await? {
                return Ok(outcome);
            }
        }
        Err(NameServerError::Conflict(format!(
            "subscriptions of topic {} kept being created by other nameservers \
             ({attempts} attempts); retry",
            requested.topic
        )))
    }

    /// One attempt: the stored subscription if it exists (same settings),
    /// else the new one written with the count check and the guard in one
    /// transaction; `None` when another creation moved the guard first.
    async fn try_create_subscription(
        &self,
        requested: &Subscription,
    ) -> Result<Option<Subscription>, NameServerError> {
        let (topic_key, topic_revision, topic) = self.topic_record(&requested.topic).await?;
        let partitions = topic.config.map_or(0, |config| config.partitions);
        check_start_offsets(
            requested.initial_position(),
            &requested.start_offsets,
            partitions,
        )?;
        if let Some(stored) = self
            .read_subscription(&requested.topic, &requested.name)
            .await?
        {
            return same_or_conflict(stored, requested).map(Some);
        }
        // The guard is read before the count: a creation committed after
        // this read moves it, and this attempt's transaction fails.
        let guard_key = keys::subscription_guard(&requested.topic);
        let guard = match self.store.get(&guard_key).await? {
            Some(entry) => Compare::ModRevisionEquals(guard_key.clone(), entry.mod_revision),
            None => Compare::Absent(guard_key.clone()),
        };
        let existing = self
            .store
            .range(&keys::subscriptions_of(&requested.topic))
            .await?
            .len();
        let limit = self.config.max_subscriptions_per_topic;
        if existing >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(NameServerError::TooManySubscriptions {
                topic: requested.topic.clone(),
                limit,
            });
        }
        if requested.max_deliveries > 0 {
            self.ensure_dead_letter_topic(&requested.dead_letter_topic)
                .await?;
        }
        let subscription = Subscription {
            created_at_ms: now_ms(),
            start_offsets: self.start_offsets(requested, partitions).await?,
            ..requested.clone()
        };
        let key = keys::subscription(&requested.topic, &requested.name);
        let value = keys::encode(&subscription);
        // Absent: of two nameservers creating it at once, one writes and
        // the other compares with what was written. The topic's create
        // revision: a topic deleted (or deleted and re-created) meanwhile
        // gets no subscription of the old one. The guard: nobody created
        // another subscription of the topic since it was counted.
        let transaction = Transaction {
            compares: vec![
                Compare::Absent(key.clone()),
                Compare::CreateRevisionEquals(topic_key, topic_revision),
                guard,
            ],
            puts: vec![
                Put::new(key.clone(), value.clone()),
                Put::new(guard_key, (existing as u64 + 1).to_le_bytes().to_vec()),
            ],
            deletes: Vec::new(),
        };
        let written = match self.store.commit(transaction).await {
            Ok(written) => written,
            // Outcome unknown: ours if the stored record is exactly ours.
            Err(MetadataError::Unavailable(reason)) => match self.store.get(&key).await? {
                Some(entry) if entry.value == value => true,
                Some(_) => false,
                None => return Err(MetadataError::Unavailable(reason).into()),
            },
            Err(error) => return Err(error.into()),
        };
        if written {
            tracing::info!(
                topic = %subscription.topic,
                subscription = %subscription.name,
                r#type = %type_name(subscription.r#type),
                "subscription created"
            );
            return Ok(Some(subscription));
        }
        self.after_lost_creation(requested).await
    }

    /// The creation's transaction failed: the same subscription written
    /// meanwhile is the answer; a topic gone is its error; otherwise the
    /// guard moved (or the topic was re-created) and the caller tries again.
    async fn after_lost_creation(
        &self,
        requested: &Subscription,
    ) -> Result<Option<Subscription>, NameServerError> {
        match self
            .read_subscription(&requested.topic, &requested.name)
            .await?
        {
            Some(stored) => same_or_conflict(stored, requested).map(Some),
            None => {
                self.topic_incarnation(&requested.topic).await?;
                Ok(None)
            }
        }
    }

    pub(crate) async fn do_get_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Subscription, NameServerError> {
        lookup_names(topic, name)?;
        self.topic_incarnation(topic).await?;
        self.read_subscription(topic, name).await?.ok_or_else(|| {
            NameServerError::UnknownSubscription {
                topic: topic.to_string(),
                name: name.to_string(),
            }
        })
    }

    pub(crate) async fn do_list_subscriptions(
        &self,
        topic: &str,
    ) -> Result<Vec<Subscription>, NameServerError> {
        TopicName::any(topic).map_err(|error| invalid(error.to_string()))?;
        self.topic_incarnation(topic).await?;
        let mut subscriptions = Vec::new();
        for entry in self.store.range(&keys::subscriptions_of(topic)).await? {
            match keys::decode::<Subscription>(&entry.key, &entry.value) {
                Ok(subscription) => subscriptions.push(subscription),
                Err(error) => tracing::warn!(%error, "skipping undecodable subscription"),
            }
        }
        Ok(subscriptions)
    }

    pub(crate) async fn do_delete_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<(), NameServerError> {
        lookup_names(topic, name)?;
        self.topic_incarnation(topic).await?;
        if !self.store.delete(&keys::subscription(topic, name)).await? {
            return Err(NameServerError::UnknownSubscription {
                topic: topic.to_string(),
                name: name.to_string(),
            });
        }
        tracing::info!(topic, subscription = name, "subscription deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
mod update;
