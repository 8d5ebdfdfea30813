//! Message lookup on the partition owner (ADR 0013): one message by id
//! (`GetMessage`), messages by key, tag and time range (`FindMessages`,
//! from the stores' per-segment indexes, every candidate verified by
//! decoding it), and why a message was or was not delivered to a
//! subscription (`ExplainMessage`, from its running dispatcher or its
//! stored cursor).

use crate::clients::{nameserver_call, request};
use crate::error::BrokerError;
use crate::partition::{Partition, PartitionStatus, Phase};
use crate::subscription::{self, CursorSnapshot, Explanation, Handled};
use crate::tail_cache::PartitionKey;
use crate::Shared;
use bytes::{Bytes, BytesMut};
use sluice_proto::batch::{self, BatchIter, Record};
use sluice_proto::headers;
use sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;
use sluice_proto::names::TopicName;
use sluice_proto::v1::{
    ExplainMessageRequest, ExplainMessageResponse, FindInSegmentRequest, FindInSegmentResponse,
    FindMessagesRequest, FindMessagesResponse, GetMessageRequest, GetMessageResponse,
    GetSubscriptionRequest, MessageState, SegmentInfo, SegmentState,
};
use std::sync::Arc;

/// Longest key or tag a lookup may name (a key longer than a batch cannot
/// exist).
const MAX_LOOKUP_KEY_BYTES: usize = 64 * 1024;
/// Bytes read from the log per step when scanning a range the store did
/// not index.
const SCAN_READ_BYTES: usize = 1024 * 1024;
/// Most notes one answer carries.
const MAX_NOTES: usize = 16;

/// The partition if this broker serves it and finished taking it over.
async fn served(
    shared: &Shared,
    topic: &str,
    partition: u32,
) -> Result<(Arc<Partition>, PartitionStatus), BrokerError> {
    TopicName::any(topic).map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    let Some(served) = shared.partition(&PartitionKey::new(topic, partition)) else {
        return Err(shared.not_served_error(topic, partition).await);
    };
    let status = served.status();
    if status.phase == Phase::Stopped {
        return Err(BrokerError::NotOwner {
            topic: topic.to_string(),
            partition,
        });
    }
    if !status.loaded {
        return Err(BrokerError::Recovering {
            topic: topic.to_string(),
            partition,
        });
    }
    Ok((served, status))
}

/// The whole batch holding `offset` (which must lie in the log) and the
/// decoded record at `offset`.
async fn batch_holding(partition: &Partition, offset: u64) -> Result<(Bytes, Record), BrokerError> {
    let bytes = partition.read(offset, 1).await?;
    let missing = || {
        BrokerError::Internal(format!(
            "the log of {} did not return offset {offset}",
            partition.key
        ))
    };
    let (start, header, slice) = BatchIter::new(&bytes)
        .next()
        .ok_or_else(missing)?
        .map_err(BrokerError::Batch)?;
    if header.base_offset > offset || header.end_offset() <= offset {
        return Err(missing());
    }
    let batch = bytes.slice(start..start + slice.len());
    let (_, records) =
        batch::decode(&batch, MAX_UNCOMPRESSED_RECORDS_BYTES).map_err(BrokerError::Batch)?;
    let record = records
        .into_iter()
        .find(|record| record.offset == offset)
        .ok_or_else(missing)?;
    Ok((batch, record))
}

fn check_in_log(offset: u64, status: &PartitionStatus) -> Result<(), BrokerError> {
    if offset < status.log_start_offset || offset >= status.high_watermark {
        return Err(BrokerError::OffsetOutOfRange {
            offset,
            log_start_offset: status.log_start_offset,
            high_watermark: status.high_watermark,
        });
    }
    Ok(())
}

/// `GetMessage`: the batch holding one message.
pub async fn get_message(
    shared: &Shared,
    request: GetMessageRequest,
) -> Result<GetMessageResponse, BrokerError> {
    let (partition, status) = served(shared, &request.topic, request.partition).await?;
    check_in_log(request.offset, &status)?;
    let (batch, _) = batch_holding(&partition, request.offset).await?;
    Ok(GetMessageResponse {
        batch,
        offset: request.offset,
        log_start_offset: status.log_start_offset,
        high_watermark: status.high_watermark,
    })
}

/// What a `FindMessages` looks for.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub key: Option<Bytes>,
    pub tag: Option<String>,
    pub from_time_ms: i64,
    pub to_time_ms: i64,
}

impl Filter {
    fn from_request(request: &FindMessagesRequest) -> Result<Filter, BrokerError> {
        if request.key.is_none()
            && request.tag.is_none()
            && request.from_time_ms.is_none()
            && request.to_time_ms.is_none()
        {
            return Err(BrokerError::InvalidArgument(
                "give a key, a tag or a time range to find messages by".into(),
            ));
        }
        if request
            .key
            .as_ref()
            .is_some_and(|key| key.len() > MAX_LOOKUP_KEY_BYTES)
        {
            return Err(BrokerError::InvalidArgument(format!(
                "key is longer than {MAX_LOOKUP_KEY_BYTES} bytes"
            )));
        }
        if let Some(tag) = &request.tag {
            if tag.is_empty() || tag.len() > MAX_LOOKUP_KEY_BYTES {
                return Err(BrokerError::InvalidArgument(format!(
                    "tag must be 1 to {MAX_LOOKUP_KEY_BYTES} bytes"
                )));
            }
        }
        let filter = Filter {
            key: request.key.clone(),
            tag: request.tag.clone(),
            from_time_ms: request.from_time_ms.unwrap_or(i64::MIN),
            to_time_ms: request.to_time_ms.unwrap_or(i64::MAX),
        };
        if filter.from_time_ms > filter.to_time_ms {
            return Err(BrokerError::InvalidArgument(format!(
                "time range is empty: from {} is after to {}",
                filter.from_time_ms, filter.to_time_ms
            )));
        }
        Ok(filter)
    }

    pub fn matches(&self, record: &Record) -> bool {
        self.key
            .as_ref()
            .is_none_or(|key| record.key.as_ref() == Some(key))
            && self
                .tag
                .as_ref()
                .is_none_or(|tag| record.tags.iter().any(|candidate| candidate == tag))
            && record.timestamp_ms >= self.from_time_ms
            && record.timestamp_ms <= self.to_time_ms
    }
}

/// The answer being gathered, with its bounds.
struct Search<'a> {
    shared: &'a Shared,
    partition: &'a Partition,
    filter: Filter,
    high_watermark: u64,
    limit: usize,
    batches: BytesMut,
    offsets: Vec<u64>,
    scanned_bytes: u64,
    notes: Vec<String>,
    /// Batches already verified (a candidate can be read twice when
    /// segments' ranges touch); only the last one matters as they come in
    /// order.
    last_verified_end: u64,
    /// Where to continue once a bound stopped the search.
    stopped_at: Option<u64>,
}

impl Search<'_> {
    fn note(&mut self, note: String) {
        tracing::debug!(partition = %self.partition.key, %note, "message lookup note");
        if self.notes.len() < MAX_NOTES {
            self.notes.push(note);
        }
    }

    fn done(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// Checks the batches in `bytes` from `from_offset` below `end_offset`
    /// against the filter, keeping those that match. Returns the offset
    /// after the last batch examined.
    fn verify(&mut self, bytes: &Bytes, from_offset: u64, end_offset: u64) -> u64 {
        let mut next = from_offset;
        for item in BatchIter::new(bytes) {
            let Ok((start, header, slice)) = item else {
                self.note(format!(
                    "an unreadable batch after offset {next} was skipped"
                ));
                break;
            };
            if header.base_offset >= end_offset || header.base_offset >= self.high_watermark {
                break;
            }
            if header.end_offset() <= self.last_verified_end.max(from_offset) {
                next = next.max(header.end_offset());
                continue;
            }
            let max_scan = self.shared.config.lookup.max_scan_bytes;
            if self.scanned_bytes + slice.len() as u64 > max_scan && self.scanned_bytes > 0 {
                self.stopped_at = Some(header.base_offset.max(from_offset));
                self.note(format!(
                    "stopped after reading {} bytes ([lookup] max_scan_bytes {max_scan})",
                    self.scanned_bytes
                ));
                return next;
            }
            self.scanned_bytes += slice.len() as u64;
            self.last_verified_end = header.end_offset();
            next = header.end_offset();
            let batch = bytes.slice(start..start + slice.len());
            let records = match batch::decode(&batch, MAX_UNCOMPRESSED_RECORDS_BYTES) {
                Ok((_, records)) => records,
                Err(error) => {
                    self.note(format!(
                        "batch at offset {} cannot be decoded and was skipped: {error}",
                        header.base_offset
                    ));
                    continue;
                }
            };
            let matched: Vec<u64> = records
                .iter()
                .filter(|record| {
                    record.offset >= from_offset
                        && record.offset < self.high_watermark
                        && self.filter.matches(record)
                })
                .map(|record| record.offset)
                .collect();
            if matched.is_empty() {
                continue;
            }
            let max_response = self.shared.config.lookup.max_response_bytes;
            if !self.offsets.is_empty()
                && self.batches.len() as u64 + batch.len() as u64 > max_response
            {
                self.stopped_at = Some(matched[0]);
                self.note(format!(
                    "stopped at {} bytes of answer ([lookup] max_response_bytes {max_response})",
                    self.batches.len()
                ));
                return next;
            }
            let room = self.limit - self.offsets.len();
            self.batches.extend_from_slice(&batch);
            self.offsets.extend(matched.iter().copied().take(room));
            if self.offsets.len() >= self.limit {
                // More may follow in this batch or later ones.
                let after = self.offsets.last().map_or(next, |last| last + 1);
                self.stopped_at = Some(after);
                return next;
            }
        }
        next
    }

    /// Reads and checks `[from_offset, end_offset)` batch by batch.
    async fn scan(&mut self, from_offset: u64, end_offset: u64) -> Result<(), BrokerError> {
        let mut position = from_offset;
        while position < end_offset && !self.done() {
            let bytes = self.partition.read(position, SCAN_READ_BYTES).await?;
            if bytes.is_empty() {
                return Ok(());
            }
            let next = self.verify(&bytes, position, end_offset);
            if next <= position {
                return Ok(());
            }
            position = next;
        }
        Ok(())
    }

    /// Searches one segment in `[from_offset, end_offset)`: candidates from
    /// a store's index, verified; the unindexed rest scanned.
    async fn segment(
        &mut self,
        segment: &SegmentInfo,
        from_offset: u64,
        end_offset: u64,
    ) -> Result<(), BrokerError> {
        let mut position = from_offset;
        let mut unindexed: Option<(u64, String)> = None;
        loop {
            let ask = FindInSegmentRequest {
                segment_id: segment.segment_id,
                key: self.filter.key.clone(),
                tag: if self.filter.key.is_some() {
                    None
                } else {
                    self.filter.tag.clone()
                },
                from_time_ms: (self.filter.from_time_ms != i64::MIN)
                    .then_some(self.filter.from_time_ms),
                to_time_ms: (self.filter.to_time_ms != i64::MAX).then_some(self.filter.to_time_ms),
                from_offset: position,
                end_offset,
                max_batches: u32::try_from(self.limit - self.offsets.len())
                    .unwrap_or(u32::MAX)
                    .max(1),
            };
            let answer = match find_in_segment(self.shared, &self.partition.key, segment, ask).await
            {
                Ok(answer) => answer,
                Err(FindFailure::Unsupported) => {
                    self.note(format!(
                        "segment {} was scanned: its stores have no message index",
                        segment.segment_id
                    ));
                    return self.scan(position, end_offset).await;
                }
                Err(FindFailure::Failed(error)) => return Err(error),
            };
            if answer.indexed_end_offset < end_offset {
                let reason = if answer.unindexed_reason.is_empty() {
                    "the store's copy ends there".to_string()
                } else {
                    answer.unindexed_reason.clone()
                };
                unindexed = Some((answer.indexed_end_offset.max(position), reason));
            }
            for offset in &answer.batch_offsets {
                if self.done() {
                    return Ok(());
                }
                if *offset >= end_offset || *offset < self.last_verified_end {
                    continue;
                }
                let bytes = self.partition.read((*offset).max(position), 1).await?;
                self.verify(&bytes, position, end_offset);
            }
            if self.done() {
                return Ok(());
            }
            match answer.next_offset {
                Some(next) if next > position && next < end_offset => position = next,
                _ => break,
            }
        }
        if let Some((start, reason)) = unindexed {
            self.note(format!(
                "segment {} is indexed up to offset {start} ({reason}); the rest was scanned",
                segment.segment_id
            ));
            self.scan(start, end_offset).await?;
        }
        Ok(())
    }
}

enum FindFailure {
    /// No replica knows `FindInSegment` (an older store).
    Unsupported,
    Failed(BrokerError),
}

/// Asks the replicas of `segment` in read order until one answers.
async fn find_in_segment(
    shared: &Shared,
    key: &PartitionKey,
    segment: &SegmentInfo,
    ask: FindInSegmentRequest,
) -> Result<FindInSegmentResponse, FindFailure> {
    let mut last_error = BrokerError::Unavailable(format!(
        "segment {} of {key} has no replicas",
        segment.segment_id
    ));
    let mut unsupported = 0;
    let order = shared.clients.read_order(
        segment
            .replicas
            .iter()
            .map(|replica| replica.address.as_str()),
    );
    for replica in order.iter().map(|index| &segment.replicas[*index]) {
        let mut store = shared
            .clients
            .store(&replica.address)
            .map_err(FindFailure::Failed)?;
        match store
            .find_in_segment(request(ask.clone(), shared.clients.store_timeout))
            .await
        {
            // A copy that ends early (it awaits repair) says how far it
            // indexed; the caller scans the rest from a complete copy.
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == tonic::Code::Unimplemented => unsupported += 1,
            Err(status) => {
                shared.clients.store_failed(&replica.address);
                tracing::warn!(partition = %key, store = %replica.store_id, %status, "store FindInSegment failed");
                last_error = BrokerError::remote("store FindInSegment", &status);
            }
        }
    }
    if unsupported > 0 {
        return Err(FindFailure::Unsupported);
    }
    Err(FindFailure::Failed(last_error))
}

/// `FindMessages`: the partition's segments overlapping the asked offsets
/// and times, oldest first, each searched through a store's index; stops
/// at the limit or a byte bound and says where to continue.
pub async fn find_messages(
    shared: &Shared,
    request: FindMessagesRequest,
) -> Result<FindMessagesResponse, BrokerError> {
    let filter = Filter::from_request(&request)?;
    let (partition, status) = served(shared, &request.topic, request.partition).await?;
    let configured = shared.config.lookup.max_results.max(1);
    let limit = if request.limit == 0 {
        configured
    } else {
        request.limit.min(configured)
    } as usize;
    let from_offset = request.from_offset.max(status.log_start_offset);
    let mut search = Search {
        shared,
        partition: &partition,
        filter,
        high_watermark: status.high_watermark,
        limit,
        batches: BytesMut::new(),
        offsets: Vec::new(),
        scanned_bytes: 0,
        notes: Vec::new(),
        last_verified_end: 0,
        stopped_at: None,
    };
    for segment in partition.segments() {
        if search.done() {
            break;
        }
        let segment_end = if segment.state() == SegmentState::Open {
            status.high_watermark
        } else {
            segment.end_offset.min(status.high_watermark)
        };
        let start = from_offset.max(segment.base_offset);
        if start >= segment_end {
            continue;
        }
        // Closed segments know their largest timestamp: none can match
        // a range that starts after it.
        if segment.state() == SegmentState::Closed
            && segment.max_timestamp_ms < search.filter.from_time_ms
        {
            continue;
        }
        if let Err(error) = search.segment(&segment, start, segment_end).await {
            if search.offsets.is_empty() {
                // Nothing to show yet: the caller retries.
                return Err(error);
            }
            // Show what was found; continuing from here meets the error
            // again (and so reports it) or finds the segment readable.
            search.note(format!(
                "stopped at segment {} (offsets from {start}): {error}",
                segment.segment_id
            ));
            let resume = search
                .offsets
                .last()
                .map_or(start, |last| (last + 1).max(start));
            search.stopped_at = Some(resume);
        }
    }
    Ok(FindMessagesResponse {
        batches: search.batches.freeze(),
        offsets: search.offsets,
        next_offset: search
            .stopped_at
            .filter(|offset| *offset < status.high_watermark),
        scanned_bytes: search.scanned_bytes,
        notes: search.notes,
        log_start_offset: status.log_start_offset,
        high_watermark: status.high_watermark,
    })
}

/// When the message expires (unix ms), if it has a time-to-live: the
/// topic's `message_ttl_ms`, shortened by the message's own `sluice-ttl-ms`
/// header, counted from the record timestamp (as the dispatcher does).
fn expires_at_ms(partition: &Partition, record: &Record) -> Option<u64> {
    let topic_ttl_ms = partition.config().message_ttl_ms;
    let message_ttl_ms =
        headers::number(&record.headers, headers::TTL_MS).map(|ttl| ttl.min(headers::MAX_TTL_MS));
    let ttl_ms = match (topic_ttl_ms, message_ttl_ms) {
        (0, None) => return None,
        (0, Some(message)) => message,
        (topic, None) => topic,
        (topic, Some(message)) => topic.min(message),
    };
    Some(
        u64::try_from(record.timestamp_ms)
            .unwrap_or(0)
            .saturating_add(ttl_ms),
    )
}

/// A message not yet acknowledged that will not be delivered now anyway:
/// expired (its TTL ran out: it will be skipped) or delayed (its delivery
/// time is ahead).
fn unread_state(
    partition: &Partition,
    record: &Record,
    now_ms: u64,
    name: &str,
) -> Option<ExplainMessageResponse> {
    if let Some(expires) = expires_at_ms(partition, record).filter(|expires| *expires <= now_ms) {
        return Some(answer(
            MessageState::Expired,
            format!(
                "its time-to-live ran out at {expires} (unix ms) before subscription {name:?} delivered it; it is skipped"
            ),
        ));
    }
    let deliver_at = headers::number(&record.headers, headers::DELIVER_AT_MS)
        .filter(|deliver_at| *deliver_at > now_ms)?;
    let remaining = (deliver_at - now_ms).min(headers::MAX_DELAY_MS);
    let mut response = answer(
        MessageState::Delayed,
        format!(
            "its producer delayed it: subscription {name:?} delivers it in {remaining} ms, not before"
        ),
    );
    response.remaining_ms = Some(remaining);
    Some(response)
}

/// The explanation being built.
fn answer(state: MessageState, explanation: String) -> ExplainMessageResponse {
    ExplainMessageResponse {
        state: state as i32,
        explanation,
        ..ExplainMessageResponse::default()
    }
}

/// `ExplainMessage`: where one message stands in one subscription.
pub async fn explain_message(
    shared: &Arc<Shared>,
    request: ExplainMessageRequest,
) -> Result<ExplainMessageResponse, BrokerError> {
    sluice_proto::names::SubscriptionName::new(&request.subscription)
        .map_err(|error| BrokerError::InvalidArgument(format!("subscription name: {error}")))?;
    let group = subscription::cursor_group(&request.subscription)?;
    let (partition, status) = served(shared, &request.topic, request.partition).await?;
    let definition = nameserver_call!(
        &shared.clients,
        get_subscription,
        GetSubscriptionRequest {
            topic: request.topic.clone(),
            name: request.subscription.clone(),
        }
    )?;
    let offset = request.offset;
    let name = &request.subscription;
    let mut response = explain_state(
        shared,
        &partition,
        &status,
        &definition,
        &group,
        offset,
        name,
    )
    .await?;
    if let Some(before) = before_start(&response, &definition, &partition.key, offset, name) {
        response = ExplainMessageResponse {
            mark_delete: response.mark_delete,
            from_dispatcher: response.from_dispatcher,
            ..before
        };
    }
    response.log_start_offset = status.log_start_offset;
    response.high_watermark = status.high_watermark;
    Ok(response)
}

/// A message the answer calls acknowledged that lies below where the
/// subscription started on its partition (initial position latest, the
/// start recorded at creation) was never delivered: it predates the
/// subscription.
fn before_start(
    response: &ExplainMessageResponse,
    definition: &sluice_proto::v1::Subscription,
    key: &PartitionKey,
    offset: u64,
    name: &str,
) -> Option<ExplainMessageResponse> {
    if response.state() != MessageState::Acknowledged {
        return None;
    }
    let start = subscription::start::recorded_start(definition, key.partition)?;
    (offset < start).then(|| before_start_answer(key, name, start))
}

fn before_start_answer(key: &PartitionKey, name: &str, start: u64) -> ExplainMessageResponse {
    answer(
        MessageState::BeforeStart,
        format!(
            "produced before subscription {name:?} existed: it was created with initial position latest when {key} ended at offset {start}, so it starts there and never delivers this message"
        ),
    )
}

async fn explain_state(
    shared: &Arc<Shared>,
    partition: &Partition,
    status: &PartitionStatus,
    definition: &sluice_proto::v1::Subscription,
    group: &str,
    offset: u64,
    name: &str,
) -> Result<ExplainMessageResponse, BrokerError> {
    let key = &partition.key;
    if offset >= status.high_watermark {
        return Ok(answer(
            MessageState::NotFound,
            format!(
                "offset {offset} is beyond the end of {key} (next offset {}): no such message yet",
                status.high_watermark
            ),
        ));
    }
    if offset < status.log_start_offset {
        return Ok(answer(
            MessageState::NotFound,
            format!(
                "offset {offset} of {key} was deleted by retention (the log starts at {})",
                status.log_start_offset
            ),
        ));
    }
    let (_, record) = batch_holding(partition, offset).await?;
    let selector = subscription::selector_of(definition)?;
    if !selector.matches(&record) {
        return Ok(answer(
            MessageState::Filtered,
            format!(
                "subscription {name:?} does not select it: its {} selector {:?} does not match this message, so it is never delivered",
                selector_kind_name(definition),
                definition.selector
            ),
        ));
    }
    if let Some(explanation) = shared.subscriptions.explain(key, name, offset).await {
        let stats = shared
            .subscriptions
            .stats(key)
            .await
            .into_iter()
            .find(|stats| stats.subscription == name);
        // The dispatcher's clock is unix milliseconds.
        let now_ms = u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0);
        let mut response = match explanation {
            Explanation::NotYetRead => unread_state(partition, &record, now_ms, name)
                .unwrap_or_else(|| from_dispatcher(explanation, now_ms, name)),
            explanation => from_dispatcher(explanation, now_ms, name),
        };
        response.from_dispatcher = true;
        response.mark_delete = stats.map_or(0, |stats| stats.mark_delete);
        return Ok(response);
    }
    // No dispatcher runs here (no consumer for a while): the stored cursor.
    let stored = subscription::fetch_cursor(shared, group, key).await?;
    let snapshot = match stored.map(|bytes| CursorSnapshot::decode(&bytes)) {
        Some(Ok(snapshot)) if snapshot.subscription_created_at_ms == definition.created_at_ms => {
            Some(snapshot)
        }
        Some(Ok(_)) | None => None,
        Some(Err(error)) => {
            return Err(BrokerError::Internal(format!(
                "the stored cursor of subscription {name:?} on {key} is corrupt: {error}"
            )))
        }
    };
    let now_ms = u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0);
    let Some(snapshot) = snapshot else {
        // Where its first consumer will start.
        let start = subscription::start::initial_offset(
            definition,
            key.partition,
            status.log_start_offset,
            status.high_watermark,
        );
        if offset < start {
            return Ok(before_start_answer(key, name, start));
        }
        if let Some(response) = unread_state(partition, &record, now_ms, name) {
            return Ok(response);
        }
        return Ok(answer(
            MessageState::Pending,
            format!(
                "no consumer of subscription {name:?} has read {key} yet: the message waits in the backlog"
            ),
        ));
    };
    let mark_delete = snapshot.acked.mark_delete();
    let mut response = if snapshot.acked.contains(offset) {
        answer(
            MessageState::Acknowledged,
            format!(
                "acknowledged in subscription {name:?} (or before where it started; dead-lettered and expired messages count as acknowledged too)"
            ),
        )
    } else if let Some(response) = unread_state(partition, &record, now_ms, name) {
        response
    } else {
        let deliveries = snapshot.delivery_counts.get(&offset).copied().unwrap_or(0);
        let mut pending = answer(
            MessageState::Pending,
            format!(
                "not acknowledged in subscription {name:?}; no consumer is connected on {key}, so it waits in the backlog{}",
                if deliveries > 0 {
                    format!(" (delivered {deliveries} times so far)")
                } else {
                    String::new()
                }
            ),
        );
        pending.delivery_count = deliveries;
        pending
    };
    response.mark_delete = mark_delete;
    Ok(response)
}

fn selector_kind_name(definition: &sluice_proto::v1::Subscription) -> &'static str {
    match definition.selector_kind() {
        sluice_proto::v1::SelectorKind::All => "all",
        sluice_proto::v1::SelectorKind::Tag => "tag",
        sluice_proto::v1::SelectorKind::Sql => "SQL",
    }
}

/// Maps a dispatcher's explanation (times on its clock, `now_ms` being its
/// now) to the answer.
fn from_dispatcher(explanation: Explanation, now_ms: u64, name: &str) -> ExplainMessageResponse {
    let times = |count: u32| {
        if count == 1 {
            "once".to_string()
        } else {
            format!("{count} times")
        }
    };
    match explanation {
        Explanation::Handled(Some(Handled::Filtered)) => answer(
            MessageState::Filtered,
            format!("subscription {name:?} skipped it: its selector does not match"),
        ),
        Explanation::Handled(Some(Handled::Expired)) => answer(
            MessageState::Expired,
            format!("its time-to-live ran out before subscription {name:?} delivered it"),
        ),
        Explanation::Handled(Some(Handled::DeadLettered { deliveries })) => {
            let mut response = answer(
                MessageState::DeadLettered,
                format!(
                    "delivered {} in subscription {name:?} without an acknowledgement, then moved to its dead-letter topic",
                    times(deliveries)
                ),
            );
            response.delivery_count = deliveries;
            response
        }
        Explanation::Handled(None) => answer(
            MessageState::Acknowledged,
            format!("acknowledged in subscription {name:?} (or before where it started)"),
        ),
        Explanation::NotYetRead => answer(
            MessageState::Pending,
            format!("subscription {name:?} has not read it yet: it waits in the backlog"),
        ),
        Explanation::Ready { deliveries } => {
            let mut response = answer(
                MessageState::Ready,
                format!(
                    "read by subscription {name:?} and waiting for a consumer with credit{}",
                    if deliveries > 0 {
                        format!(" (delivered {} before)", times(deliveries))
                    } else {
                        String::new()
                    }
                ),
            );
            response.delivery_count = deliveries;
            response
        }
        Explanation::InFlight {
            consumer,
            deliveries,
            ack_deadline_ms,
        } => {
            let remaining = ack_deadline_ms.saturating_sub(now_ms);
            let mut response = answer(
                MessageState::InFlight,
                format!(
                    "delivered {} to consumer {consumer} of subscription {name:?}; it is redelivered unless acknowledged within {remaining} ms",
                    times(deliveries)
                ),
            );
            response.delivery_count = deliveries;
            response.consumer_id = Some(consumer);
            response.remaining_ms = Some(remaining);
            response
        }
        Explanation::WaitingForRedelivery {
            deliveries,
            until_ms,
        } => {
            let remaining = until_ms.saturating_sub(now_ms);
            let mut response = answer(
                MessageState::WaitingForRedelivery,
                format!(
                    "delivered {} in subscription {name:?} without an acknowledgement; delivered again in {remaining} ms",
                    times(deliveries)
                ),
            );
            response.delivery_count = deliveries;
            response.remaining_ms = Some(remaining);
            response
        }
        Explanation::Delayed { until_ms } => {
            let remaining = until_ms.saturating_sub(now_ms);
            let mut response = answer(
                MessageState::Delayed,
                format!(
                    "read by subscription {name:?}; its producer delayed it: delivered in {remaining} ms"
                ),
            );
            response.remaining_ms = Some(remaining);
            response
        }
        Explanation::BeingDeadLettered { deliveries } => {
            let mut response = answer(
                MessageState::BeingDeadLettered,
                format!(
                    "delivered {} in subscription {name:?} without an acknowledgement, the most allowed: being moved to its dead-letter topic",
                    times(deliveries)
                ),
            );
            response.delivery_count = deliveries;
            response
        }
        Explanation::PendingTransaction {
            deliveries,
            transactional_id,
            producer_id,
            epoch,
        } => {
            let mut response = answer(
                MessageState::InFlight,
                format!(
                    "delivered {} in subscription {name:?} and acknowledged inside transaction {transactional_id:?} (producer id {producer_id}, epoch {epoch}): acknowledged if it commits, delivered again if it aborts",
                    times(deliveries)
                ),
            );
            response.delivery_count = deliveries;
            response
        }
    }
}

#[cfg(test)]
mod tests;
