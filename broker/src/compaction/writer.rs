//! Writing one compacted segment to its placed replicas (ADR 0016 §8,
//! step 4): created on each store at the owner's epoch, filled with
//! `RecoveryAppend` (durable before it answers, idempotent on a retry),
//! sealed. A replica that fails is dropped from the write; the segment is
//! usable while at least the ack quorum holds it whole (repair fills the
//! others, as for any closed segment), else the pass is abandoned. Also
//! the IO pacing of a pass.

use crate::clients::{request, Clients};
use crate::error::BrokerError;
use bytes::Bytes;
use sluice_proto::v1::{
    RecoveryAppendRequest, SealSegmentRequest, SegmentInfo, SegmentReplica,
    StoreCreateSegmentRequest, StoreDeleteSegmentRequest,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::time::{Duration, Instant};

/// Paces a pass's IO to `bytes_per_second`, reads and writes together.
pub(super) struct Pacer {
    bytes_per_second: u64,
    started: Instant,
    bytes: u64,
}

impl Pacer {
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` and sleeps until the rate allows them.
    pub async fn pace(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
        let due_ms = u128::from(self.bytes) * 1_000 / u128::from(self.bytes_per_second);
        let due = Duration::from_millis(u64::try_from(due_ms).unwrap_or(u64::MAX / 2));
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// One output segment being written.
pub(super) struct SegmentWriter<'a> {
    clients: &'a Clients,
    segment: SegmentInfo,
    epoch: u64,
    ack_quorum: usize,
    /// Replicas still written to.
    live: Vec<SegmentReplica>,
    written_bytes: u64,
}

impl<'a> SegmentWriter<'a> {
    /// Creates the segment on every placed replica.
    pub async fn create(
        clients: &'a Clients,
        segment: SegmentInfo,
        epoch: u64,
        ack_quorum: u32,
        durability: i32,
    ) -> Result<SegmentWriter<'a>, BrokerError> {
        let mut writer = Self {
            clients,
            live: segment.replicas.clone(),
            segment,
            epoch,
            ack_quorum: usize::try_from(ack_quorum.max(1)).unwrap_or(1),
            written_bytes: 0,
        };
        let create = StoreCreateSegmentRequest {
            segment_id: writer.segment.segment_id,
            topic: writer.segment.topic.clone(),
            partition: writer.segment.partition,
            base_offset: writer.segment.base_offset,
            writer_epoch: epoch,
            durability,
        };
        let mut failed = Vec::new();
        for replica in &writer.live {
            let created = match clients.store(&replica.address) {
                Ok(mut store) => store
                    .create_segment(request(create.clone(), clients.store_timeout))
                    .await
                    .map(|_| ())
                    .map_err(|status| {
                        BrokerError::remote("store CreateSegment (compaction)", &status)
                    }),
                Err(error) => Err(error),
            };
            if let Err(error) = created {
                failed.push((replica.store_id.clone(), error));
            }
        }
        writer.drop_failed(failed)?;
        Ok(writer)
    }

    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Appends `batches` (whole batches continuing the segment) to every
    /// live replica.
    pub async fn append(&mut self, batches: Bytes) -> Result<(), BrokerError> {
        if batches.is_empty() {
            return Ok(());
        }
        let append = RecoveryAppendRequest {
            segment_id: self.segment.segment_id,
            fence_epoch: self.epoch,
            batches: batches.clone(),
        };
        let mut failed = Vec::new();
        for replica in &self.live {
            let appended = match self.clients.store(&replica.address) {
                Ok(mut store) => store
                    .recovery_append(request(append.clone(), self.clients.store_timeout))
                    .await
                    .map(|_| ())
                    .map_err(|status| {
                        BrokerError::remote("store RecoveryAppend (compaction)", &status)
                    }),
                Err(error) => Err(error),
            };
            if let Err(error) = appended {
                self.clients.store_failed(&replica.address);
                failed.push((replica.store_id.clone(), error));
            }
        }
        self.drop_failed(failed)?;
        self.written_bytes += batches.len() as u64;
        Ok(())
    }

    /// Seals every live replica; the segment as placed, to be swapped in.
    pub async fn seal(mut self) -> Result<SegmentInfo, BrokerError> {
        let seal = SealSegmentRequest {
            segment_id: self.segment.segment_id,
            writer_epoch: self.epoch,
            ..SealSegmentRequest::default()
        };
        let mut failed = Vec::new();
        for replica in &self.live {
            let sealed = match self.clients.store(&replica.address) {
                Ok(mut store) => store
                    .seal_segment(request(seal.clone(), self.clients.store_timeout))
                    .await
                    .map(|_| ())
                    .map_err(|status| {
                        BrokerError::remote("store SealSegment (compaction)", &status)
                    }),
                Err(error) => Err(error),
            };
            if let Err(error) = sealed {
                failed.push((replica.store_id.clone(), error));
            }
        }
        self.drop_failed(failed)?;
        Ok(self.segment)
    }

    /// Forgets failed replicas; an error once fewer than the ack quorum
    /// remain.
    fn drop_failed(&mut self, failed: Vec<(String, BrokerError)>) -> Result<(), BrokerError> {
        for (store_id, error) in failed {
            tracing::warn!(segment = self.segment.segment_id, store = %store_id, %error, "compaction: a replica failed; repair fills it after the swap");
            self.live.retain(|replica| replica.store_id != store_id);
        }
        if self.live.len() < self.ack_quorum {
            return Err(BrokerError::Unavailable(format!(
                "compacted segment {} is held by {} replicas, fewer than the ack quorum {}",
                self.segment.segment_id,
                self.live.len(),
                self.ack_quorum
            )));
        }
        Ok(())
    }
}

/// Deletes every copy of `segment` (a placement given up, or a replaced
/// segment past its delay). `true` when every store answered.
pub(super) async fn delete_copies(clients: &Clients, segment: &SegmentInfo) -> bool {
    let mut all = true;
    for replica in &segment.replicas {
        let deleted = match clients.store(&replica.address) {
            Ok(mut store) => match store
                .delete_segment(request(
                    StoreDeleteSegmentRequest {
                        segment_id: segment.segment_id,
                    },
                    clients.store_timeout,
                ))
                .await
            {
                Ok(_) => Ok(()),
                // A store that lost the segment already holds nothing.
                Err(status)
                    if SluiceError::from_status(&status).code == ErrorCode::UnknownSegment =>
                {
                    Ok(())
                }
                Err(status) => Err(status.to_string()),
            },
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = deleted {
            tracing::warn!(segment = segment.segment_id, store = %replica.store_id, %error, "compaction: deleting a copy failed; retried later");
            all = false;
        }
    }
    all
}
