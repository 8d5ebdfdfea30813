//! Looking up messages (ADR 0013): one message by id, messages by key,
//! tag and time across partitions, and why a message is where it is for a
//! subscription, each from the partition owners.

use super::{call_owner, check_topic, Admin};
use crate::{ClientError, ConsumerRecord};
use sluice_proto::v1;
use sluice_proto::ErrorCode;

impl Admin {
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
