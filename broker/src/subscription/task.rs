//! The dispatcher task's state besides the pure dispatcher, and its IO:
//! scanning the log, read-ahead batches, delayed records kept in memory,
//! and carrying out the dispatcher's deliveries and dead letters.

use super::dead_letter::{write_dead_letter, DeadLetters};
use super::dispatcher::{Action, ConsumerId, Dispatcher, Scanned};
use super::sparse_delivery::{single_record_batch, sparse_batches};
use super::txn_acks::{MarkerReply, Verifying};
use super::{Command, SubscriptionStats, SCAN_READ_BYTES};
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::FutureExt;
use sluice_proto::batch::{self, BatchIter, Record};
use sluice_proto::headers;
use sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;
use sluice_proto::v1::subscribe_response::Response as ToConsumer;
use sluice_proto::v1::{
    AckReceipt, AckResult, ConsumerStatus, Delivery, SubscribeOpened, SubscribeResponse,
    Subscription, SubscriptionType,
};
use sluice_proto::SluiceError;
use sluice_selector::Selector;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;

/// A stable 64-bit hash of a record key (FNV-1a): parked keys are
/// persisted by hash, so it must not change between brokers or versions.
fn key_hash(key: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub(super) struct ConsumerLink {
    responses: mpsc::Sender<Result<SubscribeResponse, Status>>,
}

/// The dispatcher task's state besides the pure dispatcher.
pub(super) struct Task {
    pub(super) shared: Arc<Shared>,
    pub(super) key: PartitionKey,
    pub(super) subscription: Subscription,
    pub(super) group: String,
    pub(super) selector: Selector,
    pub(super) partition: Arc<Partition>,
    pub(super) dispatcher: Dispatcher,
    pub(super) consumers: HashMap<ConsumerId, ConsumerLink>,
    /// Batches read ahead: base offset → (end offset, bytes).
    pub(super) batches: BTreeMap<u64, (u64, Bytes)>,
    pub(super) batch_bytes: u64,
    /// Delayed records kept in memory (single-record batches) by offset.
    pub(super) delayed_records: HashMap<u64, Bytes>,
    pub(super) delayed_records_bytes: u64,
    /// Acknowledgements applied but not yet in a started cursor commit.
    pub(super) receipts_waiting: Vec<(ConsumerId, AckReceipt)>,
    /// Transactional acknowledgements being verified with their
    /// coordinators (at most one per ack request of a connected consumer,
    /// each bounded by `verification_timeout_ms`).
    pub(super) verifications: FuturesUnordered<Verifying>,
    /// Transaction markers resolved, answered after the next cursor commit.
    pub(super) markers_waiting: Vec<MarkerReply>,
}

impl Task {
    /// The dispatcher's clock: Unix milliseconds, because delivery times
    /// and expiry come from producers' wall clocks. A clock stepping back
    /// only delays timeouts and redeliveries.
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(sluice_proto::now_unix_ms()).unwrap_or(0)
    }

    pub(super) fn send(&mut self, consumer: ConsumerId, response: ToConsumer) {
        let Some(link) = self.consumers.get(&consumer) else {
            return;
        };
        let message = SubscribeResponse {
            response: Some(response),
        };
        if link.responses.try_send(Ok(message)).is_err() {
            // Full: the consumer stopped reading beyond its credit; closed:
            // it left. Either way what it holds goes to others.
            tracing::debug!(consumer, partition = %self.key, "consumer not reading; dropping it");
            self.drop_consumer(consumer);
        }
    }

    fn drop_consumer(&mut self, consumer: ConsumerId) {
        self.consumers.remove(&consumer);
        self.dispatcher.remove_consumer(consumer);
        self.receipts_waiting.retain(|(id, _)| *id != consumer);
    }

    pub(super) fn fail_all(&mut self, error: BrokerError) {
        let status: Status = SluiceError::from(error).into();
        for (_, link) in self.consumers.drain() {
            let _ = link.responses.try_send(Err(status.clone()));
        }
    }

    pub(super) fn handle(&mut self, command: Command) {
        match command {
            Command::Open {
                consumer,
                name,
                priority,
                permits,
                responses,
                opened,
            } => {
                if self.consumers.len()
                    >= self.shared.config.subscriptions.max_consumers_per_partition
                {
                    let _ = opened.send(Err(BrokerError::Throttled(format!(
                        "subscription {:?} has {} consumers on {}, the most allowed",
                        self.subscription.name,
                        self.consumers.len(),
                        self.key
                    ))));
                    return;
                }
                if let Err(error) = self
                    .dispatcher
                    .add_consumer(consumer, name, priority, permits)
                {
                    let _ = opened.send(Err(BrokerError::ConsumerBusy(format!(
                        "{error} ({} of subscription {:?})",
                        self.key, self.subscription.name
                    ))));
                    return;
                }
                self.consumers.insert(consumer, ConsumerLink { responses });
                let active = !matches!(self.dispatcher.kind(), SubscriptionType::Failover);
                self.send(
                    consumer,
                    ToConsumer::Opened(SubscribeOpened {
                        subscription: Some(self.subscription.clone()),
                        consumer_id: consumer,
                        active,
                    }),
                );
                let _ = opened.send(Ok(()));
            }
            Command::Flow { consumer, permits } => {
                self.dispatcher.flow(consumer, permits);
            }
            Command::Ack {
                consumer,
                request_id,
                offsets,
                cumulative,
            } => {
                if !self.consumers.contains_key(&consumer) {
                    return;
                }
                let mut receipt = AckReceipt {
                    request_id,
                    acknowledged: Vec::with_capacity(offsets.len()),
                    rejected: Vec::new(),
                };
                for offset in offsets {
                    match self.dispatcher.ack(consumer, offset) {
                        Ok(()) => receipt.acknowledged.push(offset),
                        Err(code) => receipt.rejected.push(AckResult {
                            offset,
                            error: code as i32,
                        }),
                    }
                }
                if let Some(offset) = cumulative {
                    match self.dispatcher.ack_cumulative(consumer, offset) {
                        Ok(()) => receipt.acknowledged.push(offset),
                        Err(code) => receipt.rejected.push(AckResult {
                            offset,
                            error: code as i32,
                        }),
                    }
                }
                for offset in &receipt.acknowledged {
                    self.prune_batch_of(*offset);
                }
                if receipt.acknowledged.is_empty() {
                    // Nothing to make durable: answer now.
                    self.send(consumer, ToConsumer::AckReceipt(receipt));
                } else {
                    self.receipts_waiting.push((consumer, receipt));
                }
            }
            Command::Nack {
                consumer,
                offsets,
                delay_ms,
            } => {
                let now_ms = self.now_ms();
                let delay = (delay_ms > 0).then_some(delay_ms);
                for offset in offsets {
                    // A nack for something not held is moot: it is or will
                    // be delivered again anyway.
                    let _ = self.dispatcher.nack(consumer, offset, delay, now_ms);
                }
            }
            Command::Close { consumer } => self.drop_consumer(consumer),
            Command::Stats { reply } => {
                let _ = reply.send(SubscriptionStats {
                    subscription: self.subscription.name.clone(),
                    mark_delete: self.dispatcher.mark_delete(),
                    read_position: self.dispatcher.read_position(),
                    unacknowledged: self.dispatcher.unacknowledged() as u64,
                    in_flight: self.dispatcher.in_flight() as u64,
                    consumers: u32::try_from(self.consumers.len()).unwrap_or(u32::MAX),
                    counters: self.dispatcher.counters(),
                });
            }
            Command::Explain { offset, reply } => {
                let _ = reply.send(self.dispatcher.explain(offset));
            }
            Command::Evict { offset, reply } => {
                let _ = reply.send(self.dispatcher.evict_before(offset));
            }
            Command::TxnAck {
                consumer,
                request_id,
                offsets,
                transaction,
            } => self.handle_txn_ack(consumer, request_id, offsets, transaction),
            Command::Marker { marker, reply } => self.handle_marker(marker, reply),
        }
    }

    /// Reads ahead while the window has room.
    pub(super) async fn scan(&mut self) -> Result<(), BrokerError> {
        loop {
            let status = self.partition.status();
            let position = self.dispatcher.read_position();
            if position < status.log_start_offset {
                // Retention removed what the cursor had not reached.
                self.dispatcher.skip_to(status.log_start_offset);
                continue;
            }
            if position >= status.high_watermark
                || self.dispatcher.window_room() == 0
                || self.batch_bytes >= self.shared.config.subscriptions.window_bytes
            {
                return Ok(());
            }
            let bytes = match self.partition.read(position, SCAN_READ_BYTES).await {
                Ok(bytes) => bytes,
                Err(BrokerError::DataLost { start, end, .. }) => {
                    self.skip_lost(position, start, end);
                    continue;
                }
                Err(error) => return Err(error),
            };
            if bytes.is_empty() {
                return Ok(());
            }
            let mut progressed = false;
            for item in BatchIter::new(&bytes) {
                let (start, header, slice) = item.map_err(BrokerError::Batch)?;
                if header.end_offset() <= self.dispatcher.read_position() {
                    continue;
                }
                let batch = bytes.slice(start..start + slice.len());
                let records = match batch::decode(&batch, MAX_UNCOMPRESSED_RECORDS_BYTES) {
                    Ok((_, records)) => records,
                    Err(error) => {
                        // The stores checked its CRC, so this is a poison
                        // batch that bypassed the produce path's check:
                        // nobody can read it. Step over it (counted).
                        tracing::error!(partition = %self.key, base_offset = header.base_offset,
                            end_offset = header.end_offset(), %error,
                            "skipping a batch whose records cannot be decoded in subscription {:?}",
                            self.subscription.name);
                        self.dispatcher.skip_undecodable(header.end_offset());
                        Vec::new()
                    }
                };
                let scanned = self.classify(&records, header.end_offset());
                let now_ms = self.now_ms();
                self.dispatcher.add_scanned(&scanned, now_ms);
                self.dispatcher.skip_to(header.end_offset());
                // Batches holding only delayed messages are read again when
                // those are due, so a million delayed messages do not pin
                // their bytes.
                if self
                    .dispatcher
                    .holds_undelayed_in(header.base_offset, header.end_offset())
                {
                    self.batch_bytes += batch.len() as u64;
                    self.batches
                        .insert(header.base_offset, (header.end_offset(), batch));
                } else {
                    self.keep_delayed_records(records, header.writer_epoch);
                }
                progressed = true;
                if self.dispatcher.window_room() == 0 {
                    break;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Steps the scan at `position` over the accepted-lost `start..end`
    /// (warned once per pass, counted in the subscription's stats).
    fn skip_lost(&mut self, position: u64, start: u64, end: u64) {
        tracing::warn!(partition = %self.key, subscription = %self.subscription.name,
            lost_start = start, lost_end = end, skipped = end.saturating_sub(position),
            "skipping offsets accepted as lost; the subscription resumes after them");
        self.dispatcher.skip_lost(end);
    }

    fn classify(&self, records: &[Record], batch_end: u64) -> Vec<Scanned> {
        let from = self.dispatcher.read_position();
        let now_ms = self.now_ms();
        let topic_ttl_ms = self.partition.config().message_ttl_ms;
        records
            .iter()
            .filter(|record| record.offset >= from)
            .map(|record| {
                let timestamp_ms = u64::try_from(record.timestamp_ms).unwrap_or(0);
                let message_ttl_ms = headers::number(&record.headers, headers::TTL_MS)
                    .map(|ttl| ttl.min(headers::MAX_TTL_MS));
                let ttl_ms = match (topic_ttl_ms, message_ttl_ms) {
                    (0, None) => None,
                    (0, Some(message)) => Some(message),
                    (topic, None) => Some(topic),
                    (topic, Some(message)) => Some(topic.min(message)),
                };
                Scanned {
                    offset: record.offset,
                    key_hash: record.key.as_deref().map(key_hash),
                    selected: self.selector.matches(record),
                    deliver_at_ms: headers::number(&record.headers, headers::DELIVER_AT_MS)
                        .map(|at| at.min(now_ms.saturating_add(headers::MAX_DELAY_MS))),
                    expire_at_ms: ttl_ms.map(|ttl| timestamp_ms.saturating_add(ttl)),
                    ends_batch: record.offset + 1 == batch_end,
                }
            })
            .collect()
    }

    /// Drops read-ahead batches that hold no message still to be delivered
    /// from memory (all acknowledged, or only delayed ones): from the front
    /// on every pass, and all of them when the read-ahead is half full.
    pub(super) fn prune_batches(&mut self) {
        let sweep_all = self.batch_bytes >= self.shared.config.subscriptions.window_bytes / 2;
        let mut unneeded = Vec::new();
        for (base, (end, _)) in &self.batches {
            if !self.dispatcher.holds_undelayed_in(*base, *end) {
                unneeded.push(*base);
            } else if !sweep_all {
                break;
            }
        }
        for base in unneeded {
            if let Some((_, bytes)) = self.batches.remove(&base) {
                self.batch_bytes -= bytes.len() as u64;
            }
        }
    }

    /// Keeps the delayed records of a batch that is not kept, each as a
    /// single-record batch, while `[subscriptions] delayed_records_bytes`
    /// allows: when they come due they are sent from memory instead of
    /// reading their whole batch back from the stores (which bounded the
    /// firing rate of a million delayed messages).
    fn keep_delayed_records(&mut self, records: Vec<Record>, writer_epoch: u32) {
        let budget = self.shared.config.subscriptions.delayed_records_bytes;
        if self.delayed_records_bytes >= budget {
            // Drop what expired or was evicted while delayed.
            let dispatcher = &self.dispatcher;
            let mut freed = 0u64;
            self.delayed_records.retain(|offset, single| {
                let keep = dispatcher.is_delayed(*offset);
                if !keep {
                    freed += single.len() as u64;
                }
                keep
            });
            self.delayed_records_bytes -= freed;
        }
        for record in records {
            if self.delayed_records_bytes >= budget {
                return;
            }
            if !self.dispatcher.is_delayed(record.offset) {
                continue;
            }
            let offset = record.offset;
            let single = single_record_batch(record, writer_epoch);
            self.delayed_records_bytes += single.len() as u64;
            self.delayed_records.insert(offset, single);
        }
    }

    /// Drops the batch holding `offset` if nothing in it is still to be
    /// delivered (checked on each acknowledgement, so read-back batches of
    /// delayed messages do not pile up behind an old mark-delete offset).
    fn prune_batch_of(&mut self, offset: u64) {
        let Some((base, end)) = self
            .batches
            .range(..=offset)
            .next_back()
            .filter(|(_, (end, _))| offset < *end)
            .map(|(base, (end, _))| (*base, *end))
        else {
            return;
        };
        if !self.dispatcher.holds_undelayed_in(base, end) {
            if let Some((_, bytes)) = self.batches.remove(&base) {
                self.batch_bytes -= bytes.len() as u64;
            }
        }
    }

    /// Reads back the batches of `offsets` that are not in memory (delayed
    /// messages that came due).
    async fn load_batches(&mut self, offsets: &[u64]) {
        for offset in offsets {
            if self.batch_of(*offset).is_some() {
                continue;
            }
            if let Some(single) = self.delayed_records.remove(offset) {
                self.delayed_records_bytes -= single.len() as u64;
                self.batch_bytes += single.len() as u64;
                self.batches.insert(*offset, (*offset + 1, single));
                continue;
            }
            match self.partition.read(*offset, 1).await {
                Ok(bytes) => {
                    if let Some(Ok((start, header, slice))) = BatchIter::new(&bytes).next() {
                        if header.base_offset <= *offset && *offset < header.end_offset() {
                            let batch = bytes.slice(start..start + slice.len());
                            self.batch_bytes += batch.len() as u64;
                            self.batches
                                .insert(header.base_offset, (header.end_offset(), batch));
                        }
                    }
                }
                Err(BrokerError::DataLost { start, end, .. }) => {
                    tracing::warn!(partition = %self.key, subscription = %self.subscription.name,
                        offset, lost_start = start, lost_end = end,
                        "a scanned message lies in a range accepted as lost since; it is not delivered");
                    self.dispatcher.lost_after_scan(*offset);
                }
                Err(error) => {
                    tracing::debug!(partition = %self.key, offset, %error, "cannot read a due message back; it is retried after its ack timeout");
                }
            }
        }
    }

    fn batch_of(&self, offset: u64) -> Option<(u64, Bytes)> {
        self.batches
            .range(..=offset)
            .next_back()
            .filter(|(_, (end, _))| offset < *end)
            .map(|(base, (_, bytes))| (*base, bytes.clone()))
    }

    /// Carries out the dispatcher's decisions; dead letters become futures.
    pub(super) async fn execute(&mut self, actions: Vec<Action>, dead_letters: &mut DeadLetters) {
        for action in actions {
            match action {
                Action::Deliver { consumer, messages } => {
                    let offsets: Vec<u64> = messages.iter().map(|(offset, _)| *offset).collect();
                    self.load_batches(&offsets).await;
                    self.deliver(consumer, messages);
                }
                Action::Status { consumer, active } => {
                    self.send(consumer, ToConsumer::Status(ConsumerStatus { active }));
                }
                Action::DeadLetter { offset, deliveries } => {
                    self.load_batches(&[offset]).await;
                    let record = self.batch_of(offset).and_then(|(_, batch)| {
                        batch::decode(&batch, MAX_UNCOMPRESSED_RECORDS_BYTES)
                            .ok()
                            .and_then(|(_, records)| {
                                records.into_iter().find(|record| record.offset == offset)
                            })
                    });
                    let Some(record) = record else {
                        tracing::warn!(partition = %self.key, offset, "dead letter's batch is gone; retrying later");
                        self.dispatcher.dead_letter_failed(offset);
                        continue;
                    };
                    dead_letters.push(
                        write_dead_letter(
                            self.shared.clone(),
                            self.key.clone(),
                            self.subscription.clone(),
                            record,
                            deliveries,
                        )
                        .map(move |result| (offset, result))
                        .boxed(),
                    );
                }
            }
        }
    }

    fn deliver(&mut self, consumer: ConsumerId, messages: Vec<(u64, u32)>) {
        let mut current: Option<(u64, Bytes, Delivery)> = None;
        let mut ready: Vec<Delivery> = Vec::new();
        for (offset, count) in messages {
            let same_batch = current
                .as_ref()
                .and_then(|(base, _, _)| self.batches.get(base))
                .is_some_and(|(end, _)| offset < *end)
                && current.as_ref().is_some_and(|(base, _, _)| offset >= *base);
            if !same_batch {
                if let Some((_, _, delivery)) = current.take() {
                    ready.push(delivery);
                }
                let Some((base, bytes)) = self.batch_of(offset) else {
                    // It could not be read back (stores unavailable): the
                    // ack timeout delivers it again.
                    tracing::debug!(partition = %self.key, offset, "no batch for a delivery");
                    continue;
                };
                current = Some((
                    base,
                    bytes.clone(),
                    Delivery {
                        batches: bytes,
                        offsets: Vec::new(),
                        delivery_counts: Vec::new(),
                    },
                ));
            }
            if let Some((_, _, delivery)) = current.as_mut() {
                delivery.offsets.push(offset);
                delivery.delivery_counts.push(count);
            }
        }
        if let Some((_, _, delivery)) = current {
            ready.push(delivery);
        }
        for mut delivery in ready {
            if let Some(sparse) = sparse_batches(&delivery.batches, &delivery.offsets) {
                delivery.batches = sparse;
            }
            self.send(consumer, ToConsumer::Delivery(delivery));
        }
    }
}
