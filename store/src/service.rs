//! The `Store` gRPC service: a thin layer over [`Storage`] that converts
//! messages and errors, and pipelines the `Append` stream.

use crate::error::StoreError;
use crate::storage::{NewSegment, PendingAppend, Storage};
use sluice_proto::v1::store_server::Store;
use sluice_proto::v1::{
    AppendRequest, AppendResponse, Durability, FindOffsetRequest, FindOffsetResponse, ReadRequest,
    ReadResponse, RecoveryAppendRequest, SealSegmentRequest, SegmentStatus, SegmentStatusRequest,
    StoreCreateSegmentRequest, StoreCreateSegmentResponse, StoreDeleteSegmentRequest,
    StoreDeleteSegmentResponse, StoreListSegmentsRequest, StoreListSegmentsResponse,
};
use sluice_proto::ErrorCode;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Per-stream limits of `Append`.
#[derive(Debug, Clone, Copy)]
pub struct AppendStreamLimits {
    pub max_in_flight: usize,
    pub max_in_flight_bytes: u64,
}

/// The `Store` service implementation.
pub struct StoreService {
    storage: Storage,
    limits: AppendStreamLimits,
    /// Becomes true at shutdown: append streams stop taking new requests,
    /// answer what they accepted, and end.
    shutdown: watch::Receiver<bool>,
    /// Key and tag indexes of segments, built on first lookup (ADR 0013).
    message_indexes: Arc<crate::message_index::MessageIndexes>,
}

impl StoreService {
    pub fn new(
        storage: Storage,
        limits: AppendStreamLimits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            storage,
            limits,
            shutdown,
            message_indexes: Arc::new(crate::message_index::MessageIndexes::new(
                crate::message_index::MessageIndexLimits::default(),
            )),
        }
    }

    /// The key and tag indexes of message lookup (ADR 0013).
    pub fn with_message_indexes(
        mut self,
        indexes: Arc<crate::message_index::MessageIndexes>,
    ) -> Self {
        self.message_indexes = indexes;
        self
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(log_and_convert),
        Err(error) => Err(log_and_convert(StoreError::Failed(format!(
            "blocking task failed: {error}"
        )))),
    }
}

fn log_and_convert(error: StoreError) -> Status {
    match error.code() {
        ErrorCode::Internal | ErrorCode::StorageCorrupt => {
            tracing::error!(%error, "store request failed")
        }
        _ => tracing::debug!(%error, "store request refused"),
    }
    error.into()
}

/// A segment to create, from the fields of a create or seal request
/// (an unknown durability counts as unspecified: fsync).
fn new_segment(
    segment_id: u64,
    topic: String,
    partition: u32,
    base_offset: u64,
    writer_epoch: u64,
    durability: i32,
) -> NewSegment {
    NewSegment {
        segment_id,
        topic,
        partition,
        base_offset,
        writer_epoch,
        durability: Durability::try_from(durability).unwrap_or(Durability::Unspecified),
    }
}

type PendingItem = (u64, Result<PendingAppend, StoreError>, OwnedSemaphorePermit);

#[tonic::async_trait]
impl Store for StoreService {
    async fn create_segment(
        &self,
        request: Request<StoreCreateSegmentRequest>,
    ) -> Result<Response<StoreCreateSegmentResponse>, Status> {
        let request = request.into_inner();
        self.storage
            .create_segment(new_segment(
                request.segment_id,
                request.topic,
                request.partition,
                request.base_offset,
                request.writer_epoch,
                request.durability,
            ))
            .await
            .map_err(log_and_convert)?;
        Ok(Response::new(StoreCreateSegmentResponse {}))
    }

    type AppendStream = ReceiverStream<Result<AppendResponse, Status>>;

    async fn append(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStream>, Status> {
        let mut inbound = request.into_inner();
        let max_in_flight = self.limits.max_in_flight.max(1);
        let budget_bytes = self
            .limits
            .max_in_flight_bytes
            .clamp(1, Semaphore::MAX_PERMITS as u64 / 2)
            .min(u64::from(u32::MAX)) as u32;
        let stream_bytes = Arc::new(Semaphore::new(budget_bytes as usize));
        let (pending_sender, mut pending_receiver) = mpsc::channel::<PendingItem>(max_in_flight);
        let (response_sender, response_receiver) = mpsc::channel(max_in_flight);
        let storage = self.storage.clone();
        let mut shutdown = self.shutdown.clone();
        // Reader: orders and queues appends without waiting for their
        // durability, so one stream's appends share fsyncs.
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stopping| *stopping) => break,
                    message = inbound.message() => message,
                };
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "append stream ended by the client");
                        break;
                    }
                };
                let cost = (request.batch.len() as u64).clamp(1, u64::from(budget_bytes)) as u32;
                let Ok(permit) = stream_bytes.clone().acquire_many_owned(cost).await else {
                    break;
                };
                let result = storage
                    .submit_append(request.segment_id, request.writer_epoch, request.batch)
                    .await;
                if pending_sender
                    .send((request.sequence, result, permit))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        // Responder: answers in request order as each becomes durable.
        tokio::spawn(async move {
            while let Some((sequence, submitted, permit)) = pending_receiver.recv().await {
                let outcome = match submitted {
                    Ok(pending) => pending.wait().await,
                    Err(error) => Err(error),
                };
                drop(permit);
                let response = match outcome {
                    Ok(end_offset) => AppendResponse {
                        sequence,
                        error: ErrorCode::None as i32,
                        error_message: String::new(),
                        end_offset,
                    },
                    Err(error) => {
                        if error.code() == ErrorCode::Internal {
                            tracing::error!(%error, "append failed");
                        }
                        AppendResponse {
                            sequence,
                            error: error.code() as i32,
                            error_message: error.to_string(),
                            end_offset: 0,
                        }
                    }
                };
                if response_sender.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(response_receiver)))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let request = request.into_inner();
        let storage = self.storage.clone();
        let outcome = blocking(move || {
            storage.read(
                request.segment_id,
                request.offset,
                request.max_bytes,
                request.end_offset,
            )
        })
        .await?;
        Ok(Response::new(ReadResponse {
            batches: outcome.batches,
            segment_end_offset: outcome.segment_end_offset,
            sealed: outcome.sealed,
        }))
    }

    async fn seal_segment(
        &self,
        request: Request<SealSegmentRequest>,
    ) -> Result<Response<SegmentStatus>, Status> {
        let request = request.into_inner();
        let unknown = matches!(
            self.storage.segment_status(request.segment_id),
            Err(StoreError::UnknownSegment { .. })
        );
        if unknown && !request.topic.is_empty() {
            self.storage
                .create_segment(new_segment(
                    request.segment_id,
                    request.topic,
                    request.partition,
                    request.base_offset,
                    request.writer_epoch,
                    request.durability,
                ))
                .await
                .map_err(log_and_convert)?;
        }
        let status = self
            .storage
            .seal_segment(request.segment_id, request.writer_epoch)
            .await
            .map_err(log_and_convert)?;
        Ok(Response::new(status))
    }

    async fn get_segment_status(
        &self,
        request: Request<SegmentStatusRequest>,
    ) -> Result<Response<SegmentStatus>, Status> {
        let status = self
            .storage
            .segment_status(request.into_inner().segment_id)
            .map_err(log_and_convert)?;
        Ok(Response::new(status))
    }

    async fn recovery_append(
        &self,
        request: Request<RecoveryAppendRequest>,
    ) -> Result<Response<SegmentStatus>, Status> {
        let request = request.into_inner();
        let status = self
            .storage
            .recovery_append(request.segment_id, request.fence_epoch, request.batches)
            .await
            .map_err(log_and_convert)?;
        Ok(Response::new(status))
    }

    async fn delete_segment(
        &self,
        request: Request<StoreDeleteSegmentRequest>,
    ) -> Result<Response<StoreDeleteSegmentResponse>, Status> {
        self.storage
            .delete_segment(request.into_inner().segment_id)
            .await
            .map_err(log_and_convert)?;
        Ok(Response::new(StoreDeleteSegmentResponse {}))
    }

    async fn find_offset(
        &self,
        request: Request<FindOffsetRequest>,
    ) -> Result<Response<FindOffsetResponse>, Status> {
        let request = request.into_inner();
        let storage = self.storage.clone();
        let offset =
            blocking(move || storage.find_offset(request.segment_id, request.timestamp_ms)).await?;
        Ok(Response::new(FindOffsetResponse { offset }))
    }

    async fn find_in_segment(
        &self,
        request: Request<sluice_proto::v1::FindInSegmentRequest>,
    ) -> Result<Response<sluice_proto::v1::FindInSegmentResponse>, Status> {
        let request = request.into_inner();
        let storage = self.storage.clone();
        let indexes = self.message_indexes.clone();
        let response = blocking(move || indexes.find(&storage, &request)).await?;
        Ok(Response::new(response))
    }

    async fn list_segments(
        &self,
        _request: Request<StoreListSegmentsRequest>,
    ) -> Result<Response<StoreListSegmentsResponse>, Status> {
        Ok(Response::new(StoreListSegmentsResponse {
            segments: self.storage.list_segments(),
            damaged_segments: self.storage.damaged_segments(),
        }))
    }
}
