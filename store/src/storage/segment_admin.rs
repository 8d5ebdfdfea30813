//! Segment lifecycle on the [`Storage`]: create, seal and delete, each
//! journaled (a metadata record group-committed with the appends) before
//! it is answered, and the striped lock that orders creates and deletes of
//! one segment id. Appends, reads and status stay in `mod.rs` and
//! `reads.rs`.

use super::registry;
use super::writer::Command;
use super::{NewSegment, Storage, WritePath, ADMIN_LOCK_STRIPES};
use crate::error::StoreError;
use crate::journal::RecordKind;
use crate::segment::{self, SegmentMeta};
use sluice_proto::v1::{Durability, SegmentStatus};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

impl Storage {
    async fn journal_metadata(
        path: &WritePath,
        kind: RecordKind,
        segment_id: u64,
        payload: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (done, completion) = oneshot::channel();
        path.commands
            .send(Command::Metadata {
                kind,
                segment_id,
                payload,
                done,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        completion.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// The lock serializing creates and deletes of `segment_id`.
    pub(super) fn admin_lock(&self, segment_id: u64) -> &tokio::sync::Mutex<()> {
        let stripe = usize::try_from(segment_id % ADMIN_LOCK_STRIPES as u64).unwrap_or(0);
        &self.inner.admin_locks[stripe]
    }

    /// Creates a segment; succeeds without change if it exists with the
    /// same topic, partition and base offset.
    pub async fn create_segment(&self, new: NewSegment) -> Result<(), StoreError> {
        let path = self.writable()?;
        if new.topic.is_empty() {
            return Err(StoreError::InvalidArgument(
                "segment topic must not be empty".to_string(),
            ));
        }
        if new.base_offset > sluice_proto::limits::MAX_OFFSET {
            return Err(StoreError::InvalidArgument(format!(
                "segment base offset {} is beyond the largest offset {}",
                new.base_offset,
                sluice_proto::limits::MAX_OFFSET
            )));
        }
        let _admin = self.admin_lock(new.segment_id).lock().await;
        if let Some(error) = self.damaged_error(new.segment_id) {
            return Err(error);
        }
        if let Ok(existing) = self.segment(new.segment_id) {
            if existing.topic == new.topic
                && existing.partition == new.partition
                && existing.base_offset == new.base_offset
            {
                return Ok(());
            }
            return Err(StoreError::SegmentConflict {
                segment_id: new.segment_id,
                detail: format!(
                    "exists as {}/{} at base offset {}, asked for {}/{} at {}",
                    existing.topic,
                    existing.partition,
                    existing.base_offset,
                    new.topic,
                    new.partition,
                    new.base_offset
                ),
            });
        }
        let durability = match new.durability {
            Durability::Periodic => Durability::Periodic,
            Durability::Fsync | Durability::Unspecified => Durability::Fsync,
        };
        let meta = SegmentMeta {
            segment_id: new.segment_id,
            topic: new.topic,
            partition: new.partition,
            base_offset: new.base_offset,
            writer_epoch: new.writer_epoch,
            sealed: false,
            durability: durability as i32,
            end_offset: None,
            size_bytes: None,
            checksum: None,
        };
        let segments_dir = self.inner.layout.segments_dir.clone();
        let index_interval_bytes = self.inner.options.index_interval_bytes;
        let meta_for_disk = meta.clone();
        let files = self.inner.files.clone();
        let log = tokio::task::spawn_blocking(move || {
            registry::create_segment_files(
                &segments_dir,
                &meta_for_disk,
                index_interval_bytes,
                &files,
            )
        })
        .await
        .map_err(|error| StoreError::Failed(format!("segment creation task failed: {error}")))??;
        let payload = serde_json::to_vec(&meta).map_err(|error| {
            StoreError::io("encode segment metadata", std::io::Error::other(error))
        })?;
        Self::journal_metadata(&path, RecordKind::CreateSegment, meta.segment_id, payload).await?;
        let handle = Arc::new(registry::handle_from(meta, log, &self.inner.options));
        self.inner
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(handle.id, handle);
        Ok(())
    }

    /// Seals a segment (idempotent), raising its fence epoch to at least
    /// `writer_epoch`; durable before it returns.
    pub async fn seal_segment(
        &self,
        segment_id: u64,
        writer_epoch: u64,
    ) -> Result<SegmentStatus, StoreError> {
        let segment = self.segment(segment_id)?;
        let control = segment.control.lock().await;
        if control.deleted {
            return Err(StoreError::UnknownSegment { segment_id });
        }
        let old_fence = segment.fence_epoch.load(Ordering::SeqCst);
        let new_fence = old_fence.max(writer_epoch);
        if segment.sealed.load(Ordering::SeqCst) && new_fence == old_fence {
            return Ok(segment.status());
        }
        let path = self.writable()?;
        segment.sealed.store(true, Ordering::SeqCst);
        segment.fence_epoch.store(new_fence, Ordering::SeqCst);
        // Queued behind every append accepted before it, so once it is
        // durable the segment end is final.
        Self::journal_metadata(
            &path,
            RecordKind::Seal,
            segment_id,
            new_fence.to_le_bytes().to_vec(),
        )
        .await?;
        let segments_dir = self.inner.layout.segments_dir.clone();
        let meta = segment.meta();
        let sealed_segment = segment.clone();
        let files = self.inner.files.clone();
        tokio::task::spawn_blocking(move || {
            segment::write_meta(&segments_dir, &meta)?;
            sealed_segment.meta_written(&meta);
            // Every append accepted before the seal is applied by now (the
            // seal record completed after them), so the file is final.
            let released = files.get(segment_id).and_then(|file| {
                sealed_segment
                    .lock_log()
                    .release_preallocation(&file)
                    .map_err(|error| StoreError::io("truncate", error))
            });
            if let Err(error) = released {
                tracing::warn!(segment_id, %error, "cannot release preallocated space of a sealed segment");
            }
            Ok::<(), StoreError>(())
        })
        .await
        .map_err(|error| StoreError::Failed(format!("seal task failed: {error}")))??;
        drop(path);
        drop(control);
        Ok(segment.status())
    }

    /// Deletes a segment and its files, durably; also one whose metadata
    /// is unusable (an explicit decision to drop that copy).
    pub async fn delete_segment(&self, segment_id: u64) -> Result<(), StoreError> {
        let path = self.writable()?;
        let _admin = self.admin_lock(segment_id).lock().await;
        if self.damaged_error(segment_id).is_some() {
            return self.delete_damaged_segment(&path, segment_id).await;
        }
        let segment = self.segment(segment_id)?;
        let mut control = segment.control.lock().await;
        if control.deleted {
            return Err(StoreError::UnknownSegment { segment_id });
        }
        Self::journal_metadata(&path, RecordKind::Delete, segment_id, Vec::new()).await?;
        control.deleted = true;
        segment.sealed.store(true, Ordering::SeqCst);
        self.inner
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&segment_id);
        self.inner.files.forget(segment_id);
        let segments_dir = self.inner.layout.segments_dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            registry::remove_segment_files(&segments_dir, segment_id)
        })
        .await
        .map_err(|error| StoreError::Failed(format!("delete task failed: {error}")))?;
        drop(path);
        removed
    }

    /// Deletes a segment whose metadata is unusable: journaled (a
    /// recovery redoes it), then its files removed.
    async fn delete_damaged_segment(
        &self,
        path: &WritePath,
        segment_id: u64,
    ) -> Result<(), StoreError> {
        Self::journal_metadata(path, RecordKind::Delete, segment_id, Vec::new()).await?;
        self.inner
            .damaged
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&segment_id);
        self.inner.files.forget(segment_id);
        let segments_dir = self.inner.layout.segments_dir.clone();
        tokio::task::spawn_blocking(move || {
            registry::remove_segment_files(&segments_dir, segment_id)
        })
        .await
        .map_err(|error| StoreError::Failed(format!("delete task failed: {error}")))?
    }
}
